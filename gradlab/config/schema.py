"""The config schema: every section as an immutable pydantic model, and the shared vocabularies.

Each kind of choice (activation, init, optimiser, ...) is one `Literal` here; the builders in
`gradlab.build` key their tables by the same names. Constants that several stages share
(which activations saturate, which data kinds are sequences) live here too. No torch.
"""

from __future__ import annotations

import typing
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Activation = Literal[
    "sigmoid", "tanh", "relu", "leaky_relu", "prelu", "elu", "selu", "gelu", "identity"
]
InitScheme = Literal[
    "default", "zeros", "constant", "normal", "uniform", "xavier_uniform", "xavier_normal",
    "kaiming_uniform", "kaiming_normal", "orthogonal", "identity",
]
Norm = Literal["none", "batch", "layer"]
OptimizerName = Literal["sgd", "adam", "adamw", "rmsprop", "adagrad"]
ScheduleName = Literal["constant", "step", "exponential", "cosine"]
LossName = Literal["auto", "mse", "cross_entropy"]
Device = Literal["auto", "cpu", "cuda"]
ModelKind = Literal["mlp", "rnn", "lstm", "gru"]
# Mixed precision: the forward pass under autocast in bfloat16 or float16 (weights stay float32)
Precision = Literal["fp32", "bf16", "fp16"]
LossScale = Literal["dynamic", "none"]  # fp16 only: torch.amp.GradScaler, or no loss scale

# Activations whose outputs saturate (report "saturated %") and those whose units die ("dead %").
SATURATING = ("sigmoid", "tanh")
RELU_FAMILY = ("relu", "leaky_relu", "prelu", "elu", "selu", "gelu")
# Units that can die (output 0, so pass no gradient, for every input): ReLU's. Leaky ReLU,
# PReLU, ELU, SELU and GELU still pass a gradient below 0, so none of their units is dead.
DYING = ("relu",)
RECURRENT_KINDS = ("rnn", "lstm", "gru")
GATES = {"rnn": 1, "lstm": 4, "gru": 3}  # a recurrent cell's gates, each its own weight map

MAX_SEEDS = 100  # seeds of one group

# scikit-learn's digits: 1797 images of 8×8 pixels (also read row by row as sequences).
DIGITS_SAMPLES = 1797

# The gain each activation's xavier/kaiming init uses: PyTorch's `calculate_gain` names where it
# has one. SELU takes `linear`, as PyTorch's docs advise for self-normalising nets (weights of
# variance 1/fan_in). ELU and GELU, which `calculate_gain` lacks, take the gain that keeps a unit
# pre-activation variance from layer to layer, 1/√E[φ(z)²] for z ~ N(0, 1) (He et al.'s
# argument, which gives √2 for ReLU).
GAIN_NAME: dict[str, str] = {
    "sigmoid": "sigmoid", "tanh": "tanh", "relu": "relu", "leaky_relu": "leaky_relu",
    "prelu": "leaky_relu", "elu": "elu", "selu": "linear", "gelu": "gelu", "identity": "linear",
}
GainName = Literal["relu", "leaky_relu", "linear", "sigmoid", "tanh", "selu", "elu", "gelu"]

# Keys of an `expect:` block that are not summary fields (`analyse.expect`): how a group's claims
# are checked over its seeds, and a claim paired with another config, with its comparators.
RESERVED = ("over", "versus")
OVER = ("every", "mean")
COMPARATORS = ("less_by", "more_by", "factor_min", "factor_max")

# Top-level summary.json fields an `expect:` key may start with (see DESIGN.md).
SUMMARY_FIELDS = (
    "name", "status", "error", "steps_done", "steps_planned", "seconds", "steps_per_second",
    "device", "task", "n_params", "flush_denormal", "baseline_loss", "initial_loss",
    "initial_metrics", "final_loss", "loss_ratio", "final_metrics", "grad_ratio_init",
    "grad_ratio_final", "delta_ratio_init", "delta_ratio_final", "grad_norm_min_init",
    "grad_norm_min_final", "weight_norm_init", "weight_norm_final", "clip_fraction", "clip",
    "flushed_zero_layers", "denormal_layers", "layers", "first_nonfinite", "verdicts",
    "time_grads_init", "time_grads_final", "time_grad_ratio_init", "time_grad_ratio_final",
    "pretrain", "prediction", "baseline_accuracy", "over_run", "overrides", "generalisation_gap",
    "unit_spread_init", "unit_spread_final",
    "precision",
)

# The summary fields that come from the probe's rows: empty or null when probing is off.
PROBED_FIELDS = (
    "grad_ratio_init", "grad_ratio_final", "delta_ratio_init", "delta_ratio_final",
    "grad_norm_min_init", "grad_norm_min_final", "weight_norm_init", "weight_norm_final",
    "layers", "time_grad_ratio_init", "time_grad_ratio_final",
)

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"


class _Section(BaseModel):
    # every number finite: `lr: .inf` or `noise: .nan` is refused, not trained
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        """YAML's `true` is no number (`depth: true` would train a depth-1 net): a boolean
        given to a numeric field goes on as its YAML word, which that field then refuses
        under its own key."""
        if not isinstance(data, dict):
            return data
        return {k: str(v).lower() if isinstance(v, bool) and k in cls.model_fields
                and _numeric(cls.model_fields[k].annotation) else v for k, v in data.items()}


def _numeric(annotation: Any) -> bool:
    """Whether a field takes numbers and not booleans (int, float, their optionals, tuples)."""
    kinds = {annotation, *typing.get_args(annotation)}
    return bool(kinds & {int, float}) and bool not in kinds


def _shorthand(key: str) -> Any:
    """Let `init: xavier_normal` stand for `init: {scheme: xavier_normal}`."""

    def to_mapping(value: Any) -> Any:
        return {key: value} if isinstance(value, str) else value

    return model_validator(mode="before")(to_mapping)


def _unused_keys(section: BaseModel, scheme: str, uses: dict[str, tuple[str, ...]]) -> None:
    """A key the scheme does not read, set to anything but its default, is an error: it would
    otherwise change nothing, silently."""
    fields = type(section).model_fields
    unused = [k for k in section.model_fields_set if k != "scheme" and k not in uses[scheme]
              and getattr(section, k) != fields[k].default]
    if unused:
        takes = ", ".join(uses[scheme]) or "no other keys"
        raise ValueError(f"{', '.join(sorted(unused))}: not used by scheme {scheme} "
                         f"(it takes {takes})")


# The keys each weight-init scheme reads.
INIT_KEYS: dict[str, tuple[str, ...]] = {
    "default": (), "zeros": (), "constant": ("value",), "normal": ("mean", "std"),
    "uniform": ("low", "high"), "xavier_uniform": ("gain", "nonlinearity"),
    "xavier_normal": ("gain", "nonlinearity"), "kaiming_uniform": ("gain", "mode", "nonlinearity"),
    "kaiming_normal": ("gain", "mode", "nonlinearity"), "orthogonal": ("gain",), "identity": (),
}


class InitConfig(_Section):
    scheme: InitScheme = "default"
    value: float = 0.0
    mean: float = 0.0
    std: float = Field(0.01, gt=0)
    low: float = -0.05
    high: float = 0.05
    gain: float = Field(1.0, gt=0)
    mode: Literal["fan_in", "fan_out"] = "fan_in"
    nonlinearity: GainName | None = None

    _from_str = _shorthand("scheme")

    @model_validator(mode="after")
    def _bounds(self) -> InitConfig:
        if self.scheme == "uniform" and self.low >= self.high:
            raise ValueError(f"uniform init needs low < high, got low={self.low}, high={self.high}")
        _unused_keys(self, self.scheme, INIT_KEYS)
        return self


BIAS_KEYS: dict[str, tuple[str, ...]] = {
    "default": (), "zeros": (), "constant": ("value",), "normal": ("mean", "std"),
}


class BiasInitConfig(_Section):
    # default: PyTorch's U(−1/√fan_in, 1/√fan_in); normal: N(mean, std²), the σb² of mean-field theory
    scheme: Literal["default", "zeros", "constant", "normal"] = "default"
    value: float = 0.0
    mean: float = 0.0
    std: float = Field(0.05, gt=0)

    _from_str = _shorthand("scheme")

    @model_validator(mode="after")
    def _keys(self) -> BiasInitConfig:
        _unused_keys(self, self.scheme, BIAS_KEYS)
        return self


class ModelConfig(_Section):
    kind: ModelKind = "mlp"
    depth: int = Field(10, ge=0, le=2000)  # hidden layers; 0: a linear (or logistic) model
    width: int = Field(100, ge=1, le=1_000_000)
    activation: Activation = "relu"
    negative_slope: float = Field(0.01, ge=0)
    prelu_init: float = 0.25
    elu_alpha: float = Field(1.0, gt=0)
    norm: Norm = "none"
    residual: bool = False
    residual_block: int = Field(2, ge=1)
    # pre: h ← h + f(h), the skip bypasses every activation (He et al. 2016, "Identity Mappings");
    # post: h ← act(h + f(h)), the 2015 ResNet block, whose skip still passes an activation
    residual_style: Literal["pre", "post"] = "pre"
    residual_scale: float = Field(1.0, gt=0, le=1e6)  # a constant on each residual branch
    residual_init: Literal["default", "zero"] = "default"  # zero: each block's last layer at 0
    init: InitConfig = InitConfig()
    head_init: InitConfig | None = None  # the output layer's own init (default: as `init`)
    bias_init: BiasInitConfig = BiasInitConfig()
    # Sequence models (kind rnn/lstm/gru): the recurrent cell's nonlinearity and read-out.
    rnn_nonlinearity: Literal["tanh", "relu"] = "tanh"
    recurrent_init: InitConfig = InitConfig()
    readout: Literal["last", "every"] = "last"
    # LSTM only: the forget gate's bias (Gers et al. 2000; Jozefowicz et al. 2015 use 1.0).
    forget_bias: float | None = None


class _DataBase(_Section):
    test_fraction: float = Field(0.2, gt=0, lt=1)


class TeacherData(_DataBase):
    kind: Literal["teacher"]
    n_samples: int = Field(2048, ge=4, le=10_000_000)
    n_features: int = Field(100, ge=1)
    n_outputs: int = Field(1, ge=1)
    targets: Literal["teacher", "noise"] = "teacher"
    teacher_depth: int = Field(2, ge=1)
    teacher_width: int = Field(64, ge=1)
    noise: float = Field(0.1, ge=0)


class BlobsData(_DataBase):
    kind: Literal["blobs"]
    n_samples: int = Field(2048, ge=4, le=10_000_000)
    n_features: int = Field(20, ge=1)
    n_classes: int = Field(4, ge=2)
    spread: float = Field(1.0, gt=0)


class SpiralsData(_DataBase):
    kind: Literal["spirals"]
    n_samples: int = Field(2048, ge=4, le=10_000_000)
    n_classes: int = Field(3, ge=2)
    noise: float = Field(0.2, ge=0)
    turns: float = Field(1.5, gt=0)


class DigitsData(_DataBase):
    kind: Literal["digits"]


class FileData(_DataBase):
    kind: Literal["file"]
    path: str
    target: str
    task: Literal["auto", "regression", "classification"] = "auto"
    test_path: str | None = None  # a file of the same columns as the test split (no random split)


class AddingData(_DataBase):
    kind: Literal["adding"]
    n_samples: int = Field(4096, ge=4, le=10_000_000)
    length: int = Field(50, ge=2)


class CopyData(_DataBase):
    kind: Literal["copy"]
    n_samples: int = Field(4096, ge=4, le=10_000_000)
    length: int = Field(20, ge=1)
    n_symbols: int = Field(4, ge=2)
    n_recall: int = Field(5, ge=1)


class DigitsSequenceData(_DataBase):
    kind: Literal["digits_sequence"]


DataConfig = Annotated[
    TeacherData | BlobsData | SpiralsData | DigitsData | FileData | AddingData | CopyData
    | DigitsSequenceData,
    Field(discriminator="kind"),
]
SEQUENCE_DATA = ("adding", "copy", "digits_sequence")
REGRESSION_DATA = ("teacher", "adding")


class ScheduleConfig(_Section):
    name: ScheduleName = "constant"
    step_size: int = Field(100, ge=1)
    gamma: float = Field(0.5, gt=0, le=1)
    min_lr: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)

    _from_str = _shorthand("name")


class ClipConfig(_Section):
    by: Literal["norm", "value"] = "norm"
    max_norm: float = Field(1.0, gt=0)
    norm_type: float = Field(2.0, gt=0, allow_inf_nan=True)  # .inf: the largest |entry|
    max_value: float = Field(1.0, gt=0)


class TrainConfig(_Section):
    steps: int | None = Field(None, ge=1, le=100_000_000)
    epochs: int | None = Field(None, ge=1, le=1_000_000)
    batch_size: int = Field(64, ge=1)
    loss: LossName = "auto"
    optimizer: OptimizerName = "sgd"
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    nesterov: bool = False
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (
        0.9, 0.999,
    )
    eps: float = Field(1e-8, gt=0)
    alpha: float = Field(0.99, gt=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    schedule: ScheduleConfig = ScheduleConfig()
    clip: ClipConfig | None = None
    eval_every: int = Field(100, ge=1)
    # fp16/bf16: autocast (Micikevicius et al. 2018); fp16 scales the loss with GradScaler
    # unless loss_scale is none (read with fp16 only: bf16 and fp32 need no loss scale, and a
    # fix that switches precision then runs as it is)
    precision: Precision = "fp32"
    loss_scale: LossScale = "dynamic"

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        problems = []  # every one at once
        if self.steps is not None and self.epochs is not None:
            problems.append(f"train.epochs: set train.steps or train.epochs, not both; got "
                            f"steps {self.steps} and epochs {self.epochs}")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            problems.append("nesterov needs optimizer sgd with momentum > 0")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class ProbeConfig(_Section):
    every: int = Field(10, ge=1)
    activations: bool = True
    enabled: bool = True  # false: train without probing (no layers.csv rows), e.g. to time it


class PretrainConfig(_Section):
    method: Literal["autoencoder"] = "autoencoder"
    steps_per_layer: int = Field(200, ge=1)
    lr: float = Field(0.01, gt=0)
    optimizer: OptimizerName = "adam"
    batch_size: int = Field(64, ge=1)
    tied: bool = True
    denoising: float = Field(0.0, ge=0, lt=1)


class Config(_Section):
    name: str = Field(pattern=NAME_PATTERN)
    seed: int = Field(0, ge=0)
    # several seeds: one run per seed, a group record over them (`record.group`); `seed` is then
    # each run's own seed
    seeds: list[Annotated[int, Field(ge=0)]] | None = Field(None, min_length=1,
                                                            max_length=MAX_SEEDS)
    device: Device = "auto"
    # true: float32 results below 1.2e-38 become 0 (on the CPU): faster on some processors, but
    # it changes what the network computes exactly where gradients vanish
    flush_denormal: bool = False
    data: DataConfig
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    probe: ProbeConfig = ProbeConfig()
    pretrain: PretrainConfig | None = None
    expect: dict[str, Any] = {}

    @model_validator(mode="after")
    def _distinct_seeds(self) -> Config:
        if self.seeds is not None and len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
        return self

"""The config schema: YAML → a validated, immutable `Config`, and every message a bad config gets.

`load_config(path, overrides)` is the only door. It imports no torch, so `gradlab validate`
is instant. Each kind of choice (activation, init, optimiser, ...) is one `Literal` here;
the builders in `models.py`, `init.py` and `train.py` key their tables by the same names.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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

# Activations whose outputs saturate (report "saturated %") and those whose units die ("dead %").
SATURATING = ("sigmoid", "tanh")
RELU_FAMILY = ("relu", "leaky_relu", "prelu", "elu", "selu", "gelu")

# Top-level summary.json fields an `expect:` key may start with (see DESIGN.md).
SUMMARY_FIELDS = (
    "name", "status", "error", "steps_done", "seconds", "steps_per_second", "device",
    "initial_loss", "final_loss", "loss_ratio", "final_metrics", "grad_ratio_init",
    "grad_ratio_final", "grad_norm_min_init", "grad_norm_min_final", "weight_norm_init",
    "weight_norm_final", "clip_fraction", "layers", "first_nonfinite", "verdicts",
    "verdict_kinds", "time_grad_ratio_init", "time_grad_ratio_final", "pretrain",
)

# The summary fields that come from the probe's rows: empty or null when probing is off.
PROBED_FIELDS = (
    "grad_ratio_init", "grad_ratio_final", "grad_norm_min_init", "grad_norm_min_final",
    "weight_norm_init", "weight_norm_final", "layers", "time_grad_ratio_init",
    "time_grad_ratio_final",
)

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"


class ConfigError(Exception):
    """Every problem found in one config, each as (dotted key path, message)."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(
            f"{self.source}: {path}: {msg}" if path else f"{self.source}: {msg}"
            for path, msg in self.problems
        )


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _shorthand(key: str) -> Any:
    """Let `init: xavier_normal` stand for `init: {scheme: xavier_normal}`."""

    def to_mapping(value: Any) -> Any:
        return {key: value} if isinstance(value, str) else value

    return model_validator(mode="before")(to_mapping)


class InitConfig(_Section):
    scheme: InitScheme = "default"
    value: float = 0.0
    mean: float = 0.0
    std: float = Field(0.01, gt=0)
    low: float = -0.05
    high: float = 0.05
    gain: float = Field(1.0, gt=0)
    mode: Literal["fan_in", "fan_out"] = "fan_in"
    nonlinearity: Literal["relu", "leaky_relu", "linear", "sigmoid", "tanh", "selu"] | None = None

    _from_str = _shorthand("scheme")

    @model_validator(mode="after")
    def _bounds(self) -> InitConfig:
        if self.scheme == "uniform" and self.low >= self.high:
            raise ValueError(f"uniform init needs low < high, got low={self.low}, high={self.high}")
        return self


class BiasInitConfig(_Section):
    scheme: Literal["default", "zeros", "constant"] = "default"
    value: float = 0.0

    _from_str = _shorthand("scheme")


class ModelConfig(_Section):
    kind: ModelKind = "mlp"
    depth: int = Field(10, ge=1, le=2000)
    width: int = Field(100, ge=1, le=1_000_000)
    activation: Activation = "relu"
    negative_slope: float = Field(0.01, ge=0)
    prelu_init: float = 0.25
    elu_alpha: float = Field(1.0, gt=0)
    norm: Norm = "none"
    residual: bool = False
    residual_block: int = Field(2, ge=1)
    init: InitConfig = InitConfig()
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
    n_samples: int = Field(2048, ge=4)
    n_features: int = Field(100, ge=1)
    n_outputs: int = Field(1, ge=1)
    targets: Literal["teacher", "noise"] = "teacher"
    teacher_depth: int = Field(2, ge=1)
    teacher_width: int = Field(64, ge=1)
    noise: float = Field(0.1, ge=0)


class BlobsData(_DataBase):
    kind: Literal["blobs"]
    n_samples: int = Field(2048, ge=4)
    n_features: int = Field(20, ge=1)
    n_classes: int = Field(4, ge=2)
    spread: float = Field(1.0, gt=0)


class SpiralsData(_DataBase):
    kind: Literal["spirals"]
    n_samples: int = Field(2048, ge=4)
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


class AddingData(_DataBase):
    kind: Literal["adding"]
    n_samples: int = Field(4096, ge=4)
    length: int = Field(50, ge=2)


class CopyData(_DataBase):
    kind: Literal["copy"]
    n_samples: int = Field(4096, ge=4)
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
    norm_type: float = Field(2.0, gt=0)
    max_value: float = Field(1.0, gt=0)


class TrainConfig(_Section):
    steps: int | None = Field(None, ge=1)
    epochs: int | None = Field(None, ge=1)
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

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.steps is not None and self.epochs is not None:
            raise ValueError(f"train.epochs: set train.steps or train.epochs, not both; got "
                             f"steps {self.steps} and epochs {self.epochs}")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ValueError("nesterov needs optimizer sgd with momentum > 0")
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
    device: Device = "auto"
    flush_denormal: bool = True
    data: DataConfig
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    probe: ProbeConfig = ProbeConfig()
    pretrain: PretrainConfig | None = None
    expect: dict[str, Any] = {}

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        problems = _cross_problems(self)
        if problems:
            raise ValueError("\n".join(problems))
        return self


def _cross_problems(cfg: Config) -> list[str]:
    """Conflicts between sections; each message starts with its dotted key path."""
    problems = []
    kind, task_kind = cfg.model.kind, cfg.data.kind
    if cfg.train.loss == "cross_entropy" and task_kind in REGRESSION_DATA:
        problems.append(
            f"train.loss: cross_entropy needs a classification dataset; data.kind "
            f"'{task_kind}' is regression (use mse or auto)"
        )
    if cfg.model.norm == "batch" and cfg.train.batch_size == 1:
        problems.append("model.norm: batch normalisation needs train.batch_size ≥ 2, got 1")
    if (kind == "mlp") == (task_kind in SEQUENCE_DATA):
        wanted = "a sequence model (rnn, lstm, gru)" if kind == "mlp" else "model.kind mlp"
        problems.append(f"model.kind: data.kind '{task_kind}' needs {wanted}, got '{kind}'")
    if kind != "mlp" and task_kind in SEQUENCE_DATA:
        needed = "every" if task_kind == "copy" else "last"
        if cfg.model.readout != needed:
            problems.append(f"model.readout: data.kind '{task_kind}' needs readout '{needed}', "
                            f"got '{cfg.model.readout}'")
    if cfg.model.forget_bias is not None and kind != "lstm":
        problems.append(f"model.forget_bias: is for model.kind lstm, got '{kind}'")
    if cfg.model.residual and kind != "mlp":
        problems.append("model.residual: residual blocks are for model.kind mlp")
    if cfg.pretrain is not None and kind != "mlp":
        problems.append(f"pretrain: layer-wise pretraining is for model.kind mlp, got '{kind}'")
    elif cfg.pretrain is not None and cfg.model.residual:
        problems.append("pretrain: layer-wise pretraining is for plain MLPs; "
                        "set model.residual: false")
    n_train = _n_train(cfg)
    if n_train is not None and cfg.train.batch_size > n_train:
        problems.append(
            f"train.batch_size: must be ≤ the {n_train} training examples, "
            f"got {cfg.train.batch_size}"
        )
    if cfg.data.kind == "file" and not Path(cfg.data.path).is_file():
        problems.append(f"data.path: no such file '{cfg.data.path}'")
    problems += _memory_problems(cfg)
    problems += [f"expect.{key}: {msg}" for key, msg in _expect_problems(cfg.expect)]
    if not cfg.probe.enabled:
        problems += [f"expect.{key}: needs the probe's per-layer statistics, but probe.enabled "
                     "is false" for key in cfg.expect if key.split(".")[0] in PROBED_FIELDS]
    return problems


def _n_train(cfg: Config) -> int | None:
    n = getattr(cfg.data, "n_samples", None)
    if cfg.data.kind in ("digits", "digits_sequence"):
        n = 1797
    if n is None:
        return None
    return n - max(1, round(n * cfg.data.test_fraction))


def _expect_problems(expect: dict[str, Any]) -> list[tuple[str, str]]:
    problems = []
    for key, want in expect.items():
        head = key.split(".")[0]
        if head not in SUMMARY_FIELDS:
            hint = _did_you_mean(head, SUMMARY_FIELDS)
            problems.append((key, f"not a summary.json field{hint}"))
        if isinstance(want, dict):
            extra = set(want) - {"min", "max"}
            bounds = [want.get("min"), want.get("max")]
            if extra or not want:
                problems.append((key, "a range is {min: x}, {max: y} or both"))
            elif any(b is not None and not _is_number(b) for b in bounds):
                problems.append((key, f"range bounds must be numbers, got {want}"))
            elif bounds[0] is not None and bounds[1] is not None and bounds[0] > bounds[1]:
                problems.append((key, f"min must be ≤ max, got {want}"))
        elif not isinstance(want, (str, bool, int, float, type(None))):
            problems.append((key, f"must be a literal or a {{min, max}} range, got {want!r}"))
    return problems


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


# ---------------------------------------------------------------- memory

GATES = {"mlp": 1, "rnn": 1, "lstm": 4, "gru": 3}


def _io_sizes(data: Any) -> tuple[int, int, int]:
    """(input features, outputs, time steps) a dataset config implies, without building it."""
    sizes = {
        "teacher": lambda d: (d.n_features, d.n_outputs, 1),
        "blobs": lambda d: (d.n_features, d.n_classes, 1),
        "spirals": lambda d: (2, d.n_classes, 1),
        "digits": lambda d: (64, 10, 1),
        "adding": lambda d: (2, 1, d.length),
        "copy": lambda d: (d.n_symbols + 2, d.n_symbols + 1, d.length + 2 * d.n_recall),
        "digits_sequence": lambda d: (8, 10, 8),
    }
    # A file's columns are only known once it is read; they rarely dominate.
    return sizes.get(data.kind, lambda d: (1, 1, 1))(data)


def memory_estimate(cfg: Config) -> dict[str, int]:
    """Bytes training would need, by part: parameters with their gradients, probe copies and
    optimiser state; activations kept for backward; the dataset. float32 throughout."""
    m, t = cfg.model, cfg.train
    n_in, n_out, steps_in_time = _io_sizes(cfg.data)
    w, gates = m.width, GATES[m.kind]
    if m.kind == "mlp":
        hidden = n_in * w + w + (m.depth - 1) * (w * w + w)
        hidden += (4 if m.norm == "batch" else 2 if m.norm == "layer" else 0) * w * m.depth
    else:
        hidden = gates * (w * (n_in + w) + 2 * w) + (m.depth - 1) * gates * (2 * w * w + 2 * w)
    n_params = hidden + w * n_out + n_out
    slots = {"sgd": int(t.momentum > 0), "adam": 2, "adamw": 2, "rmsprop": 1 + int(t.momentum > 0),
             "adagrad": 1}[t.optimizer]
    # Per unit and layer, backward keeps the linear output, the normalised one, the activation
    # and the probe's capture: about four floats (a recurrent cell: two per gate).
    per_unit = 4 if m.kind == "mlp" else 2 * gates + 2
    activations = t.batch_size * steps_in_time * m.depth * w * per_unit
    n_samples = getattr(cfg.data, "n_samples", 1797)
    return {
        "n_params": n_params,
        "parameters": 4 * n_params * (3 + slots),  # weights, gradients, probe copy, state
        "activations": 4 * activations,
        "data": 12 * n_samples * steps_in_time * (n_in + n_out),  # float64 table + float32 copy
    }


def available_memory() -> int | None:
    """Bytes of memory available now (MemAvailable), or None where that cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _memory_problems(cfg: Config) -> list[str]:
    est = memory_estimate(cfg)
    need = est["parameters"] + est["activations"] + est["data"]
    have = available_memory()
    if have is None or need <= have:
        return []
    m = cfg.model
    advice = "lower model.width or model.depth"
    if est["activations"] > est["parameters"]:
        advice += " or train.batch_size"
    return [
        f"model: width {m.width} × depth {m.depth} needs about {_bytes(need)} to train "
        f"({est['n_params']:.3g} parameters: {_bytes(est['parameters'])} with gradients and "
        f"{cfg.train.optimizer} state; activations {_bytes(est['activations'])}; data "
        f"{_bytes(est['data'])}), more than the {_bytes(have)} available: {advice}"
    ]


def _bytes(n: float) -> str:
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
    while n >= 1024 and len(units) > 1:
        n, units = n / 1024, units[1:]
    return f"{n:.3g} {units[0]}"


# ---------------------------------------------------------------- loading


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML file, apply `key.path=value` overrides, and validate; raise ConfigError."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(source, [("", "no such file")]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(source, [("", f"cannot read: {e}")]) from None
    try:
        raw = yaml.safe_load(text)  # safe: tags never construct Python objects
    except yaml.constructor.ConstructorError as e:
        raise ConfigError(source, [_tag_problem(text, e)]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(source, [("", f"YAML syntax error: {where}{problem}")]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, [("", f"must be a mapping of keys, got {type(raw).__name__}")])
    raw.setdefault("name", default_name(Path(path)))
    apply_overrides(raw, overrides, source)
    return config_from_dict(raw, source)


def default_name(path: Path) -> str:
    """A run name from the file name, sanitised so it is always a single safe directory name."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem).lstrip("._-")[:100]
    return name or "run"


def _tag_problem(text: str, error: yaml.constructor.ConstructorError) -> tuple[str, str]:
    """A refused YAML tag (e.g. `!!python/object/apply`), at its key path and line."""
    mark = error.problem_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
    tag = re.search(r"tag '([^']*)'", str(error.problem))
    shown = tag.group(1).replace("tag:yaml.org,2002:", "!!") if tag else "a tag"
    key = _key_at(yaml.compose(text), mark) if mark else None
    return (key or "", f"YAML tag {shown} at {where} is not allowed: configs are plain data, "
                       "and tags that build objects are refused")


def _key_at(node: Any, mark: Any, prefix: str = "") -> str | None:
    """The dotted key path of the YAML node that starts at `mark`, if any."""
    if node is None:
        return None
    if node.start_mark.index == mark.index and prefix:
        return prefix
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = f"{prefix}.{key.value}" if prefix else str(key.value)
            found = _key_at(value, mark, name)
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found = _key_at(item, mark, f"{prefix}[{i}]")
            if found:
                return found
    return None


def config_from_dict(raw: dict[str, Any], source: str = "<config>") -> Config:
    """Validate an already-parsed mapping (as read from YAML) into a Config."""
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(source, _problems(e)) from None


def apply_overrides(raw: dict[str, Any], overrides: typing.Iterable[str], source: str) -> None:
    """Set `a.b.c=value` (value parsed as YAML) into the raw mapping, in order."""
    problems = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not all(part.strip() for part in key.split(".")):
            problems.append(("--set", f"expected key.path=value, got {item!r}"))
            continue
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if isinstance(child, str):  # a shorthand such as `init: xavier_normal`
                child = {_SHORTHAND_KEY.get(part, "name"): child}
            node[part] = child if isinstance(child, dict) else {}
            node = node[part]
        node[parts[-1]] = value
    if problems:
        raise ConfigError(source, problems)


_SHORTHAND_KEY = {"init": "scheme", "bias_init": "scheme", "recurrent_init": "scheme"}


# ---------------------------------------------------------------- messages


def _problems(error: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for err in error.errors():
        path, fields = _display_path(err["loc"])
        if err["type"] == "union_tag_invalid":  # the bad value is the section's `kind`
            path = f"{path}.kind" if path else "kind"
        msg = _message(err, fields)
        for line in msg.split("\n"):
            # Cross-section checks put their own key path at the start of each line.
            head, sep, rest = line.partition(": ")
            own_path = not path or head.startswith(path + ".")
            if sep and own_path and re.fullmatch(r"[a-z_]+(\.[A-Za-z0-9_.]+)?", head):
                problems.append((head, rest))
            else:
                problems.append((path, line))
    return problems


def _message(err: Any, fields: list[str]) -> str:
    kind, ctx, given = err["type"], err.get("ctx", {}), err.get("input")
    if kind == "extra_forbidden":
        key = str(err["loc"][-1])
        return f"unknown key '{key}'{_did_you_mean(key, fields)}; allowed: {', '.join(fields)}"
    if kind == "missing":
        return "required item is missing" if isinstance(err["loc"][-1], int) \
            else "required key is missing"
    if kind == "literal_error":
        allowed = re.findall(r"'([^']*)'", ctx.get("expected", ""))
        hint = _did_you_mean(str(given), allowed)
        return f"unknown value {given!r}{hint}; allowed: {', '.join(allowed)}"
    if kind == "union_tag_invalid":
        allowed = re.findall(r"'([^']*)'", ctx.get("expected_tags", ""))
        hint = _did_you_mean(str(given.get("kind") if isinstance(given, dict) else given), allowed)
        return f"unknown kind {ctx.get('tag')!r}{hint}; allowed: {', '.join(allowed)}"
    if kind == "union_tag_not_found":
        return "needs a 'kind' key"
    bounds = {"greater_than_equal": "≥ {ge}", "greater_than": "> {gt}",
              "less_than_equal": "≤ {le}", "less_than": "< {lt}"}
    if kind in bounds:
        return f"must be {bounds[kind].format(**ctx)}, got {given!r}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"must be a whole number, got {given!r}"
    if kind in ("float_parsing", "float_type"):
        return f"must be a number, got {given!r}"
    if kind in ("bool_parsing", "bool_type"):
        return f"must be true or false, got {given!r}"
    if kind in ("string_type",):
        return f"must be a string, got {given!r}"
    if kind == "string_pattern_mismatch":
        return f"must be letters, digits, '_', '.' or '-' (at most 100), got {given!r}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"must be a mapping of keys, got {given!r}"
    if kind == "value_error":
        return str(err["msg"]).removeprefix("Value error, ")
    return str(err["msg"])


def _did_you_mean(word: str, options: typing.Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _display_path(loc: tuple[Any, ...]) -> tuple[str, list[str]]:
    """Turn pydantic's location into a dotted key path, dropping union tags.

    Also returns the keys allowed at the parent of the last element, for
    unknown-key messages.
    """
    shown: list[str] = []
    node: Any = Config
    fields: list[str] = list(Config.model_fields)
    for part in loc:
        models = _models_in(node)
        tagged = [m for m in models if _tag(m) == part]
        if tagged and len(models) > 1:  # a discriminated union's tag in the loc
            node = tagged[0]
            fields = list(tagged[0].model_fields)
            continue
        if str(part).startswith("function-"):
            continue
        shown.append(str(part))
        model = next((m for m in models if part in m.model_fields), None)
        node = model.model_fields[str(part)].annotation if model is not None else None
        children = _models_in(node)
        if len(children) == 1:
            fields = list(children[0].model_fields)
    return ".".join(shown), fields


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _models_in(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
    return []


def _tag(model: type[BaseModel]) -> str | None:
    field = model.model_fields.get("kind")
    if field is None or typing.get_origin(field.annotation) is not Literal:
        return None
    return str(typing.get_args(field.annotation)[0])


# ---------------------------------------------------------------- resolved form


def resolved(cfg: Config) -> dict[str, Any]:
    """The fully resolved config (defaults filled in) as plain data, for config.yaml."""
    return cfg.model_dump(mode="json")


def config_hash(cfg: Config) -> str:
    """A stable hash of the resolved config: equal hashes mean an identical experiment."""
    text = json.dumps(resolved(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def total_steps(cfg: Config, n_train: int) -> int:
    """Optimiser steps the run will take: `train.steps`, or epochs of full batches."""
    if cfg.train.epochs is not None:
        return cfg.train.epochs * max(1, n_train // cfg.train.batch_size)
    return cfg.train.steps if cfg.train.steps is not None else 500

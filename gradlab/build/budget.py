"""The memory a run needs, from the real builders, checked before anything is allocated.

`memory_estimate(cfg)` builds the model on PyTorch's `meta` device (shapes, no storage), so
the parameter count is the network's own; activations and data follow from the sizes.
`preflight(cfg)` compares the total with the memory available now; `run`, `validate` and
`compare` call it explicitly, after the schema (which never reads the machine).

Most runs are far smaller than the machine: for them `preflight` settles the question with
`parameters_bound`, an upper bound on the parameter count that needs no torch, so `compare`'s
parent and `validate` do not import torch (two seconds) for it. Only when even the bound does
not fit is the model built on `meta` and counted.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gradlab.config import Config, ConfigError, TrainConfig
from gradlab.config.schema import DIGITS_SAMPLES, GATES, RECURRENT_KINDS

# Optimiser state tensors kept per parameter (`build.optim`'s optimisers).
STATE_SLOTS: dict[str, Callable[[TrainConfig], int]] = {
    "sgd": lambda t: int(t.momentum > 0),
    "adam": lambda t: 2,
    "adamw": lambda t: 2,
    "rmsprop": lambda t: 1 + int(t.momentum > 0),
    "adagrad": lambda t: 1,
}


def io_sizes(data: Any) -> tuple[int, int, int]:
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


def count_parameters(cfg: Config, n_in: int, n_out: int) -> int:
    """Parameters of the network `cfg.model` describes, counted on a model built on `meta`."""
    import torch  # here only: most runs are settled by `parameters_bound`, without torch

    from gradlab.build.model import build_model

    with torch.device("meta"):
        built = build_model(cfg.model, n_in, n_out)
    return sum(p.numel() for p in built.model.parameters())


def parameters_bound(cfg: Config, n_in: int, n_out: int) -> int | None:
    """At least as many parameters as `count_parameters` finds, from the sizes alone (None for
    a kind it does not know): every Linear map with its bias, and per hidden unit up to three
    more (a norm's scale and shift, a PReLU slope); a recurrent layer's G gates of input and
    hidden maps with their two biases. `tests/test_budget.py` holds it against the built models
    (never below their count, never above twice it)."""
    m = cfg.model
    w, depth = m.width, m.depth
    if m.kind == "mlp":
        if depth == 0:
            return (n_in + 1) * n_out
        return (n_in + 1) * w + (depth - 1) * (w + 1) * w + (w + 1) * n_out + 3 * w * depth
    if m.kind in RECURRENT_KINDS:
        gates = GATES[m.kind]
        return sum(gates * w * ((n_in if i == 0 else w) + w + 2) for i in range(depth)) \
            + (w + 1) * n_out
    return None


def memory_estimate(cfg: Config, n_in: int | None = None, n_out: int | None = None,
                    n_params: int | None = None) -> dict[str, int]:
    """Bytes training would need, by part: parameters with their gradients, probe copies and
    optimiser state; activations kept for backward; the dataset. float32 throughout.
    `n_params`: a parameter count to use instead of building the model (`parameters_bound`)."""
    m, t = cfg.model, cfg.train
    implied_in, implied_out, steps_in_time = io_sizes(cfg.data)
    n_in, n_out = n_in or implied_in, n_out or implied_out
    if n_params is None:
        n_params = count_parameters(cfg, n_in, n_out)
    slots = STATE_SLOTS[t.optimizer](t)
    # Per unit and layer, backward keeps the linear output, the normalised one, the activation
    # and the probe's capture: about four floats (a recurrent cell: two per gate).
    gates = GATES.get(m.kind, 1)
    per_unit = 4 if m.kind == "mlp" else 2 * gates + 2
    activations = t.batch_size * steps_in_time * m.depth * m.width * per_unit
    n_samples = getattr(cfg.data, "n_samples", DIGITS_SAMPLES)
    # evaluation runs the splits in chunks of up to 4096 examples without gradients: each
    # layer's output lives until the next one is computed (two layers' worth at a time), plus
    # the chunk's outputs
    chunk = min(4096, n_samples)
    evaluation = chunk * steps_in_time * (2 * m.width * max(1, gates) + n_out)
    return {
        "n_params": n_params,
        "parameters": 4 * n_params * (3 + slots),  # weights, gradients, probe copy, state
        "activations": 4 * activations,
        "evaluation": 4 * evaluation,
        "data": 12 * n_samples * steps_in_time * (n_in + n_out),  # float64 table + float32 copy
    }


def available_memory() -> int | None:
    """Bytes of memory available now: MemAvailable, or less where a cgroup limits this process
    (a container, a Slurm job), or None where neither can be read."""
    have = _meminfo_available()
    limit = cgroup_headroom()
    if limit is not None:
        have = limit if have is None else min(have, limit)
    return have


def _meminfo_available() -> int | None:
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


def cgroup_headroom(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The cgroup's memory limit less what it uses (v2 `memory.max`/`memory.current`, or v1
    `memory.limit_in_bytes`/`memory.usage_in_bytes`); None when unlimited or unreadable."""
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes",
                                    "memory/memory.usage_in_bytes")):
        try:
            limit = (root / limit_file).read_text().strip()
            usage = int((root / usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or not limit.isdigit() or int(limit) >= 1 << 60:
            return None
        return max(0, int(limit) - usage)
    return None


def memory_problems(cfg: Config, n_in: int | None = None,
                    n_out: int | None = None) -> list[tuple[str, str]]:
    """The `model` problem of a run that would not fit in the memory available now."""
    have = available_memory()
    if have is None:
        return []
    implied_in, implied_out, _ = io_sizes(cfg.data)
    bound = parameters_bound(cfg, n_in or implied_in, n_out or implied_out)
    if bound is not None and _need(memory_estimate(cfg, n_in, n_out, bound)) <= have:
        return []  # fits even with the bound's parameters: no model need be built
    est = memory_estimate(cfg, n_in, n_out)
    need = _need(est)
    if need <= have:
        return []
    m = cfg.model
    advice = "lower model.width or model.depth"
    if est["activations"] > est["parameters"]:
        advice += " or train.batch_size"
    return [("model",
             f"width {m.width} × depth {m.depth} needs about {_bytes(need)} to train "
             f"({est['n_params']:.3g} parameters: {_bytes(est['parameters'])} with gradients and "
             f"{cfg.train.optimizer} state; activations {_bytes(est['activations'])}; "
             f"evaluation {_bytes(est['evaluation'])}; data "
             f"{_bytes(est['data'])}), more than the {_bytes(have)} available: {advice}")]


def _need(est: dict[str, int]) -> int:
    return est["parameters"] + max(est["activations"], est["evaluation"]) + est["data"]


def preflight(cfg: Config, source: str, n_in: int | None = None, n_out: int | None = None,
              training: bool = True) -> None:
    """Raise ConfigError (exit 2) when the run would not fit in memory, or (`training`) cannot
    train on the device it gets (an fp16 LSTM on the CPU)."""
    problems = memory_problems(cfg, n_in, n_out) + (device_problems(cfg) if training else [])
    if problems:
        raise ConfigError(source, problems)


def device_problems(cfg: Config) -> list[tuple[str, str]]:
    """What the device the run gets cannot compute: PyTorch's CPU LSTM has no float16 kernel
    (oneDNN: 'could not create a primitive descriptor'), where RNN and GRU, and bf16, run."""
    if cfg.train.precision != "fp16" or cfg.model.kind != "lstm" or cfg.device == "cuda":
        return []
    if cfg.device != "cpu":  # auto: torch, here only, to ask for a GPU
        import torch

        if torch.cuda.is_available():
            return []
    return [("train.precision", "fp16 LSTMs do not run on the CPU (PyTorch has no float16 "
                                "CPU LSTM kernel): use bf16 here, or a CUDA device")]


def _bytes(n: float) -> str:
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
    while n >= 1024 and len(units) > 1:
        n, units = n / 1024, units[1:]
    return f"{n:.3g} {units[0]}"

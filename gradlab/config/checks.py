"""Checks that span sections of a schema-valid config, and the shape of its `expect:` block.

`cross_problems(cfg)` returns every conflict as (dotted key path, message); `load.py` raises
them together with a `ConfigError`. Nothing here reads the machine (the memory budget is a
pre-flight in `gradlab.build.budget`) and nothing imports torch.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from gradlab.config.messages import did_you_mean
from gradlab.config.schema import (
    COMPARATORS,
    DIGITS_SAMPLES,
    NAME_PATTERN,
    OVER,
    PROBED_FIELDS,
    REGRESSION_DATA,
    RESERVED,
    SEQUENCE_DATA,
    SUMMARY_FIELDS,
    Config,
)


def not_a_file(path: Path) -> str | None:
    """Why a data file cannot be read (None if it can be): missing, or a directory."""
    if path.is_dir():
        return f"'{path}' is a directory: give a .csv or .npz file"
    return None if path.is_file() else f"no such file '{path}'"


def cross_problems(cfg: Config) -> list[tuple[str, str]]:
    """Conflicts between sections, each as (dotted key path, message)."""
    problems: list[tuple[str, str]] = []
    kind, task_kind = cfg.model.kind, cfg.data.kind
    if cfg.train.loss == "cross_entropy" and task_kind in REGRESSION_DATA:
        problems.append(("train.loss", f"cross_entropy needs a classification dataset; data.kind "
                                       f"'{task_kind}' is regression (use mse or auto)"))
    if cfg.model.norm == "batch" and cfg.train.batch_size == 1:
        problems.append(("model.norm", "batch normalisation needs train.batch_size ≥ 2, got 1"))
    if (kind == "mlp") == (task_kind in SEQUENCE_DATA):
        wanted = "a sequence model (rnn, lstm, gru)" if kind == "mlp" else "model.kind mlp"
        problems.append(("model.kind", f"data.kind '{task_kind}' needs {wanted}, got '{kind}'"))
    if kind != "mlp" and task_kind in SEQUENCE_DATA:
        needed = "every" if task_kind == "copy" else "last"
        if cfg.model.readout != needed:
            problems.append(("model.readout", f"data.kind '{task_kind}' needs readout "
                                              f"'{needed}', got '{cfg.model.readout}'"))
    if cfg.model.forget_bias is not None and kind != "lstm":
        problems.append(("model.forget_bias", f"is for model.kind lstm, got '{kind}'"))
    if cfg.model.residual and kind != "mlp":
        problems.append(("model.residual", "residual blocks are for model.kind mlp"))
    if cfg.model.depth == 0 and kind != "mlp":
        problems.append(("model.depth", f"a {kind} needs at least one layer, got 0"))
    if cfg.model.depth == 0 and cfg.model.residual:
        problems.append(("model.residual", "a model with no hidden layer (depth 0) has no "
                                            "blocks to skip"))
    if cfg.model.depth == 0 and cfg.pretrain is not None:
        problems.append(("pretrain", "layer-wise pretraining needs hidden layers; model.depth is 0"))
    if cfg.model.head_init is not None and kind != "mlp":
        problems.append(("model.head_init", f"is for model.kind mlp (a {kind}'s read-out "
                                            "follows model.init)"))
    if cfg.pretrain is not None and kind != "mlp":
        problems.append(("pretrain", f"layer-wise pretraining is for model.kind mlp, got '{kind}'"))
    elif cfg.pretrain is not None and cfg.model.residual:
        problems.append(("pretrain", "layer-wise pretraining is for plain MLPs; "
                                     "set model.residual: false"))
    n_train = known_train_size(cfg)
    if n_train is not None:
        problems += batch_size_problems(cfg.train.batch_size, n_train)
    if cfg.data.kind == "file":
        for key, given in (("data.path", cfg.data.path), ("data.test_path", cfg.data.test_path)):
            if given and (why := not_a_file(Path(given))):
                problems.append((key, why))
    problems += [(f"expect.{key}", msg) for key, msg in expect_problems(cfg.expect)]
    if not cfg.probe.enabled:
        problems += [(f"expect.{key}", "needs the probe's per-layer statistics, but "
                                       "probe.enabled is false")
                     for key in cfg.expect if key.split(".")[0] in PROBED_FIELDS]
    return problems


def batch_size_problems(batch_size: int, n_train: int) -> list[tuple[str, str]]:
    """A batch larger than the training split (checked here, and for files once they are read)."""
    if batch_size <= n_train:
        return []
    return [("train.batch_size", f"must be ≤ the {n_train} training examples, got {batch_size}")]


def known_train_size(cfg: Config) -> int | None:
    """Training examples the data section implies, where that is known without reading a file."""
    n = getattr(cfg.data, "n_samples", None)
    if cfg.data.kind in ("digits", "digits_sequence"):
        n = DIGITS_SAMPLES
    if n is None:
        return None
    return n - test_size(n, cfg.data.test_fraction)


def test_size(n: int, test_fraction: float) -> int:
    """Examples held out for testing: the one rule every dataset's split follows."""
    return max(1, round(n * test_fraction))


def over_problems(over: Any) -> list[tuple[str, str]]:
    """`over:` is every, mean, or {at_least: a share of the seeds, above 0 and at most 1}."""
    if isinstance(over, dict):
        share = over.get("at_least")
        if set(over) != {"at_least"} or not isinstance(share, (int, float)) \
                or isinstance(share, bool) or not 0 < share <= 1:
            return [("over", f"{{at_least: x}} takes one share of the seeds, 0 < x ≤ 1 (0.9: "
                             f"at least 90% of them), got {over!r}")]
        return []
    if over not in OVER:
        return [("over", f"must be one of {', '.join(OVER)} or {{at_least: x}}, got {over!r}")]
    return []


def expect_problems(expect: dict[str, Any]) -> list[tuple[str, str]]:
    """Keys that are not summary fields, and values that are neither literals nor ranges;
    an `over` other than every/mean/at_least; a `versus` block that is not a partner and
    comparisons."""
    problems = []
    if "over" in expect:
        problems += over_problems(expect["over"])
    if "versus" in expect:
        problems += versus_problems(expect["versus"])
    for key, want in expect.items():
        if key in RESERVED:
            continue
        head = key.split(".")[0]
        if head not in SUMMARY_FIELDS:
            hint = did_you_mean(head, SUMMARY_FIELDS)
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


def versus_specs(expect: dict[str, Any]) -> list[dict[str, Any]]:
    """An `expect:` block's paired claims: `versus:` is one mapping or a list of them (one per
    partner)."""
    spec = expect.get("versus")
    if isinstance(spec, dict):
        return [spec]
    if isinstance(spec, list):
        return [s for s in spec if isinstance(s, dict)]
    return []


def versus_problems(value: Any) -> list[tuple[str, str]]:
    """`versus: {partner: NAME, KEY: {less_by|more_by|factor_min|factor_max: number}}`, or a
    list of such mappings, each naming a different partner."""
    specs = value if isinstance(value, list) else [value]
    if not specs or not all(isinstance(s, dict) for s in specs):
        return [("versus", "must be a mapping {partner: NAME, KEY: {less_by: x}, ...}, or a "
                           "list of them")]
    problems: list[tuple[str, str]] = []
    partners = [s.get("partner") for s in specs]
    if len(set(map(str, partners))) != len(partners):
        problems.append(("versus", "names a partner twice"))
    for i, spec in enumerate(specs):
        problems += _one_versus(spec, "versus" if len(specs) == 1 and isinstance(value, dict)
                                else f"versus.{i}")
    return problems


def _one_versus(spec: dict[str, Any], at: str) -> list[tuple[str, str]]:
    partner = spec.get("partner")
    problems = []
    if not isinstance(partner, str) or not re.fullmatch(NAME_PATTERN, partner):
        problems.append((f"{at}.partner", "must name the partner config (its name:)"))
    claims = {k: v for k, v in spec.items() if k != "partner"}
    if not claims:
        problems.append((at, "states no claim against the partner"))
    for key, want in claims.items():
        where = f"{at}.{key}"
        head = str(key).split(".")[0]
        if head not in SUMMARY_FIELDS:
            problems.append((where, f"not a summary.json field{did_you_mean(head, SUMMARY_FIELDS)}"))
        if not isinstance(want, dict) or not want or set(want) - set(COMPARATORS):
            problems.append((where, f"a paired claim is a mapping of {', '.join(COMPARATORS)}"))
            continue
        for how, bound in want.items():
            if not _is_number(bound):
                problems.append((f"{where}.{how}", f"must be a number, got {bound!r}"))
            elif how.startswith("factor") and bound <= 0:
                problems.append((f"{where}.{how}", f"a factor must be > 0, got {bound}"))
    return problems


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)

"""What a record's files must look like to be read: `CorruptRecord` and the checks.

A file that is missing, or a CSV's torn last row, is what a killed run leaves: readers take
those as they are. A file that exists but cannot be what gradlab wrote (summary.json or
config.yaml that does not parse, is not a mapping or holds the wrong types; a CSV with no
header or with binary bytes; a garbled comparison.csv) is corrupt: readers raise
`CorruptRecord("corrupt: <file>: <what>")` rather than guess. No torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

STATUSES = ("running", "completed", "diverged", "interrupted", "failed")


class CorruptRecord(Exception):
    """A record's file that cannot be read as gradlab wrote it."""

    def __init__(self, path: Path, what: str):
        self.path, self.what = Path(path), what
        super().__init__(f"corrupt: {path}: {what}")

    @property
    def short(self) -> str:
        """`<file name>: <what>`, for a listing's narrow column."""
        return f"{self.path.name}: {self.what}"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


# --------------------------------------------------------------- summary.json

Check = Callable[[Any], str | None]  # a problem, or None when the value is fine


def _optional(check: Check) -> Check:
    return lambda v: None if v is None else check(v)


def _text(v: Any) -> str | None:
    return None if isinstance(v, str) else f"expected text, got {_shown(v)}"


def _whole(v: Any) -> str | None:
    return None if isinstance(v, int) and not isinstance(v, bool) else \
        f"expected a whole number, got {_shown(v)}"


def _number(v: Any) -> str | None:
    return None if is_number(v) else f"expected a number, got {_shown(v)}"


def _flag(v: Any) -> str | None:
    return None if isinstance(v, bool) else f"expected true or false, got {_shown(v)}"


def _status(v: Any) -> str | None:
    return None if v in STATUSES else \
        f"expected one of {', '.join(STATUSES)}, got {_shown(v)}"


def _mapping(v: Any) -> str | None:
    return None if isinstance(v, dict) else f"expected a mapping, got {_shown(v)}"


def _numbers_by_name(v: Any) -> str | None:
    if not isinstance(v, dict):
        return f"expected a mapping, got {_shown(v)}"
    bad = next((k for k, x in v.items() if x is not None and not is_number(x)), None)
    return None if bad is None else f"{bad}: expected a number, got {_shown(v[bad])}"


def _list_of(check: Check) -> Check:
    def each(v: Any) -> str | None:
        if not isinstance(v, list):
            return f"expected a list, got {_shown(v)}"
        for i, item in enumerate(v):
            problem = check(item)
            if problem:
                return f"{i}: {problem}"
        return None
    return each


def _record_of(fields: dict[str, Check]) -> Check:
    """A mapping whose listed keys, where present, pass their checks (other keys are free)."""
    def each(v: Any) -> str | None:
        if not isinstance(v, dict):
            return f"expected a mapping, got {_shown(v)}"
        for key, check in fields.items():
            if key in v:
                problem = check(v[key])
                if problem:
                    return f"{key}: {problem}"
        return None
    return each


_stats = _optional(_mapping)
_layer = _record_of({"index": _whole, "name": _text, "shape": _optional(_list_of(_whole)),
                     "init": _stats, "final": _stats})
_verdict = _record_of({"kind": _text, "severity": _text, "message": _text,
                       "remedies": _list_of(_text), "layers": _list_of(lambda v: None)})
_where = _optional(_record_of({"step": _optional(_whole)}))
_pretrain = _optional(_record_of({"layers": _list_of(_mapping)}))

# The fields readers rely on, with the type each must have where present (a `running`
# summary has few of them). Fields not listed here are not checked.
SUMMARY_SCHEMA: dict[str, Check] = {
    "name": _text, "status": _status, "error": _optional(_text), "pid": _optional(_whole),
    "device": _optional(_text), "task": _optional(_text), "flush_denormal": _optional(_flag),
    "n_params": _optional(_whole), "steps_planned": _optional(_whole),
    "steps_done": _optional(_whole), "seconds": _optional(_number),
    "steps_per_second": _optional(_number), "config_hash": _optional(_text),
    "baseline_loss": _optional(_number), "initial_loss": _optional(_number),
    "final_loss": _optional(_number), "loss_ratio": _optional(_number),
    "final_metrics": _optional(_numbers_by_name),
    **{f"{k}_{w}": _optional(_number) for k in ("grad_ratio", "grad_norm_min", "weight_norm")
       for w in ("init", "final")},
    "clip_fraction": _optional(_number), "first_nonfinite": _where,
    "flushed_zero_layers": _optional(_whole), "denormal_layers": _optional(_whole),
    "layers": _optional(_list_of(_layer)),
    "time_grads_init": _optional(_list_of(_optional(_number))),
    "time_grads_final": _optional(_list_of(_optional(_number))),
    "time_grad_ratio_init": _optional(_number), "time_grad_ratio_final": _optional(_number),
    "pretrain": _pretrain, "verdicts": _optional(_list_of(_verdict)),
}


def check_summary(summary: Any, path: Path) -> dict[str, Any]:
    """summary.json's content, or CorruptRecord saying which field is wrong."""
    if not isinstance(summary, dict):
        raise CorruptRecord(path, f"expected a JSON object, got {type(summary).__name__} "
                                  f"{_shown(summary)}")
    if "status" not in summary:
        raise CorruptRecord(path, "no status field")
    for key, check in SUMMARY_SCHEMA.items():
        if key in summary:
            problem = check(summary[key])
            if problem:
                raise CorruptRecord(path, f"{key}: {problem}")
    return summary


# --------------------------------------------------------------- config.yaml, CSVs


def check_config(config: Any, path: Path) -> dict[str, Any]:
    """config.yaml's content (a mapping), or CorruptRecord."""
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise CorruptRecord(path, f"expected a mapping of keys, got {type(config).__name__} "
                                  f"{_shown(config)}")
    for section in ("model", "data", "train", "probe"):
        if section in config and not isinstance(config[section], dict):
            raise CorruptRecord(path, f"{section}: expected a mapping, got "
                                      f"{_shown(config[section])}")
    return config


def check_text(line: str, path: Path, number: int) -> None:
    """A line of a record's CSV: NUL bytes mean binary data, not text gradlab wrote."""
    if "\0" in line:
        raise CorruptRecord(path, f"line {number}: binary data (NUL bytes), not CSV text")


def read_json_record(file: Path) -> Any:
    """A record's JSON file (group.json, sweep.json) parsed, or CorruptRecord saying why not."""
    try:
        return json.loads(Path(file).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise CorruptRecord(file, f"cannot be read: {e}") from None
    except json.JSONDecodeError as e:
        raise CorruptRecord(file, f"not JSON: {e.msg} (line {e.lineno})") from None


def check_header(columns: list[str], path: Path, required: tuple[str, ...]) -> None:
    missing = [c for c in required if c not in columns]
    if missing:
        raise CorruptRecord(path, f"the header has no {', '.join(missing)} column "
                                  f"(got {_shown(','.join(columns))})")


def not_text(path: Path, error: UnicodeDecodeError) -> CorruptRecord:
    return CorruptRecord(path, f"not UTF-8 text (byte 0x{error.object[error.start]:02x}): "
                               "binary data?")


def finite_or_none(x: Any) -> float | None:
    return float(x) if is_number(x) and math.isfinite(x) else None

"""Checking a config's `expect:` block against its run's summary.

Keys are summary.json fields, dotted for nested ones (`final_metrics.test_accuracy`); a
value is a literal (`status: diverged`) or a range (`{min: x}`, `{max: y}` or both).
`check(expect, summary)` returns one `Expectation` per key; nothing is evaluated as code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MISSING = object()  # what `lookup` returns for a key the summary does not have


@dataclass(frozen=True)
class Expectation:
    key: str
    wanted: Any
    measured: Any
    ok: bool

    def describe(self) -> str:
        """`grad_ratio_init: expected ≤ 1e-06, measured 0.52`"""
        measured = "missing" if self.measured is MISSING else _show(self.measured)
        return f"{self.key}: expected {describe_wanted(self.wanted)}, measured {measured}"


def describe_wanted(wanted: Any) -> str:
    if isinstance(wanted, dict):
        lo, hi = wanted.get("min"), wanted.get("max")
        if lo is not None and hi is not None:
            return f"between {_show(lo)} and {_show(hi)}"
        return f"≥ {_show(lo)}" if lo is not None else f"≤ {_show(hi)}"
    return _show(wanted)


def _show(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.3g}"
    return str(x) if not isinstance(x, str) else x


def lookup(summary: dict[str, Any], key: str) -> Any:
    """The value at a dotted key path, or a missing marker."""
    node: Any = summary
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return MISSING
    return node


def holds(wanted: Any, measured: Any) -> bool:
    if measured is MISSING:
        return False
    if isinstance(wanted, dict):
        if isinstance(measured, bool) or not isinstance(measured, (int, float)):
            return False
        lo, hi = wanted.get("min"), wanted.get("max")
        return (lo is None or measured >= lo) and (hi is None or measured <= hi)
    return bool(measured == wanted)


def check(expect: dict[str, Any], summary: dict[str, Any] | None) -> list[Expectation]:
    """Every expectation with what was measured; a run with no summary fails them all."""
    summary = summary or {}
    results = []
    for key, wanted in expect.items():
        measured = lookup(summary, key)
        results.append(Expectation(key, wanted, measured, holds(wanted, measured)))
    return results

"""summary.json's fields, computed from the record on disk and the run's outcome.

`build_summary(path, base, outcome, shapes)` reads the first and last logged training steps
back through `reader` (streaming: a large layers.csv is never held whole) and adds the
outcome of training; the verdicts are added by the caller. No torch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from gradlab.record.reader import edge_steps


def build_summary(path: Path, base: dict[str, Any], outcome: dict[str, Any],
                  shapes: list[list[int]]) -> dict[str, Any]:
    """summary.json's fields from the run's outcome and its logged rows.

    `outcome` holds status, error, steps_done, seconds, initial and final (the evaluations
    before and after training), clipped_steps and first_nonfinite.
    """
    first, last = edge_steps(path / "layers.csv")
    initial, final = outcome.get("initial") or {}, outcome.get("final") or {}
    steps_done, seconds = outcome.get("steps_done", 0), outcome.get("seconds", 0.0)
    summary = {
        **base,
        "status": outcome["status"],
        "error": outcome.get("error"),
        "steps_done": steps_done,
        "seconds": round(seconds, 3),
        "steps_per_second": steps_done / seconds if seconds > 0 else None,
        "initial_loss": initial.get("train_loss"),
        "final_loss": final.get("train_loss"),
        "loss_ratio": _ratio(final.get("train_loss"), initial.get("train_loss")),
        "final_metrics": final,
        "grad_ratio_init": _grad_ratio(first),
        "grad_ratio_final": _grad_ratio(last),
        "grad_norm_min_init": _min(first, "grad_norm"),
        "grad_norm_min_final": _min(last, "grad_norm"),
        "weight_norm_init": _total(first, "weight_norm"),
        "weight_norm_final": _total(last, "weight_norm"),
        "clip_fraction": outcome.get("clipped_steps", 0) / steps_done if steps_done else None,
        "first_nonfinite": outcome.get("first_nonfinite"),
        "layers": [
            {"index": i, "name": row["name"], "shape": shapes[i] if i < len(shapes) else None,
             "init": _stats(row), "final": _stats(last[i]) if i < len(last) else None}
            for i, row in enumerate(first)
        ],
    }
    time_first, time_last = edge_steps(path / "time_grads.csv")
    if time_first:  # recurrent models: gradients through time
        init = [r["grad_norm"] for r in sorted(time_first, key=lambda r: r["t"])]
        end = [r["grad_norm"] for r in sorted(time_last, key=lambda r: r["t"])]
        summary.update({
            "time_grads_init": init,
            "time_grads_final": end,
            "time_grad_ratio_init": _edge_ratio(init),
            "time_grad_ratio_final": _edge_ratio(end),
        })
    return summary


def _stats(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in ("step", "layer", "name", "phase")}


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)) or b == 0:
        return None
    return a / b


def _grad_ratio(rows: list[dict[str, Any]]) -> float | None:
    """Gradient norm of the first probed layer over that of the last."""
    if len(rows) < 2:
        return None
    return _ratio(rows[0]["grad_norm"], rows[-1]["grad_norm"])


def _edge_ratio(values: list[float] | None) -> float | None:
    """‖∂L/∂h_1‖ / ‖∂L/∂h_T‖ for a recurrent model; None for others."""
    if not values or len(values) < 2:
        return None
    return _ratio(values[0], values[-1])


def _min(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if isinstance(r[key], (int, float)) and math.isfinite(r[key])]
    return min(values) if values else None


def _total(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows]
    return math.sqrt(sum(v * v for v in values)) if values else None

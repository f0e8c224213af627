"""summary.json's fields, computed from the record on disk and the run's outcome.

`build_summary(path, base, outcome, shapes)` reads the first and last logged training steps
back through `reader` (streaming: a large layers.csv is never held whole) and adds the
outcome of training; the verdicts are added by the caller. No torch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from gradlab.record.reader import edge_steps, is_training_row, iter_csv


def build_summary(path: Path, base: dict[str, Any], outcome: dict[str, Any],
                  shapes: list[list[int]]) -> dict[str, Any]:
    """summary.json's fields from the run's outcome and its logged rows.

    `outcome` holds status, error, steps_done, seconds, initial and final (the evaluations
    before and after training), clipped_steps (None where clipping is not seen: a watched
    loop's) and first_nonfinite.
    """
    first, last = edge_steps(path / "layers.csv")
    ends = ratio_layers(first, last)
    initial, final = outcome.get("initial") or {}, outcome.get("final") or {}
    steps_done, seconds = outcome.get("steps_done", 0), outcome.get("seconds", 0.0)
    clipped = outcome.get("clipped_steps", 0)
    summary = {
        **base,
        "status": outcome["status"],
        "error": outcome.get("error"),
        "steps_done": steps_done,
        "seconds": round(seconds, 3),
        "steps_per_second": steps_done / seconds if seconds > 0 else None,
        "initial_loss": initial.get("train_loss"),
        "initial_metrics": initial,
        "final_loss": final.get("train_loss"),
        "loss_ratio": _ratio(final.get("train_loss"), initial.get("train_loss")),
        "final_metrics": final,
        "generalisation_gap": _gap(final),
        "grad_ratio_init": _grad_ratio(first, ends=ends),
        "grad_ratio_final": _grad_ratio(last, ends=ends),
        "delta_ratio_init": _grad_ratio(first, "delta_norm", ends),
        "delta_ratio_final": _grad_ratio(last, "delta_norm", ends),
        "grad_norm_min_init": _min(first, "grad_norm"),
        "grad_norm_min_final": _min(last, "grad_norm"),
        "weight_norm_init": _total(first, "weight_norm"),
        "weight_norm_final": _total(last, "weight_norm"),
        "clip_fraction": clipped / steps_done if steps_done and clipped is not None else None,
        "clip": ({"steps_clipped": clipped, "steps": steps_done,
                  "fraction": clipped / steps_done if steps_done else None}
                 if outcome.get("clip") else None),
        "flushed_zero_layers": (sum(1 for r in first if r.get("grad_norm") == 0)
                                if base.get("flush_denormal") and first else None),
        "denormal_layers": (sum(1 for r in first if _denormal(r.get("grad_absmax")))
                            if not base.get("flush_denormal") and first else None),
        "first_nonfinite": outcome.get("first_nonfinite"),
        "layers": [
            {"index": i, "name": row["name"], "shape": shapes[i] if i < len(shapes) else None,
             "init": _stats(row), "final": _stats(last[i]) if i < len(last) else None}
            for i, row in enumerate(first)
        ],
    }
    summary["over_run"] = over_run(path, ends)
    summary["precision"] = precision_summary(path, outcome.get("precision"), shapes, first, last)
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


def _gap(final: dict[str, Any]) -> float | None:
    """Test loss − training loss at the end (how much the net overfits), where both are finite."""
    test, train = final.get("test_loss"), final.get("train_loss")
    if not isinstance(test, (int, float)) or not isinstance(train, (int, float)) or \
            not (math.isfinite(test) and math.isfinite(train)):
        return None
    return float(test - train)


def _stats(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in ("step", "layer", "name", "phase")}


# float32's smallest normal number: below it a value is denormal (subnormal), which IEEE
# arithmetic keeps and some CPUs compute several times slower
FLOAT32_TINY = 1.1754943508222875e-38


def _denormal(absmax: object) -> bool:
    """Whether a layer's largest |gradient entry| is denormal: every entry is, or is 0."""
    return isinstance(absmax, float) and 0 < absmax < FLOAT32_TINY


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)) or b == 0:
        return None
    return a / b


def ratio_layers(first: list[dict[str, Any]], last: list[dict[str, Any]]) -> set[str]:
    """The layers a first/last ratio may end at, the same at every step: those with a gradient
    at the first and the last logged step. A layer with none (it took no part in the loss:
    never called, or frozen) is no end of the net; nor is one that joins or leaves later."""
    def graded(rows: list[dict[str, Any]]) -> set[str]:
        return {str(r.get("name")) for r in rows if r.get("grad_norm") is not None}

    return graded(first) & graded(last) if first and last else graded(first or last)


def _grad_ratio(rows: list[dict[str, Any]], key: str = "grad_norm",
                ends: set[str] | None = None) -> float | None:
    """A norm of the first probed layer over that of the last (None where either is not
    measured); NaN or Inf where a measured one is. With `ends` (`ratio_layers`), the first and
    last of those layers, at every step alike."""
    if ends is not None:
        rows = [r for r in rows if str(r.get("name")) in ends]
    if len(rows) < 2:
        return None
    a, b = rows[0].get(key), rows[-1].get(key)
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return None
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.nan if math.isnan(a) or math.isnan(b) else a / b if b else math.nan
    return a / b if b else (math.inf if a else None)


def _edge_ratio(values: list[float] | None) -> float | None:
    """‖∂L/∂h_1‖ / ‖∂L/∂h_T‖ for a recurrent model; None for others."""
    if not values or len(values) < 2:
        return None
    return _ratio(values[0], values[-1])


def _min(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if isinstance(r[key], (int, float)) and math.isfinite(r[key])]
    return min(values) if values else None


def _total(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if isinstance(r[key], (int, float))]
    return math.sqrt(sum(v * v for v in values)) if values else None


def over_run(path: Path, ends: set[str] | None = None) -> dict[str, Any]:
    """The worst of every logged training step, read streaming: for each first/last ratio
    (weight gradients, the backward signal δ, the activations' std from the first hidden layer
    to the last) its smallest and largest value and where; the largest layer gradient norm and
    total gradient norm, and where. A verdict can then say when a problem held."""
    out: dict[str, Any] = {}
    step_rows: list[dict[str, Any]] = []

    def take(rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        step = rows[0]["step"]
        _extreme(out, "grad_ratio", _grad_ratio(rows, ends=ends), step)
        _extreme(out, "delta_ratio", _grad_ratio(rows, "delta_norm", ends), step)
        stds = [r.get("act_std") for r in rows]
        stds = [v for v in stds if isinstance(v, (int, float))]
        if len(stds) >= 2 and stds[0] and math.isfinite(stds[0]):
            _extreme(out, "act_std_ratio", stds[-1] / stds[0], step)
        for r in rows:
            g = r.get("grad_norm")
            if isinstance(g, (int, float)) and math.isfinite(g):
                best = out.get("grad_norm_max")
                if best is None or g > best["value"]:
                    out["grad_norm_max"] = {"value": g, "step": step, "layer": r["name"]}

    for row in iter_csv(path / "layers.csv"):
        if not is_training_row(row):
            continue
        if step_rows and row["step"] != step_rows[0]["step"]:
            take(step_rows)
            step_rows = []
        step_rows.append(row)
    take(step_rows)
    for row in iter_csv(path / "metrics.csv"):
        g = row.get("grad_norm")
        if is_training_row(row) and isinstance(g, (int, float)) and math.isfinite(g):
            best = out.get("total_grad_norm_max")
            if best is None or g > best["value"]:
                out["total_grad_norm_max"] = {"value": g, "step": row["step"]}
    return out


def precision_summary(path: Path, amp: dict[str, Any] | None, shapes: list[list[int]],
                      first: list[dict[str, Any]], last: list[dict[str, Any]]
                      ) -> dict[str, Any] | None:
    """A bf16/fp16 run's headroom against its dtype's limits, from layers.csv (streaming) and
    what the loop recorded (`amp`: dtype, max, tiny, smallest, the loss scale and the grad
    scaler's skipped steps and scale); None for an fp32 run.

    Headroom is in orders of magnitude below the largest finite value (negative: overflowed).
    Underflow fractions are of all probed weight entries (`grad_underflow`: 0 in the low
    precision, nonzero in a float32 backward of the same batch)."""
    if not amp:
        return None
    sizes = [math.prod(shape) for shape in shapes]
    out: dict[str, Any] = dict(amp)
    peaks: dict[str, dict[str, Any]] = {}
    worst: dict[str, Any] | None = None
    overflow, overflow_steps, zero_layers = 0.0, set(), []
    for row in iter_csv(path / "layers.csv"):
        if not is_training_row(row):
            continue
        for key in ("z_absmax", "grad_absmax"):
            v = row.get(key)
            if isinstance(v, (int, float)) and not math.isnan(v) and (
                    key not in peaks or v > peaks[key]["value"]):
                peaks[key] = {"value": v, "step": row["step"], "layer": row["name"]}
        n = row.get("overflow")
        if isinstance(n, (int, float)) and n > 0:
            overflow += n
            overflow_steps.add(row["step"])
        lost = row.get("grad_underflow")
        size = sizes[row["layer"]] if isinstance(row.get("layer"), int) \
            and row["layer"] < len(sizes) else 0
        if isinstance(lost, (int, float)) and lost > 0 and size:
            if worst is None or lost / size > worst["fraction"]:
                worst = {"fraction": lost / size, "count": int(lost), "step": row["step"],
                         "layer": row["name"]}
            if row.get("grad_norm") == 0 and row["name"] not in zero_layers:
                zero_layers.append(row["name"])  # every entry of its gradient was lost
    limit = amp.get("max")
    for key, name in (("z_absmax", "headroom"), ("grad_absmax", "grad_headroom")):
        peak = peaks.get(key)
        out[key] = peak
        v = peak["value"] if peak else None
        out[name] = (math.log10(limit / v) if v and math.isfinite(v) and limit else
                     -math.inf if v is not None and math.isinf(v) else None)
    out.update({
        "overflow": overflow, "overflow_steps": len(overflow_steps),
        "underflow_init": _fraction(first, "grad_underflow", sizes),
        "underflow_final": _fraction(last, "grad_underflow", sizes),
        "underflow_max": worst,
        "zero_grad_layers": zero_layers,
        "tiny_init": _fraction(first, "grad_tiny", sizes),
        "tiny_final": _fraction(last, "grad_tiny", sizes),
    })
    return out


def _fraction(rows: list[dict[str, Any]], key: str, sizes: list[int]) -> float | None:
    """A count column summed over a step's layers, as a fraction of all their entries."""
    counted = [(r[key], sizes[i]) for i, r in enumerate(rows)
               if i < len(sizes) and isinstance(r.get(key), (int, float))]
    total = sum(size for _, size in counted)
    return sum(n for n, _ in counted) / total if counted and total else None


def _extreme(out: dict[str, Any], key: str, value: float | None, step: int) -> None:
    if value is None or not math.isfinite(value):
        return
    entry = out.setdefault(key, {"min": value, "min_step": step, "max": value, "max_step": step})
    if value < entry["min"]:
        entry["min"], entry["min_step"] = value, step
    if value > entry["max"]:
        entry["max"], entry["max_step"] = value, step

"""How far the mean-field prediction and a measured gradient flow agree (numpy, no torch).

`fit_log_slope` fits ln ‖g_l‖ per hidden layer, read from the output towards the input;
`slope_agreement` sets it against the theory's per-layer factor √χ₁ (`analyse.theory`);
`run_agreement` does both from a run's summary.json (its `prediction` and the step-0 layer
norms), for the run report. `gradlab predict` uses the same functions on its own measurement.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

FLAT = 0.05  # |ln(per-layer factor)| below this counts as flat (a factor within ≈ 0.95–1.05)
AGREES, ROUGHLY = 1.5, 2.0  # slope ratios within these factors of 1: agrees / roughly agrees


def fit_log_slope(norms: Sequence[float | None],
                  names: Sequence[str]) -> tuple[float | None, list[str], list[str]]:
    """The least-squares slope of ln ‖g_l‖ per layer *backwards* (from the last hidden layer
    towards the first): negative when gradients shrink towards the input (vanishing), and
    exp(slope) is the measured per-layer factor.

    Layers whose norm is 0, missing or not finite (underflow, overflow) are left out; the
    slope needs two layers. Returns (slope, the layers used, the layers left out)."""
    keep = [i for i, v in enumerate(norms)
            if isinstance(v, (int, float)) and math.isfinite(v) and v > 0]
    used = [names[i] for i in keep]
    excluded = [names[i] for i in range(len(norms)) if i not in set(keep)]
    if len(keep) < 2:
        return None, used, excluded
    back = len(norms) - 1 - np.asarray(keep, dtype=float)  # layers between l and the last one
    values = np.log(np.asarray([norms[i] for i in keep], dtype=float))
    return float(np.polyfit(back, values, 1)[0]), used, excluded


def _verdict(chi: float, slope: float) -> tuple[float | None, str]:
    """(slope / ln √χ₁ or None where the theory is flat, the verdict)."""
    predicted = 0.5 * math.log(chi)
    if abs(predicted) >= FLAT:
        ratio = slope / predicted
        return ratio, ("agrees" if 1 / AGREES <= ratio <= AGREES else
                       "roughly agrees" if 1 / ROUGHLY <= ratio <= ROUGHLY else "disagrees")
    return None, ("agrees" if abs(slope) < FLAT else
                  "roughly agrees" if abs(slope) < ROUGHLY * FLAT else "disagrees")


def slope_agreement(chi: float, slope: float, layers: int,
                    delta_slope: float | None = None,
                    delta_layers: int | None = None) -> dict[str, Any] | None:
    """The theory's per-layer gradient factor √χ₁ against the measured weight-gradient one,
    exp(slope), and (when given) the pre-activation gradients' exp(delta_slope), which the
    sentence then leads with (`headline`).

    `slope_ratio` is slope / ln √χ₁ (1 when they agree; None where the theory is flat,
    |ln √χ₁| < FLAT). The verdict: `agrees` when the ratio is within a factor AGREES of 1 (or
    both are flat), `roughly agrees` within ROUGHLY, else `disagrees`. `delta_*` is the same
    for ‖∂L/∂z_l‖, the quantity χ₁ is about: a weight gradient ∂L/∂W_l = δ_l h_{l−1}ᵀ also
    carries its layer's input, whose norm changes with depth where q* is 0 or ∞ (a ReLU net
    at σw² > 2: there δ grows by √χ₁ per layer backwards and ‖h‖ shrinks by as much, so the
    weight gradients are flat; and fc1's input is the data). The sentence leads with
    ‖∂L/∂z‖ and adds the weight gradients' verdict where it differs.
    None for χ₁ ≤ 0."""
    if not (math.isfinite(chi) and chi > 0 and math.isfinite(slope)):
        return None
    ratio, verdict = _verdict(chi, slope)
    factor = math.exp(slope)
    out: dict[str, Any] = {
        "predicted_factor": math.sqrt(chi), "measured_factor": factor,
        "predicted_log_slope": 0.5 * math.log(chi), "measured_log_slope": slope,
        "slope_ratio": ratio, "layers": layers, "verdict": verdict,
        "delta_factor": None, "delta_slope_ratio": None, "delta_verdict": None}
    if delta_slope is not None and math.isfinite(delta_slope):
        delta_ratio, delta_verdict = _verdict(chi, delta_slope)
        out.update(delta_factor=math.exp(delta_slope), delta_slope_ratio=delta_ratio,
                   delta_verdict=delta_verdict)
    what, shown, shown_ratio, shown_verdict = headline(out)
    how = (f" (slope ratio {shown_ratio:.2f})" if shown_ratio is not None
           else " (both flat)" if shown_verdict == "agrees" else " (the theory is flat)")
    fitted = delta_layers if what != WEIGHT and delta_layers is not None else layers
    sentence = (f"per layer towards the input, {what} changes ×{shown:.3g} (fit over "
                f"{fitted} hidden layers); the theory's √χ₁ is {math.sqrt(chi):.3g}: "
                f"{shown_verdict}{how}")
    if what != WEIGHT and verdict != shown_verdict:
        sentence += (f"; the weight gradients ‖∂L/∂W‖ ×{factor:.3g}: {verdict} (a weight "
                     "gradient also carries its layer's input ‖h_(l−1)‖, which changes with "
                     "depth here, and fc1's is the data)")
    out["sentence"] = sentence
    return out


DELTA, WEIGHT = "‖∂L/∂z‖", "‖∂L/∂W‖"


def headline(agreement: Mapping[str, Any]) -> tuple[str, float, float | None, str]:
    """(what was fitted, its per-layer factor, slope ratio, verdict) for the sentence a report
    leads with: the pre-activation gradients ‖∂L/∂z_l‖ where they were measured (χ₁ is about
    them), else the weight gradients (a record from before delta_norm)."""
    if agreement.get("delta_verdict") is not None:
        return (DELTA, float(agreement["delta_factor"]), agreement.get("delta_slope_ratio"),
                str(agreement["delta_verdict"]))
    return (WEIGHT, float(agreement["measured_factor"]), agreement.get("slope_ratio"),
            str(agreement["verdict"]))


def run_agreement(summary: Mapping[str, Any]) -> dict[str, Any] | None:
    """`slope_agreement` for a run: its `prediction` against the hidden layers' grad_norm at
    the first logged step (summary.json `layers[i].init`). None without a prediction or when
    fewer than two hidden layers have a finite, nonzero norm."""
    prediction = summary.get("prediction") or {}
    chi, depth = prediction.get("chi1"), prediction.get("depth")
    layers = summary.get("layers") or []
    if (not prediction.get("predictable") or not isinstance(chi, (int, float))
            or not isinstance(depth, int) or not 2 <= depth < len(layers) + 1):
        return None
    hidden = layers[:depth]
    names = [str(layer.get("name")) for layer in hidden]
    slope, used, left = fit_log_slope([(r.get("init") or {}).get("grad_norm") for r in hidden],
                                      names)
    delta, delta_used, delta_left = fit_log_slope([(r.get("init") or {}).get("delta_norm")
                                                   for r in hidden], names)
    if slope is None:
        return None
    out = slope_agreement(float(chi), slope, len(used), delta, len(delta_used))
    if out is not None:  # the layers the headline's fit left out (0 or not finite)
        out["left_out"] = delta_left if out.get("delta_verdict") is not None else left
    return out

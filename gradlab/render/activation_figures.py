"""A run's activations figure: each hidden layer's output distribution at init and at the end,
on the activation's own range, with the mean slope (or the dead fraction) beside it."""

from __future__ import annotations

import math
import sys
from typing import Any

import matplotlib

if "matplotlib.pyplot" not in sys.modules:  # no display needed; leave a user's own pyplot alone
    matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import PercentFormatter  # noqa: E402

from gradlab.config.schema import SATURATING  # noqa: E402
from gradlab.record.reader import Record  # noqa: E402
from gradlab.render.figures import (  # noqa: E402
    divergence,
    empty,
    fill_band,
    heading,
    layer_grid,
    layer_ticks,
    marking_isolated,
    new_figure,
    title,
    value,
)

RANGE = {"sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0)}
# Where an unbounded activation's outputs end below (a ±std band is clipped there).
FLOOR = {"relu": 0.0, "selu": -1.7581, "gelu": -0.17}
SATURATED_BEYOND = {"sigmoid": ((0.0, 0.01), (0.99, 1.0)), "tanh": ((-1.0, -0.99), (0.99, 1.0))}
# The largest slope of the activation (sigmoid: 1/4 at h = 1/2; tanh: 1 at h = 0).
MAX_SLOPE = {"sigmoid": 0.25, "tanh": 1.0}


def activations_figure(record: Record) -> Figure:
    """Each hidden layer's output distribution (mean, ±1 and ±2 std) at init and at the end on
    the activation's whole range, and what sets the backward signal: for sigmoid and tanh the
    mean slope φ′ at the outputs (exact from their mean and std), for ReLU the dead units."""
    steps, names, mean, present = layer_grid(record, "act_mean")
    _, _, std, std_present = layer_grid(record, "act_std")
    activation = str((record.config.get("model") or {}).get("activation") or "")
    key, label = _unit_stat(record, activation)
    _, _, frac, frac_present = layer_grid(record, key)
    # a watched model mixing activations (ReLU convolutions, a tanh layer): the layers of the
    # other kind have the other fraction, drawn beside this one
    other_key, other_label = (("act_saturated", "saturated") if key == "act_dead"
                              else ("act_dead", "dead"))
    _, _, other, other_present = layer_grid(record, other_key)
    quantiles = [layer_grid(record, f"act_q{q}")[2] for q in ("05", "50", "95")]
    has_q = bool(np.isfinite(quantiles[0]).any())  # records from before the quantiles: std
    # an empty cell is "not measured" (the head, a layer skipped on a step); a logged NaN/Inf
    # (an overflowed forward pass) was measured
    distribution = present & std_present
    measured = distribution | frac_present | other_present
    logged = [i for i in range(len(steps)) if measured[i].any()]
    slope = activation in MAX_SLOPE
    third = slope or np.isfinite(frac[logged]).any() or np.isfinite(other[logged]).any()
    fig, grid = new_figure(14 if third else 10, 5.0, 1, 3 if third else 2, bottom=0.95,
                           top=0.85, wspace=0.3)
    axes = list(grid[0])
    fig.suptitle(title(record, f"activations{f' ({activation})' if activation else ''}")
                 + ("\nbands: the 5–95% quantiles and mean ±1 std of each layer's outputs"
                    if has_q else "\nbands: mean ±1 and ±2 std of each layer's outputs (this "
                                  "record has no quantiles)"), fontsize="medium")
    if not logged:
        empty(axes[0], "no activation statistics were logged")
        for a in axes[1:]:
            empty(a, "")
        return fig
    hidden = [c for c in range(len(names)) if measured[:, c].any()]  # not the head
    mean, std, frac, other = mean[:, hidden], std[:, hidden], frac[:, hidden], other[:, hidden]
    mixed = not slope and bool(np.isfinite(other[logged]).any())
    distribution = distribution[:, hidden]
    quantiles = [q[:, hidden] for q in quantiles]
    names = [names[c] for c in hidden]
    x = np.arange(1, len(names) + 1)
    ends = [(logged[0], "init", "C0")] + ([(logged[-1], "end", "C3")] if len(logged) > 1 else [])
    bounds = _bounds(record, activation)
    def qs(i: int) -> list[np.ndarray] | None:
        return [q[i] for q in quantiles] if has_q else None

    _distribution(axes[0], x, mean[ends[0][0]], std[ends[0][0]], activation, bounds, ends[0][2],
                  f"at init (step {steps[ends[0][0]]})", qs(ends[0][0]),
                  distribution[ends[0][0]])
    if len(ends) > 1:
        _distribution(axes[1], x, mean[ends[1][0]], std[ends[1][0]], activation, bounds,
                      ends[1][2], f"at the end (step {steps[ends[1][0]]})", qs(ends[1][0]),
                      distribution[ends[1][0]])
        axes[1].sharey(axes[0])
    else:
        where = divergence(record)
        empty(axes[1], f"only step {steps[ends[0][0]]} was logged"
              + (f"\nbefore the divergence at step {where[0]}" if where else ""))
    if activation not in RANGE:  # unbounded: one y range for both, from the data
        at = [i for i, *_ in ends]
        with np.errstate(all="ignore"):  # an overflowed layer's NaN/Inf is left out below
            both = np.clip(np.concatenate([mean[at] + 2 * std[at], mean[at] - 2 * std[at]]),
                           *bounds)
        finite = both[np.isfinite(both)]
        if finite.size:
            pad = 0.05 * (float(finite.max() - finite.min()) or 1.0)
            axes[0].set_ylim(float(finite.min()) - pad, float(finite.max()) + pad)
    if third:
        a = axes[2]
        products = []
        for i, when, color in ends[::-1]:  # init drawn last (dashed): visible where they agree
            y = _mean_slope(activation, mean[i], std[i]) if slope else frac[i]
            a.plot(x, y, color=color, marker="o", ms=3, lw=1.6,
                   ls="--" if when == "init" else "-",
                   label=f"{label + ', ' if mixed else ''}{when} (step {steps[i]})")
            if mixed:
                a.plot(x, other[i], color=color, marker="s", ms=5, lw=1.0, ls=":",
                       label=f"{other_label}, {when} (step {steps[i]})")
            if slope and np.isfinite(y).all() and (y > 0).all():
                products.append(f"{when}: {float(np.prod(y)):.1e}")
        if products:
            over = f"the {len(x)} layers" if len(x) > 1 else "the one layer"
            a.text(0.98, 0.04, f"product over {over}\n" + ", ".join(products[::-1]),
                   transform=a.transAxes, ha="right", va="bottom", fontsize="small",
                   bbox={"facecolor": "white", "alpha": 0.85, "lw": 0})
        if slope:
            top = MAX_SLOPE[activation]
            a.axhline(top, color="black", ls=":", lw=1.4,
                      label=f"largest possible: {top:g} (at h = {0.5 if top < 1 else 0:g})")
            a.set_ylim(0, top * 1.08)
            a.set_ylabel("mean φ′ at the layer's outputs")
            worst = np.nanmax(frac[[i for i, *_ in ends]]) if np.isfinite(frac).any() else math.nan
            heading(a, "slope φ′: each layer scales ∂L/∂h by φ′ (then by Wᵀ)"
                        + (f"\nsaturated units: at most {worst:.0%} of a layer"
                           if math.isfinite(worst) else ""), fontsize="medium")
        else:
            a.set_ylim(-0.02, 1.02)
            a.yaxis.set_major_formatter(PercentFormatter(1.0))
            a.set_ylabel(f"{label} units" + (f" ({other_label} where it applies)"
                                              if mixed else ""))
            heading(a, f"{label} fraction" + (" (|output| near the asymptotes)"
                                               if label == "saturated" else
                                               " (units off for the whole batch)")
                    + (f"\n{other_label}: layers of the other activation kind"
                       if mixed else ""), fontsize="medium")
        a.legend(fontsize="small", loc="best")
    for a in axes:
        layer_ticks(a, names)
        a.set_xlabel("hidden layer (input → output)")
        a.grid(alpha=0.3)
        if len(names) == 1:  # one layer's bar left of the middle: the legend beside, not on it
            a.set_xlim(0.4, 2.2)
    mark = divergence(record)
    if mark is not None:
        axes[0].text(0.01, 0.01, mark[1], transform=axes[0].transAxes, color="red",
                     fontsize="small", va="bottom")
    return fig


def _bounds(record: Record, activation: str) -> tuple[float, float]:
    """The range of the activation's outputs (-inf/inf where unbounded)."""
    if activation == "elu":
        alpha = value((record.config.get("model") or {}).get("elu_alpha"))
        return (-alpha if math.isfinite(alpha) else -math.inf), math.inf
    return RANGE.get(activation, (FLOOR.get(activation, -math.inf), math.inf))


def _distribution(ax: Any, x: np.ndarray, mean: np.ndarray, std: np.ndarray, activation: str,
                  bounds: tuple[float, float], color: str, when: str,
                  quantiles: list[np.ndarray] | None = None,
                  measured: np.ndarray | None = None) -> None:
    """One step's outputs by layer: the 5–95% quantiles and the median (where the record has
    them; else mean ±2 std), mean ±1 std (clipped to the activation's range), the saturation
    zones shaded, the whole range shown: a narrow band is not zoomed into.

    `measured` (by layer; all, if not given) tells a logged NaN/Inf, marked as an overflow,
    from a statistic not measured (an empty cell), which is a gap. A band has a bar where a
    layer has no measured neighbour (`fill_band`): one hidden layer's band is no area."""
    low, high = bounds
    ok = np.isfinite(mean) & np.isfinite(std)
    overflow = ~ok & (np.ones(ok.shape, dtype=bool) if measured is None else measured)
    m, s = np.where(ok, mean, np.nan), np.where(ok, std, np.nan)
    if quantiles is not None:
        q05, q50, q95 = quantiles
        fill_band(ax, x, q05, q95, color=color, alpha=0.15, lw=0, label="5–95% of the outputs")
        fill_band(ax, x, np.clip(m - s, low, high), np.clip(m + s, low, high), color=color,
                  alpha=0.35, lw=0, label="mean ±1 std")
        ax.plot(x, q50, **marking_isolated(q50, {"color": color, "lw": 1.2, "ls": "--",
                                                 "label": "median output"}))
    else:
        for k, alpha, what in ((2, 0.15, "±2 std"), (1, 0.35, "±1 std")):
            fill_band(ax, x, np.clip(m - k * s, low, high), np.clip(m + k * s, low, high),
                      color=color, alpha=alpha, lw=0, label=f"mean {what}")
    ax.plot(x, m, color=color, lw=1.8, marker="o", ms=3, label="mean output")
    if overflow.any():
        y = high if math.isfinite(high) else float(np.nanmax(np.abs(m))) if ok.any() else 1.0
        ax.plot(x[overflow], np.full(int(overflow.sum()), y), ls="none", marker="x", ms=7,
                mew=2, color="red", label="NaN/Inf (overflow)")
    for k, (a, b) in enumerate(SATURATED_BEYOND.get(activation, ())):
        ax.axhspan(a, b, color="red", alpha=0.12, lw=0,
                   label="saturated (φ′ ≈ 0)" if k == 0 else None)
    if activation in RANGE:
        pad = 0.03 * (high - low)
        ax.set_ylim(low - pad, high + pad)
    heading(ax, f"output distribution {when}", fontsize="medium")
    ax.set_ylabel("layer output h" + (" (quantiles, mean ±1 std)" if quantiles is not None
                                      else " (mean, ±1 and ±2 std)"))
    ax.legend(fontsize="small", loc="best")


def _unit_stat(record: Record, activation: str) -> tuple[str, str]:
    """Saturation for sigmoid/tanh, dead units otherwise; else whichever column was measured."""
    if activation in SATURATING:
        return "act_saturated", "saturated"
    if activation:
        return "act_dead", "dead"
    _, _, sat, _ = layer_grid(record, "act_saturated")
    return ("act_saturated", "saturated") if np.isfinite(sat).any() else ("act_dead", "dead")


def _mean_slope(activation: str, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """E[φ′] over a layer's outputs from their mean and std: sigmoid φ′ = h(1 − h), so
    E[φ′] = E[h] − E[h²]; tanh φ′ = 1 − h², so E[φ′] = 1 − E[h²]; E[h²] = std² + mean²."""
    with np.errstate(all="ignore"):  # an overflowed layer's NaN/Inf stays NaN/Inf
        second = std ** 2 + mean ** 2
        return mean - second if activation == "sigmoid" else 1 - second



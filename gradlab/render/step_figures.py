"""A run's figures over its steps: the total gradient norm with clipping, the update-to-weight
ratio per layer, and each layer's gradient range (by layer, and over steps)."""

from __future__ import annotations

import math
import sys
import warnings
from typing import Any

import matplotlib

if "matplotlib.pyplot" not in sys.modules:  # no display needed; leave a user's own pyplot alone
    matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.legend import Legend  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from gradlab.record.reader import Record  # noqa: E402
from gradlab.render.figures import (  # noqa: E402
    column,
    depth_colors,
    divergence,
    draw_norms,
    empty,
    fill_band,
    fit_legend,
    heading,
    layer_grid,
    layer_ticks,
    log_floor,
    log_scale,
    mark_divergence,
    mark_nonfinite,
    new_figure,
    nonfinite_legend,
    nothing_finite,
    pick,
    title,
    top_of,
    training_rows,
    value,
    zero_legend,
)


def grad_norm_figure(record: Record) -> Figure:
    """The total gradient norm over steps (before clipping), and with clipping its threshold,
    the steps it clipped and the norm after clipping (Pascanu et al. 2013)."""
    rows = training_rows(record.metrics)
    steps, before = column(rows, "step"), column(rows, "grad_norm")
    measured = np.array([r.get("grad_norm") is not None for r in rows], dtype=bool)
    after, flags = column(rows, "grad_norm_clipped"), column(rows, "clipped")
    clip = (record.config.get("train") or {}).get("clip")
    fig, [[ax]] = new_figure(8.5, 4.8, bottom=0.55)
    note = "" if isinstance(clip, dict) else " (no clipping configured)"
    heading(ax, title(record, f"total gradient norm ‖∂L/∂θ‖ over steps{note}"))
    if not np.isfinite(before).any():
        ax.plot([], [])
        empty(ax, "no finite gradient norm was logged" if measured.any()
              else "no gradient norm was logged")
        mark_divergence(ax, record, marker=True)
        return fig
    floor = log_floor(np.concatenate([before, after]))
    zeros = draw_norms(ax, steps, before, floor, color="C0", lw=1.5, marker="o", ms=3,
                       label="before clipping" if isinstance(clip, dict) else "total norm")
    if np.isfinite(after).any():
        zeros |= draw_norms(ax, steps, after, floor, color="C2", lw=1.5, marker="s", ms=4,
                            zorder=3, label="after clipping (probed steps)")
    handles: list[Any] = []
    if isinstance(clip, dict):
        flagged = flags == 1
        shown = np.where(before > 0, before, floor)
        s = record.summary or {}
        total = (s.get("clip") or {})
        overall = (f"; {total['steps_clipped']} of {total['steps']} steps in all"
                   if isinstance(total.get("steps_clipped"), int)
                   and isinstance(total.get("steps"), int) else "")
        ax.plot(steps[flagged], shown[flagged], ls="none", marker="o", ms=8, mfc="none",
                mec="C3", mew=1.5,
                label=f"clipped ({int(flagged.sum())} of {len(rows)} logged steps{overall})")
        limit, p = value(clip.get("max_norm")), value(clip.get("norm_type"))
        if clip.get("by") == "norm" and math.isfinite(limit):
            of = "" if p == 2 or math.isnan(p) else f" (compared with the {p:g}-norm)"
            ax.axhline(limit, color="C3", ls="--", lw=1.4,
                       label=f"clip threshold max_norm = {limit:g}{of}")
        elif clip.get("by") == "value":
            handles.append(Line2D([], [], color="none", label=(
                f"clipped by value: each entry to ±{value(clip.get('max_value')):g} "
                "(no threshold on the norm)")))
    # only a measured NaN/Inf is marked; a None (an empty cell: not measured) is a gap
    bad = mark_nonfinite(ax, steps[measured], before[measured], top_of(before))
    log_scale(ax)
    mark_divergence(ax, record, marker=True)
    _finish(ax, ax.get_legend_handles_labels()[0] + handles,
            zero_legend(floor, "exactly 0") if zeros else None, bad,
            "step (logged steps)", "gradient 2-norm, all parameters (log scale)", loc="best")
    return fig


UPDATE_GUIDE = 1e-3  # a healthy ‖ΔW‖/‖W‖ per step (CS231n; Karpathy)
LAYER_LINES = 6  # layers drawn as lines in the over-steps figures: first, ..., last


def update_ratio_figure(record: Record) -> Figure:
    """‖ΔW‖/‖W‖ of each step over steps, a few layers as lines and the range over all, with
    the ~1e-3 rule of thumb (CS231n)."""
    steps, names, u, present = layer_grid(record, "update_ratio")
    fig, [[ax]] = new_figure(10.5, 4.8, bottom=0.55, right=2.3)
    heading(ax, title(record, "update / weight ratio ‖ΔW‖/‖W‖ per step"))
    logged = [i for i in range(len(steps)) if present[i].any()]
    if not logged or not np.isfinite(u[logged]).any():
        empty(ax, nothing_finite(record, present, "update ratio") if logged
              else "no update ratios were logged")
        mark_divergence(ax, record)
        return fig
    x, u = np.asarray(steps, dtype=float)[logged], u[logged]
    floor = log_floor(u)
    shown = np.where(u == 0, floor, np.where(np.isfinite(u), u, np.nan))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN step has no range
        lo, hi = np.nanmin(shown, axis=1), np.nanmax(shown, axis=1)
    fill_band(ax, x, lo, hi, color="grey", alpha=0.2, lw=0,
              label=f"range over all {len(names)} layers")
    chosen = pick(len(names), LAYER_LINES)
    zeros = False
    for c, color in zip(chosen, depth_colors(len(chosen))):
        zeros |= draw_norms(ax, x, u[:, c], floor, color=color, lw=1.5, label=names[c])
    ax.axhline(UPDATE_GUIDE, color="black", ls="--", lw=1.2,
               label="≈1e-3: a healthy step (rule of thumb)")
    overflowed = (present[logged] & ~np.isfinite(u)).any(axis=1)  # not measured is no NaN
    bad = mark_nonfinite(ax, x, np.where(overflowed, np.nan, 1.0), top_of(u))
    log_scale(ax)
    mark_divergence(ax, record)
    legend = _finish(ax, ax.get_legend_handles_labels()[0],
                     zero_legend(floor, "exactly 0 (the update underflowed)") if zeros else None,
                     bad, "step (probed steps)", "‖ΔW‖ / ‖W‖ (log scale)", loc="upper left",
                     bbox_to_anchor=(1.01, 1), borderaxespad=0)
    fit_legend(fig, legend)
    return fig


def _finish(ax: Any, handles: list[Any], zero: Any, bad: bool, xlabel: str, ylabel: str,
            **legend: Any) -> Legend:
    """An over-steps axis's labels, integer step ticks, grid and legend (with the exact-0 and
    NaN/Inf markers when drawn); returns the legend."""
    handles = [*handles, *([zero] if zero is not None else []),
               *([nonfinite_legend()] if bad else [])]
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3, which="major")
    return ax.legend(handles=handles, fontsize="small", **legend)


def grad_band_figure(record: Record) -> Figure:
    """plot_grad_flow's picture: by layer, the typical gradient entry (rms) and the largest
    (max |g|), as a band, at init and at the end."""
    steps, names, rms, present = layer_grid(record, "grad_rms")
    _, _, top, _ = layer_grid(record, "grad_absmax")
    fig, [[ax]] = new_figure(9, 5, bottom=0.95)
    heading(ax, title(record, "gradient entries by layer: rms |g| to max |g|"))
    finite = [i for i in range(len(steps)) if np.isfinite(rms[i]).any()]
    if not finite:
        empty(ax, nothing_finite(record, present, "gradient"))
        return fig
    x = np.arange(1, len(names) + 1)
    chosen = [(finite[0], "init", "C0")]
    if finite[-1] != finite[0]:  # drawn first: init on top, where the two agree
        chosen.insert(0, (finite[-1], "end", "C3"))
    floor = log_floor(np.concatenate([rms[[i for i, *_ in chosen]], top[[i for i, *_ in chosen]]]))
    zeros = False
    for i, when, color in chosen:
        low = np.where(rms[i] == 0, floor, rms[i])
        high = np.where(top[i] == 0, floor, top[i])
        if (np.isfinite(low) & np.isfinite(high)).any():
            fill_band(ax, x, low, high, color=color, alpha=0.18, lw=0)
            zeros |= draw_norms(ax, x, top[i], floor, color=color, lw=1, ls=":",
                                label=f"max |g|, step {steps[i]} ({when})")
        zeros |= draw_norms(ax, x, rms[i], floor, color=color, lw=1.8, marker="o", ms=3,
                            ls="--" if when == "init" else "-",
                            label=f"rms |g| (typical entry), step {steps[i]} ({when})")
    log_scale(ax)
    handles = ax.get_legend_handles_labels()[0]
    if zeros:
        handles.append(zero_legend(floor))
    where = divergence(record)
    if where is not None:
        handles.append(Line2D([], [], color="red", ls="--", lw=1.2, label=where[1]))
    layer_ticks(ax, names)
    ax.set_xlabel("layer (input → output)")
    ax.set_ylabel("|∂L/∂W| entries (log scale)")
    ax.grid(alpha=0.3, which="major")
    ax.legend(handles=handles, loc="best", fontsize="small")
    return fig


def grad_distributions_figure(record: Record) -> Figure:
    """TensorBoard's "distributions" view from what layers.csv records: for a few layers
    spread over depth, the band from the rms gradient entry to the largest over steps, on one
    shared log axis (NaN/Inf marked, never fatal)."""
    steps, names, rms, present = layer_grid(record, "grad_rms")
    _, _, top, _ = layer_grid(record, "grad_absmax")
    q05, q50, q95 = (layer_grid(record, f"grad_q{q}")[2] for q in ("05", "50", "95"))
    chosen = pick(len(names), LAYER_LINES)
    rows = 2 if len(chosen) > 3 else 1
    cols = math.ceil(len(chosen) / rows) if chosen else 1
    fig, grid = new_figure(11, 6.2 if rows == 2 else 3.8, rows, cols, sharex=True, sharey=True,
                           bottom=0.55, top=0.7, wspace=0.08, hspace=0.3)
    axes = grid.ravel()
    fig.suptitle(title(record, "gradient entries over steps, per layer: the 5–95% quantiles of "
                               "|g|, its median, rms and max"))
    if not steps or not np.isfinite(rms).any():
        empty(axes[0], nothing_finite(record, present, "gradient"))
        for a in axes[1:]:
            empty(a, "")
        return fig
    x = np.asarray(steps, dtype=float)
    both = np.concatenate([rms, top])
    floor, high = log_floor(both), top_of(both)
    zeros = bad = False
    for a, c in zip(axes, chosen):
        low = np.where(rms[:, c] == 0, floor, rms[:, c])
        up = np.where(top[:, c] == 0, floor, top[:, c])
        fill_band(a, x, low, up, color="C0", alpha=0.25, lw=0, label="rms |g| to max |g|")
        quantile = np.isfinite(q05[:, c]) & np.isfinite(q95[:, c]) & (q05[:, c] > 0)
        if quantile.any():  # taken on some logged steps only (probe.QUANTILE_EVERY)
            fill_band(a, x[quantile], q05[quantile, c], q95[quantile, c], color="C1",
                      alpha=0.3, lw=0, label="5–95% of |g|")
            zeros |= draw_norms(a, x[quantile], q50[quantile, c], floor, color="C1", lw=1.2,
                                ls="--", label="median |g|")
        zeros |= draw_norms(a, x, top[:, c], floor, color="C0", lw=0.8, ls=":", marker="^", ms=3,
                            label="max |g|")
        zeros |= draw_norms(a, x, rms[:, c], floor, color="C0", lw=1.5, marker="o", ms=2.5,
                            label="rms |g|")
        bad |= mark_nonfinite(a, x, np.where(present[:, c], rms[:, c], 0.0), high)
        mark_divergence(a, record)
        heading(a, f"layer {c + 1}: {names[c]}", fontsize="medium")
        a.grid(alpha=0.3, which="major")
        a.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
    for a in axes[len(chosen):]:
        a.set_visible(False)
    log_scale(axes[0])
    for a in axes[::cols]:
        a.set_ylabel("|∂L/∂W| (log scale)")
    for a in axes[(rows - 1) * cols:]:
        a.set_xlabel("step")
    handles = axes[0].get_legend_handles_labels()[0]
    if zeros:
        handles.append(zero_legend(floor, "exactly 0"))
    if bad:
        handles.append(nonfinite_legend())
    axes[0].legend(handles=handles, loc="best", fontsize="small")
    return fig



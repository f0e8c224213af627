"""One run's figures as PNG files in RUN/plots/: loss, gradient flow, a gradient heatmap,
activations, and gradients through time for sequence models.

`plot_run(run_dir)` draws from whatever the record holds, even a killed run's partial CSVs.
"""

from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path
from typing import Any

import matplotlib

if "matplotlib.pyplot" not in sys.modules:  # no display needed; leave a user's own pyplot alone
    matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator, PercentFormatter  # noqa: E402

from gradlab.analyse.theory import predicted_layer_norms  # noqa: E402
from gradlab.config.schema import RECURRENT_KINDS, SATURATING  # noqa: E402
from gradlab.record.reader import Record, is_training_row, read_record  # noqa: E402
from gradlab.render.figures import (  # noqa: E402
    column,
    depth_colors,
    divergence,
    draw_norms,
    empty,
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
    save,
    smooth,
    spans_decades,
    title,
    top_of,
    training_rows,
    value,
    zero_legend,
)
from gradlab.render.style import num  # noqa: E402

STEP_LINES = 5  # gradient-flow lines per run: init, three in between, final


def plot_run(run_dir: Path) -> list[Path]:
    """Draw every figure of one run into RUN/plots/ and return their paths."""
    record = read_record(Path(run_dir))
    out = record.path / "plots"
    out.mkdir(exist_ok=True)
    figures = dict(FIGURES)
    if is_sequence(record):
        figures["time_grads.png"] = time_grads_figure
        if not any(isinstance(r.get("act_std"), float) and not math.isnan(r["act_std"])
                   for r in record.layers):  # the probe measures no activations in a cell
            del figures["activations.png"]
    return [save(draw(record), out / name) for name, draw in figures.items()]


def is_sequence(record: Record) -> bool:
    kind = (record.config.get("model") or {}).get("kind")
    return (kind in RECURRENT_KINDS or (record.path / "time_grads.csv").is_file()
            or bool((record.summary or {}).get("time_grads_init")))


def time_grads(record: Record) -> list[tuple[int | None, list[float]]]:
    """‖∂L/∂h_t‖ for t = 1..T at the first and last logged steps: [(step, values), ...]."""
    rows = [r for r in record.time_grads if is_training_row(r)]
    if rows:
        steps = sorted({r["step"] for r in rows})
        chosen = [steps[0]] if len(steps) == 1 else [steps[0], steps[-1]]
        return [(s, [value(r["grad_norm"]) for r in sorted(
            (r for r in rows if r["step"] == s), key=lambda r: r["t"])]) for s in chosen]
    s = record.summary or {}
    found: list[tuple[int | None, list[float]]] = [
        (None, [value(v) for v in s[k]]) for k in ("time_grads_init", "time_grads_final")
        if s.get(k)]
    return found



def loss_figure(record: Record) -> Figure:
    """Train loss (raw and smoothed), test loss from before training on, the baseline of a
    predictor that ignores its inputs, test accuracy against chance; the divergence marked."""
    rows = training_rows(record.metrics)
    s = record.summary or {}
    initial = s.get("initial_metrics") or {}
    steps, loss = column(rows, "step"), column(rows, "loss")
    test = _with_initial(rows, "test_loss", initial)
    accuracy = _with_initial(rows, "test_accuracy", initial)
    chance = value(s.get("baseline_accuracy"))
    two = bool(accuracy[0].size) or math.isfinite(chance)
    fig, grid = new_figure(8.5, 6.8 if two else 4.8, 2 if two else 1, 1, sharex=True,
                           bottom=0.55, hspace=0.12)
    axes = grid[:, 0]
    ax = axes[0]
    heading(ax, title(record, "loss"))
    finite = np.isfinite(loss)
    if not finite.any() and not test[0].size:
        if divergence(record) is None:
            empty(ax, "no loss was logged")
            return fig
        # diverged before any finite loss: there is no curve, only where it broke
        ax.text(0.5, 0.5, "no finite loss was logged", ha="center", va="center",
                transform=ax.transAxes, color="grey")
        ax.set_yticks([])
    x, y = steps[finite], loss[finite]
    if y.size >= SMOOTH_FROM:
        window = min(51, max(3, (y.size // 3) | 1))
        ax.plot(x, y, color="C0", lw=1, alpha=0.35, label="train loss (minibatch), raw")
        ax.plot(x, smooth(y, window), color="C0", lw=2.2,
                label=f"train loss, smoothed ({window} logged steps)")
    elif y.size:
        ax.plot(x, y, color="C0", lw=1.5, marker="o", ms=4, label="train loss (minibatch)")
    if test[0].size:
        ax.plot(*test, color="C1", marker="s", ms=5, ls="--",
                label="test loss" + (" (step 0: before training)"
                                     if math.isfinite(value(initial.get("test_loss"))) else ""))
    baseline = value(s.get("baseline_loss"))
    if math.isfinite(baseline):
        ax.axhline(baseline, color="black", ls=":", lw=1.6,
                   label=f"baseline: a predictor that ignores its inputs ({num(baseline)})")
    if spans_decades([*y, *test[1], baseline]):
        log_scale(ax)
    ax.set_ylabel("loss" + (" (log scale)" if ax.get_yscale() == "log" else ""))
    if two:
        a = axes[1]
        if accuracy[0].size:
            a.plot(*accuracy, color="C2", marker="s", ms=5, ls="--", label="test accuracy")
        if math.isfinite(chance):
            a.axhline(chance, color="black", ls=":", lw=1.6,
                      label=f"chance: always the most frequent class ({chance:.1%})")
        a.set_ylim(-0.02, 1.02)
        a.yaxis.set_major_formatter(PercentFormatter(1.0))
        a.set_ylabel("test accuracy")
    mark_divergence(ax, record, marker=True)
    for a in axes[1:]:
        mark_divergence(a, record)
    stopped = _stop_note(record, rows)
    for a in axes:
        if stopped is not None:
            a.axvline(stopped[0], color="grey", ls="-.", lw=1.2, label=stopped[1])
        a.grid(alpha=0.3)
        a.legend(loc="best", fontsize="small")
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].set_xlabel("step")
    return fig


SMOOTH_FROM = 8  # logged losses from which a smoothed line is drawn over the raw one


def _with_initial(rows: list[dict[str, Any]], key: str,
                  initial: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a test metric's finite values, with the evaluation before training
    (summary.json `initial_metrics`) at step 0."""
    points = [(float(r["step"]), value(r.get(key))) for r in rows]
    first = value(initial.get(key))
    if math.isfinite(first):
        points.insert(0, (0.0, first))
    points = [(x, v) for x, v in points if math.isfinite(v)]
    if not points:
        return np.array([]), np.array([])
    xs, ys = zip(*points)
    return np.array(xs), np.array(ys)


def _stop_note(record: Record, rows: list[dict[str, Any]]) -> tuple[int, str] | None:
    """Where an interrupted or killed run stopped: its last step done, or last logged."""
    if record.status == "interrupted" and isinstance((record.summary or {}).get("steps_done"), int):
        done = record.summary["steps_done"]  # type: ignore[index]
        return done, f"interrupted (Ctrl-C) after {done} steps"
    if record.status == "incomplete" and rows:
        return rows[-1]["step"], f"record ends at step {rows[-1]['step']} (killed?)"
    return None



def grad_norm_figure(record: Record) -> Figure:
    """The total gradient norm over steps (before clipping), and with clipping its threshold,
    the steps it clipped and the norm after clipping (Pascanu et al. 2013)."""
    rows = training_rows(record.metrics)
    steps, before = column(rows, "step"), column(rows, "grad_norm")
    after, flags = column(rows, "grad_norm_clipped"), column(rows, "clipped")
    clip = (record.config.get("train") or {}).get("clip")
    fig, [[ax]] = new_figure(8.5, 4.8, bottom=0.55)
    note = "" if isinstance(clip, dict) else " (no clipping configured)"
    heading(ax, title(record, f"total gradient norm ‖∂L/∂θ‖ over steps{note}"))
    if not np.isfinite(before).any():
        ax.plot([], [])
        empty(ax, "no finite gradient norm was logged" if rows else "no gradient norm was logged")
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
    bad = mark_nonfinite(ax, steps, before, top_of(before))
    log_scale(ax)
    mark_divergence(ax, record, marker=True)
    handles = ax.get_legend_handles_labels()[0] + handles
    if zeros:
        handles.append(zero_legend(floor, "exactly 0"))
    if bad:
        handles.append(nonfinite_legend())
    ax.set_xlabel("step (logged steps)")
    ax.set_ylabel("gradient 2-norm, all parameters (log scale)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3, which="major")
    ax.legend(handles=handles, loc="best", fontsize="small")
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
    ax.fill_between(x, lo, hi, color="grey", alpha=0.2, lw=0,
                    label=f"range over all {len(names)} layers")
    chosen = pick(len(names), LAYER_LINES)
    zeros = False
    for c, color in zip(chosen, depth_colors(len(chosen))):
        zeros |= draw_norms(ax, x, u[:, c], floor, color=color, lw=1.5, label=names[c])
    ax.axhline(UPDATE_GUIDE, color="black", ls="--", lw=1.2,
               label="≈1e-3: a healthy step (rule of thumb)")
    bad = mark_nonfinite(ax, x, u.max(axis=1), top_of(u))
    log_scale(ax)
    mark_divergence(ax, record)
    handles = ax.get_legend_handles_labels()[0]
    if zeros:
        handles.append(zero_legend(floor, "exactly 0 (the update underflowed)"))
    if bad:
        handles.append(nonfinite_legend())
    ax.set_xlabel("step (probed steps)")
    ax.set_ylabel("‖ΔW‖ / ‖W‖ (log scale)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3, which="major")
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small",
              borderaxespad=0)
    return fig


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
        band = np.isfinite(low) & np.isfinite(high)
        if band.any():
            ax.fill_between(x, np.where(band, low, np.nan), np.where(band, high, np.nan),
                            color=color, alpha=0.18, lw=0)
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
    chosen = pick(len(names), LAYER_LINES)
    rows = 2 if len(chosen) > 3 else 1
    cols = math.ceil(len(chosen) / rows) if chosen else 1
    fig, grid = new_figure(11, 6.2 if rows == 2 else 3.8, rows, cols, sharex=True, sharey=True,
                           bottom=0.55, top=0.7, wspace=0.08, hspace=0.3)
    axes = grid.ravel()
    fig.suptitle(title(record, "gradient entries over steps, per layer: rms |g| to max |g|"))
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
        band = np.isfinite(low) & np.isfinite(up)
        a.fill_between(x, np.where(band, low, np.nan), np.where(band, up, np.nan), color="C0",
                       alpha=0.25, lw=0, label="rms |g| to max |g|")
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


def grad_flow_figure(record: Record) -> Figure:
    """Gradient norm of each layer against depth, one line per chosen logged step."""
    steps, names, g, present = layer_grid(record, "grad_norm")
    fig, [[ax]] = new_figure(9, 5, bottom=0.95)
    heading(ax, title(record, "gradient flow (‖∂L/∂W‖ by layer)"))
    if not steps or not np.isfinite(g).any():
        empty(ax, nothing_finite(record, present, "gradient norm"))
        return fig
    x = np.arange(1, len(names) + 1)
    drawn = [i for i in range(len(steps)) if np.isfinite(g[i]).any()]  # a line to each label
    chosen = [drawn[k] for k in pick(len(drawn), STEP_LINES)]
    floor = log_floor(g[chosen])
    cmap = matplotlib.colormaps["viridis"]
    zeros = bad = False
    top = top_of(g)
    end = " (last before the divergence)" if divergence(record) else " (end)"
    for k, i in enumerate(chosen):
        when = " (init)" if i == 0 else end if i == len(steps) - 1 else ""
        color = cmap(0.85 * k / max(1, len(chosen) - 1))
        zeros |= draw_norms(ax, x, g[i], floor, color=color, marker="o", ms=3, lw=1.6,
                             label=f"step {steps[i]}{when}")
    for i in range(len(steps)):  # NaN/Inf of any logged step, drawn in red at the top
        bad |= mark_nonfinite(ax, x, np.where(present[i], g[i], 1.0), top)
    log_scale(ax)
    draw_prediction(ax, record, x, g[0])
    handles, _ = ax.get_legend_handles_labels()
    if zeros:
        ax.axhline(floor, color="grey", ls=":", lw=1)
        handles.append(zero_legend(floor))
    if bad:
        handles.append(nonfinite_legend())
    where = divergence(record)
    if where is not None:
        handles.append(Line2D([], [], color="red", ls="--", lw=1.2, label=where[1]))
    layer_ticks(ax, names)
    ax.set_xlabel("layer (input → output)")
    ax.set_ylabel("gradient norm (log scale)")
    ax.grid(alpha=0.3, which="major")
    ax.legend(handles=handles, loc="best", fontsize="small")
    return fig


def draw_prediction(ax: Any, record: Record, x: np.ndarray, first: np.ndarray) -> None:
    """The mean-field decay of summary.json's `prediction` (χ₁^((L−l)/2) over the hidden
    layers) as a dashed grey line, anchored at the last hidden layer's norm at the first logged
    step; the y range stays the measured one. Nothing when there is no prediction."""
    p = (record.summary or {}).get("prediction") or {}
    chi, depth = p.get("chi1"), p.get("depth")
    if (not p.get("predictable") or not isinstance(chi, (int, float)) or not math.isfinite(chi)
            or not isinstance(depth, int) or not 0 < depth < len(first)):
        return
    anchor = first[depth - 1]
    if not (np.isfinite(anchor) and anchor > 0):
        return
    with np.errstate(over="ignore", invalid="ignore"):
        y = anchor * np.asarray(predicted_layer_norms(float(chi), depth))
    low, high = ax.get_ylim()
    ax.plot(x[:depth], np.where((y > 0) & np.isfinite(y), y, np.nan), color="grey",
            ls=(0, (5, 3)), lw=2.2, alpha=0.9, zorder=4,  # on top: it often lies on the data
            label=f"mean-field prediction (χ₁ = {float(chi):.3g})")
    ax.set_ylim(low, high)


def grad_heatmap_figure(record: Record) -> Figure:
    """log10 gradient norm of every layer (rows, input at the bottom) at every logged step."""
    steps, names, g, present = layer_grid(record, "grad_norm")
    fig, [[ax]] = new_figure(9, 5.5, right=0.1)
    heading(ax, title(record, "log10 gradient norm, layer × step"))
    if not steps:
        empty(ax, "no gradient norms were logged")
        return fig
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.log10(g)
    finite = np.isfinite(z)
    lo, hi = (float(z[finite].min()), float(z[finite].max())) if finite.any() else (0.0, 1.0)
    hi = hi if hi > lo else lo + 1
    # a logged NaN is a divergence like Inf (red); grey is only for what was never logged
    under, over = z == -np.inf, (z == np.inf) | (present & np.isnan(z))
    z = np.where(under, lo - 1, np.where(over, hi + 1, z))  # drawn in the under/over colours
    cmap = matplotlib.colormaps["viridis"].with_extremes(under="black", over="red",
                                                         bad="lightgrey")
    s = np.asarray(steps, dtype=float)
    gaps = np.diff(s) if len(s) > 1 else np.array([1.0])
    x_edges = np.concatenate([[s[0] - gaps[0] / 2], s[:-1] + gaps / 2 if len(s) > 1 else [],
                              [s[-1] + gaps[-1] / 2]])
    y_edges = np.arange(len(names) + 1) + 0.5
    mesh = ax.pcolormesh(x_edges, y_edges, np.ma.masked_invalid(z).T, cmap=cmap, vmin=lo, vmax=hi)
    extend = {(True, True): "both", (True, False): "min", (False, True): "max"}.get(
        (bool(under.any()), bool(over.any())), "neither")
    notes = [n for n, found in (("black: exactly 0", under.any()), ("red: NaN or Inf", over.any()),
                                ("grey: not logged", (~finite & ~under & ~over).any()))
             if found]
    if not finite.any():
        ax.text(0.5, 0.5, nothing_finite(record, present, "gradient norm"), ha="center",
                va="center", transform=ax.transAxes, backgroundcolor="white")
    where = divergence(record)
    if where is not None:  # the first NaN/Inf may come between two logged steps
        ax.axvline(where[0], color="red", ls="--", lw=1.5, label=where[1])
        ax.set_xlim(min(x_edges[0], where[0] - 0.5), max(x_edges[-1], where[0] + 0.5))
        ax.legend(loc="lower left", fontsize="small", framealpha=0.9)
    if len(steps) <= 12:
        ax.set_xticks(steps)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    bar = fig.colorbar(mesh, ax=ax, extend=extend)
    bar.set_label("log10 ‖∂L/∂W‖" + (f"   ({'; '.join(notes)})" if notes else ""))
    layer_ticks(ax, names, axis="y", most=16)
    ax.set_ylabel("layer (input at the bottom)")
    ax.set_xlabel("step")
    return fig


# The range of a bounded activation, and where its units count as saturated (probe.py).
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
    _, _, std, _ = layer_grid(record, "act_std")
    activation = str((record.config.get("model") or {}).get("activation") or "")
    key, label = _unit_stat(record, activation)
    _, _, frac, _ = layer_grid(record, key)
    # NaN stands both for "not measured" (the head) and for an overflowed forward pass
    measured = (present & ~np.isnan(std)) | ~np.isnan(frac)
    if not measured.any() and divergence(record) is not None:  # all overflowed: all but the head
        measured = present & (np.arange(len(names)) < len(names) - 1)
    logged = [i for i in range(len(steps)) if measured[i].any()]
    slope = activation in MAX_SLOPE
    third = slope or np.isfinite(frac[logged]).any()
    fig, grid = new_figure(14 if third else 10, 5.0, 1, 3 if third else 2, bottom=0.95,
                           top=0.85, wspace=0.3)
    axes = list(grid[0])
    fig.suptitle(title(record, f"activations{f' ({activation})' if activation else ''}")
                 + "\nbands: mean ±1 and ±2 std of each layer's outputs (layers.csv records "
                 "their mean and std, not quantiles)", fontsize="medium")
    if not logged:
        empty(axes[0], "no activation statistics were logged")
        for a in axes[1:]:
            empty(a, "")
        return fig
    hidden = [c for c in range(len(names)) if measured[:, c].any()]  # not the head
    mean, std, frac = mean[:, hidden], std[:, hidden], frac[:, hidden]
    names = [names[c] for c in hidden]
    x = np.arange(1, len(names) + 1)
    ends = [(logged[0], "init", "C0")] + ([(logged[-1], "end", "C3")] if len(logged) > 1 else [])
    bounds = _bounds(record, activation)
    _distribution(axes[0], x, mean[ends[0][0]], std[ends[0][0]], activation, bounds, ends[0][2],
                  f"at init (step {steps[ends[0][0]]})")
    if len(ends) > 1:
        _distribution(axes[1], x, mean[ends[1][0]], std[ends[1][0]], activation, bounds,
                      ends[1][2], f"at the end (step {steps[ends[1][0]]})")
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
                   ls="--" if when == "init" else "-", label=f"{when} (step {steps[i]})")
            if slope and np.isfinite(y).all() and (y > 0).all():
                products.append(f"{when}: {float(np.prod(y)):.1e}")
        if products:
            a.text(0.98, 0.04, f"product over the {len(x)} layers\n" + ", ".join(products[::-1]),
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
            a.set_ylabel(f"{label} units")
            heading(a, f"{label} fraction" + (" (|output| near the asymptotes)"
                                               if label == "saturated" else
                                               " (units off for the whole batch)"),
                        fontsize="medium")
        a.legend(fontsize="small", loc="best")
    for a in axes:
        layer_ticks(a, names)
        a.set_xlabel("hidden layer (input → output)")
        a.grid(alpha=0.3)
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
                  bounds: tuple[float, float], color: str, when: str) -> None:
    """One step's outputs by layer: mean, ±1 and ±2 std (clipped to the activation's range),
    the saturation zones shaded, the whole range shown: a narrow band is not zoomed into."""
    low, high = bounds
    ok = np.isfinite(mean) & np.isfinite(std)
    m, s = np.where(ok, mean, np.nan), np.where(ok, std, np.nan)
    for k, alpha, what in ((2, 0.15, "±2 std"), (1, 0.35, "±1 std")):
        ax.fill_between(x, np.clip(m - k * s, low, high), np.clip(m + k * s, low, high),
                        color=color, alpha=alpha, lw=0, label=f"mean {what}")
    ax.plot(x, m, color=color, lw=1.8, marker="o", ms=3, label="mean output")
    if (~ok).any():
        y = high if math.isfinite(high) else float(np.nanmax(np.abs(m))) if ok.any() else 1.0
        ax.plot(x[~ok], np.full(int((~ok).sum()), y), ls="none", marker="x", ms=7, mew=2,
                color="red", label="NaN/Inf (overflow)")
    for k, (a, b) in enumerate(SATURATED_BEYOND.get(activation, ())):
        ax.axhspan(a, b, color="red", alpha=0.12, lw=0,
                   label="saturated (φ′ ≈ 0)" if k == 0 else None)
    if activation in RANGE:
        pad = 0.03 * (high - low)
        ax.set_ylim(low - pad, high + pad)
    heading(ax, f"output distribution {when}", fontsize="medium")
    ax.set_ylabel("layer output h (mean, ±1 and ±2 std)")
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


def time_grads_figure(record: Record) -> Figure:
    """‖∂L/∂h_t‖ against the time step t, at init and at the end (sequence models)."""
    series = time_grads(record)
    fig, [[ax]] = new_figure(8, 4.8, bottom=0.55)
    heading(ax, title(record, "gradient through time"))
    if not series or not any(math.isfinite(v) for _, vs in series for v in vs):
        empty(ax, "no gradients through time were logged")
        return fig
    floor = log_floor(np.array([v for _, vs in series for v in vs]))
    zeros = False
    for k, (step, values) in enumerate(series):
        when = "init" if k == 0 else "end"
        y = np.array(values)
        zeros |= draw_norms(ax, np.arange(1, len(y) + 1), y, floor,
                             color="C0" if k == 0 else "C3", ls="--" if k == 0 else "-",
                             marker="o", ms=3,
                             label=when + (f" (step {step})" if step is not None else ""))
    log_scale(ax)
    handles, _ = ax.get_legend_handles_labels()
    if zeros:
        handles.append(zero_legend(floor))
    ax.set_xlabel("time step t (the loss is read at the end)")
    ax.set_ylabel(r"$\|\partial L / \partial h_t\|$ (log scale)")
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize="small")
    return fig


# Every run's figures, in the order they are drawn (plot_run adds time_grads.png for sequence
# models and leaves activations.png out where a recurrent cell measured none).
FIGURES = {
    "loss.png": loss_figure,
    "grad_norm.png": grad_norm_figure,
    "grad_flow.png": grad_flow_figure,
    "grad_band.png": grad_band_figure,
    "grad_heatmap.png": grad_heatmap_figure,
    "grad_distributions.png": grad_distributions_figure,
    "update_ratio.png": update_ratio_figure,
    "activations.png": activations_figure,
}

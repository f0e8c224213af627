"""One run's figures as PNG files in RUN/plots/: loss, gradient flow, a gradient heatmap,
activations, and gradients through time for sequence models.

`plot_run(run_dir)` draws from whatever the record holds, even a killed run's partial CSVs.
"""

from __future__ import annotations

import math
import sys
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
from gradlab.config.schema import RECURRENT_KINDS  # noqa: E402
from gradlab.record.reader import Record, is_training_row, read_record  # noqa: E402
from gradlab.render.activation_figures import activations_figure  # noqa: E402
from gradlab.render.figures import (  # noqa: E402
    column,
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
    quiet_overflow,
    save,
    smooth,
    spans_decades,
    title,
    top_of,
    training_rows,
    value,
    zero_legend,
)
from gradlab.render.step_figures import (  # noqa: E402
    grad_band_figure,
    grad_distributions_figure,
    grad_norm_figure,
    update_ratio_figure,
)
from gradlab.render.style import num  # noqa: E402

STEP_LINES = 5  # gradient-flow lines per run: init, three in between, final


@quiet_overflow
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
        ax.plot(x, smooth(y, window, x), color="C0", lw=2.2,
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
    # a pretrained run's step 0 is fine-tuning's first, from the pretrained weights
    start = " (after pretraining)" if (record.summary or {}).get("pretrain") else " (init)"
    for k, i in enumerate(chosen):
        when = start if i == 0 else end if i == len(steps) - 1 else ""
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

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
from gradlab.config.schema import RECURRENT_KINDS, SATURATING  # noqa: E402
from gradlab.record.reader import Record, is_training_row, read_record  # noqa: E402
from gradlab.render.figures import (  # noqa: E402
    divergence,
    draw_norms,
    empty,
    layer_grid,
    layer_ticks,
    log_floor,
    nothing_finite,
    pick,
    save,
    spans_decades,
    title,
    value,
    zero_legend,
)

STEP_LINES = 5  # gradient-flow lines per run: init, three in between, final


def plot_run(run_dir: Path) -> list[Path]:
    """Draw every figure of one run into RUN/plots/ and return their paths."""
    record = read_record(Path(run_dir))
    out = record.path / "plots"
    out.mkdir(exist_ok=True)
    figures = {"loss.png": loss_figure, "grad_flow.png": grad_flow_figure,
               "grad_heatmap.png": grad_heatmap_figure, "activations.png": activations_figure}
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
    """Train loss and the test metrics over steps; the divergence marked where it happened."""
    rows = [m for m in record.metrics if is_training_row(m)]
    series = {key: [(m["step"], value(m.get(key))) for m in rows
                    if math.isfinite(value(m.get(key)))]
              for key in ("loss", "test_loss", "test_accuracy")}
    accuracy = bool(series["test_accuracy"])
    fig = Figure(figsize=(8, 6.5 if accuracy else 4.8), layout="constrained")
    axes = fig.subplots(2 if accuracy else 1, 1, sharex=True, squeeze=False)[:, 0]
    ax = axes[0]
    ax.set_title(title(record, "loss"))
    diverged = divergence(record)
    if not series["loss"] and not series["test_loss"]:
        if diverged is None:
            empty(ax, "no loss was logged")
            return fig
        # diverged before any finite loss: there is no curve, only where it broke
        ax.text(0.5, 0.5, "no finite loss was logged", ha="center", va="center",
                transform=ax.transAxes, color="grey")
        ax.set_yticks([])
    for key, label, style in (("loss", "train loss (minibatch)", dict(color="C0", lw=1.5)),
                              ("test_loss", "test loss", dict(color="C1", marker="s", ls="--"))):
        if series[key]:
            xs, ys = zip(*series[key])
            ax.plot(xs, ys, label=label, **style)
    if spans_decades([y for k in ("loss", "test_loss") for _, y in series[k]]):
        ax.set_yscale("log")
    baseline = value((record.summary or {}).get("baseline_loss"))
    if math.isfinite(baseline):
        ax.axhline(baseline, color="grey", ls=":", label="baseline (no learning)")
    ax.set_ylabel("loss")
    if accuracy:
        xs, ys = zip(*series["test_accuracy"])
        axes[1].plot(xs, ys, color="C2", marker="s", ls="--", label="test accuracy")
        axes[1].set_ylim(-0.02, 1.02)
        axes[1].yaxis.set_major_formatter(PercentFormatter(1.0))
        axes[1].set_ylabel("test accuracy")
    if diverged is not None:
        for a in axes:
            a.axvline(diverged[0], color="red", ls="--", lw=1.2, label=diverged[1])
    stopped = _stop_note(record, rows)
    if stopped is not None:
        for a in axes:
            a.axvline(stopped[0], color="grey", ls="-.", lw=1.2, label=stopped[1])
    for a in axes:
        a.grid(alpha=0.3)
        a.legend(loc="best", fontsize="small")
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].set_xlabel("step")
    return fig


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
    fig = Figure(figsize=(9, 5), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title(record, "gradient flow (‖∂L/∂W‖ by layer)"))
    if not steps or not np.isfinite(g).any():
        empty(ax, nothing_finite(record, present, "gradient norm"))
        return fig
    x = np.arange(1, len(names) + 1)
    chosen = pick(len(steps), STEP_LINES)
    floor = log_floor(g[chosen])
    cmap = matplotlib.colormaps["viridis"]
    zeros = bad = False
    for k, i in enumerate(chosen):
        when = " (init)" if i == 0 else " (end)" if i == len(steps) - 1 else ""
        color = cmap(0.85 * k / max(1, len(chosen) - 1))
        zeros |= draw_norms(ax, x, g[i], floor, color=color, marker="o", ms=3, lw=1.6,
                             label=f"step {steps[i]}{when}")
        nonfinite = present[i] & ~np.isfinite(g[i])
        if nonfinite.any():
            bad = True
            top = float(np.nanmax(np.where(np.isfinite(g), g, np.nan))) * 10
            ax.plot(x[nonfinite], np.full(int(nonfinite.sum()), top), ls="none", marker="x",
                    ms=8, color="red")
    ax.set_yscale("log")
    draw_prediction(ax, record, x, g[0])
    handles, _ = ax.get_legend_handles_labels()
    if zeros:
        ax.axhline(floor, color="grey", ls=":", lw=1)
        handles.append(zero_legend(floor))
    if bad:
        handles.append(Line2D([], [], ls="none", marker="x", color="red", label="NaN/Inf"))
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
    fig = Figure(figsize=(9, 5.5), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title(record, "log10 gradient norm, layer × step"))
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


def activations_figure(record: Record) -> Figure:
    """Activation std, and the saturated or dead fraction, by layer at init and at the end."""
    steps, names, std, present = layer_grid(record, "act_std")
    activation = str((record.config.get("model") or {}).get("activation") or "")
    key, label = _unit_stat(record, activation)
    _, _, frac, _ = layer_grid(record, key)
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    fig.suptitle(title(record, f"activations{f' ({activation})' if activation else ''}"))
    # NaN stands both for "not measured" (the head) and for an overflowed forward pass
    measured = (present & ~np.isnan(std)) | ~np.isnan(frac)
    if not measured.any() and divergence(record) is not None:  # all overflowed: all but the head
        measured = present & (np.arange(len(names)) < len(names) - 1)
    logged = [i for i in range(len(steps)) if measured[i].any()]
    if not logged:
        empty(left, "no activation statistics were logged")
        empty(right, "")
        return fig
    hidden = [c for c in range(len(names)) if measured[:, c].any()]  # not the head
    std, frac, present = std[:, hidden], frac[:, hidden], present[:, hidden]
    names = [names[c] for c in hidden]
    x = np.arange(1, len(names) + 1)
    ends = [(logged[-1], "end", "-", "o", "C3")] if len(logged) > 1 else []
    ends.append((logged[0], "init", "--", "s", "C0"))  # drawn last: visible where they agree
    shown = std[[i for i, *_ in ends]]
    log = spans_decades([float(v) for v in shown[shown > 0]])
    floor = log_floor(shown)
    zeros = bad = False
    for i, when, ls, marker, color in ends:
        style = dict(ls=ls, marker=marker, ms=4, mfc="none", color=color,
                     label=f"{when} (step {steps[i]})")
        if log:  # a layer whose output is constant (std exactly 0) is drawn at the floor
            zeros |= draw_norms(left, x, std[i], floor, **style)
        else:
            left.plot(x, np.where(np.isfinite(std[i]), std[i], np.nan), **style)
        right.plot(x, frac[i], **style)
        nonfinite = present[i] & ~np.isfinite(std[i])
        if nonfinite.any():  # overflowed: a forward pass that explodes
            bad = True
            finite = shown[np.isfinite(shown)]
            top = float(finite.max()) * (10 if log else 1.1) if finite.size else 1.0
            left.plot(x[nonfinite], np.full(int(nonfinite.sum()), top), ls="none", marker="x",
                      ms=7, color=color)
    if log:
        left.set_yscale("log")
    extra = ([zero_legend(floor, "exactly 0")] if zeros else []) + (
        [Line2D([], [], ls="none", marker="x", color="grey", label="NaN/Inf (overflow)")]
        if bad else [])
    left.set_ylabel("std of the layer's output")
    left.set_title("activation std", fontsize="medium")
    right.set_ylim(-0.02, 1.02)
    right.yaxis.set_major_formatter(PercentFormatter(1.0))
    right.set_ylabel(f"{label} units")
    right.set_title(f"{label} fraction" + (" (|output| near the asymptotes)"
                                           if label == "saturated" else
                                           " (units off for the whole batch)"), fontsize="medium")
    if not np.isfinite(frac[logged]).any():
        right.text(0.5, 0.5, f"not measured for {activation or 'this activation'}",
                   ha="center", va="center", transform=right.transAxes, color="grey")
    for ax in (left, right):
        layer_ticks(ax, names)
        ax.set_xlabel("hidden layer (input → output)")
        ax.grid(alpha=0.3)
        handles, _ = ax.get_legend_handles_labels()
        ax.legend(handles=handles[::-1] + (extra if ax is left else []),
                  fontsize="small")  # init first
    return fig


def _unit_stat(record: Record, activation: str) -> tuple[str, str]:
    """Saturation for sigmoid/tanh, dead units otherwise; else whichever column was measured."""
    if activation in SATURATING:
        return "act_saturated", "saturated"
    if activation:
        return "act_dead", "dead"
    _, _, sat, _ = layer_grid(record, "act_saturated")
    return ("act_saturated", "saturated") if np.isfinite(sat).any() else ("act_dead", "dead")


def time_grads_figure(record: Record) -> Figure:
    """‖∂L/∂h_t‖ against the time step t, at init and at the end (sequence models)."""
    series = time_grads(record)
    fig = Figure(figsize=(8, 4.8), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title(record, "gradient through time"))
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
    ax.set_yscale("log")
    handles, _ = ax.get_legend_handles_labels()
    if zeros:
        handles.append(zero_legend(floor))
    ax.set_xlabel("time step t (the loss is read at the end)")
    ax.set_ylabel(r"$\|\partial L / \partial h_t\|$ (log scale)")
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize="small")
    return fig


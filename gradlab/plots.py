"""Figures of run records as PNG files: one run's pictures in RUN/plots/, and a comparison's.

`plot_run(run_dir)` draws loss, gradient flow, a gradient heatmap, activations (and gradients
through time for sequence models) from whatever the record holds, even a killed run's partial
CSVs. `plot_compare_record(dir)` overlays a comparison's runs and writes its report.md, the
table with the figures embedded. Reads `record.py` only (no torch, no trainer); needs no
display (Agg).
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import matplotlib

if "matplotlib.pyplot" not in sys.modules:  # no display needed; leave a user's own pyplot alone
    matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator, PercentFormatter  # noqa: E402

from gradlab.record import Record, _read_csv, is_run_dir, read_record, write_atomic  # noqa: E402

DPI = 110
STEP_LINES = 5  # gradient-flow lines per run: init, three in between, final
SATURATING = ("sigmoid", "tanh")
RECURRENT = ("rnn", "lstm", "gru")
LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")


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


def save(fig: Figure, path: Path) -> Path:
    """Write a PNG atomically, so a reader never sees half a picture."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=DPI)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # after an error or Ctrl-C mid-write
    return path


# ---------------------------------------------------------------- reading the record


def _is_train(row: dict[str, Any]) -> bool:
    return not str(row.get("phase") or "train").startswith("pretrain")


def _value(x: Any) -> float:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else math.nan


def run_name(record: Record) -> str:
    return str((record.summary or {}).get("name") or record.config.get("name")
               or record.path.parent.name)


def _title(record: Record, what: str) -> str:
    status = record.status
    note = " (killed? showing what it logged)" if status == "incomplete" else ""
    return f"{run_name(record)}: {what}  [{status}{note}]"


def layer_grid(record: Record, key: str) -> tuple[list[int], list[str], np.ndarray, np.ndarray]:
    """(steps, layer names, values (step, layer), present (step, layer)) of one layers.csv column.

    A missing value (a killed run's half-logged step, or a statistic not measured for that
    layer) is NaN with present False; a logged NaN or Inf (a diverging run) is present.
    """
    rows = [r for r in record.layers if _is_train(r) and isinstance(r.get("layer"), int)]
    steps = sorted({r["step"] for r in rows})
    n = max((r["layer"] for r in rows), default=-1) + 1
    names = [str(i + 1) for i in range(n)]
    at = {s: i for i, s in enumerate(steps)}
    values = np.full((len(steps), n), np.nan)
    present = np.zeros((len(steps), n), dtype=bool)
    for r in rows:
        values[at[r["step"]], r["layer"]] = _value(r.get(key))
        present[at[r["step"]], r["layer"]] = r.get(key) is not None
        names[r["layer"]] = str(r.get("name") or r["layer"] + 1)
    return steps, names, values, present


def is_sequence(record: Record) -> bool:
    kind = (record.config.get("model") or {}).get("kind")
    return (kind in RECURRENT or (record.path / "time_grads.csv").is_file()
            or bool((record.summary or {}).get("time_grads_init")))


def time_grads(record: Record) -> list[tuple[int | None, list[float]]]:
    """‖∂L/∂h_t‖ for t = 1..T at the first and last logged steps: [(step, values), ...]."""
    rows = [r for r in _read_csv(record.path / "time_grads.csv") if _is_train(r)]
    if rows:
        steps = sorted({r["step"] for r in rows})
        chosen = [steps[0]] if len(steps) == 1 else [steps[0], steps[-1]]
        return [(s, [_value(r["grad_norm"]) for r in sorted(
            (r for r in rows if r["step"] == s), key=lambda r: r["t"])]) for s in chosen]
    s = record.summary or {}
    found: list[tuple[int | None, list[float]]] = [
        (None, [_value(v) for v in s[k]]) for k in ("time_grads_init", "time_grads_final")
        if s.get(k)]
    return found


# ---------------------------------------------------------------- drawing helpers


def log_floor(values: np.ndarray) -> float:
    """A y position a decade below every positive value: where exact zeros are drawn on log axes."""
    positive = values[np.isfinite(values) & (values > 0)]
    if positive.size == 0:
        return 1e-30
    return float(10.0 ** (math.floor(math.log10(positive.min())) - 1))


def spans_decades(values: list[float]) -> bool:
    finite = [v for v in values if math.isfinite(v)]
    return bool(finite) and min(finite) > 0 and max(finite) / min(finite) > 10


def _empty(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def _nothing_finite(record: Record, present: np.ndarray, what: str) -> str:
    """Why a figure has no line: nothing logged, or only NaN/Inf (and where it diverged)."""
    if not present.any():
        return f"no {what}s were logged"
    where = divergence(record)
    return f"every logged {what} was NaN or Inf" + (f"\n({where[1]})" if where else "")


def _layer_ticks(ax: Axes, names: list[str], axis: str = "x", most: int = 12) -> None:
    """Tick layers 1..n with their names: all of a shallow net; first, every k-th and last."""
    n = len(names)
    idx = list(range(n))
    if n > most:
        k = _nice(n / most)
        idx = [0, *range(k - 1, n, k)]
        if idx[-1] != n - 1:  # the output layer is always named
            idx = idx[:-1] + [n - 1] if n - 1 - idx[-1] < k / 2 else idx + [n - 1]
    ticks, labels = [i + 1 for i in idx], [names[i] for i in idx]
    if axis == "x":
        ax.set_xticks(ticks, labels, rotation=45 if n > 6 else 0, ha="right" if n > 6 else "center")
    else:
        ax.set_yticks(ticks, labels)


def _nice(x: float) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50, ... at least x."""
    e = 10 ** math.floor(math.log10(max(x, 1.0)))
    return next(int(m * e) for m in (1, 2, 5, 10) if m * e >= x)


def _pick(n: int, most: int) -> list[int]:
    """Up to `most` indices spread over range(n), always the first and the last."""
    if n <= most:
        return list(range(n))
    return sorted({round(i * (n - 1) / (most - 1)) for i in range(most)})


def _draw_norms(ax: Axes, x: np.ndarray, y: np.ndarray, floor: float, **style: Any) -> bool:
    """A gradient-norm line on a log axis with zeros drawn at `floor`; True if it had zeros."""
    zero = y == 0
    shown = np.where(zero, floor, y)
    shown = np.where(np.isfinite(shown), shown, np.nan)
    ax.plot(x, shown, **style)
    if zero.any():
        ax.plot(x[zero], np.full(int(zero.sum()), floor), ls="none", marker="v", ms=7,
                mfc="none", mec=style.get("color", "grey"))
    return bool(zero.any())


def _zero_legend(floor: float, what: str = "exactly 0 (underflow or saturation)") -> Line2D:
    return Line2D([], [], ls="none", marker="v", ms=7, mfc="none", mec="grey",
                  label=f"{what}, drawn at {floor:.0e}")


# ---------------------------------------------------------------- one run's figures


def loss_figure(record: Record) -> Figure:
    """Train loss and the test metrics over steps; the divergence marked where it happened."""
    rows = [m for m in record.metrics if _is_train(m)]
    series = {key: [(m["step"], _value(m.get(key))) for m in rows
                    if math.isfinite(_value(m.get(key)))]
              for key in ("loss", "test_loss", "test_accuracy")}
    accuracy = bool(series["test_accuracy"])
    fig = Figure(figsize=(8, 6.5 if accuracy else 4.8), layout="constrained")
    axes = fig.subplots(2 if accuracy else 1, 1, sharex=True, squeeze=False)[:, 0]
    ax = axes[0]
    ax.set_title(_title(record, "loss"))
    diverged = divergence(record)
    if not series["loss"] and not series["test_loss"]:
        if diverged is None:
            _empty(ax, "no loss was logged")
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
    baseline = _value((record.summary or {}).get("baseline_loss"))
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


def divergence(record: Record) -> tuple[int, str] | None:
    """(step, description) of the first NaN/Inf of a diverged run, from summary.json."""
    where = (record.summary or {}).get("first_nonfinite")
    if not where or not isinstance(where.get("step"), (int, float)):
        return None
    what = where.get("what") or "value"
    layer = f" in {where['layer']}" if where.get("layer") else ""
    return int(where["step"]), f"diverged at step {where['step']}: NaN/Inf {what}{layer}"


def grad_flow_figure(record: Record) -> Figure:
    """Gradient norm of each layer against depth, one line per chosen logged step."""
    steps, names, g, present = layer_grid(record, "grad_norm")
    fig = Figure(figsize=(9, 5), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(_title(record, "gradient flow (‖∂L/∂W‖ by layer)"))
    if not steps or not np.isfinite(g).any():
        _empty(ax, _nothing_finite(record, present, "gradient norm"))
        return fig
    x = np.arange(1, len(names) + 1)
    chosen = _pick(len(steps), STEP_LINES)
    floor = log_floor(g[chosen])
    cmap = matplotlib.colormaps["viridis"]
    zeros = bad = False
    for k, i in enumerate(chosen):
        when = " (init)" if i == 0 else " (end)" if i == len(steps) - 1 else ""
        color = cmap(0.85 * k / max(1, len(chosen) - 1))
        zeros |= _draw_norms(ax, x, g[i], floor, color=color, marker="o", ms=3, lw=1.6,
                             label=f"step {steps[i]}{when}")
        nonfinite = present[i] & ~np.isfinite(g[i])
        if nonfinite.any():
            bad = True
            top = float(np.nanmax(np.where(np.isfinite(g), g, np.nan))) * 10
            ax.plot(x[nonfinite], np.full(int(nonfinite.sum()), top), ls="none", marker="x",
                    ms=8, color="red")
    ax.set_yscale("log")
    handles, _ = ax.get_legend_handles_labels()
    if zeros:
        ax.axhline(floor, color="grey", ls=":", lw=1)
        handles.append(_zero_legend(floor))
    if bad:
        handles.append(Line2D([], [], ls="none", marker="x", color="red", label="NaN/Inf"))
    where = divergence(record)
    if where is not None:
        handles.append(Line2D([], [], color="red", ls="--", lw=1.2, label=where[1]))
    _layer_ticks(ax, names)
    ax.set_xlabel("layer (input → output)")
    ax.set_ylabel("gradient norm (log scale)")
    ax.grid(alpha=0.3, which="major")
    ax.legend(handles=handles, loc="best", fontsize="small")
    return fig


def grad_heatmap_figure(record: Record) -> Figure:
    """log10 gradient norm of every layer (rows, input at the bottom) at every logged step."""
    steps, names, g, present = layer_grid(record, "grad_norm")
    fig = Figure(figsize=(9, 5.5), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(_title(record, "log10 gradient norm, layer × step"))
    if not steps:
        _empty(ax, "no gradient norms were logged")
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
        ax.text(0.5, 0.5, _nothing_finite(record, present, "gradient norm"), ha="center",
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
    _layer_ticks(ax, names, axis="y", most=16)
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
    fig.suptitle(_title(record, f"activations{f' ({activation})' if activation else ''}"))
    # NaN stands both for "not measured" (the head) and for an overflowed forward pass
    measured = (present & ~np.isnan(std)) | ~np.isnan(frac)
    if not measured.any() and divergence(record) is not None:  # all overflowed: all but the head
        measured = present & (np.arange(len(names)) < len(names) - 1)
    logged = [i for i in range(len(steps)) if measured[i].any()]
    if not logged:
        _empty(left, "no activation statistics were logged")
        _empty(right, "")
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
            zeros |= _draw_norms(left, x, std[i], floor, **style)
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
    extra = ([_zero_legend(floor, "exactly 0")] if zeros else []) + (
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
        _layer_ticks(ax, names)
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
    ax.set_title(_title(record, "gradient through time"))
    if not series or not any(math.isfinite(v) for _, vs in series for v in vs):
        _empty(ax, "no gradients through time were logged")
        return fig
    floor = log_floor(np.array([v for _, vs in series for v in vs]))
    zeros = False
    for k, (step, values) in enumerate(series):
        when = "init" if k == 0 else "end"
        y = np.array(values)
        zeros |= _draw_norms(ax, np.arange(1, len(y) + 1), y, floor,
                             color="C0" if k == 0 else "C3", ls="--" if k == 0 else "-",
                             marker="o", ms=3,
                             label=when + (f" (step {step})" if step is not None else ""))
    ax.set_yscale("log")
    handles, _ = ax.get_legend_handles_labels()
    if zeros:
        handles.append(_zero_legend(floor))
    ax.set_xlabel("time step t (the loss is read at the end)")
    ax.set_ylabel(r"$\|\partial L / \partial h_t\|$ (log scale)")
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize="small")
    return fig


# ---------------------------------------------------------------- comparisons


def plot_comparison(records: list[Record], out_dir: Path) -> list[Path]:
    """Overlay many runs: loss.png (every loss curve) and grad_flow.png (gradients at init)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [save(comparison_loss_figure(records), out / "loss.png"),
            save(comparison_grad_flow_figure(records), out / "grad_flow.png")]


def plot_compare_record(path: Path, draw: bool = True) -> list[Path]:
    """Draw a compare record's figures (unless not `draw`) and write its report.md.

    The variants are read back through the record's own links (variants/NAME), in the
    order of comparison.csv, so this works on a record moved or read from another directory.
    """
    path = Path(path)
    records = []
    for row in _read_csv(path / "comparison.csv"):
        link = path / "variants" / str(row.get("variant"))
        run_dir = link if link.is_dir() else Path(str(row.get("run_dir") or ""))
        if row.get("run_dir") and is_run_dir(run_dir):
            records.append(read_record(run_dir))
    figures = plot_comparison(records, path) if draw and records else []
    table = (path / "comparison.md").read_text(encoding="utf-8")
    write_atomic(path / "report.md", comparison_markdown(table, figures, base=path))
    return figures


def variant_labels(records: list[Record]) -> list[str]:
    """One legend label per run: its name, its status when not completed, unique."""
    labels: list[str] = []
    for r in records:
        label = run_name(r) + ("" if r.status == "completed" else f" ({r.status})")
        base, n = label, 2
        while label in labels:
            label, n = f"{base} #{n}", n + 1
        labels.append(label)
    return labels


def variant_style(i: int, n: int) -> dict[str, Any]:
    """Colour, line style and marker of the i-th of n lines: neighbours differ in all three."""
    colors = matplotlib.color_sequences["tab10"]
    return {"color": colors[i % 10], "ls": LINESTYLES[(i // 10) % len(LINESTYLES)],
            "marker": MARKERS[i % len(MARKERS)], "ms": 4, "lw": 1.4}


def _comparison_figure(n: int) -> tuple[Figure, Axes, int]:
    """A figure with room on the right for a legend of n entries (up to 25 per column)."""
    columns = max(1, math.ceil(n / 25))
    fig = Figure(figsize=(8 + 2.6 * columns, max(5.0, 1.0 + 0.2 * min(n, 25))),
                 layout="constrained")
    return fig, fig.add_subplot(), columns


def _outside_legend(fig: Figure, ax: Axes, columns: int, extra: list[Line2D]) -> None:
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles=handles + extra, loc="outside right upper", ncols=columns,
                   fontsize="small", frameon=False)


def comparison_loss_figure(records: list[Record]) -> Figure:
    """Every variant's train loss over steps; a run that diverged ends in a large ×."""
    fig, ax, columns = _comparison_figure(len(records))
    ax.set_title("train loss of every variant")
    values: list[float] = []
    diverged = False
    for i, (record, label) in enumerate(zip(records, variant_labels(records))):
        points = [(m["step"], _value(m.get("loss"))) for m in record.metrics if _is_train(m)]
        points = [(s, v) for s, v in points if math.isfinite(v)]
        if not points:
            continue
        xs, ys = zip(*points)
        style = variant_style(i, len(records))
        ax.plot(xs, ys, label=label, markevery=max(1, len(xs) // 8), **style)
        values += ys
        if record.status == "diverged":
            diverged = True
            ax.plot(xs[-1], ys[-1], marker="x", ms=12, mew=2.5, color=style["color"])
    if not values:
        _empty(ax, "no losses were logged")
        return fig
    if spans_decades(values):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss (minibatch)")
    ax.grid(alpha=0.3)
    extra = [Line2D([], [], ls="none", marker="x", ms=10, mew=2, color="black",
                    label="× diverged here")] if diverged else []
    _outside_legend(fig, ax, columns, extra)
    return fig


def comparison_grad_flow_figure(records: list[Record]) -> Figure:
    """Every variant's gradient norm by relative depth (0 = first layer, 1 = output) at init."""
    fig, ax, columns = _comparison_figure(len(records))
    ax.set_title("gradient norm by depth at init, every variant")
    first_rows = []
    for record in records:
        steps, _, g, _ = layer_grid(record, "grad_norm")
        first_rows.append(g[0] if steps else np.array([]))
    everything = np.concatenate(first_rows) if first_rows else np.array([])
    if not np.isfinite(everything).any():
        _empty(ax, "no gradient norms were logged")
        return fig
    floor = log_floor(everything)
    zeros = False
    for i, (row, label) in enumerate(zip(first_rows, variant_labels(records))):
        if not np.isfinite(row).any():
            continue
        depth = np.linspace(0, 1, len(row)) if len(row) > 1 else np.zeros(1)
        zeros |= _draw_norms(ax, depth, row, floor, label=label,
                             markevery=max(1, len(row) // 8), **variant_style(i, len(records)))
    ax.set_yscale("log")
    if zeros:
        ax.axhline(floor, color="grey", ls=":", lw=1)
    ax.set_xlabel("relative depth (0 = first layer, 1 = output layer)")
    ax.set_ylabel("gradient norm at init (log scale)")
    ax.grid(alpha=0.3)
    _outside_legend(fig, ax, columns, [_zero_legend(floor)] if zeros else [])
    return fig


FIGURE_TITLES = {"loss.png": "Loss", "grad_flow.png": "Gradient flow at init"}


def comparison_markdown(table_markdown: str, figures: list[Path], base: Path | None = None) -> str:
    """report.md text: the comparison table, then each figure embedded by a relative link.

    Links are relative to `base`, the directory report.md is written into; without it,
    report.md is taken to sit just above the figures' directory (`plots/loss.png`).
    """
    parts = ["# gradlab comparison", "", table_markdown.strip(), ""]
    for fig in figures:
        fig = Path(fig)
        if base is None:
            link = f"{fig.parent.name}/{fig.name}" if fig.parent.name else fig.name
        else:
            link = Path(os.path.relpath(fig, base)).as_posix()
        title = FIGURE_TITLES.get(fig.name, fig.stem.replace("_", " ").capitalize())
        parts += [f"## {title}", "", f"![{title}]({quote(link)})", ""]
    return "\n".join(parts)

"""A comparison's figures: every variant's loss relative to its baseline and its gradient flow
at init, in small multiples by task, the gradient ratio of every variant in one chart, and
report.md, the comparison table with the figures embedded.

`plot_compare_record(dir)` reads the compare record through `record.comparison`.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import matplotlib
import matplotlib.patches

if "matplotlib.pyplot" not in sys.modules:  # no display needed; leave a user's own pyplot alone
    matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.legend import Legend  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from gradlab.analyse.verdicts import EXPLODING_RATIO, VANISHING_RATIO  # noqa: E402
from gradlab.config.schema import RECURRENT_KINDS  # noqa: E402
from gradlab.record.comparison import comparison_markdown_table, variant_records, write_report  # noqa: E402
from gradlab.record.reader import Record  # noqa: E402
from gradlab.render.figures import (  # noqa: E402
    DPI,
    LINESTYLES,
    MARKERS,
    column,
    draw_norms,
    empty,
    fit_left_labels,
    fit_legend,
    heading,
    layer_grid,
    log_floor,
    log_scale,
    quiet_overflow,
    run_name,
    save,
    smooth,
    training_rows,
    value,
    zero_legend,
)


@quiet_overflow
def plot_comparison(records: list[Record], out_dir: Path) -> list[Path]:
    """Many runs side by side: loss.png (loss ÷ baseline, by task), grad_flow.png (gradient
    norms at init by depth, by task) and grad_ratio.png (first ÷ last layer, every variant)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [save(comparison_loss_figure(records), out / "loss.png"),
            save(comparison_grad_flow_figure(records), out / "grad_flow.png"),
            save(comparison_grad_ratio_figure(records), out / "grad_ratio.png")]


def plot_compare_record(path: Path, draw: bool = True) -> list[Path]:
    """Draw a compare record's figures (unless not `draw`) and write its report.md.

    The variants are read back through the record's own links (variants/NAME), in the
    order of comparison.csv, so this works on a record moved or read from another directory.
    """
    path = Path(path)
    records = variant_records(path)
    figures = plot_comparison(records, path) if draw and records else []
    write_report(path, comparison_markdown(comparison_markdown_table(path), figures, base=path))
    return figures


def variant_labels(records: list[Record]) -> list[str]:
    """One legend label per run: its name (a record read through a compare record's link,
    variants/NAME, the name the comparison's table gives it), its status when not completed,
    unique."""
    labels: list[str] = []
    for r in records:
        name = r.path.name if r.path.parent.name == "variants" else run_name(r)
        label = name + ("" if r.status == "completed" else f" ({r.status})")
        base, n = label, 2
        while label in labels:
            label, n = f"{base} #{n}", n + 1
        labels.append(label)
    return labels


def variant_style(i: int, n: int) -> dict[str, Any]:
    """Colour, line style and marker of the i-th of n lines: no two of n alike, neighbours
    differing in colour and marker. Up to 10 lines take tab10's colours; more take tab20's
    20 (its dark shades first), and the line style changes once the colours are used."""
    if n <= 10:
        colors = list(matplotlib.color_sequences["tab10"])
    else:
        tab20 = matplotlib.color_sequences["tab20"]
        colors = list(tab20[0::2]) + list(tab20[1::2])
    k = len(colors)
    return {"color": colors[i % k], "ls": LINESTYLES[(i // k) % len(LINESTYLES)],
            "marker": MARKERS[i % len(MARKERS)], "ms": 4, "lw": 1.4}


def task_groups(records: list[Record]) -> dict[str, list[int]]:
    """Indices of the records by task, in first-seen order: one panel each. A task is the
    data kind and whether it is regression or classification (their losses differ)."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        kind = str((r.config.get("data") or {}).get("kind") or "data")
        task = str((r.summary or {}).get("task") or "")
        groups.setdefault(f"{kind} ({task})" if task else kind, []).append(i)
    return groups


LEGEND_ROWS = 25  # legend entries per column
LEGEND_CHAR = 0.075  # inches per character of a small label: a first guess, then measured
CAP = 10.0  # loss ÷ baseline drawn at most this high: a diverging run ends there in a marker
LEGEND_START = 0.3  # inches right of the axes before the legends are measured (`_fit_legends`)


def _panels(groups: dict[str, list[int]], width: float = 8.0,
            sharex: bool = False) -> tuple[Figure, list[Axes], list[int]]:
    """One panel per group, stacked, each tall enough for its legend on its right; the axes
    end `width` inches from the left, and `_fit_legends` widens the figure for the legends
    once they are drawn (their text measured, not estimated: the margins are fixed)."""
    columns = [max(1, math.ceil(len(v) / LEGEND_ROWS)) for v in groups.values()]
    heights = [max(2.8, 0.6 + 0.19 * min(len(v), LEGEND_ROWS)) for v in groups.values()]
    total = sum(heights) + 0.75 * len(heights) + 1.0
    full = width + LEGEND_START
    fig = Figure(figsize=(full, total), dpi=DPI)
    axes = fig.subplots(len(heights) or 1, 1, squeeze=False, sharex=sharex,
                        gridspec_kw={"height_ratios": heights or [1]})[:, 0]
    fig.subplots_adjust(left=0.9 / full, right=width / full,
                        top=1 - 0.95 / total, bottom=0.55 / total,
                        hspace=0.75 * len(heights) / max(1.0, sum(heights)))
    return fig, list(axes), columns


def _legend(ax: Axes, columns: int, extra: list[Line2D]) -> Legend | None:
    handles = ax.get_legend_handles_labels()[0] + extra
    if not handles:
        return None
    return ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                     ncols=columns, fontsize="small", frameon=False, borderaxespad=0)


def _fit_legends(fig: Figure, legends: list[Legend | None]) -> None:
    """Widen the figure for the widest of the panels' legends (each measured; the axes keep
    their size and place in inches), so every entry ends inside it and no empty column is
    left beside a short one; and on the left for the widest tick labels and y label."""
    for legend in legends:
        if legend is not None:
            fit_legend(fig, legend)
    fit_left_labels(fig, list(fig.axes))


def relative_loss(record: Record) -> tuple[np.ndarray, np.ndarray, str]:
    """(steps, smoothed train loss ÷ baseline, what it was divided by) of one run; the
    baseline is summary.json's `baseline_loss`, else the run's loss before training."""
    rows = training_rows(record.metrics)
    steps, loss = column(rows, "step"), column(rows, "loss")
    s = record.summary or {}
    base, by = value(s.get("baseline_loss")), "baseline"
    if not (math.isfinite(base) and base > 0):
        base, by = value((s.get("initial_metrics") or {}).get("train_loss")), "initial loss"
    if not (math.isfinite(base) and base > 0):
        return np.array([]), np.array([]), by
    finite = np.isfinite(loss)
    y = loss[finite] / base
    window = max(1, (y.size // 6) | 1)  # the trend: a minibatch loss is noisy
    return steps[finite], smooth(y, window, steps[finite]) if window > 1 else y, by


def comparison_loss_figure(records: list[Record]) -> Figure:
    """Each task's variants in one panel: train loss ÷ the variant's baseline (1 = no better
    than a predictor that ignores its inputs), smoothed; a curve past CAP × the baseline ends
    there in ▲, a diverged run in × (and without its ▲ where the × would cover it)."""
    groups = task_groups(records)
    labels = variant_labels(records)
    fig, axes, columns = _panels(groups)
    fig.suptitle("train loss ÷ baseline loss, by task (smoothed; below 1 = learning)",
                 y=1 - 0.3 / fig.get_figheight())
    if not groups:
        empty(axes[0], "no losses were logged")
        return fig
    legends = []
    for ax, (task, members), cols in zip(axes, groups.items(), columns):
        drawn, capped, diverged, initial = False, False, False, False
        past: list[tuple[float, str, float]] = []  # (step past CAP, colour, step diverged)
        for j, i in enumerate(members):
            record = records[i]
            x, y, by = relative_loss(record)
            style = variant_style(j, len(members))
            label = labels[i] + (" (÷ initial loss)" if by != "baseline" else "")
            if not x.size:
                ax.plot([], [], label=label + ": no finite loss", **style)
                continue
            drawn = True
            over = y > CAP
            ax.plot(x, np.minimum(y, CAP), label=label, markevery=max(1, len(x) // 6), **style)
            where = (record.summary or {}).get("first_nonfinite") or {}
            step = value(where.get("step"))
            if record.status == "diverged":
                diverged = True
                ax.plot(step if math.isfinite(step) else x[-1], CAP if math.isfinite(step)
                        else min(y[-1], CAP), marker="X", ms=11, mew=1, mec="black",
                        color=style["color"], ls="none")
            if over.any():
                past.append((float(x[int(np.argmax(over))]), style["color"],
                             step if record.status == "diverged" else math.nan))
            initial |= by != "baseline"
        low, high = ax.get_xlim()
        for at, color, ended in past:  # a ▲ under its run's × would hide: the × says more
            if not abs(at - ended) < 0.02 * (high - low):
                capped = True
                ax.plot(at, CAP, marker="^", ms=9, color=color, ls="none")
        log_scale(ax)
        ax.axhline(1.0, color="black", ls=":", lw=1.6)
        low, high = ax.get_ylim()
        ax.set_ylim(low, CAP * 1.6 if capped or diverged else high)
        heading(ax, task, loc="left", fontsize="medium")
        ax.set_ylabel("loss ÷ baseline (log)")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3, which="major")
        if not drawn:
            empty(ax, "no losses were logged")
        extra = [Line2D([], [], color="black", ls=":", lw=1.6,
                        label="1 = baseline (ignores its inputs)")]
        if capped:
            extra.append(Line2D([], [], ls="none", marker="^", ms=9, color="grey",
                                label=f"went past {CAP:g}× the baseline"))
        if diverged:
            extra.append(Line2D([], [], ls="none", marker="X", ms=11, mec="black", color="grey",
                                label="diverged here (NaN/Inf)"))
        legends.append(_legend(ax, cols, extra))
    _fit_legends(fig, legends)
    return fig


def comparison_grad_flow_figure(records: list[Record]) -> Figure:
    """Each task's variants in one panel: the gradient norm of every layer at init against
    relative depth (0 = first layer, 1 = output)."""
    groups = task_groups(records)
    labels = variant_labels(records)
    fig, axes, columns = _panels(groups)
    fig.suptitle("gradient norm by depth at init, by task", y=1 - 0.3 / fig.get_figheight())
    first_rows = []
    for record in records:
        steps, _, g, _ = layer_grid(record, "grad_norm")
        first_rows.append(g[0] if steps else np.array([]))
    if not groups:
        empty(axes[0], "no gradient norms were logged")
        return fig
    legends = []
    for ax, (task, members), cols in zip(axes, groups.items(), columns):
        rows = [first_rows[i] for i in members]
        everything = np.concatenate(rows) if rows else np.array([])
        if not np.isfinite(everything).any():
            empty(ax, "no gradient norms were logged")
            heading(ax, task, loc="left", fontsize="medium")
            continue
        floor = log_floor(everything)
        zeros = False
        for j, (i, row) in enumerate(zip(members, rows)):
            style = variant_style(j, len(members))
            if not np.isfinite(row).any():
                ax.plot([], [], label=labels[i] + ": nothing finite", **style)
                continue
            # A single probed layer (a head alone, model.depth 0) is the first layer and the
            # output layer at once. At 0 it would read as "the first layer, and nothing
            # measured after it"; it is drawn at 1, the output end (it is the read-out,
            # whose gradient every deeper net also has at 1), and its label says so.
            one = len(row) == 1
            depth = np.ones(1) if one else np.linspace(0, 1, len(row))
            zeros |= draw_norms(ax, depth, row, floor,
                                label=labels[i] + (" (one layer: drawn at the output)" if one
                                                   else ""),
                                markevery=max(1, len(row) // 8), **style)
        log_scale(ax)
        ax.set_xlim(-0.05, 1.05)  # the whole 0..1 range, also when every variant has one layer
        if zeros:
            ax.axhline(floor, color="grey", ls=":", lw=1)
        heading(ax, task, loc="left", fontsize="medium")
        ax.set_xlabel("relative depth (0 = first layer, 1 = output layer)")
        ax.set_ylabel("‖∂L/∂W‖ at init (log)")
        ax.grid(alpha=0.3, which="major")
        legends.append(_legend(ax, cols, [zero_legend(floor)] if zeros else []))
    _fit_legends(fig, legends)
    return fig


def grad_ratios(record: Record) -> tuple[float | None, float | None, str]:
    """(at init, at the end, what): the gradient ratio the verdicts read. Feed-forward nets:
    first layer ÷ last (summary.json `grad_ratio_*`); recurrent ones: ‖∂L/∂h_1‖ ÷ ‖∂L/∂h_T‖
    (`time_grad_ratio_*`), the ratio that vanishes there. None where it was not measured
    (null: a single probed layer, probing off, nothing logged); NaN or Inf where it was and
    a norm overflowed."""
    s = record.summary or {}
    kind = (record.config.get("model") or {}).get("kind")
    if kind in RECURRENT_KINDS or s.get("time_grad_ratio_init") is not None:
        return (_measured(s.get("time_grad_ratio_init")),
                _measured(s.get("time_grad_ratio_final")), "through time")
    return _measured(s.get("grad_ratio_init")), _measured(s.get("grad_ratio_final")), "by depth"


def _measured(x: Any) -> float | None:
    """A summary.json number as a float; None where it is null (not measured)."""
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _not_measured(record: Record, what: str) -> str:
    """The words on a row whose ratio was not measured, with the reason where the record
    tells it."""
    s = record.summary or {}
    layers = s.get("layers")
    if what == "by depth" and isinstance(layers, list) and len(layers) == 1:
        return "not measured: one layer, no first ÷ last"
    return "not measured"


def comparison_grad_ratio_figure(records: list[Record]) -> Figure:
    """Every variant in one row: its gradient ratio at init (○) and at the end (●) on one log
    axis, with the verdicts' vanishing and exploding zones; grouped by task."""
    groups = task_groups(records)
    labels = variant_labels(records)
    order = [i for members in groups.values() for i in members]
    n = max(1, len(order))
    height = 1.4 + 0.28 * n + 0.36 * len(groups)
    names = [labels[i] + (" (through time)" if grad_ratios(records[i])[2] == "through time"
                          else "") for i in order]
    left = 0.4 + LEGEND_CHAR * max((len(t) for t in names), default=10)  # the names fit
    fig = Figure(figsize=(7.5 + left, height), dpi=DPI)
    ax = fig.add_subplot()
    fig.subplots_adjust(left=left / (7.5 + left), right=1 - 0.3 / (7.5 + left),
                        top=1 - 0.75 / height, bottom=0.95 / height)
    heading(ax, "gradient ratio of every variant: first layer ÷ last (recurrent: "
                 "‖∂L/∂h₁‖ ÷ ‖∂L/∂h_T‖)", fontsize="medium")
    ratios = [grad_ratios(r) for r in records]
    values = np.array([math.nan if v is None else v for a, b, _ in ratios for v in (a, b)],
                      dtype=float)
    if not order or not np.isfinite(values).any():
        empty(ax, "no gradient ratios were logged")
        return fig
    floor = log_floor(values)
    positive = values[np.isfinite(values) & (values > 0)]
    high = max(float(positive.max()) * 10 if positive.size else 10.0, EXPLODING_RATIO * 10)
    low = min(floor / 10, VANISHING_RATIO / 10)
    log_scale(ax, "x")
    ax.set_xlim(low, high)
    ax.axvspan(low, VANISHING_RATIO, color="C0", alpha=0.08, lw=0)
    ax.axvspan(EXPLODING_RATIO, high, color="C3", alpha=0.08, lw=0)
    ax.axvline(1.0, color="black", ls=":", lw=1.2)
    ticks: list[float] = []
    y = 0.0
    zeros = bad = False
    drawn: set[str] = set()  # which point markers are on the chart: the legend shows those only
    for task, members in groups.items():
        ax.text(low, y, f" {task}", fontsize="small", fontweight="bold", va="center")
        y += 1.0
        for i in members:
            a, b, what = ratios[i]
            shown = [math.nan if v is None else floor if v == 0 else v for v in (a, b)]
            zeros |= a == 0 or b == 0
            if all(math.isfinite(v) for v in shown):
                ax.plot(shown, [y, y], color="grey", lw=1.5, zorder=1)
            if math.isfinite(shown[0]):
                drawn.add("init")
                ax.plot(shown[0], y, marker="o", ms=7, mfc="white", mec="C0", mew=1.5, ls="none")
            if math.isfinite(shown[1]):
                diverged = records[i].status == "diverged"
                drawn.add("diverged" if diverged else "end")
                ax.plot(shown[1], y, marker="X" if diverged else "o", ms=8,
                        color="red" if diverged else "C0", ls="none")
            if any(v is not None and not math.isfinite(v) for v in (a, b)):  # a measured overflow
                bad = True
                ax.plot(high / 3, y, marker="x", ms=8, mew=2, color="red", ls="none")
            if a is None or b is None:  # said in words, never drawn as a value
                _label_unmeasured(ax, y, (a, b), shown, _not_measured(records[i], what))
            ticks.append(y)
            y += 1.0
        y += 0.3
    ax.set_yticks(ticks, names, fontsize="small")
    ax.set_ylim(y - 0.6, -0.7)  # the first variant at the top
    ax.set_xlabel("gradient ratio (log scale; 1 = as strong at the input as at the output)")
    ax.grid(alpha=0.3, axis="x", which="major")
    points = {"init": Line2D([], [], marker="o", ms=7, mfc="white", mec="C0", mew=1.5,
                             ls="none", label="at init"),
              "end": Line2D([], [], marker="o", ms=8, color="C0", ls="none", label="at the end"),
              "diverged": Line2D([], [], marker="X", ms=8, color="red", ls="none",
                                 label="at the end, diverged (last logged step)")}
    handles: list[Any] = [h for k, h in points.items() if k in drawn]
    handles += [matplotlib.patches.Patch(color="C0", alpha=0.2,
                                         label=f"vanishing (< {VANISHING_RATIO:g})"),
                matplotlib.patches.Patch(color="C3", alpha=0.2,
                                         label=f"exploding (> {EXPLODING_RATIO:g})")]
    if zeros:
        handles.append(zero_legend(floor, "0: the first gradient underflowed"))
    if bad:
        handles.append(Line2D([], [], ls="none", marker="x", ms=8, mew=2, color="red",
                              label="NaN/Inf (measured: overflowed)"))
    fig.legend(handles=handles, loc="lower center", ncols=4, fontsize="small", frameon=False)
    fit_left_labels(fig, ax)
    return fig


def _label_unmeasured(ax: Axes, y: float, ends: tuple[float | None, float | None],
                      shown: list[float], text: str) -> None:
    """Grey words on a row whose ratio was not measured (`ends` (init, end), None where not):
    in the middle of the row when neither end was, else beside the end that was (drawn at
    `shown`, or at the right as NaN/Inf), on the side facing the middle; never a point, so
    nothing on the row reads as a value."""
    low, high = ax.get_xlim()
    middle = math.sqrt(low * high)
    if ends[0] is None and ends[1] is None:
        ax.text(middle, y, text, ha="center", va="center", fontsize="small", style="italic",
                color="dimgrey", zorder=3,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.5})
        return
    k = 1 if ends[0] is None else 0  # the end that was measured
    at = shown[k] if math.isfinite(shown[k]) else high / 3
    when = "at init" if ends[0] is None else "at the end"
    left = at > middle
    ax.annotate(f"{when}: {text}", (at, y), xytext=(-9 if left else 9, 0),
                textcoords="offset points", ha="right" if left else "left", va="center",
                fontsize="small", style="italic", color="dimgrey")



FIGURE_TITLES = {"loss.png": "Loss",
                 "grad_flow.png": "Gradient flow at init",
                 "grad_ratio.png": "Gradient ratio, first layer ÷ last"}


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


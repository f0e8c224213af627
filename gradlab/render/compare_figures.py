"""A comparison's figures, overlaid: every variant's loss and its gradient flow at init, and
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

if "matplotlib.pyplot" not in sys.modules:  # no display needed; leave a user's own pyplot alone
    matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from gradlab.record.comparison import comparison_markdown_table, variant_records, write_report  # noqa: E402
from gradlab.record.reader import Record, is_training_row  # noqa: E402
from gradlab.render.figures import (  # noqa: E402
    LINESTYLES,
    MARKERS,
    draw_norms,
    empty,
    layer_grid,
    log_floor,
    run_name,
    save,
    spans_decades,
    value,
    zero_legend,
)


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
    records = variant_records(path)
    figures = plot_comparison(records, path) if draw and records else []
    write_report(path, comparison_markdown(comparison_markdown_table(path), figures, base=path))
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
        points = [(m["step"], value(m.get("loss"))) for m in record.metrics if is_training_row(m)]
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
        empty(ax, "no losses were logged")
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
        empty(ax, "no gradient norms were logged")
        return fig
    floor = log_floor(everything)
    zeros = False
    for i, (row, label) in enumerate(zip(first_rows, variant_labels(records))):
        if not np.isfinite(row).any():
            continue
        depth = np.linspace(0, 1, len(row)) if len(row) > 1 else np.zeros(1)
        zeros |= draw_norms(ax, depth, row, floor, label=label,
                             markevery=max(1, len(row) // 8), **variant_style(i, len(records)))
    ax.set_yscale("log")
    if zeros:
        ax.axhline(floor, color="grey", ls=":", lw=1)
    ax.set_xlabel("relative depth (0 = first layer, 1 = output layer)")
    ax.set_ylabel("gradient norm at init (log scale)")
    ax.grid(alpha=0.3)
    _outside_legend(fig, ax, columns, [zero_legend(floor)] if zeros else [])
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


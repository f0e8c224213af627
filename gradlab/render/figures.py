"""What every figure shares: the Agg backend, atomic PNG writes, a record's layer statistics
as a (step × layer) grid, log-axis helpers for exact zeros, and the divergence marker.

Reads records through `gradlab.record` only (no torch, no trainer); needs no display.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import matplotlib

if "matplotlib.pyplot" not in sys.modules:  # no display needed; leave a user's own pyplot alone
    matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import LogFormatter  # noqa: E402

from gradlab.record.reader import Record, is_training_row  # noqa: E402

DPI = 100
LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def new_figure(width: float, height: float, rows: int = 1, cols: int = 1, *,
               left: float = 0.9, right: float = 0.25, bottom: float = 0.65, top: float = 0.45,
               wspace: float = 0.25, hspace: float = 0.3, **shared: Any) -> tuple[Figure, Any]:
    """A figure of (rows × cols) axes (a 2-d array) with fixed margins in inches.

    Fixed margins, not a layout engine: constrained layout measures every tick label's box
    before drawing and took about half of each figure's time; the margins here fit gradlab's
    labels (log tick labels and a y label on the left, rotated layer names below).
    """
    fig = Figure(figsize=(width, height), dpi=DPI)
    axes = fig.subplots(rows, cols, squeeze=False, **shared)
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height,
                        top=1 - top / height, wspace=wspace, hspace=hspace)
    return fig, axes


P = ParamSpec("P")
R = TypeVar("R")


def quiet_overflow(draw: Callable[P, R]) -> Callable[P, R]:
    """A figure entry point drawing with numpy's overflow warning off: values near the float
    maximum (a record with 1e308 in it) put a log axis's autoscale margin past it, where
    matplotlib's exp overflows to inf, which it handles, but numpy would print a RuntimeWarning
    for each axis."""

    @functools.wraps(draw)
    def drawing(*args: P.args, **kwargs: P.kwargs) -> R:
        with np.errstate(over="ignore"):
            return draw(*args, **kwargs)

    return drawing


def save(fig: Figure, path: Path) -> Path:
    """Write a PNG atomically, so a reader never sees half a picture. (zlib level 3: nearly
    the size of the default level 6 at a fraction of its time.)"""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fit_titles(fig)
    try:
        fig.savefig(tmp, format="png", dpi=DPI, pil_kwargs={"compress_level": 3})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # after an error or Ctrl-C mid-write
    return path



def fit_titles(fig: Figure, pad: float = 4.0, smallest: float = 7.0) -> None:
    """Shrink an axes title or a figure's own title (its suptitle) wider than the figure (a
    long run name before `[completed]`) until it fits, down to `smallest` points; measured, as
    no fixed size knows the name's length. Both are centred on where they stand."""
    renderer = FigureCanvasAgg(fig).get_renderer()
    width = fig.bbox.width
    for text in [*(ax.title for ax in fig.axes), *fig.texts]:
        if not text.get_text() or text.get_horizontalalignment() != "center":
            continue
        box = text.get_window_extent(renderer)
        room = 2 * min(box.x0 + box.width / 2, width - box.x0 - box.width / 2) - 2 * pad
        if box.width > room > 0:
            text.set_fontsize(max(smallest, text.get_fontsize() * room / box.width))


def value(x: Any) -> float:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else math.nan


def run_name(record: Record) -> str:
    return str((record.summary or {}).get("name") or record.config.get("name")
               or record.path.parent.name)


def title(record: Record, what: str) -> str:
    status = record.status
    note = " (killed? showing what it logged)" if status == "incomplete" else ""
    return f"{run_name(record)}: {what}  [{status}{note}]"


def layer_grid(record: Record, key: str) -> tuple[list[int], list[str], np.ndarray, np.ndarray]:
    """(steps, layer names, values (step, layer), present (step, layer)) of one layers.csv column.

    A missing value (a killed run's half-logged step, or a statistic not measured for that
    layer) is NaN with present False; a logged NaN or Inf (a diverging run) is present.
    """
    rows = [r for r in record.layers if is_training_row(r) and isinstance(r.get("layer"), int)]
    steps = sorted({r["step"] for r in rows})
    n = max((r["layer"] for r in rows), default=-1) + 1
    names = [str(i + 1) for i in range(n)]
    at = {s: i for i, s in enumerate(steps)}
    values = np.full((len(steps), n), np.nan)
    present = np.zeros((len(steps), n), dtype=bool)
    for r in rows:
        values[at[r["step"]], r["layer"]] = value(r.get(key))
        present[at[r["step"]], r["layer"]] = r.get(key) is not None
        names[r["layer"]] = str(r.get("name") or r["layer"] + 1)
    return steps, names, values, present



def log_floor(values: np.ndarray) -> float:
    """A y position a decade below every positive value: where exact zeros are drawn on log axes."""
    positive = values[np.isfinite(values) & (values > 0)]
    if positive.size == 0:
        return 1e-30
    return float(10.0 ** (math.floor(math.log10(positive.min())) - 1))


def spans_decades(values: list[float]) -> bool:
    finite = [v for v in values if math.isfinite(v)]
    return bool(finite) and min(finite) > 0 and max(finite) / min(finite) > 10


SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


class PowerOfTen(LogFormatter):
    """Log tick labels as 10⁻⁴² and 2×10⁻¹ in plain text: the same look as matplotlib's
    mathtext labels at a fraction of the cost (mathtext parses each label once per figure)."""

    def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
        if x <= 0 or not math.isfinite(x):
            return ""
        # two significant digits, more where the view spans less than a decade (ticks at 1,
        # 1.02 and 1.04 must not all read "1")
        span = math.log10(vmax / vmin) if 0 < vmin < vmax and math.isfinite(vmax / vmin) else 1
        figures = 2 if span >= 1 else 3 if span >= 0.1 else 4
        exponent = math.floor(math.log10(x) + 1e-9)
        mantissa = float(f"{x / 10.0 ** exponent:.{figures}g}")
        if mantissa >= 10:  # 0.9999 rounds to 10 × 10⁻¹: it is 1
            exponent, mantissa = exponent + 1, mantissa / 10
        if span < 1 and 1e-3 <= vmin and vmax < 1e3:  # a narrow view: 0.998, 1, 1.002 alike
            return f"{x:.{figures}g}"
        power = "1" if exponent == 0 else "10" + str(exponent).translate(SUPERSCRIPT)
        if mantissa == 1:
            return power
        digits = f"{mantissa:.{figures}g}"
        return digits if exponent == 0 else f"{digits}×{power}"


def log_scale(ax: Axes, axis: str = "y") -> None:
    """A log axis with PowerOfTen labels (major and minor)."""
    target = ax.yaxis if axis == "y" else ax.xaxis
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    target.set_major_formatter(PowerOfTen())
    target.set_minor_formatter(PowerOfTen(labelOnlyBase=False, minor_thresholds=(1, 0.4)))


def heading(ax: Axes, text: str, **style: Any) -> None:
    """An axes title at a fixed height: matplotlib otherwise measures every tick label of the
    axes on each draw to place it (about a third of a figure's drawing time)."""
    ax.set_title(text, y=1.0, **style)


def empty(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def nothing_finite(record: Record, present: np.ndarray, what: str) -> str:
    """Why a figure has no line: nothing logged, or only NaN/Inf (and where it diverged)."""
    if not present.any():
        return f"no {what}s were logged"
    where = divergence(record)
    return f"every logged {what} was NaN or Inf" + (f"\n({where[1]})" if where else "")


def layer_ticks(ax: Axes, names: list[str], axis: str = "x", most: int = 12) -> None:
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


def pick(n: int, most: int) -> list[int]:
    """Up to `most` indices spread over range(n), always the first and the last."""
    if n <= most:
        return list(range(n))
    return sorted({round(i * (n - 1) / (most - 1)) for i in range(most)})


def isolated(y: np.ndarray) -> np.ndarray:
    """The finite points of a series whose neighbours on both sides are missing or NaN/Inf:
    a line draws nothing there (a diverged run's single logged step, a lone measured one)."""
    ok = np.isfinite(np.asarray(y, dtype=float))
    before = np.concatenate([[False], ok[:-1]])
    after = np.concatenate([ok[1:], [False]])
    return ok & ~before & ~after


def _marking_isolated(n: int, alone: np.ndarray, style: dict[str, Any]) -> dict[str, Any]:
    """`style` with a marker on every isolated point (and on those it marked already)."""
    if not alone.any():
        return style
    marker, every = style.get("marker"), style.get("markevery")
    has_marker = marker not in (None, "", "None", "none")
    if has_marker and every is None:
        return style  # every point is marked
    marked = np.zeros(n, dtype=bool)
    if has_marker and isinstance(every, int) and every > 0:
        marked[::every] = True
    return {**style, "marker": marker if has_marker else "o",
            "ms": style.get("ms", 6) if has_marker else style.get("ms", 5),
            "markevery": [int(i) for i in np.flatnonzero(marked | alone)]}


def marking_isolated(y: np.ndarray, style: dict[str, Any]) -> dict[str, Any]:
    """`style` for a line through y with a marker on each point no neighbour shares (a line
    draws nothing there)."""
    y = np.asarray(y, dtype=float)
    return _marking_isolated(len(y), isolated(y), style)


def draw_norms(ax: Axes, x: np.ndarray, y: np.ndarray, floor: float, **style: Any) -> bool:
    """A gradient-norm line on a log axis, an exact zero a ▽ at `floor` (in the line's colour,
    not joined to it: a line into the floor would read as a value there); True if it had
    zeros. A point with no finite nonzero neighbour gets a marker, so a lone value is never
    invisible."""
    zero = y == 0
    shown = np.where(np.isfinite(y) & ~zero, y, np.nan)
    ax.plot(x, shown, **_marking_isolated(len(shown), isolated(shown), style))
    if zero.any():
        ax.plot(x[zero], np.full(int(zero.sum()), floor), ls="none", marker="v", ms=7,
                mfc="none", mec=style.get("color", "grey"))
    return bool(zero.any())


def fill_band(ax: Axes, x: np.ndarray, low: np.ndarray, high: np.ndarray, **style: Any) -> None:
    """A band from `low` to `high` over x (NaN where either is missing or NaN/Inf), with a
    bar at each step no neighbour shares: a band one step wide has no area to fill."""
    band = np.isfinite(low) & np.isfinite(high)
    low, high = np.where(band, low, np.nan), np.where(band, high, np.nan)
    ax.fill_between(x, low, high, **style)
    alone = isolated(low)
    if alone.any():
        ax.vlines(x[alone], low[alone], high[alone], color=style.get("color", "grey"),
                  alpha=min(1.0, 1.5 * float(style.get("alpha", 0.2))), lw=6,
                  zorder=style.get("zorder", 1))


def fit_legend(fig: Figure, legend: Any, pad: float = 0.15) -> None:
    """Widen `fig` so a legend placed to the right of its axes ends `pad` inches inside the
    figure, the axes keeping their size and place in inches (the legend's own text measured
    once; fixed margins cannot know how long the labels are)."""
    renderer = FigureCanvasAgg(fig).get_renderer()
    width = float(fig.get_figwidth())
    end = legend.get_window_extent(renderer).x1 / fig.dpi + pad
    if end <= width:
        return
    left, right = fig.subplotpars.left * width, fig.subplotpars.right * width
    fig.set_size_inches(end, fig.get_figheight())
    fig.subplots_adjust(left=left / end, right=right / end)


def fit_left_labels(fig: Figure, axes: Axes | list[Axes], pad: float = 0.1) -> None:
    """Widen `fig` on the left so the y tick labels and y label of `axes` start `pad` inches
    inside it, the axes keeping their size and place from the right (the labels measured: a
    margin estimated from the number of characters cannot know how wide they are)."""
    renderer = FigureCanvasAgg(fig).get_renderer()
    every = axes if isinstance(axes, list) else [axes]
    labels = [t.get_window_extent(renderer).x0 for ax in every
              for t in [*ax.get_yticklabels(), ax.yaxis.label] if t.get_text()]
    if not labels:
        return
    short = pad - min(labels) / fig.dpi
    if short <= 0:
        return
    width = float(fig.get_figwidth())
    left, right = fig.subplotpars.left * width, fig.subplotpars.right * width
    fig.set_size_inches(width + short, fig.get_figheight())
    fig.subplots_adjust(left=(left + short) / (width + short), right=(right + short) / (width + short))


def zero_legend(floor: float, what: str = "exactly 0 (underflow or saturation)") -> Line2D:
    return Line2D([], [], ls="none", marker="v", ms=7, mfc="none", mec="grey",
                  label=f"{what}, drawn at {floor:.0e}")



def mark_divergence(ax: Axes, record: Record, marker: bool = False) -> tuple[int, str] | None:
    """A red dashed line at the step a diverged run broke (labelled, for the legend), and with
    `marker` a red X at the top of the axes there: where the curve went off the chart."""
    where = divergence(record)
    if where is None:
        return None
    if marker:
        ax.axvline(where[0], color="red", ls="--", lw=1.2)
        ax.plot([where[0]], [0.96], transform=ax.get_xaxis_transform(), ls="none", marker="X",
                ms=11, color="red", clip_on=False, label=where[1])
    else:
        ax.axvline(where[0], color="red", ls="--", lw=1.2, label=where[1])
    low, high = ax.get_xlim()
    ax.set_xlim(min(low, where[0] - 0.5), max(high, where[0] + 0.5))
    return where


def mark_nonfinite(ax: Axes, x: np.ndarray, y: np.ndarray, top: float, **style: Any) -> bool:
    """Red × at height `top` where a logged value is NaN or ±Inf; True if there were any."""
    bad = ~np.isfinite(y)
    if bad.any():
        ax.plot(x[bad], np.full(int(bad.sum()), top), ls="none", marker="x", ms=8, mew=2,
                **{"color": "red", **style})
    return bool(bad.any())


def nonfinite_legend() -> Line2D:
    return Line2D([], [], ls="none", marker="x", ms=8, mew=2, color="red",
                  label="NaN/Inf (drawn at the top)")


def top_of(values: np.ndarray, log: bool = True) -> float:
    """A y position above every finite value: where NaN/Inf markers go."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 1.0
    high = float(finite.max())
    return high * 10 if log and high > 0 else high + 0.1 * (abs(high) or 1.0)


def smooth(y: np.ndarray, window: int, x: np.ndarray | None = None) -> np.ndarray:
    """A centred moving average of `window` points (shorter at the ends): the trend of a noisy
    minibatch loss. `y` must be finite. With `x` (the steps, ascending) it is a triangular
    kernel `window` typical spacings of `x` wide, in steps: a row logged between the regular
    ones (an evaluation's, one step before the next log) then moves the curve by its own
    weight, where an average over points jumped by a whole point's worth (a cliff at every
    evaluation)."""
    if window <= 1 or y.size < 3:
        return y.astype(float)
    if x is not None and x.size == y.size and x.size > 1:
        half = max(1.0, (window + 1) / 2 * float(np.median(np.diff(x))))
        lo, hi = np.searchsorted(x, x - half, side="left"), np.searchsorted(x, x + half)
        out = np.empty(y.size, dtype=float)
        for i in range(y.size):
            weights = 1 - np.abs(x[lo[i]:hi[i]] - x[i]) / half
            out[i] = float(weights @ y[lo[i]:hi[i]]) / float(weights.sum())
        return out
    cumulative = np.concatenate([[0.0], np.cumsum(y, dtype=float)])
    half_n = window // 2
    lo_n = np.clip(np.arange(y.size) - half_n, 0, y.size)
    hi_n = np.clip(np.arange(y.size) + half_n + 1, 0, y.size)
    return (cumulative[hi_n] - cumulative[lo_n]) / (hi_n - lo_n)


def training_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if is_training_row(r) and isinstance(r.get("step"), int)]


def column(rows: list[dict[str, Any]], key: str) -> np.ndarray:
    """One column of rows as floats: None (not measured) and non-numbers are NaN."""
    return np.array([value(r.get(key)) for r in rows], dtype=float)


def depth_colors(n: int) -> list[Any]:
    """n colours from the input side (dark purple) to the output side (yellow)."""
    cmap = matplotlib.colormaps["viridis"]
    return [cmap(0.9 * k / max(1, n - 1)) for k in range(n)]


def divergence(record: Record) -> tuple[int, str] | None:
    """(step, description) of the first NaN/Inf of a diverged run, from summary.json."""
    where = (record.summary or {}).get("first_nonfinite")
    if not where or not isinstance(where.get("step"), (int, float)):
        return None
    what = where.get("what") or "value"
    layer = f" in {where['layer']}" if where.get("layer") else ""
    return int(where["step"]), f"diverged at step {where['step']}: NaN/Inf {what}{layer}"


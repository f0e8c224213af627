"""A small scatter chart drawn in text, for loss curves and gradients through time.

`chart(series)` returns a rich `Text`; log y-scale when the values span over a decade.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from rich.text import Text

from gradlab.render.style import num

MARKS = {0: ("•", "cyan"), 1: ("x", "magenta"), 2: ("+", "green"), 3: ("o", "yellow")}


def chart(series: Mapping[str, Sequence[tuple[float, float]]], width: int = 64,
          height: int = 12, log: bool | None = None, xlabel: str = "step",
          fit: int | None = None) -> Text:
    """A small scatter chart in text; log y-scale when the values span over a decade.

    The x axis is labelled `xlabel` at its left end: training steps, or time steps t. With
    `fit`, the plotting area is as wide as makes each line, labels included, `fit` columns.
    """
    points = [p for s in series.values() for p in s]
    points = [(x, y) for x, y in points if math.isfinite(x) and math.isfinite(y)]
    if not points:
        return Text("nothing finite to draw", style="yellow")
    ys = [y for _, y in points]
    xs = [x for x, _ in points]
    if log is None:
        log = min(ys) > 0 and math.log10(max(ys)) - math.log10(min(ys)) > 1
    f = (lambda y: math.log10(y)) if log else (lambda y: y)
    lo, hi = f(min(ys)), f(max(ys))
    if not hi - lo > 0:  # one value (or equal ones, however large): a flat line
        hi = lo + max(1.0, abs(lo))
    x0, x1 = min(xs), max(xs)
    if not x1 - x0 > 0:
        x1 = x0 + 1
    top, bottom = num(10 ** hi if log else hi), num(10 ** lo if log else lo)
    pad = max(len(top), len(bottom))
    if fit is not None:
        width = max(fit - pad - 2, 16)
    grid = [[(" ", "")] * width for _ in range(height)]
    for k, (_, pts) in enumerate(series.items()):
        mark = MARKS[k % len(MARKS)]
        for x, y in pts:
            if not (math.isfinite(x) and math.isfinite(y)) or (log and y <= 0):
                continue
            col = round((x - x0) / (x1 - x0) * (width - 1))
            row = height - 1 - round((f(y) - lo) / (hi - lo) * (height - 1))
            grid[row][col] = mark
    out = Text()
    for r, line in enumerate(grid):
        label = top if r == 0 else bottom if r == height - 1 else ""
        out.append(f"{label:>{pad}} │")
        for ch, style in line:
            out.append(ch, style=style)
        out.append("\n")
    out.append(" " * pad + " └" + "─" * width + "\n")
    left, right = f"{xlabel} {num(x0)}", f"{num(x1)}"
    out.append(" " * (pad + 2) + left + " " * max(1, width - len(left) - len(right)) + right + "\n")
    legend = "   ".join(f"{MARKS[k % len(MARKS)][0]} {name}" for k, name in enumerate(series)
                       if series[name])
    out.append(" " * (pad + 2) + legend + ("   (log scale)" if log else ""))
    return out

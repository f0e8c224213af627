"""How numbers, names and tables look in every report: compact numbers, percentages, colours,
and tables laid out for the terminal's width.

Shared by the run report, the run listing and the comparison table. No torch.

A table is described as `Column`s and laid out by `fit_table` for the width it is printed at:
every column at its natural width when that fits; otherwise the least important columns are
dropped (`Column.drop`) and, last, names are shortened in the middle, kept distinct
(`shorten_names`). A number is never cut. `Fitted(build)` is a renderable that calls
`build(width)` when it is printed, so the same report fits 80 columns and uses 120.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rich import box
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "green"}
# A status's colour in every table: finished well, broke, or neither (interrupted, killed).
STATUS_STYLE = {"completed": "green", "diverged": "red", "failed": "red", "invalid": "red",
                "corrupt": "red"}


def status_style(status: str) -> str:
    return STATUS_STYLE.get(status, "yellow")


def num(x: Any, digits: int = 3) -> str:
    """A compact number: 0, 0.123, 12.3, 1.2e-05; a dash for missing (None: not measured),
    nan and inf for a measured NaN or Inf (an overflow), never the dash."""
    if x is None:
        return "–"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if math.isnan(x):
        return "nan"
    if x == 0:
        return "0"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if isinstance(x, int) and abs(x) < 1e5:
        return str(x)  # a step count: 1000, not 1e+03
    if abs(x) < 1e-3 or abs(x) >= 1e5:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def pct(x: Any) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.0f}%"


def short(x: float | None, digits: int = 2) -> str:
    """`digits` significant digits (two by default) with a compact exponent (2.6e4, 4.6e-11):
    a narrow column."""
    return re.sub(r"e([+-])0*(\d)", lambda m: "e" + m[1].strip("+") + m[2], num(x, digits))


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# ------------------------------------------------------------------ widths

MAX_WIDTH = 120  # boxes (header, loss, verdict) span the terminal up to this many columns
ELLIPSIS = "…"
SEPARATORS = "_-./"


def box_width(width: int) -> int:
    """The width every box of a report takes: the terminal's, up to MAX_WIDTH."""
    return min(width, MAX_WIDTH)


class Fitted:
    """A renderable built for the width it is printed at: `build(width)` at render time."""

    def __init__(self, build: Callable[[int], RenderableType]) -> None:
        self.build = build

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.build(options.max_width)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement.get(console, options, self.build(options.max_width))


def shorten_names(names: Sequence[str], width: int) -> list[str] | None:
    """Each name in at most `width` cells; a longer one keeps its start and its end around an
    ellipsis (`deep_s…oid_bn`), chosen so that no other name has that start and that end: the
    shortened names stay pairwise distinct and each still points to one name. None when
    `width` is too narrow for that."""
    keep = width - 1  # characters kept around the ellipsis
    distinct = set(names)
    out = []
    for name in names:
        if cell_len(name) <= width:
            out.append(name)
            continue
        if keep < 2:
            return None
        half = (keep + 1) // 2

        def score(k: int, name: str = name, half: int = half) -> tuple[float, int]:
            # balanced splits first, then further from the middle; one that keeps the last
            # words whole (the tail starts at a separator) counts as two steps nearer
            edge = name[len(name) - (keep - k)] in SEPARATORS
            return abs(k - half) - 2 * edge, -k

        for k in sorted(range(1, keep), key=score):
            head, tail = name[:k], name[len(name) - (keep - k):]
            if not any(other != name and other.startswith(head) and other.endswith(tail)
                       and len(other) >= len(head) + len(tail) for other in distinct):
                out.append(head + ELLIPSIS + tail)
                break
        else:
            return None
    return out


Cell = str | Text


@dataclass
class Column:
    """One column of a width-fitted table.

    `drop`: 0 is always shown; otherwise, when the width is short, the column with the highest
    `drop` goes first. `wrap`: words that may wrap onto more lines (a list of verdicts). `name`:
    names, shortened in the middle (and kept distinct) when nothing else makes the table fit.
    Every other column is shown whole, at its natural width, or not at all."""

    header: str
    cells: Sequence[Cell]
    justify: Literal["left", "right", "center"] = "right"
    drop: int = 0
    wrap: bool = False
    name: bool = False
    style: str = ""

    def width(self) -> int:
        texts = [self.header, *(c.plain if isinstance(c, Text) else c for c in self.cells)]
        lines = [line for t in texts for line in t.split("\n")]
        if self.wrap:  # the longest word: the rest wraps
            return max((cell_len(w) for line in lines for w in line.split()), default=1)
        return max((cell_len(line) for line in lines), default=1)


def fit_table(columns: Sequence[Column], width: int, *, gaps: Sequence[int] = (2, 1),
              shorten: bool = True, air_first: bool = True, **table: Any) -> Table | None:
    """A table of `columns` no wider than `width`: with the widest gap between columns that
    lets some of them fit, the most columns that fit at their natural widths; then, with
    `shorten`, the fewest columns with their names shortened; else (`shorten` False) None, so
    that the caller can try another arrangement. The table never cuts a number. With
    `air_first` False, a column counts for more than a wider gap."""
    drops = sorted({c.drop for c in columns if c.drop}, reverse=True)
    tiers = [[c for c in columns if not c.drop or c.drop < limit]
             for limit in [math.inf, *drops]]
    # air between the columns first: fewer columns read better than crowded ones
    tried = ([(shown, gap) for gap in gaps for shown in tiers] if air_first
             else [(shown, gap) for shown in tiers for gap in gaps])
    for shown, gap in tried:
        if _need(shown, gap) <= width:
            return _table(shown, gap, table)
    if not shorten:
        return None
    shown, gap = tiers[-1], min(gaps)
    names = [c for c in shown if c.name]
    spare = width - _need(shown, gap)
    if names and spare < 0:
        # the names share what is left of the width, each shortened by the same share
        for c in names:
            room = max(c.width() + spare // len(names), cell_len(c.header), 4)
            cells = [_stacked(x, s, room)
                     for x, s in zip(c.cells, _shortened([_plain(x) for x in c.cells], room))]
            shown = [Column(**{**c.__dict__, "cells": cells}) if x is c else x for x in shown]
    # narrower than the fewest columns (far below 80): every cell folds onto more lines
    # rather than being cut
    return _table(shown, gap, table, fold=_need(shown, gap) > width)


def _plain(cell: Cell) -> str:
    return cell.plain if isinstance(cell, Text) else cell


def _shortened(names: list[str], room: int) -> list[str]:
    """Names in lines of `room` cells: on one line, shortened in the middle, where that keeps
    them apart; else stacked over two or three lines (and shortened); else whole, folded."""
    for lines in (1, 2, 3):
        shortened = shorten_names(names, room * lines)
        if shortened is not None:
            return shortened
    return names


def _stacked(cell: Cell, name: str, room: int) -> Cell:
    """`name` (the cell's text shortened) in lines of `room` cells, in the cell's style."""
    lines = "\n".join(name[i:i + room] for i in range(0, len(name), room))
    return Text(lines, style=cell.style) if isinstance(cell, Text) else lines


def _need(columns: Sequence[Column], gap: int) -> int:
    return sum(c.width() for c in columns) + gap * (len(columns) - 1)


def _table(columns: Sequence[Column], gap: int, options: dict[str, Any],
           fold: bool = False) -> Table:
    # SIMPLE_HEAD draws one blank between columns; padding on the right widens that gap
    table = Table(box=box.SIMPLE_HEAD, header_style="bold", show_edge=False, pad_edge=False,
                  padding=(0, gap - 1, 0, 0), **options)
    for c in columns:
        table.add_column(c.header, justify=c.justify, no_wrap=not (c.wrap or fold),
                         overflow="fold", style=c.style or None)
    for row in zip(*(c.cells for c in columns)):
        table.add_row(*(Text(x) if isinstance(x, str) else x for x in row))
    return table


"""Reading a record's CSVs, checked and streaming: `iter_rows` (every row) and `read_rows`
(at most about `most` rows, whatever the file's size).

Both check what they read: text, not binary; a header naming the `step` column; every row
with as many fields as the header, a whole-number step. The last line of a killed run, cut
before its line end, is skipped; anything else wrong is `CorruptRecord`.

`read_rows` is what reports and figures read. It makes one pass over the file, line by line,
and keeps every k-th logged step (all of that step's rows), k doubling whenever more than
`most` rows would be kept, plus always the first and the last two logged steps. Rows are
thinned per lane: with `lane_column`, rows where that column is filled (the evaluated steps
of metrics.csv) are thinned apart from the others, so neither curve loses its points. Only
the kept rows are parsed; memory is bounded by `most`. No torch.
"""

from __future__ import annotations

import csv
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from gradlab.record.validate import CorruptRecord, check_header, check_text, not_text

MOST_ROWS = 20_000  # rows read_rows keeps of one CSV: ~400 steps of a 50-layer net


def number(text: str) -> Any:
    """A CSV cell as gradlab wrote it: None (empty), int, float, or the text itself."""
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text else value


def _open(path: Path) -> TextIO | None:
    try:
        return path.open(newline="", encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def _header(f: TextIO, path: Path) -> list[str] | None:
    line = f.readline()
    if not line:
        return None  # an empty file: killed before its header was flushed
    check_text(line, path, 1)
    if not line.endswith("\n"):
        raise CorruptRecord(path, "the header line is cut short")
    columns = next(csv.reader([line]))
    check_header(columns, path, ("step",))
    return columns


def _lines(f: TextIO, path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) after the header; a last line without its line end is dropped."""
    for number_, line in enumerate(f, start=2):
        check_text(line, path, number_)
        if line.endswith("\n"):
            yield number_, line


def _row(fields: list[str], columns: list[str], step_at: int, path: Path,
         line: int) -> dict[str, Any]:
    if len(fields) != len(columns):
        raise CorruptRecord(path, f"line {line}: {len(fields)} fields, the header has "
                                  f"{len(columns)}")
    row = {k: number(v) for k, v in zip(columns, fields)}
    if not isinstance(row[columns[step_at]], int):
        raise CorruptRecord(path, f"line {line}: step {fields[step_at]!r} is not a whole number")
    return row


def iter_rows(path: Path) -> Iterator[dict[str, Any]]:
    """Every row of a record's CSV, numbers as numbers; nothing if the file is absent."""
    f = _open(Path(path))
    if f is None:
        return
    with f:
        try:
            columns = _header(f, path)
            if columns is None:
                return
            step_at = columns.index("step")
            numbered = _lines(f, path)
            line_numbers: deque[int] = deque(maxlen=1)

            def text() -> Iterator[str]:
                for n, line in numbered:
                    line_numbers.append(n)
                    yield line

            for fields in csv.reader(text()):
                yield _row(fields, columns, step_at, path, line_numbers[0])
        except UnicodeDecodeError as e:
            raise not_text(path, e) from None
        except csv.Error as e:
            raise CorruptRecord(path, f"not CSV: {e}") from None


class _Lane:
    """The steps kept of one lane: every `stride`-th group, and the last two groups."""

    def __init__(self) -> None:
        self.stride = 1
        self.count = -1  # groups seen
        self.kept: dict[int, tuple[int, list[str]]] = {}
        self.rows = 0
        self.tail: deque[tuple[int, tuple[int, list[str]]]] = deque(maxlen=2)
        self.lines: list[str] = []
        self.keeping = False

    def start(self, first_line: int) -> None:
        self.count += 1
        self.lines = []
        self.tail.append((self.count, (first_line, self.lines)))
        self.keeping = self.count % self.stride == 0
        if self.keeping:
            self.kept[self.count] = (first_line, self.lines)

    def add(self, line: str, most: int) -> None:
        self.lines.append(line)
        if not self.keeping:
            return
        self.rows += 1
        while self.rows > most and len(self.kept) > 2:
            self.stride *= 2
            self.kept = {k: g for k, g in self.kept.items() if k % self.stride == 0}
            self.rows = sum(len(lines) for _, lines in self.kept.values())
            self.keeping = self.count in self.kept

    def groups(self) -> list[tuple[int, list[str]]]:
        return list({**self.kept, **dict(self.tail)}.values())


def read_rows(path: Path, most: int | None = MOST_ROWS,
              lane_column: str | None = None) -> list[dict[str, Any]]:
    """A record's CSV, thinned to about `most` rows (all of them with `most` None)."""
    if most is None:
        return list(iter_rows(path))
    path = Path(path)
    f = _open(path)
    if f is None:
        return []
    lanes: dict[bool, _Lane] = {}
    with f:
        try:
            columns = _header(f, path)
            if columns is None:
                return []
            step_at = columns.index("step")
            phase_at = columns.index("phase") if "phase" in columns else None
            lane_at = columns.index(lane_column) if lane_column in columns else None
            fast = step_at == 0 and phase_at == 1 and lane_at is None
            previous: tuple[str, ...] | None = None
            lane = lanes.setdefault(False, _Lane())
            for n, line in _lines(f, path):
                if fast:  # the group key is the text up to the second comma
                    key: tuple[str, ...] = (line[:line.find(",", line.find(",") + 1)],)
                else:
                    fields = line.split(",")
                    key = tuple(fields[i] for i in (step_at, phase_at) if i is not None
                                and i < len(fields))
                    if lane_at is not None:
                        filled = lane_at < len(fields) and fields[lane_at].strip() != ""
                        lane = lanes.setdefault(filled, _Lane())
                        key += (str(filled),)
                if key != previous:
                    lane.start(n)
                    previous = key
                lane.add(line, most)
        except UnicodeDecodeError as e:
            raise not_text(path, e) from None
    groups = sorted(g for kept in lanes.values() for g in kept.groups())
    rows = []
    try:
        for first, lines in groups:
            for i, fields in enumerate(csv.reader(lines)):
                rows.append(_row(fields, columns, step_at, path, first + i))
    except csv.Error as e:
        raise CorruptRecord(path, f"not CSV: {e}") from None
    return rows

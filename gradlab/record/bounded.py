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
from collections.abc import Callable, Iterator
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
         line: int | None) -> dict[str, Any]:
    where = f"line {line}" if line is not None else "a line near the end"
    if len(fields) != len(columns):
        raise CorruptRecord(path, f"{where}: {len(fields)} fields, the header has "
                                  f"{len(columns)}")
    row = {k: number(v) for k, v in zip(columns, fields)}
    if not isinstance(row[columns[step_at]], int):
        raise CorruptRecord(path, f"{where}: step {fields[step_at]!r} is not a whole number")
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

    def __init__(self, most: int) -> None:
        self.most = most
        self.stride = 1
        self.count = -1  # groups seen
        self.kept: dict[int, tuple[int, list[str]]] = {}
        self.rows = 0  # lines in the kept groups
        self.tail: deque[tuple[int, tuple[int, list[str]]]] = deque(maxlen=2)
        self.lines: list[str] = []  # the group being read
        self.keeping = False

    def start(self, first_line: int) -> list[str]:
        """A new group begins at `first_line`; returns the list its lines go into."""
        self.count += 1
        self.lines = []
        self.tail.append((self.count, (first_line, self.lines)))
        self.keeping = self.count % self.stride == 0
        if self.keeping:
            self.kept[self.count] = (first_line, self.lines)
        return self.lines

    def thin(self) -> None:
        """Too many rows kept: keep every other kept group (the stride doubles)."""
        while self.rows > self.most and len(self.kept) > 2:
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
            phase_at = columns.index("phase") if "phase" in columns else step_at
            lane_at = columns.index(lane_column) if lane_column in columns else None
            # the group key is the text up to the end of the later of step and phase
            cut = max(step_at, phase_at) + 1
            previous = None
            lane = lanes.setdefault(False, _Lane(most))
            lines: list[str] = []
            for n, line in enumerate(f, start=2):
                if "\0" in line:
                    check_text(line, path, n)
                if line[-1:] != "\n":
                    continue  # a killed run's last line, cut short
                if lane_at is None and cut == 2:  # step, phase: the usual layout
                    key = line[:line.find(",", line.find(",") + 1)]
                elif lane_at is None:
                    key = ",".join(line.split(",", cut)[:cut])
                else:
                    fields = line.split(",", lane_at + 1)
                    filled = lane_at < len(fields) and fields[lane_at].strip() not in ("", "\r\n")
                    lane = lanes.setdefault(filled, _Lane(most))
                    key = ",".join(fields[:cut]) + ("+" if filled else "-")
                if key != previous:
                    lines = lane.start(n)
                    previous = key
                lines.append(line)
                if lane.keeping:
                    lane.rows += 1
                    if lane.rows > most:
                        lane.thin()
        except UnicodeDecodeError as e:
            raise not_text(path, e) from None
    groups = sorted(g for kept in lanes.values() for g in kept.groups())
    rows = []
    try:
        for first, group in groups:
            for i, fields in enumerate(csv.reader(group)):
                rows.append(_row(fields, columns, step_at, path, first + i))
    except csv.Error as e:
        raise CorruptRecord(path, f"not CSV: {e}") from None
    return rows


def first_and_last(path: Path, keep: Callable[[dict[str, Any]], bool]
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows of the first and of the last logged step that `keep` takes (training rows).

    The first step is read from the start; the last from the end of the file, backwards a
    block at a time until the step before it shows: a run's summary costs the same for a
    long record as for a short one.
    """
    path = Path(path)
    first: list[dict[str, Any]] = []
    for row in iter_rows(path):
        if not keep(row):
            continue
        if first and row["step"] != first[0]["step"]:
            break
        first.append(row)
    if not first:
        return [], []
    return first, _last_step(path, keep)


def _last_step(path: Path, keep: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    with path.open("rb") as f:
        header = f.readline()
        columns = next(csv.reader([header.decode("utf-8")]))
        step_at = columns.index("step")
        size = f.seek(0, 2)
        block = 1 << 16
        while True:
            start = max(len(header), size - block)
            f.seek(start)
            data = f.read(size - start)
            if start > len(header):  # begins inside a line: from the next one
                data = data[data.find(b"\n") + 1:] if b"\n" in data else b""
            try:
                lines = data.decode("utf-8").splitlines(keepends=True)
            except UnicodeDecodeError as e:
                raise not_text(path, e) from None
            if lines and not lines[-1].endswith("\n"):
                lines.pop()  # a killed run's last line, cut short
            for line in lines:
                check_text(line, path, 0)
            try:
                rows = [r for r in (_row(fields, columns, step_at, path, None)
                                    for fields in csv.reader(lines)) if keep(r)]
            except csv.Error as e:
                raise CorruptRecord(path, f"not CSV: {e}") from None
            i = len(rows) - 1
            while i >= 0 and rows[i]["step"] == rows[-1]["step"]:
                i -= 1
            if i >= 0 or start == len(header):  # the step before it is in view, or all is
                return rows[i + 1:]
            block *= 4

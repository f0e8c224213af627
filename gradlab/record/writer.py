"""Writing a run record as training goes: `RunWriter`, an observer of the training loop.

It creates `runs/<name>/<UTC timestamp>[-N]/` (never overwriting), streams metrics.csv,
layers.csv and time_grads.csv row by row (flushed, so a killed run keeps what it logged) and
writes config.yaml and summary.json atomically. A pure sink: it keeps nothing it writes;
everything downstream reads the files back through `record.reader`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Protocol, TextIO

import yaml

from gradlab.record.files import clean, new_run_dir, unique_dir, write_atomic
from gradlab.record.reader import LAYER_COLUMNS, METRIC_COLUMNS, TIME_COLUMNS


class LogEvent(Protocol):
    """What the writer reads of the training loop's `Logged` event."""

    @property
    def step(self) -> int: ...

    @property
    def metrics(self) -> dict[str, Any]: ...

    @property
    def layers(self) -> list[dict[str, Any]]: ...

    @property
    def time_grads(self) -> list[float] | None: ...


class RunWriter:
    """An observer of the training loop that writes the run record as it goes."""

    def __init__(self, out: Path, name: str, place: tuple[Path, str] | None = None):
        # `place`: (parent, stem) for a run directory other than out/NAME/STAMP (a group's
        # seed-N); `unique_dir` never reuses one
        self.path = unique_dir(*place) if place else new_run_dir(out, name)
        self.phase = "train"
        self._files: list[TextIO] = []
        self._metrics = self._open("metrics.csv", METRIC_COLUMNS)
        self._layers = self._open("layers.csv", LAYER_COLUMNS)
        self._time: _Table | None = None  # time_grads.csv, for sequence models

    def _open(self, name: str, columns: tuple[str, ...]) -> _Table:
        f = (self.path / name).open("w", newline="", encoding="utf-8")
        self._files.append(f)
        table = _Table(f, columns)
        f.flush()
        return table

    def write_config(self, config: dict[str, Any]) -> None:
        write_atomic(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False))

    def write_summary(self, summary: dict[str, Any]) -> None:
        text = json.dumps(clean(summary), indent=2, allow_nan=False)
        write_atomic(self.path / "summary.json", text + "\n")

    def write_traceback(self, text: str) -> None:
        (self.path / "traceback.txt").write_text(text, encoding="utf-8")

    # ------------------------------------------------------------ the observer protocol

    def on_phase_start(self, phase: str) -> None:
        """Rows logged from now on belong to `phase` (`pretrain_layer_k`, then `finetune`)."""
        self.phase = phase

    def on_step_end(self, event: object) -> None:
        pass

    def on_eval_end(self, event: object) -> None:
        pass  # evaluations reach the record through the log row that follows them

    def on_log(self, event: LogEvent) -> None:
        self._metrics.write(event.metrics, self.phase)
        self._layers.write_all(event.layers, self.phase)
        if event.time_grads is not None:
            if self._time is None:
                self._time = self._open("time_grads.csv", TIME_COLUMNS)
            self._time.write_all([{"step": event.step, "t": t + 1, "grad_norm": g}
                                  for t, g in enumerate(event.time_grads)], self.phase)
        for f in self._files:
            f.flush()

    def close(self) -> None:
        for f in self._files:
            f.close()


class _Table:
    """One CSV of the record, in its columns' order: a float as its repr (the shortest text
    that reads back as the same float; nan and inf as such), None or a missing key as an
    empty cell, keys outside the columns left out, the `phase` column from the writer. (Built
    as lists for a plain csv.writer: a DictWriter row cost twice as much, and a logged step of
    a 50-layer net writes 51 rows.)"""

    def __init__(self, f: TextIO, columns: tuple[str, ...]) -> None:
        self._writer = csv.writer(f)
        self._columns = columns
        self._phase = columns.index("phase")
        self._writer.writerow(columns)

    def _cells(self, row: dict[str, Any], phase: str) -> list[Any]:
        # csv.writer itself writes a float as its repr and None as an empty cell, in C
        cells = list(map(row.get, self._columns))
        cells[self._phase] = phase
        return cells

    def write(self, row: dict[str, Any], phase: str) -> None:
        self._writer.writerow(self._cells(row, phase))

    def write_all(self, rows: list[dict[str, Any]], phase: str) -> None:
        self._writer.writerows([self._cells(row, phase) for row in rows])

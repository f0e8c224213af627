"""The run directory: writing it as training goes, and reading it back.

`RunWriter` creates `runs/<name>/<UTC timestamp>[-N]/` (never overwriting), streams
metrics.csv and layers.csv row by row (flushed, so a killed run keeps what it logged) and
writes config.yaml and summary.json atomically. `read_record` loads a run for reports,
plots and compare; it imports no torch.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

METRIC_COLUMNS = ("step", "phase", "loss", "lr", "grad_norm", "clipped",
                  "test_loss", "test_accuracy")
LAYER_COLUMNS = ("step", "phase", "layer", "name", "grad_norm", "grad_rms", "grad_absmax",
                 "weight_norm", "update_ratio", "act_mean", "act_std", "act_saturated",
                 "act_dead")

TIME_COLUMNS = ("step", "phase", "t", "grad_norm")


def new_run_dir(out: Path, name: str) -> Path:
    """Create and return a fresh run directory; concurrent writers never share one.

    `name` is one path component (config names are validated, file names sanitised), so the
    run directory always lies inside `out`.
    """
    if not name or name in (".", "..") or any(sep in name for sep in ("/", "\\", "\0")):
        raise ValueError(f"run name {name!r} is not a single directory name")
    return unique_dir(Path(out) / name, utc_stamp())


def utc_stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def unique_dir(parent: Path, stem: str) -> Path:
    """Create `parent/stem`, or `stem-1`, `stem-2`, ... if taken, and return it."""
    parent.mkdir(parents=True, exist_ok=True)
    for n in range(10_000):
        path = parent / (stem if n == 0 else f"{stem}-{n}")
        try:
            path.mkdir()  # atomic: exactly one process creates a given directory
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a directory {stem} under {parent}")


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold off Ctrl-C (and a compare worker's stop request) while a record is completed.

    A signal that arrives meanwhile is dropped: the record it would save is being written.
    Signal handlers can only change in the main thread; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = [signal.SIGINT] + [signal.SIGTERM] * callable(signal.getsignal(signal.SIGTERM))
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in held}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename over it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def clean(value: Any) -> Any:
    """JSON-safe: NaN and ±Inf become null, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


class RunWriter:
    """An observer of the training loop that writes the run record as it goes."""

    def __init__(self, out: Path, name: str):
        self.path = new_run_dir(out, name)
        self.phase = "train"
        self.first_layers: list[dict[str, Any]] = []
        self.last_layers: list[dict[str, Any]] = []
        self.metrics: list[dict[str, Any]] = []
        self.first_time_grads: list[float] | None = None
        self.last_time_grads: list[float] | None = None
        self._files: list[TextIO] = []
        self._metrics = self._open("metrics.csv", METRIC_COLUMNS)
        self._layers = self._open("layers.csv", LAYER_COLUMNS)
        self._time: csv.DictWriter | None = None  # time_grads.csv, for sequence models

    def _open(self, name: str, columns: tuple[str, ...]) -> csv.DictWriter:
        f = (self.path / name).open("w", newline="", encoding="utf-8")
        self._files.append(f)
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        f.flush()
        return writer

    def write_config(self, config: dict[str, Any]) -> None:
        write_atomic(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False))

    def write_summary(self, summary: dict[str, Any]) -> None:
        text = json.dumps(clean(summary), indent=2, allow_nan=False)
        write_atomic(self.path / "summary.json", text + "\n")

    def on_phase_start(self, phase: str) -> None:
        """Rows logged from now on belong to `phase` (`pretrain_layer_k`, then `finetune`)."""
        self.phase = phase

    def on_log(self, step: int, metrics: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        metrics = {**metrics, "phase": self.phase}
        self.metrics.append(metrics)
        self._metrics.writerow(_csv_row(metrics))
        for row in rows:
            self._layers.writerow(_csv_row({**row, "phase": self.phase}))
        if rows and not self.phase.startswith("pretrain"):  # first/last rows of training
            if not self.first_layers:
                self.first_layers = rows
            self.last_layers = rows
        time_grads = metrics.get("time_grads")
        if time_grads is not None:
            if self._time is None:
                self._time = self._open("time_grads.csv", TIME_COLUMNS)
            for t, g in enumerate(time_grads):
                self._time.writerow(_csv_row({"step": step, "phase": self.phase, "t": t + 1,
                                              "grad_norm": g}))
            if self.first_time_grads is None:
                self.first_time_grads = time_grads
            self.last_time_grads = time_grads
        for f in self._files:
            f.flush()

    def close(self) -> None:
        for f in self._files:
            f.close()


def _csv_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()}


# ---------------------------------------------------------------- reading


@dataclass
class Record:
    """A run read back from disk. `summary` is None for a run killed before it wrote one."""

    path: Path
    summary: dict[str, Any] | None
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    layers: list[dict[str, Any]]

    @property
    def status(self) -> str:
        if self.summary is None:
            return "incomplete"
        status = str(self.summary.get("status"))
        if status == "running" and not _alive(self.summary.get("pid")):
            return "incomplete"
        return status


def is_run_dir(path: Path) -> bool:
    return (path / "metrics.csv").is_file() or (path / "summary.json").is_file()


def read_record(path: Path) -> Record:
    """Load a run directory; missing or partial files read as empty rather than failing."""
    path = Path(path)
    if not path.is_dir() or not is_run_dir(path):
        raise FileNotFoundError(f"{path}: not a gradlab run directory")
    summary = None
    try:
        summary = json.loads((path / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    config: dict[str, Any] = {}
    try:
        config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        pass
    return Record(path, summary, config, _read_csv(path / "metrics.csv"),
                  _read_csv(path / "layers.csv"))


def _read_csv(path: Path) -> list[dict[str, Any]]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return []
    complete = [r for r in rows if None not in r.values() and None not in r]
    return [{k: _number(v) for k, v in r.items()} for r in complete]


def _number(text: str) -> Any:
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text else value


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

"""Reading run records back: `read_record(path)` → `Record`, run discovery, and the columns.

Reports, figures, compare and outside scripts read runs through here only. Missing or
partial files (a killed run) read as empty rather than failing; files that exist but are not
what gradlab wrote raise `validate.CorruptRecord` ("corrupt: <file>: <what>"), and the
listing shows such a run as `corrupt`. `read_record` reads the CSVs bounded
(`bounded.read_rows`: about `MOST_ROWS` rows each, however long the run); `read_csv` and
`iter_csv` give every row. No torch.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from gradlab.record.bounded import MOST_ROWS, first_and_last, iter_rows, read_rows
from gradlab.record.files import decode
from gradlab.record.validate import CorruptRecord, check_config, check_summary

METRIC_COLUMNS = ("step", "phase", "loss", "lr", "grad_norm", "grad_norm_clipped", "clipped",
                  "test_loss", "test_accuracy", "grad_scale")
LAYER_COLUMNS = ("step", "phase", "layer", "name", "grad_norm", "grad_rms", "grad_absmax",
                 "weight_norm", "update_ratio", "delta_norm", "act_mean", "act_std",
                 "act_saturated", "act_dead", "z_absmax", "overflow", "grad_underflow",
                 "grad_tiny", "act_q05", "act_q50", "act_q95", "grad_q05", "grad_q50",
                 "grad_q95")
TIME_COLUMNS = ("step", "phase", "t", "grad_norm")

STAMP = re.compile(r"^(\d{8}T\d{6}Z)(?:-(\d+))?$")  # files.utc_stamp(), then -N if taken


def is_training_row(row: dict[str, Any]) -> bool:
    """A row of the training (or fine-tuning) phase, not of layer-wise pretraining."""
    return not str(row.get("phase") or "train").startswith("pretrain")


@dataclass
class Record:
    """A run read back from disk. `summary` is None for a run killed before it wrote one;
    `problem` says why a listed run is `corrupt` (its files are not what gradlab wrote)."""

    path: Path
    summary: dict[str, Any] | None
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    layers: list[dict[str, Any]]
    time_grads: list[dict[str, Any]] = field(default_factory=list)  # time_grads.csv rows
    problem: str | None = None

    @property
    def status(self) -> str:
        if self.problem is not None:
            return "corrupt"
        if self.summary is None:
            return "incomplete"
        status = str(self.summary.get("status"))
        if status == "running" and not _alive(self.summary.get("pid")):
            return "incomplete"
        return status


def is_run_dir(path: Path) -> bool:
    return (path / "metrics.csv").is_file() or (path / "summary.json").is_file()


def read_record(path: Path, most: int | None = MOST_ROWS) -> Record:
    """Load a run directory; missing or partial files read as empty rather than failing, a
    corrupt one raises CorruptRecord. Each CSV is thinned to about `most` rows (every row
    with `most` None): reports and figures of a huge record stay fast and small. Reading the
    same record again while its files are unchanged (the report, then its figures) reuses
    the rows read (each caller gets its own lists and summary)."""
    path = Path(path)
    if not path.is_dir() or not is_run_dir(path):
        raise FileNotFoundError(f"{path}: not a gradlab run directory")
    key = (path.resolve(), most, _file_stamps(path))
    if _last_read and _last_read[0] == key:  # the report, then its figures: one read
        record = _last_read[1]  # under the path asked for (a link and its target read alike)
        return replace(record, path=path, summary=copy.deepcopy(record.summary),
                       config=copy.deepcopy(record.config), metrics=list(record.metrics),
                       layers=list(record.layers), time_grads=list(record.time_grads))
    record = Record(path, read_summary(path), read_config(path),
                    read_rows(path / "metrics.csv", most, lane_column="test_loss"),
                    read_rows(path / "layers.csv", most), read_rows(path / "time_grads.csv", most))
    _last_read[:] = [key, record]
    return replace(record, metrics=list(record.metrics), layers=list(record.layers),
                   time_grads=list(record.time_grads), summary=copy.deepcopy(record.summary),
                   config=copy.deepcopy(record.config))


_last_read: list[Any] = []  # [key, Record]: the last record read, while its files are unchanged


def _file_stamps(path: Path) -> tuple[Any, ...]:
    stamps: list[tuple[int, int, int] | None] = []
    for name in ("summary.json", "config.yaml", "metrics.csv", "layers.csv", "time_grads.csv"):
        try:
            st = (path / name).stat()
            stamps.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            stamps.append(None)
    return tuple(stamps)


def read_config(path: Path) -> dict[str, Any]:
    """config.yaml of a run directory as plain data; {} where there is none."""
    file = Path(path) / "config.yaml"
    try:
        text = file.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except UnicodeDecodeError:
        raise CorruptRecord(file, "not UTF-8 text: binary data?") from None
    except OSError as e:
        raise CorruptRecord(file, f"cannot be read: {e.strerror or e}") from None
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise CorruptRecord(file, f"not YAML: {str(e).splitlines()[0]}") from None
    return check_config(config, file)


def read_summary(path: Path) -> dict[str, Any] | None:
    """summary.json of a run directory, or None where there is none (yet); CorruptRecord if
    it does not parse or does not fit the summary's schema (`validate.SUMMARY_SCHEMA`).
    summary.json is written atomically, so a truncated or empty one is corrupt, not killed."""
    file = Path(path) / "summary.json"
    try:
        text = file.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None
    except UnicodeDecodeError:
        raise CorruptRecord(file, "not UTF-8 text: binary data?") from None
    except OSError as e:
        raise CorruptRecord(file, f"cannot be read: {e.strerror or e}") from None
    if not text.strip():
        raise CorruptRecord(file, "empty file")
    try:
        summary = json.loads(text)
    except ValueError as e:
        raise CorruptRecord(file, f"not valid JSON ({e})") from None
    return check_summary(decode(summary), file)


def read_csv(path: Path) -> list[dict[str, Any]]:
    """A record's CSV as rows of numbers (strings where a cell is not one); [] if absent."""
    return list(iter_csv(path))


def iter_csv(path: Path) -> Iterator[dict[str, Any]]:
    """The rows of a record's CSV one at a time; a half-written last row is skipped, a
    corrupt file raises CorruptRecord (`bounded.iter_rows`)."""
    yield from iter_rows(path)


def edge_steps(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows of the first and of the last training step logged in a CSV: the first read
    from the start, the last from the end (`bounded.first_and_last`), so the cost does not
    grow with the record."""
    return first_and_last(path, is_training_row)


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


# ---------------------------------------------------------------- finding runs


def is_entry(path: Path) -> bool:
    """A run directory, or a group of runs over several seeds (its group.json)."""
    return is_run_dir(path) or (path / "group.json").is_file()


def find_runs(root: Path) -> list[Path]:
    """Run directories and groups at `root`, one level under it (runs/NAME) or two
    (runs/NAME/STAMP); a group is one entry (its seeds' runs are inside it).

    Symbolic links to directories are followed (an --out, or a config's directory, reached
    through one), each run listed once under the first name found for it; a compare record's
    variants/ links are not runs of their own.
    """
    root = Path(root)
    if is_entry(root):
        return [root]
    found: list[Path] = []
    seen: set[Path] = set()
    for child in _subdirs(root):
        for run in [child] if is_entry(child) else [g for g in _subdirs(child) if is_entry(g)]:
            real = run.resolve()
            if real not in seen:
                seen.add(real)
                found.append(run)
    return found


def _subdirs(path: Path) -> list[Path]:
    if (path / "comparison.csv").is_file():  # a compare record: its variants/ are links
        return []
    try:
        return sorted(p for p in path.iterdir() if p.is_dir())
    except OSError:
        return []


def run_started(path: Path) -> tuple[datetime, int]:
    """When a run started (UTC), from its directory name; the -N suffix breaks ties."""
    m = STAMP.match(path.name)
    if m:
        return (datetime.strptime(m.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc),
                int(m.group(2) or 0))
    return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc), 0


def listing_record(path: Path) -> Record:
    """A run read for the listing: summary.json, and metrics.csv (bounded) only when there is
    no summary of a finished run (a killed or running one), never the larger layers.csv. A
    corrupt file makes a `corrupt` record (its `problem` says which file and what), never an
    error."""
    try:
        record = Record(path, read_summary(path), {}, [], [])
        if record.status in ("incomplete", "running"):
            record.metrics = read_rows(path / "metrics.csv", lane_column="test_loss")
    except CorruptRecord as e:
        return Record(path, None, {}, [], [], problem=e.short)
    return record

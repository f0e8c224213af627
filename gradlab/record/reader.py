"""Reading run records back: `read_record(path)` → `Record`, run discovery, and the columns.

Reports, figures, compare and outside scripts read runs through here only. Missing or
partial files (a killed run) read as empty rather than failing. No torch.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

METRIC_COLUMNS = ("step", "phase", "loss", "lr", "grad_norm", "clipped",
                  "test_loss", "test_accuracy")
LAYER_COLUMNS = ("step", "phase", "layer", "name", "grad_norm", "grad_rms", "grad_absmax",
                 "weight_norm", "update_ratio", "act_mean", "act_std", "act_saturated",
                 "act_dead")
TIME_COLUMNS = ("step", "phase", "t", "grad_norm")

STAMP = re.compile(r"^(\d{8}T\d{6}Z)(?:-(\d+))?$")  # files.utc_stamp(), then -N if taken


def is_training_row(row: dict[str, Any]) -> bool:
    """A row of the training (or fine-tuning) phase, not of layer-wise pretraining."""
    return not str(row.get("phase") or "train").startswith("pretrain")


@dataclass
class Record:
    """A run read back from disk. `summary` is None for a run killed before it wrote one."""

    path: Path
    summary: dict[str, Any] | None
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    layers: list[dict[str, Any]]
    time_grads: list[dict[str, Any]] = field(default_factory=list)  # time_grads.csv rows

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
    config: dict[str, Any] = {}
    try:
        config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        pass
    return Record(path, read_summary(path), config, read_csv(path / "metrics.csv"),
                  read_csv(path / "layers.csv"), read_csv(path / "time_grads.csv"))


def read_summary(path: Path) -> dict[str, Any] | None:
    """summary.json of a run directory, or None where there is none (yet)."""
    try:
        summary = json.loads((Path(path) / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def read_csv(path: Path) -> list[dict[str, Any]]:
    """A record's CSV as rows of numbers (strings where a cell is not one); [] if absent."""
    return list(iter_csv(path))


def iter_csv(path: Path) -> Iterator[dict[str, Any]]:
    """The rows of a record's CSV one at a time; a half-written last row is skipped."""
    try:
        f = path.open(newline="", encoding="utf-8")
    except OSError:
        return
    with f:
        for r in csv.DictReader(f):
            if None not in r.values() and None not in r:
                yield {k: _number(v) for k, v in r.items()}


def edge_steps(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows of the first and of the last training step logged in a CSV, read streaming."""
    first: list[dict[str, Any]] = []
    last: list[dict[str, Any]] = []
    for row in iter_csv(path):
        if not is_training_row(row):
            continue
        if not first or row["step"] == first[0]["step"]:
            first.append(row)
        if last and row["step"] != last[0]["step"]:
            last = []
        last.append(row)
    return first, last


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


# ---------------------------------------------------------------- finding runs


def find_runs(root: Path) -> list[Path]:
    """Run directories at `root`, one level under it (runs/NAME) or two (runs/NAME/STAMP).

    Symbolic links are not followed, so a compare record's variants/ are not listed twice.
    """
    root = Path(root)
    if is_run_dir(root):
        return [root]
    found: list[Path] = []
    for child in _subdirs(root):
        found += [child] if is_run_dir(child) else [g for g in _subdirs(child) if is_run_dir(g)]
    return found


def _subdirs(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.is_symlink())
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
    """A run read for the listing: summary.json, and metrics.csv only when there is no summary
    of a finished run (a killed or running one), never the larger layers.csv."""
    record = Record(path, read_summary(path), {}, [], [])
    if record.status in ("incomplete", "running"):
        record.metrics = read_csv(path / "metrics.csv")
    return record

"""The comparison record, `runs/compare-<UTC timestamp>/`: every file of it, written and read here.

`comparison.csv` (one row per variant, `COLUMNS`), `comparison.md` and `report.md` (text the
renderer makes), the figures, and `variants/NAME` links to each run directory. A record that
cannot be written is removed (`guard.RecordWriteError`); a comparison.csv that is not what
gradlab wrote reads as `validate.CorruptRecord`. No torch.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any

from gradlab.record.files import unique_dir, utc_stamp, write_atomic
from gradlab.record.group import is_group_dir, member_dirs, read_group
from gradlab.record.guard import RecordWriteError, cause, remove
from gradlab.record.reader import Record, is_run_dir, read_record
from gradlab.record.validate import CorruptRecord, check_header, check_text, not_text

COLUMNS = ("variant", "status", "steps", "final_loss", "test_metric", "grad_ratio_init",
           "grad_ratio_final", "weakest_grad", "verdict", "steps_per_second", "expect", "reused",
           "problems", "run_dir", "config", "seeds", "final_loss_ci", "test_metric_ci",
           "verdict_seeds", "overlaps", "partner", "paired")
# A group's row: its numbers are the means over `seeds` (space-separated), `*_ci` half the
# width of their 95% intervals, `overlaps` the variants whose test-metric interval meets its own.
NUMBER_COLUMNS = ("steps", "final_loss", "test_metric", "grad_ratio_init", "grad_ratio_final",
                  "weakest_grad", "steps_per_second", "final_loss_ci", "test_metric_ci")
# read back as "" where a record lacks them
OPTIONAL_COLUMNS = ("reused", "run_dir", "config", "seeds", "final_loss_ci", "test_metric_ci",
                    "verdict_seeds", "overlaps", "partner", "paired")


def is_comparison_dir(path: Path) -> bool:
    return (Path(path) / "comparison.csv").is_file()


def write_comparison(rows: list[dict[str, Any]], out: Path, markdown: str) -> Path:
    """A new compare record under `out`: comparison.csv, comparison.md and the variants/ links.

    A write that fails removes the half-made record and raises RecordWriteError."""
    try:
        path = unique_dir(Path(out), f"compare-{utc_stamp()}")
    except OSError as e:
        raise RecordWriteError(Path(out), cause(e), what="compare record under") from None
    try:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(path / "comparison.csv", text.getvalue())
        write_atomic(path / "comparison.md", markdown)
        links = path / "variants"
        links.mkdir()
        for r in rows:
            if r["run_dir"]:
                target = os.path.relpath(Path(r["run_dir"]).resolve(), links.resolve())
                link = links / r["variant"]
                if not link.exists() and not link.is_symlink():
                    link.symlink_to(target)
    except OSError as e:
        error = RecordWriteError(path, cause(e), what="compare record")
        error.removed = remove(path)
        raise error from None
    return path


def read_comparison(path: Path) -> list[dict[str, Any]]:
    """comparison.csv's rows, numbers as numbers (step counts as whole numbers); a file that
    is not what gradlab wrote raises CorruptRecord."""
    file = Path(path) / "comparison.csv"
    try:
        with file.open(newline="", encoding="utf-8") as f:
            lines = f.read().splitlines(keepends=True)
    except UnicodeDecodeError as e:
        raise not_text(file, e) from None
    except OSError as e:
        raise CorruptRecord(file, f"cannot be read: {e.strerror or e}") from None
    for n, line in enumerate(lines, start=1):
        check_text(line, file, n)
    try:
        reader = csv.DictReader(lines)
        check_header(list(reader.fieldnames or []), file,
                     tuple(c for c in COLUMNS if c not in OPTIONAL_COLUMNS))
        rows: list[dict[str, Any]] = []
        for r in reader:
            if None in r or None in r.values():
                raise CorruptRecord(file, f"line {reader.line_num}: not as many fields as "
                                          "the header")
            rows.append(_numbers(r, file, reader.line_num))
    except csv.Error as e:
        raise CorruptRecord(file, f"not CSV: {e}") from None
    return rows


def _numbers(r: dict[str, Any], file: Path, line: int) -> dict[str, Any]:
    for k in OPTIONAL_COLUMNS:
        r.setdefault(k, "")
    for k in NUMBER_COLUMNS:
        try:
            r[k] = float(r[k]) if r[k] != "" else None
        except ValueError:
            raise CorruptRecord(file, f"line {line}: {k}: not a number: {r[k]!r}") from None
    steps = r["steps"]
    if steps is not None:
        if not (math.isfinite(steps) and steps.is_integer()):
            raise CorruptRecord(file, f"line {line}: steps: not a whole number: {steps!r}")
        r["steps"] = int(steps)  # a count: re-printed as 1000, as the run printed it
    return r


def comparison_markdown_table(path: Path) -> str:
    return (Path(path) / "comparison.md").read_text(encoding="utf-8")


def write_report(path: Path, text: str) -> Path:
    """report.md: the table with the figures embedded (text made by the renderer)."""
    target = Path(path) / "report.md"
    write_atomic(target, text)
    return target


def variant_records(path: Path) -> list[Record]:
    """The runs of a compare record, in the order of comparison.csv, read back through its own
    links (variants/NAME), so a record moved elsewhere still finds them; a run whose record
    is corrupt is left out (its row in the table says what became of it). A group stands for
    itself by its first seed's run."""
    path = Path(path)
    records = []
    for row in read_comparison(path):
        link = path / "variants" / str(row.get("variant"))
        run_dir = link if link.is_dir() else Path(str(row.get("run_dir") or ""))
        if row.get("run_dir") and is_group_dir(run_dir):
            try:
                members = member_dirs(run_dir, read_group(run_dir))
            except CorruptRecord:
                continue
            run_dir = next(iter(members.values()), run_dir)
        if row.get("run_dir") and is_run_dir(run_dir):
            try:
                records.append(read_record(run_dir))
            except CorruptRecord:
                continue
    return records

"""The comparison record, `runs/compare-<UTC timestamp>/`: every file of it, written and read here.

`comparison.csv` (one row per variant, `COLUMNS`), `comparison.md` and `report.md` (text the
renderer makes), the figures, and `variants/NAME` links to each run directory. No torch.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from gradlab.record.files import unique_dir, utc_stamp, write_atomic
from gradlab.record.reader import Record, is_run_dir, read_record

COLUMNS = ("variant", "status", "steps", "final_loss", "test_metric", "grad_ratio_init",
           "grad_ratio_final", "weakest_grad", "verdict", "steps_per_second", "expect", "reused",
           "problems", "run_dir", "config")
NUMBER_COLUMNS = ("steps", "final_loss", "test_metric", "grad_ratio_init", "grad_ratio_final",
                  "weakest_grad", "steps_per_second")


def is_comparison_dir(path: Path) -> bool:
    return (Path(path) / "comparison.csv").is_file()


def write_comparison(rows: list[dict[str, Any]], out: Path, markdown: str) -> Path:
    """A new compare record under `out`: comparison.csv, comparison.md and the variants/ links."""
    path = unique_dir(Path(out), f"compare-{utc_stamp()}")
    with (path / "comparison.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    write_atomic(path / "comparison.md", markdown)
    links = path / "variants"
    links.mkdir()
    for r in rows:
        if r["run_dir"]:
            target = os.path.relpath(Path(r["run_dir"]).resolve(), links.resolve())
            link = links / r["variant"]
            if not link.exists() and not link.is_symlink():
                link.symlink_to(target)
    return path


def read_comparison(path: Path) -> list[dict[str, Any]]:
    """comparison.csv's rows, numbers as numbers (step counts as whole numbers)."""
    with (Path(path) / "comparison.csv").open(newline="", encoding="utf-8") as f:
        rows: list[dict[str, Any]] = list(csv.DictReader(f))
    for r in rows:
        for k in NUMBER_COLUMNS:
            r[k] = float(r[k]) if r.get(k) not in (None, "") else None
        if r["steps"] is not None:
            r["steps"] = int(r["steps"])  # a count: re-printed as 1000, as the run printed it
    return rows


def comparison_markdown_table(path: Path) -> str:
    return (Path(path) / "comparison.md").read_text(encoding="utf-8")


def write_report(path: Path, text: str) -> Path:
    """report.md: the table with the figures embedded (text made by the renderer)."""
    target = Path(path) / "report.md"
    write_atomic(target, text)
    return target


def variant_records(path: Path) -> list[Record]:
    """The runs of a compare record, in the order of comparison.csv, read back through its own
    links (variants/NAME), so a record moved elsewhere still finds them."""
    path = Path(path)
    records = []
    for row in read_comparison(path):
        link = path / "variants" / str(row.get("variant"))
        run_dir = link if link.is_dir() else Path(str(row.get("run_dir") or ""))
        if row.get("run_dir") and is_run_dir(run_dir):
            records.append(read_record(run_dir))
    return records

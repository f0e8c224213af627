"""The sweep record, `runs/sweep-NAME-<UTC stamp>/`: every file of it, written and read here.

`sweep.json` (the base config, the grid, the seeds, each point's name, values and patched
config, the claims and whether they held), `sweep.csv` (one row per point and seed: the swept
keys' values, the mean-field prediction, and every numeric summary field, flattened as
`group.numeric_fields` flattens them), `configs/NAME.yaml` (each point as a runnable config),
`variants/NAME` (relative links to each point's run or group) and the figures. No torch.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any

from gradlab.record.bounded import number
from gradlab.record.files import clean, decode, write_atomic
from gradlab.record.group import numeric_fields
from gradlab.record.validate import CorruptRecord, read_json_record

SWEEP_FILE = "sweep.json"
TABLE_FILE = "sweep.csv"
# The first columns of sweep.csv, before the swept keys; after them come PREDICTION, then
# every numeric summary field (sorted), then `run_dir`.
LEAD = ("variant", "seed", "status", "verdict")
PREDICTION = ("prediction.sigma_w2", "prediction.sigma_b2", "prediction.chi1",
              "prediction.depth_scale", "depth_per_xi", "prediction.phase")
TEXT_COLUMNS = ("variant", "status", "verdict", "prediction.phase", "run_dir")


def is_sweep_dir(path: Path) -> bool:
    return (Path(path) / SWEEP_FILE).is_file()


def short_labels(keys: list[str]) -> dict[str, str]:
    """Each swept key's last part (`depth`, `gain`), or more of it where two keys share one."""
    labels = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            if sum(k.split(".")[-n:] == parts[-n:] for k in keys) == 1 or n == len(parts):
                labels[key] = ".".join(parts[-n:])
                break
    return labels


def default_field(rows: list[dict[str, Any]]) -> str:
    """What a sweep shows by default: the test accuracy for classification, else the test loss."""
    if any(r.get("final_metrics.test_accuracy") is not None for r in rows):
        return "final_metrics.test_accuracy"
    return "final_metrics.test_loss"


def prediction_fields(summary: dict[str, Any], depth: Any) -> dict[str, Any]:
    """The mean-field numbers of a run's summary (`prediction`), and depth / ξ: 0 where ξ is
    infinite (critical), None where the theory does not apply."""
    p = summary.get("prediction") or {}
    row: dict[str, Any] = {f"prediction.{k}": p.get(k) for k in
                           ("sigma_w2", "sigma_b2", "chi1", "depth_scale", "phase")}
    xi = p.get("depth_scale")
    ratio = None
    if p.get("predictable") and isinstance(depth, (int, float)) and not isinstance(depth, bool):
        if isinstance(xi, (int, float)) and xi > 0:
            ratio = depth / xi
        elif xi is None and p.get("chi1") is not None:  # ξ = ∞: χ₁ = 1 to rounding
            ratio = 0.0
    row["depth_per_xi"] = ratio
    return row


def table_row(variant: str, seed: int | None, point: dict[str, Any], status: str,
              summary: dict[str, Any] | None, run_dir: str) -> dict[str, Any]:
    """One row of sweep.csv: a point's values and one seed's summary, flattened."""
    s = summary or {}
    verdicts = s.get("verdicts") or []
    row: dict[str, Any] = {"variant": variant, "seed": seed, "status": status,
                           "verdict": verdicts[0].get("kind", "") if verdicts else ""}
    row.update(point)
    depth = point.get("model.depth", (s.get("prediction") or {}).get("depth"))
    row.update(prediction_fields(s, depth))
    row.update(numeric_fields(s))
    row["run_dir"] = run_dir
    return row


def columns(rows: list[dict[str, Any]], keys: list[str]) -> list[str]:
    """sweep.csv's header: LEAD, the swept keys, PREDICTION, the summary fields, run_dir."""
    fixed = {*LEAD, *keys, *PREDICTION, "run_dir"}
    fields = sorted({k for r in rows for k in r if k not in fixed})
    return [*LEAD, *keys, *PREDICTION, *fields, "run_dir"]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else
                                                         ("inf" if value > 0 else "-inf"))
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def write_table(path: Path, rows: list[dict[str, Any]], keys: list[str]) -> Path:
    """sweep.csv, atomically."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns(rows, keys), extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k: _cell(v) for k, v in r.items()} for r in rows)
    file = Path(path) / TABLE_FILE
    write_atomic(file, text.getvalue())
    return file


def read_table(path: Path) -> list[dict[str, Any]]:
    """sweep.csv's rows: numbers as numbers, empty cells None, text columns as text."""
    file = Path(path) / TABLE_FILE
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as e:
        raise CorruptRecord(file, f"cannot be read: {e}") from None
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or list(reader.fieldnames[:len(LEAD)]) != list(LEAD):
        raise CorruptRecord(file, f"not a sweep table (its header must start {', '.join(LEAD)})")
    return [{k: (v if k in TEXT_COLUMNS else number(v or "")) for k, v in r.items()
             if k is not None} for r in reader]


def write_sweep(path: Path, sweep: dict[str, Any]) -> Path:
    """sweep.json, atomically (non-finite numbers as "nan"/"inf", as every gradlab record)."""
    file = Path(path) / SWEEP_FILE
    write_atomic(file, json.dumps(clean(sweep), indent=2, allow_nan=False) + "\n")
    return file


def read_sweep(path: Path) -> dict[str, Any]:
    """sweep.json, checked to be what gradlab wrote (CorruptRecord otherwise)."""
    file = Path(path) / SWEEP_FILE
    data = read_json_record(file)
    if not isinstance(data, dict) or data.get("kind") != "sweep" or \
            not isinstance(data.get("grid"), list) or not isinstance(data.get("points"), list):
        raise CorruptRecord(file, "not a sweep record (kind, grid and points are missing)")
    for axis in data["grid"]:
        if not isinstance(axis, dict) or not isinstance(axis.get("key"), str) or \
                not isinstance(axis.get("values"), list):
            raise CorruptRecord(file, "grid: each axis needs a key and its values")
    for point in data["points"]:
        if not isinstance(point, dict) or not isinstance(point.get("name"), str) or \
                not isinstance(point.get("values"), dict):
            raise CorruptRecord(file, "points: each point needs a name and its values")
    return decode(data)


def link_variants(path: Path, targets: dict[str, Path]) -> None:
    """variants/NAME: a relative link to each point's run directory (or group)."""
    links = Path(path) / "variants"
    links.mkdir(exist_ok=True)
    for name, target in targets.items():
        link = links / name
        if not link.exists() and not link.is_symlink():
            link.symlink_to(os.path.relpath(Path(target).resolve(), links.resolve()))

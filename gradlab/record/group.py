"""The group record: one config run over several seeds, `runs/NAME/<UTC timestamp>/`.

It holds `group.json` and one ordinary run record per seed, `seed-N/` (a seed reused from an
earlier run is a relative symbolic link to that run). `group.json` says which seeds, where each
seed's record is, their statuses, and for every numeric summary field (dotted, as `expect:`
names them) the per-seed values with their mean, min, max and a 95% confidence interval for
the mean (Student's t; geometric, on a log scale, for gradient ratios and norms, which span
orders of magnitude from seed to seed). It is written when the group starts (status `running`) and again when
its seeds are done; it is computed from the seeds' summary.json files, never from memory. No
torch.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from gradlab.record.files import clean, new_run_dir, write_atomic
from gradlab.record.reader import read_summary
from gradlab.record.validate import CorruptRecord, read_json_record

GROUP_FILE = "group.json"
SKIPPED = ("pid", "layers", "prediction", "verdicts", "over_run", "time_grads_init",
           "time_grads_final", "pretrain", "config_hash", "first_nonfinite")
NESTED = ("initial_metrics", "final_metrics")  # summary fields whose numbers are fields too

# Student's t at 97.5% for n - 1 degrees of freedom (n = 2 … 31): the two-sided 95% interval
# of a mean of n values is mean ± t·s/√n. Beyond the table, the normal quantile 1.96.
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def seeds_verdicts(kinds: list[str], counted: bool = False) -> str:
    """One verdict per seed (`kinds`, in seed order, "" where a seed has none) as a group shows
    it: the kind alone where every seed's is the same (with `counted`, `kind 3/3`), else each
    kind with how many of the seeds have it, most first (`exploding 1/2, ok 1/2`)."""
    named = [k for k in kinds if k]
    order = sorted(dict.fromkeys(named), key=lambda k: -named.count(k))  # stable: seed order
    if len(order) == 1 and len(named) == len(kinds) and not counted:
        return order[0]
    return ", ".join(f"{k} {named.count(k)}/{len(kinds)}" for k in order)


def top_verdicts(group: dict[str, Any], counted: bool = False) -> str:
    """`seeds_verdicts` of each seed's top (first) verdict in group.json."""
    return seeds_verdicts([(k or [""])[0] for k in (group.get("verdicts") or {}).values()],
                          counted)


def is_group_dir(path: Path) -> bool:
    return (Path(path) / GROUP_FILE).is_file()


def new_group_dir(out: Path, name: str) -> Path:
    """A fresh group directory: named like a run directory (runs/NAME/STAMP)."""
    return new_run_dir(out, name)


def seed_stem(seed: int) -> str:
    return f"seed-{seed}"


def link_seed(group_dir: Path, seed: int, run_dir: Path) -> Path:
    """Make `group_dir/seed-N` a relative link to a run reused from elsewhere."""
    link = Path(group_dir) / seed_stem(seed)
    link.symlink_to(os.path.relpath(Path(run_dir).resolve(), Path(group_dir).resolve()))
    return link


def numeric_fields(summary: dict[str, Any]) -> dict[str, float]:
    """The summary's numbers by dotted key: top-level ones and the metrics' (no booleans)."""
    found: dict[str, float] = {}

    def take(key: str, value: Any) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            found[key] = float(value)

    for key, value in summary.items():
        if key in SKIPPED:
            continue
        if key in NESTED and isinstance(value, dict):
            for sub, x in value.items():
                take(f"{key}.{sub}", x)
        else:
            take(key, value)
    return found


def interval(values: list[float]) -> tuple[float, float]:
    """The 95% confidence interval of the mean of `values` (a single value: itself)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, mean
    sd = math.sqrt(sum((x - mean) ** 2 for x in values) / (n - 1))
    t = T975[n - 2] if n - 2 < len(T975) else 1.96
    half = t * sd / math.sqrt(n)
    return mean - half, mean + half


def on_log_scale(key: str) -> bool:
    """Gradient ratios and norms span orders of magnitude from seed to seed (1e-42 … 1e-40):
    their mean and interval are taken on a log scale (geometric), where all are positive."""
    return "ratio" in key or key.startswith("grad_norm")


def field_stats(values: list[float | None], key: str = "") -> dict[str, Any]:
    """Per-seed values (None where a seed lacks the field) and their count `n`, mean, min,
    max and ci95; `scale: log` when the mean and interval are geometric (`on_log_scale`). No
    interval from one value (Student's t has no degree of freedom), nor for a field kept on
    a log scale that a seed has at 0 or below (a norm of exactly 0): its mean is then the
    arithmetic one, and a t interval around it would reach below 0."""
    present = [x for x in values if x is not None]
    stats: dict[str, Any] = {"values": values}
    if not present:
        return stats
    stats.update(n=len(present), min=min(present), max=max(present))
    if on_log_scale(key) and all(x > 0 for x in present):
        logs = [math.log(x) for x in present]
        lo, hi = interval(logs)
        stats.update(mean=math.exp(sum(logs) / len(logs)), ci95=[math.exp(lo), math.exp(hi)]
                     if len(present) > 1 else None, scale="log")
    else:
        stats.update(mean=sum(present) / len(present), ci95=list(interval(present))
                     if len(present) > 1 and not on_log_scale(key) else None, scale="linear")
    return stats


def group_status(statuses: list[str]) -> str:
    """One word for the group: its seeds' status when they agree, `running` while any runs,
    else `mixed` (the per-seed statuses are listed beside it)."""
    if not statuses:
        return "running"
    if "running" in statuses:
        return "running"
    return statuses[0] if len(set(statuses)) == 1 else "mixed"


def group_summary(group_dir: Path, name: str, seeds: list[int], config: str = "",
                  final: bool = True, not_run: set[int] | frozenset[int] = frozenset()
                  ) -> dict[str, Any]:
    """group.json's content, read from the seeds' records under `group_dir` (seed-N);
    `not_run`: seeds a stopped comparison never started."""
    summaries: dict[int, dict[str, Any] | None] = {}
    for seed in seeds:
        run_dir = Path(group_dir) / seed_stem(seed)
        try:
            summaries[seed] = read_summary(run_dir) if run_dir.is_dir() else None
        except CorruptRecord:
            summaries[seed] = None
    statuses = {seed: (s or {}).get("status") or ("not run" if seed in not_run else
                                                   "missing" if final else "running")
                for seed, s in summaries.items()}
    per_seed = {seed: numeric_fields(s or {}) for seed, s in summaries.items()}
    keys = sorted({k for fields in per_seed.values() for k in fields})
    verdicts = {seed: [v.get("kind") for v in (s or {}).get("verdicts") or []]
                for seed, s in summaries.items()}
    return {
        "kind": "group",
        "name": name,
        "config": config,
        "seeds": list(seeds),
        "runs": {str(seed): seed_stem(seed) for seed in seeds},
        "status": group_status(list(statuses.values())),
        "statuses": {str(seed): st for seed, st in statuses.items()},
        "task": next((s.get("task") for s in summaries.values() if s), None),
        "verdicts": {str(seed): kinds for seed, kinds in verdicts.items()},
        "fields": {k: field_stats([per_seed[seed].get(k) for seed in seeds], k) for k in keys},
    }


def write_group(group_dir: Path, summary: dict[str, Any]) -> Path:
    path = Path(group_dir) / GROUP_FILE
    write_atomic(path, json.dumps(clean(summary), indent=2, allow_nan=False) + "\n")
    return path


def read_group(path: Path) -> dict[str, Any]:
    """group.json, checked to be what gradlab wrote (CorruptRecord otherwise)."""
    file = Path(path) / GROUP_FILE
    data = read_json_record(file)
    if not isinstance(data, dict) or data.get("kind") != "group" or \
            not isinstance(data.get("seeds"), list) or not isinstance(data.get("fields"), dict):
        raise CorruptRecord(file, "not a group record (kind, seeds and fields are missing)")
    return data


def member_dirs(path: Path, group: dict[str, Any]) -> dict[int, Path]:
    """Each seed's run directory, as group.json names it (links followed by the caller)."""
    return {int(seed): Path(path) / str(rel) for seed, rel in (group.get("runs") or {}).items()
            if str(seed).isdigit()}

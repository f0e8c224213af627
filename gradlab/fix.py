"""`gradlab fix CONFIG`: run a config, derive the remedies its verdicts give, run each as a
variant, and rank them by what the net then learns (a driver).

Every remedy is a list of `--set` overrides (`analyse.verdicts`). `fix(...)` trains the config
as given, then one variant per remedy (same data, seed and budget) through `compare`'s worker
pool, and writes a fix record, `runs/fix-<name>-<UTC stamp>/`: `fixes.csv` (one row per
variant, ranked), `fixes.md`, `patches/NN.yaml` (each patched config, runnable with
`gradlab run`) and `variants/` links to every run.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gradlab import compare as comparing
from gradlab.config import Config, apply_overrides, load_config
from gradlab.record.files import unique_dir, utc_stamp, write_atomic

FIX_COLUMNS = ("rank", "variant", "overrides", "why", "status", "test_metric", "metric",
               "baseline", "beats_baseline", "grad_ratio_init", "grad_ratio_final",
               "delta_ratio_init", "verdict", "patch", "run_dir")


@dataclass
class FixOutcome:
    record: Path
    rows: list[dict[str, Any]]  # ranked, the config as given last but kept as "as given"
    original: dict[str, Any]  # the row of the config as given


def remedies_of(*summaries: dict[str, Any]) -> list[dict[str, Any]]:
    """The fixes of the runs' warnings and errors, each once, in their order (a group's seeds in
    order: a remedy only a later seed's verdicts give comes after the first seed's)."""
    seen: set[tuple[str, ...]] = set()
    fixes = []
    for v in (v for summary in summaries for v in summary.get("verdicts") or []):
        if v.get("severity") not in ("error", "warning"):
            continue
        for f in v.get("fixes") or []:
            key = tuple(f["set"])
            if key not in seen:
                seen.add(key)
                fixes.append(f)
    return fixes


def raw_config(path: Path, overrides: list[str]) -> dict[str, Any]:
    """The YAML as written, with `overrides` applied: what a patch starts from."""
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    apply_overrides(raw, overrides, str(path))
    return raw


def fix(path: Path, out: Path, jobs: int | None = None, overrides: list[str] | None = None,
        plots: bool = False, on_done: Callable[[comparing.Variant], None] | None = None,
        max_fixes: int = 8, cluster: Any = None) -> FixOutcome:
    """Run the config, then every remedy its verdicts give; return the ranked fix record.
    `cluster` (`gradlab.cluster.Cluster`): run them as submitit jobs, as `compare` does."""
    overrides = list(overrides or [])
    cfg = load_config(path, overrides)
    [given] = comparing.compare([Path(path)], out, jobs=jobs if cfg.seeds else 1,
                                overrides=overrides, plots=plots, on_done=on_done, pairs=False,
                                cluster=cluster)
    # over several seeds, the remedies of every seed's verdicts
    fixes = remedies_of(*(s for s in given.summaries().values() if s))[:max_fixes]
    record = unique_dir(Path(out), f"fix-{cfg.name}-{utc_stamp()}")
    patches = record / "patches"
    patches.mkdir()
    base = raw_config(Path(path), overrides)
    files = []
    for k, f in enumerate(fixes, start=1):
        raw = yaml.safe_load(yaml.safe_dump(base))  # a deep copy
        apply_overrides(raw, f["set"], str(path))
        raw["name"] = f"{cfg.name}.fix{k}"
        raw.pop("expect", None)  # the claims are the original's, not the remedy's
        header = (f"# {cfg.name} with: {' '.join('--set ' + s for s in f['set'])}\n"
                  f"# why: {f['why']}\n")
        target = patches / f"{k:02d}.yaml"
        write_atomic(target, header + yaml.safe_dump(raw, sort_keys=False))
        files.append(target)
    # each patch is the config with the overrides applied (--seeds too)
    variants = comparing.compare(files, out, jobs=jobs, plots=plots, on_done=on_done,
                                 cluster=cluster) if files else []
    rows = [_row(cfg, given, None, None)] + [
        _row(cfg, v, f, p) for v, f, p in zip(variants, fixes, files)]
    original, ranked = rows[0], rank(rows[1:])
    write_fix_record(record, [*ranked, original])
    return FixOutcome(record, ranked, original)


def _row(cfg: Config, v: comparing.Variant, f: dict[str, Any] | None,
         patch: Path | None) -> dict[str, Any]:
    s = v.summary  # a group's: the means over its seeds
    metrics = s.get("final_metrics") or {}
    accuracy = metrics.get("test_accuracy")
    metric, value = ("test_accuracy", accuracy) if accuracy is not None else (
        "test_loss", metrics.get("test_loss"))
    baseline = s.get("baseline_accuracy") if metric == "test_accuracy" else s.get("baseline_loss")
    beats = None
    if isinstance(value, (int, float)) and isinstance(baseline, (int, float)):
        beats = value > baseline if metric == "test_accuracy" else value < 0.9 * baseline
    return {
        "rank": "", "variant": v.name, "overrides": " ".join(f["set"]) if f else "(as given)",
        "why": f["why"] if f else "", "status": v.status, "test_metric": value, "metric": metric,
        "baseline": baseline, "beats_baseline": beats,
        "grad_ratio_init": s.get("grad_ratio_init"), "grad_ratio_final": s.get("grad_ratio_final"),
        "delta_ratio_init": s.get("delta_ratio_init"),
        "verdict": _verdicts_after(v),
        "patch": str(patch) if patch else "", "run_dir": str(v.run_dir) if v.run_dir else "",
    }


def _verdicts_after(v: comparing.Variant) -> str:
    """The run's verdicts that are warnings or errors (`ok` if none); for a group, every such
    verdict of any seed, each with how many seeds have it where not all do (`not_learning (1/2
    seeds)`), read from the seeds' own summaries (of the seeds that have one)."""
    per_seed = [[x["kind"] for x in s.get("verdicts") or [] if x.get("severity") != "info"]
                for s in v.summaries().values() if s]  # a seed with no record is not counted
    if not per_seed:
        return ""
    kinds = list(dict.fromkeys(k for seed in per_seed for k in seed))
    if len(per_seed) == 1:
        return ", ".join(kinds) or "ok"
    return ", ".join(k if (n := sum(k in seed for seed in per_seed)) == len(per_seed)
                     else f"{k} ({n}/{len(per_seed)} seeds)" for k in kinds) or "ok"


def rank(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best first: completed runs by the final test metric (accuracy high, loss low), then
    by how close the gradient ratio at the end is to 1; runs that did not complete last."""

    def key(r: dict[str, Any]) -> tuple[float, float, float]:
        value = r["test_metric"]
        if r["status"] != "completed" or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            return (1.0, math.inf, math.inf)
        score = -value if r["metric"] == "test_accuracy" else value
        ratio = r["grad_ratio_final"]
        spread = abs(math.log10(ratio)) if isinstance(ratio, (int, float)) and ratio > 0 \
            and math.isfinite(ratio) else math.inf
        return (0.0, score, spread)

    ranked = sorted(rows, key=key)
    for i, r in enumerate(ranked, start=1):
        r["rank"] = i
    return ranked


def write_fix_record(path: Path, rows: list[dict[str, Any]]) -> None:
    """fixes.csv, fixes.md and variants/ links (the patches are already written)."""
    with (path / "fixes.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=FIX_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| rank | remedy | status | test | baseline | grad ratio end | verdict after |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['rank'] or '–'} | `{r['overrides']}` | {r['status']} | "
                     f"{_short(r['test_metric'])} | {_short(r['baseline'])} | "
                     f"{_short(r['grad_ratio_final'])} | {r['verdict']} |")
    write_atomic(path / "fixes.md", "\n".join(lines) + "\n")
    links = path / "variants"
    links.mkdir(exist_ok=True)
    for r in rows:
        if r["run_dir"]:
            link = links / r["variant"]
            if not link.exists() and not link.is_symlink():
                link.symlink_to(os.path.relpath(Path(r["run_dir"]).resolve(), links.resolve()))


def _short(x: Any) -> str:
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return "–"
    return f"{x:.3g}"

"""Parallel scaling of `gradlab compare`: the same configs with `--jobs 1`, `--jobs 2` and one job
per core, as wall time of the whole command (process start-up included).

The configs are written here (four 50 × 100 MLPs with different activations), so the figure
does not move when configs/ changes. `compare` gives each worker cores / jobs torch threads,
so `--jobs 1` runs one worker with every core's thread. Run: `.venv/bin/python benchmarks/compare_scaling.py`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import Row, median, print_table, ratio_row

ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu")
TARGET = 1.7  # --jobs 2 over --jobs 1, with 4 or more configs


def write_configs(folder: Path, n: int, steps: int, depth: int) -> None:
    for i in range(n):
        activation = ACTIVATIONS[i % len(ACTIVATIONS)]
        cfg = {"name": f"scaling_{i}_{activation}", "seed": i, "device": "cpu",
               "data": {"kind": "teacher", "n_samples": 2048, "n_features": 100},
               "model": {"depth": depth, "width": 100, "activation": activation,
                         "init": "xavier_normal" if activation in ("sigmoid", "tanh") else
                         "kaiming_normal"},
               "train": {"steps": steps, "batch_size": 64, "optimizer": "sgd", "lr": 0.01,
                         "eval_every": 100},
               "probe": {"every": 10}}
        (folder / f"{cfg['name']}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def compare_seconds(configs: Path, out: Path, jobs: int) -> float:
    """Wall time of `gradlab compare configs --jobs N`; every variant must complete."""
    cmd = [sys.executable, "-m", "gradlab", "compare", str(configs), "--jobs", str(jobs),
           "--no-plots", "--quiet", "--out", str(out)]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "COLUMNS": "120"})
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return seconds


def measure(quick: bool = False) -> list[Row]:
    n, steps, depth, reps = (4, 50, 10, 1) if quick else (4, 400, 50, 3)
    cores = os.cpu_count() or 1
    job_counts = sorted({1, 2, cores})
    times: dict[int, list[float]] = {j: [] for j in job_counts}
    with tempfile.TemporaryDirectory() as tmp:
        configs = Path(tmp) / "configs"
        configs.mkdir()
        write_configs(configs, n, steps, depth)
        for rep in range(reps):
            order = job_counts if rep % 2 == 0 else job_counts[::-1]
            for jobs in order:
                times[jobs].append(compare_seconds(configs, Path(tmp) / f"runs-{jobs}-{rep}", jobs))
    label = f"{n} MLPs {depth}×100, {steps} steps"
    rows = [Row("compare scaling", f"{label}, --jobs 1", f"{median(times[1]):.1f} s",
                note=f"one worker, {cores} torch threads; {reps} reps")]
    for jobs in job_counts[1:]:
        ratios = [one / many for one, many in zip(times[1], times[jobs])]
        target = TARGET if jobs == 2 and n >= 4 else None
        rows.append(ratio_row("compare scaling", f"{label}, --jobs {jobs} speed-up", ratios,
                              target, f"{median(times[jobs]):.1f} s", at_least=True))
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer steps and repetitions")
    print_table(measure(parser.parse_args().quick), "compare scaling")

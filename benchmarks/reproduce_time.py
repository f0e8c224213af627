"""Wall time of the canonical set: `gradlab compare configs/ --check`, whatever configs/ holds.

Runs into a temporary directory, so runs/ is left alone. With --quick every config is cut to
a few steps and not checked (its claims need the full run): a smoke test of the command only.
Run: `.venv/bin/python benchmarks/reproduce_time.py`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Row, print_table

from gradlab.config.load import config_paths

ROOT = Path(__file__).resolve().parents[1]
BUDGET = 360.0  # seconds: make reproduce over seeds 0, 1, 2 (issue #14: 6 minutes)


def measure(quick: bool = False) -> list[Row]:
    configs = ROOT / "configs"
    n = len(config_paths([configs]))
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "gradlab", "compare", str(configs), "--quiet", "--out", tmp,
               "--seeds", "0,1,2"]  # as make reproduce runs it
        cmd += ["--steps", "10"] if quick else ["--check"]
        started = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True,
                              env={**os.environ, "COLUMNS": "120"})
        seconds = time.perf_counter() - started
    lines = (done.stdout + done.stderr).strip().splitlines()
    outcome = {0: "all claims held" if not quick else "ran", 1: "claims FAILED"}.get(
        done.returncode, f"exit {done.returncode}: {lines[-1] if lines else ''}")
    if quick:
        return [Row("canonical set", f"gradlab compare configs/ --steps 10 ({n} configs)",
                    f"{seconds:.1f} s", note=f"--quick: not the real figure; {outcome}")]
    return [Row("canonical set", f"gradlab compare configs/ --seeds 0,1,2 --check ({n} configs)",
                f"{seconds:.1f} s", f"≤ {BUDGET:.0f} s",
                seconds <= BUDGET and done.returncode == 0, outcome)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a few steps per config, no --check")
    print_table(measure(parser.parse_args().quick), "canonical set")

"""The examples in examples/ run on the CPU and print gradlab's report of the user's model.

They run as scripts (`__main__`, with `--steps` small) in one subprocess, one after the
other, so that torch and scikit-learn are imported once rather than three times.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = {
    "mlp_loop.py": ["mlp_loop"],
    "digits_cnn.py": ["digits_plain_cnn", "digits_resnet_cnn"],
    "tiny_transformer.py": ["transformer_post_ln", "transformer_pre_ln"],
}
RUN = """
import runpy, sys
for name, out in zip(sys.argv[1::2], sys.argv[2::2]):
    sys.argv = [name, "--steps", "12", "--every", "4", "--out", out]
    print(f"=== {name}", flush=True)
    runpy.run_path(name, run_name="__main__")
"""


def test_every_example_runs_and_prints_its_report(tmp_path: Path) -> None:
    args = [a for name in EXAMPLES for a in (str(ROOT / "examples" / name), str(tmp_path / name))]
    done = subprocess.run([sys.executable, "-c", RUN, *args], capture_output=True, text=True,
                          timeout=180, cwd=tmp_path, env={**os.environ, "COLUMNS": "80"})
    assert done.returncode == 0, done.stderr
    printed = dict(zip(EXAMPLES, done.stdout.split("=== ")[1:]))
    for name, runs in EXAMPLES.items():
        out = printed[name]
        assert out.count("gradlab run") == len(runs), name
        assert "per-layer statistics" in out and "verdict" in out, name
        for run in runs:
            (record,) = (tmp_path / name / run).iterdir()
            summary = json.loads((record / "summary.json").read_text())
            assert summary["status"] == "completed" and summary["steps_done"] == 12
            assert summary["layers"] and summary["verdicts"] is not None

"""The examples in examples/ run on the CPU and print gradlab's report of the user's model.

They run as scripts (`__main__`, with `--steps` small) through runpy, in this test process, one
after the other: torch and scikit-learn are imported already, and what is tested is the
scripts and their reports, not starting a Python (other tests start real gradlab processes).
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = {
    "mlp_loop.py": ["mlp_loop"],
    "digits_cnn.py": ["digits_plain_cnn", "digits_resnet_cnn"],
    "tiny_transformer.py": ["transformer_post_ln", "transformer_pre_ln"],
}


def test_every_example_runs_and_prints_its_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(ROOT / "examples"), *sys.path])  # as `python FILE`
    printed = {}
    for name in EXAMPLES:
        monkeypatch.setattr(sys, "argv", [name, "--steps", "12", "--every", "4",
                                          "--out", str(tmp_path / name)])
        runpy.run_path(str(ROOT / "examples" / name), run_name="__main__")
        printed[name] = capsys.readouterr().out
    for name, runs in EXAMPLES.items():
        out = printed[name]
        assert out.count("gradlab run") == len(runs), name
        assert "per-layer statistics" in out and "verdict" in out, name
        for run in runs:
            (record,) = (tmp_path / name / run).iterdir()
            summary = json.loads((record / "summary.json").read_text())
            assert summary["status"] == "completed" and summary["steps_done"] == 12
            assert summary["layers"] and summary["verdicts"] is not None

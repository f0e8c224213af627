"""A run made with --set says so: the overrides are in summary.json, the report header and the
listing; a group's seeds record the user's overrides, not the seed each one adds."""

import json

from conftest import tiny
from typer.testing import CliRunner

from gradlab.cli import app
from gradlab.compare import compare


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "100"})


def test_overrides_are_recorded_and_shown(write_yaml, tmp_path):
    path = write_yaml(tiny())
    out = tmp_path / "runs"
    result = invoke("run", str(path), "--out", str(out), "--set", "model.width=12", "--steps",
                    "6", "--no-plots", "--json")
    assert result.exit_code == 0, result.output
    # --steps as the key=value it is, without the internal `train.epochs=null` it once added
    assert json.loads(result.stdout)["overrides"] == ["model.width=12", "train.steps=6"]
    run_dir = next(p for p in (out / "tiny").iterdir())
    report = invoke("report", str(run_dir), "--no-plots").output
    assert "made with --set model.width=12 --set train.steps=6 " in report
    assert "train.epochs" not in report
    assert "[--set ×2]" in invoke("runs", str(out)).output
    plain = invoke("run", str(path), "--out", str(tmp_path / "plain"), "--no-plots", "--json")
    assert json.loads(plain.stdout)["overrides"] == []


def test_a_groups_seeds_record_the_users_overrides_only(write_yaml, tmp_path, monkeypatch):
    monkeypatch.setattr("gradlab.compare.EXECUTOR", "thread")
    path = write_yaml(tiny())
    [v] = compare([path], tmp_path / "runs", overrides=["model.width=12", "seeds=[0, 1]"],
                  plots=False)
    assert [m.record.summary["overrides"] for m in v.members] == [["model.width=12"]] * 2

"""--executor slurm: the Slurm options, bad input refused, and a real 3-variant sweep run as a
job array through submitit's local executor (what runs where there is no sbatch)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from gradlab.cli import app
from gradlab.cluster import Cluster, make_cluster, parse_minutes, parse_slurm
from gradlab.config import ConfigError
from gradlab.record.reader import read_summary
from gradlab.record.sweep import read_sweep, read_table

submitit = pytest.importorskip("submitit")

TINY = {"name": "tiny", "data": {"kind": "teacher", "n_samples": 256, "n_features": 8},
        "model": {"depth": 1, "width": 8}, "train": {"steps": 10, "batch_size": 32,
                                                     "eval_every": 10},
        "probe": {"every": 5}}


def run_cli(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "100"})


@pytest.mark.parametrize("text, minutes", [("90", 90), ("1:30", 90), ("1:30:00", 90),
                                           ("0:00:30", 1), ("2-00:00:00", 2880), ("1-2", 1560)])
def test_time_limits_in_slurms_notations(text, minutes):
    assert parse_minutes(text) == minutes


@pytest.mark.parametrize("text", ["", "abc", "1:2:3:4", "0", "-5"])
def test_bad_time_limits(text):
    with pytest.raises(ValueError):
        parse_minutes(text)


def test_slurm_options_become_submitits_parameters():
    fields = parse_slurm(["partition=gpu", "time=1:30:00", "cpus=4", "mem=8G",
                          "array_parallelism=16", "setup=module load cuda", "setup=echo hi"])
    cluster = Cluster("slurm", **fields)
    params = cluster.slurm_parameters()
    assert params == {"job_name": "gradlab", "time": 90, "cpus_per_task": 4, "partition": "gpu",
                      "mem": "8G", "array_parallelism": 16,
                      "setup": ["module load cuda", "echo hi"]}
    from submitit.slurm.slurm import _get_default_parameters

    assert set(params) <= set(_get_default_parameters())  # every name is one sbatch takes


@pytest.mark.parametrize("items, words", [
    (["partiton=gpu"], ["partiton", "did you mean 'partition'"]),
    (["cpus=0"], ["cpus", "a whole number ≥ 1"]),
    (["time=soon"], ["time", "H:MM:SS"]),
    (["partition"], ["expected KEY=VALUE"]),
    (["mem=lots"], ["mem", "'lots': a size as sbatch --mem takes it"]),
])
def test_bad_slurm_options_name_the_key(items, words):
    with pytest.raises(ConfigError) as e:
        parse_slurm(items)
    for w in words:
        assert w in str(e.value)


def test_local_is_the_pool_and_jobs_cap_the_array(monkeypatch):
    assert make_cluster("local", None, 3) is None
    with pytest.raises(ConfigError, match="need --executor slurm"):
        make_cluster("local", ["partition=x"], None)
    monkeypatch.setattr("gradlab.cluster.shutil.which", lambda name: "/usr/bin/sbatch")
    c = make_cluster("slurm", ["array_parallelism=8"], 3)
    assert c is not None and c.backend == "slurm" and c.parallelism == 8 and not c.notes
    c = make_cluster("slurm", None, 3)
    assert c is not None and c.parallelism == 3
    monkeypatch.setattr("gradlab.cluster.shutil.which", lambda name: None)
    c = make_cluster("slurm", None, None)
    assert c is not None and c.backend == "local" and "no sbatch" in c.notes[0]


@pytest.mark.parametrize("command", ["compare", "sweep", "fix"])
def test_bad_executor_input_exits_2_before_anything_runs(tmp_path, command):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "runs"
    extra = ["--grid", "model.depth=1,2"] if command == "sweep" else []
    result = run_cli(command, str(config), *extra, "--out", str(out), "--executor", "slurm",
                     "--slurm", "partiton=gpu")
    assert result.exit_code == 2, result.output
    assert "--slurm: partiton: unknown option (did you mean 'partition'?)" in result.output
    result = run_cli(command, str(config), *extra, "--out", str(out), "--executor", "pbs")
    assert result.exit_code == 2 and "local or slurm" in result.output
    assert not list(out.glob("tiny*"))


def test_a_sweep_runs_as_a_job_array_through_submitits_local_executor(tmp_path, monkeypatch):
    """3 variants, each a submitit job in its own process (at most 2 at once: the third waits
    for a free slot): the records land under --out as a local run's would, and `gradlab runs` /
    `report` read them as usual. Each job imports torch, so 3 rather than 4 variants."""
    monkeypatch.setattr("gradlab.cluster.shutil.which", lambda name: None)  # no Slurm here
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "shared" / "runs"
    result = run_cli("sweep", str(config), "--grid", "model.depth=1,2,3",
                     "--executor", "slurm", "--slurm", "time=5",
                     "--jobs", "2", "--out", str(out), "--no-plots")
    assert result.exit_code == 0, result.output
    assert "no sbatch on the PATH" in result.output
    [record] = list(out.glob("sweep-tiny-*"))
    rows = read_table(record)
    assert len(rows) == 3 and {r["status"] for r in rows} == {"completed"}
    points = {p["name"]: p["values"] for p in read_sweep(record)["points"]}
    for r in rows:
        run_dir = Path(r["run_dir"])
        assert run_dir.is_absolute() and run_dir.parent == out / r["variant"]
        summary = read_summary(run_dir)
        assert summary["status"] == "completed" and summary["final_loss"] == r["final_loss"]
        assert summary["pid"] != __import__("os").getpid()  # trained in a job, not here
        depth = points[r["variant"]]["model.depth"]
        assert len([x for x in summary["layers"] if x["name"].startswith("fc")]) == depth
    jobs = list((out / ".submitit").rglob("*_result.pkl"))
    assert len(jobs) == 3  # one submitit job per variant
    listing = run_cli("runs", str(out))
    assert listing.exit_code == 0 and listing.output.count("tiny.depth_") == 3
    report = run_cli("report", str(record), "--no-plots")
    assert report.exit_code == 0 and "3 points" in report.output

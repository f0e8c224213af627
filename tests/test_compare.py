"""gradlab compare: isolation of failures, exit codes, the compare record, --check, --reuse."""

import csv
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from gradlab.cli import app
from gradlab.compare import compare, comparison_rows, find_reusable, worker_threads
from gradlab.config import load_config
from gradlab.config.load import config_paths
from gradlab.render.compare_table import comparison_table

TINY = {"data": {"kind": "teacher", "n_samples": 256, "n_features": 8},
        "model": {"depth": 3, "width": 16}, "train": {"steps": 20, "batch_size": 32},
        "probe": {"every": 5}}


def write(tmp: Path, name: str, **sections) -> Path:
    cfg = {"name": name, **{k: dict(v) for k, v in TINY.items()}}
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) and key != "expect" else value
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    d = tmp_path / "configs"
    d.mkdir()
    write(d, "good_a", expect={"status": "completed"})
    write(d, "good_b", model={"activation": "tanh"}, expect={"status": "completed"})
    write(d, "boom", model={"init": {"scheme": "normal", "std": 5.0}}, train={"lr": 50.0},
          expect={"status": "diverged"})
    (d / "broken.yaml").write_text("name: broken\ndata: {kind: teacher}\nmodel: {depth: -1}\n")
    return d


@pytest.fixture(autouse=True)
def in_process(request, monkeypatch):
    """Compare's logic runs variants in a thread of the test process (no spawn: seconds
    faster); the test marked `spawned` keeps the real worker processes end to end."""
    if "spawned" not in request.keywords:
        monkeypatch.setattr("gradlab.compare.EXECUTOR", "thread")


def run_cli(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "100"})


@pytest.mark.spawned
def test_one_invalid_and_one_diverging_config_do_not_stop_the_others(mixed, tmp_path):
    out = tmp_path / "runs"
    result = run_cli("compare", str(mixed), "--out", str(out), "--jobs", "2", "--check", "--no-plots")
    assert result.exit_code == 2, result.output  # an invalid config wins over everything
    assert "Traceback" not in result.output
    assert "broken.yaml: model.depth: must be ≥ 0, got -1" in result.output
    assert "NaN/Inf" in result.output  # the diverged row says where
    [record] = list(out.glob("compare-*"))
    rows = list(csv.DictReader((record / "comparison.csv").open()))
    status = {r["variant"]: r["status"] for r in rows}
    assert status == {"boom": "diverged", "broken": "invalid", "good_a": "completed",
                      "good_b": "completed"}
    assert {r["variant"]: r["expect"] for r in rows}["boom"] == "held"
    assert (record / "comparison.md").read_text().count("\n| ") >= 4
    links = sorted(p.name for p in (record / "variants").iterdir())
    assert links == ["boom", "good_a", "good_b"]
    assert all((record / "variants" / name / "summary.json").is_file() for name in links)


def test_divergence_alone_exits_zero_and_a_broken_claim_exits_one(tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    write(d, "boom", model={"init": {"scheme": "normal", "std": 5.0}}, train={"lr": 50.0},
          expect={"status": "diverged"})
    out = str(tmp_path / "runs")
    assert run_cli("compare", str(d), "--out", out, "--check", "--no-plots").exit_code == 0
    broken = run_cli("compare", str(d), "--out", out, "--check", "--no-plots",
                     "--set", "train.lr=0.001", "--set", "model.init=kaiming_normal")
    assert broken.exit_code == 1, broken.output
    assert "boom: status: expected diverged, measured completed" in broken.output


def test_reuse_skips_identical_completed_configs_only(tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    write(d, "same")
    out = tmp_path / "runs"
    [first] = compare(config_paths([d]), out, jobs=1, plots=False)
    [again] = compare(config_paths([d]), out, jobs=1, reuse=True, plots=False)
    assert again.reused and again.run_dir == first.run_dir
    # a changed resolved config (another seed) has no completed run to reuse
    assert find_reusable(out, load_config(d / "same.yaml", ["seed=1"])) is None
    # nor does a run that did not complete
    summary = first.run_dir / "summary.json"
    summary.write_text(summary.read_text().replace('"completed"', '"interrupted"'))
    assert find_reusable(out, first.config) is None
    assert comparison_rows([again])[0]["reused"] == "yes"


def test_the_table_fits_100_columns_and_never_cuts_a_number():
    row = {"variant": "digits_sequence_lstm_long_name", "status": "interrupted", "steps": 300,
           "final_loss": 1.234e-20, "test_metric": 0.0781, "grad_ratio_init": 2.6e4,
           "grad_ratio_final": 4.6e-11, "weakest_grad": 3.0e15, "verdict": "vanishing_time",
           "steps_per_second": 127.3, "expect": "FAILED", "problems": ""}
    console = Console(width=100, record=True)
    console.print(comparison_table([row], show_claims=True))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 100
    line = next(line for line in text.splitlines() if "interrupted" in line)
    for cell in ("1.2e-20", "0.078", "2.6e4", "4.6e-11", "3.0e15", "127", "FAILED"):
        assert cell in line.split(), (cell, line)
    assert "digits_sequence" in line  # only a long name is ever shortened (whole at 100 here)


def test_missing_paths_are_a_clear_error(tmp_path):
    result = run_cli("compare", str(tmp_path / "nope"))
    assert result.exit_code == 2
    assert "no such config file or directory" in result.output


def test_workers_share_the_cores_and_respect_omp_num_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert [worker_threads(8, j) for j in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # a busy machine: one thread per worker
    assert worker_threads(8, 2) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "junk")
    assert worker_threads(8, 2) == 4


def test_a_compare_record_reads_back_as_it_was_written(tmp_path: Path) -> None:
    from gradlab.record.comparison import COLUMNS, read_comparison, write_comparison

    row = {c: "" for c in COLUMNS} | {"variant": "v", "status": "completed", "steps": 1000,
                                      "final_loss": 0.25, "grad_ratio_init": 2.6e4}
    back = read_comparison(write_comparison([row], tmp_path, ""))[0]
    assert back["steps"] == 1000 and isinstance(back["steps"], int)
    assert back["final_loss"] == 0.25 and back["grad_ratio_init"] == 2.6e4

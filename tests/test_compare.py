"""gradlab compare: isolation of failures, exit codes, the compare record, --check, --reuse."""

import csv
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from gradlab.cli import app
from gradlab.compare import compare, comparison_rows, config_paths

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
    (d / "broken.yaml").write_text("name: broken\ndata: {kind: teacher}\nmodel: {depth: 0}\n")
    return d


def run_cli(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "100"})


def test_one_invalid_and_one_diverging_config_do_not_stop_the_others(mixed, tmp_path):
    out = tmp_path / "runs"
    result = run_cli("compare", str(mixed), "--out", str(out), "--jobs", "2", "--check", "--no-plots")
    assert result.exit_code == 2, result.output  # an invalid config wins over everything
    assert "Traceback" not in result.output
    assert "broken.yaml: model.depth: must be ≥ 1, got 0" in result.output
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
    [changed] = compare(config_paths([d]), out, jobs=1, reuse=True, plots=False,
                        overrides=["seed=1"])
    assert not changed.reused and changed.run_dir != first.run_dir
    assert comparison_rows([again])[0]["reused"] == "yes"


def test_missing_paths_are_a_clear_error(tmp_path):
    result = run_cli("compare", str(tmp_path / "nope"))
    assert result.exit_code == 2
    assert "no such config file or directory" in result.output

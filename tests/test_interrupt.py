"""Interruptions and failures lose nothing: Ctrl-C, kill -9, a crash inside training.

Signals go to real `python -m gradlab` processes (in their own session, as a terminal's
Ctrl-C reaches a process group), started with configs that would run for minutes and
signalled once metrics.csv has rows. Records are then read the way reports read them.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import procs
import pytest
from procs import LONG, TIMEOUT, logged_rows, run_dirs, wait_until, write
from rich.console import Console
from typer.testing import CliRunner

from gradlab.cli import app
from gradlab.record.files import new_run_dir
from gradlab.record.reader import read_record
from gradlab.render.report import run_report

SHORT = {**LONG, "name": "early", "train": {**LONG["train"], "steps": 20}}  # sorts before long


def start(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return procs.start(*args, cwd=cwd, columns=100)


def render(record: Any) -> str:
    console = Console(width=100, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(run_report(record))
    return console.export_text()


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two `gradlab run` of one config into one runs/ at once; then Ctrl-C one, kill -9 the other."""
    tmp = tmp_path_factory.mktemp("signals")
    config = write(tmp / "long.yaml", LONG)
    started = [start("run", str(config), "--out", "runs", "-q", "--no-plots", cwd=tmp)
               for _ in range(2)]  # no figures: the killed one's are drawn by `report` below
    out = tmp / "runs"
    wait_until(lambda: len([d for d in run_dirs(out, "long") if (d / "summary.json").is_file()])
               == 2, "both run directories")
    dirs = {json.loads((d / "summary.json").read_text())["pid"]: d for d in run_dirs(out, "long")}
    wait_until(lambda: all(logged_rows(d) >= 3 for d in dirs.values()), "logged rows")
    interrupted, killed = started
    interrupted.send_signal(signal.SIGINT)
    killed.send_signal(signal.SIGKILL)
    stdout, stderr = interrupted.communicate(timeout=TIMEOUT)
    killed.communicate(timeout=TIMEOUT)
    return {"dirs": dirs, "interrupted": interrupted, "killed": killed, "stdout": stdout,
            "stderr": stderr}


@pytest.mark.xdist_group("two_runs")  # one worker runs the shared fixture once
def test_ctrl_c_completes_the_record_as_interrupted_and_exits_130(two_runs: dict) -> None:
    proc = two_runs["interrupted"]
    assert proc.returncode == 130, two_runs["stderr"]
    assert "Traceback" not in two_runs["stderr"]
    record = read_record(two_runs["dirs"][proc.pid])
    s = record.summary
    assert record.status == s["status"] == "interrupted"
    assert 0 < s["steps_done"] < s["steps_planned"] == 1_000_000
    assert s["error"] is None
    # the summary agrees with what was logged, and the run was evaluated where it stopped
    assert record.metrics and record.metrics[-1]["step"] < s["steps_done"]
    assert isinstance(s["final_loss"], float) and "train_loss" in s["final_metrics"]
    assert record.config["name"] == "long"
    assert "interrupted" in two_runs["stdout"]  # the report is still printed


@pytest.mark.xdist_group("two_runs")  # one worker runs the shared fixture once
def test_kill_9_leaves_a_partial_record_that_reads_as_incomplete(two_runs: dict) -> None:
    proc = two_runs["killed"]
    assert proc.returncode == -signal.SIGKILL
    run_dir = two_runs["dirs"][proc.pid]
    record = read_record(run_dir)
    assert record.summary["status"] == "running"  # what the killed process last wrote
    assert record.status == "incomplete"  # ...but nobody is running it any more
    assert len(record.metrics) >= 3 and record.metrics[0]["step"] == 0
    assert all(isinstance(r["loss"], float) for r in record.metrics)  # no torn last row
    assert not list(run_dir.glob(".*.tmp"))  # atomic writes leave no half-written file
    text = render(record)
    assert "incomplete" in text and "stopped without finishing its record" in text
    # and through the commands a user would reach for
    runner = CliRunner()
    listed = runner.invoke(app, ["runs", str(run_dir.parent.parent)], env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    line = next(row for row in listed.stdout.splitlines() if f"long/{run_dir.name} " in row)
    assert "incomplete" in line
    shown = runner.invoke(app, ["report", str(run_dir)], env={"COLUMNS": "100"})
    assert shown.exit_code == 0, shown.output
    assert "incomplete" in shown.stdout and "Traceback" not in shown.output
    assert (run_dir / "plots" / "loss.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.xdist_group("two_runs")  # one worker runs the shared fixture once
def test_two_runs_at_once_write_separate_directories(two_runs: dict) -> None:
    dirs = list(two_runs["dirs"].values())
    assert len(set(dirs)) == 2 and all(d.parent.name == "long" for d in dirs)
    assert {read_record(d).status for d in dirs} == {"interrupted", "incomplete"}


def test_run_directories_never_collide_even_within_one_second(tmp_path: Path) -> None:
    with ThreadPoolExecutor(16) as pool:
        made = list(pool.map(lambda _: new_run_dir(tmp_path, "same"), range(64)))
    assert len(set(made)) == 64 and all(p.is_dir() and p.parent == tmp_path / "same" for p in made)


def test_ctrl_c_in_compare_keeps_finished_variants_and_stops_running_ones(tmp_path: Path) -> None:
    write(tmp_path / "configs" / "long.yaml", LONG)
    write(tmp_path / "configs" / "early.yaml", SHORT)
    # one worker (one torch import): it finishes `early`, then starts `long`
    proc = start("compare", "configs", "--out", "runs", "--jobs", "1", "--no-plots", cwd=tmp_path)
    out = tmp_path / "runs"
    wait_until(lambda: any(logged_rows(d) >= 3 for d in run_dirs(out, "long")),
               "the long variant to log, after the early one finished")
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    stdout, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "the comparison covers the variants that finished" in stderr
    long_dir, = run_dirs(out, "long")
    assert read_record(long_dir).summary["status"] == "interrupted"
    compare_dir, = out.glob("compare-*")
    with (compare_dir / "comparison.csv").open(newline="", encoding="utf-8") as f:
        rows = {r["variant"]: r for r in csv.DictReader(f)}
    assert rows["early"]["status"] == "completed" and rows["early"]["steps"] == "20"
    assert rows["long"]["status"] == "interrupted" and int(rows["long"]["steps"]) > 0


def test_an_exception_inside_training_is_recorded_as_failed(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug or out-of-memory mid-run: status failed with the error, a short message, exit 1."""
    from gradlab.train import probe

    def broken(self: Any, step: int) -> None:
        if step >= 4:
            raise RuntimeError("out of memory while probing (simulated)")
        return original(self, step)

    original = probe.Probe.after_step
    monkeypatch.setattr(probe.Probe, "after_step", broken)
    config = write(tmp_path / "tiny.yaml", {**LONG, "train": {**LONG["train"], "steps": 10}})
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(tmp_path / "runs"), "-q"],
                                env={"COLUMNS": "100"})
    assert result.exit_code == 1
    assert "run failed: RuntimeError: out of memory while probing (simulated)" in result.output
    assert "Traceback" not in result.output
    run_dir, = run_dirs(tmp_path / "runs", "long")
    record = read_record(run_dir)
    assert record.status == "failed" and record.summary["steps_done"] == 5
    assert record.summary["error"] == "RuntimeError: out of memory while probing (simulated)"
    assert "Traceback" in (run_dir / "traceback.txt").read_text()  # kept for a bug report


def test_a_variant_that_fails_in_compare_leaves_the_others_alone(tmp_path: Path,
                                                                 monkeypatch) -> None:
    """The table validates (the file exists) but fails when its worker reads it."""
    monkeypatch.setattr("gradlab.compare.EXECUTOR", "thread")  # the logic, without a spawn
    (tmp_path / "table.csv").write_text("a,y\n1,2\n3,oops\n5,6\n7,8\n9,10\n")
    write(tmp_path / "configs" / "early.yaml", SHORT)
    write(tmp_path / "configs" / "table.yaml", {
        "name": "table", "device": "cpu", "train": {"steps": 3, "batch_size": 2},
        "data": {"kind": "file", "path": str(tmp_path / "table.csv"), "target": "y"}})
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "configs"), "--out",
                                      str(tmp_path / "runs"), "--jobs", "1", "--no-plots", "-q"],
                                env={"COLUMNS": "100"})
    assert result.exit_code == 1, result.output  # a failed variant fails the comparison...
    rows = {r["variant"]: r for r in csv.DictReader(
        next((tmp_path / "runs").glob("compare-*/comparison.csv")).open(encoding="utf-8"))}
    assert rows["early"]["status"] == "completed"  # ...but not the other variants
    assert rows["table"]["status"] == "failed" and "non-numeric" in rows["table"]["problems"]


# ---------------------------------------------------------------- divergence is a result


def train_tiny(monkeypatch: pytest.MonkeyPatch, hook: Callable[[Any], None] | None = None,
               **changes: Any) -> tuple[Any, Any]:
    """Train the conftest tiny config directly; `hook(model)` may tamper with it first."""
    from conftest import tiny_config

    from gradlab.build.data import load_data
    from gradlab.build.model import build_model
    from gradlab.train.loop import train

    cfg = tiny_config(**changes)
    data = load_data(cfg.data, cfg.seed)
    built = build_model(cfg.model, data.n_in, data.n_out)
    model = built.model
    if hook is not None:
        hook(model)
    before = [p.detach().clone() for p in model.parameters()]
    result = train(cfg, built, data, cfg.train.steps)
    unchanged = all(torch_equal(a, p.detach()) for a, p in zip(before, model.parameters()))
    return result, unchanged


def torch_equal(a: Any, b: Any) -> bool:
    import torch

    return bool(torch.equal(a, b))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("clip", [None, {"max_norm": 1.0}, {"max_norm": 1.0, "norm_type": 1.0},
                                  {"by": "value", "max_value": 0.5}])
def test_a_non_finite_gradient_stops_the_run_before_any_update(
        monkeypatch: pytest.MonkeyPatch, bad: float, clip: dict | None) -> None:
    """Clipping would turn an Inf gradient into a zero or finite update and a NaN one into NaN
    weights; either way the run must stop as diverged with the weights untouched."""
    def poison(model: Any) -> None:
        model.linears[1].weight.register_hook(lambda g: g.index_fill(1, g.new_tensor([0]).long(), bad))

    result, unchanged = train_tiny(monkeypatch, poison, train={"clip": clip})
    assert result.status == "diverged" and result.steps_done == 0
    assert result.first_nonfinite == {"step": 0, "layer": "fc2", "what": "gradient",
                                      "direction": "backward", "module": "linears.1",
                                      "passed_on": [], "value": "NaN" if bad != bad else "Inf"}
    assert unchanged


@pytest.mark.parametrize("steps", [3, 2])  # overflow mid-run, and on the very last step
def test_weights_gone_non_finite_after_a_step_stop_the_run(monkeypatch: pytest.MonkeyPatch,
                                                          steps: int) -> None:
    """An update that overflows a weight on a step the probe does not log is still caught."""
    from gradlab.build import optim as training

    make_sgd = training.OPTIMIZERS["sgd"]

    def overflowing(params: Any, t: Any) -> Any:
        opt = make_sgd(params, t)
        step, calls = opt.step, []

        def step_then_overflow() -> None:
            step()
            calls.append(1)
            if len(calls) == 2:  # the second update (step 1) overflows fc3's weights
                opt.param_groups[0]["params"][4].data[0, 0] = float("inf")

        opt.step = step_then_overflow  # type: ignore[method-assign]
        return opt

    monkeypatch.setitem(training.OPTIMIZERS, "sgd", overflowing)
    result, _ = train_tiny(monkeypatch, train={"steps": steps}, probe={"every": 1000})
    assert result.status == "diverged" and result.steps_done == 2
    assert result.first_nonfinite == {"step": 1, "layer": "fc3", "what": "weights"}


def test_with_any_clip_norm_type_the_logged_gradient_norm_is_before_clipping(
        tmp_path: Path) -> None:
    from conftest import tiny_config

    from gradlab.runner import run_config

    plain = run_config(tiny_config(), tmp_path / "a")
    clipped = run_config(tiny_config(train={"clip": {"max_norm": 1e-3, "norm_type": 1.0}}),
                         tmp_path / "b")
    first = [read_record(o.path).metrics[0] for o in (plain, clipped)]
    assert first[1]["clipped"] == 1
    assert first[1]["grad_norm"] == pytest.approx(first[0]["grad_norm"], rel=1e-6)
    assert first[1]["grad_norm"] > 0.1  # after clipping it would be below max_norm 1e-3

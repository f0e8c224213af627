"""gradlab report and gradlab runs: re-reading records from disk without training.

`report` on a run prints exactly what `run` printed and redraws the plots; on a compare record
it re-prints the comparison. `runs` lists every run newest first, killed ones as incomplete.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny, tiny_config
from rich.console import Console
from test_plots import StopAt, assert_png
from typer.testing import CliRunner

from gradlab.cli import app
from gradlab.record.reader import read_record
from gradlab.render.listing import run_list
from gradlab.render.report import run_report
from gradlab.render.style import num
from gradlab.runner import run_config

RUN_ORDER = ["loss.png", "grad_norm.png", "grad_flow.png", "grad_band.png", "grad_heatmap.png",
             "grad_distributions.png", "update_ratio.png", "activations.png"]
FIGURES = sorted(RUN_ORDER)


def cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "100"})


def rendered(renderable) -> str:
    console = Console(width=100, record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def test_report_from_disk_prints_what_run_printed_and_redraws_the_plots(write_yaml, tmp_path):
    ran = cli("run", write_yaml(tiny(name="again")), "--out", tmp_path, "--no-plots")
    assert ran.exit_code == 0, ran.output
    [run_dir] = list((tmp_path / "again").iterdir())
    assert not (run_dir / "plots").exists() and "plots:" not in ran.output
    same = cli("report", run_dir, "--no-plots")
    assert same.exit_code == 0, same.output
    assert same.output == ran.output
    assert "again  completed  10/10 steps" in same.output
    assert not (run_dir / "plots").exists()
    drawn = cli("report", run_dir)  # the same report, then the figures drawn from the record
    assert drawn.output == ran.output + f"plots: {run_dir / 'plots'} ({', '.join(RUN_ORDER)})\n"
    assert sorted(p.name for p in (run_dir / "plots").iterdir()) == FIGURES


def test_run_draws_the_plots_unless_told_not_to(write_yaml, tmp_path, monkeypatch):
    import gradlab.render.run_figures

    drawn: list[Path] = []
    monkeypatch.setattr(gradlab.render.run_figures, "plot_run",
                        lambda d: drawn.append(Path(d)) or [])
    config = write_yaml(tiny())
    assert cli("run", config, "--out", tmp_path, "--no-plots").exit_code == 0
    assert drawn == []
    assert cli("run", config, "--out", tmp_path).exit_code == 0
    assert len(drawn) == 1 and drawn[0].parent == tmp_path / "tiny"
    assert cli("report", drawn[0], "--all-layers").exit_code == 0
    assert drawn[1:] == drawn[:1]


@pytest.fixture
def three_runs(tmp_path: Path) -> Path:
    """A completed, a diverged and an interrupted run with known start times, and a killed one."""
    out = tmp_path / "runs"
    made = [
        (run_config(tiny_config(), out), "20250301T120000Z"),
        (run_config(tiny_config(name="boom", model={"init": {"scheme": "normal", "std": 5.0}},
                                train={"lr": 50.0}), out), "20250301T120000Z-1"),
        (run_config(tiny_config(name="stopped"), out, (StopAt(4),)), "20240101T000000Z"),
    ]
    for outcome, stamp in made:
        outcome.path.rename(outcome.path.with_name(stamp))
    killed = out / "killed" / "20250301T130000Z"
    shutil.copytree(out / "tiny" / "20250301T120000Z", killed)
    (killed / "summary.json").unlink()
    return out


def table_rows(text: str) -> list[list[str]]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if "──" in line) + 1
    return [line.split() for line in lines[start:] if line.strip() and "/" in line.split()[0]]


def test_runs_lists_every_run_newest_first_with_its_fields(three_runs):
    result = cli("runs", three_runs)
    assert result.exit_code == 0, result.output
    rows = table_rows(result.output)
    assert [r[0] for r in rows] == ["killed/20250301T130000Z", "boom/20250301T120000Z-1",
                                    "tiny/20250301T120000Z", "stopped/20240101T000000Z"]
    by_run = {r[0].split("/")[0]: r for r in rows}
    tiny_summary = read_record(three_runs / "tiny" / "20250301T120000Z").summary
    assert by_run["tiny"][1:6] == ["completed", "2025-03-01", "12:00", "10/10",
                                   num(tiny_summary["final_loss"])]
    assert " ".join(by_run["tiny"][6:]) == ", ".join(v["kind"] for v in tiny_summary["verdicts"])
    assert by_run["boom"][1] == "diverged" and by_run["boom"][6].startswith("diverged")
    assert by_run["stopped"][1:5] == ["interrupted", "2024-01-01", "00:00", "5/10"]
    # killed: no summary.json; the steps and loss it logged before it died
    killed = read_record(three_runs / "killed" / "20250301T130000Z")
    last = [m for m in killed.metrics if m.get("loss") is not None][-1]
    assert by_run["killed"][1:6] == ["incomplete", "2025-03-01", "13:00",
                                     str(killed.metrics[-1]["step"] + 1), num(last["loss"])]
    assert f"gradlab report {three_runs}/RUN re-prints one" in " ".join(result.output.split())
    # one run's own directory: the hint names it, not RUN under it (a path that is none)
    one = three_runs / "tiny" / "20250301T120000Z"
    alone = cli("runs", one)
    assert alone.exit_code == 0
    assert f"gradlab report {one} re-prints it" in " ".join(alone.output.split())
    assert cli("report", one, "--no-plots").exit_code == 0  # and that command works


def test_a_running_summary_with_a_dead_pid_is_incomplete(three_runs):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_dir = three_runs / "tiny" / "20250301T120000Z"
    summary = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.json").write_text(json.dumps({**summary, "status": "running",
                                                      "pid": dead.pid}))
    rows = {r[0]: r for r in table_rows(rendered(run_list(three_runs)))}
    assert rows["tiny/20250301T120000Z"][1] == "incomplete"
    report = cli("report", run_dir, "--no-plots")
    assert report.exit_code == 0 and "incomplete" in report.output


def test_report_of_a_killed_run_says_it_is_incomplete(three_runs):
    run_dir = three_runs / "killed" / "20250301T130000Z"
    lines = (run_dir / "layers.csv").read_text().splitlines(keepends=True)
    (run_dir / "layers.csv").write_text("".join(lines[:-3]) + lines[-3][:20])  # killed mid-write
    record = read_record(run_dir)
    text = rendered(run_report(record))
    assert "incomplete" in text and "stopped without finishing its record" in text
    steps = record.metrics[-1]["step"] + 1
    first, last = record.metrics[0]["loss"], record.metrics[-1]["loss"]
    assert f"killed  incomplete  {steps}/? steps" in text
    assert f"loss {num(first)} → {num(last)}" in text
    table = {line.split()[1]: line.split() for line in text.splitlines()
             if line.split() and line.split()[0].isdigit()}
    assert list(table) == ["fc1", "fc2", "fc3", "fc4", "head"]  # every layer, from layers.csv
    interrupted = rendered(run_report(read_record(three_runs / "stopped" / "20240101T000000Z")))
    assert "interrupted  5/10 steps" in interrupted


def test_runs_on_an_empty_or_missing_directory(tmp_path):
    assert "no runs under" in cli("runs", tmp_path).output
    missing = cli("runs", tmp_path / "nope")
    assert missing.exit_code == 2 and "no such directory" in missing.output


def test_report_on_something_that_is_not_a_run(tmp_path):
    result = cli("report", tmp_path)
    assert result.exit_code == 2
    assert "not a run directory" in result.output and "Traceback" not in result.output
    missing = cli("report", tmp_path / "nope")
    assert missing.exit_code == 2 and f"{tmp_path / 'nope'}: no such directory" in missing.output


def test_report_on_a_compare_record_reprints_the_comparison(three_runs, tmp_path, monkeypatch):
    from gradlab.compare import Variant, comparison_rows, write_record
    from gradlab.render.compare_table import comparison_table

    variants = [Variant(Path(f"{name}.yaml"), config=tiny_config(name=name), run_dir=path,
                        record=read_record(path))
                for name, path in (("tiny", three_runs / "tiny" / "20250301T120000Z"),
                                   ("boom", three_runs / "boom" / "20250301T120000Z-1"))]
    rows = comparison_rows(variants)
    record_dir = write_record(rows, tmp_path / "out")
    result = cli("report", record_dir, "--no-plots")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(rendered(comparison_table(rows)).rstrip("\n").split("\n")[0])
    table = table_rows_by_variant(result.output)
    assert table["tiny"][0] == "completed" and table["boom"][0] == "diverged"
    assert str(record_dir) in result.output
    assert not (record_dir / "loss.png").exists()
    import gradlab.render.compare_figures

    drawn: list[tuple[Path, bool]] = []
    monkeypatch.setattr(gradlab.render.compare_figures, "plot_compare_record",
                        lambda d, draw: drawn.append((d, draw)))
    assert cli("report", record_dir).output == result.output
    assert drawn == [(record_dir, True)]  # redrawn from the record, by the same call compare makes


def table_rows_by_variant(text: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split()[1:] for line in text.splitlines()
            if line.split() and line.split()[0] in ("tiny", "boom")}


def test_compare_writes_figures_and_report_md_into_its_record(three_runs, tmp_path, monkeypatch):
    import gradlab.compare
    from gradlab.compare import Variant

    def trained(paths, out, *args, **kwargs):  # the variants, as the worker processes leave them
        return [Variant(p, config=tiny_config(name=p.stem), run_dir=run_dir,
                        record=read_record(run_dir))
                for p, run_dir in zip(paths, (three_runs / "tiny" / "20250301T120000Z",
                                              three_runs / "boom" / "20250301T120000Z-1"))]

    monkeypatch.setattr(gradlab.compare, "compare", trained)
    configs = [tmp_path / "a.yaml", tmp_path / "b.yaml"]
    for path in configs:
        path.write_text("name: x\n")
    out = tmp_path / "out"
    result = cli("compare", *configs, "--out", out, "--no-plots")
    assert result.exit_code == 0, result.output
    [record_dir] = list(out.glob("compare-*"))
    assert not (record_dir / "loss.png").exists() and "![" not in (record_dir / "report.md").read_text()
    assert cli("compare", *configs, "--out", out).exit_code == 0
    [record_dir] = [d for d in out.glob("compare-*") if (d / "loss.png").exists()]
    report_md = (record_dir / "report.md").read_text()
    assert "| a | completed |" in report_md and "| b | diverged |" in report_md
    assert "![Loss](loss.png)" in report_md and "![Gradient flow at init](grad_flow.png)" in report_md
    for name in ("loss.png", "grad_flow.png"):
        assert_png(record_dir / name)


def test_the_loss_chart_counts_steps_and_the_through_time_chart_counts_time_steps():
    from gradlab.render.chart import chart
    from gradlab.render.report import time_table

    loss = rendered(chart({"train": [(0, 2.0), (90, 0.5)]}))
    assert "step 0" in loss and " 90" in loss
    grads = [1e-6 * 10 ** t for t in range(8)]
    text = rendered(time_table({"time_grads_init": grads, "time_grads_final": grads,
                                "time_grad_ratio_init": 1e-7, "time_grad_ratio_final": 1e-7}))
    axis = [line for line in text.splitlines() if " t 1 " in line]
    assert len(axis) == 1 and axis[0].rstrip(" │").endswith("8"), text
    assert "step 1" not in text


def test_numbers_read_as_a_person_writes_them() -> None:
    # step counts stay whole numbers; tiny values go exponential
    assert [num(1000), num(300), num(0.1234), num(2.5e-5), num(None)] == [
        "1000", "300", "0.123", "2.50e-05", "–"]


def test_a_model_mixing_activations_shows_saturation_and_dead_units_per_layer() -> None:
    """ReLU convolutions and a tanh layer: the tanh layer's saturation is in the table beside
    the ReLU layers' dead units, whatever the config names as the activation."""
    from gradlab.record.reader import Record
    from gradlab.render.report import layer_table

    def layer(name: str, **final: float) -> dict:
        stats = {"grad_norm": 0.1, "act_std": 0.5, **final}
        return {"name": name, "shape": [4, 4], "init": stats, "final": stats}

    layers = [layer("conv1", act_dead=0.1), layer("fc", act_saturated=0.56), layer("head")]
    record = Record(Path("x"), {"layers": layers}, {"model": {"activation": "relu"}}, [], [])
    console = Console(width=80, record=True)
    console.print(layer_table(record))
    lines = console.export_text().splitlines()
    header = next(line for line in lines if "saturated" in line)
    assert "dead" in header
    fc = next(line for line in lines if " fc " in line)
    conv = next(line for line in lines if "conv1" in line)
    assert fc.split()[-2:] == ["56%", "–"] and conv.split()[-2:] == ["–", "10%"]

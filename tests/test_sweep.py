"""gradlab sweep: grid parsing, bad input refused before anything runs, the sweep record
(sweep.csv against the seeds' own summary.json), --reuse, claims, the heatmap and its theory."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from gradlab.analyse.theory import critical_sigma_w2
from gradlab.cli import app
from gradlab.config import ConfigError
from gradlab.config.schema import NAME_PATTERN
from gradlab.record.group import numeric_fields
from gradlab.record.reader import read_summary
from gradlab.record.sweep import read_sweep, read_table
from gradlab.render.sweep_figures import _theory_overlay, heatmap_cells, log_axis, unplottable
from gradlab.sweep import Axis, check_claims, parse_values, plan_sweep, point_names

TINY = {"name": "tiny", "data": {"kind": "teacher", "n_samples": 256, "n_features": 8},
        "model": {"depth": 2, "width": 8, "activation": "tanh",
                  "init": {"scheme": "kaiming_normal", "nonlinearity": "linear", "gain": 1.0},
                  "bias_init": {"scheme": "normal", "std": 0.2236}},
        "train": {"steps": 10, "batch_size": 32, "eval_every": 10}, "probe": {"every": 5},
        "expect": {"status": "completed"}}


@pytest.fixture(autouse=True)
def in_process(monkeypatch):
    monkeypatch.setattr("gradlab.compare.EXECUTOR", "thread")


def write(tmp: Path, raw: dict, name: str = "tiny.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_cli(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "100"})


# ---------------------------------------------------------------- the grid's values


def test_lists_ranges_and_log_ranges_against_hand_computed_values():
    assert parse_values("model.depth", "10,20,40,80") == [10, 20, 40, 80]
    assert all(type(v) is int for v in parse_values("model.depth", "10,20,40,80"))
    assert parse_values("model.activation", "relu, tanh") == ["relu", "tanh"]
    assert parse_values("train.lr", "1e-3,1e-2") == [0.001, 0.01]  # numbers, not YAML 1.1 text
    assert parse_values("train.betas", "[[0.9, 0.99], [0.5, 0.9]]") == [[0.9, 0.99], [0.5, 0.9]]
    # start:stop:count, both ends included: 0.05 + k × 0.25/7
    linear = parse_values("model.init.std", "0.05:0.3:8")
    assert linear == pytest.approx([0.05, 0.0857142857, 0.1214285714, 0.1571428571,
                                    0.1928571429, 0.2285714286, 0.2642857143, 0.3])
    assert parse_values("x", "0.1:0.3:3") == [0.1, 0.2, 0.3]  # rounded: not 0.30000000000000004
    assert parse_values("model.depth", "10:80:8") == [10, 20, 30, 40, 50, 60, 70, 80]
    # log:start:stop:count: 1e-3 × 10^(k/2)
    assert parse_values("train.lr", "log:1e-3:1e-1:5") == pytest.approx(
        [1e-3, 0.0031622776601683794, 1e-2, 0.031622776601683794, 0.1], rel=1e-12)
    depths = parse_values("model.depth", "log:2:64:6")
    assert depths == [2, 4, 8, 16, 32, 64] and all(type(v) is int for v in depths)
    assert parse_values("model.depth", "2:10:3") == [2, 6, 10]
    assert parse_values("model.depth", "2:9:3") == [2, 5.5, 9]  # not integers: the schema says so
    assert parse_values("model.init.std", "0.1:0.1:1") == [0.1]


@pytest.mark.parametrize("text, words", [
    ("", "no values"), ("1:10:0", "empty range"), ("1,,2", "empty item"),
    ("log:0:1:3", "log range needs start and stop > 0"), ("1:2", "a range is start:stop:count"),
    ("a:b:3", "numbers for start and stop"), ("1,2,1", "appears twice"),
    ("3:3:4", "every value repeats"), ("0:1:100000", "at most 10000"),
])
def test_bad_values_name_the_key(text, words):
    with pytest.raises(ConfigError) as e:
        parse_values("model.depth", text)
    assert e.value.problems[0][0] == "model.depth"
    assert words in e.value.problems[0][1]


def test_point_names_are_distinct_valid_names_with_enough_digits():
    axes = [Axis("model.depth", "", [2, 4]), Axis("model.init.std", "", [0.100001, 0.100002])]
    names = point_names("base", axes)
    assert len(set(names)) == 4 and all(re.match(NAME_PATTERN, n) for n in names)
    assert names[0] == "base.depth_2.std_0.100001"  # 4 digits would make two alike
    shared = point_names("b", [Axis("model.init.std", "", [1e-5]),
                               Axis("model.bias_init.std", "", [0.5])])
    assert shared == ["b.init.std_1e-05.bias_init.std_0.5"]  # '+' dropped, labels kept apart
    long = point_names("x" * 95, [Axis("model.depth", "", [1, 2])])
    assert long == ["x" * 90 + ".p0", "x" * 90 + ".p1"]


# ---------------------------------------------------------------- bad input: exit 2, nothing runs


@pytest.mark.parametrize("grid, words", [
    (["model.depht=1,2"], ["model.depht", "did you mean 'depth'"]),
    (["model.depth=-3,2"], ["model.depth", "-3"]),
    (["model.depth=1:10:0"], ["model.depth", "empty range"]),
    (["model.init.std=0.1,0.2"], ["model.init.std", "kaiming_normal"]),  # a key the scheme ignores
    (["train.lr=0.1,-1"], ["train.lr", "--grid train.lr=-1"]),
    (["seeds=0,1"], ["seeds", "--seeds"]),
    (["train.betas=[0.9, 0.99"], ["train.betas", "is not a YAML list"]),
    (["model.depth"], ["expected KEY=VALUES"]),
])
def test_bad_grid_exits_2_naming_the_key_before_anything_runs(tmp_path, grid, words):
    config, out = write(tmp_path, TINY), tmp_path / "runs"
    args = [a for g in grid for a in ("--grid", g)]
    result = run_cli("sweep", str(config), *args, "--out", str(out))
    assert result.exit_code == 2, result.output
    for w in words:
        assert w in result.output, (w, result.output)
    assert "Traceback" not in result.output
    assert not out.exists()  # nothing was written, nothing ran


def test_a_grid_over_the_maximum_needs_yes(tmp_path):
    config, out = write(tmp_path, TINY), tmp_path / "runs"
    result = run_cli("sweep", str(config), "--grid", "model.depth=1,2,3",
                     "--grid", "model.width=1:100:100", "--max-variants", "250", "--out", str(out))
    assert result.exit_code == 2
    assert "300 variants (300 runs) is more than --max-variants 250" in result.output
    assert "--yes" in result.output and not out.exists()
    plan = plan_sweep(config, ["model.depth=1,2,3", "model.width=1:100:100"], max_variants=250,
                      yes=True)  # planned (and every point checked), not run
    assert len(plan.points) == 300 and len({p.name for p in plan.points}) == 300
    with pytest.raises(ConfigError, match="1001 variants"):
        plan_sweep(config, ["model.width=1:1001:1001"])  # the default maximum, 1000


# ---------------------------------------------------------------- the record


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A 2 × 2 sweep over depth and gain, two seeds, through the CLI: one for the module's
    tests, which read it (one adds a --reuse record beside it, one redraws its heatmap)."""
    tmp = tmp_path_factory.mktemp("swept")
    config, out = write(tmp, TINY), tmp / "runs"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("gradlab.compare.EXECUTOR", "thread")
        result = run_cli("sweep", str(config), "--grid", "model.depth=1,3",
                         "--grid", "model.init.gain=0.5,2", "--seeds", "0,1", "--out", str(out))
    assert result.exit_code == 0, result.output
    [record] = list(out.glob("sweep-tiny-*"))
    return config, out, record, result.output


def test_sweep_csv_rows_equal_the_seeds_summaries(swept):
    _, out, record, output = swept
    rows = read_table(record)
    assert len(rows) == 8  # 4 points × 2 seeds
    sweep = read_sweep(record)
    assert [a["values"] for a in sweep["grid"]] == [[1, 3], [0.5, 2]]
    assert {(r["model.depth"], r["model.init.gain"], r["seed"]) for r in rows} == {
        (d, g, s) for d in (1, 3) for g in (0.5, 2) for s in (0, 1)}
    for r in rows:
        run_dir = Path(r["run_dir"])
        assert run_dir.parent.parent == out / r["variant"]  # the group of that point
        summary = read_summary(run_dir)
        assert summary["status"] == r["status"] == "completed"
        fields = numeric_fields(summary)
        assert fields, "no numbers compared"
        for key, value in fields.items():
            assert r[key] == pytest.approx(value, rel=1e-15), key
        assert r["prediction.chi1"] == pytest.approx(summary["prediction"]["chi1"])
        assert r["depth_per_xi"] == pytest.approx(
            r["model.depth"] / summary["prediction"]["depth_scale"])
        config = yaml.safe_load((record / "configs" / f"{r['variant']}.yaml").read_text())
        assert config["model"]["depth"] == r["model.depth"] and "expect" not in config
        assert (record / "variants" / r["variant"] / "group.json").is_file()
    with (record / "sweep.csv").open() as f:
        header = next(csv.reader(f))
    assert header[:6] == ["variant", "seed", "status", "verdict", "model.depth",
                          "model.init.gain"]
    assert "sweep tiny: 4 points × 2 seeds" in output and "sweep record:" in output


def test_reuse_runs_nothing_again(swept):
    config, out, record, _ = swept
    before = sorted(p for p in out.rglob("summary.json"))
    result = run_cli("sweep", str(config), "--grid", "model.depth=1,3",
                     "--grid", "model.init.gain=0.5,2", "--seeds", "0,1", "--out", str(out),
                     "--reuse", "--no-plots")
    assert result.exit_code == 0, result.output
    assert sorted(p for p in out.rglob("summary.json")) == before  # no new run
    again = max(out.glob("sweep-tiny-*"), key=lambda p: p.name)
    assert again != record
    old, new = read_table(record), read_table(again)
    assert [r["run_dir"] for r in old] == [r["run_dir"] for r in new]
    assert [r["final_loss"] for r in old] == [r["final_loss"] for r in new]
    assert not (again / "heatmap.png").exists()  # --no-plots


def test_the_heatmap_exists_and_its_cells_are_the_seed_means(swept):
    _, _, record, _ = swept
    png = record / "heatmap.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sweep = read_sweep(record)
    cells = heatmap_cells(sweep, read_table(record), "final_loss")
    assert (cells.x_key, cells.y_key) == ("model.init.gain", "model.depth")
    assert cells.xs == [0.5, 2] and cells.ys == [1, 3]
    for iy, depth in enumerate(cells.ys):
        for ix, gain in enumerate(cells.xs):
            [point] = [p for p in sweep["points"]
                       if p["values"] == {"model.depth": depth, "model.init.gain": gain}]
            group = record / "variants" / point["name"]
            losses = [read_summary(group / f"seed-{s}")["final_loss"] for s in (0, 1)]
            assert cells.means[iy][ix] == pytest.approx(sum(losses) / 2, rel=1e-12)
            assert cells.runs[iy][ix] == 2 and cells.diverged[iy][ix] == 0
    # a gradient ratio's mean is geometric, as the group record takes it
    ratios = heatmap_cells(sweep, read_table(record), "grad_ratio_init")
    [point] = [p for p in sweep["points"] if p["values"] == {"model.depth": 3,
                                                             "model.init.gain": 2}]
    seeds = [read_summary(record / "variants" / point["name"] / f"seed-{s}") for s in (0, 1)]
    geometric = math.sqrt(seeds[0]["grad_ratio_init"] * seeds[1]["grad_ratio_init"])
    assert ratios.means[1][1] == pytest.approx(geometric, rel=1e-12)
    group = json.loads((record / "variants" / point["name"] / "group.json").read_text())
    assert ratios.means[1][1] == pytest.approx(group["fields"]["grad_ratio_init"]["mean"])


def test_the_theory_overlay_puts_the_critical_point_where_mean_field_theory_does(swept):
    _, _, record, _ = swept
    sweep = read_sweep(record)
    cells = heatmap_cells(sweep, read_table(record), "final_loss")
    overlay = _theory_overlay(record, sweep, cells)
    assert overlay is not None
    # tanh, σb² = 0.2236² = 0.05: critical σw² ≈ 1.76 (Schoenholz et al. 2017), gain = √σw²
    assert overlay["critical"] == pytest.approx(math.sqrt(critical_sigma_w2("tanh", 0.05)),
                                                rel=0.01)
    assert overlay["critical"] == pytest.approx(math.sqrt(1.76), rel=0.01)
    assert overlay["sw2_per_x2"] == pytest.approx(1.0)  # kaiming, linear gain: σw² = gain²
    xi = dict(zip(overlay["x"], overlay["xi"]))
    near = min(xi, key=lambda g: abs(g - overlay["critical"]))
    assert xi[near] > 20 * xi[min(xi)]  # ξ peaks at the critical point


def test_cell_values_are_written_above_the_theory_lines(swept):
    """A ξ curve or the critical line running through a cell never strikes its number out."""
    from gradlab.render.sweep_figures import _draw

    _, _, record, _ = swept
    sweep = read_sweep(record)
    cells = heatmap_cells(sweep, read_table(record), "final_loss")
    ax = _draw(sweep, cells, _theory_overlay(record, sweep, cells)).axes[0]
    lines = [x.get_zorder() for x in ax.get_lines()]
    texts = [t for t in ax.texts if t.get_text() and t.get_bbox_patch() is not None]
    assert lines and texts
    assert all(t.get_zorder() > max(lines) for t in texts)


def test_log_axes_for_log_spaced_or_decade_spanning_values():
    assert log_axis([2, 4, 8, 16, 32]) and log_axis([0.5, 0.84, 1.41, 2.38, 4.0])
    assert log_axis([1e-3, 0.5])
    assert not log_axis([10, 20, 30, 40]) and not log_axis(["relu", "tanh"])


def test_report_reprints_the_sweep_and_redraws_any_field(swept):
    _, _, record, _ = swept
    png = record / "heatmap.png"
    png.unlink()
    result = run_cli("report", str(record), "--plot", "grad_ratio_init")
    assert result.exit_code == 0, result.output
    assert "grad_ratio_init mean" in result.output and png.is_file()
    bad = run_cli("report", str(record), "--plot", "no_such_field")
    assert bad.exit_code == 2 and "no_such_field" in bad.output


def test_mistakes_found_only_after_training_are_refused_before_anything_runs(tmp_path):
    """Each of these once trained every point and then failed (or passed with exit 0)."""
    config, out = write(tmp_path, TINY), tmp_path / "runs"
    cases = [
        (["--grid", "model.depth=1,2", "--grid", "model.depth=3"],
         "--grid: model.depth: given twice"),
        (["--grid", "model.depth=1,2", "--plot", "final_metrics.test_acc"],
         "did you mean 'final_metrics.test_accuracy'?"),
        (["--grid", "model.depth=1,2", "--plot", "status"], "'status' is not a number"),
        (["--grid", "model.depth=1,2", "--check"], "has no sweep.expect claims to check"),
        (["--grid", "model.activation=tanh,relu", "--plot", "model.activation"],
         "'model.activation' is not a number"),
        (["--grid", "model.depth=1,2", "--plot", "first_nonfinite"], "is not a number"),
    ]
    for args, message in cases:
        result = run_cli("sweep", str(config), *args, "--out", str(out))
        assert result.exit_code == 2 and message in result.output, (args, result.output)
    spec = {**TINY, "sweep": {"grid": {"model.depth": [1, 2]}, "expect": [
        {"where": {"model.depth": 1}, "every": {"final_metrics.test_acc": {"min": 0.5}}}]}}
    result = run_cli("sweep", str(write(tmp_path, spec, "s.yaml")), "--out", str(out))
    assert result.exit_code == 2 and "sweep.expect.0.every.final_metrics.test_acc" in result.output
    spec = {**TINY, "sweep": {"grid": {"model.depth": [1, 2]}, "plot": "verdict"}}
    result = run_cli("sweep", str(write(tmp_path, spec, "p.yaml")), "--out", str(out))
    assert result.exit_code == 2 and "sweep.plot: 'verdict' is not a number" in result.output
    assert not out.exists()


def test_one_point_is_one_point_and_quiet_is_quiet(tmp_path):
    config, out = write(tmp_path, TINY), tmp_path / "runs"
    loud = run_cli("sweep", str(config), "--grid", "model.depth=1", "--out", str(out),
                   "--no-plots")
    assert loud.exit_code == 0, loud.output
    assert "1 point × 1 seed(s) = 1 runs" in loud.stderr and "1 points" not in loud.output
    assert "sweep tiny: 1 point" in loud.stdout
    quiet = run_cli("sweep", str(config), "--grid", "model.depth=1", "--out", str(out),
                    "--no-plots", "-q", "--reuse")
    assert quiet.exit_code == 0 and quiet.stderr == ""


def test_a_text_column_is_never_plottable_even_beside_a_diverged_point():
    rows = [{"status": "completed", "verdict": "ok", "final_loss": 0.5, "test_loss": None},
            {"status": "diverged", "verdict": "diverged", "final_loss": None, "test_loss": None}]
    for field in ("status", "verdict"):
        why = unplottable(rows, field)
        assert why is not None and why.startswith(f"{field!r} is not a number"), field
    assert unplottable(rows, "final_loss") is None
    assert unplottable(rows, "test_loss") is None  # empty beside a diverged run: drawn as such
    assert "no run of the sweep has the field 'nothing'" in unplottable(rows, "nothing")


def test_a_points_verdict_is_every_seeds_not_the_first_ones():
    from rich.console import Console

    from gradlab.render.sweep_table import sweep_table

    sweep = {"name": "s", "grid": [{"key": "model.depth"}], "seeds": [0, 1],
             "points": [{"name": f"s.depth_{d}", "values": {"model.depth": d}} for d in (2, 4)]}
    rows = [{"variant": "s.depth_2", "seed": seed, "status": "completed", "verdict": verdict,
             "final_loss": 0.1} for seed, verdict in ((0, "exploding"), (1, "ok"))]
    rows += [{"variant": "s.depth_4", "seed": seed, "status": "completed",
              "verdict": "vanishing", "final_loss": 2.3} for seed in (0, 1)]
    console = Console(width=80, record=True)
    console.print(sweep_table(sweep, rows, "final_loss"))
    text = console.export_text()
    two, four = (line for line in text.splitlines() if line.split()[:1] in (["2"], ["4"]))
    assert two.split()[-2:] == ["exploding", "1/2"] and "ok 1/2" in text
    assert four.split()[-1] == "vanishing" and "vanishing 2/2" not in text
    assert "verdict: where the seeds' differ, each with how many seeds have it" in \
        text.replace("\n", " ")


# ---------------------------------------------------------------- claims


def test_claims_hold_fail_and_a_claim_about_no_point_fails():
    rows = [{"variant": "a", "seed": 0, "status": "completed", "depth_per_xi": 1.0,
             "final_metrics.test_accuracy": 0.9},
            {"variant": "b", "seed": 0, "status": "diverged", "depth_per_xi": 30.0},
            {"variant": "c", "seed": 0, "status": "completed", "depth_per_xi": 25.0,
             "final_metrics.test_accuracy": 0.5}]
    learns = {"where": {"depth_per_xi": {"max": 2}},
              "every": {"final_metrics.test_accuracy": {"min": 0.7}}}
    fails = {"where": {"depth_per_xi": {"min": 20}},
             "any_of": [{"final_metrics.test_accuracy": {"max": 0.25}}, {"status": "diverged"}]}
    nobody = {"where": {"depth_per_xi": {"min": 100}}, "every": {"status": "completed"}}
    held, broken, vacuous = check_claims([learns, fails, nobody], rows)
    assert held.ok and held.rows == 1
    assert not broken.ok and broken.rows == 2  # b diverged (allowed), c learned
    assert broken.failures == ["c seed 0: final_metrics.test_accuracy 0.5, status completed "
                               "(completed)"]
    assert not vacuous.ok and "no point has depth_per_xi ≥ 100" in vacuous.failures[0]


def test_a_spec_with_a_sweep_section_checks_its_claims(tmp_path):
    spec = {**TINY, "sweep": {
        "grid": {"model.depth": "1:2:2"}, "seeds": [0], "plot": "final_loss",
        "expect": [{"claim": "impossible", "where": {"model.depth": {"min": 1}},
                    "every": {"final_loss": {"max": -1}}}]}}
    config, out = write(tmp_path, spec), tmp_path / "runs"
    result = run_cli("sweep", str(config), "--check", "--out", str(out), "--no-plots")
    assert result.exit_code == 1, result.output
    assert "FAILED: impossible (2 runs)" in result.output
    assert "0 of 1 sweep claims held" in result.output
    [record] = list(out.glob("sweep-tiny-*"))
    claims = read_sweep(record)["claims"]
    assert claims[0]["ok"] is False and claims[0]["rows"] == 2
    bad = {**TINY, "sweep": {"grid": {"model.depth": [1]}, "expect": [{"where": {}}],
                             "gird": 1}}
    result = run_cli("sweep", str(write(tmp_path, bad, "bad.yaml")), "--out", str(out))
    assert result.exit_code == 2 and "sweep.gird: unknown key" in result.output


def test_the_canonical_sweep_spec_plans_and_is_not_a_plain_config(tmp_path):
    spec = Path(__file__).resolve().parents[1] / "configs" / "sweeps" / "tanh_phase.yaml"
    plan = plan_sweep(spec, [])
    assert plan.keys == ["model.depth", "model.init.gain"] and plan.seeds == [0, 1]
    assert [p.values["model.depth"] for p in plan.points[::5]] == [2, 4, 8, 16, 32]
    assert len(plan.claims) == 2 and plan.plot == "final_metrics.test_accuracy"
    assert json.loads(json.dumps(plan.base))["name"] == "tanh_phase"
    # validate checks it as a spec; run, compare and predict point to gradlab sweep
    result = run_cli("validate", str(spec))
    assert result.exit_code == 0, result.output
    assert "ok (a sweep spec: 25 points × 2 seed(s) = 50 runs, 2 claim(s))" in result.output
    bad = run_cli("validate", str(spec), "--set", "model.width=0")
    assert bad.exit_code == 2 and "model.width" in bad.output
    # each point gets its run's pre-flight too (an fp16 LSTM cannot train on the CPU)
    lstm = {"name": "ls", "seed": 0, "data": {"kind": "adding", "n_samples": 256, "length": 10},
            "model": {"kind": "lstm", "depth": 1, "width": 8},
            "train": {"steps": 5, "batch_size": 16, "precision": "fp16"},
            "sweep": {"grid": {"model.width": [8, 16]}}}
    refused = run_cli("validate", str(write(tmp_path, lstm, "ls.yaml")))
    if not torch.cuda.is_available():
        assert refused.exit_code == 2 and "(ls.width_8): train.precision: fp16 LSTMs" in \
            refused.output
    for command in ("run", "predict"):
        result = run_cli(command, str(spec))
        assert result.exit_code == 2, (command, result.output)
        assert f"sweep: this is a sweep spec: gradlab sweep {spec} runs it" in result.output
        assert "did you mean 'seed'" not in result.output


def test_a_field_that_is_no_column_is_refused_before_anything_runs(tmp_path):
    config, out = write(tmp_path, TINY), tmp_path / "runs"
    result = run_cli("sweep", str(config), "--grid", "model.depth=1,2", "--plot",
                     "final_metric.test_accuracy", "--out", str(out))
    assert result.exit_code == 2 and "--plot: 'final_metric.test_accuracy'" in result.output
    assert "did you mean" in result.output and not out.exists()
    spec = {**TINY, "sweep": {"grid": {"model.depth": [1, 2]}, "expect": [
        {"where": {"depth_per_ξ": {"max": 2}}, "every": {"status": "completed"}}]}}
    result = run_cli("sweep", str(write(tmp_path, spec, "s.yaml")), "--out", str(out))
    assert result.exit_code == 2 and "sweep.expect.0.where.depth_per_ξ" in result.output
    assert not out.exists()


def test_a_specs_own_grid_and_seeds_are_blamed_on_the_file_not_on_options(tmp_path):
    """No --grid was given: a bad sweep.grid key or value is the file's; sweep.seeds is named
    as such; --set cannot reach the sweep section."""
    spec = {**TINY, "sweep": {"grid": {"model.depht": [1, 2]}}}
    typo = write(tmp_path, spec, "typo.yaml")
    result = run_cli("validate", str(typo))
    assert result.exit_code == 2
    assert f"{typo}: model.depht: unknown key 'depht'" in result.output
    assert "--grid" not in result.output.split("allowed:")[0]
    negative = write(tmp_path, {**TINY, "sweep": {"grid": {"model.depth": [1, -2]}}}, "neg.yaml")
    assert "(from sweep.grid model.depth=-2)" in run_cli("validate", str(negative)).output
    seeds = write(tmp_path, {**TINY, "sweep": {"grid": {"model.depth": [1, 2]}, "seeds": 2}},
                  "seeds.yaml")
    assert f"{seeds}: sweep.seeds: a list of seeds" in run_cli("validate", str(seeds)).output
    ok = write(tmp_path, {**TINY, "sweep": {"grid": {"model.depth": [1, 2]}}}, "ok.yaml")
    told = run_cli("validate", str(ok), "--set", "sweep.seeds=3")
    assert told.exit_code == 2 and "did you mean 'seed'" not in told.output
    assert "the sweep section is set by sweep's options, not --set" in told.output
    # a --grid still names the option
    given = run_cli("sweep", str(ok), "--grid", "model.dpth=1,2", "--out", str(tmp_path / "r"))
    assert given.exit_code == 2 and "--grid: model.dpth: unknown key" in given.output


def test_a_stopped_runs_cell_says_so():
    """An interrupted point's value is from part of its run: the heatmap says 'stopped'."""
    from gradlab.render.sweep_figures import _draw

    sweep = {"name": "s", "grid": [{"key": "model.depth", "values": [2, 4]},
                                   {"key": "train.lr", "values": [0.1, 0.2]}], "seeds": [0],
             "points": [{"name": f"p{d}_{lr}", "values": {"model.depth": d, "train.lr": lr}}
                        for d in (2, 4) for lr in (0.1, 0.2)]}
    rows = [{"variant": p["name"], "seed": 0, "final_loss": 0.5,
             "status": "interrupted" if p["name"] == "p2_0.1" else "completed"}
            for p in sweep["points"]]
    cells = heatmap_cells(sweep, rows, "final_loss")
    assert cells.stopped == [[1, 0], [0, 0]]
    ax = _draw(sweep, cells, None).axes[0]
    assert [t.get_text() for t in ax.texts].count("0.50\nstopped") == 1
    assert "stopped: a run cut short" in ax.get_title()

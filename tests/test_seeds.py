"""Several seeds: group records, claims over seeds, paired claims (`versus:`), reuse of seeds."""

import json
import math
import statistics
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from gradlab.analyse.expect import check_seeds, check_versus, needed_seeds
from gradlab.cli import app
from gradlab.compare import compare, comparison_rows
from gradlab.config import ConfigError, load_config
from gradlab.record.group import field_stats, read_group, seeds_verdicts
from gradlab.record.reader import read_record, read_summary

TINY = {"data": {"kind": "teacher", "n_samples": 256, "n_features": 8},
        "model": {"depth": 3, "width": 16}, "train": {"steps": 12, "batch_size": 32},
        "probe": {"every": 4}}


def write(d: Path, name: str, expect=None, **sections) -> Path:
    cfg = {"name": name, **{k: dict(v) for k, v in TINY.items()}}
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    if expect is not None:
        cfg["expect"] = expect
    path = d / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(autouse=True)
def in_process(monkeypatch):
    monkeypatch.setattr("gradlab.compare.EXECUTOR", "thread")


def run_cli(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "100"})


# ---------------------------------------------------------------- the statistics


def test_interval_is_students_t_of_the_mean():
    values = [0.31, 0.52, 0.47]
    stats = field_stats(values, "final_loss")
    mean, sd = statistics.mean(values), statistics.stdev(values)
    half = 4.303 * sd / math.sqrt(3)  # t(0.975, 2 degrees of freedom)
    assert stats["mean"] == pytest.approx(mean)
    assert stats["ci95"] == pytest.approx([mean - half, mean + half], rel=1e-3)
    assert (stats["min"], stats["max"], stats["values"]) == (0.31, 0.52, values)


def test_gradient_ratios_take_geometric_means():
    values = [1e-42, 1e-40, 1e-44]
    stats = field_stats(values, "grad_ratio_init")
    assert stats["scale"] == "log"
    assert stats["mean"] == pytest.approx(1e-42, rel=1e-6)  # an arithmetic mean says 3.4e-41
    lo, hi = stats["ci95"]
    assert 0 < lo < 1e-44 and hi > 1e-40


def test_claims_over_seeds_name_the_seed_that_fails():
    summaries = {0: {"final_loss": 0.2, "status": "completed"},
                 1: {"final_loss": 0.7, "status": "completed"},
                 2: {"final_loss": 0.3, "status": "completed"}}
    [loss, status] = check_seeds({"final_loss": {"max": 0.5}, "status": "completed"}, summaries)
    assert not loss.ok and loss.seed == 1 and loss.measured == 0.7
    assert loss.describe() == "final_loss: expected ≤ 0.5, measured 0.7 (seed 1)"
    assert status.ok
    [mean] = check_seeds({"over": "mean", "final_loss": {"max": 0.5}}, summaries)
    assert mean.ok and mean.measured == pytest.approx(0.4)


def test_a_claim_over_a_share_of_the_seeds_counts_them_all():
    losses = [0.2, 0.7, 0.3, 0.9, 0.1]  # ≤ 0.5 for seeds 0, 2 and 4: three of five
    summaries = {seed: {"final_loss": x, "status": "completed"} for seed, x in enumerate(losses)}
    claim = {"final_loss": {"max": 0.5}, "status": "completed"}
    [loss, status] = check_seeds({**claim, "over": {"at_least": 0.6}}, summaries)
    assert loss.ok and (loss.held, loss.of, loss.needed) == (3, 5, 3)
    assert status.ok and (status.held, status.needed) == (5, 3)  # literals are counted too
    [short, _] = check_seeds({**claim, "over": {"at_least": 0.8}}, summaries)
    assert not short.ok and short.seed == 1 and short.measured == 0.7  # the first that failed
    assert short.describe() == ("final_loss: expected ≤ 0.5, measured 0.7 (seed 1), held for 3 "
                                "of 5 seeds (4 needed)")
    [every, _] = check_seeds(claim, summaries)  # the default stops at the first failure
    assert not every.ok and every.held is None and "held for" not in every.describe()
    # rounded up, and 0.55 × 100 is 55 although it is 55.00000000000001 in floating point
    assert [needed_seeds({"over": {"at_least": x}}, n) for x, n in
            ((0.9, 40), (0.55, 100), (0.5, 3), (0.01, 3), (1, 7), (0.9, 41))] == \
        [36, 55, 2, 1, 7, 37]
    assert needed_seeds({}, 40) == needed_seeds({"over": "every"}, 40) == 40

    mine = {0: {"final_loss": 0.2}, 1: {"final_loss": 0.9}, 2: {"final_loss": 0.3}}
    theirs = {0: {"final_loss": 1.0}, 1: {"final_loss": 1.0}, 2: {"final_loss": 1.0}}
    spec = {"versus": {"partner": "p", "final_loss": {"less_by": 0.5}}}
    [two_of_three] = check_versus({**spec, "over": {"at_least": 0.6}}, mine, {"p": theirs})
    assert two_of_three.ok and (two_of_three.held, two_of_three.needed) == (2, 2)
    [all_three] = check_versus({**spec, "over": {"at_least": 1.0}}, mine, {"p": theirs})
    assert not all_three.ok and all_three.seed == 1 and all_three.theirs == 1.0
    assert all_three.describe().endswith("(seed 1), held for 2 of 3 seeds (3 needed)")


@pytest.mark.parametrize("over", [{"at_least": 0}, {"at_least": 1.5}, {"at_least": "most"},
                                  {"at_least": True}, {"atleast": 0.9}, {"at_least": 0.9,
                                                                         "mean": 1}])
def test_a_bad_share_of_seeds_is_a_config_error(tmp_path, over):
    bad = write(tmp_path, "y", expect={"status": "completed", "over": over})
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert "over: {at_least: x} takes one share of the seeds, 0 < x ≤ 1" in str(e.value)
    good = write(tmp_path, "z", expect={"status": "completed", "over": {"at_least": 0.9}})
    assert load_config(good).expect["over"] == {"at_least": 0.9}


def test_paired_claims_hold_seed_by_seed():
    mine = {0: {"final_loss": 0.2, "grad_ratio_init": 0.5},
            1: {"final_loss": 0.6, "grad_ratio_init": 0.4}}
    theirs = {0: {"final_loss": 1.0, "grad_ratio_init": 1e-9},
              1: {"final_loss": 1.0, "grad_ratio_init": 0.0}}
    spec = {"versus": {"partner": "p", "final_loss": {"less_by": 0.5},
                       "grad_ratio_init": {"factor_min": 1e6}}}
    loss, ratio = check_versus(spec, mine, {"p": theirs})
    assert not loss.ok and loss.seed == 1  # 1.0 − 0.6 = 0.4 < 0.5
    assert "versus p: final_loss: expected ≥ 0.5 below the partner's, measured 0.6 against 1" \
        in loss.describe() and "(seed 1)" in loss.describe()
    assert ratio.ok  # a partner's exact 0 counts as an infinite factor
    [more] = check_versus({"versus": {"partner": "p", "final_loss": {"more_by": 0.1}}},
                          {0: {"final_loss": 0.2}}, {"p": {}})
    assert not more.ok  # a seed the partner lacks fails the claim


def test_bad_seeds_and_bad_paired_claims_are_config_errors(tmp_path):
    path = write(tmp_path, "x")
    with pytest.raises(ConfigError, match="seeds must be distinct"):
        load_config(path, ["seeds=[0, 0]"])
    with pytest.raises(ConfigError, match="seeds"):
        load_config(path, ["seeds=[]"])
    bad = write(tmp_path, "y", expect={"status": "completed", "over": "median",
                                       "versus": {"partner": "x", "final_loss": {"lower": 1}}})
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert "over: must be one of every, mean" in str(e.value)
    assert "expect.versus.final_loss: a paired claim is a mapping of less_by" in str(e.value)
    for flags, message in ((["--seeds", "a,b"], "expected a list of seeds"),
                           (["--seeds", "0"], "a count is 1 to"),
                           (["--seed", "1", "--seeds", "2"], "give one")):
        result = run_cli("run", str(path), "--out", str(tmp_path / "r"), *flags)
        assert result.exit_code == 2 and message in result.output, result.output


# ---------------------------------------------------------------- group records


def test_a_group_is_ordinary_seed_records_and_a_summary_of_them(tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    path = write(d, "g", expect={"status": "completed"})
    [v] = compare([path], tmp_path / "runs", overrides=["seeds=[0, 1, 2]"], plots=False)
    assert v.is_group and v.status == "completed" and v.expect_ok
    group_dir = v.run_dir
    assert group_dir.parent == tmp_path / "runs" / "g"
    group = read_group(group_dir)
    assert group["seeds"] == [0, 1, 2] and group["statuses"] == {"0": "completed",
                                                                "1": "completed",
                                                                "2": "completed"}
    losses = []
    for seed in (0, 1, 2):
        record = read_record(group_dir / f"seed-{seed}")  # each seed: a normal run record
        assert yaml.safe_load((group_dir / f"seed-{seed}" / "config.yaml").read_text())[
            "seed"] == seed
        losses.append(record.summary["final_loss"])
    assert len(set(losses)) == 3, "three seeds, three different runs"
    stats = group["fields"]["final_loss"]
    assert stats["values"] == pytest.approx(losses)
    assert stats["mean"] == pytest.approx(statistics.mean(losses))
    # a seed's run is the run a single seed makes: the same numbers as `--seed 2`
    [single] = compare([path], tmp_path / "single", overrides=["seed=2"], plots=False)
    assert single.record.summary["final_loss"] == pytest.approx(losses[2], rel=1e-6)
    row = comparison_rows([v])[0]
    assert row["seeds"] == "0 1 2" and row["final_loss"] == pytest.approx(stats["mean"])
    assert row["final_loss_ci"] == pytest.approx((stats["ci95"][1] - stats["ci95"][0]) / 2)


def test_a_groups_verdict_says_how_many_seeds_share_it():
    assert seeds_verdicts(["vanishing"] * 3) == "vanishing"
    assert seeds_verdicts(["vanishing"] * 3, counted=True) == "vanishing 3/3"
    assert seeds_verdicts(["ok", "exploding", "exploding"]) == "exploding 2/3, ok 1/3"
    assert seeds_verdicts(["saturated", "exploding"]) == "saturated 1/2, exploding 1/2"
    assert seeds_verdicts(["vanishing", ""]) == "vanishing 1/2"  # a seed without a summary
    assert seeds_verdicts(["", ""]) == ""


def test_a_groups_row_shows_every_seeds_verdict_not_the_first_ones(tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    [v] = compare([write(d, "g")], tmp_path / "runs", overrides=["seeds=[0, 1]"], plots=False)
    assert comparison_rows([v])[0]["verdict"] == read_summary(
        v.run_dir / "seed-0")["verdicts"][0]["kind"]  # the seeds agree: the kind alone
    v.group["verdicts"] = {"0": ["ok"], "1": ["exploding", "ok"]}  # as if seed 1 had exploded
    row = comparison_rows([v])[0]
    assert row["verdict"] == "ok 1/2, exploding 1/2"
    assert row["verdict_seeds"] == "1/2"  # the most common top verdict's share
    from rich.console import Console

    from gradlab.render.compare_table import comparison_table
    console = Console(width=80, record=True)
    console.print(comparison_table([row]))
    lines = [line.rstrip() for line in console.export_text().splitlines()]
    at = next(i for i, line in enumerate(lines) if "ok 1/2" in line)  # a verdict a line
    assert "exploding 1/2" in lines[at + 1] and "1/2," not in "".join(lines)
    assert "verdicts" not in v.summary, "a mean over seeds has no verdict of its own"


def test_runs_lists_a_group_once_and_report_reads_it(tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    path = write(d, "g")
    out = tmp_path / "runs"
    result = run_cli("run", str(path), "--out", str(out), "--seeds", "2", "--no-plots")
    assert result.exit_code == 0, result.output
    assert "g  over seeds 0, 1: completed" in result.output
    group_dir = next((out / "g").iterdir())
    listing = run_cli("runs", str(out))
    assert listing.output.count("g/") == 1 and "2 seeds (0 1)" in listing.output
    report = run_cli("report", str(group_dir), "--no-plots")
    assert report.exit_code == 0 and "final_loss" in report.output and "95% interval" in \
        report.output
    latest = run_cli("report", str(out / "g"), "--no-plots")  # a name directory: its latest
    assert latest.exit_code == 0 and "over seeds 0, 1" in latest.output
    as_json = run_cli("run", str(path), "--out", str(out), "--seeds", "0,3", "--json",
                      "--no-plots")
    assert json.loads(as_json.stdout)["seeds"] == [0, 3]


def test_reuse_takes_finished_seeds_and_runs_only_the_new_ones(tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    path = write(d, "g")
    out = tmp_path / "runs"
    [first] = compare([path], out, overrides=["seeds=[0, 1]"], plots=False)
    [again] = compare([path], out, overrides=["seeds=[0, 1]"], plots=False, reuse=True)
    assert again.reused and again.run_dir == first.run_dir  # the whole group, as it was
    [more] = compare([path], out, overrides=["seeds=[0, 1, 2]"], plots=False, reuse=True)
    assert [m.reused for m in more.members] == [True, True, False]
    assert (more.run_dir / "seed-0").is_symlink()
    assert read_summary(more.run_dir / "seed-0") == read_summary(first.run_dir / "seed-0")
    assert read_group(more.run_dir)["statuses"]["2"] == "completed"


# ---------------------------------------------------------------- paired claims in compare


def test_a_broken_pair_fails_with_the_paired_message(tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    write(d, "vanish", model={"activation": "sigmoid", "depth": 12},
          expect={"status": "completed"})
    paired = {"status": "completed",
              "versus": {"partner": "vanish", "grad_ratio_init": {"factor_min": 100}}}
    remedy = write(d, "cure", model={"activation": "relu", "init": "kaiming_normal", "depth": 12},
                   expect=paired)
    out = tmp_path / "runs"
    held = run_cli("compare", str(d), "--out", str(out), "--seeds", "0,1", "--check", "--no-plots")
    assert held.exit_code == 0, held.output
    assert "paired" in held.output
    # the remedy given the problem's activation: the pair no longer holds
    broken = yaml.safe_load(remedy.read_text())
    broken["model"].update(activation="sigmoid", init="default")
    remedy.write_text(yaml.safe_dump(broken))
    failed = run_cli("compare", str(d), "--out", str(out), "--seeds", "0,1", "--check",
                     "--no-plots")
    assert failed.exit_code == 1
    assert "cure: versus vanish: grad_ratio_init: expected ≥ 100× the partner's" in failed.output
    # the pairs table: problem → remedy, means over the seeds, and the paired verdict
    assert "pairs: the problem → its remedy (means over seeds 0, 1)" in failed.output
    pairs = failed.output[failed.output.index("pairs: the problem"):]
    [line] = [x for x in pairs.splitlines() if x.startswith("cure ")]
    assert "vanish" in line and line.rstrip().endswith("FAILED"), pairs
    record = next(p for p in out.iterdir() if p.name.startswith("compare-"))
    assert "pairs: the problem" in run_cli("report", str(record), "--no-plots").output


def test_compare_names_the_seeds_a_share_claim_let_through(tmp_path):
    for d in ("plain", "share0.5", "share1"):
        (tmp_path / d).mkdir()
    first = write(tmp_path / "plain", "g")
    [group] = compare([first], tmp_path / "first", overrides=["seeds=[0, 1]"], plots=False)
    low, high = sorted(m.record.summary["final_loss"] for m in group.members)
    assert low < high
    cut = (low + high) / 2  # seed by seed: one holds, one does not
    for share, code in ((0.5, 0), (1, 1)):
        d = tmp_path / f"share{share}"
        write(d, "g", expect={"final_loss": {"max": cut}, "over": {"at_least": share}})
        result = run_cli("compare", str(d), "--out", str(tmp_path / "runs"), "--seeds", "0,1",
                         "--check", "--no-plots")
        assert result.exit_code == code, result.output
        assert f"measured {high:.3g}" in result.output
        assert f"held for 1 of 2 seeds ({1 if share == 0.5 else 2} needed)" in result.output
    held = run_cli("compare", str(tmp_path / "share0.5"), "--out", str(tmp_path / "runs"),
                   "--seeds", "0,1", "--check", "--no-plots", "--reuse")
    assert "all 1 expectations held (0 of them paired; over at least 50% of the seeds of 1 " \
        "group)\nheld for their share of the seeds, not for all:\n  g: final_loss:" in held.output


def test_a_missing_partner_or_other_seeds_is_a_config_error(tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    write(d, "cure", expect={"status": "completed",
                             "versus": {"partner": "nowhere", "final_loss": {"less_by": 0.1}}})
    result = run_cli("compare", str(d), "--out", str(tmp_path / "r"), "--no-plots")
    assert result.exit_code == 2
    assert "expect.versus.partner: the partner config 'nowhere' is not among the configs" \
        in result.output
    write(d, "nowhere", seeds=[0, 1])
    result = run_cli("compare", str(d), "--out", str(tmp_path / "r"), "--no-plots")
    assert result.exit_code == 2 and "a paired claim needs the same seeds" in result.output


def test_two_configs_with_one_name_are_refused(tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    write(d, "same")
    (d / "copy.yaml").write_text((d / "same.yaml").read_text())
    result = run_cli("compare", str(d), "--out", str(tmp_path / "r"), "--no-plots")
    assert result.exit_code == 2
    assert "'same' is also the name of" in result.output


def test_a_remedy_can_be_paired_with_several_problems():
    spec = {"versus": [{"partner": "a", "final_loss": {"less_by": 0.5}},
                       {"partner": "b", "final_loss": {"less_by": 0.5}}]}
    mine = {0: {"final_loss": 0.2}}
    first, second = check_versus(spec, mine, {"a": {0: {"final_loss": 1.0}},
                                              "b": {0: {"final_loss": 0.5}}})
    assert first.ok and first.partner == "a"
    assert not second.ok and second.partner == "b" and second.seed == 0
    from gradlab.config.checks import versus_problems

    assert versus_problems([{"partner": "a", "final_loss": {"less_by": 1}},
                            {"partner": "a", "final_loss": {"less_by": 1}}]) == [
        ("versus", "names a partner twice")]


def test_one_seed_gives_no_interval_and_a_partial_field_says_over_how_many(tmp_path):
    """A diverged seed has no final loss: the group's final_loss is the other seed's alone,
    with no 95% interval (one value), and the report says 1/2; a norm that is 0 on a seed
    has no geometric mean, and no t interval reaching below 0 around its arithmetic one."""
    from rich.console import Console

    from gradlab.render.group_report import group_report

    one = field_stats([None, 2.3], "final_loss")
    assert one["n"] == 1 and one["mean"] == 2.3 and one["ci95"] is None
    zero = field_stats([0.0, 3.93e25], "grad_norm_min_final")
    assert zero["mean"] == pytest.approx(1.965e25) and zero["ci95"] is None
    assert zero["scale"] == "linear"
    both = field_stats([2.0, 3.0], "final_loss")
    assert both["n"] == 2 and both["ci95"] is not None
    group = {"name": "g", "seeds": [0, 4], "status": "mixed",
             "statuses": {"0": "diverged", "4": "completed"}, "verdicts": {},
             "fields": {"final_loss": one, "steps_done": field_stats([3, 20], "steps_done")}}
    console = Console(width=80, record=True)
    console.print(group_report(tmp_path, group))
    [line] = [x for x in console.export_text().splitlines() if x.startswith("final_loss")]
    assert line.split()[:4] == ["final_loss", "1/2", "2.3", "–"]


def test_seeds_a_stopped_comparison_never_started_are_not_run_not_failed_claims(tmp_path):
    from gradlab.compare import NOT_STARTED, Variant, _finish_group
    from gradlab.record.reader import read_record

    d = tmp_path / "c"
    d.mkdir()
    path = write(d, "g", expect={"status": "completed"})
    [done] = compare([path], tmp_path / "runs", overrides=["seeds=[0]"], plots=False)
    cfg = load_config(path, ["seeds=[0, 1]"])
    ran = Variant(path, config=cfg, seed=0, record=read_record(done.run_dir / "seed-0"))
    queued = Variant(path, config=cfg, seed=1, error=NOT_STARTED)
    partial = Variant(path, config=cfg, members=[ran, queued], run_dir=done.run_dir)
    _finish_group(partial)
    assert partial.group["statuses"] == {"0": "completed", "1": "not run"}
    assert partial.expectations and all(e.ok for e in partial.expectations)  # seed 0's only
    # none of it started: no group record of nothing, no claim, status `not run`
    (tmp_path / "empty").mkdir()
    never = Variant(path, config=cfg, run_dir=tmp_path / "empty", members=[
        Variant(path, config=cfg, seed=s, error=NOT_STARTED) for s in (0, 1)])
    _finish_group(never)
    assert never.status == "not run" and never.expectations == []
    assert not (tmp_path / "empty").exists() and never.run_dir is None
    # what else is in such a directory is never deleted: only the group.json of its start
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "group.json").write_text("{}")
    (kept / "notes.txt").write_text("mine")
    other = Variant(path, config=cfg, run_dir=kept, members=[
        Variant(path, config=cfg, seed=s, error=NOT_STARTED) for s in (0, 1)])
    _finish_group(other)
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]


def test_a_paired_claim_against_a_partner_that_never_started_is_not_checked(tmp_path):
    """A stopped comparison: the remedy ran, its partner never started. The pair is neither
    held nor FAILED ('–'), and no claim says 'against missing'."""
    from gradlab.compare import NOT_STARTED, _check_pairs

    d = tmp_path / "c"
    d.mkdir()
    write(d, "problem")
    write(d, "remedy", expect={"versus": {"partner": "problem", "final_loss": {"less_by": 0}}})
    remedy, problem = compare([d / "remedy.yaml", d / "problem.yaml"], tmp_path / "runs",
                              plots=False, pairs=False)
    problem.record, problem.error, problem.run_dir = None, NOT_STARTED, None
    remedy.expectations = []
    _check_pairs([remedy, problem])
    assert problem.status == "not run" and remedy.expectations == []
    assert comparison_rows([remedy, problem])[0]["paired"] == "–"

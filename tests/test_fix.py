"""gradlab fix: remedies derived from the verdicts, each run as a variant, ranked by what the
net learns; every patch is a runnable config."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import tiny
from typer.testing import CliRunner

import gradlab.fix
from gradlab.cli import app
from gradlab.config import config_from_dict, load_config, resolved
from gradlab.fix import rank, remedies_of


@pytest.fixture(autouse=True)
def in_process(monkeypatch):
    monkeypatch.setattr("gradlab.compare.EXECUTOR", "thread")


# A deep sigmoid net on a small teacher task: vanishing, and stuck at the baseline.
STUCK = tiny(name="stuck", model={"depth": 12, "width": 16, "activation": "sigmoid"},
             data={"kind": "teacher", "n_samples": 256, "n_features": 8},
             train={"steps": 60, "batch_size": 32, "lr": 0.05}, probe={"every": 20})


def test_remedies_come_from_warnings_once_each_in_order() -> None:
    summary = {"verdicts": [
        {"severity": "warning", "fixes": [{"set": ["a=1"], "why": "x"}, {"set": ["b=2"], "why": "y"}]},
        {"severity": "info", "fixes": [{"set": ["c=3"], "why": "z"}]},
        {"severity": "error", "fixes": [{"set": ["a=1"], "why": "x"}, {"set": ["d=4"], "why": "w"}]},
    ]}
    assert [f["set"] for f in remedies_of(summary)] == [["a=1"], ["b=2"], ["d=4"]]


def test_ranking_puts_learning_first_and_failures_last() -> None:
    rows = [
        {"status": "completed", "metric": "test_loss", "test_metric": 0.5, "grad_ratio_final": 1.0},
        {"status": "diverged", "metric": "test_loss", "test_metric": None, "grad_ratio_final": None},
        {"status": "completed", "metric": "test_loss", "test_metric": 0.1, "grad_ratio_final": 1e-9},
        {"status": "completed", "metric": "test_loss", "test_metric": 0.5, "grad_ratio_final": 1e-4},
    ]
    ranked = rank(rows)
    assert [r["test_metric"] for r in ranked] == [0.1, 0.5, 0.5, None]
    assert ranked[1]["grad_ratio_final"] == 1.0  # a tie goes to the healthier gradients
    assert [r["rank"] for r in ranked] == [1, 2, 3, 4]
    accuracy = rank([{"status": "completed", "metric": "test_accuracy", "test_metric": a,
                      "grad_ratio_final": 1.0} for a in (0.3, 0.9)])
    assert [r["test_metric"] for r in accuracy] == [0.9, 0.3]


@pytest.fixture(scope="module")
def fixed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`gradlab fix stuck.yaml` once, through the CLI, for the tests below: the config's path,
    the CLI's result, and the outcome `fix` returned to the CLI."""
    tmp = tmp_path_factory.mktemp("fix")
    path = tmp / "stuck.yaml"
    path.write_text(yaml.safe_dump(STUCK, sort_keys=False), encoding="utf-8")
    outcomes = []

    def recorded(*args: Any, **kwargs: Any) -> Any:
        outcomes.append(real_fix(*args, **kwargs))
        return outcomes[-1]

    real_fix = gradlab.fix.fix
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("gradlab.compare.EXECUTOR", "thread")
        patch.setattr(gradlab.fix, "fix", recorded)
        # the options repeat the file's values: the same training, and a best command to check
        result = CliRunner().invoke(app, ["fix", str(path), "--out", str(tmp / "runs"), "-q",
                                          "--steps", "60", "--set", "train.lr=0.05"],
                                    env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    [outcome] = outcomes
    return {"path": path, "result": result, "outcome": outcome}


@pytest.mark.xdist_group("fix_stuck")  # one worker runs the shared fixture once
def test_fix_runs_each_remedy_and_saves_it_as_a_runnable_config(fixed: dict[str, Any]) -> None:
    outcome = fixed["outcome"]
    assert outcome.original["overrides"] == "(as given)"
    assert "not_learning" in outcome.original["verdict"].split(", ")
    assert len(outcome.rows) >= 3
    top = outcome.rows[0]
    assert top["rank"] == 1 and top["status"] == "completed"
    assert all(a["test_metric"] <= b["test_metric"] for a, b in zip(outcome.rows, outcome.rows[1:])
               if a["status"] == b["status"] == "completed")
    # every patch loads, names its overrides, and trains what the row says it trained
    for row in outcome.rows:
        patch = Path(row["patch"])
        assert patch.parent == outcome.record / "patches"
        cfg = load_config(patch)
        assert cfg.name == row["variant"] and not cfg.expect
        assert patch.read_text().startswith(f"# stuck with: --set {row['overrides'].split()[0]}")
        for setting in row["overrides"].split():
            key, _, value = setting.partition("=")
            node = yaml.safe_load(patch.read_text())
            for part in key.split("."):
                node = node[part]
            assert str(node).lower() == value.lower(), setting
    assert (outcome.record / "fixes.csv").read_text().count("\n") == len(outcome.rows) + 2
    assert sorted(p.name for p in (outcome.record / "variants").iterdir()) == sorted(
        [r["variant"] for r in outcome.rows] + ["stuck"])


@pytest.mark.xdist_group("fix_stuck")  # one worker runs the shared fixture once
def test_the_cli_prints_the_ranking_and_the_command_of_the_best(fixed: dict[str, Any]) -> None:
    result, path = fixed["result"], fixed["path"]
    assert result.exit_code == 0, result.output
    assert "remedies, best first" in result.output
    assert "(as given)" in result.output
    assert "fix record:" in result.output
    best = next(line for line in result.output.splitlines() if line.startswith("best: "))
    assert best.startswith(f"best: gradlab run {path} --set ")
    # it runs what was ranked: the fix's own options, then the remedy's (the patch's config)
    words = shlex.split(best.removeprefix("best: "))
    assert words[:3] == ["gradlab", "run", str(path)] and words[3::2] == ["--set"] * (
        len(words) // 2 - 1)
    sets = words[4::2]
    assert sets[:2] == ["train.lr=0.05", "train.steps=60"]
    top = next(r for r in fixed["outcome"].rows if r.get("beats_baseline"))
    assert sets[2:] == top["overrides"].split()
    ran, patch = load_config(path, sets), load_config(Path(top["patch"]))
    assert resolved(ran) | {"name": ""} == resolved(patch) | {"name": ""}
    # only the copyable command and path lines may run past the terminal's width
    assert max(len(line) for line in result.stdout.splitlines()
               if not line.startswith(("best: ", "fix record: "))) <= 80


def test_a_bad_config_exits_2(write_yaml, tmp_path) -> None:
    path = write_yaml({**STUCK, "model": {"depth": -1}}, "bad.yaml")
    result = CliRunner().invoke(app, ["fix", str(path), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "model.depth" in result.output


def test_a_config_with_no_remedy_says_there_is_nothing_to_fix() -> None:
    from rich.console import Console

    from gradlab.render.fix_table import fix_table

    original = {"rank": "", "overrides": "(as given)", "status": "completed", "metric":
                "test_accuracy", "test_metric": 0.343, "baseline": 0.078, "beats_baseline": True,
                "grad_ratio_final": 1.2, "verdict": "ok"}
    console = Console(width=80, record=True)
    console.print(fix_table([], original, "c.yaml"))
    text = console.export_text()
    assert "the verdicts name no remedy for this config: nothing to fix" in text
    assert "no remedy beat the baseline" not in text
    console.print(fix_table([{**original, "rank": 1, "overrides": "train.lr=0.1",
                              "beats_baseline": False}], original, "c.yaml"))
    assert "no remedy beat the baseline in this budget" in console.export_text()


def test_a_verdict_the_seeds_do_not_share_says_how_many_have_it() -> None:
    from gradlab.compare import Variant
    from gradlab.fix import _row
    from gradlab.record.reader import Record

    cfg = config_from_dict(STUCK, "stuck.yaml")

    def group(*seeds: list[tuple[str, str]]) -> Variant:
        """A group whose seed k's own summary has the verdicts (kind, severity) seeds[k]."""
        members = [Variant(Path("s.yaml"), config=cfg, seed=k, record=Record(
            Path(f"seed-{k}"), {"status": "completed", "verdicts": [
                {"kind": kind, "severity": severity} for kind, severity in verdicts]},
            {}, [], [])) for k, verdicts in enumerate(seeds)]
        return Variant(Path("s.yaml"), config=cfg, members=members, group={
            "status": "completed", "verdicts": {str(k): [kind for kind, _ in v]
                                                for k, v in enumerate(seeds)},
            "fields": {"final_metrics.test_loss": {"mean": 0.5}, "baseline_loss": {"mean": 1.0}}})

    stuck, vanishing = ("not_learning", "warning"), ("vanishing", "warning")
    split = _row(cfg, group([stuck], [("ok", "info")]), None, None)
    assert split["verdict"] == "not_learning (1/2 seeds)"
    shared = _row(cfg, group([stuck], [stuck]), None, None)
    assert shared["verdict"] == "not_learning"
    # counted per verdict, whatever comes first on the other seeds
    mixed = _row(cfg, group([stuck, vanishing], [vanishing]), None, None)
    assert mixed["verdict"] == "not_learning (1/2 seeds), vanishing"
    both = _row(cfg, group([stuck], [vanishing, stuck]), None, None)
    assert both["verdict"] == "not_learning, vanishing (1/2 seeds)"
    # a warning only a later seed has is shown; an info verdict (clipping) is not, on any seed
    later = _row(cfg, group([("ok", "info")], [("clipping", "info"), vanishing]), None, None)
    assert later["verdict"] == "vanishing (1/2 seeds)"
    calm = _row(cfg, group([("clipping", "info")], [("ok", "info")]), None, None)
    assert calm["verdict"] == "ok"


def test_a_group_gets_the_remedies_of_every_seeds_verdicts() -> None:
    first = {"verdicts": [{"kind": "vanishing", "severity": "warning",
                           "fixes": [{"set": ["a=1"]}, {"set": ["b=2"]}]}]}
    later = {"verdicts": [{"kind": "exploding", "severity": "error",
                           "fixes": [{"set": ["b=2"]}, {"set": ["c=3"]}]},
                          {"kind": "clipping", "severity": "info", "fixes": [{"set": ["d=4"]}]}]}
    assert [f["set"] for f in remedies_of(first, later)] == [["a=1"], ["b=2"], ["c=3"]]


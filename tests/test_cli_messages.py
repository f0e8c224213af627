"""The command line's own messages: an empty directory is refused by `validate` as by `compare`,
a misspelt `report --plot` field before the table, a problem named after the option it came
from (`--set`, `--device`, `--steps`), `--steps` recorded as the user gave it, every problem
of a CSV at once, and lines fitted to the terminal's width."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import tiny
from rich.console import Console
from typer.testing import CliRunner

from gradlab.cli import _fitted, _say, app
from gradlab.config import ConfigError, load_config
from gradlab.config.messages import did_you_mean

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def invoke(*args: str | Path, terminal: bool = False, columns: int = 100):
    """The CLI as a user runs it: piped, or (`terminal`) as rich sees a terminal."""
    env = {"COLUMNS": str(columns), **({"TTY_COMPATIBLE": "1", "NO_COLOR": "1"} if terminal
                                       else {})}
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def plain(text: str) -> list[str]:
    return [ANSI.sub("", line).rstrip() for line in text.splitlines()]


def write(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


# ------------------------------------------------------------------ validate of an empty directory

def test_validate_refuses_a_directory_without_configs_as_compare_does(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a config")
    for command in ("validate", "compare"):
        result = invoke(command, empty, *(["--out", tmp_path / "runs"] if command == "compare"
                                          else []))
        assert result.exit_code == 2, (command, result.output)
        assert f"no *.yaml configs found in {empty}" in result.stderr, command
        assert result.stdout == ""


# ------------------------------------------------------------------ report --plot of a sweep

@pytest.fixture
def sweep_record(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setattr("gradlab.compare.EXECUTOR", "thread")
    config, out = write(tmp_path / "tiny.yaml", tiny()), tmp_path / "runs"
    result = invoke("sweep", config, "--grid", "model.depth=1,2", "--out", out, "--no-plots",
                    "-q")
    assert result.exit_code == 0, result.output
    [record] = list(out.glob("sweep-tiny-*"))
    return record


def test_report_refuses_a_misspelt_plot_field_before_printing_the_table(sweep_record) -> None:
    result = invoke("report", sweep_record, "--plot", "grad_ratio_int")
    assert result.exit_code == 2, result.output
    assert result.stdout == ""  # no table with an all-– column first
    assert result.stderr.startswith("--plot: no run of the sweep has the field "
                                    "'grad_ratio_int' (did you mean 'grad_ratio_init'?)")
    good = invoke("report", sweep_record, "--plot", "grad_ratio_init", "--no-plots")
    assert good.exit_code == 0, good.output
    assert "grad_ratio_init" in good.stdout


# ------------------------------------------------------------------ who a problem is blamed on

def test_a_problem_from_set_names_the_set_not_the_file_alone(write_yaml) -> None:
    path = write_yaml(tiny(), "cfg.yaml")
    result = invoke("validate", path, "--set", "model.dpth=3")
    assert result.exit_code == 2
    assert f"{path} (--set model.dpth=3): model.dpth: unknown key 'dpth' (did you mean " \
           "'depth'?)" in result.stderr
    # the file's own problems stay the file's, beside the override's
    bad = write_yaml(tiny(model={"depth": -1}), "bad.yaml")
    both = invoke("validate", bad, "--set", "train.lr=-1")
    assert f"{bad}: model.depth: must be ≥ 0, got -1" in both.stderr
    assert f"{bad} (--set train.lr=-1): train.lr: must be > 0.0, got -1" in both.stderr


def test_a_sections_key_given_at_the_top_is_pointed_to_its_section(write_yaml) -> None:
    path = write_yaml(tiny(), "cfg.yaml")
    for override, meant in (("precision=bf16", "train.precision"), ("lr=0.1", "train.lr"),
                            ("width=3", "model.width"), ("steps=100", "train.steps")):
        result = invoke("validate", path, "--set", override)
        key = override.split("=")[0]
        assert result.exit_code == 2
        assert f"{key}: unknown key '{key}' (did you mean '{meant}'?)" in result.stderr
    assert "did you mean 'name'?" in invoke("validate", path, "--set", "nme=x").stderr
    seeds = invoke("validate", path, "--set", "seeds=3")
    assert "seeds: a list of seeds, e.g. [0, 1, 2], got 3 (the --seeds option also takes a " \
           "count" in seeds.stderr


def test_a_check_across_sections_names_the_override_its_message_names(write_yaml) -> None:
    """`pretrain: … set model.residual: false` comes from `--set model.residual=true`."""
    path = write_yaml(tiny(pretrain={"method": "autoencoder", "steps_per_layer": 5}), "pre.yaml")
    for override, words in (("model.residual=true", "set model.residual: false"),
                            ("model.depth=0", "model.depth is 0"),
                            ("model.kind=rnn", "is for model.kind mlp")):
        result = invoke("validate", path, "--set", override)
        assert result.exit_code == 2
        assert f"{path} (--set {override}): pretrain: layer-wise pretraining" in result.stderr
        assert words in result.stderr
    # a key that only starts like another is not named: model.depth is not model.depth_x
    from gradlab.config import ConfigError

    error = ConfigError("f.yaml", [("pretrain", "needs model.depths")], [("model.depth", "--x")])
    assert error.origin("pretrain", "needs model.depths") is None
    # nor a key the message lists among the allowed ones, nor a top-level key used as a word
    unknown = "unknown key 'modle' (did you mean 'model'?); allowed: name, seed, model.depth"
    assert ConfigError("f.yaml", [], [("model.depth", "--x"), ("seed", "--seed 3")]).origin(
        "modle", unknown) is None
    assert ConfigError("f.yaml", [], [("seeds", "--seeds 3")]).origin(
        "expect.over", "takes one share of the seeds") is None


def test_a_problem_from_an_option_names_the_option(write_yaml, tmp_path: Path) -> None:
    path = write_yaml(tiny(), "cfg.yaml")
    result = invoke("run", path, "--device", "gpu", "--out", tmp_path / "runs")
    assert result.exit_code == 2
    assert f"{path} (--device gpu): device: unknown value 'gpu' (did you mean 'cuda'?)" \
        in result.stderr
    steps = invoke("run", path, "--steps", "0", "--seed", "-2", "--out", tmp_path / "runs")
    assert f"{path} (--steps 0): train.steps: must be ≥ 1" in steps.stderr
    assert f"{path} (--seed -2): seed: must be ≥ 0" in steps.stderr
    sweep = invoke("sweep", path, "--grid", "model.depth=1,2", "--device", "gpu", "--out",
                   tmp_path / "runs")
    assert sweep.exit_code == 2
    assert f"{path} (--device gpu): device: unknown value 'gpu'" in sweep.stderr
    assert not (tmp_path / "runs").exists()
    # compare names the option too, for each config it makes invalid, not `--set device=gpu`
    other = write_yaml(tiny(name="other"), "other.yaml")
    compared = invoke("compare", path, other, "--device", "gpu", "--steps", "0", "--out",
                      tmp_path / "compared", "--no-plots")
    for config in (path, other):
        assert f"{config} (--device gpu): device: unknown value 'gpu'" in compared.stderr
        assert f"{config} (--steps 0): train.steps: must be ≥ 1" in compared.stderr
    assert "--set device=gpu" not in compared.stderr


def test_user_text_is_echoed_as_typed_never_as_emoji(write_yaml, tmp_path: Path) -> None:
    """rich reads `:-1:` and `:thumbs_up:` as emoji codes: every message prints them as typed."""
    path = write_yaml(tiny(), "cfg.yaml")
    sweep = invoke("sweep", path, "--grid", "train.lr=log:-1:1:3", "--out", tmp_path / "runs")
    assert sweep.exit_code == 2 and "'log:-1:1:3'" in sweep.stderr
    named = invoke("validate", path, "--set", "name=a:thumbs_up:b")  # refused, and echoed
    assert named.exit_code == 2 and "got 'a:thumbs_up:b'" in named.stderr
    assert "👍" not in named.stderr and "👎" not in sweep.stderr


def test_did_you_mean_knows_synonyms_and_case() -> None:
    devices = ["auto", "cpu", "cuda"]
    assert did_you_mean("gpu", devices) == " (did you mean 'cuda'?)"
    assert did_you_mean("GPU", devices) == " (did you mean 'cuda'?)"
    assert did_you_mean("CPU", devices) == " (did you mean 'cpu'?)"
    assert did_you_mean("cpuu", devices) == " (did you mean 'cpu'?)"
    assert did_you_mean("gpu", ["relu", "tanh"]) == ""  # a synonym only where it is an option


def test_load_config_blames_overrides_by_key(write_yaml) -> None:
    path = write_yaml(tiny(), "cfg.yaml")
    with pytest.raises(ConfigError) as err:
        load_config(path, ["model.init.std=-1", "model.foo.bar=1"], {"model.foo.bar=1": "--x"})
    text = str(err.value)
    assert f"{path} (--set model.init.std=-1): model.init.std:" in text
    assert f"{path} (--x): model.foo: unknown key 'foo'" in text


# ------------------------------------------------------------------ --steps as the user gave it

def test_steps_replaces_the_files_epochs_and_is_recorded_alone(write_yaml, tmp_path) -> None:
    raw = tiny()
    raw["train"] = {**{k: v for k, v in raw["train"].items() if k != "steps"}, "epochs": 2}
    path = write_yaml(raw, "epochs.yaml")
    assert load_config(path, ["train.steps=7"]).train.epochs is None
    assert load_config(path, ["train.steps=7"]).train.steps == 7
    result = invoke("run", path, "--steps", "4", "--out", tmp_path / "runs", "--json",
                    "--no-plots")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["overrides"] == ["train.steps=4"] and summary["steps_done"] == 4
    # a file that gives both is still refused, an override or not
    both = write_yaml(tiny(train={"epochs": 2}), "both.yaml")
    with pytest.raises(ConfigError, match="set train.steps or train.epochs, not both"):
        load_config(both, ["train.steps=3"])


# ------------------------------------------------------------------ a CSV's problems at once

def test_every_problem_of_a_csv_is_reported_in_file_order(tmp_path: Path) -> None:
    from gradlab.build.files import MAX_PROBLEMS, read_table

    table = tmp_path / "table.csv"
    table.write_text("a,b,y\n1,2,0\n3,oops,1\n4,5\n6,7,0\n8,9,1\n")
    with pytest.raises(ConfigError) as err:
        read_table(table, "y", "auto")
    assert [msg for _, msg in err.value.problems] == [
        f"{table}: column 'b' holds a non-numeric value in data row 2",
        f"{table}: data row 3 has 2 values for 3 columns"]
    assert "oops" not in str(err.value)
    many = tmp_path / "many.csv"
    many.write_text("a,b,y\n" + "x,1\n" * 30)
    with pytest.raises(ConfigError) as err:
        read_table(many, "y", "auto")
    problems = [msg for _, msg in err.value.problems]
    assert len(problems) == MAX_PROBLEMS + 1
    assert problems[0].endswith("data row 1 has 2 values for 3 columns")
    assert problems[-1] == f"{many}: more problems from data row 11 on (the first " \
                           f"{MAX_PROBLEMS} are shown)"


def test_validate_reports_both_problems_of_the_csv(tmp_path: Path) -> None:
    table = tmp_path / "table.csv"
    table.write_text("a,b,y\n1,2,0\n3,oops,1\n4,5\n" + "".join(f"{i},{i},{i % 2}\n"
                                                                 for i in range(20)))
    config = write(tmp_path / "cfg.yaml", {**tiny(), "data": {"kind": "file", "path": str(table),
                                                               "target": "y"}})
    result = invoke("validate", config)
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and all(line.startswith(f"{config}: data.path: ") for line in lines)
    assert lines[0].endswith("non-numeric value in data row 2")
    assert lines[1].endswith("data row 3 has 2 values for 3 columns")


# ------------------------------------------------------------------ lines fitted to the width

def test_fitted_wraps_at_spaces_and_keeps_a_long_path_whole() -> None:
    path = "/a/very/long/" + "x" * 90 + "/config.yaml"
    text = f"{path}: model.dpth: unknown key 'dpth'; allowed: " + ", ".join(["kind"] * 40)
    lines = _fitted(text + "\n  short", 80).split("\n")
    assert lines[0] == f"{path}:"  # wider than 80, alone on its line
    assert all(len(line) <= 80 for line in lines[1:])
    assert all(line.startswith("  ") for line in lines[1:])
    assert " ".join(line.strip() for line in lines[:-1]) == text  # nothing lost
    assert lines[-1] == "  short"


def say(*parts: str, terminal: bool, fit: bool | None = None, width: int = 80) -> list[str]:
    console = Console(file=io.StringIO(), width=width, force_terminal=terminal, no_color=True,
                      record=True)
    _say(console, *parts, fit=fit)
    return console.export_text().splitlines()


def test_a_message_fits_a_terminal_and_stays_one_line_when_piped() -> None:
    names = "(" + ", ".join(f"figure_{i}.png" for i in range(12)) + ")"
    shown = say("plots: runs/deep_sigmoid/20261203T081848Z/plots", names, terminal=True)
    assert shown[0] == "plots: runs/deep_sigmoid/20261203T081848Z/plots"
    assert len(shown) > 2 and all(len(line) <= 80 for line in shown)
    assert " ".join(line.strip() for line in shown) == \
        f"plots: runs/deep_sigmoid/20261203T081848Z/plots {names}"
    piped = say("plots: runs/x/plots", names, terminal=False)
    assert piped == [f"plots: runs/x/plots {names}"]
    record = say("fix record: runs/fix-deep_sigmoid-20261203T081848Z",
                 "(patches/*.yaml: each remedy as a config)", terminal=False, fit=True)
    assert record == ["fix record: runs/fix-deep_sigmoid-20261203T081848Z",
                      "  (patches/*.yaml: each remedy as a config)"]
    assert say("fix record: runs/fix-x", "(patches/*.yaml: each remedy as a config)",
               terminal=False, fit=True) == [
        "fix record: runs/fix-x (patches/*.yaml: each remedy as a config)"]


def test_validate_errors_fit_an_80_column_terminal(write_yaml) -> None:
    path = write_yaml(tiny(), "cfg.yaml")
    result = invoke("validate", path, "--set", "model.dpth=3", terminal=True, columns=80)
    assert result.exit_code == 2
    lines = plain(result.stderr)
    assert len(lines) > 1
    assert all(len(line) <= 80 for line in lines if str(path) not in line)
    assert all(line.startswith("  ") for line in lines[1:])  # one problem, continued
    piped = invoke("validate", path, "--set", "model.dpth=3", columns=80)
    [line] = piped.stderr.splitlines()  # one line per problem, for grep
    assert " ".join(line.strip() for line in lines) == line
    assert line.startswith(f"{path} (--set model.dpth=3): model.dpth: unknown key")


def test_the_latest_run_line_fits(tmp_path: Path, write_yaml, monkeypatch) -> None:
    path = write_yaml(tiny(name="a_rather_long_config_name_for_this"), "cfg.yaml")
    monkeypatch.chdir(tmp_path)
    out = Path("runs/s3")  # relative, as a user types it
    assert invoke("run", path, "--out", out, "--no-plots", "-q").exit_code == 0
    name_dir = out / "a_rather_long_config_name_for_this"
    [run_dir] = list(name_dir.iterdir())
    result = invoke("report", name_dir, "--no-plots", columns=80)
    assert result.exit_code == 0, result.output
    head = f"the latest of 1 under {name_dir}:"
    assert len(f"{head} {run_dir}") > 80
    assert result.stderr.splitlines()[:2] == [head, f"  {run_dir}"]
    short = invoke("report", name_dir, "--no-plots", columns=150)
    assert short.stderr.splitlines()[0] == f"{head} {run_dir}"  # it fits: one line


def test_compare_shows_an_invalid_configs_problems_once_on_a_terminal(tmp_path: Path,
                                                                    monkeypatch) -> None:
    monkeypatch.setattr("gradlab.compare.EXECUTOR", "thread")  # the messages, not the pool
    configs = tmp_path / "c"
    configs.mkdir()
    bad = write(configs / "bad.yaml", tiny(name="bad", model={"depth": -3, "activaton": "relu"}))
    # alone, nothing runs: its problems once, and no compare record of nothing
    alone = invoke("compare", configs, "--out", tmp_path / "alone", "--no-plots", "-q")
    assert alone.exit_code == 2 and alone.stderr.count("must be ≥ 0, got -3") == 1
    assert "the config is not valid: nothing ran, and no compare record was written" in \
        alone.stderr
    assert not list((tmp_path / "alone").glob("compare-*"))
    write(configs / "good.yaml", tiny(name="good"))
    args = ("compare", configs, "--out", tmp_path / "runs", "--no-plots", "-q")
    screen = invoke(*args, terminal=True, columns=80)
    assert screen.exit_code == 2, screen.output
    assert "\n".join(plain(screen.output)).count("must be ≥ 0, got -3") == 1
    assert screen.stderr.strip() == ""
    piped = invoke(*args)  # piped: stderr keeps one line a problem beside the table
    assert piped.exit_code == 2
    assert f"{bad}: model.depth: must be ≥ 0, got -3" in piped.stderr.splitlines()


def test_a_boolean_is_no_number_and_a_seed_given_twice_is_named(write_yaml) -> None:
    """`depth: true` once validated and trained a depth-1 net; `--seeds 0,0` was said to be
    over the limit of seeds."""
    path = write_yaml(tiny(model={"depth": True, "width": 8}, train={"steps": True}), "b.yaml")
    result = invoke("validate", path)
    assert result.exit_code == 2
    assert f"{path}: model.depth: must be a whole number, got 'true'" in result.stderr
    assert f"{path}: train.steps: must be a whole number, got 'true'" in result.stderr
    fine = write_yaml(tiny(), "fine.yaml")
    twice = invoke("run", fine, "--seeds", "0,0")
    assert twice.exit_code == 2 and "--seeds 0,0: seed 0 given twice" in twice.stderr


def test_the_trains_conflicts_are_reported_together(write_yaml) -> None:
    path = write_yaml(tiny(train={"steps": 10, "epochs": 2, "optimizer": "sgd",
                                  "nesterov": True}), "c.yaml")
    result = invoke("validate", path)
    assert result.exit_code == 2
    assert "set train.steps or train.epochs, not both" in result.stderr
    assert "nesterov needs optimizer sgd with momentum > 0" in result.stderr


def test_a_pair_given_as_one_number_is_said_in_gradlabs_words(write_yaml) -> None:
    path = write_yaml(tiny(train={"optimizer": "adam", "betas": 0.9}), "b.yaml")
    result = invoke("validate", path)
    assert result.exit_code == 2 and "Input should be" not in result.stderr
    assert f"{path}: train.betas: must be a list ([a, b, ...]), got 0.9" in result.stderr
    three = write_yaml(tiny(train={"optimizer": "adam", "betas": [0.9, 0.99, 0.5]}), "c.yaml")
    assert f"{three}: train.betas: must be a list of at most 2 items, got [0.9, 0.99, 0.5]" \
        in invoke("validate", three).stderr


def test_a_key_given_twice_is_refused_not_silently_replaced(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("name: d\ndata: {kind: teacher, n_samples: 64, n_features: 4}\n"
                    "model:\n  depth: 3\nmodel:\n  width: 8\n  width: 9\n", encoding="utf-8")
    result = invoke("validate", path)
    assert result.exit_code == 2
    assert f"{path}: model: given twice (lines 3 and 5): the second would silently replace " \
           "the first" in result.stderr
    assert f"{path}: model.width: given twice (lines 6 and 7)" in result.stderr
    from gradlab.config.load import read_yaml

    merged = tmp_path / "merge.yaml"  # merge keys and an alias used twice are no duplicates
    merged.write_text("a: &b {x: 1}\nc: &e {y: 2}\nd:\n  <<: *b\n  <<: *e\nf: [*b, *b]\n",
                      encoding="utf-8")
    assert read_yaml(merged)["d"] == {"x": 1, "y": 2}

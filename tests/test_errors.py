"""Bad input gets one clear message per problem, exit code 2 and never a traceback.

Each case is a config (or a data file, or a command-line option) a user could really
write, run through the CLI as they would (`gradlab validate` or `gradlab run`). Every
message must name the config file and the dotted key path of the problem.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from gradlab.cli import app

DATA = {"kind": "teacher", "n_samples": 64, "n_features": 8}  # 51 training examples
BASE: dict[str, Any] = {"name": "bad", "device": "cpu", "data": DATA,
                        "model": {"depth": 3, "width": 8}, "train": {"steps": 3, "batch_size": 8}}


def cfg(**sections: Any) -> dict[str, Any]:
    """BASE with sections merged in (`data` is replaced whole: each kind has its own keys)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in BASE.items()}
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "data":
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def csv_data(tmp: Path, text: bytes | str, **extra: Any) -> dict[str, Any]:
    path = tmp / "table.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return cfg(data={"kind": "file", "path": str(path), "target": "y", **extra},
               train={"steps": 3, "batch_size": 2})


GOOD_TABLE = "a,b,y\n" + "".join(f"{i},{i % 3},{2 * i}\n" for i in range(10))

# (id, config as a mapping or raw YAML text or a function of tmp_path, extra CLI args,
#  fragments the message must hold: the key path first)
CONFIG_CASES: list[tuple[str, Any, list[str], list[str]]] = [
    ("yaml-syntax", "name: a\nmodel: {depth: 4\n", [],
     ["YAML syntax error", "line 3, column 1"]),
    ("yaml-tab-indent", "name: a\nmodel:\n\tdepth: 4\n", [], ["YAML syntax error", "line 3"]),
    ("not-a-mapping-list", "- a\n- b\n", [], ["must be a mapping of keys, got list"]),
    ("not-a-mapping-scalar", "just some words\n", [], ["must be a mapping of keys, got str"]),
    ("unknown-top-key", cfg(modle={"depth": 3}), [], ["modle: unknown key", "did you mean 'model'"]),
    ("unknown-nested-key", cfg(model={"dpeth": 3}), [],
     ["model.dpeth: unknown key", "did you mean 'depth'"]),
    ("unknown-train-key", cfg(train={"batchsize": 8}), [],
     ["train.batchsize: unknown key", "did you mean 'batch_size'"]),
    ("wrong-type-int", cfg(model={"depth": "many"}), [],
     ["model.depth: must be a whole number, got 'many'"]),
    ("wrong-type-float", cfg(train={"lr": "fast"}), [], ["train.lr: must be a number, got 'fast'"]),
    ("wrong-type-bool", cfg(model={"residual": "maybe"}), [],
     ["model.residual: must be true or false"]),
    ("section-not-mapping", cfg(model=5), [], ["model: must be a mapping of keys, got 5"]),
    ("pair-too-short", cfg(train={"betas": [0.9]}), [], ["train.betas.1: required item is missing"]),
    ("depth-negative", cfg(model={"depth": -1}), [], ["model.depth: must be ≥ 0, got -1"]),
    ("negative-lr", cfg(train={"lr": -0.1}), [], ["train.lr: must be > 0.0, got -0.1"]),
    ("batch-larger-than-data", cfg(train={"batch_size": 1000}), [],
     ["train.batch_size: must be ≤ the 51 training examples, got 1000"]),
    ("clip-max-norm-zero", cfg(train={"clip": {"max_norm": 0}}), [],
     ["train.clip.max_norm: must be > 0"]),
    ("clip-max-norm-negative", cfg(train={"clip": {"max_norm": -1.0}}), [],
     ["train.clip.max_norm: must be > 0"]),
    ("test-fraction-out-of-range", cfg(data={**DATA, "test_fraction": 1.5}), [],
     ["data.test_fraction: must be < 1"]),
    ("unknown-activation", cfg(model={"activation": "relu6"}), [],
     ["model.activation: unknown value 'relu6'", "did you mean 'relu'", "allowed: sigmoid"]),
    ("unknown-init", cfg(model={"init": "kaiming"}), [],
     ["model.init.scheme: unknown value 'kaiming'", "kaiming_normal"]),
    ("unknown-optimizer", cfg(train={"optimizer": "adm"}), [],
     ["train.optimizer: unknown value 'adm'", "did you mean 'adam'"]),
    ("unknown-schedule", cfg(train={"schedule": "cosin"}), [],
     ["train.schedule.name: unknown value 'cosin'", "did you mean 'cosine'"]),
    ("unknown-dataset-kind", cfg(data={"kind": "mnist"}), [],
     ["data.kind: unknown kind 'mnist'", "allowed: teacher"]),
    ("dataset-without-kind", {**BASE, "data": {"n_samples": 64}}, [], ["data: needs a 'kind' key"]),
    ("dataset-missing", {"name": "x", "model": {"depth": 2}}, [], ["data: required key is missing"]),
    ("steps-and-epochs", cfg(train={"steps": 3, "epochs": 2}), [],
     ["train.epochs: set train.steps or train.epochs, not both"]),
    ("cross-entropy-on-regression", cfg(train={"loss": "cross_entropy"}), [],
     ["train.loss: cross_entropy needs a classification dataset"]),
    ("batch-norm-batch-one", cfg(model={"norm": "batch"}, train={"batch_size": 1}), [],
     ["model.norm: batch normalisation needs train.batch_size ≥ 2, got 1"]),
    ("mlp-on-sequence-task", cfg(data={"kind": "adding", "n_samples": 64},
                                                    train={"batch_size": 8}), [],
     ["model.kind: data.kind 'adding' needs a sequence model"]),
    ("file-dataset-missing", lambda tmp: cfg(
        data={"kind": "file", "path": str(tmp / "nope.csv"), "target": "y"}), [],
     ["data.path: no such file", "nope.csv"]),
    ("model-too-big-for-memory", cfg(model={"depth": 2000, "width": 1_000_000}), [],
     ["model: width 1000000 × depth 2000 needs about", "PiB", "available",
      "model.width or model.depth"]),
    ("yaml-tag-object-top", '!!python/object/apply:os.system ["echo owned > {tmp}/owned"]\n', [],
     ["YAML tag !!python/object/apply:os.system at line 1, column 1 is not allowed"]),
    ("yaml-tag-object-nested", "name: x\ndata: {kind: digits}\nmodel:\n"
     '  init: !!python/object/apply:os.system ["echo owned > {tmp}/owned"]\n', [],
     ["model.init: YAML tag !!python/object/apply:os.system at line 4, column 9"]),
    ("set-without-equals", cfg(), ["--set", "model.depth"],
     ["--set: expected key.path=value, got 'model.depth'"]),
    ("set-empty-key-part", cfg(), ["--set", "model..depth=3"], ["--set: expected key.path=value"]),
    ("set-bad-value", cfg(), ["--set", "model.depth=["],
     ["bad.yaml (--set model.depth=[): model.depth: must be a whole number"]),
    ("set-unknown-key", cfg(), ["--set", "model.widht=4"],
     ["bad.yaml (--set model.widht=4): model.widht: unknown key", "did you mean 'width'"]),
    ("name-escaping-out-dir", cfg(), ["--set", "name=../../etc"],
     ["(--set name=../../etc): name: must be letters"]),
    ("expect-unknown-field", cfg(expect={"final_los": {"max": 1}}), [],
     ["expect.final_los: not a summary.json field", "did you mean 'final_loss'"]),
    ("config-not-utf8", b"name: \xff\xfe\n", [], ["cannot read"]),
]

# Problems only found once the data file is read: `gradlab run` reports them before training.
RUN_CASES: list[tuple[str, Any, list[str], list[str]]] = [
    ("file-without-target-column", lambda tmp: csv_data(tmp, GOOD_TABLE, target="z"), [],
     ["data.target: no column named 'z'", "columns: a, b, y"]),
    ("file-non-numeric", lambda tmp: csv_data(tmp, GOOD_TABLE.replace("3,0,6", "3,oops,6")), [],
     ["data.path:", "column 'b' holds a non-numeric value in data row 4"]),
    ("file-unreadable-bytes", lambda tmp: csv_data(tmp, b"a,b,y\n\xff\xfe,1,2\n"), [],
     ["data.path: cannot read", "table.csv"]),
    ("file-ragged-rows", lambda tmp: csv_data(tmp, GOOD_TABLE + "1,2\n"), [],
     ["data.path:", "data row 11 has 2 values for 3 columns"]),
    ("file-batch-larger-than-table", lambda tmp: csv_data(tmp, GOOD_TABLE), ["--set",
     "train.batch_size=50"], ["bad.yaml (--set train.batch_size=50): train.batch_size: must be ≤ "
                             "the 8 training examples, got 50"]),
    ("out-is-a-file", cfg(), ["--out", "{tmp}/a_file"],
     ["--out", "a_file: cannot create a run record there"]),
]


def write_config(tmp: Path, content: Any) -> Path:
    if callable(content):
        content = content(tmp)
    path = tmp / "bad.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content.replace("{tmp}", str(tmp)), encoding="utf-8")
    else:
        path.write_text(yaml.safe_dump(content, sort_keys=False), encoding="utf-8")
    return path


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "100"})


def check_refused(result: Any, tmp: Path, fragments: list[str]) -> None:
    text = result.output
    assert result.exit_code == 2, text
    # the file is named (with the command-line override the problem came from, if one did)...
    assert "bad.yaml: " in text or "bad.yaml (--" in text
    for fragment in fragments:  # ...then the key path and what is allowed
        assert fragment in text, f"{fragment!r} not in {text!r}"
    assert "Traceback" not in text and "File \"" not in text
    assert not (tmp / "owned").exists()  # no tag ever ran a command


@pytest.mark.parametrize("content, args, fragments",
                         [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_validate_refuses_bad_config(tmp_path: Path, content: Any, args: list[str],
                                     fragments: list[str]) -> None:
    path = write_config(tmp_path, content)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    check_refused(invoke("validate", str(path), *args), tmp_path, fragments)


@pytest.mark.parametrize("content, args, fragments",
                         [c[1:] for c in RUN_CASES], ids=[c[0] for c in RUN_CASES])
def test_run_refuses_bad_data_before_training(tmp_path: Path, content: Any, args: list[str],
                                              fragments: list[str]) -> None:
    (tmp_path / "a_file").write_text("not a directory")
    path = write_config(tmp_path, content)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    out = tmp_path / "runs"
    result = invoke("run", str(path), "--out", str(out), "-q", *args)
    check_refused(result, tmp_path, fragments)
    assert not list(out.glob("*/*")), "a refused config must leave no run directory"


@pytest.mark.parametrize("case", ["yaml-syntax", "model-too-big-for-memory", "set-bad-value",
                                  "yaml-tag-object-nested"])
def test_run_refuses_what_validate_refuses_and_trains_nothing(tmp_path: Path, case: str) -> None:
    _, content, args, fragments = next(c for c in CONFIG_CASES if c[0] == case)
    path = write_config(tmp_path, content)
    out = tmp_path / "runs"
    check_refused(invoke("run", str(path), "--out", str(out), "-q", *args), tmp_path, fragments)
    assert not out.exists() or not list(out.rglob("summary.json"))


def test_every_problem_is_reported_at_once_one_line_each(tmp_path: Path) -> None:
    path = write_config(tmp_path, cfg(model={"depth": -1, "activation": "rleu"},
                                      train={"lr": -1, "optimiser": "adam"}))
    result = invoke("validate", str(path))
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 4, result.output
    assert all(line.startswith(f"{path}: ") for line in lines)
    assert {line.split(": ")[1] for line in lines} == {
        "model.depth", "model.activation", "train.lr", "train.optimiser"}
    assert "did you mean 'optimizer'" in result.output


def test_file_name_with_spaces_gets_a_sanitised_run_name(tmp_path: Path) -> None:
    """A config's default name comes from its file name, made safe as a directory name."""
    from gradlab.config import load_config

    path = tmp_path / "my run (v2).yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in cfg().items() if k != "name"}))
    assert load_config(path).name == "my_run_v2_"
    assert invoke("validate", str(path)).exit_code == 0


def test_the_memory_estimate_counts_parameters_and_optimiser_state() -> None:
    """The refusal's numbers: a 3-layer width-8 MLP on 8 features has 8·8+8 + 2·(8·8+8) + 8+1
    parameters; Adam keeps two more copies of each."""
    from gradlab.build.budget import memory_estimate
    from gradlab.config import config_from_dict

    sgd = memory_estimate(config_from_dict(cfg()))
    adam = memory_estimate(config_from_dict(cfg(train={"optimizer": "adam"})))
    assert sgd["n_params"] == 3 * 72 + 9
    assert sgd["parameters"] == 4 * 225 * 3  # weights, gradients, the probe's copy
    assert adam["parameters"] == 4 * 225 * 5
    assert sgd["activations"] == 4 * 8 * 3 * 8 * 4  # batch × depth × width × 4 floats

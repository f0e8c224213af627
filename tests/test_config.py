"""Config loading: every shipped config validates, shorthand forms, --set overrides, and the
one-line messages bad configs get (exit 2, file and dotted key path, "did you mean", no traceback).
(The full bad-input catalogue lives in test_errors.py; these are the core cases.)
"""

from __future__ import annotations

import pytest
from conftest import CONFIGS, tiny
from typer.testing import CliRunner

from gradlab.cli import app
from gradlab.config import ConfigError, load_config, resolved

SHIPPED = sorted(CONFIGS.glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_config_loads(path) -> None:
    cfg = load_config(path)
    assert cfg.name == path.stem
    assert cfg.expect, "a canonical config states its claim in an expect: block"


def test_the_two_core_configs_describe_the_classic_contrast() -> None:
    sigmoid = load_config(CONFIGS / "deep_sigmoid.yaml").model
    relu = load_config(CONFIGS / "deep_relu_he.yaml").model
    assert (sigmoid.depth, sigmoid.width, sigmoid.activation, sigmoid.init.scheme) == (
        15, 64, "sigmoid", "default")
    assert (relu.depth, relu.width, relu.activation, relu.init.scheme) == (
        15, 64, "relu", "kaiming_normal")


def test_defaults_are_filled_in_and_the_name_comes_from_the_file(write_yaml) -> None:
    cfg = load_config(write_yaml("data: {kind: digits}\n", "my-variant.yaml"))
    assert cfg.name == "my-variant" and cfg.seed == 0 and cfg.device == "auto"
    assert (cfg.model.depth, cfg.model.width, cfg.model.activation) == (10, 100, "relu")
    assert cfg.train.optimizer == "sgd" and cfg.train.lr == 0.01 and cfg.train.clip is None
    assert cfg.probe.every == 10 and cfg.probe.activations and not cfg.flush_denormal
    assert resolved(cfg)["train"]["schedule"]["name"] == "constant"


def test_shorthand_forms(write_yaml) -> None:
    path = write_yaml(tiny(model={"init": "xavier_normal", "bias_init": "zeros"},
                           train={"schedule": "cosine"}))
    cfg = load_config(path)
    assert cfg.model.init.scheme == "xavier_normal" and cfg.model.init.std == 0.01
    assert cfg.model.bias_init.scheme == "zeros"
    assert cfg.train.schedule.name == "cosine"


def test_overrides_set_nested_keys_parsed_as_yaml(write_yaml) -> None:
    path = write_yaml(tiny(model={"init": "kaiming_normal"}))
    cfg = load_config(path, [
        "model.depth=20", "model.init.mode=fan_out",  # into a shorthand: keeps its scheme
        "train.clip.max_norm=0.5",  # creates a section the file does not have
        "train.nesterov=true", "train.momentum=0.9", "train.betas=[0.8, 0.9]",
        "name=renamed", "train.lr=1e-3",
    ])
    assert cfg.model.depth == 20 and cfg.name == "renamed"
    assert (cfg.model.init.scheme, cfg.model.init.mode) == ("kaiming_normal", "fan_out")
    assert cfg.train.clip is not None and cfg.train.clip.max_norm == 0.5
    assert cfg.train.clip.by == "norm"
    assert cfg.train.nesterov is True and cfg.train.betas == (0.8, 0.9)
    assert cfg.train.lr == 1e-3


def test_a_later_override_wins_and_a_malformed_one_is_an_error(write_yaml) -> None:
    path = write_yaml(tiny())
    assert load_config(path, ["model.depth=3", "model.depth=7"]).model.depth == 7
    with pytest.raises(ConfigError) as err:
        load_config(path, ["model.depth"])
    assert "--set: expected key.path=value, got 'model.depth'" in str(err.value)


def test_all_problems_are_reported_together(write_yaml) -> None:
    path = write_yaml(tiny(model={"depth": -3, "activaton": "relu"}, train={"lr": "abc"}))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert [p for p, _ in err.value.problems] == ["model.depth", "model.activaton", "train.lr"]


# The CLI's side: (file content, the message expected on stderr after "<file>: ").
BAD = {
    "negative depth": (tiny(model={"depth": -3}), "model.depth: must be ≥ 0, got -3"),
    "misspelt key": (tiny(model={"activaton": "relu"}),
                     "model.activaton: unknown key 'activaton' (did you mean 'activation'?)"),
    "misspelt value": (tiny(model={"activation": "sigmod"}),
                       "model.activation: unknown value 'sigmod' (did you mean 'sigmoid'?); "
                       "allowed: sigmoid, tanh, relu,"),
    "nested init key": (tiny(model={"init": {"scheme": "normal", "sdt": 0.1}}),
                        "model.init.sdt: unknown key 'sdt' (did you mean 'std'?)"),
    "wrong type": (tiny(train={"lr": "fast"}), "train.lr: must be a number, got 'fast'"),
    "unknown data kind": (tiny(data={"kind": "digit"}),
                          "data.kind: unknown kind 'digit' (did you mean 'digits'?)"),
    "yaml syntax": ("name: x\nmodel: {depth: 3\n", "YAML syntax error: line"),
}


@pytest.mark.parametrize("command", ["run", "validate"])
@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_config_exits_2_with_one_line_naming_file_and_key(case: str, command: str,
                                                                  write_yaml, tmp_path) -> None:
    content, expected = BAD[case]
    path = write_yaml(content, "bad.yaml")
    result = CliRunner().invoke(app, [command, str(path), "--out", str(tmp_path / "runs")]
                                if command == "run" else [command, str(path)])
    assert result.exit_code == 2, result.output
    assert f"{path}: {expected}" in result.stderr
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)  # a clean exit, not an escaped exception
    assert not (tmp_path / "runs").exists()  # nothing trained, no record started


def test_a_bad_override_names_the_key_too(write_yaml) -> None:
    path = write_yaml(tiny())
    result = CliRunner().invoke(app, ["validate", str(path), "--set", "model.dpeth=3"])
    assert result.exit_code == 2
    assert (f"{path} (--set model.dpeth=3): model.dpeth: unknown key 'dpeth' "
            "(did you mean 'depth'?)") in result.stderr

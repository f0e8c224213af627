"""Property tests: whatever the YAML holds, `load_config` returns a Config or raises ConfigError.

Generated inputs range from random bytes to mappings built from the schema's own key names
with values of every YAML type, so most examples get past the parser into validation.
Derandomised with no deadline, so CI sees the same examples every time.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradlab.config import Config, ConfigError, load_config

FUZZ = settings(max_examples=150, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SECTIONS = {
    "model": ["kind", "depth", "width", "activation", "norm", "residual", "residual_block",
              "init", "bias_init", "negative_slope", "readout", "rnn_nonlinearity"],
    "train": ["steps", "epochs", "batch_size", "loss", "optimizer", "lr", "momentum", "nesterov",
              "betas", "eps", "weight_decay", "schedule", "clip", "eval_every"],
    "data": ["kind", "n_samples", "n_features", "n_classes", "n_outputs", "test_fraction", "path",
             "target", "length", "n_symbols", "n_recall", "noise"],
    "probe": ["every", "activations"],
    "pretrain": ["method", "steps_per_layer", "lr", "denoising"],
}
NAMES = ["teacher", "blobs", "digits", "file", "adding", "copy", "relu", "sigmoid", "batch",
         "sgd", "adam", "cosine", "norm", "mse", "cross_entropy", "lstm", "mlp", "auto", "cuda"]
KEYS = sorted({k for keys in SECTIONS.values() for k in keys} | set(SECTIONS)
              | {"name", "seed", "device", "expect", "scheme", "max_norm", "by", "name "})

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    # no subnormals: keeps the derandomized examples a mix of valid and invalid configs
    st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=False),
    st.sampled_from(NAMES + [0, 1, -1, 2**31, 1e308, "", " ", "1e3", "0x10", "~", "yes"]),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=6),
                                                      st.integers()), inner, max_size=4)),
    max_leaves=12,
)


# A valid config to start from, and a value each key accepts: examples take a few random
# edits of the base, each a plausible value or any YAML value, so that a good share of them
# load and the rest fail in every way the schema can (not only at the first check).
BASE: dict[str, Any] = {
    "name": "fuzz", "data": {"kind": "teacher", "n_samples": 64, "n_features": 4},
    "model": {"depth": 2, "width": 8}, "train": {"steps": 5, "batch_size": 8},
}
PLAUSIBLE = {
    "model.kind": "mlp", "model.depth": 3, "model.width": 8, "model.activation": "tanh",
    "model.norm": "layer", "model.residual": False, "model.residual_block": 2,
    "model.init": "xavier_normal", "model.bias_init": "zeros", "model.negative_slope": 0.1,
    "model.readout": "last", "model.rnn_nonlinearity": "relu", "train.steps": 5,
    "train.epochs": None, "train.batch_size": 8, "train.loss": "auto", "train.optimizer": "adam",
    "train.lr": 0.05, "train.momentum": 0.0, "train.nesterov": False, "train.betas": [0.9, 0.99],
    "train.eps": 1e-6, "train.weight_decay": 1e-4, "train.schedule": "cosine",
    "train.clip": {"by": "norm", "max_norm": 1.0}, "train.eval_every": 3, "data.kind": "blobs",
    "data.n_samples": 64, "data.n_features": 4, "data.n_classes": 3, "data.n_outputs": 2,
    "data.test_fraction": 0.25, "data.path": "x.csv", "data.target": "y", "data.length": 5,
    "data.n_symbols": 3, "data.n_recall": 2, "data.noise": 0.1, "probe.every": 2,
    "probe.activations": False, "pretrain.method": "autoencoder", "pretrain.steps_per_layer": 3,
    "pretrain.lr": 0.01, "pretrain.denoising": 0.1,
}


@st.composite
def near_schema(draw: st.DrawFn) -> dict[Any, Any]:
    """A valid config with up to four edits: real sections and keys, values plausible or odd,
    now and then a misspelt key, a section that is not a mapping, or another name."""
    raw: dict[Any, Any] = {k: dict(v) if isinstance(v, dict) else v for k, v in BASE.items()}
    for _ in range(draw(st.integers(0, 4))):
        section = draw(st.sampled_from(list(SECTIONS)))
        edit = draw(st.integers(0, 9))
        if edit == 1:  # a section that is not a mapping at all
            raw[section] = draw(scalars)
        elif edit == 2:
            raw["name"] = draw(st.one_of(st.text(max_size=8), scalars))
        else:
            body = raw[section] if isinstance(raw.get(section), dict) else {}
            raw[section] = body
            if edit == 0:  # a misspelt key
                body[draw(st.text(min_size=1, max_size=8))] = draw(scalars)
                continue
            key = draw(st.sampled_from(SECTIONS[section]))
            plausible = st.just(PLAUSIBLE[f"{section}.{key}"])
            body[key] = draw(plausible if edit > 5 else values)
    return raw


def load(tmp: Path, content: bytes, overrides: list[str] = ()) -> Config | None:
    path = tmp / "fuzz.yaml"
    path.write_bytes(content)
    try:
        cfg = load_config(path, list(overrides))
    except ConfigError as e:
        assert e.problems and all(isinstance(p, str) and m for p, m in e.problems)
        assert str(e).startswith(str(path))
        return None
    assert isinstance(cfg, Config)
    assert cfg.model.depth >= 1 and cfg.train.lr > 0 and math.isfinite(cfg.train.lr)
    return cfg


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(content=st.binary(max_size=200))
def test_random_bytes_load_or_raise_config_error(tmp: Path, content: bytes) -> None:
    load(tmp, content)


@FUZZ
@given(text=st.text(alphabet=st.sampled_from(list("ab:-{}[],&*!|>'\"#%@`?\n\t .0123456789~")),
                    max_size=80))
def test_yaml_punctuation_loads_or_raises_config_error(tmp: Path, text: str) -> None:
    load(tmp, text.encode())


def test_configs_near_the_schema_load_or_raise_config_error(tmp: Path) -> None:
    loaded: list[bool] = []

    @FUZZ
    @given(raw=near_schema())
    def check(raw: dict) -> None:
        loaded.append(load(tmp, yaml.safe_dump(raw, allow_unicode=True).encode()) is not None)

    check()
    # both outcomes occur, so the generator reaches past the parser into validation
    assert 0 < sum(loaded) < len(loaded), f"{sum(loaded)} of {len(loaded)} loaded"


def test_random_overrides_load_or_raise_config_error(tmp: Path) -> None:
    base = {"name": "fuzz", "data": {"kind": "teacher", "n_samples": 64, "n_features": 4},
            "train": {"batch_size": 8}}
    loaded: list[bool] = []

    @FUZZ
    @given(sets=st.lists(st.one_of(
        st.builds(lambda k, v: f"{k}={v}", st.sampled_from(
            ["model.depth", "model.init", "model.init.scheme", "train.clip", "train.clip.max_norm",
             "data", "data.kind", "name", "train", "seed", "expect.status", "train.betas"]),
            st.one_of(st.text(max_size=10), st.sampled_from(["3", "xavier_normal", "{}", "null"]))),
        st.text(max_size=15)), max_size=4))
    def check(sets: list[str]) -> None:
        loaded.append(load(tmp, yaml.safe_dump(base).encode(), sets) is not None)

    check()
    assert 0 < sum(loaded) < len(loaded), f"{sum(loaded)} of {len(loaded)} loaded"

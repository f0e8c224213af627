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


@st.composite
def near_schema(draw: st.DrawFn) -> dict[Any, Any]:
    """A mapping shaped like a config: real sections and keys, sometimes misspelt or odd."""
    raw: dict[Any, Any] = {}
    if draw(st.booleans()):
        raw["name"] = draw(st.one_of(st.text(max_size=8), scalars))
    raw["data"] = {"kind": draw(st.sampled_from(NAMES[:6]))}
    for section, keys in SECTIONS.items():
        if draw(st.booleans()):
            body = raw.setdefault(section, {})
            for key in draw(st.lists(st.sampled_from(keys), max_size=4)):
                body[key] = draw(values)
            if draw(st.integers(0, 9)) == 0:  # a misspelt key now and then
                body[draw(st.text(min_size=1, max_size=8))] = draw(scalars)
    if draw(st.integers(0, 4)) == 0:  # or a section that is not a mapping at all
        raw[draw(st.sampled_from(list(SECTIONS)))] = draw(scalars)
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

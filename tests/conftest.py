"""Shared helpers for the core tests: tiny configs, YAML files in tmp_path, one-call runs.

Tests train small networks for a handful of steps, so torch gets one thread: on a shared
2-core machine more threads only contend (a 50-layer net runs ~10x slower with two).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import procs
import pytest
import torch
import yaml

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

# A run that finishes in well under a second: 4 tanh layers of width 16 on 64 examples.
TINY: dict[str, Any] = {
    "name": "tiny",
    "seed": 0,
    "device": "cpu",
    "data": {"kind": "teacher", "n_samples": 64, "n_features": 8},
    "model": {"depth": 4, "width": 16, "activation": "tanh"},
    "train": {"steps": 10, "batch_size": 16, "eval_every": 3},
    "probe": {"every": 2},
}


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of `base` with `changes` merged in, section by section."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def tiny(**changes: Any) -> dict[str, Any]:
    """The TINY config as a raw mapping, with sections merged from `changes`."""
    return merge(TINY, changes)


def tiny_config(**changes: Any):
    from gradlab.config import config_from_dict

    return config_from_dict(tiny(**changes), "tiny.yaml")


@pytest.fixture
def write_yaml(tmp_path: Path):
    """Write a mapping (dumped as YAML) or raw text to tmp_path/<name> and return the path."""

    def write(content: dict[str, Any] | str, name: str = "cfg.yaml") -> Path:
        path = tmp_path / name
        text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture
def run_tiny(tmp_path: Path):
    """Run the tiny config (with changes) under tmp_path/runs; return the RunOutcome."""
    from gradlab.runner import run_config

    def run(observers: tuple[Any, ...] = (), **changes: Any):
        return run_config(tiny_config(**changes), tmp_path / "runs", observers)

    return run


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a CSV, as plain strings (what any outside reader sees)."""
    import csv

    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


@pytest.fixture(autouse=True)
def _no_process_left_behind():
    """Whatever a test asserted, every process it started (`procs.start`) is killed after it:
    a failed test must not leave a million-step run training in the background."""
    yield
    procs.stop_all()


@pytest.fixture(autouse=True, scope="session")
def _no_process_left_at_the_end():
    """The same at the end of the session, for a module fixture whose setup failed (its
    processes outlive the test that asked for it)."""
    yield
    procs.stop_all()

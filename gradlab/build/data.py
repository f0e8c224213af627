"""Datasets → tensors and a task description: `load_data(cfg.data, seed)` → `Dataset`.

Every task is made here (tabular or sequence) or read from a file the user names, then split
and standardised by the one `dataset.split`. Nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from gradlab.build import sequences, tabular
from gradlab.build.dataset import Dataset, split
from gradlab.build.files import encode_classes, read_table
from gradlab.config import ConfigError, DataConfig


def load_data(cfg: DataConfig, seed: int) -> Dataset:
    """Build the dataset a config describes; file problems raise ConfigError."""
    rng = np.random.default_rng(seed)
    if cfg.kind == "teacher":
        x, y = tabular.teacher(cfg, rng)
        return split(x, y, "regression", cfg.test_fraction, rng)
    if cfg.kind == "blobs":
        x, y = tabular.blobs(cfg.n_samples, cfg.n_features, cfg.n_classes, cfg.spread, rng)
        return split(x, y, "classification", cfg.test_fraction, rng)
    if cfg.kind == "spirals":
        x, y = tabular.spirals(cfg.n_samples, cfg.n_classes, cfg.noise, cfg.turns, rng)
        return split(x, y, "classification", cfg.test_fraction, rng)
    if cfg.kind == "digits":
        x, y = tabular.digits()
        return split(x, y, "classification", cfg.test_fraction, rng)
    if cfg.kind == "file":
        if cfg.test_path is None:
            x, y, task = read_table(Path(cfg.path), cfg.target, cfg.task)
            return split(x, y, task, cfg.test_fraction, rng)
        return _given_split(cfg.path, cfg.test_path, cfg.target, cfg.task, rng)
    if cfg.kind == "adding":
        x, y = sequences.adding_problem(cfg.n_samples, cfg.length, rng)
        data = split(x, y, "regression", cfg.test_fraction, rng, "none", n_out=1)
        # Predicting the mean sum 1 scores the variance of a sum of two U(0,1): 2/12 ≈ 0.167.
        return replace(data, baseline_loss=float(((data.y_test - 1.0) ** 2).mean()))
    if cfg.kind == "copy":
        x, y = sequences.copy_task(cfg.n_samples, cfg.length, cfg.n_symbols, cfg.n_recall, rng)
        data = split(x, y, "classification", cfg.test_fraction, rng, "none",
                     n_out=cfg.n_symbols + 1)
        # Without memory the best is: blank until the recall, then a uniform guess over symbols.
        total = y.shape[1]
        return replace(data, baseline_loss=cfg.n_recall * float(np.log(cfg.n_symbols)) / total)
    x, y = sequences.digits_rows()
    return split(x, y, "classification", cfg.test_fraction, rng, "sequence", n_out=10)


def check_data(cfg: DataConfig, source: str) -> None:
    """Read a file dataset as a run would, raising its problems as `source`'s ConfigError
    (`gradlab validate`); the datasets gradlab makes need no check beyond the schema."""
    if cfg.kind != "file":
        return
    try:
        load_data(cfg, 0)
    except ConfigError as e:
        raise ConfigError(source, e.problems) from None


def _given_split(path: str, test_path: str, target: str, task: str,
                 rng: np.random.Generator) -> Dataset:
    """A file dataset with its own test file: the same columns, classes encoded together."""
    x, y, found = read_table(Path(path), target, task, encode=False)
    x_test, y_test, _ = read_table(Path(test_path), target, found, "data.test_path", encode=False)
    if x_test.shape[1] != x.shape[1]:
        raise ConfigError(test_path, [("data.test_path", f"{test_path} has {x_test.shape[1]} "
                                       f"feature columns, {path} has {x.shape[1]}")])
    if found == "classification":
        y, y_test = encode_classes(y, y_test)
    return split(np.concatenate([x, x_test]), np.concatenate([y, y_test]), found, 0.5, rng,
                 given_test=len(x_test))

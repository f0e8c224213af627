"""Datasets → tensors and a task description.

`load_data(cfg.data, seed)` returns a `Dataset`: standardised train/test tensors split by
seed, the task (regression or classification) and the input/output sizes. Every dataset
is made here or read from a file the user names: nothing is downloaded.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from gradlab.config import ConfigError, DataConfig

Task = Literal["regression", "classification"]


@dataclass(frozen=True)
class Dataset:
    x_train: torch.Tensor  # (n, features) or (n, time, features) for sequences
    y_train: torch.Tensor  # (n, outputs) float for regression, (n,) or (n, time) long for classes
    x_test: torch.Tensor
    y_test: torch.Tensor
    task: Task
    n_in: int
    n_out: int
    baseline_loss: float | None = None  # the loss of a trivial predictor, where one is known

    @property
    def is_sequence(self) -> bool:
        return self.x_train.dim() == 3

    def to(self, device: torch.device) -> Dataset:
        return Dataset(
            self.x_train.to(device), self.y_train.to(device), self.x_test.to(device),
            self.y_test.to(device), self.task, self.n_in, self.n_out, self.baseline_loss,
        )


def load_data(cfg: DataConfig, seed: int) -> Dataset:
    """Build the dataset a config describes; file problems raise ConfigError."""
    rng = np.random.default_rng(seed)
    if cfg.kind == "teacher":
        x, y = _teacher(cfg, rng)
        return _split(x, y, "regression", cfg.test_fraction, rng)
    if cfg.kind == "blobs":
        x, y = _blobs(cfg.n_samples, cfg.n_features, cfg.n_classes, cfg.spread, rng)
        return _split(x, y, "classification", cfg.test_fraction, rng)
    if cfg.kind == "spirals":
        x, y = _spirals(cfg.n_samples, cfg.n_classes, cfg.noise, cfg.turns, rng)
        return _split(x, y, "classification", cfg.test_fraction, rng)
    if cfg.kind == "digits":
        x, y = _digits()
        return _split(x, y, "classification", cfg.test_fraction, rng)
    if cfg.kind == "file":
        x, y, task = read_table(Path(cfg.path), cfg.target, cfg.task)
        return _split(x, y, task, cfg.test_fraction, rng)
    from gradlab import sequences  # sequence tasks live in their own module

    return sequences.load_sequence_data(cfg, rng)


def _teacher(cfg, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random inputs; targets from a random tanh teacher network plus noise, or pure noise."""
    x = rng.standard_normal((cfg.n_samples, cfg.n_features))
    if cfg.targets == "noise":
        return x, rng.standard_normal((cfg.n_samples, cfg.n_outputs))
    h = x
    for _ in range(cfg.teacher_depth):
        W = rng.standard_normal((h.shape[1], cfg.teacher_width)) / np.sqrt(h.shape[1])
        h = np.tanh(h @ W)
    W = rng.standard_normal((h.shape[1], cfg.n_outputs)) / np.sqrt(h.shape[1])
    y = h @ W
    y = y / y.std(axis=0, keepdims=True)
    return x, y + cfg.noise * rng.standard_normal(y.shape)


def _blobs(n: int, d: int, k: int, spread: float, rng: np.random.Generator):
    centers = rng.standard_normal((k, d)) * 3.0
    y = rng.integers(0, k, size=n)
    x = centers[y] + spread * rng.standard_normal((n, d))
    return x, y


def _spirals(n: int, k: int, noise: float, turns: float, rng: np.random.Generator):
    y = rng.integers(0, k, size=n)
    r = rng.uniform(0.05, 1.0, size=n)
    theta = 2 * np.pi * (turns * r + y / k) + noise * rng.standard_normal(n)
    x = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)
    return x, y


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # ships with scikit-learn: no download

    bunch = load_digits()
    return bunch.data.astype(np.float64), bunch.target.astype(np.int64)


def read_table(path: Path, target: str, task: str) -> tuple[np.ndarray, np.ndarray, Task]:
    """Read a .csv (header row) or .npz file; `target` names the column or array to predict."""
    where = "data.path"
    if not path.is_file():
        raise ConfigError(str(path), [(where, f"no such file '{path}'")])
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as arrays:
                names = list(arrays.files)
                if target not in names:
                    raise ConfigError(str(path), [("data.target", _no_column(target, names, path))])
                y = np.asarray(arrays[target])
                x = np.column_stack([np.asarray(arrays[n]).reshape(len(y), -1)
                                     for n in names if n != target])
        elif path.suffix == ".csv":
            x, y = _read_csv(path, target)
        else:
            raise ConfigError(str(path), [(where, f"{path} must be a .csv or .npz file")])
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ConfigError(str(path), [(where, f"cannot read {path}: {e}")]) from None
    if not (np.issubdtype(x.dtype, np.number) and np.issubdtype(y.dtype, np.number)):
        raise ConfigError(str(path), [(where, f"{path} holds non-numeric values")])
    if len(y) < 4 or x.size == 0:
        raise ConfigError(str(path), [(where, f"{path} needs at least 4 rows and 1 feature, "
                                              f"got {x.shape}")])
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ConfigError(str(path), [(where, f"{path} holds missing or non-finite values")])
    if task == "auto":
        whole = np.all(y == np.round(y))
        task = "classification" if whole and len(np.unique(y)) <= 50 and y.ndim == 1 else "regression"
    if task == "classification":
        _, y = np.unique(y, return_inverse=True)
    return x.astype(np.float64), y, task  # type: ignore[return-value]


def _read_csv(path: Path, target: str) -> tuple[np.ndarray, np.ndarray]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError("the file is empty")
    header, body = [h.strip() for h in rows[0]], [r for r in rows[1:] if r]
    if target not in header:
        raise ConfigError(str(path), [("data.target", _no_column(target, header, path))])
    ragged = next((i for i, r in enumerate(body) if len(r) != len(header)), None)
    if ragged is not None:
        raise ConfigError(str(path), [("data.path", f"{path}: data row {ragged + 1} has "
                                       f"{len(body[ragged])} values for {len(header)} columns")])
    try:
        table = np.array([[float(v) for v in r] for r in body], dtype=np.float64)
    except ValueError as e:
        raise ConfigError(str(path), [("data.path", f"{path} holds non-numeric values ({e})")]) \
            from None
    col = header.index(target)
    return np.delete(table, col, axis=1), table[:, col]


def _no_column(target: str, names: list[str], path: Path) -> str:
    return f"no column named '{target}' in {path}; columns: {', '.join(names)}"


def _split(x: np.ndarray, y: np.ndarray, task: Task, test_fraction: float,
           rng: np.random.Generator) -> Dataset:
    """Shuffle, split train/test, and standardise with the training statistics."""
    n = len(x)
    order = rng.permutation(n)
    n_test = max(1, round(n * test_fraction))
    test, train = order[:n_test], order[n_test:]
    mean, std = x[train].mean(axis=0), x[train].std(axis=0)
    std[std == 0] = 1.0
    x = (x - mean) / std
    if task == "regression":
        y = y.reshape(n, -1).astype(np.float64)
        y = (y - y[train].mean(axis=0)) / np.where(y[train].std(axis=0) == 0, 1, y[train].std(axis=0))
        y_t = torch.tensor(y, dtype=torch.float32)
        n_out = y.shape[1]
    else:
        y_t = torch.tensor(y, dtype=torch.long)
        n_out = int(y.max()) + 1
    x_t = torch.tensor(x, dtype=torch.float32)
    return Dataset(x_t[train], y_t[train], x_t[test], y_t[test], task, x.shape[1], n_out)

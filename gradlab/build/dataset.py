"""The `Dataset` every task becomes, and the one train/test split all tasks share.

`split(x, y, ...)` shuffles with the run's generator, holds out `test_fraction` (the rule in
`config.checks.test_size`) and standardises with the training split's statistics only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch

from gradlab.config.checks import test_size

Task = Literal["regression", "classification"]
# How inputs are standardised: a table's columns in float64 (and regression targets), each
# (time step, feature) of a sequence in float32, or not at all (synthetic sequence tasks).
Standardise = Literal["table", "sequence", "none"]


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
        return replace(self, x_train=self.x_train.to(device), y_train=self.y_train.to(device),
                       x_test=self.x_test.to(device), y_test=self.y_test.to(device))


def split(x: np.ndarray, y: np.ndarray, task: Task, test_fraction: float,
          rng: np.random.Generator, standardise: Standardise = "table",
          n_out: int | None = None, given_test: int | None = None) -> Dataset:
    """Shuffle, hold out the test split, standardise with the training statistics.

    With `given_test`, the last `given_test` rows are the test split as given (a file's own),
    the others the training split, and nothing is shuffled."""
    n = len(x)
    if given_test is not None:
        test, train = np.arange(n - given_test, n), np.arange(n - given_test)
    else:
        order = rng.permutation(n)
        n_test = test_size(n, test_fraction)
        test, train = order[:n_test], order[n_test:]
    if standardise == "table":
        x, y = _standardise_table(x, y, task, train)
    x_t = torch.tensor(x, dtype=torch.float32)
    y_t = torch.tensor(y, dtype=torch.float32 if task == "regression" else torch.long)
    if n_out is None:
        n_out = int(y_t.shape[1]) if task == "regression" else int(y.max()) + 1
    data = Dataset(x_t[train], y_t[train], x_t[test], y_t[test], task, x.shape[-1], n_out)
    return _standardise_sequence(data) if standardise == "sequence" else data


def _standardise_table(x: np.ndarray, y: np.ndarray, task: Task,
                       train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Columns to zero mean and unit variance (float64); regression targets as well."""
    mean, std = x[train].mean(axis=0), x[train].std(axis=0)
    std[std == 0] = 1.0
    x = (x - mean) / std
    if task == "regression":
        y = y.reshape(len(x), -1).astype(np.float64)
        y_std = y[train].std(axis=0)
        y = (y - y[train].mean(axis=0)) / np.where(y_std == 0, 1, y_std)
    return x, y


def _standardise_sequence(data: Dataset) -> Dataset:
    """Scale each (time step, feature) by the training split's mean and std (float32)."""
    mean, std = data.x_train.mean(dim=0), data.x_train.std(dim=0)
    std = torch.where(std == 0, torch.ones_like(std), std)
    return replace(data, x_train=(data.x_train - mean) / std, x_test=(data.x_test - mean) / std)

"""Datasets from files the user names: a .csv with a header row, or an .npz of arrays.

`read_table(path, target, task)` returns `(x, y, task)`; every problem with the file is a
`ConfigError` at `data.path` or `data.target`. Arrays are read with `allow_pickle=False`.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from gradlab.build.dataset import Task
from gradlab.config import ConfigError


def read_table(path: Path, target: str, task: str, where: str = "data.path",
               encode: bool = True) -> tuple[np.ndarray, np.ndarray, Task]:
    """Read a .csv (header row) or .npz file; `target` names the column or array to predict.

    For classification the labels become 0..k-1 (unless not `encode`: a test file's labels are
    encoded together with the training file's, by `encode_classes`)."""
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
    if task == "classification" and encode:
        _, y = np.unique(y, return_inverse=True)
    return x.astype(np.float64), y, task  # type: ignore[return-value]


def encode_classes(*labels: np.ndarray) -> list[np.ndarray]:
    """Labels of several files as 0..k-1 over the classes any of them has."""
    _, codes = np.unique(np.concatenate(labels), return_inverse=True)
    return np.split(codes, np.cumsum([len(y) for y in labels])[:-1])


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

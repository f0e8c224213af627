"""Datasets from files the user names: a .csv with a header row, or an .npz of arrays.

`read_table(path, target, task)` returns `(x, y, task)`; every problem with the file is a
`ConfigError` at `data.path` or `data.target`. Arrays are read with `allow_pickle=False`.
"""

from __future__ import annotations

import csv
import math
import re
import zipfile
from pathlib import Path

import numpy as np

from gradlab.build.dataset import Task
from gradlab.config import ConfigError
from gradlab.config.checks import not_a_file


def read_table(path: Path, target: str, task: str, where: str = "data.path",
               encode: bool = True) -> tuple[np.ndarray, np.ndarray, Task]:
    """Read a .csv (header row) or .npz file; `target` names the column or array to predict.

    For classification the labels become 0..k-1 (unless not `encode`: a test file's labels are
    encoded together with the training file's, by `encode_classes`)."""
    if why := not_a_file(path):
        raise ConfigError(str(path), [(where, why)])
    try:
        if path.suffix == ".npz":
            x, y = _read_npz(path, target, where)
        elif path.suffix == ".csv":
            x, y = _read_csv(path, target, where)
        else:
            raise ConfigError(str(path), [(where, f"{path} must be a .csv or .npz file")])
    except (OSError, ValueError, UnicodeDecodeError, csv.Error, EOFError, zipfile.BadZipFile,
            MemoryError) as e:
        # the error's class, not its text: the text can quote the file's content
        raise ConfigError(str(path), [(where, f"cannot read {path} as a "
                                              f"{path.suffix[1:]} file ({type(e).__name__})")]) \
            from None
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


MAX_FIELD = 1 << 16  # characters in one CSV cell: far beyond any number
MAX_PROBLEMS = 10  # a CSV's ragged rows and non-numeric cells reported at once


def _read_npz(path: Path, target: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """The target array and every other array as feature columns. Each array's leading
    dimension must be the target's: folding mismatched arrays together would pair examples
    with the wrong targets."""
    _check_npz_sizes(path)
    with np.load(path, allow_pickle=False) as arrays:
        names = list(arrays.files)
        if target not in names:
            raise ConfigError(str(path), [("data.target", _no_column(target, names, path))])
        y = np.asarray(arrays[target])
        if y.ndim == 0:
            raise ConfigError(str(path), [(where, f"{path}: '{target}' is a single number, "
                                                  "not one target per example")])
        features = []
        for n in names:
            if n == target:
                continue
            a = np.asarray(arrays[n])
            if a.ndim == 0 or a.shape[0] != y.shape[0]:
                raise ConfigError(str(path), [(where, f"{path}: array '{n}' has shape "
                                                      f"{a.shape} but '{target}' has {y.shape}: "
                                                      "their first dimensions (examples) must "
                                                      "match")])
            features.append(a.reshape(len(y), -1))
    if not features:
        raise ConfigError(str(path), [(where, f"{path} holds no array besides '{target}'")])
    return np.column_stack(features), y


def _read_csv(path: Path, target: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    csv.field_size_limit(MAX_FIELD)
    with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: a BOM is not a column name
        rows = list(csv.reader(f))
    if not rows:
        raise ConfigError(str(path), [(where, f"{path} is empty")])
    header, body = [h.strip() for h in rows[0]], [r for r in rows[1:] if r]
    if target not in header:
        raise ConfigError(str(path), [("data.target", _no_column(target, header, path))])
    if not body:
        raise ConfigError(str(path), [(where, f"{path} has a header row but no data rows")])
    table = np.empty((len(body), len(header)))
    problems: list[tuple[int, str]] = []  # (data row, problem): ragged rows, non-numeric cells
    for i, r in enumerate(body, 1):
        if len(r) != len(header):
            problems.append((i, f"data row {i} has {len(r)} values for {len(header)} columns"))
            continue
        for j, v in enumerate(r):
            try:
                table[i - 1, j] = float(v)
            except ValueError:  # name the place, never the content
                problems.append((i, f"column '{header[j]}' holds a non-numeric value in data "
                                    f"row {i}"))
        if len(problems) > MAX_PROBLEMS:
            break
    if problems:  # all at once, in file order, up to MAX_PROBLEMS
        shown = [(where, f"{path}: {p}") for _, p in problems[:MAX_PROBLEMS]]
        if len(problems) > MAX_PROBLEMS:
            shown.append((where, f"{path}: more problems from data row "
                                 f"{problems[MAX_PROBLEMS][0]} on (the first {MAX_PROBLEMS} "
                                 "are shown)"))
        raise ConfigError(str(path), shown)
    col = header.index(target)
    return np.delete(table, col, axis=1), table[:, col]


PLAIN_NAME = re.compile(r"^[\w .\-()\[\]]{1,40}$")


def _no_column(target: str, names: list[str], path: Path) -> str:
    """Name the columns there are, if they look like column names: a file that is not a table
    (a system file behind a symlink, say) must not have its first line echoed."""
    if names and all(PLAIN_NAME.match(n) for n in names) and len(names) <= 50:
        return f"no column named '{target}' in {path}; columns: {', '.join(names)}"
    return (f"no column named '{target}' in {path}; its header has {len(names)} fields that do "
            "not look like column names (not shown)")


def _check_npz_sizes(path: Path) -> None:
    """Refuse an .npz whose array headers claim more data than the file holds, before numpy
    allocates what a forged header asks for."""
    with zipfile.ZipFile(path) as z:
        for member in z.infolist():
            with z.open(member) as f:
                major, _ = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if major == 1
                               else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read_header(f)
            claimed = math.prod(shape) * dtype.itemsize
            if claimed > member.file_size:
                raise ConfigError(str(path), [("data.path", f"{path}: array "
                                               f"'{member.filename.removesuffix('.npy')}' claims "
                                               f"shape {shape} ({claimed} bytes) but holds "
                                               f"{member.file_size} bytes")])

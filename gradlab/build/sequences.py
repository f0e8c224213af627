"""Sequence tasks: the adding problem, delayed recall (copy), and digits read row by row.

Each returns numpy arrays with x of shape (n, time, features); `data.load_data` splits
them and attaches the baseline a memoryless predictor scores.
"""

from __future__ import annotations

import numpy as np

from gradlab.build.tabular import digit_images


def adding_problem(n: int, length: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The adding problem (Hochreiter & Schmidhuber 1997, as in Le et al. 2015).

    Channel 0 holds values drawn from U(0, 1), channel 1 marks two of them: one in the first
    half of the sequence and one in the second. The target is the sum of the marked values.
    """
    values = rng.uniform(0.0, 1.0, size=(n, length))
    half = length // 2
    first = rng.integers(0, half, size=n)
    second = rng.integers(half, length, size=n)
    markers = np.zeros((n, length))
    rows = np.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    x = np.stack([values, markers], axis=2)  # (n, time, 2)
    y = (values[rows, first] + values[rows, second])[:, None]  # (n, 1)
    return x, y


def copy_task(n: int, length: int, n_symbols: int, n_recall: int,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Delayed recall: see `n_recall` symbols, wait `length` steps, then reproduce them.

    The sequence has n_recall + length + n_recall steps. Inputs are one-hot over the symbols
    plus a blank and a go marker (on the last waiting step); targets are class 0 (blank)
    except in the last n_recall steps, which hold the symbols (classes 1..n_symbols). Each
    symbol is recalled `length + n_recall` steps after it was seen.
    """
    total = n_recall + length + n_recall
    blank, go = n_symbols, n_symbols + 1
    symbols = rng.integers(0, n_symbols, size=(n, n_recall))
    tokens = np.full((n, total), blank)
    tokens[:, :n_recall] = symbols
    tokens[:, n_recall + length - 1] = go
    x = np.eye(n_symbols + 2)[tokens]  # (n, time, n_symbols + 2)
    y = np.zeros((n, total), dtype=np.int64)  # (n, time)
    y[:, -n_recall:] = symbols + 1
    return x, y


def digits_rows() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8×8 digits read row by row: 8 time steps of 8 pixels, (1797, 8, 8)."""
    return digit_images()

"""Tabular tasks made on the spot: a teacher network's regression, blobs, spirals, and digits.

Each returns numpy arrays `(x, y)`; `data.load_data` splits them. Nothing is downloaded:
the digits ship with scikit-learn.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

from gradlab.config.schema import DIGITS_SAMPLES, TeacherData


def teacher(cfg: TeacherData, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
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


def blobs(n: int, d: int, k: int, spread: float,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """k Gaussian clusters in d dimensions, centres three standard deviations apart."""
    centers = rng.standard_normal((k, d)) * 3.0
    y = rng.integers(0, k, size=n)
    x = centers[y] + spread * rng.standard_normal((n, d))
    return x, y


def spirals(n: int, k: int, noise: float, turns: float,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """k interleaved spiral arms in the plane."""
    y = rng.integers(0, k, size=n)
    r = rng.uniform(0.05, 1.0, size=n)
    theta = 2 * np.pi * (turns * r + y / k) + noise * rng.standard_normal(n)
    x = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)
    return x, y


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8×8 digits as 64 pixels per image: (1797, 64) and labels 0–9."""
    images, labels = digit_images()
    return images.reshape(len(images), -1), labels


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """The digits as images (1797, 8, 8), float64, and their labels."""
    table = _digits_table()
    if table is None:  # not where scikit-learn keeps it: through its loader
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.images.astype(np.float64), bunch.target.astype(np.int64)
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)


def _digits_table() -> np.ndarray | None:
    """scikit-learn's `datasets/data/digits.csv.gz` (64 pixels, then the label, per row), read
    without importing scikit-learn: `load_digits` reads the same file, after about 0.9 CPU-s of
    imports (0.1 s this way), which every run on the digits paid before its first step. None
    where the file is not there or not as expected (the caller then uses `load_digits`)."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without running it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    try:
        with gzip.open(path, "rt", encoding="ascii") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float64)
    except (OSError, ValueError, EOFError):
        return None
    return table if table.shape == (DIGITS_SAMPLES, 65) else None

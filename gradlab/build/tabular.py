"""Tabular tasks made on the spot: a teacher network's regression, blobs, spirals, and digits.

Each returns numpy arrays `(x, y)`; `data.load_data` splits them. Nothing is downloaded:
the digits ship with scikit-learn.
"""

from __future__ import annotations

import numpy as np

from gradlab.config.schema import TeacherData


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
    # ships with scikit-learn: no download; imported here, as a second of start-up is not worth
    # it for the runs that do not use it
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float64), bunch.target.astype(np.int64)

"""Training data: inputs and labels of a run (free features have none)."""

from __future__ import annotations

import math

import numpy as np

from pipeline.config import TrainSpec


def make_data(spec: TrainSpec, C: int, seed: int) -> tuple[np.ndarray | None, np.ndarray]:
    """Inputs X (N, input) (None for UFM) and labels y (N,), ``samples_per_class`` per class."""
    n = spec.samples_per_class
    y = np.repeat(np.arange(C), n)  # (N,)
    if spec.model == "ufm":
        return None, y
    rng = np.random.default_rng(seed)
    if spec.data == "gaussian":
        centres = rng.standard_normal((C, spec.input_dim))  # (C, D_in)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        X = centres[y] + spec.noise * rng.standard_normal((C * n, spec.input_dim)) / math.sqrt(spec.input_dim)
        return X.astype(np.float32), y
    from sklearn.datasets import load_digits

    digits = load_digits()
    if C > 10:
        raise ValueError(f"digits has 10 classes; the grid point needs {C}")
    X = np.concatenate([rng.permutation(digits.data[digits.target == c])[:n] for c in range(C)]) / 16.0
    return X.astype(np.float32), y

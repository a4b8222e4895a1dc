"""Wire the sweep: pending batches -> dask tasks (compute + region write) -> progress.

At most a bounded window of tasks is in flight; completed batches are never resubmitted.
"""

from __future__ import annotations

import errno
import functools
import itertools
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from distributed import Client, Future, wait

from pipeline.errors import SweepStoppedError
from pipeline.sweep.cluster import call_stacks, idle_holders, restart_workers
from pipeline.sweep.config import SweepConfig
from pipeline.sweep.faults import hang_point, kill_point, no_space_point
from pipeline.sweep.grid import Batch, Grid, kinds
from pipeline.sweep.progress import Progress
from pipeline.sweep.results import FAILED, point_status, status_name
from pipeline.sweep.store import (
    batch_done,
    now_utc,
    provenance,
    read_attrs,
    read_batch,
    read_done,
    update_attrs,
    write_batch,
    writer_id,
)
from pipeline.sweep.tasks import run_batch
from pipeline.theory.losses import install_losses
from pipeline.theory.objective import expectation_terms

TASK_LOG_ENV = "CLPHASE_TASK_LOG"  # file to which every computed batch appends its key (tests)
DELAY_ENV = "CLPHASE_BATCH_DELAY_S"  # extra seconds per batch, to interrupt sweeps mid-run (tests)
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)  # no space left on the device, disk quota exceeded


def compute_and_write(config: SweepConfig, batch: Batch, path: str, only_failed: bool = False) -> dict:
    """The task: compute one batch, write its chunk and then its done mask; report timings.

    ``only_failed`` recomputes just the batch's points with a failed status and keeps the others.
    """
    start = time.perf_counter()
    install_losses(config.losses)  # a worker knows the client's registered losses from the config alone
    only = None
    if only_failed:
        existing = read_batch(path, batch)
        only = np.isin(point_status(existing[status_name(batch.kind, config.grid.profile)], len(batch.shape)), FAILED)
    arrays = run_batch(config, batch, only)
    if only is not None:
        for name, values in arrays.items():
            values[~only] = existing[name][~only]
    compute_s = time.perf_counter() - start
    hang_point(batch.key)
    time.sleep(float(os.environ.get(DELAY_ENV, "0")))
    log = os.environ.get(TASK_LOG_ENV)
    if log:  # before the write: a worker killed after its write but before a later log line would hide a done batch
        with open(log, "a") as f:
            f.write(f"{batch.key} {batch.n_points if only is None else int(only.sum())}\n")
    try:
        no_space_point(path)
        write_batch(path, batch, arrays, between=lambda: kill_point("write", kill_parent=True))
    except OSError as err:  # a full disk: stop the sweep with one line (retrying cannot help)
        if err.errno not in NO_SPACE:
            raise
        return {"key": batch.key, "batch": batch, "kind": batch.kind, "no_space": os.strerror(err.errno)}
    status = point_status(arrays[status_name(batch.kind, config.grid.profile)], len(batch.shape))
    return {
        "key": batch.key,
        "batch": batch,
        "kind": batch.kind,
        "points": batch.n_points,
        "compute_s": compute_s,
        "point_s": float(arrays["time_theory"].sum()) if "time_theory" in arrays else compute_s,
        "failed": int(np.isin(status, FAILED).sum()),
        "writer": writer_id(),
        "provenance": provenance(),
    }


def pending_batches(config: SweepConfig, path: str, fresh: bool = False) -> dict[str, list[Batch]]:
    """Batches whose done mask is not set, per kind (every batch of a ``fresh`` store, whose masks are not
    read: a 10^6-point grid has 10^5 mask chunks, none written yet)."""
    grid = Grid(config)
    out = {}
    for kind in kinds(config):
        if fresh:
            out[kind] = list(grid.batches(kind))
        else:
            done = read_done(path, kind)
            out[kind] = [b for b in grid.batches(kind) if not batch_done(done, b)]
        # longest first, so the last tasks are short and no worker idles through a long tail
        out[kind].sort(key=lambda b: -_cost(grid, b))
    return out


def _cost(grid: Grid, batch: Batch) -> float:
    """Relative cost of a batch: points times the mean terms of the expectation per point (the
    count vectors of a two-group anchor, or the transform's nodes once those are fewer)."""
    k = grid.values(batch).get("k", np.array([1]))
    return batch.n_points * float(np.mean([_terms(float(x)) for x in k]))


@functools.cache
def _terms(k: float) -> float:
    return expectation_terms(k, 3)


@dataclass
class Summary:
    batches: int = 0
    points: int = 0
    work: Counter[str] = field(default_factory=Counter)  # per kind: points computed (selected runs for train)
    failed_points: int = 0
    failed_batches: list[str] = field(default_factory=list)
    compute_s: float = 0.0
    point_s: float = 0.0
    wall_s: float = 0.0


def run_sweep(
    config: SweepConfig,
    path: str,
    client: Client,
    window: int | None = None,
    on_result: Callable[[dict], None] | None = None,
    retry: list[Batch] | None = None,
    pending: dict[str, list[Batch]] | None = None,
) -> Summary:
    """Run every pending batch of the store at ``path`` on ``client``.

    Parameters
    ----------
    retry : list of Batch, optional
        Done batches whose failed points are recomputed (``--retry-failed``).
    pending : dict, optional
        Pending batches per kind, when the caller has read them already.
    window : int, optional
        Most tasks in flight at once (default: twice the cluster's threads, at least 4).
    on_result : callable, optional
        Called with each finished task's report.
    """
    start = time.perf_counter()
    pending = pending_batches(config, path) if pending is None else pending
    retry = retry or []
    ordered = [pending[kind] for kind in ("threshold", "theory", "train") if kind in pending]
    todo: Iterator[tuple[Batch, bool]] = itertools.chain(
        ((b, True) for b in retry), ((b, False) for batches in ordered for b in batches)
    )
    grid = Grid(config)
    totals = {kind: sum(grid.work(b) for b in pending.get(kind, []) + [r for r in retry if r.kind == kind])
              for kind in ("theory", "threshold", "train")}  # fmt: skip
    threads = sum(client.nthreads().values()) or 1
    window = window or max(4, 2 * threads)
    progress = Progress(totals)
    summary = Summary()

    # training goes to GPU workers when the cluster has any (dask resource GPU=1 per GPU worker)
    has_gpu = any("GPU" in (w.get("resources") or {}) for w in client.scheduler_info()["workers"].values())
    science_hash = config.science_hash()

    def submit(item: tuple[Batch, bool]):
        batch, only_failed = item
        resources = {"GPU": 1} if batch.kind == "train" and has_gpu else None
        key = f"{batch.key}-{'retry-' if only_failed else ''}{science_hash}"
        return client.submit(compute_and_write, config, batch, path, only_failed, key=key, pure=False, retries=2,
                             resources=resources)  # fmt: skip

    writers = json.loads((read_attrs(path) or {}).get("writers", "{}"))  # writer id -> provenance
    stall_s = config.cluster.stall_timeout_s
    stalls: Counter[str] = Counter()
    in_flight = {submit(item) for item in itertools.islice(todo, window)}

    def drop(future: Future) -> None:
        """Forget a finished or given-up batch and submit the next pending one."""
        in_flight.discard(future)
        future.release()
        nxt = next(todo, None)
        if nxt is not None:
            in_flight.add(submit(nxt))

    try:
        while in_flight:
            try:
                done = wait(in_flight, timeout=stall_s, return_when="FIRST_COMPLETED").done
            except TimeoutError:
                for future in unstick(client, in_flight, stall_s, stalls, config.cluster.stall_retries):  # given up
                    summary.failed_batches.append(future.key)
                    drop(future)
                continue
            for future in done:
                if future.status == "error":
                    summary.failed_batches.append(future.key)
                else:
                    report = future.result()
                    if "no_space" in report:
                        client.cancel(list(in_flight))  # their writes would fail too
                        raise SweepStoppedError(
                            f"store {path!r}: {report['no_space'].lower()} while writing {report['kind']} batch "
                            f"{report['batch'].index}; every completed batch is kept: free space, then rerun the "
                            "same command to resume"
                        )
                    if str(report["writer"]) not in writers:  # a version of the code new to this store
                        writers[str(report["writer"])] = report["provenance"]
                        set_attrs(path, "the code versions that wrote it", writers=json.dumps(writers, sort_keys=True))
                    summary.batches += 1
                    summary.points += report["points"]
                    summary.failed_points += report["failed"]
                    summary.compute_s += report["compute_s"]
                    summary.point_s += report["point_s"]
                    work = grid.work(report["batch"])
                    summary.work[report["kind"]] += work
                    progress.update(report["kind"], work)
                    if on_result:
                        on_result(report)
                    kill_point("sweep")
                drop(future)
    except BaseException:
        in_flight.clear()
        raise
    finally:
        progress.close()
    summary.wall_s = time.perf_counter() - start
    done_all = not any(pending_batches(config, path).values())
    kill_point("finalize")
    stamp = now_utc()  # the format of created_at
    set_attrs(path, "its attributes (every batch is written)", updated_at=stamp,
              **({"completed_at": stamp} if done_all else {}))  # fmt: skip
    return summary


def set_attrs(path: str, what: str, **attrs) -> None:
    """Update the store's attributes; a full disk stops the sweep with one line (SweepStoppedError)."""
    try:
        update_attrs(path, **attrs)
    except OSError as err:
        if err.errno not in NO_SPACE:
            raise
        raise SweepStoppedError(f"store {path!r}: {os.strerror(err.errno).lower()} while writing {what}; every "
                                "completed batch is kept: free space, then rerun the same command") from None


def unstick(client: Client, in_flight: set[Future], stall_s: float, stalls: Counter[str], retries: int) -> list[Future]:
    """No batch finished for ``stall_s`` seconds: restart the idle workers holding in-flight batches.

    A deadlocked task (a lock that is never released, a hung file system call) keeps its batch in
    flight forever without using its worker; dask reruns the batches of a restarted worker. Busy
    workers are left alone: a long batch is not a stalled one. A batch that was executing at more
    than ``retries`` stalls (``cluster.stall_retries``) is cancelled (before the restart, so that dask does not
    rerun it) and returned, to be counted as failed.
    """
    keys = {str(f.key): f for f in in_flight}
    holders = idle_holders(client, set(keys))
    held = [key for mine in holders.values() for key in mine]
    if not held:
        print(f"no batch finished in {stall_s:.0f} s; {len(keys)} in flight on busy or pending workers: waiting",
              file=sys.stderr)  # fmt: skip
        return []
    stacks = call_stacks(client, held)
    executing = held if stacks is None else [key for key in held if key in stacks]  # not those queued behind
    for key in executing:
        stalls[key] += 1
        frames = "".join((stacks or {}).get(key, ["(stack unavailable)\n"]))
        verdict = "given up" if stalls[key] > retries else "rerun"
        print(f"stalled batch {key} (stall {stalls[key]}: {verdict}), innermost frames:\n{frames}", file=sys.stderr)
    given_up = [keys[key] for key in executing if stalls[key] > retries and keys[key].status != "finished"]
    for future in given_up:
        future.cancel()
    print(f"no batch finished in {stall_s:.0f} s: restarting idle workers {', '.join(holders)}", file=sys.stderr)
    outcome = restart_workers(client, list(holders))
    for address, result in outcome.items():
        if result != "OK":
            print(f"worker {address} not restarted: {result}", file=sys.stderr)
    return given_up

"""Compute one batch of points: pure dispatch to the theory solvers; no dask, no I/O."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import replace

import numpy as np

from pipeline.metrics import gram_distance
from pipeline.sweep.config import SweepConfig
from pipeline.sweep.faults import failing_solver
from pipeline.sweep.grid import Batch, Grid, store_variables
from pipeline.sweep.results import STATUS_CODE, fill_value, stored_status
from pipeline.theory.cascade import cascade, distinct_directions
from pipeline.theory.dispatch import solve
from pipeline.theory.losses import parse_loss
from pipeline.theory.objective import class_objective
from pipeline.theory.problem import Problem
from pipeline.theory.profiles import SCAN_AXIS, Counts
from pipeline.theory.sdp import full_program_fits
from pipeline.theory.solution import class_means
from pipeline.theory.threshold import minority_threshold


def _empty(grid: Grid, kind: str, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Fill values for every variable of a kind over a batch (its extra dims taken whole)."""
    out = {}
    sizes = grid.coords()
    for name, var in store_variables(grid.config).items():
        if var.kind != kind:
            continue
        full_shape = (*shape, *(len(sizes[d]) for d in var.extra))
        out[name] = np.full(full_shape, fill_value(var.dtype), dtype=var.dtype)
    return out


def tail_cosine(problem: Problem, G: np.ndarray) -> float:
    """The cosine between the two smallest classes of a profile."""
    i, j = np.argsort(problem.p, kind="stable")[:2]
    return float(G[i, j])


def point_problem(config: SweepConfig, point: dict) -> Problem:
    """The theory problem at a grid point: its profile, k and the sweep's conventions."""
    theory = config.theory
    profile = config.grid.profile_at(point)
    return Problem.from_profile(point["loss"], profile, point["k"], theory.negatives, theory.reduction,
                                remedy=point.get("remedy"))  # a store without a remedy dim: none


def solve_with_fallback(problem: Problem, solver: str):
    """Solve with the configured solver; if it raises, with the other exact route (full <-> symmetric).

    Returns the solution and whether the fallback produced it.
    """
    injected = failing_solver()
    try:
        if injected and injected in (solver, "all", "symmetric" if solver == "auto" else solver):
            raise RuntimeError(f"injected failure of solver {injected!r}")
        return solve(problem, solver), False
    except Exception:
        fallback = "symmetric" if solver == "full" else "full"
        if injected in (fallback, "all"):
            raise
        if fallback == "full" and not full_program_fits(problem):
            raise  # the fallback program would not fit
        return solve(problem, fallback), True


def grid_points(grid: Grid, batch: Batch, only: np.ndarray | None) -> Iterator[tuple[tuple[int, ...], dict]]:
    """(index in the batch, {dim: coordinate value}) for every point of a batch, or those in ``only``."""
    values = grid.values(batch)
    dims = grid.dims(batch.kind)
    for idx in np.ndindex(*batch.shape):
        if only is None or only[idx]:
            yield idx, {d: values[d][i].item() for d, i in zip(dims, idx, strict=True)}


def run_theory_batch(config: SweepConfig, batch: Batch, only: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Solve every theory point of a batch (or those in ``only``); a failing point gets status ``error``."""
    grid = Grid(config)
    out = _empty(grid, "theory", batch.shape)
    theory = config.theory
    for idx, pt in grid_points(grid, batch, only):
        start = time.perf_counter()
        try:
            problem = point_problem(config, pt)
            solution, used_fallback = solve_with_fallback(problem, theory.solver)
            if grid.profile != "step":
                directions = distinct_directions(problem, solution.G) if problem.loss.smooth else None
        except Exception:
            out["status_theory"][idx] = STATUS_CODE["error"]
            out["time_theory"][idx] = time.perf_counter() - start
            continue
        C = problem.C
        out["gram_theory"][(*idx, slice(0, C), slice(0, C))] = solution.G
        out["objective_theory"][idx] = solution.objective
        if grid.profile == "step":
            out["cos_major_theory"][idx] = solution.a
            out["cos_cross_theory"][idx] = solution.b
            out["cos_minor_theory"][idx] = solution.c
            out["criterion_theory"][idx] = solution.criterion
            out["collapsed_theory"][idx] = np.nan if solution.collapsed is None else float(solution.collapsed)
        else:
            out["cos_tail_theory"][idx] = tail_cosine(problem, solution.G)
            decided = directions is not None and directions.decided
            out["directions_theory"][idx] = directions.count if decided else np.nan
        out["gap_theory"][idx] = solution.gap
        for i, dim in enumerate(theory.rank_dims):
            _rank_point(out, (*idx, i), problem, solution, dim, grid.profile == "step")
        out["status_theory"][idx] = STATUS_CODE[solution.status]
        out["time_theory"][idx] = time.perf_counter() - start
        out["fallback_theory"][idx] = int(used_fallback)
    return out


def _rank_point(out: dict[str, np.ndarray], idx: tuple[int, ...], problem: Problem, convex, dim: int,
                step: bool) -> None:  # fmt: skip
    """The rank-d optimum beside the convex one (``convex``, a Solution): from the convex optimum's top-d
    eigenvectors and seeded restarts, with its lower bound and stationarity; the convex optimum at d >= C.
    A failing rank solve is data (status error), not the point's failure."""
    from pipeline.theory.rank import beside_convex

    C = problem.C
    try:
        solution = beside_convex(problem, convex, dim)
    except Exception:
        out["status_rank_theory"][idx] = STATUS_CODE["error"]
        return
    out["objective_rank_theory"][idx] = solution.objective
    out["gap_rank_theory"][idx] = solution.gap
    out["gram_rank_theory"][(*idx, slice(0, C), slice(0, C))] = solution.G
    if step:
        out["cos_minor_rank_theory"][idx] = solution.c
    else:
        out["cos_tail_rank_theory"][idx] = tail_cosine(problem, solution.G)
    stationarity = solution.extra.get("stationarity")
    if stationarity is None:
        out["second_order_rank_theory"][idx] = -1
    else:
        out["gradient_rank_theory"][idx] = stationarity.gradient
        out["hessian_min_rank_theory"][idx] = stationarity.hessian_min
        out["hessian_max_rank_theory"][idx] = stationarity.hessian_max
        out["second_order_rank_theory"][idx] = int(stationarity.second_order)
    out["status_rank_theory"][idx] = STATUS_CODE[solution.status]


def run_threshold_batch(config: SweepConfig, batch: Batch, only: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """R* for every k of one (loss, n_major, n_minor), or the cascade onsets rho*_m for every k of
    one (loss, C); NaN and ``not_applicable`` where undefined."""
    grid = Grid(config)
    out = _empty(grid, "threshold", batch.shape)
    theory = config.theory
    if grid.profile == "exp":
        return _onsets(config, grid, batch, only, out)
    for idx, pt in grid_points(grid, batch, only):
        loss, n_major, n_minor, k = pt["loss"], pt["n_major"], pt["n_minor"], pt["k"]
        if n_minor < 2 or loss.startswith("triplet"):
            out["status_threshold"][idx] = STATUS_CODE["not_applicable"]
            continue
        try:
            result = minority_threshold(loss, n_major, n_minor, k, theory.negatives, theory.reduction,
                                        remedy=pt.get("remedy"))  # fmt: skip
        except Exception:
            out["status_threshold"][idx] = STATUS_CODE["error"]
            continue
        out["R_threshold"][idx] = result.R_star
        out["criterion_limit"][idx] = result.criterion_limit if math.isfinite(result.criterion_limit) else -np.inf
        out["criterion_limit_error"][idx] = result.criterion_limit_error
        # beyond: under a remedy, apart up to the scan's largest R and undecided past it (R* stored as inf)
        out["status_threshold"][idx] = stored_status(result.status)
    return out


def _onsets(config: SweepConfig, grid: Grid, batch: Batch, only, out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The cascade onsets of exp(C, rho) per (loss, C, k): one value per m along the onset dim."""
    theory = config.theory
    m_values = grid.coords()["onset"]
    for idx, pt in grid_points(grid, batch, only):
        status = out["status_onset"][idx]  # (n_onset,) view
        status[:] = STATUS_CODE["not_applicable"]  # m >= C (padding), or a loss without the criterion
        if not parse_loss(pt["loss"]).smooth:
            continue
        try:
            result = cascade(pt["loss"], pt["C"], pt["k"], theory.negatives, theory.reduction, remedy=pt.get("remedy"))
        except Exception:
            status[:] = STATUS_CODE["error"]
            continue
        for found in result.onsets:
            j = int(np.flatnonzero(m_values == found.m)[0])
            out["rho_onset"][(*idx, j)] = found.rho_star
            out["rho_apart_onset"][(*idx, j)] = found.apart_below
            status[j] = stored_status(found.status)
    return out


def _selected(config: SweepConfig, point: dict) -> bool:
    # load_config maps every train.select value to the grid's own coordinate value
    return all(point[axis] in values for axis, values in config.train.select.items())


def subsampled_problem(config: SweepConfig, point: dict) -> tuple[Problem, np.ndarray]:
    """The i.i.d. theory point an in-batch run is compared with, and its training counts (C,): the profile's
    integer counts at train.n_max, whose proportions (not the profile's) are the run's p; k the grid's.
    What the batch itself estimates differs from it by the anchor weights of docs/inbatch.md."""
    profile = config.grid.profile_at(point)
    counts = profile.integer_counts(config.train.n_max)  # (C,)
    n_major = point_problem(config, point).n_major
    problem = Problem.create(point["loss"], counts / counts.sum(), point["k"], config.theory.negatives,
                             config.theory.reduction, n_major, profile=Counts(tuple(counts.tolist())),
                             remedy=point.get("remedy"))  # fmt: skip
    return problem, counts


def batch_runs(config: SweepConfig, batch: Batch, only: np.ndarray | None = None):
    """The selected training runs of a batch: (runs, [(index, point)], {R: problem}), each problem the
    theory point its runs estimate (for in-batch runs, at the subsampled dataset's proportions)."""
    from pipeline.train.trainer import Run

    theory = config.theory
    scan = SCAN_AXIS[config.grid.profile]
    subsampled = config.train.negatives_from == "batch"
    runs, where, problems = [], [], {}
    for idx, point in grid_points(Grid(config), batch, only):
        if not _selected(config, point):
            continue
        counts = None
        if subsampled:
            problem, counts = subsampled_problem(config, point)
        else:
            problem = point_problem(config, point)
        problems[point[scan]] = problem
        runs.append(Run(problem.loss, problem.p, problem.n_major, problem.k, point["dim"], point["seed"],
                        theory.negatives, theory.reduction, counts=counts, remedy=problem.remedy))  # fmt: skip
        where.append((idx, point))
    return runs, where, problems


def run_train_batch(config: SweepConfig, batch: Batch, only: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Train every selected run of a batch as one stacked program and measure it against theory.

    Runs share (loss, n_major, n_minor, k, dim) and differ in R and seed. Unselected points get
    status ``not_applicable``; diverged runs get ``diverged`` and NaN values.
    """
    from pipeline.train import train_function

    train_runs = train_function(config.train.negatives_from)
    grid = Grid(config)
    out = _empty(grid, "train", batch.shape)
    theory = config.theory
    scan = SCAN_AXIS[grid.profile]
    runs, where, problems = batch_runs(config, batch, only)
    for idx, point in grid_points(grid, batch, only):
        if not _selected(config, point):
            out["status_train"][idx] = STATUS_CODE["not_applicable"]
    if not runs:
        return out
    solutions: dict[float, object] = {}  # the reference solution of each scan value (a batch shares dim)

    def reference(point: dict) -> tuple[np.ndarray, float]:
        """(G*, its objective at d < C, else NaN): the optimum a run at this point can reach: at d < C
        the rank-d one (Burer-Monteiro), not the full-rank G. A batch shares dim."""
        problem, dim = problems[point[scan]], point["dim"]
        if point[scan] not in solutions:
            rank = dim < problem.C
            solutions[point[scan]] = solve(problem, "rank", dim=dim) if rank else solve(problem, theory.solver)
        best = solutions[point[scan]]
        return best.G, best.objective if dim < problem.C else math.nan

    if config.train.init == "theory":
        starts = [class_means(reference(point)[0], point["dim"]).T for _, point in where]  # (C, d) unit rows
        runs = [replace(run, start=start) for run, start in zip(runs, starts, strict=True)]
    start = time.perf_counter()
    results = train_runs(runs, config.train)
    per_run_s = (time.perf_counter() - start) / len(runs)
    for (idx, point), result in zip(where, results, strict=True):
        problem = problems[point[scan]]
        C = problem.C
        out["time_train"][idx] = per_run_s
        out["loss_train"][idx] = result.loss
        if result.diverged:
            out["status_train"][idx] = STATUS_CODE["diverged"]
            continue
        G_theory, rank = reference(point)
        out["gram_train"][(*idx, slice(0, C), slice(0, C))] = result.gram
        if grid.profile == "step":
            out["cos_major_train"][idx] = result.cos_major
            out["cos_cross_train"][idx] = result.cos_cross
            out["cos_minor_train"][idx] = result.cos_minor
        else:
            out["cos_tail_train"][idx] = tail_cosine(problem, result.gram)
        out["nc1_train"][idx] = result.nc1
        out["nc1_rank_deficient_train"][idx] = int(result.within.nc1_rank_deficient)
        out["spread_train"][idx] = result.within.spread
        out["spread_class_train"][(*idx, slice(0, C))] = result.within.spread_per_class
        out["trace_ratio_train"][idx] = result.within.trace_ratio
        out["grad_norm_train"][idx] = result.grad_norm
        out["loss_change_train"][idx] = result.loss_change
        out["converged_train"][idx] = -1 if result.converged is None else int(result.converged)
        out["objective_train"][idx] = class_objective(problem, result.gram)[0]  # exact at any k
        out["objective_rank"][idx] = rank
        # at d >= C the optimum is unique, so invariant under relabelling interchangeable classes; at
        # d < C it may break their symmetry, and which of them a run merged is arbitrary
        groups = problem.groups()[0] if point["dim"] < C else np.arange(C)
        out["dist_to_theory"][idx] = gram_distance(result.gram, G_theory, groups)
        if result.n_train_class is not None:
            _write_subsampled(out, idx, C, result, solutions[point[scan]], grid.profile == "step")
        out["status_train"][idx] = STATUS_CODE["trained"]
    return out


def _write_subsampled(out: dict[str, np.ndarray], idx: tuple[int, ...], C: int, result, reference, step: bool) -> None:
    """The measures of a run on a subsampled dataset with a test split (pipeline.train.batch_trainer), and the
    theory at the subsampled proportions it is compared with (``reference``: its solution, rank-d at d < C)."""
    out["objective_subsampled"][idx] = reference.objective
    if step:
        out["cos_minor_subsampled"][idx] = reference.c
        out["collapsed_subsampled"][idx] = np.nan if reference.collapsed is None else float(reference.collapsed)
    out["n_train_class"][(*idx, slice(0, C))] = result.n_train_class
    out["n_test_class"][(*idx, slice(0, C))] = result.n_test_class
    if result.gram_test is not None:
        out["gram_test_train"][(*idx, slice(0, C), slice(0, C))] = result.gram_test
        out["acc_test_class"][(*idx, slice(0, C))] = result.acc_test_class
        for shot, value in result.acc_shots.items():
            out[f"acc_{shot}_test"][idx] = value


RUNNERS = {"theory": run_theory_batch, "threshold": run_threshold_batch, "train": run_train_batch}


def run_batch(config: SweepConfig, batch: Batch, only: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Compute a batch; with ``only`` (a boolean mask over the batch), just those points."""
    return RUNNERS[batch.kind](config, batch, only)

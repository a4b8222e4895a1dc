"""Compute one batch of points: pure dispatch to the theory solvers; no dask, no I/O."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import numpy as np

from pipeline.config import SweepConfig
from pipeline.faults import failing_solver
from pipeline.grid import Batch, Grid
from pipeline.objective import class_objective
from pipeline.problem import Problem
from pipeline.results import STATUS_CODE, VARIABLES, fill_value, kind_variables
from pipeline.sdp import full_program_fits
from pipeline.theory import solve
from pipeline.threshold import minority_threshold


def _empty(kind: str, shape: tuple[int, ...], C_max: int) -> dict[str, np.ndarray]:
    out = {}
    for name in kind_variables(kind):
        var = VARIABLES[name]
        full_shape = (*shape, *(C_max for d in var.dims if d.startswith("class_")))
        out[name] = np.full(full_shape, fill_value(var.dtype), dtype=var.dtype)
    return out


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


def _points(grid: Grid, batch: Batch, only: np.ndarray | None) -> Iterator[tuple[tuple[int, ...], dict]]:
    """(index in the batch, {dim: coordinate value}) for every point of a batch, or those in ``only``."""
    values = grid.values(batch)
    dims = grid.dims(batch.kind)
    for idx in np.ndindex(*batch.shape):
        if only is None or only[idx]:
            yield idx, {d: values[d][i].item() for d, i in zip(dims, idx, strict=True)}


def run_theory_batch(config: SweepConfig, batch: Batch, only: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Solve every theory point of a batch (or those in ``only``); a failing point gets status ``error``."""
    grid = Grid(config)
    out = _empty("theory", batch.shape, grid.C_max)
    theory = config.theory
    for idx, pt in _points(grid, batch, only):
        start = time.perf_counter()
        try:
            problem = Problem.two_group(pt["loss"], pt["n_major"], pt["n_minor"], pt["R"], pt["k"],
                                        theory.negatives, theory.reduction)  # fmt: skip
            solution, used_fallback = solve_with_fallback(problem, theory.solver)
        except Exception:
            out["status_theory"][idx] = STATUS_CODE["error"]
            out["time_theory"][idx] = time.perf_counter() - start
            continue
        C = problem.C
        out["gram_theory"][(*idx, slice(0, C), slice(0, C))] = solution.G
        out["objective_theory"][idx] = solution.objective
        out["cos_major_theory"][idx] = solution.a
        out["cos_cross_theory"][idx] = solution.b
        out["cos_minor_theory"][idx] = solution.c
        out["gap_theory"][idx] = solution.gap
        out["criterion_theory"][idx] = solution.criterion
        out["collapsed_theory"][idx] = np.nan if solution.collapsed is None else float(solution.collapsed)
        out["status_theory"][idx] = STATUS_CODE[solution.status]
        out["time_theory"][idx] = time.perf_counter() - start
        out["fallback_theory"][idx] = int(used_fallback)
    return out


def run_threshold_batch(config: SweepConfig, batch: Batch, only: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """R* for every k of one (loss, n_major, n_minor); NaN and ``not_applicable`` where undefined."""
    grid = Grid(config)
    out = _empty("threshold", batch.shape, grid.C_max)
    theory = config.theory
    for idx, pt in _points(grid, batch, only):
        loss, n_major, n_minor, k = pt["loss"], pt["n_major"], pt["n_minor"], pt["k"]
        if n_minor < 2 or loss.startswith("triplet"):
            out["status_threshold"][idx] = STATUS_CODE["not_applicable"]
            continue
        try:
            result = minority_threshold(loss, n_major, n_minor, k, theory.negatives, theory.reduction)
        except Exception:
            out["status_threshold"][idx] = STATUS_CODE["error"]
            continue
        out["R_threshold"][idx] = result.R_star
        out["criterion_limit"][idx] = result.criterion_limit if math.isfinite(result.criterion_limit) else -np.inf
        out["criterion_limit_error"][idx] = result.criterion_limit_error
        out["status_threshold"][idx] = STATUS_CODE[result.status]
    return out


def _selected(config: SweepConfig, point: dict) -> bool:
    # load_config maps every train.select value to the grid's own coordinate value
    return all(point[axis] in values for axis, values in config.train.select.items())


def batch_runs(config: SweepConfig, batch: Batch, only: np.ndarray | None = None):
    """The selected training runs of a batch: (runs, [(index, point)], {R: problem})."""
    from pipeline.train import Run

    theory = config.theory
    runs, where, problems = [], [], {}
    for idx, point in _points(Grid(config), batch, only):
        if not _selected(config, point):
            continue
        problem = Problem.two_group(point["loss"], point["n_major"], point["n_minor"], point["R"], point["k"],
                                    theory.negatives, theory.reduction)  # fmt: skip
        problems[point["R"]] = problem
        runs.append(Run(problem.loss, problem.p, point["n_major"], point["k"], point["dim"], point["seed"],
                        theory.negatives, theory.reduction))  # fmt: skip
        where.append((idx, point))
    return runs, where, problems


def run_train_batch(config: SweepConfig, batch: Batch, only: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Train every selected run of a batch as one stacked program and measure it against theory.

    Runs share (loss, n_major, n_minor, k, dim) and differ in R and seed. Unselected points get
    status ``not_applicable``; diverged runs get ``diverged`` and NaN values.
    """
    from pipeline.train import train_runs

    grid = Grid(config)
    out = _empty("train", batch.shape, grid.C_max)
    theory = config.theory
    runs, where, problems = batch_runs(config, batch, only)
    for idx, point in _points(grid, batch, only):
        if not _selected(config, point):
            out["status_train"][idx] = STATUS_CODE["not_applicable"]
    if not runs:
        return out
    start = time.perf_counter()
    results = train_runs(runs, config.train)
    per_run_s = (time.perf_counter() - start) / len(runs)
    references: dict[float, tuple] = {}
    for (idx, point), result in zip(where, results, strict=True):
        problem = problems[point["R"]]
        C, dim = problem.C, point["dim"]
        out["time_train"][idx] = per_run_s
        out["loss_train"][idx] = result.loss
        if result.diverged:
            out["status_train"][idx] = STATUS_CODE["diverged"]
            continue
        if point["R"] not in references:
            # the optimum the run can reach: at d < C the rank-d one (Burer-Monteiro), not the full-rank G
            best = solve(problem, "rank", dim=dim) if dim < C else solve(problem, theory.solver)
            references[point["R"]] = (best.G, best.objective if dim < C else math.nan)
        G_theory, rank = references[point["R"]]
        out["gram_train"][(*idx, slice(0, C), slice(0, C))] = result.gram
        out["cos_major_train"][idx] = result.cos_major
        out["cos_cross_train"][idx] = result.cos_cross
        out["cos_minor_train"][idx] = result.cos_minor
        out["nc1_train"][idx] = result.nc1
        out["nc1_rank_deficient_train"][idx] = int(result.within.nc1_rank_deficient)
        out["spread_train"][idx] = result.within.spread
        out["spread_class_train"][(*idx, slice(0, C))] = result.within.spread_per_class
        out["trace_ratio_train"][idx] = result.within.trace_ratio
        out["objective_train"][idx] = class_objective(problem, result.gram)[0]  # exact at any k
        out["objective_rank"][idx] = rank
        out["dist_to_theory"][idx] = np.linalg.norm(result.gram - G_theory) / C
        out["status_train"][idx] = STATUS_CODE["trained"]
    return out


RUNNERS = {"theory": run_theory_batch, "threshold": run_threshold_batch, "train": run_train_batch}


def run_batch(config: SweepConfig, batch: Batch, only: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Compute a batch; with ``only`` (a boolean mask over the batch), just those points."""
    return RUNNERS[batch.kind](config, batch, only)

"""How long a sweep will take: each task kind timed on a sample here, then scaled (``--dry-run``).

- theory: up to ``THEORY_SAMPLES`` grid points spread over the grid solved (after an untimed warm-up on a
  four-class problem), their mean times every point; points of minutes (C = 1000) stop it after one or two;
- thresholds: one R* at the largest k, times every applicable (loss, K_A, K_B, k); cascades: one per C
  at the middle k (their cost grows with C: an undecided tail ends a scan early, a long tail scans far);
- training: for each k, the first batch's runs trained twice with few steps (``CALIBRATION_STEPS``): the
  fixed and the per-step cost, scaled to ``train.steps`` and to each batch's runs (an in-batch batch holds
  k + 2 samples, so its cost depends on k); plus each batch's theory references (an optimum per R, and the
  rank-d optimum when d < C), timed once per embedding dimension.

Workers run single-threaded (``cluster.threads_per_worker``), so the sample does too. The wall time is
the work and a per-batch overhead divided over the workers' throughput, but never less than the longest
batch, plus the start-up. The throughput is measured by a probe, not assumed: n processes on n cores need
not run n times as fast as one (shared cores of a virtual machine, memory bandwidth). On the 2-core
development machine the probe says 0.8 to 1.0 of twice one; most of what the dry run missed before
(quick 57 s against 120 s measured, longtail 259 s against 77 s, mnist1d_step 91 s against 398 s) was the
per-batch overhead, three unrepresentative theory points, and in-batch batches calibrated at one k only.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

from pipeline.sweep.config import SweepConfig
from pipeline.sweep.grid import Grid, kinds

CALIBRATION_STEPS = (20, 80)
THEORY_SAMPLES = 16  # theory points timed, spread over the grid
THEORY_BUDGET_S = 10.0  # ... or fewer (at least 3), once this many seconds are spent
THEORY_LONG_S = 300.0  # ... or fewer than 3, once this many are spent (C = 1000: a point takes minutes)
# a batch's cost beside its computing: the task's round trip and the region write of its variables
# (measured: the tests' tiny sweep, 40 batches with < 0.1 s of computing, takes 2.6 s on 2 workers)
BATCH_OVERHEAD_S = 0.12
STARTUP_S = 5.0  # a LocalCluster's workers and the store's template (measured: 3-6 s on 2 cores)


@dataclass(frozen=True)
class KindEstimate:
    kind: str
    count: int  # units that will run (points, thresholds, batches of runs)
    unit_s: float  # seconds each
    longest_s: float  # the longest single batch

    @property
    def work_s(self) -> float:
        return self.count * self.unit_s


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _spread_points(config: SweepConfig, kind: str, n: int) -> list[dict]:
    """Up to ``n`` grid points of a kind, evenly spread over its batches (a point from each chosen batch,
    at a position that moves along the batch), so that cheap and costly regions are both sampled."""
    from pipeline.sweep.tasks import grid_points

    grid = Grid(config)
    batches = list(grid.batches(kind))
    m = min(n, len(batches))  # spread over all of them (dividing by n - 1 sampled only the first m / n of the grid)
    chosen = [batches[round(i * (len(batches) - 1) / max(m - 1, 1))] for i in range(m)]
    out = []
    for i, batch in enumerate(chosen):
        points = [pt for _, pt in grid_points(grid, batch, None)]
        out.append(points[(i * 7) % len(points)])
    return [out[i] for i in coarse_to_fine(len(out))]


def coarse_to_fine(n: int) -> list[int]:
    """0..n-1 ordered first, last, middle, then the middles of the halves, and so on: a budget that stops
    after a few samples has still seen both ends of the grid (measured: configs/rank.yaml, whose points cost
    1 to 66 s along rho, was estimated at 3.5 s a point from its first, cheapest ones against 17 s run).

    Examples
    --------
    >>> coarse_to_fine(5), coarse_to_fine(1)
    ([0, 4, 2, 1, 3], [0])
    """
    order = [0, n - 1][: min(n, 2)]
    intervals = [(0, n - 1)]  # breadth first: each interval's middle, then its two halves
    while intervals:
        lo, hi = intervals.pop(0)
        if hi - lo > 1:
            mid = (lo + hi) // 2
            order.append(mid)
            intervals += [(lo, mid), (mid, hi)]
    return order


def theory_estimate(config: SweepConfig) -> KindEstimate:
    """Mean time of up to ``THEORY_SAMPLES`` points spread over the grid (until ``THEORY_BUDGET_S`` is spent):
    points differ by orders of magnitude (a long tail at large rho against a two-group point)."""
    from pipeline.sweep.tasks import point_problem
    from pipeline.theory.dispatch import solve
    from pipeline.theory.problem import Problem
    from pipeline.theory.rank import beside_convex

    s, th = config.grid, config.theory
    picks = _spread_points(config, "theory", THEORY_SAMPLES)

    def one(pick) -> None:  # what run_theory_batch solves at a point: the convex optimum, then each rank d
        problem = point_problem(config, pick)
        convex = solve(problem, th.solver)
        for dim in th.rank_dims:
            beside_convex(problem, convex, dim)

    first = point_problem(config, picks[0])  # imports and caches, on a small problem of the first point's loss
    warm = Problem.from_profile(first.loss, "exp(C=4, rho=10)", 4, first.negatives, first.reduction,
                                remedy=first.remedy)  # fmt: skip
    convex = solve(warm, th.solver)
    if th.rank_dims:
        beside_convex(warm, convex, 2)
    times: list[float] = []
    for pick in picks:
        times.append(_timed(lambda p=pick: one(p)))
        if sum(times) > THEORY_BUDGET_S and (len(times) >= 3 or sum(times) > THEORY_LONG_S):
            break
    point_s = sum(times) / len(times)
    batch = Grid(config).chunks("theory")
    return KindEstimate("theory", s.n_theory_points, point_s, max(times) * math.prod(batch.values()))


def threshold_count(config: SweepConfig) -> int:
    """Thresholds (or cascades) that will be computed: smooth losses, and two or more minority classes."""
    s = config.grid
    smooth = [loss for loss in s.loss if not loss.startswith("triplet")]
    if s.profile == "exp":
        return len(smooth) * len(s.remedy) * len(s.C) * len(s.k)
    if s.profile == "counts":
        return 0
    return len(smooth) * len(s.remedy) * len(s.n_major) * len([n for n in s.n_minor if n >= 2]) * len(s.k)


def threshold_estimate(config: SweepConfig) -> KindEstimate:
    from pipeline.theory.cascade import cascade
    from pipeline.theory.threshold import minority_threshold

    s, th = config.grid, config.theory
    smooth = [loss for loss in s.loss if not loss.startswith("triplet")]
    count = threshold_count(config)
    if not count:
        return KindEstimate("threshold", 0, 0.0, 0.0)
    remedies = sorted({s.remedy[0], s.remedy[-1]})  # the plain loss and a remedy: a remedy scans to R_MAX
    if s.profile == "exp":  # one cascade per (loss, remedy, C, k): each C timed once, at the middle k
        k_mid = s.k[len(s.k) // 2]
        per_C = [_timed(lambda C=C, r=r: cascade(smooth[0], C, k_mid, th.negatives, th.reduction, remedy=r))
                 for C in s.C for r in remedies]  # fmt: skip
        return KindEstimate("threshold", count, sum(per_C) / len(per_C), max(per_C) * len(s.k))
    minors = [n for n in s.n_minor if n >= 2]
    each = [_timed(lambda r=r: minority_threshold(smooth[0], s.n_major[0], minors[-1], s.k[-1], th.negatives,
                                                  th.reduction, remedy=r)) for r in remedies]  # fmt: skip
    one_s = sum(each) / len(each)
    return KindEstimate("threshold", count, one_s, max(each) * len(s.k))


def train_estimate(config: SweepConfig) -> KindEstimate:
    """Per batch: the stacked training (two short runs give the fixed and the per-step cost) plus its
    theory references (one optimum per R, and the rank-d optimum when d < C: seeded restarts, costly),
    each timed once per distinct embedding dimension."""
    import torch

    from pipeline.sweep.tasks import batch_runs
    from pipeline.theory.dispatch import solve
    from pipeline.train import train_function

    train_runs = train_function(config.train.negatives_from)
    grid = Grid(config)
    batches = [b for b in grid.batches("train") if grid.work(b)]
    if not batches:
        return KindEstimate("train", 0, 0.0, 0.0)

    def references(problem, dim: int) -> None:  # what run_train_batch solves for each R of a batch
        if dim < problem.C:
            solve(problem, "rank", dim=dim)
        else:
            solve(problem, config.theory.solver)

    def train(runs, steps: int) -> None:
        train_runs(runs, replace(config.train, steps=steps))

    threads = torch.get_num_threads()
    torch.set_num_threads(config.cluster.threads_per_worker)
    first_of_k: dict[float, object] = {}  # a batch's cost depends on k (an in-batch batch holds k + 2 samples)
    for batch in batches:
        first_of_k.setdefault(float(grid.values(batch)["k"][0]), batch)
    try:
        train_s: dict[float, tuple[float, int]] = {}  # k -> (seconds of the calibrated batch, its runs)
        for i, (k, batch) in enumerate(first_of_k.items()):
            runs, _, _ = batch_runs(config, batch)
            if i == 0:
                train(runs, 1)  # torch's first-call set-up, paid once per worker
            short, long = (_timed(lambda n=n, r=runs: train(r, n)) for n in CALIBRATION_STEPS)
            per_step = max(long - short, 0.0) / (CALIBRATION_STEPS[1] - CALIBRATION_STEPS[0])
            train_s[k] = (short + per_step * (config.train.steps - CALIBRATION_STEPS[0]), len(runs))
        reference_s: dict[int, float] = {}
        for batch in batches:
            _, where, problems = batch_runs(config, batch)
            dim = where[0][1]["dim"]
            if dim not in reference_s:
                problem = next(iter(problems.values()))
                reference_s[dim] = _timed(lambda p=problem, d=dim: references(p, d))
    finally:
        torch.set_num_threads(threads)
    costs = []
    for batch in batches:
        runs, where, problems = batch_runs(config, batch)
        seconds, n_calibrated = train_s[float(grid.values(batch)["k"][0])]
        costs.append(seconds * len(runs) / n_calibrated + len(problems) * reference_s[where[0][1]["dim"]])
    return KindEstimate("train", len(batches), sum(costs) / len(costs), max(costs))


def estimate(config: SweepConfig) -> list[KindEstimate]:
    """Per task kind of the sweep: what will run and how long each unit takes here."""
    out = [theory_estimate(config)]
    if "threshold" in kinds(config):
        out.append(threshold_estimate(config))
    if "train" in kinds(config):
        out.append(train_estimate(config))
    return out


def _probe(_: int = 0) -> float:
    """Seconds of a fixed CPU-bound numpy kernel (small vector operations, as the solvers and trainers run)."""
    import numpy as np

    x = np.linspace(0.1, 1.0, 20000)
    start = time.perf_counter()
    for _ in range(300):
        x = np.log1p(np.exp(-x)) + 0.5 * x  # (20000,)
    return time.perf_counter() - start


def parallel_efficiency(workers: int) -> float:
    """Throughput of ``workers`` single-threaded processes running at once, over ``workers`` times one
    process alone (1: perfect scaling): each process times :func:`_probe`, first one alone, then all at once."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if workers <= 1:
        return 1.0
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_probe, range(workers)))  # start every process (and warm numpy up)
        alone = min(pool.submit(_probe).result() for _ in range(2))
        together = max(pool.map(_probe, range(workers)))  # all at once: the slowest sets the pace
    return min(1.0, alone / together)


def wall_s(estimates: list[KindEstimate], workers: int, efficiency: float = 1.0, batches: int = 0) -> float:
    """Work (and ``BATCH_OVERHEAD_S`` per batch) over the workers at the measured ``efficiency``, at least the
    longest batch, plus the start-up."""
    work = sum(e.work_s for e in estimates) + batches * BATCH_OVERHEAD_S
    return max(work / (max(workers, 1) * efficiency), max((e.longest_s for e in estimates), default=0.0)) + STARTUP_S

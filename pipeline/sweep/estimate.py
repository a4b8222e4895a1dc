"""How long a sweep will take: each task kind timed on a sample here, then scaled (``--dry-run``).

- theory: a few grid points solved (after one untimed warm-up), the mean times every point;
- thresholds: one R* at the largest k, times every applicable (loss, K_A, K_B, k);
- training: the first batch's runs trained twice with few steps (``CALIBRATION_STEPS``): the fixed
  and the per-step cost, scaled to ``train.steps``; plus each batch's theory references (an optimum per
  R, and the rank-d optimum when d < C), timed once per embedding dimension.

Workers run single-threaded (``cluster.threads_per_worker``), so the sample does too. The wall time is
the work divided over the workers, but never less than the longest batch, plus the start-up.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

from pipeline.sweep.config import SweepConfig
from pipeline.sweep.grid import Grid, kinds

CALIBRATION_STEPS = (20, 80)
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


def _picks(config: SweepConfig, kind: str) -> list[dict]:
    """Three grid points of a kind: the first and last of its first and last batches, and a middle one."""
    from pipeline.sweep.tasks import grid_points

    grid = Grid(config)
    batches = list(grid.batches(kind))
    chosen = [batches[0], batches[-1], batches[len(batches) // 2]]
    out = []
    for i, batch in enumerate(chosen):
        points = [pt for _, pt in grid_points(grid, batch, None)]
        out.append(points[[0, -1, len(points) // 2][i]])
    return out


def theory_estimate(config: SweepConfig) -> KindEstimate:
    from pipeline.sweep.tasks import point_problem
    from pipeline.theory.dispatch import solve

    s, th = config.grid, config.theory
    picks = _picks(config, "theory")

    def one(pick) -> None:
        solve(point_problem(config, pick), th.solver)

    one(picks[0])  # imports and caches
    point_s = sum(_timed(lambda p=p: one(p)) for p in picks) / len(picks)
    batch = Grid(config).chunks("theory")
    return KindEstimate("theory", s.n_theory_points, point_s, point_s * math.prod(batch.values()))


def threshold_count(config: SweepConfig) -> int:
    """Thresholds (or cascades) that will be computed: smooth losses, and two or more minority classes."""
    s = config.grid
    smooth = [loss for loss in s.loss if not loss.startswith("triplet")]
    if s.profile == "exp":
        return len(smooth) * len(s.C) * len(s.k)
    if s.profile == "counts":
        return 0
    return len(smooth) * len(s.n_major) * len([n for n in s.n_minor if n >= 2]) * len(s.k)


def threshold_estimate(config: SweepConfig) -> KindEstimate:
    from pipeline.theory.cascade import cascade
    from pipeline.theory.threshold import minority_threshold

    s, th = config.grid, config.theory
    smooth = [loss for loss in s.loss if not loss.startswith("triplet")]
    count = threshold_count(config)
    if not count:
        return KindEstimate("threshold", 0, 0.0, 0.0)
    if s.profile == "exp":  # one cascade per (loss, C, k): timed at the largest C
        one_s = _timed(lambda: cascade(smooth[0], max(s.C), s.k[-1], th.negatives, th.reduction))
        return KindEstimate("threshold", count, one_s, one_s * len(s.k))
    minors = [n for n in s.n_minor if n >= 2]
    one_s = _timed(lambda: minority_threshold(smooth[0], s.n_major[0], minors[-1], s.k[-1], th.negatives, th.reduction))
    return KindEstimate("threshold", count, one_s, one_s * len(s.k))


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
    try:
        runs, _, _ = batch_runs(config, batches[0])
        train(runs, 1)  # torch's first-call set-up, paid once per worker
        short, long = (_timed(lambda n=n: train(runs, n)) for n in CALIBRATION_STEPS)
        reference_s: dict[int, float] = {}
        for batch in batches:
            _, where, problems = batch_runs(config, batch)
            dim = where[0][1]["dim"]
            if dim not in reference_s:
                problem = next(iter(problems.values()))
                reference_s[dim] = _timed(lambda p=problem, d=dim: references(p, d))
    finally:
        torch.set_num_threads(threads)
    per_step = max(long - short, 0.0) / (CALIBRATION_STEPS[1] - CALIBRATION_STEPS[0])
    train_s = short + per_step * (config.train.steps - CALIBRATION_STEPS[0])
    costs = []
    for batch in batches:
        _, where, problems = batch_runs(config, batch)
        costs.append(train_s + len(problems) * reference_s[where[0][1]["dim"]])
    return KindEstimate("train", len(batches), sum(costs) / len(costs), max(costs))


def estimate(config: SweepConfig) -> list[KindEstimate]:
    """Per task kind of the sweep: what will run and how long each unit takes here."""
    out = [theory_estimate(config)]
    if "threshold" in kinds(config):
        out.append(threshold_estimate(config))
    if "train" in kinds(config):
        out.append(train_estimate(config))
    return out


def wall_s(estimates: list[KindEstimate], workers: int) -> float:
    """Work over the workers, at least the longest batch, plus the start-up."""
    work = sum(e.work_s for e in estimates)
    return max(work / max(workers, 1), max((e.longest_s for e in estimates), default=0.0)) + STARTUP_S

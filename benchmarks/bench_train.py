"""Benchmark: config-steps per second, naive one-run loop against the batched trainer.

Reference shape: UFM, 5 majority + 5 minority classes, d = 32, k = 16, batch 512 anchors, InfoNCE,
sampled negatives (the expected estimator's binom(25, 9) count vectors do not fit this shape).
Our trainer gives every class the same number of samples (R enters through the sampling
proportions), so the reference's 500 / 50 samples per class become 500 for every class.

Three figures per shape: the naive loop (``benchmarks/naive.py``: one run, autograd through the
gathered rows), the trainer given one run at a time (what the analytic gradient alone buys), and
the trainer with the runs stacked (what stacking adds on top).

Run by hand: ``python benchmarks/bench_train.py [--runs 32] [--steps 40] [--threads 1] [--repeats 3]``. On a GPU
machine the same script measures CUDA (the trainer picks it automatically; the naive loop is CPU).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import torch
from naive import naive_train

from pipeline.config import TrainSpec
from pipeline.losses import parse_loss
from pipeline.problem import two_group_proportions
from pipeline.train import Run, pick_device, train_runs


def rate(n_runs: int, steps: int, work: Callable[[], object], repeats: int) -> float:
    """Config-steps per second of ``work`` (which trains ``n_runs`` runs for ``steps`` steps), best of
    ``repeats``: the machine's noise only ever slows a run down."""
    best = math.inf
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        work()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return n_runs * steps / best


def measure(label: str, runs: list[Run], spec: TrainSpec, n_alone: int, naive: bool, repeats: int) -> None:
    short = TrainSpec(**{**spec.__dict__, "steps": 2})
    train_runs(runs, short)  # warm-up (allocator, CUDA context)
    head = runs[:n_alone]
    line = f"{label}:\n"
    if naive:
        naive_rate = rate(n_alone, spec.steps, lambda: [naive_train(r, spec) for r in head], repeats)
        line += f"  naive one-run loop       {naive_rate:>10,.0f} config-steps/s\n"
    alone = rate(n_alone, spec.steps, lambda: [train_runs([r], spec) for r in head], repeats)
    stacked = rate(len(runs), spec.steps, lambda: train_runs(runs, spec), repeats)
    line += f"  trainer, one run a time  {alone:>10,.0f} config-steps/s\n"
    line += f"  trainer, {len(runs):>3} stacked     {stacked:>10,.0f} config-steps/s"
    if naive:
        ratios = f"{alone / naive_rate:.1f}x alone, {stacked / naive_rate:.1f}x stacked"
        line += f"\n  speedup over the naive loop per run: {ratios}"
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=32)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many timings")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"device {pick_device('auto')}, torch {torch.__version__}, threads {args.threads}")
    loss = parse_loss("infonce(tau=0.5)")
    reference = TrainSpec(steps=args.steps, batch_size=512, samples_per_class=500, estimator="sampled")
    runs = [Run(loss, two_group_proportions(5, 5, 10.0 * (1 + i % 4)), 5, 16, 32, seed=i) for i in range(args.runs)]
    n_alone = max(2, args.runs // 8)
    measure("reference shape (5+5 classes x 500, d=32, k=16, batch 512)", runs, reference, n_alone, True, args.repeats)
    sweep = TrainSpec(steps=10 * args.steps)  # the sweep's default UFM shape
    runs = [Run(loss, two_group_proportions(2, 2, 1.0 + i), 2, 4, 4, seed=i) for i in range(args.runs)]
    measure("sweep shape (2+2 classes x 2, d=4, k=4, batch 256, expected)", runs, sweep, n_alone, False, args.repeats)
    print("targets: >= 2x the naive loop per run on CPU at the reference shape; >= 300k config-steps/s on an H200")


if __name__ == "__main__":
    main()

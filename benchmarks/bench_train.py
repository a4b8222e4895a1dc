"""Benchmark: config-steps per second, naive one-run loop against the batched trainer.

Reference shape: UFM, 5 majority + 5 minority classes, d = 32, k = 16, batch 512 anchors, InfoNCE,
sampled negatives (the expected estimator's binom(25, 9) count vectors do not fit this shape).
Our trainer gives every class the same number of samples (R enters through the sampling
proportions), so the reference's 500 / 50 samples per class become 500 for every class.

Run by hand: ``python benchmarks/bench_train.py [--runs 32] [--steps 40]``. On a GPU machine the
same script measures CUDA (the trainer picks it automatically).
"""

from __future__ import annotations

import argparse
import time

import torch

from pipeline.config import TrainSpec
from pipeline.losses import parse_loss
from pipeline.problem import two_group_proportions
from pipeline.train import Run, pick_device, train_runs


def measure(label: str, runs: list[Run], spec: TrainSpec, n_naive: int) -> None:
    """Config-steps/s of the runs one after another (naive loop) and stacked (batched)."""
    train_runs(runs[:1], TrainSpec(**{**spec.__dict__, "steps": 2}))  # warm-up
    start = time.perf_counter()
    for run in runs[:n_naive]:
        train_runs([run], spec)
    naive = n_naive * spec.steps / (time.perf_counter() - start)
    start = time.perf_counter()
    train_runs(runs, spec)
    batched = len(runs) * spec.steps / (time.perf_counter() - start)
    print(
        f"{label}: naive one-run loop {naive:,.0f} config-steps/s ({n_naive} runs); "
        f"batched {batched:,.0f} config-steps/s ({len(runs)} runs stacked); speedup {batched / naive:.1f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=32)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"device {pick_device('auto')}, torch {torch.__version__}, threads {args.threads}")
    loss = parse_loss("infonce(tau=0.5)")
    reference = TrainSpec(steps=args.steps, batch_size=512, samples_per_class=500, estimator="sampled")
    runs = [Run(loss, two_group_proportions(5, 5, 10.0 * (1 + i % 4)), 5, 16, 32, seed=i) for i in range(args.runs)]
    measure("reference shape (5+5 classes x 500, d=32, k=16, batch 512)", runs, reference, max(2, args.runs // 8))
    sweep = TrainSpec(steps=10 * args.steps)  # the sweep's default UFM shape
    runs = [Run(loss, two_group_proportions(2, 2, 1.0 + i), 2, 4, 4, seed=i) for i in range(args.runs)]
    measure("sweep shape (2+2 classes x 2, d=4, k=4, batch 256, expected)", runs, sweep, max(2, args.runs // 8))
    print("targets: >= 2x per run on CPU at the reference shape; >= 300k config-steps/s on an H200")


if __name__ == "__main__":
    main()

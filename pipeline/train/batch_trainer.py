"""Contrastive training as it is practised: a subsampled long-tailed dataset, minibatches drawn from it,
in-batch negatives, a standard encoder, many runs stacked on one device (``train.negatives_from: batch``).

Each run has its own training set: the dataset subsampled to the grid point's integer class counts
(:meth:`pipeline.theory.profiles.Profile.integer_counts` at ``train.n_max``), with a balanced
held-out test split (:func:`pipeline.train.data.load_dataset`). A step draws B = k + 2 samples per run,
uniformly without replacement from its training set (``sampler: uniform``) or with a uniform class
and a uniform sample of it (``balanced``), and takes an Adam step on the in-batch loss
(:func:`pipeline.train.batch_loss.batch_loss`). Runs of one shape (encoder, data, C, k, d) are one
program: the encoders' parameters are stacked (:class:`pipeline.train.encoders.Stacked`) and each run
sees its own batch. Which theory point a run estimates is derived in ``docs/inbatch.md``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from pipeline.metrics import class_mean_gram, ncm_accuracy, shot_accuracy
from pipeline.sweep.config import TrainSpec
from pipeline.train.batch_loss import BatchRemedy, batch_loss
from pipeline.train.data import Dataset, load_dataset
from pipeline.train.encoders import Stacked, build_encoder, vectorized
from pipeline.train.trainer import (
    Run,
    RunResult,
    TailLoss,
    measured,
    parameter_grad_norm,
    pick_device,
    run_shape,
    stack_param,
)

FEATURE_CHUNK = 1024  # samples a run embeds at a time when measuring


def run_dataset(run: Run, spec: TrainSpec) -> Dataset:
    """The run's subsampled training set and balanced test split (seeded by the run's seed)."""
    return load_dataset(spec.data, run.counts, spec.n_test, run.seed, input_dim=spec.input_dim, noise=spec.noise)


def _padded(arrays: list[np.ndarray], fill: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Stack arrays of different lengths along a new run axis, padding each to the longest."""
    n = max(a.shape[0] for a in arrays)
    out = np.full((len(arrays), n, *arrays[0].shape[1:]), fill, dtype=arrays[0].dtype)
    for r, a in enumerate(arrays):
        out[r, : a.shape[0]] = a
    return torch.as_tensor(out, dtype=dtype, device=device)


def train_batch_runs(runs: list[Run], spec: TrainSpec) -> list[RunResult]:
    """Train runs of one shape with in-batch negatives, stacked; one result per run, in order."""
    first = runs[0]
    if not all(run_shape(r) == run_shape(first) for r in runs):
        raise ValueError("runs of one stack must share their shape (loss form, C, k, dim, conventions, remedy)")
    device = pick_device(spec.device)
    size = len(runs) if device.type == "cuda" else spec.runs_per_batch
    stacks = [runs[i : i + size] for i in range(0, len(runs), size)]
    return [result for stack in stacks for result in _train_stack(stack, spec, device)]


class InBatchStack:
    """Runs of one shape as one stacked program: their data, stacked encoders, optimiser and batches.

    ``step()`` is one training step of every run (what the benchmarks time); ``train_batch_runs``
    takes ``spec.steps`` of them and measures the runs.
    """

    def __init__(self, runs: list[Run], spec: TrainSpec, device: torch.device) -> None:
        first = runs[0]
        self.runs, self.spec, self.device = runs, spec, device
        self.R, self.C, self.k, d = len(runs), first.p.size, int(first.k), first.dim
        self.B = self.k + 2
        self.data = [run_dataset(run, spec) for run in runs]
        self.n_list = [len(ds.y_train) for ds in self.data]  # training samples of each run
        if min(self.n_list) < self.B:
            raise ValueError(f"a batch of k + 2 = {self.B} samples needs as many training samples; a run has "
                             f"{min(self.n_list)}")  # fmt: skip
        if not all(np.all(np.diff(ds.y_train) >= 0) for ds in self.data):
            raise ValueError("training rows must be sorted by class")
        self.ufm = spec.model == "ufm"
        self.X = None if self.ufm else _padded([ds.X_train for ds in self.data], 0.0, torch.float32, device)
        self.y = _padded([ds.y_train for ds in self.data], -1, torch.long, device)  # (R, N); -1 pads
        self.N = self.y.shape[1]
        self.counts = torch.tensor(np.stack([ds.n_train_class for ds in self.data]), device=device)  # (R, C)
        self.starts = torch.cumsum(self.counts, 1) - self.counts  # (R, C): first row of each class
        modules = []
        for run, ds in zip(runs, self.data, strict=True):
            torch.manual_seed(run.seed)
            module = build_encoder(spec.model, self.data[0].input_shape, d, spec.hidden, n_samples=self.N)
            if self.ufm:  # its own rows drawn from its own seed, whatever the stack's padding
                with torch.no_grad():
                    own = torch.Generator().manual_seed(run.seed)
                    module.weight.zero_()[: len(ds.y_train)] = torch.randn(len(ds.y_train), d, generator=own)
            modules.append(module)
        self.encoder = Stacked(modules, device, vectorized(spec.model, device))
        self.params = self.encoder.parameters()
        self.loss = replace(first.loss, param=stack_param(runs, device))  # (R, 1, 1)
        # a remedy's phi_cj and anchor weights at each run's own (subsampled) proportions, or None
        self.remedy = BatchRemedy.build([run.remedy for run in runs], [run.p for run in runs], first.loss, device)
        self.optimizer = torch.optim.Adam(self.params, lr=spec.lr, betas=spec.betas)
        self.schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, spec.steps,
                                                                   eta_min=spec.lr * spec.lr_final)  # fmt: skip
        self.rows = torch.arange(self.R, device=device)[:, None]  # (R, 1)
        # each run draws its batches from its own stream: a run trains alike alone and in any stack
        self.generators = [torch.Generator(device=device).manual_seed(run.seed) for run in runs]

    def draw(self) -> torch.Tensor:
        """(R, B) rows of each run's batch."""
        device, B, gens = self.device, self.B, self.generators
        if self.spec.sampler == "uniform":  # B distinct rows, uniformly: the B largest of n_r uniforms
            return torch.stack([torch.rand(n, device=device, generator=g).topk(B).indices
                                for n, g in zip(self.n_list, gens, strict=True)])  # fmt: skip
        # balanced: a uniform class, then a uniform sample of it (with replacement)
        c = torch.stack([torch.randint(self.C, (B,), device=device, generator=g) for g in gens])  # (R, B)
        u = torch.stack([torch.rand(B, device=device, generator=g, dtype=torch.float64) for g in gens])  # (R, B)
        counts = self.counts[self.rows, c]  # (R, B)
        return self.starts[self.rows, c] + (u * counts).long().clamp_max_(counts - 1)

    def gradient(self) -> torch.Tensor:
        """The in-batch loss of one fresh batch per run (R,); its gradient left in the parameters."""
        index = self.draw()  # (R, B)
        x = index if self.ufm else self.X[self.rows, index]  # (R, B, *item)
        F = torch.nn.functional.normalize(self.encoder(x), dim=-1)  # (R, B, d)
        per_run = batch_loss(F, self.y[self.rows, index], self.loss, self.k, self.runs[0].reduction,
                             self.spec.positives, self.remedy)  # fmt: skip
        self.optimizer.zero_grad(set_to_none=True)
        per_run.sum().backward()
        return per_run.detach()

    def step(self) -> torch.Tensor:
        """One Adam step of every run on a fresh batch; returns the batch's loss per run (R,)."""
        per_run = self.gradient()
        self.optimizer.step()
        self.schedule.step()
        return per_run

    def features(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Unit features of the training (R, N, d) and test (R, n_test C, d) samples (test: None for ufm)."""
        x = torch.arange(self.N, device=self.device).expand(self.R, self.N) if self.ufm else self.X
        H_train = _features(self.encoder, x)
        if self.ufm:
            return H_train, None
        return H_train, _features(self.encoder, _padded([ds.X_test for ds in self.data], 0.0, torch.float32,
                                                        self.device))  # fmt: skip


def _train_stack(runs: list[Run], spec: TrainSpec, device: torch.device) -> list[RunResult]:
    stack = InBatchStack(runs, spec, device)
    tail = TailLoss(spec.steps, len(runs), device)
    for step in range(spec.steps):
        tail.add(step, stack.step())
    tail_loss, change = tail.result()
    grad_norm = parameter_grad_norm(stack.gradient, stack.params) / np.array([r.p.min() for r in runs])  # (R,)
    H_train, H_test = stack.features()
    results = []
    for r, (run, ds) in enumerate(zip(runs, stack.data, strict=True)):
        n_r = len(ds.y_train)
        result = measured(run, H_train[r, :n_r], ds.y_train, float(tail_loss[r]), float(grad_norm[r]),
                          float(change[r]), grad_decides=False, p_min=float(run.p.min()))  # fmt: skip
        result.n_train_class, result.n_test_class = ds.n_train_class, ds.n_test_class
        if H_test is not None and not result.diverged:
            h_test = H_test[r, : len(ds.y_test)]
            result.gram_test = class_mean_gram(h_test, ds.y_test, stack.C)
            result.acc_test_class = ncm_accuracy(H_train[r, :n_r], ds.y_train, h_test, ds.y_test, stack.C)
            result.acc_shots = shot_accuracy(result.acc_test_class, ds.n_train_class)
        results.append(result)
    return results


def _features(encoder: Stacked, x: torch.Tensor) -> np.ndarray:
    """Unit features (R, n, d) float64 of inputs x (R, n, *item), embedded ``FEATURE_CHUNK`` at a time."""
    with torch.no_grad():
        parts = [torch.nn.functional.normalize(encoder(x[:, i : i + FEATURE_CHUNK]), dim=-1)
                 for i in range(0, x.shape[1], FEATURE_CHUNK)]  # fmt: skip
    return torch.cat(parts, 1).cpu().numpy().astype(np.float64)

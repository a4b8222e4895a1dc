"""The straightforward approaches the benchmarks measure against: a fresh cvxpy build + solve of the exact
class-collapsed SDP per point, and a one-run autograd training loop."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy.special import gammaln, xlogy

from pipeline.theory.objective import count_vectors
from pipeline.theory.problem import Problem

if TYPE_CHECKING:  # each baseline imports its own framework: the solver one runs in fresh processes
    from pipeline.sweep.config import TrainSpec
    from pipeline.train.trainer import Run


def naive_full(problem: Problem) -> tuple[float, np.ndarray]:
    """Build and solve min L(G) s.t. G PSD, diag(G) = 1 with constants; one log_sum_exp per term."""
    import cvxpy as cp  # here, so that the training baseline runs where cvxpy is not installed

    C, k, loss = problem.C, problem.k, problem.loss
    q = problem.negative_distribution()
    N = count_vectors(k, C)
    G = cp.Variable((C, C), PSD=True)
    terms = []
    for c in range(C):
        log_w = gammaln(k + 1) - gammaln(N + 1).sum(axis=1) + xlogy(N, q[c]).sum(axis=1)
        for n, lw in zip(N, log_w, strict=True):
            if not np.isfinite(lw):
                continue
            nz = np.nonzero(n)[0]
            if loss.psi_linear:
                inner = cp.sum(cp.multiply(problem.rho * n[nz], loss.phi_cvx(G[c, nz] - 1)))
                terms.append(problem.p[c] * np.exp(lw) * inner)
            else:
                logits = (G[c, nz] - 1) / loss.param + np.log(problem.rho * n[nz])
                lse = cp.log_sum_exp(cp.hstack([np.zeros(1), logits]))
                terms.append(problem.p[c] * np.exp(lw) * lse)
    program = cp.Problem(cp.Minimize(cp.sum(cp.hstack(terms))), [cp.diag(G) == 1])
    program.solve(solver="CLARABEL")
    return float(program.value), np.array(G.value)


def naive_train(run: Run, spec: TrainSpec) -> float:
    """The straightforward one-run UFM training loop (sampled marginal negatives): autograd through the
    gathered rows, the same sampling, loss, Adam and schedule as :func:`pipeline.train.trainer.train_runs`.
    Runs on the trainer's device. Returns the last step's loss."""
    import torch

    from pipeline.train.trainer import pick_device

    C, k, d, n = run.p.size, run.k, run.dim, spec.samples_per_class
    loss, rho = run.loss, 1.0 if run.reduction == "sum" else 1.0 / k
    device = pick_device(spec.device)
    torch.manual_seed(run.seed)
    W = torch.randn(C * n, d, device=device).requires_grad_()  # (N, d)
    optimizer = torch.optim.Adam([W], lr=spec.lr, betas=spec.betas, fused=True)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, spec.steps, eta_min=spec.lr * spec.lr_final)
    p = torch.tensor(run.p, dtype=torch.float32, device=device)  # (C,)
    M = max(C, spec.batch_size // C * C)
    y_a = torch.arange(C, device=device).repeat(M // C)  # (M,) stratified anchors, importance-weighted by C p
    for _ in range(spec.steps):
        F = W / W.norm(dim=1, keepdim=True)  # (N, d)
        i_a = y_a * n + torch.randint(n, (M,), device=device)
        shift = torch.randint(1, n, (M,), device=device) if n > 1 else 0
        i_p = y_a * n + (i_a - y_a * n + shift) % n
        y_n = torch.multinomial(p, M * k, replacement=True).view(M, k)
        i_n = y_n * n + torch.randint(n, (M, k), device=device)
        f_a, f_p, f_n = F[i_a], F[i_p], F[i_n]  # (M, d), (M, d), (M, k, d)
        z = torch.einsum("mkd,md->mk", f_n, f_a) - (f_a * f_p).sum(-1, keepdim=True)  # (M, k)
        value = (C * p[y_a] * loss.psi(rho * loss.phi(z).sum(-1))).mean()
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        schedule.step()
    return float(value.detach())

"""Batched contrastive training (torch): many runs of one shape as one stacked tensor program.

Each run minimises the same loss family as the theory, with sampled positives and k sampled
negatives per anchor following the sampling model. Runs that share a shape (model, data, C, k,
dim, psi/phi form, conventions) train together: parameters carry a leading run axis B, each run
has its own class proportions p (so its own R), its own loss parameter (tau or margin) and its own
initial seed, and Adam, being elementwise, keeps the runs independent.

Estimators of the expectation over the k negatives (``estimator``):

- ``sampled``: k negatives drawn i.i.d. per anchor, as in a minibatch.
- ``expected`` (default): one negative sample per class per anchor, and the classes of the k
  negatives integrated in closed form over their multinomial counts (as the theory does). It equals
  the sampled loss whenever a class's samples share one feature (NC1 = 0, which UFM reaches early),
  and removes the class-composition noise that otherwise drowns the O(p_minor^2) minority-minority
  force: with ``sampled``, Adam on free features needs thousands of steps to approach c = 1.

How R enters (documented convention): every class has ``samples_per_class`` samples, and anchors
and negatives are drawn class-first with the run's exact proportions p (R = p_major / p_minor), so
R is exact and no class is subsampled below two samples. Anchors are drawn class-balanced with
importance weights C p_c, stratified (exactly M / C anchors of each class per step): the same loss
with far more minority anchors, whose terms weigh O(p_minor^2), and no class-count noise; positives
are another sample of the anchor's class; negatives are drawn from q = p (``marginal``) or from p
without the anchor's class (``other``).

Models: ``ufm`` (one free embedding per sample, normalised: the setting of the theory) and ``mlp``
(a two-layer encoder, output normalised) on ``gaussian`` (one isotropic component per class) or
``digits`` (scikit-learn's bundled 8x8 digits, classes 0..C-1 with majority first; no download).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from pipeline.config import TrainSpec
from pipeline.losses import Loss
from pipeline.metrics import class_mean_gram, group_cosines, nc1
from pipeline.objective import count_vectors, multinomial_weights


@dataclass(frozen=True)
class Run:
    """One training run: a grid point and a seed."""

    loss: Loss
    p: np.ndarray  # (C,) class proportions, majority first
    n_major: int
    k: int
    dim: int
    seed: int
    negatives: str = "marginal"
    reduction: str = "sum"


@dataclass
class RunResult:
    gram: np.ndarray  # (C, C) Gram of the normalised class means
    cos_major: float
    cos_cross: float
    cos_minor: float
    nc1: float
    loss: float  # sampled loss averaged over the last 10% of steps
    features: np.ndarray  # (N, d) final features
    labels: np.ndarray  # (N,)
    diverged: bool


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_data(spec: TrainSpec, C: int, seed: int) -> tuple[np.ndarray | None, np.ndarray]:
    """Inputs X (N, input) (None for UFM) and labels y (N,), ``samples_per_class`` per class."""
    n = spec.samples_per_class
    y = np.repeat(np.arange(C), n)  # (N,)
    if spec.model == "ufm":
        return None, y
    rng = np.random.default_rng(seed)
    if spec.data == "gaussian":
        centres = rng.standard_normal((C, spec.input_dim))  # (C, D_in)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        X = centres[y] + spec.noise * rng.standard_normal((C * n, spec.input_dim)) / math.sqrt(spec.input_dim)
        return X.astype(np.float32), y
    from sklearn.datasets import load_digits

    digits = load_digits()
    if C > 10:
        raise ValueError(f"digits has 10 classes; the grid point needs {C}")
    X = np.concatenate([rng.permutation(digits.data[digits.target == c])[:n] for c in range(C)]) / 16.0
    return X.astype(np.float32), y


def _stack_param(runs: list[Run], device: torch.device) -> torch.Tensor:
    return torch.tensor([r.loss.param for r in runs], dtype=torch.float32, device=device).view(-1, 1, 1)


def train_runs(runs: list[Run], spec: TrainSpec) -> list[RunResult]:
    """Train runs of one shape together; returns one result per run, in order.

    All runs must share the loss form (psi, phi), C, n_major, k, dim and conventions.
    """
    first = runs[0]
    C, k, d, B = first.p.size, first.k, first.dim, len(runs)
    for r in runs:
        same = (r.loss.psi_kind, r.loss.phi_kind, r.p.size, r.n_major, r.k, r.dim, r.negatives, r.reduction)
        assert same == (first.loss.psi_kind, first.loss.phi_kind, C, first.n_major, k, d, first.negatives,
                        first.reduction), "runs of one batch must share their shape"  # fmt: skip
    device = pick_device(spec.device)
    torch.manual_seed(sum(r.seed * 1_000_003**i for i, r in enumerate(runs)) % 2**63)
    X, y = make_data(spec, C, first.seed)
    n = spec.samples_per_class
    N = C * n
    gens = [torch.Generator().manual_seed(r.seed) for r in runs]
    if spec.model == "ufm":
        W = torch.stack([torch.randn(N, d, generator=g) for g in gens]).to(device).requires_grad_()  # (B, N, d)
        params = [W]
    else:
        D_in = X.shape[1]
        W1 = torch.stack([torch.randn(D_in, spec.hidden, generator=g) / math.sqrt(D_in) for g in gens])
        W2 = torch.stack([torch.randn(spec.hidden, d, generator=g) / math.sqrt(spec.hidden) for g in gens])
        W1, W2 = W1.to(device).requires_grad_(), W2.to(device).requires_grad_()  # (B, D_in, h), (B, h, d)
        b1 = torch.zeros(B, 1, spec.hidden, device=device, requires_grad=True)
        params = [W1, b1, W2]
        X_t = torch.from_numpy(X).to(device)  # (N, D_in)

    def unit(H: torch.Tensor) -> torch.Tensor:
        return H * torch.rsqrt((H * H).sum(-1, keepdim=True) + 1e-30)  # cheaper than a division

    def features() -> torch.Tensor:
        if spec.model == "ufm":
            return unit(W)  # (B, N, d)
        return unit(torch.relu(torch.einsum("ni,bih->bnh", X_t, W1) + b1) @ W2)  # (B, N, d)

    offsets = (torch.arange(B, device=device) * N)[:, None]  # (B, 1): rows of run b in the flat (B * N, d)

    def take(F: torch.Tensor, *indices: torch.Tensor) -> list[torch.Tensor]:
        """F[b, index[b, ...]] for each index, through one index_select on the flattened features
        (one gather, and one scatter-add in the backward pass, instead of one per index)."""
        flat = torch.cat([i.reshape(B, -1) for i in indices], dim=1) + offsets  # (B, total)
        rows_out = F.reshape(B * N, -1).index_select(0, flat.reshape(-1)).reshape(B, flat.shape[1], -1)
        sizes = [i[0].numel() for i in indices]
        return [part.reshape(*i.shape, -1) for part, i in zip(rows_out.split(sizes, dim=1), indices, strict=True)]

    p = torch.tensor(np.stack([r.p for r in runs]), dtype=torch.float32, device=device)  # (B, C)
    weight = p * C  # importance weights of class-balanced anchors, (B, C)
    loss_fn = replace(first.loss, param=_stack_param(runs, device))
    rho = 1.0 if first.reduction == "sum" else 1.0 / k
    M = max(C, spec.batch_size // C * C)
    # stratified anchors: a fixed number per class, so the O(p_minor) terms carry no count noise
    anchors_y = torch.arange(C, device=device).repeat(M // C).expand(B, M)  # (B, M)
    optimizer = torch.optim.Adam(params, lr=spec.lr, betas=spec.betas, fused=True)  # one pass over the parameters
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, spec.steps, eta_min=spec.lr * spec.lr_final)
    if spec.estimator == "expected":
        q = p[:, None, :].expand(B, C, C).clone()  # (B, anchor class, negative class)
        if first.negatives == "other":
            q[:, torch.arange(C), torch.arange(C)] = 0.0
            q /= q.sum(-1, keepdim=True)
        if first.loss.psi_linear:
            N_t = None
        else:
            counts = count_vectors(k, C).astype(np.float64)  # (Mc, C)
            N_t = torch.tensor(counts, dtype=torch.float32, device=device)
            P_t = torch.stack([torch.tensor(multinomial_weights(counts, qb), dtype=torch.float32)
                               for qb in q.cpu().double().numpy()]).to(device)  # (B, C, Mc)  # fmt: skip
    tail = max(1, spec.steps // 10)
    tail_loss = torch.zeros(B, device=device)
    rows = torch.arange(B, device=device)[:, None]  # (B, 1)
    for step in range(spec.steps):
        F = features()  # (B, N, d)
        y_a = anchors_y  # (B, M): stratified, M / C anchors of every class
        i_a = y_a * n + torch.randint(n, (B, M), device=device)
        shift = torch.randint(1, n, (B, M), device=device) if n > 1 else 0
        i_p = y_a * n + (i_a - y_a * n + shift) % n  # another sample of the class (itself when n = 1)
        if spec.estimator == "sampled":
            if first.negatives == "marginal":
                y_n = torch.multinomial(p, M * k, replacement=True).view(B, M, k)  # (B, M, k)
            else:
                q_a = p[:, None, :].expand(B, M, C).clone()  # (B, M, C)
                q_a.scatter_(2, y_a[..., None], 0.0)
                y_n = torch.multinomial(q_a.view(B * M, C), k, replacement=True).view(B, M, k)
            i_n = y_n * n + torch.randint(n, (B, M, k), device=device)  # (B, M, k)
            f_a, f_p, f_n = take(F, i_a, i_p, i_n)  # (B, M, d), (B, M, d), (B, M, k, d)
            z = torch.einsum("bmkd,bmd->bmk", f_n, f_a) - (f_a * f_p).sum(-1, keepdim=True)  # (B, M, k)
            per_anchor = loss_fn.psi(rho * loss_fn.phi(z).sum(-1))  # (B, M)
        else:
            i_n = torch.arange(C, device=device) * n + torch.randint(n, (B, M, C), device=device)  # (B, M, C)
            f_a, f_p, f_n = take(F, i_a, i_p, i_n)  # f_n (B, M, C, d): one negative sample per class
            z = torch.einsum("bmcd,bmd->bmc", f_n, f_a) - (f_a * f_p).sum(-1, keepdim=True)  # (B, M, C)
            q_a = q[rows, y_a]  # (B, M, C)
            if N_t is None:  # psi linear: E[sum_i phi] = k sum_j q_j phi_j
                per_anchor = rho * k * (q_a * loss_fn.phi(z)).sum(-1)  # (B, M)
            else:
                S = rho * loss_fn.phi(z) @ N_t.T  # (B, M, Mc)
                per_anchor = (P_t[rows, y_a] * loss_fn.psi(S)).sum(-1)  # (B, M)
        per_run = (weight.gather(1, y_a) * per_anchor).mean(1)  # (B,)
        optimizer.zero_grad(set_to_none=True)
        per_run.sum().backward()
        optimizer.step()
        schedule.step()
        if step >= spec.steps - tail:
            tail_loss += per_run.detach() / tail
    with torch.no_grad():
        F = features().cpu().numpy().astype(np.float64)  # (B, N, d)
    tail_loss = tail_loss.cpu().numpy()
    results = []
    for b, run in enumerate(runs):
        H = F[b]
        diverged = not (np.all(np.isfinite(H)) and np.isfinite(tail_loss[b]))
        if diverged:
            nan_g = np.full((C, C), np.nan)
            results.append(RunResult(nan_g, math.nan, math.nan, math.nan, math.nan, float(tail_loss[b]), H, y, True))
            continue
        G = class_mean_gram(H, y, C)
        a, b_cos, c = group_cosines(G, run.n_major)
        results.append(RunResult(G, a, b_cos, c, nc1(H, y, C), float(tail_loss[b]), H, y, False))
    return results

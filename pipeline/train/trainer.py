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

Gradients: autograd never runs through the gathered samples. :class:`Objective` gives the loss and
its derivative in the similarities z analytically; :func:`contrastive_grad` turns that into the
feature gradient (sparse kernels for the negatives on CPU) and :func:`normalize_backward` carries it
through the normalisation; an MLP's parameters get it by one backward pass from the features.

Models: ``ufm`` (one free embedding per sample, normalised: the setting of the theory) and ``mlp``
(a two-layer encoder, output normalised) on ``gaussian`` (one isotropic component per class) or
``digits`` (scikit-learn's bundled 8x8 digits, classes 0..C-1 with majority first; no download).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

from pipeline.metrics import WithinClass, class_mean_gram, group_cosines, stationary, within_class
from pipeline.sweep.config import TrainSpec
from pipeline.theory.losses import Loss
from pipeline.theory.objective import choose_method, count_vectors, multinomial_weights
from pipeline.theory.problem import negative_distribution
from pipeline.theory.remedies import NONE, Remedy
from pipeline.theory.transform import nodes as transform_nodes
from pipeline.train.data import make_data
from pipeline.train.objective import Objective, contrastive_grad, normalize, normalize_backward
from pipeline.train.sampling import AliasSampler


@dataclass(frozen=True)
class Run:
    """One training run: a grid point and a seed."""

    loss: Loss
    p: np.ndarray  # (C,) class proportions, head first (from the point's profile)
    n_major: int | None  # K_A for step profiles (a, b, c measured), else None
    k: int | float  # math.inf: the large-k limit (estimator expected)
    dim: int
    seed: int
    negatives: str = "marginal"
    reduction: str = "sum"
    start: np.ndarray | None = None  # (C, dim) unit class vectors to start from (train.init: theory)
    counts: np.ndarray | None = None  # (C,) integer training samples a class (a subsampled dataset, train.n_max)
    remedy: Remedy = NONE  # a remedy (pipeline.theory.remedies): anchor weights, negatives, phi_cj in the loss


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
    within: WithinClass | None = None  # within-class measures (None when diverged)
    grad_norm: float = math.nan  # exact loss's normalised Riemannian norm (ufm), else parameter space
    loss_change: float = math.nan  # relative loss change over the last 10% of steps (NaN: exact runs)
    converged: bool | None = None  # pipeline.metrics.stationary (None where neither measure exists)
    # runs on a subsampled dataset with a test split (pipeline.train.batch_trainer); None elsewhere
    n_train_class: np.ndarray | None = None  # (C,) training samples a class
    n_test_class: np.ndarray | None = None  # (C,) test samples a class
    gram_test: np.ndarray | None = None  # (C, C) Gram of the normalised class means of the test features
    acc_test_class: np.ndarray | None = None  # (C,) nearest-class-mean test accuracy per class
    acc_shots: dict[str, float] | None = None  # its many / medium / few-shot averages (pipeline.metrics.SHOTS)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def stack_param(runs: list[Run], device: torch.device) -> torch.Tensor:
    return torch.tensor([r.loss.param for r in runs], dtype=torch.float32, device=device).view(-1, 1, 1)


# On a CPU, stacking runs pays while the stacked feature tables stay about cache-sized; past that
# every elementwise pass streams from farther away and a stack is slower per run (reference shape of
# benchmarks/bench_train.py, 350 kB of features a run: 4 runs a stack are fastest on 1 thread, 8 on
# 2; 16 are 20-35% slower). A fixed budget, not one scaled by threads: which runs share a stack
# (and so a random stream) then depends on the config alone. A GPU takes the whole batch.
CPU_STACK_BYTES = 3 * 2**19
EXACT_MAX_TERMS = 2_000_000  # (anchor, positive) pairs x samples of the exact loss a stationarity check evaluates



def train_runs(runs: list[Run], spec: TrainSpec) -> list[RunResult]:
    """Train runs of one shape together; returns one result per run, in order.

    All runs must share the loss form (psi, phi), C, n_major, k, dim and conventions. On a CPU they
    are stacked ``CPU_STACK_BYTES`` of features at a time; each stack is one tensor program. The data
    (mlp) come from the first run's seed, as do all runs of the batch.
    """
    if spec.estimator == "exact":
        return [_exact_run(run, spec) for run in runs]
    first = runs[0]
    assert all(run_shape(r) == run_shape(first) for r in runs), "runs of one batch must share their shape"
    device = pick_device(spec.device)
    width = first.dim + (spec.hidden if spec.model == "mlp" else 0)  # floats a sample keeps per step
    run_bytes = 4 * first.p.size * spec.samples_per_class * width
    size = len(runs) if device.type == "cuda" else max(1, CPU_STACK_BYTES // run_bytes)
    data = make_data(spec, first.p.size, first.seed)
    stacks = [runs[i : i + size] for i in range(0, len(runs), size)]
    return [result for stack in stacks for result in _train_stack(stack, spec, data, device)]


def run_shape(r: Run) -> tuple:
    """What every run of one stacked program shares (both trainers): the loss's form, C, K_A, k, d, the
    conventions and the remedy; runs differ in proportions, seed and the loss's parameter."""
    return r.loss.psi_kind, r.loss.phi_kind, r.p.size, r.n_major, r.k, r.dim, r.negatives, r.reduction, r.remedy


def _exact_run(run: Run, spec: TrainSpec) -> RunResult:
    """One free-feature run minimised exactly (:mod:`pipeline.train.exact_ufm`), measured like the others."""
    from pipeline.train.exact_ufm import fit_exact

    fit = fit_exact(run.loss, run.p, spec.samples_per_class, run.k, run.dim, run.seed, run.negatives, run.reduction,
                    run.remedy)  # fmt: skip
    return measured(run, fit.features, fit.labels, fit.loss, fit.grad_norm)


def measured(run: Run, H: np.ndarray, y: np.ndarray, loss: float, grad_norm: float = math.nan,
              loss_change: float = math.nan, grad_decides: bool = True,
              p_min: float | None = None) -> RunResult:  # fmt: skip
    """A run's result from its final unit features H (N, d): class-mean Gram, cosines, within-class measures.

    ``grad_decides``: stationarity by the gradient norm (the exact loss's, free features), else by the
    loss change (a parameter-space norm has no scale-free tolerance), which with ``p_min`` decides only
    where it resolves the minority's terms (:func:`pipeline.metrics.stationary`)."""
    C = run.p.size
    if not (np.all(np.isfinite(H)) and np.isfinite(loss)):
        return RunResult(np.full((C, C), np.nan), math.nan, math.nan, math.nan, math.nan, float(loss), H, y, True)
    G = class_mean_gram(H, y, C)
    a, b_cos, c = group_cosines(G, run.n_major) if run.n_major is not None else (math.nan,) * 3
    within = within_class(H, y, C)
    converged = stationary(grad_norm if grad_decides else math.nan, loss_change, p_min)
    return RunResult(G, a, b_cos, c, within.nc1, float(loss), H, y, False, within, grad_norm, loss_change, converged)


def _train_stack(
    runs: list[Run], spec: TrainSpec, data: tuple[np.ndarray | None, np.ndarray], device: torch.device
) -> list[RunResult]:
    """Train runs of one shape as one stacked tensor program (leading run axis B)."""
    first = runs[0]
    C, k, d, B = first.p.size, first.k, first.dim, len(runs)
    torch.manual_seed(sum(r.seed * 1_000_003**i for i, r in enumerate(runs)) % 2**63)
    X, y = data
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

    def embeddings() -> torch.Tensor:  # (B, N, d) before normalisation, attached to the parameters
        if spec.model == "ufm":
            return W
        return torch.relu(torch.einsum("ni,bih->bnh", X_t, W1) + b1) @ W2

    if spec.init == "theory":
        if any(r.start is None for r in runs):
            raise ValueError("train.init 'theory' needs every run's start (its optimal class vectors)")
        targets = torch.tensor(np.stack([r.start[y] for r in runs]), dtype=torch.float32, device=device)  # (B, N, d)
        if spec.model == "ufm":
            with torch.no_grad():  # at the random start's norm sqrt(d): Adam's steps on the sphere alike
                W.copy_(targets * math.sqrt(d))
        elif (miss := fit_to_targets(embeddings, params, targets)) > PREFIT_MISS_TOL:
            warnings.warn(f"train.init 'theory': the encoder fits the optimal class vectors only to a mean "
                          f"1 - cos of {miss:.2g}: its start is not the theory's geometry", stacklevel=2)  # fmt: skip

    offsets = (torch.arange(B, device=device) * N)[:, None]  # (B, 1): rows of run b in the flat (B * N, d)
    p_runs = np.stack([r.p for r in runs])  # (B, C) float64
    a_runs = np.stack([r.remedy.anchor_weights(r.p) for r in runs])  # (B, C): p, or a remedy's reweighting
    w_class = torch.tensor(a_runs * C, dtype=torch.float32, device=device)  # (B, C) weights of balanced anchors
    loss_fn = replace(first.loss, param=stack_param(runs, device))
    rho = 1.0 if first.reduction == "sum" else 1.0 / k
    M = max(C, spec.batch_size // C * C)
    # stratified anchors: a fixed number per class, so the O(p_minor) terms carry no count noise
    y_a = torch.arange(C, device=device).repeat(M // C).expand(B, M)  # (B, M)
    first_row_a = y_a * n + offsets  # (B, M): flat row of sample 0 of each anchor's class
    optimizer = torch.optim.Adam(params, lr=spec.lr, betas=spec.betas, fused=True)  # one pass over the parameters
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, spec.steps, eta_min=spec.lr * spec.lr_final)
    rows = torch.arange(B, device=device)[:, None]  # (B, 1)
    w = w_class[rows, y_a]  # (B, M)
    # class distribution of one negative, by run and anchor class
    base = [r.remedy.negative_base(r.p) for r in runs]  # p, or a remedy's balanced negatives
    q_neg = np.stack([negative_distribution(b, r.negatives) for b, r in zip(base, runs, strict=True)])  # (B, C, C)
    tables = _phi_affine(runs, device)  # a remedy's phi_cj: (delta, scale) tables (B, C, C), or None
    affine = tuple(None if t is None else t[rows, y_a] for t in tables)  # (B, M, C) by anchor and negative class
    if spec.estimator == "sampled":
        objective = Objective(loss_fn, rho, k, w)
        if first.negatives == "other":  # one alias table per run and anchor class
            negatives = AliasSampler(q_neg.reshape(B * C, C), n, device)
            table_of_anchor = rows * C + y_a  # (B, M)
        else:  # one table per run
            negatives = AliasSampler(np.stack(base), n, device)
            table_of_anchor = rows.expand(B, M)  # (B, M)
    else:
        first_row_n = torch.arange(C, device=device) * n + offsets[..., None]  # (B, 1, C): one negative a class
        q_a = torch.tensor(q_neg, dtype=torch.float32, device=device)[rows, y_a]  # (B, M, C)
        route = choose_method(first.loss, k, C)
        delta, scale = affine
        if route in ("linear", "limit"):
            objective = Objective(loss_fn, rho, k, w, q_a, delta=delta, scale=scale)
        elif route == "transform":  # nodes for every z in [-2, 2]: x = rho phi_cj(z) <= rho phi(s_max (2 + d_max))
            reach = 2.0 if all(t is None for t in tables) else _affine_reach(runs)
            x_max = rho * max(float(r.loss.phi(reach)) for r in runs)
            t = torch.tensor(np.array(transform_nodes(k, x_max)), dtype=torch.float32, device=device)
            objective = Objective(loss_fn, rho, k, w, q_a, nodes=t, delta=delta, scale=scale)
        else:
            counts = count_vectors(k, C).astype(np.float64)  # (Mc, C)
            P = np.stack([multinomial_weights(counts, q_b) for q_b in q_neg])  # (B, C anchor, Mc)
            P_a = torch.tensor(P, dtype=torch.float32, device=device)[rows, y_a]  # (B, M, Mc)
            objective = Objective(loss_fn, rho, k, w, q_a, torch.tensor(counts, dtype=torch.float32, device=device),
                                  P_a, delta=delta, scale=scale)  # fmt: skip
    kernel = spec.kernel if spec.kernel != "auto" else "dense" if device.type == "cuda" else "sparse"
    tail = TailLoss(spec.steps, B, device)

    def gradient() -> torch.Tensor:
        """The training objective of one fresh batch per run (B,); its gradient left in the parameters."""
        step_objective = objective
        place = torch.randint(n, (B, M), device=device)  # (B, M): each anchor's sample in its class
        shift = torch.randint(1, n, (B, M), device=device) if n > 1 else 0
        i_a = first_row_a + place  # (B, M) flat rows
        i_p = first_row_a + (place + shift) % n  # another sample of the class (itself when n = 1)
        if spec.estimator == "sampled":
            i_n = negatives.sample(table_of_anchor, k) + offsets[..., None]  # (B, M, k)
            if any(t is not None for t in tables):  # a remedy's phi_cj at each drawn negative's class
                y_n = (i_n - offsets[..., None]) // n  # (B, M, k)
                delta, scale = (None if t is None else t[rows[..., None], y_a[..., None], y_n] for t in tables)
                step_objective = replace(objective, delta=delta, scale=scale)
        else:
            i_n = first_row_n + torch.randint(n, (B, M, C), device=device)  # (B, M, C)
        H = embeddings()  # (B, N, d)
        F, r = normalize(H.detach())  # (B, N, d), (B, N, 1)
        per_run, grad_F = contrastive_grad(F, i_a, i_p, i_n, step_objective.terms, kernel)
        grad_H = normalize_backward(F, r, grad_F)  # (B, N, d)
        if spec.model == "ufm":
            W.grad = grad_H
        else:
            optimizer.zero_grad(set_to_none=True)
            H.backward(grad_H)
        return per_run

    for step in range(spec.steps):
        per_run = gradient()
        optimizer.step()
        schedule.step()
        tail.add(step, per_run)
    with torch.no_grad():
        F = normalize(embeddings())[0].cpu().numpy().astype(np.float64)  # (B, N, d)
    tail_loss, change = tail.result()
    exact = spec.model == "ufm" and N * n * N <= EXACT_MAX_TERMS  # the exact loss's norm is affordable
    if exact:
        grad_norm = np.array([_stationarity(run, spec, F[b]) for b, run in enumerate(runs)])
    else:  # an encoder, or free features too many for the exact loss: the parameter-space norm
        grad_norm = parameter_grad_norm(gradient, params) / p_runs.min(axis=1)  # (B,)
    return [measured(run, F[b], y, tail_loss[b], float(grad_norm[b]), float(change[b]), exact)
            for b, run in enumerate(runs)]  # fmt: skip


def _phi_affine(runs: list[Run], device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """A remedy's phi_cj(t) = phi(scale_cj (t + delta_cj)) per run: (delta (B, C, C), scale (B, C, C)), rows the
    anchor's class and columns the negative's, each None where the runs' remedy has none."""
    parts = [r.remedy.phi_affine(r.p, r.loss) for r in runs]  # [(delta (C, C) | None, scale (C, C) | None)]
    out = [None if parts[0][i] is None else
           torch.tensor(np.stack([part[i] for part in parts]), dtype=torch.float32, device=device)
           for i in range(2)]  # fmt: skip
    return out[0], out[1]


def _affine_reach(runs: list[Run]) -> float:
    """The largest argument of phi a remedy's phi_cj(z) takes for z in [-2, 2], in phi's own units."""
    reach = 2.0
    for r in runs:
        delta, scale = r.remedy.phi_affine(r.p, r.loss)
        shifted = 2.0 + (0.0 if delta is None else float(delta.max()))
        reach = max(reach, shifted * (1.0 if scale is None else float(scale.max())))
    return reach


class TailLoss:
    """The training loss over the last 10% of steps, per run: its mean (``loss_train``) and the relative
    change between its two halves (``loss_change_train``, NaN where the tail has fewer than 2 steps)."""

    def __init__(self, steps: int, R: int, device: torch.device) -> None:
        self.steps, self.tail = steps, max(1, steps // 10)
        self.mean = torch.zeros(R, device=device)
        self.halves = torch.zeros(2, R, device=device)  # the tail's two halves: the loss change over the tail

    def add(self, step: int, per_run: torch.Tensor) -> None:
        """Count step ``step``'s loss per run (R,) if it lies in the tail."""
        if step >= self.steps - self.tail:
            self.mean += per_run / self.tail
            self.halves[int(step >= self.steps - self.tail // 2)] += per_run.detach()

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean (R,), relative change (R,)), float32 and float64 numpy."""
        tail = self.tail
        first, second = (h.cpu().numpy().astype(np.float64) / max(1, n_h) for h, n_h in zip(
            self.halves, (tail - tail // 2, tail // 2), strict=True))  # fmt: skip
        change = np.where(tail >= 2, (first - second) / np.maximum(np.abs(second), 1e-300), np.nan)  # (R,)
        return self.mean.cpu().numpy(), change


GRAD_BATCHES = 32  # fresh batches over which an encoder's final gradient is averaged


def parameter_grad_norm(gradient: Callable[[], torch.Tensor], params: list[torch.Tensor]) -> np.ndarray:
    """|E grad_theta L| per run (B,): the norm over an encoder's parameters of its training objective's
    gradient at the final parameters, from ``GRAD_BATCHES`` fresh batches.

    The squared norm of the batch mean is debiased by the batches' variance (E |mean|^2 = |g|^2 +
    tr Sigma / T): sqrt(max(0, |mean|^2 - sum_t |g_t - mean|^2 / (T (T - 1)))). No step is taken.
    """
    batches = []
    for _ in range(GRAD_BATCHES):
        gradient()
        batches.append(torch.cat([p.grad.reshape(p.shape[0], -1) for p in params], dim=1).double())  # (B, P)
    g = torch.stack(batches)  # (T, B, P)
    mean = g.mean(0)  # (B, P)
    T = g.shape[0]
    noise = ((g - mean) ** 2).sum((0, 2)) / (T * (T - 1))  # (B,)
    return (mean.pow(2).sum(1) - noise).clamp_min(0.0).sqrt().cpu().numpy()


PREFIT_STEPS = 2000  # full-batch Adam steps that bring an encoder to the theory's geometry (train.init: theory)
PREFIT_LR = 1e-2
PREFIT_MISS_TOL = 1e-3  # a fit that misses the targets by more is reported (a warning)


def fit_to_targets(embeddings: Callable[[], torch.Tensor], params: list[torch.Tensor], targets: torch.Tensor) -> float:
    """Fit an encoder so that its normalised features are ``targets`` (B, N, d), unit rows: the start of
    ``train.init: theory`` (each sample at its class's optimal vector, no within-class spread).

    Full-batch Adam on the mean of 1 - cos(f(x_s), target_s), learning rate cosine-decayed from
    ``PREFIT_LR`` over ``PREFIT_STEPS``; returns that mean at the end (0: every sample on its target).
    """
    optimizer = torch.optim.Adam(params, lr=PREFIT_LR)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, PREFIT_STEPS)

    def miss() -> torch.Tensor:  # mean 1 - cos over runs and samples, attached to the parameters
        return 1.0 - (torch.nn.functional.normalize(embeddings(), dim=-1) * targets).sum(-1).mean()

    for _ in range(PREFIT_STEPS):
        optimizer.zero_grad(set_to_none=True)
        miss().backward()
        optimizer.step()
        schedule.step()
    with torch.no_grad():
        return float(miss())


def _stationarity(run: Run, spec: TrainSpec, H: np.ndarray) -> float:
    """Normalised Riemannian gradient norm of the exact sample-level loss at a free-feature run's end
    (:mod:`pipeline.train.exact_ufm`); NaN for a diverged run. The trainer asks only where the exact loss
    is affordable (pairs x samples <= EXACT_MAX_TERMS)."""
    from pipeline.train.exact_ufm import SampleLoss

    if not np.all(np.isfinite(H)):
        return math.nan
    problem = SampleLoss.build(run.loss, run.p, spec.samples_per_class, run.k, run.negatives, run.reduction,
                               run.remedy)  # fmt: skip
    return problem.grad_norm(H.T)

"""The ``oblique`` solver: many distinct class proportions, certified, on a product of spheres.

Burer-Monteiro: G = V^T V with V (C x C) of unit columns, minimised by pymanopt's Riemannian trust
region on the analytic gradient of the exact expectation (the transform at any k,
:mod:`pipeline.theory.objective`) and its Hessian-vector products (from the transform's coarser 'model'
rule at finite k: the model's error slows only the last steps), then certified by the solver-independent bound of
:func:`pipeline.theory.objective.certificate`. Nothing is assumed about symmetry: every class has its
own vector, so any profile works (the symmetric solver is faster where classes share proportions).

Two choices make it converge at C = 100 (measured; plain Oblique(C, C) stalled at |grad| ~ 1e-7):

- **No rotation gauge.** V is kept upper triangular (the Cholesky factor of G, classes sorted head
  first): column c lies on the sphere S^c of the first c + 1 coordinates. Every G in the elliptope
  has such a factor, and the C(C - 1) / 2 zero-curvature rotations V -> Q V, which sent the inner
  conjugate gradients to the trust-region boundary along "negative curvature" of size |grad|, are gone.
- **Preconditioning by the curvature.** Without a remedy column c's curvature scales like p_c (its
  anchor weight and its weight as a negative), so the inner solver works on dV / p_c: the minority
  directions, whose terms weigh ~p_min^2, converge with the rest. Remedies part curvature from
  proportion (class temperatures make a tail column (tau / tau_c)^2 stiffer), so the first stage weighs
  each column by its curvature at the start, estimated from 8 Hessian-vector products
  (:func:`column_curvature`); measured at exp(C = 10, rho = 100), InfoNCE tau = 0.5: 4x fewer iterations
  under logit adjustment with class temperatures, the same without a remedy.

The start is the Cholesky factor of a slightly shrunk simplex ETF (the balanced optimum); from ``LOW_RANK_FROM``
(100) classes, the ETF's own rank-(C - 1) factor first, whose certified optimum is the answer where it exists (the
long-tailed optima measured have rank C - 1, and the full factor's extra direction is flat there). That factor's
inner solves run first on :func:`pair_preconditioner` (each column's block of the Hessian, whose head and tail
directions differ in curvature by rho, inverted on its tangent space): 5x fewer products at C = 300 and 1000. From
``MODEL_SINGLE_FROM`` (200) classes on, the trust region's model products run their C x C matrix products in float32
(:func:`model_product`): they are most of a many-class solve, and the model needs no more; the value, the gradient
and the certificate stay float64.
"""

from __future__ import annotations

import functools
import math
import time
from types import SimpleNamespace
from typing import Any

import numpy as np

from pipeline.metrics import etf_gram, group_cosines
from pipeline.theory.objective import certificate, expected_loss
from pipeline.theory.problem import Problem
from pipeline.theory.solution import Solution
from pipeline.theory.transform import MODEL_SINGLE_FROM

GRAD_TOL = 1e-14  # norm of the Riemannian gradient (in the stage's metric) at which a stage stops
MAX_ITERATIONS = 500
# a stage stops after this many seconds (pymanopt's default, made explicit): exp(C = 1000, rho = 100) at k = inf,
# d = 128 (the rank-d path) reached it after 902 stage-1 iterations, its gradient norm at 3e-5 and falling slowly
MAX_STAGE_S = 1000.0
GAP_REL_TOL = 1e-9  # certified gap / |L| above this: optimal_inaccurate
GAP_MINOR_TOL = 1e-3  # gap / p_min^2 above this: the smallest classes are not resolved


def weighted_oblique(m: int, n: int, weight: np.ndarray, triangular: bool = False) -> Any:
    """pymanopt's Oblique(m, n) (unit columns) with the metric sum_c weight_c <a_c, b_c> (each
    sphere's round metric scaled by a constant); ``triangular`` (m = n) keeps points upper
    triangular (column c on S^c: no rotation gauge)."""
    from pymanopt.manifolds import Oblique

    class WeightedOblique(Oblique):
        def __init__(self) -> None:
            super().__init__(m, n)
            self.mask = np.triu(np.ones((m, n))) if triangular else np.ones((m, n))
            self.weight = weight[None, :]  # (1, n)
            self._dimension = int(self.mask.sum()) - n

        @property
        def typical_dist(self) -> float:
            return float(np.pi * np.sqrt(weight.sum()))

        def inner_product(self, point, a, b) -> float:
            return float(np.einsum("ij,ij->j", a, b) @ self.weight[0])  # column dots, no (m, n) temporaries

        def norm(self, point, a) -> float:
            return math.sqrt(self.inner_product(point, a, a))

        def projection(self, point: np.ndarray, vector: np.ndarray) -> np.ndarray:
            vector = vector * self.mask
            return vector - point * np.einsum("ij,ij->j", point, vector)

        to_tangent_space = projection

        def euclidean_to_riemannian_gradient(self, point, euclidean_gradient):
            return self.projection(point, euclidean_gradient) / self.weight

        def euclidean_to_riemannian_hessian(self, point, euclidean_gradient, euclidean_hessian, tangent_vector):
            # the round sphere's Hessian, divided by the constant factor of the metric
            return (self.projection(point, euclidean_hessian) - tangent_vector * (
                (point * euclidean_gradient).sum(0)[None, :])) / self.weight  # fmt: skip

        def random_point(self) -> np.ndarray:
            return self._normalize_columns(np.random.normal(size=(self._m, self._n)) * self.mask)

        def random_tangent_vector(self, point: np.ndarray) -> np.ndarray:
            vector = self.projection(point, np.random.normal(size=point.shape))
            return vector / self.norm(point, vector)

    return WeightedOblique()


def membership(label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """E (C, m) with E[i, c] = 1 where class i is in cluster c (clusters 0..m-1 as numbered in
    ``label``), and one representative class per cluster (m,)."""
    clusters = np.unique(label)
    E = (label[:, None] == clusters[None, :]).astype(float)  # (C, m)
    return E, E.argmax(axis=0)


def etf_start(C: int, shrink: float = 0.02) -> np.ndarray:
    """(C, C) upper-triangular V with V^T V = (1 - shrink) ETF + shrink I (positive definite)."""
    G = (1 - shrink) * etf_gram(C) + shrink * np.eye(C)
    return np.linalg.cholesky(G).T


def trapezoidal(V: np.ndarray) -> np.ndarray:
    """(d, C) upper-trapezoidal factor R of V^T V (V = Q R, a positive diagonal), columns normalised: the same
    Gram with no rotation gauge (column c on the sphere of its first c + 1 coordinates)."""
    R = np.linalg.qr(V, mode="r")  # (d, C)
    R *= np.where(np.diag(R) < 0, -1.0, 1.0)[:, None]  # rows flipped where the diagonal was negative: the same G
    return R / np.linalg.norm(R, axis=0)


def etf_factor(C: int) -> np.ndarray:
    """(C - 1, C) upper-trapezoidal V with V^T V the simplex ETF (rank C - 1, no shrink)."""
    lam, U = np.linalg.eigh(etf_gram(C))  # ascending: one 0, then C - 1 equal to C / (C - 1)
    return trapezoidal(np.sqrt(lam[1:])[:, None] * U[:, 1:].T)


# stage 1's inner conjugate gradient stops at residual |r0| min(|r0|^theta, kappa): pymanopt's theta = 1 (quadratic
# convergence) spent most of the solve in inner iterations; theta = 0.5 (order 1.5) there halves exp(C = 100,
# rho = 100) at k = 256 and k = inf, with the same certificates. Stage 2, the last digits, keeps theta = 1
CG_THETA = 0.5
STALL_WINDOW = 20  # iterations without halving the best gradient norm, after which a stage stops
STALL_BELOW = 1e-10  # stage 1 stops so only below this gradient norm (far from it, slow progress is progress)
ROUNDOFF_FACTOR = 2.0  # a stage stops where its gradient norm is within this factor of its round-off, which is
ROUNDOFF = float(np.finfo(float).eps)  # estimated column by column as eps sqrt(C) |dL/dG column|
# where a lower bound on the objective is known (a rank-d point beside its convex bound), a stage also stops once its
# objective fell by less than PROGRESS_FRACTION of its excess over the bound in PROGRESS_WINDOW iterations: what is
# reported (the excess) no longer moves at the scale it is read. Measured at exp(C = 1000, rho = 100), k = inf: rank
# 128 moved 2e-6 (of an excess of 8.9e-3) over its last 200 of 500 iterations (622 s); at ImageNet-LT's pareto
# shape, k = inf, rank 512 stopped so after 81 iterations (109 s, excess 3.8303e-4; stage 2 then 3.8299e-4), rank
# 128 after 73 (35 s, 9.3939e-3; then 9.3925e-3). With 1e-3, rank 128 ran 157 s to 9.3848e-3
PROGRESS_WINDOW = 50
PROGRESS_FRACTION = 1e-2


@functools.cache
def _stalling_trust_regions() -> type:
    """pymanopt's TrustRegions that also stops when its gradient norm has not halved over ``STALL_WINDOW``
    iterations, anywhere (``stall_below = inf``: stage 2, per-class stationarity) or only below ``stall_below``
    (stage 1, at round-off). Made once, on first use (pymanopt is imported lazily). Measured: exp(C = 10, rho = 100)
    under class_tau(gamma=1) spent 100 stage-2 iterations, 3x the solve, before falling back; combined with
    logit adjustment, stage 1 spent its last 200 of 500 iterations within 1e-13 of stationary."""
    from pymanopt.optimizers import TrustRegions

    class StallingTrustRegions(TrustRegions):
        def __init__(self, *args: Any, stall_below: float = np.inf, floor: Any = None, value: Any = None,
                     bound: float | None = None, start_value: float = math.inf, **kwargs: Any) -> None:  # fmt: skip
            super().__init__(*args, **kwargs)
            self.stall_below = stall_below
            self.floor = floor  # () -> the gradient norm's round-off at the point last evaluated, or None
            self.value, self.bound = value, bound  # () -> the objective last evaluated; a lower bound on it
            self.start_value = start_value  # the objective at the stage's start (its first proposal may be worse)
            self._norms: list[float] = []  # one run per optimizer: each stage makes its own
            self._values: list[float] = []  # the best objective so far, after each iteration

        def _check_stopping_criterion(self, *, start_time, gradient_norm=np.inf, iteration=-1, **kwargs):
            reason = super()._check_stopping_criterion(start_time=start_time, gradient_norm=gradient_norm,
                                                       iteration=iteration, **kwargs)  # fmt: skip
            if reason is None and self.floor is not None and gradient_norm <= ROUNDOFF_FACTOR * self.floor():
                reason = f"Terminated - at round-off: the gradient norm is within {ROUNDOFF_FACTOR:g}x its error"
            self._norms.append(gradient_norm)
            recent, before = self._norms[-STALL_WINDOW:], self._norms[:-STALL_WINDOW]
            if reason is None and before and min(recent) < self.stall_below and min(recent) > 0.5 * min(before):
                reason = f"Terminated - stalled: the gradient norm did not halve in {STALL_WINDOW} iterations"
            if self.bound is not None and self.value is not None:
                self._values.append(min(self.value(), self._values[-1] if self._values else self.start_value))
                if reason is None and len(self._values) > PROGRESS_WINDOW:
                    best, before = self._values[-1], self._values[-1 - PROGRESS_WINDOW]
                    if before - best < PROGRESS_FRACTION * (best - self.bound):
                        reason = (f"Terminated - slow: the objective fell by {before - best:.2g}, less than "
                                  f"{PROGRESS_FRACTION:g} of its excess over the lower bound ({best - self.bound:.3g}),"
                                  f" in {PROGRESS_WINDOW} iterations")
            return reason

    return StallingTrustRegions


CURVATURE_PROBES = 8  # random tangent directions of the stage-1 curvature estimate
CURVATURE_FLOOR = 0.1  # no column's stage-1 weight goes below this fraction of weight_c x the median curvature ratio


def column_curvature(V: np.ndarray, gradient: np.ndarray, hessian: Any, triangular: bool = False,
                     probes: int = CURVATURE_PROBES, seed: int = 0) -> np.ndarray:  # fmt: skip
    """Each column's mean curvature at V on its sphere (n,), estimated from ``probes`` Hessian-vector products.

    Each probe is a random sign vector, projected on every column's tangent space (the first c + 1 coordinates
    of column c where ``triangular``) and normalised per column: E[z_c . (H z)_c] is the trace of column c's
    diagonal block over its dimension (the cross blocks average out), plus the sphere's term -<v_c, grad_c>.
    Column 0 of a triangular V has no tangent space: 0. Seeded: the same V gives the same estimate.
    """
    m, n = V.shape
    mask = np.triu(np.ones((m, n))) if triangular else np.ones((m, n))
    radial = (V * gradient).sum(axis=0)  # (n,)
    rng = np.random.default_rng(seed)
    total = np.zeros(n)
    for _ in range(probes):
        Z = rng.choice([-1.0, 1.0], size=(m, n)) * mask
        Z -= V * (V * Z).sum(axis=0)  # (m, n): tangent
        norms = np.linalg.norm(Z, axis=0)
        moving = norms > 1e-12 * math.sqrt(m)
        Z[:, moving] /= norms[moving]
        Z[:, ~moving] = 0.0
        total += np.where(moving, (Z * hessian(Z)).sum(axis=0) - radial, 0.0)
    return total / probes


def curvature_weight(weight: np.ndarray, curvature: np.ndarray) -> np.ndarray:
    """Stage 1's metric from the columns' curvature (n,): weight_c x max(curvature_c / weight_c, floor), the
    floor ``CURVATURE_FLOOR`` times the median ratio; ``weight`` itself where no ratio is positive and finite."""
    ratio = curvature / weight
    finite = np.isfinite(ratio) & (ratio > 0)
    if not finite.any():
        return weight
    floor = CURVATURE_FLOOR * float(np.median(ratio[finite]))
    return weight * np.where(finite, np.maximum(ratio, floor), floor)


# no preconditioner at a factor whose diagonal (each class's distance from the earlier ones' span) falls below this
SINGULAR_BELOW = 1e-3
PAIR_FLOOR = 1e-6  # the pairs' curvatures are floored at this fraction of the largest: the inverse's condition


def pair_preconditioner(V: np.ndarray, H: np.ndarray, single: bool = False) -> Any:
    """tangent (m, C) -> each column's Hessian block inverted on its tangent space, the block of column c taken
    as B_c = sum_j H_cj v_j v_j^T (V upper trapezoidal, m = C - 1 or C rows).

    Column c meets class j in one term, G_cj, of curvature H_cj (both anchors' terms): its block is B_c on v_c's
    complement, less the loss's rank-one couplings. H_cj ~ p_c p_j spans rho^2 across the classes; the columns'
    metric rescales blocks, not the directions within them. With R = V[:, :m] square triangular, B_c = R diag(H_c)
    R^T (+ H_c,m v_m v_m^T where m = C - 1, by Sherman-Morrison; the arbitrary H_cc, along v_c, leaves the
    tangent space alone): B_c^-1 = R^-T diag(1 / H_c) R^-1, two matrix products for every column at once.
    Restricted to the tangent space: y - u_c (v_c . y) / (v_c . u_c), u_c = B_c^-1 v_c. Columns on their
    leading coordinates (triangular V) take the full inverse's leading part (exact for the last, near the ETF
    where V ~ I). ``single``: its arithmetic in float32 (it need only be near the inverse). None where the
    factor is near singular (``SINGULAR_BELOW``). Measured at exp(C, rho = 100), InfoNCE: see :data:`LOW_RANK_FROM`.
    """
    dtype = np.float32 if single else np.float64
    m, C = V.shape
    if np.abs(np.diag(V)).min() < SINGULAR_BELOW:  # classes (nearly) merged: R^-1 is not a curvature's inverse
        return None
    V = V.astype(dtype)  # a copy: the point's V is not kept
    R = V[:, :m]  # (m, m) upper triangular
    mask = np.triu(np.ones((m, C), dtype=dtype))
    H = np.array(H, dtype=dtype)  # (C, C)
    off = ~np.eye(C, dtype=bool)
    H[~off] = H.sum(axis=1) / (C - 1)  # along v_c: any positive value
    H = np.maximum(H, PAIR_FLOOR * H[off].max())
    H_lead = H[:, :m].T  # (m, C): H_lead[i, c] = H_ci

    # R^-1 once a point, then products through upper_matmul (scipy's triangular solves measured 2x slower: C = 300)
    R_inv = np.triu(np.linalg.inv(R))  # (m, m) upper triangular
    if m == C - 1:  # the last class's direction, v_m, is not one of R's
        w = R_inv @ V[:, m]  # (m,)
        H_last = H[:, m].copy()  # (C,)
        H_last[m] = 0.0  # the last column's own term
        Q = upper_matmul(R_inv, w[:, None] / H_lead, transposed=True)  # (m, C): A_c^-1 v_m
        coefficient = H_last / (1.0 + H_last * (w[:, None] ** 2 / H_lead).sum(axis=0))  # (C,)

    def inverse(X: np.ndarray) -> np.ndarray:
        Y = upper_matmul(R_inv, upper_matmul(R_inv, X) / H_lead, transposed=True)  # (m, C)
        if m == C - 1:
            Y -= Q * (coefficient * (Q * X).sum(axis=0))
        return Y * mask

    U = inverse(V)  # (m, C)
    vU = (V * U).sum(axis=0)  # (C,)
    vU[~(vU > 0)] = np.inf  # no correction where u_c is not along v_c (round-off): pymanopt projects its steps again

    def precondition(tangent: np.ndarray) -> np.ndarray:
        Y = inverse(tangent.astype(dtype) * mask)
        return (Y - U * ((V * Y).sum(axis=0) / vU)).astype(np.float64, copy=False)

    return precondition


def upper_matmul(U: np.ndarray, X: np.ndarray, transposed: bool = False) -> np.ndarray:
    """U @ X (or U^T @ X) for U (n, n) upper triangular, X (n, k), in three half-size products instead of one:
    3/4 of the flops (measured 17.2 -> 14.1 ms at n = 999, k = 1000, float32, on the 2 cores). numpy's products:
    scipy's triangular BLAS runs on scipy's own OpenBLAS, whose threads and numpy's contend."""
    h = len(U) // 2
    out = np.empty((len(U), X.shape[1]), dtype=np.result_type(U, X))
    if transposed:  # [[U11^T, 0], [U12^T, U22^T]]
        np.matmul(U[:h, :h].T, X[:h], out=out[:h])
        np.matmul(U[h:, h:].T, X[h:], out=out[h:])
        out[h:] += U[:h, h:].T @ X[:h]
    else:  # [[U11, U12], [0, U22]]
        np.matmul(U[:h, :h], X[:h], out=out[:h])
        out[:h] += U[:h, h:] @ X[h:]
        np.matmul(U[h:, h:], X[h:], out=out[h:])
    return out


def model_product(V: np.ndarray, D_sym: np.ndarray, hvp: Any, single: bool = False, triangular: bool = False) -> Any:
    """dV (m, C) -> the Euclidean Hessian's product at V (m, C): dV D_sym + V (dD + dD^T), dD = hvp(dV^T V + V^T dV).

    ``single`` (:func:`minimise` from ``MODEL_SINGLE_FROM`` classes on): the three C x C products in float32. Each
    is then exact to ~1e-7 of its columns' norms, so a class's column keeps its own scale however small its
    proportion; the trust region's model is already 1e-4 to 5e-4 off at finite k (the transform's coarser rule),
    and the value, gradient and certificate stay float64. Measured at exp(C, rho = 100), tau = 0.5, k = inf, one
    BLAS thread, float64 -> float32: C = 300 19.6 -> 15.4 s, C = 1000 699 -> 497 s, the same iterations, 1% to
    2% more products, Grams equal to 8e-14 and 4e-14; at k = 256 with the transform's float32 model, 1.31x and
    1.56x (docs/benchmarks.md). ``triangular``: V is upper trapezoidal with m = C - 1 or C rows, and so is every
    dV (a tangent vector of the triangular manifold): each product's square triangle through
    :func:`upper_matmul`.
    """
    dtype = np.float32 if single else np.float64
    V_m, D_m = V.astype(dtype, copy=False), D_sym.astype(dtype, copy=False)  # (m, C), (C, C): no copy in float64
    m, C = V_m.shape

    def product(dV: np.ndarray) -> np.ndarray:
        dV = dV.astype(dtype, copy=False)  # (m, C)
        if triangular:  # dV = [dR | dr], V = [R | r]: R, dR (m, m) upper triangular
            dG = np.concatenate([upper_matmul(dV[:, :m], V_m, transposed=True), dV[:, m:].T @ V_m])
        else:
            dG = dV.T @ V_m
        dG = (dG + dG.T).astype(np.float64, copy=False)  # (C, C): the change of G along dV
        dD = hvp(dG)  # (C, C): the change of dL/dG
        E = (dD + dD.T).astype(dtype, copy=False)  # (C, C)
        if triangular:
            out = upper_matmul(dV[:, :m], D_m[:m]) + upper_matmul(V_m[:, :m], E[:m])
            if m < C:  # the columns beyond the triangle (none for the full factor)
                out += dV[:, m:] @ D_m[m:] + V_m[:, m:] @ E[m:]
        else:
            out = dV @ D_m + V_m @ E  # (m, C)
        return out.astype(np.float64, copy=False)

    return product


def staged_trust_region(evaluate: Any, start: np.ndarray, weight: np.ndarray, grad_tol: float = GRAD_TOL,
                        max_iterations: int = MAX_ITERATIONS, triangular: bool = False,
                        first_tol: float | None = None, first_theta: float = 1.0,
                        curvature_metric: bool = False, bound: float | None = None) -> Any:  # fmt: skip
    """Minimise on the oblique manifold of ``start``'s shape (unit columns) in two stages.

    pymanopt's trust region on ``evaluate(W) -> (cost, Euclidean gradient, dW -> Hessian-vector
    product)``, evaluated once per point (pymanopt asks for the cost, gradient and Hessian of a
    point separately). Stage 1 weighs column c's metric by ``weight_c``: column
    c's curvature scales with its weight (a class's proportion), so this is well-conditioned and
    converges from far. Stage 2 weighs it by ``weight_c^2``: its gradient norm,
    sqrt(sum_c |grad_c|^2 / weight_c^2), is each column's stationarity relative to its own weight,
    so terms weighing ~weight_min^2 count. Stage 2 falls back to stage 1's point where it ends worse than it
    started (where the weights span many decades). ``first_tol``: stage 1's own tolerance (default
    ``grad_tol``); ``first_theta``: its inner solve's residual exponent (pymanopt's 1 by default).
    ``curvature_metric``: stage 1 weighs column c by its curvature at the start (:func:`column_curvature`,
    :func:`curvature_weight`) instead of ``weight_c``, where a remedy makes curvature and proportion part
    (class temperatures: a tail column's terms are (tau / tau_c)^2 stiffer). ``bound``: a lower bound on the
    objective, where known; a stage then also stops once its objective fell by less than ``PROGRESS_FRACTION``
    of its excess over it in ``PROGRESS_WINDOW`` iterations. Returns pymanopt's result (point,
    iterations, gradient_norm in the last stage's metric, stopping_criterion).
    """
    import pymanopt

    StallingTrustRegions = _stalling_trust_regions()
    m, n = start.shape
    memo: list = []  # [the point last evaluated, its evaluation]

    def at(W: np.ndarray) -> tuple:
        # pymanopt asks again with the same array (or an equal one): compared, not hashed (8 MB at C = 1000)
        if not memo or not (memo[0] is W or (memo[0].shape == W.shape and np.array_equal(memo[0], W))):
            memo[:] = [W, evaluate(W)]
        return memo[1]

    def cost(W: np.ndarray) -> float:
        return at(W)[0]

    def gradient(W: np.ndarray) -> np.ndarray:
        return at(W)[1]

    def hessian(W: np.ndarray, dW: np.ndarray) -> np.ndarray:
        return at(W)[2](dW)

    def floor(metric: np.ndarray) -> Any:
        """() -> the gradient norm's round-off in a metric at the point last evaluated, where evaluate gives it
        (a fourth item, per column), else None. Called after the stage's first evaluation (memo holds a point)."""
        if not memo or len(memo[1]) < 4:
            return None
        return lambda: math.sqrt(float((memo[1][3] ** 2 / metric).sum()))

    first_weight = weight
    if curvature_metric:
        first_weight = curvature_weight(weight, column_curvature(start, gradient(start), at(start)[2], triangular))

    def precondition(manifold: Any) -> Any:
        def apply(point: np.ndarray, tangent: np.ndarray) -> np.ndarray:
            evaluation = at(point)
            make = evaluation[4] if len(evaluation) > 4 else None
            inverse = None if make is None else make()
            if inverse is None:
                return tangent
            out = inverse(tangent) * manifold.weight
            # positive along the tangent, else it is no preconditioner (a near-singular factor): none, this product
            along = manifold.inner_product(point, out, tangent)
            return out if math.isfinite(along) and along > 0 else tangent

        return apply

    def stage(power: int, point: np.ndarray, iterations: int, grad_tol: float) -> Any:
        manifold = weighted_oblique(m, n, first_weight if power == 1 else weight**power, triangular)
        program = pymanopt.Problem(manifold, pymanopt.function.numpy(manifold)(cost),
                                   euclidean_gradient=pymanopt.function.numpy(manifold)(gradient),
                                   euclidean_hessian=pymanopt.function.numpy(manifold)(hessian),
                                   preconditioner=precondition(manifold))  # fmt: skip
        norm = manifold.norm(point, manifold.euclidean_to_riemannian_gradient(point, gradient(point)))
        round_off = floor(manifold.weight[0])
        if norm <= grad_tol or (round_off is not None and norm <= ROUNDOFF_FACTOR * round_off()):
            # pymanopt iterates once before it checks (a NaN step at a zero gradient); stage 2 from stage 1's
            # point is often already at its round-off
            return SimpleNamespace(point=point, iterations=0, gradient_norm=norm, stopping_criterion="at start",
                                   start_norm=norm)  # fmt: skip
        stall_below = STALL_BELOW if power == 1 else np.inf  # stage 2 gives up as soon as it stops improving
        optimizer = StallingTrustRegions(min_gradient_norm=grad_tol, max_iterations=iterations, verbosity=0,
                                         max_time=MAX_STAGE_S, miniter=0, stall_below=stall_below, floor=round_off,
                                         value=lambda: memo[1][0], bound=bound, start_value=cost(point),
                                         theta=first_theta if power == 1 else 1.0)  # fmt: skip
        result = optimizer.run(program, initial_point=point)
        result.start_norm = norm  # the stage's own metric at its start: did the stage improve on it?
        return result

    first = stage(1, start, max_iterations, grad_tol if first_tol is None else first_tol)
    result = stage(2, first.point, max(1, max_iterations // 5), grad_tol)
    # stage 2 keeps its point where it reached its tolerance or improved on stage 1's in its own metric (a stall
    # short of 1e-14 is still closer to stationary); it falls back where it drifted (weights spanning decades)
    if not (result.gradient_norm <= grad_tol or result.gradient_norm < result.start_norm):
        result = first
    result.iterations += first.iterations if result is not first else 0
    return result


def minimise(
    problem: Problem,
    label: np.ndarray | None = None,
    V0: np.ndarray | None = None,
    grad_tol: float = GRAD_TOL,
    max_iterations: int = MAX_ITERATIONS,
    preconditioned: bool = False,
    bound: float | None = None,
) -> tuple[np.ndarray, Any]:
    """The trust region on upper-triangular V, one column per cluster of classes.

    Parameters
    ----------
    problem : Problem
    label : (C,) int, optional
        Cluster of each class (default: every class its own). Classes of one cluster share one
        vector: the merged geometries of the collapse cascade. Clusters should be numbered head
        first (the cluster of the largest proportion is 0), so rank deficiency sits in the last
        columns of the factor.
    V0 : (m, m) upper-triangular start (default: the ETF of the m clusters).
    preconditioned : bool
        The inner solves on :func:`pair_preconditioner`, where V0 is a rank-(C - 1) factor of one column a class.
    bound : float, optional
        A lower bound on the objective (a rank-d point's convex bound): see :func:`staged_trust_region`.

    Returns
    -------
    V : (m, C) class vectors (unit columns; classes of a cluster share a column)
    result : pymanopt's OptimizerResult (iterations, gradient_norm, stopping_criterion)
    """
    C, q, w = problem.C, problem.negative_distribution(), problem.anchor_weights()
    shift, scale = problem.phi_affine()
    label = np.arange(C) if label is None else np.asarray(label)
    m = int(label.max()) + 1
    E = membership(label)[0]  # (C, m): class -> cluster
    p_cluster = E.T @ problem.p  # (m,)
    if m == 1:  # one vector for every class: nothing to optimise
        return np.ones((1, C)), SimpleNamespace(iterations=0, gradient_norm=0.0, stopping_criterion="one cluster")
    alone = m == C and bool(np.all(label == np.arange(C)))  # one vector a class: E is the identity

    def evaluate(W: np.ndarray) -> tuple[float, np.ndarray, Any]:
        V = W if alone else W[:, label]  # (m, C)
        G = V.T @ V  # (C, C)
        value, D, hvp = expected_loss(problem.loss, problem.k, problem.rho, w, q, G, hessian="model",
                                      method=problem.expectation, shift=shift, scale=scale)  # fmt: skip
        D_sym = D + D.T  # (C, C): D, row c for anchor c, is dL/dG; this is made once, not once a product
        product = model_product(V, D_sym, hvp, single=C >= MODEL_SINGLE_FROM, triangular=alone and len(V) >= C - 1)

        def hessian(dW: np.ndarray) -> np.ndarray:
            out = product(dW if alone else dW[:, label])  # (m, C)
            return out if alone else out @ E

        gradient = V @ D_sym  # (m, C)
        floor = ROUNDOFF * math.sqrt(C) * np.linalg.norm(D_sym, axis=0)  # (C,): each column's round-off, |V_:c| = 1
        if not alone:
            floor, gradient = np.sqrt(floor**2 @ E), gradient @ E  # (m,), (m, m)
        inverse = None  # the rank-(C - 1) factor's preconditioner, made where the trust region first asks for it
        if preconditioned and alone and len(V) == C - 1:
            inverse = functools.cache(lambda: pair_preconditioner(V, D_sym, single=C >= MODEL_SINGLE_FROM))
        return float(value), gradient, hessian, floor, inverse

    start = etf_start(m) if V0 is None else V0
    result = staged_trust_region(evaluate, start, p_cluster, grad_tol, max_iterations, triangular=True,
                                 first_theta=CG_THETA, curvature_metric=True, bound=bound)  # fmt: skip
    return result.point[:, label], result


# from this many classes the solve starts on a rank-(C - 1) factor (the simplex ETF's, exact): the optimum of a
# long-tailed profile has rank C - 1 there (eigenvalues above 1e-3: 99 of 100, 299 of 300 at exp(rho = 100)),
# and the full factor's extra direction is flat at it. Measured at exp(C, rho = 100), products full -> rank C - 1:
# C = 100 tau = 0.5 672 -> 457 (k = inf and 256), tau = 0.1 k = 256 449 -> 321; C = 300 k = inf 1479 -> 865 (2x
# the time), certified, Grams equal to 5e-13. Below, it was not kept: at exp(C = 10) under the remedies' stress
# combination (an optimum of rank C - 2) 961 -> 1174 products. The rank-(C - 1) factor's triangle R is square, so
# its inner solves run on :func:`pair_preconditioner`: products at exp(C, rho = 100), InfoNCE, rank C - 1 -> and
# preconditioned: C = 100 tau = 0.5 458 -> 129 (k = inf), 462 -> 133 (k = 256); tau = 0.1 203 -> 116 (k = inf),
# 415 -> 103 (k = 16); C = 300 k = inf 865 -> 147; C = 1000 k = inf ~1446 -> 265 (docs/benchmarks.md)
LOW_RANK_FROM = 100
# the preconditioned attempt's iterations: where it has not converged by then (measured: exp(C = 100, rho = 1e4),
# tau = 0.1, k = 16 stalled at its 500; the plain rank-(C - 1) solve converges there in 57) the plain one follows
PRECONDITIONED_ITERATIONS = 100


def solve_oblique(problem: Problem, dim: int | None = None, V0: np.ndarray | None = None) -> Solution:
    """Certified optimum for any class proportions (d >= C).

    Parameters
    ----------
    problem : Problem
    dim : int, optional
        Rows of the returned class means V (>= C).
    V0 : (C, C) upper-triangular start for the classes sorted head first (default: from ``LOW_RANK_FROM``
        classes, the rank-(C - 1) ETF factor preconditioned (:func:`pair_preconditioner`), then the same without
        the preconditioner, then the full factor from the ETF, each where the one before is not certified; below,
        the full factor from the ETF).
    """
    start = time.perf_counter()
    order = np.argsort(-problem.p, kind="stable")  # head first: the tail's merges are the factor's last columns
    sorted_problem = problem.reordered(order)
    attempts = [dict(V0=V0)]
    if V0 is None and problem.C >= LOW_RANK_FROM:
        low_rank = etf_factor(problem.C)
        attempts[:0] = [dict(V0=low_rank, preconditioned=True, max_iterations=PRECONDITIONED_ITERATIONS),
                        dict(V0=low_rank)]  # fmt: skip
    iterations = 0
    for attempt in attempts:
        V_sorted, result = minimise(sorted_problem, **attempt)
        result.iterations += iterations  # every attempt's iterations
        solution = _certified(problem, V_sorted[:, np.argsort(order)], result, dim, start)
        if solution.status == "optimal":
            break
        iterations = result.iterations
    return solution


def _certified(problem: Problem, V: np.ndarray, result: Any, dim: int | None, start: float) -> Solution:
    """The solution of class means V (m, C), in the problem's class order, with its certificate and status."""
    G = V.T @ V
    np.fill_diagonal(G, 1.0)
    value, gap = certificate(problem, G, scaled=True)
    extra = {"iterations": result.iterations, "grad_norm": float(result.gradient_norm)}
    solution = Solution.certified(problem, "oblique", G, value, gap, dim, start, extra)
    two = problem.two_groups()
    if two is not None:
        solution.a, solution.b, solution.c = group_cosines(G, two[0])
    problems = []
    if not math.isfinite(gap) or solution.gap_rel > GAP_REL_TOL:
        problems.append(f"certified gap {solution.gap_rel:.1e} (relative) exceeds {GAP_REL_TOL:g}")
    if solution.gap_minor > GAP_MINOR_TOL:
        problems.append(f"smallest classes not resolved: gap / p_min^2 = {solution.gap_minor:.1e} > {GAP_MINOR_TOL:g}")
    if problems:
        solution.status = "optimal_inaccurate"
        solution.message = "; ".join(problems) + f" (trust region: {result.stopping_criterion})"
    return solution

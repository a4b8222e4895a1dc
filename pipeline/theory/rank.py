"""The ``rank`` solver: class means in R^d with d < C (Burer-Monteiro).

The convex program over G assumes d >= C. For d < C the feasible set {G PSD, diag(G) = 1,
rank(G) <= d} is not convex, so the solver optimises V in R^{d x C} with unit columns directly
(columns normalised inside the objective, L-BFGS on the free matrix W), from several seeded
restarts, and reports the best objective beside the certified convex lower bound, and whether the point
is second-order stationary (:func:`stationarity`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize

from pipeline.metrics import group_cosines
from pipeline.theory.objective import certificate, class_objective, expected_loss
from pipeline.theory.problem import Problem
from pipeline.theory.solution import Solution


def _objective_in_W(problem: Problem, d: int):
    C = problem.C

    def f(w: np.ndarray) -> tuple[float, np.ndarray]:
        W = w.reshape(d, C)  # (d, C)
        norms = np.linalg.norm(W, axis=0)  # (C,)
        V = W / norms  # (d, C), unit columns
        value, D = class_objective(problem, V.T @ V)
        dV = V @ (D + D.T)  # (d, C)
        dW = (dV - V * (V * dV).sum(axis=0)) / norms  # tangent part, through the normalisation
        return value, dW.ravel()

    return f


# second-order stationary: Riemannian gradient below GRADIENT_TOL (relative to the Euclidean one) and no
# Hessian eigenvalue below -CURVATURE_TOL of the largest (both in the p-weighted metric, see stationarity)
GRADIENT_TOL = 1e-6
CURVATURE_TOL = 1e-6
# restarts go on past n_restarts until the best objective has been reached BEST_HITS times (to 1e-9), or
# MAX_RESTARTS: the rank-d landscape has local minima (measured: exp(C = 7, rho = 10) at d = 3 has several within
# 3e-4, each second-order stationary), and a minimum found once is likely not the best
BEST_HITS = 3
MAX_RESTARTS = 64
# beyond this many classes the rank-d solve is one trust-region run from the convex optimum's top-d factor
# (:func:`trust_region_rank`) instead of restarts: at exp(C = 300, rho = 100), d = 128, k = inf one L-BFGS run took
# 350 s (10 509 evaluations) and ended short of stationary, the trust region 135 s to a second-order stationary point
RESTARTS_MAX_C = 100
DENSE_MAX = 400  # tangent problems of at most this many coordinates (d C) get a dense eigendecomposition


@dataclass(frozen=True)
class Stationarity:
    """First- and second-order stationarity of unit-column class means V (d, C) for L(V^T V).

    In the metric sum_c p_c |dv_c|^2 (each class's sphere weighted by its proportion, so that a tail
    class's curvature, ~p_c, counts as a head class's does):

    - ``gradient``: |Riemannian gradient| / |Euclidean gradient|;
    - ``hessian_min``, ``hessian_max``: the extreme eigenvalues of the Riemannian Hessian on the tangent space
      without the rotations V -> exp(t A) V (A antisymmetric, d (d - 1) / 2 directions along which L is constant:
      at a critical point they are 0 eigenvalues, which said nothing and kept Lanczos from converging);
    - ``second_order``: gradient <= GRADIENT_TOL and hessian_min >= -CURVATURE_TOL hessian_max. A rank-d point
      whose G is rank deficient and that is second-order stationary is a global optimum at rank d.
    The tolerance scale is the larger of |hessian_min| and |hessian_max|.
    """

    gradient: float
    hessian_min: float
    hessian_max: float

    @property
    def second_order(self) -> bool:
        scale = max(abs(self.hessian_max), abs(self.hessian_min))
        return self.gradient <= GRADIENT_TOL and self.hessian_min >= -CURVATURE_TOL * scale

    @property
    def verdict(self) -> str:
        """'yes', 'no', or 'not determined': the curvature NaN (Lanczos out of its bounded work,
        ``LANCZOS_MAX_RESTARTS`` or ``STATIONARITY_MAX_S``) where the gradient alone does not already say no."""
        if self.second_order:
            return "yes"
        return "not determined" if math.isnan(self.hessian_min) and self.gradient <= GRADIENT_TOL else "no"


def stationarity(problem: Problem, V: np.ndarray) -> Stationarity:
    """:class:`Stationarity` of class means V (d, C) with unit columns (matrix-free: products with the
    Hessian of the exact expectation; cost ~ a few hundred of them)."""
    d, C = V.shape
    shift, scale = problem.phi_affine()
    _, D, hvp = expected_loss(problem.loss, problem.k, problem.rho, problem.anchor_weights(),
                              problem.negative_distribution(), V.T @ V, hessian="operator",
                              method=problem.expectation, shift=shift, scale=scale)  # fmt: skip
    D_sym = D + D.T  # (C, C)
    egrad = V @ D_sym  # (d, C)
    radial = (V * egrad).sum(axis=0)  # (C,): the sphere's multiplier per class
    w = problem.p  # (C,) the metric's weights

    def project(X: np.ndarray) -> np.ndarray:  # onto the tangent space, (d, C)
        return X - V * (V * X).sum(axis=0)

    def hessian(X: np.ndarray) -> np.ndarray:  # Riemannian Hessian of a tangent X, in the weighted metric
        dG = X.T @ V
        dD = hvp(dG + dG.T)  # (C, C)
        return (project(X @ D_sym + V @ (dD + dD.T)) - X * radial) / w

    # symmetric form: Y = X sqrt(w) is orthonormal coordinates of the weighted metric
    root = np.sqrt(w)
    off_rotations = _rotation_complement(V * root)

    def moving(Y: np.ndarray) -> np.ndarray:  # (d, C) -> its tangent part off the rotations (Y coordinates)
        return off_rotations(root * project(Y / root))

    def tangent_operator(y: np.ndarray, spread: float) -> np.ndarray:
        Y = y.reshape(d, C)
        T = moving(Y)  # (d, C)
        # normal space and rotations: eigenvalue spread
        return (off_rotations(root * project(hessian(T / root))) - spread * T + spread * Y).ravel()

    if d == 1:  # each class is +-1: no tangent space
        hessian_min = hessian_max = 0.0
    elif d * C <= DENSE_MAX:  # small: the dense matrix of the operator on the tangent space off the rotations
        Q = np.column_stack([moving(e.reshape(d, C)).ravel() for e in np.eye(d * C)])  # (d C, d C)
        U, sigma, _ = np.linalg.svd(Q)
        Q = U[:, sigma > 0.5]  # an orthonormal basis of its range (a projection: singular values 0 or 1)
        if Q.shape[1] == 0:
            return Stationarity(_gradient(V, egrad, w), 0.0, 0.0)
        H = Q.T @ np.column_stack([tangent_operator(q, 0.0) for q in Q.T])
        eig = np.linalg.eigvalsh((H + H.T) / 2)
        hessian_min, hessian_max = float(eig[0]), float(eig[-1])
    else:
        deadline = time.perf_counter() + STATIONARITY_MAX_S
        hessian_max = _extreme(lambda y: tangent_operator(y, 0.0), d * C, deadline)  # the normal space at 0, below
        top = 2 * max(hessian_max, 1e-300)
        # the smallest as the largest of top - H (the normal space and rotations at 0, below it): Lanczos's test is
        # relative to the eigenvalue it finds, here >= top / 2, so a minimum near 0 is resolved to ~1e-8 of the scale
        hessian_min = math.nan if math.isnan(hessian_max) else top - _extreme(
            lambda y: top * y - tangent_operator(y, top), d * C, deadline)  # fmt: skip
    return Stationarity(_gradient(V, egrad, w), hessian_min, hessian_max)


def _gradient(V: np.ndarray, egrad: np.ndarray, w: np.ndarray) -> float:
    """|Riemannian gradient| / |Euclidean gradient| in the metric sum_c w_c |dv_c|^2."""
    rgrad = (egrad - V * (V * egrad).sum(axis=0)) / w
    return math.sqrt(float((w * rgrad * rgrad).sum())) / max(math.sqrt(float((w * (egrad / w) ** 2).sum())), 1e-300)


def _rotation_complement(M: np.ndarray) -> Any:
    """Y (d, C) -> Y minus its orthogonal projection on the rotations {A M : A antisymmetric} (d (d - 1) / 2
    directions along which L(V^T V) is constant; M = V sqrt(w) in the metric's orthonormal coordinates).

    The projection A M solves min_A |Y - A M|: A S + S A = Y M^T - M Y^T with S = M M^T, solved in S's
    eigenbasis (A_ij (s_i + s_j) = B_ij; 0 where s_i + s_j vanishes: rotations that do not move M).
    """
    s, U = np.linalg.eigh(M @ M.T)  # (d,), (d, d)
    total = s[:, None] + s[None, :]
    keep = total > 1e-12 * max(float(s[-1]), 1e-300)
    inverse = np.where(keep, 1.0 / np.where(keep, total, 1.0), 0.0)  # (d, d)

    def complement(Y: np.ndarray) -> np.ndarray:
        B = U.T @ (Y @ M.T - M @ Y.T) @ U  # (d, d) antisymmetric, in S's eigenbasis
        A = U @ (B * inverse) @ U.T
        return Y - A @ M

    return complement


# Lanczos's relative accuracy: 1e-8 of the largest eigenvalue resolves CURVATURE_TOL (1e-6 of it) 100x over. 1e-10
# did not converge in 5000 restarts at exp(C = 100, rho = 100), d = 16 (a wide spectrum with 120 flat rotations at
# 0: its smallest eigenvalue has a relative gap of ~1e-9); 1e-8 took 5.5 s there and agreed with 1e-6 to 6e-19
LANCZOS_TOL = 1e-8
# ARPACK restarts (~ncv - 1 = 39 products each) before an extreme is reported NaN (not determined): a bound on the
# work, ~8000 products. Measured at exp(C = 300, rho = 100), k = inf, d = 128 (the minimum as the top of 2 max - H):
# 81 products for the maximum, 1581 for the minimum (40 restarts, 62 s); the minimum as the top of -H, whose test
# is relative to a value near 0, took 3481. At C = 1000, d = 128 that form was still running after an hour
LANCZOS_MAX_RESTARTS = 200


# the stationarity check's time, both extremes together, after which what is left is NaN (not determined): at
# C = 1000, d = 512 a product takes ~0.3 s, so LANCZOS_MAX_RESTARTS alone would allow ~40 minutes (measured at
# ImageNet-LT's pareto shape, k = inf: d = 128 took 154 s to both extremes; at d = 512 the smallest not in 300 s)
STATIONARITY_MAX_S = 180.0


class _OutOfTimeError(Exception):
    pass


def _extreme(matvec: Any, n: int, deadline: float = math.inf) -> float:
    """The largest eigenvalue of a symmetric operator on R^n (Lanczos, ARPACK); NaN where it does not converge
    or the ``deadline`` (time.perf_counter) passes (then the point is not reported second-order stationary:
    ``hessian_min >= ...`` is False for NaN)."""
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    def timed(y: np.ndarray) -> np.ndarray:
        if time.perf_counter() > deadline:
            raise _OutOfTimeError
        return matvec(y)

    op = LinearOperator((n, n), matvec=timed, dtype=float)
    v0 = np.random.default_rng(0).standard_normal(n)
    try:
        return float(eigsh(op, k=1, which="LA", tol=LANCZOS_TOL, ncv=min(n, 40), v0=v0,
                           maxiter=LANCZOS_MAX_RESTARTS)[0][0])  # fmt: skip
    except (ArpackNoConvergence, _OutOfTimeError):
        return math.nan


def refine(problem: Problem, V0: np.ndarray) -> tuple[np.ndarray, float]:
    """Local minimisation of L(V^T V) over unit-norm columns from V0 (d, C), by L-BFGS.

    Returns the refined class means (d, C) and their objective.
    """
    d, C = V0.shape
    result = minimize(
        _objective_in_W(problem, d),
        V0.ravel(),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 10_000, "maxcor": 30, "gtol": 1e-14, "ftol": 1e-16},
    )
    W = result.x.reshape(d, C)
    return W / np.linalg.norm(W, axis=0), float(result.fun)


def top_factor(G: np.ndarray, dim: int) -> np.ndarray:
    """(dim, C) factor of G's best rank-dim approximation (its top eigenvectors scaled by sqrt(eigenvalue))."""
    lam, U = np.linalg.eigh(G)  # ascending
    top = np.maximum(lam[::-1][:dim], 0.0)  # (min(d, C),)
    V0 = np.zeros((dim, G.shape[0]))
    V0[: len(top)] = np.sqrt(top)[:, None] * U[:, ::-1][:, :dim].T
    return V0


def _best_of_restarts(problem: Problem, starts: list[np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """L-BFGS from each start, and from more random ones until the best has been reached ``BEST_HITS`` times
    (up to ``MAX_RESTARTS``): the best class means (d, C) and the number of starts tried."""
    dim, C = starts[0].shape
    best_V, best_value, hits, tried = None, math.inf, 0, 0
    while tried < len(starts) or (hits < BEST_HITS and tried < MAX_RESTARTS):
        V, value = refine(problem, starts[tried] if tried < len(starts) else rng.standard_normal((dim, C)))
        tried += 1
        if value < best_value - 1e-9 * abs(value):
            best_V, best_value, hits = V, value, 1
        elif value <= best_value + 1e-9 * abs(value):
            hits += 1
    return best_V, tried


def trust_region_rank(problem: Problem, V0: np.ndarray, bound: float | None = None) -> tuple[np.ndarray, Any]:
    """Local minimum of L(V^T V) over unit-column V (d, C) from V0, by the oblique solver's trust region, and
    pymanopt's result (its ``stopping_criterion`` says why it stopped).

    As in :func:`pipeline.theory.oblique.minimise`, the classes are sorted head first and V is kept upper
    trapezoidal (V = Q R: R, d x C, spans every rank-d G; no rotation gauge), each column's metric weighted by
    its curvature, then by its proportion squared. One start, no restarts (see ``RESTARTS_MAX_C``). ``bound``: the
    convex lower bound; the trust region also stops once the objective's excess over it no longer moves
    (``oblique.PROGRESS_FRACTION``), the stationarity then reported as it is.
    """
    from pipeline.theory.oblique import minimise, trapezoidal

    order = np.argsort(-problem.p, kind="stable")  # head first: column c of R lives on its first c + 1 coordinates
    sorted_problem = problem.reordered(order)
    V_sorted, result = minimise(sorted_problem, V0=trapezoidal(V0[:, order]), bound=bound)  # (d, C), V0 = Q R
    return V_sorted[:, np.argsort(order)], result


def solve_rank(problem: Problem, dim: int, lower_bound: float, n_restarts: int = 8, seed: int = 0,
               G_convex: np.ndarray | None = None) -> Solution:  # fmt: skip
    """Best class means in R^dim over seeded restarts (at most ``RESTARTS_MAX_C`` classes), else one trust-region
    run from the convex optimum's top-dim factor (a local optimum; the message says so).

    Parameters
    ----------
    problem : Problem
    dim : int
        Embedding dimension d (any d >= 1; for d >= C the result is certified like ``full``).
    lower_bound : float
        Certified lower bound from the convex program (d >= C), reported beside the objective; the
        rank-d point's own dual bound, L(G) - gap_bound(G), is used where it is higher (both are valid).
    n_restarts : int
        Random initialisations (Gaussian, seeded by ``seed``) at least; more until the best has been reached
        ``BEST_HITS`` times, up to ``MAX_RESTARTS``.
    G_convex : (C, C), optional
        The convex optimum: its best rank-d approximation is one more start (the top d eigenvectors).
    """
    start = time.perf_counter()
    C = problem.C
    rng = np.random.default_rng(seed)
    starts = [rng.standard_normal((dim, C)) for _ in range(n_restarts)]  # drawn first: seeds as before
    if G_convex is not None:
        starts.insert(0, top_factor(G_convex, dim) + 1e-6 * rng.standard_normal((dim, C)))  # off its symmetry
    one_run = C > RESTARTS_MAX_C and G_convex is not None and dim < C
    if one_run:
        V, result = trust_region_rank(problem, starts[0], bound=lower_bound)  # (d, C): one local solve, no restarts
        tried, stopped = 1, str(result.stopping_criterion)
    else:
        V, tried = _best_of_restarts(problem, starts, rng)
    G = V.T @ V
    np.fill_diagonal(G, 1.0)
    value, cert_gap = certificate(problem, G, scaled=True)
    lower_bound = max(lower_bound, value - cert_gap)  # the point's own dual bound is a valid bound too
    solution = Solution(
        problem=problem,
        solver="rank",
        G=G,
        V=V,
        objective=value,
        status="local",
        gap=max(value - lower_bound, 0.0),
        lower_bound=lower_bound,
        extra={"restarts": tried, "seed": seed},
    )
    if dim >= C and cert_gap <= 1e-6 * abs(value):
        solution.status, solution.gap = "optimal", cert_gap
    elif value - lower_bound <= 1e-9 * abs(value):
        solution.status = "optimal"  # attains the convex bound, so it is optimal at rank d too
    else:
        solution.message = (
            f"rank-{dim} local optimum: objective {value:.10g} >= convex lower bound {lower_bound:.10g} "
            f"(excess {value - lower_bound:.3g})"
        )
        if one_run:
            solution.message += (f"; C = {C} > {RESTARTS_MAX_C}: one trust-region run from the convex optimum's "
                                 f"top-{dim} factor, no restarts (a better rank-{dim} point may exist); {stopped}")
    two = problem.two_groups()
    if two is not None:
        solution.a, solution.b, solution.c = group_cosines(G, two[0])
    solution.extra["certificate_gap"] = cert_gap if dim >= C else math.nan
    solution.extra["stationarity"] = stationarity(problem, V)
    solution.time_s = time.perf_counter() - start
    return solution


def beside_convex(problem: Problem, convex: Solution, dim: int) -> Solution:
    """The rank-d optimum beside a convex one (``convex``: its lower bound and its top-d eigenvectors as a start,
    with seeded restarts); the convex optimum itself at d >= C."""
    return convex if dim >= problem.C else solve_rank(problem, dim, convex.lower_bound, G_convex=convex.G)

"""The ``rank`` solver: class means in R^d with d < C (Burer-Monteiro).

The convex program over G assumes d >= C. For d < C the feasible set {G PSD, diag(G) = 1,
rank(G) <= d} is not convex, so the solver optimises V in R^{d x C} with unit columns directly
(columns normalised inside the objective, L-BFGS on the free matrix W), from several seeded
restarts, and reports the best objective beside the certified convex lower bound.
"""

from __future__ import annotations

import math
import time

import numpy as np
from scipy.optimize import minimize

from pipeline.metrics import group_cosines
from pipeline.theory.objective import certificate, class_objective
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


def solve_rank(problem: Problem, dim: int, lower_bound: float, n_restarts: int = 8, seed: int = 0) -> Solution:
    """Best class means in R^dim over seeded restarts.

    Parameters
    ----------
    problem : Problem
    dim : int
        Embedding dimension d (any d >= 1; for d >= C the result is certified like ``full``).
    lower_bound : float
        Certified lower bound from the convex program (d >= C), reported beside the objective.
    n_restarts : int
        Random initialisations (Gaussian, seeded by ``seed``).
    """
    start = time.perf_counter()
    C = problem.C
    rng = np.random.default_rng(seed)
    best_V, best_value = None, math.inf
    for _ in range(n_restarts):
        V, value = refine(problem, rng.standard_normal((dim, C)))
        if value < best_value:
            best_V, best_value = V, value
    V = best_V  # (d, C)
    G = V.T @ V
    np.fill_diagonal(G, 1.0)
    value, cert_gap = certificate(problem, G)
    solution = Solution(
        problem=problem,
        solver="rank",
        G=G,
        V=V,
        objective=value,
        status="local",
        gap=max(value - lower_bound, 0.0),
        lower_bound=lower_bound,
        time_s=time.perf_counter() - start,
        extra={"restarts": n_restarts, "seed": seed},
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
    two = problem.two_groups()
    if two is not None:
        solution.a, solution.b, solution.c = group_cosines(G, two[0])
    solution.extra["certificate_gap"] = cert_gap if dim >= C else math.nan
    return solution

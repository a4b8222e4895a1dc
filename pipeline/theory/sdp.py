"""The ``full`` solver: the convex program over the class-mean Gram matrix, with cvxpy.

    minimise  L(G) = sum_c p_c E_n[ psi( rho sum_j n_j phi(G[c, j] - 1) ) ]
    over      G PSD (C x C), diag(G) = 1

Built once per shape (loss, C, k, reduction) with a nonnegative Parameter holding the
multinomial weights, so re-solves for new proportions or sampling models skip canonicalisation.
InfoNCE terms are exponential cones: ``s_t >= log(1 + sum_j rho n_j exp((G[c, j] - 1) / tau))`` is
``sum_j exp(log(rho n_j) + (G[c, j] - 1) / tau - s_t) + exp(-s_t) <= 1``, one cone per nonzero
count. Losses with psi the identity need no enumeration: ``rho k sum_c p_c sum_j q_cj phi(G[c, j] - 1)``.

Clarabel (tolerances 1e-12) first, SCS as the fallback. The result carries the solver-independent
certificate of :func:`pipeline.theory.objective.certificate`; when that gap is not small against the weight
of the minority-minority terms (p_minor^2), the status says ``optimal_inaccurate``: a generic
interior-point method does not resolve c at large R (docs/theory.md).
"""

from __future__ import annotations

import math
import time
import warnings
from functools import lru_cache
from typing import Any

import numpy as np

from pipeline.errors import InputError
from pipeline.metrics import group_cosines
from pipeline.theory.losses import Loss
from pipeline.theory.objective import certificate, count_vectors, enumeration_weights, linear_scale, n_count_vectors
from pipeline.theory.problem import Problem
from pipeline.theory.rank import refine
from pipeline.theory.solution import Solution, class_means

CLARABEL_OPTIONS = {
    "tol_gap_abs": 1e-12,
    "tol_gap_rel": 1e-12,
    "tol_feas": 1e-12,
    "tol_ktratio": 1e-10,
    "max_iter": 400,
}
SCS_OPTIONS = {"eps_abs": 1e-9, "eps_rel": 1e-9, "max_iters": 200_000}
# gap / p_minor^2 above this: the minority block (weight ~ p_minor^2) is not resolved. An empirical
# line, not a bound on c: the certificate is loose (infonce(tau=0.5), R = 1e3: 6.5e-5 with c right to
# 1e-10), while on an AMD EPYC Clarabel left c off by 1.8e-3 at 3.6e-4 (sumexp(tau=1), K_A = K_B = 2,
# R = 1e4), which the former line of 1e-3 called resolved
MINOR_RESOLUTION = 1e-4


class FullProblem:
    """The cvxpy program for one shape; :meth:`solve` sets the weights and solves.

    Parameters
    ----------
    loss : Loss
    C : int
        Number of classes.
    k : int
        Number of negatives.
    rho : float
        1 (``sum``) or 1/k (``mean``).
    """

    def __init__(
        self, loss: Loss, C: int, k: float, rho: float, weights: np.ndarray | None = None, q: np.ndarray | None = None
    ) -> None:
        import cvxpy as cp
        import scipy.sparse as sp

        self.loss, self.C, self.k, self.rho = loss, C, k, rho
        self.G = cp.Variable((C, C), PSD=True)
        constraints = [cp.diag(self.G) == 1]
        if loss.psi_linear:
            self.W = cp.Parameter((C, C), nonneg=True)  # rho k p_c q_cj
            objective = cp.sum(cp.multiply(self.W, loss.phi_cvx(self.G - 1)))
        elif math.isinf(k):
            # the k = inf limit, built for one point (p in ``weights``, q given):
            # s_c >= log(one + sum_j q_cj exp((G_cj - 1) / tau)), one = 1 for ``mean`` (rho = 0), 0 for ``sum``
            self.w = weights
            self.s = cp.Variable(C)
            tau, one = loss.param, 1.0 if rho == 0 else 0.0
            for c in range(C):
                j = np.flatnonzero(q[c] > 0)
                terms = cp.sum(cp.exp(np.log(q[c, j]) + (self.G[c, j] - 1) / tau - self.s[c]))
                constraints.append(terms + one * cp.exp(-self.s[c]) <= 1 if one else terms <= 1)
            objective = self.w @ self.s
        else:
            N = count_vectors(k, C)  # (M, C)
            M = N.shape[0]
            T = C * M  # one term per (anchor class, count vector)
            anchor = np.repeat(np.arange(C), M)  # (T,)
            term, j = np.nonzero(np.tile(N, (C, 1)))  # nonzero counts: (E,), (E,)
            counts = np.tile(N, (C, 1))[term, j]  # (E,)
            E = term.size
            # entry e reads G[anchor[term[e]], j[e]]; cp.vec is column-major
            select = sp.csr_matrix((np.ones(E), (np.arange(E), j * C + anchor[term])), shape=(E, C * C))
            to_term = sp.csr_matrix((np.ones(E), (np.arange(E), term)), shape=(E, T))
            sum_terms = to_term.T.tocsr()
            self.s = cp.Variable(T)
            # p_c Mult(n; k, q^(c)). cvxpy's DPP data grows like T^2 with a T-vector Parameter in
            # a problem with exponential cones, so past DPP_MAX_TERMS the weights are constants
            # and the program is built for one point (``weights`` given).
            self.w = cp.Parameter(T, nonneg=True) if weights is None else weights
            tau = loss.param
            logits = (select @ cp.vec(self.G, order="F") - 1) / tau + np.log(rho * counts) - to_term @ self.s
            constraints.append(sum_terms @ cp.exp(logits) + cp.exp(-self.s) <= 1)
            objective = self.w @ self.s
        self.program = cp.Problem(cp.Minimize(objective), constraints)
        assert self.program.is_dcp(dpp=True)

    def set_weights(self, problem: Problem) -> None:
        if self.loss.psi_linear:
            scale = linear_scale(problem.k, problem.rho)
            self.W.value = scale * problem.p[:, None] * problem.negative_distribution()
        elif math.isinf(problem.k):
            assert np.array_equal(self.w, problem.p)
        elif isinstance(self.w, np.ndarray):
            assert np.array_equal(self.w, term_weights(problem))
        else:
            self.w.value = term_weights(problem)

    def solve(self, problem: Problem) -> tuple[np.ndarray | None, str, str]:
        """Solve for the problem's weights: (G or None, solver status, solver used)."""
        import cvxpy as cp

        self.set_weights(problem)
        attempts: list[tuple[str, dict[str, Any]]] = [("CLARABEL", CLARABEL_OPTIONS), ("SCS", SCS_OPTIONS)]
        status, used = "error", ""
        for name, options in attempts:
            used = name
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # inaccurate solutions are reported through status
                    self.program.solve(solver=name, warm_start=False, **options)
                status = self.program.status
            except cp.error.SolverError:
                status = "solver_error"
            if status in ("optimal", "optimal_inaccurate") and self.G.value is not None:
                return np.array(self.G.value), status, used
        return None, status, used


DPP_MAX_TERMS = 3000


def term_weights(problem: Problem) -> np.ndarray:
    """(C * M,) weights p_c Mult(n; k, q^(c)) of the InfoNCE terms, anchor-major."""
    return enumeration_weights(problem.k, problem.p, problem.negative_distribution())[1].reshape(-1)  # (C, M) flat


@lru_cache(maxsize=16)
def _cached_problem(loss: Loss, C: int, k: int, rho: float) -> FullProblem:
    return FullProblem(loss, C, k, rho)


FULL_MAX_TERMS = 20_000  # InfoNCE terms (anchor classes x count vectors) of the largest program built


def full_program_fits(problem: Problem) -> bool:
    """Whether the cvxpy program is small enough to build (it enumerates count vectors: it must be DCP)."""
    return (
        problem.loss.psi_linear
        or math.isinf(problem.k)
        or problem.C * n_count_vectors(problem.k, problem.C) <= FULL_MAX_TERMS
    )


def build_problem(problem: Problem) -> FullProblem:
    """The program for the problem's shape: cached with Parameters, or built for this point when large."""
    if problem.loss.psi_linear:
        return _cached_problem(problem.loss, problem.C, problem.k, problem.rho)
    if math.isinf(problem.k):
        return FullProblem(problem.loss, problem.C, problem.k, problem.rho, problem.p, problem.negative_distribution())
    if problem.C * n_count_vectors(problem.k, problem.C) <= DPP_MAX_TERMS:
        return _cached_problem(problem.loss, problem.C, problem.k, problem.rho)
    return FullProblem(problem.loss, problem.C, problem.k, problem.rho, term_weights(problem))


def nearest_feasible(G: np.ndarray) -> np.ndarray:
    """Project a solver's G onto {PSD, unit diagonal}: clip eigenvalues at 0, rescale the diagonal."""
    G = (G + G.T) / 2
    lam, Q = np.linalg.eigh(G)
    G = (Q * np.clip(lam, 0, None)) @ Q.T
    scale = 1 / np.sqrt(np.diag(G))
    G = G * scale[:, None] * scale[None, :]
    np.fill_diagonal(G, 1.0)
    return G


def solve_full(problem: Problem, dim: int | None = None) -> Solution:
    """Solve the convex program over G with cvxpy (Clarabel, then SCS).

    Parameters
    ----------
    problem : Problem
    dim : int, optional
        Embedding dimension of the returned class means (must be >= C: the program assumes d >= C).
    """
    start = time.perf_counter()
    if not full_program_fits(problem):
        terms = problem.C * n_count_vectors(problem.k, problem.C)
        raise InputError(
            "solver", "full", f"'symmetric' or 'auto' at k = {problem.k}, C = {problem.C}: the cvxpy program would "
            f"enumerate {terms:.3g} count-vector terms (at most {FULL_MAX_TERMS})"
        )  # fmt: skip
    program = build_problem(problem)
    G_raw, solver_status, used = program.solve(problem)
    if G_raw is None:
        C = problem.C
        return Solution(
            problem, "full", np.full((C, C), np.nan), np.full((dim or C, C), np.nan), math.nan,
            "error", math.inf, time_s=time.perf_counter() - start,
            message=f"{used} failed with status {solver_status!r}",
        )  # fmt: skip
    G = nearest_feasible(G_raw)
    value, gap = certificate(problem, G)
    # interior-point methods stall near rank-deficient optima (entries good to ~1e-5 at the
    # ETF); polish on the factorisation G = V^T V, keeping the polished point only if it is better
    V_polished, _ = refine(problem, class_means(G, problem.C))
    G_polished = V_polished.T @ V_polished
    np.fill_diagonal(G_polished, 1.0)
    value_polished, gap_polished = certificate(problem, G_polished)
    polished = value_polished <= value and gap_polished <= gap
    if polished:
        G, value, gap = G_polished, value_polished, gap_polished
    extra = {"backend": used, "backend_status": solver_status, "polished": polished}
    solution = Solution.certified(problem, "full", G, value, gap, dim, start, extra)
    problems = []
    if solution.gap_rel > 1e-6:
        problems.append(f"certified gap {solution.gap_rel:.1e} (relative) exceeds 1e-6")
    two = problem.two_groups()
    if two is not None:
        solution.a, solution.b, solution.c = group_cosines(G, two[0])
        if two[1] > 1 and solution.gap_minor > MINOR_RESOLUTION:
            problems.append(
                f"minority block not resolved: gap / p_minor^2 = {solution.gap_minor:.1e} > "
                f"{MINOR_RESOLUTION:g}, so c = {solution.c:.4f} is unreliable; use solver='symmetric'"
            )
    # the status rests on the certificate: Clarabel at 1e-12 tolerances often says
    # 'optimal_inaccurate' about solutions that the certificate shows are right (docs/theory.md)
    if problems:
        solution.status = "optimal_inaccurate"
        solution.message = "; ".join(problems)
    return solution

"""The straightforward approach: a fresh cvxpy build + solve of the exact class-collapsed SDP per point."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
from scipy.special import gammaln, xlogy

from pipeline.objective import count_vectors
from pipeline.problem import Problem


def naive_full(problem: Problem) -> tuple[float, np.ndarray]:
    """Build and solve min L(G) s.t. G PSD, diag(G) = 1 with constants; one log_sum_exp per term."""
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

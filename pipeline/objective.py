"""Exact expectation of the class-collapsed loss, with first and second derivatives (numpy float64).

With one unit vector per class and Gram matrix G, an anchor of class c pays
``psi( rho * sum_j n_j phi(G[c, j] - 1) )`` where n ~ Multinomial(k, q^(c)) counts the negatives
per class. The same computation serves the group-reduced problem (anchors are groups, categories
are "same class", "other class of the group", "class of group h"), so it is written for generic
anchors ``a`` and categories ``j``:

    L = sum_a w_a sum_n Mult(n; k, q_a) psi( rho sum_j n_j phi(cos_aj - 1) )

When psi is the identity the expectation collapses exactly to ``rho k sum_a w_a sum_j q_aj phi``.
Everything is vectorised over anchors and count vectors; complex ``cos`` is accepted (complex-step
derivative checks) for the smooth losses.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import combinations_with_replacement

import numpy as np
from scipy.special import gammaln, xlogy

from pipeline.losses import Loss
from pipeline.problem import Problem


@lru_cache(maxsize=64)
def count_vectors(k: int, J: int) -> np.ndarray:
    """All count vectors n in N^J with sum k, shape (binom(k + J - 1, J - 1), J).

    Examples
    --------
    >>> count_vectors(2, 2).tolist()
    [[2, 0], [1, 1], [0, 2]]
    """
    draws = np.array(list(combinations_with_replacement(range(J), k)), dtype=np.int64)  # (M, k)
    N = np.zeros((draws.shape[0], J), dtype=np.int64)  # (M, J)
    np.add.at(N, (np.arange(draws.shape[0])[:, None], draws), 1)
    N.flags.writeable = False
    return N


def multinomial_weights(N: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Mult(n; k, q_a) for every anchor a and count vector n: (A, M) from N (M, J), q (A, J)."""
    k = int(N[0].sum())
    log_coef = gammaln(k + 1) - gammaln(N + 1).sum(axis=1)  # (M,)
    log_w = log_coef[None, :] + xlogy(N[None, :, :], q[:, None, :]).sum(axis=2)  # (A, M)
    return np.exp(log_w)


def expected_loss(
    loss: Loss,
    k: int,
    rho: float,
    w: np.ndarray,
    q: np.ndarray,
    cos: np.ndarray,
    hessian: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Exact expected loss over the k negatives and its derivatives in ``cos``.

    Parameters
    ----------
    loss : Loss
    k : int
        Number of negatives.
    rho : float
        1 for the ``sum`` reduction, 1/k for ``mean``.
    w : (A,) anchor weights (class or group proportions).
    q : (A, J) negative-category distribution per anchor.
    cos : (A, J) cosine between the anchor and each category (1 for the anchor's own class).
    hessian : bool
        Also return second derivatives.

    Returns
    -------
    value : scalar array
    grad : (A, J) dL/dcos
    hess : (A, J, J) d2L/dcos_aj dcos_al, or None
    """
    z = cos - 1.0  # (A, J), argument of phi
    phi, dphi = loss.phi(z), loss.dphi(z)  # (A, J)
    if loss.psi_linear:
        scale = rho * k * w[:, None] * q  # (A, J)
        value = (scale * phi).sum()
        grad = scale * dphi
        hess = None
        if hessian:
            A, J = cos.shape
            hess = np.zeros((A, J, J), dtype=cos.dtype)
            hess[:, np.arange(J), np.arange(J)] = scale * loss.d2phi(z)
        return value, grad, hess
    N = count_vectors(k, cos.shape[1]).astype(float)  # (M, J)
    P = multinomial_weights(N, q) * w[:, None]  # (A, M)
    S = rho * phi @ N.T  # (A, M), inner sum per anchor and count vector
    value = (P * loss.psi(S)).sum()
    Pd = P * loss.dpsi(S)  # (A, M)
    grad = rho * (Pd @ N) * dphi  # (A, J)
    hess = None
    if hessian:
        Pdd = P * loss.d2psi(S)  # (A, M)
        NN = np.einsum("mj,ml->mjl", N, N)  # (M, J, J)
        hess = rho**2 * np.einsum("am,mjl->ajl", Pdd, NN) * dphi[:, :, None] * dphi[:, None, :]
        idx = np.arange(cos.shape[1])
        hess[:, idx, idx] += rho * (Pd @ N) * loss.d2phi(z)
    return value, grad, hess


def class_objective(problem: Problem, G: np.ndarray) -> tuple[float, np.ndarray]:
    """L(G) for the class-collapsed problem and its gradient.

    Parameters
    ----------
    problem : Problem
    G : (C, C) Gram matrix of the class means (symmetric, unit diagonal).

    Returns
    -------
    value : float
    D : (C, C) dL/dG with G[c, j] and G[j, c] treated as separate entries (row c is anchor c);
        the gradient in symmetric directions is (D + D.T) / 2.
    """
    value, D, _ = expected_loss(problem.loss, problem.k, problem.rho, problem.p, problem.negative_distribution(), G)
    return value.item(), D


def gap_bound(G: np.ndarray, D: np.ndarray) -> float:
    """Duality-gap bound for a feasible G of the convex program over {G PSD, diag(G) = 1}.

    For any y with Z = sym(D) - Diag(y) PSD, convexity gives for every feasible H
    ``L(H) >= L(G) + <D, H - G> >= L(G) - <D, G> + sum(y)``. Taking y_i = (sym(D) G)_ii (exact at
    an optimum, where Z G = 0) and shifting y down by ``lambda_min(Z)^-`` makes Z PSD; the gap
    L(G) - lower bound is then ``C * max(0, -lambda_min(Z))``.

    Parameters
    ----------
    G : (C, C) feasible Gram matrix.
    D : (C, C) gradient (or subgradient) of L at G, row c for anchor c.
    """
    D_sym = (D + D.T) / 2  # (C, C)
    y = np.einsum("ij,ji->i", D_sym, G)  # (C,)
    lam_min = np.linalg.eigvalsh(D_sym - np.diag(y))[0]
    return G.shape[0] * max(0.0, -float(lam_min))


def certificate(problem: Problem, G: np.ndarray) -> tuple[float, float]:
    """L(G) and the bound of :func:`gap_bound` from the class-level enumeration (solver-independent).

    The enumeration has binom(k + C - 1, C - 1) terms per anchor: use it for small C and k.
    """
    value, D = class_objective(problem, G)
    return value, gap_bound(G, D)

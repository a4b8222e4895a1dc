"""Exact expectation of the class-collapsed loss over the k negatives, with first and second derivatives.

With one unit vector per class and Gram matrix G, an anchor of class c pays
``psi( rho * sum_j n_j phi(G[c, j] - 1) )`` where n ~ Multinomial(k, q^(c)) counts the negatives
per class. The same computation serves the group-reduced problem (anchors are groups, categories
are "same class", "other class of the group", "class of group h"), so it is written for generic
anchors ``a`` and categories ``j``:

    L = sum_a w_a sum_n Mult(n; k, q_a) psi( rho sum_j n_j phi(cos_aj - 1) )

Three exact routes, picked by :func:`expected_loss` (``method='auto'``):

- psi the identity: ``rho k sum_a w_a sum_j q_aj phi`` in closed form.
- psi = log1p, the transform (:mod:`pipeline.theory.transform`): a one-dimensional integral whose cost does
  not depend on k, so k = 65536 costs what k = 1 does.
- the enumeration over the binom(k + J - 1, J - 1) count vectors n: any psi; used by ``auto`` where it
  has fewer count vectors than the transform has nodes, ~250 (k <= 20 for three categories), and
  kept as the independent check (``Problem.expectation`` selects a route).

``k = inf`` is the large-k limit, renormalised so that it stays finite and has the same minimisers:
with ``sum`` (``rho = 1``) ``E log(1 + S) - log k -> log sum_j q_j phi_j``; with ``mean`` (``rho = 0``,
the limit of 1 / k) ``E log(1 + S / k) -> log(1 + sum_j q_j phi_j)``. For psi the identity the loss
is ``k sum q phi`` (``sum``: it grows like k, the limit reported is L / k) or ``sum q phi`` (``mean``:
k-independent), so its geometry is the same at every k. Everything is vectorised over anchors and
categories; complex ``cos`` is accepted (complex-step derivative checks) for the smooth losses.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Literal

import numpy as np
from scipy.special import gammaln, xlogy

from pipeline.errors import InputError
from pipeline.theory.losses import Loss
from pipeline.theory.problem import EXPECTATIONS, Problem
from pipeline.theory.transform import transform_terms


@lru_cache(maxsize=64)
def count_vectors(k: int, J: int) -> np.ndarray:
    """All count vectors n in N^J with sum k, shape (binom(k + J - 1, J - 1), J).

    Examples
    --------
    >>> count_vectors(2, 2).tolist()
    [[2, 0], [1, 1], [0, 2]]
    """
    if J == 1:
        N = np.array([[k]], dtype=np.int64)
    elif J == 2:
        n_0 = np.arange(k, -1, -1, dtype=np.int64)  # (k + 1,)
        N = np.column_stack([n_0, k - n_0])
    else:  # n_0 = k, k - 1, ..., 0, each followed by the count vectors of the rest: (M, J)
        N = np.concatenate([np.column_stack([np.full(len(rest), n_0, dtype=np.int64), rest])
                            for n_0 in range(k, -1, -1) for rest in [count_vectors(k - n_0, J - 1)]])  # fmt: skip
    N.flags.writeable = False
    return N


def multinomial_weights(N: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Mult(n; k, q_a) for every anchor a and count vector n: (A, M) from N (M, J), q (A, J)."""
    k = int(N[0].sum())
    log_coef = gammaln(k + 1) - gammaln(N + 1).sum(axis=1)  # (M,)
    log_w = log_coef[None, :] + xlogy(N[None, :, :], q[:, None, :]).sum(axis=2)  # (A, M)
    return np.exp(log_w)


Method = Literal["auto", "transform", "enumerate"]

# the enumeration is used by ``auto`` while an anchor has at most this many count vectors: each costs
# J terms, as each of the transform's ~160-250 nodes does, so each route runs where it is cheaper
# (also for the sample-level loss, whose J is every sample: binom(k + J - 1, J - 1) <= 250 J there
# would enumerate J times more terms than the transform evaluates)
ENUMERATION_MAX_COUNT_VECTORS = 250


def n_count_vectors(k: float, J: int) -> float:
    """binom(k + J - 1, J - 1), the enumeration's terms per anchor (inf for k = inf)."""
    return math.inf if math.isinf(k) else math.comb(int(k) + J - 1, J - 1)


def linear_scale(k: float, rho: float) -> float:
    """The factor rho k of the closed form for psi linear; 1 at k = inf (the limit of L / k with
    ``sum``, and the k-independent loss with ``mean``)."""
    return 1.0 if math.isinf(k) else rho * k


def expectation_terms(k: float, J: int) -> float:
    """Terms per anchor of the route ``auto`` takes for log1p psi: count vectors or quadrature nodes,
    each J numbers."""
    return min(n_count_vectors(k, J), ENUMERATION_MAX_COUNT_VECTORS) * J


def choose_method(loss: Loss, k: float, J: int, method: Method = "auto") -> str:
    """The route of :func:`expected_loss`: 'linear', 'limit' (k = inf), 'transform' or 'enumerate'."""
    if method not in EXPECTATIONS:
        raise InputError("expectation", method, f"one of {', '.join(EXPECTATIONS)}")
    if loss.psi_linear:
        return "linear"
    if math.isinf(k):
        if method == "enumerate":
            raise InputError("k", "inf", "a finite k for method 'enumerate'")
        return "limit"
    if method == "auto":
        return "enumerate" if n_count_vectors(k, J) <= ENUMERATION_MAX_COUNT_VECTORS else "transform"
    return method


OPERATORS = ("operator", "model")  # the Hessian as a function v -> H v: exact, or a trust-region model


def expected_loss(
    loss: Loss,
    k: float,
    rho: float,
    w: np.ndarray,
    q: np.ndarray,
    cos: np.ndarray,
    hessian: bool | str = False,
    method: Method = "auto",
    shift: np.ndarray | None = None,
    scale: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, Any]:
    """Exact expected loss over the k negatives and its derivatives in ``cos``.

    Parameters
    ----------
    loss : Loss
    k : int or inf
        Number of negatives; ``math.inf`` for the renormalised large-k limit (module docstring).
    rho : float
        1 for the ``sum`` reduction, 1/k for ``mean`` (0 at k = inf).
    w : (A,) anchor weights (class or group proportions, summing to 1).
    q : (A, J) negative-category distribution per anchor.
    cos : (A, J) cosine between the anchor and each category (1 for the anchor's own class).
    hessian : bool, 'operator' or 'model'
        Also return second derivatives: dense, or as the function v (A, J) -> (A, J) of their
        product with a direction (what many-class solvers use: the dense array is A J^2); 'model'
        is that function with the transform's integrals on a coarser rule (a trust region's model:
        :data:`pipeline.theory.transform.MODEL_STRIDE`), the same as 'operator' on other routes.
    method : {'auto', 'transform', 'enumerate'}
        Route for psi = log1p (see the module docstring); psi linear and k = inf are closed forms.
    shift, scale : (A, J), optional
        A remedy's affine map of phi's argument (:mod:`pipeline.theory.remedies`): phi_aj(t) =
        phi(scale_aj (t + shift_aj)); the derivatives stay in ``cos``.

    Returns
    -------
    value : scalar array
    grad : (A, J) dL/dcos
    hess : (A, J, J) d2L/dcos_aj dcos_al, the function v -> sum_l hess[a, j, l] v[a, l], or None
    """
    route = choose_method(loss, k, cos.shape[1], method)
    z = cos - 1.0 if shift is None else cos - 1.0 + shift  # (A, J), argument of phi
    if scale is not None:
        z = scale * z
    phi, dphi, d2phi = loss.phi_terms(z) if hessian else (*loss.phi_dphi(z), None)  # (A, J) each
    if scale is not None:  # derivatives in cos: dz/dcos = scale
        dphi = scale * dphi
        d2phi = None if d2phi is None else scale**2 * d2phi
    if route == "linear":
        weight = w[:, None] * q * linear_scale(k, rho)  # (A, J): not ``scale``, the remedy's factor applied above
        value = (weight * phi).sum()
        grad = weight * dphi
        hess = None
        if hessian in OPERATORS:
            diag = weight * d2phi  # (A, J)
            return value, grad, lambda v: diag * v
        if hessian:
            A, J = cos.shape
            hess = np.zeros((A, J, J), dtype=cos.dtype)
            hess[:, np.arange(J), np.arange(J)] = weight * d2phi
        return value, grad, hess
    if route == "enumerate":
        return _enumerated(loss, int(k), rho, w, q, z, phi, dphi, d2phi, hessian)
    if route == "limit":
        # sum: log sum_j q_j phi_j (L - log k); mean: log(1 + sum_j q_j phi_j); both psi(rho' E X)
        m1 = (q * phi).sum(axis=1)  # (A,) E[phi]
        base = m1 + (1.0 if rho == 0 else 0.0)  # (A,) the argument of the log; rho = 0 marks ``mean``
        value_a, d_x = np.log(base), q / base[:, None]  # (A,), (A, J): dV/dx with x = phi
        if hessian in OPERATORS:
            d2_x = lambda v: -q * ((q * v).sum(axis=1) / base**2)[:, None]  # noqa: E731
        else:
            d2_x = -q[:, :, None] * q[:, None, :] / (base**2)[:, None, None] if hessian else None
        x_scale = 1.0
    else:
        x_scale = rho
        value_a, d_x, d2_x = transform_terms(rho * phi, q, int(k), hessian)
    value = (w * value_a).sum()
    grad = w[:, None] * d_x * (x_scale * dphi)  # (A, J)
    hess = None
    if hessian in OPERATORS:
        curvature = w[:, None] * x_scale * d_x * d2phi  # (A, J)
        outer = w[:, None] * x_scale**2 * dphi  # (A, J)
        return value, grad, lambda v: outer * d2_x(dphi * v) + curvature * v
    if hessian:
        hess = x_scale**2 * d2_x * (dphi[:, :, None] * dphi[:, None, :])  # (A, J, J)
        J = cos.shape[1]
        hess.reshape(-1, J * J)[:, :: J + 1] += x_scale * d_x * d2phi  # the diagonal, as a view
        hess *= w[:, None, None]
    return value, grad, hess


def enumeration_weights(k: int, w: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The count vectors N (M, J) as floats and their weights P (A, M), w_a Mult(n; k, q_a); shared
    and read-only for small tables (not to be written to)."""
    return _table(k, w, q)


# tables of at most this many numbers (N and P) are remembered: a solver evaluates one problem many
# times, and the gammaln and xlogy terms are most of a small enumeration's cost
_TABLE_MAX_ENTRIES = 250_000


def _table(k: int, w: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, P) of :func:`enumeration_weights`, remembered for small tables."""
    w, q = np.ascontiguousarray(w, dtype=float), np.ascontiguousarray(q, dtype=float)
    A, J = q.shape
    if n_count_vectors(k, J) * (A + J) <= _TABLE_MAX_ENTRIES:
        return _remembered_table(k, q.shape, w.tobytes(), q.tobytes())
    N = count_vectors(k, J).astype(float)  # (M, J)
    return N, multinomial_weights(N, q) * w[:, None]


@lru_cache(maxsize=32)
def _remembered_table(k: int, shape: tuple[int, int], w_bytes: bytes, q_bytes: bytes) -> tuple[np.ndarray, ...]:
    w, q = np.frombuffer(w_bytes), np.frombuffer(q_bytes).reshape(shape)
    N = count_vectors(k, shape[1]).astype(float)  # (M, J)
    table = (N, multinomial_weights(N, q) * w[:, None])
    for x in table:
        x.flags.writeable = False
    return table


def _count_products(k: int, N: np.ndarray) -> np.ndarray:
    """NN (M, J, J) = n_j n_l, the dense Hessian's; remembered while it has at most _TABLE_MAX_ENTRIES numbers."""
    if N.size * N.shape[1] <= _TABLE_MAX_ENTRIES:
        return _remembered_products(k, N.shape[1])
    return np.einsum("mj,ml->mjl", N, N)


@lru_cache(maxsize=16)
def _remembered_products(k: int, J: int) -> np.ndarray:
    N = count_vectors(k, J).astype(float)  # (M, J)
    NN = np.einsum("mj,ml->mjl", N, N)
    NN.flags.writeable = False
    return NN


def _enumerated(loss, k, rho, w, q, z, phi, dphi, d2phi, hessian):
    """The expectation as a sum over every count vector n (any psi; binom(k + J - 1, J - 1) terms)."""
    N, P = _table(k, w, q)  # (M, J), (A, M)
    S = rho * phi @ N.T  # (A, M), inner sum per anchor and count vector
    value = (P * loss.psi(S)).sum()
    PdN = (P * loss.dpsi(S)) @ N  # (A, J)
    grad = rho * PdN * dphi  # (A, J)
    hess = None
    if hessian in OPERATORS:
        Pdd, first = rho**2 * P * loss.d2psi(S), rho * PdN * d2phi  # (A, M), (A, J)
        return value, grad, lambda v: dphi * ((Pdd * ((dphi * v) @ N.T)) @ N) + first * v
    if hessian:
        Pdd = P * loss.d2psi(S)  # (A, M)
        NN = _count_products(k, N)  # (M, J, J)
        hess = rho**2 * np.einsum("am,mjl->ajl", Pdd, NN) * dphi[:, :, None] * dphi[:, None, :]
        idx = np.arange(z.shape[1])
        hess[:, idx, idx] += rho * PdN * d2phi
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
    shift, scale = problem.phi_affine()
    value, D, _ = expected_loss(problem.loss, problem.k, problem.rho, problem.anchor_weights(),
                                problem.negative_distribution(), G, method=problem.expectation, shift=shift,
                                scale=scale)  # fmt: skip
    return value.item(), D


def kkt_matrix(G: np.ndarray, D: np.ndarray) -> np.ndarray:
    """Z = sym(D) - Diag(y) with y_i = (sym(D) G)_ii: PSD (and Z G = 0) exactly at an optimum."""
    D_sym = (D + D.T) / 2  # (C, C)
    y = np.einsum("ij,ji->i", D_sym, G)  # (C,)
    return D_sym - np.diag(y)


def gap_bound(G: np.ndarray, D: np.ndarray, s: np.ndarray | None = None) -> float:
    """Duality-gap bound for a feasible G of the convex program over {G PSD, diag(G) = 1}.

    For any y with Z = sym(D) - Diag(y) PSD, convexity gives for every feasible H
    ``L(H) >= L(G) + <D, H - G> >= L(G) - <D, G> + sum(y)``. Taking y_i = (sym(D) G)_ii (exact at
    an optimum, where Z G = 0) and shifting y down by ``mu s_i^2`` with
    ``mu = lambda_min(S^-1 Z S^-1)^-``, S = Diag(s), makes Z PSD; the gap L(G) - lower bound is then
    ``mu sum(s^2)``. s = 1 (the default) gives ``C max(0, -lambda_min(Z))``; s = p resolves
    classes whose terms weigh ~p_c p_j (the rows of Z scale so), far below the round-off of Z's
    largest entries.

    Parameters
    ----------
    G : (C, C) feasible Gram matrix.
    D : (C, C) gradient (or subgradient) of L at G, row c for anchor c.
    s : (C,) positive scales, optional.
    """
    Z = kkt_matrix(G, D)
    if s is None:
        return G.shape[0] * max(0.0, -float(np.linalg.eigvalsh(Z)[0]))
    mu = max(0.0, -float(np.linalg.eigvalsh(Z / np.outer(s, s))[0]))
    return mu * float((s**2).sum())


def certificate(problem: Problem, G: np.ndarray, scaled: bool = False) -> tuple[float, float]:
    """L(G) and the bound of :func:`gap_bound` from the class-level expectation (solver-independent).

    Exact at any k (the transform for log1p psi); its cost grows like C^2 per quadrature node.
    ``scaled``: the smaller of the bounds with s = 1 and s = p (both valid).
    """
    value, D = class_objective(problem, G)
    gap = gap_bound(G, D)
    if scaled:
        gap = min(gap, gap_bound(G, D, problem.p))
    return value, gap

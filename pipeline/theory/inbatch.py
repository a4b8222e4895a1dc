"""The exact expected in-batch loss (SimCLR / SupCon negatives) at collapsed features.

A batch holds B = k + 2 samples; for an anchor of class c and a positive the k negatives are the other B - 2
members (:mod:`pipeline.train.batch_loss`). With one unit vector per class (Gram matrix G) a pair's loss
depends only on the label counts n of those k members, ``T_c(n) = psi( rho sum_j n_j phi(G[c, j] - 1) )``,
and the expected batch loss is a weighted sum over count vectors,

    E[batch loss] = sum_c sum_n W[c, n] T_c(n).

Labels i.i.d. from p (``m ~ Mult(k + 2, p)``):

    positives='sum'   W[c, n] = (k + 1) p_c^2 Mult(n; k, p)
    positives='mean'  W[c, n] = (k + 1) p_c^2 / (n_c + 1) Mult(n; k, p)

so ``sum`` is the theory's objective (``marginal`` negatives) with anchor weights p_c^2 / sum_j p_j^2, times
(k + 1) sum_j p_j^2, and ``mean`` weighs anchor c by p_c (1 - (1 - p_c)^(k + 1)) with the other members'
counts tilted by 1 / (n_c + 1). Batches without replacement from a dataset of class counts N_c (total T)
replace ``p_c^2 Mult(n; k, p)`` by ``N_c (N_c - 1) / (T (T - 1)) Hyper(n; k, N - 2 e_c)``. The derivation,
the limits and the tests of each statement are in ``docs/inbatch.md``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.special import gammaln

from pipeline.theory.losses import REDUCTIONS, Loss, check_option, parse_loss
from pipeline.theory.objective import count_vectors, multinomial_weights
from pipeline.theory.remedies import parse_remedy

POSITIVES: tuple[str, ...] = ("mean", "sum")

# the enumeration is refused beyond this many count vectors binom(k + C - 1, C - 1)
MAX_COUNT_VECTORS = 200_000


def _log_binom(n: np.ndarray, r: np.ndarray) -> np.ndarray:
    """log binom(n, r) elementwise (broadcast), -inf where r < 0 or r > n (including n < 0)."""
    n, r = np.broadcast_arrays(np.asarray(n, dtype=float), np.asarray(r, dtype=float))
    valid = (r >= 0) & (r <= n)
    n_, r_ = np.where(valid, n, 0.0), np.where(valid, r, 0.0)
    return np.where(valid, gammaln(n_ + 1) - gammaln(r_ + 1) - gammaln(n_ - r_ + 1), -np.inf)


def _proportions(p: np.ndarray | None, counts: np.ndarray | None, k: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Checked proportions (C,) and integer counts (C,) or None."""
    if counts is not None:
        counts = np.asarray(counts)
        if counts.ndim != 1 or counts.size < 2 or np.any(counts < 0) or np.any(counts != np.round(counts)):
            raise ValueError(f"counts: {counts.tolist()}: expected at least two non-negative integer class counts")
        counts = counts.astype(np.int64)
        if counts.sum() < k + 2:
            raise ValueError(f"counts: {counts.tolist()}: {counts.sum()} samples < a batch of k + 2 = {k + 2}")
        derived = counts / counts.sum()
        if p is not None and not np.allclose(np.asarray(p, dtype=float) / np.sum(p), derived, rtol=1e-12, atol=0):
            raise ValueError("give p or counts, not both (p is derived from counts)")
        return derived, counts
    if p is None:
        raise ValueError("p or counts is required")
    p = np.asarray(p, dtype=float)
    if p.ndim != 1 or p.size < 2 or not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
        raise ValueError(f"p: {p.tolist()}: expected at least two non-negative, finite class proportions")
    return p / p.sum(), None


def inbatch_weights(
    p: np.ndarray | None, k: int, positives: str = "mean", counts: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Count vectors of the k other batch members and their weights in the expected in-batch loss.

    Parameters
    ----------
    p : (C,) class proportions of i.i.d. labels (normalised here); derived from ``counts`` when those are given.
    k : negatives per pair, the batch size minus 2 (>= 1).
    positives : ``mean`` (SupCon: an anchor's pairs averaged over its positives) or ``sum``.
    counts : (C,) integer class counts of a finite dataset, for batches drawn without replacement; optional.

    Returns
    -------
    N : (M, C) float, every count vector n >= 0 with sum k, M = binom(k + C - 1, C - 1).
    W : (C, M) weights: the expected batch loss at collapsed features is ``sum_c sum_m W[c, m] T_c(N[m])``.
    """
    if positives not in POSITIVES:
        raise ValueError(f"positives: {positives!r}: expected one of {', '.join(POSITIVES)}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k: {k!r}: expected an integer >= 1 (the batch size minus 2)")
    k = int(k)
    p, counts = _proportions(p, counts, k)
    C = p.size
    if math.comb(k + C - 1, C - 1) > MAX_COUNT_VECTORS:
        raise ValueError(
            f"k = {k} with {C} classes has {math.comb(k + C - 1, C - 1)} count vectors, more than the "
            f"enumeration's {MAX_COUNT_VECTORS}: use a smaller k"
        )
    N = count_vectors(k, C).astype(float)  # (M, C)
    if counts is None:
        W = (k + 1) * (p**2)[:, None] * multinomial_weights(N, p[None, :])  # (C, M), Mult(n; k, p) is anchor-free
    else:
        T = int(counts.sum())
        rest = counts[None, :] - 2 * np.eye(C, dtype=np.int64)  # (C, C): the dataset without anchor and positive
        log_hyper = _log_binom(rest[:, None, :], N[None, :, :]).sum(axis=2) - _log_binom(T - 2, k)  # (C, M)
        pair = counts * (counts - 1) / (T * (T - 1))  # (C,): an ordered pair of distinct samples both of class c
        W = (k + 1) * pair[:, None] * np.exp(log_hyper)  # (C, M)
    if positives == "mean":
        W = W / (N.T + 1.0)  # (C, M): 1 / (n_c + 1), n_c the anchor's other same-class members
    return N, W


def inbatch_objective(
    loss: str | Loss,
    G: np.ndarray,
    k: int,
    reduction: str = "sum",
    positives: str = "mean",
    p: np.ndarray | None = None,
    counts: np.ndarray | None = None,
    remedy: Any = None,
) -> float:
    """The exact expected in-batch loss (:func:`pipeline.train.batch_loss.batch_loss`) at collapsed features.

    Parameters
    ----------
    loss : loss id or Loss.
    G : (C, C) Gram matrix of the class vectors (unit diagonal).
    k : negatives per pair (batch size k + 2).
    reduction : ``sum`` (rho = 1) or ``mean`` (rho = 1 / k).
    positives, p, counts : as :func:`inbatch_weights` (p: i.i.d. labels; counts: without replacement).
    remedy : a remedy (:mod:`pipeline.theory.remedies`) read at the labels' proportions: phi_cj(G_cj - 1) in each
        pair's terms, and each anchor's loss weighted by a_c / p_c (its reweighting); optional.
    """
    loss = parse_loss(loss)
    check_option("reduction", reduction, REDUCTIONS)
    N, W = inbatch_weights(p, k, positives, counts)  # (M, C), (C, M)
    G = np.asarray(G, dtype=float)
    if G.shape != (N.shape[1], N.shape[1]):
        raise ValueError(f"G: shape {G.shape}: expected ({N.shape[1]}, {N.shape[1]}) for {N.shape[1]} classes")
    rho = 1.0 if reduction == "sum" else 1.0 / k
    remedy = parse_remedy(remedy)
    proportions = _proportions(p, counts, k)[0]  # (C,): what the remedy reads
    delta, scale = remedy.phi_affine(proportions, loss)
    t = G - 1.0 if delta is None else G - 1.0 + delta  # (C, C)
    t = t if scale is None else t * scale
    S = rho * loss.phi(t) @ N.T  # (C, M): inner sum of anchor class c against count vector m
    W = W * remedy.anchor_factor(proportions)[:, None]  # (C, M): 1 without reweighting
    return float((W * loss.psi(S)).sum())


def anchor_weights_of_pairs(p: np.ndarray) -> np.ndarray:
    """a_c = p_c^2 / sum_j p_j^2 (C,): the theory's anchor weights that ``positives='sum'`` estimates."""
    p = np.asarray(p, dtype=float)
    return p**2 / (p**2).sum()


def positive_probability(p: np.ndarray, k: int) -> np.ndarray:
    """1 - (1 - p_c)^(k + 1) (C,): the probability that an anchor of class c has a positive in a batch of k + 2
    i.i.d. labels, also ``E_{n ~ Mult(k, p)}[(k + 1) p_c / (n_c + 1)]``, the weight of anchor c relative to the
    theory's p_c under ``positives='mean'``."""
    p = np.asarray(p, dtype=float)
    return -np.expm1((k + 1) * np.log1p(-p))

"""Geometry metrics of class representations, shared by the theory solvers and training.

Neural-collapse style measurements (Papyan, Han, Donoho 2020) on features on the unit sphere:
the Gram matrix of the normalised class means, its distance to the simplex ETF, within-class
variability (NC1), the group cosines a, b, c and a minority-collapse flag.
"""

from __future__ import annotations

import math

import numpy as np

# A trained minority cosine counts as collapsed above 1 - COLLAPSE_TOL. Only for measured
# (trained) geometry: theory decides collapse from its optimality condition instead.
COLLAPSE_TOL = 1e-2


def etf_gram(C: int) -> np.ndarray:
    """Gram matrix of the simplex ETF with C vertices: 1 on the diagonal, -1/(C-1) off it."""
    return np.full((C, C), -1.0 / (C - 1)) + np.eye(C) * (1 + 1.0 / (C - 1))


def class_mean_gram(H: np.ndarray, y: np.ndarray, C: int) -> np.ndarray:
    """Gram of the normalised class means.

    Parameters
    ----------
    H : (n, d) features.
    y : (n,) integer labels in [0, C).
    C : number of classes.

    Returns
    -------
    (C, C) array; rows and columns of classes without samples are NaN.
    """
    M = np.stack([np.bincount(y, weights=h, minlength=C) for h in H.T], axis=1)  # (C, d) class sums
    with np.errstate(invalid="ignore", divide="ignore"):
        M /= np.linalg.norm(M, axis=1, keepdims=True)
    return M @ M.T


def etf_distance(G: np.ndarray) -> float:
    """Frobenius distance from G to the simplex ETF, divided by C."""
    C = G.shape[0]
    return float(np.linalg.norm(G - etf_gram(C)) / C)


def nc1(H: np.ndarray, y: np.ndarray, C: int) -> float:
    """Within-class variability: tr(Sigma_W Sigma_B^+) / C (Papyan et al. 2020, NC1)."""
    mu_G = H.mean(axis=0)  # (d,)
    means = np.stack([H[y == c].mean(axis=0) for c in range(C)])  # (C, d)
    centred = H - means[y]  # (n, d)
    Sigma_W = centred.T @ centred / H.shape[0]  # (d, d)
    Mc = means - mu_G  # (C, d)
    Sigma_B = Mc.T @ Mc / C  # (d, d)
    return float(np.trace(Sigma_W @ np.linalg.pinv(Sigma_B)) / C)


def group_cosines(G: np.ndarray, n_major: int) -> tuple[float, float, float]:
    """Mean off-diagonal cosines (a, b, c) of the majority, cross and minority blocks of G.

    Classes are ordered majority first; a (c) is NaN with fewer than two majority (minority) classes.
    """
    A, B = slice(0, n_major), slice(n_major, G.shape[0])
    K_A, K_B = n_major, G.shape[0] - n_major
    a = (G[A, A].sum() - K_A) / (K_A * (K_A - 1)) if K_A > 1 else math.nan
    c = (G[B, B].sum() - K_B) / (K_B * (K_B - 1)) if K_B > 1 else math.nan
    b = G[A, B].mean() if K_B > 0 else math.nan
    return float(a), float(b), float(c)


def minority_collapsed(c: float, tol: float = COLLAPSE_TOL) -> bool:
    """Measured minority collapse: the minority cosine c is within ``tol`` of 1."""
    return bool(c >= 1 - tol)

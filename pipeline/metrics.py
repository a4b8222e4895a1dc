"""Geometry metrics of class representations, shared by the theory solvers and training.

Neural-collapse style measurements (Papyan, Han, Donoho 2020) on features on the unit sphere:
the Gram matrix of the normalised class means, its distance to the simplex ETF, within-class
variability (NC1, flagged where ill-conditioned, and two well-conditioned measures beside it), the
group cosines a, b, c and a minority-collapse flag.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

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


# gram_distance tries every relabelling within the groups up to this many; beyond, pairwise swaps
EXHAUSTIVE_RELABELLINGS = 5040  # 7!: ~0.05 s a run


def gram_distance(G: np.ndarray, G_ref: np.ndarray, groups: np.ndarray) -> float:
    """||P G P^T - G_ref||_F / C, minimised over relabellings P within groups of interchangeable classes.

    Classes of equal proportion are interchangeable (the paper): where the optimum G_ref breaks their
    symmetry (the rank-d optimum at d < C merges some of them), which of them a run merged is arbitrary,
    so the distance is taken to the nearest relabelling. Exhaustive while the groups have at most
    ``EXHAUSTIVE_RELABELLINGS`` relabellings (prod K_g!); beyond, scipy's graph-matching heuristic
    (FAQ) and a descent over pairwise swaps: an upper bound on the minimum.

    Parameters
    ----------
    G, G_ref : (C, C) Gram matrices.
    groups : (C,) a label per class; classes with equal labels are interchangeable.
    """
    C = G.shape[0]
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]

    def dist(order: np.ndarray) -> float:
        return float(np.linalg.norm(G[np.ix_(order, order)] - G_ref))

    identity = np.arange(C)
    if math.prod(math.factorial(m.size) for m in members) <= EXHAUSTIVE_RELABELLINGS:
        best = math.inf
        for choice in itertools.product(*(itertools.permutations(m) for m in members)):
            order = identity.copy()
            for m, image in zip(members, choice, strict=True):
                order[m] = image
            best = min(best, dist(order))
        return best / C
    # the graph-matching heuristic FAQ (scipy) on G and G_ref with the group of each class written on
    # the diagonal at a scale that makes any cross-group relabelling cost more than every other
    # mismatch together, from the identity and a few random starts, then pairwise swaps within groups
    from scipy.optimize import quadratic_assignment  # here: scipy.optimize costs every process 0.4 s to import

    label = np.unique(groups, return_inverse=True)[1]
    marks = np.diag(10.0 * C * label)
    starts = [np.eye(C)] + ["randomized"] * 8
    order, best = identity, dist(identity)
    for i, P0 in enumerate(starts):
        options = {"maximize": True, "P0": P0, "rng": np.random.default_rng(i)}
        res = quadratic_assignment(G_ref + marks, G + marks, method="faq", options=options)
        if np.array_equal(label[res.col_ind], label) and (value := dist(res.col_ind)) < best:
            order, best = res.col_ind, value
    improved = True
    while improved:
        improved = False
        for m in members:
            for i, j in itertools.combinations(m, 2):
                trial = order.copy()
                trial[[i, j]] = trial[[j, i]]
                if (value := dist(trial)) < best - 1e-15:
                    order, best, improved = trial, value, True
    return best / C


def etf_distance(G: np.ndarray) -> float:
    """Frobenius distance from G to the simplex ETF, divided by C."""
    C = G.shape[0]
    return float(np.linalg.norm(G - etf_gram(C)) / C)


# Sigma_B counts as rank-deficient when an eigenvalue that a non-degenerate class-mean simplex has
# (the C - 1 largest) falls below this fraction of the largest: merged class means
RANK_RTOL = 1e-6
# stationarity of a trained run (``converged_train``): free features by the normalised gradient norm
# of the exact loss (pipeline.train.exact_ufm.SampleLoss.grad_norm; a geometry error delta in the minority
# block gives ~delta); mlp and free features too many for the exact loss, whose parameter-space
# gradient norm (reported too) has no scale-free tolerance, by the relative change of the training
# loss over the last 10% of steps (a weaker test: a slow drift passes it)
GRAD_NORM_TOL = 1e-6
LOSS_CHANGE_TOL = 1e-3


def stationary(grad_norm: float, loss_change: float, p_min: float | None = None) -> bool | None:
    """converged_train of one run (None where neither measure is available, or cannot tell).

    With ``p_min`` (the smallest class proportion) a loss that has stopped changing counts as stationary
    only where the test resolves the terms that set the minority geometry: they weigh about p_min^2 of
    the loss, so where p_min^2 < ``LOSS_CHANGE_TOL`` it says nothing about them (None: unknown); a loss
    still changing is not stationary whatever p_min.

    Examples
    --------
    >>> stationary(float("nan"), 1e-4), stationary(float("nan"), 1e-4, p_min=0.01), stationary(float("nan"), 1e-2, 0.01)
    (True, None, False)
    """
    if grad_norm == grad_norm:  # not NaN
        return bool(grad_norm <= GRAD_NORM_TOL)
    if loss_change == loss_change:
        if abs(loss_change) > LOSS_CHANGE_TOL:
            return False
        return None if p_min is not None and p_min**2 < LOSS_CHANGE_TOL else True
    return None


CONVENTIONS = (
    "global mean mu_G: sample-weighted mean of the features (training draws classes equally, so also the "
    "class average); Sigma_W: sample-weighted; Sigma_B: each class mean weighs 1/C"
)


@dataclass(frozen=True)
class WithinClass:
    """Within-class measures of features on the sphere (see :func:`within_class`)."""

    nc1: float  # tr(Sigma_W Sigma_B^+) / C (Papyan et al. 2020)
    nc1_rank_deficient: bool  # Sigma_B lost rank (merged class means): NC1 is ill-conditioned
    spread: float  # class average of spread_per_class
    spread_per_class: np.ndarray  # (C,) 1 - |mean of class c|
    trace_ratio: float  # tr Sigma_W / tr Sigma_B


def within_class(H: np.ndarray, y: np.ndarray, C: int) -> WithinClass:
    """NC1, flagged where ill-conditioned, beside two well-conditioned within-class measures.

    NC1 = tr(Sigma_W Sigma_B^+) / C blows up where class means merge (Sigma_B loses rank and its small
    eigenvalues divide Sigma_W), exactly where minority collapse happens. The spread on the sphere,
    ``1 - |mean_c|`` for unit features (0 iff the class sits on one point; about half the within-class
    variance for small spreads), and ``tr Sigma_W / tr Sigma_B`` stay finite there. Conventions:
    ``CONVENTIONS``.

    Parameters
    ----------
    H : (n, d) features (unit norm for the spread to mean what it says).
    y : (n,) labels in [0, C), every class present.
    C : number of classes.
    """
    mu_G = H.mean(axis=0)  # (d,)
    means = np.stack([H[y == c].mean(axis=0) for c in range(C)])  # (C, d)
    centred = H - means[y]  # (n, d)
    Sigma_W = centred.T @ centred / H.shape[0]  # (d, d)
    Mc = means - mu_G  # (C, d)
    Sigma_B = Mc.T @ Mc / C  # (d, d)
    lam = np.linalg.eigvalsh(Sigma_B)[::-1]  # (d,) descending
    k = min(C - 1, lam.size)
    deficient = bool(k > 0 and lam[k - 1] < RANK_RTOL * max(lam[0], 1e-300))
    spread = 1.0 - np.linalg.norm(means, axis=1)  # (C,)
    return WithinClass(
        nc1=float(np.trace(Sigma_W @ np.linalg.pinv(Sigma_B)) / C),
        nc1_rank_deficient=deficient,
        spread=float(spread.mean()),
        spread_per_class=spread,
        trace_ratio=float(np.trace(Sigma_W) / max(np.trace(Sigma_B), 1e-300)),
    )


def nc1(H: np.ndarray, y: np.ndarray, C: int) -> float:
    """Within-class variability: tr(Sigma_W Sigma_B^+) / C (Papyan et al. 2020, NC1)."""
    return within_class(H, y, C).nc1


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


def ncm_accuracy(
    H_train: np.ndarray, y_train: np.ndarray, H_test: np.ndarray, y_test: np.ndarray, C: int
) -> np.ndarray:
    """Per-class test accuracy (C,) of the nearest-class-mean classifier: a test feature takes the class
    whose normalised training mean has the largest cosine with it (NaN for a class without test samples).

    Examples
    --------
    >>> H = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    >>> ncm_accuracy(H, np.array([0, 0, 1, 1]), H[[0, 3, 1]], np.array([0, 1, 1]), 2).tolist()
    [1.0, 0.5]
    """
    M = np.stack([np.bincount(y_train, weights=h, minlength=C) for h in H_train.T], axis=1)  # (C, d)
    with np.errstate(invalid="ignore", divide="ignore"):
        M /= np.linalg.norm(M, axis=1, keepdims=True)
    predicted = np.argmax(np.nan_to_num(H_test @ M.T, nan=-np.inf), axis=1)  # (n_test,)
    right = np.bincount(y_test, weights=predicted == y_test, minlength=C)
    total = np.bincount(y_test, minlength=C)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, right / total, np.nan)


# many / medium / few-shot classes by their training samples (Liu et al. 2019, ImageNet-LT's split)
SHOTS = {"many": (101, np.inf), "medium": (20, 100), "few": (0, 19)}


def class_groups(p: np.ndarray, counts: np.ndarray | None = None) -> tuple[str, dict[str, np.ndarray]]:
    """Head, medium and tail classes: by integer training counts with ImageNet-LT's split (``SHOTS``:
    > 100, 20 to 100, < 20) where counts are given and every split is used, else by proportion in thirds
    (the largest C // 3 classes, the smallest C // 3, the rest). Empty groups are left out.

    Returns
    -------
    basis : str
        How the groups were made, for a reader: the count split or the thirds.
    groups : dict of name -> (n,) int class indices, largest proportion first.

    Examples
    --------
    >>> basis, groups = class_groups(np.array([0.4, 0.3, 0.2, 0.1]))
    >>> basis, {g: c.tolist() for g, c in groups.items()}
    ('by proportion, in thirds', {'head': [0], 'medium': [1, 2], 'tail': [3]})
    >>> basis, groups = class_groups(np.ones(3), np.array([500, 50, 5]))
    >>> basis, {g: c.tolist() for g, c in groups.items()}
    ('by training count: > 100, 20 to 100, < 20', {'head': [0], 'medium': [1], 'tail': [2]})
    """
    order = np.argsort(-np.asarray(p), kind="stable")  # (C,) largest first
    if counts is not None:
        n = np.asarray(counts)[order]
        split = {name: order[(n >= lo) & (n <= hi)] for name, (lo, hi) in zip(("head", "medium", "tail"),
                                                                             SHOTS.values(), strict=True)}  # fmt: skip
        if all(len(members) for members in split.values()):
            return "by training count: > 100, 20 to 100, < 20", split
    third = len(order) // 3
    split = {"head": order[:third], "medium": order[third : len(order) - third], "tail": order[len(order) - third :]}
    return "by proportion, in thirds", {name: members for name, members in split.items() if len(members)}


def shot_accuracy(acc_class: np.ndarray, n_train_class: np.ndarray) -> dict[str, float]:
    """Mean per-class accuracy over the many- (> 100 training samples), medium- (20 to 100) and
    few-shot (< 20) classes; NaN for a group without classes.

    Examples
    --------
    >>> shot_accuracy(np.array([1.0, 0.5, 0.0]), np.array([500, 50, 5]))
    {'many': 1.0, 'medium': 0.5, 'few': 0.0}
    """
    out = {}
    for name, (lo, hi) in SHOTS.items():
        members = (n_train_class >= lo) & (n_train_class <= hi)
        out[name] = float(np.mean(acc_class[members])) if members.any() else math.nan
    return out

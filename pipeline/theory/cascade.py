"""The collapse cascade: which classes share one direction, decided from the optimality condition.

A *merged geometry* puts the classes of each cluster on one vector and is the optimum of the convex
program restricted to that (:func:`pipeline.theory.oblique.minimise` with tied columns). It is optimal for
the full program iff the KKT certificate exists there: with D = dL/dG, D_s = (D + D^T) / 2,
y_i = (D_s G)_ii and Z = D_s - Diag(y), Z must be PSD (Z G = 0 holds at the restricted optimum).
Splitting a cluster S moves G only along the split directions W_S = {z on S, sum z = 0}, which lie
in the null space of G, so the decision is the curvature splitting costs:

    h_S = lambda_min(B_S^T Z B_S) / p_min(S)^2,     B_S an orthonormal basis of W_S,

h_S > 0: merging S is optimal (the analogue of g <= 0 at c = 1 in the two-group criterion, which
it reproduces up to a positive factor); h_S < 0: splitting lowers L, the classes are apart. Every
term weighs ~p_min(S)^2, hence the normalisation. Never a cosine tolerance: cosines only propose
candidate clusters.

Error bound of h_S (a decision is taken only outside it): the round-off of Z on S,
``CRITERION_RTOL`` times the Frobenius norm of |D_s| + Diag(sum_l |D_s,il G_li|) on S, plus the
restricted solve's residual, the Frobenius norm of the rows S of Z G (zero at the exact optimum),
both over p_min(S)^2.

For the long-tailed profile exp(C, rho) the onsets rho*_m are where the m smallest classes first
merge: the first sign change of h_S(rho), S the m smallest, on a log grid of rho, refined by
Brent's method in log rho to 1e-6 relative.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import brentq

from pipeline.theory.objective import class_objective, gap_bound, kkt_matrix
from pipeline.theory.oblique import membership, minimise
from pipeline.theory.problem import Problem
from pipeline.theory.profiles import Exp
from pipeline.theory.remedies import NONE, Remedy, parse_remedy
from pipeline.theory.solution import json_number
from pipeline.theory.symmetric import CRITERION_RTOL

CANDIDATE_TOL = 1e-4  # 1 - cos below this proposes a merge (decided by h_S, not by this)
RHO_MAX = 1e12
_SCAN_STEP = 0.25  # log10 rho between scan points
ONSET_RTOL = 1e-6
# the merged geometry must be certified to this fraction of p_min(S)^2 (the weight of the terms
# that decide) for its split test to decide anything (past rho ~ 1e8 the tail weighs ~1e-16)
RESOLUTION_TOL = 1e-3


@dataclass(frozen=True)
class SplitTest:
    """The split curvature of one cluster at a merged geometry."""

    members: tuple[int, ...]
    h: float  # lambda_min of Z on the split directions / p_min(S)^2
    error: float  # bound on the error of h
    merged: bool | None  # h > error: merged; h < -error: apart; None: undecided
    resolution: float = 0.0  # certified gap of the merged (restricted) program / p_min(S)^2


@dataclass
class Directions:
    """The distinct class directions of an optimum and how each merge was decided."""

    count: int  # number of distinct directions
    label: np.ndarray  # (C,) cluster of each class
    tests: list[SplitTest]  # one per cluster of two or more classes
    G: np.ndarray  # (C, C) the merged geometry
    objective: float
    gap: float  # certified gap of the merged geometry in the full program
    decided_by: str = "split test"  # or "criterion": the c = 1 criterion of two groups (pipeline.api.directions)

    @property
    def decided(self) -> bool:
        return all(t.merged is not None for t in self.tests)


def _head_first(problem: Problem, label: np.ndarray) -> np.ndarray:
    """Renumber clusters so that the cluster of the largest proportion is 0, and so on."""
    clusters = np.unique(label)
    top = [problem.p[label == c].max() for c in clusters]
    rank = {c: r for r, c in enumerate(clusters[np.argsort(top)[::-1]])}
    return np.array([rank[c] for c in label])


def merged_geometry(problem: Problem, label: np.ndarray, start: dict | None = None) -> np.ndarray:
    """(C, C) optimum of the program with the classes of each cluster on one vector.

    ``start``: a dict carrying the cluster vectors between calls (warm starts along a scan).
    """
    label = _head_first(problem, np.asarray(label))
    V0 = None if start is None else start.get(label.tobytes())
    V, result = minimise(problem, label, V0)
    if start is not None and hasattr(result, "point"):
        start[label.tobytes()] = result.point
    G = V.T @ V
    np.fill_diagonal(G, 1.0)
    return G


@dataclass(frozen=True)
class _KKT:
    """L(G), D = dL/dG, the KKT matrix Z at G and the magnitudes its round-off scales with."""

    value: float
    D: np.ndarray
    Z: np.ndarray
    magnitude: np.ndarray


def _kkt(problem: Problem, G: np.ndarray) -> _KKT:
    value, D = class_objective(problem, G)
    D_s = (D + D.T) / 2  # (C, C)
    magnitude = np.abs(D_s) + np.diag(np.abs(D_s * G.T).sum(axis=1))  # (C, C)
    return _KKT(value, D, kkt_matrix(G, D), magnitude)


def split_basis(n: int) -> np.ndarray:
    """(n, n - 1) orthonormal basis of {z in R^n : sum z = 0} (Helmert)."""
    B = np.zeros((n, n - 1))
    for j in range(1, n):
        B[:j, j - 1] = 1.0
        B[j, j - 1] = -j
        B[:, j - 1] /= math.sqrt(j * (j + 1))
    return B


NULL_RTOL = 1e-9  # eigenvalues of the clusters' Gram below this fraction of the largest span its null space


def test_subspace(G: np.ndarray, label: np.ndarray, members: np.ndarray) -> np.ndarray:
    """(C, r) orthonormal basis of the directions splitting ``members`` can open in null(G).

    The split directions W_S, and the null space of the clusters' Gram lifted to the classes:
    when the cluster vectors span fewer dimensions than there are clusters, Z can couple a split
    to that free direction (measured: exp(C = 4, rho = 1e3), k = 4, where W_S alone says merged).
    """
    C = G.shape[0]
    E, reps = membership(label)
    lam, Q = np.linalg.eigh(G[np.ix_(reps, reps)])  # the clusters' Gram
    lifted = E @ Q[:, lam <= NULL_RTOL * lam[-1]]  # (C, n0)
    split = np.zeros((C, members.size - 1))
    split[members] = split_basis(members.size)
    basis, _ = np.linalg.qr(np.hstack([split, lifted]))
    return basis


def split_test(problem: Problem, G: np.ndarray, members: Any, label: np.ndarray | None = None,
               kkt: _KKT | None = None) -> SplitTest:  # fmt: skip
    """The sign of splitting the cluster ``members`` at the merged geometry G (module docstring).

    ``label`` gives every class's cluster (default: ``members`` merged, every other class alone).
    First order: at the merged optimum each member's own tangent gradient, rows S of Z G, must
    vanish (only their sum is zero by the restricted optimality); where it does not beyond its
    error the classes are apart (splitting lowers L linearly) and h is minus that slope.
    """
    S = np.asarray(sorted(members))
    C = problem.C
    if label is None:
        label = np.arange(C)
        label[S] = S[0]
    kkt = _kkt(problem, G) if kkt is None else kkt
    Z, magnitude = kkt.Z, kkt.magnitude
    scale = float(problem.p[S].min()) ** 2
    resolution = _restricted_gap(problem, G, np.asarray(label), kkt.D) / scale
    if not resolution <= RESOLUTION_TOL:
        return SplitTest(tuple(int(i) for i in S), math.nan, math.inf, None, resolution)
    ZG = Z @ G  # (C, C): row i is class i's tangent gradient (in the coordinates of G)
    round_off = CRITERION_RTOL * (float(np.linalg.norm(magnitude[np.ix_(S, S)]))
                                  + float(np.linalg.norm(np.abs(magnitude[S]) @ np.abs(G))))  # fmt: skip
    restricted = float(np.linalg.norm(ZG[S].sum(axis=0)))  # the merged solve's own residual
    slope = float(np.linalg.norm(ZG[S]))
    if slope > 10 * (round_off + restricted) and slope / scale > 1e-9:
        return SplitTest(tuple(int(i) for i in S), -slope / scale, (round_off + restricted) / scale, False, resolution)
    B = test_subspace(G, np.asarray(label), S)  # (C, r)
    lam = float(np.linalg.eigvalsh(B.T @ Z @ B)[0])
    error = (round_off + slope) / scale
    h = lam / scale
    merged = True if h > error else False if h < -error else None
    return SplitTest(tuple(int(i) for i in S), h, error, merged, resolution)


def _restricted_gap(problem: Problem, G: np.ndarray, label: np.ndarray, D: np.ndarray) -> float:
    """Certified gap of the merged geometry in the program restricted to its clusters."""
    E, reps = membership(label)
    G_r, D_r = G[np.ix_(reps, reps)], E.T @ D @ E
    return min(gap_bound(G_r, D_r), gap_bound(G_r, D_r, E.T @ problem.p))  # both bounds are valid


def candidate_clusters(G: np.ndarray, tol: float = CANDIDATE_TOL) -> np.ndarray:
    """(C,) labels of the connected components of {1 - G_ij < tol}: merges to be decided."""
    from scipy.sparse.csgraph import connected_components

    close = np.greater(G, 1.0 - tol)  # (C, C)
    _, label = connected_components(close, directed=False)
    return label


def distinct_directions(problem: Problem, G: np.ndarray) -> Directions:
    """How many distinct directions the optimum G has, each merge decided by its split test.

    Candidate clusters come from G's cosines; each is tested at the merged geometry. A cluster shown
    apart (h_S < -error) loses its largest class, and the merged geometry is solved again, until
    every remaining cluster is merged or undecided.
    """
    label = candidate_clusters(G)
    while True:
        G_m = merged_geometry(problem, label) if label.max() + 1 < problem.C else G
        kkt = _kkt(problem, G_m)
        tests = [split_test(problem, G_m, np.flatnonzero(label == c), label, kkt)
                 for c in np.unique(label) if (label == c).sum() > 1]  # fmt: skip
        apart = [t for t in tests if t.merged is False]
        if not apart:  # the certificate of the merged geometry (objective.certificate, from what is at hand)
            return Directions(int(np.unique(label).size), label, tests, G_m, kkt.value, gap_bound(G_m, kkt.D))
        label = label.copy()
        for t in apart:
            head = max(t.members, key=lambda i: problem.p[i])
            label[head] = label.max() + 1


class _UndecidedError(Exception):
    """A test inside Brent's bracket that decides nothing, at x = log10 rho."""

    def __init__(self, x: float) -> None:
        self.x = x


@dataclass(frozen=True)
class Onset:
    """rho*_m: the smallest rho at which the m smallest classes of exp(C, rho) share one direction."""

    m: int
    rho_star: float  # inf: not merged up to rho_max
    status: str  # 'optimal' (refined to 1e-6), 'beyond' (apart up to rho_max), 'undecided' (|h| within its error)
    h_before: float = math.nan  # h_S at the scan point below rho*
    h_after: float = math.nan  # h_S at the scan point above rho*
    apart_below: float = math.nan  # the largest scanned rho at which the m smallest were shown apart
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        num = json_number
        return {"m": self.m, "rho_star": num(self.rho_star), "status": self.status,
                "h_before": num(self.h_before), "h_after": num(self.h_after),
                "apart_below": num(self.apart_below), "message": self.message}  # fmt: skip


@dataclass
class Cascade:
    """The collapse cascade of exp(C, rho) at one loss, k and set of conventions."""

    loss: str
    C: int
    k: float
    negatives: str
    reduction: str
    onsets: list[Onset] = field(default_factory=list)
    remedy: Remedy = NONE

    def to_dict(self) -> dict[str, Any]:
        return {"loss": self.loss, "profile": f"exp(C={self.C})", "k": json_number(self.k), "negatives": self.negatives,
                "reduction": self.reduction, "remedy": self.remedy.spec,
                "onsets": [o.to_dict() for o in self.onsets]}  # fmt: skip


def tail_test(loss: Any, C: int, m: int, rho: float, k: float, negatives: str = "marginal",
              reduction: str = "sum", start: dict | None = None, remedy: Any = None) -> SplitTest:  # fmt: skip
    """The split test of the m smallest classes of exp(C, rho), merged."""
    problem = Problem.from_profile(loss, Exp(C, rho), k, negatives, reduction, remedy=remedy)
    label = np.minimum(np.arange(C), C - m)  # (C,): the m smallest share cluster C - m
    test = split_test(problem, merged_geometry(problem, label, start), range(C - m, C), label)
    if test.merged is None and start is not None:  # a warm start from far along the scan can stall: cold
        test = split_test(problem, merged_geometry(problem, label), range(C - m, C), label)
    return test


def onset(loss: Any, C: int, m: int, k: float, negatives: str = "marginal", reduction: str = "sum",
          rho_max: float = RHO_MAX, rho_from: float = 1.0, remedy: Any = None) -> Onset:  # fmt: skip
    """rho*_m of exp(C, rho): the first rho on the scan where h_S turns positive, refined by Brent.

    The scan starts at ``rho_from``, below which the m smallest are known to be apart (the
    cascade passes the scan point below rho*_{m-1}: merges are nested, rho*_m >= rho*_{m-1}).
    """
    previous: tuple[float, SplitTest] | None = None
    warm: dict = {}
    for log_rho in np.arange(math.log10(rho_from), math.log10(rho_max) + 1e-9, _SCAN_STEP):
        test = tail_test(loss, C, m, 10.0**log_rho, k, negatives, reduction, warm, remedy)
        if test.merged is None:
            why = (f"the merged geometry is certified only to {test.resolution:.2g} p_min^2"
                   if not test.resolution <= RESOLUTION_TOL else
                   f"|h| = {abs(test.h):.3g} within its error {test.error:.3g}")  # fmt: skip
            return Onset(m, math.nan, "undecided", apart_below=10.0 ** previous[0] if previous else math.nan,
                         message=f"{why} at rho = {10.0**log_rho:.4g}")  # fmt: skip
        if test.merged:
            if previous is None:
                if rho_from > 1:  # the nesting says apart below: start the scan lower
                    return onset(loss, C, m, k, negatives, reduction, rho_max, remedy=remedy)
                return Onset(m, 1.0, "optimal", h_after=test.h, message="merged already at rho = 1")
            lo, hi = previous[0], log_rho

            def h(x: float) -> float:
                inner = tail_test(loss, C, m, 10.0**x, k, negatives, reduction, warm, remedy)
                if inner.merged is None:
                    raise _UndecidedError(x)
                return inner.h

            try:
                root = brentq(h, lo, hi, xtol=ONSET_RTOL / math.log(10) / 10, rtol=1e-14)
            except _UndecidedError as stop:
                # the test lands within its error band at the root itself: bracket it by decided tests
                for d in (1e-9, 1e-8, 1e-7, 4e-7):  # decades: <= 9.2e-7 relative
                    left = tail_test(loss, C, m, 10.0 ** (stop.x - d), k, negatives, reduction, remedy=remedy)
                    right = tail_test(loss, C, m, 10.0 ** (stop.x + d), k, negatives, reduction, remedy=remedy)
                    if left.merged is False and right.merged is True:
                        return Onset(m, 10.0**stop.x, "optimal", previous[1].h, test.h, 10.0**lo,
                                     message=f"bracketed to {d * math.log(10):.1e} relative")  # fmt: skip
                return Onset(m, math.nan, "undecided", previous[1].h, test.h, 10.0**lo,
                             message=f"between rho = {10.0**lo:.4g} (apart) and {10.0**hi:.4g} (merged) the test "
                             f"at {10.0**stop.x:.6g} is within its error or unresolved")  # fmt: skip
            return Onset(m, 10.0**root, "optimal", previous[1].h, test.h, 10.0**lo)
        previous = (log_rho, test)
    return Onset(m, math.inf, "beyond", h_before=previous[1].h if previous else math.nan, apart_below=rho_max,
                 message=f"apart up to rho = {rho_max:g}")  # fmt: skip


def cascade(loss: Any, C: int, k: float, negatives: str = "marginal", reduction: str = "sum",
            rho_max: float = RHO_MAX, remedy: Any = None) -> Cascade:  # fmt: skip
    """The onsets rho*_2, ..., rho*_{C-1} of exp(C, rho).

    (All C classes on one direction is never optimal: spreading any two lowers every phi term.) Under a
    ``remedy`` the merges are not known to be nested, so each onset is scanned from rho = 1 on its own.
    """
    from pipeline.theory.losses import parse_loss

    loss = parse_loss(loss)
    remedy = parse_remedy(remedy)
    remedy.check_loss(loss)
    nested = remedy.is_none
    result = Cascade(loss.id, C, k, negatives, reduction, remedy=remedy)
    rho_from = 1.0
    for m in range(2, C):
        found = onset(loss, C, m, k, negatives, reduction, rho_max, rho_from if nested else 1.0, remedy)
        result.onsets.append(found)
        if not nested:
            continue
        if found.status == "beyond":  # nested: no larger set merges within the range either
            result.onsets.extend(Onset(j, math.inf, "beyond", message=found.message) for j in range(m + 1, C))
            break
        # the next scan starts below this onset; after an undecided one, from rho = 1
        found_rho = found.rho_star if found.status == "optimal" else 1.0
        rho_from = 10.0 ** (math.floor(math.log10(found_rho) / _SCAN_STEP) * _SCAN_STEP)
    return result

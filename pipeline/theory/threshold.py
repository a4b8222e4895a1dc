"""Minority-collapse thresholds R*: the smallest imbalance ratio at which the minority means merge.

Criterion (KKT at c = 1, docs/theory.md). With K_A majority and K_B >= 2 minority classes, the optimal
geometry is block-symmetric with cosines a, b, c, and with X = 1 + (K_A - 1) a, Y = 1 + (K_B - 1) c
the PSD constraint is tight in b = -sqrt(X Y / (K_A K_B)). Minority collapse (c = 1) is optimal iff

    g(R) = dL/dc + dL/db * db/dc <= 0   at (X*(c = 1), c = 1),   db/dc = -(K_B - 1) / (2 K_B) sqrt(X / K_A),

where X*(c = 1) minimises L with c held at 1: the repulsion between minority classes (dL/dc >= 0)
against the pull that merging them exerts through b. Both terms are O(p_minor^2), so g is used
normalised, g / p_minor^2. R* is the first sign change of g on a log grid of R, refined by Brent's
method in log R.

No finite threshold (R* = inf) is established from the limit of g / p_minor^2 as R -> inf, computed
from the derivatives at the limiting geometry (a = -1/(K_A - 1), b = 0, c = 1):

    g / p_minor^2 -> D_c - D_b^2 (K_A - 1)(K_B - 1) / (4 K_A K_B D_a),

with D_a = lim dL/da, D_b = lim dL/db / p_minor, D_c = lim dL/dc / p_minor^2. When this limit is
positive and no sign change was found up to ``R_max`` (where g / p_minor^2 is within O(1/R_max) of
its limit), the minority never collapses. With K_A = 1 the pull is O(p_minor) and always wins.

Decisions beyond round-off: g and its limit are each a difference of two terms, so both carry an
error bound (``CRITERION_RTOL`` times the sum of the terms' magnitudes, and for the limit also its
change between R = 1e14 and 1e15), and a sign counts only outside it. The limit can vanish
identically (psi linear with exponential phi and K_A = 2: the pull equals the repulsion as
R -> inf); then g > 0 at every finite R, c -> 1 only as R -> inf, and R* = inf with status
``asymptotic`` (on main before this rule, round-off signs of g gave R* = 7.5e17 or 5.9e84).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import brentq

from pipeline.errors import InputError
from pipeline.theory.losses import Loss, parse_loss
from pipeline.theory.problem import Problem, check_int, check_k
from pipeline.theory.remedies import NONE, Remedy, parse_remedy
from pipeline.theory.solution import json_number
from pipeline.theory.symmetric import CRITERION_RTOL, GroupModel, _TwoGroup

R_MAX = 1e12
_R_LIMIT = 1e15  # where the limit's coefficients are read (their O(p_minor) corrections ~1e-15)


@dataclass(frozen=True)
class Threshold:
    """R* and how it was established.

    ``status``: ``optimal`` (R* finite, or inf because the limit of g / p_minor^2 is positive beyond
    its error bound: c stays below 1 at every R), ``asymptotic`` (R* = inf and c -> 1 only as
    R -> inf: the limit vanishes within its error bound and g stays positive beyond its own), or
    ``error`` (the limit says a finite R* exists but none was found up to R = 1e300), or ``beyond``
    (under a remedy, whose R -> inf limit is not derived: g > 0 beyond its error bound at every R scanned,
    so R* > R_max, and R* is not decided beyond it).
    """

    loss: Loss
    n_major: int
    n_minor: int
    k: int | float
    negatives: str
    reduction: str
    R_star: float
    criterion_limit: float  # lim g / p_minor^2 as R -> inf
    bracket: tuple[float, float]
    status: str = "optimal"
    criterion_limit_error: float = 0.0
    remedy: Remedy = NONE

    @property
    def message(self) -> str:
        if self.status == "beyond":
            return (f"c < 1 at every R scanned (up to {self.bracket[0]:.3g}); beyond it R* is not decided: the "
                    "R -> inf limit of the criterion is derived for the plain loss only")  # fmt: skip
        if self.status == "asymptotic":
            return (
                "c -> 1 only as R -> inf: lim g/p_minor^2 = 0 within its error bound, and g > 0 beyond its own "
                f"at every R scanned (up to {self.bracket[0]:.3g})"
            )
        if self.status == "error":
            return "lim g/p_minor^2 < 0 but no sign change of g was found up to R = 1e300"
        return "" if math.isfinite(self.R_star) else "c < 1 at every R: lim g/p_minor^2 > 0"

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``clphase threshold --json`` (numbers as :func:`~pipeline.theory.solution.json_number`)."""
        num = json_number
        return {
            "loss": self.loss.id,
            "n_major": self.n_major,
            "n_minor": self.n_minor,
            "k": num(self.k),
            "negatives": self.negatives,
            "reduction": self.reduction,
            "remedy": self.remedy.spec,
            "R_star": num(self.R_star),
            "status": self.status,
            "message": self.message,
            "criterion_limit": num(self.criterion_limit),
            "criterion_limit_error": num(self.criterion_limit_error),
            "bracket": [num(x) for x in self.bracket],
        }


def _reduced(problem: Problem) -> _TwoGroup:
    return _TwoGroup(GroupModel.from_problem(problem))


def criterion_with_error(problem: Problem) -> tuple[float, float]:
    """(g / p_minor^2, its error bound) at c = 1 for a two-group problem (<= 0: collapse is optimal).

    The bound is ``CRITERION_RTOL * (|dL/dc| + |dL/db db/dc|) / p_minor^2``: each term is computed to
    that relative accuracy, and g is their difference (see ``_TwoGroup.criterion_at_collapse``).
    """
    two = problem.two_groups()
    if two is None or two[1] < 2:
        raise InputError("n_minor", None if two is None else two[1], "two groups with n_minor >= 2")
    g, error, _ = _reduced(problem).criterion_at_collapse()
    return g, error


def collapse_criterion(problem: Problem) -> float:
    """g / p_minor^2 at c = 1 for a two-group problem (<= 0: minority collapse is optimal)."""
    return criterion_with_error(problem)[0]


def decide_collapse(g: float, error: float) -> bool | None:
    """Collapse where g < -error, none where g > error, None (undecided) in between."""
    if g < -error:
        return True
    return False if g > error else None


def _limit_terms(loss: Loss, n_major: int, n_minor: int, k: float, negatives: str, reduction: str, R: float,
                 expectation: str = "auto"):  # fmt: skip
    problem = Problem.two_group(loss, n_major, n_minor, R, k, negatives, reduction, expectation)
    model = GroupModel.from_problem(problem)
    eps = model.pi[1]
    S = np.array([[-1.0 / (n_major - 1), 0.0], [0.0, 1.0]])
    _, dS, _ = model.evaluate(S)
    D_a, D_b, D_c = dS[0, 0], dS[0, 1] / eps, dS[1, 1] / eps**2
    return D_a, D_b, D_c


def criterion_limit(
    loss: Loss,
    n_major: int,
    n_minor: int,
    k: float,
    negatives: str,
    reduction: str,
    expectation: str = "auto",
) -> tuple[float, float]:
    """lim_{R -> inf} g / p_minor^2 from the derivatives at the limiting geometry (module docstring),
    and its error bound.

    The bound is ``CRITERION_RTOL`` times the sum of the magnitudes of the limit's two terms (their
    rounding), plus the change of the limit between R = 1e14 and R = 1e15 (the O(p_minor) corrections
    of coefficients read at finite R).
    """
    if n_major == 1:
        return -math.inf, 0.0
    args = (loss, n_major, n_minor, k, negatives, reduction)
    D_a, D_b, D_c = _limit_terms(*args, _R_LIMIT, expectation)
    if D_a <= 0:  # X costs nothing at first order: the pull wins
        return -math.inf, 0.0
    pull_factor = (n_major - 1) * (n_minor - 1) / (4 * n_major * n_minor)
    limit = D_c - D_b**2 * pull_factor / D_a
    D_a_lo, D_b_lo, D_c_lo = _limit_terms(*args, _R_LIMIT / 10, expectation)
    change = abs(limit - (D_c_lo - D_b_lo**2 * pull_factor / D_a_lo)) if D_a_lo > 0 else math.inf
    return limit, CRITERION_RTOL * (abs(D_c) + D_b**2 * pull_factor / D_a) + change


def minority_threshold(
    loss: str | Loss,
    n_major: int,
    n_minor: int,
    k: int | float,
    negatives: str = "marginal",
    reduction: str = "sum",
    R_max: float = R_MAX,
    per_decade: int = 8,
    expectation: str = "auto",
    remedy: str | Remedy | None = None,
) -> Threshold:
    """Smallest R at which minority collapse (c = 1) is optimal, to 1e-10 relative, or inf.

    Parameters
    ----------
    loss : str or Loss
        A differentiable member of the family (the hinge of ``triplet`` has no unique optimum).
    n_major, n_minor : int
        K_A >= 1 majority and K_B >= 2 minority classes.
    k : int or inf
        Number of negatives (``math.inf``: the large-k limit, R*_inf).
    negatives, reduction : str
        Sampling conventions (see :class:`~pipeline.theory.problem.Problem`).
    R_max : float
        End of the scanned grid; beyond it the sign of the limit decides.
    per_decade : int
        Grid points per decade of R for the sign scan.
    expectation : {'auto', 'transform', 'enumerate'}
        Route of the expectation over the negatives (checks compare them).
    remedy : str or Remedy, optional
        A remedy (:mod:`pipeline.theory.remedies`): the criterion carries over (the group reduction takes the
        remedy's phi_cj per block pair); its R -> inf limit does not, so without a sign change up to ``R_max``
        the status is ``beyond``.

    Notes
    -----
    A grid point counts as a sign of g only where |g| exceeds its error bound
    (:func:`criterion_with_error`); R* is refined by Brent's method between the last resolved
    positive and the first resolved negative point, so no R* comes from round-off. The limit is
    decided the same way: positive beyond its bound (R* = inf, ``optimal``), negative beyond it (a
    finite R* exists: the grid is extended until it is found), or zero within it; then the next
    order decides: g resolved positive up to ``R_max`` means c -> 1 only as R -> inf
    (R* = inf, status ``asymptotic``).
    """
    loss = parse_loss(loss)
    n_major = check_int("n_major", n_major, 1)
    n_minor = check_int("n_minor", n_minor, 2)
    k = check_k(k)
    if not loss.smooth:
        raise InputError("loss", loss.id, "a differentiable loss (infonce, sumexp, squared_hinge)")
    remedy = parse_remedy(remedy)
    remedy.check_loss(loss)

    def g_err(log10_R: float) -> tuple[float, float]:
        problem = Problem.two_group(loss, n_major, n_minor, 10.0**log10_R, k, negatives, reduction, expectation,
                                    remedy)  # fmt: skip
        return criterion_with_error(problem)

    def g(log10_R: float) -> float:
        return g_err(log10_R)[0]

    if remedy.is_none:
        limit, limit_error = criterion_limit(loss, n_major, n_minor, k, negatives, reduction, expectation)
    else:  # not derived under a remedy: neither sign is known, so nothing is decided beyond R_max
        limit, limit_error = math.nan, math.nan

    def result(R_star: float, bracket: tuple[float, float], status: str = "optimal") -> Threshold:
        return Threshold(loss, n_major, n_minor, k, negatives, reduction, R_star, limit, bracket, status, limit_error,
                         remedy)  # fmt: skip

    g0, e0 = g_err(0.0)
    if g0 <= e0:  # collapse at balance (to within the bound when |g| <= its error there)
        return result(1.0, (1.0, 1.0))
    hi = math.log10(R_max)
    grid = np.linspace(0.0, hi, round(hi * per_decade) + 1)
    if limit < -limit_error:  # a sign change exists: extend the grid until it is inside
        while g(grid[-1]) > 0 and grid[-1] < 300:
            grid = np.append(grid, np.linspace(grid[-1], grid[-1] + 12, 12 * per_decade + 1)[1:])
    last_positive = 0.0
    for x in grid[1:]:
        g_x, e_x = g_err(x)
        if g_x > e_x:
            last_positive = x
        elif g_x < -e_x:
            log_R = brentq(g, last_positive, x, xtol=1e-12, rtol=1e-15)
            return result(10.0**log_R, (10.0**last_positive, 10.0**x))
    if limit < -limit_error:
        return result(math.inf, (10.0 ** grid[-1], math.inf), "error")
    if math.isnan(limit):  # a remedy: apart up to R_max, undecided beyond
        return result(math.inf, (10.0 ** grid[-1], math.inf), "beyond")
    status = "optimal" if limit > limit_error else "asymptotic"
    return result(math.inf, (10.0 ** grid[-1], math.inf), status)

"""Minority-collapse thresholds R*: the smallest imbalance ratio at which the minority means merge.

Criterion (KKT at c = 1, THEORY.md). With K_A majority and K_B >= 2 minority classes, the optimal
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
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import brentq

from pipeline.errors import InputError
from pipeline.losses import Loss, parse_loss
from pipeline.problem import Problem, check_int
from pipeline.symmetric import GroupModel, _TwoGroup

R_MAX = 1e12
_R_LIMIT = 1e15  # where the limit's coefficients are read (their O(p_minor) corrections ~1e-15)


@dataclass(frozen=True)
class Threshold:
    """R* and how it was established."""

    loss: Loss
    n_major: int
    n_minor: int
    k: int
    negatives: str
    reduction: str
    R_star: float
    criterion_limit: float  # lim g / p_minor^2 as R -> inf
    bracket: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        def num(x: float) -> float | str:
            return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")

        return {
            "loss": self.loss.id,
            "n_major": self.n_major,
            "n_minor": self.n_minor,
            "k": self.k,
            "negatives": self.negatives,
            "reduction": self.reduction,
            "R_star": num(self.R_star),
            "criterion_limit": num(self.criterion_limit),
            "bracket": [num(x) for x in self.bracket],
        }


def _reduced(problem: Problem) -> _TwoGroup:
    return _TwoGroup(GroupModel.from_problem(problem))


def collapse_criterion(problem: Problem) -> float:
    """g / p_minor^2 at c = 1 for a two-group problem (<= 0: minority collapse is optimal)."""
    two = problem.two_groups()
    if two is None or two[1] < 2:
        raise InputError("n_minor", None if two is None else two[1], "two groups with n_minor >= 2")
    return _reduced(problem).criterion_at_collapse()[0]


def criterion_limit(loss: Loss, n_major: int, n_minor: int, k: int, negatives: str, reduction: str) -> float:
    """lim_{R -> inf} g / p_minor^2 from the derivatives at the limiting geometry (module docstring)."""
    if n_major == 1:
        return -math.inf
    problem = Problem.two_group(loss, n_major, n_minor, _R_LIMIT, k, negatives, reduction)
    model = GroupModel.from_problem(problem)
    eps = model.pi[1]
    S = np.array([[-1.0 / (n_major - 1), 0.0], [0.0, 1.0]])
    _, dS, _ = model.evaluate(S)
    D_a, D_b, D_c = dS[0, 0], dS[0, 1] / eps, dS[1, 1] / eps**2
    if D_a <= 0:  # X costs nothing at first order: the pull wins
        return -math.inf
    return D_c - D_b**2 * (n_major - 1) * (n_minor - 1) / (4 * n_major * n_minor * D_a)


def minority_threshold(
    loss: str | Loss,
    n_major: int,
    n_minor: int,
    k: int,
    negatives: str = "marginal",
    reduction: str = "sum",
    R_max: float = R_MAX,
    per_decade: int = 8,
) -> Threshold:
    """Smallest R at which minority collapse (c = 1) is optimal, to 1e-10 relative, or inf.

    Parameters
    ----------
    loss : str or Loss
        A differentiable member of the family (the hinge of ``triplet`` has no unique optimum).
    n_major, n_minor : int
        K_A >= 1 majority and K_B >= 2 minority classes.
    k : int
        Number of negatives.
    negatives, reduction : str
        Sampling conventions (see :class:`~pipeline.problem.Problem`).
    R_max : float
        End of the scanned grid; beyond it the sign of the limit decides.
    per_decade : int
        Grid points per decade of R for the sign scan.
    """
    loss = parse_loss(loss)
    n_major = check_int("n_major", n_major, 1)
    n_minor = check_int("n_minor", n_minor, 2)
    if not loss.smooth:
        raise InputError("loss", loss.id, "a differentiable loss (infonce, sumexp, squared_hinge)")

    def g(log10_R: float) -> float:
        problem = Problem.two_group(loss, n_major, n_minor, 10.0**log10_R, k, negatives, reduction)
        return collapse_criterion(problem)

    limit = criterion_limit(loss, n_major, n_minor, k, negatives, reduction)

    def result(R_star: float, bracket: tuple[float, float]) -> Threshold:
        return Threshold(loss, n_major, n_minor, k, negatives, reduction, R_star, limit, bracket)

    if g(0.0) <= 0:
        return result(1.0, (1.0, 1.0))
    hi = math.log10(R_max)
    grid = np.linspace(0.0, hi, round(hi * per_decade) + 1)
    if limit <= 0:  # a sign change exists: extend the grid until it is inside
        while g(grid[-1]) > 0 and grid[-1] < 300:
            grid = np.append(grid, np.linspace(grid[-1], grid[-1] + 12, 12 * per_decade + 1)[1:])
    for lo_x, x in itertools.pairwise(grid):
        g_x = g(x)
        if g_x <= 0:
            log_R = brentq(g, lo_x, x, xtol=1e-12, rtol=1e-15) if g_x < 0 else x
            return result(10.0**log_R, (10.0**lo_x, 10.0**x))
    return result(math.inf, (10.0 ** grid[-1], math.inf))

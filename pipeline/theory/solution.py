"""What every theory solver returns: the optimal geometry, its certificate and the conventions used."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from pipeline.theory.problem import Problem

SolveStatus = Literal["optimal", "optimal_inaccurate", "local", "error"]
SolverName = Literal["auto", "symmetric", "full", "rank", "oblique"]
SOLVERS: tuple[str, ...] = ("auto", "symmetric", "full", "rank", "oblique")
# the solvers that take a remedy (the cvxpy program, 'full', writes phi as cvxpy atoms, not phi_cj)
REMEDY_SOLVERS: tuple[str, ...] = ("auto", "symmetric", "oblique", "rank")


def json_number(x: float | None) -> float | int | str | None:
    """A number as the JSON of ``solve --json`` and ``threshold --json`` holds it: finite numbers as they
    are, +-inf as the strings ``"inf"`` / ``"-inf"`` (JSON has no infinity), NaN (not applicable) as null."""
    if x is None:
        return None
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return int(x)
    x = float(x)
    if math.isnan(x):
        return None
    return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")


@dataclass
class Solution:
    """Optimal class geometry at one theory point.

    Attributes
    ----------
    G : (C, C) Gram matrix of the class means.
    V : (d, C) class means (columns), V.T @ V = G.
    objective : float
        L(G).
    status : SolveStatus
        ``optimal`` (certified), ``optimal_inaccurate`` (a solution whose certificate or resolution
        of the minority block misses the tolerance; see ``message``), ``local`` (rank-constrained:
        best local optimum, not certified), ``error``.
    gap : float
        Certified upper bound on objective - optimum (absolute), see ``objective.certificate``;
        for ``local`` solutions, objective - lower_bound.
    gap_rel : float
        gap / |objective|.
    a, b, c : float
        Majority-majority, majority-minority and minority-minority cosines (NaN where absent).
    collapsed : bool or None
        Minority collapse (c = 1) decided from the optimality condition at c = 1; None when the
        proportions do not form one majority and one minority group of >= 2 minority classes.
    criterion : float
        The collapse criterion g / p_minor^2 (<= 0 means collapse); NaN where not applicable.
    criterion_error : float
        Bound on the error of ``criterion``; ``collapsed`` is decided only where |criterion| exceeds
        it (None inside: undecided, the merged geometry returned).
    gap_minor : float
        gap / p_minor^2: suboptimality in units of the weight of the minority-minority terms;
        above ~1e-3 the minority cosine c is not resolved by this solution.
    lower_bound : float
        Convex lower bound on the objective (rank-constrained solves), else objective - gap.
    """

    problem: Problem
    solver: str
    G: np.ndarray
    V: np.ndarray
    objective: float
    status: SolveStatus
    gap: float
    a: float = math.nan
    b: float = math.nan
    c: float = math.nan
    collapsed: bool | None = None
    criterion: float = math.nan
    criterion_error: float = math.nan
    lower_bound: float = math.nan
    kkt_residual: float = math.nan
    time_s: float = 0.0
    message: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    classes: list[str] | None = None  # one name per class (the profile's labels), where known
    directions: Any = None  # cascade.Directions: the distinct class directions, each merge decided

    @classmethod
    def certified(cls, problem: Problem, solver: str, G: np.ndarray, value: float, gap: float, dim: int | None,
                  start: float, extra: dict[str, Any]) -> Solution:  # fmt: skip
        """A solution at a feasible G with its certificate (L(G), gap); class means from G, the
        time since ``start`` (a ``time.perf_counter()`` value); status ``optimal`` until checked."""
        return cls(problem=problem, solver=solver, G=G, V=class_means(G, dim), objective=value, status="optimal",
                   gap=gap, lower_bound=value - gap, time_s=time.perf_counter() - start, extra=extra)  # fmt: skip

    @property
    def gap_rel(self) -> float:
        return self.gap / max(abs(self.objective), 1e-300)

    @property
    def gap_minor(self) -> float:
        return self.gap / float(self.problem.p.min()) ** 2

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary, including the Gram matrix and the conventions used."""

        num = json_number

        def cosine(x: float) -> float | str | None:
            return num(x if math.isnan(x) else min(1.0, max(-1.0, float(x))))

        two = self.problem.two_groups()
        lam = np.linalg.eigvalsh(self.G) if np.isfinite(self.G).all() else np.full(1, np.nan)
        return {
            **self.problem.describe(),
            "n_major": None if two is None else two[0],
            "n_minor": None if two is None else two[1],
            "R": None if two is None else num(two[2]),
            "solver": self.solver,
            "status": self.status,
            "objective": num(self.objective),
            "gap": num(self.gap),
            "gap_rel": num(self.gap_rel),
            "gap_minor": num(self.gap_minor),
            "lower_bound": num(self.lower_bound),
            "a": cosine(self.a),
            "b": cosine(self.b),
            "c": cosine(self.c),
            "collapsed": self.collapsed,
            "criterion": num(self.criterion),
            "criterion_error": num(self.criterion_error),
            "kkt_residual": num(self.kkt_residual),
            "G_rank": int((lam > 1e-9 * max(lam[-1], 1e-300)).sum()),  # numerical rank of G
            "embedding_dim": int(self.V.shape[0]),  # rows of the class means V (>= G_rank)
            "time_s": self.time_s,
            "message": self.message,
            "gram": [[cosine(x) for x in row] for row in self.G],
            "classes": self.classes,
            **_directions_dict(self.directions),
            **_stationarity_dict(self.extra.get("stationarity")),
        }


def _stationarity_dict(stationarity: Any) -> dict[str, Any]:
    """The JSON fields of a rank-d point's stationarity (rank.Stationarity), or none."""
    if stationarity is None:
        return {}
    return {"stationarity": {"gradient": json_number(stationarity.gradient),
                             "hessian_min": json_number(stationarity.hessian_min),
                             "hessian_max": json_number(stationarity.hessian_max),
                             "second_order": stationarity.second_order}}  # fmt: skip


def _directions_dict(directions: Any) -> dict[str, Any]:
    """The JSON fields of the distinct directions (null where they were not decided: rank, hinge)."""
    if directions is None:
        return {"distinct_directions": None, "directions_decided": None, "directions_decided_by": None,
                "direction_of_class": None}  # fmt: skip
    return {
        "distinct_directions": int(directions.count),
        "directions_decided": bool(directions.decided),
        "directions_decided_by": directions.decided_by,
        "direction_of_class": directions.label.tolist(),
    }


def class_means(G: np.ndarray, dim: int | None = None, rtol: float = 1e-9) -> np.ndarray:
    """Class means V (d, C) with V.T @ V = G, from the eigendecomposition of G.

    d is the numerical rank of G (eigenvalues above ``rtol * max``), padded with zero rows to ``dim``.
    """
    lam, Q = np.linalg.eigh(G)  # (C,), (C, C)
    keep = lam > rtol * max(lam[-1], 1e-300)
    V = (Q[:, keep] * np.sqrt(lam[keep])).T[::-1]  # (r, C), largest eigenvalue first
    if dim is not None and dim > V.shape[0]:
        V = np.vstack([V, np.zeros((dim - V.shape[0], G.shape[0]))])
    return V

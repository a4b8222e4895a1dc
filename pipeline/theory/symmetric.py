"""The symmetric (group-reduced) solver.

Classes of equal proportion are interchangeable, so by convexity an optimal G is constant on group
blocks: one cosine S[g, h] per pair of groups (S[g, g] within group g). With K_g classes in group g,
G = Diag(1 - S[g(i), g(i)]) + U S U^T and its eigenvalues are 1 - S[g, g] (multiplicity K_g - 1) and
those of the m x m matrix M with M[g, g] = 1 + (K_g - 1) S[g, g], M[g, h] = sqrt(K_g K_h) S[g, h].
The expectation over negatives is exact over m + 1 categories per anchor group (same class, other
class of the group, class of group h): binom(k + m, m) count vectors.

Two groups (K_A majority, K_B minority; docs/theory.md) use the exact reduction to X = M[A, A], Y = M[B, B]
with b = -sqrt(X Y / (K_A K_B)) (L is nondecreasing in b). In u = sqrt(X), v = sqrt(Y) the optimality
conditions dF/du = 0, dF/dv = 0 (or v = sqrt(K_B), i.e. c = 1) are solved as nested one-dimensional
safeguarded Newton iterations on analytic derivatives. Every term is computed directly (no
differences of O(1) quantities), so conditions whose terms weigh p_minor^2 stay resolved at any R.
More groups use a log-det barrier Newton method on the m(m + 1)/2 cosines.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from pipeline.errors import InputError
from pipeline.theory.objective import expected_loss, gap_bound
from pipeline.theory.problem import Problem
from pipeline.theory.solution import Solution, class_means

_EPS = np.finfo(float).eps
# relative error of each term of the collapse criterion: the expectation's routes agree to 6e-15
# (worst of the seeded transform-vs-enumeration cases, value and derivatives), u* is exact to a
# few ulps; 1e-13 leaves a margin of ~15x
CRITERION_RTOL = 1e-13
_V_LO = 1e-12  # v below this fraction of sqrt(K_B) counts as Y = 0 (c = -1/(K_B - 1) to 1e-24)


@lru_cache(maxsize=16)
def _symmetric_maps(m: int) -> tuple[np.ndarray, np.ndarray]:
    """Linear maps from the category derivatives (m anchors x m + 1 categories) to those in S.

    Anchor g sees S[g, h] as its category 1 + h, and S[g, h], S[h, g] are one variable, so
    ``dS = to_S @ grad.ravel()`` and ``d2S = to_S2 @ hess.ravel()`` (sums over the anchors that see
    both entries).
    """
    J = m + 1
    to_S = np.zeros((m, m, m, J))  # [g, h, anchor, category]
    for g, h in itertools.product(range(m), repeat=2):
        to_S[g, h, g, 1 + h] = 1.0
        to_S[g, h, h, 1 + g] = 1.0
    to_S2 = np.einsum("ghaj,xyal->ghxyajl", to_S, to_S)  # [g, h, g', h', anchor, category, category']
    for M in (to_S, to_S2):
        M.flags.writeable = False
    return to_S.reshape(m * m, m * J), to_S2.reshape(m**4, m * J * J)


@dataclass
class GroupModel:
    """The group-reduced objective L(S) for a problem whose classes form m proportion groups."""

    problem: Problem
    label: np.ndarray  # (C,) group of each class
    K: np.ndarray  # (m,) group sizes
    pi: np.ndarray  # (m,) per-class proportion of each group
    two: tuple[int, int, float] | None = None  # (K_A, K_B, R) of Problem.two_groups: majority and minority blocks

    @classmethod
    def from_problem(cls, problem: Problem) -> GroupModel:
        """Groups of equal proportion; majority and minority blocks when the problem has them."""
        two = problem.two_groups()
        if two is None:
            return cls(problem, *problem.groups())
        K_A, K_B, _ = two
        label = np.array([0] * K_A + [1] * K_B)
        return cls(problem, label, np.array([K_A, K_B]), problem.p[[0, K_A]], two)

    def __post_init__(self) -> None:
        m, K, pi = self.m, self.K, self.pi
        problem = self.problem
        rep = np.array([int(np.flatnonzero(self.label == g)[0]) for g in range(m)])  # (m,) a class of each group
        plain = problem.remedy.is_none  # then pi itself (the group mean), so plain stores stay bitwise as they were
        base = pi if plain else problem.remedy.negative_base(problem.p)[rep]  # (m,) per-class weight as a negative
        q = np.zeros((m, m + 1))  # per anchor group: [same class, class of group 1..m]
        for g in range(m):
            q[g, 0] = base[g]
            q[g, 1:] = K * base
            q[g, 1 + g] = (K[g] - 1) * base[g]
            if problem.negatives == "other":
                q[g, 0] = 0.0
                q[g] /= q[g].sum()
        q.flags.writeable = False
        self._q = q
        self._w = K * (pi if plain else problem.anchor_weights()[rep])  # (m,) weight of each anchor group
        # a remedy's affine map of phi's argument per (anchor group, category): a remedy sees classes only
        # through their proportions, so one class per group stands for all of them
        columns = np.concatenate([rep[:, None], np.tile(rep, (m, 1))], axis=1)  # (m, m + 1): class of each category
        self._affine = tuple(None if x is None else x[rep[:, None], columns] for x in problem.phi_affine())
        self._to_S, self._to_S2 = _symmetric_maps(m)
        n_cat = K.astype(float)[None, :] - np.eye(m)  # (m, m): classes per category
        self._per_class = K[:, None] * np.where(n_cat > 0, n_cat, 1)  # (m, m): the divisors of class_gradient
        self._last: tuple | None = None  # (key of S, value, grad, hess) of the last expectation

    @property
    def m(self) -> int:
        return int(self.K.size)

    def category_distribution(self) -> np.ndarray:
        """(m, m + 1): per anchor group, probability of [same class, class of group 1..m] negatives."""
        return self._q

    def evaluate(self, S: np.ndarray, hessian: bool = False):
        """L(S), dL/dS (m, m) and, optionally, d2L/dS_gh dS_g'h' (m, m, m, m).

        Derivatives are with respect to the symmetric entries: S[g, h] and S[h, g] are one variable.
        """
        m = self.m
        value, grad, hess = self._expectation(S, hessian)
        dS = (self._to_S @ grad.reshape(-1)).reshape(m, m)
        d2S = (self._to_S2 @ hess.reshape(-1)).reshape(m, m, m, m) if hessian else None
        return value, dS, d2S

    def _expectation(self, S: np.ndarray, hessian: bool = False) -> tuple[Any, np.ndarray, Any]:
        """Value, dL/dcos (m, m + 1) and, optionally, the dense Hessian of the group expectation at S.

        The last result is kept: the solvers ask for the gradient where they last asked for the
        Hessian (the certificate at the optimum).
        """
        key = (S.dtype.str, S.tobytes())
        last = self._last
        if last is not None and last[0] == key and (last[3] is not None or not hessian):
            return last[1:]
        cos = np.empty((self.m, self.m + 1), dtype=S.dtype)  # (m, m + 1): [own class, groups]
        cos[:, 0] = 1.0
        cos[:, 1:] = S
        problem = self.problem
        shift, scale = self._affine
        value, grad, hess = expected_loss(problem.loss, problem.k, problem.rho, self._w, self._q, cos, hessian,
                                          problem.expectation, shift=shift, scale=scale)  # fmt: skip
        for a in (grad, hess):
            if a is not None:
                a.flags.writeable = False  # shared with the next caller
        self._last = (key, value, grad, hess)
        return value, grad, hess

    def class_gradient(self, S: np.ndarray) -> tuple[float, np.ndarray]:
        """L and dL/dG (C, C) at the block matrix G(S), from the group expectation.

        By exchangeability dL/dG[c, j] is the group derivative for (group of c, category of j)
        divided by K_g times the number of classes in that category.
        """
        value, grad, _ = self._expectation(np.asarray(S, dtype=float))
        per_class = grad[:, 1:] / self._per_class  # (m, m)
        D = per_class[self.label][:, self.label]  # (C, C)
        np.fill_diagonal(D, (grad[:, 0] / self.K)[self.label])
        return float(value), D

    def gram(self, S: np.ndarray) -> np.ndarray:
        """(C, C) Gram matrix with the block structure of S, unit diagonal."""
        G = S[self.label][:, self.label]
        np.fill_diagonal(G, 1.0)
        return G


# ---------------------------------------------------------------------------------------------
# Two groups: nested safeguarded Newton on u = sqrt(X), v = sqrt(Y)


def _rtsafe(
    f: Callable[[float], tuple[float, float]], lo: float, hi: float, x0: float, ends_known: bool = True
) -> float:
    """Root of f in [lo, hi] with f(lo) < 0 < f(hi): Newton steps, bisection when they leave the bracket.

    Converges to full double precision relative to the root (scale-free: roots of 1e-8 are fine).
    With ``ends_known=False`` the signs at lo and hi are assumed, not evaluated: an end is evaluated
    only when a Newton step would leave the bracket through it, and returned when f has not changed
    sign there (f < 0 up to hi or f > 0 down to lo: the end is the answer). Newton steps from a point
    where f < 0 go up, so without a root they do leave through that end.
    """
    x = min(max(x0, lo), hi)
    lo_known = hi_known = ends_known
    for _ in range(200):
        fx, dfx = f(x)
        if fx == 0:
            return x
        if fx < 0:
            lo, lo_known = x, True
        else:
            hi, hi_known = x, True
        step = -fx / dfx if dfx > 0 else math.inf
        if abs(step) <= 2 * _EPS * abs(x):
            # converged: x itself (evaluated, and cached by the caller), not x + step, which may round
            # to x and then fail the open-bracket test below, sending 30 bisections through the bracket
            return x
        x_new = x + step
        if x_new >= hi and not hi_known:
            if f(hi)[0] <= 0:
                return hi
            hi_known = True
        elif x_new <= lo and not lo_known:
            if f(lo)[0] >= 0:
                return lo
            lo_known = True
        if not (lo < x_new < hi):
            x_new = 0.5 * (lo + hi)
        if abs(x_new - x) <= 2 * _EPS * abs(x_new) or hi - lo <= 2 * _EPS * abs(hi):
            return x_new
        x = x_new
    return x


def _log_ratio(P: float, dP: tuple[float, float], Q: float, dQ: tuple[float, float]) -> tuple[float, ...] | None:
    """(log(P / Q), its derivatives in u and v) for P, Q > 0, else None.

    P - Q = 0 and log(P / Q) = 0 have the same root and the same sign on either side, but where P and
    Q grow exponentially (phi = exp) the logarithm is close to linear, so Newton converges in a few
    steps from far away where it would creep on P - Q (steps of about tau).
    """
    if not (P > 0 and Q > 0):
        return None
    return math.log(P / Q), dP[0] / P - dQ[0] / Q, dP[1] / P - dQ[1] / Q


@dataclass
class _TwoGroup:
    """F(u, v) = L(a(u), b(u, v), c(v)) for one majority and one minority group."""

    model: GroupModel

    def __post_init__(self) -> None:
        self._cache: dict[tuple[float, float], dict[str, float]] = {}  # (u, v) -> derivatives
        self.K_A, self.K_B = (int(x) for x in self.model.K)
        self.kappa = math.sqrt(self.K_A * self.K_B)
        self.u_max, self.v_max = math.sqrt(self.K_A), math.sqrt(self.K_B)  # a = 1, c = 1
        self.log_newton = self.model.problem.loss.phi_kind == "exp"  # P, Q > 0 inside the box

    def cosines(self, u: float, v: float) -> tuple[float, float, float]:
        """(a, b, c) in [-1, 1]; exactly 1 at u = sqrt(K_A), v = sqrt(K_B) (their squares are K (1 +- eps))."""
        a = c = math.nan
        if self.K_A > 1:
            a = 1.0 if u >= self.u_max else min(1.0, max(-1.0, (u * u - 1) / (self.K_A - 1)))
        if self.K_B > 1:
            c = 1.0 if v >= self.v_max else min(1.0, max(-1.0, (v * v - 1) / (self.K_B - 1)))
        return a, min(1.0, max(-1.0, -u * v / self.kappa)), c

    def S(self, u: float, v: float) -> np.ndarray:
        a, b, c = self.cosines(u, v)
        return np.array([[1.0 if math.isnan(a) else a, b], [b, 1.0 if math.isnan(c) else c]])

    def derivatives(self, u: float, v: float) -> dict[str, float]:
        """Partial derivatives of F in (u, v) up to second order, and the terms of F_u and F_v.

        The last few points are remembered: the solver revisits the iterates it ends on.
        """
        cache = self._cache
        if (u, v) not in cache:
            if len(cache) >= 8:
                cache.pop(next(iter(cache)))
            cache[(u, v)] = self._derivatives(u, v)
        return cache[(u, v)]

    def _derivatives(self, u: float, v: float) -> dict[str, float]:
        _, grad, hess = self.model._expectation(self.S(u, v), hessian=True)
        # the entries of GroupModel.evaluate's dS and d2S that two groups use, read off the category
        # derivatives (anchor, category 1 + group): a = S[A, A] is category 1 of anchor A, c = S[B, B]
        # category 2 of anchor B, and b = S[A, B] both category 2 of A and category 1 of B; no anchor
        # sees both a and c. Python floats: the same doubles (a sum of two terms is the same in any
        # order), cheaper scalar arithmetic
        (_, La, LAb), (_, LBb, Lc) = grad.tolist()
        (_, (_, aa, ab), (_, _, bb_A)), (_, (_, bb_B, bc), (_, _, cc)) = hess.tolist()
        Lb, bb, ac = LAb + LBb, bb_A + bb_B, 0.0
        a_u = 2 * u / (self.K_A - 1) if self.K_A > 1 else 0.0
        a_uu = 2 / (self.K_A - 1) if self.K_A > 1 else 0.0
        c_v = 2 * v / (self.K_B - 1) if self.K_B > 1 else 0.0
        c_vv = 2 / (self.K_B - 1) if self.K_B > 1 else 0.0
        b_u, b_v, b_uv = -v / self.kappa, -u / self.kappa, -1 / self.kappa
        # F_u = P_u - Q_u and F_v = P_v - Q_v: the repulsion within a group against the pull between the
        # groups, and their derivatives in (u, v) (ac = 0)
        P_u, dP_u = La * a_u, ((aa * a_u + ab * b_u) * a_u + La * a_uu, ab * b_v * a_u)
        Q_u, dQ_u = -Lb * b_u, (-(ab * a_u + bb * b_u) * b_u, -((bb * b_v + bc * c_v) * b_u + Lb * b_uv))
        P_v, dP_v = Lc * c_v, (bc * b_u * c_v, (cc * c_v + bc * b_v) * c_v + Lc * c_vv)
        Q_v, dQ_v = -Lb * b_v, (-(ab * a_u + bb * b_u) * b_v - Lb * b_uv, -(bb * b_v + bc * c_v) * b_v)
        return {
            "u_terms": (P_u, -Q_u),
            "v_terms": (P_v, -Q_v),
            "h_u": _log_ratio(P_u, dP_u, Q_u, dQ_u),
            "h_v": _log_ratio(P_v, dP_v, Q_v, dQ_v),
            "Fuu": aa * a_u**2 + 2 * ab * a_u * b_u + bb * b_u**2 + La * a_uu,
            "Fuv": ab * a_u * b_v + ac * a_u * c_v + bb * b_u * b_v + bc * b_u * c_v + Lb * b_uv,
            "Fvv": cc * c_v**2 + 2 * bc * c_v * b_v + bb * b_v**2 + Lc * c_vv,
            "Lb": Lb,
            "Lc": Lc,
            "db_dc": b_v / c_v if c_v else math.nan,
        }

    def u_star(self, v: float, u0: float = 0.5) -> float:
        """argmin_u F(u, v): the unique sign change of F_u on [0, sqrt(K_A)] (F convex in u^2)."""
        if self.K_A == 1:
            return 1.0
        u_max = self.u_max

        def f(u: float) -> tuple[float, float]:
            d = self.derivatives(u, v)
            return sum(d["u_terms"]), d["Fuu"]

        u0 = min(max(u0, 0.0), u_max)
        if self.model.problem.loss.phi_kind == "exp":
            # F_u is strictly increasing: Newton from u0 evaluates an end of [0, sqrt(K_A)] only if it
            # heads there (the end is then the minimiser, or a bracket end). The first step is Newton's
            # on log(P_u / Q_u) in log u, close to linear in log u however far u* is (P_u ~ u where u*
            # is small); u0 is then a bracket end whose sign is known
            lo, hi = 0.0, u_max
            h = self.derivatives(u0, v)["h_u"] if u0 > 0 else None
            if h is not None and h[1] > 0:
                lo, hi = (u0, hi) if h[0] < 0 else (lo, u0)
                u0 = u0 * math.exp(max(-50.0, min(-h[0] / (u0 * h[1]), 50.0)))
            return _rtsafe(f, lo, hi, u0, ends_known=False)
        # hinge-type phi: F_u can vanish on an interval; the end on u0's side is checked first, so the
        # smallest (largest) minimiser on a flat stretch is the one returned, whatever u0 is
        if f(u0)[0] < 0:
            if f(u_max)[0] <= 0:
                return u_max
        elif f(0.0)[0] >= 0:
            return 0.0
        return _rtsafe(f, 0.0, u_max, u0)

    def v_condition(self, v: float, u0: float = 0.5) -> tuple[float, float, float]:
        """(F_v, dF_v/dv along u*(v), u*(v)): the reduced condition in v, u kept optimal."""
        u = self.u_star(v, u0)
        d = self.derivatives(u, v)
        Fv = sum(d["v_terms"])
        if self.K_A > 1 and 0 < u < self.u_max and d["Fuu"] > 0:
            dFv = d["Fvv"] - d["Fuv"] * d["Fuv"] / d["Fuu"]  # implicit du*/dv
        else:
            dFv = d["Fvv"]
        return Fv, dFv, u

    def residuals(self, d: dict[str, float]) -> tuple[float, float]:
        """|F_u| and |F_v| relative to the size of their terms (scale-free optimality conditions)."""
        return tuple(abs(sum(t)) / (sum(map(abs, t)) or 1.0) for t in (d["u_terms"], d["v_terms"]))

    def _newton(self, u: float, v: float) -> tuple[float, float] | None:
        """Joint Newton on (F_u, F_v) = 0 inside the box; None if it does not converge there.

        For exponential phi the conditions are taken as log(P / Q) = 0 (:func:`_log_ratio`), on which
        Newton does not creep. Once both residuals are below 1e-13, one more step takes them to
        round-off (quadratic convergence) unless they are there already, and the better of the two
        points is returned.
        """
        u_max, v_max = self.u_max, self.v_max
        converged: tuple[float, float, float] | None = None  # (residual, u, v) of the first point below 1e-13
        for _ in range(40):
            d = self.derivatives(u, v)
            r = max(self.residuals(d))
            if converged is not None:
                return (u, v) if r <= converged[0] else converged[1:]
            if r <= 2 * _EPS:  # round-off already
                return u, v
            if r <= 1e-13:
                converged = (r, u, v)
            if self.log_newton and d["h_u"] is not None and d["h_v"] is not None:
                (hu, hu_u, hu_v), (hv, hv_u, hv_v) = d["h_u"], d["h_v"]
            else:
                hu, hu_u, hu_v = sum(d["u_terms"]), d["Fuu"], d["Fuv"]
                hv, hv_u, hv_v = sum(d["v_terms"]), d["Fuv"], d["Fvv"]
            det = hu_u * hv_v - hu_v * hv_u
            if not det:
                return converged[1:] if converged else None
            du, dv = (hu_v * hv - hv_v * hu) / det, (hv_u * hu - hu_u * hv) / det  # the 2 x 2 Newton system
            scale = 1.0
            while not (0 < u + scale * du < u_max and 0 < v + scale * dv < v_max) and scale > 1e-3:
                scale /= 2
            if scale <= 1e-3 or (converged and scale < 1.0):
                return converged[1:] if converged else None
            u, v = u + scale * du, v + scale * dv
        return converged[1:] if converged else None

    def criterion_at_collapse(self) -> tuple[float, float, float]:
        """(g / p_minor^2, its error bound, u*) at c = 1, with g = dL/dc + dL/db * db/dc, u* optimal for c = 1.

        Collapse (c = 1) is optimal iff g <= 0. Needs K_B >= 2. g is the sum of the repulsion
        dL/dc >= 0 and the pull dL/db * db/dc <= 0, each computed to a relative error below
        ``CRITERION_RTOL`` (module constant), so ``CRITERION_RTOL * (|dL/dc| + |dL/db db/dc|)``
        bounds the error of g: its sign means something only beyond that.
        """
        v_max = self.v_max
        u = self.u_star(v_max)
        d = self.derivatives(u, v_max)
        repulsion, pull = d["Lc"], d["Lb"] * d["db_dc"]
        scale = self.model.pi[1] ** 2
        return (repulsion + pull) / scale, CRITERION_RTOL * (abs(repulsion) + abs(pull)) / scale, u

    def solve(self) -> tuple[float, float, bool | None, float, float, float]:
        """(u, v, collapsed, kkt_residual, criterion, criterion_error) at the optimum.

        ``criterion`` is g / p_minor^2 with g = dL/dc + dL/db * db/dc at (X*(c = 1), c = 1):
        collapse (c = 1) is optimal iff g <= 0 (NaN with one minority class). Where |g| is within
        its error bound the merged geometry is returned (optimal to within that bound) and
        ``collapsed`` is None: undecided.
        """
        collapsed, criterion, criterion_error = False, math.nan, math.nan
        if self.K_B == 1:
            v = 1.0
            u = self.u_star(v)
        else:
            v_max = self.v_max
            criterion, criterion_error, u_at_max = self.criterion_at_collapse()
            # the joint Newton starts at the collapse point, whose derivatives the criterion left
            start = (u_at_max, v_max) if u_at_max > 0 else (0.5, 0.9 * v_max)
            if criterion <= criterion_error:
                collapsed = True if criterion < -criterion_error else None
                v, u = v_max, u_at_max
            elif self.K_A > 1 and (uv := self._newton(*start)) is not None:
                u, v = uv
            elif self.v_condition(_V_LO * v_max)[0] >= 0:
                # F is not convex in (u, v): (0, 0) is a saddle, so test the sign just above it
                v = _V_LO * v_max
                u = self.u_star(v)
            else:
                state = {"u": u_at_max}

                def f(v: float) -> tuple[float, float]:
                    Fv, dFv, state["u"] = self.v_condition(v, state["u"])
                    return Fv, dFv

                v = _rtsafe(f, _V_LO * v_max, v_max, 0.99 * v_max)
                u = self.u_star(v, state["u"])
        d = self.derivatives(u, v)
        r_u, r_v = self.residuals(d)
        residuals = []
        if self.K_A > 1 and 0 < u < self.u_max:
            residuals.append(r_u)
        if self.K_B > 1:
            residuals.append(0.0 if collapsed is not False else r_v)
        return u, v, collapsed, max(residuals, default=0.0), criterion, criterion_error


# ---------------------------------------------------------------------------------------------
# Any number of groups: barrier Newton on the block cosines


def _barrier_solve(model: GroupModel, gap_rtol: float = 1e-13) -> tuple[np.ndarray, float]:
    """Minimise L(S) s.t. M(S) PSD, S[g, g] <= 1, by a log-det barrier method (Newton centering)."""
    m, K = model.m, model.K
    if not model.problem.loss.smooth:
        raise InputError("solver", "symmetric", "'full' for the triplet loss with three or more proportion groups")
    pairs = [(g, h) for g in range(m) for h in range(g, m) if g != h or K[g] > 1]
    within = [i for i, (g, h) in enumerate(pairs) if g == h]
    dM = np.zeros((len(pairs), m, m))  # dM/ds_i, constant
    for i, (g, h) in enumerate(pairs):
        if g == h:
            dM[i, g, g] = K[g] - 1
        else:
            dM[i, g, h] = dM[i, h, g] = math.sqrt(K[g] * K[h])

    def unpack(s: np.ndarray) -> np.ndarray:
        S = np.eye(m)
        for i, (g, h) in enumerate(pairs):
            S[g, h] = S[h, g] = s[i]
        return S

    def M_of(s: np.ndarray) -> np.ndarray:
        return np.eye(m) + np.einsum("i,igh->gh", s, dM)

    def feasible(s: np.ndarray) -> bool:
        if any(s[i] >= 1 for i in within):
            return False
        try:
            np.linalg.cholesky(M_of(s))
        except np.linalg.LinAlgError:
            return False
        return True

    def merit(s: np.ndarray, t: float) -> float:
        if not feasible(s):
            return math.inf
        within_slack = np.array([1 - s[i] for i in within])
        value = model.evaluate(unpack(s))[0]
        return t * value - np.linalg.slogdet(M_of(s))[1] - np.log(within_slack).sum()

    def phase(s: np.ndarray, t: float) -> tuple[float, np.ndarray, np.ndarray]:
        value, dS, d2S = model.evaluate(unpack(s), hessian=True)
        g_L = np.array([dS[g, h] for g, h in pairs])
        H_L = np.array([[d2S[g, h, g2, h2] for g2, h2 in pairs] for g, h in pairs])
        Minv = np.linalg.inv(M_of(s))
        _sign, logdet = np.linalg.slogdet(M_of(s))
        A = np.einsum("gh,ihk->igk", Minv, dM)  # (P, m, m): M^-1 dM_i
        g_B = -np.einsum("igg->i", A)
        H_B = np.einsum("igk,jkg->ij", A, A)
        slack = np.array([1 - s[i] for i in within])
        f = t * value - logdet - np.log(slack).sum()
        g_B[within] += 1 / slack
        H_B[within, within] += 1 / slack**2
        return f, t * g_L + g_B, t * H_L + H_B

    s = np.zeros(len(pairs))  # all classes orthogonal: strictly feasible
    nu = m + len(within)  # barrier parameter
    value0 = model.evaluate(unpack(s))[0]
    t = nu / max(abs(value0), 1e-12)
    for _ in range(60):
        for _ in range(100):  # Newton centering
            f, grad, H = phase(s, t)
            step = -np.linalg.solve(H, grad)
            decrement2 = -grad @ step
            if decrement2 / 2 <= 1e-10:  # barrier-function units: L is then within 1e-10 / t
                break
            noise = 1e-14 * (abs(f) + 1)  # rounding in f at large t
            for halving in range(40):
                s_new = s + 0.5**halving * step
                if merit(s_new, t) <= f - 0.25 * 0.5**halving * decrement2 + noise:
                    break
            else:
                break  # no decrease left at double precision
            s = s_new
        value = model.evaluate(unpack(s))[0]
        if nu / t <= gap_rtol * max(abs(value), 1e-300):
            break
        t *= 20
    return unpack(s), nu / t


# ---------------------------------------------------------------------------------------------


def solve_symmetric(problem: Problem, dim: int | None = None) -> Solution:
    """Optimal class geometry by the group reduction (the default solver).

    Parameters
    ----------
    problem : Problem
    dim : int, optional
        Embedding dimension for the returned class means V (padded with zeros; >= rank of G).

    Returns
    -------
    Solution
        ``kkt_residual`` is the largest optimality condition of the reduced problem relative to
        the size of its terms; ``gap`` is the solver-independent certificate on the full G.
    """
    start = time.perf_counter()
    model = GroupModel.from_problem(problem)
    two = model.two
    a = b = c = criterion = criterion_error = math.nan
    collapsed: bool | None = None
    kkt = math.nan
    extra: dict[str, float] = {}
    if two is not None:
        reduced = _TwoGroup(model)
        u, v, collapsed_opt, kkt, criterion, criterion_error = reduced.solve()
        # u^2 = X ~ p_minor^2 at large R is below the absolute resolution of the entries of G
        extra = {"u": u, "v": v}
        a, b, c = reduced.cosines(u, v)
        S = reduced.S(u, v)
        if reduced.K_B > 1:
            collapsed = collapsed_opt
    elif model.m == 1:
        # L is nondecreasing in the single cosine, whose least feasible value is -1/(C - 1)
        S = np.array([[-1.0 / (problem.C - 1)]])
    else:
        S, _ = _barrier_solve(model)
    G = model.gram(S)
    # the certificate on the full C x C matrix, with the gradient from the group expectation
    # (the class-level enumeration is binom(k + C - 1, C - 1) terms: infeasible for C = 10, k = 64)
    value, D = model.class_gradient(S)
    gap = gap_bound(G, D)
    status = "optimal" if gap <= 1e-6 * max(abs(value), 1e-300) else "optimal_inaccurate"
    return Solution(
        problem=problem,
        solver="symmetric",
        G=G,
        V=class_means(G, dim),
        objective=value,
        status=status,
        gap=gap,
        a=a,
        b=b,
        c=c,
        collapsed=collapsed,
        criterion=criterion,
        criterion_error=criterion_error,
        lower_bound=value - gap,
        kkt_residual=kkt,
        time_s=time.perf_counter() - start,
        extra=extra,
    )

"""A theory point: loss, class proportions, number of negatives and the sampling conventions.

Conventions (docs/theory.md): ``negatives='marginal'`` draws the k negatives i.i.d. from the class
marginal p (the anchor's own class included); ``'other'`` from p restricted to the other classes
and renormalised. ``reduction='sum'`` is the loss as written; ``'mean'`` averages phi over the k
negatives. R = p_major / p_minor is the ratio of per-class proportions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import InputError
from pipeline.theory.losses import NEGATIVES, REDUCTIONS, Loss, check_option, parse_loss
from pipeline.theory.profiles import Profile, Step, parse_profile
from pipeline.theory.remedies import NONE, Remedy, parse_remedy

EXPECTATIONS: tuple[str, ...] = ("auto", "transform", "enumerate")


def check_int(field: str, value: Any, minimum: int) -> int:
    """Return ``value`` as an int >= ``minimum`` or raise :class:`InputError`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise InputError(field, value, f"an integer >= {minimum}")
    if value < minimum:
        raise InputError(field, value, f"an integer >= {minimum}")
    return int(value)


K_ALLOWED = "an integer >= 1 or inf (the large-k limit)"


def check_k(value: Any, field: str = "k") -> int | float:
    """Return the number of negatives: an int >= 1, or ``math.inf`` for the large-k limit.

    Accepts integer-valued floats and the strings 'inf' / '.inf' (YAML and the command line).

    Examples
    --------
    >>> check_k("inf"), check_k(4.0)
    (inf, 4)
    """
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("inf", ".inf", "+inf"):
            return math.inf
        try:
            value = int(text)
        except ValueError:
            raise InputError(field, value, K_ALLOWED) from None
    if isinstance(value, (float, np.floating)) and math.isinf(value) and value > 0:
        return math.inf
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(field, value, K_ALLOWED)
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value) or not float(value).is_integer():
            raise InputError(field, value, K_ALLOWED)
        value = int(value)
    if value < 1:
        raise InputError(field, value, K_ALLOWED)
    return int(value)


def check_ratio(value: Any, field: str = "R") -> float:
    """Return the imbalance ratio as a float, finite and >= 1, or raise :class:`InputError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(field, value, "a number >= 1 (R = p_major / p_minor)")
    value = float(value)
    if not math.isfinite(value) or value < 1:
        raise InputError(field, value, "a finite number >= 1 (R = p_major / p_minor)")
    return value


def negative_distribution(p: np.ndarray, negatives: str) -> np.ndarray:
    """(C, C) matrix q for proportions p (C,): row c is the distribution of a negative's class for
    anchor class c, p itself (``marginal``) or p without class c, renormalised (``other``)."""
    q = np.tile(p, (p.size, 1))  # (C, C)
    if negatives == "other":
        np.fill_diagonal(q, 0.0)
        q /= q.sum(axis=1, keepdims=True)
    return q


def two_group_proportions(n_major: int, n_minor: int, R: float) -> np.ndarray:
    """Per-class proportions, majority classes first, with p_major / p_minor = R.

    Examples
    --------
    >>> two_group_proportions(1, 1, 3.0).tolist()
    [0.75, 0.25]
    """
    return Step(n_major, n_minor, R).proportions()  # (C,)


@dataclass(frozen=True, eq=False)
class Problem:
    """The class-collapsed problem at one point.

    Parameters
    ----------
    loss : Loss
        Member of the loss family.
    p : np.ndarray
        (C,) class proportions, positive, summing to 1; majority classes first by convention.
    k : int or inf
        Number of negatives per anchor; ``math.inf`` is the large-k limit (renormalised loss, see
        :mod:`pipeline.theory.objective`).
    negatives : {'marginal', 'other'}
        Sampling model of the negatives.
    reduction : {'sum', 'mean'}
        ``mean`` divides the inner sum by k.
    expectation : {'auto', 'transform', 'enumerate'}
        How the expectation over the negatives is computed (all exact; see :mod:`pipeline.theory.objective`).
    profile : Profile, optional
        The imbalance profile p came from (:mod:`pipeline.theory.profiles`): labels and sweep axes.
    remedy : Remedy
        Anchor weights, negatives' base distribution, shifts and temperatures
        (:mod:`pipeline.theory.remedies`); ``NONE`` is the paper's loss.
    """

    loss: Loss
    p: np.ndarray
    k: int | float
    negatives: str = "marginal"
    reduction: str = "sum"
    n_major: int | None = None
    expectation: str = "auto"
    profile: Profile | None = None
    remedy: Remedy = NONE

    @classmethod
    def create(
        cls,
        loss: str | Loss,
        p: Any,
        k: int,
        negatives: str = "marginal",
        reduction: str = "sum",
        n_major: int | None = None,
        expectation: str = "auto",
        profile: Profile | None = None,
        remedy: str | Remedy | None = None,
    ) -> Problem:
        """Validate the inputs and build a problem (``p`` is normalised to sum to 1).

        ``n_major`` marks the first ``n_major`` classes as the majority group (two-group problems).
        """
        loss = parse_loss(loss)
        remedy = parse_remedy(remedy)
        remedy.check_loss(loss)
        k = check_k(k)
        check_option("negatives", negatives, NEGATIVES)
        check_option("reduction", reduction, REDUCTIONS)
        check_option("expectation", expectation, EXPECTATIONS)
        p = np.asarray(p, dtype=float)
        if p.ndim != 1 or p.size < 2 or not np.all(np.isfinite(p)) or np.any(p <= 0):
            raise InputError("p", p.tolist(), "at least two positive, finite class proportions")
        return cls(loss, p / p.sum(), k, negatives, reduction, n_major, expectation, profile, remedy)

    def reordered(self, order: np.ndarray) -> Problem:
        """The same problem with its classes in ``order`` (a permutation; no profile or groups: they name
        classes by position). Remedies depend on a class only through p, so they carry over."""
        return Problem.create(self.loss, self.p[order], self.k, self.negatives, self.reduction,
                              expectation=self.expectation, remedy=self.remedy)  # fmt: skip

    @classmethod
    def from_profile(
        cls,
        loss: str | Loss,
        profile: str | Profile,
        k: int,
        negatives: str = "marginal",
        reduction: str = "sum",
        expectation: str = "auto",
        remedy: str | Remedy | None = None,
    ) -> Problem:
        """The problem at a profile's proportions (``'exp(C=10, rho=100)'`` or a :class:`Profile`)."""
        profile = parse_profile(profile)
        two = profile.two_groups()
        n_major = two[0] if two is not None else None
        return cls.create(loss, profile.proportions(), k, negatives, reduction, n_major, expectation, profile,
                          remedy)  # fmt: skip

    @classmethod
    def two_group(
        cls,
        loss: str | Loss,
        n_major: int,
        n_minor: int,
        R: float,
        k: int,
        negatives: str = "marginal",
        reduction: str = "sum",
        expectation: str = "auto",
        remedy: str | Remedy | None = None,
    ) -> Problem:
        """K_A = n_major classes of proportion R p_minor and K_B = n_minor of proportion p_minor."""
        n_major = check_int("n_major", n_major, 1)
        n_minor = check_int("n_minor", n_minor, 1)
        R = check_ratio(R)
        return cls.from_profile(loss, Step(n_major, n_minor, R), k, negatives, reduction, expectation, remedy)

    @property
    def C(self) -> int:
        return int(self.p.size)

    @property
    def rho(self) -> float:
        """Factor in front of the inner sum: 1 for ``sum``, 1/k for ``mean`` (0 at k = inf)."""
        return 1.0 if self.reduction == "sum" else 1.0 / self.k

    def negative_distribution(self) -> np.ndarray:
        """(C, C) matrix q: row c is the distribution of a negative's class for anchor class c (from p, or
        from the remedy's base distribution)."""
        return negative_distribution(self.remedy.negative_base(self.p), self.negatives)

    def anchor_weights(self) -> np.ndarray:
        """(C,) the anchors' class weights: p, or the remedy's reweighting of it."""
        return self.remedy.anchor_weights(self.p)

    def phi_affine(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(delta, scale), each (C, C) or None (no remedy): phi_cj(t) = phi(scale_cj (t + delta_cj))."""
        return self.remedy.phi_affine(self.p, self.loss)

    def groups(self, rtol: float = 1e-12) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Group classes of equal proportion.

        Returns
        -------
        label : (C,) int, the group of each class, groups ordered by first appearance
        K : (m,) int, group sizes
        pi : (m,) float, per-class proportion of each group
        """
        label = np.full(self.C, -1)
        pis: list[float] = []
        for i, p_i in enumerate(self.p):
            for g, pi in enumerate(pis):
                if abs(p_i - pi) <= rtol * max(p_i, pi):
                    label[i] = g
                    break
            else:
                pis.append(float(p_i))
                label[i] = len(pis) - 1
        K = np.bincount(label, minlength=len(pis))
        pi = np.array([self.p[label == g].mean() for g in range(len(pis))])
        return label, K, pi

    def two_groups(self) -> tuple[int, int, float] | None:
        """(K_A, K_B, R) when the classes form a majority block followed by a minority block.

        Uses ``n_major`` when set (so R = 1 still has the two blocks), else the proportion groups.
        """
        if self.n_major is not None:
            K_A = self.n_major
            blocks = (self.p[:K_A], self.p[K_A:])
            if K_A >= self.C or any(np.ptp(x) > 1e-12 * x.max() for x in blocks):
                return None
            return K_A, self.C - K_A, float(blocks[0][0] / blocks[1][0])
        label, K, pi = self.groups()
        if len(K) != 2 or pi[0] <= pi[1] or np.any(np.diff(label) < 0):
            return None
        return int(K[0]), int(K[1]), float(pi[0] / pi[1])

    def describe(self) -> dict[str, Any]:
        """The conventions every result records."""
        return {
            "loss": self.loss.id,
            "k": self.k if math.isfinite(self.k) else "inf",
            "negatives": self.negatives,
            "reduction": self.reduction,
            "profile": None if self.profile is None else self.profile.spec,
            "p": self.p.tolist(),
            "remedy": self.remedy.spec,
        }

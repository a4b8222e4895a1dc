"""Remedies against Minority Collapse, inside the paper's convex family (docs/theory.md, "Remedies").

With class proportions p, loss (psi, phi), k negatives and reduction scale rho, a remedy changes the
class-collapsed objective to

    L(G) = sum_c a_c E_{n ~ Mult(k, q^(c))} [ psi( rho sum_j n_j phi_cj(G_cj - 1) ) ]
    phi_cj(t) = phi( (t + delta_cj) * tau / tau_c )   exponential phi (infonce, sumexp)
    phi_cj(t) = phi(  t + delta_cj )                  hinge phi (triplet, squared_hinge)

=========================  ===================================================================
remedy                     definition
=========================  ===================================================================
``reweight(gamma)``        anchor weights a_c = p_c w_c / sum_j p_j w_j, w_c = p_c^(-gamma)
                           (1: class-balanced; 0.5: square-root sampling; 0: nothing)
``balanced_negatives``     negatives drawn from pi uniform over classes instead of p
                           (``marginal``: q^(c) = pi; ``other``: pi without c, renormalised)
``logit_adjust(t)``        delta_cj = t s log(p_j / p_c), s = tau (exponential phi) or 1 (hinge)
``ldam(m)``                delta_cj = m (p_min / p_c)^(1/4) for every j (the anchor's margin)
``class_tau(gamma)``       tau_c = tau (p_c / p_max)^gamma (exponential phi only)
=========================  ===================================================================

Remedies combine with ``' + '`` (at most one shift: ``logit_adjust`` or ``ldam``); ``none`` is the
paper's loss. Every term stays convex in G: phi_cj is phi composed with an increasing affine map, and
a, q stay positive. A remedy depends on a class only through p_c, so equal proportions stay
interchangeable.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import InputError, shorten
from pipeline.theory.losses import Loss

# name -> (parameter name, default); None: the remedy takes no parameter
_REMEDIES: dict[str, tuple[str, float] | None] = {
    "reweight": ("gamma", 1.0),
    "balanced_negatives": None,
    "logit_adjust": ("t", 1.0),
    "ldam": ("m", 0.5),
    "class_tau": ("gamma", 0.5),
}
REMEDY_NAMES: tuple[str, ...] = ("none", *_REMEDIES)
SHIFTS = ("logit_adjust", "ldam")
REMEDY_HELP = ("'none', or terms joined by ' + ' from reweight(gamma=1), balanced_negatives, logit_adjust(t=1), "
               "ldam(m=0.5), class_tau(gamma=0.5) (parameters >= 0; at most one of logit_adjust and ldam)")  # fmt: skip
_TERM = re.compile(r"^([a-z_]+)\s*(?:\(\s*(?:([a-z_]+)\s*=\s*)?([^()]*?)\s*\))?$")


def _fmt(x: float) -> str:
    short = f"{x:g}"
    return short if float(short) == x else repr(x)


@dataclass(frozen=True)
class Remedy:
    """A combination of remedies; every field at its neutral value is ``none``.

    Attributes
    ----------
    reweight : float or None
        gamma of ``reweight(gamma)``.
    balanced_negatives : bool
    shift : tuple of (str, float) or None
        ``('logit_adjust', t)`` or ``('ldam', m)``.
    class_tau : float or None
        gamma of ``class_tau(gamma)``.
    """

    reweight: float | None = None
    balanced_negatives: bool = False
    shift: tuple[str, float] | None = None
    class_tau: float | None = None

    @property
    def spec(self) -> str:
        """The canonical spec string, e.g. ``'reweight(gamma=1) + logit_adjust(t=1)'``; ``parse_remedy``
        reads it back to an equal Remedy."""
        terms = []
        if self.reweight is not None:
            terms.append(f"reweight(gamma={_fmt(self.reweight)})")
        if self.balanced_negatives:
            terms.append("balanced_negatives")
        if self.shift is not None:
            name, value = self.shift
            terms.append(f"{name}({_REMEDIES[name][0]}={_fmt(value)})")
        if self.class_tau is not None:
            terms.append(f"class_tau(gamma={_fmt(self.class_tau)})")
        return " + ".join(terms) or "none"

    def __str__(self) -> str:
        return self.spec

    @property
    def is_none(self) -> bool:
        return self == NONE

    def check_loss(self, loss: Loss) -> None:
        """``class_tau`` scales a temperature: refuse it for the hinge losses, which have none."""
        if self.class_tau is not None and loss.phi_kind != "exp":
            raise InputError("remedy", self.spec, f"remedies without class_tau for {loss.id} (class_tau scales "
                             "the temperature of an exponential phi: infonce, sumexp)")  # fmt: skip

    def anchor_weights(self, p: np.ndarray) -> np.ndarray:
        """a (C,): the anchors' class weights, summing to 1."""
        if self.reweight is None:
            return p
        a = p ** (1.0 - self.reweight)  # p_c w_c with w_c = p_c^(-gamma)
        return a / a.sum()

    def anchor_factor(self, p: np.ndarray) -> np.ndarray:
        """a_c / p_c (C,): the weight of each anchor's own loss where anchors are drawn by p (a batch of the
        dataset): 1 without reweighting, p_c^(-gamma) / sum_j p_j^(1 - gamma) with it."""
        return self.anchor_weights(p) / p

    def negative_base(self, p: np.ndarray) -> np.ndarray:
        """pi (C,): the distribution negatives are drawn from (before ``other`` removes the anchor's class)."""
        return np.full(p.size, 1.0 / p.size) if self.balanced_negatives else p

    def phi_affine(self, p: np.ndarray, loss: Loss) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(delta, scale), each (C, C) or None: phi_cj(t) = phi(scale_cj (t + delta_cj))."""
        delta = None
        if self.shift is not None:
            name, value = self.shift
            if name == "logit_adjust":
                s = loss.param if loss.phi_kind == "exp" else 1.0
                delta = value * s * np.log(p[None, :] / p[:, None])  # (C, C): log(p_j / p_c)
            else:
                delta = np.repeat((value * (p.min() / p) ** 0.25)[:, None], p.size, axis=1)  # (C, C): row c's margin
        scale = None
        if self.class_tau is not None:
            scale = np.repeat(((p / p.max()) ** (-self.class_tau))[:, None], p.size, axis=1)  # (C, C): tau / tau_c
        return delta, scale


NONE = Remedy()


def parse_remedy(spec: Any) -> Remedy:
    """Parse a remedy spec strictly (one InputError naming the problem); a Remedy passes through.

    Examples
    --------
    >>> parse_remedy("reweight + logit_adjust(t=0.5)").spec
    'reweight(gamma=1) + logit_adjust(t=0.5)'
    >>> parse_remedy(None).spec
    'none'
    """
    if isinstance(spec, Remedy):
        return spec
    if spec is None:
        return NONE
    if not isinstance(spec, str) or not spec.strip():
        raise InputError("remedy", spec, REMEDY_HELP)
    text = spec.strip()
    if text == "none":
        return NONE
    fields: dict[str, Any] = {}
    seen: list[str] = []
    for raw in text.split("+"):
        term = raw.strip()
        match = _TERM.match(term)
        if match is None:
            raise InputError("remedy", spec, f"{REMEDY_HELP}; cannot read {shorten(repr(term))}")
        name, key, value_text = match.groups()
        if name == "none":
            raise InputError("remedy", spec, "'none' alone (it is the absence of every remedy)")
        if name not in _REMEDIES:
            raise InputError("remedy", spec, f"{REMEDY_HELP}; unknown remedy {name!r}")
        if name in seen:
            raise InputError("remedy", spec, f"each remedy at most once ({name} is given twice)")
        seen.append(name)
        param = _REMEDIES[name]
        if param is None:
            if value_text is not None:
                raise InputError("remedy", spec, f"{name} without a parameter")
            fields["balanced_negatives"] = True
            continue
        value = param[1]
        if value_text is not None:
            if key is not None and key != param[0]:
                raise InputError("remedy", spec, f"{name}({param[0]}=...) (its parameter is {param[0]}, not {key})")
            try:
                value = float(value_text)
            except ValueError:
                raise InputError("remedy", spec, f"a number for {name}'s {param[0]}, not {value_text!r}") from None
        if not math.isfinite(value) or value < 0:
            raise InputError("remedy", spec, f"{name}'s {param[0]} finite and >= 0 (got {value_text})")
        if name in SHIFTS:
            if "shift" in fields:
                raise InputError("remedy", spec, f"at most one shift: logit_adjust or ldam, not both ({REMEDY_HELP})")
            fields["shift"] = (name, value)
        else:
            fields[name] = value
    return Remedy(**fields)

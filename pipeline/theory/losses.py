"""The generalized contrastive loss family.

``L(f) = E[ psi( sum_{i=1..k} phi( f(x)·f(x_i^-) - f(x)·f(x^+) ) ) ]`` with psi and phi convex and
nondecreasing (Nguyen, Aeron, Brown, Ishwar, arXiv 2605.11291). One :class:`Loss` object serves three
uses: numpy float64 evaluation (with first and second derivatives), torch training and cvxpy modelling.
The array functions are written against the namespace of their argument, so the same code runs on
numpy arrays and on torch tensors; cvxpy atoms are built by :meth:`Loss.phi_cvx`.

Built-ins (``t`` is the argument of phi, in ``[-2, 0]`` for unit vectors):

================  =============  ======================  ================
id                psi(s)         phi(t)                  parameters
================  =============  ======================  ================
infonce(tau)      log(1 + s)     exp(t / tau)            tau > 0
sumexp(tau)       s              exp(t / tau)            tau > 0
triplet(margin)   s              max(0, t + margin)      margin > 0
squared_hinge(m)  s              max(0, t + margin)^2    margin > 0
================  =============  ======================  ================
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from pipeline.errors import InputError

PsiKind = Literal["log1p", "identity"]
PhiKind = Literal["exp", "hinge", "squared_hinge"]
Negatives = Literal["marginal", "other"]
Reduction = Literal["sum", "mean"]
NEGATIVES: tuple[str, ...] = ("marginal", "other")
REDUCTIONS: tuple[str, ...] = ("sum", "mean")

# name -> (psi kind, phi kind, parameter name, default value)
_BUILTINS: dict[str, tuple[PsiKind, PhiKind, str, float]] = {
    "infonce": ("log1p", "exp", "tau", 1.0),
    "sumexp": ("identity", "exp", "tau", 1.0),
    "triplet": ("identity", "hinge", "margin", 1.0),
    "squared_hinge": ("identity", "squared_hinge", "margin", 1.0),
}
LOSS_NAMES: tuple[str, ...] = tuple(_BUILTINS)
# the ids with their defaults: a bare name (``infonce``) takes its default and is stored in full (``infonce(tau=1)``)
LOSS_HELP = ", ".join(f"{name}({param}={default:g})" for name, (_, _, param, default) in _BUILTINS.items())
_LOSS_ID = re.compile(r"^\s*([a-z_]+)\s*(?:\(\s*(.*?)\s*\))?\s*$")


def _relu(x: Any) -> Any:
    # (x + |x|) / 2 is max(0, x) for numpy arrays and torch tensors alike
    return (x + abs(x)) / 2


def _step(x: Any) -> Any:
    return (x > 0) + x * 0  # 1 where x > 0, else 0, in x's own dtype (numpy or torch)


def _exp(x: Any) -> Any:
    return x.exp() if hasattr(x, "exp") else _np().exp(x)


def _log1p(x: Any) -> Any:
    return x.log1p() if hasattr(x, "log1p") else _np().log1p(x)


def _np() -> Any:
    import numpy as np

    return np


@dataclass(frozen=True)
class Loss:
    """One member of the loss family: psi, phi and their parameter.

    Parameters
    ----------
    name : str
        Built-in name, one of ``LOSS_NAMES``.
    psi_kind, phi_kind : str
        The outer and inner functions (see the module table).
    param : float
        ``tau`` for exponential phi, ``margin`` for hinge phi.
    """

    name: str
    psi_kind: PsiKind
    phi_kind: PhiKind
    param_name: str
    param: float

    @property
    def id(self) -> str:
        """Canonical loss id, e.g. ``infonce(tau=0.5)``; ``parse_loss(loss.id) == loss``."""
        return f"{self.name}({self.param_name}={self.param:g})"

    @property
    def psi_linear(self) -> bool:
        """True when psi is the identity, so the expectation over negatives collapses to k E[phi]."""
        return self.psi_kind == "identity"

    @property
    def smooth(self) -> bool:
        """True when phi has a continuous derivative (every built-in but ``triplet``)."""
        return self.phi_kind != "hinge"

    # psi and its derivatives -----------------------------------------------------------------
    def psi(self, s: Any) -> Any:
        return _log1p(s) if self.psi_kind == "log1p" else s

    def dpsi(self, s: Any) -> Any:
        return 1.0 / (1.0 + s) if self.psi_kind == "log1p" else s * 0 + 1.0

    def d2psi(self, s: Any) -> Any:
        return -1.0 / (1.0 + s) ** 2 if self.psi_kind == "log1p" else s * 0

    # phi and its derivatives -----------------------------------------------------------------
    def phi(self, t: Any) -> Any:
        if self.phi_kind == "exp":
            return _exp(t / self.param)
        if self.phi_kind == "hinge":
            return _relu(t + self.param)
        return _relu(t + self.param) ** 2

    def dphi(self, t: Any) -> Any:
        if self.phi_kind == "exp":
            return _exp(t / self.param) / self.param
        if self.phi_kind == "hinge":
            return _step(t + self.param)  # a subgradient at the kink
        return 2 * _relu(t + self.param)

    def phi_dphi(self, t: Any) -> tuple[Any, Any]:
        """phi(t) and phi'(t) together (one exponential for ``exp``)."""
        if self.phi_kind == "exp":
            e = _exp(t / self.param)
            return e, e / self.param
        return self.phi(t), self.dphi(t)

    def phi_terms(self, t: Any) -> tuple[Any, Any, Any]:
        """phi(t), phi'(t) and phi''(t) together (one exponential for ``exp``)."""
        if self.phi_kind == "exp":
            e = _exp(t / self.param)
            return e, e / self.param, e / self.param**2
        return self.phi(t), self.dphi(t), self.d2phi(t)

    def d2phi(self, t: Any) -> Any:
        if self.phi_kind == "exp":
            return _exp(t / self.param) / self.param**2
        if self.phi_kind == "hinge":
            return t * 0
        return 2 * _step(t + self.param)

    def phi_cvx(self, t: Any) -> Any:
        """phi applied to a cvxpy expression (convex, nondecreasing, DPP-compatible)."""
        import cvxpy as cp

        if self.phi_kind == "exp":
            return cp.exp(t / self.param)
        if self.phi_kind == "hinge":
            return cp.pos(t + self.param)
        return cp.square(cp.pos(t + self.param))

    def __str__(self) -> str:
        return self.id


def make_loss(name: str, **params: float) -> Loss:
    """Build a built-in loss, checking its name and parameter.

    Examples
    --------
    >>> make_loss("infonce", tau=0.5).id
    'infonce(tau=0.5)'
    """
    if name not in _BUILTINS:
        raise InputError("loss", name, f"one of {', '.join(LOSS_NAMES)}")
    psi_kind, phi_kind, param_name, default = _BUILTINS[name]
    unknown = sorted(set(params) - {param_name})
    if unknown:
        raise InputError("loss", f"{name}({unknown[0]}=...)", f"only the parameter {param_name!r} for {name}")
    value = params.get(param_name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"loss {param_name}", value, "a positive number")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"loss {param_name}", value, f"{param_name} > 0 (finite)")
    return Loss(name, psi_kind, phi_kind, param_name, value)


def parse_loss(loss_id: str | Loss) -> Loss:
    """Parse a loss id such as ``infonce(tau=0.5)`` or ``triplet`` (default parameter).

    Strict: unknown names, unknown or repeated parameters, positional values and non-numbers
    raise :class:`~pipeline.errors.InputError`. Names are lower case. A bare name takes its default
    parameter (``LOSS_HELP``), and the loss's ``id`` always spells it out: ``infonce`` -> ``infonce(tau=1)``.

    Examples
    --------
    >>> parse_loss("sumexp(tau=2)").param
    2.0
    """
    if isinstance(loss_id, Loss):
        return loss_id
    if not isinstance(loss_id, str):
        raise InputError("loss", loss_id, "a loss id string such as 'infonce(tau=0.5)'")
    match = _LOSS_ID.match(loss_id)
    lower = _LOSS_ID.match(loss_id.lower())
    if match is None and lower is not None and lower.group(1) in _BUILTINS:
        raise InputError("loss", loss_id, f"a lower-case name: {loss_id.strip().lower()!r} (names are case-sensitive)")
    if match is None:
        raise InputError("loss", loss_id, f"an id of the form name(param=value), one of {LOSS_HELP}")
    name, args = match.group(1), match.group(2)
    if name not in _BUILTINS:
        raise InputError("loss", loss_id, f"a loss named one of {', '.join(LOSS_NAMES)} ({LOSS_HELP})")
    params: dict[str, float] = {}
    if args:
        for item in args.split(","):
            key, sep, raw = (part.strip() for part in item.partition("="))
            if not sep or not key.isidentifier():
                raise InputError("loss", loss_id, f"keyword parameters only, e.g. '{name}({_BUILTINS[name][2]}=0.5)'")
            if key in params:
                raise InputError("loss", loss_id, f"parameter {key!r} given once")
            try:
                params[key] = float(raw)
            except ValueError:
                raise InputError("loss", loss_id, f"a number for {key!r}, got {raw!r}") from None
    return make_loss(name, **params)


def check_option(field_name: str, value: str, allowed: tuple[str, ...]) -> str:
    """Check a string option against its allowed values."""
    if value not in allowed:
        raise InputError(field_name, value, f"one of {', '.join(allowed)}")
    return value

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

A researcher's own loss is registered from Python with :func:`register_loss` (psi ``log1p`` or ``linear``, the
two the engine integrates exactly; phi any convex nondecreasing function, checked on a grid) and is then
named like a built-in in ``solve``, ``threshold``, sweeps and training.
"""

from __future__ import annotations

import inspect
import math
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pipeline.errors import InputError

PsiKind = Literal["log1p", "identity"]
PhiKind = Literal["exp", "hinge", "squared_hinge", "custom"]
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
    custom: CustomPhi | None = field(default=None, repr=False)  # a registered phi (phi_kind 'custom')

    @property
    def id(self) -> str:
        """Canonical loss id, e.g. ``infonce(tau=0.5)``, or a registered loss's name; ``parse_loss(loss.id) ==
        loss``."""
        if self.custom is not None:
            return self.name
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
        if self.custom is not None:
            return self.custom.derivative(t, 0)
        if self.phi_kind == "exp":
            return _exp(t / self.param)
        if self.phi_kind == "hinge":
            return _relu(t + self.param)
        return _relu(t + self.param) ** 2

    def dphi(self, t: Any) -> Any:
        if self.custom is not None:
            return self.custom.derivative(t, 1)
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
        if self.custom is not None:
            return self.custom.derivative(t, 2)
        if self.phi_kind == "exp":
            return _exp(t / self.param) / self.param**2
        if self.phi_kind == "hinge":
            return t * 0
        return 2 * _step(t + self.param)

    def phi_cvx(self, t: Any) -> Any:
        """phi applied to a cvxpy expression (convex, nondecreasing, DPP-compatible)."""
        import cvxpy as cp

        if self.custom is not None:
            raise InputError("solver", "full", f"'symmetric', 'oblique' or 'auto' for the registered loss {self.name} "
                             "(the cvxpy program needs phi as a cvxpy atom; the built-ins have one)")  # fmt: skip
        if self.phi_kind == "exp":
            return cp.exp(t / self.param)
        if self.phi_kind == "hinge":
            return cp.pos(t + self.param)
        return cp.square(cp.pos(t + self.param))

    def __str__(self) -> str:
        return self.id


# --- registered losses -------------------------------------------------------------------------

PSI_FAMILIES = {"log1p": "log1p", "linear": "identity"}  # register_loss's psi -> Loss.psi_kind
CHECK_T = (-4.0, 2.0)  # phi is checked on this range of its argument: t = G_cj - 1 in [-2, 0], and room for remedies
CHECK_POINTS = 601
_REGISTRY: dict[str, Loss] = {}


@dataclass(frozen=True, eq=False)
class CustomPhi:
    """A registered phi: either a torch function (its derivatives by autograd) or float64 numpy functions for
    phi, phi' and phi''. Either is evaluated on numpy arrays (float64) and on torch tensors (training).

    Attributes
    ----------
    definition : str
        What a reader sees in a store's attributes (given, or the function's source).
    fingerprint : str
        CRC-32 of phi's float64 values on a fixed grid: two phis under one name never share a store.
    """

    fn: Callable[[Any], Any]
    d1: Callable[[Any], Any] | None = None
    d2: Callable[[Any], Any] | None = None
    definition: str = ""
    fingerprint: str = ""

    @property
    def autograd(self) -> bool:
        return self.d1 is None

    def derivative(self, t: Any, order: int) -> Any:
        """phi (order 0), phi' (1) or phi'' (2) at t, a float, a numpy array or a torch tensor (same type out)."""
        is_torch = type(t).__module__.startswith("torch")
        if not self.autograd:
            fn = (self.fn, self.d1, self.d2)[order]
            if not is_torch:
                return fn(t)
            import torch

            return torch.as_tensor(fn(t.detach().cpu().double().numpy()), dtype=t.dtype, device=t.device)
        import torch

        x = t.detach() if is_torch else torch.as_tensor(_np().asarray(t, dtype=float))
        if order == 0:
            with torch.no_grad():
                out = self.fn(x)
        else:
            with torch.enable_grad():
                x = x.clone().requires_grad_(True)
                out = self.fn(x)
                for _ in range(order):  # a derivative of a constant (phi linear: phi'') is zero, not an error
                    grad = None
                    if out.requires_grad:
                        grad = torch.autograd.grad(out.sum(), x, create_graph=True, allow_unused=True)[0]
                    out = torch.zeros_like(x) if grad is None else grad
            out = out.detach()
        if is_torch:
            return out
        return float(out) if _np().ndim(t) == 0 else out.numpy()


def register_loss(name: str, psi: str, phi: Callable[[Any], Any], dphi: Callable[[Any], Any] | None = None,
                  d2phi: Callable[[Any], Any] | None = None, definition: str | None = None) -> Loss:  # fmt: skip
    """Register a loss of the family under ``name``, usable wherever a built-in loss id is.

    Parameters
    ----------
    name : str
        Lower-case identifier, not a built-in's name; re-registering a name replaces it.
    psi : {'log1p', 'linear'}
        The outer function: log(1 + s) (InfoNCE-like) or s; the two the engine integrates exactly.
    phi : callable
        The inner function of t = f·f^- - f·f^+. Without ``dphi`` a torch function of a tensor (autograd gives
        phi' and phi''); with ``dphi`` and ``d2phi`` a numpy function of float64 arrays.
    dphi, d2phi : callable, optional
        phi' and phi'' (numpy), checked against finite differences of phi.
    definition : str, optional
        How a reader should read phi (stored in a store's attributes); default: the function's source.

    Returns
    -------
    Loss

    Raises
    ------
    InputError
        One line naming what fails: phi not finite, decreasing or not convex on t in [-4, 2] (or negative,
        with psi log1p), or a derivative that does not match phi.

    Examples
    --------
    >>> import torch
    >>> mine = register_loss("infonce_again", "log1p", lambda t: torch.exp(t / 0.5), definition="exp(t / 0.5)")
    >>> parse_loss("infonce_again").phi(0.0)
    1.0
    """
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name) or name in _BUILTINS:
        raise InputError("loss name", name, f"a lower-case identifier other than {', '.join(LOSS_NAMES)}")
    if psi not in PSI_FAMILIES:
        raise InputError("psi", psi, f"one of {', '.join(PSI_FAMILIES)} (the families the engine integrates exactly)")
    if (dphi is None) != (d2phi is None):
        raise InputError("dphi", name, "both dphi and d2phi (numpy), or neither (phi a torch function, autograd)")
    if not callable(phi) or (dphi is not None and not (callable(dphi) and callable(d2phi))):
        raise InputError("phi", name, "callables: phi (and dphi, d2phi)")
    if definition is None:
        try:
            definition = inspect.getsource(phi).strip()
        except (OSError, TypeError):
            definition = repr(phi)
    custom = CustomPhi(phi, dphi, d2phi, str(definition))
    t = _np().linspace(*CHECK_T, CHECK_POINTS)
    values = _checked_phi(name, custom, t, positive=psi == "log1p")
    sampled = _np().ascontiguousarray(values[::20], dtype="<f8")  # 31 points of phi on the check grid
    custom = replace(custom, fingerprint=f"{zlib.crc32(sampled.tobytes()):08x}")
    loss = Loss(name, PSI_FAMILIES[psi], "custom", "", 1.0, custom)
    _REGISTRY[name] = loss
    return loss


def _checked_phi(name: str, custom: CustomPhi, t: Any, positive: bool) -> Any:
    """phi (n,) on the grid t (n,), after checking it is finite, nondecreasing and convex there (and >= 0 where
    ``positive``: log1p's argument is a sum of phi), and that given derivatives match its finite differences
    (each failure one InputError)."""
    np = _np()
    try:
        phi, d1, d2 = (np.asarray(custom.derivative(t, order), dtype=float) for order in range(3))
    except Exception as err:  # the user's function: any failure is one line
        raise InputError("phi", name, f"a function of an array of t ({type(err).__name__}: {err})") from None
    if any(x.shape != t.shape or not np.isfinite(x).all() for x in (phi, d1, d2)):
        raise InputError("phi", name, "finite values of phi, phi' and phi'' for t in [-4, 2], elementwise")
    scale = max(1.0, float(np.abs(phi).max()), float(np.abs(d1).max()), float(np.abs(d2).max()))
    tol = 1e-9 * scale

    def where(mask: Any) -> str:
        return f"t = {t[np.argmax(mask)]:.3g}"

    if positive and (phi < -tol).any():
        raise InputError("phi", name, f"phi >= 0 (log1p's argument is a sum of phi): phi < 0 at {where(phi < -tol)}")
    if (d1 < -tol).any():
        raise InputError("phi", name, f"a nondecreasing phi: phi' < 0 at {where(d1 < -tol)}")
    if (d2 < -tol).any():
        raise InputError("phi", name, f"a convex phi: phi'' < 0 at {where(d2 < -tol)}")
    h = t[1] - t[0]
    second = (phi[2:] - 2 * phi[1:-1] + phi[:-2]) / h**2  # convexity from phi itself, whatever phi'' says
    if (second < -1e-6 * scale).any():
        where_second = where(second < -1e-6 * scale)
        raise InputError("phi", name, f"a convex phi: its second differences are < 0 at {where_second}")
    if not custom.autograd:  # given derivatives must be phi's: central differences, O(h^2)
        for order, (lower, upper) in ((1, (phi[:-2], phi[2:])), (2, (d1[:-2], d1[2:]))):
            given = (d1, d2)[order - 1][1:-1]
            diff = (upper - lower) / (2 * h)
            bad = np.abs(given - diff) > 1e-3 * scale
            if bad.any():
                of = "phi" if order == 1 else "dphi"
                raise InputError(f"d{of}", name, f"the derivative of {of} (it differs from {of}'s finite differences "
                                 f"at {where(bad)})")  # fmt: skip
    return phi


def registered_losses() -> dict[str, Loss]:
    """The registered losses by name."""
    return dict(_REGISTRY)


def install_losses(losses: tuple[Loss, ...]) -> None:
    """Register losses made elsewhere: a sweep's workers receive the client's registered losses with the config,
    which is authoritative (a long-lived worker may hold another phi under the same name from an earlier sweep)."""
    for loss in losses:
        _REGISTRY[loss.name] = loss


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
    if loss_id.strip() in _REGISTRY:
        return _REGISTRY[loss_id.strip()]
    match = _LOSS_ID.match(loss_id)
    lower = _LOSS_ID.match(loss_id.lower())
    if match is None and lower is not None and lower.group(1) in _BUILTINS:
        raise InputError("loss", loss_id, f"a lower-case name: {loss_id.strip().lower()!r} (names are case-sensitive)")
    if match is None:
        raise InputError("loss", loss_id, f"an id of the form name(param=value), one of {LOSS_HELP}")
    name, args = match.group(1), match.group(2)
    if name in _REGISTRY:
        raise InputError("loss", loss_id, f"the registered loss {name!r} without parameters")
    if name not in _BUILTINS:
        mine = (f"; registered: {', '.join(_REGISTRY)}" if _REGISTRY else
                "; or a loss of your own: pipeline.register_loss, and CLPHASE_LOSSES=file.py on the command line")
        raise InputError("loss", loss_id, f"a loss named one of {', '.join(LOSS_NAMES)} ({LOSS_HELP}){mine}")
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

"""The theory: the loss family, class proportions, the exact expectation, the solvers and thresholds.

One concept per module:

- ``losses``: psi and phi of the loss family; ``profiles``: class proportions (step, exp, counts);
  ``problem``: a theory point (loss, proportions, k, conventions).
- ``transform``: E log(1 + S) by the Laplace transform (cost flat in k); ``objective``: the exact
  expectation over the k negatives, its derivatives and the certificate.
- ``solution``: what solvers return; solvers ``symmetric`` (group-reduced), ``sdp`` (cvxpy),
  ``rank`` (d < C), ``oblique`` (many distinct proportions); ``dispatch``: :func:`solve` picks one.
- ``threshold``: the minority-collapse threshold R*; ``cascade``: merges decided by the optimality
  condition and the onsets rho*_m of long tails.

The common entry points are importable from here (lazily: importing one module loads no solver).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Problem": "problem",
    "parse_loss": "losses",
    "parse_profile": "profiles",
    "solve": "dispatch",
    "choose_solver": "dispatch",
    "minority_threshold": "threshold",
    "cascade": "cascade",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"pipeline.theory.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'pipeline.theory' has no attribute {name!r}")

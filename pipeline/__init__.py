"""clphase: where contrastive learning on imbalanced classes keeps classes apart, and where it collapses them.

The Python API, for notebooks and scripts (each name is imported on first use, so that ``import pipeline``
stays light):

- :func:`solve` (loss, profile, k, ...): the certified optimal class geometry at one point;
- :func:`threshold` (loss, profile, k, ...): R* of a step profile, or the cascade onsets of exp(C);
- :func:`open_results` (path): a results store as a lazy ``xarray.Dataset``;
- :func:`register_loss` (name, psi, phi): a loss of one's own, then named like a built-in everywhere;
- :mod:`pipeline.plots`: the figures, each from an ``xarray.Dataset``.

>>> import pipeline
>>> round(pipeline.threshold("infonce(tau=0.5)", "step(K_A=2, K_B=2)", k=4).R_star, 2)  # doctest: +SKIP
64.09
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"
_EXPORTS = {"solve": "pipeline.api", "threshold": "pipeline.api", "open_results": "pipeline.sweep.store",
            "register_loss": "pipeline.theory.losses"}
__all__ = [*_EXPORTS, "plots"]


def __getattr__(name: str) -> Any:
    # lazy, so that `import pipeline` (and the CLI) does not pull in numpy, xarray, zarr and dask
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    if name == "plots":
        return import_module("pipeline.plots")
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")

"""clphase: where contrastive learning on imbalanced classes keeps classes apart, and where it collapses them."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["open_results"]


def __getattr__(name: str) -> Any:
    # lazy, so that `import pipeline` (and the CLI) does not pull in xarray, zarr and dask
    if name == "open_results":
        from pipeline.sweep.store import open_results

        return open_results
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")

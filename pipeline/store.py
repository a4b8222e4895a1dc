"""The results store: zarr v3 through xarray, a template first, then chunk-aligned region writes.

``init_store`` writes the metadata of every variable (``to_zarr(compute=False)``; the returned
delayed object is never computed) with one chunk per batch. Each task then writes its own chunk
with ``to_zarr(region=...)`` and, after its data, its block of the completion mask ``done_<kind>``.
A rerun skips every batch whose mask is set. Metadata is not consolidated (not in the v3 spec).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from pipeline.config import SweepConfig, diff_science
from pipeline.errors import InputError
from pipeline.grid import Batch, Grid, kinds
from pipeline.results import DONE, KIND_DIMS, STATUS, VARIABLES, fill_value

FORMAT = "clphase-store-1"
PACKAGES = ("clphase", "numpy", "scipy", "cvxpy", "clarabel", "scs", "xarray", "zarr", "dask", "distributed", "torch")


class StoreMismatchError(InputError):
    """An existing store was made by a different config."""

    def __init__(self, path: str, fields: list[str]) -> None:
        self.field, self.value = "store", path
        self.allowed = "the config that created it"
        ValueError.__init__(
            self,
            f"store {path!r} was created by a different config: fields differ: {', '.join(fields)}; "
            "rerun with the original config, or set store=<new path> to start a new store",
        )


def git_revision() -> str:
    """Revision of the checkout the package runs from ('unknown' outside git)."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=40"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


def provenance() -> dict[str, Any]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {"python": platform.python_version(), "packages": versions, "git_revision": git_revision()}


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def check_writable(path: str) -> None:
    """Refuse a store path that cannot be created, before anything is written."""
    target = Path(path).resolve()
    ancestor = target
    while not ancestor.exists():
        ancestor = ancestor.parent
    if (ancestor != target and not ancestor.is_dir()) or not os.access(ancestor, os.W_OK):
        raise InputError("store", path, f"a path in a writable folder ({str(ancestor)!r} is not writable)")


def read_attrs(path: str) -> dict[str, Any] | None:
    """Store attributes, or None when ``path`` holds no store."""
    if not Path(path).exists():
        return None
    try:
        return dict(zarr.open_group(path, mode="r").attrs)
    except Exception:
        return {}


def prepare_store(path: str, config: SweepConfig) -> str:
    """Check an existing store against the config, or check that a new one can be created.

    Returns 'resume' or 'new'; raises InputError (store untouched) otherwise.
    """
    attrs = read_attrs(path)
    if attrs is None:
        check_writable(path)
        return "new"
    if attrs.get("clphase_format") != FORMAT:
        raise InputError("store", path, "a clphase results store or a path that does not exist yet")
    stored = json.loads(attrs["clphase_science"])
    fields = diff_science(stored, config.science())
    if fields:
        raise StoreMismatchError(path, fields)
    return "resume"


def init_store(path: str, config: SweepConfig) -> None:
    """Write the template: coordinates, metadata and chunking of every variable; no data chunks."""
    grid = Grid(config)
    coords = grid.coords()
    data_vars = {}
    for name, var in VARIABLES.items():
        if var.kind not in kinds(config):
            continue
        chunks = grid.chunks(var.kind)
        shape = tuple(len(coords[d]) for d in var.dims)
        chunk_shape = tuple(chunks.get(d, len(coords[d])) for d in var.dims)
        array = da.full(shape, fill_value(var.dtype), dtype=var.dtype, chunks=chunk_shape)
        attrs = {"long_name": var.long_name, "units": var.units}
        if name.startswith("status_"):
            attrs.update(flag_values=list(range(len(STATUS))), flag_meanings=" ".join(STATUS))
        data_vars[name] = (var.dims, array, attrs)
    for kind in kinds(config):
        name = DONE[kind]
        dims = KIND_DIMS[kind]
        chunks = grid.chunks(kind)
        shape = tuple(len(coords[d]) for d in dims)
        array = da.zeros(shape, dtype="int8", chunks=tuple(chunks[d] for d in dims))
        data_vars[name] = (dims, array, {"long_name": f"{kind} batch written (1) or pending (0)", "units": "1"})
    ds = xr.Dataset(data_vars, coords=coords)
    ds["R"].attrs.update(long_name="imbalance ratio p_major / p_minor", units="1")
    ds["k"].attrs.update(long_name="negatives per anchor", units="1")
    ds["dim"].attrs.update(long_name="embedding dimension d", units="1")
    ds["n_major"].attrs.update(long_name="majority classes K_A", units="1")
    ds["n_minor"].attrs.update(long_name="minority classes K_B", units="1")
    ds.attrs.update(
        clphase_format=FORMAT,
        title=f"clphase sweep {config.name}",
        config=config.to_yaml(),
        config_hash=config.science_hash(),
        clphase_science=json.dumps(config.science(), sort_keys=True),
        conventions=f"negatives={config.theory.negatives} reduction={config.theory.reduction} "
        "classes majority first; R = p_major / p_minor",
        provenance=json.dumps(provenance()),
        created_at=_now(),
    )
    ds.to_zarr(path, mode="w-", compute=False, consolidated=False, zarr_format=3)


def write_batch(path: str, batch: Batch, arrays: dict[str, np.ndarray]) -> None:
    """Write one batch's chunk of every variable of its kind, then its block of the done mask."""
    region = batch.slices
    data_vars = {}
    for name, values in arrays.items():
        dims = VARIABLES[name].dims
        data_vars[name] = (dims, values)
    ds = xr.Dataset(data_vars)
    full_region = {d: region.get(d, slice(None)) for d in ds.dims}
    ds.to_zarr(path, region=full_region, consolidated=False)
    dims = KIND_DIMS[batch.kind]
    done = xr.Dataset({DONE[batch.kind]: (dims, np.ones(batch.shape, dtype="int8"))})
    done.to_zarr(path, region={d: region[d] for d in dims}, consolidated=False)


def read_done(path: str, kind: str) -> np.ndarray:
    """Completion mask of a kind as a boolean array over its dims."""
    group = zarr.open_group(path, mode="r")
    return np.asarray(group[DONE[kind]][...]) == 1


def batch_done(done: np.ndarray, batch: Batch) -> bool:
    return bool(done[tuple(s for _, s in batch.region)].all())


def update_attrs(path: str, **attrs: Any) -> None:
    zarr.open_group(path, mode="r+").attrs.update(attrs)


def open_results(path: str | os.PathLike) -> xr.Dataset:
    """Open a results store as a lazy xarray Dataset.

    Examples
    --------
    >>> ds = open_results("results/quick.zarr")  # doctest: +SKIP
    >>> ds.cos_minor_theory.sel(loss="infonce(tau=1)", n_major=2, n_minor=2, k=4)  # doctest: +SKIP
    """
    if read_attrs(str(path)) is None:
        raise InputError("store", str(path), "an existing results store (run `clphase run CONFIG` first)")
    return xr.open_zarr(path, consolidated=False)

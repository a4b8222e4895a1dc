"""The results store: zarr v3 through xarray, a template first, then chunk-aligned region writes.

``init_store`` writes the metadata of every variable (``to_zarr(compute=False)``; the returned
delayed object is never computed) with one chunk per batch. Each task then writes its own chunk
(with zarr directly, see :func:`write_batch`) and, after its data, its block of the completion mask
``done_<kind>``.
A rerun skips every batch whose mask is set. The metadata is also consolidated (whenever it
changes: template, repair, attributes), so a plain ``xr.open_zarr(path)`` opens the store silently
in one read; clphase itself reads the per-variable metadata, so that damage shows.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
import zlib
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
import zarr.api.asynchronous
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.core.sync import sync

from pipeline.errors import InputError
from pipeline.metrics import CONVENTIONS as WITHIN_CLASS_CONVENTIONS
from pipeline.metrics import GRAD_NORM_TOL, LOSS_CHANGE_TOL
from pipeline.sweep.config import SweepConfig, diff_science, loss_definitions
from pipeline.sweep.faults import kill_point, no_space_point
from pipeline.sweep.grid import Batch, Grid, kinds, store_variables
from pipeline.sweep.results import (
    BOOKKEEPING_SINCE,
    CHECKSUM,
    DONE,
    FORMAT_VERSION,
    KIND_STATUS,
    REMEDY_THRESHOLD_STATUS,
    STATUS_CODE,
    VARIABLE_STATUS,
    VARIABLES,
    WRITER,
    fill_value,
)

if TYPE_CHECKING:
    import xarray as xr

FORMAT = f"clphase-store-{FORMAT_VERSION}"
FORMATS = {f"clphase-store-{v}": v for v in range(1, FORMAT_VERSION + 1)}  # the formats this version reads
COORD_ATTRS = {
    "R": ("imbalance ratio p_major / p_minor", "1"),
    "n_major": ("majority classes K_A", "1"),
    "n_minor": ("minority classes K_B", "1"),
    "C": ("classes C of the long-tailed profile", "1"),
    "rho": ("long-tail imbalance rho = p_0 / p_{C-1}, p_c proportional to rho^(-c / (C - 1))", "1"),
    "counts": ("named class-count vector (its counts: the config attribute)", "1"),
    "onset": ("m: the m smallest classes merge at rho*_m", "1"),
    "remedy": ("remedy against Minority Collapse (pipeline.theory.remedies; none: the paper's loss); a store "
               "without this dim holds remedy none", "1"),
    "k": ("negatives per anchor", "1"),
    "dim": ("embedding dimension d", "1"),
    "rank_dim": ("embedding dimension d of the rank-d theory (Burer-Monteiro; d >= C: the convex optimum)", "1"),
}
PROFILE_CONVENTIONS = {
    "step": "classes majority first; R = p_major / p_minor",
    "exp": "profile exp(C, rho): p_c proportional to rho^(-c / (C - 1)), c = 0..C-1, head first; "
    "classes padded to the largest C",
    "counts": "profile counts: proportions from each named count vector, classes in the order given",
}
ROOT_COPY = "clphase_root"  # attribute of the done masks: a copy of the root's fixed attributes (a repair's source)
ROOT_FIXED = ("clphase_format", "title", "config", "config_hash", "clphase_science", "conventions", "provenance",
              "created_at", "profile", "losses")  # fmt: skip
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


class NotAStoreError(InputError):
    """A path that exists but holds no clphase results store."""

    def __init__(self, path: str) -> None:
        self.field, self.value = "store", path
        self.allowed = "the path of a store written by `clphase run` (e.g. results/quick.zarr)"
        what = "a folder" if Path(path).is_dir() else "a file"
        ValueError.__init__(
            self, f"not a clphase store: {path!r} is {what} without clphase's metadata; expected {self.allowed}"
        )


class DamagedStoreError(InputError):
    """A store with damaged batches, which ``clphase run`` repairs."""

    def __init__(self, path: str, damaged: list[str], cause: Exception | None) -> None:
        self.field, self.value, self.allowed = "store", path, "an undamaged store"
        more = f" and {len(damaged) - 1} more" if len(damaged) > 1 else ""
        why = f" ({type(cause).__name__})" if cause is not None else ""
        ValueError.__init__(self, f"store {path!r} is damaged{why}: {damaged[0]}{more}; "
                            "run `clphase run CONFIG` again with its config to repair it (`clphase status` lists "
                            "every damaged batch)")  # fmt: skip


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


@cache
def provenance() -> dict[str, Any]:
    """Python, package versions and git revision (``-dirty`` for uncommitted changes) of the running code."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {"python": platform.python_version(), "packages": versions, "git_revision": git_revision()}


def writer_id() -> int:
    """CRC-32 of this process's :func:`provenance`: what ``writer_<kind>`` records for each batch it writes."""
    return zlib.crc32(json.dumps(provenance(), sort_keys=True).encode())


def checksummed() -> dict[str, Any]:
    """The zarr encoding of every array of a new store: zstd, then a crc32c checksum of each chunk, so a
    flipped bit fails to decode instead of changing a number."""
    return {"compressors": [ZstdCodec(level=0), Crc32cCodec()]}


def now_utc() -> str:
    """The time stamps of a store: ISO 8601, UTC, seconds (2026-12-01T19:35:07+00:00)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _group(path: str, mode: str) -> zarr.Group:
    """The store's root group read from its own metadata files, never the consolidated copy: a
    damaged variable must show as damaged (the consolidated copy serves plain ``xr.open_zarr``)."""
    return zarr.open_group(path, mode=mode, use_consolidated=False)


def consolidate(path: str) -> None:
    """Write the consolidated metadata that lets ``xr.open_zarr(path)`` open the store silently in
    one read. Called whenever the metadata changes: the template, a repair, the attributes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=zarr.errors.ZarrUserWarning)  # "not in the v3 spec"
        zarr.consolidate_metadata(path, zarr_format=3)


def check_writable(path: str, field: str = "store") -> None:
    """Refuse a folder path that cannot be created (or written into), before anything is written.

    ``path`` may exist as a folder; otherwise the nearest existing ancestor must be a folder in which a
    folder can be made. A probe folder is made there and removed at once (``os.access`` says yes to root
    on read-only file systems). ``field`` names the option in the message (``store``, ``out``).
    """
    target = Path(path).resolve()
    if target.exists() and not target.is_dir():
        raise InputError(field, path, f"a folder ({str(target)!r} is a file): pick a new path")
    ancestor = target
    while not ancestor.exists():
        ancestor = ancestor.parent
    if ancestor != target and not ancestor.is_dir():
        raise InputError(field, path, f"a path under a folder ({str(ancestor)!r} is a file, not a folder)")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".clphase-probe-", dir=ancestor))
    except OSError as err:
        raise InputError(
            field, path, f"a path in a writable folder ({str(ancestor)!r} is not writable: {err.strerror})"
        ) from None


ROOT_DAMAGED = "_root_damaged"  # key read_attrs adds when the attributes come from the done masks' copy


def read_attrs(path: str) -> dict[str, Any] | None:
    """Store attributes, or None when ``path`` holds no store ({} when it holds no zarr group).

    When the root metadata is unreadable but a done mask keeps its copy (store format 4 on), that copy is
    returned with ``ROOT_DAMAGED`` set: ``clphase run`` repairs the root from it.
    """
    if not Path(path).exists():
        return None
    try:
        return dict(_group(path, "r").attrs)
    except Exception:
        copy = _root_copy(path)
        return {**copy, ROOT_DAMAGED: True} if copy else {}


def _root_copy(path: str) -> dict[str, Any]:
    """The root attributes kept in the first readable done mask's metadata ({} if none)."""
    for name in DONE.values():
        try:
            meta = json.loads((Path(path) / name / "zarr.json").read_text())
            return json.loads(meta["attributes"][ROOT_COPY])
        except Exception:
            continue
    return {}


def repair_root(path: str) -> bool:
    """Rewrite an unreadable root ``zarr.json`` from the done masks' copy; True when it did."""
    attrs = read_attrs(path)
    if not attrs or not attrs.pop(ROOT_DAMAGED, False):
        return False
    root = {"zarr_format": 3, "node_type": "group", "attributes": attrs}
    tmp = Path(path) / f"zarr.json.repair-{os.getpid()}"
    tmp.write_text(json.dumps(root))
    os.replace(tmp, Path(path) / "zarr.json")
    consolidate(path)
    return True


class DamagedRootError(InputError):
    """A store whose root metadata is unreadable while its arrays keep a copy: ``clphase run`` repairs it."""

    def __init__(self, path: str, attrs: dict[str, Any]) -> None:
        self.field, self.value, self.allowed = "store", path, "an undamaged store"
        name = attrs.get("title", "").removeprefix("clphase sweep ")
        ValueError.__init__(self, f"store {path!r} is damaged: its root metadata (zarr.json) is unreadable, its "
                            f"arrays keep a copy; rerun `clphase run CONFIG` with its config (sweep {name!r}) to "
                            "repair it")  # fmt: skip


def require_store(path: str) -> dict[str, Any]:
    """The attributes of the clphase store at ``path``; one clear InputError otherwise."""
    attrs = read_attrs(path)
    if attrs is None:
        raise InputError("store", path, "an existing results store (run `clphase run CONFIG` first)")
    if attrs.get("clphase_format") not in FORMATS:
        raise NotAStoreError(path)
    if attrs.get(ROOT_DAMAGED):
        raise DamagedRootError(path, attrs)
    return attrs


def store_version(path: str) -> int:
    """The store format version of an existing store (1: before stationarity was stored)."""
    return FORMATS[require_store(path)["clphase_format"]]


def prepare_store(path: str, config: SweepConfig) -> str:
    """Check an existing store against the config, or check that a new one can be created.

    Returns 'resume' or 'new'; raises InputError (store untouched) otherwise.
    """
    attrs = read_attrs(path)
    if attrs is None:
        check_writable(path)
        return "new"
    if attrs.get("clphase_format") not in FORMATS:
        raise NotAStoreError(path)
    stored = json.loads(attrs["clphase_science"])
    fields = diff_science(stored, config.science())
    if fields:
        raise StoreMismatchError(path, fields)
    return "resume"


def init_store(path: str, config: SweepConfig) -> None:
    """Write the template: coordinates, metadata and chunking of every variable; no data chunks.

    Each variable is one dask chunk (its zarr chunks, one per batch, are set in the encoding): the template's
    never-computed graph then has a task per variable, not per batch (a 10^6-point grid had 10^6).
    """
    import dask.array as da  # here, not at the top: the workers, which only write batches, start without it
    import xarray as xr

    grid = Grid(config)
    coords = grid.coords()
    profile = config.grid.profile
    data_vars = {}
    zarr_chunks = {}

    def blank(name: str, dims: tuple[str, ...], chunks: dict[str, int], dtype: str, fill: float, attrs: dict) -> None:
        shape = tuple(len(coords[d]) for d in dims)
        zarr_chunks[name] = tuple(chunks.get(d, len(coords[d])) for d in dims)
        data_vars[name] = (dims, da.full(shape, fill, dtype=dtype, chunks=-1), attrs)

    for name, var in store_variables(config).items():
        if var.kind not in kinds(config):
            continue
        attrs = {"long_name": var.long_name, "units": var.units}
        if name in ("nc1_train", "trace_ratio_train"):
            attrs["conventions"] = WITHIN_CLASS_CONVENTIONS
        if name == "converged_train":  # -1: neither measure available
            attrs.update(grad_tol=GRAD_NORM_TOL, loss_change_tol=LOSS_CHANGE_TOL, flag_values=[-1, 0, 1],
                         flag_meanings="unknown not_converged converged")  # fmt: skip
        if name.startswith("status_"):
            names = VARIABLE_STATUS.get(name, KIND_STATUS[var.kind])
            if name == "status_threshold" and config.grid.remedied:  # a step store's attrs stay as they were
                names = (*names, *REMEDY_THRESHOLD_STATUS)
            attrs.update(flag_values=[STATUS_CODE[n] for n in names], flag_meanings=" ".join(names))
        dims = var.dims(profile, config.grid.remedied)
        blank(name, dims, grid.chunks(var.kind), var.dtype, fill_value(var.dtype), attrs)
    for kind in kinds(config):
        dims, chunks = grid.dims(kind), grid.chunks(kind)
        written = f"{kind} batch written (1) or pending (0)"
        checksum = f"CRC-32 of the {kind} batch's data as written (its variables in name order)"
        writer = f"CRC-32 of the provenance of the code that wrote the {kind} batch (attribute writers)"
        blank(DONE[kind], dims, chunks, "int8", 0, {"long_name": written, "units": "1"})
        blank(CHECKSUM[kind], dims, chunks, "int64", 0, {"long_name": checksum, "units": "1"})
        blank(WRITER[kind], dims, chunks, "int64", 0, {"long_name": writer, "units": "1"})
    ds = xr.Dataset(data_vars, coords={d: coords[d] for d in coords if d != "onset" or "threshold" in kinds(config)})
    for coord, (long_name, units) in COORD_ATTRS.items():
        if coord in ds.coords:
            ds[coord].attrs.update(long_name=long_name, units=units)
    extra = {} if profile == "step" else {"profile": profile}  # a step store's attrs stay as they were
    if config.losses:  # registered losses: their definitions, for a reader (and the science hash)
        extra["losses"] = json.dumps(loss_definitions(config.losses))
    ds.attrs.update(
        **extra,
        clphase_format=FORMAT,
        title=f"clphase sweep {config.name}",
        config=config.to_yaml(),
        config_hash=config.science_hash(),
        clphase_science=json.dumps(config.science(), sort_keys=True),
        conventions=f"negatives={config.theory.negatives} reduction={config.theory.reduction} "
        + PROFILE_CONVENTIONS[profile],
        provenance=json.dumps(provenance()),
        created_at=now_utc(),
    )
    copy = json.dumps({key: ds.attrs[key] for key in ROOT_FIXED if key in ds.attrs})
    for kind in kinds(config):
        ds[DONE[kind]].attrs[ROOT_COPY] = copy
    # written next to its final place and moved there in one rename: a killed run leaves either no
    # store or a complete template, never half a template
    for stale in Path(path).parent.glob(f"{Path(path).name}.partial-*"):  # left by killed runs
        pid = stale.name.rsplit("-", 1)[-1]
        if not (pid.isdigit() and _alive(int(pid))) or int(pid) == os.getpid():
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(f"{path}.partial-{os.getpid()}")
    try:
        encoding = {name: {**checksummed(), **({"chunks": zarr_chunks[name]} if name in zarr_chunks else {})}
                    for name in ds.variables}  # fmt: skip
        ds.to_zarr(tmp, mode="w-", compute=False, consolidated=False, zarr_format=3, encoding=encoding)
        no_space_point(str(tmp), "template")
        consolidate(str(tmp))
        kill_point("template")
        os.replace(tmp, path)
    except BaseException:  # a full disk, Ctrl-C: no half template stays behind to keep the disk full
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _dims(array: zarr.Array) -> tuple[str, ...]:
    return tuple(array.metadata.dimension_names)


def _kind_names(group: zarr.Group, kind: str) -> list[str]:
    """The variables of a task kind that a store holds (which depends on its profile)."""
    return [name for name, var in VARIABLES.items() if var.kind == kind and name in group]


def read_batch(path: str, batch: Batch) -> dict[str, np.ndarray]:
    """The stored values of every variable of a batch's kind over its region."""
    group = _group(path, "r")
    arrays = {name: group[name] for name in _kind_names(group, batch.kind)}
    return {name: np.asarray(a[batch.selection(_dims(a))]) for name, a in arrays.items()}


def write_batch(path: str, batch: Batch, arrays: dict[str, np.ndarray], between=None) -> None:
    """Write one batch's chunk of every variable of its kind, its checksum and writer, then its done mask.

    Written with zarr's asynchronous API (no per-call xarray validation; every variable of a phase opened, then
    written, concurrently: one round trip to zarr's event loop per phase instead of three per variable, 40 to 47
    instead of 66 to 94 ms a batch of the tests' sweeps). The phases stay in order: data, then checksum and
    writer, then the done mask, each after the last has finished. ``write_empty_chunks``: a chunk of fill values
    (an all-NaN column) must exist on disk, so that a missing chunk behind a set done mask always means damage.
    ``between`` is called after the data and before the mask (fault injection).
    """
    names = sorted(arrays)
    extra = [CHECKSUM[batch.kind], WRITER[batch.kind], DONE[batch.kind]]
    *found, checksum, writer, done = sync(_open_arrays(path, names + extra))  # None where absent: an older format
    items, written = [], []  # written: the values as stored, in name order (what the batch's checksum covers)
    for name, array in zip(names, found, strict=True):
        if array is None:  # a variable added since the store was made (store_version)
            continue
        selection = batch.selection(_dims(array))
        stored = np.broadcast_to(np.asarray(arrays[name], dtype=array.dtype), _region_shape(array, selection))
        items.append((array, selection, stored))
        written.append(stored)
    sync(_write_all(items))
    if between is not None:
        between()
    if checksum is not None:  # store format 4 on
        sync(_write_all([(checksum, batch.selection(), np.full(batch.shape, _digest(written))),
                         (writer, batch.selection(), np.full(batch.shape, writer_id()))]))  # fmt: skip
    sync(_write_all([(done, batch.selection(), np.ones(batch.shape, dtype="int8"))]))


async def _open_arrays(path: str, names: list[str]) -> list[Any]:
    """The store's arrays of these names (None where absent), opened concurrently from their own metadata."""
    group = await zarr.api.asynchronous.open_group(path, mode="r+", use_consolidated=False)

    async def get(name: str) -> Any:
        try:
            return await group.getitem(name)
        except KeyError:
            return None

    return list(await asyncio.gather(*(get(name) for name in names)))


async def _write_all(items: list[tuple[Any, tuple[slice, ...], np.ndarray]]) -> None:
    """Write (array, selection, values) items concurrently; every write ends before the first error is raised."""
    writes = (array.with_config({"write_empty_chunks": True}).setitem(where, values) for array, where, values in items)
    results = await asyncio.gather(*writes, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


def _digest(values: list[np.ndarray]) -> int:
    """The batch checksum: CRC-32 of its variables' values (in name order) as stored, one definition for the
    writer and the verifier."""
    digest = 0
    for x in values:
        digest = zlib.crc32(np.ascontiguousarray(x).tobytes(), digest)
    return digest


def _region_shape(array: zarr.Array, selection: tuple[slice, ...]) -> tuple[int, ...]:
    return tuple(len(range(*s.indices(n))) for s, n in zip(selection, array.shape, strict=True))


def read_done(path: str, kind: str) -> np.ndarray:
    """Completion mask of a kind as a boolean array over its dims.

    A mask chunk that cannot be read (a run killed while writing it) counts as not done.
    """
    array = _group(path, "r")[DONE[kind]]
    try:
        return np.asarray(array[...]) == 1
    except Exception:  # fall back to chunk by chunk
        pass
    done = np.zeros(array.shape, dtype=bool)
    for block in np.ndindex(*array.cdata_shape):
        bounds = zip(block, array.chunks, array.shape, strict=True)
        region = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in bounds)
        try:
            done[region] = np.asarray(array[region]) == 1
        except Exception:  # damaged chunk: recompute its batch
            continue
    return done


def damaged_batches(path: str, config: SweepConfig, kind: str, done: np.ndarray) -> list[Batch]:
    """Batches marked done whose data is missing, unreadable or not what was written.

    A deleted chunk would otherwise read back as fill values (NaN) behind a set done mask; a flipped bit
    fails its chunk's crc32c; a chunk moved to another batch's place fails the batch's checksum (format 4).
    """
    group = _group(path, "r")
    version = store_version(path)
    variables = store_variables(config, version)
    names = sorted(name for name, var in variables.items() if var.kind == kind)
    arrays = {}
    broken_vars = []
    for name in names:
        try:
            arrays[name] = group[name]
        except Exception:  # unreadable metadata: every batch of the variable
            broken_vars.append(name)
    checksum = None
    if version >= BOOKKEEPING_SINCE:
        try:
            checksum = group[CHECKSUM[kind]]
        except Exception:
            broken_vars.append(CHECKSUM[kind])
    out = []
    for batch in Grid(config).batches(kind):
        if not batch_done(done, batch):
            continue
        if broken_vars or not _batch_intact(arrays, batch, checksum):
            out.append(batch)
    return out


def _batch_intact(arrays: dict[str, zarr.Array], batch: Batch, checksum: zarr.Array | None) -> bool:
    """Every chunk of the batch exists, decodes, and (format 4) hashes to the batch's stored checksum."""
    values = []
    for name in sorted(arrays):
        array = arrays[name]
        if not _chunk_exists(array, _chunk_key(array, batch)):
            return False
        try:
            values.append(array[batch.selection(_dims(array))])
        except Exception:  # undecodable chunk (a crc32c mismatch, a truncated file)
            return False
    if checksum is None:  # a store of format 3 or older
        return True
    try:
        stored = np.asarray(checksum[batch.selection()])
    except Exception:
        return False
    return bool((stored == _digest(values)).all())


def damaged_coordinates(path: str, config: SweepConfig) -> list[str]:
    """Coordinates whose metadata or values are not the config's (a deleted chunk reads as fill values)."""
    group = _group(path, "r")
    out = []
    for name, expected in _coordinates(config).items():
        try:
            stored = np.asarray(group[name][...])
        except Exception:
            out.append(name)
            continue
        if stored.shape != expected.shape or not all(_same(a, b) for a, b in zip(stored.tolist(), expected.tolist(),
                                                                                   strict=True)):  # fmt: skip
            out.append(name)
    return out


def _same(a: Any, b: Any) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b))


def _coordinates(config: SweepConfig) -> dict[str, np.ndarray]:
    """The coordinates a store of this config holds (the onsets only with thresholds)."""
    coords = Grid(config).coords()
    return {d: v for d, v in coords.items() if d != "onset" or "threshold" in kinds(config)}


def _chunk_key(array: zarr.Array, batch: Batch) -> str:
    index = [s.start // c for (_, s), c in zip(batch.region, array.chunks, strict=False)]
    index += [0] * (len(array.chunks) - len(index))  # class dims: one chunk
    return array.metadata.encode_chunk_key(tuple(index))


def _chunk_exists(array: zarr.Array, key: str) -> bool:
    root = Path(str(array.store_path.store.root)) / array.path
    return (root / key).exists()


def repair_metadata(path: str, config: SweepConfig) -> list[str]:
    """Rewrite, from the config's template, variables whose zarr.json is unreadable and coordinates whose
    metadata or values are damaged.

    Returns the repaired names; the batches of repaired data variables must then be recomputed.
    """
    group = _group(path, "r")
    broken = []
    expected = _expected_names(config, store_version(path))
    for name in sorted(expected):
        try:
            group[name]
        except Exception:  # unreadable metadata
            broken.append(name)
    broken += damaged_coordinates(path, config)
    if not broken:
        return []
    tmp = f"{path}.repair-{os.getpid()}"
    try:
        init_store(tmp, config)
        for name in broken:
            shutil.rmtree(Path(path) / name, ignore_errors=True)
            shutil.copytree(Path(tmp) / name, Path(path) / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    consolidate(path)
    return broken


def kind_of(name: str) -> str | None:
    """The task kind whose batches a variable holds (None for a coordinate)."""
    if name in VARIABLES:
        return VARIABLES[name].kind
    for table in (DONE, CHECKSUM, WRITER):
        for kind, variable in table.items():
            if variable == name:
                return kind
    return None


def _expected_names(config: SweepConfig, version: int = FORMAT_VERSION) -> set[str]:
    kinds_ = kinds(config)
    variables = store_variables(config, version)
    bookkeeping = (DONE, CHECKSUM, WRITER) if version >= BOOKKEEPING_SINCE else (DONE,)
    return {n for n, v in variables.items() if v.kind in kinds_} | {t[k] for t in bookkeeping for k in kinds_}


def reset_done(path: str, batch: Batch) -> None:
    """Clear a batch's done mask so that the next run recomputes it."""
    array = _group(path, "r+")[DONE[batch.kind]]
    array[batch.selection()] = 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def batch_done(done: np.ndarray, batch: Batch) -> bool:
    return bool(done[batch.selection()].all())


def update_attrs(path: str, **attrs: Any) -> None:
    no_space_point(path, "finalize")
    _group(path, "r+").attrs.update(attrs)
    consolidate(path)


def open_results(path: str | os.PathLike) -> xr.Dataset:
    """Open a results store as a lazy xarray Dataset.

    Examples
    --------
    >>> ds = open_results("results/quick.zarr")  # doctest: +SKIP
    >>> ds.cos_minor_theory.sel(loss="infonce(tau=1)", n_major=2, n_minor=2, k=4)  # doctest: +SKIP
    """
    import xarray as xr

    require_store(str(path))
    return xr.open_zarr(path, consolidated=False)

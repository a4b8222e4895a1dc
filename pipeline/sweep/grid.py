"""From a sweep config to coordinates, store chunks and batches of work.

A batch is one store chunk of one task kind, so parallel writers never touch the same chunk.
Theory chunks span ``batch.points`` points along the profile's scan axis (R, rho or the count
vectors; then k); threshold chunks span every k of one (loss, n_major, n_minor) or (loss, C).
Batches are generated lazily: a 10^5-point grid plans in milliseconds.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from pipeline.sweep.config import SweepConfig
from pipeline.sweep.results import FORMAT_VERSION, Variable, kind_dims, profile_variables
from pipeline.theory.profiles import SCAN_AXIS

KINDS = ("theory", "threshold", "train")


def kinds(config: SweepConfig) -> tuple[str, ...]:
    """Task kinds of a sweep: training only with a ``train`` section; no threshold for counts profiles
    (no axis to scan) or where ``theory.thresholds`` is false."""
    out = KINDS if config.train is not None else KINDS[:2]
    no_threshold = config.grid.profile == "counts" or not config.theory.thresholds
    return tuple(k for k in out if not (k == "threshold" and no_threshold))


def store_variables(config: SweepConfig, version: int = FORMAT_VERSION) -> dict[str, Variable]:
    """The variables a store of this config holds (written in store format ``version``): its profile's, with
    rank-d theory where theory.rank_dims asks."""
    return profile_variables(config.grid.profile, version, rank=bool(config.theory.rank_dims))


@dataclass(frozen=True)
class Batch:
    """One task: a chunk-aligned block of points of one kind.

    Attributes
    ----------
    kind : {'theory', 'threshold', 'train'}
    index : int
        Position among the batches of its kind (stable for a config).
    region : dict[str, slice]
        Index ranges along the kind's dims.
    """

    kind: str
    index: int
    region: tuple[tuple[str, slice], ...]

    @property
    def slices(self) -> dict[str, slice]:
        return dict(self.region)

    def selection(self, dims: tuple[str, ...] | None = None) -> tuple[slice, ...]:
        """Index of the batch into an array over ``dims`` (default: the kind's dims); dims the batch
        does not span (the class dims) are taken whole."""
        if dims is None:
            return tuple(s for _, s in self.region)
        region = self.slices
        return tuple(region.get(d, slice(None)) for d in dims)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(s.stop - s.start for _, s in self.region)

    @property
    def n_points(self) -> int:
        return math.prod(self.shape)

    @property
    def key(self) -> str:
        return f"{self.kind}-{self.index}"


class Grid:
    """Coordinates, chunking and batches of a sweep."""

    def __init__(self, config: SweepConfig) -> None:
        self.config = config
        self.spec = config.grid
        self.profile = self.spec.profile
        self.C_max = self.spec.C_max
        self._coords = self._make_coords()
        self._selected: np.ndarray | None = None  # train.select's mask over the train dims, made on first use
        self._axes: dict[str, np.ndarray] = {}  # the config's values per dim (values), made on first use

    def _make_coords(self) -> dict[str, np.ndarray]:
        s = self.spec
        coords = {"loss": np.array(s.loss, dtype=object)}  # variable-length UTF-8 in zarr v3
        if s.remedied:
            coords["remedy"] = np.array(s.remedy, dtype=object)  # canonical specs; absent: none implied
        if self.profile == "step":
            coords.update(R=np.array(s.R, dtype=float), n_major=np.array(s.n_major, dtype=np.int64),
                          n_minor=np.array(s.n_minor, dtype=np.int64))  # fmt: skip
        elif self.profile == "exp":
            coords.update(C=np.array(s.C, dtype=np.int64), rho=np.array(s.rho, dtype=float),
                          onset=np.arange(2, max(self.C_max, 3)))  # onset m: the m smallest classes merge  # fmt: skip
        else:
            coords["counts"] = np.array([name for name, _ in s.counts], dtype=object)
        coords.update(
            k=np.array(s.k, dtype=float),  # float: k = inf is the large-k limit (ds.sel(k=np.inf))
            dim=np.array(s.dim, dtype=np.int64),
            seed=np.array(s.seed, dtype=np.int64),
            class_i=np.arange(self.C_max),
            class_j=np.arange(self.C_max),
        )
        if self.config.theory.rank_dims:
            coords["rank_dim"] = np.array(self.config.theory.rank_dims, dtype=np.int64)
        return coords

    def coords(self) -> dict[str, np.ndarray]:
        """Coordinates of every store dimension (classes: head first, padded to the largest C)."""
        return dict(self._coords)

    def sizes(self, dims: tuple[str, ...]) -> tuple[int, ...]:
        return tuple(len(self._coords[d]) for d in dims)

    def chunks(self, kind: str) -> dict[str, int]:
        """Chunk size along each of the kind's dims."""
        scan = SCAN_AXIS[self.profile]
        ones = {d: 1 for d in ("loss", "remedy", *self.spec.profile_axes)}
        n_scan = len(self._coords[scan])
        if kind == "theory":
            n_k = len(self.spec.k)
            target = self.config.batch.points
            c_scan = min(n_scan, target)
            c_k = min(n_k, max(1, target // c_scan))
            return {**ones, scan: c_scan, "k": c_k}
        if kind == "threshold":
            return {**ones, "k": len(self.spec.k)}
        if kind == "train":
            # one task stacks R values x every seed of one shape (loss, classes, k, dim)
            n_seed = len(self.spec.seed)
            runs = self.config.train.runs_per_batch if self.config.train else 1
            return {**ones, scan: min(n_scan, max(1, runs // n_seed)), "k": 1, "dim": 1, "seed": n_seed}
        raise ValueError(f"unknown task kind {kind!r}")

    def dims(self, kind: str) -> tuple[str, ...]:
        return kind_dims(kind, self.profile, self.spec.remedied)

    def n_batches(self, kind: str) -> int:
        chunks = self.chunks(kind)
        dims = self.dims(kind)
        return math.prod(math.ceil(n / chunks[d]) for d, n in zip(dims, self.sizes(dims), strict=True))

    def batches(self, kind: str) -> Iterator[Batch]:
        """Every batch of a kind, in a stable order."""
        dims = self.dims(kind)
        chunks = self.chunks(kind)
        starts = [range(0, n, chunks[d]) for d, n in zip(dims, self.sizes(dims), strict=True)]
        for index, combo in enumerate(itertools.product(*starts)):
            region = tuple(
                (d, slice(start, min(start + chunks[d], n)))
                for d, start, n in zip(dims, combo, self.sizes(dims), strict=True)
            )
            yield Batch(kind, index, region)

    def work(self, batch: Batch) -> int:
        """Points of a batch that will be computed: all of them, but for training only the runs that
        ``train.select`` picks (the others are marked not selected at once)."""
        if batch.kind != "train":
            return batch.n_points
        return int(self.selected()[batch.selection()].sum())

    def selected(self) -> np.ndarray:
        """(train dims) True for the runs ``train.select`` picks (every run without a selection); read-only."""
        if self._selected is None:
            dims = self.dims("train")
            select = (self.config.train.select if self.config.train else None) or {}
            mask = np.ones(self.sizes(dims), dtype=bool)
            for axis, d in enumerate(dims):
                if d in select:
                    keep = np.isin(self._coords[d], select[d])  # (n_d,)
                    mask &= keep.reshape([-1 if a == axis else 1 for a in range(len(dims))])
            mask.flags.writeable = False
            self._selected = mask
        return self._selected

    def values(self, batch: Batch) -> dict[str, np.ndarray]:
        """Coordinate values covered by a batch, per dim."""
        return {d: self._axis(d)[s] for d, s in batch.region}

    def _axis(self, d: str) -> np.ndarray:
        """The config's own values along ``d`` (k stays int where it is; the coordinates only name count
        vectors), made once: converting an axis per batch made planning quadratic in the grid."""
        if d not in self._axes:
            self._axes[d] = np.asarray([n for n, _ in self.spec.counts] if d == "counts" else getattr(self.spec, d))
        return self._axes[d]

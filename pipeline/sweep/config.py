"""Sweep configuration: YAML in, frozen dataclasses out, every problem reported at once.

``load_config(path, overrides)`` is the only code that reads ``configs/*.yaml``. Overrides are
``key=value`` strings with dotted keys (``grid.k=[1,4]``, ``store=results/x.zarr``); values are
parsed as YAML. Configs are read with ``yaml.safe_load`` and never evaluated.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pipeline.errors import MAX_SHOWN, InputError, shorten
from pipeline.theory.inbatch import POSITIVES
from pipeline.theory.losses import NEGATIVES, PSI_FAMILIES, REDUCTIONS, Loss, parse_loss
from pipeline.theory.problem import check_k
from pipeline.theory.profiles import SWEEP_AXES as PROFILE_AXES
from pipeline.theory.profiles import Counts, Exp, Profile, Step, parse_profile
from pipeline.theory.remedies import parse_remedy
from pipeline.theory.solution import REMEDY_SOLVERS, SOLVERS
from pipeline.train.inputs import ENCODERS

MODELS = ENCODERS
IID_MODELS = ("ufm", "mlp")  # the i.i.d.-negative trainer's (pipeline.train.trainer)
DATASETS = ("gaussian", "digits", "mnist", "mnist1d")  # pipeline.train.data.DATASETS
IID_DATASETS = ("gaussian", "digits")
NEGATIVES_FROM = ("iid", "batch")
SAMPLERS = ("uniform", "balanced")
ESTIMATORS = ("expected", "sampled", "exact")
KERNELS = ("auto", "sparse", "dense")
INITS = ("random", "theory")


MAX_PROBLEMS = 20  # problems a config error lists, the count of the rest after them


class ConfigError(InputError):
    """One or more problems in a config; ``str(err)`` lists them all, one per line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = [shorten(problem, 2 * MAX_SHOWN) for problem in problems]  # values may be huge
        shown = self.problems[:MAX_PROBLEMS] + ([f"... and {len(problems) - MAX_PROBLEMS} more problems"]
                                                if len(problems) > MAX_PROBLEMS else [])  # fmt: skip
        ValueError.__init__(self, "\n".join(shown))


@dataclass(frozen=True)
class GridSpec:
    """Sweep axes; each becomes a dimension of the results store under the same name.

    ``profile`` picks the class-proportion axes (:data:`PROFILE_AXES`): ``step`` (the default) sweeps
    R, n_major, n_minor; ``exp`` sweeps C and rho; ``counts`` sweeps named count vectors (``counts``
    holds (name, counts) pairs, the coordinate is the name).
    """

    loss: tuple[str, ...]
    R: tuple[float, ...] = ()
    n_major: tuple[int, ...] = (2,)
    n_minor: tuple[int, ...] = (2,)
    k: tuple[int | float, ...] = (4,)  # math.inf: the large-k limit
    dim: tuple[int, ...] = (16,)
    seed: tuple[int, ...] = (0,)
    profile: str = "step"
    C: tuple[int, ...] = ()
    rho: tuple[float, ...] = ()
    counts: tuple[tuple[str, tuple[float, ...]], ...] = ()
    remedy: tuple[str, ...] = ("none",)  # canonical remedy specs (pipeline.theory.remedies); none: the paper's loss

    @property
    def remedied(self) -> bool:
        """Whether the grid sweeps remedies: its stores then have a ``remedy`` dim (none implied without)."""
        return self.remedy != ("none",)

    @property
    def profile_axes(self) -> tuple[str, ...]:
        return PROFILE_AXES[self.profile]

    @property
    def theory_axes(self) -> tuple[str, ...]:
        return ("loss", "remedy", *self.profile_axes, "k")

    @property
    def n_points(self) -> int:
        return self.n_theory_points * len(self.dim) * len(self.seed)

    @property
    def n_theory_points(self) -> int:
        return math.prod(len(getattr(self, name)) for name in self.theory_axes)

    def profile_at(self, point: dict[str, Any]) -> Profile:
        """The profile at a grid point (a dict of coordinate values)."""
        if self.profile == "step":
            return Step(point["n_major"], point["n_minor"], point["R"])
        if self.profile == "exp":
            return Exp(point["C"], point["rho"])
        counts = dict(self.counts)[point["counts"]]
        return Counts(counts)

    @property
    def C_max(self) -> int:
        """Classes of the largest profile on the grid (the store's class dims)."""
        if self.profile == "step":
            return max(self.n_major) + max(self.n_minor)
        if self.profile == "exp":
            return max(self.C)
        return max(len(c) for _, c in self.counts)

    def science(self) -> dict[str, Any]:
        """The fields that fix the store: a step grid's are exactly those before profiles existed, and a grid
        without remedies has no ``remedy`` (its stores match those written before remedies)."""
        out = asdict(self)
        if not self.remedied:
            out.pop("remedy")
        other = {name for kind, names in PROFILE_AXES.items() if kind != self.profile for name in names}
        for name in other - set(self.profile_axes):
            out.pop(name)
        if self.profile == "step":
            out.pop("profile")
        return out


@dataclass(frozen=True)
class TheorySpec:
    solver: str = "auto"  # auto | symmetric | full | rank
    negatives: str = "marginal"  # marginal | other
    reduction: str = "sum"  # sum | mean
    # false: no threshold task (R*, cascade onsets); the cascade of a large C costs minutes a (loss, k) and, past
    # the tail's float64 resolution, ends undecided
    thresholds: bool = True
    # embedding dimensions d of rank-d theory (Burer-Monteiro) at every theory point, beside the convex optimum:
    # a store dim rank_dim; empty (the default) adds nothing, and stores written before keep their science
    rank_dims: tuple[int, ...] = ()


@dataclass(frozen=True)
class TrainSpec:
    """Training settings shared by every run of a sweep (see :mod:`pipeline.train.trainer`).

    The defaults bring UFM InfoNCE runs at 4 classes to the theory's geometry (c within 1e-3, also at
    c = 1 above R*) in about a second per run on a CPU.
    """

    model: str = "ufm"  # ufm | mlp
    data: str = "gaussian"  # gaussian | digits (mlp only; ufm has no inputs)
    steps: int = 1500
    lr: float = 0.1  # Adam, cosine decay to lr * lr_final
    lr_final: float = 0.3
    # a short second-moment memory: the minority-minority force is O(p_minor^2), and with the default
    # 0.999 Adam keeps dividing it by the O(p_minor) gradients of the first few hundred steps
    betas: tuple[float, float] = (0.5, 0.9)
    batch_size: int = 256  # anchors per step (rounded down to a multiple of C)
    samples_per_class: int = 2
    hidden: int = 64  # mlp width
    input_dim: int = 32  # gaussian input dimension (digits: 64)
    noise: float = 0.5  # gaussian within-class standard deviation
    device: str = "auto"  # auto: cuda when available, else cpu
    estimator: str = "expected"  # expected | sampled (pipeline.train.trainer) | exact (ufm: pipeline.train.exact_ufm)
    kernel: str = "auto"  # sparse | dense negatives (pipeline.train.objective.contrastive_grad); auto: sparse on CPU
    init: str = "random"  # random | theory: start at the theory's optimal geometry (pipeline.train.trainer)
    runs_per_batch: int = 32  # runs stacked in one task
    select: dict[str, tuple] = field(default_factory=dict)  # train only these values of some axes
    # where negatives come from: iid, k drawn per anchor by the sampling model (pipeline.train.trainer);
    # batch, the other members of a minibatch of k + 2 samples of a subsampled dataset (batch_trainer)
    negatives_from: str = "iid"
    sampler: str = "uniform"  # batch: uniform over the dataset | balanced: a uniform class, then a sample of it
    positives: str = "mean"  # batch: an anchor's pairs averaged over its positives (SupCon) | sum
    n_max: int | None = None  # batch: the head class's training samples; the profile's integer counts set the rest
    n_test: int = 20  # batch: held-out test samples a class (a balanced split)


MAX_POINTS = 2_000_000  # batch.max_points by default


@dataclass(frozen=True)
class BatchSpec:
    points: int = 64  # theory points per task (one store chunk): ~0.2-1 s of work at 3-15 ms a point
    max_points: int = MAX_POINTS  # refuse grids above this many points (a typo guard)


@dataclass(frozen=True)
class ClusterSpec:
    kind: str = "local"  # local, or a profile of cluster/jobqueue.yaml
    n_workers: int | None = None  # None: one per core
    threads_per_worker: int = 1  # solvers and torch run single-threaded per worker
    max_jobs: int = 16  # upper bound of adaptive scaling on a job queue
    queue: str | None = None  # SLURM partition (None: the profile's)
    account: str | None = None  # SLURM account (None: the profile's)
    interface: str | None = None  # network interface of scheduler and workers (None: the profile's)
    profiles: str | None = None  # profiles file (None: cluster/jobqueue.yaml)
    stall_timeout_s: float | None = 600.0  # no batch done this long: restart idle workers (None: never)
    stall_retries: int = 2  # a batch that stalls once more than this is given up (failed; a rerun retries it)


@dataclass(frozen=True)
class SweepConfig:
    name: str
    store: str
    grid: GridSpec
    theory: TheorySpec = field(default_factory=TheorySpec)
    batch: BatchSpec = field(default_factory=BatchSpec)
    cluster: ClusterSpec = field(default_factory=ClusterSpec)
    train: TrainSpec | None = None
    # the registered losses the grid names (pipeline.theory.losses.register_loss), sent to the workers with it
    losses: tuple[Loss, ...] = field(default=(), compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config, as ``validate`` reads it back (stored with every store)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "losses"}
        out = {name: asdict(value) if hasattr(value, "__dataclass_fields__") else value for name, value in out.items()}
        out["grid"] = self.grid.science()  # the profile's axes only
        if out["train"] is not None:
            out["train"] = applicable_train(out["train"])
        if self.grid.profile == "counts":
            out["grid"]["counts"] = {name: list(c) for name, c in self.grid.counts}
        return out

    def to_yaml(self) -> str:
        """The resolved config as YAML (lists for axes), loadable by :func:`load_config`."""
        return yaml.safe_dump(_plain(self.to_dict()), sort_keys=False)

    def science(self) -> dict[str, Any]:
        """The fields that determine the store's contents and layout (compared on resume)."""
        science = {"grid": self.grid.science(), "theory": asdict(self.theory), "batch.points": self.batch.points}
        if self.theory.thresholds:  # added later: at its default, stores written before still match
            science["theory"].pop("thresholds")
        if not self.theory.rank_dims:  # likewise
            science["theory"].pop("rank_dims")
        science["train"] = None if self.train is None else asdict(self.train)
        if self.losses:  # a registered loss's definition: another phi under the same name is another store
            science["losses"] = loss_definitions(self.losses)
        for name in LATER_TRAIN_FIELDS:  # added later: at their defaults, stores written before still match
            if science["train"] is not None and science["train"][name] == getattr(TrainSpec, name):
                science["train"].pop(name)
        return _plain(science)

    def science_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.science(), sort_keys=True).encode()).hexdigest()[:16]


def loss_definitions(losses: tuple[Loss, ...]) -> dict[str, dict[str, str]]:
    """What a reader sees of each registered loss: psi, phi's definition and its fingerprint."""
    psi = {kind: name for name, kind in PSI_FAMILIES.items()}
    return {loss.name: {"psi": psi[loss.psi_kind], "phi": loss.custom.definition,
                        "fingerprint": loss.custom.fingerprint} for loss in losses}  # fmt: skip


LATER_TRAIN_FIELDS = ("init", "negatives_from", "sampler", "positives", "n_max", "n_test")
# the fields only one way of drawing negatives takes (validate refuses the other way's)
BATCH_ONLY_FIELDS = ("sampler", "positives", "n_max", "n_test")
IID_ONLY_FIELDS = ("batch_size", "estimator", "kernel", "samples_per_class")


def applicable_train(train: dict[str, Any]) -> dict[str, Any]:
    """A train section without the fields its ``negatives_from`` does not take: a resolved config (every
    field at its value or default) then validates again, as ``clphase status`` and repairs read it back."""
    drop = IID_ONLY_FIELDS if train.get("negatives_from", TrainSpec.negatives_from) == "batch" else BATCH_ONLY_FIELDS
    return {key: value for key, value in train.items() if key not in drop}


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"  # k = inf: plain JSON and YAML that load_config reads back
    return x


# --- validation --------------------------------------------------------------------------------

_SECTIONS = {"grid": GridSpec, "theory": TheorySpec, "batch": BatchSpec, "cluster": ClusterSpec, "train": TrainSpec}
_TOP = ("name", "store", *_SECTIONS)


def _expand_R(raw: Any, problems: list[str], name: str = "R", cap: int | None = None) -> list[float]:
    """An axis given as a list, or as ``{logspace: [lo, hi, n]}`` (refused before it is made when n > cap)."""
    if isinstance(raw, dict):
        if set(raw) != {"logspace"}:
            problems.append(f"grid.{name}: {raw!r}: expected a list of numbers or {{logspace: [lo, hi, n]}}")
            return []
        spec = raw["logspace"]
        ok = (
            isinstance(spec, list)
            and len(spec) == 3
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in spec)
            and float(spec[2]).is_integer()
            and spec[2] >= 1
        )
        if not ok:
            problems.append(
                f"grid.{name}.logspace: {spec!r}: expected [lo, hi, n] in decades with integer n >= 1, e.g. [0, 4, 17]"
            )
            return []
        if cap is not None and spec[2] > cap:  # checked before 8 n bytes are allocated
            problems.append(f"grid.{name}.logspace: n = {int(spec[2])} points: expected at most batch.max_points = "
                            f"{cap}; shrink it or raise batch.max_points")  # fmt: skip
            return [1.0]  # a stand-in: the axis is reported once
        return [float(x) for x in np.logspace(spec[0], spec[1], int(spec[2]))]
    return raw


def _counts_axis(raw: Any, problems: list[str]) -> tuple:
    """``grid.counts``: a mapping name -> class counts (or proportions) of a dataset."""
    if not isinstance(raw, dict) or not raw:
        problems.append(f"grid.counts: {raw!r}: expected a mapping name -> list of class counts or a preset, "
                        "e.g. {cifar10_lt: [5000, 2997, 1796], cifar100_lt: 'cifar_lt(C=100, rho=100)'}")  # fmt: skip
        return ()
    out = []
    for name, counts in raw.items():
        if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
            problems.append(f"grid.counts: {name!r}: expected a name of letters, digits, '-' and '_'")
            continue
        try:
            if isinstance(counts, str):  # a preset, e.g. cifar_lt(C=100, rho=100): stored as its counts
                profile = parse_profile(counts)
                if not isinstance(profile, Counts):
                    raise InputError("profile", counts, "a counts preset: cifar_lt(...), pareto(...), counts_file(...)")
                out.append((name, profile.counts))
                continue
            out.append((name, Counts(tuple(counts) if isinstance(counts, list) else (counts,)).counts))
        except InputError as err:
            problems.append(f"grid.counts.{name}: {err.field}: {err.value!r}: expected {err.allowed}")
    return tuple(out)


INT_MAX = 2**63 - 1  # the largest int64: integer axes are stored as int64 coordinates


def _axis(name: str, raw: Any, problems: list[str], kind: type, minimum: float) -> tuple:
    if raw is None or (isinstance(raw, list) and not raw):
        problems.append(f"grid.{name}: {raw!r}: expected a non-empty list")
        return ()
    values = raw if isinstance(raw, list) else [raw]
    out = []
    for v in values:
        if kind is check_k:  # the number of negatives: integers >= 1 or inf
            try:
                out.append(check_k(v))
            except InputError as err:
                problems.append(f"grid.{name}: {v!r}: expected {err.allowed}")
            continue
        if kind is int:  # the store keeps int64 coordinates
            good = isinstance(v, int) and not isinstance(v, bool) and minimum <= v <= INT_MAX
            allowed = f"integers from {int(minimum)} to {INT_MAX}"
        else:
            good = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= minimum
            allowed = f"finite numbers >= {minimum:g}"
        if not good:
            problems.append(f"grid.{name}: {v!r}: expected {allowed}")
            continue
        out.append(kind(v))
    if len(set(out)) != len(out):
        dup = sorted({x for x in out if out.count(x) > 1})
        problems.append(f"grid.{name}: duplicate values {dup}: expected each value once")
    return tuple(sorted(out))


def _remedy_axis(raw: Any, losses: list[str], problems: list[str]) -> tuple[str, ...]:
    """``grid.remedy``: remedy specs (pipeline.theory.remedies), stored as their canonical strings; each must
    apply to every loss of the grid (class_tau needs a temperature, any remedy a smooth loss)."""
    values = raw if isinstance(raw, list) else [raw]
    if not values:
        problems.append(f"grid.remedy: {raw!r}: expected a non-empty list of remedies, e.g. [none, reweight(gamma=1)]")
        return ("none",)
    out = []
    for value in values:
        try:
            remedy = parse_remedy(value if value is not None else "null")
        except InputError as err:
            problems.append(f"grid.remedy: {value!r}: expected {err.allowed}")
            continue
        for loss_id in losses if not remedy.is_none else ():
            loss = parse_loss(loss_id)
            try:
                remedy.check_loss(loss)
            except InputError as err:
                problems.append(f"grid.remedy: {value!r}: expected {err.allowed}, or drop {loss_id} from grid.loss")
                break
            if not loss.smooth:
                problems.append(f"grid.remedy: {value!r}: remedies are solved for smooth losses (infonce, sumexp, "
                                f"squared_hinge); expected grid.loss without {loss_id}, or remedy none")  # fmt: skip
                break
        out.append(remedy.spec)
    if len(set(out)) != len(out):
        problems.append(f"grid.remedy: duplicate values {sorted({x for x in out if out.count(x) > 1})}: expected "
                        "each remedy once (specs are compared in their canonical form)")  # fmt: skip
    return tuple(out) or ("none",)


def _section(name: str, raw: Any, problems: list[str]) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append(f"{name}: {raw!r}: expected a mapping with keys {', '.join(_keys(name))}")
        return {}
    unknown = sorted(set(raw) - set(_keys(name)), key=str)
    for key in unknown:
        guess = difflib.get_close_matches(str(key), _keys(name), n=1)
        hint = f"did you mean {guess[0]}? " if guess else ""
        problems.append(f"{name}.{key}: unknown key; {hint}valid keys: {', '.join(_keys(name))}")
    return {k: v for k, v in raw.items() if k not in unknown}


def _keys(section: str) -> list[str]:
    return [f.name for f in fields(_SECTIONS[section])]


def _int_field(where: str, value: Any, minimum: int, problems: list[str], optional: bool = False) -> Any:
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        problems.append(f"{where}: {value!r}: expected an integer >= {minimum}" + (" or null" if optional else ""))
        return minimum
    return value


def _choice(where: str, value: Any, allowed: tuple[str, ...], problems: list[str]) -> str:
    if value not in allowed:
        problems.append(f"{where}: {value!r}: expected one of {', '.join(allowed)}")
        return allowed[0]
    return value


def validate(raw: Any) -> SweepConfig:
    """Check a parsed YAML document and build the config; raise ConfigError listing every problem."""
    problems: list[str] = []
    if not isinstance(raw, dict):
        raise ConfigError([f"config: {type(raw).__name__} document: expected a mapping with keys {', '.join(_TOP)}"])
    misspelt = False  # an unknown key standing for a missing section: the rest would only cascade
    for key in sorted(set(raw) - set(_TOP), key=str):
        guess = difflib.get_close_matches(str(key), _TOP, n=1)
        hint = f"did you mean {guess[0]}? " if guess else ""
        problems.append(f"{key}: unknown key; {hint}valid keys: {', '.join(_TOP)}")
        misspelt |= bool(guess) and guess[0] not in raw
    if misspelt:
        raise ConfigError(problems)
    name = raw.get("name", "sweep")
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        problems.append(f"name: {name!r}: expected letters, digits, '-' and '_'")
    store = raw.get("store")
    if not isinstance(store, str) or not store.strip():
        problems.append(f"store: {store!r}: expected a path such as results/{name}.zarr")
        store = ""
    elif not store.isprintable():  # a newline or tab: every message and job script would be mangled
        problems.append(f"store: {store!r}: expected a path without control characters (newline, tab)")
        store = ""
    early = raw.get("batch")  # the cap, before any axis is made (validated with its section below)
    cap = early.get("max_points", MAX_POINTS) if isinstance(early, dict) else MAX_POINTS
    cap = cap if isinstance(cap, int) and not isinstance(cap, bool) and cap >= 1 else MAX_POINTS

    grid_raw = _section("grid", raw.get("grid"), problems)
    profile = grid_raw.get("profile", "step")
    if profile not in PROFILE_AXES:
        problems.append(f"grid.profile: {profile!r}: expected one of {', '.join(PROFILE_AXES)}")
        profile = "step"
    own = PROFILE_AXES[profile]
    for kind_, names in PROFILE_AXES.items():
        for axis in names:
            if axis in grid_raw and axis not in own:
                problems.append(f"grid.{axis}: an axis of profile {kind_}, but grid.profile is {profile} (its axes: "
                                f"{', '.join(own)}); set grid.profile: {kind_} or remove grid.{axis}")  # fmt: skip
    required = ("loss", "R") if profile == "step" else ("loss", *own)
    for key in required:
        if key not in grid_raw:
            problems.append(f"grid.{key}: missing: expected a non-empty " + ("mapping name -> class counts"
                            if key == "counts" else "list"))  # fmt: skip
    losses = []
    loss_values = grid_raw.get("loss", [])
    for loss_id in loss_values if isinstance(loss_values, list) else [loss_values]:
        try:
            losses.append(parse_loss(loss_id).id)
        except InputError as err:
            problems.append(f"grid.loss: {loss_id!r}: expected {err.allowed}")
    if not losses and "loss" in grid_raw and not problems:
        problems.append("grid.loss: []: expected a non-empty list")
    if len(set(losses)) != len(losses):
        problems.append(f"grid.loss: duplicate values {sorted({x for x in losses if losses.count(x) > 1})}")
    axes: dict[str, Any] = {"loss": tuple(losses)}
    if "remedy" in grid_raw:
        axes["remedy"] = _remedy_axis(grid_raw["remedy"], losses, problems)
    if profile != "step":
        axes["profile"] = profile
    if "R" in grid_raw and profile == "step":
        axes["R"] = _axis("R", _expand_R(grid_raw["R"], problems, cap=cap), problems, float, 1.0)
    if "rho" in grid_raw and profile == "exp":
        axes["rho"] = _axis("rho", _expand_R(grid_raw["rho"], problems, "rho", cap), problems, float, 1.0)
    if "counts" in grid_raw and profile == "counts":
        axes["counts"] = _counts_axis(grid_raw["counts"], problems)
    int_axes = [("dim", 1), ("seed", 0)] + ([("n_major", 1), ("n_minor", 1)] if profile == "step" else [])
    int_axes += [("C", 2)] if profile == "exp" else []
    for name_, minimum in int_axes:
        if name_ in grid_raw:
            axes[name_] = _axis(name_, grid_raw[name_], problems, int, minimum)
    if "k" in grid_raw:
        axes["k"] = _axis("k", grid_raw["k"], problems, check_k, 1)

    theory_raw = _section("theory", raw.get("theory"), problems)
    theory = TheorySpec(
        solver=_choice("theory.solver", theory_raw.get("solver", "auto"), SOLVERS, problems),
        negatives=_choice("theory.negatives", theory_raw.get("negatives", "marginal"), NEGATIVES, problems),
        reduction=_choice("theory.reduction", theory_raw.get("reduction", "sum"), REDUCTIONS, problems),
        thresholds=_flag("theory.thresholds", theory_raw.get("thresholds", True), problems),
        rank_dims=_rank_dims(theory_raw.get("rank_dims", []), problems),
    )
    if axes.get("remedy", ("none",)) != ("none",) and theory.solver not in REMEDY_SOLVERS:
        problems.append(f"theory.solver: {theory.solver!r}: grid.remedy is solved by the group reduction, the "
                        f"oblique or the rank solver; expected one of {', '.join(REMEDY_SOLVERS)}")  # fmt: skip
    batch_raw = _section("batch", raw.get("batch"), problems)
    batch = BatchSpec(
        points=_int_field("batch.points", batch_raw.get("points", 64), 1, problems),
        max_points=_int_field("batch.max_points", batch_raw.get("max_points", MAX_POINTS), 1, problems),
    )
    cluster_raw = _section("cluster", raw.get("cluster"), problems)
    kind = cluster_raw.get("kind", "local")
    if not isinstance(kind, str) or not kind.replace("-", "").replace("_", "").isalnum():
        problems.append(f"cluster.kind: {kind!r}: expected 'local' or a profile name of cluster/jobqueue.yaml")
    cluster = ClusterSpec(
        kind=kind if isinstance(kind, str) else "local",
        n_workers=_int_field("cluster.n_workers", cluster_raw.get("n_workers"), 1, problems, optional=True),
        threads_per_worker=_int_field(
            "cluster.threads_per_worker", cluster_raw.get("threads_per_worker", 1), 1, problems
        ),
        max_jobs=_int_field("cluster.max_jobs", cluster_raw.get("max_jobs", 16), 1, problems),
        queue=_optional_str("cluster.queue", cluster_raw.get("queue"), problems),
        account=_optional_str("cluster.account", cluster_raw.get("account"), problems),
        interface=_optional_str("cluster.interface", cluster_raw.get("interface"), problems),
        profiles=_optional_str("cluster.profiles", cluster_raw.get("profiles"), problems),
        stall_timeout_s=_positive_number(
            "cluster.stall_timeout_s",
            cluster_raw.get("stall_timeout_s", ClusterSpec.stall_timeout_s),
            problems,
            optional=True,
        ),
        stall_retries=_int_field(
            "cluster.stall_retries", cluster_raw.get("stall_retries", ClusterSpec.stall_retries), 0, problems
        ),
    )
    train = None
    if raw.get("train") is not None:
        train = _train(_section("train", raw.get("train"), problems), axes, problems)
        _check_remedy_training(axes.get("remedy", ("none",)), train, problems)
    if problems:
        raise ConfigError(problems)
    grid = GridSpec(**axes)
    if train is not None and train.negatives_from == "batch":
        _check_batch_data(grid, theory, train, problems)
        if problems:
            raise ConfigError(problems)
    if grid.n_points > batch.max_points:
        raise ConfigError(
            [
                f"grid: {grid.n_points} points: expected at most batch.max_points = {batch.max_points}; "
                "shrink an axis or raise batch.max_points"
            ]
        )
    _check_gram_memory(grid, batch)
    losses = tuple(loss for loss in map(parse_loss, grid.loss) if loss.custom is not None)
    return SweepConfig(name=name, store=store, grid=grid, theory=theory, batch=batch, cluster=cluster, train=train,
                       losses=losses)  # fmt: skip


GRAM_MEMORY_SHARE = 0.25  # of this machine's memory, the most one batch's Gram matrices may take


def physical_memory() -> int:
    """Bytes of memory of this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _check_gram_memory(grid: GridSpec, batch: BatchSpec) -> None:
    """Refuse a class count whose Gram matrices would not fit: a batch holds up to ``batch.points`` C x C
    float64 matrices (C the largest class count, to which every Gram is padded)."""
    points = min(batch.points, grid.n_theory_points)
    need = points * grid.C_max**2 * 8
    budget = GRAM_MEMORY_SHARE * physical_memory()
    if need > budget:
        field = {"step": "grid.n_major / grid.n_minor", "exp": "grid.C", "counts": "grid.counts"}[grid.profile]
        fit = int(math.sqrt(budget / (8 * points)))
        raise ConfigError([f"{field}: {grid.C_max} classes: a batch of {points} points (batch.points) holds "
                           f"{need / 2**30:.3g} GiB of C x C Gram matrices, more than {GRAM_MEMORY_SHARE:.0%} of this "
                           f"machine's {physical_memory() / 2**30:.0f} GiB; expected at most {fit} classes at "
                           "this batch.points (or lower batch.points)"])  # fmt: skip


def _rank_dims(raw: Any, problems: list[str]) -> tuple[int, ...]:
    """theory.rank_dims: distinct integers d >= 1, kept in increasing order ([] or absent: none)."""
    values = raw if isinstance(raw, list) else [raw]
    good = [v for v in values if isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= INT_MAX]
    if len(good) != len(values):
        bad = next(v for v in values if v not in good or isinstance(v, bool))
        problems.append(f"theory.rank_dims: {bad!r}: expected a list of embedding dimensions, integers from 1 to "
                        f"{INT_MAX} (e.g. [2, 8, 64]), or [] for none")  # fmt: skip
        return ()
    if len(set(good)) != len(good):
        problems.append(f"theory.rank_dims: duplicate values {sorted({v for v in good if good.count(v) > 1})}: "
                        "expected each value once")  # fmt: skip
        return ()
    return tuple(sorted(good))


def _flag(where: str, value: Any, problems: list[str]) -> bool:
    if not isinstance(value, bool):
        problems.append(f"{where}: {value!r}: expected true or false")
        return True
    return value


def _optional_str(where: str, value: Any, problems: list[str]) -> str | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value or "\n" in value or "\x00" in value:
        problems.append(f"{where}: {value!r}: expected a one-line string or null")
        return None
    return value


def _positive_number(where: str, value: Any, problems: list[str], optional: bool = False) -> Any:
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        problems.append(f"{where}: {value!r}: expected a positive number" + (" or null" if optional else ""))
        return 1.0
    return float(value)


def _train(raw: dict[str, Any], axes: dict[str, tuple], problems: list[str]) -> TrainSpec:
    """Validate the ``train:`` section."""
    d = TrainSpec()
    betas = raw.get("betas", list(d.betas))
    if not (
        isinstance(betas, list) and len(betas) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas)
    ):
        problems.append(f"train.betas: {betas!r}: expected [beta1, beta2] in [0, 1)")
        betas = list(d.betas)
    select = raw.get("select", {}) or {}
    chosen: dict[str, tuple] = {}
    if not isinstance(select, dict):
        problems.append(f"train.select: {select!r}: expected a mapping axis -> list of grid values")
        select = {}
    for axis, values in select.items():
        if axis not in axes:
            problems.append(f"train.select.{axis}: unknown axis; valid axes: {', '.join(axes)}")
            continue
        values = values if isinstance(values, list) else [values]
        if axis == "k":  # 'inf' (a string in YAML) names the grid's k = inf
            values = [math.inf if isinstance(v, str) and v.strip().lower() in ("inf", ".inf") else v for v in values]
        if axis == "remedy":  # a remedy as the grid stores it: its canonical spec
            values = [_canonical_remedy(v) for v in values]
        grid_values = axes[axis]
        picked = []
        for v in values:
            match = [g for g in grid_values if g == v or (isinstance(g, float) and isinstance(v, (int, float))
                                                            and math.isclose(g, v, rel_tol=1e-9))]  # fmt: skip
            if not match:
                problems.append(f"train.select.{axis}: {v!r}: expected values of grid.{axis}")
            picked += match
        chosen[axis] = tuple(picked)
    device = raw.get("device", d.device)
    if not isinstance(device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        problems.append(f"train.device: {device!r}: expected auto, cpu, cuda or cuda:N")
        device = d.device
    estimator = _choice("train.estimator", raw.get("estimator", d.estimator), ESTIMATORS, problems)
    trained_k = chosen.get("k", axes.get("k", GridSpec.k))
    model = raw.get("model", d.model)
    if estimator == "exact" and model != "ufm":
        problems.append(f"train.estimator: 'exact': the full-batch exact minimisation is for free features; "
                        f"expected train.model: ufm (got {model!r}) or estimator 'expected'")  # fmt: skip
    if estimator == "sampled" and any(math.isinf(k) for k in trained_k):
        problems.append(
            "train.estimator: 'sampled': cannot draw k = inf negatives; expected 'expected' (the k = inf limit "
            "in closed form) or a train.select.k without inf"
        )
    init = _choice("train.init", raw.get("init", d.init), INITS, problems)
    if estimator == "exact" and init == "theory":
        problems.append("train.init: 'theory': the exact minimisation starts from random features, to find "
                        "collapse rather than assume it; expected init 'random' or estimator 'expected'")  # fmt: skip
    negatives_from = _choice("train.negatives_from", raw.get("negatives_from", d.negatives_from), NEGATIVES_FROM,
                             problems)  # fmt: skip
    model = _choice("train.model", model, MODELS, problems)
    data = _choice("train.data", raw.get("data", d.data), DATASETS, problems)
    n_max = _int_field("train.n_max", raw.get("n_max", d.n_max), 2, problems, optional=True)
    if negatives_from == "batch":
        _batch_fields(raw, model, trained_k, n_max, problems)
    else:
        for key in ("sampler", "positives", "n_max", "n_test"):
            if key in raw:
                problems.append(f"train.{key}: applies to in-batch training; set train.negatives_from: batch "
                                f"or remove train.{key}")  # fmt: skip
        if model not in IID_MODELS:
            problems.append(f"train.model: {model!r}: encoders other than {' and '.join(IID_MODELS)} train with "
                            "in-batch negatives; set train.negatives_from: batch")  # fmt: skip
        if data not in IID_DATASETS:
            problems.append(f"train.data: {data!r}: subsampled datasets train with in-batch negatives; set train."
                            f"negatives_from: batch and train.n_max, or use {' or '.join(IID_DATASETS)}")  # fmt: skip
    return TrainSpec(
        model=model,
        data=data,
        steps=_int_field("train.steps", raw.get("steps", d.steps), 1, problems),
        lr=_positive_number("train.lr", raw.get("lr", d.lr), problems),
        lr_final=_positive_number("train.lr_final", raw.get("lr_final", d.lr_final), problems),
        betas=tuple(float(b) for b in betas),
        batch_size=_int_field("train.batch_size", raw.get("batch_size", d.batch_size), 1, problems),
        samples_per_class=_int_field(
            "train.samples_per_class", raw.get("samples_per_class", d.samples_per_class), 1, problems
        ),
        hidden=_int_field("train.hidden", raw.get("hidden", d.hidden), 1, problems),
        input_dim=_int_field("train.input_dim", raw.get("input_dim", d.input_dim), 1, problems),
        noise=_positive_number("train.noise", raw.get("noise", d.noise), problems),
        device=device,
        estimator=estimator,
        kernel=_choice("train.kernel", raw.get("kernel", d.kernel), KERNELS, problems),
        init=init,
        runs_per_batch=_int_field("train.runs_per_batch", raw.get("runs_per_batch", d.runs_per_batch), 1, problems),
        select=chosen,
        negatives_from=negatives_from,
        sampler=_choice("train.sampler", raw.get("sampler", d.sampler), SAMPLERS, problems),
        positives=_choice("train.positives", raw.get("positives", d.positives), POSITIVES, problems),
        n_max=n_max,
        n_test=_int_field("train.n_test", raw.get("n_test", d.n_test), 1, problems),
    )


def _canonical_remedy(value: Any) -> Any:
    """A remedy spec in canonical form, or the value as given where it is not one (reported as not on the grid)."""
    try:
        return parse_remedy(value).spec if isinstance(value, str) else value
    except InputError:
        return value


def _check_remedy_training(remedies: tuple[str, ...], train: TrainSpec, problems: list[str]) -> None:
    """Training applies a remedy with i.i.d. negatives (anchor weights, the negatives' distribution, shifts and
    temperatures per negative class, in every estimator); in-batch training applies reweighting, logit adjustment
    and class temperatures (pipeline.train.batch_loss.BatchRemedy), not balanced negatives or ldam."""
    chosen = [parse_remedy(spec) for spec in train.select.get("remedy", remedies)]
    if all(remedy.is_none for remedy in chosen):
        return
    if train.negatives_from != "batch":
        return
    for remedy in chosen:  # in-batch negatives are the batch's members, and the positive's own term stays 1
        if remedy.balanced_negatives or (remedy.shift is not None and remedy.shift[0] == "ldam"):
            what = "balanced_negatives" if remedy.balanced_negatives else "ldam"
            problems.append(f"train.negatives_from: 'batch': {remedy.spec!r}: in-batch training applies reweight, "
                            f"logit_adjust and class_tau, not {what}; expected 'iid', or a train.select.remedy "
                            f"without it")  # fmt: skip


def _batch_fields(raw: dict[str, Any], model: str, trained_k: tuple, n_max: int | None, problems: list[str]) -> None:
    """The fields that in-batch training (``negatives_from: batch``) refuses or requires."""
    if "batch_size" in raw:
        problems.append(f"train.batch_size: {raw['batch_size']!r}: with train.negatives_from: batch a batch holds "
                        "k + 2 samples (k negatives an anchor-positive pair); remove train.batch_size")  # fmt: skip
    for key, why in (("estimator", "the expectation over i.i.d. negatives"), ("kernel", "i.i.d. negatives' kernels"),
                     ("samples_per_class", "equal classes; the profile and n_max set the counts")):  # fmt: skip
        if key in raw:
            problems.append(f"train.{key}: applies to train.negatives_from: iid ({why}); remove it")
    if raw.get("init", "random") != "random":
        problems.append(f"train.init: {raw['init']!r}: in-batch training starts from random encoders; "
                        "expected 'random'")
    if n_max is None:
        problems.append("train.n_max: missing: in-batch training subsamples the dataset to the profile; expected the "
                        "head class's training samples, an integer >= 2 (e.g. 500)")  # fmt: skip
    for k in trained_k:
        if math.isinf(k):
            problems.append("grid.k: inf: a minibatch holds k + 2 samples, so in-batch training needs a finite k; "
                            "expected a train.select.k without inf")  # fmt: skip


def _check_batch_data(grid: GridSpec, theory: TheorySpec, train: TrainSpec, problems: list[str]) -> None:
    """Every trained profile on the grid subsampled at train.n_max: each class keeps >= 2 samples, the
    dataset has the classes and samples, the encoder takes its items, a batch of k + 2 fits the data."""
    from pipeline.train.data import check_dataset, dataset_info
    from pipeline.train.inputs import input_mismatch

    if theory.negatives != "marginal":
        problems.append(f"theory.negatives: {theory.negatives!r}: in-batch negatives include the anchor's class; "
                        "expected 'marginal' with train.negatives_from: batch")  # fmt: skip
    axes = {name: train.select.get(name, getattr(grid, name)) for name in grid.profile_axes}
    if "counts" in axes:  # the axis's values are (name, counts) pairs; a point names its counts
        axes["counts"] = tuple(name for name, _ in axes["counts"])
    counts = []
    for values in itertools.product(*axes.values()):
        profile = grid.profile_at(dict(zip(axes, values, strict=True)))
        try:
            counts.append(profile.integer_counts(train.n_max))
        except InputError as err:
            problems.append(f"{err.field}: {err.value!r}: expected {err.allowed}")
            return
    if not counts:
        return
    largest = max(int(c.max()) for c in counts)  # integer counts(...) are taken as given, beyond n_max
    try:
        check_dataset(train.data, max(c.size for c in counts), largest, train.n_test)
    except InputError as err:
        field = err.field if largest == train.n_max or err.field != "train.n_max" else "grid.counts"
        value = err.value if field == err.field else f"a class of {largest} training samples"
        problems.append(f"{field}: {value!r}: expected {err.allowed}")
        return
    shape = dataset_info(train.data).shape(train.input_dim)
    if train.model != "ufm" and (why := input_mismatch(train.model, shape)) is not None:
        problems.append(f"train.model: {train.model!r}: {why} ({train.data}); choose an encoder for them")
    smallest = min(int(c.sum()) for c in counts)
    k_max = max(train.select.get("k", grid.k), default=None)
    if k_max is not None and k_max + 2 > smallest:
        problems.append(f"grid.k: {k_max}: a batch of k + 2 = {k_max + 2} samples does not fit a training set of "
                        f"{smallest}; expected k <= {smallest - 2} or a larger train.n_max")  # fmt: skip


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted keys from ``key=value`` strings (values parsed as YAML)."""
    problems = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            problems.append(f"override {item!r}: expected key=value, e.g. grid.k=[1,4]")
            continue
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as err:
            problems.append(f"override {key}: {value!r} is not valid YAML ({err.__class__.__name__})")
            continue
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[leaf] = parsed
    if problems:
        raise ConfigError(problems)
    return raw


MAX_CONFIG_BYTES = 1 << 20  # a sweep config is a few KB


class _RefusedYamlError(yaml.YAMLError):
    """Valid YAML that a sweep config refuses: a key given twice, an alias."""


class _StrictLoader(yaml.SafeLoader):
    """yaml's SafeLoader, refusing what a sweep config never needs and a typo or an attack would use: a key
    given twice in one mapping (a second ``grid:`` replaced the first), and aliases (``*name``), whose
    expansion turns a 1 KB file into gigabytes (the "billion laughs")."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                lines = f"lines {seen[key]} and {key_node.start_mark.line + 1}"
                raise _RefusedYamlError(f"key {key!r} given twice ({lines}); expected each key once")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise _RefusedYamlError(f"an alias at line {mark.line + 1}: aliases (*name) are not allowed in a sweep "
                                    "config; write the values out")  # fmt: skip
        return super().compose_node(parent, index)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SweepConfig:
    """Read, override and validate a sweep config.

    Raises
    ------
    ConfigError
        Unreadable file, YAML syntax error, or any invalid field (all reported together).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)  # bounded: /dev/zero is not a config
    except OSError as err:
        raise ConfigError([f"config: {str(path)!r}: cannot be read ({err.strerror}); expected a YAML file"]) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError([f"config: {str(path)!r}: larger than {MAX_CONFIG_BYTES // 1024} KiB; expected a YAML sweep "
                           "config (a few KB)"])  # fmt: skip
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ConfigError([f"config: {str(path)!r}: not UTF-8 text (byte {data[err.start]:#04x} at line {line}); "
                           "expected a YAML file saved as UTF-8"]) from None  # fmt: skip
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: no Python objects
    except _RefusedYamlError as err:
        raise ConfigError([f"config: {str(path)!r}: {err}"]) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError([f"config: {str(path)!r}: YAML syntax error{where}: {problem}"]) from None
    if raw is None:
        raw = {}
    if isinstance(raw, dict):
        raw = apply_overrides(raw, list(overrides))
    return validate(raw)


def diff_science(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted names of the fields that differ between two ``SweepConfig.science()`` dicts."""
    out = []
    for key in sorted(set(stored) | set(current)):
        a, b = stored.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key}.{sub}" for sub in diff_science(a, b)]
        elif a != b:
            out.append(key)
    return out

"""Imbalance profiles: the class proportions of a theory point, as one concept with one home.

A profile gives the proportions p (head first), its groups of equal proportion, its sweep axes and
its class labels. Three kinds, each written the way the command line and the configs spell it:

- ``step(K_A=2, K_B=2, R=100)``: K_A majority classes of proportion R p_minor, then K_B minority
  classes of proportion p_minor (the paper's two-group setting; the default).
- ``exp(C=10, rho=100)``: the long tail of CIFAR-10/100-LT, p_c proportional to rho^(-c / (C - 1)),
  c = 0..C-1, so rho = p_0 / p_{C-1}. ``rho`` may be left out where a command scans it (thresholds).
- ``counts(5000, 2997, 1796)`` or ``counts(cat=5000, dog=2997)``: measured class counts (or
  proportions) of a dataset, kept in the order given; keywords name the classes.

Presets give the counts of the long-tail benchmarks, as counts profiles that keep the preset's spec:

- ``cifar_lt(C=10, rho=100, n_max=5000)``: CIFAR-10/100-LT's integer counts, floor(n_max rho^(-c / (C - 1)))
  as its generator computes them (n_max defaults to 5000 for C = 10 and 500 for C = 100);
- ``pareto(C=1000, alpha=6, n_max=1280, n_min=5, seed=0)``: ImageNet-LT's shape: C draws of a Pareto(alpha)
  variable (numpy's ``pareto``, seeded), sorted head first and mapped affinely onto [n_min, n_max], floored;
- ``counts_file('counts.txt')`` or ``counts_file('sizes.csv', column='n')``: measured counts, one a line, or a
  column of a CSV file (by header name or 0-based index).

Examples
--------
>>> parse_profile("exp(C=3, rho=4)").proportions().round(4).tolist()
[0.5714, 0.2857, 0.1429]
>>> parse_profile("step(K_A=1, K_B=1, R=3)").spec
'step(K_A=1, K_B=1, R=3)'
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from pipeline.errors import InputError

PROFILE_KINDS: tuple[str, ...] = ("step", "exp", "counts")
# each profile's axes in a sweep (store dimensions, in order): step keeps the names it had before
# profiles existed (n_major = K_A, n_minor = K_B); counts sweeps named count vectors
SWEEP_AXES: dict[str, tuple[str, ...]] = {"step": ("R", "n_major", "n_minor"), "exp": ("C", "rho"),
                                          "counts": ("counts",)}  # fmt: skip
# the sweep axis theory chunks run along, and the one a threshold scans (counts: none to scan)
SCAN_AXIS: dict[str, str] = {"step": "R", "exp": "rho", "counts": "counts"}
SPEC_HELP = ("step(K_A=2, K_B=2, R=100), exp(C=10, rho=100), counts(5000, 2997, ...), or a preset: "
             "cifar_lt(C=10, rho=100), pareto(C=1000, alpha=6, n_max=1280, n_min=5), counts_file('counts.txt')")


def _number(field: str, value: Any, allowed: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(field, value, allowed)
    value = float(value)
    if not math.isfinite(value):
        raise InputError(field, value, allowed)
    return value


def _integer(field: str, value: Any, minimum: int) -> int:
    allowed = f"an integer >= {minimum}"
    number = _number(field, value, allowed)
    if not number.is_integer() or number < minimum:
        raise InputError(field, value, allowed)
    return int(number)


def _ratio(field: str, value: Any, meaning: str) -> float:
    """An imbalance ratio: a finite number >= 1."""
    allowed = f"a finite number >= 1 ({meaning})"
    number = _number(field, value, allowed)
    if number < 1:
        raise InputError(field, value, allowed)
    return number


def _fmt(x: float) -> str:
    return f"{x:g}" if float(x).is_integer() or abs(x) >= 1e-3 else f"{x:.6g}"


MIN_CLASS_COUNT = 2  # the fewest training samples a class may keep (an anchor and a positive)


def _floor(x: float) -> int:
    """floor(x), forgiving float rounding just below an integer (n_max / 1.1 = 9.999... counts as 10)."""
    return math.floor(x * (1 + 1e-9))


def _checked_counts(profile: Profile, n_max: Any, count: Callable[[int], list[int]]) -> np.ndarray:
    """``count(n_max)`` as int64 (C,), or an :class:`InputError` naming the class left with fewer than
    :data:`MIN_CLASS_COUNT` samples and the smallest n_max that works (``count`` is nondecreasing in n_max)."""
    n_max = _integer("train.n_max", n_max, MIN_CLASS_COUNT)
    counts = np.array(count(n_max), dtype=np.int64)  # (C,)
    if counts.min() >= MIN_CLASS_COUNT:
        return counts
    c = len(counts) - 1 - int(np.argmin(counts[::-1]))  # the fewest samples; of ties, the one nearest the tail
    lo, hi = n_max, 2 * n_max  # count(lo) fails; double hi until it works, then bisect
    while min(count(hi)) < MIN_CLASS_COUNT:
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if min(count(mid)) >= MIN_CLASS_COUNT else (mid, hi)
    label = profile.labels()[c]
    name = f"class {c}" if label == f"class {c}" else f"class {c} ({label})"
    fix = (f"an integer >= {hi}: at n_max={n_max}, {name} of {profile.spec} would keep {counts[c]} training "
           f"sample(s), and every class needs at least {MIN_CLASS_COUNT}")  # fmt: skip
    raise InputError("train.n_max", n_max, fix)


class Profile:
    """Base of the profiles: proportions, groups, sweep axes and labels."""

    kind: ClassVar[str]
    C: int  # number of classes

    def proportions(self) -> np.ndarray:
        """(C,) class proportions summing to 1, in the profile's class order."""
        raise NotImplementedError

    @property
    def axes(self) -> dict[str, Any]:
        """The profile's sweep axes and their values at this profile (store dimensions)."""
        raise NotImplementedError

    @property
    def spec(self) -> str:
        """The profile as the command line spells it (parses back to an equal profile)."""
        args = ", ".join(f"{name}={_fmt(value) if isinstance(value, float) else value}"
                         for name, value in self.axes.items())  # fmt: skip
        return f"{self.kind}({args})"

    def labels(self) -> list[str]:
        """One name per class."""
        return [f"class {c}" for c in range(self.C)]

    def two_groups(self) -> tuple[int, int, float] | None:
        """(K_A, K_B, R) where the profile is a majority block then a minority block, else None."""
        return None

    def __str__(self) -> str:
        return self.spec


@dataclass(frozen=True)
class Step(Profile):
    """K_A classes of proportion R p_minor followed by K_B classes of proportion p_minor."""

    K_A: int
    K_B: int
    R: float | None = None
    kind: ClassVar[str] = "step"

    def __post_init__(self) -> None:
        object.__setattr__(self, "K_A", _integer("K_A", self.K_A, 1))
        object.__setattr__(self, "K_B", _integer("K_B", self.K_B, 1))
        if self.R is not None:
            object.__setattr__(self, "R", _ratio("R", self.R, "R = p_major / p_minor"))

    @property
    def C(self) -> int:
        return self.K_A + self.K_B

    def proportions(self) -> np.ndarray:
        if self.R is None:
            raise InputError("profile", self.spec, f"a value of R, e.g. step(K_A={self.K_A}, K_B={self.K_B}, R=100)")
        p_minor = 1.0 / (self.K_A * self.R + self.K_B)
        return np.array([self.R * p_minor] * self.K_A + [p_minor] * self.K_B)  # (C,)

    def integer_counts(self, n_max: int) -> np.ndarray:
        """(C,) int64 training counts: ``n_max`` for each majority class, floor(n_max / R) for each minority class.

        Raises
        ------
        InputError
            ``train.n_max`` where a minority class would keep fewer than 2 samples (names the smallest n_max).
        """
        if self.R is None:
            raise InputError("profile", self.spec, f"a value of R, e.g. step(K_A={self.K_A}, K_B={self.K_B}, R=100)")
        R = self.R
        return _checked_counts(self, n_max, lambda n: [n] * self.K_A + [_floor(n / R)] * self.K_B)

    @property
    def axes(self) -> dict[str, Any]:
        axes = {"K_A": self.K_A, "K_B": self.K_B}
        return axes if self.R is None else {**axes, "R": self.R}

    def labels(self) -> list[str]:
        return [f"A{i}" for i in range(self.K_A)] + [f"B{i}" for i in range(self.K_B)]

    def two_groups(self) -> tuple[int, int, float] | None:
        return None if self.R is None else (self.K_A, self.K_B, self.R)


@dataclass(frozen=True)
class Exp(Profile):
    """The long tail p_c proportional to rho^(-c / (C - 1)), head first; rho = p_0 / p_{C-1}."""

    C: int
    rho: float | None = None
    kind: ClassVar[str] = "exp"

    def __post_init__(self) -> None:
        object.__setattr__(self, "C", _integer("C", self.C, 2))
        if self.rho is not None:
            object.__setattr__(self, "rho", _ratio("rho", self.rho, "rho = p_0 / p_{C-1}"))

    def with_rho(self, rho: float) -> Exp:
        return Exp(self.C, rho)

    def proportions(self) -> np.ndarray:
        if self.rho is None:
            raise InputError("profile", self.spec, f"a value of rho, e.g. exp(C={self.C}, rho=100)")
        c = np.arange(self.C)
        p = self.rho ** (-c / (self.C - 1))  # (C,)
        return p / p.sum()

    def integer_counts(self, n_max: int) -> np.ndarray:
        """(C,) int64 training counts of CIFAR-10/100-LT: n_c = floor(n_max rho^(-c / (C - 1))), c = 0..C-1.

        Computed as CIFAR-LT's generator does, ``int(img_max * (imb_factor ** (cls_idx / (cls_num - 1.0))))``
        with ``imb_factor = 1 / rho``, so the counts match the published datasets to the sample.

        Raises
        ------
        InputError
            ``train.n_max`` where the tail class would keep fewer than 2 samples (names the smallest n_max).

        Examples
        --------
        >>> Exp(10, 100).integer_counts(5000).tolist()  # CIFAR-10-LT, imbalance 100
        [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
        """
        if self.rho is None:
            raise InputError("profile", self.spec, f"a value of rho, e.g. exp(C={self.C}, rho=100)")
        imb_factor, C = 1.0 / self.rho, self.C
        return _checked_counts(self, n_max, lambda n: [int(n * (imb_factor ** (c / (C - 1.0)))) for c in range(C)])

    @property
    def axes(self) -> dict[str, Any]:
        return {"C": self.C} if self.rho is None else {"C": self.C, "rho": self.rho}


@dataclass(frozen=True)
class Counts(Profile):
    """A dataset's class counts (or proportions), in the order given; ``names`` label the classes."""

    counts: tuple[float, ...]
    names: tuple[str, ...] | None = None
    origin: str | None = None  # the preset that made the counts (its spec is the profile's), e.g. cifar_lt(...)
    kind: ClassVar[str] = "counts"

    def __post_init__(self) -> None:
        allowed = "at least two positive, finite class counts"
        counts = tuple(_number(f"counts[{i}]", n, "a positive number (a class count or proportion)")
                       for i, n in enumerate(self.counts))  # fmt: skip
        for i, n in enumerate(counts):
            if n <= 0:
                raise InputError(f"counts[{i}]", self.counts[i], "a positive class count (a class with no sample "
                                 "has no anchor: leave it out)")  # fmt: skip
        if len(counts) < 2:
            raise InputError("counts", list(self.counts), allowed)
        object.__setattr__(self, "counts", counts)
        if self.names is not None and len(self.names) != len(counts):
            raise InputError("counts", list(self.names), "one name per count")

    @property
    def C(self) -> int:
        return len(self.counts)

    def proportions(self) -> np.ndarray:
        n = np.array(self.counts)  # (C,)
        return n / n.sum()

    def integer_counts(self, n_max: int) -> np.ndarray:
        """(C,) int64 training counts: the counts as given when all are integers (``n_max`` is then ignored),
        else proportions scaled so the largest class keeps ``n_max``: floor(n_max p_c / max p).

        Raises
        ------
        InputError
            ``counts[i]`` where an integer count is below 2; ``train.n_max`` where a scaled class would keep
            fewer than 2 samples (names the smallest n_max).
        """
        if all(float(n).is_integer() for n in self.counts):
            for i, n in enumerate(self.counts):
                if n < MIN_CLASS_COUNT:
                    fix = (f"a count >= {MIN_CLASS_COUNT} (integer counts are used as given, whatever n_max; "
                           "every class needs an anchor and a positive)")  # fmt: skip
                    raise InputError(f"counts[{i}]", int(n), fix)
            return np.array(self.counts, dtype=np.int64)
        ratio = np.array(self.counts) / max(self.counts)  # (C,) in (0, 1], the largest exactly 1
        return _checked_counts(self, n_max, lambda n: [_floor(n * r) for r in ratio])

    @property
    def axes(self) -> dict[str, Any]:
        return {"counts": self.counts}

    @property
    def spec(self) -> str:
        if self.origin is not None:
            return self.origin
        if self.names is None:
            return f"counts({', '.join(_fmt(n) for n in self.counts)})"
        return f"counts({', '.join(f'{a}={_fmt(n)}' for a, n in zip(self.names, self.counts, strict=True))})"

    def labels(self) -> list[str]:
        return list(self.names) if self.names is not None else super().labels()


def counts_text(counts: tuple[float, ...], shown: int = 6) -> str:
    """Class counts for a line of output: all of them, or the first and last ``shown`` of many."""
    items = [_fmt(n) for n in counts]
    if len(items) > 2 * shown + 1:
        items = [*items[:shown], f"... ({len(items) - 2 * shown} more) ...", *items[-shown:]]
    return ", ".join(items)


def _preset_spec(kind: str, params: dict[str, Any]) -> str:
    return f"{kind}({', '.join(f'{k}={v!r}' if isinstance(v, str) else f'{k}={_fmt(v)}' for k, v in params.items())})"


def cifar_lt(C: Any, rho: Any, n_max: Any = None) -> Counts:
    """CIFAR-10/100-LT's class counts (module docstring); n_max defaults to CIFAR's 5000 (C = 10) or 500 (C = 100).

    >>> cifar_lt(10, 100).counts[-1]
    50.0
    """
    C = _integer("C", C, 2)
    if n_max is None:
        if C not in (10, 100):
            raise InputError("n_max", None, f"the head class's count for C = {C} (CIFAR's defaults: C = 10, 100)")
        n_max = 5000 if C == 10 else 500
    rho = _ratio("rho", rho, "rho = n_0 / n_{C-1}")
    counts = Exp(C, rho).integer_counts(_integer("n_max", n_max, MIN_CLASS_COUNT))
    return Counts(tuple(float(n) for n in counts), origin=_preset_spec("cifar_lt", {"C": C, "rho": rho,
                                                                                    "n_max": int(n_max)}))  # fmt: skip


def pareto(C: Any, alpha: Any, n_max: Any, n_min: Any, seed: Any = 0) -> Counts:
    """ImageNet-LT's shape of class sizes (module docstring): seeded Pareto(alpha) draws onto [n_min, n_max]."""
    C = _integer("C", C, 2)
    alpha = _number("alpha", alpha, "a positive number (the Pareto shape; ImageNet-LT: 6)")
    if alpha <= 0:
        raise InputError("alpha", alpha, "a positive number (the Pareto shape; ImageNet-LT: 6)")
    n_min = _integer("n_min", n_min, MIN_CLASS_COUNT)
    n_max = _integer("n_max", n_max, n_min + 1)
    seed = _integer("seed", seed, 0)
    x = np.sort(np.random.default_rng(seed).pareto(alpha, C))[::-1]  # (C,) head first
    scaled = n_min + (x - x[-1]) / (x[0] - x[-1]) * (n_max - n_min)  # the largest -> n_max, the smallest -> n_min
    counts = np.floor(scaled + 1e-9).astype(np.int64)
    spec = _preset_spec("pareto", {"C": C, "alpha": alpha, "n_max": n_max, "n_min": n_min, "seed": seed})
    return Counts(tuple(float(n) for n in counts), origin=spec)


MAX_COUNTS_FILE_BYTES = 8 << 20  # one count a line for iNaturalist's 8142 classes is 40 KB


def counts_file(path: Any, column: Any = None) -> Counts:
    """Class counts from a file: one number a line, or ``column`` of a CSV file (header name or 0-based index)."""
    import csv
    import io

    if not isinstance(path, str) or not path:
        raise InputError("counts_file", path, "a path, quoted: counts_file('counts.txt')")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_COUNTS_FILE_BYTES + 1)
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError("counts_file", path, f"a readable UTF-8 file of class counts ({err})") from None
    if len(data) > MAX_COUNTS_FILE_BYTES:
        raise InputError("counts_file", path, f"at most {MAX_COUNTS_FILE_BYTES >> 20} MiB of class counts")
    rows = [row for row in csv.reader(io.StringIO(text)) if row and any(cell.strip() for cell in row)]
    if not rows:
        raise InputError("counts_file", path, "at least two class counts")
    if column is None and any(len(row) > 1 for row in rows):
        raise InputError("counts_file", path, "one count a line, or a column: counts_file(path, column='n')")
    has_header = not all(_is_number(cell) for cell in rows[0])  # a first row of names
    j = 0 if column is None else _index(rows[0] if has_header else [], column, len(rows[0]), path)
    values = []
    for line, row in enumerate(rows[1:] if has_header else rows, start=2 if has_header else 1):
        cell = row[j].strip() if j < len(row) else ""
        if not _is_number(cell):
            raise InputError("counts_file", path, f"a number at row {line}, column {j} (got {cell!r})")
        values.append(float(cell))
    params = {"path": path} if column is None else {"path": path, "column": column}
    return Counts(tuple(values), origin=_preset_spec("counts_file", params))


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _index(header: list[str], column: Any, width: int, path: str) -> int:
    """The 0-based index of ``column`` in rows ``width`` wide: an index, or a name of the ``header`` row."""
    if isinstance(column, int) and not isinstance(column, bool) and 0 <= column < width:
        return column
    names = [cell.strip() for cell in header]
    if isinstance(column, str) and column in names:
        return names.index(column)
    named = f" or one of {names}" if names else " (the file has no header row)"
    raise InputError("column", column, f"a column of {path}: an index 0..{width - 1}{named}")


PRESETS: dict[str, Callable[..., Counts]] = {"cifar_lt": cifar_lt, "pareto": pareto, "counts_file": counts_file}


def make_profile(kind: str, *args: Any, **params: Any) -> Profile:
    """A profile from its kind and parameters, each checked (one :class:`InputError` per bad field)."""
    if kind in PRESETS:
        import inspect

        signature = inspect.signature(PRESETS[kind])
        try:
            bound = signature.bind(*args, **params)
        except TypeError as err:
            raise InputError("profile", kind, f"{kind}({', '.join(signature.parameters)}) ({err})") from None
        return PRESETS[kind](*bound.args, **bound.kwargs)
    if kind not in PROFILE_KINDS:
        raise InputError("profile", kind, f"one of {', '.join(PROFILE_KINDS)}: {SPEC_HELP}")
    if kind == "counts":
        if args and params:
            raise InputError("profile", kind, "counts given either all by position or all by name")
        if params:
            return Counts(tuple(params.values()), tuple(params))
        return Counts(tuple(args))
    names = {"step": ("K_A", "K_B", "R"), "exp": ("C", "rho")}[kind]
    if len(args) > len(names):
        raise InputError("profile", f"{kind}{args}", f"at most {len(names)} values: {', '.join(names)}")
    values = dict(zip(names, args, strict=False))
    for name, value in params.items():
        if name not in names:
            raise InputError(f"{kind} parameter", name, f"one of {', '.join(names)}")
        if name in values:
            raise InputError(f"{kind} parameter", name, "each parameter given once")
        values[name] = value
    required = ("K_A", "K_B") if kind == "step" else ("C",)
    missing = [name for name in required if name not in values]
    if missing:
        raise InputError("profile", kind, f"a value for {', '.join(missing)}: {SPEC_HELP}")
    if kind == "step":
        return Step(values["K_A"], values["K_B"], values.get("R"))
    return Exp(values["C"], values.get("rho"))


def parse_profile(text: str | Profile) -> Profile:
    """Parse ``'exp(C=10, rho=100)'`` and the like (module docstring) into a profile.

    Raises
    ------
    InputError
        One line naming the field, the value and what is allowed.
    """
    if isinstance(text, Profile):
        return text
    if not isinstance(text, str):
        raise InputError("profile", text, SPEC_HELP)
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        raise InputError("profile", text, SPEC_HELP) from None
    if isinstance(node, ast.Name):  # 'exp' without parameters
        raise InputError("profile", text, SPEC_HELP)
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise InputError("profile", text, SPEC_HELP)

    def value(arg: ast.expr) -> Any:
        try:
            return ast.literal_eval(arg)
        except ValueError:
            return ast.unparse(arg)  # a name or expression: reported by the field's check

    kind = node.func.id
    if kind not in PROFILE_KINDS and kind not in PRESETS:
        raise InputError("profile", kind, f"one of {', '.join((*PROFILE_KINDS, *PRESETS))}: {SPEC_HELP}")
    args = [value(a) for a in node.args]
    names = [kw.arg for kw in node.keywords if kw.arg is not None]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        what = "class name" if kind == "counts" else f"{kind} parameter"
        raise InputError(what, twice[0], f"each {what} once ({twice[0]!r} appears twice in {text.strip()!r})")
    params = {kw.arg: value(kw.value) for kw in node.keywords if kw.arg is not None}
    return make_profile(kind, *args, **params)

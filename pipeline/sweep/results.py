"""What the store holds: variable names, dims, units, and the status codes.

Status is data: every point carries a code, so failures and inaccurate solves are points on the
phase diagram, not crashes. Codes follow the CF ``flag_values`` / ``flag_meanings`` convention.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.theory.profiles import PROFILE_KINDS, SCAN_AXIS, SWEEP_AXES

# codes are positions: new statuses go at the end so existing stores keep their meaning
# (asymptotic: threshold R* = inf because c -> 1 only as R -> inf; beyond_range: a cascade onset not
# reached up to the scan's largest rho; undecided: its merge test stayed within the error bound)
STATUS = ("pending", "optimal", "optimal_inaccurate", "local", "error", "not_applicable", "trained", "diverged",
          "asymptotic", "beyond_range", "undecided")  # fmt: skip
STATUS_CODE = {name: code for code, name in enumerate(STATUS)}
# a solver's own status word -> the store's, where they differ: a threshold or onset apart up to the end of its scan
SOLVER_STATUS = {"beyond": "beyond_range"}


def stored_status(status: str) -> int:
    """The store's code of a solver's status (``beyond`` is stored as ``beyond_range``)."""
    return STATUS_CODE[SOLVER_STATUS.get(status, status)]

# the statuses each task kind writes (its status variable's flag_values / flag_meanings)
KIND_STATUS = {
    "theory": ("pending", "optimal", "optimal_inaccurate", "local", "error"),
    "threshold": ("pending", "optimal", "error", "not_applicable", "asymptotic"),
    "train": ("pending", "error", "not_applicable", "trained", "diverged"),
}
# under a remedy R* may lie beyond the scan (its R -> inf limit is not derived): a grid with remedies adds this
REMEDY_THRESHOLD_STATUS = ("beyond_range",)
VARIABLE_STATUS = {"status_onset": ("pending", "optimal", "error", "not_applicable", "beyond_range", "undecided")}
FAILED = (STATUS_CODE["error"], STATUS_CODE["diverged"])  # the codes --retry-failed recomputes

PROFILE_AXES = SWEEP_AXES
PROFILES = PROFILE_KINDS
CLASSES = ("class_i", "class_j")
RANK = ("rank_dim",)  # the embedding dimensions d of rank-d theory (theory.rank_dims)
# kept for step stores (the layout before profiles): what kind_dims(kind, 'step') returns
THEORY = ("loss", "R", "n_major", "n_minor", "k")
THRESHOLD = ("loss", "n_major", "n_minor", "k")
TRAIN = (*THEORY, "dim", "seed")


def kind_dims(kind: str, profile: str = "step", remedy: bool = False) -> tuple[str, ...]:
    """The dims a task kind's batches span: theory points, thresholds (R* or cascade onsets), runs.

    ``remedy``: the grid sweeps remedies (``grid.remedy``), a dim after ``loss``; a store without it holds
    the paper's loss (remedy ``none``), as every store written before remedies does.

    Examples
    --------
    >>> kind_dims("theory", "exp"), kind_dims("threshold", "exp")
    (('loss', 'C', 'rho', 'k'), ('loss', 'C', 'k'))
    """
    theory = ("loss", *(("remedy",) if remedy else ()), *PROFILE_AXES[profile], "k")
    if kind == "theory":
        return theory
    if kind == "train":
        return (*theory, "dim", "seed")
    if kind == "threshold":
        # the axis a threshold scans (R, rho) is not a dim; counts profiles have no threshold kind
        if profile == "counts":
            raise ValueError("a counts profile has no threshold kind")
        return tuple(d for d in theory if d != SCAN_AXIS[profile])
    raise ValueError(f"unknown task kind {kind!r}")


# the store format a store is written in; a store keeps the variables of the format it was created
# in (an older store resumes without the variables added since, which stay absent, not NaN)
# 4: every chunk checksummed (crc32c codec), per-batch checksums and writers, a copy of the root attributes
FORMAT_VERSION = 4


@dataclass(frozen=True)
class Variable:
    extra: tuple[str, ...]  # dims after the kind's (class_i, class_j, onset)
    dtype: str
    long_name: str
    units: str
    kind: str  # task kind that writes it
    profiles: tuple[str, ...] = PROFILES  # the profiles whose stores hold it
    since: int = 1  # the store format that introduced it
    rank: bool = False  # held only by stores whose config asks for rank-d theory (theory.rank_dims)

    def dims(self, profile: str = "step", remedy: bool = False) -> tuple[str, ...]:
        return (*kind_dims(self.kind, profile, remedy), *self.extra)


STEP = ("step",)
SHAPES = ("exp", "counts")  # profiles without two proportion groups: no a, b, c
VARIABLES: dict[str, Variable] = {
    "gram_theory": Variable(CLASSES, "float64", "optimal Gram matrix of the class means (NaN padded)", "1", "theory"),
    "objective_theory": Variable((), "float64", "optimal class-collapsed loss L(G*)", "nats", "theory"),
    "cos_major_theory": Variable((), "float64", "majority-majority cosine a", "1", "theory", STEP),
    "cos_cross_theory": Variable((), "float64", "majority-minority cosine b", "1", "theory", STEP),
    "cos_minor_theory": Variable((), "float64", "minority-minority cosine c", "1", "theory", STEP),
    "directions_theory": Variable((), "float64", "distinct class directions of G*, merges decided by their split test (NaN where one is undecided)", "1", "theory", SHAPES),
    "cos_tail_theory": Variable((), "float64", "cosine between the two smallest classes", "1", "theory", SHAPES),
    "gap_theory": Variable((), "float64", "certified bound on L(G) - min L (duality gap)", "nats", "theory"),
    "criterion_theory": Variable((), "float64", "collapse criterion g / p_minor^2 at c = 1 (<= 0: collapse)", "nats", "theory", STEP),
    "collapsed_theory": Variable((), "float64", "minority collapse from the optimality condition (1 yes, 0 no, NaN n/a)", "1", "theory", STEP),
    "status_theory": Variable((), "int8", "theory solve status", "1", "theory"),
    "time_theory": Variable((), "float64", "solve wall time", "s", "theory"),
    "fallback_theory": Variable((), "int8", "1 where the fallback solver produced the point (the configured one raised)", "1", "theory"),
    "objective_rank_theory": Variable(RANK, "float64", "rank-d optimum of L over restarts (Burer-Monteiro, d = rank_dim; at d >= C the convex optimum)", "nats", "theory", rank=True),
    "gap_rank_theory": Variable(RANK, "float64", "objective_rank_theory minus the certified lower bound on the optimum without the rank limit (at d >= C: the certified gap)", "nats", "theory", rank=True),
    "gram_rank_theory": Variable((*RANK, *CLASSES), "float64", "Gram matrix of the rank-d class means (NaN padded)", "1", "theory", rank=True),
    "cos_minor_rank_theory": Variable(RANK, "float64", "minority-minority cosine c at rank d", "1", "theory", STEP, rank=True),
    "cos_tail_rank_theory": Variable(RANK, "float64", "cosine between the two smallest classes at rank d", "1", "theory", SHAPES, rank=True),
    "gradient_rank_theory": Variable(RANK, "float64", "|Riemannian gradient| / |gradient| at the rank-d point (p-weighted metric; NaN at d >= C)", "1", "theory", rank=True),
    "hessian_min_rank_theory": Variable(RANK, "float64", "smallest eigenvalue of the Riemannian Hessian at the rank-d point, off the rotations V -> QV (p-weighted metric; NaN at d >= C)", "1", "theory", rank=True),
    "hessian_max_rank_theory": Variable(RANK, "float64", "largest eigenvalue of the Riemannian Hessian at the rank-d point (p-weighted metric; NaN at d >= C)", "1", "theory", rank=True),
    "second_order_rank_theory": Variable(RANK, "int8", "1 where the rank-d point is second-order stationary (gradient <= 1e-6, hessian_min >= -1e-6 max |eigenvalue|), 0 where not, -1 at d >= C (the certified convex optimum)", "1", "theory", rank=True),
    "status_rank_theory": Variable(RANK, "int8", "rank-d solve status (local, optimal where it attains the convex bound, error)", "1", "theory", rank=True),
    "R_threshold": Variable((), "float64", "minority-collapse threshold R* (inf: none; see status_threshold)", "1", "threshold", STEP),
    "criterion_limit": Variable((), "float64", "limit of g / p_minor^2 as R -> inf", "nats", "threshold", STEP),
    "criterion_limit_error": Variable((), "float64", "error bound of criterion_limit (its sign counts only beyond it)", "nats", "threshold", STEP),
    "status_threshold": Variable((), "int8", "threshold search status", "1", "threshold", STEP),
    "rho_onset": Variable(("onset",), "float64", "cascade onset rho*_m: smallest rho at which the m smallest classes share one direction (inf: beyond the scan; NaN: see status_onset)", "1", "threshold", ("exp",)),
    "rho_apart_onset": Variable(("onset",), "float64", "largest scanned rho at which the m smallest classes were shown apart", "1", "threshold", ("exp",)),
    "status_onset": Variable(("onset",), "int8", "cascade onset status", "1", "threshold", ("exp",)),
    "gram_train": Variable(CLASSES, "float64", "Gram matrix of the normalised trained class means (NaN padded)", "1", "train"),
    "cos_major_train": Variable((), "float64", "trained majority-majority cosine a", "1", "train", STEP),
    "cos_cross_train": Variable((), "float64", "trained majority-minority cosine b", "1", "train", STEP),
    "cos_minor_train": Variable((), "float64", "trained minority-minority cosine c", "1", "train", STEP),
    "cos_tail_train": Variable((), "float64", "trained cosine between the two smallest classes", "1", "train", SHAPES),
    "nc1_train": Variable((), "float64", "within-class variability tr(Sigma_W Sigma_B^+) / C (NC1; ill-conditioned where nc1_rank_deficient_train)", "1", "train"),
    "nc1_rank_deficient_train": Variable((), "int8", "1 where Sigma_B lost rank (merged class means): NC1 is ill-conditioned there", "1", "train"),
    "spread_train": Variable((), "float64", "within-class spread on the sphere, 1 - |mean of class c|, averaged over classes (each weighs 1/C)", "1", "train"),
    "spread_class_train": Variable(("class_i",), "float64", "within-class spread 1 - |mean of class c| per class (NaN padded)", "1", "train"),
    "trace_ratio_train": Variable((), "float64", "tr Sigma_W / tr Sigma_B", "1", "train"),
    "loss_train": Variable((), "float64", "sampled training loss, mean of the last 10% of steps", "nats", "train"),
    "objective_train": Variable((), "float64", "class-collapsed loss L(G) at the trained Gram matrix", "nats", "train"),
    "objective_rank": Variable((), "float64", "rank-dim optimum of L (Burer-Monteiro; NaN when dim >= C)", "nats", "train"),
    "dist_to_theory": Variable((), "float64", "||G_train - G*||_F / C, G* the optimum at the run's dim: the rank-dim optimum (Burer-Monteiro) when dim < C, else the full-rank G; at dim < C the least over relabellings of equal-proportion classes", "1", "train"),
    "grad_norm_train": Variable((), "float64", "stationarity: ufm, the normalised Riemannian gradient norm of the exact sample-level loss at the end, sqrt(sum_s |grad_s|^2 / w_s^2) / p_min (while (C n)^2 n <= 2e6, n samples a class); mlp and larger ufm, the Euclidean norm over the encoder's parameters of the training objective's gradient at the end (32 fresh batches, debiased by their variance) / p_min", "1", "train", since=2),
    "loss_change_train": Variable((), "float64", "relative change of the training loss over the last 10% of steps, (first half - second half) / |second half|", "1", "train", since=2),
    "converged_train": Variable((), "int8", "1 where the run is stationary (see attrs: grad_norm_train <= grad_tol where it is the exact loss's; mlp and larger ufm: |loss_change_train| <= loss_change_tol), 0 where not, -1 unknown", "1", "train", since=2),
    "objective_subsampled": Variable((), "float64", "in-batch runs: the optimal objective at the subsampled dataset's proportions and k (the i.i.d. theory point the run is compared with; rank-dim at dim < C)", "nats", "train", since=3),
    "cos_minor_subsampled": Variable((), "float64", "in-batch runs: the optimal minority cosine c at the subsampled proportions", "1", "train", STEP, since=3),
    "collapsed_subsampled": Variable((), "float64", "in-batch runs: minority collapse at the subsampled proportions (1 yes, 0 no, NaN n/a)", "1", "train", STEP, since=3),
    "n_train_class": Variable(("class_i",), "int64", "training samples of each class (a subsampled dataset: train.n_max and the profile's integer counts; 0 where the run had none)", "1", "train", since=3),
    "n_test_class": Variable(("class_i",), "int64", "held-out test samples of each class (balanced; 0 where the run had none)", "1", "train", since=3),
    "gram_test_train": Variable(CLASSES, "float64", "Gram matrix of the normalised class means of the test features (NaN padded)", "1", "train", since=3),
    "acc_test_class": Variable(("class_i",), "float64", "nearest-class-mean test accuracy of each class (class means of the training features)", "1", "train", since=3),
    "acc_many_test": Variable((), "float64", "mean of acc_test_class over the many-shot classes (> 100 training samples)", "1", "train", since=3),
    "acc_medium_test": Variable((), "float64", "mean of acc_test_class over the medium-shot classes (20 to 100 training samples)", "1", "train", since=3),
    "acc_few_test": Variable((), "float64", "mean of acc_test_class over the few-shot classes (< 20 training samples)", "1", "train", since=3),
    "status_train": Variable((), "int8", "training status", "1", "train"),
    "time_train": Variable((), "float64", "training wall time per run (batch time / runs)", "s", "train"),
}  # fmt: skip

DONE = {"theory": "done_theory", "threshold": "done_threshold", "train": "done_train"}
# per batch, chunked as the done masks (store format 4 on): the CRC-32 of the batch's data as written, in
# variable-name order (a chunk moved to another batch's place passes its own crc32c but not this), and
# the CRC-32 of the writing code's provenance (the root attribute ``writers`` maps it to the provenance)
CHECKSUM = {kind: f"checksum_{kind}" for kind in DONE}
WRITER = {kind: f"writer_{kind}" for kind in DONE}
BOOKKEEPING_SINCE = 4
KIND_DIMS = {kind: kind_dims(kind) for kind in ("theory", "threshold", "train")}  # step stores


def profile_variables(profile: str, version: int = FORMAT_VERSION, rank: bool = False) -> dict[str, Variable]:
    """The variables a store of this profile (written in store format ``version``) holds; ``rank``: with
    rank-d theory (``theory.rank_dims``)."""
    return {name: v for name, v in VARIABLES.items()
            if profile in v.profiles and v.since <= version and (rank or not v.rank)}  # fmt: skip


def fill_value(dtype: str) -> float | int:
    """Value of a point not yet computed: NaN for floats, 0 (pending) for integer codes."""
    return float("nan") if dtype.startswith("float") else 0


def status_name(kind: str, profile: str = "step") -> str:
    """The status variable of a task kind: ``status_onset`` for the cascades of exp profiles."""
    return "status_onset" if kind == "threshold" and profile == "exp" else f"status_{kind}"


def point_status(codes: np.ndarray, ndim: int) -> np.ndarray:
    """One code per point of a kind from a status variable with extra dims (one code per onset m):
    ``error`` where any is, ``not_applicable`` where all are, else the first (m = 2)."""
    codes = np.asarray(codes)
    if codes.ndim == ndim:
        return codes
    flat = codes.reshape(*codes.shape[:ndim], -1)
    out = flat[..., 0].copy()
    out[(flat == STATUS_CODE["not_applicable"]).all(axis=-1)] = STATUS_CODE["not_applicable"]
    out[np.isin(flat, FAILED).any(axis=-1)] = STATUS_CODE["error"]
    return out

"""What the store holds: variable names, dims, units, and the status codes.

Status is data: every point carries a code, so failures and inaccurate solves are points on the
phase diagram, not crashes. Codes follow the CF ``flag_values`` / ``flag_meanings`` convention.
"""

from __future__ import annotations

from dataclasses import dataclass

# codes are positions: new statuses go at the end so existing stores keep their meaning
# (asymptotic: threshold R* = inf because c -> 1 only as R -> inf)
STATUS = ("pending", "optimal", "optimal_inaccurate", "local", "error", "not_applicable", "trained", "diverged",
          "asymptotic")  # fmt: skip
STATUS_CODE = {name: code for code, name in enumerate(STATUS)}
# the statuses each task kind writes (its status variable's flag_values / flag_meanings)
KIND_STATUS = {
    "theory": ("pending", "optimal", "optimal_inaccurate", "local", "error"),
    "threshold": ("pending", "optimal", "error", "not_applicable", "asymptotic"),
    "train": ("pending", "error", "not_applicable", "trained", "diverged"),
}
FAILED = (STATUS_CODE["error"], STATUS_CODE["diverged"])  # the codes --retry-failed recomputes

THEORY = ("loss", "R", "n_major", "n_minor", "k")
CLASSES = ("class_i", "class_j")
THRESHOLD = ("loss", "n_major", "n_minor", "k")
TRAIN = (*THEORY, "dim", "seed")


@dataclass(frozen=True)
class Variable:
    dims: tuple[str, ...]
    dtype: str
    long_name: str
    units: str
    kind: str  # task kind that writes it


VARIABLES: dict[str, Variable] = {
    "gram_theory": Variable(THEORY + CLASSES, "float64", "optimal Gram matrix of the class means (NaN padded)", "1", "theory"),
    "objective_theory": Variable(THEORY, "float64", "optimal class-collapsed loss L(G*)", "nats", "theory"),
    "cos_major_theory": Variable(THEORY, "float64", "majority-majority cosine a", "1", "theory"),
    "cos_cross_theory": Variable(THEORY, "float64", "majority-minority cosine b", "1", "theory"),
    "cos_minor_theory": Variable(THEORY, "float64", "minority-minority cosine c", "1", "theory"),
    "gap_theory": Variable(THEORY, "float64", "certified bound on L(G) - min L (duality gap)", "nats", "theory"),
    "criterion_theory": Variable(THEORY, "float64", "collapse criterion g / p_minor^2 at c = 1 (<= 0: collapse)", "nats", "theory"),
    "collapsed_theory": Variable(THEORY, "float64", "minority collapse from the optimality condition (1 yes, 0 no, NaN n/a)", "1", "theory"),
    "status_theory": Variable(THEORY, "int8", "theory solve status", "1", "theory"),
    "time_theory": Variable(THEORY, "float64", "solve wall time", "s", "theory"),
    "fallback_theory": Variable(THEORY, "int8", "1 where the fallback solver produced the point (the configured one raised)", "1", "theory"),
    "R_threshold": Variable(THRESHOLD, "float64", "minority-collapse threshold R* (inf: none; see status_threshold)", "1", "threshold"),
    "criterion_limit": Variable(THRESHOLD, "float64", "limit of g / p_minor^2 as R -> inf", "nats", "threshold"),
    "criterion_limit_error": Variable(THRESHOLD, "float64", "error bound of criterion_limit (its sign counts only beyond it)", "nats", "threshold"),
    "status_threshold": Variable(THRESHOLD, "int8", "threshold search status", "1", "threshold"),
    "gram_train": Variable(TRAIN + CLASSES, "float64", "Gram matrix of the normalised trained class means (NaN padded)", "1", "train"),
    "cos_major_train": Variable(TRAIN, "float64", "trained majority-majority cosine a", "1", "train"),
    "cos_cross_train": Variable(TRAIN, "float64", "trained majority-minority cosine b", "1", "train"),
    "cos_minor_train": Variable(TRAIN, "float64", "trained minority-minority cosine c", "1", "train"),
    "nc1_train": Variable(TRAIN, "float64", "within-class variability tr(Sigma_W Sigma_B^+) / C (NC1; ill-conditioned where nc1_rank_deficient_train)", "1", "train"),
    "nc1_rank_deficient_train": Variable(TRAIN, "int8", "1 where Sigma_B lost rank (merged class means): NC1 is ill-conditioned there", "1", "train"),
    "spread_train": Variable(TRAIN, "float64", "within-class spread on the sphere, 1 - |mean of class c|, averaged over classes (each weighs 1/C)", "1", "train"),
    "spread_class_train": Variable((*TRAIN, "class_i"), "float64", "within-class spread 1 - |mean of class c| per class (NaN padded)", "1", "train"),
    "trace_ratio_train": Variable(TRAIN, "float64", "tr Sigma_W / tr Sigma_B", "1", "train"),
    "loss_train": Variable(TRAIN, "float64", "sampled training loss, mean of the last 10% of steps", "nats", "train"),
    "objective_train": Variable(TRAIN, "float64", "class-collapsed loss L(G) at the trained Gram matrix", "nats", "train"),
    "objective_rank": Variable(TRAIN, "float64", "rank-dim optimum of L (Burer-Monteiro; NaN when dim >= C)", "nats", "train"),
    "dist_to_theory": Variable(TRAIN, "float64", "||G_train - G*||_F / C, G* the optimum at the run's dim: the rank-dim optimum (Burer-Monteiro) when dim < C, else the full-rank G", "1", "train"),
    "status_train": Variable(TRAIN, "int8", "training status", "1", "train"),
    "time_train": Variable(TRAIN, "float64", "training wall time per run (batch time / runs)", "s", "train"),
}  # fmt: skip

DONE = {"theory": "done_theory", "threshold": "done_threshold", "train": "done_train"}
KIND_DIMS = {"theory": THEORY, "threshold": THRESHOLD, "train": TRAIN}


def kind_variables(kind: str) -> list[str]:
    return [name for name, v in VARIABLES.items() if v.kind == kind]


def fill_value(dtype: str) -> float | int:
    """Value of a point not yet computed: NaN for floats, 0 (pending) for integer codes."""
    return float("nan") if dtype.startswith("float") else 0

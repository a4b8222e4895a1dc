"""Analysis of a results store: phase labels, threshold curves, summaries (xarray in, xarray out).

Imports neither torch nor cvxpy: it runs wherever the store can be opened.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from pipeline.metrics import COLLAPSE_TOL
from pipeline.sweep.results import STATUS_CODE

# codes are positions (new labels at the end). A training run's measured collapse that contradicts
# the theory is ``disagreement`` where the run is stationary (or, in stores written before
# stationarity was measured, nothing says), ``not_converged`` where it is not shown stationary
# (converged_train 0, or -1 where its test cannot tell), and ``unresolved`` where it is stationary
# but its geometry's exact objective is within UNRESOLVED_RTOL of the optimum's
PHASES = ("pending", "failed", "no_collapse", "minority_collapse", "disagreement", "not_applicable", "not_converged",
          "unresolved")  # fmt: skip
PHASE_CODE = {name: code for code, name in enumerate(PHASES)}
# the objective gap, relative to |L*|, below which stochastic float32 training cannot tell two
# geometries apart: configs/digits.yaml's stationary runs that agree with the theory end up to 2e-6
# above L*; 5x that
UNRESOLVED_RTOL = 1e-5


def select(ds: xr.Dataset, selection: str | None) -> xr.Dataset:
    """Subset by a string such as ``'loss=infonce(tau=1),n_minor=2'`` (values matched as in the store).

    Raises ValueError naming the dim or value that does not exist.
    """
    if not selection:
        return ds
    chosen: dict[str, list] = {}
    for item in _split(selection):
        dim, sep, raw = item.partition("=")
        dim = dim.strip()
        if not sep or dim not in ds.dims or dim.startswith("class"):
            dims = ", ".join(d for d in ds.dims if not d.startswith("class"))
            raise ValueError(f"--select {item!r}: expected dim=value with dim one of {dims}")
        coord = ds[dim].values
        matches = [v for v in coord if str(v) == raw.strip() or _numeric_equal(v, raw)]
        if not matches:
            raise ValueError(f"--select {dim}={raw!r}: expected one of {', '.join(map(str, coord))}")
        chosen.setdefault(dim, []).extend(matches)
    return ds.sel({d: v for d, v in chosen.items()})


def _split(selection: str) -> list[str]:
    """Split on commas outside parentheses (loss ids contain commas only inside them)."""
    items, depth, current = [], 0, ""
    for ch in selection:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += ch
    return [*items, current]


def _numeric_equal(value: object, raw: str) -> bool:
    try:
        return bool(np.isclose(float(value), float(raw), rtol=1e-9))
    except (TypeError, ValueError):
        return False


def theory_phase(ds: xr.Dataset) -> xr.DataArray:
    """Phase label code per theory point: pending, failed, no_collapse, minority_collapse, not_applicable.

    Collapse comes from ``collapsed_theory`` (the optimality condition at c = 1), never from 1 - c.
    """
    done = ds.done_theory == 1
    failed = ds.status_theory == STATUS_CODE["error"]
    collapsed = ds.collapsed_theory
    code = xr.where(collapsed == 1, PHASE_CODE["minority_collapse"], PHASE_CODE["no_collapse"])
    code = xr.where(collapsed.isnull(), PHASE_CODE["not_applicable"], code)
    code = xr.where(failed, PHASE_CODE["failed"], code)
    code = xr.where(done, code, PHASE_CODE["pending"])
    code.attrs = {"long_name": "phase", "flag_values": list(range(len(PHASES))), "flag_meanings": " ".join(PHASES)}
    return code.rename("phase_theory")


def theory_done(ds: xr.Dataset) -> xr.DataArray:
    """True at theory points solved without error (pending and failed ones are never drawn as values)."""
    return (ds.done_theory == 1) & (ds.status_theory != STATUS_CODE["error"])


def minor_cosine(ds: xr.Dataset) -> xr.DataArray:
    """Theory minority cosine c with pending and failed points as NaN (never drawn as values)."""
    return ds.cos_minor_theory.where(theory_done(ds))


def has_thresholds(ds: xr.Dataset) -> bool:
    """Whether the store computes thresholds (R*, cascade onsets): not with ``theory.thresholds: false``."""
    return "done_threshold" in ds


def threshold_curve(ds: xr.Dataset) -> xr.DataArray:
    """R*(k) per (loss, n_major, n_minor): inf where none, NaN where pending, not applicable or not computed."""
    if not has_thresholds(ds):
        return xr.full_like(ds.cos_minor_theory.isel(R=0, drop=True), np.nan)
    done = ds.done_threshold == 1
    ok = done & ds.status_threshold.isin([STATUS_CODE["optimal"], STATUS_CODE["asymptotic"]])
    return ds.R_threshold.where(ok)


def threshold_beyond(ds: xr.Dataset) -> xr.DataArray:
    """True where R* lies beyond the scan and is not decided past it (under a remedy: its R -> inf limit is
    not derived), False elsewhere; stored as R* = inf with status ``beyond_range``."""
    if not has_thresholds(ds):
        return xr.full_like(ds.cos_minor_theory.isel(R=0, drop=True), False, dtype=bool)
    return (ds.done_threshold == 1) & (ds.status_threshold == STATUS_CODE["beyond_range"])


def thresholds_table(ds: xr.Dataset) -> list[dict[str, object]]:
    """Rows of (loss, n_major, n_minor, k, R_star, status) for CSV export; none without thresholds."""
    if not has_thresholds(ds):
        return []
    curve = threshold_curve(ds).load()
    status = ds.status_threshold.load()
    done = ds.done_threshold.load()
    names = {code: name for name, code in STATUS_CODE.items()}
    rows = []
    for loss in curve.loss.values:
        for n_major in curve.n_major.values:
            for n_minor in curve.n_minor.values:
                for k in curve.k.values:
                    point = {"loss": loss, "n_major": n_major, "n_minor": n_minor, "k": k}
                    value = float(curve.sel(point))
                    state = names[int(status.sel(point))] if int(done.sel(point)) else "pending"
                    rows.append({"loss": str(loss), "n_major": int(n_major), "n_minor": int(n_minor),
                                 "k": k_label(k), "R_star": value, "status": state})  # fmt: skip
    return rows


def k_label(k: float) -> int | str:
    """k as written in tables: an integer, or 'inf' for the large-k limit."""
    return "inf" if np.isinf(k) else int(k)


def phase_counts(ds: xr.Dataset, phase: xr.DataArray | None = None) -> dict[str, int]:
    """Number of points per phase label, of ``phase`` (default: the theory's phases)."""
    code = (theory_phase(ds) if phase is None else phase).values
    return {name: int((code == PHASE_CODE[name]).sum()) for name in PHASES}


def gram_points(ds: xr.Dataset, loss: str, n_major: int, n_minor: int, k: int) -> list[tuple[str, float]]:
    """Grid values of R for Gram panels, each with a title that says what it is: the grid points nearest
    R* / 4, R* and 4 R* in log R (the middle one is a grid point, below or above R*, not R* itself), or the
    lowest, middle and highest R where there is no finite R*."""
    R = ds.R.values
    R_star = float(threshold_curve(ds).sel(loss=loss, n_major=n_major, n_minor=n_minor, k=k))
    if not np.isfinite(R_star):
        picks = [("lowest R", R[0]), ("middle R", R[len(R) // 2]), ("highest R", R[-1])]
        return [(f"{label}\nR = {value:.3g}", float(value)) for label, value in picks]
    log_R = np.log(R)

    def nearest(x: float) -> float:
        return float(R[np.argmin(np.abs(log_R - np.log(x)))])

    at = nearest(R_star)
    side = "=" if at == R_star else "<" if at < R_star else ">"
    return [(f"below R*\nR = {nearest(R_star / 4):.3g}", nearest(R_star / 4)),
            (f"grid R nearest R*\nR = {at:.3g} {side} R* = {R_star:.4g}", at),
            (f"above R*\nR = {nearest(R_star * 4):.3g}", nearest(R_star * 4))]  # fmt: skip


# --- training against theory ------------------------------------------------------------------


def has_training(ds: xr.Dataset) -> bool:
    return "cos_minor_train" in ds


def train_collapsed(ds: xr.Dataset, tol: float = COLLAPSE_TOL) -> xr.DataArray:
    """Measured minority collapse per run: c_train >= 1 - tol (1.0 / 0.0), NaN where not trained."""
    trained = ds.status_train == STATUS_CODE["trained"]
    return xr.where(ds.cos_minor_train >= 1 - tol, 1.0, 0.0).where(trained)


def train_phase(ds: xr.Dataset, tol: float = COLLAPSE_TOL) -> xr.DataArray:
    """Phase per training run: agreement with theory's collapse decision, ``disagreement``,
    ``not_converged`` (a disagreeing run not shown stationary: converged_train 0, or -1 unknown), or
    ``unresolved`` (a stationary disagreeing run whose geometry's exact objective, objective_train,
    is within ``UNRESOLVED_RTOL`` of the optimum it can reach: near R* the optimum is flat in c, and
    the trainer does not resolve gaps that small; the theory computes them exactly).

    A run contradicts the theory when its measured collapse (c_train >= 1 - tol) differs from the
    theory's optimality condition at the same point and its c_train is more than tol from the
    theory's c (near R* both can lie within tol of 1 on either side: the exact mode reproduces
    c = 0.99553 at R = 63 < R* = 64.1 to 1e-14, which the flag alone called a disagreement); the
    tolerance is stored in the result's attrs. Stores written before stationarity was measured
    have no ``converged_train``: every contradiction is a disagreement. In-batch runs are compared with
    the theory at their subsampled dataset's proportions (``*_subsampled``), not the profile's.
    """
    measured = train_collapsed(ds, tol)
    theory, c_theory, L_theory = ds.collapsed_theory, ds.cos_minor_theory, ds.get("objective_theory")
    if "collapsed_subsampled" in ds:  # in-batch runs: the theory at their subsampled proportions
        subsampled = ds.objective_subsampled.notnull()
        theory = xr.where(subsampled, ds.collapsed_subsampled, theory)
        c_theory = xr.where(subsampled, ds.cos_minor_subsampled, c_theory)
        L_theory = xr.where(subsampled, ds.objective_subsampled, L_theory)
    code = xr.where(measured == 1, PHASE_CODE["minority_collapse"], PHASE_CODE["no_collapse"])
    far = abs(ds.cos_minor_train - c_theory) > tol
    contradicts = (measured != theory) & theory.notnull() & far
    code = xr.where(contradicts, PHASE_CODE["disagreement"], code)
    if "converged_train" in ds:
        # not shown stationary: 0, or -1 where the test cannot tell (in-batch runs whose loss change does
        # not resolve the minority's terms, pipeline.metrics.stationary)
        code = xr.where(contradicts & (ds.converged_train <= 0), PHASE_CODE["not_converged"], code)
        if "objective_train" in ds and L_theory is not None:
            # the optimum the run can reach: the rank-d one at d < C (objective_rank), else L*
            best = ds.objective_rank.where(ds.objective_rank.notnull(), L_theory)
            close = ds.objective_train - best <= UNRESOLVED_RTOL * abs(best)
            code = xr.where(contradicts & (ds.converged_train == 1) & close, PHASE_CODE["unresolved"], code)
    code = xr.where(ds.status_train == STATUS_CODE["not_applicable"], PHASE_CODE["not_applicable"], code)
    code = xr.where(ds.status_train == STATUS_CODE["diverged"], PHASE_CODE["failed"], code)
    code = xr.where(ds.done_train == 1, code, PHASE_CODE["pending"])
    code.attrs = {"long_name": "training phase", "flag_values": list(range(len(PHASES))), "collapse_tol": tol,
                  "flag_meanings": " ".join(PHASES), "unresolved_rtol": UNRESOLVED_RTOL}  # fmt: skip
    return code.rename("phase_train")


def agreement(ds: xr.Dataset, tol: float = COLLAPSE_TOL) -> xr.Dataset:
    """Per theory point and dim: c_train mean and spread over seeds, and the fraction of seeds agreeing."""
    trained = ds.status_train == STATUS_CODE["trained"]
    c = ds.cos_minor_train.where(trained)
    theory = ds.collapsed_theory
    if "collapsed_subsampled" in ds:  # in-batch runs: the theory at their subsampled proportions
        theory = xr.where(ds.objective_subsampled.notnull(), ds.collapsed_subsampled, theory)
    agree = (train_collapsed(ds, tol) == theory).where(trained & theory.notnull())
    return xr.Dataset(
        {
            "c_train_mean": c.mean("seed"),
            "c_train_std": c.std("seed"),
            "agree_fraction": agree.mean("seed"),
            "n_trained": trained.sum("seed"),
        },
        attrs={"collapse_tol": tol},
    )


# --- imbalance profiles other than step (exp: the collapse cascade) ----------------------------


def profile_of(ds: xr.Dataset) -> str:
    """The store's imbalance profile: 'step' (stores from before profiles too), 'exp' or 'counts'."""
    return str(ds.attrs.get("profile", "step"))


def distinct_directions(ds: xr.Dataset) -> xr.DataArray:
    """Distinct class directions per theory point, NaN where pending, failed or a merge is undecided."""
    return ds.directions_theory.where(theory_done(ds))


def onset_curve(ds: xr.Dataset) -> xr.DataArray:
    """rho*_m(k) per (loss, C, m): inf beyond the scanned range, NaN where pending, undecided or n/a."""
    done = ds.done_threshold == 1
    ok = done & ds.status_onset.isin([STATUS_CODE["optimal"], STATUS_CODE["beyond_range"]])
    return ds.rho_onset.where(ok)


def onsets_table(ds: xr.Dataset) -> list[dict[str, object]]:
    """Rows of (loss, C, k, m, rho_star, apart_below, status) for CSV export (padding m >= C left out)."""
    curve = onset_curve(ds).load()
    status, done, apart = ds.status_onset.load(), ds.done_threshold.load(), ds.rho_apart_onset.load()
    names = {code: name for name, code in STATUS_CODE.items()}
    rows = []
    for loss in curve.loss.values:
        for C in curve.C.values:
            for k in curve.k.values:
                for m in curve.onset.values:
                    if m >= C:
                        continue
                    point = {"loss": loss, "C": C, "k": k, "onset": m}
                    state = names[int(status.sel(point))] if int(done.sel(loss=loss, C=C, k=k)) else "pending"
                    rows.append({"loss": str(loss), "C": int(C), "k": k_label(k), "m": int(m),
                                 "rho_star": float(curve.sel(point)), "apart_below": float(apart.sel(point)),
                                 "status": state})  # fmt: skip
    return rows


def etf_distance(G: np.ndarray) -> float:
    """||G - G_ETF||_F / C: how far a Gram matrix (C, C; NaN padding dropped) is from the simplex ETF of its
    C classes, the balanced optimum (cosines -1 / (C - 1)); 0 at the ETF."""
    C = int(np.isfinite(np.diag(G)).sum())
    G = G[:C, :C]
    etf = (C * np.eye(C) - np.ones((C, C))) / (C - 1)
    return float(np.linalg.norm(G - etf) / C)


def remedy_rows(ds: xr.Dataset) -> list[dict[str, object]]:
    """Rows of a store that sweeps remedies, for ``remedies.csv``: per (loss, shape, remedy, k) and scan value
    (R or rho), the minority (step) or tail (exp) cosine, collapse as the optimality condition decides it
    (step; NaN where undecided or n/a), the distance of the optimum to the simplex ETF, and R* with its
    status (step)."""
    step = "cos_minor_theory" in ds
    scan = "R" if step else "rho"
    dims = ("loss", *(("n_major", "n_minor") if step else ("C",)), "remedy", "k")
    done = theory_done(ds)
    cosine = (ds.cos_minor_theory if step else ds.cos_tail_theory).where(done).transpose(*dims, scan).values
    gram = ds.gram_theory.where(done).transpose(*dims, scan, "class_i", "class_j").values  # (..., scan, C, C)
    collapsed = ds.collapsed_theory.transpose(*dims, scan).values if step else None
    R_star_known = step and has_thresholds(ds)
    if R_star_known:
        names = {code: name for name, code in STATUS_CODE.items()}
        R_star = ds.R_threshold.transpose(*dims).values
        status = ds.status_threshold.where(ds.done_threshold == 1, 0).transpose(*dims).values
    coords = [ds[d].values for d in dims]
    rows = []
    for idx in np.ndindex(*cosine.shape[:-1]):
        point = {d: _cell(d, coords[a][i]) for a, (d, i) in enumerate(zip(dims, idx, strict=True))}
        extra = {"R_star": float(R_star[idx]), "R_star_status": names[int(status[idx])]} if R_star_known else {}
        for s_i, value in enumerate(ds[scan].values):
            G = gram[(*idx, s_i)]
            row = {**point, scan: float(value), "cosine": float(cosine[(*idx, s_i)])}
            if step:
                row["collapsed"] = float(collapsed[(*idx, s_i)])
            row["etf_distance"] = etf_distance(G) if np.isfinite(np.diag(G)).any() else float("nan")
            rows.append({**row, **extra})
    return rows


def _cell(dim: str, v: object) -> object:
    """A coordinate value as a CSV cell: k as an integer or 'inf', the rest as plain Python values."""
    v = v.item() if isinstance(v, np.generic) else v
    return k_label(v) if dim == "k" else v

"""Figures of training as it is practised (in-batch negatives on a subsampled dataset, a test split):
the trained geometry against the theory's, and the tail's collapse beside its test accuracy.

Reads the store only (no torch, no cvxpy). One figure per loss and profile shape (C for exp stores,
(K_A, K_B) for step stores); the scan axis (rho or R) is the x axis.
"""

from __future__ import annotations

import math

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from pipeline.analysis import profile_of
from pipeline.plots.axes import COLUMN_IN, OKABE_ITO
from pipeline.sweep.results import STATUS_CODE
from pipeline.theory.profiles import SCAN_AXIS

MARKERS = "osD^v<>"


def _row_mean(a: np.ndarray) -> np.ndarray:
    """Mean over the last axis ignoring NaN; NaN (silently) where a row has none."""
    n = np.isfinite(a).sum(-1)
    return np.where(n > 0, np.nansum(a, -1) / np.maximum(n, 1), np.nan)


def has_test_split(ds: xr.Dataset) -> bool:
    """Whether the store holds runs on a subsampled dataset with a test split (acc_test_class)."""
    return "acc_test_class" in ds and bool(np.isfinite(ds.acc_test_class.values).any())


def _tail(ds: xr.Dataset, kind: str) -> xr.DataArray:
    """The tail's cosine: the two smallest classes (exp, counts) or the minority pair c (step)."""
    name = "cos_tail" if profile_of(ds) != "step" else "cos_minor"
    return ds[f"{name}_{kind}"]


def _onsets(ds: xr.Dataset, point: dict, k: float) -> tuple[float, str]:
    """Where the theory merges the tail along the scan axis at this k: (value, note)."""
    if profile_of(ds) == "step":
        if "R_threshold" not in ds:
            return math.nan, "no threshold"
        sel = {d: v for d, v in point.items() if d in ds.R_threshold.dims}
        status = int(ds.status_threshold.sel({**sel, "k": k}))
        R_star = float(ds.R_threshold.sel({**sel, "k": k}))
        return (R_star, "R*") if status == STATUS_CODE["optimal"] else (math.nan, "no R* in range")
    if "rho_onset" not in ds:
        return math.nan, "no onsets"
    sel = {d: v for d, v in point.items() if d in ds.rho_onset.dims}
    status = int(ds.status_onset.sel({**sel, "k": k, "onset": 2}))
    names = {code: name for name, code in STATUS_CODE.items()}
    if status == STATUS_CODE["optimal"]:
        return float(ds.rho_onset.sel({**sel, "k": k, "onset": 2})), "rho*_2"
    return math.nan, f"rho*_2 {names.get(status, status)}"


def practised_figure(ds: xr.Dataset, loss: str, shape: dict) -> plt.Figure:
    """Three panels: trained against optimal cosine of every class pair; the tail's cosine against the
    scan axis (trained per seed, theory dashed); the test accuracy of the few- and many-shot classes and
    of the smallest class, with the theory's tail merge (rho*_2 or R*) marked where it was decided.

    Parameters
    ----------
    ds : a store with training on a subsampled dataset (``has_test_split``).
    loss : loss id; shape : the profile's fixed axes ({'C': 10} or {'n_major': 2, 'n_minor': 2}).
    """
    scan = SCAN_AXIS[profile_of(ds)]
    point = {"loss": loss, **shape}
    x = ds[scan].values  # (S,)
    ks = [k for k in ds.k.values if bool((ds.status_train.sel({**point, "k": k}) == STATUS_CODE["trained"]).any())]
    fig, axes = plt.subplots(1, 3, figsize=(COLUMN_IN * 2.1, 2.5), layout="constrained")
    pairs, tail, accuracy = axes
    cmap = matplotlib.colormaps["viridis"]
    notes = []
    for n, k in enumerate(ks):
        sel = {**point, "k": k}
        trained = (ds.status_train.sel(sel) == STATUS_CODE["trained"]).values  # (S, dim, seed)
        marker, colour = MARKERS[n % len(MARKERS)], OKABE_ITO[n % len(OKABE_ITO)]
        G_theory = ds.gram_theory.sel(sel).values  # (S, C, C)
        G_train = ds.gram_train.sel(sel).where(trained[..., None, None]).mean(("dim", "seed")).values  # (S, C, C)
        C = int(np.isfinite(np.diagonal(G_theory, axis1=1, axis2=2)).sum(1).max())
        iu = np.triu_indices(C, 1)
        for s in range(x.size):
            pairs.scatter(G_theory[s][iu], G_train[s][iu], s=6, marker=marker, color=cmap(s / max(1, x.size - 1)),
                          alpha=0.8, linewidths=0)  # fmt: skip
        c_train = _tail(ds, "train").sel(sel).where(trained).values.reshape(x.size, -1)  # (S, dim x seed)
        for column in c_train.T:
            tail.plot(x, column, marker, color=colour, ms=3, alpha=0.6, ls="none")
        tail.plot(x, _row_mean(c_train), "-", color=colour, lw=1, label=f"trained, k = {k:g}")
        tail.plot(x, _tail(ds, "theory").sel(sel).values, "--", color=colour, lw=1, label=f"theory, k = {k:g}")
        few = ds.acc_test_class.sel(sel).where(trained[..., None]).values[..., C - 1].reshape(x.size, -1)
        many = ds.acc_many_test.sel(sel).where(trained).values.reshape(x.size, -1)
        accuracy.plot(x, _row_mean(few), "-", marker=marker, ms=3, color=colour, label=f"smallest class, k = {k:g}")
        accuracy.plot(x, _row_mean(many), ":", color=colour, lw=1, label=f"many-shot, k = {k:g}")
        onset, note = _onsets(ds, point, k)
        if math.isfinite(onset):
            for ax in (tail, accuracy):
                ax.axvline(onset, color=colour, lw=0.8, ls="-.")
        notes.append(f"k = {k:g}: {note}" + (f" = {onset:.3g}" if math.isfinite(onset) else ""))
    lim = (-1.05, 1.05)
    pairs.plot(lim, lim, color="0.5", lw=0.6)
    pairs.set(xlim=lim, ylim=lim, xlabel="optimal cosine (theory)", ylabel="trained cosine (mean over seeds)")
    pairs.set_title("every class pair (colour: " + scan + ", dark = small)", fontsize=7)
    tail.set(xscale="log", xlabel=scan, ylabel="cosine of the tail pair", ylim=(-1.05, 1.05))
    tail.set_title("tail pair: trained (dots: seeds), theory (dashed)", fontsize=7)
    accuracy.set(xscale="log", xlabel=scan, ylabel="test accuracy (NCM)", ylim=(-0.02, 1.02))
    accuracy.set_title("smallest class, many-shot (dotted)", fontsize=7)
    for ax in (tail, accuracy):
        ax.legend(fontsize=5, loc="lower left")
    shape_text = ", ".join(f"{d}={v}" for d, v in shape.items())
    fig.suptitle(f"in-batch training against the theory: {loss}, {profile_of(ds)}({shape_text}); tail merge "
                 f"(dash-dot): {'; '.join(notes)}", fontsize=7)  # fmt: skip
    return fig


def practised_shapes(ds: xr.Dataset) -> list[dict]:
    """The profile shapes of a store, one figure each: [{'C': 10}] or [{'n_major': 2, 'n_minor': 2}, ...]."""
    if profile_of(ds) == "step":
        return [{"n_major": int(a), "n_minor": int(b)} for a in ds.n_major.values for b in ds.n_minor.values]
    return [{"C": int(C)} for C in ds.C.values]

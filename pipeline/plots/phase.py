"""Figures from a results store alone: phase diagrams, threshold curves, Gram panels.

Every figure is sized for a paper column (3.4 in wide), uses colourblind-safe colormaps
(cividis for cosines, RdBu_r for Gram matrices), labels its axes with units, and is written as
PNG and PDF. Pending or failed points are left undrawn over a hatched background.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from pipeline.analysis import (
    PHASE_CODE,
    UNRESOLVED_RTOL,
    agreement,
    gram_points,
    has_training,
    minor_cosine,
    threshold_beyond,
    threshold_curve,
    train_phase,
)
from pipeline.plots.axes import COLUMN_IN, OKABE_ITO, curves_against_k, k_axis, k_log_axes, log_edges
from pipeline.theory.threshold import R_MAX


def phase_diagram(ds: xr.Dataset, loss: str, n_major: int, n_minor: int) -> tuple[plt.Figure, dict]:
    """R (log) against k, coloured by the theory's minority cosine c, with R*(k) on top.

    Returns the figure and its drawn data: ``{'mesh': masked c (R, k), 'threshold': (k, R*), 'no_threshold':
    k where R* = inf, 'beyond': k where R* exceeds the swept R}``. The y axis is the swept R.
    """
    point = {"loss": loss, "n_major": n_major, "n_minor": n_minor}
    c = minor_cosine(ds).sel(point).transpose("R", "k").load()  # (R, k)
    k, R = ds.k.values, ds.R.values
    x_k, k_labels = k_axis(k)  # k = inf as its own column
    fig, ax = plt.subplots(figsize=(COLUMN_IN, 3.0), layout="constrained")
    values = np.ma.masked_invalid(c.values)
    if values.mask.any():  # hatched background shows through undrawn (pending / failed) cells
        ax.set_facecolor("0.92")
        ax.patch.set_hatch("////")
        ax.patch.set_edgecolor("0.7")
    mesh = ax.pcolormesh(log_edges(x_k), log_edges(R), values, cmap="cividis", vmin=-1, vmax=1, shading="flat")
    fig.colorbar(mesh, ax=ax, label="minority cosine c (theory)")
    curve = threshold_curve(ds).sel(point).load()
    finite = np.isfinite(curve.values)
    edges = log_edges(R)
    beyond = finite & (curve.values > edges[-1])  # R* past the swept R: marked at the top edge, not drawn there
    shown = finite & ~beyond
    line = shown & np.isfinite(k)  # R*(k) joined over finite k; R*_inf its own marker
    if line.any():
        ax.plot(x_k[line], curve.values[line], "o-", color="#d55e00", lw=1.2, ms=3, label="threshold R*(k)")
    at_inf = shown & np.isinf(k)
    if at_inf.any():
        ax.plot(x_k[at_inf], curve.values[at_inf], "D", color="#d55e00", ms=4, label="R* at k = inf")
    if beyond.any():
        ax.plot(x_k[beyond], np.full(beyond.sum(), edges[-1]), "^", color="#d55e00", mfc="white", ms=5,
                clip_on=False, label=f"R* above the swept R (up to {curve.values[beyond].max():.2g})")  # fmt: skip
    none = np.isinf(curve.values)
    if none.any():
        ax.plot(x_k[none], np.full(none.sum(), edges[-1]), "^", color="#d55e00", ms=5, clip_on=False,
                label="R* = inf")  # fmt: skip
    unscanned = threshold_beyond(ds).sel(point).values  # under a remedy: apart up to R_MAX, undecided past it
    if unscanned.any():
        ax.plot(x_k[unscanned], np.full(unscanned.sum(), edges[-1]), "^", color="0.35", mfc="white", ms=5,
                clip_on=False, label=f"R* > {R_MAX:.0e}: apart up to there, not decided past it")  # fmt: skip
    ax.set_ylim(edges[0], edges[-1])  # the swept R, whatever R* is
    drawn = {"mesh": values, "threshold": (k[finite], curve.values[finite]), "no_threshold": k[none],
             "beyond": k[beyond], "unscanned": k[unscanned]}  # fmt: skip
    if has_training(ds):
        drawn["training"] = _training_markers(ds, ax, point, x_k)
    k_log_axes(ax, k, x_k, k_labels, plain_y=False)
    ax.set_ylabel("imbalance ratio R = p_major / p_minor")
    ax.set_title(f"{loss}, K_A={n_major}, K_B={n_minor}")
    if ax.get_legend_handles_labels()[0]:  # below the axes: it never covers cells
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=1, fontsize=6,
                   facecolor="0.7", edgecolor="none")  # grey: the white training circles show
    return fig, drawn


def _training_markers(ds: xr.Dataset, ax: plt.Axes, point: dict, x_k: np.ndarray) -> dict[str, np.ndarray]:
    """Mark trained (k, R) cells: circles where every trained run agrees with theory, crosses where a
    stationary run disagrees, triangles where the only disagreeing runs are not stationary, diamonds
    where they are stationary within UNRESOLVED_RTOL of the optimum's objective (``unresolved``).

    Uses the largest trained dim; returns the marked (k, R) pairs per outcome. ``x_k`` gives the
    axis position of each k (:func:`k_axis`).
    """
    phase = train_phase(ds).sel(point)  # (R, k, dim, seed)
    outcomes = ("minority_collapse", "no_collapse", "disagreement", "not_converged", "unresolved")
    trained = phase.isin([PHASE_CODE[name] for name in outcomes])
    dims = [d for d in phase.dim.values if bool(trained.sel(dim=d).any())]
    marks = {name: np.empty((0, 2)) for name in ("agree", "disagree", "not_converged", "unresolved")}
    if not dims:
        return marks
    dim = max(dims)
    phase, trained = phase.sel(dim=dim), trained.sel(dim=dim)
    disagree = (phase == PHASE_CODE["disagreement"]).any("seed") & trained.any("seed")
    unconverged = (phase == PHASE_CODE["not_converged"]).any("seed") & trained.any("seed") & ~disagree
    unresolved = (phase == PHASE_CODE["unresolved"]).any("seed") & trained.any("seed") & ~disagree & ~unconverged
    agree = trained.any("seed") & ~disagree & ~unconverged & ~unresolved
    grid_R, grid_k = xr.broadcast(ds.R, ds.k)
    labels = {"agree": "agrees with the theory", "disagree": "contradicts the theory, stationary",
              "not_converged": "contradicts the theory, not stationary",
              "unresolved": f"contradicts the theory within {UNRESOLVED_RTOL:g} of L*"}  # fmt: skip
    for name, mask, style in (("agree", agree, dict(marker="o", mfc="none", mec="white", ms=3.5, mew=0.8)),
                              ("disagree", disagree, dict(marker="x", color="#CC79A7", ms=4.5, mew=1.2)),
                              ("not_converged", unconverged, dict(marker="^", mfc="none", mec="#E69F00", ms=3.5,
                                                                  mew=0.9)),
                              ("unresolved", unresolved, dict(marker="D", mfc="none", mec="#56B4E9", ms=3.0,
                                                              mew=0.9))):  # fmt: skip
        m = mask.transpose("R", "k").values
        pts = np.column_stack([grid_k.transpose("R", "k").values[m], grid_R.transpose("R", "k").values[m]])
        marks[name] = pts
        if len(pts):
            label = f"training (d={dim}) {labels[name]}"
            position = dict(zip(ds.k.values.tolist(), x_k, strict=True))
            ax.plot([position[v] for v in pts[:, 0]], pts[:, 1], ls="none", label=label, **style)
    return marks


def training_figure(ds: xr.Dataset, loss: str, n_major: int, n_minor: int) -> plt.Figure:
    """Theory against training: c_train (mean, spread over seeds) vs c_theory, and distance vs R."""
    point = {"loss": loss, "n_major": n_major, "n_minor": n_minor}
    stats = agreement(ds).sel(point)
    c_theory = ds.cos_minor_theory.sel(point)
    dist = ds.dist_to_theory.sel(point)
    fig, (left, right) = plt.subplots(1, 2, figsize=(COLUMN_IN * 2, 2.5), layout="constrained")
    left.plot([-1, 1], [-1, 1], color="0.6", lw=0.8, label="training = theory")
    C = n_major + n_minor
    for i, dim in enumerate(ds.dim.values):
        mean = stats.c_train_mean.sel(dim=dim)
        if not bool(mean.notnull().any()):
            continue
        color = OKABE_ITO[i % len(OKABE_ITO)]
        x, y = xr.broadcast(c_theory, mean)
        left.errorbar(x.values.ravel(), y.values.ravel(), yerr=stats.c_train_std.sel(dim=dim).values.ravel(),
                      fmt="o", ms=2.5, color=color, lw=0.8,
                      label=f"d = {dim}" + (f" < C = {C}: x is the full-rank c" if dim < C else ""))  # fmt: skip
        d_mean = dist.sel(dim=dim).mean("seed")
        for k in ds.k.values:
            series = d_mean.sel(k=k)
            if bool(series.notnull().any()):
                right.plot(ds.R.values, series.values, "o-", ms=2.5, lw=0.8, color=color, label=f"d = {dim}, k = {k:g}")
    left.set_xlabel("minority cosine c, theory")
    left.set_ylabel("c, training (mean ± sd, seeds)")
    left.legend(fontsize=6)
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("imbalance ratio R = p_major / p_minor")
    right.set_ylabel("distance to theory\n||G_train - G*_d||_F / C")
    curve = threshold_curve(ds).sel(point)
    for k in ds.k.values:
        R_star = float(curve.sel(k=k))
        if np.isfinite(R_star) and bool(dist.sel(k=k).notnull().any()):
            right.axvline(R_star, color="0.5", ls="--", lw=0.8)
    right.legend(fontsize=6)
    fig.suptitle(f"theory vs training: {loss}, K_A={n_major}, K_B={n_minor} (dashed: R*; right: G*_d is the "
                 "optimum at the run's d, rank-d where d < C)", fontsize=7)  # fmt: skip
    return fig


def thresholds_figure(ds: xr.Dataset) -> tuple[plt.Figure, dict]:
    """R*(k) for every loss and class-count pair (a panel per loss when there are many)."""
    curve = threshold_curve(ds).load()
    panels = {
        str(loss): [
            (f"K_A={n_major}, K_B={n_minor}", curve.sel(loss=loss, n_major=n_major, n_minor=n_minor).values)
            for n_major in curve.n_major.values
            for n_minor in curve.n_minor.values
        ]
        for loss in curve.loss.values
    }
    return curves_against_k(curve.k.values, panels, "threshold R* (minority collapse)",
                            "minority-collapse threshold R*(k): minorities merge above the curve")  # fmt: skip


def gram_panels(ds: xr.Dataset, loss: str, n_major: int, n_minor: int, k: float) -> plt.Figure:
    """Optimal Gram matrices at three grid values of R around the threshold (see ``gram_points``)."""
    picks = gram_points(ds, loss, n_major, n_minor, k)
    C = n_major + n_minor
    fig, axes = plt.subplots(1, 3, figsize=(COLUMN_IN * 1.5, 1.9), layout="constrained")
    image = None
    for ax, (label, R) in zip(axes, picks, strict=True):
        point = {"loss": loss, "n_major": n_major, "n_minor": n_minor, "k": k, "R": R}
        done = int(ds.done_theory.sel(point)) == 1
        G = ds.gram_theory.sel(point).values[:C, :C]
        image = ax.imshow(np.where(done, G, np.nan), cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_title(label + ("" if done else " (pending)"), fontsize=7)
        ax.set_xticks(range(C), ["A"] * n_major + ["B"] * n_minor)
        ax.set_yticks(range(C), ["A"] * n_major + ["B"] * n_minor)
    fig.colorbar(image, ax=axes, label="cosine between class means", shrink=0.9)
    fig.suptitle(f"{loss}, K_A={n_major}, K_B={n_minor}, k={k:g}")
    return fig

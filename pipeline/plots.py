"""Figures from a results store alone: phase diagrams, threshold curves, Gram panels.

Every figure is sized for a paper column (3.4 in wide), uses colourblind-safe colormaps
(cividis for cosines, RdBu_r for Gram matrices), labels its axes with units, and is written as
PNG and PDF. Pending or failed points are left undrawn over a hatched background.
"""

from __future__ import annotations

import csv
import re
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from pipeline.analysis import (
    PHASES,
    gram_points,
    minor_cosine,
    phase_counts,
    select,
    threshold_curve,
    thresholds_table,
)

COLUMN_IN = 3.4
OKABE_ITO = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]
plt.rcParams.update({"font.size": 8, "axes.titlesize": 8, "legend.fontsize": 7, "figure.dpi": 100,
                     "axes.prop_cycle": plt.cycler(color=OKABE_ITO)})  # fmt: skip


def slug(text: str) -> str:
    """File-name-safe form of a coordinate value: 'infonce(tau=0.5)' -> 'infonce-tau0.5'."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", text.replace("=", "")).strip("-")


def _edges(values: np.ndarray) -> np.ndarray:
    """Cell edges in log space around positive coordinate values."""
    log_v = np.log(values.astype(float))
    if log_v.size == 1:
        return np.exp(log_v + np.array([-0.5, 0.5]))
    mid = (log_v[1:] + log_v[:-1]) / 2
    return np.exp(np.concatenate([[2 * log_v[0] - mid[0]], mid, [2 * log_v[-1] - mid[-1]]]))


def _save(fig: plt.Figure, out: Path, name: str) -> list[Path]:
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=200)  # constrained layout: bbox_inches="tight" would double the time
    fig.savefig(paths[1])
    plt.close(fig)
    return paths


def phase_diagram(ds: xr.Dataset, loss: str, n_major: int, n_minor: int) -> tuple[plt.Figure, dict]:
    """R (log) against k, coloured by the theory's minority cosine c, with R*(k) on top.

    Returns the figure and its drawn data: ``{'mesh': masked c (R, k), 'threshold': (k, R*)}``.
    """
    point = {"loss": loss, "n_major": n_major, "n_minor": n_minor}
    c = minor_cosine(ds).sel(point).transpose("R", "k").load()  # (R, k)
    k, R = ds.k.values, ds.R.values
    fig, ax = plt.subplots(figsize=(COLUMN_IN, 2.6), layout="constrained")
    values = np.ma.masked_invalid(c.values)
    if values.mask.any():  # hatched background shows through undrawn (pending / failed) cells
        ax.set_facecolor("0.92")
        ax.patch.set_hatch("////")
        ax.patch.set_edgecolor("0.7")
    mesh = ax.pcolormesh(_edges(k), _edges(R), values, cmap="cividis", vmin=-1, vmax=1, shading="flat")
    fig.colorbar(mesh, ax=ax, label="minority cosine c (theory)")
    curve = threshold_curve(ds).sel(point).load()
    finite = np.isfinite(curve.values)
    ax.plot(k[finite], curve.values[finite], "o-", color="#d55e00", lw=1.2, ms=3, label="threshold R*(k)")
    none = np.isinf(curve.values)
    if none.any():
        top = _edges(R)[-1]
        ax.plot(k[none], np.full(none.sum(), top), "^", color="#d55e00", ms=5, clip_on=False, label="R* = inf")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("negatives per anchor k")
    ax.set_ylabel("imbalance ratio R = p_major / p_minor")
    ax.set_title(f"{loss}, K_A={n_major}, K_B={n_minor}")
    ax.set_xticks(k, [str(v) for v in k])
    if finite.any() or none.any():
        ax.legend(loc="lower right", frameon=True)
    return fig, {"mesh": values, "threshold": (k[finite], curve.values[finite]), "no_threshold": k[none]}


def thresholds_figure(ds: xr.Dataset) -> tuple[plt.Figure, dict]:
    """R*(k) for every loss and class-count pair on one figure."""
    curve = threshold_curve(ds).load()
    fig, ax = plt.subplots(figsize=(COLUMN_IN * 1.5, 2.6), layout="constrained")
    drawn = {}
    markers = "osD^v<>p"
    for i, (loss, n_major, n_minor) in enumerate(
        (lo, a, b) for lo in curve.loss.values for a in curve.n_major.values for b in curve.n_minor.values
    ):
        values = curve.sel(loss=loss, n_major=n_major, n_minor=n_minor).values
        if not np.isfinite(values).any():
            continue
        finite = np.isfinite(values)
        label = f"{loss}, {n_major}+{n_minor}"
        ax.plot(curve.k.values[finite], values[finite], marker=markers[i % len(markers)], ms=3, lw=1, label=label)
        drawn[label] = (curve.k.values[finite], values[finite])
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("negatives per anchor k")
    ax.set_ylabel("threshold R* (minority collapse)")
    ax.set_xticks(curve.k.values, [str(v) for v in curve.k.values])
    if drawn:
        ax.legend(fontsize=6, ncol=1, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig, drawn


def gram_panels(ds: xr.Dataset, loss: str, n_major: int, n_minor: int, k: int) -> plt.Figure:
    """Optimal Gram matrices below, at and above the threshold."""
    picks = gram_points(ds, loss, n_major, n_minor, k)
    C = n_major + n_minor
    fig, axes = plt.subplots(1, 3, figsize=(COLUMN_IN * 1.5, 1.9), layout="constrained")
    image = None
    for ax, (label, R) in zip(axes, picks, strict=True):
        point = {"loss": loss, "n_major": n_major, "n_minor": n_minor, "k": k, "R": R}
        done = int(ds.done_theory.sel(point)) == 1
        G = ds.gram_theory.sel(point).values[:C, :C]
        image = ax.imshow(np.where(done, G, np.nan), cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_title(f"{label}: R={R:.3g}" + ("" if done else " (pending)"))
        ax.set_xticks(range(C), ["A"] * n_major + ["B"] * n_minor)
        ax.set_yticks(range(C), ["A"] * n_major + ["B"] * n_minor)
    fig.colorbar(image, ax=axes, label="cosine between class means", shrink=0.9)
    fig.suptitle(f"{loss}, K_A={n_major}, K_B={n_minor}, k={k}")
    return fig


def write_figures(path: str, out: str | Path, selection: str | None = None) -> dict[str, object]:
    """Write every figure, ``thresholds.csv`` and ``summary.md`` for a store; report what was skipped."""
    from pipeline.store import open_results

    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ds = select(open_results(path), selection).load()
    written: list[Path] = []
    skipped: list[str] = []
    combos = [(str(lo), int(a), int(b)) for lo in ds.loss.values for a in ds.n_major.values for b in ds.n_minor.values]
    for loss, n_major, n_minor in combos:
        point = {"loss": loss, "n_major": n_major, "n_minor": n_minor}
        n_pending = int((ds.done_theory.sel(point) == 0).sum())
        if n_pending:
            skipped.append(f"{loss} K_A={n_major} K_B={n_minor}: {n_pending} theory points pending (hatched)")
        fig, _ = phase_diagram(ds, loss, n_major, n_minor)
        written += _save(fig, out, f"phase_{slug(loss)}_A{n_major}_B{n_minor}")
        k_mid = int(ds.k.values[len(ds.k) // 2])
        written += _save(gram_panels(ds, loss, n_major, n_minor, k_mid), out,
                         f"gram_{slug(loss)}_A{n_major}_B{n_minor}_k{k_mid}")  # fmt: skip
    fig, _ = thresholds_figure(ds)
    written += _save(fig, out, "thresholds")
    rows = thresholds_table(ds)
    with open(out / "thresholds.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    written.append(out / "thresholds.csv")
    written.append(write_summary(ds, out / "summary.md", rows, skipped))
    return {"written": written, "skipped": skipped, "seconds": time.perf_counter() - start}


def write_summary(ds: xr.Dataset, path: Path, rows: list[dict], skipped: list[str]) -> Path:
    counts = phase_counts(ds)
    lines = [f"# {ds.attrs.get('title', 'clphase results')}", "",
             f"Conventions: {ds.attrs.get('conventions', '')}", "",
             "| phase | theory points |", "|---|---|"]  # fmt: skip
    lines += [f"| {name} | {counts[name]} |" for name in PHASES]
    lines += ["", "| loss | K_A | K_B | k | R* | status |", "|---|---|---|---|---|---|"]
    for row in rows:
        R_star = "inf" if np.isinf(row["R_star"]) else ("" if np.isnan(row["R_star"]) else f"{row['R_star']:.4g}")
        cells = [row["loss"], row["n_major"], row["n_minor"], row["k"], R_star, row["status"]]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    if skipped:
        lines += ["", "Skipped (not drawn as values):", *[f"- {s}" for s in skipped]]
    path.write_text("\n".join(lines) + "\n")
    return path

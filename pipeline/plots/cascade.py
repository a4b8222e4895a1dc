"""Figures of long-tailed (exp) and measured (counts) profiles: the collapse cascade.

For each (loss, C) of an exp store: the Gram entries of the class means against rho (a panel per k,
the two smallest classes drawn thick), the number of distinct directions over (k, rho) as a phase
diagram with the onset curves rho*_m(k) on it, and the onsets against k. For counts stores: the
optimal Gram matrix per count vector and k. Same conventions as :mod:`pipeline.plots.phase` (a paper
column wide, colourblind-safe maps, PNG and PDF, pending points hatched and never drawn as values).
"""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from pipeline.analysis import distinct_directions, onset_curve
from pipeline.plots.axes import COLUMN_IN, OKABE_ITO, curves_against_k, k_axis, k_log_axes, log_edges
from pipeline.sweep.results import STATUS_CODE


def gram_against_rho(ds: xr.Dataset, loss: str, C: int) -> plt.Figure:
    """Cosines G_ij(rho) of every class pair, one panel per k; the two smallest classes thick."""
    ks = ds.k.values
    fig, axes = plt.subplots(1, len(ks), figsize=(COLUMN_IN * min(2.0, 0.75 * len(ks) + 0.5), 2.2),
                             layout="constrained", sharey=True, squeeze=False)  # fmt: skip
    rho = ds.rho.values
    cmap = matplotlib.colormaps["cividis"]
    for ax, k in zip(axes[0], ks, strict=True):
        point = {"loss": loss, "C": C, "k": k}
        ok = ((ds.done_theory.sel(point) == 1) & (ds.status_theory.sel(point) != STATUS_CODE["error"])).values
        G = ds.gram_theory.sel(point).values[:, :C, :C]  # (rho, C, C)
        for i in range(C):
            for j in range(i + 1, C):
                tail = (i, j) == (C - 2, C - 1)
                ax.plot(rho[ok], G[ok, i, j], lw=1.6 if tail else 0.5, color="#D55E00" if tail else cmap(j / C),
                        zorder=3 if tail else 2)  # fmt: skip
        ax.set_xscale("log")
        ax.set_title(f"k = {'∞' if np.isinf(k) else f'{k:g}'}")
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(numticks=4))
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        if not ok.all():
            ax.text(0.02, 0.02, f"{int((~ok).sum())} pending", transform=ax.transAxes, fontsize=6)
    axes[0, 0].set_ylabel("cosine between class means")
    axes[0, 0].set_ylim(-1.05, 1.05)
    fig.supxlabel("imbalance rho = p_0 / p_{C-1}", fontsize=8)
    fig.suptitle(f"optimal class geometry against rho: {loss}, exp(C={C})\nthick: the two smallest classes; "
                 "thin: the other pairs, dark to light by the pair's smaller class", fontsize=7)  # fmt: skip
    return fig


def directions_diagram(ds: xr.Dataset, loss: str, C: int) -> tuple[plt.Figure, dict]:
    """Distinct directions over (k, rho) with the onset curves rho*_m(k)."""
    point = {"loss": loss, "C": C}
    count = distinct_directions(ds).sel(point).transpose("rho", "k").values  # (rho, k)
    k, rho = ds.k.values, ds.rho.values
    x_k, k_labels = k_axis(k)
    fig, ax = plt.subplots(figsize=(COLUMN_IN, 2.8), layout="constrained")
    ax.set_facecolor("0.85")  # pending / undecided cells show as hatched grey
    ax.add_patch(matplotlib.patches.Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False, hatch="///",
                                              edgecolor="0.6", lw=0, zorder=0))  # fmt: skip
    cmap = matplotlib.colormaps["cividis"].resampled(C)
    mesh = ax.pcolormesh(log_edges(x_k), log_edges(rho), np.ma.masked_invalid(count), cmap=cmap, vmin=0.5, vmax=C + 0.5,
                         shading="flat", zorder=1)  # fmt: skip
    fig.colorbar(mesh, ax=ax, label="distinct class directions", ticks=range(1, C + 1))
    drawn = {}
    if "rho_onset" in ds:
        curve = onset_curve(ds).sel(point)
        for i, m in enumerate(curve.onset.values):
            if m >= C:
                continue
            values = curve.sel(onset=m).values  # (k,)
            finite = np.isfinite(values)
            if finite.any():
                ax.plot(x_k[finite], values[finite], "o-", ms=2.5, lw=1, color=OKABE_ITO[(i + 1) % 8],
                        label=f"rho*_{m}", zorder=3)  # fmt: skip
                drawn[int(m)] = (k[finite], values[finite])
    k_log_axes(ax, k, x_k, k_labels)
    ax.set_ylim(log_edges(rho)[0], log_edges(rho)[-1])
    ax.set_ylabel("imbalance rho = p_0 / p_{C-1}")
    ax.set_title(f"collapse cascade: {loss}, exp(C={C})")
    if drawn:
        fig.legend(loc="outside lower center", ncol=min(4, len(drawn)), fontsize=6, frameon=False,
                   title="onsets: the m smallest classes merge above", title_fontsize=6)  # fmt: skip
    elif "rho_onset" in ds:  # a second x-label line: constrained layout makes room for it
        ax.set_xlabel("negatives per anchor k\n(no onset rho*_m within the scan, or undecided: see onsets.csv)",
                      fontsize=7)  # fmt: skip
    return fig, drawn


def onsets_figure(ds: xr.Dataset) -> tuple[plt.Figure, dict]:
    """rho*_m against k for every loss, C and m."""
    curve = onset_curve(ds).load()
    panels = {
        str(loss): [(f"C={C}, m={m}", curve.sel(loss=loss, C=C, onset=m).values)
                    for C in curve.C.values for m in curve.onset.values if m < C]
        for loss in curve.loss.values
    }  # fmt: skip
    title = "cascade onsets: the m smallest classes share one direction above rho*_m"
    fig, drawn = curves_against_k(curve.k.values, panels, "onset rho*_m", title)
    if not drawn:
        fig.axes[0].text(0.5, 0.5, "no onset within the scanned rho (or undecided): see onsets.csv", ha="center",
                         transform=fig.axes[0].transAxes, fontsize=7)  # fmt: skip
    return fig, drawn


def counts_gram(ds: xr.Dataset, loss: str, name: str) -> plt.Figure:
    """Optimal Gram matrices of one count vector, one panel per k."""
    ks = ds.k.values
    fig, axes = plt.subplots(1, len(ks), figsize=(COLUMN_IN * min(2.0, 0.7 * len(ks) + 0.3), 1.9),
                             layout="constrained", squeeze=False)  # fmt: skip
    image = None
    for ax, k in zip(axes[0], ks, strict=True):
        point = {"loss": loss, "counts": name, "k": k}
        G = ds.gram_theory.sel(point).values
        C = int(np.isfinite(np.diag(G)).sum()) or G.shape[0]
        image = ax.imshow(G[:C, :C], cmap="RdBu_r", vmin=-1, vmax=1)
        count = ds.directions_theory.sel(point).values
        ax.set_title(f"k = {'∞' if np.isinf(k) else f'{k:g}'}: {'?' if np.isnan(count) else int(count)} directions")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=axes, label="cosine between class means", shrink=0.9)
    fig.suptitle(f"{loss}, counts {name} (classes in the order given)")
    return fig

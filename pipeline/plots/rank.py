"""The rank-d theory of a store with ``theory.rank_dims``: how the tail's geometry and the gap to the convex
optimum change as the embedding dimension d drops below C.

One figure per (loss, class counts): the tail's cosine against d (step profiles: the minority cosine c; exp
and counts: the two smallest classes) and the gap ``objective_rank_theory - lower bound`` against d, one curve
per scan value (R, rho or the counts' name), a line style per k. The convex optimum sits at d >= C (dotted line
at d = C). An open marker is a rank-d point that is not second-order stationary; the gap is drawn at a floor of
1e-16 (a rank-d point that attains the convex bound).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from pipeline.plots.axes import COLUMN_IN, OKABE_ITO, figure_legend

GAP_FLOOR = 1e-16
LINE_STYLES = ("-", "--", ":", "-.")


def has_rank(ds: xr.Dataset) -> bool:
    return "objective_rank_theory" in ds


def rank_panels(ds: xr.Dataset) -> list[tuple[str, dict]]:
    """(title, selection) of each rank figure: a loss and its class counts (step: K_A, K_B; exp: C)."""
    out = []
    for loss in map(str, ds.loss.values):
        if "n_major" in ds.dims:
            out += [(f"{loss}, K_A={a}, K_B={b}", {"loss": loss, "n_major": int(a), "n_minor": int(b)})
                    for a in ds.n_major.values for b in ds.n_minor.values]  # fmt: skip
        elif "C" in ds.dims:
            out += [(f"{loss}, exp(C={C})", {"loss": loss, "C": int(C)}) for C in ds.C.values]
        else:
            out.append((f"{loss}, counts", {"loss": loss}))
    return out


def rank_figure(ds: xr.Dataset, title: str, point: dict) -> tuple[plt.Figure, dict]:
    """The tail's cosine and the gap against d at one (loss, class counts); returns the figure and
    {"scan value, k": (d, cosine, gap)} of what was drawn."""
    sub = ds.sel(point)
    cosine = sub["cos_minor_rank_theory"] if "cos_minor_rank_theory" in sub else sub["cos_tail_rank_theory"]
    scan = next(d for d in cosine.dims if d not in ("k", "rank_dim"))  # R, rho or counts
    d = sub.rank_dim.values.astype(float)
    C = point["C"] if "C" in point else point["n_major"] + point["n_minor"] if "n_major" in point else None
    fig, (left, right) = plt.subplots(1, 2, figsize=(2 * COLUMN_IN, 2.4), layout="constrained")
    drawn = {}
    for i, value in enumerate(cosine[scan].values):
        colour = OKABE_ITO[i % len(OKABE_ITO)]
        for j, k in enumerate(cosine.k.values):
            at = {scan: value, "k": k}
            cos = cosine.sel(at).values
            gap = np.maximum(sub["gap_rank_theory"].sel(at).values, GAP_FLOOR)
            stationary = sub["second_order_rank_theory"].sel(at).values != 0
            k_text = "inf" if np.isinf(k) else f"{k:g}"
            label = f"{scan} = {value if isinstance(value, str) else f'{value:g}'}, k = {k_text}"
            style = {"color": colour, "ls": LINE_STYLES[j % len(LINE_STYLES)], "lw": 1}
            for ax, y in ((left, cos), (right, gap)):
                ax.plot(d, y, label=label, **style)
                ax.plot(d[stationary], y[stationary], "o", ms=3, color=colour)
                ax.plot(d[~stationary], y[~stationary], "o", ms=4, mfc="none", color=colour)
            drawn[label] = (d, cos, gap)
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(d, [f"{x:g}" for x in d])
        ax.xaxis.set_minor_locator(plt.NullLocator())
        ax.set_xlabel("embedding dimension d")
        if C is not None:
            ax.axvline(C, color="0.5", ls=":", lw=0.8)
    left.set_ylabel("minority cosine c" if "n_major" in point else "tail cosine (two smallest classes)")
    right.set_yscale("log")
    right.set_ylabel("gap to the convex optimum (nats)")
    fig.suptitle(f"{title}: rank-d optimum (open: not second-order stationary; dotted: d = C)", fontsize=8)
    figure_legend(fig, np.array([left]), loc="outside right center")
    return fig, drawn

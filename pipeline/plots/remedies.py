"""Figures of a store that sweeps remedies (a ``remedy`` dim): the threshold against k per remedy.

A step store gets R*(k), an exp store the first cascade onset rho*_2(k) (the two smallest classes merge),
one curve per remedy and a panel per (loss, class counts). Where the threshold lies beyond the scan and is
not decided past it (a remedy's R -> inf limit is not derived), an open triangle sits at the top edge; where
the paper's loss has no threshold at all (R* = inf, proved by its limit), a filled one. Same conventions as
:mod:`pipeline.plots.phase`.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from pipeline.analysis import onset_curve, theory_done, threshold_beyond, threshold_curve
from pipeline.plots.axes import COLUMN_IN, OKABE_ITO, figure_legend, k_axis, k_log_axes
from pipeline.theory.cascade import RHO_MAX
from pipeline.theory.threshold import R_MAX

MARKERS = "osD^v<>ph*"


def _panels(ds: xr.Dataset) -> list[tuple[str, dict, xr.DataArray, xr.DataArray, float]]:
    """(title, point, threshold over (remedy, k), beyond the scan over (remedy, k), the scan's end) per panel."""
    if "R_threshold" in ds:
        curve, beyond = threshold_curve(ds).load(), threshold_beyond(ds).load()
        return [(f"{loss}, K_A={a}, K_B={b}", {"loss": loss, "n_major": a, "n_minor": b}, curve, beyond, R_MAX)
                for loss in curve.loss.values for a in curve.n_major.values for b in curve.n_minor.values
                if b > 1]  # fmt: skip
    curve = onset_curve(ds).sel(onset=2).load()
    beyond = np.isposinf(curve)  # onset_curve's inf: beyond_range, apart up to the scan's end
    curve = curve.where(~beyond)  # drawn as the open triangle, not as a value
    return [(f"{loss}, exp(C={C})", {"loss": loss, "C": C}, curve, beyond, RHO_MAX)
            for loss in curve.loss.values for C in curve.C.values if C > 2]  # fmt: skip


def thresholds_by_remedy(ds: xr.Dataset) -> tuple[plt.Figure, dict]:
    """R*(k) (step) or rho*_2(k) (exp) per remedy, a panel per loss and class counts.

    Returns the figure and ``{"panel, remedy": (k, values)}`` of the finite values drawn, with
    ``{"panel, remedy, beyond": k}`` where the threshold lies beyond the scan and ``{"panel, remedy, never": k}``
    where it is proved infinite.
    """
    panels = _panels(ds)
    step = "R_threshold" in ds
    n_cols = min(len(panels), 2) or 1
    n_rows = -(-len(panels) // n_cols) or 1
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(COLUMN_IN * (0.8 + 0.8 * n_cols), 0.9 + 2.3 * n_rows),
                             layout="constrained", squeeze=False)  # fmt: skip
    k = ds.k.values
    x_k, k_labels = k_axis(k)
    drawn: dict[str, object] = {}
    top = max((scan_end for *_, scan_end in panels), default=0.0)  # the scan's end, where the triangles sit
    n_remedies = ds.sizes["remedy"]
    for ax, (title, point, curve, beyond, scan_end) in zip(axes.flat, panels, strict=False):
        for i, remedy in enumerate(map(str, ds.remedy.values)):
            style = {"color": OKABE_ITO[i % len(OKABE_ITO)], "marker": MARKERS[i % len(MARKERS)]}
            values = curve.sel({**point, "remedy": remedy}).values  # (k,)
            finite = np.isfinite(values)
            ax.plot(x_k[finite], values[finite], ms=3, lw=1, label=remedy, **style)
            out = beyond.sel({**point, "remedy": remedy}).values  # (k,) apart up to the scan's end, undecided past it
            never = np.isposinf(values)  # (k,) no threshold, proved by the limit (the paper's loss)
            nudge = 10 ** (0.04 * (i - (n_remedies - 1) / 2))  # side by side: several remedies share a k
            for where, face, name in ((out, "white", "beyond"), (never, style["color"], "never")):
                if where.any():
                    ax.plot(x_k[where] * nudge, np.full(where.sum(), scan_end), ls="none", ms=4, mfc=face,
                            clip_on=False, color=style["color"], marker="^")  # fmt: skip
                    drawn[f"{title}, {remedy}, {name}"] = k[where]
            drawn[f"{title}, {remedy}"] = (k[finite], values[finite])
        ax.set_yscale("log")
        ax.set_ylim(0.5, scan_end * 3)  # R, rho >= 1: every threshold and the triangles at the scan's end show
        k_log_axes(ax, k, x_k, k_labels, plain_y=False)
        ax.set_title(title, fontsize=7)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("threshold R*" if step else "first onset rho*_2")
    what = ("R*(k): the minorities merge above the curve" if step
            else "rho*_2(k): the two smallest classes merge above the curve")  # fmt: skip
    fig.suptitle(f"does a remedy prevent Minority Collapse?\n{what}\ntriangles at {top:.0e}: open, apart up to "
                 "there, not decided past it; filled, never (proved)", fontsize=7)  # fmt: skip
    figure_legend(fig, axes, loc="outside lower center", ncol=min(3, ds.sizes["remedy"]), title="remedy",
                  title_fontsize=6)  # fmt: skip
    return fig, drawn


def tail_by_remedy(ds: xr.Dataset) -> tuple[plt.Figure, dict]:
    """An exp store's tail: the optimal cosine between the two smallest classes against rho, one curve per remedy
    and a panel per (loss, C, k). Returns the figure and ``{"panel, remedy": (rho, cosines)}`` drawn."""
    cos = ds.cos_tail_theory.where(theory_done(ds)).load()  # (loss, remedy, C, rho, k)
    panels = [(f"{loss}, exp(C={C}), k = {'∞' if np.isinf(k) else f'{k:g}'}", {"loss": loss, "C": C, "k": k})
              for loss in cos.loss.values for C in cos.C.values for k in cos.k.values]  # fmt: skip
    n_cols = min(len(panels), 4)
    n_rows = -(-len(panels) // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(COLUMN_IN * (0.3 + 0.65 * n_cols), 0.9 + 1.8 * n_rows),
                             layout="constrained", squeeze=False, sharex=True, sharey=True)  # fmt: skip
    rho = ds.rho.values
    drawn: dict[str, object] = {}
    for ax, (title, point) in zip(axes.flat, panels, strict=False):
        for i, remedy in enumerate(map(str, ds.remedy.values)):
            values = cos.sel({**point, "remedy": remedy}).values  # (rho,)
            ok = np.isfinite(values)
            ax.plot(rho[ok], values[ok], lw=1, ms=2.5, label=remedy, color=OKABE_ITO[i % len(OKABE_ITO)],
                    marker=MARKERS[i % len(MARKERS)])  # fmt: skip
            drawn[f"{title}, {remedy}"] = (rho[ok], values[ok])
        ax.set_xscale("log")
        ax.set_ylim(-0.2, 1.05)
        ax.axhline(1.0, color="0.6", lw=0.6, ls=":")
        ax.set_title(title, fontsize=6)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("imbalance rho = p_0 / p_{C-1}", fontsize=7)
    fig.supylabel("cosine of the two smallest classes (theory)", fontsize=7)
    fig.suptitle("the tail under each remedy: 1 is merged (Minority Collapse of the tail pair)", fontsize=7)
    figure_legend(fig, axes, loc="outside lower center", ncol=min(4, ds.sizes["remedy"]), title="remedy",
                  title_fontsize=6)  # fmt: skip
    return fig, drawn

"""What every figure shares: the paper-column size, colourblind-safe colours, the k axis (k = inf as
its own column), log axes with plain tick labels, curves against k, and saving as PNG and PDF."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

COLUMN_IN = 3.4
OKABE_ITO = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]
plt.rcParams.update({"font.size": 8, "axes.titlesize": 8, "legend.fontsize": 7, "figure.dpi": 100,
                     "axes.prop_cycle": plt.cycler(color=OKABE_ITO)})  # fmt: skip


def slug(text: str) -> str:
    """File-name-safe form of a coordinate value: 'infonce(tau=0.5)' -> 'infonce-tau0.5'."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", text.replace("=", "")).strip("-")


def log_edges(values: np.ndarray) -> np.ndarray:
    """Cell edges in log space around positive coordinate values."""
    log_v = np.log(values.astype(float))
    if log_v.size == 1:
        return np.exp(log_v + np.array([-0.5, 0.5]))
    mid = (log_v[1:] + log_v[:-1]) / 2
    return np.exp(np.concatenate([[2 * log_v[0] - mid[0]], mid, [2 * log_v[-1] - mid[-1]]]))


K_LABELS_MAX = 10  # the k axis labels at most about this many of its ticks, evenly spread in log k


def k_axis(k: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Positions and tick labels of the k axis (log scale): finite k at themselves, k = inf as its
    own column one grid step (at least x4) beyond the largest finite k, labelled with the infinity sign.

    Every k has a tick; where ticks crowd (k = 1, 2, 4, ..., 65536) a label is left blank when it is
    closer than 1 / ``K_LABELS_MAX`` of the axis to the last one shown, from the right; the largest
    and the smallest k are always shown.
    """
    k = np.asarray(k, dtype=float)
    finite = k[np.isfinite(k)]
    if finite.size:
        step = max(4.0, finite[-1] / finite[-2]) if finite.size > 1 else 4.0
        x_inf = finite.max() * step
    else:
        x_inf = 1.0
    x = np.where(np.isfinite(k), k, x_inf)

    # one style per axis: powers of two as 2^n throughout when k reaches 1024 and every finite k is one
    powers = finite.size > 0 and finite.max() >= 1024 and all(2 ** round(float(np.log2(v))) == v for v in finite)

    def label(v: float) -> str:
        if not np.isfinite(v):
            return "∞"
        return f"$2^{{{round(float(np.log2(v)))}}}$" if powers else plain_number(v)

    labels = [label(v) for v in k]
    if k.size < 3:
        return x, labels
    position = np.log2(x)
    gap = (position.max() - position.min()) / K_LABELS_MAX
    order = np.argsort(-position, kind="stable")  # from the right: the largest k (inf) keeps its label
    smallest, shown = order[-1], position[order[0]]
    for i in order[1:-1]:
        if shown - position[i] < gap or position[i] - position[smallest] < gap:
            labels[i] = ""  # too close to the last label shown, or to the smallest k's, always shown
        else:
            shown = position[i]
    return x, labels


def plain_number(v: float, powers: bool = False) -> str:
    """A tick label: plain from 0.001 to 99999 (20, 500, 10000), a power of ten beyond (10^5, 10^6: never
    1e+06), or always a power of ten (m x 10^n) with ``powers``, which an axis reaching 10^5 sets for all
    its labels, so that one axis keeps one style (never 10000 beside 10^5)."""
    if v == 0 or (not powers and 1e-3 <= abs(v) < 1e5):
        return f"{v:g}"
    n = int(np.floor(np.log10(abs(v)) + 1e-9))
    m = v / 10.0**n
    return f"$10^{{{n}}}$" if abs(m - 1) < 1e-9 else f"${m:g} \\times 10^{{{n}}}$"


def _plain_log_ticks(axis, minor: bool = True) -> None:
    """Log-axis tick labels as plain numbers (20, 50, 100, 200), not 6x10^1: decades and, with
    ``minor``, the minor ticks at 2 and 5 times a decade are labelled."""

    def powers() -> bool:  # one style per axis: powers of ten throughout once it reaches 10^5
        low, high = sorted(abs(x) for x in axis.get_view_interval())
        return high >= 1e5 or 0 < low < 1e-3

    def minor_label(v: float, _: int) -> str:
        shown = minor and v > 0 and round(v / 10 ** np.floor(np.log10(v))) in (2, 5)
        return plain_number(v, powers()) if shown else ""

    axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: plain_number(v, powers())))
    axis.set_minor_formatter(matplotlib.ticker.FuncFormatter(minor_label))


def _mark_infinite_k(ax: plt.Axes, k: np.ndarray, x: np.ndarray) -> None:
    """A dotted line between the last finite k and the k = inf column."""
    if np.isinf(k).any() and np.isfinite(k).any():
        edge = np.sqrt(x[np.isfinite(k)].max() * x[np.isinf(k)][0])
        ax.axvline(edge, color="0.3", ls=":", lw=0.8)


def k_log_axes(ax: plt.Axes, k: np.ndarray, x_k: np.ndarray, labels: list[str], plain_y: bool = True) -> None:
    """k (log base 2, k = inf as its own column behind a dotted line) on x, a log scale on y."""
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("negatives per anchor k")
    ax.set_xticks(x_k, labels)
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    if plain_y:
        low, high = ax.get_ylim()
        _plain_log_ticks(ax.yaxis, minor=high / low <= 1e3)  # the 2s and 5s crowd a wider range
    _mark_infinite_k(ax, k, x_k)


def save_figure(fig: plt.Figure, out: Path, name: str) -> list[Path]:
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=200)  # constrained layout: bbox_inches="tight" would double the time
    fig.savefig(paths[1])
    plt.close(fig)
    return paths


CURVES_PER_PANEL = 8  # curves against k in one panel; more: a panel per loss


def curves_against_k(
    k: np.ndarray, panels: dict[str, list[tuple[str, np.ndarray]]], ylabel: str, title: str
) -> tuple[plt.Figure, dict]:
    """A figure of curves against the logarithmic k axis, one curve per (label, values over k) of
    each key of ``panels`` (a loss); k = inf is its own column, with a dotted line at its value, the
    limit the curve approaches. The curves of several keys share one panel up to ``CURVES_PER_PANEL``
    of them; beyond, each key has its own panel (with its own y range), a label keeps its colour and
    marker in every panel and appears once in the legend. Returns the figure and
    {"panel, label": (k, values)} of what was drawn (the finite values)."""
    panels = {name: [(label, values) for label, values in series if np.isfinite(values).any()]
              for name, series in panels.items()}  # fmt: skip
    if len(panels) > 1 and sum(map(len, panels.values())) <= CURVES_PER_PANEL:
        panels = {"": [(f"{name}, {label}", values) for name, series in panels.items() for label, values in series]}
    n_cols = min(len(panels), 3) or 1
    n_rows = -(-len(panels) // n_cols) or 1
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(COLUMN_IN * (0.4 + 1.1 * n_cols), 0.4 + 2.2 * n_rows),
                             layout="constrained", squeeze=False)  # fmt: skip
    x_k, k_labels = k_axis(k)
    drawn, styles = {}, {}  # styles: label -> (colour, marker), in order of appearance
    markers = "osD^v<>ph*"
    n_colors = len(OKABE_ITO)  # past them, the marker changes
    for ax, (panel, series) in zip(axes.flat, panels.items(), strict=False):  # spare axes are hidden
        for label, values in series:
            finite = np.isfinite(values)
            i = styles.setdefault(label, len(styles))
            style = {"color": OKABE_ITO[i % n_colors], "marker": markers[(i + i // n_colors) % len(markers)]}
            line = finite & np.isfinite(k)
            ax.plot(x_k[line], values[line], ms=3, lw=1, label=label, **style)
            at_inf = finite & np.isinf(k)
            if at_inf.any():
                ax.plot(x_k[at_inf], values[at_inf], ms=4, ls="none", **style)
                ax.axhline(values[at_inf][0], color=style["color"], ls=":", lw=0.7)
            drawn[f"{panel}, {label}" if panel else label] = (k[finite], values[finite])
        k_log_axes(ax, k, x_k, k_labels)
        ax.set_title(panel, fontsize=8)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    fig.suptitle(title, fontsize=9)
    figure_legend(fig, axes, loc="outside right center")
    return fig, drawn


def figure_legend(fig: plt.Figure, axes: np.ndarray, **kwargs) -> None:
    """One legend for the figure: each label of its panels once (a label keeps its style across panels), small
    and frameless; ``kwargs`` go to ``fig.legend`` (its place, columns, title). Nothing where no panel has one."""
    handles = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    if handles:
        fig.legend(handles.values(), handles.keys(), **{"fontsize": 6, "frameon": False, **kwargs})

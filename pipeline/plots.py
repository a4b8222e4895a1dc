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
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from pipeline.analysis import (
    PHASE_CODE,
    PHASES,
    UNRESOLVED_RTOL,
    agreement,
    gram_points,
    has_training,
    minor_cosine,
    phase_counts,
    profile_of,
    select,
    threshold_curve,
    thresholds_table,
    train_phase,
)
from pipeline.metrics import COLLAPSE_TOL, GRAD_NORM_TOL, LOSS_CHANGE_TOL
from pipeline.results import STATUS_CODE

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

    def label(v: float) -> str:
        if not np.isfinite(v):
            return "∞"
        n = round(float(np.log2(v)))
        return f"$2^{{{n}}}$" if v >= 1024 and 2**n == v else f"{v:g}"

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


def _plain_log_ticks(axis, minor: bool = True) -> None:
    """Log-axis tick labels as plain numbers (20, 50, 100, 200), not 6x10^1: decades and, with
    ``minor``, the minor ticks at 2 and 5 times a decade are labelled."""

    def minor_label(v: float, _: int) -> str:
        return f"{v:g}" if minor and v > 0 and round(v / 10 ** np.floor(np.log10(v))) in (2, 5) else ""

    axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
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


def phase_diagram(ds: xr.Dataset, loss: str, n_major: int, n_minor: int) -> tuple[plt.Figure, dict]:
    """R (log) against k, coloured by the theory's minority cosine c, with R*(k) on top.

    Returns the figure and its drawn data: ``{'mesh': masked c (R, k), 'threshold': (k, R*)}``.
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
    line = finite & np.isfinite(k)  # R*(k) joined over finite k; R*_inf its own marker
    ax.plot(x_k[line], curve.values[line], "o-", color="#d55e00", lw=1.2, ms=3, label="threshold R*(k)")
    at_inf = finite & np.isinf(k)
    if at_inf.any():
        ax.plot(x_k[at_inf], curve.values[at_inf], "D", color="#d55e00", ms=4, label="R* at k = inf")
    none = np.isinf(curve.values)
    if none.any():
        top = log_edges(R)[-1]
        ax.plot(x_k[none], np.full(none.sum(), top), "^", color="#d55e00", ms=5, clip_on=False, label="R* = inf")
    drawn = {"mesh": values, "threshold": (k[finite], curve.values[finite]), "no_threshold": k[none]}
    if has_training(ds):
        drawn["training"] = _training_markers(ds, ax, point, x_k)
    k_log_axes(ax, k, x_k, k_labels, plain_y=False)
    ax.set_ylabel("imbalance ratio R = p_major / p_minor")
    ax.set_title(f"{loss}, K_A={n_major}, K_B={n_minor}")
    if ax.get_legend_handles_labels()[0]:  # below the axes: it never covers cells
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=2, fontsize=6,
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
    labels = {"agree": "agrees", "disagree": "disagrees (stationary)", "not_converged": "not stationary",
              "unresolved": f"differs within {UNRESOLVED_RTOL:g} of L*"}  # fmt: skip
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
    for i, dim in enumerate(ds.dim.values):
        mean = stats.c_train_mean.sel(dim=dim)
        if not bool(mean.notnull().any()):
            continue
        color = OKABE_ITO[i % len(OKABE_ITO)]
        x, y = xr.broadcast(c_theory, mean)
        left.errorbar(x.values.ravel(), y.values.ravel(), yerr=stats.c_train_std.sel(dim=dim).values.ravel(),
                      fmt="o", ms=2.5, color=color, lw=0.8, label=f"d = {dim}")  # fmt: skip
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
    right.set_ylabel("distance to theory\n||G_train - G*||_F / C")
    curve = threshold_curve(ds).sel(point)
    for k in ds.k.values:
        R_star = float(curve.sel(k=k))
        if np.isfinite(R_star) and bool(dist.sel(k=k).notnull().any()):
            right.axvline(R_star, color="0.5", ls="--", lw=0.8)
    right.legend(fontsize=6)
    fig.suptitle(f"theory vs training: {loss}, K_A={n_major}, K_B={n_minor} (dashed: R*)")
    return fig


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
    handles = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    if handles:
        fig.legend(handles.values(), handles.keys(), fontsize=6, frameon=False, loc="outside right center")
    return fig, drawn


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
    fig.suptitle(f"{loss}, K_A={n_major}, K_B={n_minor}, k={k:g}")
    return fig


def write_figures(path: str, out: str | Path, selection: str | None = None) -> dict[str, object]:
    """Write every figure, ``thresholds.csv`` and ``summary.md`` for a store; report what was skipped."""
    from pipeline.store import open_results

    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ds = select(open_results(path), selection).load()
    if profile_of(ds) != "step":
        from pipeline.cascade_plots import write_profile_figures

        return write_profile_figures(ds, out, start)
    written: list[Path] = []
    skipped: list[str] = []
    combos = [(str(lo), int(a), int(b)) for lo in ds.loss.values for a in ds.n_major.values for b in ds.n_minor.values]
    for loss, n_major, n_minor in combos:
        point = {"loss": loss, "n_major": n_major, "n_minor": n_minor}
        n_pending = int((ds.done_theory.sel(point) == 0).sum())
        if n_pending:
            skipped.append(f"{loss} K_A={n_major} K_B={n_minor}: {n_pending} theory points pending (hatched)")
        fig, _ = phase_diagram(ds, loss, n_major, n_minor)
        written += save_figure(fig, out, f"phase_{slug(loss)}_A{n_major}_B{n_minor}")
        if has_training(ds):
            trained = ds.status_train.sel(point) == STATUS_CODE["trained"]
            if bool(trained.any()):
                written += save_figure(training_figure(ds, loss, n_major, n_minor), out,
                                 f"train_{slug(loss)}_A{n_major}_B{n_minor}")  # fmt: skip
            n_train_pending = int((ds.done_train.sel(point) == 0).sum())
            if n_train_pending:
                skipped.append(f"{loss} K_A={n_major} K_B={n_minor}: {n_train_pending} training runs pending")
        k_mid = ds.k.values[len(ds.k) // 2].item()
        k_name = "inf" if np.isinf(k_mid) else f"{k_mid:g}"
        written += save_figure(gram_panels(ds, loss, n_major, n_minor, k_mid), out,
                         f"gram_{slug(loss)}_A{n_major}_B{n_minor}_k{k_name}")  # fmt: skip
    from pipeline.cascade_plots import practised_figures

    written += practised_figures(ds, out)
    fig, _ = thresholds_figure(ds)
    written += save_figure(fig, out, "thresholds")
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
    lines += [f"| {name} | {counts[name]} |" for name in PHASES
              if name not in ("disagreement", "not_converged", "unresolved")]  # fmt: skip
    lines += ["", "| loss | K_A | K_B | k | R* | status |", "|---|---|---|---|---|---|"]
    for row in rows:
        R_star = "inf" if np.isinf(row["R_star"]) else ("" if np.isnan(row["R_star"]) else f"{row['R_star']:.4g}")
        cells = [row["loss"], row["n_major"], row["n_minor"], row["k"], R_star, row["status"]]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    if has_training(ds):
        runs = phase_counts(ds, train_phase(ds))
        lines += ["", f"Training runs (collapse measured as c_train >= 1 - {COLLAPSE_TOL:g}; a run contradicting "
                  f"the theory is a disagreement where it is stationary (free features: the exact loss's normalised "
                  f"gradient norm <= {GRAD_NORM_TOL:g}; mlp, and free features too many for the exact loss: |loss "
                  f"change over the last 10% of steps| <= {LOSS_CHANGE_TOL:g}, which in-batch runs apply only where "
                  f"p_min^2 >= {LOSS_CHANGE_TOL:g}, else unknown), not_converged where it is not or unknown, "
                  f"and unresolved where it is stationary and its geometry's exact objective is within "
                  f"{UNRESOLVED_RTOL:g} (relative) of the optimum's, a gap training does not resolve):", "",
                  "| phase | runs |", "|---|---|"]  # fmt: skip
        lines += [f"| {name} | {runs[name]} |" for name in PHASES]
    if skipped:
        lines += ["", "Skipped (not drawn as values):", *[f"- {s}" for s in skipped]]
    path.write_text("\n".join(lines) + "\n")
    return path

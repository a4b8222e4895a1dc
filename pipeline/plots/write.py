"""Every figure and table of a store, written to a folder: what ``clphase plot`` does."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import xarray as xr

from pipeline.analysis import (
    PHASES,
    UNRESOLVED_RTOL,
    has_thresholds,
    has_training,
    onsets_table,
    phase_counts,
    profile_of,
    remedy_rows,
    select,
    thresholds_table,
    train_phase,
)
from pipeline.metrics import COLLAPSE_TOL, GRAD_NORM_TOL, LOSS_CHANGE_TOL
from pipeline.plots.axes import save_figure, slug
from pipeline.plots.cascade import counts_gram, directions_diagram, gram_against_rho, onsets_figure
from pipeline.plots.phase import gram_panels, phase_diagram, thresholds_figure, training_figure
from pipeline.plots.practised import has_test_split, practised_figure, practised_shapes
from pipeline.plots.rank import has_rank, rank_figure, rank_panels
from pipeline.plots.remedies import tail_by_remedy, thresholds_by_remedy
from pipeline.sweep.results import STATUS_CODE
from pipeline.theory.threshold import R_MAX


def write_figures(path: str, out: str | Path, selection: str | None = None) -> dict[str, object]:
    """Write every figure, ``thresholds.csv`` and ``summary.md`` for a store; report what was skipped."""
    from pipeline.sweep.store import open_results

    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ds = select(open_results(path), selection).load()
    if "remedy" in ds.dims:
        return write_remedy_figures(ds, out, start)
    return write_store_figures(ds, out, start)


def write_store_figures(ds: xr.Dataset, out: Path, start: float) -> dict[str, object]:
    """Every figure and table of a store without a ``remedy`` dim (``ds`` already selected and loaded)."""
    if profile_of(ds) != "step":
        return write_profile_figures(ds, out, start)
    written: list[Path] = []
    skipped: list[str] = []
    combos = [(str(lo), int(a), int(b)) for lo in ds.loss.values for a in ds.n_major.values for b in ds.n_minor.values]
    single_minority = sorted({n_major for _, n_major, n_minor in combos if n_minor == 1})
    if single_minority:
        skipped.append(f"K_B = 1 (K_A = {', '.join(map(str, single_minority))}): no phase diagram or training "
                       "figure, since one minority class has no minority-minority cosine c; its Gram panels "
                       "are drawn")  # fmt: skip
    for loss, n_major, n_minor in combos:
        point = {"loss": loss, "n_major": n_major, "n_minor": n_minor}
        n_pending = int((ds.done_theory.sel(point) == 0).sum())
        if n_pending:
            skipped.append(f"{loss} K_A={n_major} K_B={n_minor}: {n_pending} theory points pending (hatched)")
        if n_minor > 1:
            fig, _ = phase_diagram(ds, loss, n_major, n_minor)
            written += save_figure(fig, out, f"phase_{slug(loss)}_A{n_major}_B{n_minor}")
        if has_training(ds) and n_minor > 1:
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
    written += practised_figures(ds, out)
    written += rank_figures(ds, out)
    rows = thresholds_table(ds)
    if rows:  # not with theory.thresholds: false
        written += save_figure(thresholds_figure(ds)[0], out, "thresholds")
        written.append(write_csv(out / "thresholds.csv", rows))
    written.append(write_summary(ds, out / "summary.md", rows, skipped, written))
    return {"written": written, "skipped": skipped, "seconds": time.perf_counter() - start}


def write_csv(path: Path, rows: list[dict]) -> Path:
    """Rows (dicts with the same keys, at least one) as a CSV file with a header."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_remedy_figures(ds: xr.Dataset, out: Path, start: float) -> dict[str, object]:
    """A store that sweeps remedies: every figure of each remedy in ``remedy_<remedy>/`` (as for a store of
    that remedy alone), and at the top the threshold against k per remedy and a summary linking them."""
    written: list[Path] = []
    skipped: list[str] = []
    folders = []
    for remedy in map(str, ds.remedy.values):
        folder = out / f"remedy_{slug(remedy)}"
        folder.mkdir(exist_ok=True)
        done = write_store_figures(ds.sel(remedy=remedy), folder, start)
        written += done["written"]
        skipped += [f"{remedy}: {line}" for line in done["skipped"]]
        folders.append((remedy, folder))
    top = save_figure(thresholds_by_remedy(ds)[0], out, "remedies") if has_thresholds(ds) else []
    if "cos_tail_theory" in ds and "rho" in ds.dims:
        top += save_figure(tail_by_remedy(ds)[0], out, "remedies_tail")
    if "R" in ds.dims or "rho" in ds.dims:  # per remedy, k and scan value: cosine, collapse, distance to the ETF
        top.append(write_csv(out / "remedies.csv", remedy_rows(ds)))
    written += top
    lines = [f"# {title(ds)}: remedies", "",
             f"Conventions: {ds.attrs.get('conventions', '')}", "",
             "Each remedy's figures and tables are in its folder, as for a store of that remedy alone:",
             ""]  # fmt: skip
    lines += [f"- `{remedy}`: [{folder.name}/summary.md]({folder.name}/summary.md)" for remedy, folder in folders]
    if skipped:
        lines += ["", "Skipped (not drawn as values):", *[f"- {s}" for s in skipped]]
    summary = out / "summary.md"
    summary.write_text("\n".join(lines + figure_index(top)) + "\n")
    written.append(summary)
    return {"written": written, "skipped": skipped, "seconds": time.perf_counter() - start}


def title(ds: xr.Dataset) -> str:
    """A summary's title: the store's, and the remedy of a store's remedy slice."""
    remedy = f", remedy {ds.remedy.item()}" if "remedy" in ds.coords and ds.remedy.ndim == 0 else ""
    return ds.attrs.get("title", "clphase results") + remedy


def write_summary(ds: xr.Dataset, path: Path, rows: list[dict], skipped: list[str], written: list[Path]) -> Path:
    """``summary.md`` of a step store: phase counts, every R*, training phases, what was skipped, and an
    index of every figure with its caption."""
    counts = phase_counts(ds)
    lines = [f"# {title(ds)}", "",
             f"Conventions: {ds.attrs.get('conventions', '')}", "",
             "| phase | theory points |", "|---|---|"]  # fmt: skip
    lines += [f"| {name} | {counts[name]} |" for name in PHASES
              if name not in ("disagreement", "not_converged", "unresolved")]  # fmt: skip
    if rows:
        lines += ["", "| loss | K_A | K_B | k | R* | status |", "|---|---|---|---|---|---|"]
    else:
        lines += ["", "No thresholds R* in this store (theory.thresholds: false)."]
    for row in rows:
        R_star = "inf" if np.isinf(row["R_star"]) else ("" if np.isnan(row["R_star"]) else f"{row['R_star']:.4g}")
        R_star = f"> {R_MAX:.0e}" if row["status"] == "beyond_range" else R_star  # apart up to R_MAX, undecided past
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
    path.write_text("\n".join(lines + figure_index(written)) + "\n")
    return path


# file-name prefix -> caption, longest prefix first (names: <prefix>_<loss>_<shape>[_k<k>])
CAPTIONS = {
    "gram_rho": "Gram entries of every class pair against rho, a panel per k (the two smallest classes thick)",
    "phase": "Phase diagram: the optimal minority cosine c over (k, R), with the threshold R*(k) and trained runs",
    "train": "Training against the theory: trained against optimal c, and the distance to the optimum at d",
    "gram": "Optimal Gram matrices of the class means",
    "thresholds": "The threshold R*(k) for every loss and class counts",
    "practised": "In-batch training on a subsampled dataset against the theory, and the tail's test accuracy",
    "directions": "Distinct class directions of the optimum over (k, rho), with the onset curves rho*_m(k)",
    "onsets": "The cascade onsets rho*_m against k",
    "remedies_tail": "The tail under each remedy: the cosine of the two smallest classes against rho",
    "rank": "The rank-d optimum against the embedding dimension d: the tail's cosine, and the gap to the convex "
    "optimum (the certified lower bound without the rank limit)",
    "remedies": "Does a remedy prevent Minority Collapse: the threshold R*(k), or the first onset rho*_2(k), per "
    "remedy",
}


def figure_index(written: list[Path]) -> list[str]:
    """Markdown lines showing every PNG written, each under its caption and the parameters in its name."""
    lines = ["", "## Figures", "", "Each is also written as PDF beside the PNG.", ""]
    for png in (p for p in written if p.suffix == ".png"):
        prefix = next(c for c in sorted(CAPTIONS, key=len, reverse=True) if png.stem.startswith(c))
        rest = png.stem[len(prefix):].strip("_").replace("_", ", ")
        lines += [f"**{png.stem}**: {CAPTIONS[prefix]}" + (f" ({rest})." if rest else "."), "",
                  f"![{png.stem}]({png.name})", ""]  # fmt: skip
    return lines


def write_profile_summary(ds: xr.Dataset, path: Path, skipped: list[str], written: list[Path]) -> Path:
    """``summary.md`` of an exp or counts store: the distinct directions, the onsets, what was skipped, and
    an index of every figure."""
    lines = [f"# {title(ds)}", "", f"Conventions: {ds.attrs.get('conventions', '')}"]
    if "directions_theory" in ds:
        count = ds.directions_theory.values
        done = count[np.isfinite(count)]
        if done.size:
            lines += ["", f"Distinct class directions of the optimum at {done.size} points: from {int(done.min())} "
                      f"to {int(done.max())}."]  # fmt: skip
    if "rho_onset" in ds:
        rows = onsets_table(ds)
        lines += ["", "| loss | C | k | m | rho*_m | status |", "|---|---|---|---|---|---|"]
        for row in rows:
            value = row["rho_star"]
            text = "inf" if np.isinf(value) else ("" if np.isnan(value) else f"{value:.4g}")
            lines.append(f"| {row['loss']} | {row['C']} | {row['k']} | {row['m']} | {text} | {row['status']} |")
    if skipped:
        lines += ["", "Skipped (not drawn as values):", *[f"- {s}" for s in skipped]]
    path.write_text("\n".join(lines + figure_index(written)) + "\n")
    return path


def practised_figures(ds: xr.Dataset, out: Path) -> list[Path]:
    """The in-batch training figures (pipeline.plots.practised), where the store has a test split."""
    if not has_test_split(ds):
        return []
    written = []
    for loss in map(str, ds.loss.values):
        for shape in practised_shapes(ds):
            name = "_".join(f"{d}{v}" for d, v in shape.items())
            written += save_figure(practised_figure(ds, loss, shape), out, f"practised_{slug(loss)}_{name}")
    return written


def rank_figures(ds: xr.Dataset, out: Path) -> list[Path]:
    """The rank-d figures (a store with theory.rank_dims): one per loss and class counts."""
    if not has_rank(ds):
        return []
    written = []
    for title_, point in rank_panels(ds):
        shape = {"n_major": "A", "n_minor": "B", "C": "C"}  # as the other figures name them: _A2_B2, _C10
        name = "_".join(["rank", slug(point["loss"]), *(f"{shape[k]}{v}" for k, v in point.items() if k in shape)])
        written += save_figure(rank_figure(ds, title_, point)[0], out, name)
    return written


def write_profile_figures(ds: xr.Dataset, out: Path, start: float) -> dict[str, object]:
    """Every figure and table of an exp or counts store (``ds`` already selected and loaded)."""
    written: list[Path] = []
    skipped: list[str] = []
    if profile_of(ds) == "counts":
        for loss in map(str, ds.loss.values):
            for name in map(str, ds["counts"].values):
                written += save_figure(counts_gram(ds, loss, name), out, f"gram_{slug(loss)}_{slug(name)}")
        written += rank_figures(ds, out)
        written.append(write_profile_summary(ds, out / "summary.md", skipped, written))
        return {"written": written, "skipped": skipped, "seconds": time.perf_counter() - start}
    for loss in map(str, ds.loss.values):
        for C in map(int, ds.C.values):
            point = {"loss": loss, "C": C}
            n_pending = int((ds.done_theory.sel(point) == 0).sum())
            if n_pending:
                skipped.append(f"{loss} C={C}: {n_pending} theory points pending (hatched)")
            written += save_figure(gram_against_rho(ds, loss, C), out, f"gram_rho_{slug(loss)}_C{C}")
            written += save_figure(directions_diagram(ds, loss, C)[0], out, f"directions_{slug(loss)}_C{C}")
    written += practised_figures(ds, out)
    written += rank_figures(ds, out)
    if "rho_onset" in ds:
        written += save_figure(onsets_figure(ds)[0], out, "onsets")
        rows = onsets_table(ds)
        if rows:
            written.append(write_csv(out / "onsets.csv", rows))
        undecided = [r for r in rows if r["status"] == "undecided"]
        if undecided:
            skipped.append(f"{len(undecided)} onsets undecided (the merge test within its error bound or the "
                           "tail's terms below the solver's resolution): onsets.csv")  # fmt: skip
    written.append(write_profile_summary(ds, out / "summary.md", skipped, written))
    return {"written": written, "skipped": skipped, "seconds": time.perf_counter() - start}

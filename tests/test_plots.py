"""Figures from a store: what is drawn equals what is stored; pending points are not drawn."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from pipeline.analysis import PHASE_CODE, phase_counts, select, theory_phase
from pipeline.plots import phase_diagram, thresholds_figure, write_figures
from pipeline.plots.axes import curves_against_k, k_axis
from pipeline.sweep.config import validate
from pipeline.sweep.graph import compute_and_write
from pipeline.sweep.grid import Grid
from pipeline.sweep.store import init_store, open_results


@pytest.fixture(scope="module")
def partial_store(tmp_path_factory):
    """A store with every threshold and only some theory batches written (no cluster needed)."""
    tmp = tmp_path_factory.mktemp("partial")
    config = validate({
        "name": "partial", "store": str(tmp / "partial.zarr"),
        "grid": {"loss": ["infonce(tau=1)", "infonce(tau=0.5)"], "R": {"logspace": [0, 2.5, 8]},
                 "n_major": [2, 3], "n_minor": [2], "k": [1, 4, 16]},
        "batch": {"points": 4},
    })  # fmt: skip
    init_store(config.store, config)
    grid = Grid(config)
    for batch in grid.batches("threshold"):
        compute_and_write(config, batch, config.store)
    theory = list(grid.batches("theory"))
    for batch in theory[::2]:
        compute_and_write(config, batch, config.store)
    return config.store


def test_phase_diagram_draws_exactly_the_store(partial_store):
    ds = open_results(partial_store).load()
    for loss in ds.loss.values:
        for n_major in (2, 3):
            point = {"loss": loss, "n_major": n_major, "n_minor": 2}
            _, drawn = phase_diagram(ds, str(loss), n_major, 2)
            pending = (ds.done_theory.sel(point) == 0).transpose("R", "k").values
            assert pending.any() and not pending.all()
            assert drawn["mesh"].mask[pending].all()  # pending points are not drawn as values
            stored = ds.cos_minor_theory.sel(point).transpose("R", "k").values
            np.testing.assert_array_equal(drawn["mesh"].data[~pending], stored[~pending])
            R_star = ds.R_threshold.sel(point).values
            finite = np.isfinite(R_star)
            np.testing.assert_array_equal(drawn["threshold"][0], ds.k.values[finite])
            np.testing.assert_array_equal(drawn["threshold"][1], R_star[finite])
            np.testing.assert_array_equal(drawn["no_threshold"], ds.k.values[np.isinf(R_star)])
    assert np.isinf(ds.R_threshold.sel(n_major=3)).all()  # three majority classes: never collapses


def test_thresholds_figure_matches_store(partial_store):
    ds = open_results(partial_store).load()
    _, drawn = thresholds_figure(ds)
    assert drawn  # finite curves exist for n_major = 2
    for label, (_k, R_star) in drawn.items():
        loss = label.split(", ")[0]
        stored = ds.R_threshold.sel(loss=loss, n_major=2, n_minor=2).values
        np.testing.assert_array_equal(R_star, stored[np.isfinite(stored)])


def test_curves_against_k_share_a_panel_until_crowded():
    k = np.array([1.0, 4.0, 16.0, np.inf])
    few = {"a": [("x", np.array([1.0, 2, 3, 4]))], "b": [("x", np.array([2.0, 3, 4, 5])), ("y", np.full(4, np.nan))]}
    fig, drawn = curves_against_k(k, few, "y", "title")
    assert sum(ax.get_visible() for ax in fig.axes) == 1 and set(drawn) == {"a, x", "b, x"}  # NaN: not drawn
    many = {name: [(f"c{i}", np.arange(4.0) + i) for i in range(5)] for name in "ab"}
    fig, drawn = curves_against_k(k, many, "y", "title")
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["a", "b"] and len(drawn) == 10
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [f"c{i}" for i in range(5)]  # each label once
    colours = [{line.get_label(): line.get_color() for line in ax.get_lines()} for ax in panels]
    assert all(colours[0][f"c{i}"] == colours[1][f"c{i}"] for i in range(5))  # a label keeps its colour
    np.testing.assert_array_equal(drawn["b, c3"][1], np.arange(4.0) + 3)


def test_k_axis_labels_thin_out_where_they_crowd():
    k = np.array([1, 2, 4, 8, 16, 32, 64, 256, 1024, 4096, 16384, 65536, np.inf])
    x, labels = k_axis(k)
    assert x[-1] == 4 * 65536 and labels[-1] == "∞" and labels[0] == "$2^{0}$"
    # one style per axis: every label a power of two (never 256 beside 2^10); 2, 8 and 32 blank
    assert [label for label in labels if label][:5] == ["$2^{0}$", "$2^{2}$", "$2^{4}$", "$2^{6}$", "$2^{8}$"]
    assert k_axis(np.array([1.0, 2, 4, 8, 16]))[1] == ["1", "2", "4", "8", "16"]  # room for all, plain
    assert k_axis(np.array([1.0, 4, 64, 1000]))[1] == ["1", "4", "64", "1000"]  # not all powers of two: plain


def test_log_tick_labels_keep_one_style():
    from pipeline.plots.axes import plain_number

    assert [plain_number(v) for v in (20, 500, 1e4, 1e5, 1e6, 2e6)] == ["20", "500", "10000", "$10^{5}$",
                                                                       "$10^{6}$", "$2 \\times 10^{6}$"]  # fmt: skip


def test_phase_labels(partial_store):
    ds = open_results(partial_store)
    counts = phase_counts(ds)
    assert counts["pending"] > 0 and counts["minority_collapse"] > 0 and counts["no_collapse"] > 0
    phase = theory_phase(ds)
    collapsed = (phase == PHASE_CODE["minority_collapse"]).values
    assert (ds.collapsed_theory.values[collapsed] == 1).all()
    assert sum(counts.values()) == phase.size


def test_write_figures_and_select(partial_store, tmp_path):
    report = write_figures(partial_store, tmp_path / "figs", "loss=infonce(tau=1),n_major=2")
    names = {p.name for p in report["written"]}
    assert {"phase_infonce-tau1_A2_B2.png", "phase_infonce-tau1_A2_B2.pdf", "thresholds.png", "thresholds.pdf",
            "thresholds.csv", "summary.md"} <= names  # fmt: skip
    assert any(n.startswith("gram_") and n.endswith(".pdf") for n in names)
    assert report["skipped"] and "pending" in report["skipped"][0]
    csv_text = (tmp_path / "figs" / "thresholds.csv").read_text()
    assert csv_text.startswith("loss,n_major,n_minor,k,R_star,status") and "infonce(tau=0.5)" not in csv_text
    assert "pending" in (tmp_path / "figs" / "summary.md").read_text()


def test_bad_select_is_refused(partial_store):
    with pytest.raises(ValueError, match="n_minor"):
        select(open_results(partial_store), "n_minor=7")
    proc = subprocess.run([sys.executable, "-m", "pipeline", "plot", partial_store, "--select", "colour=red"],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and "select" in proc.stderr and "Traceback" not in proc.stderr


def test_analysis_needs_neither_torch_nor_cvxpy(partial_store, tmp_path):
    code = (
        "import sys; from pipeline.plots import write_figures; "
        f"write_figures({partial_store!r}, {str(tmp_path)!r}); "
        "bad = [m for m in ('torch', 'cvxpy') if m in sys.modules]; assert not bad, bad"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr

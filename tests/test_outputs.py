"""What the outputs say to a newcomer (issue 22): one line for a wrong --out or a damaged store, one
verdict per question, help that says what is printed, JSON that scripts parse, and the Python API."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import pipeline
from pipeline.cli import main
from pipeline.errors import InputError
from pipeline.sweep.config import validate
from tests.conftest import theory_store
from tests.test_frictions import one_error_line

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_store(tmp_path_factory) -> str:
    """A finished two-loss step store, written without a cluster."""
    tmp = tmp_path_factory.mktemp("outputs")
    config = validate({
        "name": "outputs", "store": str(tmp / "small.zarr"),
        "grid": {"loss": ["infonce(tau=0.5)"], "R": {"logspace": [0, 3, 7]}, "n_major": [2], "n_minor": [2],
                 "k": [1, 4]},
        "batch": {"points": 4},
    })  # fmt: skip
    return theory_store(config)


# --- 1. plot --out ----------------------------------------------------------------------------------------


def test_plot_out_that_is_a_file_or_under_one_is_one_line(small_store, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    for out, why in ((a_file, "is a file"), (a_file / "figs", "is a file, not a folder")):
        assert main(["plot", small_store, "--out", str(out)]) == 2
        line = one_error_line(capsys, "plot")
        assert "invalid out" in line and why in line
    assert a_file.read_text() == "keep me"


# --- 13. a damaged store: plot names the batch ------------------------------------------------------------


def test_plot_of_a_store_with_a_truncated_chunk_names_the_damaged_batch(small_store, tmp_path, capsys):
    import shutil

    store = tmp_path / "damaged.zarr"
    shutil.copytree(small_store, store)
    chunk = next(p for p in sorted((store / "cos_minor_theory").rglob("*")) if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(chunk.read_bytes()[:10])
    assert main(["plot", str(store), "--out", str(tmp_path / "figs")]) == 2
    line = one_error_line(capsys, "plot")
    assert "is damaged" in line and "theory batch" in line and "run `clphase run CONFIG` again" in line
    assert main(["status", str(store)]) == 0
    status = capsys.readouterr().out
    assert "damaged batch" in status and "np.float64" not in status  # coordinates as plain numbers


# --- 4. one verdict per question ----------------------------------------------------------------------------


def test_collapse_and_directions_agree_and_say_what_decided_them(capsys):
    """K_A = 3, K_B = 2 at R = 1e7, k = 4096: the split test cannot certify the merge (p_min^2 ~ 1e-15), the
    c = 1 criterion can; both questions are answered by it, and say so."""
    args = ["solve", "--loss", "infonce(tau=0.1)", "--n-major", "3", "--n-minor", "2", "--R", "1e7", "--k", "4096"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "minority collapse: yes" in out and "undecided" not in out
    assert "distinct directions: 4 of 5; merged {B0, B1}" in out and "decided by the c = 1 criterion" in out
    assert main([*args, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["collapsed"] is True and record["distinct_directions"] == 4 and record["directions_decided"]
    assert record["directions_decided_by"] == "criterion" and record["direction_of_class"] == [0, 1, 2, 3, 3]
    # below R* the same two answers say apart
    assert main(["solve", "--loss", "infonce(tau=0.1)", "--n-major", "3", "--n-minor", "2", "--R", "1e5",
                 "--k", "4096", "--json"]) == 0  # fmt: skip
    record = json.loads(capsys.readouterr().out)
    assert record["collapsed"] is False and record["distinct_directions"] == 5


def test_long_tail_directions_are_decided_by_the_split_test():
    s = pipeline.solve("infonce(tau=0.5)", "exp(C=4, rho=1e4)", k=4)  # rho*_2 = 1118 < 1e4 < rho*_3 = 97057
    assert s.directions.count == 3 and s.directions.decided_by == "split test" and s.directions.decided
    assert s.directions.label.tolist() == [0, 1, 2, 2]


# --- 5. labels --------------------------------------------------------------------------------------------


def test_solve_says_the_class_order_it_prints_and_no_minus_zero(capsys):
    assert main(["solve", "--loss", "infonce(tau=0.5)", "--profile", "counts(10, 500, 200)", "--k", "4"]) == 0
    out = capsys.readouterr().out
    assert "(classes in the order given)" in out and "head first" not in out
    assert main(["solve", "--loss", "triplet", "--n-major", "2", "--n-minor", "2", "--R", "10", "--k", "4"]) == 0
    out = capsys.readouterr().out
    assert " -0 " not in out and " -0\n" not in out


# --- 6. help and loss names ---------------------------------------------------------------------------------


def _help(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return " ".join(proc.stdout.split())  # argparse wraps lines


def test_help_says_what_is_printed_and_offers_only_what_is_accepted(capsys):
    threshold_help = _help("threshold")
    assert "Prints R*" in threshold_help and "infonce(tau=1), sumexp(tau=1)" in threshold_help
    assert "rho=100" not in threshold_help and "counts(" not in threshold_help
    for example in ("exp(C=10)", "step(K_A=2, K_B=2)"):  # every profile the help offers is accepted
        assert example in threshold_help
    solve_help = _help("solve")
    assert "Prints the certified optimal geometry" in solve_help and "squared_hinge(margin=1)" in solve_help
    assert main(["threshold", "--loss", "infonce(tau=0.5)", "--profile", "exp(C=3)", "--k", "4"]) == 0
    capsys.readouterr()


def test_loss_names_are_lower_case_and_a_bare_name_takes_its_default(capsys):
    assert main(["solve", "--loss", "InfoNCE(tau=0.5)", "--n-major", "2", "--n-minor", "2", "--R", "3",
                 "--k", "4"]) == 2  # fmt: skip
    assert "a lower-case name: 'infonce(tau=0.5)'" in one_error_line(capsys, "solve")
    assert main(["solve", "--loss", "infonce", "--n-major", "2", "--n-minor", "2", "--R", "3", "--k", "4",
                 "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["loss"] == "infonce(tau=1)"  # stored in full


# --- 7. class names given twice --------------------------------------------------------------------------


def test_a_class_name_given_twice_is_named(capsys):
    assert main(["solve", "--loss", "infonce", "--profile", "counts(cat=5000, cat=200)", "--k", "4"]) == 2
    assert "class name: 'cat'" in one_error_line(capsys, "solve")


# --- 8. JSON -----------------------------------------------------------------------------------------------


def _strings(record) -> list[str]:
    if isinstance(record, dict):
        return [s for v in record.values() for s in _strings(v)]
    if isinstance(record, list):
        return [s for v in record for s in _strings(v)]
    return [record] if isinstance(record, str) else []


@pytest.mark.parametrize("k", ["4", "inf"])
def test_json_numbers_are_numbers_null_or_inf(capsys, k):
    """NaN (not applicable) is null; an infinite number is the string "inf" in every command; k is an
    integer or "inf" alike in solve, threshold and the cascade."""
    records = []
    commands = (["solve", "--profile", "counts(10, 500, 200)"],
                ["solve", "--n-major", "2", "--n-minor", "2", "--R", "3"],
                ["threshold", "--n-major", "3", "--n-minor", "2"],
                ["threshold", "--profile", "exp(C=3)"])  # fmt: skip
    for args in commands:
        assert main([*args, "--loss", "infonce(tau=0.5)", "--k", k, "--json"]) == 0
        records.append(json.loads(capsys.readouterr().out))
    counts, step, threshold, cascade = records
    for record in records:
        assert record["k"] == (4 if k == "4" else "inf")
        assert not {"nan", "NaN", "-nan"} & set(_strings(record))
    assert counts["a"] is None and counts["collapsed"] is None and counts["criterion"] is None
    assert isinstance(step["c"], float) and step["collapsed"] is False
    assert threshold["R_star"] == "inf"  # K_A = 3 at tau = 0.5: apart at every R
    assert all(o["h_before"] is None or isinstance(o["h_before"], float) for o in cascade["onsets"])


# --- the Python API ---------------------------------------------------------------------------------------


def test_api_solve_and_threshold_match_the_command_line(capsys):
    s = pipeline.solve("infonce(tau=0.5)", "step(K_A=2, K_B=2, R=100)", k=4)
    assert main(["solve", "--loss", "infonce(tau=0.5)", "--n-major", "2", "--n-minor", "2", "--R", "100", "--k", "4",
                 "--json"]) == 0  # fmt: skip
    cli = json.loads(capsys.readouterr().out)
    api = s.to_dict()
    for key in ("objective", "a", "b", "c", "collapsed", "gram", "distinct_directions", "status"):
        assert api[key] == cli[key], key
    t = pipeline.threshold("infonce(tau=0.5)", "step(K_A=2, K_B=2)", k=4)
    assert t.R_star == pytest.approx(64.0937339494464, rel=1e-9)
    assert s.collapsed is True and s.c == pytest.approx(1.0, abs=1e-12)  # R = 100 > R* = 64.09
    assert pipeline.solve.__doc__ and pipeline.threshold.__doc__ and pipeline.open_results.__doc__


def test_api_refuses_a_point_without_its_axis_and_a_threshold_with_it():
    with pytest.raises(InputError, match="a value for R"):
        pipeline.solve("infonce(tau=0.5)", "step(K_A=2, K_B=2)", k=4)
    with pytest.raises(InputError, match="without R"):
        pipeline.threshold("infonce(tau=0.5)", "step(K_A=2, K_B=2, R=3)", k=4)
    assert math.isinf(pipeline.threshold("infonce(tau=1)", "step(K_A=3, K_B=2)", k="inf").R_star)


def test_import_pipeline_stays_light():
    code = ("import sys, pipeline; heavy = [m for m in ('numpy', 'torch', 'cvxpy', 'dask', 'xarray', 'matplotlib') "
            "if m in sys.modules]; print(heavy)")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


# --- 12. benchmarks take --help -----------------------------------------------------------------------------


@pytest.mark.parametrize("bench", sorted(p.name for p in (ROOT / "benchmarks").glob("bench_*.py")))
def test_every_benchmark_documents_its_options(bench):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / bench), "--help"], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.startswith("usage:"), proc.stderr[-2000:]


# --- 2 and 11. figures: the swept R, K_B = 1, an index -------------------------------------------------------


@pytest.fixture(scope="module")
def far_threshold_store(tmp_path_factory) -> str:
    """infonce(tau=0.1), K_A = 1: R* ~ 1e9, far above the swept R <= 1e4; and K_B = 1 beside K_B = 2."""
    tmp = tmp_path_factory.mktemp("far")
    config = validate({
        "name": "far", "store": str(tmp / "far.zarr"),
        "grid": {"loss": ["infonce(tau=0.1)"], "R": {"logspace": [0, 4, 5]}, "n_major": [1], "n_minor": [1, 2],
                 "k": [4, 1024]},
        "batch": {"points": 8},
    })  # fmt: skip
    return theory_store(config)


def test_phase_axis_is_the_swept_R_with_R_star_beyond_it_marked(far_threshold_store):
    from pipeline.plots import phase_diagram
    from pipeline.plots.axes import log_edges

    ds = pipeline.open_results(far_threshold_store).load()
    R_star = ds.R_threshold.sel(loss="infonce(tau=0.1)", n_major=1, n_minor=2).values  # (k,)
    assert (R_star > 1e8).all() and (R_star < math.inf).all()
    fig, drawn = phase_diagram(ds, "infonce(tau=0.1)", 1, 2)
    edges = log_edges(ds.R.values)
    assert fig.axes[0].get_ylim() == pytest.approx((edges[0], edges[-1]))  # the cells show, not 1.5e4 .. 1e9
    assert drawn["beyond"].tolist() == [4, 1024]
    assert any("above the swept R" in text.get_text() for text in fig.legends[0].get_texts())


def test_plot_skips_single_minority_diagrams_and_indexes_every_figure(far_threshold_store, tmp_path, capsys):
    out = tmp_path / "figs"
    assert main(["plot", far_threshold_store, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "K_B = 1" in printed and "no minority-minority cosine" in printed
    assert not list(out.glob("phase_*_B1.png")) and list(out.glob("phase_*_B2.png"))
    summary = (out / "summary.md").read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs and all(f"]({name})" in summary for name in pngs)  # every figure shown, with a caption
    assert "Phase diagram: the optimal minority cosine c" in summary


# --- 9 and 10. the dry run and the run's summary count what will run, in one unit each ----------------------


def test_dry_run_counts_agree_with_its_estimate(capsys):
    assert main(["run", str(ROOT / "configs" / "quick.yaml"), "--dry-run", f"store={ROOT / 'README.md'}/x.zarr"]) == 2
    capsys.readouterr()  # an unwritable store is refused before anything is planned
    assert main(["run", str(ROOT / "configs" / "quick.yaml"), "--dry-run", "grid.R={logspace: [0, 3, 4]}",
                 "train.steps=20", "store=" + str(ROOT / "results" / "never-written.zarr")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "thresholds: 20 in 4 batches: 20 to compute" in out
    assert "training runs: 64 selected (train.select) of 320, in 8 batches" in out
    assert "train: 8 batches of stacked runs" in out and "theory: 80 points" in out
    assert not (ROOT / "results" / "never-written.zarr").exists()


def test_parallel_efficiency_is_measured_and_scales_the_wall_estimate():
    from pipeline.sweep.estimate import KindEstimate, parallel_efficiency, wall_s

    assert parallel_efficiency(1) == 1.0
    efficiency = parallel_efficiency(2)
    assert 0.2 < efficiency <= 1.0
    work = [KindEstimate("theory", 100, 1.0, 1.0)]  # 100 s of work, batches of 1 s
    assert wall_s(work, 2, 0.5) - wall_s(work, 2, 1.0) == pytest.approx(50.0)  # half the throughput: twice the wall

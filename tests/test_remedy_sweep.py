"""Remedies as a sweep axis (issue 21): ``grid.remedy`` is a store dim, each point equals the solvers called
directly, ``none`` is the store without the axis, training applies the remedy, bad remedies are one line."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml

from pipeline import api
from pipeline.analysis import etf_distance
from pipeline.cli import main
from pipeline.sweep.config import ConfigError, load_config, validate
from pipeline.sweep.results import STATUS_CODE
from pipeline.theory.threshold import minority_threshold
from tests.conftest import theory_store

torch.set_num_threads(1)  # as tests/test_train.py: two test files run at once on 2 cores (the sampled run: 7 s, 50 s)

REMEDIES = ["none", "reweight(gamma=1)", "logit_adjust", "class_tau(gamma=0.5) + balanced_negatives"]


def _step(store: Path, remedy: list[str] | None, **grid) -> dict:
    spec = {"loss": ["infonce(tau=0.5)"], "R": [1, 20, 300], "n_major": [2], "n_minor": [2], "k": [4, math.inf],
            **grid}  # fmt: skip
    if remedy is not None:
        spec["remedy"] = remedy
    return {"name": "rem", "store": str(store), "grid": spec, "batch": {"points": 4}}


def test_the_remedy_axis_is_a_store_dim_whose_points_equal_the_solvers(tmp_path):
    config = validate(_step(tmp_path / "r.zarr", REMEDIES))
    assert config.grid.remedy == ("none", "reweight(gamma=1)", "logit_adjust(t=1)",
                                  "balanced_negatives + class_tau(gamma=0.5)")  # canonical specs  # fmt: skip
    ds = xr.open_zarr(theory_store(config))
    assert ds.cos_minor_theory.dims == ("loss", "remedy", "R", "n_major", "n_minor", "k")
    assert list(ds.remedy.values) == list(config.grid.remedy)
    for remedy in config.grid.remedy:
        for k in (4, math.inf):
            threshold = minority_threshold("infonce(tau=0.5)", 2, 2, k, remedy=remedy)
            point = {"remedy": remedy, "k": k, "n_major": 2, "n_minor": 2, "loss": "infonce(tau=0.5)"}
            assert float(ds.R_threshold.sel(point)) == threshold.R_star
            for R in (1, 20, 300):
                solution = api.solve("infonce(tau=0.5)", f"step(K_A=2, K_B=2, R={R})", k, remedy=remedy)
                stored = ds.sel({**point, "R": R})
                np.testing.assert_array_equal(stored.gram_theory.values, solution.G)
                assert float(stored.cos_minor_theory) == solution.c
                assert int(stored.status_theory) == STATUS_CODE["optimal"]
    # the remedies move R*: logit adjustment merges the minorities earlier, reweighting too (README table)
    R_star = ds.R_threshold.sel(k=4).squeeze()
    assert R_star.sel(remedy="logit_adjust(t=1)") < R_star.sel(remedy="reweight(gamma=1)") < R_star.sel(remedy="none")


def test_remedy_none_is_the_store_without_the_axis(tmp_path):
    """Every stored value of the ``none`` slice equals a store of the same grid without ``grid.remedy`` (the
    layout every store written before remedies has), bitwise but for wall times."""
    with_axis = xr.open_zarr(theory_store(validate(_step(tmp_path / "a.zarr", ["none", "reweight"]))))
    plain_config = validate(_step(tmp_path / "b.zarr", None))
    assert plain_config.science() == validate(_step(tmp_path / "c.zarr", ["none"])).science()  # none: no axis
    assert "remedy" not in plain_config.science()["grid"]
    plain = xr.open_zarr(theory_store(plain_config))
    assert "remedy" not in plain.dims
    none = with_axis.sel(remedy="none")
    for name in plain.data_vars:
        if name.startswith(("time_", "checksum_", "writer_")):
            continue  # wall times; the checksums of batches of other shapes
        assert plain[name].dims == none[name].dims, name
        assert np.array_equal(plain[name].values, none[name].values, equal_nan=True), name


def test_exp_stores_sweep_remedies_through_the_cascade(tmp_path):
    from pipeline.theory.cascade import cascade

    raw = {"name": "e", "store": str(tmp_path / "e.zarr"), "grid": {"profile": "exp", "loss": ["infonce(tau=0.5)"],
           "remedy": ["none", "reweight"], "C": [3], "rho": [1, 100], "k": [4]}}  # fmt: skip
    ds = xr.open_zarr(theory_store(validate(raw)))
    assert ds.rho_onset.dims == ("loss", "remedy", "C", "k", "onset")
    for remedy in ("none", "reweight(gamma=1)"):
        expected = cascade("infonce(tau=0.5)", 3, 4, remedy=remedy).onsets[0].rho_star
        assert float(ds.rho_onset.sel(remedy=remedy, onset=2).squeeze()) == expected
    # directions, from the split test of each remedy's objective: 3 apart below its onset, 2 above it
    for remedy in ("none", "reweight(gamma=1)"):
        rho_star = float(ds.rho_onset.sel(remedy=remedy, onset=2).squeeze())
        count = ds.directions_theory.sel(remedy=remedy).squeeze()  # over rho = 1, 100
        expected = [3 if rho < rho_star else 2 for rho in (1, 100)]
        assert count.values.tolist() == expected, (remedy, rho_star, count.values)


@pytest.mark.parametrize("remedy", ["reweight(gamma=1)", "logit_adjust(t=1)", "balanced_negatives + ldam(m=0.5)"])
def test_directions_under_a_remedy_change_at_its_cascade_onset(remedy):
    """The split test on the remedied objective (its KKT matrix at the merged geometry) agrees with the cascade,
    whose onsets tests/test_remedies.py confirms by unrestricted solves: at rho*(1 - 1e-3) the three classes of
    exp(C = 3) point three ways, at rho*(1 + 1e-3) the two smallest share one, each merge decided."""
    from pipeline.theory.cascade import cascade

    onset = cascade("infonce(tau=0.5)", 3, 4, remedy=remedy).onsets[0]
    assert onset.status == "optimal"
    below = api.solve("infonce(tau=0.5)", f"exp(C=3, rho={onset.rho_star * (1 - 1e-3)})", 4, remedy=remedy)
    above = api.solve("infonce(tau=0.5)", f"exp(C=3, rho={onset.rho_star * (1 + 1e-3)})", 4, remedy=remedy)
    assert below.directions.count == 3
    assert above.directions.count == 2 and [t.merged for t in above.directions.tests] == [True]
    assert above.directions.tests[0].members == (1, 2)


def test_training_applies_the_remedy_and_reaches_its_optimum(tmp_path):
    """Free features trained under a remedy (anchor weights, balanced negatives, shifts and temperatures in
    phi) end at the optimum of the same remedied objective, on both sides of its threshold: at R = 20 the
    minorities stay apart under reweighting and merge under logit adjustment (R* = 8.1)."""
    from pipeline.sweep.graph import compute_and_write
    from pipeline.sweep.grid import Grid

    raw = _step(tmp_path / "t.zarr", ["reweight", "logit_adjust + class_tau", "balanced_negatives"], R=[20], k=[4])
    raw["grid"]["dim"] = [4]
    raw["train"] = {"steps": 1000, "runs_per_batch": 1}
    raw["cluster"] = {"n_workers": 1}
    config = validate(raw)
    theory_store(config)
    for batch in Grid(config).batches("train"):
        compute_and_write(config, batch, config.store)
    ds = xr.open_zarr(tmp_path / "t.zarr").squeeze()
    assert (ds.status_train == STATUS_CODE["trained"]).all()
    assert float(ds.dist_to_theory.max()) < 3e-3, ds.dist_to_theory.values
    c = ds.cos_minor_train
    assert float(c.sel(remedy="reweight(gamma=1)")) < 0.7
    assert float(c.sel(remedy="logit_adjust(t=1) + class_tau(gamma=0.5)")) > 1 - 1e-3
    # the trained geometry's remedied objective sits at the optimum's, within float32 training's resolution
    gap = (ds.objective_train - ds.objective_theory) / ds.objective_theory
    assert float(gap.max()) < 1e-5 and float(gap.min()) > -1e-9


BAD = [
    ("grid.remedy=[warp]", "grid.remedy: 'warp': expected 'none', or terms joined by ' + '"),
    ("grid.remedy=['reweight(gamma=-1)']", "grid.remedy: 'reweight(gamma=-1)': expected reweight's gamma finite"),
    ("grid.remedy=['logit_adjust(t=nan)']", "grid.remedy: 'logit_adjust(t=nan)': expected logit_adjust's t finite"),
    ("grid.remedy=['ldam(m=-0.5)']", "grid.remedy: 'ldam(m=-0.5)': expected ldam's m finite and >= 0"),
    ("grid.remedy=['logit_adjust + ldam']", "expected at most one shift: logit_adjust or ldam"),
    ("grid.remedy=[reweight, 'reweight(gamma=1)']", "grid.remedy: duplicate values ['reweight(gamma=1)']"),
    ("grid.remedy=[]", "grid.remedy: []: expected a non-empty list of remedies"),
    ("grid.remedy=[null]", "grid.remedy: None: expected 'none', or terms"),
]


@pytest.mark.parametrize("override, expected", BAD, ids=[b[0] for b in BAD])
def test_a_bad_remedy_is_one_line_and_no_store(capsys, tmp_path, override, expected):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(_step(tmp_path / "never.zarr", None)))
    assert main(["run", str(config), override]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "never.zarr").exists()


@pytest.mark.parametrize("loss, remedy, expected", [
    ("squared_hinge(margin=1)", "class_tau", "grid.remedy: 'class_tau': expected remedies without class_tau for "
                                            "squared_hinge"),
    ("triplet(margin=1)", "reweight", "grid.remedy: 'reweight': remedies are solved for smooth losses"),
])  # fmt: skip
def test_a_remedy_the_loss_does_not_take_is_one_line(capsys, tmp_path, loss, remedy, expected):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(_step(tmp_path / "never.zarr", [remedy], loss=[loss])))
    assert main(["run", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "never.zarr").exists()


def test_remedies_the_solver_or_the_trainer_does_not_apply_are_refused(tmp_path):
    base = tmp_path / "c.yaml"
    base.write_text(yaml.safe_dump(_step(tmp_path / "never.zarr", ["none", "ldam"])))
    cases = {
        ("theory.solver=full",): "theory.solver: 'full': grid.remedy is solved by the group reduction, the",
        ("grid.k=[4]", "train={negatives_from: batch, n_max: 50}"): "train.negatives_from: 'batch': "
                                                                    "'ldam(m=0.5)': in-batch training applies "
                                                                    "reweight, logit_adjust and class_tau, not ldam",
    }  # fmt: skip
    for overrides, expected in cases.items():
        with pytest.raises(ConfigError) as err:
            load_config(base, list(overrides))
        assert expected in str(err.value), str(err.value)
    # in-batch training of the plain loss alone is accepted
    plain = "train={negatives_from: batch, n_max: 50, select: {remedy: [none]}}"
    ok = load_config(base, ["grid.k=[4]", "grid.R=[1, 20]", plain])
    assert ok.train.select["remedy"] == ("none",)


def test_plot_draws_each_remedy_alone_and_the_thresholds_per_remedy(tmp_path):
    from pipeline.plots.remedies import thresholds_by_remedy
    from pipeline.plots.write import write_figures

    store = theory_store(validate(_step(tmp_path / "p.zarr", ["none", "logit_adjust", "class_tau(gamma=1)"])))
    done = write_figures(store, tmp_path / "figs")
    names = {p.relative_to(tmp_path / "figs").as_posix() for p in done["written"]}
    assert {"remedies.png", "summary.md", "remedy_none/phase_infonce-tau0.5_A2_B2.png",
            "remedy_logit-adjust-t1/thresholds.csv"} <= names  # fmt: skip
    ds = xr.open_zarr(store)
    _, drawn = thresholds_by_remedy(ds)
    panel = "infonce(tau=0.5), K_A=2, K_B=2"
    for remedy in ("none", "logit_adjust(t=1)"):
        k, values = drawn[f"{panel}, {remedy}"]
        assert list(k) == [4, math.inf]
        np.testing.assert_array_equal(values, ds.R_threshold.sel(remedy=remedy).squeeze().values)
    # class_tau(gamma=1) keeps the minorities apart up to R = 1e12 at k = 4 and inf: undecided past it, so drawn
    # as beyond the scan, never as R* = inf (which only the paper's loss's limit proves)
    status = ds.status_threshold.sel(remedy="class_tau(gamma=1)").squeeze().values
    assert (status == STATUS_CODE["beyond_range"]).all()
    assert list(drawn[f"{panel}, class_tau(gamma=1), beyond"]) == [4, math.inf]
    assert f"{panel}, class_tau(gamma=1), never" not in drawn
    assert "remedy_class-tau-gamma1/summary.md" in (tmp_path / "figs" / "summary.md").read_text()
    # remedies.csv: a row per (loss, shape, remedy, k, R) with the stored cosine, decision and R*
    with open(tmp_path / "figs" / "remedies.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == ds.cos_minor_theory.size
    row = next(r for r in rows if r["remedy"] == "logit_adjust(t=1)" and r["k"] == "4" and r["R"] == "20.0")
    point = {"remedy": "logit_adjust(t=1)", "k": 4, "R": 20}
    assert float(row["cosine"]) == float(ds.cos_minor_theory.sel(point).squeeze())
    R_star = float(ds.R_threshold.sel(remedy="logit_adjust(t=1)", k=4).squeeze())
    assert float(row["collapsed"]) == 1.0 and float(row["R_star"]) == R_star < 20
    assert float(row["etf_distance"]) == etf_distance(ds.gram_theory.sel(point).squeeze().values)


def test_the_distance_to_the_simplex_etf():
    C = 4
    etf = (C * np.eye(C) - np.ones((C, C))) / (C - 1)
    assert etf_distance(etf) < 1e-15
    merged = etf.copy()  # the two last classes merged at their own mean direction: closed form
    merged[2, 3] = merged[3, 2] = 1.0
    assert etf_distance(merged) == pytest.approx(math.sqrt(2) * (1 + 1 / 3) / 4, rel=1e-14)
    padded = np.full((6, 6), np.nan)
    padded[:C, :C] = merged
    assert etf_distance(padded) == etf_distance(merged)


def test_a_store_without_thresholds_plots_and_keeps_the_science_of_those_with(tmp_path):
    """``theory.thresholds: false`` drops the threshold task (a C = 10 cascade costs minutes and ends undecided);
    at its default the science hash is that of stores written before the option existed."""
    from pipeline.plots.write import write_figures

    assert validate(_step(tmp_path / "a.zarr", None)).science() == validate(
        {**_step(tmp_path / "a.zarr", None), "theory": {"thresholds": True}}).science()  # fmt: skip
    with pytest.raises(ConfigError, match=r"theory\.thresholds: 'no': expected true or false"):
        validate({**_step(tmp_path / "a.zarr", None), "theory": {"thresholds": "no"}})
    raw = {"name": "e", "store": str(tmp_path / "e.zarr"), "theory": {"thresholds": False},
           "grid": {"profile": "exp", "loss": ["infonce(tau=0.5)"], "remedy": ["none", "reweight"], "C": [3],
                    "rho": [1, 100], "k": [4]}}  # fmt: skip
    ds = xr.open_zarr(theory_store(validate(raw)))
    assert "rho_onset" not in ds and "done_threshold" not in ds
    written = {p.name for p in write_figures(str(tmp_path / "e.zarr"), tmp_path / "figs")["written"]}
    assert {"remedies_tail.png", "remedies.csv", "gram_rho_infonce-tau0.5_C3.png"} <= written
    step = validate({**_step(tmp_path / "s.zarr", ["none", "ldam"]), "theory": {"thresholds": False}})
    written = {p.name for p in write_figures(theory_store(step), tmp_path / "sfigs")["written"]}
    assert "phase_infonce-tau0.5_A2_B2.png" in written and "thresholds.csv" not in written


@pytest.mark.parametrize("estimator", ["sampled", "expected"])
def test_the_training_loss_under_a_remedy_estimates_the_remedied_objective(tmp_path, estimator):
    """Started at the remedied optimum and kept there (a vanishing learning rate), the training loss averages to
    L(G*) of the remedied objective: the sampled estimator draws k negatives and applies phi_cj by each drawn
    negative's class, the expected one sums over classes; a shift or temperature taken from the wrong class
    would move it by far more than the sampling noise (logit adjustment at R = 20 shifts phi's argument by up
    to tau log 20)."""
    from pipeline.sweep.graph import compute_and_write
    from pipeline.sweep.grid import Grid

    raw = _step(tmp_path / "t.zarr", ["logit_adjust + class_tau", "reweight + balanced_negatives"], R=[20], k=[4])
    raw["grid"]["dim"] = [4]
    raw["train"] = {"steps": 2000, "lr": 1e-9, "init": "theory", "estimator": estimator, "runs_per_batch": 1}
    config = validate(raw)
    theory_store(config)
    for batch in Grid(config).batches("train"):
        compute_and_write(config, batch, config.store)
    ds = xr.open_zarr(config.store).squeeze()
    assert float(ds.dist_to_theory.max()) < 1e-5  # still at the optimum
    relative = abs(ds.loss_train / ds.objective_theory - 1)
    assert float(relative.max()) < (5e-3 if estimator == "sampled" else 1e-5), relative.values


@pytest.mark.parametrize("remedy", ["reweight(gamma=1)", "logit_adjust(t=1) + class_tau(gamma=0.5)"])
def test_the_rank_solver_takes_a_remedy(remedy):
    """d >= C: the rank-d solver reaches the convex optimum of the remedied objective; d < C: its objective lies
    above the convex bound and is no worse than refining many random starts of the same objective."""
    from pipeline.theory.problem import Problem
    from pipeline.theory.rank import refine

    convex = api.solve("infonce(tau=0.5)", "exp(C=4, rho=100)", 4, remedy=remedy)
    full_rank = api.solve("infonce(tau=0.5)", "exp(C=4, rho=100)", 4, remedy=remedy, dim=4, solver="rank")
    assert full_rank.objective == pytest.approx(convex.objective, abs=1e-10)
    low = api.solve("infonce(tau=0.5)", "exp(C=4, rho=100)", 4, remedy=remedy, dim=2)
    assert low.solver == "rank" and low.objective >= convex.objective - 1e-12
    problem = Problem.from_profile("infonce(tau=0.5)", "exp(C=4, rho=100)", 4, remedy=remedy)
    rng = np.random.default_rng(1)
    best = min(refine(problem, rng.standard_normal((2, 4)))[1] for _ in range(20))  # the objective of each end
    assert low.objective <= best + 1e-9


def test_in_batch_training_applies_a_remedy(tmp_path):
    """In-batch free features under logit adjustment and reweighting train, and are compared with the remedied
    optimum at the subsampled dataset's proportions (the exact correspondence: tests/test_inbatch.py)."""
    from pipeline.sweep.graph import compute_and_write
    from pipeline.sweep.grid import Grid

    raw = _step(tmp_path / "b.zarr", ["none", "reweight(gamma=1) + logit_adjust(t=1)"], R=[4], k=[6])
    raw["grid"]["dim"] = [4]
    raw["train"] = {"negatives_from": "batch", "model": "ufm", "data": "gaussian", "n_max": 40, "steps": 200,
                    "runs_per_batch": 1}  # fmt: skip
    config = validate(raw)
    theory_store(config)
    for batch in Grid(config).batches("train"):
        compute_and_write(config, batch, config.store)
    ds = xr.open_zarr(config.store).squeeze()
    assert (ds.status_train == STATUS_CODE["trained"]).all() and np.isfinite(ds.loss_train).all()
    reference = ds.objective_subsampled  # the optimum at the subsampled proportions, under each remedy
    assert float(abs(reference.sel(remedy="none") - reference.isel(remedy=1))) > 1e-3
    counts = ds.n_train_class.sel(remedy="none").values  # (C,)
    expected = api.solve("infonce(tau=0.5)", f"counts({', '.join(map(str, counts))})", 6,
                         remedy="reweight(gamma=1) + logit_adjust(t=1)").objective  # fmt: skip
    assert float(reference.isel(remedy=1)) == pytest.approx(expected, rel=1e-10)

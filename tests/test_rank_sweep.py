"""Rank-d theory in a sweep (theory.rank_dims): a store dim rank_dim beside the convex optimum, its figure, and
its config errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr
import yaml

from pipeline.cli import main
from pipeline.plots.write import write_figures
from pipeline.sweep.config import validate
from pipeline.sweep.results import STATUS_CODE
from pipeline.theory.objective import certificate, class_objective
from pipeline.theory.problem import Problem
from tests.conftest import theory_store

LOSS = "infonce(tau=0.5)"


def _raw(store, rank_dims=None):
    raw = {"name": "r", "store": str(store),
           "grid": {"profile": "exp", "loss": [LOSS], "C": [5], "rho": [10, 1000], "k": [8, math.inf]},
           "theory": {"thresholds": False}}  # fmt: skip
    if rank_dims is not None:
        raw["theory"]["rank_dims"] = rank_dims
    return raw


@pytest.fixture(scope="module")
def rank_store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rank")
    config = validate(_raw(tmp / "r.zarr", [2, 3, 5]))
    theory_store(config)
    return config


def test_the_rank_dims_are_a_store_dim_beside_the_convex_optimum(rank_store):
    """Each stored rank-d point: its Gram has unit diagonal and rank <= d, its objective is L at that Gram
    (recomputed), it is no better than the certified lower bound of the convex optimum, which is its gap's
    reference; at d = C it is the convex optimum itself; and it is read lazily, one point's Gram at a time."""
    ds = xr.open_zarr(rank_store.store)
    assert ds.gram_rank_theory.dims == ("loss", "C", "rho", "k", "rank_dim", "class_i", "class_j")
    assert ds.gram_rank_theory.encoding["chunks"][-2:] == (5, 5)
    for rho in (10.0, 1000.0):
        for k in (8, math.inf):
            problem = Problem.from_profile(LOSS, f"exp(C=5, rho={rho:g})", k)
            at = {"loss": LOSS, "C": 5, "rho": rho, "k": k}
            convex = float(ds.objective_theory.sel(at))
            lower = convex - float(ds.gap_theory.sel(at))
            for d in (2, 3):
                point = {**at, "rank_dim": d}
                G = ds.gram_rank_theory.sel(point).values  # one point: (5, 5)
                objective = float(ds.objective_rank_theory.sel(point))
                assert np.allclose(np.diag(G), 1) and np.linalg.matrix_rank(G, tol=1e-8) <= d
                assert objective == pytest.approx(class_objective(problem, G)[0], rel=1e-12)
                assert objective >= lower - 1e-12
                assert float(ds.gap_rank_theory.sel(point)) == pytest.approx(objective - lower, abs=1e-12)
                assert int(ds.second_order_rank_theory.sel(point)) == 1
                assert int(ds.status_rank_theory.sel(point)) == STATUS_CODE["local"]
            full = {**at, "rank_dim": 5}  # d = C: the convex optimum, certified
            assert float(ds.objective_rank_theory.sel(full)) == convex
            np.testing.assert_array_equal(ds.gram_rank_theory.sel(full).values, ds.gram_theory.sel(at).values)
            assert int(ds.second_order_rank_theory.sel(full)) == -1
            # fewer dimensions cost more: the gap grows as d drops
            gaps = ds.gap_rank_theory.sel(at).values
            assert gaps[0] > gaps[1] > gaps[2] - 1e-12
            assert certificate(problem, ds.gram_rank_theory.sel(full).values)[1] <= 1e-9 * abs(convex)


def test_a_store_without_rank_dims_is_as_before(tmp_path):
    """No rank_dims: no rank_dim dim or rank variables, and the science (hash) of a config written before."""
    plain, empty = validate(_raw(tmp_path / "a.zarr")), validate(_raw(tmp_path / "b.zarr", []))
    assert plain.science_hash() == empty.science_hash()
    assert "rank_dims" not in plain.science()["theory"]
    ds = xr.open_zarr(theory_store(plain))
    assert "rank_dim" not in ds.dims and not [name for name in ds.data_vars if "rank" in name]


def test_plot_draws_the_rank_figure(rank_store, tmp_path):
    written = [p.name for p in write_figures(rank_store.store, tmp_path / "figs")["written"]]
    assert "rank_infonce-tau0.5_C5.png" in written  # named as the other figures: _C5, _A2_B2
    assert "rank_infonce-tau0.5_C5" in (tmp_path / "figs" / "summary.md").read_text()


@pytest.mark.parametrize("value, expected", [
    ("[0]", "theory.rank_dims: 0: expected a list of embedding dimensions, integers from 1"),
    ("[2, 2]", "theory.rank_dims: duplicate values [2]: expected each value once"),
    ("[2.5]", "theory.rank_dims: 2.5: expected a list of embedding dimensions"),
    ("[true]", "theory.rank_dims: True: expected a list of embedding dimensions"),
    ("[two]", "theory.rank_dims: 'two': expected a list of embedding dimensions"),
])  # fmt: skip
def test_bad_rank_dims_are_one_line_and_no_store(capsys, tmp_path, value, expected):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(_raw(tmp_path / "never.zarr")))
    assert main(["run", str(config), f"theory.rank_dims={value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "never.zarr").exists()

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


def test_the_imagenet_lt_config_is_c1000_and_reads_one_point_lazily(tmp_path, monkeypatch):
    """configs/imagenet_lt.yaml asks for C = 1000, k in {255, 4096, 65536, inf} and d in {128, 512, 1000}. Run here
    with its C cut to 12 (d in {3, 12}, two k) and the trust-region rank path forced (as at C > 100): each theory
    point's Gram matrices are one chunk, and xr.open_zarr reads one point's with every other point's chunk deleted
    from disk."""
    import pathlib

    import pipeline.theory.rank as rank
    from pipeline.sweep.config import load_config

    shipped = load_config("configs/imagenet_lt.yaml")
    assert shipped.grid.C_max == 1000 and shipped.grid.k == (255, 4096, 65536, math.inf)
    assert shipped.theory.rank_dims == (128, 512, 1000)
    monkeypatch.setattr(rank, "RESTARTS_MAX_C", 4)
    config = load_config("configs/imagenet_lt.yaml", [
        'grid.counts={imagenet_lt: "pareto(C=12, alpha=6, n_max=1280, n_min=5)"}', "theory.rank_dims=[3,12]",
        "grid.k=[255,inf]", f"store={tmp_path / 's.zarr'}"])  # fmt: skip
    theory_store(config)
    ds = xr.open_zarr(config.store)
    assert ds.gram_rank_theory.encoding["chunks"] == (1, 1, 1, 2, 12, 12)  # a point: its Gram at every d
    assert ds.gram_theory.encoding["chunks"] == (1, 1, 1, 12, 12)
    kept = ds.gram_rank_theory.isel(loss=0, counts=0, k=1, rank_dim=0).values  # (12, 12) at k = inf, d = 3
    assert int(ds.second_order_rank_theory.isel(loss=0, counts=0, k=1, rank_dim=0)) == 1
    chunks = sorted(p for p in pathlib.Path(config.store, "gram_rank_theory", "c").rglob("*") if p.is_file())
    assert len(chunks) == 2  # one a k
    chunks[0].unlink()  # k = 255's chunk
    ds = xr.open_zarr(config.store)
    np.testing.assert_array_equal(ds.gram_rank_theory.isel(loss=0, counts=0, k=1, rank_dim=0).values, kept)
    assert np.isnan(ds.gram_rank_theory.isel(loss=0, counts=0, k=0, rank_dim=0).values).all()  # deleted: missing

"""In-batch training as it is practised: stacked encoders, their gradients, runs alone and stacked, the
config's refusals, and a sweep end to end."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest
import torch
import yaml

from pipeline.cli import main
from pipeline.sweep.config import ConfigError, TrainSpec, validate
from pipeline.theory.losses import parse_loss
from pipeline.theory.profiles import Exp, Step
from pipeline.train.batch_loss import batch_loss
from pipeline.train.batch_trainer import train_batch_runs
from pipeline.train.encoders import Stacked, build_encoder
from pipeline.train.trainer import Run

torch.set_num_threads(1)


def plain_batch_loss(F: torch.Tensor, y: torch.Tensor, loss, k: int, reduction: str, positives: str) -> torch.Tensor:
    """One run's in-batch loss by loops over anchors, positives and negatives (the definition)."""
    B = F.shape[0]
    rho = 1.0 if reduction == "sum" else 1.0 / k
    total = F.new_zeros(())
    for i in range(B):
        pos = [p for p in range(B) if p != i and y[p] == y[i]]
        terms = []
        for p in pos:
            inner = sum(loss.phi(F[i] @ F[a] - F[i] @ F[p]) for a in range(B) if a not in (i, p))
            terms.append(loss.psi(rho * inner))
        if terms:
            total = total + (sum(terms) / (len(terms) if positives == "mean" else 1))
    return total / B


@pytest.mark.parametrize("model, shape, vectorize", [("mlp", (1, 12), True), ("cnn1d", (1, 12), True),
                         ("cnn", (1, 8, 8), True), ("resnet", (1, 8, 8), True), ("resnet", (1, 8, 8), False),
                         ("ufm", (), True)])  # fmt: skip
def test_stacked_gradient_equals_float64_autograd_of_each_run(model, shape, vectorize):
    """The stacked loss's gradient, per run, is float64 autograd of that run's plain loss on its own module
    (vmapped, and called run by run as CPU stacks of 2-D convolutions are)."""
    R, B, d = 3, 6, 4
    loss = parse_loss("infonce(tau=0.5)")
    modules = []
    for seed in range(R):
        torch.manual_seed(seed)
        modules.append(build_encoder(model, shape, d, hidden=8, n_samples=20).double())
    stacked = Stacked(modules, torch.device("cpu"), vectorize)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(20, (R, B), generator=gen) if model == "ufm" else torch.randn(R, B, *shape, generator=gen,
                                                                                     dtype=torch.float64)  # fmt: skip
    y = torch.tensor([[0, 0, 1, 1, 2, 0], [1, 1, 1, 0, 0, 2], [0, 1, 2, 0, 1, 2]])
    F = torch.nn.functional.normalize(stacked(x), dim=-1)  # (R, B, d)
    batch_loss(F, y, loss, B - 2, "sum", "mean").sum().backward()
    for r, module in enumerate(modules):
        module.zero_grad()
        f = torch.nn.functional.normalize(module(x[r]), dim=-1)
        plain_batch_loss(f, y[r], loss, B - 2, "sum", "mean").backward()
        for name, param in module.named_parameters():
            torch.testing.assert_close(stacked.params[name].grad[r], param.grad, rtol=1e-10, atol=1e-12)


CASES = [("infonce(tau=0.1)", "sum", "mean"), ("infonce(tau=0.5)", "mean", "sum"), ("sumexp(tau=0.5)", "sum", "mean"),
         ("triplet(margin=0.5)", "mean", "mean"), ("squared_hinge(margin=1)", "sum", "sum")]


@pytest.mark.parametrize("loss_id, reduction, positives", CASES)
def test_float32_batch_loss_matches_the_float64_definition(loss_id, reduction, positives):
    """The O(B^2) log-sum-exp route in float32 against the definition's loops in float64."""
    loss = parse_loss(loss_id)
    gen = torch.Generator().manual_seed(1)
    F = torch.nn.functional.normalize(torch.randn(2, 7, 3, generator=gen, dtype=torch.float64), dim=-1)
    y = torch.tensor([[0, 0, 0, 1, 1, 2, 2], [0, 1, 0, 1, 2, 2, 0]])
    fast = batch_loss(F.float(), y, loss, 5, reduction, positives).double()
    plain = torch.stack([plain_batch_loss(F[r], y[r], loss, 5, reduction, positives) for r in range(2)])
    torch.testing.assert_close(fast, plain, rtol=2e-5, atol=1e-6)


SPEC = TrainSpec(model="mlp", data="gaussian", steps=40, lr=3e-3, betas=(0.9, 0.999), hidden=16, input_dim=8,
                 negatives_from="batch", n_max=30, n_test=5)  # fmt: skip


def _runs(loss_id: str = "infonce(tau=0.5)", k: int = 6) -> list[Run]:
    loss = parse_loss(loss_id)
    out = []
    for R, seed in [(1.0, 0), (5.0, 1), (5.0, 2)]:
        counts = Step(2, 2, R).integer_counts(SPEC.n_max)
        out.append(Run(loss, counts / counts.sum(), 2, k, 4, seed, counts=counts))
    return out


@pytest.mark.parametrize("model, sampler", [("mlp", "uniform"), ("ufm", "balanced")])
def test_stacked_runs_equal_runs_trained_one_at_a_time(model, sampler):
    spec = replace(SPEC, model=model, sampler=sampler)
    runs = _runs()
    together = train_batch_runs(runs, spec)
    for run, stacked in zip(runs, together, strict=True):
        alone = train_batch_runs([run], spec)[0]
        np.testing.assert_allclose(stacked.gram, alone.gram, atol=2e-5)
        assert stacked.loss == pytest.approx(alone.loss, rel=1e-5)
        np.testing.assert_array_equal(stacked.n_train_class, alone.n_train_class)


def test_a_run_reports_its_counts_geometry_and_test_accuracy():
    runs = _runs()
    result = train_batch_runs(runs[1:2], replace(SPEC, steps=150))[0]
    np.testing.assert_array_equal(result.n_train_class, [30, 30, 6, 6])
    np.testing.assert_array_equal(result.n_test_class, [5, 5, 5, 5])
    assert result.gram.shape == result.gram_test.shape == (4, 4)
    assert np.allclose(np.diag(result.gram), 1) and np.allclose(np.diag(result.gram_test), 1)
    assert result.acc_test_class.shape == (4,) and np.all((result.acc_test_class >= 0) & (result.acc_test_class <= 1))
    # gaussian classes at noise 0.5 are easy: nearest class means classify most of the test set
    assert result.acc_test_class.mean() > 0.7
    assert set(result.acc_shots) == {"many", "medium", "few"} and np.isnan(result.acc_shots["many"])
    assert result.acc_shots["medium"] == pytest.approx(result.acc_test_class[:2].mean())
    assert np.isfinite(result.grad_norm) and np.isfinite(result.loss_change) and result.converged is not None


BATCH_CONFIG = {
    "name": "practised",
    "grid": {"profile": "exp", "loss": ["infonce(tau=0.5)"], "C": [4], "rho": [1, 10], "k": [6], "dim": [4],
             "seed": [0, 1]},
    "train": {"negatives_from": "batch", "model": "mlp", "data": "gaussian", "n_max": 40, "n_test": 5, "steps": 60,
              "hidden": 16, "input_dim": 8, "lr": 0.003, "betas": [0.9, 0.999]},
}


def _config(store: str = "s.zarr", **train) -> dict:
    raw = yaml.safe_load(yaml.safe_dump(BATCH_CONFIG))
    raw["store"] = store
    raw["train"].update(train)
    return raw


@pytest.mark.parametrize("changes, field, allowed", [
    ({"n_max": 15}, "train.n_max", "an integer >= 20"),  # exp(C=4, rho=10) at 15: 15, 6, 3, 1
    ({"batch_size": 64}, "train.batch_size", "k + 2 samples"),
    ({"model": "cnn"}, "train.model", "cnn takes (1, H, W) images"),
    ({"data": "digits", "n_max": 400}, "train.n_max", "digits supplies 174 samples a class"),
    ({"model": "cnn1d", "data": "mnist1d"}, None, None),
    ({"n_max": None}, "train.n_max", "missing"),
    ({"estimator": "sampled"}, "train.estimator", "negatives_from: iid"),
])  # fmt: skip
def test_in_batch_config_refusals(changes, field, allowed):
    raw = _config(**changes)
    if changes.get("n_max", 1) is None:
        raw["train"].pop("n_max")
    if field is None:
        assert validate(raw).train.model == "cnn1d"
        return
    with pytest.raises(ConfigError) as err:
        validate(raw)
    assert any(line.startswith(field) and allowed in line for line in err.value.problems), err.value.problems


def test_k_inf_and_too_large_k_and_too_few_classes_are_refused():
    raw = _config()
    raw["grid"]["k"] = [6, "inf"]
    with pytest.raises(ConfigError, match="finite k"):
        validate(raw)
    raw["grid"]["k"] = [1000]
    with pytest.raises(ConfigError, match="does not fit a training set"):
        validate(raw)
    raw = _config(data="mnist1d")
    raw["grid"]["C"] = [12]
    with pytest.raises(ConfigError, match="at least 12 classes"):
        validate(raw)
    raw = _config()
    raw["theory"] = {"negatives": "other"}
    with pytest.raises(ConfigError, match=r"theory\.negatives"):
        validate(raw)


def test_a_refused_config_is_one_line_exit_2_and_no_store(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(_config(str(tmp_path / "s.zarr"), n_max=3)))
    assert main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.n_max" in err[0] and "3" in err[0], err
    assert not (tmp_path / "s.zarr").exists()


def test_in_batch_sweep_end_to_end(tmp_path):
    """A sweep trains in-batch runs, stores counts, test accuracy and the distance to the theory point at
    the subsampled proportions; the plot command draws the practised figure."""
    import xarray as xr

    from pipeline.theory.dispatch import solve
    from pipeline.theory.problem import Problem

    cfg = tmp_path / "c.yaml"
    raw = _config(str(tmp_path / "s.zarr"))
    raw["cluster"] = {"n_workers": 1}
    cfg.write_text(yaml.safe_dump(raw))
    threads = os.environ.get("OMP_NUM_THREADS")
    assert main(["run", str(cfg)]) == 0
    assert os.environ.get("OMP_NUM_THREADS") == threads  # the LocalCluster's worker env stays in its workers
    ds = xr.open_zarr(tmp_path / "s.zarr")
    assert (ds.status_train == 6).all()
    counts = ds.n_train_class.sel(rho=10).isel(seed=0).squeeze().values
    np.testing.assert_array_equal(counts, [40, 18, 8, 4])  # floor(40 * 10^(-c/3))
    assert (ds.n_test_class == 5).all() and ds.acc_test_class.notnull().all()
    assert ds.acc_many_test.isnull().all() and ds.acc_medium_test.notnull().all()
    # dist_to_theory is to the optimum at the subsampled counts (40, 18, 8, 4), not the profile's proportions
    problem = Problem.create("infonce(tau=0.5)", counts / counts.sum(), 6)
    G_star = solve(problem).G
    run = ds.sel(loss="infonce(tau=0.5)", C=4, rho=10.0, k=6, dim=4, seed=0)
    expected = np.linalg.norm(run.gram_train.values - G_star) / 4
    assert float(run.dist_to_theory) == pytest.approx(expected, rel=1e-9)
    assert float(run.objective_subsampled) == pytest.approx(solve(problem).objective, rel=1e-12)
    nominal = solve(Problem.from_profile("infonce(tau=0.5)", Exp(4, 10.0), 6)).G
    assert abs(np.linalg.norm(run.gram_train.values - nominal) / 4 - expected) > 1e-6
    assert "negatives_from: batch" in ds.attrs["config"]
    assert main(["plot", str(tmp_path / "s.zarr"), "--out", str(tmp_path / "fig")]) == 0
    assert (tmp_path / "fig" / "practised_infonce-tau0.5_C4.png").exists()


def test_iid_training_keeps_its_fields_and_refuses_batch_only_ones():
    raw = _config()
    raw["train"] = {"n_max": 40}
    with pytest.raises(ConfigError, match=r"train\.n_max: applies to in-batch training"):
        validate(raw)
    raw["train"] = {"model": "resnet"}
    with pytest.raises(ConfigError, match="train with in-batch negatives"):
        validate(raw)
    # the fields added for in-batch training are part of the store's science where set, absent at their
    # defaults (stores written before them still match)
    assert validate(_config()).science()["train"]["negatives_from"] == "batch"
    iid = _config()
    iid["train"] = {"steps": 10}
    assert not {"negatives_from", "sampler", "positives", "n_max", "n_test"} & set(validate(iid).science()["train"])


@pytest.mark.parametrize("loss_id", ["triplet(margin=0.5)", "squared_hinge(margin=1)", "infonce(tau=0.5)"])
def test_a_loss_parameter_per_run_lines_up_with_its_run(loss_id):
    """Stacked runs with their own tau or margin (R != B and R == B): each run's loss is its own."""
    loss = parse_loss(loss_id)
    gen = torch.Generator().manual_seed(2)
    for R, B in [(3, 5), (5, 5)]:
        F = torch.nn.functional.normalize(torch.randn(R, B, 3, generator=gen, dtype=torch.float64), dim=-1)
        y = torch.randint(2, (R, B), generator=gen)
        params = torch.linspace(0.3, 1.5, R, dtype=torch.float64)
        stacked = batch_loss(F, y, replace(loss, param=params.view(-1, 1, 1)), B - 2, "sum", "mean")
        alone = torch.stack([batch_loss(F[r : r + 1], y[r : r + 1], replace(loss, param=float(params[r])), B - 2)[0]
                             for r in range(R)])  # fmt: skip
        torch.testing.assert_close(stacked, alone, rtol=1e-12, atol=1e-14)


def test_balanced_sampler_draws_real_rows_of_uniform_classes():
    """Two runs of different dataset sizes: no padding row is drawn, classes come out uniform, and every
    row of a run is drawn."""
    from pipeline.train.batch_trainer import InBatchStack

    runs = _runs()[:2]  # 30, 30, 30, 30 and 30, 30, 6, 6 training samples
    stack = InBatchStack(runs, replace(SPEC, sampler="balanced"), torch.device("cpu"))
    rows = torch.cat([stack.draw() for _ in range(2000)], dim=1)  # (2, 2000 B): a frequency to +-0.0034
    for r, n in enumerate(stack.n_list):
        assert int(rows[r].max()) < n and set(rows[r].tolist()) == set(range(n))
        frequency = torch.bincount(stack.y[r, rows[r]], minlength=4) / rows.shape[1]
        torch.testing.assert_close(frequency, torch.full((4,), 0.25), atol=0.02, rtol=0)


def test_counts_profiles_train_in_batch_and_are_checked_against_the_dataset():
    raw = _config()
    raw["grid"] = {"profile": "counts", "loss": ["infonce(tau=0.5)"], "counts": {"a": [40, 20, 10], "b": [30, 8, 2]},
                   "k": [6], "dim": [4], "seed": [0]}  # fmt: skip
    assert validate(raw).grid.counts[0] == ("a", (40.0, 20.0, 10.0))
    raw["train"]["data"] = "digits"
    raw["grid"]["counts"]["big"] = [400, 20, 10]  # given counts are taken as they are, beyond n_max
    with pytest.raises(ConfigError, match=r"grid\.counts: 'a class of 400 training samples'"):
        validate(raw)

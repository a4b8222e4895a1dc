"""The exact full-batch UFM mode: the sample-level loss, its derivatives, and convergence to the theory."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.metrics import class_mean_gram, etf_gram, group_cosines, within_class
from pipeline.sweep.config import ConfigError, TrainSpec, validate
from pipeline.theory import Problem, solve
from pipeline.theory.losses import parse_loss
from pipeline.theory.objective import class_objective
from pipeline.train.exact_ufm import SampleLoss, fit_exact
from pipeline.train.trainer import Run, train_runs

INFONCE1 = parse_loss("infonce(tau=1)")


def _fit(R: float, n: int = 2, k: int = 2, dim: int = 4, seed: int = 0):
    problem = Problem.two_group(INFONCE1, 2, 2, R, k)
    fit = fit_exact(INFONCE1, problem.p, n, k, dim, seed)
    G = class_mean_gram(fit.features, fit.labels, 4)
    return problem, fit, G, within_class(fit.features, fit.labels, 4)


@pytest.mark.parametrize(("negatives", "reduction", "k"), [("marginal", "sum", 2), ("other", "mean", 3),
                                                           ("marginal", "sum", 300), ("marginal", "mean", math.inf)])
def test_sample_loss_at_collapsed_features_is_the_class_level_loss(negatives, reduction, k):  # fmt: skip
    """Independent route: with every sample on its class vector the sample-level loss is L(G)."""
    problem = Problem.two_group(INFONCE1, 2, 3, 7.0, k, negatives, reduction)
    V = np.linalg.qr(np.random.default_rng(1).standard_normal((5, 5)))[0]  # (d, C) unit columns
    sample = SampleLoss.build(INFONCE1, problem.p, 3, k, negatives, reduction)
    value = sample.evaluate(V[:, sample.y])[0]
    assert value == pytest.approx(class_objective(problem, V.T @ V)[0], rel=1e-13)


@pytest.mark.parametrize("k", [4, 300])  # the enumeration and the transform
def test_sample_loss_gradient_and_hessian_match_the_complex_step(k):
    problem = Problem.two_group(INFONCE1, 2, 2, 30.0, k)
    sample = SampleLoss.build(INFONCE1, problem.p, 3, k, "marginal", "sum")
    rng = np.random.default_rng(0)
    F, dF = rng.standard_normal((3, 12)), rng.standard_normal((3, 12))
    _, grad, hessian = sample.evaluate(F)
    stepped = sample.evaluate(F + 1e-30j * dF)
    assert np.imag(stepped[0]) / 1e-30 == pytest.approx((grad * dF).sum(), rel=1e-12)
    np.testing.assert_allclose(np.imag(stepped[1]) / 1e-30, hessian(dF), rtol=1e-11, atol=1e-14)


def test_exact_mode_reaches_the_theory_at_R_5():
    problem, fit, G, within = _fit(5.0)
    theory = solve(problem)
    a, b, c = group_cosines(G, 2)
    np.testing.assert_allclose([a, b, c], [theory.a, theory.b, theory.c], atol=1e-6)
    assert theory.c < 0.5  # the minority classes stay apart here (c = 0.421)
    assert within.spread <= 1e-9 and fit.grad_norm <= 1e-10


@pytest.mark.parametrize("R", [1e3, 1e4])
def test_exact_mode_collapses_the_minority_at_large_R(R):
    problem, fit, G, within = _fit(R)
    assert solve(problem).collapsed
    assert 1 - group_cosines(G, 2)[2] <= 1e-6
    assert within.spread <= 1e-9 and fit.grad_norm <= 1e-10


def test_exact_mode_gives_the_etf_for_balanced_classes():
    for seed in (0, 1):
        *_, G, within = _fit(1.0, n=3, seed=seed)
        np.testing.assert_allclose(G, etf_gram(4), atol=1e-8)
        assert within.spread <= 1e-9


def test_exact_estimator_in_training_and_its_config():
    spec = TrainSpec(estimator="exact", samples_per_class=2)
    p = Problem.two_group(INFONCE1, 2, 2, 5.0, 2).p
    result = train_runs([Run(INFONCE1, p, 2, 2, 4, 0)], spec)[0]
    assert result.converged and result.grad_norm <= 1e-10 and not result.diverged
    with pytest.raises(ConfigError, match=r"train\.estimator: 'exact'"):
        validate({"store": "x.zarr", "grid": {"loss": ["infonce(tau=1)"], "R": [2]},
                  "train": {"model": "mlp", "estimator": "exact"}})  # fmt: skip
    base = {"store": "x.zarr", "grid": {"loss": ["infonce(tau=1)"], "R": [2]}}
    with pytest.raises(ConfigError, match=r"train\.init: 'theory'.*estimator 'expected'"):
        validate({**base, "train": {"estimator": "exact", "init": "theory"}})
    with pytest.raises(ConfigError, match=r"train\.init: 'warm'.*random, theory"):
        validate({**base, "train": {"init": "warm"}})
    assert validate({**base, "train": {"init": "theory"}}).train.init == "theory"


def test_stochastic_runs_carry_their_stationarity():
    """A short Adam run at R = 1000 is flagged not stationary; the exact fit of the same point is."""
    p = Problem.two_group(INFONCE1, 2, 2, 1000.0, 2).p
    short = train_runs([Run(INFONCE1, p, 2, 2, 4, 0)], TrainSpec(steps=200, samples_per_class=2))[0]
    assert short.grad_norm > 1e-6 and short.converged is False
    exact = train_runs([Run(INFONCE1, p, 2, 2, 4, 0)], TrainSpec(estimator="exact", samples_per_class=2))[0]
    assert exact.converged and exact.grad_norm < 1e-6 * short.grad_norm
    # too many samples for the exact loss ((4 n)^2 n > 2e6): the parameter-space norm, decided by the loss change
    many = train_runs([Run(INFONCE1, p, 2, 2, 4, 0)], TrainSpec(steps=200, samples_per_class=80))[0]
    assert 0 < many.grad_norm < math.inf
    assert many.converged == (abs(many.loss_change) <= 1e-3)


def test_phase_labels_split_not_converged_from_disagreement():
    """Synthetic runs: a contradiction is not_converged where the run is not shown stationary (0, or -1:
    its test cannot tell), a disagreement where it is; c_train within tol of the theory's c is
    agreement whatever the flags."""
    import xarray as xr

    from pipeline.analysis import PHASE_CODE, train_phase
    from pipeline.sweep.results import STATUS_CODE

    run = ("run",)
    c_train = [0.95, 0.95, 0.9955, 0.40, 0.999]
    c_theory = [1.0, 1.0, 0.99553, 0.42, 0.70]
    collapsed = [1.0, 1.0, 0.0, 0.0, 0.0]
    converged = [0, 1, 1, 0, -1]
    ds = xr.Dataset({"cos_minor_train": (run, c_train), "cos_minor_theory": (run, c_theory),
                     "collapsed_theory": (run, collapsed), "converged_train": (run, converged),
                     "status_train": (run, [STATUS_CODE["trained"]] * 5), "done_train": (run, [1] * 5)})  # fmt: skip
    names = {code: name for name, code in PHASE_CODE.items()}
    labels = [names[int(x)] for x in train_phase(ds).values]
    assert labels == ["not_converged", "disagreement", "minority_collapse", "no_collapse", "not_converged"]
    old = ds.drop_vars("converged_train")  # a store from before stationarity: contradictions are disagreements
    assert [names[int(x)] for x in train_phase(old).values][:2] == ["disagreement", "disagreement"]
    # the same runs with their exact objectives: stationary contradictions within 1e-5 of L* are
    # unresolved (5e-6 above 0.7 here); not shown stationary stays so, 1e-3 above L* or not
    L_star = 0.7
    gaps = [1e-9, 5e-6, 0.0, 0.0, 1e-3]
    exact = ds.assign(objective_train=(run, [L_star + g for g in gaps]), objective_theory=(run, [L_star] * 5),
                      objective_rank=(run, [np.nan] * 5))  # fmt: skip
    labels = [names[int(x)] for x in train_phase(exact).values]
    assert labels == ["not_converged", "unresolved", "minority_collapse", "no_collapse", "not_converged"]
    exact = exact.assign(converged_train=(run, [0, 1, 1, 0, 1]))  # the last one stationary, 1e-3 above L*
    assert names[int(train_phase(exact).values[4])] == "disagreement"
    rank = exact.assign(objective_rank=(run, [np.nan, L_star - 1e-3, np.nan, np.nan, np.nan]))  # d < C: vs its optimum
    assert names[int(train_phase(rank).values[1])] == "disagreement"

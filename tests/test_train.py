"""Training against theory: UFM reaches the optimal geometry on both sides of the threshold."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.losses import parse_loss
from pipeline.metrics import etf_gram
from pipeline.problem import Problem, two_group_proportions
from pipeline.theory import solve
from pipeline.threshold import minority_threshold
from pipeline.train import Run, TrainSpec, train_runs

torch.set_num_threads(1)
INFONCE = parse_loss("infonce(tau=1)")


@pytest.fixture(scope="module")
def around_threshold():
    """Balanced, R*/4 and 4 R* for InfoNCE tau=1, 2 + 2 classes, k = 4, d = 4, trained together."""
    R_star = minority_threshold(INFONCE, 2, 2, 4).R_star
    Rs = [1.0, R_star / 4, 4 * R_star]
    runs = [Run(INFONCE, two_group_proportions(2, 2, R), 2, 4, 4, seed=0) for R in Rs]
    return Rs, runs, train_runs(runs, TrainSpec())


def test_ufm_collapses_exactly_where_theory_says(around_threshold):
    Rs, _, (balanced, below, above) = around_threshold
    c_theory_below = solve(Problem.two_group(INFONCE, 2, 2, Rs[1], 4)).c
    assert below.cos_minor < 0.9
    assert below.cos_minor == pytest.approx(c_theory_below, abs=5e-3)  # agreement, not just a side
    assert above.cos_minor > 0.99
    assert np.linalg.norm(balanced.gram - etf_gram(4)) / 4 <= 0.05
    for result in (balanced, below, above):
        assert not result.diverged and result.nc1 < 0.05


def test_training_is_deterministic_on_cpu(around_threshold):
    _, runs, results = around_threshold
    again = train_runs(runs[:1], TrainSpec(steps=50))
    once_more = train_runs(runs[:1], TrainSpec(steps=50))
    np.testing.assert_array_equal(again[0].features, once_more[0].features)
    assert results[0].features.shape == (4 * TrainSpec().samples_per_class, 4)


@pytest.mark.parametrize(("model", "data"), [("mlp", "gaussian"), ("mlp", "digits"), ("ufm", "gaussian")])
@pytest.mark.parametrize("estimator", ["expected", "sampled"])
def test_models_data_and_estimators_run(model, data, estimator):
    spec = TrainSpec(model=model, data=data, steps=30, samples_per_class=6, estimator=estimator)
    for negatives in ("marginal", "other"):
        runs = [Run(parse_loss(lo), two_group_proportions(2, 3, 5.0), 2, 2, 8, seed=1, negatives=negatives)
                for lo in ("infonce(tau=0.5)", "infonce(tau=1)")]  # fmt: skip
        for result in train_runs(runs, spec):
            assert not result.diverged
            assert result.gram.shape == (5, 5) and np.allclose(np.diag(result.gram), 1)
            assert np.isfinite(result.loss) and np.isfinite(result.cos_minor)


def test_linear_psi_losses_train():
    runs = [Run(parse_loss("sumexp(tau=1)"), two_group_proportions(2, 2, 3.0), 2, 4, 4, seed=0)]
    (result,) = train_runs(runs, TrainSpec(steps=400))
    theory = solve(Problem.two_group("sumexp(tau=1)", 2, 2, 3.0, 4))
    assert np.abs(result.gram - theory.G).max() < 0.05


def test_a_diverging_run_is_flagged_and_leaves_the_others_alone():
    p = two_group_proportions(2, 2, 2.0)
    runs = [
        Run(parse_loss("infonce(tau=1)"), p, 2, 4, 4, seed=0),
        Run(parse_loss("infonce(tau=0.0001)"), p, 2, 4, 4, 0),
    ]
    fine, broken = train_runs(runs, TrainSpec(steps=50))
    assert broken.diverged and np.isnan(broken.cos_minor)
    assert not fine.diverged and np.isfinite(fine.cos_minor)
    (alone,) = train_runs(runs[:1], TrainSpec(steps=50))
    assert fine.cos_minor == pytest.approx(alone.cos_minor, abs=0.05)

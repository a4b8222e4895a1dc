"""Training against theory: UFM reaches the optimal geometry on both sides of the threshold."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from pipeline.metrics import etf_gram
from pipeline.theory.dispatch import solve
from pipeline.theory.losses import parse_loss
from pipeline.theory.objective import count_vectors
from pipeline.theory.problem import Problem, two_group_proportions
from pipeline.theory.threshold import minority_threshold
from pipeline.train.trainer import (
    AliasSampler,
    Objective,
    Run,
    TrainSpec,
    contrastive_grad,
    normalize,
    normalize_backward,
    train_runs,
)

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
    again = train_runs(runs[:1], TrainSpec(steps=50, device="cpu"))
    once_more = train_runs(runs[:1], TrainSpec(steps=50, device="cpu"))
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


def _objectives(B: int, M: int, C: int, k: int) -> list[tuple[str, Objective]]:
    """One Objective per estimator branch, float64, with random weights and class probabilities."""
    gen = torch.Generator().manual_seed(3)
    w = torch.rand(B, M, generator=gen, dtype=torch.float64) + 0.5
    q_a = torch.rand(B, M, C, generator=gen, dtype=torch.float64)
    q_a /= q_a.sum(-1, keepdim=True)
    counts = count_vectors(k, C).astype(np.float64)  # (Mc, C)
    P_a = torch.rand(B, M, counts.shape[0], generator=gen, dtype=torch.float64)
    P_a /= P_a.sum(-1, keepdim=True)
    out = []
    for loss_id in ("infonce(tau=0.5)", "sumexp(tau=1)", "squared_hinge(margin=1.5)", "triplet(margin=0.7)"):
        loss = replace(parse_loss(loss_id), param=torch.full((B, 1, 1), parse_loss(loss_id).param, dtype=torch.float64))
        for rho in (1.0, 1.0 / k):  # sum and mean over the negatives
            out.append((f"{loss_id} sampled rho={rho}", Objective(loss, rho, k, w)))
            if loss.psi_linear:
                expected = Objective(loss, rho, k, w, q_a)
            else:
                expected = Objective(loss, rho, k, w, q_a, torch.tensor(counts), P_a)
            out.append((f"{loss_id} expected rho={rho}", expected))
    return out


def test_analytic_loss_derivative_matches_autograd():
    B, M, C, k = 2, 6, 3, 3
    for label, objective in _objectives(B, M, C, k):
        K = k if objective.q_a is None else C
        z = (torch.rand(B, M, K, dtype=torch.float64) * 2 - 1.8).requires_grad_()
        per_run, g = objective.terms(z)
        (g_ref,) = torch.autograd.grad(per_run.sum(), z)
        torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-14, msg=label)


@pytest.mark.parametrize("device", ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
@pytest.mark.parametrize("kernel", ["sparse", "dense"])
def test_feature_gradient_matches_autograd_through_the_gathers(kernel, device):
    """contrastive_grad + normalize_backward against plain autograd of the same loss, float64, with
    repeated negatives (N = 7 rows for 20 draws per run) and anchors that are their own positives."""
    B, n_rows, d, M, k = 3, 7, 4, 5, 4
    gen = torch.Generator().manual_seed(0)
    H = torch.randn(B, n_rows, d, generator=gen, dtype=torch.float64).to(device)
    offsets = (torch.arange(B) * n_rows)[:, None]
    i_a = torch.randint(n_rows, (B, M), generator=gen) + offsets
    i_p = torch.where(torch.arange(M) % 2 == 0, i_a, torch.randint(n_rows, (B, M), generator=gen) + offsets)
    i_n = torch.randint(n_rows, (B, M, k), generator=gen) + offsets[..., None]
    i_a, i_p, i_n = i_a.to(device), i_p.to(device), i_n.to(device)
    _, objective = _objectives(B, M, 3, k)[2]  # infonce, sampled, rho = 1 / k
    objective = replace(objective, loss=replace(objective.loss, param=objective.loss.param.to(device)),
                        w=objective.w.to(device))  # fmt: skip
    F, r = normalize(H)
    per_run, grad_F = contrastive_grad(F, i_a, i_p, i_n, objective.terms, kernel)
    grad_H = normalize_backward(F, r, grad_F)

    H_ref = H.clone().requires_grad_()
    flat = (H_ref / H_ref.norm(dim=-1, keepdim=True)).reshape(B * n_rows, d)
    f_a, f_p, f_n = flat[i_a], flat[i_p], flat[i_n]  # (B, M, d), (B, M, d), (B, M, k, d)
    z = torch.einsum("bmkd,bmd->bmk", f_n, f_a) - (f_a * f_p).sum(-1, keepdim=True)
    per_run_ref, _ = objective.terms(z)
    per_run_ref.sum().backward()
    torch.testing.assert_close(per_run, per_run_ref.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(grad_H, H_ref.grad, rtol=1e-10, atol=1e-13)


def test_alias_sampler_draws_the_class_proportions():
    q = np.array([[0.5, 0.3, 0.2, 0.0], [2e-3, 0.25, 0.25, 0.498]])  # a zero and a rare class
    n, draws = 3, 400_000
    sampler = AliasSampler(q, n, torch.device("cpu"))
    torch.manual_seed(0)
    for t in range(2):
        rows = sampler.sample(torch.full((draws // 4,), t), 4).numpy().reshape(-1)
        counts = np.bincount(rows, minlength=4 * n).reshape(4, n)  # (class, place in class)
        sigma = np.sqrt(draws * q[t] * (1 - q[t]))
        assert np.all(np.abs(counts.sum(1) - draws * q[t]) <= 5 * sigma + 1e-9), (t, counts.sum(1))
        assert counts[q[t] == 0].sum() == 0
        within = counts[q[t] > 0]  # places uniform within each class
        expected = within.sum(1, keepdims=True) / n
        assert np.all(np.abs(within - expected) <= 5 * np.sqrt(expected) + 1), within


def test_cpu_stacks_split_the_runs_and_keep_their_order(monkeypatch):
    """With a budget of one run a stack, the batch trains as stacks of one: each result equals the run
    trained alone, in order."""
    runs = [Run(INFONCE, two_group_proportions(2, 2, R), 2, 4, 4, seed=s) for R, s in ((2.0, 0), (50.0, 1), (5.0, 2))]
    spec = TrainSpec(steps=20, device="cpu")
    alone = [train_runs([r], spec)[0] for r in runs]
    monkeypatch.setattr("pipeline.train.trainer.CPU_STACK_BYTES", 1)
    for result, single in zip(train_runs(runs, spec), alone, strict=True):
        np.testing.assert_array_equal(result.features, single.features)
    monkeypatch.undo()
    stacked = train_runs(runs, spec)  # one stack of three: other random draws, same kind of result
    assert not np.array_equal(stacked[1].features, alone[1].features)


def test_expected_estimator_at_any_k_matches_the_enumeration_and_autograd():
    """The transform branch (large k) and the k = inf branch of Objective, float64: values against the
    count-vector branch (k = 5) and the limit, derivatives against autograd."""
    from pipeline.theory.objective import multinomial_weights
    from pipeline.theory.transform import nodes

    B, M, C, k = 2, 6, 3, 5
    gen = torch.Generator().manual_seed(4)
    w = torch.rand(B, M, generator=gen, dtype=torch.float64) + 0.5
    q = torch.rand(B, M, C, generator=gen, dtype=torch.float64)
    q /= q.sum(-1, keepdim=True)
    z = torch.rand(B, M, C, generator=gen, dtype=torch.float64) * 2 - 1.8
    counts = count_vectors(k, C).astype(np.float64)
    P_a = torch.tensor(multinomial_weights(counts, q.reshape(-1, C).numpy()).reshape(B, M, -1))
    base = parse_loss("infonce(tau=0.5)")
    loss = replace(base, param=torch.full((B, 1, 1), 0.5, dtype=torch.float64))
    for rho in (1.0, 1.0 / k):
        enumerated = Objective(loss, rho, k, w, q, torch.tensor(counts), P_a)
        transformed = Objective(loss, rho, k, w, q, nodes=nodes(k, rho * float(base.phi(2.0))))
        for objective in (enumerated, transformed):
            zz = z.clone().requires_grad_()
            per_run, g = objective.terms(zz)
            (g_ref,) = torch.autograd.grad(per_run.sum(), zz)
            torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(transformed.terms(z.clone())[0], enumerated.terms(z.clone())[0], rtol=1e-12, atol=0)
    for rho, shift in ((1.0, math.log(10**6)), (0.0, 0.0)):  # k = inf: sum (L - log k) and mean
        at_inf = Objective(loss, rho, math.inf, w, q)
        zz = z.clone().requires_grad_()
        per_run, g = at_inf.terms(zz)
        (g_ref,) = torch.autograd.grad(per_run.sum(), zz)
        torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-15)
        large = Objective(loss, rho or 1e-6, 10**6, w, q, nodes=nodes(10**6, (rho or 1e-6) * float(base.phi(2.0))))
        mean_w = w.mean(1)  # per_run is the mean of w L; the shift is per anchor
        torch.testing.assert_close(large.terms(z.clone())[0] - shift * mean_w, per_run.detach(), rtol=1e-5, atol=0)


def test_training_at_many_negatives_and_k_inf_runs():
    spec = TrainSpec(steps=30)
    p = np.array([10.0, 10.0, 1.0, 1.0]) / 22
    for k in (4096, math.inf):
        (result,) = train_runs([Run(parse_loss("infonce(tau=0.5)"), p, 2, k, 4, 0, "marginal", "sum")], spec)
        assert not result.diverged and np.isfinite(result.cos_minor) and np.isfinite(result.loss)


def _features(c: float, noise: float, n: int = 200, d: int = 4, seed: int = 0):
    """Unit features of 2 + 2 classes around means with minority cosine c (majority at -0.9)."""
    rng = np.random.default_rng(seed)
    S = np.array([[1, -0.9, -0.2, -0.2], [-0.9, 1, -0.2, -0.2], [-0.2, -0.2, 1, c], [-0.2, -0.2, c, 1]])
    lam, Q = np.linalg.eigh(S)
    V = (Q * np.sqrt(np.clip(lam, 0, None)))[:, ::-1][:, :d]  # (C, d) rows = class means, unit norm
    y = np.repeat(np.arange(4), n)
    H = V[y] + noise * rng.standard_normal((4 * n, d))
    return H / np.linalg.norm(H, axis=1, keepdims=True), y


def test_spread_stays_small_where_nc1_blows_up():
    """Merged minority means: NC1 grows by orders of magnitude while the classes stay tight; the
    spread on the sphere does not, and the flag says NC1 is ill-conditioned there."""
    from pipeline.metrics import within_class

    apart = within_class(*_features(0.5, 0.01), 4)
    merged = within_class(*_features(1 - 1e-8, 0.01), 4)
    assert not apart.nc1_rank_deficient and merged.nc1_rank_deficient
    assert merged.nc1 > 100 * apart.nc1 and merged.nc1 > 1
    assert merged.spread <= 1e-3 and apart.spread <= 1e-3
    assert merged.spread == pytest.approx(apart.spread, rel=0.2)
    assert merged.trace_ratio < 1e-3
    # an independent route to the spread: |mean_c|^2 is the average of all pairwise dot products
    H, y = _features(1 - 1e-8, 0.01)
    for cls in range(4):
        Hc = H[y == cls]
        assert merged.spread_per_class[cls] == pytest.approx(1 - np.sqrt((Hc @ Hc.T).mean()), rel=1e-9)
    exact = within_class(*_features(0.5, 0.0), 4)
    assert exact.spread == pytest.approx(0.0, abs=1e-15) and exact.nc1 == pytest.approx(0.0, abs=1e-20)


def test_gram_distance_is_blind_to_relabelling_interchangeable_classes_only():
    """Four classes in the plane (2 + 2): a run whose two minority classes swapped places is at
    distance 0, a run that swapped a majority with a minority class is not; beyond the exhaustive
    limit the swap descent finds a relabelling too."""
    from pipeline.metrics import gram_distance

    angles = np.radians([0.0, 100.0, 200.0, 290.0])
    V = np.stack([np.cos(angles), np.sin(angles)], axis=1)  # (C, d)
    G_ref = V @ V.T
    groups = np.array([0, 0, 1, 1])
    swapped_minor = G_ref[np.ix_([0, 1, 3, 2], [0, 1, 3, 2])]
    assert np.linalg.norm(swapped_minor - G_ref) > 1  # the plain distance sees a difference
    assert gram_distance(swapped_minor, G_ref, groups) == pytest.approx(0.0, abs=1e-15)
    across = G_ref[np.ix_([2, 1, 0, 3], [2, 1, 0, 3])]  # a majority and a minority class swapped
    assert gram_distance(across, G_ref, groups) == pytest.approx(np.linalg.norm(across - G_ref) / 4)
    assert gram_distance(across, G_ref, groups) > 0.1
    rng = np.random.default_rng(3)
    W = rng.standard_normal((9, 3))
    W /= np.linalg.norm(W, axis=1, keepdims=True)
    G9 = W @ W.T
    order = rng.permutation(9)
    shuffled = G9[np.ix_(order, order)]
    assert gram_distance(shuffled, G9, np.zeros(9, int)) == pytest.approx(0.0, abs=1e-12)  # 9! > the limit


def test_theory_start_puts_an_encoder_on_the_optimum_and_a_small_step_keeps_it_there():
    """train.init: theory (digits, 2 + 2, R = 5, c* = 0.421): the encoder is fitted to the optimal class
    vectors, and training with a small step stays at the theory's c; the features of free features
    start exactly there."""
    from pipeline.theory.solution import class_means

    p = two_group_proportions(2, 2, 5.0)
    best = solve(Problem.create(INFONCE, p, 2))
    start = class_means(best.G, 8).T  # (C, d) unit rows
    run = Run(INFONCE, p, 2, 2, 8, seed=0, start=start)
    spec = TrainSpec(model="mlp", data="digits", samples_per_class=30, steps=1, lr=1e-9, init="theory")
    (fitted,) = train_runs([run], spec)  # one step that does not move: the start itself
    assert fitted.cos_minor == pytest.approx(best.c, abs=1e-4) and fitted.within.spread < 1e-4
    (result,) = train_runs([run], replace(spec, steps=300, lr=1e-3))
    assert result.cos_minor == pytest.approx(best.c, abs=1e-2)  # stochastic drift of 30 samples a class
    assert result.within.spread < 1e-3
    (free,) = train_runs([run], replace(spec, model="ufm", samples_per_class=4))
    assert free.cos_minor == pytest.approx(best.c, abs=1e-3)


def test_parameter_gradient_norm_is_debiased_by_the_batch_noise():
    """The norm of a mean of noisy gradients, against the true norm: with noise 10x the signal the
    plain mean's norm is off by ~2x, the debiased one within a few per cent; no signal gives ~0."""
    from pipeline.train.trainer import parameter_grad_norm

    gen = torch.Generator().manual_seed(0)
    P = 4000
    signal = torch.zeros(2, P)
    signal[0] = 1.0 / math.sqrt(P)  # run 0: |g| = 1; run 1: g = 0
    param = torch.zeros(2, P, requires_grad=True)

    def gradient():
        param.grad = signal + 10.0 / math.sqrt(P) * torch.randn(2, P, generator=gen)
        return torch.zeros(2)

    norm = parameter_grad_norm(gradient, [param])
    assert norm[0] == pytest.approx(1.0, rel=0.1)
    assert norm[1] < 0.3  # the plain norm of the mean is 10 / sqrt(32) = 1.8 here

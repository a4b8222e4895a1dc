"""The exact expected in-batch loss (pipeline.theory.inbatch) against brute force over every batch.

Statements of docs/inbatch.md and the tests that check them:

- the weights, i.i.d. labels: test_iid_matches_every_label_sequence (torch batch_loss and a plain loop);
- the weights, without replacement: test_without_replacement_matches_every_ordered_draw;
- ``sum`` is the theory point with anchor weights p^2: test_sum_is_theory_with_squared_weights,
  test_sum_balanced_is_class_objective;
- ``mean`` weighs anchor c by 1 - (1 - p_c)^(k + 1): test_mean_anchor_weight_is_positive_probability;
- ``mean`` tends to the theory's L(G) for k p_min >> 1: test_mean_approaches_theory_as_k_grows;
- without replacement tends to i.i.d. for large datasets: test_large_dataset_approaches_iid.
"""

import itertools
import math

import numpy as np
import pytest
import torch

from pipeline.theory.inbatch import (
    anchor_weights_of_pairs,
    inbatch_objective,
    inbatch_weights,
    positive_probability,
)
from pipeline.theory.losses import parse_loss
from pipeline.theory.objective import class_objective, count_vectors, multinomial_weights
from pipeline.theory.problem import Problem
from pipeline.train.batch_loss import batch_loss

LOSSES = ["infonce(tau=0.5)", "sumexp(tau=0.7)", "triplet(margin=1)", "squared_hinge(margin=1.5)"]
SETTINGS = list(itertools.product(LOSSES, ("sum", "mean"), ("mean", "sum")))  # (loss, reduction, positives)


def class_vectors(C: int, seed: int) -> np.ndarray:
    """Random unit vectors (C, d = C), one per class."""
    V = np.random.default_rng(seed).standard_normal((C, C))
    return V / np.linalg.norm(V, axis=1, keepdims=True)


def loop_batch_loss(y: tuple[int, ...], V: np.ndarray, loss, reduction: str, positives: str) -> float:
    """The in-batch loss of one batch of labels y, written as plain loops over anchors, positives, negatives."""
    B, k = len(y), len(y) - 2
    rho = 1.0 if reduction == "sum" else 1.0 / k
    f = [V[c].tolist() for c in y]
    dot = [[sum(a * b for a, b in zip(f[i], f[j], strict=True)) for j in range(B)] for i in range(B)]
    total = 0.0
    for i in range(B):
        pairs = []
        for q in range(B):
            if q != i and y[q] == y[i]:
                inner = sum(loss.phi(dot[i][a] - dot[i][q]) for a in range(B) if a not in (i, q))
                pairs.append(loss.psi(rho * inner))
        if pairs:
            total += sum(pairs) / (len(pairs) if positives == "mean" else 1)
    return total / B


def torch_batch_losses(Y: np.ndarray, V: np.ndarray, loss, reduction: str, positives: str) -> np.ndarray:
    """batch_loss of every batch (rows of Y, (R, B)) at features f_i = V[y_i], float64."""
    F = torch.as_tensor(V, dtype=torch.float64)[torch.as_tensor(Y)]  # (R, B, d)
    out = batch_loss(F, torch.as_tensor(Y), loss, Y.shape[1] - 2, reduction, positives)
    return out.numpy()


@pytest.mark.parametrize("B", [4, 5, 6])
@pytest.mark.parametrize("p", [(1 / 3, 1 / 3, 1 / 3), (0.5, 0.3, 0.2), (20 / 22, 1 / 22, 1 / 22)])
def test_iid_matches_every_label_sequence(B, p):
    C, k, p = 3, B - 2, np.array(p)
    V = class_vectors(C, seed=B)
    G = V @ V.T
    Y = np.array(list(itertools.product(range(C), repeat=B)))  # (C^B, B) every label sequence
    prob = np.prod(p[Y], axis=1)  # (C^B,)
    loop_subset = B < 6 or p[0] > 0.9  # the plain loop on every B at one p keeps the file fast
    for loss_id, reduction, positives in SETTINGS:
        loss = parse_loss(loss_id)
        exact = inbatch_objective(loss, G, k, reduction, positives, p=p)
        brute = prob @ torch_batch_losses(Y, V, loss, reduction, positives)
        assert brute == pytest.approx(exact, rel=1e-10, abs=0), (loss_id, reduction, positives)
        if loop_subset:
            each = [loop_batch_loss(tuple(y), V, loss, reduction, positives) for y in Y.tolist()]
            loop = float(prob @ np.array(each))
            assert loop == pytest.approx(exact, rel=1e-10, abs=0), (loss_id, reduction, positives)


@pytest.mark.parametrize("positives", ["mean", "sum"])
def test_batch_loss_depends_on_composition(positives):
    """Per batch: (1/B) sum_c m_c 1{m_c >= 2} T_c(m - 2 e_c) (mean), (1/B) sum_c m_c (m_c - 1) T_c(m - 2 e_c) (sum)."""
    C, B = 3, 5
    V = class_vectors(C, seed=2)
    G = V @ V.T
    Y = np.array(list(itertools.product(range(C), repeat=B)))  # (C^B, B)
    for loss_id in LOSSES:
        loss = parse_loss(loss_id)
        batch = torch_batch_losses(Y, V, loss, "sum", positives)
        for y, value in zip(Y, batch, strict=True):
            m = np.bincount(y, minlength=C)
            pairs = m * (m - 1) if positives == "sum" else m * (m >= 2)
            T = [loss.psi(loss.phi(G[c] - 1.0) @ (m - 2 * np.eye(C)[c])) if m[c] >= 2 else 0.0 for c in range(C)]
            assert value == pytest.approx(float(pairs @ np.array(T)) / B, rel=1e-12, abs=1e-300), (loss_id, y)


@pytest.mark.parametrize(("counts", "B"), [((3, 2, 2), 4), ((4, 1, 2), 5)])
def test_without_replacement_matches_every_ordered_draw(counts, B):
    labels = np.repeat(np.arange(len(counts)), counts)  # the dataset's samples
    draws = np.array([labels[list(d)] for d in itertools.permutations(range(labels.size), B)])  # equally likely
    Y, times = np.unique(draws, axis=0, return_counts=True)  # label sequences and how many draws give each
    prob = times / len(draws)
    V = class_vectors(len(counts), seed=7)
    for loss_id, reduction, positives in SETTINGS:
        loss = parse_loss(loss_id)
        exact = inbatch_objective(loss, V @ V.T, B - 2, reduction, positives, counts=np.array(counts))
        brute = prob @ torch_batch_losses(Y, V, loss, reduction, positives)
        assert brute == pytest.approx(exact, rel=1e-10, abs=0), (loss_id, reduction, positives)
        loop = prob @ np.array([loop_batch_loss(tuple(y), V, loss, reduction, positives) for y in Y.tolist()])
        assert loop == pytest.approx(exact, rel=1e-10, abs=0), (loss_id, reduction, positives)


def theory_with_anchor_weights(loss, G: np.ndarray, k: int, reduction: str, p: np.ndarray, a: np.ndarray) -> float:
    """sum_c a_c E_{n ~ Mult(k, p)} psi(rho sum_j n_j phi(G[c, j] - 1)), enumerated here."""
    N = count_vectors(k, p.size).astype(float)  # (M, C)
    P = multinomial_weights(N, p[None, :])[0]  # (M,)
    rho = 1.0 if reduction == "sum" else 1.0 / k
    total = 0.0
    for c in range(p.size):
        inner = rho * N @ loss.phi(G[c] - 1.0)  # (M,)
        total += a[c] * P @ loss.psi(inner)
    return total


@pytest.mark.parametrize("loss_id", LOSSES)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_sum_is_theory_with_squared_weights(loss_id, reduction):
    loss, k = parse_loss(loss_id), 7
    p = np.array([0.6, 0.25, 0.1, 0.05])
    V = class_vectors(4, seed=3)
    a = anchor_weights_of_pairs(p)
    assert a == pytest.approx(p**2 / np.sum(p**2), rel=1e-15)
    theory = theory_with_anchor_weights(loss, V @ V.T, k, reduction, p, a)
    exact = inbatch_objective(loss, V @ V.T, k, reduction, "sum", p=p)
    assert exact == pytest.approx((k + 1) * np.sum(p**2) * theory, rel=1e-12, abs=0)


@pytest.mark.parametrize("loss_id", LOSSES)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("k", [1, 5, 30])
def test_sum_balanced_is_class_objective(loss_id, reduction, k):
    C = 3
    V = class_vectors(C, seed=k)
    G = V @ V.T
    problem = Problem.create(loss_id, np.ones(C), k, "marginal", reduction)
    exact = inbatch_objective(loss_id, G, k, reduction, "sum", p=np.ones(C) / C)
    assert exact == pytest.approx((k + 1) / C * class_objective(problem, G)[0], rel=1e-12, abs=0)


@pytest.mark.parametrize("k", [1, 4, 40])
def test_mean_anchor_weight_is_positive_probability(k):
    p = np.array([0.7, 0.2, 0.1])
    _, W = inbatch_weights(p, k, "mean")
    assert W.sum(axis=1) / p == pytest.approx(positive_probability(p, k), rel=1e-12)
    _, W = inbatch_weights(p, k, "sum")
    assert W.sum(axis=1) == pytest.approx((k + 1) * p**2, rel=1e-12)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_mean_approaches_theory_as_k_grows(reduction):
    p = np.array([0.8, 0.2])
    V = class_vectors(2, seed=11)
    G = V @ V.T
    ks, gaps = (2, 8, 32, 128), []
    for k in ks:
        theory = class_objective(Problem.create("infonce(tau=0.5)", p, k, "marginal", reduction), G)[0]
        gaps.append(abs(inbatch_objective("infonce(tau=0.5)", G, k, reduction, "mean", p=p) / theory - 1))
    assert all(b < a / 2 for a, b in itertools.pairwise(gaps)), gaps
    assert gaps[-1] * ks[-1] < 0.5, gaps  # relative gap O(1 / k): ~0.4 / k here


def test_large_dataset_approaches_iid():
    p = np.array([0.5, 0.3, 0.2])
    V = class_vectors(3, seed=5)
    iid = inbatch_objective("infonce(tau=0.5)", V @ V.T, 6, "sum", "mean", p=p)
    gaps = [abs(inbatch_objective("infonce(tau=0.5)", V @ V.T, 6, "sum", "mean", counts=n * p * 10) / iid - 1)
            for n in (1, 10, 100)]  # fmt: skip
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-3, gaps


def test_errors():
    p = np.ones(3) / 3
    with pytest.raises(ValueError, match="positives"):
        inbatch_weights(p, 4, "all")
    with pytest.raises(ValueError, match="k = 40"):
        inbatch_weights(np.ones(10) / 10, 40)
    assert math.comb(40 + 9, 9) > 2e5
    with pytest.raises(ValueError, match="k"):
        inbatch_weights(p, 0)
    with pytest.raises(ValueError, match="counts"):
        inbatch_weights(None, 4, counts=np.array([2, 2, 1]))  # 5 samples, batch of 6
    with pytest.raises(ValueError, match="p or counts"):
        inbatch_weights(np.array([0.5, 0.5, 0.0]), 2, counts=np.array([2, 2, 1]))
    with pytest.raises(ValueError, match="G"):
        inbatch_objective("infonce", np.eye(2), 2, p=p)


REMEDIES = ["logit_adjust(t=1)", "class_tau(gamma=0.5)", "reweight(gamma=1) + logit_adjust(t=0.5) + class_tau(gamma=1)",
            "reweight(gamma=0.5)"]  # fmt: skip


def loop_remedied_loss(y: tuple[int, ...], V: np.ndarray, loss, reduction: str, positives: str, remedy,
                       p: np.ndarray) -> float:  # fmt: skip
    """One batch's loss under a remedy, as plain loops: phi_cj(t) = phi(scale_c (t + delta_cj)) for anchor class
    c and member class j, each anchor's loss weighted by a_c / p_c."""
    B, k = len(y), len(y) - 2
    rho = 1.0 if reduction == "sum" else 1.0 / k
    delta, scale = remedy.phi_affine(p, loss)
    weight = remedy.anchor_weights(p) / p
    total = 0.0
    for i in range(B):
        c, pairs = y[i], []
        for q in range(B):
            if q != i and y[q] == c:
                terms = []
                for a in range(B):
                    if a in (i, q):
                        continue
                    t = float(V[c] @ V[y[a]] - V[c] @ V[y[q]]) + (0.0 if delta is None else delta[c, y[a]])
                    terms.append(loss.phi(t * (1.0 if scale is None else scale[c, y[a]])))
                pairs.append(loss.psi(rho * sum(terms)))
        if pairs:
            total += weight[c] * sum(pairs) / (len(pairs) if positives == "mean" else 1)
    return total / B


@pytest.mark.parametrize("remedy_spec", REMEDIES)
@pytest.mark.parametrize("loss_id", ["infonce(tau=0.5)", "sumexp(tau=0.7)", "squared_hinge(margin=1.5)"])
def test_the_remedied_batch_loss_matches_every_label_sequence(remedy_spec, loss_id):
    """Under a remedy (shifts with delta_cc = 0, class temperatures, anchor reweighting) the exact expectation
    (inbatch_objective with the remedy) equals the torch batch loss and a plain loop over every label sequence,
    float64, to 1e-10: the correspondence of docs/inbatch.md holds with phi_cj and weighted anchors."""
    from pipeline.theory.remedies import parse_remedy
    from pipeline.train.batch_loss import BatchRemedy

    remedy, loss = parse_remedy(remedy_spec), parse_loss(loss_id)
    if remedy.class_tau is not None and loss.phi_kind != "exp":
        pytest.skip("class_tau needs an exponential phi")
    C, B, p = 3, 5, np.array([0.6, 0.3, 0.1])
    V = class_vectors(C, seed=3)
    Y = np.array(list(itertools.product(range(C), repeat=B)))  # (C^B, B)
    prob = np.prod(p[Y], axis=1)
    tables = BatchRemedy.build([remedy] * len(Y), [p] * len(Y), loss, torch.device("cpu"), torch.float64)
    F = torch.as_tensor(V, dtype=torch.float64)[torch.as_tensor(Y)]  # (R, B, d)
    for reduction, positives in itertools.product(("sum", "mean"), ("mean", "sum")):
        exact = inbatch_objective(loss, V @ V.T, B - 2, reduction, positives, p=p, remedy=remedy)
        brute = prob @ batch_loss(F, torch.as_tensor(Y), loss, B - 2, reduction, positives, tables).numpy()
        assert brute == pytest.approx(exact, rel=1e-10, abs=0), (reduction, positives)
        if reduction == positives == "sum":  # the loop on one setting keeps the file fast
            loop = prob @ np.array([loop_remedied_loss(tuple(y), V, loss, reduction, positives, remedy, p)
                                    for y in Y.tolist()])  # fmt: skip
            assert loop == pytest.approx(exact, rel=1e-10, abs=0)
    plain = inbatch_objective(loss, V @ V.T, B - 2, "sum", "mean", p=p)
    assert abs(plain - inbatch_objective(loss, V @ V.T, B - 2, "sum", "mean", p=p, remedy=remedy)) > 1e-3


def test_in_batch_training_refuses_what_it_cannot_apply():
    from pipeline.theory.remedies import parse_remedy
    from pipeline.train.batch_loss import BatchRemedy

    loss, p = parse_loss("infonce(tau=0.5)"), np.array([0.6, 0.3, 0.1])
    for spec, expected in (("ldam(m=0.5)", "a shift on the anchor's own class"), ("balanced_negatives", "iid")):
        with pytest.raises(ValueError, match=expected):
            BatchRemedy.build([parse_remedy(spec)], [p], loss, torch.device("cpu"))
    assert BatchRemedy.build([parse_remedy("none")], [p], loss, torch.device("cpu")) is None

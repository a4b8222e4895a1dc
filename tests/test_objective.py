"""The exact expectation against brute force over every ordered draw of negatives."""

import itertools
import math

import numpy as np
import pytest

from pipeline.theory.objective import certificate, class_objective, count_vectors, expected_loss
from pipeline.theory.problem import Problem
from tests.conftest import complex_step


@pytest.mark.parametrize(("k", "J"), [(1, 2), (4, 5), (8, 3), (32, 3)])
def test_count_vectors(k, J):
    N = count_vectors(k, J)
    assert N.shape == (math.comb(k + J - 1, J - 1), J)
    assert np.all(N.sum(axis=1) == k)
    assert len({tuple(row) for row in N}) == N.shape[0]


def brute_force(problem: Problem, G: np.ndarray) -> float:
    """sum_c p_c sum over all C^k ordered negative draws of prod q * psi(rho sum phi)."""
    q = problem.negative_distribution()
    total = 0.0
    for c in range(problem.C):
        for draw in itertools.product(range(problem.C), repeat=problem.k):
            prob = np.prod([q[c, j] for j in draw])
            inner = problem.rho * sum(problem.loss.phi(G[c, j] - 1) for j in draw)
            total += problem.p[c] * prob * problem.loss.psi(inner)
    return total


def random_gram(C: int, rng: np.random.Generator) -> np.ndarray:
    V = rng.standard_normal((C, C))
    V /= np.linalg.norm(V, axis=0)
    return V.T @ V


@pytest.mark.parametrize(
    "loss", ["infonce(tau=0.5)", "sumexp(tau=1)", "triplet(margin=1)", "squared_hinge(margin=1.5)"]
)
@pytest.mark.parametrize("negatives", ["marginal", "other"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_exact_expectation_matches_brute_force(loss, negatives, reduction):
    rng = np.random.default_rng(0)
    problem = Problem.create(loss, rng.uniform(0.2, 1, 3), 4, negatives, reduction)
    G = random_gram(3, rng)
    assert class_objective(problem, G)[0] == pytest.approx(brute_force(problem, G), rel=1e-12)


def test_linear_psi_shortcut_matches_enumeration():
    """psi = identity collapses the expectation to rho k sum q phi; check against the enumeration."""
    from pipeline.theory.objective import multinomial_weights

    rng = np.random.default_rng(1)
    problem = Problem.create("sumexp(tau=0.7)", rng.uniform(0.2, 1, 4), 5)
    G = random_gram(4, rng)
    N = count_vectors(5, 4).astype(float)  # (M, C)
    P = multinomial_weights(N, problem.negative_distribution()) * problem.p[:, None]  # (C, M)
    enumerated = (P * (problem.loss.phi(G - 1) @ N.T)).sum()
    assert class_objective(problem, G)[0] == pytest.approx(enumerated, rel=1e-12)


@pytest.mark.parametrize("loss", ["infonce(tau=0.5)", "sumexp(tau=1)"])
def test_gradient_and_hessian_by_complex_step(loss):
    rng = np.random.default_rng(2)
    problem = Problem.create(loss, rng.uniform(0.2, 1, 3), 3, "other", "mean")
    q = problem.negative_distribution()
    cos = random_gram(3, rng)

    def value(x):
        return expected_loss(problem.loss, 3, problem.rho, problem.p, q, x)[0]

    _, grad, hess = expected_loss(problem.loss, 3, problem.rho, problem.p, q, cos, hessian=True)
    for a, j in [(0, 1), (1, 2), (2, 0), (1, 1)]:
        E = np.zeros((3, 3))
        E[a, j] = 1
        assert grad[a, j] == pytest.approx(complex_step(value, cos, E), rel=1e-10)

        def grad_aj(x, a=a, j=j):
            return expected_loss(problem.loss, 3, problem.rho, problem.p, q, x)[1][a, 1]

        assert hess[a, 1, j] == pytest.approx(complex_step(grad_aj, cos, E), rel=1e-8, abs=1e-14)


def test_certificate_is_zero_only_at_the_optimum():
    problem = Problem.create("infonce(tau=0.5)", np.ones(4), 2)
    etf = np.full((4, 4), -1 / 3) + np.eye(4) * (4 / 3)
    assert certificate(problem, etf)[1] < 1e-14
    value, gap = certificate(problem, np.eye(4))
    assert gap > 1e-2
    assert value - gap <= certificate(problem, etf)[0] + 1e-12  # a valid lower bound


@pytest.mark.parametrize("negatives", ["marginal", "other"])
@pytest.mark.parametrize("loss", ["infonce(tau=0.5)", "sumexp(tau=1)"])
def test_group_gradient_equals_class_gradient(loss, negatives):
    """The symmetric solver's certificate uses the group expectation; check it against the enumeration."""
    from pipeline.theory.symmetric import GroupModel

    problem = Problem.create(loss, [3, 3, 3, 1, 1], 3, negatives, "mean")
    model = GroupModel.from_problem(problem)
    S = np.array([[-0.3, -0.2], [-0.2, 0.4]])
    value, D = model.class_gradient(S)
    value_ref, D_ref = class_objective(problem, model.gram(S))
    assert value == pytest.approx(value_ref, rel=1e-13)
    np.testing.assert_allclose(D, D_ref, rtol=1e-12)

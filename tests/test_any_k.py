"""The expectation at any k: the transform against the enumeration, the k = inf limit, thresholds
decided beyond round-off."""

import itertools
import math

import mpmath as mp
import numpy as np
import pytest

from pipeline.errors import InputError
from pipeline.theory.dispatch import solve
from pipeline.theory.objective import expected_loss
from pipeline.theory.problem import Problem, check_k
from pipeline.theory.threshold import criterion_with_error, minority_threshold
from pipeline.theory.transform import nodes, quadrature_error, transform_terms
from tests.conftest import complex_step
from tests.test_objective import random_gram


def seeded_cases(n: int = 60):
    """(problem, G) with C <= 5, k <= 12, both sampling models and reductions, tau in {0.1, 0.5, 1},
    and one class at a proportion down to 1e-12."""
    rng = np.random.default_rng(11)
    for i in range(n):
        C = int(rng.integers(2, 6))
        k = int(rng.integers(1, 13))
        p = rng.uniform(0.2, 1.0, C)
        p[-1] = 10.0 ** -rng.uniform(0, 12)  # a minority class, down to 1e-12
        loss = f"infonce(tau={(0.1, 0.5, 1.0)[i % 3]})"
        negatives = ("marginal", "other")[i % 2]
        reduction = ("sum", "mean")[(i // 2) % 2]
        yield Problem.create(loss, p, k, negatives, reduction), random_gram(C, rng)


def routes(problem: Problem, G: np.ndarray, method: str):
    q = problem.negative_distribution()
    return expected_loss(problem.loss, problem.k, problem.rho, problem.p, q, G, hessian=True, method=method)


def test_transform_equals_enumeration_value_gradient_hessian():
    cases = list(seeded_cases())
    assert len(cases) >= 50
    for problem, G in cases:
        (v_t, g_t, h_t), (v_e, g_e, h_e) = routes(problem, G, "transform"), routes(problem, G, "enumerate")
        assert v_t == pytest.approx(v_e, rel=1e-12)
        np.testing.assert_allclose(g_t, g_e, rtol=1e-12, atol=0)
        np.testing.assert_allclose(h_t, h_e, rtol=1e-12, atol=0)


@pytest.mark.parametrize("k", [64, 1000])
def test_transform_is_exact_where_the_float64_enumeration_is_not(k):
    """Against the enumeration in 30-digit arithmetic (mpmath, two categories: k + 1 count vectors):
    value and gradient to 1e-15. The float64 enumeration's log-gamma weights are off by about
    eps k log k (4e-15 at k = 64, 5e-13 at k = 1000; the transform: 4e-17), so it cannot check the
    transform at large k."""
    x, q = np.array([0.7, 0.01]), np.array([0.25, 0.75])  # q sums to 1 exactly, in binary too
    value, grad = mp.mpf(0), [mp.mpf(0), mp.mpf(0)]
    with mp.workdps(30):
        for n0 in range(k + 1):
            n = (n0, k - n0)
            w = mp.binomial(k, n0) * mp.mpf(q[0]) ** n[0] * mp.mpf(q[1]) ** n[1]
            S = n[0] * mp.mpf(x[0]) + n[1] * mp.mpf(x[1])
            value += w * mp.log1p(S)
            grad = [g + w * n_j / (1 + S) for g, n_j in zip(grad, n, strict=True)]
    V, dV, _ = transform_terms(x[None], q[None], k)
    assert abs(V[0] - float(value)) <= 1e-15 * float(value)
    for j in range(2):
        assert abs(dV[0, j] - float(grad[j])) <= 1e-15 * float(grad[j])


@pytest.mark.parametrize("p_min", [1e-15, 1e-12])
def test_transform_at_proportions_down_to_1e15(p_min):
    """R up to 1e12: the minority terms weigh p_min^2 and are resolved to the same relative accuracy."""
    problem = Problem.create("infonce(tau=0.5)", [1.0, 1.0, p_min, p_min], 6)
    G = random_gram(4, np.random.default_rng(3))
    (_, g_t, h_t), (_, g_e, h_e) = routes(problem, G, "transform"), routes(problem, G, "enumerate")
    np.testing.assert_allclose(g_t, g_e, rtol=1e-12, atol=0)
    np.testing.assert_allclose(h_t[2:, 2:, 2:], h_e[2:, 2:, 2:], rtol=1e-12, atol=0)  # the minority block


@pytest.mark.parametrize("k", [1, 7, 4096, 10**6])
def test_quadrature_error_is_far_below_the_accuracy_claimed(k):
    """The rule of step h against the rule of step 2h on the same nodes: geometric convergence."""
    rng = np.random.default_rng(k)
    x = rng.uniform(1e-9, 1.0, (3, 4))
    q = rng.dirichlet(np.ones(4), 3)
    assert quadrature_error(x, q, k) < 1e-18
    assert quadrature_error(x, q, k, h=0.4) > quadrature_error(x, q, k)  # it is a real estimate


@pytest.mark.parametrize("k", [2, 4096])
def test_transform_derivatives_by_complex_step(k):
    """An independent check of the derivative formulas where the enumeration cannot go (k = 4096)."""
    rng = np.random.default_rng(5)
    x = rng.uniform(0.01, 1.0, (2, 3))
    q = rng.dirichlet(np.ones(3), 2)
    t = nodes(k, 1.0)  # fixed nodes: the complex step must not move them
    _, dV, d2V = transform_terms(x, q, k, hessian=True, t=t)
    for a, j in [(0, 0), (1, 2)]:
        E = np.zeros_like(x)
        E[a, j] = 1

        def value(y, a=a):
            return transform_terms(y, q, k, t=t)[0][a]

        assert dV[a, j] == pytest.approx(complex_step(value, x, E), rel=1e-12)
        for i in range(3):

            def d_i(y, a=a, i=i):
                return transform_terms(y, q, k, t=t)[1][a, i]

            assert d2V[a, i, j] == pytest.approx(complex_step(d_i, x, E), rel=1e-10)



@pytest.mark.parametrize("k", [1, 3, 256, 65536])
@pytest.mark.parametrize("J", [8, 40])
def test_grouped_taylor_rule_equals_the_direct_rule_row_by_row(k, J):
    """The theory's path (rows grouped by their largest term; beyond 28 categories the small-t nodes through
    the Taylor product) against the direct rule on each row's own nodes: value, gradient, dense Hessian and
    its operator to 1e-14 relative, rows from e^-22 to e^67 (several groups) and a category that never occurs."""
    rng = np.random.default_rng(k + J)
    x = np.exp(rng.uniform(-8, 0, (6, J)) + np.array([-14, 0, 0, 7, 60, 2])[:, None])  # (6, J): five groups
    q = rng.dirichlet(np.ones(J), 6)
    q[1, 3] = 0.0
    V, dV, d2V = transform_terms(x, q, k, hessian=True)
    operator = transform_terms(x, q, k, hessian="operator")[2]
    v = rng.normal(size=x.shape)
    for i in range(6):
        V_i, dV_i, d2V_i = transform_terms(x[i : i + 1], q[i : i + 1], k, hessian=True, t=nodes(k, x[i].max()))
        assert V[i] == pytest.approx(V_i[0], rel=1e-14)
        np.testing.assert_allclose(dV[i], dV_i[0], rtol=1e-14, atol=1e-14 * np.abs(dV_i).max())
        np.testing.assert_allclose(d2V[i], d2V_i[0], rtol=1e-13, atol=1e-14 * np.abs(d2V_i).max())
        product = d2V_i[0] @ v[i]
        np.testing.assert_allclose(operator(v)[i], product, rtol=1e-13, atol=1e-14 * np.abs(product).max())


@pytest.mark.parametrize("hessian", [True, "model"])
def test_rows_split_over_blas_threads_equal_one_thread(hessian):
    """From ``THREADED_ROWS`` rows a numpy transform splits them over the BLAS threads (here 2, forced; the
    tests' own processes run one): value, gradient and Hessian (dense, or the model's operator) equal the
    one-thread computation to 1e-14 relative, rows spanning several groups."""
    import threadpoolctl

    from pipeline.theory.transform import THREADED_ROWS

    rng = np.random.default_rng(7)
    R, J = THREADED_ROWS + 3, 30 if hessian is True else 40
    x = np.exp(rng.uniform(-6, 0, (R, J)) + rng.choice([-10, 0, 5], R)[:, None])  # (R, J)
    q = rng.dirichlet(np.ones(J), R)
    v = rng.normal(size=(R, J))
    results = {}
    for threads in (1, 2):
        with threadpoolctl.threadpool_limits(limits=threads, user_api="blas"):
            V, dV, d2V = transform_terms(x, q, 256, hessian=hessian)
            results[threads] = V, dV, d2V if hessian is True else d2V(v)
    for one, two in zip(results[1], results[2], strict=True):
        np.testing.assert_allclose(two, one, rtol=1e-14, atol=1e-14 * np.abs(one).max())


@pytest.mark.parametrize("k", [2, 256, 65536])
@pytest.mark.parametrize("J", [5, 40, 250])
def test_model_hessian_is_the_coarse_rules_with_the_exact_diagonal(k, J):
    """The ``model`` operator (a trust region's) is the rule of step 4h's Hessian (its small-t nodes through 7
    Taylor terms beyond 28 categories) but for its diagonal term, which is the exact rule's: model - coarse is
    diagonal (the same factor for every direction, to the 7 terms' 2e-11, or to float32's 1e-6 from
    ``MODEL_SINGLE_FROM`` categories on), and the model is the exact Hessian to the coarse rule's accuracy (5e-4
    relative, measured), while the value and gradient it comes with are the exact ones, bitwise."""
    from pipeline.theory.transform import H_STEP, MODEL_SINGLE_FROM, MODEL_STRIDE

    rng = np.random.default_rng(k)
    x = rng.uniform(1e-3, 1.0, (3, J))
    q = rng.dirichlet(np.ones(J), 3)
    V, dV, model = transform_terms(x, q, k, hessian="model")
    V_exact, dV_exact, exact = transform_terms(x, q, k, hessian="operator")
    assert np.array_equal(V, V_exact) and np.array_equal(dV, dV_exact)
    t = nodes(k, float(x.max()))[::MODEL_STRIDE]
    coarse = transform_terms(x, q, k, hessian="operator", h=MODEL_STRIDE * H_STEP, t=t)[2]
    d = model(np.ones_like(x)) - coarse(np.ones_like(x))  # (3, J): the diagonal they differ by
    v1, v2 = rng.normal(size=(2, 3, J))
    single = J >= MODEL_SINGLE_FROM
    for v in (v1, v2):
        off = np.abs(model(v) - coarse(v) - d * v).max() / np.abs(exact(v)).max()
        assert off < (1e-5 if single else 1e-10) and (off > 1e-9) == single  # float32 from MODEL_SINGLE_FROM on
        assert model(v).dtype == np.float64
        assert 1e-6 < np.abs(model(v) - exact(v)).max() / np.abs(exact(v)).max() <= 1e-3  # coarser, not wrong


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_large_k_approaches_the_k_inf_limit_like_1_over_k(reduction):
    """E log(1 + S) - log k -> log E X (sum) and E log(1 + S / k) -> log(1 + E X) (mean), at rate 1/k."""
    rng = np.random.default_rng(8)
    p = rng.uniform(0.2, 1.0, 4)
    G = random_gram(4, rng)

    def value(k):
        problem = Problem.create("infonce(tau=0.5)", p, k, "marginal", reduction)
        v = routes(problem, G, "auto")[0]
        return v - (math.log(k) if reduction == "sum" and math.isfinite(k) else 0.0)

    limit = value(math.inf)
    scaled = [k * abs(value(k) - limit) for k in (10**4, 10**5, 10**6)]
    assert scaled[0] > 0 and max(scaled) / min(scaled) < 1.05  # the O(1/k) term, nothing left behind


def test_k_inf_symmetric_solver_equals_the_convex_program():
    """The k = inf limit through cvxpy's logsumexp (exponential cones) against the symmetric solver."""
    for reduction in ("sum", "mean"):
        problem = Problem.two_group("infonce(tau=0.5)", 2, 2, 10.0, math.inf, reduction=reduction)
        fast, full = solve(problem, "symmetric"), solve(problem, "full")
        assert full.status == "optimal" and fast.status == "optimal"
        assert fast.objective == pytest.approx(full.objective, rel=1e-8)
        assert fast.objective <= full.objective + fast.gap
        np.testing.assert_allclose(fast.G, full.G, atol=1e-5)


def test_thresholds_equal_the_enumerations_up_to_k_64():
    """The transform route against main's enumeration route, thresholds and geometries to 1e-9."""
    for loss, n_major, n_minor, k, negatives, reduction in [
        ("infonce(tau=0.5)", 2, 2, 16, "marginal", "sum"),
        ("infonce(tau=1)", 3, 2, 64, "other", "mean"),
        ("infonce(tau=0.5)", 2, 3, 64, "marginal", "mean"),
    ]:
        args = (loss, n_major, n_minor, k, negatives, reduction)
        fast = minority_threshold(*args, expectation="transform")
        slow = minority_threshold(*args, expectation="enumerate")
        assert fast.R_star == pytest.approx(slow.R_star, rel=1e-9)
        for R in (3.0, fast.R_star * 1.5 if math.isfinite(fast.R_star) else 1e4):
            G = [solve(Problem.two_group(*args[:3], R, *args[3:], expectation=e), "symmetric").G
                 for e in ("transform", "enumerate")]  # fmt: skip
            np.testing.assert_allclose(G[0], G[1], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("tau", [0.5, 1.0])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_threshold_approaches_its_k_inf_limit(tau, reduction):
    loss = f"infonce(tau={tau})"
    R_inf = minority_threshold(loss, 2, 2, math.inf, reduction=reduction)
    assert math.isfinite(R_inf.R_star) and R_inf.status == "optimal"
    R_k = [minority_threshold(loss, 2, 2, 4**i, reduction=reduction).R_star for i in range(9)]  # 1 .. 65536
    assert abs(R_k[-1] / R_inf.R_star - 1) <= 1e-3
    assert all(b > a for a, b in itertools.pairwise(R_k))  # more negatives push R* up
    assert R_k[-1] < R_inf.R_star


def test_threshold_with_other_negatives_is_not_monotone_in_k():
    """Reported, not assumed: with ``other`` negatives R*(k) rises, then falls towards R*_inf."""
    R_k = [minority_threshold("infonce(tau=0.5)", 2, 2, k, "other").R_star for k in (1, 4, 16, 65536)]
    R_inf = minority_threshold("infonce(tau=0.5)", 2, 2, math.inf, "other").R_star
    assert R_k[1] > R_k[0] and R_k[2] < R_k[1]
    assert abs(R_k[-1] / R_inf - 1) < 1e-3


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_degenerate_limit_is_asymptotic_not_a_round_off_threshold(tau, k, reduction):
    """sumexp with K_A = 2 and marginal negatives: lim g / p_minor^2 = 0 exactly, g > 0 at every R."""
    result = minority_threshold(f"sumexp(tau={tau})", 2, 2, k, "marginal", reduction)
    assert result.R_star == math.inf and result.status == "asymptotic"
    assert abs(result.criterion_limit) <= result.criterion_limit_error
    assert "only as R -> inf" in result.to_dict()["message"]
    # deep in the limit (main found thresholds at 7.5e17 .. 5.9e84), g is round-off: within its own bound
    problem = Problem.two_group(f"sumexp(tau={tau})", 2, 2, 1e25, k, "marginal", reduction)
    g, error = criterion_with_error(problem)
    assert abs(g) <= error


@pytest.mark.parametrize(
    ("loss", "n_major", "negatives"),
    [("infonce(tau=0.1)", 2, "marginal"), ("sumexp(tau=0.5)", 2, "other"), ("squared_hinge(margin=1.5)", 3, "marginal"),
     ("sumexp(tau=1)", 1, "marginal"), ("infonce(tau=1)", 2, "other")],
)  # fmt: skip
def test_finite_thresholds_come_from_resolved_signs(loss, n_major, negatives):
    """Both ends of the bracket Brent refines hold a sign of g beyond its error bound."""
    result = minority_threshold(loss, n_major, 2, 4, negatives)
    assert math.isfinite(result.R_star)
    lo, hi = result.bracket
    for R, sign in ((lo, 1), (hi, -1)):
        g, error = criterion_with_error(Problem.two_group(loss, n_major, 2, R, 4, negatives))
        assert sign * g > error


@pytest.mark.parametrize("bad", [0, -1, 2.5, "infinite", float("nan"), True, "-inf"])
def test_bad_k_is_refused(bad):
    with pytest.raises(InputError, match="an integer >= 1 or inf"):
        check_k(bad)


def test_k_inf_is_accepted_in_every_spelling():
    assert check_k("inf") == check_k(".inf") == check_k(math.inf) == math.inf
    assert check_k(65536.0) == 65536 and isinstance(check_k(65536.0), int)


def test_the_large_k_limit_needs_minority_negatives_among_the_k():
    """Where R* is large the minority class is rarely among the k negatives until k p_minor >> 1:
    infonce(tau=0.1), K_A = 1, K_B = 2 sits at half its limit from k = 1024 to 65536 (README) and
    reaches R*_inf at k ~ 1e12, which the transform evaluates at the same cost."""
    R = {k: minority_threshold("infonce(tau=0.1)", 1, 2, k).R_star for k in (1024, 65536, 2**40, math.inf)}
    assert R[65536] == pytest.approx(R[1024], rel=2e-3)  # the plateau
    assert R[65536] == pytest.approx(R[math.inf] / 2, rel=1e-2)
    assert R[2**40] == pytest.approx(R[math.inf], rel=1e-3)

"""Acceptance checks of the theory core: ETF, symmetric vs full, certificates, rank, large R."""

import math
import time

import numpy as np
import pytest

from pipeline.metrics import etf_gram
from pipeline.theory.dispatch import solve
from pipeline.theory.objective import certificate, class_objective
from pipeline.theory.problem import Problem
from pipeline.theory.symmetric import GroupModel, _barrier_solve, _TwoGroup
from tests.conftest import complex_step

# losses whose optimum is unique (squared hinge: every pair active at the ETF needs margin > C/(C-1))
UNIQUE = ["infonce(tau=0.5)", "infonce(tau=1)", "sumexp(tau=1)", "squared_hinge(margin=2.5)"]


@pytest.mark.parametrize("loss", UNIQUE)
@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("C", range(2, 9))
def test_balanced_gives_simplex_etf(loss, k, C):
    problem = Problem.create(loss, np.ones(C), k)
    for solver in ("full", "symmetric"):
        solution = solve(problem, solver)
        assert np.abs(solution.G - etf_gram(C)).max() <= 1e-6, solver
        assert solution.gap_rel <= 1e-6


def test_triplet_balanced_optimum_value_matches_etf():
    """The hinge optimum is not unique: compare optimal values, not Gram matrices."""
    problem = Problem.create("triplet(margin=1.5)", np.ones(4), 3)
    solution = solve(problem, "full")
    assert solution.objective == pytest.approx(class_objective(problem, etf_gram(4))[0], abs=1e-7)


def random_cases(n: int = 24):
    """Seeded small problems: C <= 6, k <= 6, two and three proportion groups, both samplings."""
    rng = np.random.default_rng(2026)
    cases = []
    for i in range(n):
        n_groups = 2 if i % 2 == 0 else 3
        sizes = rng.integers(1, 3, size=n_groups)
        if sizes.sum() < 3:
            sizes[0] += 1
        pis = np.sort(rng.uniform(1, 12, size=n_groups))[::-1]  # R up to ~12: the SDP stays accurate
        p = np.repeat(pis, sizes)
        loss = ["infonce(tau=0.5)", "infonce(tau=1)", "sumexp(tau=1)", "squared_hinge(margin=2.5)"][i % 4]
        negatives = ["marginal", "other"][(i // 2) % 2]
        reduction = ["sum", "mean"][(i // 4) % 2]
        k = int(rng.integers(1, 7))
        cases.append(Problem.create(loss, p, k, negatives, reduction))
    return cases


@pytest.mark.parametrize("problem", random_cases(), ids=lambda p: f"{p.loss.id}-C{p.C}-k{p.k}-{p.negatives}")
def test_symmetric_agrees_with_full(problem):
    full = solve(problem, "full")
    sym = solve(problem, "symmetric")
    assert full.gap_rel <= 1e-6 and sym.gap_rel <= 1e-6
    assert np.abs(full.G - sym.G).max() <= 1e-5
    assert full.objective == pytest.approx(sym.objective, rel=1e-8)


def test_three_groups_barrier_agrees_with_two_group_reduction():
    """The general barrier method against the nested two-group solver on a two-group problem."""
    problem = Problem.two_group("infonce(tau=0.5)", 2, 3, 6.0, 3)
    model = GroupModel.from_problem(problem)
    S_barrier, _ = _barrier_solve(model)
    u, v, *_ = _TwoGroup(model).solve()
    np.testing.assert_allclose(S_barrier, _TwoGroup(model).S(u, v), atol=1e-7)


def test_full_reports_its_certificate(two_group):
    solution = solve(two_group(R=5.0), "full")
    assert solution.status == "optimal"
    assert 0 <= solution.gap <= 1e-6 * solution.objective
    assert solution.lower_bound == pytest.approx(solution.objective - solution.gap)


# --- extreme imbalance ------------------------------------------------------------------------


def kkt_terms(problem: Problem, solution) -> tuple[float, float, float, float]:
    """Terms of dF/du and dF/dv from complex-step derivatives of the full C x C objective.

    Independent of the group reduction's derivative code: the objective is the class-level
    enumeration, differentiated along the block directions of a, b and c.
    """
    K_A, K_B, _ = problem.two_groups()
    C = problem.C
    blocks = {"a": np.zeros((C, C)), "b": np.zeros((C, C)), "c": np.zeros((C, C))}
    blocks["a"][:K_A, :K_A] = 1
    blocks["b"][:K_A, K_A:] = blocks["b"][K_A:, :K_A] = 1
    blocks["c"][K_A:, K_A:] = 1
    for E in blocks.values():
        np.fill_diagonal(E, 0)

    def L(G):
        return class_objective(problem, G)[0]

    dL = {name: complex_step(L, solution.G.astype(complex), E) for name, E in blocks.items()}
    u, v = solution.extra["u"], solution.extra["v"]  # sqrt(X), sqrt(Y): exact where G's entries are not
    kappa = math.sqrt(K_A * K_B)
    a_u = 2 * u / (K_A - 1) if K_A > 1 else 0.0
    c_v = 2 * v / (K_B - 1)
    return dL["a"] * a_u, dL["b"] * (-v / kappa), dL["c"] * c_v, dL["b"] * (-u / kappa)


@pytest.mark.parametrize("R", [1e4, 1e6])
@pytest.mark.parametrize(
    ("n_major", "n_minor", "loss"),
    [(3, 2, "infonce(tau=1)"), (2, 2, "infonce(tau=0.5)"), (3, 3, "sumexp(tau=1)")],
)
def test_symmetric_optimality_conditions_at_extreme_R(R, n_major, n_minor, loss):
    problem = Problem.two_group(loss, n_major, n_minor, R, 4)
    solution = solve(problem, "symmetric")
    p_minor = problem.p.min()
    u1, u2, v1, v2 = kkt_terms(problem, solution)
    # dF/du = 0: its terms are O(p_minor); relative residual 1e-8
    assert abs(u1 + u2) <= 1e-8 * (abs(u1) + abs(u2))
    if solution.collapsed:
        # c = 1 is optimal: dF/dv <= 0 there (normalised by p_minor^2)
        assert solution.c == pytest.approx(1.0, abs=1e-14)
        assert (v1 + v2) / p_minor**2 <= 1e-8
    else:
        assert solution.c < 1
        assert abs(v1 + v2) / p_minor**2 <= 1e-8
        assert abs(v1) / p_minor**2 > 1e-3  # the terms themselves are resolved, not zero
    # c varies continuously with R
    c_near = solve(Problem.two_group(loss, n_major, n_minor, R * (1 + 1e-6), 4), "symmetric").c
    assert abs(c_near - solution.c) <= 1e-5


@pytest.mark.parametrize("loss", ["infonce(tau=0.1)", "infonce(tau=0.5)", "sumexp(tau=1)"])
@pytest.mark.parametrize("k", [1, 4, 1024])
def test_joint_newton_reaches_round_off_in_few_steps(loss, k, monkeypatch):
    """Apart minorities: the optimality conditions to round-off (1e-14 relative; stopping at 1e-13 left
    3e-15 in a cosine), in at most 8 evaluations from the collapse point. On F_u, F_v themselves
    Newton crept at tau = 0.1 (18 evaluations)."""
    evaluations = []
    derivatives = _TwoGroup._derivatives
    monkeypatch.setattr(_TwoGroup, "_derivatives", lambda self, u, v: evaluations.append(1) or derivatives(self, u, v))
    for R in (1.0, 3.0, 30.0, 1000.0):
        reduced = _TwoGroup(GroupModel.from_problem(Problem.two_group(loss, 2, 2, R, k)))
        criterion, error, u = reduced.criterion_at_collapse()
        if criterion <= error:
            continue
        evaluations.clear()
        u, v = reduced._newton(u, reduced.v_max)
        assert len(evaluations) <= 8, (R, len(evaluations))
        assert max(reduced.residuals(reduced.derivatives(u, v))) <= 1e-14, R


@pytest.mark.parametrize("R", [1.5, 3.0, 10.0])
def test_two_groups_without_a_collapse_point_start(R):
    """A hinge-type loss whose u* at c = 1 is 0 (no collapse-point start for the joint Newton: it
    starts at (0.5, 0.9 v_max) and falls back to the search in v) agrees with the full SDP."""
    problem = Problem.two_group("squared_hinge(margin=0.5)", 2, 2, R, 2)
    reduced = _TwoGroup(GroupModel.from_problem(problem))
    assert reduced.criterion_at_collapse()[2] == 0.0
    symmetric, full = solve(problem, "symmetric"), solve(problem, "full")
    assert symmetric.collapsed is False and symmetric.status == "optimal"
    assert symmetric.objective == pytest.approx(full.objective, rel=1e-9)


def test_symmetric_c_is_monotone_and_smooth_in_R():
    Rs = np.geomspace(1e3, 1e6, 13)
    cs = np.array([solve(Problem.two_group("infonce(tau=1)", 3, 2, R, 4), "symmetric").c for R in Rs])
    assert np.all(np.diff(cs) > 0)  # more imbalance, closer minorities
    assert np.all(np.abs(np.diff(cs)) < 0.05)


@pytest.mark.parametrize("R", [1e4, 1e6])
@pytest.mark.parametrize("loss", ["infonce(tau=0.5)", "infonce(tau=1)", "sumexp(tau=1)"])
def test_full_is_never_confidently_wrong_at_extreme_R(R, loss):
    problem = Problem.two_group(loss, 2, 2, R, 4)
    full, sym = solve(problem, "full"), solve(problem, "symmetric")
    if full.status == "optimal":
        assert abs(full.c - sym.c) <= 1e-4
    else:
        assert full.status == "optimal_inaccurate" and full.message


# --- rank-constrained --------------------------------------------------------------------------


@pytest.mark.parametrize("R", [1.0, 3.0, 50.0])
def test_rank_with_enough_dimensions_matches_full(R, two_group):
    problem = two_group(R=R)
    full, ranked = solve(problem, "full"), solve(problem, "rank", dim=4)
    assert ranked.status == "optimal"
    assert ranked.objective == pytest.approx(full.objective, rel=1e-9)
    assert np.abs(ranked.G - full.G).max() <= 1e-4


def _dense_riemannian_hessian(problem, V, t=1e-4):
    """The Riemannian Hessian of L(V^T V) on unit columns, in the p-weighted metric, as a dense matrix over
    an orthonormal basis of the tangent space without the rotations A V: second differences of L along the
    normalising retraction (a second-order retraction: d2/dt2 L(R(V + t X)) = <X, Hess X> at any point),
    by polarisation."""
    d, C = V.shape
    basis = []
    for c in range(C):  # v_c's orthogonal complement, scaled to unit length in the weighted metric
        null = np.linalg.svd(V[:, [c]].T)[2][1:]  # (d - 1, d)
        for u in null:
            X = np.zeros((d, C))
            X[:, c] = u / math.sqrt(problem.p[c])
            basis.append(X)

    def L(X):
        W = V + X
        W = W / np.linalg.norm(W, axis=0)
        return class_objective(problem, W.T @ W)[0]

    def q(X):  # <X, Hess X>
        return (L(t * X) - 2 * L(0 * X) + L(-t * X)) / t**2

    n = len(basis)
    H = np.array([[(q(basis[i] + basis[j]) - q(basis[i] - basis[j])) / 4 for j in range(n)] for i in range(n)])
    # off the rotations A V (A antisymmetric): their coordinates in the basis, and the basis of their complement
    rotations = []
    for i in range(d):
        for j in range(i + 1, d):
            A = np.zeros((d, d))
            A[i, j], A[j, i] = 1.0, -1.0
            rotations.append([float((problem.p * X * (A @ V)).sum()) for X in basis])
    U, sigma, _ = np.linalg.svd(np.array(rotations).T.reshape(n, -1))
    N = U[:, int((sigma > 1e-10).sum()):]  # (n, n - rotations)
    return N.T @ ((H + H.T) / 2) @ N


@pytest.mark.parametrize("where", ["optimum", "random"])
def test_stationarity_of_a_rank_d_point_equals_a_dense_hessian(where):
    """The Lanczos extremes of the Riemannian Hessian equal the eigenvalues of a dense Hessian made by finite
    differences of the objective alone, at the rank-2 optimum and at a random point (d = 2, C = 4)."""
    from pipeline.theory.rank import stationarity

    problem = Problem.from_profile("infonce(tau=0.5)", "exp(C=4, rho=10)", 8)
    if where == "optimum":
        V = solve(problem, "rank", dim=2).V
    else:
        V = np.random.default_rng(3).standard_normal((2, 4))
        V /= np.linalg.norm(V, axis=0)
    ours = stationarity(problem, V)
    eig = np.linalg.eigvalsh(_dense_riemannian_hessian(problem, V))
    scale = abs(eig).max()
    assert abs(ours.hessian_min - eig[0]) <= 1e-5 * scale and abs(ours.hessian_max - eig[-1]) <= 1e-5 * scale
    assert ours.second_order == (where == "optimum")


@pytest.mark.parametrize("where", ["optimum", "random"])
def test_lanczos_extremes_equal_the_dense_ones(where, monkeypatch):
    """Above DENSE_MAX coordinates the extremes come from Lanczos (relative accuracy LANCZOS_TOL): forced on the
    small case, they equal the dense eigendecomposition to 1e-7 of the spectrum's scale."""
    import pipeline.theory.rank as rank

    problem = Problem.from_profile("infonce(tau=0.5)", "exp(C=6, rho=10)", 8)
    V = solve(problem, "rank", dim=3).V if where == "optimum" else np.random.default_rng(4).standard_normal((3, 6))
    V = V / np.linalg.norm(V, axis=0)
    dense = rank.stationarity(problem, V)
    monkeypatch.setattr(rank, "DENSE_MAX", 0)
    lanczos = rank.stationarity(problem, V)
    scale = max(abs(dense.hessian_min), abs(dense.hessian_max))
    assert abs(lanczos.hessian_min - dense.hessian_min) <= 1e-7 * scale
    assert abs(lanczos.hessian_max - dense.hessian_max) <= 1e-7 * scale
    assert lanczos.second_order == dense.second_order == (where == "optimum")


def test_lanczos_that_does_not_converge_reports_nan_not_stationary(monkeypatch):
    """ARPACK giving up (it did at tol 1e-10 on exp(C = 100), d = 16) is not a crash: the curvature is NaN and
    the point is not called second-order stationary."""
    import scipy.sparse.linalg

    import pipeline.theory.rank as rank

    def no_convergence(*args, **kwargs):
        raise scipy.sparse.linalg.ArpackNoConvergence("no convergence", np.array([]), np.array([]))

    problem = Problem.from_profile("infonce(tau=0.5)", "exp(C=6, rho=10)", 8)
    V = solve(problem, "rank", dim=3).V
    monkeypatch.setattr(rank, "DENSE_MAX", 0)
    monkeypatch.setattr(scipy.sparse.linalg, "eigsh", no_convergence)
    result = rank.stationarity(problem, V)
    assert math.isnan(result.hessian_min) and math.isnan(result.hessian_max) and not result.second_order


def test_solve_says_when_the_curvature_is_not_determined(monkeypatch, capsys):
    """Lanczos out of its bounded work (``LANCZOS_MAX_RESTARTS``): ``solve`` says "not determined", not "no"."""
    import scipy.sparse.linalg

    import pipeline.theory.rank as rank
    from pipeline.cli import main

    def no_convergence(*args, **kwargs):
        raise scipy.sparse.linalg.ArpackNoConvergence("no convergence", np.array([]), np.array([]))

    monkeypatch.setattr(rank, "DENSE_MAX", 0)
    monkeypatch.setattr(scipy.sparse.linalg, "eigsh", no_convergence)
    code = main(["solve", "--loss", "infonce(tau=0.5)", "--profile", "exp(C=6, rho=10)", "--k", "8", "--dim", "3"])
    out = capsys.readouterr().out
    assert code == 0 and "second-order stationary: not determined" in out, out


def test_collapsed_classes_are_a_saddle_not_second_order_stationary():
    """Every class on one vector is a critical point (zero Riemannian gradient) with negative curvature."""
    from pipeline.theory.rank import stationarity

    problem = Problem.two_group("infonce(tau=0.5)", 3, 3, 10.0, 16)
    V = np.zeros((3, 6))
    V[0] = 1.0
    result = stationarity(problem, V)
    assert result.gradient <= 1e-12 and result.hessian_min < -0.1 and not result.second_order


def test_rank_d_objective_is_the_best_of_many_restarts():
    """Small C: the rank-d solve's objective (8 restarts) is the least over 64 other seeded restarts, to 1e-9, and
    its point is second-order stationary."""
    from pipeline.theory.rank import refine

    problem = Problem.from_profile("infonce(tau=0.5)", "exp(C=6, rho=100)", 16)
    for dim in (2, 3):
        solution = solve(problem, "rank", dim=dim)
        rng = np.random.default_rng(1)
        best = min(refine(problem, rng.standard_normal((dim, 6)))[1] for _ in range(64))
        assert solution.objective <= best + 1e-9 * abs(best)
        assert solution.extra["stationarity"].second_order
        assert solution.lower_bound <= solution.objective and solution.gap == solution.objective - solution.lower_bound


@pytest.mark.parametrize("dim", [1, 2])
def test_rank_below_C_is_bounded_by_the_convex_program(dim, two_group):
    problem = two_group(R=3.0, n_major=3, n_minor=2)
    ranked = solve(problem, "rank", dim=dim)
    convex = solve(problem, "symmetric")
    assert ranked.V.shape == (dim, 5)
    assert np.allclose(np.linalg.norm(ranked.V, axis=0), 1)
    assert ranked.lower_bound == pytest.approx(convex.lower_bound)
    assert ranked.objective >= ranked.lower_bound - 1e-12
    assert ranked.objective > convex.objective + 1e-6  # d < C really costs something here
    assert ranked.status == "local" and "lower bound" in ranked.message
    assert certificate(problem, ranked.G)[0] == pytest.approx(ranked.objective)


def test_column_curvature_is_each_columns_mean_riemannian_curvature():
    """The oblique solver's first-stage metric: the probe estimate against each column's exact block trace.

    Two Euclidean Hessians on a random upper-triangular V: block diagonal (dV_c -> a_c dV_c, every probe
    exact) and coupled (dV -> dV K, K symmetric: the cross blocks average out over the probes). The reference
    is the Riemannian block of column c on an orthonormal basis of its tangent space (first c + 1 coordinates,
    orthogonal to v_c), built here.
    """
    from pipeline.theory.oblique import column_curvature, curvature_weight

    rng = np.random.default_rng(3)
    C = 6
    V = np.triu(rng.normal(size=(C, C)))
    V /= np.linalg.norm(V, axis=0)
    gradient = rng.normal(size=(C, C))
    A = rng.uniform(0.5, 3.0, C)
    K = rng.normal(size=(C, C))
    K = K + K.T + 2 * C * np.eye(C)

    def exact(hessian):
        out = np.zeros(C)
        for c in range(1, C):
            basis = np.eye(C)[:, : c + 1]
            basis -= np.outer(V[:, c], V[:, c] @ basis)
            Q = np.linalg.qr(basis)[0][:, :c]  # (C, c): the tangent space of column c
            block = []
            for u in Q.T:
                dV = np.zeros((C, C))
                dV[:, c] = u
                block.append(u @ hessian(dV)[:, c] - V[:, c] @ gradient[:, c])
            out[c] = np.mean(block)
        return out

    diagonal = lambda dV: dV * A  # noqa: E731
    np.testing.assert_allclose(column_curvature(V, gradient, diagonal, triangular=True, probes=3),
                               exact(diagonal), rtol=1e-12, atol=1e-12)  # fmt: skip
    coupled = lambda dV: dV @ K  # noqa: E731
    estimate = column_curvature(V, gradient, coupled, triangular=True, probes=4000)
    assert estimate[0] == 0.0  # column 0 has no tangent space
    np.testing.assert_allclose(estimate, exact(coupled), atol=0.05 * np.abs(K).max())
    assert not np.allclose(column_curvature(V, gradient, coupled, triangular=True, probes=1), exact(coupled))
    # the metric: the ratio to the weight (0, 2, 1, 10 here), floored at a tenth of the median ratio (2); the
    # weight itself where no ratio is usable
    weight = np.array([0.4, 0.3, 0.2, 0.1])
    np.testing.assert_allclose(curvature_weight(weight, np.array([0.0, 0.6, 0.2, 1.0])), [0.4 * 0.1 * 2, 0.6, 0.2, 1.0])
    np.testing.assert_array_equal(curvature_weight(weight, np.zeros(4)), weight)


def test_the_float32_model_product_keeps_every_column_to_single_precision():
    """The oblique solver's Hessian-vector product with its three C x C products in float32 (from
    ``MODEL_SINGLE_FROM`` classes on) equals the float64 one, written out here, column by column to 1e-5 of each
    column's norm: the smallest columns (over 100x below the largest here) keep their own scale."""
    from pipeline.theory.objective import expected_loss
    from pipeline.theory.oblique import model_product

    C = 40
    problem = Problem.from_profile("infonce(tau=0.5)", f"exp(C={C}, rho=100)", 256)
    rng = np.random.default_rng(5)
    V = np.triu(rng.normal(size=(C, C)))
    V /= np.linalg.norm(V, axis=0)
    _, D, hvp = expected_loss(problem.loss, problem.k, problem.rho, problem.anchor_weights(),
                              problem.negative_distribution(), V.T @ V, hessian="model")  # fmt: skip
    D_sym = D + D.T
    dV = np.triu(rng.normal(size=(C, C)))
    dG = dV.T @ V + V.T @ dV
    dD = hvp(dG)
    reference = dV @ D_sym + V @ (dD + dD.T)  # (C, C)
    scale = np.linalg.norm(reference, axis=0)  # (C,)
    assert scale.min() < 1e-2 * scale.max()  # small columns: a global tolerance would hide them
    np.testing.assert_allclose(model_product(V, D_sym, hvp)(dV), reference, rtol=1e-13, atol=1e-15)
    single = model_product(V, D_sym, hvp, single=True)(dV)
    assert single.dtype == np.float64
    error = np.abs(single - reference).max(axis=0) / scale  # (C,)
    assert error.max() < 1e-5 and error.max() > 1e-10  # single precision, not double


def test_rank_d_beyond_the_restart_limit_is_one_trust_region_run_to_a_local_minimum(monkeypatch):
    """Above RESTARTS_MAX_C classes the rank-d point comes from one trust-region run from the convex optimum's
    top-d factor (forced here on C = 7): unit columns, rank <= d, second-order stationary off the rotations, no
    lower than the best of 12 L-BFGS restarts, and L-BFGS from it does not go lower (a local minimum); the
    message says that no restarts were run."""
    import pipeline.theory.rank as rank

    problem = Problem.from_profile("infonce(tau=0.5)", "exp(C=7, rho=100)", 64)
    monkeypatch.setattr(rank, "RESTARTS_MAX_C", 6)
    for dim in (2, 4):
        solution = solve(problem, "rank", dim=dim)
        V = solution.V  # (d, C)
        assert V.shape == (dim, 7) and np.allclose(np.linalg.norm(V, axis=0), 1, atol=1e-12)
        assert solution.extra["restarts"] == 1 and "no restarts" in solution.message
        assert solution.extra["stationarity"].second_order and solution.extra["stationarity"].hessian_min > 0
        rng = np.random.default_rng(2)
        best = min(rank.refine(problem, rng.standard_normal((dim, 7)))[1] for _ in range(12))
        assert solution.objective >= best - 1e-9 * abs(best)
        assert rank.refine(problem, V)[1] >= solution.objective - 1e-10 * abs(solution.objective)
        assert solution.lower_bound <= solution.objective


def test_a_stage_with_a_lower_bound_stops_once_its_excess_no_longer_moves():
    """With a lower bound (a rank-d point's convex bound), a stage stops at the first iteration whose objective fell
    by less than PROGRESS_FRACTION of its excess over the bound in the last PROGRESS_WINDOW iterations, and not
    before; without a bound the same values never stop it. The values fed: an excess of 1 halving every 10
    iterations, to 1/32, then falling by 1e-7 an iteration (5e-6 in 50, below PROGRESS_FRACTION of 1/32)."""
    from pipeline.theory.oblique import PROGRESS_FRACTION, PROGRESS_WINDOW, _stalling_trust_regions

    bound, fast = -2.0, 60
    values = [bound + 0.5 ** (i // 10) for i in range(fast)]
    values += [values[-1] - 1e-7 * (i + 1) for i in range(200)]
    expected = next(i for i in range(PROGRESS_WINDOW, len(values))
                    if values[i - PROGRESS_WINDOW] - values[i] < PROGRESS_FRACTION * (values[i] - bound))  # fmt: skip
    assert expected > fast  # the fast phase does not stop it
    TrustRegions = _stalling_trust_regions()
    for given, stops_at in ((bound, expected), (None, None)):
        current = iter(values)
        optimizer = TrustRegions(max_iterations=10_000, verbosity=0, stall_below=0.0, value=current.__next__,
                                 bound=given)  # fmt: skip
        reasons = [optimizer._check_stopping_criterion(start_time=time.time(), gradient_norm=1.0, iteration=i)
                   for i in range(len(values))]  # fmt: skip
        stopped = [i for i, reason in enumerate(reasons) if reason is not None]
        assert (stopped[0] if stopped else None) == stops_at
        if stops_at is not None:
            assert f"less than {PROGRESS_FRACTION:g} of its excess" in reasons[stops_at]


def test_the_stationarity_check_reports_an_extreme_not_determined_past_its_deadline():
    """Lanczos's largest eigenvalue of a known spectrum, and NaN (not determined, so not reported second-order
    stationary) once the check's deadline has passed."""
    from pipeline.theory.rank import _extreme

    spectrum = np.linspace(-1.0, 3.0, 500)
    assert _extreme(lambda y: spectrum * y, 500) == pytest.approx(3.0, rel=1e-8)
    assert math.isnan(_extreme(lambda y: spectrum * y, 500, deadline=time.perf_counter() - 1.0))


def test_the_stationarity_verdict_is_not_determined_only_where_the_gradient_does_not_already_say_no():
    from pipeline.theory.rank import GRADIENT_TOL, Stationarity

    assert Stationarity(GRADIENT_TOL / 10, 0.1, 3.0).verdict == "yes"
    assert Stationarity(GRADIENT_TOL / 10, -0.1, 3.0).verdict == "no"
    assert Stationarity(GRADIENT_TOL / 10, math.nan, 3.0).verdict == "not determined"
    assert Stationarity(GRADIENT_TOL * 10, math.nan, 3.0).verdict == "no"

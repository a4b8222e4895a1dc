"""Imbalance profiles, the oblique (many-class) solver and the collapse cascade."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.errors import InputError
from pipeline.theory.cascade import cascade, distinct_directions, merged_geometry, onset, split_test, tail_test
from pipeline.theory.dispatch import choose_solver, solve
from pipeline.theory.losses import parse_loss
from pipeline.theory.objective import certificate, expected_loss
from pipeline.theory.problem import Problem, two_group_proportions
from pipeline.theory.profiles import Counts, Exp, Step, parse_profile

INFONCE = "infonce(tau=0.5)"


# profiles ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text", ["exp(C=10, rho=100)", "exp(C=4)", "counts(5000, 2997, 1796)", "counts(cat=5, dog=3)",
             "step(K_A=2, K_B=3, R=7.5)", "step(K_A=2, K_B=2)"],
)  # fmt: skip
def test_spec_parses_back_to_the_same_profile(text):
    profile = parse_profile(text)
    assert parse_profile(profile.spec) == profile


def test_exp_profile_is_the_long_tail():
    p = Exp(5, 100.0).proportions()
    assert p.sum() == pytest.approx(1.0, abs=1e-15)
    assert p[0] / p[-1] == pytest.approx(100.0, rel=1e-13)
    np.testing.assert_allclose(p[1:] / p[:-1], 100.0 ** (-1 / 4), rtol=1e-13)  # geometric, head first


def test_step_profile_is_bitwise_the_two_group_proportions():
    for K_A, K_B, R in [(2, 2, 100.0), (3, 5, 2.5), (1, 4, 1e6)]:
        p_minor = 1.0 / (K_A * R + K_B)  # main's two_group_proportions, verbatim
        old = np.array([R * p_minor] * K_A + [p_minor] * K_B)
        assert np.array_equal(Step(K_A, K_B, R).proportions(), old)
        assert np.array_equal(two_group_proportions(K_A, K_B, R), old)
        problem = Problem.two_group(INFONCE, K_A, K_B, R, 4)
        assert problem.profile == Step(K_A, K_B, R) and problem.n_major == K_A


def test_counts_profile_keeps_the_given_order_and_names():
    profile = parse_profile("counts(airplane=10, cat=30, dog=20)")
    assert profile.labels() == ["airplane", "cat", "dog"]
    np.testing.assert_allclose(profile.proportions(), [1 / 6, 1 / 2, 1 / 3])


@pytest.mark.parametrize(
    ("text", "field"),
    [("exp(C=1)", "C"), ("exp(C=2.5, rho=3)", "C"), ("exp(C=4, rho=0.5)", "rho"), ("counts(5, 0, 3)", "counts[1]"),
     ("counts(5, -2)", "counts[1]"), ("counts(5, 'x')", "counts[1]"), ("counts(5)", "counts"),
     ("gauss(C=3)", "profile"), ("exp(C=3, beta=2)", "exp parameter"), ("exp", "profile"), ("exp(C=3", "profile")],
)  # fmt: skip
def test_bad_profiles_name_the_field(text, field):
    with pytest.raises(InputError) as err:
        parse_profile(text)
    assert err.value.field == field


@pytest.mark.parametrize("text", ["exp(C=1)", "exp(C=4, rho=0.5)", "counts(5, 0, 3)", "unknown(C=3)", "exp(C=3, x=1)"])
def test_bad_profiles_exit_2_with_one_line(text, capsys):
    assert main(["solve", "--loss", INFONCE, "--profile", text, "--k", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("clphase solve: error: invalid")


# the Hessian-vector product every route offers -----------------------------------------------------
@pytest.mark.parametrize("loss_id", ["infonce(tau=0.5)", "sumexp(tau=1)", "infonce(tau=0.1)"])
@pytest.mark.parametrize(("k", "rho", "method"), [(3, 1.0, "enumerate"), (3, 1 / 3, "transform"), (1, 1.0, "transform"),
                                                  (50, 1.0, "auto"), (math.inf, 1.0, "auto"), (math.inf, 0.0, "auto")])
def test_hessian_operator_equals_the_dense_hessian(loss_id, k, rho, method):  # fmt: skip
    rng = np.random.default_rng(3)
    A, J = 4, 5
    w = rng.random(A)
    q = rng.random((A, J))
    cos, v = rng.uniform(-1, 1, (A, J)), rng.normal(size=(A, J))
    loss = parse_loss(loss_id)
    args = (loss, k, rho, w / w.sum(), q / q.sum(axis=1, keepdims=True), cos)
    dense = expected_loss(*args, hessian=True, method=method)[2]
    operator = expected_loss(*args, hessian="operator", method=method)[2]
    expected = np.einsum("ajl,al->aj", dense, v)
    np.testing.assert_allclose(operator(v), expected, rtol=1e-13, atol=1e-15 * np.abs(expected).max())


# the oblique solver --------------------------------------------------------------------------------
def _seeded_cases(n: int, seed: int = 12):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        C, k = int(rng.integers(3, 7)), int(rng.integers(1, 5))
        rho, tau = float(10 ** rng.uniform(0, 2.5)), float(rng.choice([0.1, 0.25, 0.5, 1.0]))
        yield (f"infonce(tau={tau})", f"exp(C={C}, rho={rho:.6g})", k, str(rng.choice(["marginal", "other"])),
               str(rng.choice(["sum", "mean"])))  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("case", list(_seeded_cases(12)), ids=lambda c: f"{c[1]}-k{c[2]}-{c[3]}-{c[4]}")
def test_oblique_equals_the_cvxpy_program(case):
    loss, profile, k, negatives, reduction = case
    problem = Problem.from_profile(loss, profile, k, negatives, reduction)
    assert choose_solver(problem) == "oblique"
    ours, reference = solve(problem), solve(problem, "full")
    assert ours.solver == "oblique" and ours.status == "optimal"
    np.testing.assert_allclose(ours.G, reference.G, atol=1e-6, rtol=0)
    assert ours.gap_rel <= 1e-9
    value, gap = certificate(problem, ours.G)  # the unscaled bound, as the cvxpy solution is certified
    assert gap / abs(value) <= 1e-9 and value <= reference.objective + 1e-12


def test_oblique_equals_the_symmetric_solver_on_step_profiles():
    for R, negatives in [(3.0, "marginal"), (40.0, "other"), (500.0, "marginal")]:
        problem = Problem.two_group(INFONCE, 2, 3, R, 16, negatives)
        ours, reference = solve(problem, "oblique"), solve(problem, "symmetric")
        assert ours.status == "optimal"
        np.testing.assert_allclose([ours.a, ours.b, ours.c], [reference.a, reference.b, reference.c], atol=1e-8)


def test_oblique_handles_many_classes_and_large_k():
    problem = Problem.from_profile(INFONCE, "exp(C=30, rho=100)", 4096)
    solution = solve(problem)
    assert solution.solver == "oblique" and solution.status == "optimal"
    assert solution.gap_rel <= 1e-12 and solution.gap_minor <= 1e-3
    G = solution.G
    assert np.allclose(np.diag(G), 1) and np.linalg.eigvalsh(G)[0] > -1e-12
    # the balanced profile gives the simplex ETF
    balanced = solve(Problem.from_profile(INFONCE, "exp(C=7, rho=1)", 64), "oblique")
    np.testing.assert_allclose(balanced.G[~np.eye(7, dtype=bool)], -1 / 6, atol=1e-9)


def test_oblique_at_k_inf_and_psi_linear_match_cvxpy():
    for loss, k in [(INFONCE, math.inf), ("sumexp(tau=0.5)", 4)]:
        problem = Problem.from_profile(loss, "counts(50, 20, 9, 4)", k)
        ours, reference = solve(problem, "oblique"), solve(problem, "full")
        np.testing.assert_allclose(ours.G, reference.G, atol=1e-6)


# the cascade ---------------------------------------------------------------------------------------
def test_tail_classes_apart_at_rho_100_merged_at_1e4():
    apart = tail_test(INFONCE, 4, 2, 100.0, 4)
    merged = tail_test(INFONCE, 4, 2, 1e4, 4)
    assert apart.merged is False and apart.h < -apart.error
    assert merged.merged is True and merged.h > merged.error
    # the merged geometry is certified optimal in the full program at 1e4
    problem = Problem.from_profile(INFONCE, "exp(C=4, rho=1e4)", 4)
    G = merged_geometry(problem, np.array([0, 1, 2, 2]))
    value, gap = certificate(problem, G)
    assert gap / value <= 1e-9 and gap / problem.p.min() ** 2 <= 1e-3
    # and not at 100: splitting lowers L there
    problem = Problem.from_profile(INFONCE, "exp(C=4, rho=100)", 4)
    G = merged_geometry(problem, np.array([0, 1, 2, 2]))
    assert certificate(problem, G)[1] > 1e3 * certificate(problem, solve(problem).G)[1]


def test_distinct_directions_count_the_certified_merges():
    counts = {}
    for rho in (100.0, 1e4):
        problem = Problem.from_profile(INFONCE, Exp(4, rho), 4)
        directions = distinct_directions(problem, solve(problem).G)
        assert directions.decided
        counts[rho] = directions.count
    assert counts == {100.0: 4, 1e4: 3}


def test_onset_is_confirmed_by_unrestricted_solves():
    found = onset(INFONCE, 4, 2, 4)
    assert found.status == "optimal" and 100 < found.rho_star < 1e4
    cosines = {}
    for factor in (1 - 1e-3, 1 + 1e-3):
        problem = Problem.from_profile(INFONCE, Exp(4, found.rho_star * factor), 4)
        solution = solve(problem)
        assert solution.status == "optimal"
        cosines[factor] = 1 - solution.G[2, 3]
    assert cosines[1 - 1e-3] > 1e-6  # apart just below
    assert cosines[1 + 1e-3] < 1e-12  # merged just above


def test_split_test_reproduces_the_two_group_collapse_decision():
    """On step profiles the split test and the c = 1 criterion g decide alike (K_B = 2)."""
    for R in (20.0, 60.0, 70.0, 400.0):
        problem = Problem.two_group(INFONCE, 2, 2, R, 4)
        solution = solve(problem)
        label = np.array([0, 1, 2, 2])
        test = split_test(problem, merged_geometry(problem, label), [2, 3], label)
        assert test.merged == solution.collapsed, R


def test_cascade_onsets_are_nested():
    result = cascade(INFONCE, 4, 4)
    rho = [o.rho_star for o in result.onsets]
    assert [o.m for o in result.onsets] == [2, 3]
    assert all(o.status == "optimal" for o in result.onsets) and rho[0] < rho[1]


# command line --------------------------------------------------------------------------------------
def test_solve_json_for_a_profile(capsys):
    assert main(["solve", "--loss", INFONCE, "--profile", "exp(C=4, rho=1e4)", "--k", "4", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["profile"] == "exp(C=4, rho=10000)" and record["status"] == "optimal"
    assert np.array(record["gram"]).shape == (4, 4) and record["distinct_directions"] == 3
    assert record["direction_of_class"] == [0, 1, 2, 2] and record["gap_rel"] <= 1e-9


def test_step_profile_equals_the_shorthand(capsys):
    outputs = []
    for args in (["--profile", "step(K_A=2, K_B=2, R=100)"], ["--n-major", "2", "--n-minor", "2", "--R", "100"]):
        assert main(["solve", "--loss", INFONCE, "--k", "4", "--json", *args]) == 0
        record = json.loads(capsys.readouterr().out)
        record.pop("time_s")
        outputs.append(record)
    assert outputs[0] == outputs[1]


def test_threshold_reports_the_cascade(capsys):
    assert main(["threshold", "--loss", INFONCE, "--profile", "exp(C=4)", "--k", "4", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert [o["m"] for o in record["onsets"]] == [2, 3]
    assert record["onsets"][0]["status"] == "optimal" and 100 < record["onsets"][0]["rho_star"] < 1e4


def test_threshold_refuses_a_profile_with_its_scan_axis(capsys):
    assert main(["threshold", "--loss", INFONCE, "--profile", "exp(C=4, rho=10)", "--k", "4"]) == 2
    assert "without rho" in capsys.readouterr().err
    assert main(["threshold", "--loss", INFONCE, "--profile", "counts(5, 3, 1)", "--k", "4"]) == 2


def test_counts_profile_in_solve(capsys):
    assert main(["solve", "--loss", INFONCE, "--profile", "counts(cat=5000, dog=2997, emu=1796)", "--k", "16"]) == 0
    out = capsys.readouterr().out
    assert "emu" in out and "distinct directions: 3 of 3" in out
    assert Counts((5000, 2997, 1796)).C == 3


# the Grams of earlier revisions' oblique solver, stored by them: C = 100 before the first stage weighed columns by
# their curvature (full matrices), C = 300 by main before the grouped Taylor transform, the model Hessian and the
# round-off stop (upper triangles)
EARLIER = {100: ("exp_C100.npz", "0e31664"), 300: ("exp_C300.npz", "f1beadd")}


@pytest.mark.parametrize("k", [256, math.inf])
@pytest.mark.parametrize("C", sorted(EARLIER))
def test_exp_profile_equals_the_oblique_solver_of_an_earlier_revision(C, k):
    """exp(C, rho = 100), InfoNCE tau = 0.5, C = 100 and 300: the certified Gram equals, to 1e-9 on every entry, the
    one an earlier revision's ``solve_oblique`` stored in tests/data (``EARLIER``), and the objectives agree
    within the two certified gaps."""
    from pathlib import Path

    from pipeline.theory.oblique import solve_oblique

    file, revision = EARLIER[C]
    reference = np.load(Path(__file__).parent / "data" / file)
    assert str(reference["revision"]).startswith(revision)
    name = "k256" if k == 256 else "kinf"
    solution = solve_oblique(Problem.from_profile(INFONCE, f"exp(C={C}, rho=100)", k))
    assert solution.status == "optimal"
    stored = reference[f"gram_{name}"]  # (C, C), or its upper triangle (C (C - 1) / 2,)
    ours = solution.G if stored.ndim == 2 else solution.G[np.triu_indices(C, 1)]
    np.testing.assert_allclose(ours, stored, rtol=0, atol=1e-9)
    assert abs(solution.objective - float(reference[f"objective_{name}"])) <= solution.gap + float(
        reference[f"gap_{name}"]) + 1e-15 * abs(solution.objective)  # fmt: skip


def test_a_low_rank_start_that_cannot_be_certified_falls_back_to_the_full_factor(monkeypatch):
    """From ``LOW_RANK_FROM`` classes the solve starts on a rank-(C - 1) factor; where that point is not certified
    the full factor solves the problem from the ETF. Forced at exp(C = 6, rho = 10), whose optimum has rank 5, by
    a rank-4 start (seeded): the result equals the full factor's alone, to 1e-9 on every entry,
    and counts both solves' iterations."""
    import pipeline.theory.oblique as oblique

    problem = Problem.from_profile(INFONCE, "exp(C=6, rho=10)", 8)
    alone = oblique.solve_oblique(problem)  # C = 6 < LOW_RANK_FROM: the full factor only
    assert alone.status == "optimal" and np.linalg.eigvalsh(alone.G)[1] > 1e-3  # rank 5
    rank_4 = oblique.trapezoidal(np.random.default_rng(0).standard_normal((4, 6)))  # (4, 6)
    monkeypatch.setattr(oblique, "LOW_RANK_FROM", 2)
    monkeypatch.setattr(oblique, "etf_factor", lambda C: rank_4)
    solution = oblique.solve_oblique(problem)
    assert solution.status == "optimal"
    np.testing.assert_allclose(solution.G, alone.G, rtol=0, atol=1e-9)
    assert solution.extra["iterations"] > alone.extra["iterations"]


def test_a_preconditioned_attempt_that_is_not_certified_falls_back_to_the_plain_solve(monkeypatch):
    """From ``LOW_RANK_FROM`` classes the rank-(C - 1) factor is solved first on the pair preconditioner, for at
    most ``PRECONDITIONED_ITERATIONS``; where that is not certified the plain rank-(C - 1) solve follows. Forced at
    exp(C = 100, rho = 100), k = 16, with one iteration: the result equals the preconditioned solve's own (both
    certified) to 1e-9 on every entry, and counts both attempts' iterations."""
    import pipeline.theory.oblique as oblique

    problem = Problem.from_profile(INFONCE, "exp(C=100, rho=100)", 16)
    preconditioned = oblique.solve_oblique(problem)
    assert preconditioned.status == "optimal"
    monkeypatch.setattr(oblique, "PRECONDITIONED_ITERATIONS", 1)
    fallback = oblique.solve_oblique(problem)
    assert fallback.status == "optimal"
    np.testing.assert_allclose(fallback.G, preconditioned.G, rtol=0, atol=1e-9)
    assert fallback.extra["iterations"] > preconditioned.extra["iterations"]


def test_the_etf_factor_is_the_simplex_etf_at_rank_c_minus_1():
    from pipeline.theory.oblique import etf_factor

    for C in (2, 3, 10, 101):
        V = etf_factor(C)  # (C - 1, C)
        assert V.shape == (C - 1, C) and np.allclose(np.tril(V, -1), 0.0)
        np.testing.assert_allclose(V.T @ V, (C * np.eye(C) - 1) / (C - 1), rtol=0, atol=1e-13)


@pytest.mark.parametrize("rows", ["C - 1", "C"])
def test_the_pair_preconditioner_inverts_each_columns_block_on_its_tangent_space(rows):
    """pair_preconditioner against dense algebra: column c's block B_c = sum_j H_cj v_j v_j^T (H_cc filled with the
    row's mean) inverted with numpy, masked to the column's leading coordinates, restricted to v_c's complement.
    Where a column's support is full (the last), the result y is the exact inverse there: y is tangent and the
    block, projected, maps it back. float32 agrees to 1e-4."""
    from pipeline.theory.oblique import pair_preconditioner, trapezoidal

    rng = np.random.default_rng(3)
    C = 7
    m = C - 1 if rows == "C - 1" else C
    V = trapezoidal(rng.standard_normal((m, C)))  # (m, C) upper trapezoidal, unit columns
    H = rng.uniform(0.1, 2.0, (C, C))
    H = H + H.T
    np.fill_diagonal(H, 0.0)
    X = rng.standard_normal((m, C))
    mask = np.triu(np.ones((m, C)))
    X = X * mask
    X -= V * (V * X).sum(axis=0)  # (m, C): tangent
    ours = pair_preconditioner(V, H)(X)
    for c in range(C):
        h = H[c].copy()
        h[c] = H[c].sum() / (C - 1)
        A = np.linalg.inv((V * h) @ V.T)  # (m, m)
        y, u = mask[:, c] * (A @ (mask[:, c] * X[:, c])), mask[:, c] * (A @ V[:, c])
        np.testing.assert_allclose(ours[:, c], y - u * (V[:, c] @ y) / (V[:, c] @ u), rtol=0, atol=1e-10)
    last, v = ours[:, -1], V[:, -1]
    h = H[-1].copy()
    B = (V * h) @ V.T  # (m, m): H_cc = 0, the column's own term, which the tangent space does not see
    assert abs(v @ last) < 1e-12
    np.testing.assert_allclose(B @ last - v * (v @ B @ last), X[:, -1], rtol=0, atol=1e-10)
    single = pair_preconditioner(V, H, single=True)(X)
    np.testing.assert_allclose(single, ours, rtol=0, atol=1e-4 * np.abs(ours).max())

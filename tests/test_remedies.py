"""Remedies (issue 21, first slice): strict specs, and the oblique solver under a remedy against an independent
cvxpy program of the same objective, written out here from the definitions in docs/theory.md."""

from __future__ import annotations

import json
import math
import warnings

import cvxpy as cp
import numpy as np
import pytest
from scipy.special import gammaln

from pipeline.errors import InputError
from pipeline.theory.dispatch import solve
from pipeline.theory.objective import count_vectors
from pipeline.theory.problem import Problem
from pipeline.theory.remedies import NONE, parse_remedy


def test_specs_parse_strictly_and_print_back():
    r = parse_remedy(" reweight + logit_adjust(t = 0.25)+balanced_negatives ")
    assert r.spec == "reweight(gamma=1) + balanced_negatives + logit_adjust(t=0.25)"
    assert parse_remedy(r.spec) == r
    assert parse_remedy("class_tau(0.3)").spec == "class_tau(gamma=0.3)"
    assert parse_remedy("ldam(m=0.1234567891)").spec == "ldam(m=0.1234567891)"
    assert parse_remedy("none") is NONE and parse_remedy(None) is NONE and NONE.spec == "none"


@pytest.mark.parametrize(("spec", "says"), [
    ("focal(gamma=2)", "unknown remedy 'focal'"),
    ("reweight(gamma=-1)", "reweight's gamma finite and >= 0"),
    ("logit_adjust(t=nan)", "logit_adjust's t finite and >= 0"),
    ("ldam(m=-0.5)", "ldam's m finite and >= 0"),
    ("logit_adjust + ldam", "at most one shift"),
    ("reweight + reweight(gamma=0.5)", "reweight is given twice"),
    ("reweight(tau=1)", "its parameter is gamma, not tau"),
    ("none + reweight", "'none' alone"),
    ("balanced_negatives(1)", "balanced_negatives without a parameter"),
    ("", "'none', or terms joined by ' + '"),
])  # fmt: skip
def test_bad_remedies_are_one_clear_error(spec, says):
    with pytest.raises(InputError) as err:
        parse_remedy(spec)
    assert says in str(err.value) and err.value.field == "remedy" and "\n" not in str(err.value)


def test_class_tau_with_a_hinge_loss_is_refused():
    with pytest.raises(InputError, match="class_tau scales the temperature of an exponential phi"):
        Problem.two_group("triplet(margin=1)", 2, 2, 10.0, 4, remedy="class_tau(gamma=0.5)")


def test_the_remedys_parts_follow_their_definitions():
    """a, q, delta and tau / tau_c from the table of docs/theory.md, at p = (0.5, 0.3, 0.2)."""
    p = np.array([0.5, 0.3, 0.2])
    problem = Problem.create("infonce(tau=0.5)", p, 4, negatives="other",
                             remedy="reweight(gamma=0.5) + balanced_negatives + logit_adjust(t=2) + "
                                    "class_tau(gamma=1)")  # fmt: skip
    a = np.sqrt(p) / np.sqrt(p).sum()  # p_c p_c^(-1/2), normalised
    np.testing.assert_allclose(problem.anchor_weights(), a, rtol=1e-15)
    q = (np.ones((3, 3)) - np.eye(3)) / 2  # uniform over the other two classes
    np.testing.assert_allclose(problem.negative_distribution(), q, rtol=1e-15)
    delta, scale = problem.phi_affine()
    for c in range(3):
        for j in range(3):
            assert delta[c, j] == pytest.approx(2 * 0.5 * math.log(p[j] / p[c]), rel=1e-14)
            assert scale[c, j] == pytest.approx(0.5 / (0.5 * p[c] / 0.5), rel=1e-14)  # tau / tau_c
    ldam = Problem.create("triplet(margin=1)", p, 4, remedy="ldam(m=0.5)").phi_affine()
    np.testing.assert_allclose(ldam[0], np.repeat((0.5 * (0.2 / p) ** 0.25)[:, None], 3, axis=1), rtol=1e-15)
    assert ldam[1] is None


def reference_gram(problem: Problem) -> tuple[np.ndarray, float]:
    """The same objective as a cvxpy program, from the definitions alone: enumerate the count vectors n of
    the k negatives over the C classes, weigh anchor c by a_c Mult(n; k, q^(c)), and pay psi(rho sum_j n_j
    phi(scale_cj (G_cj - 1 + delta_cj))). Clarabel at tolerances 1e-12."""
    C, k, loss = problem.C, int(problem.k), problem.loss
    a, q = problem.anchor_weights(), problem.negative_distribution()
    delta, scale = problem.phi_affine()
    delta = np.zeros((C, C)) if delta is None else delta
    scale = np.ones((C, C)) if scale is None else scale
    rho = 1.0 if problem.reduction == "sum" else 1.0 / k
    G = cp.Variable((C, C), symmetric=True)
    terms = []
    N = count_vectors(k, C)
    for c in range(C):
        z = cp.multiply(scale[c], G[c, :] - 1 + delta[c])  # (C,): phi's argument against each class
        for n in N:
            if any(n_j and q[c, j] == 0 for j, n_j in enumerate(n)):
                continue  # a negative of a class never drawn (`other`: the anchor's own)
            log_mult = gammaln(k + 1) - gammaln(n + 1).sum() + sum(n_j * math.log(q[c, j]) for j, n_j in
                                                                    enumerate(n) if n_j)  # fmt: skip
            weight = a[c] * math.exp(log_mult)
            used = [j for j in range(C) if n[j]]
            if loss.name == "infonce":  # log(1 + rho sum_j n_j exp(z_j / tau))
                parts = [cp.Constant(0.0)] + [z[j] / loss.param + math.log(rho * n[j]) for j in used]
                terms.append(weight * cp.log_sum_exp(cp.hstack(parts)))
            elif loss.name == "sumexp":
                terms.append(weight * rho * sum(n[j] * cp.exp(z[j] / loss.param) for j in used))
            else:  # squared_hinge
                terms.append(weight * rho * sum(n[j] * cp.square(cp.pos(z[j] + loss.param)) for j in used))
    program = cp.Problem(cp.Minimize(cp.sum(cp.hstack(terms))), [G >> 0, cp.diag(G) == 1])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Solution may be inaccurate")
        program.solve(solver="CLARABEL", tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12, tol_ktratio=1e-10,
                      max_iter=500)  # fmt: skip
    # Clarabel often stops just short of 1e-12 ("optimal_inaccurate"); the comparison below is the judge
    assert program.status in ("optimal", "optimal_inaccurate"), program.status
    return np.asarray(G.value), float(program.value)


REMEDIES = ["reweight(gamma=1)", "reweight(gamma=0.5)", "balanced_negatives", "logit_adjust(t=1)", "ldam(m=0.5)",
            "class_tau(gamma=0.5)", "reweight(gamma=1) + logit_adjust(t=0.5)", "balanced_negatives + ldam(m=0.3)",
            "reweight(gamma=0.5) + balanced_negatives + class_tau(gamma=1)",
            "reweight(gamma=0.3) + balanced_negatives + logit_adjust(t=1) + class_tau(gamma=0.5)"]  # fmt: skip
# imbalance the generic SDP solver resolves: its tolerance is relative to the largest terms, and the smallest
# classes' entries weigh ~(p_min / p_max)^2 (docs/theory.md, numerical traps)
PROFILES = ["step(K_A=2, K_B=2, R=10)", "step(K_A=1, K_B=2, R=5)", "exp(C=4, rho=10)", "exp(C=5, rho=20)"]


@pytest.mark.parametrize("case", range(24))
def test_solves_under_a_remedy_equal_an_independent_cvxpy_program(case):
    """24 seeded cases: each remedy alone and combined, both samplings and reductions, step and exp
    profiles, k <= 4. Every Gram entry agrees to 1e-6 and the certificate is <= 1e-9 relative, for the oblique
    solver and (step profiles) the group reduction."""
    rng = np.random.default_rng(case)
    remedy = REMEDIES[case % len(REMEDIES)]
    losses = ["infonce(tau=0.5)", "infonce(tau=1)", "sumexp(tau=1)"]
    if "class_tau" not in remedy:
        losses.append("squared_hinge(margin=2.5)")  # every term active: a unique optimum (margin 1 is flat at 0)
    loss = losses[rng.integers(len(losses))]
    problem = Problem.from_profile(loss, PROFILES[case % len(PROFILES)], int(rng.integers(1, 5)),
                                   negatives=["marginal", "other"][case % 2],
                                   reduction=["sum", "mean"][(case // 2) % 2], remedy=remedy)  # fmt: skip
    G_ref, value_ref = reference_gram(problem)
    solvers = ["oblique", "symmetric"] if problem.two_groups() is not None else ["oblique"]
    for solver in solvers:  # one vector per class; and the group reduction where the classes form two groups
        solution = solve(problem, solver)
        assert solution.status == "optimal" and solution.gap_rel <= 1e-9, (solver, solution.message)
        np.testing.assert_allclose(solution.G, G_ref, atol=1e-6, err_msg=f"{solver} {problem.describe()}")
        assert solution.objective == pytest.approx(value_ref, rel=1e-8, abs=1e-10)


def test_remedies_are_refused_by_the_solvers_that_do_not_take_them_yet():
    problem = Problem.two_group("infonce(tau=1)", 2, 2, 10.0, 4, remedy="reweight(gamma=1)")
    with pytest.raises(InputError, match="remedies are solved by 'oblique', 'symmetric' or 'rank'"):
        solve(problem, "full")  # the cvxpy program: phi_cj is not written as its atoms
    hinge = Problem.two_group("triplet(margin=1)", 2, 2, 10.0, 4, remedy="ldam(m=0.5)")
    with pytest.raises(InputError, match="with a smooth loss"):
        solve(hinge)


@pytest.mark.parametrize("remedy", ["logit_adjust(t=1) + class_tau(gamma=0.5)", "reweight(gamma=1) + ldam(m=0.5)",
                                    "balanced_negatives + logit_adjust(t=0.5)"])  # fmt: skip
def test_the_transform_and_the_enumeration_agree_under_a_remedy(remedy):
    """Two exact routes of the expectation (the count vectors, the one-dimensional transform) on the same
    remedied objective at k = 12, and the gradient against central differences."""
    from pipeline.theory.objective import class_objective

    rng = np.random.default_rng(7)
    V = rng.normal(size=(5, 5))
    V /= np.linalg.norm(V, axis=0)
    G = V.T @ V
    values = {}
    for method in ("enumerate", "transform"):
        problem = Problem.from_profile("infonce(tau=0.5)", "exp(C=5, rho=30)", 12, negatives="other",
                                       expectation=method, remedy=remedy)  # fmt: skip
        values[method], D = class_objective(problem, G)
    assert values["transform"] == pytest.approx(values["enumerate"], rel=1e-12)
    E = np.zeros((5, 5))
    E[1, 3] = 1.0  # one entry of row (anchor) 1
    h = 1e-6
    numeric = (class_objective(problem, G + h * E)[0] - class_objective(problem, G - h * E)[0]) / (2 * h)
    assert D[1, 3] == pytest.approx(numeric, rel=1e-6)


@pytest.mark.parametrize("k", [64, 4096, math.inf])
def test_remedies_are_certified_at_large_k_and_k_inf(k):
    problem = Problem.from_profile("infonce(tau=0.5)", "exp(C=10, rho=100)", k,
                                   remedy="reweight(gamma=0.5) + logit_adjust(t=1)")  # fmt: skip
    solution = solve(problem)
    assert solution.status == "optimal" and solution.gap_rel <= 1e-9, solution.message


def test_solve_takes_a_remedy_and_echoes_it(capsys):
    from pipeline.cli import main

    args = ["solve", "--loss", "infonce(tau=0.5)", "--profile", "step(K_A=2, K_B=2, R=100)", "--k", "4"]
    assert main([*args, "--remedy", "class_tau", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["remedy"] == "class_tau(gamma=0.5)" and out["solver"] == "symmetric" and out["status"] == "optimal"
    assert out["collapsed"] is False and out["c"] < 0.8  # the plain loss collapses here (R* = 64 at k = 4)
    assert main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["remedy"] == "none"
    assert main([*args, "--remedy", "ldam(m=0.1) + logit_adjust"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("clphase solve: error: invalid remedy: 'ldam(m=0.1) + logit_adjust'")


TWO_GROUP_REMEDIES = ["reweight(gamma=1)", "reweight(gamma=0.5)", "balanced_negatives", "logit_adjust(t=1)",
                      "ldam(m=0.5)", "class_tau(gamma=0.5)", "reweight(gamma=1) + logit_adjust(t=0.5)"]  # fmt: skip


@pytest.mark.parametrize("remedy", TWO_GROUP_REMEDIES)
@pytest.mark.parametrize(("negatives", "reduction", "k"), [("marginal", "sum", 16), ("other", "mean", 4096),
                                                           ("marginal", "mean", math.inf)])  # fmt: skip
def test_the_group_reduction_under_a_remedy_equals_the_oblique_solver(remedy, negatives, reduction, k):
    """Two routes: the two-group reduction (the remedy's phi_cj per block pair) and one vector per class; and
    the c = 1 criterion's verdict agrees with the unrestricted c at R = 3 and 3000."""
    for R in (3.0, 3000.0):
        problem = Problem.two_group("infonce(tau=0.5)", 2, 3, R, k, negatives, reduction, remedy=remedy)
        grouped, free = solve(problem, "symmetric"), solve(problem, "oblique")
        assert grouped.status == free.status == "optimal", (grouped.message, free.message)
        np.testing.assert_allclose(grouped.G, free.G, atol=1e-7)
        assert grouped.collapsed is not None and grouped.collapsed == (free.c > 1 - 1e-9)


@pytest.mark.parametrize("remedy", TWO_GROUP_REMEDIES[:5] + TWO_GROUP_REMEDIES[6:])
@pytest.mark.parametrize("k", [4, 65536, math.inf])
def test_R_star_under_a_remedy_is_confirmed_by_unrestricted_solves(remedy, k):
    """R* from the criterion's sign change; the oblique solver (no symmetry assumed) finds the minorities
    apart at R*(1 - 1e-3) and merged at R*(1 + 1e-3)."""
    from pipeline.theory.threshold import minority_threshold

    result = minority_threshold("infonce(tau=0.5)", 2, 2, k, remedy=remedy)
    assert result.status == "optimal" and math.isfinite(result.R_star) and result.remedy.spec == remedy
    below, above = (solve(Problem.two_group("infonce(tau=0.5)", 2, 2, result.R_star * f, k, remedy=remedy), "oblique")
                    for f in (1 - 1e-3, 1 + 1e-3))  # fmt: skip
    assert below.c < 1 - 1e-5 and below.gap_rel <= 1e-9
    assert above.c > 1 - 1e-9 and above.gap_rel <= 1e-9


def test_a_remedy_that_keeps_minorities_apart_up_to_R_max_is_beyond_not_never(capsys):
    """class_tau keeps the two minorities apart at every R scanned; without the R -> inf limit under a remedy
    that is R* > 1e12, undecided beyond (status ``beyond``), not R* = inf."""
    from pipeline.cli import main
    from pipeline.theory.threshold import minority_threshold

    result = minority_threshold("infonce(tau=0.5)", 2, 2, 16, remedy="class_tau(gamma=0.5)")
    assert result.status == "beyond" and result.bracket[0] == pytest.approx(1e12)
    assert main(["threshold", "--loss", "infonce(tau=0.5)", "--profile", "step(K_A=2, K_B=2)", "--k", "16",
                 "--remedy", "class_tau", "--json"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert out["remedy"] == "class_tau(gamma=0.5)" and out["status"] == "beyond" and out["R_star"] == "inf"


@pytest.mark.parametrize("remedy", ["reweight(gamma=1)", "balanced_negatives", "logit_adjust(t=1)", "ldam(m=0.5)",
                                    "class_tau(gamma=0.5)"])  # fmt: skip
@pytest.mark.parametrize("R", [5.0, 1000.0])
def test_the_exact_sample_level_loss_finds_class_collapse_under_each_remedy(remedy, R):
    """Class collapse is proved for the plain family only. Under each remedy the exact full-batch UFM (2
    samples a class, every pair and negative integrated exactly), from two random starts, puts every sample
    on its class vector, and those vectors are the class-level optimum: the program solve certifies
    describes the remedy."""
    from pipeline.metrics import class_mean_gram, within_class
    from pipeline.train.exact_ufm import fit_exact

    problem = Problem.two_group("infonce(tau=1)", 2, 2, R, 2, remedy=remedy)
    theory = solve(problem)
    for seed in (0, 1):
        fit = fit_exact("infonce(tau=1)", problem.p, 2, 2, 4, seed, remedy=remedy)
        assert within_class(fit.features, fit.labels, 4).spread <= 1e-9  # every sample on its class vector
        assert fit.grad_norm <= 1e-7  # stationary, relative to the smallest anchor weight
        np.testing.assert_allclose(class_mean_gram(fit.features, fit.labels, 4), theory.G, atol=1e-6)


@pytest.mark.parametrize("remedy", ["logit_adjust(t=1)", "ldam(m=0.5)", "reweight(gamma=0.5) + logit_adjust(t=0.5)"])
def test_cascade_onsets_under_a_remedy_are_confirmed_by_unrestricted_solves(remedy, capsys):
    """exp(C = 4) at k = 16: every onset rho*_m under the remedy is decided, and the oblique solver finds the m
    smallest classes apart at rho*(1 - 1e-3) and on one direction at rho*(1 + 1e-3)."""
    from pipeline.cli import main

    assert main(["threshold", "--loss", "infonce(tau=0.5)", "--profile", "exp(C=4)", "--k", "16", "--remedy", remedy,
                 "--json"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert out["remedy"] == remedy and [o["status"] for o in out["onsets"]] == ["optimal", "optimal"]
    for o in out["onsets"]:
        m, rho_star = o["m"], o["rho_star"]
        tails = []
        for f in (1 - 1e-3, 1 + 1e-3):
            s = solve(Problem.from_profile("infonce(tau=0.5)", f"exp(C=4, rho={rho_star * f})", 16, remedy=remedy),
                      "oblique")  # fmt: skip
            assert s.status == "optimal" and s.gap_rel <= 1e-9
            tails.append(s.G[4 - m:, 4 - m:].min())  # the smallest cosine among the m smallest classes
        assert tails[0] < 1 - 5e-9 and tails[1] > 1 - 1e-10, (m, rho_star, tails)

"""Thresholds R*, checked by a second route: the solver-independent certificate on the full G."""

import math

import numpy as np
import pytest

from pipeline.errors import InputError
from pipeline.theory.dispatch import solve
from pipeline.theory.objective import certificate
from pipeline.theory.problem import Problem
from pipeline.theory.symmetric import GroupModel, _TwoGroup
from pipeline.theory.threshold import collapse_criterion, criterion_with_error, minority_threshold

CASES = [(1, 2), (2, 2), (2, 3), (3, 2), (4, 4)]


def collapsed_geometry(problem: Problem) -> np.ndarray:
    """Best G with the minority means merged (c = 1), majority cosine optimised."""
    model = GroupModel.from_problem(problem)
    reduced = _TwoGroup(model)
    v = math.sqrt(reduced.K_B)
    return model.gram(reduced.S(reduced.u_star(v), v))


@pytest.mark.parametrize("tau", [0.5, 1.0])
@pytest.mark.parametrize("k", [1, 4, 16])
@pytest.mark.parametrize(("n_major", "n_minor"), CASES)
def test_threshold_second_route(tau, k, n_major, n_minor):
    loss = f"infonce(tau={tau})"
    result = minority_threshold(loss, n_major, n_minor, k)
    if math.isinf(result.R_star):
        assert result.criterion_limit > 0
        for R in (1e3, 1e6, 1e9):  # c < 1 all the way, and merging the minorities is not optimal
            problem = Problem.two_group(loss, n_major, n_minor, R, k)
            solution = solve(problem, "symmetric")
            assert not solution.collapsed and solution.c < 1
            _, gap = certificate(problem, collapsed_geometry(problem))
            assert gap / problem.p.min() ** 2 > 1e-6
        return
    below = Problem.two_group(loss, n_major, n_minor, result.R_star * (1 - 1e-3), k)
    above = Problem.two_group(loss, n_major, n_minor, result.R_star * (1 + 1e-3), k)
    s_below, s_above = solve(below, "symmetric"), solve(above, "symmetric")
    assert s_below.c < 1 - 1e-7 and not s_below.collapsed
    assert s_above.c == pytest.approx(1.0, abs=1e-12) and s_above.collapsed
    # Second route: the certificate of the full C x C problem (no group reduction, no criterion).
    # Above R*, the merged geometry is optimal; below, it is not, while the c < 1 solution is.
    pm_below, pm_above = below.p.min() ** 2, above.p.min() ** 2
    assert certificate(above, collapsed_geometry(above))[1] / pm_above <= 1e-9
    assert certificate(below, collapsed_geometry(below))[1] / pm_below > 1e-8
    assert certificate(below, s_below.G)[1] / pm_below <= 1e-9


def test_limit_matches_the_criterion_at_huge_R():
    result = minority_threshold("infonce(tau=1)", 3, 2, 4)
    at_huge = collapse_criterion(Problem.two_group("infonce(tau=1)", 3, 2, 1e15, 4))
    assert result.criterion_limit == pytest.approx(at_huge, rel=1e-9)


def test_threshold_is_relative_accurate():
    result = minority_threshold("infonce(tau=1)", 2, 2, 4)
    lo, hi = result.R_star * (1 - 1e-7), result.R_star * (1 + 1e-7)
    assert collapse_criterion(Problem.two_group("infonce(tau=1)", 2, 2, lo, 4)) > 0
    assert collapse_criterion(Problem.two_group("infonce(tau=1)", 2, 2, hi, 4)) < 0


@pytest.mark.parametrize("negatives", ["marginal", "other"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_conventions_change_the_threshold_and_are_recorded(negatives, reduction):
    result = minority_threshold("infonce(tau=1)", 2, 2, 4, negatives, reduction)
    record = result.to_dict()
    assert record["negatives"] == negatives and record["reduction"] == reduction
    assert math.isfinite(result.R_star) and result.R_star > 1


def test_threshold_rejects_bad_input():
    with pytest.raises(InputError, match="n_minor"):
        minority_threshold("infonce(tau=1)", 2, 1, 4)
    with pytest.raises(InputError, match="differentiable"):
        minority_threshold("triplet(margin=1)", 2, 2, 4)
    with pytest.raises(InputError, match="k"):
        minority_threshold("infonce(tau=1)", 2, 2, 0)


def test_three_majority_classes_collapse_their_minorities_at_large_k_only():
    """infonce(tau=0.1), K_A = 3, K_B = 2: apart at every R up to k = 512, merged past R* from k = 1024 on, and
    R*(k) is not monotone (3.89e6 at k = 1024, 4.50e5 at 4096, 5.64e5 at 65536, R*_inf = 1.03e6). Second route:
    the criterion with the expectation enumerated over all binom(k + 2, 2) count vectors, not the transform."""
    loss = "infonce(tau=0.1)"
    R_star = {k: minority_threshold(loss, 3, 2, k).R_star for k in (256, 512, 1024, 4096, 65536, math.inf)}
    assert math.isinf(R_star[256]) and math.isinf(R_star[512])
    assert R_star[1024] == pytest.approx(3885862.614, rel=1e-9)
    assert R_star[4096] == pytest.approx(450050.7622, rel=1e-9)
    assert R_star[4096] < R_star[65536] < R_star[math.inf] < R_star[1024]  # not monotone in k

    def enumerated(R: float, k: int) -> tuple[float, float]:
        return criterion_with_error(Problem.two_group(loss, 3, 2, R, k, expectation="enumerate"))

    for R in (1e6, 1e9, 1e12):  # k = 256: repulsion wins at every R (g > 0 beyond its error)
        g, error = enumerated(R, 256)
        assert g > 1e3 * error
    below, above = enumerated(R_star[1024] * (1 - 1e-4), 1024), enumerated(R_star[1024] * (1 + 1e-4), 1024)
    assert below[0] > 10 * below[1] and above[0] < -10 * above[1]  # the sign change within 1e-4 of R*

"""One entry point for the theory: pick a solver, solve, attach the collapse criterion."""

from __future__ import annotations

import math

from pipeline.errors import InputError
from pipeline.theory.oblique import solve_oblique
from pipeline.theory.problem import Problem, check_int
from pipeline.theory.rank import solve_rank
from pipeline.theory.sdp import solve_full
from pipeline.theory.solution import REMEDY_SOLVERS, SOLVERS, Solution, SolverName
from pipeline.theory.symmetric import solve_symmetric
from pipeline.theory.threshold import criterion_with_error, decide_collapse

COLLAPSE_CHECK_TOL = 1e-6
# the group-reduced solver where it reduces: two proportion groups, or a few groups one of which
# has several classes; the oblique solver (one vector per class) otherwise, faster from 3 distinct
# proportions on (measured: exp(C=3..6) at k = 4..inf, 2-9 ms against 15-85 ms)
SYMMETRIC_MAX_GROUPS = 4


def choose_solver(problem: Problem, dim: int | None = None) -> str:
    """The solver ``auto`` picks for a problem (see :func:`solve`)."""
    _, K, _ = problem.groups()
    if dim is not None and dim < problem.C:
        return "rank"
    if not problem.remedy.is_none and not (problem.two_groups() is not None or len(K) <= 2):
        return "oblique"  # the group reduction takes a remedy for two proportion groups; the oblique for any
    if not problem.loss.smooth and len(K) > 2 and problem.two_groups() is None:
        return "full"
    if problem.two_groups() is not None or len(K) <= 2 or (len(K) <= SYMMETRIC_MAX_GROUPS and K.max() > 1):
        return "symmetric"
    return "oblique" if problem.loss.smooth else "full"


def solve(problem: Problem, solver: SolverName = "auto", dim: int | None = None, seed: int = 0) -> Solution:
    """Optimal class geometry at one point.

    Parameters
    ----------
    problem : Problem
    solver : {'auto', 'symmetric', 'full', 'rank', 'oblique'}
        ``auto`` (:func:`choose_solver`): ``rank`` when ``dim < C``; ``symmetric`` for two proportion
        groups or a few groups sharing classes; ``oblique`` (one vector per class) for many distinct
        proportions; ``full`` for the triplet loss with three or more proportion groups.
    dim : int, optional
        Embedding dimension d. ``full`` and ``symmetric`` need d >= C; ``rank`` handles any d.
    seed : int
        Seed of the ``rank`` restarts.

    Returns
    -------
    Solution
        With ``collapsed`` and ``criterion`` set from the optimality condition at c = 1 whenever
        the classes form a majority and a minority group with >= 2 minority classes.
    """
    if solver not in SOLVERS:
        raise InputError("solver", solver, f"one of {', '.join(SOLVERS)}")
    C = problem.C
    if dim is not None:
        dim = check_int("dim", dim, 1)
    if solver == "auto":
        solver = choose_solver(problem, dim)
    if not problem.remedy.is_none and (solver not in REMEDY_SOLVERS or not problem.loss.smooth):
        raise InputError("remedy", problem.remedy.spec, f"remedy 'none' for solver {solver!r} and loss "
                         f"{problem.loss.id}: remedies are solved by 'oblique', 'symmetric' or 'rank' (solver "
                         "'auto') with a smooth loss (infonce, sumexp, squared_hinge) so far")  # fmt: skip
    if solver == "oblique" and not problem.loss.smooth:
        raise InputError("solver", solver, f"'full' or 'auto' for {problem.loss.id} (oblique needs a smooth phi)")
    if solver in ("full", "symmetric", "oblique") and dim is not None and dim < C:
        raise InputError("dim", dim, f"dim >= C = {C} for solver {solver!r} (or solver 'rank' for d < C)")
    if solver == "full":
        solution = solve_full(problem, dim)
    elif solver == "symmetric":
        solution = solve_symmetric(problem, dim)
    elif solver == "oblique":
        solution = solve_oblique(problem, dim)
    else:
        rank_dim = C if dim is None else dim
        bound = solve(problem, "auto", None)
        solution = solve_rank(problem, rank_dim, bound.lower_bound, seed=seed, G_convex=bound.G)
    two = problem.two_groups()
    if math.isnan(solution.criterion) and two is not None and two[1] >= 2 and problem.loss.smooth:
        solution.criterion, solution.criterion_error = criterion_with_error(problem)
        solution.collapsed = decide_collapse(solution.criterion, solution.criterion_error)
    if solution.collapsed is None and not math.isnan(solution.criterion):
        note = (
            f"collapse undecided: |g/p_minor^2| = {abs(solution.criterion):.3g} is within its error bound "
            f"{solution.criterion_error:.3g}"
        )
        solution.message = "; ".join(filter(None, [solution.message, note]))
    if solution.collapsed is not None and two is not None and two[1] >= 2 and problem.loss.smooth:
        convex = solution.solver == "full" or solution.V.shape[0] >= C
        if convex and solution.collapsed and 1 - solution.c > COLLAPSE_CHECK_TOL:
            # near R* the objective is nearly flat in c: a generic solver can miss c = 1 by far more
            # than its certificate suggests, so say so rather than report a confident wrong c
            solution.status = "optimal_inaccurate"
            note = (
                f"c = {solution.c:.6f} disagrees with the optimality condition at c = 1 "
                f"(g/p_minor^2 = {solution.criterion:.3g} <= 0: collapse); use solver='symmetric'"
            )
            solution.message = "; ".join(filter(None, [solution.message, note]))
    return solution

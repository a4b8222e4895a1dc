"""The Python API: the theory at one point (:func:`solve`), a threshold or a cascade (:func:`threshold`).

Both take what the command line takes, as Python values or as the same strings, and return typed
results with ``.to_dict()`` (the JSON that ``clphase solve --json`` and ``threshold --json`` print).
Stores open with :func:`pipeline.open_results`; figures come from :mod:`pipeline.plots`.
"""

from __future__ import annotations

import numpy as np

from pipeline.errors import InputError
from pipeline.theory.cascade import CANDIDATE_TOL, Cascade, Directions, SplitTest, cascade, distinct_directions
from pipeline.theory.dispatch import solve as solve_problem
from pipeline.theory.losses import NEGATIVES, REDUCTIONS, Loss, check_option, parse_loss
from pipeline.theory.problem import Problem, check_int, check_k
from pipeline.theory.profiles import SCAN_AXIS, Exp, Profile, Step, parse_profile
from pipeline.theory.solution import SOLVERS, Solution
from pipeline.theory.threshold import Threshold, minority_threshold


def solve(loss: str | Loss, profile: str | Profile, k: int | float | str, *, negatives: str = "marginal",
          reduction: str = "sum", solver: str = "auto", dim: int | None = None, seed: int = 0,
          remedy: str | None = None) -> Solution:  # fmt: skip
    """Optimal class geometry at one point, certified, with its distinct directions.

    Parameters
    ----------
    loss : str or Loss
        A loss id, e.g. ``'infonce(tau=0.5)'`` (names: infonce, sumexp, triplet, squared_hinge).
    profile : str or Profile
        Class proportions with every parameter given: ``'step(K_A=2, K_B=2, R=100)'``,
        ``'exp(C=10, rho=100)'`` or ``'counts(cat=5000, dog=2997, emu=1796)'``.
    k : int, float('inf') or 'inf'
        Negatives per anchor; ``inf`` is the large-k limit.
    negatives : {'marginal', 'other'}
    reduction : {'sum', 'mean'}
    solver : {'auto', 'symmetric', 'full', 'rank', 'oblique'}
    dim : int, optional
        Embedding dimension d; below C the rank-d solver runs (a local optimum and the convex bound).
    seed : int
        Seed of the rank solver's restarts.
    remedy : str, optional
        A remedy against Minority Collapse, e.g. ``'reweight(gamma=1) + logit_adjust(t=1)'``
        (:mod:`pipeline.theory.remedies`; solved by the group reduction, the oblique solver or, for d < C, the
        rank solver, smooth losses; ``directions`` by the split test of the remedied objective, or its c = 1
        criterion).

    Returns
    -------
    Solution
        ``G`` (C, C) the Gram matrix of the class means, ``objective``, the certified ``gap``, ``status``,
        for two groups ``a``, ``b``, ``c`` and ``collapsed`` (from the c = 1 criterion), and ``directions``
        (how many distinct class directions, each merge decided; None for the rank solver and the hinge).

    Examples
    --------
    >>> s = solve("infonce(tau=0.5)", "step(K_A=2, K_B=2, R=1000)", k=4)
    >>> s.collapsed, s.directions.count
    (True, 3)
    """
    loss = parse_loss(loss)
    profile = parse_profile(profile)
    scan = SCAN_AXIS.get(profile.kind)
    if scan is not None and getattr(profile, scan) is None:
        raise InputError("profile", profile.spec, f"a value for {scan} (solve takes one point; threshold scans "
                         f"{scan})")  # fmt: skip
    k = check_k(k)
    check_option("negatives", negatives, NEGATIVES)
    check_option("reduction", reduction, REDUCTIONS)
    check_option("solver", solver, SOLVERS)
    dim = None if dim is None else check_int("dim", dim, 1)
    seed = check_int("seed", seed, 0)
    problem = Problem.from_profile(loss, profile, k, negatives, reduction, remedy=remedy)
    solution = solve_problem(problem, solver, dim, seed)
    solution.classes = profile.labels()
    if solution.status != "error" and solution.solver != "rank" and problem.loss.smooth:
        solution.directions = directions(problem, solution)
    return solution


def directions(problem: Problem, solution: Solution) -> Directions:
    """The distinct class directions of an optimum, each merge decided by the finer of the two tests.

    The split test (:func:`~pipeline.theory.cascade.distinct_directions`) decides merges for any
    proportions, but only where the merged geometry is certified to 1e-3 of the weight of the terms at
    stake, p_min^2: past R ~ 1e6 float64 cannot certify that. For two groups the c = 1 criterion
    computes those terms directly at the scale p_minor^2 (error ~1e-13 of them), so where it decides and
    the majority classes are apart, it decides the minority merge.
    """
    two = problem.two_groups()
    if two is not None and solution.collapsed is not None and (two[0] == 1 or solution.a < 1 - CANDIDATE_TOL):
        K_A, K_B, _ = two
        minority = tuple(range(K_A, K_A + K_B))
        test = SplitTest(minority, -solution.criterion, solution.criterion_error, solution.collapsed)
        label = [*range(K_A), *([K_A] * K_B if solution.collapsed else range(K_A, K_A + K_B))]
        count = K_A + (1 if solution.collapsed else K_B)
        return Directions(count, np.array(label), [test] if solution.collapsed else [], solution.G,
                          solution.objective, solution.gap, decided_by="criterion")  # fmt: skip
    return distinct_directions(problem, solution.G)


def threshold(loss: str | Loss, profile: str | Profile, k: int | float | str, *, negatives: str = "marginal",
              reduction: str = "sum", remedy: str | None = None) -> Threshold | Cascade:  # fmt: skip
    """Where minority classes merge: R* of a step profile, or the cascade onsets of an exp profile.

    Parameters
    ----------
    loss : str or Loss
        A differentiable loss id (infonce, sumexp, squared_hinge).
    profile : str or Profile
        The profile without the axis to scan: ``'step(K_A=2, K_B=2)'`` gives R*, the smallest
        R = p_major / p_minor at which the K_B >= 2 minority classes share one direction;
        ``'exp(C=4)'`` gives rho*_2, ..., rho*_{C-1}, where the m smallest classes first share one.
    k, negatives, reduction
        As for :func:`solve`.
    remedy : str, optional
        As for :func:`solve`. R* has status ``beyond`` where no sign change is found up to R = 1e12 (the
        criterion's R -> inf limit is not derived under a remedy); each cascade onset is scanned from rho = 1.

    Returns
    -------
    Threshold or Cascade
        ``R_star`` (inf where the minorities stay apart at every R) with ``status`` and the criterion's
        limit; or ``onsets``, a list of ``Onset(m, rho_star, status, ...)``.

    Examples
    --------
    >>> round(threshold("infonce(tau=0.5)", "step(K_A=2, K_B=2)", k=4).R_star, 2)
    64.09
    """
    loss = parse_loss(loss)
    profile = parse_profile(profile)
    k = check_k(k)
    check_option("negatives", negatives, NEGATIVES)
    check_option("reduction", reduction, REDUCTIONS)
    if isinstance(profile, Exp):
        if profile.rho is not None:
            raise InputError("profile", profile.spec, f"exp(C={profile.C}) without rho: the threshold scans it")
        return cascade(loss, profile.C, k, negatives, reduction, remedy=remedy)
    if not isinstance(profile, Step):
        raise InputError("profile", profile.spec, "step(K_A=.., K_B=..) or exp(C=..): a counts profile has no axis "
                         "to scan (use solve)")  # fmt: skip
    if profile.R is not None:
        raise InputError("profile", profile.spec, f"step(K_A={profile.K_A}, K_B={profile.K_B}) without R: "
                         "the threshold scans it")  # fmt: skip
    n_minor = check_int("n_minor", profile.K_B, 2)
    return minority_threshold(loss, profile.K_A, n_minor, k, negatives, reduction, remedy=remedy)

"""Benchmarks: the expectation at any k (transform vs enumeration), the symmetric solver against a
fresh cvxpy build + solve per point, and the full solver's reach.

Run by hand: ``python benchmarks/bench_solvers.py`` (about 15 minutes on 2 cores; ``--any-k`` for the
first section alone, ~3 minutes). Prints, in one run:

1. per k in {1, 16, 256, 1024, 4096, 65536, inf}: the symmetric solver's median time per two-group
   point and the time per threshold R*, with the enumeration of count vectors (each call capped at
   ``ENUM_LIMIT_S`` in a subprocess) and with the transform, their ratio and the largest relative
   objective difference where both ran (targets: <= 1 ms a point, >= 1e4x at k = 1024, <= 0.5 s a
   threshold);
2. per k, time per point of the symmetric solver and of the naive full SDP with their relative
   objective difference (target: >= 300x faster at <= 1e-8);
3. the largest (C, k) that the cached ``full`` solver finishes within 60 s;
4. long-tailed profiles exp(C, rho = 100) with the oblique solver: seconds per certified point up to
   C = 100 and k = 65536 (targets: C = 10 at k = 4096 in <= 2 s, C = 100 at k = 256 in <= 60 s), and
   main's route at C = 10, k = 8 in the same run (``--profiles`` for this section alone, ~2 minutes);
5. under each remedy: a two-group point, R* at k = 4, 65536 and inf, exp(C = 10) (targets 5 ms, 1 s,
   0.1 s; ``--remedies`` alone, ~1 minute);
6. only with ``--large``: exp(C, rho = 100) at C = 100, 300 and 1000, k = 256 and inf, in seconds and per class
   pair, each case capped at ``--limit`` seconds, and with ``--against PATH`` the same cases in a checkout of
   another revision, for the ratio (targets: C = 1000 certified in 60 s, C = 100 in 1 s).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from pipeline.theory.dispatch import solve
from pipeline.theory.problem import Problem

HERE = Path(__file__).resolve().parent
LOSS = "infonce(tau=0.5)"
N_MAJOR, N_MINOR = 2, 2
GRID = {1: [2, 10, 100], 2: [2, 10, 100], 4: [2, 10, 100], 8: [2, 10, 100], 16: [2, 10], 32: [10]}
FULL_LIMIT_S = 60
NAIVE_LIMIT_S = 600  # per naive point; beyond it the point counts as this long (a lower bound)


def naive_in_subprocess(R: float, k: int) -> tuple[float, float] | None:
    """(objective, build + solve seconds) of the naive route in a fresh process; None past NAIVE_LIMIT_S."""
    code = (
        f"import sys, warnings; warnings.simplefilter('ignore'); sys.path.insert(0, {str(HERE)!r}); "
        "from naive import naive_full; from pipeline.theory.problem import Problem; "
        "import time; t = time.perf_counter(); "
        f"v = naive_full(Problem.two_group('{LOSS}', {N_MAJOR}, {N_MINOR}, {R}, {k}))[0]; "
        "print(v, time.perf_counter() - t)"
    )
    out = run_python(code, NAIVE_LIMIT_S)
    return None if out is None else tuple(map(float, out.split()[-2:]))


def run_python(code: str, limit_s: float, env: dict[str, str] | None = None, cwd: str | None = None) -> str | None:
    """stdout of ``python -c code`` in a fresh process; None when it fails or runs past ``limit_s``. ``python -c``
    puts its working directory first on sys.path: to import another checkout, run there (``cwd``)."""
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=limit_s,
                             env=None if env is None else {**os.environ, **env}, cwd=cwd)  # fmt: skip
    except subprocess.TimeoutExpired:
        return None
    return out.stdout if out.returncode == 0 else None


def compare() -> None:
    print(f"# symmetric vs naive (fresh cvxpy build + solve of the full SDP), {LOSS}, K_A={N_MAJOR} K_B={N_MINOR}")
    print(f"{'k':>3} {'points':>6} {'naive s/pt':>11} {'symm s/pt':>10} {'speedup':>9} {'max rel dobj':>13}")
    total_naive = total_sym = 0.0
    worst = 0.0
    for k, Rs in GRID.items():
        t_naive = t_sym = 0.0
        diff = 0.0
        capped = False
        for R in Rs:
            problem = Problem.two_group(LOSS, N_MAJOR, N_MINOR, R, k)
            naive = naive_in_subprocess(R, k)
            t_naive += naive[1] if naive is not None else NAIVE_LIMIT_S
            start = time.perf_counter()
            solution = solve(problem, "symmetric")
            t_sym += time.perf_counter() - start
            if naive is None:
                capped = True
                continue
            diff = max(diff, abs(naive[0] - solution.objective) / abs(solution.objective))
        n = len(Rs)
        mark = ">" if capped else " "  # a naive point ran past NAIVE_LIMIT_S: its time is a lower bound
        print(
            f"{k:>3} {n:>6} {mark}{t_naive / n:>10.4f} {t_sym / n:>10.5f} {mark}{t_naive / t_sym:>7.0f}x {diff:>13.1e}",
            flush=True,
        )
        total_naive, total_sym, worst = total_naive + t_naive, total_sym + t_sym, max(worst, diff)
    n_points = sum(map(len, GRID.values()))
    print(
        f"all {n_points} points: naive {total_naive / n_points:.3f} s/pt, symmetric {total_sym / n_points:.5f} s/pt, "
        f"speedup {total_naive / total_sym:.0f}x (target >= 300x), max relative objective difference {worst:.1e} "
        "(target <= 1e-8)"
    )


ANY_K = (1, 16, 256, 1024, 4096, 65536, math.inf)
ANY_K_R = (3.0, 30.0, 100.0, 1e4)  # below and above R* at every k
ENUM_LIMIT_S = 60  # per enumerated run of the points or threshold; beyond it the enumeration counts as not run


def _timed(code: str, limit_s: float, checkout: str | None = None) -> list[float] | None:
    """Numbers printed by ``code`` in a fresh process (of ``checkout``'s package where given), None when it fails
    or runs past ``limit_s``."""
    env = None if checkout is None else {"PYTHONPATH": checkout}
    out = run_python("import math, time; from pipeline.theory.problem import Problem; " + code, limit_s, env,
                     cwd=checkout or str(HERE.parent))  # fmt: skip
    return None if out is None else [float(x) for x in out.split()]


def _cell(x: list[float] | None, width: int) -> str:
    return f"{'-' if x is None else f'{x[0]:.4g}':>{width}}"


def any_k() -> None:
    """Section 1: one two-group point and one threshold per k, enumeration against transform."""
    print(f"# expectation over k negatives: enumeration vs transform, symmetric solver, {LOSS}, "
          f"K_A={N_MAJOR} K_B={N_MINOR}, R in {list(ANY_K_R)}")  # fmt: skip
    print(f"{'k':>6} {'enum ms/pt':>11} {'trans ms/pt':>12} {'ratio':>9} {'max rel dobj':>13} "
          f"{'enum s/thr':>11} {'trans s/thr':>12} {'ratio':>8}  R*")  # fmt: skip
    for k in ANY_K:
        k_text = "math.inf" if math.isinf(k) else str(k)
        point = (
            "from pipeline.theory.symmetric import solve_symmetric; import statistics; ts, objs = [], []\n"
            f"for R in {list(ANY_K_R)}:\n"
            f"    p = Problem.two_group('{LOSS}', {N_MAJOR}, {N_MINOR}, R, {k_text}, expectation='{{e}}')\n"
            "    for _ in range({reps}):\n"
            "        t = time.perf_counter(); s = solve_symmetric(p); ts.append(time.perf_counter() - t)\n"
            "    objs.append(s.objective)\n"
            "print(statistics.median(ts) * 1e3, *objs)"
        )
        thr = (
            "from pipeline.theory.threshold import minority_threshold; t = time.perf_counter(); "
            f"r = minority_threshold('{LOSS}', {N_MAJOR}, {N_MINOR}, {k_text}, expectation='{{e}}'); "
            "print(time.perf_counter() - t, r.R_star)"
        )
        route = "limit" if math.isinf(k) else "transform"
        fast = _timed(point.format(e="transform" if route == "transform" else "auto", reps=20), ENUM_LIMIT_S)
        fast_thr = _timed(thr.format(e="transform" if route == "transform" else "auto"), ENUM_LIMIT_S)
        slow = slow_thr = None
        if route == "transform":
            slow = _timed(point.format(e="enumerate", reps=1), ENUM_LIMIT_S)
            slow_thr = _timed(thr.format(e="enumerate"), ENUM_LIMIT_S)
        diffs = [] if slow is None else [abs(a - b) / abs(b) for a, b in zip(slow[1:], fast[1:], strict=True)]
        diff = f"{max(diffs):.1e}" if diffs else ""

        ratio = "" if slow is None else f"{slow[0] / fast[0]:.3g}x"
        ratio_thr = "" if slow_thr is None else f"{slow_thr[0] / fast_thr[0]:.3g}x"
        print(f"{'inf' if math.isinf(k) else k:>6} {_cell(slow, 11)} {_cell(fast, 12)} {ratio:>9} {diff:>13} "
              f"{_cell(slow_thr, 11)} {_cell(fast_thr, 12)} {ratio_thr:>8}  {fast_thr[1]:.8g}", flush=True)  # fmt: skip
    print(f"('-': the enumeration did not finish within {ENUM_LIMIT_S} s a call; k = inf is the closed-form "
          "limit, which has no enumeration; at large k the objective difference is the float64 enumeration's own "
          "round-off, eps k log k in its log-gamma weights: tests/test_any_k.py checks the transform against a "
          "30-digit enumeration)")  # fmt: skip


def full_fits(C: int, k: int) -> float | None:
    """Wall time of one cached-build full solve in a subprocess, None past FULL_LIMIT_S."""
    code = (
        "import time; from pipeline.theory.problem import Problem; from pipeline.theory.dispatch import solve; "
        f"p = Problem.two_group('{LOSS}', {C // 2}, {C - C // 2}, 10.0, {k}); t = time.perf_counter(); "
        "s = solve(p, 'full'); print(time.perf_counter() - t, s.status)"
    )
    out = run_python(code, FULL_LIMIT_S)
    return None if out is None else float(out.split()[0])


def full_reach() -> None:
    print(f"\n# largest k per C that the full solver finishes within {FULL_LIMIT_S} s ({LOSS})")
    for C in (4, 6, 8, 10):
        best = None
        for k in (1, 2, 4, 8, 16, 32):
            wall = full_fits(C, k)
            if wall is None:
                break
            best = (k, wall)
        print(
            f"C={C:>2}: largest k = {best[0] if best else '-'} ({best[1]:.1f} s)" if best else f"C={C}: none",
            flush=True,
        )


PROFILE_CASES = [("exp(C=10, rho=100)", 8), ("exp(C=10, rho=100)", 4096), ("exp(C=10, rho=100)", math.inf),
                 ("exp(C=30, rho=100)", 1024), ("exp(C=100, rho=100)", 256), ("exp(C=100, rho=100)", 65536)]
MAIN_LIMIT_S = 600  # main's route (the barrier over the groups, the enumeration) capped per call


def profiles() -> None:
    """Section 4: certified long-tailed points with the oblique solver, against main's route at C = 10, k = 8."""
    print(f"\n# long-tailed profiles, {LOSS}: oblique solver (certified) and main's route (barrier over the groups"
          " with the enumeration, as main ran it)")  # fmt: skip
    print(f"{'profile':>22} {'k':>6} {'oblique s':>10} {'status':>9} {'gap_rel':>9} {'gap_minor':>10} "
          f"{'main s':>8} {'ratio':>8} {'max |dG|':>9}")  # fmt: skip
    for spec, k in PROFILE_CASES:
        k_text = "math.inf" if math.isinf(k) else str(k)
        code = (
            "from pipeline.theory.dispatch import solve; import json\n"
            f"solve(Problem.from_profile('{LOSS}', 'exp(C=3, rho=2)', 2), '{{solver}}')  # imports, warm\n"
            f"p = Problem.from_profile('{LOSS}', '{spec}', {k_text}, expectation='{{e}}')\n"
            "t = time.perf_counter(); s = solve(p, '{solver}'); t = time.perf_counter() - t\n"
            "print(t, s.gap_rel, s.gap_minor, int(s.status == 'optimal'), *s.G.ravel())"
        )
        ours = _timed(code.format(e="auto", solver="oblique"), MAIN_LIMIT_S)
        main_route = None
        if spec.startswith("exp(C=10") and k == 8:
            main_route = _timed(code.format(e="enumerate", solver="symmetric"), MAIN_LIMIT_S)
        ratio = "" if main_route is None else f"{main_route[0] / ours[0]:.3g}x"
        dG = "" if main_route is None else f"{np.abs(np.subtract(ours[4:], main_route[4:])).max():.1e}"
        status = "optimal" if ours[3] else "inexact"
        print(f"{spec:>22} {'inf' if math.isinf(k) else k:>6} {ours[0]:>10.3f} {status:>9} {ours[1]:>9.1e} "
              f"{ours[2]:>10.1e} {_cell(main_route, 8)} {ratio:>8} {dG:>9}", flush=True)  # fmt: skip


REMEDY_CASES = ["none", "reweight(gamma=1)", "balanced_negatives", "logit_adjust(t=1)", "ldam(m=0.5)",
                "class_tau(gamma=0.5)", "class_tau(gamma=1)",
                "reweight(gamma=0.5) + balanced_negatives + logit_adjust(t=1) + class_tau(gamma=1)"]


def remedies() -> None:
    """Section 5: under each remedy, the median time of a two-group point (the group reduction, R = 2, 10, 100),
    of R* at k = 4, 65536 and inf, and of exp(C=10, rho=100) at k = 16 (oblique); targets 5 ms, 1 s, 0.1 s."""
    from pipeline.theory.threshold import minority_threshold

    print(f"\n# remedies, {LOSS}, K_A = K_B = 2 (median of 5 runs; in-process, imports warm)")
    print(f"{'remedy':>45} {'point ms':>9} {'R* s (k=4, 65536, inf)':>24} {'exp(C=10) s':>12}")
    solve(Problem.two_group(LOSS, 2, 2, 10.0, 4, remedy="reweight"))  # warm

    def median(f) -> float:
        times = []
        for _ in range(5):
            start = time.perf_counter()
            f()
            times.append(time.perf_counter() - start)
        return float(np.median(times))

    def row(remedy: str) -> str:
        point = np.median([median(lambda R=R: solve(Problem.two_group(LOSS, 2, 2, R, 16, remedy=remedy)))
                           for R in (2.0, 10.0, 100.0)])  # fmt: skip
        thresholds = [median(lambda k=k: minority_threshold(LOSS, 2, 2, k, remedy=remedy))
                      for k in (4, 65536, math.inf)]  # fmt: skip
        exp = median(lambda: solve(Problem.from_profile(LOSS, "exp(C=10, rho=100)", 16, remedy=remedy)))
        return f"{remedy:>45} {point * 1e3:>9.2f} {'  '.join(f'{t:.3f}' for t in thresholds):>24} {exp:>12.3f}"

    for remedy in REMEDY_CASES:
        print(row(remedy), flush=True)


LARGE_CASES = [(100, 256), (100, math.inf), (300, 256), (300, math.inf), (1000, 256), (1000, math.inf)]


def large(limit_s: float, against: str | None, max_classes: int = 1000) -> None:
    """Section 6: exp(C, rho = 100) at C = 100, 300 and 1000, k = 256 and inf (issue 23's targets: C = 1000
    certified in 60 s, C = 100 in 1 s, a cost per class pair that does not grow with C), each in a fresh process
    capped at ``limit_s``; with ``against``, the same in that checkout (another revision) for the ratio."""
    print(f"\n# many classes, {LOSS}, exp(C, rho=100), oblique solver; each case in a fresh process, capped at "
          f"{limit_s:g} s{f'; against {against}' if against else ''}")  # fmt: skip
    print(f"{'C':>5} {'k':>5} {'s':>8} {'ms/pair':>8} {'status':>9} {'gap_rel':>8} {'peak MB':>8}"
          + (f" {'before s':>9} {'ratio':>7}" if against else ""))  # fmt: skip
    code = (
        "import resource; from pipeline.theory.oblique import solve_oblique\n"
        "solve_oblique(Problem.from_profile('{loss}', 'exp(C=4, rho=100)', 4))  # imports and caches, untimed\n"
        "p = Problem.from_profile('{loss}', 'exp(C={C}, rho=100)', {k})\n"
        "t = time.perf_counter(); s = solve_oblique(p); t = time.perf_counter() - t\n"
        "print(t, s.gap_rel, int(s.status == 'optimal'), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    for C, k in [case for case in LARGE_CASES if case[0] <= max_classes]:
        text = code.format(loss=LOSS, C=C, k="math.inf" if math.isinf(k) else k)
        ours = _timed(text, limit_s)
        before = _timed(text, limit_s, against) if against else None
        pairs = C * (C - 1) / 2
        row = f"{C:>5} {'inf' if math.isinf(k) else k:>5} "
        if ours is None:
            row += f"{'> ' + format(limit_s, 'g'):>8} {'':>8} {'not done':>9} {'':>8} {'':>8}"
        else:
            status = "optimal" if ours[2] else "inexact"
            row += f"{ours[0]:>8.2f} {ours[0] / pairs * 1e3:>8.4f} {status:>9} {ours[1]:>8.1e} {ours[3]:>8.0f}"
        if against:
            row += f" {_cell(before, 9)} {'' if ours is None or before is None else f'{before[0] / ours[0]:.3g}x':>7}"
        print(row, flush=True)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Without an option: all four "
                                     "sections, about 15 minutes on 2 cores.")  # fmt: skip
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--any-k", action="store_true", help="section 1 alone: the expectation at any k (~3 min)")
    only.add_argument("--profiles", action="store_true", help="section 4 alone: long-tailed profiles (~2 min)")
    only.add_argument("--remedies", action="store_true", help="section 5 alone: solves under remedies (~1 min)")
    only.add_argument("--large", action="store_true", help="section 6 alone: exp(C) up to C = 1000 (up to an hour)")
    parser.add_argument("--limit", type=float, default=600.0, help="section 6: seconds a case may take (600)")
    parser.add_argument("--against", metavar="PATH", help="section 6: also time a checkout of another revision")
    parser.add_argument("--max-classes", type=int, default=1000, metavar="C",
                        help="section 6: only the cases with at most C classes (1000)")  # fmt: skip
    args = parser.parse_args()
    np.seterr(all="ignore")
    if args.profiles:
        profiles()
        return
    if args.remedies:
        remedies()
        return
    if args.large:
        large(args.limit, args.against, args.max_classes)
        return
    any_k()
    if not args.any_k:
        compare()
        full_reach()
        profiles()
        remedies()


if __name__ == "__main__":
    main()

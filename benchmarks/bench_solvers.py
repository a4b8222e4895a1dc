"""Benchmark: the symmetric solver against a fresh cvxpy build + solve per point; full-solver reach.

Run by hand: ``python benchmarks/bench_solvers.py`` (about 10 minutes on 2 cores). Prints
per-k and overall time per point of both routes with their relative objective difference
(target: >= 300x faster at <= 1e-8), then the largest (C, k) that the cached ``full`` solver
finishes within 60 s.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from pipeline.problem import Problem
from pipeline.theory import solve

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
        "from naive import naive_full; from pipeline.problem import Problem; "
        "import time; t = time.perf_counter(); "
        f"v = naive_full(Problem.two_group('{LOSS}', {N_MAJOR}, {N_MINOR}, {R}, {k}))[0]; "
        "print(v, time.perf_counter() - t)"
    )
    out = run_python(code, NAIVE_LIMIT_S)
    return None if out is None else tuple(map(float, out.split()[-2:]))


def run_python(code: str, limit_s: float) -> str | None:
    """stdout of ``python -c code`` in a fresh process; None when it fails or runs past ``limit_s``."""
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=limit_s)
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


def full_fits(C: int, k: int) -> float | None:
    """Wall time of one cached-build full solve in a subprocess, None past FULL_LIMIT_S."""
    code = (
        "import time; from pipeline.problem import Problem; from pipeline.theory import solve; "
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


if __name__ == "__main__":
    np.seterr(all="ignore")
    compare()
    full_reach()

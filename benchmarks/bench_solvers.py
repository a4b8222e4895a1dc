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
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from naive import naive_full

from pipeline.problem import Problem
from pipeline.theory import solve

LOSS = "infonce(tau=0.5)"
N_MAJOR, N_MINOR = 2, 2
GRID = {1: [2, 10, 100], 2: [2, 10, 100], 4: [2, 10, 100], 8: [2, 10, 100], 16: [2, 10], 32: [10]}
FULL_LIMIT_S = 60


def compare() -> None:
    print(f"# symmetric vs naive (fresh cvxpy build + solve of the full SDP), {LOSS}, K_A={N_MAJOR} K_B={N_MINOR}")
    print(f"{'k':>3} {'points':>6} {'naive s/pt':>11} {'symm s/pt':>10} {'speedup':>9} {'max rel dobj':>13}")
    total_naive = total_sym = 0.0
    worst = 0.0
    for k, Rs in GRID.items():
        t_naive = t_sym = 0.0
        diff = 0.0
        for R in Rs:
            problem = Problem.two_group(LOSS, N_MAJOR, N_MINOR, R, k)
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                value_naive, _ = naive_full(problem)
            t_naive += time.perf_counter() - start
            start = time.perf_counter()
            solution = solve(problem, "symmetric")
            t_sym += time.perf_counter() - start
            diff = max(diff, abs(value_naive - solution.objective) / abs(solution.objective))
        n = len(Rs)
        print(
            f"{k:>3} {n:>6} {t_naive / n:>11.4f} {t_sym / n:>10.5f} {t_naive / t_sym:>8.0f}x {diff:>13.1e}",
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
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=FULL_LIMIT_S)
    except subprocess.TimeoutExpired:
        return None
    return float(out.stdout.split()[0]) if out.returncode == 0 else None


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

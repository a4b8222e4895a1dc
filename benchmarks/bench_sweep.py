"""Benchmark: sweep efficiency on 2 local workers, and planning grids of 10^4 to 10^6 points.

Run by hand: ``python benchmarks/bench_sweep.py`` (a few minutes). Prints
efficiency = sum of per-point solve time / (workers x wall time of the sweep), target >= 0.85,
then, at 10^4, 10^5 and 10^6 theory points, the dry run's time and client peak memory, and the time from
``clphase run`` to its first batch written with the client's peak memory (targets at 10^6: first batch
within 60 s, under 2 GB; planning linear in the number of batches).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from pipeline.sweep.cluster import connect
from pipeline.sweep.config import validate
from pipeline.sweep.graph import run_sweep
from pipeline.sweep.store import init_store

WORKERS = 2


def efficiency(tmp: Path) -> None:
    raw = {
        "name": "bench",
        "store": str(tmp / "bench.zarr"),
        "grid": {
            "loss": ["infonce(tau=0.5)", "infonce(tau=1)"],
            "R": {"logspace": [0, 4, 200]},
            "n_major": [2],
            "n_minor": [2, 3],
            "k": [1, 2, 4, 8, 16],
        },
        "batch": {"points": 200},  # 200 R x 1 k per batch: ~0.2-1 s each
    }
    config = validate(raw)
    init_store(config.store, config)
    with connect(config, WORKERS) as client:
        client.run(lambda: __import__("pipeline.theory.dispatch"))  # warm imports on the workers
        start = time.perf_counter()
        summary = run_sweep(config, config.store, client)
        wall = time.perf_counter() - start
    eff = summary.point_s / (WORKERS * wall)
    print(f"theory points: {summary.points - 20} (+20 thresholds) in {summary.batches} batches on {WORKERS} workers")
    print(
        f"sum of per-point solve time {summary.point_s:.1f} s, batch compute {summary.compute_s:.1f} s, "
        f"wall {wall:.1f} s"
    )
    print(f"efficiency = per-point time / (workers x wall) = {eff:.3f} (target >= 0.85)")


def big_grid(n_points: int) -> dict:
    """A theory grid of ``n_points`` points (4 losses x R x 5 n_major x 4 n_minor x 5 k)."""
    n_R = n_points // (4 * 5 * 4 * 5)
    return {
        "grid": {
            "loss": ["infonce(tau=0.5)", "infonce(tau=1)", "sumexp(tau=1)", "squared_hinge(margin=2.5)"],
            "R": {"logspace": [0, 6, n_R]},
            "n_major": [1, 2, 3, 4, 5],
            "n_minor": [2, 3, 4, 5],
            "k": [1, 4, 16, 64, 128],
        },
        "batch": {"points": 64},
    }


def _watch(command: list[str], env: dict, until: Path | None = None) -> tuple[float, float, str]:
    """Run ``command`` until it exits or the file ``until`` is not empty; (seconds, client peak RSS in MB, its
    stdout)."""
    import os
    import signal

    start = time.perf_counter()
    out = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (read back below, closed with the process)
    proc = subprocess.Popen(command, stdout=out, stderr=subprocess.DEVNULL, env={**os.environ, **env},
                            start_new_session=True)  # fmt: skip
    peak_kb = 0
    while proc.poll() is None and not (until is not None and until.exists() and until.stat().st_size > 0):
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            peak_kb = max(peak_kb, int(status.split("VmHWM:")[1].split()[0]))
        except (OSError, IndexError):
            pass
        time.sleep(0.05)
    wall = time.perf_counter() - start
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=120)
    out.seek(0)
    text = out.read()
    out.close()
    return wall, peak_kb / 1024, text


def planning(tmp: Path) -> None:
    """Dry run and start of real runs at 10^4, 10^5 and 10^6 points: seconds and client peak memory."""
    print(f"{'points':>8} {'batches':>8} {'dry run s':>10} {'dry MB':>7} {'first batch s':>14} {'run MB':>7} "
          f"{'first s / batch':>16}")  # fmt: skip
    for n_points in (10**4, 10**5, 10**6):
        cfg = tmp / f"plan{n_points}.yaml"
        store = tmp / f"plan{n_points}.zarr"
        cfg.write_text(yaml.safe_dump({"name": "plan", "store": str(store), **big_grid(n_points)}))
        base = [sys.executable, "-m", "pipeline", "run", str(cfg)]
        dry_s, dry_mb, dry_out = _watch([*base, "--dry-run"], {})
        batches = sum(int(line.split(" in ")[1].split()[0]) for line in dry_out.splitlines()
                      if line.startswith(("theory points:", "thresholds:")))  # fmt: skip
        log = tmp / f"tasks{n_points}.log"
        first_s, run_mb, _ = _watch([*base, "--workers", "2"], {"CLPHASE_TASK_LOG": str(log)}, until=log)
        print(f"{n_points:>8} {batches:>8} {dry_s:>10.1f} {dry_mb:>7.0f} {first_s:>14.1f} {run_mb:>7.0f} "
              f"{first_s / batches * 1e3:>13.2f} ms")  # fmt: skip
    print("dry run: imports and the estimate's sample solves included; first batch: from the command's start to the "
          "first batch written (template, planning, cluster start-up); MB: the client's peak resident memory")


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--section", choices=("efficiency", "planning", "all"), default="all",
                        help="efficiency: >= 2000 theory points on 2 workers; planning: 1e4 to 1e6 points")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.section in ("efficiency", "all"):
            efficiency(Path(tmp))
        if args.section in ("planning", "all"):
            planning(Path(tmp))


if __name__ == "__main__":
    main()

"""Benchmark: sweep efficiency on 2 local workers, and planning a 10^5-point grid.

Run by hand: ``python benchmarks/bench_sweep.py`` (about a minute). Prints
efficiency = sum of per-point solve time / (workers x wall time of the sweep), target >= 0.85,
then the planning time and peak client memory of ``clphase run --dry-run`` on 10^5 points.
"""

from __future__ import annotations

import resource
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


def planning(tmp: Path) -> None:
    raw = {
        "name": "plan",
        "store": str(tmp / "plan.zarr"),
        "grid": {
            "loss": ["infonce(tau=0.5)", "infonce(tau=1)", "sumexp(tau=1)", "squared_hinge(margin=2.5)"],
            "R": {"logspace": [0, 6, 250]},
            "n_major": [1, 2, 3, 4, 5],
            "n_minor": [2, 3, 4, 5],
            "k": [1, 4, 16, 64, 128],
            "dim": [16],
            "seed": [0],
        },
    }
    cfg = tmp / "plan.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", str(cfg), "--dry-run"], capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(out.stdout.strip())
    print(f"dry run of the 10^5-point grid: {wall:.1f} s in all (imports and two calibration solves included), "
          f"peak client memory {peak_mb:.0f} MB")  # fmt: skip


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--section", choices=("efficiency", "planning", "all"), default="all",
                        help="efficiency: >= 2000 theory points on 2 workers; planning: a 1e5-point dry run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.section in ("efficiency", "all"):
            efficiency(Path(tmp))
        if args.section in ("planning", "all"):
            planning(Path(tmp))


if __name__ == "__main__":
    main()

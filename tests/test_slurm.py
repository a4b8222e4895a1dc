"""Sweeps through dask-jobqueue on a real (local, one-node) SLURM, and the generated job scripts.

The local SLURM comes from ``cluster/local-slurm.sh`` (Debian's slurm-wlm, auth/none). CI sets
CLPHASE_REQUIRE_SLURM=1 so that a missing SLURM fails instead of skipping.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.errors import InputError
from pipeline.sweep.cluster import make_jobqueue_cluster
from pipeline.sweep.config import ClusterSpec, load_config
from pipeline.sweep.grid import Grid
from tests.test_sweep import TINY, compare_stores, keys

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
pytestmark = pytest.mark.slurm

TEST_PROFILE = {
    "jobqueue": {
        "slurm-test": {
            "cores": 1,
            "processes": 1,
            "memory": "1GB",
            "walltime": "00:20:00",
            "queue": None,
            "account": None,
            "worker-extra-args": ["--lifetime", "15m"],
        }
    }
}


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """SLURM_CONF of a running local SLURM (started here when needed, stopped after)."""
    started = None
    env = dict(os.environ)
    if not (env.get("SLURM_CONF") and shutil.which("sinfo") and _sinfo_ok(env)):
        if not shutil.which("slurmctld") or os.geteuid() != 0:
            if os.environ.get("CLPHASE_REQUIRE_SLURM"):
                pytest.fail("CLPHASE_REQUIRE_SLURM is set but slurm-wlm is not installed (run as root)")
            pytest.skip("no SLURM here: apt-get install --no-install-recommends slurm-wlm")
        started = tmp_path_factory.mktemp("slurm")
        subprocess.run([str(ROOT / "cluster" / "local-slurm.sh"), "start", str(started)], check=True)
        env["SLURM_CONF"] = str(started / "slurm.conf")
    yield env
    if started is not None:
        subprocess.run([str(ROOT / "cluster" / "local-slurm.sh"), "stop", str(started)], check=False)


def _sinfo_ok(env: dict) -> bool:
    out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=env)
    return (out.returncode == 0 and "idle" in out.stdout) or "mix" in out.stdout


def write_sweep(tmp_path: Path, store: str) -> Path:
    config = yaml.safe_load(yaml.safe_dump(TINY))
    config["grid"].update({"loss": ["infonce(tau=0.5)"], "n_major": [2], "n_minor": [2]})
    config["store"] = str(tmp_path / store)
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(yaml.safe_dump(TEST_PROFILE))
    config["cluster"] = {"interface": "lo", "max_jobs": 2, "profiles": str(profiles), "n_workers": 2}
    path = tmp_path / f"{store}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("local")
    cfg = write_sweep(tmp, "local.zarr")
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", str(cfg)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return tmp / "local.zarr"


def run_on_slurm(cfg: Path, env: dict, **kwargs) -> subprocess.Popen:
    err = open(cfg.parent / "run.err", "w")  # noqa: SIM115 - the child writes it until it exits
    command = [sys.executable, "-m", "pipeline", "run", str(cfg), "--cluster", "slurm-test"]
    return subprocess.Popen(
        command, env=env, cwd=cfg.parent, stdout=subprocess.DEVNULL, stderr=err, text=True, **kwargs
    )


def test_sweep_through_slurm_equals_local(slurm, local_reference, tmp_path):
    cfg = write_sweep(tmp_path, "slurm.zarr")
    proc = run_on_slurm(cfg, slurm)
    assert proc.wait(timeout=300) == 0, (tmp_path / "run.err").read_text()
    compare_stores(tmp_path / "slurm.zarr", local_reference)
    assert list((tmp_path / "clphase-logs").glob("*.err")), "worker jobs left their logs next to the store"


def test_cancelled_worker_job_still_completes_the_store(slurm, local_reference, tmp_path):
    cfg = write_sweep(tmp_path, "slurm.zarr")
    log = tmp_path / "tasks.log"
    env = {**slurm, "CLPHASE_TASK_LOG": str(log), "CLPHASE_BATCH_DELAY_S": "1.0"}
    proc = run_on_slurm(cfg, env)
    deadline = time.time() + 240
    while len(keys(log)) < 3 and time.time() < deadline:
        time.sleep(0.2)
    jobs = subprocess.run(["squeue", "-h", "-o", "%i", "-n", "dask-worker"], capture_output=True, text=True, env=env)
    job_ids = jobs.stdout.split()
    assert job_ids, "no worker job to cancel"
    subprocess.run(["scancel", job_ids[0]], check=True, env=env)
    assert proc.wait(timeout=300) == 0, (tmp_path / "run.err").read_text()
    compare_stores(tmp_path / "slurm.zarr", local_reference)
    config = load_config(cfg)
    n_batches = sum(Grid(config).n_batches(kind) for kind in ("theory", "threshold"))
    assert n_batches <= len(keys(log)) <= n_batches + 2  # at most the cancelled job's batches run twice
    assert set(keys(log)) == {b.key for kind in ("theory", "threshold") for b in Grid(config).batches(kind)}


# --- generated job scripts (no SLURM needed) ----------------------------------------------------


def normalised_script(spec: ClusterSpec) -> str:
    cluster = make_jobqueue_cluster(spec)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    script = script.replace(sys.executable, "PYTHON")
    return re.sub(r"tcp://[^ ]+", "SCHEDULER", script)


@pytest.mark.parametrize(
    ("name", "spec"),
    [
        ("slurm_cpu.sh", ClusterSpec(kind="slurm-cpu", queue="short", account="proj-123", interface="lo")),
        ("slurm_gpu.sh", ClusterSpec(kind="slurm-gpu", queue="gpu a100", account="o'neil lab", interface="lo")),
        ("slurm_gpu_quotes.sh", ClusterSpec(kind="slurm-gpu", queue='say "hi"', interface="lo")),
    ],
)
def test_job_scripts_match_reference_files(name, spec):
    script = normalised_script(spec)
    reference = DATA / name
    if not reference.exists():  # first run: write it, and fail so that a person looks at it
        reference.write_text(script)
        pytest.fail(f"wrote {reference}; check it and commit it")
    assert script == reference.read_text(), f"job script changed; if intended: rm {reference} and rerun"


def test_hostile_names_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(InputError, match=r"cluster\.queue"):
        normalised_script(ClusterSpec(kind="slurm-cpu", queue="a'b\"c"))
    cfg = write_sweep(tmp_path, "never.zarr")
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", str(cfg), "--cluster", "slurm-test",
                           "cluster.account=x'y\"z"], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and "cluster.account" in proc.stderr
    assert not (tmp_path / "never.zarr").exists()
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", str(cfg), "--cluster", "nosuch"],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and "slurm-test" in proc.stderr


def test_whole_sweep_as_one_slurm_job(slurm, local_reference, tmp_path):
    """cluster/sweep.sbatch: scheduler and client in one job, workers as further jobs."""
    cfg = write_sweep(tmp_path, "batch.zarr")
    env = {**slurm, "CLPHASE_PYTHON": sys.executable}
    out = subprocess.run(["sbatch", "--parsable", "--cpus-per-task=1", "--mem=1G", f"--chdir={tmp_path}",
                          f"--output={tmp_path}/sweep-%j.out", str(ROOT / "cluster" / "sweep.sbatch"), str(cfg),
                          "slurm-test"], capture_output=True, text=True, env=env, check=True)  # fmt: skip
    job = out.stdout.strip().split(";")[0]
    deadline = time.time() + 300
    while time.time() < deadline:
        state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, env=env)
        if not state.stdout.strip():
            break
        time.sleep(1)
    log = "\n".join(p.read_text() for p in tmp_path.glob("sweep-*.out"))
    assert "done:" in log and "failed batches: 0" in log, log
    compare_stores(tmp_path / "batch.zarr", local_reference)

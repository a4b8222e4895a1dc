"""Fault injection, in the store: bad configs, damaged stores, full disks, two runs at once, safety.

Killed clients and workers, stalls and failing computations are in ``test_faults.py``; the uninterrupted run
that scenarios compare with is conftest's ``reference``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

from pipeline.cli import main
from pipeline.sweep.store import open_results
from tests.test_faults import run, write
from tests.test_sweep import TINY, clphase, compare_stores, keys
from tests.test_sweep import tree_digest as digest

pytestmark = pytest.mark.faults

# --- 4. bad configs ---------------------------------------------------------------------------

BAD = {
    "yaml syntax": ("grid: [unclosed", "YAML syntax error"),
    "not a mapping": ("- 1\n- 2", "expected a mapping"),
    "unknown top key": ({"colour": 1}, "colour: unknown key"),
    "unknown grid key": ({"grid": {"temperature": [1]}}, "grid.temperature: unknown key"),
    "grid not a mapping": ({"grid": [1, 2]}, "grid: [1, 2]"),
    "loss missing": ({"grid": {"loss": None}}, "grid.loss"),
    "empty loss": ({"grid": {"loss": []}}, "grid.loss"),
    "unknown loss": ({"grid": {"loss": ["focal(gamma=2)"]}}, "grid.loss"),
    "malformed loss id": ({"grid": {"loss": ["infonce(tau="]}}, "grid.loss"),
    "zero tau": ({"grid": {"loss": ["infonce(tau=0)"]}}, "tau > 0"),
    "negative tau": ({"grid": {"loss": ["infonce(tau=-1)"]}}, "tau > 0"),
    "duplicate loss": ({"grid": {"loss": ["infonce(tau=1)", "infonce(tau=1.0)"]}}, "duplicate"),
    "R below 1": ({"grid": {"R": [0.5, 2]}}, "grid.R: 0.5"),
    "R not a number": ({"grid": {"R": ["ten"]}}, "grid.R: 'ten'"),
    "empty R": ({"grid": {"R": []}}, "grid.R"),
    "bad logspace": ({"grid": {"R": {"logspace": [0, 2]}}}, "logspace"),
    "duplicate R": ({"grid": {"R": [2, 2]}}, "duplicate"),
    "k zero": ({"grid": {"k": [0, 4]}}, "grid.k: 0"),
    "k float": ({"grid": {"k": [1.5]}}, "grid.k: 1.5"),
    "n_major zero": ({"grid": {"n_major": [0]}}, "grid.n_major: 0"),
    "n_minor negative": ({"grid": {"n_minor": [-1]}}, "grid.n_minor: -1"),
    "dim zero": ({"grid": {"dim": [0]}}, "grid.dim: 0"),
    "seed negative": ({"grid": {"seed": [-3]}}, "grid.seed: -3"),
    "k wrong type": ({"grid": {"k": "four"}}, "grid.k"),
    "unknown solver": ({"theory": {"solver": "magic"}}, "theory.solver"),
    "unknown negatives": ({"theory": {"negatives": "hard"}}, "theory.negatives"),
    "unknown reduction": ({"theory": {"reduction": "max"}}, "theory.reduction"),
    "batch points zero": ({"batch": {"points": 0}}, "batch.points"),
    "grid above cap": ({"batch": {"max_points": 10}}, "batch.max_points"),
    "unwritable store": ({"store": "/dev/null/results.zarr"}, "store"),
    "hostile name": ({"name": "../../etc"}, "name"),
    "unknown train key": ({"train": {"epochs": 3}}, "train.epochs"),
    "bad train model": ({"train": {"model": "resnet"}}, "train.model"),
    "bad train select": ({"train": {"select": {"k": [99]}}}, "train.select.k"),
    "bad cluster kind": ({"cluster": {"kind": "k8s"}}, "cluster.kind"),
    "bad n_workers": ({"cluster": {"n_workers": 0}}, "cluster.n_workers"),
    "bad stall timeout": ({"cluster": {"stall_timeout_s": "10m"}}, "cluster.stall_timeout_s"),
    "negative stall retries": ({"cluster": {"stall_retries": -1}}, "cluster.stall_retries"),
}


def _merge(base: dict, change: dict) -> dict:
    out = dict(base)
    for key, value in change.items():
        out[key] = {**base[key], **value} if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def test_bad_configs_exit_2_and_touch_no_store(reference, tmp_path, capsys):
    assert len(BAD) >= 25
    store = tmp_path / "existing.zarr"
    subprocess.run(["cp", "-r", str(reference), str(store)], check=True)
    before = digest(store)
    base = yaml.safe_load(yaml.safe_dump(TINY))
    for case, (change, expected) in BAD.items():
        cfg = tmp_path / "bad.yaml"
        if isinstance(change, str):
            cfg.write_text(change)
        else:
            config = _merge({**base, "store": str(store)}, change)
            cfg.write_text(yaml.safe_dump(config))
        code = main(["run", str(cfg)])  # the CLI entry point in-process: 36 interpreter starts would take a minute
        out, err = capsys.readouterr()
        assert code == 2, (case, out, err)
        assert expected in err and "Traceback" not in err, (case, err)
        assert digest(store) == before, case
    assert not (tmp_path / "results.zarr").exists()


# --- 5. damaged store -------------------------------------------------------------------------


def test_a_full_disk_stops_with_one_line_and_a_rerun_resumes(reference, tmp_path):
    """Writes fail with ENOSPC (injected) from the first batch on: one line naming the store, the cause and
    that rerunning resumes, exit code 1, no worker tracebacks; with space again the rerun completes the store."""
    cfg = write(tmp_path)
    full = tmp_path / "disk-is-full"
    full.touch()
    proc = run(cfg, env={"CLPHASE_NO_SPACE": str(full)})
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert str(tmp_path / "store.zarr") in errors[0] and "no space left on device" in errors[0]
    assert "rerun the same command to resume" in errors[0]
    full.unlink()
    proc = run(cfg)
    assert proc.returncode == 0, proc.stderr[-3000:]
    compare_stores(tmp_path / "store.zarr", reference)


@pytest.mark.parametrize("moment", ["template", "finalize"])
def test_a_full_disk_at_the_template_or_the_attributes_is_one_line(tmp_path, moment):
    """No space for the template: one line, exit 1, no ``store.zarr.partial-*`` left to keep the disk full.
    No space for the attributes (the code versions that wrote batches, the completion): one line, exit 1."""
    cfg = write(tmp_path)
    full = tmp_path / "disk-is-full"
    full.touch()
    proc = run(cfg, env={"CLPHASE_NO_SPACE": str(full), "CLPHASE_NO_SPACE_AT": moment})
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.strip().splitlines() if "%|" not in line]  # not the progress bars
    assert len(lines) == 1 and "no space left on device" in lines[0] and str(tmp_path / "store.zarr") in lines[0]
    assert not list(tmp_path.glob("store.zarr.*")), list(tmp_path.iterdir())  # no partial template, no lock
    assert (tmp_path / "store.zarr").exists() == (moment == "finalize")
    # a rerun with space again resumes: test_a_full_disk_stops_with_one_line_and_a_rerun_resumes


def test_a_closed_output_pipe_stops_the_run_with_sigpipes_exit_code(tmp_path):
    """``clphase run CONFIG | head -1``: exit 141 (128 + SIGPIPE) and one line, not 0 with nothing computed;
    the lock is released."""
    cfg = write(tmp_path)
    proc = subprocess.run(["bash", "-c", f"set -o pipefail; {sys.executable} -m pipeline run {cfg} | head -1"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 128 + signal.SIGPIPE, proc.stderr[-3000:]
    assert proc.stdout.startswith("creating store") and len(proc.stdout.splitlines()) == 1
    assert proc.stderr.strip().splitlines() == [
        "clphase run: stopped: its output pipe was closed (broken pipe); rerun the same command to resume"
    ]
    assert not Path(f"{tmp_path / 'store.zarr'}.lock").exists()  # released: a rerun resumes (as after Ctrl-C)


def test_a_read_only_store_is_one_line_and_still_reads(reference, tmp_path):
    """A finished store on a read-only file system (a bind mount, remounted read-only): ``run`` is one line
    with exit 2 naming the store; ``status`` and ``plot`` still read it. Needs mount rights (root here)."""
    src, ro = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    ro.mkdir()
    subprocess.run(["cp", "-r", str(reference), str(src / "store.zarr")], check=True)
    mounted = subprocess.run(["mount", "--bind", str(src), str(ro)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {mounted.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], check=True)
        with pytest.raises(OSError):
            (ro / "probe").touch()
        cfg = write(tmp_path, store="ro/store.zarr")
        proc = run(cfg)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines() == [
            f"clphase run: error: invalid store: {str(ro / 'store.zarr')!r}; expected a store in a writable folder "
            f"(cannot create its lock file {ro / 'store.zarr'}.lock: read-only file system)"
        ]
        assert clphase("status", str(ro / "store.zarr")).returncode == 0
        assert clphase("plot", str(ro / "store.zarr"), "--out", str(tmp_path / "figs")).returncode == 0
    finally:
        subprocess.run(["umount", str(ro)], check=True)


def test_silent_damage_is_named_refused_by_plot_and_repaired(reference, tmp_path):
    """Damage that reads back without an error: a flipped bit in a data chunk (caught by its crc32c), two
    chunks swapped (each passes its own crc32c, not its batch's checksum), a deleted coordinate chunk (reads
    as fill values); then a truncated root zarr.json (the arrays keep a copy of its attributes). ``status``
    names each, ``plot`` refuses in one line, ``run`` repairs exactly those, and the store equals a clean run."""
    import zarr

    from pipeline.sweep.grid import Grid
    from pipeline.sweep.runner import load_config_from_store
    from pipeline.sweep.store import _chunk_key, read_attrs

    cfg = write(tmp_path)
    store = tmp_path / "store.zarr"
    subprocess.run(["cp", "-r", str(reference), str(store)], check=True)
    config = load_config_from_store(read_attrs(str(store)))
    flipped, swapped_a, swapped_b = [b for b in Grid(config).batches("theory")][3:6]
    group = zarr.open_group(str(store), mode="r")

    def chunk(name, batch):
        return store / name / _chunk_key(group[name], batch)

    data = bytearray(chunk("cos_minor_theory", flipped).read_bytes())
    data[len(data) // 2] ^= 0x01
    chunk("cos_minor_theory", flipped).write_bytes(bytes(data))
    a, b = chunk("objective_theory", swapped_a), chunk("objective_theory", swapped_b)
    a_bytes, b_bytes = a.read_bytes(), b.read_bytes()
    a.write_bytes(b_bytes)
    b.write_bytes(a_bytes)
    (store / "R" / "c" / "0").unlink()
    assert xr.open_zarr(store).R.isnull().all()  # what a plain reader would see
    status = clphase("status", str(store))
    assert status.returncode == 0 and "coordinate R: damaged" in status.stdout, status.stdout + status.stderr
    named = sorted(int(line.split("damaged batch ")[1].split()[0]) for line in status.stdout.splitlines()
                   if "theory: damaged batch" in line)  # fmt: skip
    assert named == [flipped.index, swapped_a.index, swapped_b.index], status.stdout
    plot = clphase("plot", str(store), "--out", str(tmp_path / "figs"))
    assert plot.returncode == 2 and len(plot.stderr.strip().splitlines()) == 1, plot.stderr
    assert "is damaged: coordinate R" in plot.stderr and "clphase run CONFIG" in plot.stderr
    assert not (tmp_path / "figs").exists()
    log = tmp_path / "tasks.log"
    proc = run(cfg, env={"CLPHASE_TASK_LOG": str(log)})
    assert proc.returncode == 0, proc.stderr
    assert "repaired the metadata or values of R\n" in proc.stdout  # a coordinate: no batch to recompute
    assert sorted(keys(log)) == sorted(f"theory-{b.index}" for b in (flipped, swapped_a, swapped_b))
    compare_stores(store, reference)

    root = store / "zarr.json"
    root.write_text(root.read_text()[:100])
    for command in ("status", "plot"):
        proc = clphase(command, str(store))
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert "root metadata (zarr.json) is unreadable" in proc.stderr and "sweep 'tiny'" in proc.stderr
    proc = run(cfg, env={"CLPHASE_TASK_LOG": str(log)})
    assert proc.returncode == 0 and "repaired the root metadata" in proc.stdout and "nothing to do" in proc.stdout
    assert len(keys(log)) == 3  # nothing recomputed
    assert xr.open_zarr(store).attrs["completed_at"]
    compare_stores(store, reference)


def test_each_batch_records_the_code_that_wrote_it_and_status_warns_on_a_mix(reference, tmp_path):
    """``writer_<kind>`` holds the CRC-32 of the writing code's provenance (git revision with -dirty, package
    versions), ``attrs['writers']`` maps it back; a store two versions wrote gets one warning from status."""
    import zarr

    from pipeline.sweep.store import git_revision, provenance, writer_id

    store = tmp_path / "store.zarr"
    subprocess.run(["cp", "-r", str(reference), str(store)], check=True)
    ds = open_results(store)
    assert set(np.unique(ds.writer_theory.values)) == {writer_id()} == set(np.unique(ds.writer_threshold.values))
    writers = json.loads(ds.attrs["writers"])
    assert writers == {str(writer_id()): json.loads(json.dumps(provenance()))}
    assert writers[str(writer_id())]["git_revision"] == git_revision()
    assert "warning" not in clphase("status", str(store)).stdout
    other = {**provenance(), "git_revision": "0123456789abcdef0123456789abcdef01234567-dirty"}
    group = zarr.open_group(str(store), mode="r+", use_consolidated=False)
    group.attrs["writers"] = json.dumps({**writers, "7": other})
    writer = group["writer_theory"]
    writer[(0,) * writer.ndim] = 7  # the point of a batch written by a dirty checkout
    status = clphase("status", str(store))
    warning = [line for line in status.stdout.splitlines() if line.startswith("warning")]
    assert len(warning) == 1 and "2 versions of the code" in warning[0], status.stdout
    assert "git 0123456789ab-dirty" in warning[0] and ": 1 points" in warning[0]


def test_damaged_store_is_detected_and_exactly_those_points_recomputed(reference, tmp_path):
    cfg = write(tmp_path)
    store = tmp_path / "store.zarr"
    subprocess.run(["cp", "-r", str(reference), str(store)], check=True)
    (store / "cos_minor_theory" / "c" / "0" / "1" / "0" / "0" / "1").unlink()  # a deleted chunk
    meta = store / "R_threshold" / "zarr.json"
    meta.write_text(meta.read_text()[:40])  # a truncated metadata file
    status = subprocess.run([sys.executable, "-m", "pipeline", "status", str(store)], capture_output=True, text=True)
    assert "damaged batch" in status.stdout and "R=[" in status.stdout, status.stdout + status.stderr
    log = tmp_path / "tasks.log"
    proc = run(cfg, env={"CLPHASE_TASK_LOG": str(log)})
    assert proc.returncode == 0, proc.stderr
    assert "damaged theory batch" in proc.stdout
    assert "repaired the metadata or values of R_threshold: every threshold batch is recomputed" in proc.stdout
    recomputed = sorted(keys(log))
    thresholds = [k for k in recomputed if k.startswith("threshold-")]
    assert [k for k in recomputed if k.startswith("theory-")] == ["theory-9"]  # the deleted chunk's batch
    assert len(thresholds) == 8  # R_threshold's metadata held every threshold batch
    compare_stores(store, reference)


# --- 6. two runs at once ----------------------------------------------------------------------


def test_second_run_on_the_same_store_is_refused(tmp_path):
    """Two real runs: the second is refused while the first holds the store; SIGTERM (preemption) then
    releases the first's lock (an interrupted run resumes: test_interrupted_run_resumes_to_the_same_store)."""
    cfg = write(tmp_path)
    first = hold_store(cfg, tmp_path)
    lock = Path(f"{tmp_path / 'store.zarr'}.lock")
    second = run(cfg)
    assert second.returncode == 2
    assert f"pid {first.pid}" in second.stderr and "in use by another clphase run" in second.stderr
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=60) == 128 + signal.SIGTERM
    assert not lock.exists()


def hold_store(cfg: Path, tmp_path: Path) -> subprocess.Popen:
    """A slow run of ``cfg``, returned once it holds the store's lock."""
    env = {**os.environ, "CLPHASE_BATCH_DELAY_S": "0.3"}
    with open(tmp_path / "first.err", "w") as err:
        first = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(cfg), "--workers", "1"], env=env,
                                 stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip
    lock = Path(f"{tmp_path / 'store.zarr'}.lock")
    deadline = time.time() + 60
    while not lock.exists() and time.time() < deadline:
        time.sleep(0.05)
    return first


@pytest.mark.parametrize("spelling", ["symlink", "dot"])
def test_the_lock_follows_the_store_not_its_spelling(reference, tmp_path, spelling):
    """While a run holds the store (here: this process), a run through a symlink or as ``store.zarr/.`` is
    refused, naming the holder and the lock file of the resolved path."""
    from pipeline.sweep.lock import acquire_lock

    subprocess.run(["cp", "-r", str(reference), str(tmp_path / "store.zarr")], check=True)
    held = acquire_lock(str(tmp_path / "store.zarr"))
    try:
        other = tmp_path / "other"
        other.mkdir()
        if spelling == "symlink":
            (other / "link.zarr").symlink_to(tmp_path / "store.zarr")
            store = other / "link.zarr"
        else:
            store = f"{tmp_path / 'store.zarr'}/."
        second = run(write(other, store=str(store)))
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"pid {os.getpid()}" in second.stderr and f"lock file {tmp_path / 'store.zarr'}.lock" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
    finally:
        held.release()
    assert not Path(f"{tmp_path / 'store.zarr'}.lock").exists()


def test_a_preempted_runs_lock_from_another_host_is_taken_over(reference, tmp_path):
    """SLURM preempted the run on node17 and requeued it here: its lock file names a host and a pid that are
    gone, and no process holds the lock. The resume takes it over in one line and completes the store."""
    import zarr

    cfg = write(tmp_path)
    subprocess.run(["cp", "-r", str(reference), str(tmp_path / "store.zarr")], check=True)
    mask = zarr.open_array(str(tmp_path / "store.zarr" / "done_theory"), mode="r+")
    mask[(0,) * mask.ndim] = 0  # one batch back to pending: the resume has work to do
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock = Path(f"{tmp_path / 'store.zarr'}.lock")
    lock.write_text(json.dumps({"pid": dead.pid, "host": "node17", "since": "2026-12-01T00:00:00+00:00"}))
    proc = run(cfg)
    assert proc.returncode == 0, proc.stderr
    taken = [line for line in proc.stdout.splitlines() if "took over the lock" in line]
    assert taken == [f"took over the lock of a run that is gone (pid {dead.pid} on node17, since "
                     f"2026-12-01T00:00:00+00:00; lock file {lock})"], proc.stdout  # fmt: skip
    assert "pending batches: theory 1, threshold 0" in proc.stdout
    assert not lock.exists()
    compare_stores(tmp_path / "store.zarr", reference)


@pytest.mark.parametrize("lock_text", ["pid reused", "empty", "garbage"])
def test_a_lock_file_no_process_holds_is_taken_over(tmp_path, lock_text):
    """A pid now reused by a live process, or an empty or unreadable lock file (the disk was full when it was
    written): no process holds the flock, so the lock is taken over, saying whose it was."""
    from pipeline.sweep.lock import acquire_lock

    store = tmp_path / "store.zarr"
    store.mkdir()
    lock = Path(f"{store}.lock")
    lock.write_text({"pid reused": json.dumps({"pid": 1, "host": os.uname().nodename, "since": "earlier"}),
                     "empty": "", "garbage": "\x00{not json"}[lock_text])  # fmt: skip
    held = acquire_lock(str(store))
    try:
        gone = f"(pid 1 on {os.uname().nodename}, since earlier; " if lock_text == "pid reused" else "(unreadable "
        assert held.taken_over == f"took over the lock of a run that is gone {gone}lock file {lock})", held.taken_over
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    finally:
        held.release()
    assert not lock.exists()


def test_unlock_removes_a_lock_no_run_holds_and_refuses_a_held_one(tmp_path):
    from pipeline.sweep.lock import acquire_lock

    store = tmp_path / "store.zarr"
    store.mkdir()
    lock = Path(f"{store}.lock")
    held = acquire_lock(str(store))
    try:
        refused = clphase("unlock", str(store))
        assert refused.returncode == 2 and f"pid {os.getpid()}" in refused.stderr and str(lock) in refused.stderr
        assert lock.exists()
        forced = clphase("unlock", "--force", str(store))  # the holder's host is gone
        assert forced.returncode == 0 and "removed" in forced.stdout and "by force" in forced.stdout
        assert not lock.exists()
    finally:
        held.release()
    lock.write_text(json.dumps({"pid": 4242, "host": "node17", "since": "earlier"}))
    gone = clphase("unlock", f"{store}/.")
    assert gone.returncode == 0 and "no run held it (pid 4242 on node17" in gone.stdout and not lock.exists()
    again = clphase("unlock", str(store))
    assert again.returncode == 0 and "nothing to do" in again.stdout


# --- 7. safety --------------------------------------------------------------------------------


def test_store_holds_no_pickles_and_configs_are_never_evaluated(reference, tmp_path):
    for meta in reference.rglob("zarr.json"):
        assert "pickle" not in meta.read_text().lower(), meta
    cfg = tmp_path / "evil.yaml"
    cfg.write_text("!!python/object/apply:os.system ['touch %s']\n" % (tmp_path / "pwned"))
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", str(cfg)], capture_output=True, text=True)
    assert proc.returncode == 2 and not (tmp_path / "pwned").exists()
    for hostile in ["infonce(tau=1); rm -rf /", "infonce(tau=__import__('os'))", "$(reboot)"]:
        bad = write(tmp_path, grid={**TINY["grid"], "loss": [hostile]})
        proc = subprocess.run([sys.executable, "-m", "pipeline", "run", str(bad)], capture_output=True, text=True)
        assert proc.returncode == 2 and "grid.loss" in proc.stderr


def test_store_path_with_spaces_and_quotes(reference, tmp_path):
    cfg = write(tmp_path, store='it\'s my "store".zarr')
    proc = run(cfg)
    assert proc.returncode == 0, proc.stderr
    compare_stores(tmp_path / 'it\'s my "store".zarr', reference)

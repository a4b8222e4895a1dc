"""Where the tasks run: a LocalCluster (default), a dask-jobqueue SLURM profile, or an existing scheduler.

Profiles live in ``cluster/jobqueue.yaml``; each overrides dask-jobqueue's ``jobqueue.slurm``
defaults and is selected with ``clphase run CONFIG --cluster PROFILE`` (``cluster.kind``).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import dask
import yaml
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin

from pipeline.errors import InputError
from pipeline.sweep.config import ClusterSpec, SweepConfig

# one thread per worker process: BLAS and torch must not oversubscribe the cores
THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _restore(saved: dict[str, str | None]) -> None:
    """Put environment variables back as ``saved`` had them (None: unset)."""
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
# dask spawns workers with MALLOC_TRIM_THRESHOLD_=65536, and an explicit trim threshold switches off
# glibc's adaptive mmap threshold: every allocation >= 128 KiB (a torch step's temporaries) became an
# mmap/munmap pair, and training ran 3.3x slower in a worker than in a plain process (measured: a
# 128 KiB log1p 2000 times, 0.18 s against 0.055 s; the quick sweep's training batches 14-30 s
# against 5-7 s). A fixed 16 MiB mmap threshold restores the speed and keeps dask's trimming. It
# must be in the environment the worker process starts with, hence the nanny's pre-spawn environ
# (and an export in the job-queue profiles).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": 16 * 2**20}
IDLE_CPU_PERCENT = 10.0  # a worker below this at every heartbeat of a window is waiting, not computing
DEFAULT_PROFILES = Path(__file__).resolve().parents[2] / "cluster" / "jobqueue.yaml"
_SAFE = re.compile(r"[A-Za-z0-9_.,:@+=/-]+")


class ExitWithParent(WorkerPlugin):
    """Ends a local worker process when the process that started it is gone (a SIGKILLed client).

    Without it an orphaned worker can finish, or hang in, a task long after its client died.
    """

    name = "clphase-exit-with-parent"

    def setup(self, worker) -> None:
        parent = os.getppid()

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(0.5)
            os._exit(1)

        threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


class QuietShutdown(WorkerPlugin):
    """Drops what a local worker logs while its client shuts the cluster down early (Ctrl-C, SIGTERM, a
    full disk): "Async instruction ... ended with CancelledError" per cancelled task, and "Failed to
    communicate with scheduler during heartbeat" when the scheduler (in the client's process) closes first.
    They would print above the one line that says why the run stopped. Every other record is kept."""

    name = "clphase-quiet-shutdown"
    NOISE: ClassVar[dict[str, str]] = {
        "distributed.worker.state_machine": "ended with CancelledError",
        "distributed.worker": "Failed to communicate with scheduler during heartbeat",
    }

    def setup(self, worker) -> None:
        import logging

        for logger, text in self.NOISE.items():

            class _Drop(logging.Filter):
                def filter(self, record: logging.LogRecord, text: str = text) -> bool:
                    return text not in record.getMessage()

            logging.getLogger(logger).addFilter(_Drop())


def idle_holders(client: Client, keys: set[str], window_s: float = 5.0) -> dict[str, list[str]]:
    """Workers processing any of ``keys`` while idle: worker address -> the keys it holds.

    Idle means below ``IDLE_CPU_PERCENT`` at every heartbeat during ``window_s`` seconds: a task that
    computes (a solver, a training loop, a GPU stream it spins on) keeps its worker busy; a deadlocked
    one does not. One heartbeat is not enough: a worker's first may predate its task. A worker that
    reports no CPU figure counts as busy.
    """
    cpu: dict[str, float] = {}
    deadline = time.monotonic() + window_s
    while True:
        for address, worker in client.scheduler_info()["workers"].items():
            cpu[address] = max(cpu.get(address, 0.0), worker.get("metrics", {}).get("cpu", float("inf")))
        if time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    out = {}
    for address, held in client.processing().items():  # after the window: a batch may have finished
        mine = sorted(str(key) for key in held if key in keys)
        if mine and cpu.get(address, float("inf")) < IDLE_CPU_PERCENT:
            out[address] = mine
    return out


def call_stacks(client: Client, keys: list[str], timeout: float = 10.0) -> dict[str, list[str]] | None:
    """The innermost frames of each executing task in ``keys`` (None when the workers do not answer).

    Tasks queued behind an executing one have no stack.
    """
    try:
        stacks = client.sync(client.scheduler.call_stack, keys=keys, callback_timeout=timeout)
    except Exception:  # an unresponsive worker: the restart goes ahead without its stack
        return None
    return {str(key): frames[-4:] for per_worker in (stacks or {}).values() for key, frames in per_worker.items()}


def restart_workers(client: Client, addresses: list[str], timeout: float = 120.0) -> dict[str, str]:
    """Restart workers through their nannies: address -> 'OK', 'timed out', or why it was not restarted.

    A worker without a nanny (``dask worker --no-nanny``) cannot be restarted from here and is left alone.
    """
    info = client.scheduler_info()["workers"]
    out = {a: "no nanny: restart it by hand" for a in addresses if not info.get(a, {}).get("nanny")}
    with_nanny = [a for a in addresses if a not in out]
    if with_nanny:
        try:
            out.update(client.restart_workers(with_nanny, timeout=timeout, raise_for_error=False))
        except Exception as err:  # the scheduler refused or failed: report it, the sweep goes on
            out.update(dict.fromkeys(with_nanny, f"failed ({err})"))
    return out


def sbatch_quote(field: str, value: str) -> str:
    """A value for an ``#SBATCH --opt=VALUE`` line: bare when safe, else quoted the way sbatch parses.

    sbatch reads a quoted argument up to the matching quote, without escapes, so a value holding
    both quote characters (or a newline) cannot be written and is refused.

    Examples
    --------
    >>> sbatch_quote("cluster.queue", "gpu-a100")
    'gpu-a100'
    >>> sbatch_quote("cluster.account", "my lab")
    '"my lab"'
    """
    if _SAFE.fullmatch(value):
        return value
    if "\n" in value or ("'" in value and '"' in value):
        raise InputError(field, value, "a name without newlines that does not hold both ' and \"")
    return f"'{value}'" if '"' in value else f'"{value}"'


def load_profiles(path: str | Path | None = None) -> tuple[Path, dict[str, dict[str, Any]]]:
    """The profiles file and its ``jobqueue`` mapping (profile name -> dask-jobqueue settings)."""
    path = Path(path) if path else DEFAULT_PROFILES
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as err:
        raise InputError("cluster.profiles", str(path), f"a readable profiles file ({err.strerror})") from None
    profiles = raw.get("jobqueue") if isinstance(raw, dict) else None
    if not isinstance(profiles, dict):
        raise InputError("cluster.profiles", str(path), "a YAML file with a 'jobqueue:' mapping of profiles")
    return path, profiles


def jobqueue_settings(spec: ClusterSpec) -> dict[str, Any]:
    """dask-jobqueue settings of the profile ``spec.kind``, with the run's queue/account/interface."""
    import dask_jobqueue  # noqa: F401 - registers the jobqueue.* defaults with dask.config

    path, profiles = load_profiles(spec.profiles)
    if spec.kind not in profiles:
        choices = ", ".join(["local", *profiles])
        raise InputError("cluster.kind", spec.kind, f"one of {choices} (profiles in {path})")
    settings = {**dask.config.get("jobqueue.slurm"), **(profiles[spec.kind] or {})}
    directives = list(settings.get("job-extra-directives") or [])
    for flag, key, value in (("--partition", "queue", spec.queue), ("--account", "account", spec.account)):
        value = value if value is not None else settings.get(key)
        if value:
            directives.append(f"{flag}={sbatch_quote(f'cluster.{key}', str(value))}")
        settings[key] = None  # written above, quoted, instead of dask-jobqueue's bare -p / -A
    settings["job-extra-directives"] = directives
    if spec.interface:
        settings["interface"] = spec.interface
    settings["scheduler-options"] = {"dashboard_address": "127.0.0.1:0", **(settings.get("scheduler-options") or {})}
    return settings


def make_jobqueue_cluster(spec: ClusterSpec, log_directory: str | None = None):
    """A SLURMCluster from a profile (not yet scaled)."""
    from dask_jobqueue import SLURMCluster

    settings = jobqueue_settings(spec)
    if log_directory and not settings.get("log-directory") and _SAFE.fullmatch(log_directory):
        settings["log-directory"] = log_directory  # written unquoted into #SBATCH -e/-o lines
    # set globally, not in a context: dask-jobqueue reads its section again when it scales and closes
    dask.config.set({f"jobqueue.{spec.kind}": settings})
    return SLURMCluster(config_name=spec.kind)


def max_workers(spec: ClusterSpec) -> int:
    """Most worker processes a job-queue cluster may reach (sizes the window of tasks in flight)."""
    settings = jobqueue_settings(spec)
    return spec.max_jobs * int(settings.get("processes") or 1)


CONNECT_TIMEOUT_S = 10


def attach(scheduler_address: str | None, scheduler_file: str | None) -> Client:
    """A Client of a running scheduler; one InputError naming the address when it cannot be reached."""
    if not scheduler_address:
        _check_scheduler_file(scheduler_file)
    try:
        if scheduler_address:
            return Client(scheduler_address, timeout=f"{CONNECT_TIMEOUT_S}s")
        return Client(scheduler_file=scheduler_file, timeout=f"{CONNECT_TIMEOUT_S}s")
    except Exception as err:  # OSError, TimeoutError, and distributed's asserts on a malformed address
        field, value = ("scheduler-address", scheduler_address) if scheduler_address else \
            ("scheduler-file", scheduler_file)
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(
            field, value, f"a dask scheduler reachable from here within {CONNECT_TIMEOUT_S} s ({reason}); check "
            "that it runs (`dask scheduler`), the host and port or file, and any firewall"
        ) from None


SCHEDULER_FILE = ("a dask scheduler file (JSON with the scheduler's 'address', as `dask scheduler --scheduler-file` "
                  "writes)")


def _check_scheduler_file(path: str | None) -> None:
    """One InputError unless ``path`` is a small JSON file with a string ``address`` (not /etc/passwd)."""
    def refuse(reason: str) -> InputError:
        return InputError("scheduler-file", path, f"{SCHEDULER_FILE} ({reason})")

    try:
        with open(str(path), "rb") as f:
            text = f.read(2**20 + 1)
    except OSError as err:
        raise refuse(err.strerror) from None
    if len(text) > 2**20:
        raise refuse("larger than 1 MiB")
    try:
        info = json.loads(text)
    except ValueError:
        raise refuse("not JSON") from None
    if not isinstance(info, dict) or not isinstance(info.get("address"), str):
        raise refuse("it has no 'address'")


@contextmanager
def connect(
    config: SweepConfig,
    n_workers: int | None = None,
    scheduler_address: str | None = None,
    scheduler_file: str | None = None,
) -> Iterator[Client]:
    """A dask Client for the sweep; the cluster it started (if any) is closed on exit.

    Parameters
    ----------
    config : SweepConfig
        ``cluster.kind`` 'local' starts a LocalCluster bound to 127.0.0.1; a profile name starts a
        SLURMCluster that scales adaptively up to ``cluster.max_jobs`` jobs.
    n_workers : int, optional
        Overrides ``cluster.n_workers`` (default: one per core) for a LocalCluster.
    scheduler_address, scheduler_file : str, optional
        Attach to a running scheduler instead of starting one.
    """
    if scheduler_address or scheduler_file:
        client = attach(scheduler_address, scheduler_file)
        try:
            yield client
        finally:
            client.close()
        return
    spec = config.cluster
    # distributed's nanny writes a LocalCluster's env (THREAD_ENV) into this process's environment too;
    # left there, a caller's later subprocesses ran single-threaded, and nproc said 1 (a SLURM node
    # then offered one CPU)
    saved = {name: os.environ.get(name) for name in THREAD_ENV}
    if spec.kind == "local":
        workers = n_workers or spec.n_workers or os.cpu_count() or 1
        # a worker restarted by the stall watchdog may take longer than dask's 15 s to come back; a
        # LocalCluster closes the nanny of a worker that did not, and the sweep would lose it for good
        dask.config.set({"distributed.deploy.lost-worker-timeout": "300s"})
        environ = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **MALLOC_ENV}
        dask.config.set({"distributed.nanny.pre-spawn-environ": environ})
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=spec.threads_per_worker,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            env=THREAD_ENV,
        )
    else:
        logs = str(Path(config.store).resolve().parent / "clphase-logs")
        cluster = make_jobqueue_cluster(spec, logs)
        cluster.adapt(minimum_jobs=1, maximum_jobs=spec.max_jobs)
    client = Client(cluster)
    if spec.kind == "local":
        client.register_plugin(ExitWithParent())
        client.register_plugin(QuietShutdown())
    try:
        yield client
    finally:
        client.close()
        cluster.close()
        _restore(saved)

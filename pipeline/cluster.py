"""Where the tasks run: a LocalCluster by default, or an existing scheduler."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin

from pipeline.config import SweepConfig
from pipeline.errors import InputError

# one thread per worker process: BLAS and torch must not oversubscribe the cores
THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


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
        ``cluster.kind`` 'local' starts a LocalCluster bound to 127.0.0.1.
    n_workers : int, optional
        Overrides ``cluster.n_workers`` (default: one per core).
    scheduler_address, scheduler_file : str, optional
        Attach to a running scheduler instead of starting one.
    """
    if scheduler_address or scheduler_file:
        client = Client(scheduler_address) if scheduler_address else Client(scheduler_file=scheduler_file)
        try:
            yield client
        finally:
            client.close()
        return
    if config.cluster.kind != "local":
        raise InputError(
            "cluster.kind", config.cluster.kind, "'local' (job-queue profiles arrive with the cluster module)"
        )
    workers = n_workers or config.cluster.n_workers or os.cpu_count() or 1
    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=config.cluster.threads_per_worker,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        env=THREAD_ENV,
    )
    client = Client(cluster)
    client.register_plugin(ExitWithParent())
    try:
        yield client
    finally:
        client.close()
        cluster.close()

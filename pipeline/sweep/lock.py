"""One run at a time per store: an OS lock (``flock`` through :mod:`filelock`) that dies with its process.

The lock file ``<store>.lock`` sits beside the store (zarr warns of foreign files inside it), named from
the store's resolved path, so a symlink or ``s.zarr/.`` finds the same lock. While a run holds it, the
file records the holder (pid, host, since) for the messages; a run that ends, is interrupted or gets
SIGTERM removes it. A run that is killed outright (SIGKILL, a node lost to preemption) leaves the file,
but not the lock: the kernel releases an ``flock`` with its process, so the next run, on any host,
takes the lock over and says whose it was. That holds on local file systems, NFSv4 (``flock`` is mapped
to NFS byte-range locks; a lock of a client that died lingers until the server's lease expires, 90 s by
default), GPFS / Spectrum Scale, BeeGFS with global file locks, and Lustre mounted with ``-o flock``.
On a file system without ``flock`` (Lustre mounted ``noflock``), filelock falls back to a marker file that
a killed run leaves behind: ``clphase unlock STORE`` removes it (see docs/sweeps.md).
"""

from __future__ import annotations

import errno
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filelock

from pipeline.errors import InputError
from pipeline.sweep.store import now_utc

LOCK_SUFFIX = ".lock"


def lock_path(store: str | os.PathLike) -> Path:
    """The lock file of a store: ``<resolved store path>.lock``."""
    return Path(f"{Path(store).resolve()}{LOCK_SUFFIX}")


def read_holder(lock: Path) -> dict[str, Any] | None:
    """The record in a lock file ({} when it is empty or unreadable), None when there is no lock file."""
    try:
        text = lock.read_text(errors="replace")[:4096]
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        holder = json.loads(text)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def describe_holder(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "no readable record"
    return f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}"


class StoreLockedError(InputError):
    """Another live run holds the store."""

    def __init__(self, store: str, lock: Path, holder: dict[str, Any] | None) -> None:
        self.field, self.value, self.allowed = "store", store, "one run at a time"
        ValueError.__init__(
            self,
            f"store {store!r} is in use by another clphase run ({describe_holder(holder)}; lock file {lock}); "
            "wait for it to finish, or stop it (a run whose host is gone: `clphase unlock --force STORE`)",
        )


@dataclass
class StoreLock:
    """A held store lock. ``taken_over`` describes the dead run whose lock file was found, if any."""

    path: Path
    _lock: filelock.BaseFileLock
    taken_over: str | None = None

    def release(self) -> None:
        """Remove the lock file, then drop the OS lock (a waiter that opened the old file sees it unlinked)."""
        if not self._lock.is_locked:
            return
        holder = read_holder(self.path)
        if holder is not None and holder.get("pid") in (os.getpid(), None):  # not a file a forced unlock let in
            self.path.unlink(missing_ok=True)
        self._lock.release(force=True)


def acquire_lock(store: str) -> StoreLock:
    """Take the store's lock, or raise StoreLockedError naming its holder and the lock file.

    A lock file that no process holds (its run was killed) is taken over; ``taken_over`` then says whose it
    was. A store on a read-only file system, or beside which no file can be made, is one InputError.
    """
    path = lock_path(store)
    found = read_holder(path)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "since": now_utc()}

    def write_record(fd: int) -> None:
        data = json.dumps(record).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)

    lock = filelock.FileLock(path, timeout=0, thread_local=False, on_acquired=write_record)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise StoreLockedError(store, path, read_holder(path)) from None
    except OSError as err:
        why = "read-only file system" if err.errno == errno.EROFS else err.strerror
        raise InputError(
            "store", store, f"a store in a writable folder (cannot create its lock file {path}: {why})"
        ) from None
    taken_over = None
    if found is not None:
        gone = f"({describe_holder(found)}; lock file {path})" if found else f"(unreadable lock file {path})"
        taken_over = f"took over the lock of a run that is gone {gone}"
    return StoreLock(path, lock, taken_over)


def unlock(store: str, force: bool = False) -> str:
    """Remove a store's lock file; returns what was done (one line).

    A lock that a live process holds is refused unless ``force`` (its host is gone, or the file system
    lacks ``flock`` and a killed run left its marker behind).
    """
    path = lock_path(store)
    holder = read_holder(path)
    if holder is None:
        return f"no lock file: {path} does not exist; nothing to do"
    lock = filelock.FileLock(path, timeout=0, thread_local=False)
    try:
        lock.acquire()
    except filelock.Timeout:
        if not force:
            raise StoreLockedError(store, path, holder) from None
        path.unlink(missing_ok=True)
        return (
            f"removed {path} by force ({describe_holder(holder)}); that run, if it still runs, no longer "
            "excludes others"
        )
    except OSError as err:
        raise InputError("store", store, f"a store whose lock file can be removed ({path}: {err.strerror})") from None
    path.unlink(missing_ok=True)
    lock.release(force=True)
    return f"removed {path}: no run held it ({describe_holder(holder)})"

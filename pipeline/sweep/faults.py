"""Fault injection for the reliability tests: named moments at which a process kills itself.

``CLPHASE_KILL_AT=<moment>[:<n>]`` SIGKILLs the client at the n-th (default first) occurrence of a
moment: ``plan`` (pending batches known, nothing written), ``template`` (template written to its
temporary folder, not yet moved into place), ``sweep`` (after n batches completed), ``write``
(in a worker, between a batch's data and its done mask: the worker kills its client and itself),
``finalize`` (every batch done, attributes not yet updated). ``CLPHASE_FAIL_SOLVER=<solver>`` makes
that theory solver raise, to exercise the fallback (``all``: every solver raises, so points fail).
``CLPHASE_HANG_ONCE=<file>`` makes the first batch task to create that file block forever
without using CPU (a deadlocked task), and ``CLPHASE_HANG_BATCH=<batch key>`` every run of that
batch, to exercise the stall watchdog. ``CLPHASE_NO_SPACE=<file>`` makes a worker's write of a batch fail
with ENOSPC (no space left on device) while that file exists; ``CLPHASE_NO_SPACE_AT=template`` (or
``finalize``) makes the template's write (or the final attributes') fail instead. Unset, every hook is a
no-op.
"""

from __future__ import annotations

import errno
import os
import signal
import threading

KILL_ENV = "CLPHASE_KILL_AT"
FAIL_SOLVER_ENV = "CLPHASE_FAIL_SOLVER"
HANG_ENV = "CLPHASE_HANG_ONCE"
HANG_BATCH_ENV = "CLPHASE_HANG_BATCH"
NO_SPACE_ENV = "CLPHASE_NO_SPACE"
NO_SPACE_AT_ENV = "CLPHASE_NO_SPACE_AT"
_seen: dict[str, int] = {}


def kill_point(moment: str, kill_parent: bool = False) -> None:
    """SIGKILL this process (and, from a worker, its client first) at the configured moment."""
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    name, _, count = spec.partition(":")
    if name != moment:
        return
    _seen[moment] = _seen.get(moment, 0) + 1
    if _seen[moment] < int(count or 1):
        return
    if kill_parent:
        os.kill(os.getppid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def failing_solver() -> str | None:
    return os.environ.get(FAIL_SOLVER_ENV) or None


def hang_point(batch_key: str) -> None:
    """Block forever, idle, if this batch is ``CLPHASE_HANG_BATCH`` or the first to claim ``CLPHASE_HANG_ONCE``."""
    if os.environ.get(HANG_BATCH_ENV) == batch_key or _claim(os.environ.get(HANG_ENV)):
        threading.Event().wait()


def _claim(flag: str | None) -> bool:
    """Create ``flag`` if no process has yet (atomically); False when unset or already there."""
    if not flag:
        return False
    try:
        os.close(os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def no_space_point(path: str, moment: str = "write") -> None:
    """Raise ENOSPC, as a full disk does, at ``moment`` (``CLPHASE_NO_SPACE_AT``, default ``write``) while the
    file ``CLPHASE_NO_SPACE`` names exists."""
    flag = os.environ.get(NO_SPACE_ENV)
    if flag and os.path.exists(flag) and os.environ.get(NO_SPACE_AT_ENV, "write") == moment:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

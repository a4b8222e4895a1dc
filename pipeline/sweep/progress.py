"""Progress of a sweep: one tqdm bar per task kind, counting only the work that will run.

On a terminal the bars redraw in place (tqdm's exponential moving average smooths the rate and the
ETA). In a log (stderr not a terminal: a batch job, CI) each kind gets one plain line every
``LOG_INTERVAL_S`` seconds and a last one when it is done, never a redraw every half second.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

from tqdm import tqdm

LOG_INTERVAL_S = 5.0
UNITS = {"theory": "pt", "threshold": "R*", "train": "run"}
SMOOTHING = 0.1  # weight of the latest rate in tqdm's moving average (its default 0.3 jumps more)


class Progress:
    """Bars per task kind.

    Parameters
    ----------
    totals : dict
        Work that will run per kind (theory points, thresholds, selected training runs).
    stream : file, optional
        Where to draw (default stderr).
    """

    def __init__(self, totals: dict[str, int], stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._devnull = None if self.tty else open(os.devnull, "w")  # noqa: SIM115 - closed in close()
        self.bars = {
            kind: tqdm(
                total=total,
                desc=f"{kind:>9}",
                unit=UNITS.get(kind, "it"),
                file=self.stream if self.tty else self._devnull,
                position=i,
                smoothing=SMOOTHING,
                dynamic_ncols=True,
                leave=True,
            )
            for i, (kind, total) in enumerate(totals.items())
            if total > 0
        }
        self._logged = dict.fromkeys(self.bars, time.monotonic())

    def update(self, kind: str, n: int) -> None:
        bar = self.bars.get(kind)
        if bar is None or n <= 0 or self._logged[kind] == float("inf"):
            return
        bar.update(n)
        if self.tty:
            return
        now = time.monotonic()
        if now - self._logged[kind] >= LOG_INTERVAL_S or bar.n >= bar.total:
            self._logged[kind] = now if bar.n < bar.total else float("inf")  # done: no more lines
            self.stream.write(f"{bar}\n")
            self.stream.flush()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        if self._devnull is not None:
            self._devnull.close()

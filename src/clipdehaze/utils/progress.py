"""Progress as log lines, for where no terminal shows a progress bar (nohup, SLURM, a CI log).

One helper serves every loop counted in images: ``clipdehaze-predict`` logs each restored image with it,
``clipdehaze-eval`` (and the test after training) logs the test pass through
:class:`clipdehaze.callbacks.TestProgressLog`.
A line reads ``[40/500] <detail> (12.3 s elapsed, ETA 2 min 21 s)``: the count, what was just done, the time so far
and the remaining time extrapolated from the mean time per image so far.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["ProgressLog", "format_duration"]


def format_duration(seconds: float) -> str:
    """``12 s``, ``2 min 21 s``, ``1 h 05 min``: precise where it is short, readable where it is long."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class ProgressLog:
    """Log ``[done/total] detail (elapsed, ETA)`` lines while ``total`` items are processed.

    ``every_s=0`` logs every item (predict: one line per restored image, each naming it). Otherwise a line is
    logged for the first item, for the last, and in between at most every ``every_s`` seconds or when another
    ``every_fraction`` of the total is done, whichever comes first: a 36-minute evaluation of 500 images logs
    about every 30 s, a short one every tenth. ``clock`` is for tests.
    """

    def __init__(self, total: int, logger: logging.Logger, prefix: str = "", every_s: float = 30.0,
                 every_fraction: float = 0.1, clock: Callable[[], float] = time.perf_counter) -> None:
        self.total, self.log, self.prefix = int(total), logger, prefix
        self.every_s, self.clock = float(every_s), clock
        self.step = max(1, round(self.total * every_fraction)) if every_fraction > 0 else None
        self.done = 0
        self.start = clock()
        self._last_time = self.start
        self._last_done = 0

    def eta(self) -> float:
        """Seconds left at the mean time per item so far."""
        elapsed = self.clock() - self.start
        return elapsed / self.done * max(0, self.total - self.done) if self.done else float("nan")

    def advance(self, n: int = 1, detail: str = "") -> bool:
        """Count ``n`` more items done; returns whether a line was logged."""
        self.done += n
        now = self.clock()
        due = (self.every_s <= 0 or self._last_done == 0 or self.done >= self.total
               or now - self._last_time >= self.every_s
               or (self.step is not None and self.done // self.step > self._last_done // self.step))
        if not due:
            return False
        self._last_time, self._last_done = now, self.done
        elapsed = now - self.start
        self.log.info("%s[%d/%d]%s (%.1f s elapsed, ETA %s)", self.prefix, self.done, self.total,
                      f" {detail}" if detail else "", elapsed, format_duration(self.eta()))
        return True

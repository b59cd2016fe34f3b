"""Progress of a reprocessing on stderr: trains done, rate, time left.

A bar that redraws itself (``rich.progress``) when stderr is a terminal;
otherwise (a batch job's log file) one line every few seconds, since a
redrawn bar would fill a log with control characters.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["make_progress", "BarProgress", "LineProgress"]


def _eta(left: float) -> str:
    left = int(round(left))
    return f"{left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}"


class LineProgress:
    """``PROG: done/total trains (rate/s), ETA h:mm:ss``, at most every `interval` s,
    and once at the end."""

    def __init__(self, stream: TextIO | None = None, interval: float = 5.0,
                 prog: str = "metropc-reprocess", clock=time.monotonic):
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.prog = prog
        self.clock = clock
        self.total = self.done = 0
        self._t0 = self._last = 0.0

    def start(self, total: int) -> None:
        self.total, self.done = total, 0
        self._t0 = self._last = self.clock()

    def line(self) -> str:
        elapsed = max(1e-9, self.clock() - self._t0)
        rate = self.done / elapsed
        eta = _eta((self.total - self.done) / rate) if rate > 0 else "?"
        return (f"{self.prog}: {self.done}/{self.total} trains ({rate:.1f}/s), "
                f"ETA {eta}")

    def advance(self, n: int) -> None:
        self.done += n
        now = self.clock()
        if now - self._last >= self.interval:
            self._last = now
            self._write()

    def close(self) -> None:
        self._write()

    def _write(self) -> None:
        self.stream.write(self.line() + "\n")
        self.stream.flush()


class BarProgress:
    """A ``rich`` progress bar: trains done of total, trains/s, time left."""

    def __init__(self, stream: TextIO | None = None):
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self._progress = Progress(
            TextColumn("trains"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(file=stream if stream is not None else sys.stderr))
        self._task = None
        self._t0 = 0.0
        self.done = 0

    def start(self, total: int) -> None:
        self._t0 = time.monotonic()
        self._progress.start()
        self._task = self._progress.add_task("reprocess", total=total, rate="")

    def advance(self, n: int) -> None:
        self.done += n
        rate = self.done / max(1e-9, time.monotonic() - self._t0)
        self._progress.update(self._task, advance=n, rate=f"{rate:.1f}/s")

    def close(self) -> None:
        self._progress.stop()


def make_progress(stream: TextIO | None = None, interval: float = 5.0):
    """A bar on a terminal, else lines every `interval` seconds."""
    stream = stream if stream is not None else sys.stderr
    if stream.isatty():
        return BarProgress(stream)
    return LineProgress(stream, interval)

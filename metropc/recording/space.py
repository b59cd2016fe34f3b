"""Stopping a recording before its disk is full, while the file can still close.

HDF5 does not protect a file from a write that fails half way: when the
disk fills in the middle of a flush, some of the file's metadata may reach
the disk and some not, and the last rows can read back wrong (a train id
of 0 next to the data of another train).  So the recorder does not wait for
the disk to say no.  Before each flush, and before each large row it writes
at once, it counts the write against what the file system said is free
(:class:`Room`); when writing on would leave less than :data:`RESERVE`
(room for HDF5's metadata and the close), it stops writing, closes its
files cleanly, and exits.  What the files hold then is whole: every result
up to the last flush.

A disk filled by someone else between the check and the write can still
fail a write: the recorder then stops at once (metropc.recording.recorder),
and the file keeps what HDF5 managed to write, as after a power cut.
"""

from __future__ import annotations

import os
import re
import time

__all__ = ["DiskNearlyFull", "RESERVE", "Room", "free_bytes", "os_error_text"]

#: Bytes the recorder keeps free on the recording's disk.
RESERVE = 1 << 20


class DiskNearlyFull(Exception):
    """Writing `need` more bytes to `path` would leave less than :data:`RESERVE` free."""

    def __init__(self, path: str, free: int, need: int):
        self.path, self.free, self.need = path, free, need
        #: Results received but not handed to the writer (the rest of a batch).
        self.unwritten = 0
        super().__init__(f"{_mib(free)} free; the next write needs up to {_mib(need)}, "
                         f"and {_mib(RESERVE)} is kept free")


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def free_bytes(path: str) -> int:
    """Bytes an unprivileged writer may still use on the file system of `path`."""
    st = os.statvfs(os.path.dirname(os.path.abspath(path)))
    return st.f_bavail * st.f_frsize


class Room:
    """The free space on the disk of one file, for one writer.

    The file system is asked at most every `interval` seconds (``statvfs``
    on a network file system can take milliseconds, and a recorder may
    write a thousand large rows a second); in between, what this writer
    takes is subtracted from the last answer.  A refusal is always
    checked against a fresh answer, so space freed meanwhile counts.
    """

    #: Seconds between two questions to the file system.
    INTERVAL = 0.5

    def __init__(self, path: str, interval: float | None = None, clock=time.monotonic):
        self.path = path
        self.interval = self.INTERVAL if interval is None else interval
        self.clock = clock
        self._free: int | None = None
        self._asked = float("-inf")

    def take(self, need: int) -> None:
        """Account for writing `need` bytes, or raise :class:`DiskNearlyFull`."""
        if need <= 0:
            return
        now = self.clock()
        if self._free is None or now - self._asked >= self.interval:
            self._ask(now)
        if self._free - need < RESERVE and self._asked != now:
            self._ask(now)
        if self._free - need < RESERVE:
            raise DiskNearlyFull(self.path, self._free, need)
        self._free -= need

    def _ask(self, now: float) -> None:
        self._free, self._asked = free_bytes(self.path), now


def os_error_text(error: BaseException) -> str:
    """What the operating system said of a failed file operation, in a few
    words (``File too large``), where HDF5 wraps it in a paragraph of
    flags and buffer addresses; otherwise the error's first line."""
    if getattr(error, "errno", None):
        return os.strerror(error.errno)
    text = str(error)
    said = re.search(r"error message = '([^']+)'", text)
    if said:
        return said.group(1)
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__

"""Stopping a recording before its disk is full, while the file can still close.

HDF5 does not protect a file from a write that fails half way: when the
disk fills in the middle of a flush, some of the file's metadata may reach
the disk and some not, and the last rows can read back wrong (a train id
of 0 next to the data of another train).  So the recorder does not wait for
the disk to say no.  Before each flush, and before each large row it writes
at once, it asks the file system how much is free; when writing on would
leave less than :data:`RESERVE` (room for HDF5's metadata and the close),
it stops writing, closes its files cleanly, and exits.  What the files hold
then is whole: every result up to the last flush.

A disk filled by someone else between the check and the write can still
fail a write: the recorder then stops at once (see
:func:`metropc.recording.recorder`), and the file keeps what HDF5 managed
to write, as after a power cut.
"""

from __future__ import annotations

import os

__all__ = ["DiskNearlyFull", "RESERVE", "check_room", "free_bytes"]

#: Bytes the recorder keeps free on the recording's disk.
RESERVE = 1 << 20


class DiskNearlyFull(Exception):
    """Writing `need` more bytes to `path` would leave less than :data:`RESERVE` free."""

    def __init__(self, path: str, free: int, need: int):
        self.path, self.free, self.need = path, free, need
        super().__init__(f"{_mib(free)} free; the next write needs up to {_mib(need)}, "
                         f"and {_mib(RESERVE)} is kept free")


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def free_bytes(path: str) -> int:
    """Bytes an unprivileged writer may still use on the file system of `path`."""
    st = os.statvfs(os.path.dirname(os.path.abspath(path)))
    return st.f_bavail * st.f_frsize


def check_room(path: str, need: int) -> None:
    """Raise :class:`DiskNearlyFull` unless `need` bytes fit with the reserve to spare."""
    if need <= 0:
        return
    free = free_bytes(path)
    if free - need < RESERVE:
        raise DiskNearlyFull(path, free, need)

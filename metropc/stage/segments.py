"""Shared-memory segments: files in /dev/shm, their names, and their space.

The slot protocol built on them is in :mod:`metropc.stage.shm` (and
docs/shm.md).  Here is what it stands on: a :class:`Segment` is one file
mapped into memory, with a header (sizes, a state byte and a length per
unit) and whole pages of data; an :class:`Arena` hands out runs of units;
:func:`plan_slot` and :func:`fill_slot` lay out the arrays of one event or
result in a slot.  Segment names carry the owner's pid and process start
time, so :func:`cleanup_stale` can remove what owners that are gone left
behind, without mistaking a new process that reuses a pid for the owner.
"""

from __future__ import annotations

import atexit
import bisect
import itertools
import logging
import mmap
import os
import re
import stat
import struct
import threading
from multiprocessing import resource_tracker

import msgpack
import numpy as np

from ..error import ProtocolError
from ..protocol_arrays import dtype_descr

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_THRESHOLD", "SHM_DIR", "PREFIX", "UNIT", "ALIGN", "MIN_SEGMENT",
           "available", "default_size", "parse_size", "cleanup_stale", "owned_segments",
           "owner_tag", "owner_alive", "left_by_dead_owners",
           "unlink_owned", "Segment", "Arena", "eligible", "plan_slot",
           "fill_slot", "place_slot", "copy_into_slots", "fence"]

#: Arrays of this many bytes or more travel in slots.
DEFAULT_THRESHOLD = 65536
SHM_DIR = "/dev/shm"
PREFIX = "metropc-shm-"
#: Allocation unit (a page): slots are whole units.
UNIT = 4096
#: Alignment of each array inside a slot.
ALIGN = 64
MAGIC = b"MPCSHM01"
_FIXED = 64                      # bytes of the fixed header part
_HEAD = struct.Struct("<8sQQQ")  # magic, data offset, units, unit size
#: Backing pages are reserved (fallocate) this much at a time.
RESERVE_CHUNK = 16 << 20
#: Smallest segment worth having.
MIN_SEGMENT = 1 << 20
_NAME_RE = re.compile(r"metropc-shm-([0-9]{1,10})-([0-9]{1,20})-([a-z]{1,8}[0-9]{0,10})")
MAX_DIMS = 64

_counter = itertools.count()
#: Names this process created and has not unlinked, each with the pid of
#: the resource tracker it was registered with.
_live: dict[str, int | None] = {}
#: Taking a lock is a full memory barrier: it orders reading a slot's data
#: before clearing its state byte (REDUCE), and seeing the cleared byte
#: before writing new data (worker), on CPUs with weaker ordering than x86.
fence = threading.Lock()


# -- naming, sizes, clean-up -----------------------------------------------------

def available():
    """Whether this host has a usable /dev/shm."""
    return os.path.isdir(SHM_DIR) and os.access(SHM_DIR, os.W_OK | os.X_OK)


def _stat(pid):
    """The fields of ``/proc/<pid>/stat`` after the command name (the state
    first), or None if the process is gone (or there is no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except OSError:
        return None
    end = text.rfind(b")")
    return None if end < 0 else text[end + 2:].split()


def _start_time(pid):
    """Start time of process `pid` (clock ticks since boot), None if gone."""
    try:
        return int(_stat(pid)[19])
    except (TypeError, ValueError, IndexError):
        return None


def owner_tag(pid=None):
    """``<pid>-<start time>``: names a process unambiguously (pids are reused)."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}-{_start_time(pid) or 0}"


def owner_alive(pid, start):
    """Whether the process :func:`owner_tag` named still runs."""
    now = _start_time(pid)
    if now is None:
        try:
            os.kill(pid, 0)     # no /proc (unusual): at least the pid
        except ProcessLookupError:
            return False
        except OSError:
            return True
        return start == 0
    return start == 0 or now == start


def left_by_dead_owners(directory, pattern):
    """Names in `directory` that `pattern` matches (its first two groups
    an :func:`owner_tag`) whose owning process is gone."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return [name for name in names if (m := pattern.fullmatch(name)) is not None
            and not owner_alive(int(m.group(1)), int(m.group(2)))]


def cleanup_stale(directory=SHM_DIR):
    """Remove segments whose owning process is gone; returns their names.

    Called by every frontend when it starts, so whatever a killed frontend
    left behind is removed by the next one.
    """
    removed = []
    for name in left_by_dead_owners(directory, _NAME_RE):
        if name in _live:
            continue
        try:
            os.unlink(os.path.join(directory, name))
        except OSError:
            continue   # another user's, or gone meanwhile
        removed.append(name)
    if removed:
        log.info("removed %d shared-memory segment(s) left by dead processes", len(removed))
    return removed


def owned_segments(pid=None, directory=SHM_DIR):
    """Names of segments in /dev/shm that process `pid` (default: this one) owns."""
    prefix = f"{PREFIX}{pid if pid is not None else os.getpid()}-"
    try:
        return sorted(n for n in os.listdir(directory)
                      if n.startswith(prefix) and _NAME_RE.fullmatch(n))
    except OSError:
        return []


def unlink_owned():
    """Unlink every segment this process created (at exit, or a hard stop).

    Only this process's own: a forked child inherits the set but not the
    segments.
    """
    mine = f"{PREFIX}{os.getpid()}-"
    for name in list(_live):
        if name.startswith(mine):
            _unlink(name)


atexit.register(unlink_owned)


def _tracked(name):
    """Let multiprocessing's resource tracker (a process of its own) unlink
    the segment should this process be killed (SIGKILL, the OOM killer):
    its memory is free at once, not when the next pipeline starts and
    removes what dead owners left (cleanup_stale).  The tracker says so on
    stderr ("leaked shared_memory objects")."""
    resource_tracker.register("/" + name, "shared_memory")
    _live[name] = _tracker_pid()


def _tracker_pid() -> int | None:
    tracker = getattr(resource_tracker, "_resource_tracker", None)
    return getattr(tracker, "_pid", None)


def _running(pid: int) -> bool:
    """Whether process `pid` runs: a child that died and was not waited for
    (a zombie) does not (without /proc, only whether the pid exists)."""
    fields = _stat(pid)
    if fields is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except OSError:  # (another user's: it exists)
            pass
        return True
    return bool(fields) and fields[0] not in (b"Z", b"X")


def _unlink(name):
    tracker = _live.pop(name, None)
    if tracker is not None and tracker == _tracker_pid() and _running(tracker):
        # (A tracker that was killed is not asked: asking would start a
        # new one, with a warning, which knows nothing of the segment and
        # prints a traceback for it.)
        resource_tracker.unregister("/" + name, "shared_memory")
    try:
        os.unlink(os.path.join(SHM_DIR, name))
    except OSError:
        pass


def physical_memory() -> int | None:
    """Bytes of RAM this machine has (None where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def default_size():
    """min(1 GiB, RAM / 8), and at most half of what /dev/shm has free."""
    size = min(1 << 30, (physical_memory() or 8 << 30) // 8)
    try:
        st = os.statvfs(SHM_DIR)
        size = min(size, st.f_bavail * st.f_frsize // 2)
    except OSError:
        return 0
    return size


_SUFFIXES = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20,
             "mb": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30}


def parse_size(text):
    """``'512M'``, ``'1G'``, ``'65536'``, ``'0'`` or ``'off'`` -> bytes (0: off)."""
    s = str(text).strip().lower()
    if s in ("off", "no", "none"):
        return 0
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]*)?)\s*([a-z]*)", s)
    if m is None or m.group(2) not in _SUFFIXES:
        raise ValueError(f"not a size: {text!r} (use e.g. 512M, 1G, 0 or off)")
    return int(float(m.group(1)) * _SUFFIXES[m.group(2)])


def _round(n, to):
    return (n + to - 1) // to * to


# -- segments and allocation -----------------------------------------------------

class Segment:
    """One file in /dev/shm: a header (sizes, a state byte and a length per
    unit) and ``nunits`` data units.

    The state byte of a slot's first unit is 1 while the slot is allocated
    and set back to 0 by whoever frees it; only the worker -> REDUCE edge uses
    it (REDUCE frees, the worker allocates).
    """

    def __init__(self, name, fd, header_mm, data_mm, nunits, data_offset):
        self.name = name
        self.fd = fd
        self.nunits = nunits
        self.data_offset = data_offset
        self.size = nunits * UNIT
        self._header_mm = header_mm
        self._data_mm = data_mm
        lengths_at = _round(_FIXED + nunits, 8)
        self.state = np.frombuffer(header_mm, np.uint8, nunits, _FIXED)
        self.lengths = np.frombuffer(header_mm, np.uint32, nunits, lengths_at)
        self.mv = memoryview(data_mm)
        self.data = np.frombuffer(data_mm, np.uint8)
        self.addr = self.data.__array_interface__["data"][0] if nunits else 0
        self.reserved = 0   # units backed by fallocate (allocating side only)
        self.leases = 0     # slots attached by this process and not yet freed
        self.closed = False

    @staticmethod
    def _layout(nunits):
        return _round(_round(_FIXED + nunits, 8) + 4 * nunits, mmap.PAGESIZE)

    @classmethod
    def create(cls, kind, size):
        """A new segment of about `size` data bytes, owned by this process."""
        nunits = max(1, int(size) // UNIT)
        data_offset = cls._layout(nunits)
        name = f"{PREFIX}{owner_tag()}-{kind}{next(_counter)}"
        path = os.path.join(SHM_DIR, name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        _live[name] = None  # (unlinked at exit, whatever the tracker does)
        _tracked(name)
        try:
            os.ftruncate(fd, data_offset + nunits * UNIT)
            os.posix_fallocate(fd, 0, data_offset)   # the header is always backed
            header = mmap.mmap(fd, data_offset)
            header[:_HEAD.size] = _HEAD.pack(MAGIC, data_offset, nunits, UNIT)
            data = mmap.mmap(fd, nunits * UNIT, offset=data_offset)
        except BaseException:
            os.close(fd)
            _unlink(name)
            raise
        return cls(name, fd, header, data, nunits, data_offset)

    @classmethod
    def open(cls, name, *, header_writable=False, data_writable=False):
        """Map an existing segment; ProtocolError if it is not a valid one of ours."""
        if type(name) is not str or not _NAME_RE.fullmatch(name):
            raise ProtocolError(f"not a metropc shared-memory segment name: {name!r}")
        writable = header_writable or data_writable
        try:
            fd = os.open(os.path.join(SHM_DIR, name),
                         (os.O_RDWR if writable else os.O_RDONLY) | os.O_NOFOLLOW
                         | os.O_CLOEXEC)
        except OSError as e:
            raise ProtocolError(f"cannot open shared-memory segment {name}: {e}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
                raise ProtocolError(f"segment {name} is not a file of this user")
            magic, data_offset, nunits, unit = _HEAD.unpack(os.pread(fd, _HEAD.size, 0)
                                                            .ljust(_HEAD.size, b"\0"))
            if (magic != MAGIC or unit != UNIT or nunits < 1
                    or data_offset != cls._layout(nunits)
                    or data_offset + nunits * UNIT > st.st_size):
                raise ProtocolError(f"segment {name} has a bad header")
            rw, ro = mmap.PROT_READ | mmap.PROT_WRITE, mmap.PROT_READ
            header = mmap.mmap(fd, data_offset, prot=rw if header_writable else ro)
            data = mmap.mmap(fd, nunits * UNIT, offset=data_offset,
                             prot=rw if data_writable else ro)
        except ProtocolError:
            os.close(fd)
            raise
        except (OSError, ValueError, struct.error) as e:
            os.close(fd)
            raise ProtocolError(f"cannot map shared-memory segment {name}: {e}") from None
        return cls(name, fd, header, data, nunits, data_offset)

    def reserve(self, end):
        """Back units [0, end) with memory (fallocate); False if /dev/shm is full.

        Without this, a full /dev/shm would make writing into the mapping
        raise SIGBUS instead of an error.
        """
        if end <= self.reserved:
            return True
        new = min(self.nunits, max(end, self.reserved + RESERVE_CHUNK // UNIT))
        try:
            os.posix_fallocate(self.fd, self.data_offset + self.reserved * UNIT,
                               (new - self.reserved) * UNIT)
        except OSError as e:
            log.warning("shared memory: cannot reserve %d MiB more in %s (%s); using "
                        "the first %d MiB only", (new - self.reserved) * UNIT >> 20,
                        self.name, e, self.reserved * UNIT >> 20)
            return False
        self.reserved = new
        return True

    def contains(self, arr):
        """Whether ndarray `arr` lies in this segment's data."""
        try:
            ptr = arr.__array_interface__["data"][0]
        except (AttributeError, KeyError, TypeError):
            return False
        return self.addr <= ptr < self.addr + self.size

    def close(self):
        """Unmap and close; False (and nothing done) while arrays still view it."""
        if self.closed:
            return True
        try:
            self.mv.release()
        except BufferError:
            return False   # arrays still view it: try again later
        self.closed = True
        self.state = self.lengths = self.data = None
        for mm in (self._data_mm, self._header_mm):
            try:
                mm.close()
            except BufferError:
                pass       # unmapped when the last view is garbage
        self._data_mm = self._header_mm = None
        os.close(self.fd)
        return True

    def unlink(self):
        _unlink(self.name)

    def exists(self):
        return os.path.exists(os.path.join(SHM_DIR, self.name))


class Arena:
    """First-fit allocation of runs of units, with coalescing on free.

    First fit from the low end keeps reusing the same (cache-warm, already
    mapped) units when the load is light.
    """

    def __init__(self, nunits):
        self.nunits = nunits
        self.limit = nunits          # lowered if /dev/shm cannot back more
        self.starts = [0]            # free runs, sorted
        self.sizes = {0: nunits}
        self.used = 0

    def alloc(self, n):
        for i, s in enumerate(self.starts):
            size = self.sizes[s]
            if size >= n:
                if s + n > self.limit:
                    return None
                del self.starts[i]
                del self.sizes[s]
                if size > n:
                    self.starts.insert(i, s + n)
                    self.sizes[s + n] = size - n
                self.used += n
                return s
        return None

    def free(self, s, n):
        self.used -= n
        starts, sizes = self.starts, self.sizes
        i = bisect.bisect_left(starts, s)
        if i < len(starts) and starts[i] == s + n:   # merge with the next run
            n += sizes.pop(starts.pop(i))
        if i > 0 and starts[i - 1] + sizes[starts[i - 1]] == s:
            sizes[starts[i - 1]] += n
        else:
            starts.insert(i, s)
            sizes[s] = n


def eligible(value, threshold):
    return (type(value) is np.ndarray and value.nbytes >= threshold
            and dtype_descr(value.dtype) is not None)


def plan_slot(items):
    """Offsets of `items` ([(key, array)]) in one slot; (entries, units)."""
    off, entries = 0, []
    for key, arr in items:
        fortran = not arr.flags.c_contiguous and arr.flags.f_contiguous
        entries.append((key, arr, off, fortran))
        off = _round(off + arr.nbytes, ALIGN)
    return entries, max(1, _round(off, UNIT) // UNIT)


def fill_slot(seg, start, entries, nunits, serial=0):
    """Copy the planned arrays into the slot; returns the reference bytes
    (see :func:`place_slot`)."""
    ref, copies = place_slot(seg, start, entries, nunits, serial)
    copy_into_slots(copies)
    return ref


def place_slot(seg, start, entries, nunits, serial=0):
    """The reference bytes of a slot, and the ``(destination, array)``
    copies that fill it (for :func:`copy_into_slots`).

    A reference is msgpack ``[segment, start unit, units, serial, entries]``,
    each entry ``[key, byte offset in the slot, dtype, shape, fortran]``;
    `serial` names the allocation (never reused) for releases.
    """
    base = start * UNIT
    refs, copies = [], []
    for key, arr, off, fortran in entries:
        n = arr.nbytes
        dst = seg.data[base + off:base + off + n].view(arr.dtype)
        if fortran:
            dst = dst.reshape(arr.shape[::-1]).T
        else:
            dst = dst.reshape(arr.shape)
        copies.append((dst, arr))
        refs.append([key, off, dtype_descr(arr.dtype), list(arr.shape), fortran])
    return msgpack.packb([seg.name, start, nunits, serial, refs]), copies


def copy_into_slots(copies):
    """Make the copies :func:`place_slot` planned.

    Several events' copies are made back to back, after the Python that
    placed them: each copy of a megabyte pushes that code out of the CPU's
    caches, and placing the next event then costs tens of microseconds.
    """
    for dst, arr in copies:
        np.copyto(dst, arr, casting="no")

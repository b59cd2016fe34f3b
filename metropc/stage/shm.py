"""Shared-memory slots: large arrays travel between stages on one host
without going through a socket.

Two edges use slots (docs/shm.md has the whole design):

- **frontend -> POOL workers**: one segment, ``metropc-shm-<pid>-<start>-in<k>``,
  owned by the frontend.  For each event with arrays of ``threshold`` bytes
  or more it allocates one slot, copies those arrays in (the only copy, from
  the source's buffer), and sends the event with the arrays replaced by
  ``None`` and a reference under the reserved key ``#shm``.  The worker maps
  the segment read-only and gives the views read-only arrays in place.
  When nothing refers to them any more, the worker frees the slot with its
  next credit (``{"free": <int64 serials>}``).  The frontend knows which
  slots each worker holds, so the slots of a worker that died are reclaimed.
- **POOL worker -> REDUCE**: one segment per local worker, ``...-out<k>``,
  created by the frontend, allocated by the worker, for results (and event
  paths forwarded to REDUCE) of ``threshold`` bytes or more.  REDUCE maps it
  (data read-only) and frees a slot by clearing its state byte in the
  segment header, which the worker reads before allocating.  A worker that
  is replaced, or a REDUCE that is restarted, gets fresh segments; the old
  ones are unlinked after a grace period.

Slot references are checked like every other input: anything malformed
raises :class:`~metropc.error.ProtocolError`.  Segments are plain files in
``/dev/shm`` opened with ``os.open`` and ``mmap`` (no
``multiprocessing.shared_memory``, whose resource tracker would unlink or
warn about segments other processes created).  Their names carry the owner's
pid and process start time; :func:`cleanup_stale` removes the segments of
owners that are gone, and every frontend calls it when it starts.

A slot is freed only when no Python object refers to its memory any more:
its arrays hang off one root ndarray per slot, and a weak reference to that
root tells when the last view, result, zero-copy send or cached value that
used it is gone.  Until then the slot is *pinned* and stays allocated, so a
view that keeps an input array never sees it overwritten.
"""

from __future__ import annotations

import atexit
import bisect
import gc
import itertools
import logging
import math
import mmap
import os
import re
import stat
import struct
import threading
import time
import weakref

import msgpack
import numpy as np

from ..error import ProtocolError
from ..protocol_arrays import DTYPE_RE, dtype_descr
from .common import KEY_SHM

log = logging.getLogger(__name__)

__all__ = ["KEY_SHM", "DEFAULT_THRESHOLD", "SHM_DIR", "PREFIX", "available", "default_size",
           "parse_size", "cleanup_stale", "owned_segments", "unlink_owned", "owner_tag",
           "Segment", "Arena", "SlotReader", "SlotWriter", "FrontendSlots"]

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
_MAX_DIMS = 64

_counter = itertools.count()
_live = set()   # names this process created and has not unlinked
#: Taking a lock is a full memory barrier: it orders reading a slot's data
#: before clearing its state byte (REDUCE), and seeing the cleared byte
#: before writing new data (worker), on CPUs with weaker ordering than x86.
_fence = threading.Lock()


# -- naming, sizes, clean-up -----------------------------------------------------

def available():
    """Whether this host has a usable /dev/shm."""
    return os.path.isdir(SHM_DIR) and os.access(SHM_DIR, os.W_OK | os.X_OK)


def _start_time(pid):
    """Start time of process `pid` (clock ticks since boot), None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except OSError:
        return None
    try:
        return int(text[text.rindex(b")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


def owner_tag(pid=None):
    """``<pid>-<start time>``: names a process unambiguously (pids are reused)."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}-{_start_time(pid) or 0}"


def _owner_alive(pid, start):
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


def cleanup_stale(directory=SHM_DIR):
    """Remove segments whose owning process is gone; returns their names.

    Called by every frontend when it starts, so whatever a killed frontend
    left behind is removed by the next one.
    """
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        m = _NAME_RE.fullmatch(name)
        if m is None or name in _live:
            continue
        if _owner_alive(int(m.group(1)), int(m.group(2))):
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


def _unlink(name):
    _live.discard(name)
    try:
        os.unlink(os.path.join(SHM_DIR, name))
    except OSError:
        pass


def default_size():
    """min(1 GiB, RAM / 8), and at most half of what /dev/shm has free."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        ram = 8 << 30
    size = min(1 << 30, ram // 8)
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
        _live.add(name)
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


def _eligible(value, threshold):
    return (type(value) is np.ndarray and value.nbytes >= threshold
            and dtype_descr(value.dtype) is not None)


def _plan(items):
    """Offsets of `items` ([(key, array)]) in one slot; (entries, units)."""
    off, entries = 0, []
    for key, arr in items:
        fortran = not arr.flags.c_contiguous and arr.flags.f_contiguous
        entries.append((key, arr, off, fortran))
        off = _round(off + arr.nbytes, ALIGN)
    return entries, max(1, _round(off, UNIT) // UNIT)


def _fill(seg, start, entries, nunits, serial=0):
    """Copy the planned arrays into the slot; returns the reference bytes.

    A reference is msgpack ``[segment, start unit, units, serial, entries]``,
    each entry ``[key, byte offset in the slot, dtype, shape, fortran]``;
    `serial` names the allocation (never reused) for releases.
    """
    base = start * UNIT
    refs = []
    for key, arr, off, fortran in entries:
        n = arr.nbytes
        dst = seg.data[base + off:base + off + n].view(arr.dtype)
        if fortran:
            dst = dst.reshape(arr.shape[::-1]).T
        else:
            dst = dst.reshape(arr.shape)
        np.copyto(dst, arr, casting="no")
        refs.append([key, off, dtype_descr(arr.dtype), list(arr.shape), fortran])
    return msgpack.packb([seg.name, start, nunits, serial, refs])


# -- reading side (POOL workers for events, REDUCE for results) -----------------

class Lease:
    """One attached slot; free when its root array is no longer referenced."""

    __slots__ = ("seg", "start", "nunits", "serial", "ref", "since")

    def __init__(self, seg, start, nunits, serial, root):
        self.seg, self.start, self.nunits, self.serial = seg, start, nunits, serial
        self.ref = weakref.ref(root)
        self.since = None


def _bad(msg):
    return ProtocolError(f"bad shared-memory reference: {msg}")


class SlotReader:
    """Maps segments by name and turns slot references into read-only arrays.

    ``header_writable`` is for REDUCE, which frees slots by clearing their
    state byte.  Call :meth:`done` when a slot's message was processed and
    :meth:`collect` now and then: it returns the leases nothing refers to
    any more (free them) and keeps the pinned ones.
    """

    #: A slot pinned this long triggers a garbage collection (cycles).
    PIN_GC_S = 1.0

    def __init__(self, header_writable=False):
        self.header_writable = header_writable
        self.segments = {}
        self.pending = []
        self.pinned = 0
        self._gc_last = 0.0
        self._warned = False

    def segment(self, name):
        seg = self.segments.get(name)
        if seg is None:
            seg = Segment.open(name, header_writable=self.header_writable)
            self.segments[name] = seg
        return seg

    def attach(self, raw, target):
        """Put the arrays `raw` refers to into dict `target`; returns the Lease."""
        try:
            name, start, nunits, serial, refs = msgpack.unpackb(raw, raw=False,
                                                                use_list=True)
        except Exception as e:  # noqa: BLE001 - any garbage is a protocol error
            raise _bad(f"{type(e).__name__}: {e}") from None
        if (type(start) is not int or type(nunits) is not int or start < 0 or nunits < 1
                or type(serial) is not int or type(refs) is not list):
            raise _bad("slot position")
        seg = self.segment(name)
        if start + nunits > seg.nunits:
            raise _bad(f"slot {start}+{nunits} outside segment of {seg.nunits} units")
        size = nunits * UNIT
        root = np.frombuffer(seg.mv, np.uint8, size, start * UNIT)
        values = {}
        for ref in refs:
            if type(ref) is not list or len(ref) != 5:
                raise _bad("entry is not [key, offset, dtype, shape, fortran]")
            key, off, descr, shape, fortran = ref
            if type(key) is not str or type(off) is not int or off < 0:
                raise _bad("key or offset")
            if type(descr) is not str or not DTYPE_RE.fullmatch(descr):
                raise _bad(f"dtype {descr!r}")
            try:
                dtype = np.dtype(descr)
            except (TypeError, ValueError):
                raise _bad(f"dtype {descr!r}") from None
            if dtype.hasobject or dtype.itemsize == 0:
                raise _bad(f"dtype {descr!r}")
            if (type(shape) is not list or len(shape) > _MAX_DIMS
                    or not all(type(d) is int and d >= 0 for d in shape)):
                raise _bad(f"shape {shape!r}")
            n = math.prod(shape) * dtype.itemsize
            if off + n > size:
                raise _bad(f"array of {n} bytes at {off} outside slot of {size}")
            arr = root[off:off + n].view(dtype)
            arr = arr.reshape(shape[::-1]).T if fortran is True else arr.reshape(shape)
            values[key] = arr
        target.update(values)
        seg.leases += 1
        return Lease(seg, start, nunits, serial, root)

    def done(self, lease):
        """The message that used `lease` is processed."""
        self.pending.append(lease)

    def collect(self):
        """Leases no object refers to any more (to be freed); the rest stay."""
        if not self.pending:
            return []
        free, keep = [], []
        now = None
        for lease in self.pending:
            if lease.ref() is None:
                lease.seg.leases -= 1
                free.append(lease)
            else:
                if lease.since is None:
                    lease.since = now = now or time.monotonic()
                keep.append(lease)
        self.pending = keep
        self.pinned = len(keep)
        if keep:
            # A slot pinned for a while may be held only by a garbage cycle
            # (an exception's traceback, say): collect once for each new
            # such slot, at most every 5 s.
            now = now or time.monotonic()
            stuck = [lease for lease in keep
                     if self._gc_last < lease.since <= now - self.PIN_GC_S]
            if stuck and now - self._gc_last >= 5.0:
                self._gc_last = now
                gc.collect()
                if not self._warned and stuck[0].ref() is not None:
                    self._warned = True
                    log.info("shared memory: %d slot(s) still referenced %.0f s after "
                             "their event (a view keeps input arrays?); they stay "
                             "allocated until released", len(keep), now - stuck[0].since)
        return free

    def free_in_header(self, leases):
        """REDUCE: tell the allocating worker these slots are free."""
        if not leases:
            return
        with _fence:
            pass
        for lease in leases:
            if not lease.seg.closed:
                lease.seg.state[lease.start] = 0

    def contains(self, arr):
        for seg in self.segments.values():
            if seg.contains(arr):
                return True
        return False

    def prune(self):
        """Unmap segments that were unlinked and have no slot attached."""
        for name, seg in list(self.segments.items()):
            if seg.leases <= 0 and not seg.exists() and seg.close():
                del self.segments[name]

    def close(self):
        for seg in self.segments.values():
            seg.close()
        self.segments.clear()


# -- writing side of worker -> REDUCE ------------------------------------------------

class SlotWriter:
    """A worker's results segment: large results go to REDUCE in slots."""

    def __init__(self, name, threshold, reader=None):
        self.seg = Segment.open(name, header_writable=True, data_writable=True)
        self.arena = Arena(self.seg.nunits)
        self.threshold = threshold
        self.reader = reader            # input slots: views of them are copied out
        self.outstanding = {}           # start -> units, until REDUCE frees them
        self.full = 0

    @property
    def name(self):
        return self.seg.name

    def reap(self):
        """Take back the slots REDUCE has freed."""
        state, arena = self.seg.state, self.arena
        freed = [s for s in self.outstanding if not state[s]]
        if freed:
            with _fence:
                pass
            for start in freed:
                arena.free(start, self.outstanding.pop(start))

    def export(self, out):
        """Move large arrays of result `out` into a slot (in place).

        Arrays below the threshold that view an input slot are copied, so
        nothing small keeps an input slot pinned.  If there is no room the
        arrays go by the socket (zero-copy, still valid: see Lease).
        """
        threshold, reader = self.threshold, self.reader
        items = []
        for key, value in out.items():
            if type(value) is not np.ndarray:
                continue
            if _eligible(value, threshold):
                items.append((key, value))
            elif reader is not None and value.size and reader.contains(value):
                out[key] = value.copy()
        if not items:
            return out
        self.reap()
        entries, nunits = _plan(items)
        start = self.arena.alloc(nunits)
        if start is not None and not self.seg.reserve(start + nunits):
            self.arena.free(start, nunits)
            self.arena.limit = self.seg.reserved
            start = None
        if start is None:
            self.full += 1
            if reader is not None:
                for key, value in items:
                    if reader.contains(value):
                        out[key] = value.copy()
            return out
        self.seg.lengths[start] = nunits
        self.seg.state[start] = 1
        self.outstanding[start] = nunits
        out[KEY_SHM] = _fill(self.seg, start, entries, nunits)
        for key, _ in items:
            out[key] = None
        return out

    def close(self):
        self.seg.close()


# -- the frontend's side ----------------------------------------------------------

class FrontendSlots:
    """The frontend's segments: events to workers, and each worker's results.

    Only the frontend thread uses it, except :meth:`reserve_for`, which runs
    under the frontend lock.
    """

    #: Seconds a retired results segment stays linked (REDUCE may still map it).
    RETIRE_GRACE = 15.0

    def __init__(self, size, threshold=DEFAULT_THRESHOLD, num_workers=1):
        self.threshold = int(threshold)
        self.size = int(size)
        self.input = Segment.create("in", self.size // 2)
        self.arena = Arena(self.input.nunits)
        self.out_size = self.size // 2 // max(1, num_workers)
        self.outputs = {}       # worker -> Segment (its current results segment)
        self.retired = []       # (unlink after, Segment)
        self.held = {}          # worker -> {serial: (start, units)}
        self.held_units = {}    # worker -> units it holds
        self.reclaimed = 0
        self.full = 0           # events that waited for room (or went by socket)
        self.placed = 0         # events that travelled in slots
        self.placed_bytes = 0
        self._serials = itertools.count(1)

    @property
    def input_name(self):
        return self.input.name

    # -- results segments
    def new_output(self, worker):
        """A fresh results segment for `worker` (a new or replaced worker)."""
        if self.out_size < MIN_SEGMENT:
            return None
        old = self.outputs.pop(worker, None)
        if old is not None:
            self.retire(old)
        try:
            seg = Segment.create("out", self.out_size)
        except OSError as e:
            log.warning("shared memory: no results segment for %s: %s", worker, e)
            return None
        self.outputs[worker] = seg
        return seg.name

    def retire(self, seg):
        self.retired.append((time.monotonic() + self.RETIRE_GRACE, seg))

    def tick(self):
        now = time.monotonic()
        while self.retired and self.retired[0][0] <= now:
            _, seg = self.retired.pop(0)
            seg.unlink()
            seg.close()

    # -- event slots
    def plan(self, data):
        """The arrays of event `data` that go in a slot: (entries, units) or None."""
        threshold = self.threshold
        items = [(k, v) for k, v in data.items() if _eligible(v, threshold)]
        if not items:
            return None
        return _plan(items)

    def reserve_for(self, worker, plan):
        """Allocate a slot for `plan` for `worker`: a ticket for :meth:`fill`,
        or None if there is no room."""
        entries, nunits = plan
        start = self.arena.alloc(nunits)
        if start is None:
            return None
        if not self.input.reserve(start + nunits):
            self.arena.free(start, nunits)
            self.arena.limit = self.input.reserved
            return None
        serial = next(self._serials)
        self.held.setdefault(worker, {})[serial] = (start, nunits)
        self.held_units[worker] = self.held_units.get(worker, 0) + nunits
        return serial, start

    def fits_ever(self, plan):
        return plan[1] <= self.arena.limit

    def fill(self, data, plan, ticket):
        """The event to send: `data` with its large arrays moved into the slot."""
        entries, nunits = plan
        serial, start = ticket
        ref = _fill(self.input, start, entries, nunits, serial)
        out = dict(data)
        for key, arr, _, _ in entries:
            out[key] = None
            self.placed_bytes += arr.nbytes
        out[KEY_SHM] = ref
        self.placed += 1
        return out

    def release(self, worker, raw):
        """`worker` freed the slots in `raw` (int64 serials, from its credit).

        Serials are never reused, so a late release from a worker that was
        replaced meanwhile cannot free a slot its successor holds.
        """
        if type(raw) is not bytes or len(raw) % 8:
            log.warning("frontend: malformed slot release from %s", worker)
            return
        held = self.held.get(worker)
        if not held:
            return
        for serial in np.frombuffer(raw, "<i8").tolist():
            slot = held.pop(serial, None)
            if slot is not None:
                self.arena.free(*slot)
                self.held_units[worker] -= slot[1]

    def reclaim(self, worker):
        """`worker` is gone: its slots are free again; returns how many."""
        held = self.held.pop(worker, None) or {}
        self.held_units.pop(worker, None)
        for start, nunits in held.values():
            self.arena.free(start, nunits)
        self.reclaimed += len(held)
        return len(held)

    def holds(self, worker):
        return bool(self.held.get(worker))

    def held_bytes(self, worker):
        return self.held_units.get(worker, 0) * UNIT

    def usage(self):
        """(slots, bytes) in use on both edges."""
        slots = sum(len(h) for h in self.held.values())
        nbytes = self.arena.used * UNIT
        for seg in self.outputs.values():
            used = seg.state != 0
            slots += int(np.count_nonzero(used))
            nbytes += int(seg.lengths[used].sum()) * UNIT
        return slots, nbytes

    def close(self, unmap=True):
        """Unlink every segment (and unmap them, unless the frontend thread
        might still be copying into one)."""
        for seg in [self.input, *self.outputs.values(), *(s for _, s in self.retired)]:
            seg.unlink()
            if unmap:
                seg.close()
        self.outputs.clear()
        self.retired.clear()

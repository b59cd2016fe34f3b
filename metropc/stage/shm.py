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

import gc
import itertools
import logging
import math
import time
import weakref

import msgpack
import numpy as np

from ..error import ProtocolError
from ..protocol_arrays import DTYPE_RE
from .common import KEY_SHM
from .segments import (ALIGN, DEFAULT_THRESHOLD, MAX_DIMS, MIN_SEGMENT, PREFIX, SHM_DIR,
                       UNIT, Arena, Segment, available, cleanup_stale, copy_into_slots,
                       default_size, eligible, fence, fill_slot, owned_segments, owner_tag,
                       parse_size, place_slot, plan_slot, unlink_owned)

log = logging.getLogger(__name__)

__all__ = ["KEY_SHM", "DEFAULT_THRESHOLD", "SHM_DIR", "PREFIX", "UNIT", "ALIGN",
           "MIN_SEGMENT", "available", "default_size", "parse_size", "cleanup_stale",
           "owned_segments", "unlink_owned", "owner_tag", "copy_into_slots", "Segment", "Arena",
           "Lease", "SlotReader", "SlotWriter", "FrontendSlots"]

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
            if (type(shape) is not list or len(shape) > MAX_DIMS
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
                             "their event (a view keeps input arrays, or results that "
                             "are views of them wait to be sent: REDUCE busy or stopped?)"
                             "; they stay allocated until released",
                             len(keep), now - stuck[0].since)
        return free

    def free_in_header(self, leases):
        """REDUCE: tell the allocating worker these slots are free."""
        if not leases:
            return
        with fence:
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
            with fence:
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
            if eligible(value, threshold):
                items.append((key, value))
            elif reader is not None and value.size and reader.contains(value):
                out[key] = value.copy()
        if not items:
            return out
        self.reap()
        entries, nunits = plan_slot(items)
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
        out[KEY_SHM] = fill_slot(self.seg, start, entries, nunits)
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
        items = [(k, v) for k, v in data.items() if eligible(v, threshold)]
        if not items:
            return None
        return plan_slot(items)

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

    def place(self, data, plan, ticket):
        """``(event to send, copies to make)``: `data` with its large arrays
        placed in the slot, and the copies that put them there, left to the
        caller (:func:`copy_into_slots`) to make those of a batch together."""
        entries, nunits = plan
        serial, start = ticket
        ref, copies = place_slot(self.input, start, entries, nunits, serial)
        out = dict(data)
        for key, arr, _, _ in entries:
            out[key] = None
            self.placed_bytes += arr.nbytes
        out[KEY_SHM] = ref
        self.placed += 1
        return out, copies

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

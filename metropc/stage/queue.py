"""The frontend's inbox: events and control messages, in the order queued.

Any thread may queue; the frontend thread takes.  Events are bounded by
count *and* by bytes (the arrays they carry), and the drop policy decides
what happens when the bound is reached:

- ``oldest``: the oldest waiting event is dropped (a live display stays current),
  but never one a worker gave back (it has its place in the sequence already);
- ``newest``: the new event is refused;
- ``block``: the caller waits until there is room (nothing is lost; the
  source is slowed down, as a ZeroMQ PUSH socket at its high-water mark).

Every dropped event is counted (:attr:`EventQueue.dropped`).  Control
messages (contexts, parameters, steps) are never dropped; each remembers
how many events were queued before it, so the frontend applies it exactly
between the events around it.
"""

from __future__ import annotations

import collections
import threading
from typing import Any

from ..config import DROP_BLOCK, DROP_NEWEST
from ..messages import OP_PAUSE, OP_RESUME

__all__ = ["EventQueue", "event_nbytes"]

#: What an event costs in the byte bound besides its arrays.
EVENT_OVERHEAD = 256


_SCALARS = frozenset({int, float, bool, str, type(None)})


def event_nbytes(data: dict) -> int:
    """Bytes an event holds: its buffers (``.nbytes``) plus a fixed overhead."""
    n = EVENT_OVERHEAD
    for value in data.values():
        kind = type(value)
        if kind in _SCALARS:
            continue  # the common case of small events: nothing to look up
        if kind is bytes:
            n += len(value)
            continue
        size = getattr(value, "nbytes", None)
        if type(size) is int:
            n += size
    return n


class EventQueue:
    """Events and control messages waiting for the frontend thread."""

    def __init__(self, max_events: int, max_bytes: int, policy: str):
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.policy = policy
        self.lock = threading.Lock()
        self._room = threading.Condition(self.lock)
        #: (index, opcode, data, nbytes, seq); index = events queued before
        #: it; seq = the sequence number of an event requeued after a refused send
        self.events: collections.deque = collections.deque()
        #: (index, target, opcode, data)
        self.control: collections.deque = collections.deque()
        self.enqueued = 0
        self.nbytes = 0
        self.dropped = 0
        #: Events refused because the operator paused the pipeline.
        self.paused_events = 0
        #: A caller waits for room (``block``) and was not woken since; see
        #: :meth:`pop_event`.
        self._blocked = False
        self.paused = False
        self.closed = False
        #: The thread that takes from the queue must never block on it.
        self.taker: threading.Thread | None = None

    # -- any thread ------------------------------------------------------------------
    def put_event(self, opcode: bytes, data: dict, wake,
                  cancel: threading.Event | None = None) -> bool:
        """Queue an event; False if it was refused (policy ``newest``, or closed).

        `wake` is called (with the lock held) after the event went in.  A
        caller that waits (``block``) gives up when `cancel` is set: the
        event was not accepted, so it is not counted anywhere (a source
        told to stop, say).
        """
        size = event_nbytes(data)
        cancelled = (lambda: False) if cancel is None else cancel.is_set
        with self.lock:
            if self.paused:
                if self.policy == DROP_BLOCK and threading.current_thread() is not self.taker:
                    while self.paused and not self.closed:  # a replay waits
                        if cancelled():
                            return False
                        self._room.wait(0.1)
                else:
                    self.paused_events += 1
                    return False
            if self._full(size):
                if self.policy == DROP_BLOCK and threading.current_thread() is not self.taker:
                    while self._full(size) and not self.closed:
                        if cancelled():
                            return False
                        self._blocked = True
                        self._room.wait(0.1)
                elif self.policy == DROP_NEWEST:
                    self.dropped += 1
                    return False
                else:
                    while self._full(size):
                        self.dropped += 1
                        if not self._pop_oldest():
                            return False  # only requeued events wait: they go first
            if self.closed:
                self.dropped += 1
                return False
            self.events.append((self.enqueued, opcode, data, size, None))
            self.nbytes += size
            self.enqueued += 1
            wake()
        return True

    def put_control(self, target: str, opcode: bytes, data: dict, wake) -> None:
        """Queue a control message after every event queued so far.

        A pause refuses the events queued after it (counted in
        :attr:`paused_events`; with ``block`` their callers wait) until a
        resume: events already queued are still processed.
        """
        with self.lock:
            if opcode == OP_PAUSE:
                self.paused = True
            elif opcode == OP_RESUME:
                self.paused = False
                self._room.notify_all()
            self.control.append((self.enqueued, target, opcode, data))
            wake()

    def close(self) -> None:
        """Release blocked callers; later events are refused (and counted)."""
        with self.lock:
            self.closed = True
            self._room.notify_all()

    # -- the frontend thread (with the lock held) ---------------------------------
    def pop_event(self) -> tuple[int, bytes, Any, int, int | None]:
        """Take the oldest event.  A caller blocked for room is woken only
        once the queue is down to three quarters (or empty): waking it for
        every event taken made the two threads trade the GIL and the lock
        per event, which cost more than the events themselves."""
        item = self.events.popleft()
        self.nbytes -= item[3]
        if self._blocked and (not self.events or (
                4 * len(self.events) <= 3 * self.max_events
                and 4 * self.nbytes <= 3 * self.max_bytes)):
            self._blocked = False  # once: it needs the lock we hold to wake up
            self._room.notify_all()
        return item

    def requeue(self, items) -> None:
        """Put taken events back in front (a worker refused them): they were
        accepted once, so they are not subject to the bounds again."""
        for item in reversed(items):
            self.events.appendleft(item)
            self.nbytes += item[3]

    def _full(self, size: int) -> bool:
        if not self.events:
            return False  # an event larger than the byte bound still goes, alone
        return (len(self.events) >= self.max_events
                or self.nbytes + size > self.max_bytes)

    def _pop_oldest(self) -> bool:
        """Drop the oldest event that has no sequence number yet; False if
        there is none.  Requeued events keep theirs, and REDUCE waits for
        them in that order: dropping one would stall its output until the
        reorder buffer gave up (10 s), and count the event twice."""
        events = self.events
        for i, item in enumerate(events):  # (requeued ones are few, in front)
            if item[4] is None:
                del events[i]
                self.nbytes -= item[3]
                return True
        return False

    def __len__(self) -> int:
        return len(self.events)

"""Putting pool results back into dispatch order, without any I/O.

Pool workers finish events in any order; REDUCE must see them in the order
the frontend dispatched them (its sequence numbers).  Events a dead worker
held are announced by the frontend (:meth:`ReorderBuffer.skip`) and skipped
when their turn comes.  As a safety net the buffer is also bounded: an event
that does not arrive within `timeout` seconds, or while `window` later events
wait, is given up and counted as lost, so nothing can stall the pipeline.
The `timeout` runs from the arrival of the oldest result held behind the
gap: when a stalled worker held several events, every gap that has waited
that long is given up at once, not one gap per `timeout`.
"""

from __future__ import annotations

import collections
import time

__all__ = ["ReorderBuffer"]


class ReorderBuffer:
    """Releases items in sequence order; skips gaps after a deadline."""

    def __init__(self, window=4096, timeout=10.0, clock=time.monotonic):
        self.window = window
        self.timeout = timeout
        self.clock = clock
        self.next_seq = 0
        self.lost = 0
        self.given_up = 0  # of those lost: waited for in vain (timeout, window)
        self.late = 0
        self._items = {}
        self._skipped = set()
        self._doubtful = {}  # seq -> when to stop waiting for it, None: not armed yet
        self._doubt_grace = 1.0
        # (arrival time, seq) of held items, oldest first; entries of items
        # released since are dropped when they reach the front.
        self._arrivals = collections.deque()

    def __len__(self):
        return len(self._items)

    def skip(self, seqs):
        """These events will never come (their worker died): count them lost."""
        self._skipped.update(s for s in seqs if s >= self.next_seq)
        return self.pop_ready()

    def doubt(self, seqs, grace):
        """These events may never come (a killed worker had just finished
        them, and ZeroMQ may not have sent their results out): once
        :meth:`arm_doubts` says everything received is read, they get
        `grace` seconds, then count lost."""
        self._doubt_grace = grace
        self._doubtful = {s: t for s, t in self._doubtful.items() if s >= self.next_seq}
        for s in seqs:
            if s >= self.next_seq and s not in self._items:
                self._doubtful[s] = None

    @property
    def doubts_unarmed(self) -> bool:
        """Whether some doubtful events wait for :meth:`arm_doubts`."""
        return None in self._doubtful.values()

    def arm_doubts(self):
        """Everything received so far is read (the results socket is empty):
        doubtful events not here within their grace from now are lost."""
        until = self.clock() + self._doubt_grace
        for s, t in self._doubtful.items():
            if t is None:
                self._doubtful[s] = until

    def restart(self, seq):
        """Continue at `seq` (a restarted REDUCE joins a running pipeline)."""
        self.next_seq = seq
        self._items = {k: v for k, v in self._items.items() if k >= seq}
        self._skipped = {k for k in self._skipped if k >= seq}
        self._doubtful = {k: t for k, t in self._doubtful.items() if k >= seq}

    def take_run(self, first, n):
        """Release the `n` items from `first` on at once (the caller checked
        that they follow each other) if `first` is the next one, none is
        held already and none was given up; False: :meth:`push` them.
        Items held behind the run are released by the next :meth:`pop_ready`.
        """
        if first != self.next_seq or self._skipped or (
                self._items and min(self._items) < first + n):
            return False
        self.next_seq = first + n
        return True

    def push(self, seq, item):
        """Add an item; returns the items now releasable, in order."""
        if seq == self.next_seq and not self._items and not self._skipped:
            self.next_seq = seq + 1  # the common case: the next one, nothing waiting
            return [item]
        if seq < self.next_seq:
            self.late += 1  # already given up on it
            return []
        self._items[seq] = item
        self._arrivals.append((self.clock(), seq))
        return self.pop_ready()

    def _waiting_since(self):
        """When the oldest item still held arrived (None: none is held)."""
        arrivals, items = self._arrivals, self._items
        while arrivals and arrivals[0][1] not in items:
            arrivals.popleft()
        return arrivals[0][0] if arrivals else None

    def pop_ready(self):
        """Items releasable now (in order), skipping gaps past the deadline."""
        out = []
        items = self._items
        while True:
            if self.next_seq in items:
                out.append(items.pop(self.next_seq))
                self._skipped.discard(self.next_seq)  # it came after all
                self._doubtful.pop(self.next_seq, None)
                self.next_seq += 1
                continue
            if self.next_seq in self._skipped:
                self._skipped.discard(self.next_seq)
                self.lost += 1
                self.next_seq += 1
                continue
            if not items:
                self._arrivals.clear()
                return out
            until = self._doubtful.get(self.next_seq)
            if until is not None and self.clock() >= until:  # (armed, and over)
                del self._doubtful[self.next_seq]
                self.lost += 1  # (announced: not among the given up)
                self.next_seq += 1
                continue
            if len(items) > self.window or \
                    self.clock() - self._waiting_since() >= self.timeout:
                # Give up on the missing ones up to the oldest we hold.
                first = min(items)
                self.lost += first - self.next_seq
                self.given_up += first - self.next_seq
                self.next_seq = first
                continue
            return out

    def deadline(self):
        """Seconds until pop_ready() may skip a gap (None: nothing waits)."""
        since = self._waiting_since() if self._items else None
        if since is None:
            return None
        now = self.clock()
        wait = self.timeout - (now - since)
        until = self._doubtful.get(self.next_seq)
        if until is not None:
            wait = min(wait, until - now)
        return max(0.0, wait)

"""Putting pool results back into dispatch order, without any I/O.

Pool workers finish events in any order; REDUCE must see them in the order
the frontend dispatched them (its sequence numbers).  Events a dead worker
held are announced by the frontend (:meth:`ReorderBuffer.skip`) and skipped
when their turn comes.  As a safety net the buffer is also bounded: an event
that does not arrive within `timeout` seconds, or while `window` later events
wait, is given up and counted as lost, so nothing can stall the pipeline.
"""

from __future__ import annotations

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
        self._waiting_since = None

    def __len__(self):
        return len(self._items)

    def skip(self, seqs):
        """These events will never come (their worker died): count them lost."""
        self._skipped.update(s for s in seqs if s >= self.next_seq)
        return self.pop_ready()

    def restart(self, seq):
        """Continue at `seq` (a restarted REDUCE joins a running pipeline)."""
        self.next_seq = seq
        self._items = {k: v for k, v in self._items.items() if k >= seq}
        self._skipped = {k for k in self._skipped if k >= seq}

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
        self._waiting_since = None
        return True

    def push(self, seq, item):
        """Add an item; returns the items now releasable, in order."""
        if seq == self.next_seq and not self._items and not self._skipped:
            self.next_seq = seq + 1  # the common case: the next one, nothing waiting
            self._waiting_since = None
            return [item]
        if seq < self.next_seq:
            self.late += 1  # already given up on it
            return []
        self._items[seq] = item
        return self.pop_ready()

    def pop_ready(self):
        """Items releasable now (in order), skipping gaps past the deadline."""
        out = []
        items = self._items
        while True:
            if self.next_seq in items:
                out.append(items.pop(self.next_seq))
                self._skipped.discard(self.next_seq)  # it came after all
                self.next_seq += 1
                self._waiting_since = None
                continue
            if self.next_seq in self._skipped:
                self._skipped.discard(self.next_seq)
                self.lost += 1
                self.next_seq += 1
                continue
            if not items:
                self._waiting_since = None
                return out
            now = self.clock()
            if self._waiting_since is None:
                self._waiting_since = now
            if len(items) > self.window or now - self._waiting_since >= self.timeout:
                # Give up on the missing ones up to the oldest we hold.
                first = min(items)
                self.lost += first - self.next_seq
                self.given_up += first - self.next_seq
                self.next_seq = first
                continue
            return out

    def deadline(self):
        """Seconds until pop_ready() may skip a gap (None: nothing waits)."""
        if not self._items or self._waiting_since is None:
            return None
        return max(0.0, self.timeout - (self.clock() - self._waiting_since))

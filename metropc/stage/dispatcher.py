"""Which POOL worker gets which events: credits, batches, slot shares.

No sockets, threads or clocks here: the frontend thread asks the
:class:`Dispatcher` for the next :class:`Batch`, sends it, and reports back
what happened (a credit, a refused send, a worker gone).  Time comes in as
an argument, so the policy is tested with a fake clock
(tests/test_dispatcher.py).

The policy:

- A worker asks for work with credits (``prefetch`` at start, one per
  message it finished); it never holds more messages than that.
- Workers with credit take turns (round robin), so work spreads evenly.
- Small events waiting together go in one message, but only about
  BATCH_SECONDS of measured work per message (a CPU-bound view gets one
  event per message, so it spreads over the pool); an event with a large
  buffer goes alone.
- For a worker on this host, large arrays go into shared-memory slots (at
  most SHM_BATCH_EVENTS events and SHM_BATCH_BYTES per message); a
  worker holding SHM_WORKER_BYTES of slots is asked last, and an event
  waits for a slot only while some worker will free one.
- Dispatching runs at most MAX_AHEAD events ahead of the newest progress
  REDUCE reported: REDUCE puts results back in order in a window of 4096
  events and gives up on a missing one when more wait behind it, so a
  worker whose results lag (their messages queue behind another worker's
  at REDUCE) must not be left that far behind.  Events beyond wait in the
  queue, where the drop policy applies as for any other back-pressure
  (``block`` makes the source wait).
- Every event sent is *outstanding* at its worker until the worker's
  credit acknowledges its message.  If the worker dies or hangs, the
  events of its oldest outstanding message are lost (it was working on
  them, and they may be what killed it); the messages behind that one were
  not started, so they go back to the queue for another worker.  A send
  that ZeroMQ refused (the worker is gone) loses nothing either.  Events
  that go back keep the sequence numbers they were given.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from . import shm as shmem
from ..messages import KEY_MARK
from .common import KEY_SHM, KEY_STEP, OP_EVENT, SEQ_PATH, has_large_value
from ..transport import ZERO_COPY_MIN

__all__ = ["Dispatcher", "Batch", "batch_limit", "BATCH_MAX", "BATCH_SECONDS"]

#: Most small events sent to a worker in one message.
BATCH_MAX = 128
#: Events are batched only up to about this much measured work per message.
BATCH_SECONDS = 0.005
#: Most bytes of shared-memory slots referred to by one worker message: each
#: message costs every stage about 0.3 ms of CPU, which four 4 MiB events share
#: (+8-14 % events/s against two, in alternating runs).
SHM_BATCH_BYTES = 16 << 20
#: Most events with slots in one worker message: more leave fewer messages to
#: spread over the workers (1 MiB events: -5 % events/s with 14 against 8).
SHM_BATCH_EVENTS = 8
#: Most bytes of shared-memory slots one worker holds at once (beyond one event).
SHM_WORKER_BYTES = 32 << 20
#: How many events dispatching may run ahead of REDUCE's reported progress:
#: REDUCE's reorder window (``ReduceStage(reorder_window=4096)``) less room
#: for a batch in flight, so that no event is given up on while it is only late.
MAX_AHEAD = 4096 - 2 * BATCH_MAX


def batch_limit(event_cost: float) -> int:
    """Most events per worker message when each takes `event_cost` seconds."""
    return max(1, min(BATCH_MAX, int(BATCH_SECONDS / max(event_cost, 1e-9))))


@dataclass
class Batch:
    """One message for one worker, and what to do if it cannot be sent."""

    worker: str
    messages: list = field(default_factory=list)  # (opcode, data) as sent
    seqs: list = field(default_factory=list)
    small: bool = True
    items: list = field(default_factory=list)     # queue items, to requeue
    step: bool = False                            # a step boundary, not events
    fills: list = field(default_factory=list)     # (message index, plan, slot ticket)


class Dispatcher:
    """Credits, round robin, batching and loss accounting of the POOL."""

    def __init__(self, shm=None, max_ahead: int = MAX_AHEAD):
        self.shm = shm                  # shm.FrontendSlots or None
        self.credits = collections.Counter()
        self.workers: list[str] = []    # in round-robin order
        self.turn = 0
        self.outstanding = {}           # worker -> deque of (sent, Batch)
        # worker -> deque of the seqs of messages it finished (credited) that
        # REDUCE has not reported through yet: a worker killed right after
        # its credit may have died before ZeroMQ sent the results out.
        self.unconfirmed = {}
        self.busy_since = {}            # worker -> when it started its oldest message
        self.shm_workers = set()        # local workers that mapped the shared memory
        self.unreachable = set()        # refused a send: no work until hello again
        self.shm_waiting = None         # queue index of the event waiting for a slot
        self.seq = 0                    # next sequence number
        self.reduce_next = 0            # REDUCE's progress: the next seq it waits for
        self.mark_seqs = collections.deque()  # marks' seqs from reduce_next on, in order
        self.max_ahead = max_ahead
        self.held_back = 0              # times dispatching waited for REDUCE
        self.version = None             # context version stamped on events
        self.key_sets = collections.Counter()  # tuple of an event's paths -> events
        # Seconds per event in a worker (moving average); unknown at first,
        # so assume slow: the first events go one per message.
        self.event_cost = BATCH_SECONDS

    # -- workers ---------------------------------------------------------------------
    def add_worker(self, name: str, shm: bool = False) -> None:
        """`name` said hello: it gets work once it sends credit."""
        if name not in self.workers:
            self.workers.append(name)
        self.credits[name] = 0
        self.unreachable.discard(name)
        if shm and self.shm is not None:
            self.shm_workers.add(name)
        else:
            self.shm_workers.discard(name)

    def remove_worker(self, name: str) -> tuple[list[int], list, list[int]]:
        """`name` is gone: ``(lost, requeue, steps)``.

        `lost`: sequence numbers of its oldest outstanding message, the one
        it was working on; `requeue`: queue items of the messages behind it,
        which it never started; `steps`: ``(seq, mark)`` of the step
        boundaries and other marks among those (`mark` None for a step), to
        send again.
        """
        if name in self.workers:
            i = self.workers.index(name)
            self.workers.remove(name)
            if i < self.turn:
                self.turn -= 1
        self.credits.pop(name, None)
        self.shm_workers.discard(name)
        self.busy_since.pop(name, None)
        self.unreachable.discard(name)
        self.unconfirmed.pop(name, None)
        batches = list(self.outstanding.pop(name, ()))
        if not batches:
            return [], [], []
        lost = list(batches[0][1].seqs)
        requeue = [item for _, b in batches[1:] if not b.step for item in b.items]
        steps = [(b.seqs[0], b.messages[0][1].get(KEY_MARK)) for _, b in batches[1:]
                 if b.step]
        return lost, requeue, steps

    def on_credit(self, name: str, n: int | None, now: float) -> None:
        """A credit: `n` more (initial or late), or None for one message done."""
        if name not in self.workers:
            return  # a worker already removed; its late credit means nothing
        if name in self.unreachable:
            n = 0  # a late credit from a worker that is gone: no new work for it
        if n is not None:
            self.credits[name] += n
            return
        self.credits[name] += 1
        batches = self.outstanding.get(name)
        if batches:
            sent, done = batches.popleft()
            took = now - max(sent, self.busy_since.get(name, 0.0))
            self.event_cost += 0.2 * (took / max(1, len(done.seqs)) - self.event_cost)
            if done.seqs and not done.step and done.seqs[-1] >= self.reduce_next:
                self.unconfirmed.setdefault(name, collections.deque()).append(done.seqs)
        self.busy_since[name] = now

    def finished_unconfirmed(self, name: str) -> list[int]:
        """Events `name` finished whose results REDUCE has not confirmed
        (its progress reports lag by up to 20 ms): if `name` was killed,
        their results may not have left it."""
        return [seq for seqs in self.unconfirmed.get(name, ()) for seq in seqs
                if seq >= self.reduce_next]

    def refused(self, batch: Batch) -> list:
        """ZeroMQ refused `batch` (its worker is gone): it holds nothing of
        it, and gets no more work until it says hello again.  Returns the
        queue items to put back in front."""
        name = batch.worker
        self.credits[name] = 0
        self.unreachable.add(name)
        batches = self.outstanding.get(name)
        if batches and batches[-1][1] is batch:
            batches.pop()
        # Slots reserved for it are reclaimed when it is replaced; the
        # events go back as they were before they were put in slots.
        return batch.items

    def oldest(self, name: str):
        """``(started, seqs, what)`` of the oldest message `name` works on, or
        None; `what` names it for the operator, by the ids of its first
        events (train ids: what clients see, not our sequence numbers)."""
        batches = self.outstanding.get(name)
        if not batches:
            return None
        batch = batches[0][1]
        ids = [data.get("internal#event_id", data.get("internal#train_id", data.get(SEQ_PATH)))
               for opcode, data in batch.messages[:5]
               if opcode == OP_EVENT and isinstance(data, dict)]
        return max(batches[0][0], self.busy_since.get(name, 0.0)), batch.seqs, f"events {ids}"

    def finished_up_to(self) -> int:
        """The first event some worker still holds (the next to dispatch if
        none): the workers finished every event before it."""
        first = self.seq
        for batches in self.outstanding.values():
            for _, batch in batches:
                if batch.seqs:
                    first = min(first, batch.seqs[0])
                    break
        return first

    def held(self) -> list[int]:
        """Sequence numbers of every event some worker holds."""
        return [seq for batches in self.outstanding.values()
                for _, batch in batches for seq in batch.seqs]

    def new_context(self, version) -> None:
        """A context was committed: stamp its version; measure work anew."""
        self.version = version
        self.event_cost = max(self.event_cost, BATCH_SECONDS)

    # -- choosing --------------------------------------------------------------------
    def free_worker(self, avoid=None) -> str | None:
        """The next worker with credit, in turn; those for which `avoid(name)`
        is true only if no other has credit."""
        pools = self.workers
        n = len(pools)
        fallback = None
        for i in range(n):
            name = pools[(self.turn + i) % n]
            if self.credits[name] > 0:
                if avoid is not None and avoid(name):
                    if fallback is None:
                        fallback = (i, name)
                    continue
                self.turn = (self.turn + i + 1) % n
                return name
        if fallback is not None:
            self.turn = (self.turn + fallback[0] + 1) % n
            return fallback[1]
        return None

    def has_credit(self) -> bool:
        return any(self.credits[name] > 0 for name in self.workers)

    def step_batch(self, now: float, seq: int | None = None, mark: dict | None = None
                   ) -> Batch | None:
        """A step boundary, or another mark (`mark`: a reset, a run start or
        end, a pause), travels like an event through a worker, so REDUCE sees
        it exactly between the events around it.  `seq`: the number of a
        mark a worker refused, sent again."""
        worker = self.free_worker()
        if worker is None:
            return None
        if seq is None:
            seq = self.seq
            self.seq += 1
            self.mark_seqs.append(seq)
        event = {SEQ_PATH: seq, KEY_STEP: True} if mark is None else {SEQ_PATH: seq,
                                                                      KEY_MARK: mark}
        batch = Batch(worker, [(OP_EVENT, event)], [seq], step=True)
        self._track(batch, now)
        return batch

    def on_progress(self, next_seq: int) -> None:
        """REDUCE has everything before `next_seq` (it reports every 20 ms)."""
        self.reduce_next = max(self.reduce_next, next_seq)
        marks = self.mark_seqs
        while marks and marks[0] < self.reduce_next:
            marks.popleft()
        for done in self.unconfirmed.values():
            while done and done[0][-1] < self.reduce_next:
                done.popleft()

    def events_in_flight(self) -> int:
        """Events dispatched that REDUCE has not reported through yet (the
        marks among the sequence numbers are no events: not counted)."""
        return max(0, self.seq - self.reduce_next - len(self.mark_seqs))

    def too_far_ahead(self) -> bool:
        """Whether new events must wait for REDUCE to catch up (MAX_AHEAD)."""
        return self.seq - self.reduce_next >= self.max_ahead

    def next_batch(self, queue, limit, now: float) -> Batch | None:
        """Take events from `queue` (lock held) for the next free worker.

        Only events queued before index `limit` (the next control message)
        are taken.  None when no worker has credit, the next event waits
        for a shared-memory slot, or dispatching is too far ahead of REDUCE.
        """
        if self.too_far_ahead() and self._next_is_new(queue):
            self.held_back += 1
            return None
        worker = self.free_worker(avoid=self.shm_saturated)
        if worker is None:
            return None
        batch = self._take(queue, limit, worker)
        if not batch.messages:
            return None
        if batch.seqs:  # only events are acknowledged (a credit per message)
            self._track(batch, now)
        return batch

    @staticmethod
    def _next_is_new(queue) -> bool:
        """Whether the next queued event has no sequence number yet (events a
        dead worker left keep theirs, inside the window: they always go)."""
        return bool(queue.events) and queue.events[0][4] is None

    def _track(self, batch: Batch, now: float) -> None:
        self.credits[batch.worker] -= 1
        batches = self.outstanding.setdefault(batch.worker, collections.deque())
        if not batches:
            self.busy_since[batch.worker] = now
        batches.append((now, batch))

    def _take(self, queue, limit, worker) -> Batch:
        """One large event, or several small ones (see the module docstring)."""
        shm = self.shm if worker in self.shm_workers else None
        scan_min = ZERO_COPY_MIN if shm is None else min(ZERO_COPY_MIN, shm.threshold)
        batch = Batch(worker)
        placed, slot_bytes = [], 0
        batch_max = batch_limit(self.event_cost)
        events = queue.events
        while events and len(batch.messages) < batch_max and (
                limit is None or events[0][0] < limit):
            index, opcode, data, _, seq = events[0]
            if opcode == OP_EVENT and KEY_SHM in data:  # reserved, never from outside
                data = {k: v for k, v in data.items() if k != KEY_SHM}
            plan = None
            big = opcode != OP_EVENT or has_large_value(data, scan_min)
            if big and shm is not None and opcode == OP_EVENT:
                plan = shm.plan(data)
            if plan is not None:
                nbytes = plan[1] * shmem.UNIT
                if batch.messages and (slot_bytes + nbytes > SHM_BATCH_BYTES
                                       or len(placed) >= SHM_BATCH_EVENTS):
                    break
                ticket = None
                if shm.fits_ever(plan) and not self.shm_saturated(worker, nbytes):
                    ticket = shm.reserve_for(worker, plan)
                if ticket is None:
                    if self.shm_waiting != index:
                        self.shm_waiting = index
                        shm.full += 1
                    if batch.messages or (shm.fits_ever(plan) and self.slots_will_free(worker)):
                        break  # a worker will free slots: wait for it
                    plan = None  # nothing will free slots: by socket
                else:
                    placed.append((len(batch.messages), plan, ticket))
                    slot_bytes += nbytes
            large = big and plan is None and (opcode != OP_EVENT or has_large_value(data))
            if large and batch.messages:
                break
            item = queue.pop_event()
            if opcode == OP_EVENT:
                data = self._stamp(data, seq)
                batch.seqs.append(data[SEQ_PATH])
                item = (index, opcode, data, item[3], data[SEQ_PATH])
            batch.items.append(item)
            batch.messages.append((opcode, data))
            batch.small = batch.small and not big
            if large:
                break
        batch.fills = placed  # (copied by fill(), after the queue's lock is let go)
        return batch

    def fill(self, batch: Batch) -> None:
        """Copy the batch's large arrays into the slots reserved for them.

        Called without the queue's lock: a 4 MiB copy takes a third of a
        millisecond, which a source putting its next event would otherwise
        spend waiting.  Only the frontend thread uses the slots, so nothing
        can take them meanwhile.  Events whose arrays all went into slots
        are small now, so the batch goes as one pickled frame (a framed
        event is about eleven frames).
        """
        if not batch.fills:
            return
        copies = []
        for i, plan, ticket in batch.fills:
            opcode, data = batch.messages[i]
            data, todo = self.shm.place(data, plan, ticket)
            batch.messages[i] = (opcode, data)
            copies += todo
        shmem.copy_into_slots(copies)
        batch.fills = []
        batch.small = not any(has_large_value(data) for _, data in batch.messages)

    def _stamp(self, data: dict, seq: int | None) -> dict:
        """The event as sent: its sequence number and the context version;
        counted for the input statistics.  An event that was sent once and
        refused (`seq` given) is sent again as it was."""
        if seq is not None:
            return data
        data = dict(data)
        if self.version is not None:
            data.setdefault("internal#ctx_version", self.version)
        self.key_sets[tuple(data)] += 1
        data[SEQ_PATH] = self.seq
        self.seq += 1
        return data

    # -- shared-memory shares (the one place of this policy) -----------------------
    def shm_saturated(self, worker: str, more: int = 1) -> bool:
        """Whether `worker` holds its share of slots (SHM_WORKER_BYTES)."""
        shm = self.shm
        if shm is None or worker not in self.shm_workers:
            return False
        held = shm.held_bytes(worker)
        return held > 0 and held + more > SHM_WORKER_BYTES

    def slots_will_free(self, worker: str) -> bool:
        """Whether slots will come back: a worker holding some has messages to finish."""
        if self.shm_saturated(worker):
            return bool(self.outstanding.get(worker))
        return any(self.shm.holds(w) and self.outstanding.get(w) for w in self.shm_workers)

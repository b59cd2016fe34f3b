"""The frontend's inbox (metropc.stage.queue.EventQueue): bounds, drop
policies, blocking producers, control ordering and requeue.

Threads are synchronised with Events and joins with timeouts, never sleeps.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from metropc.config import DROP_BLOCK, DROP_NEWEST, DROP_OLDEST, DROP_POLICIES
from metropc.stage.common import OP_EVENT
from metropc.stage.queue import EVENT_OVERHEAD, EventQueue, event_nbytes

JOIN = 10.0  # generous bound for a thread that must finish


def nothing():
    pass


def ev(i, nbytes=0):
    data = {"i": i}
    if nbytes:
        data["a"] = np.zeros(nbytes, np.uint8)
    return data


def ids(q):
    return [item[2]["i"] for item in q.events]


class WatchedCondition(threading.Condition):
    """The queue's condition, telling the test when a producer waits on it."""

    def __init__(self, lock):
        super().__init__(lock)
        self.waiting = threading.Event()

    def wait(self, timeout=None):
        self.waiting.set()
        return super().wait(timeout)


def watched(q):
    q._room = WatchedCondition(q.lock)
    return q._room


class Producer(threading.Thread):
    def __init__(self, q, data):
        super().__init__(daemon=True)
        self.q, self.data = q, data
        self.result = None
        self.done = threading.Event()

    def run(self):
        try:
            self.result = self.q.put_event(OP_EVENT, self.data, nothing)
        finally:
            self.done.set()


def blocked_producer(q, data):
    """A producer thread that is waiting for room (checked, not assumed)."""
    room = watched(q)
    p = Producer(q, data)
    p.start()
    assert room.waiting.wait(JOIN), "the producer never waited for room"
    assert not p.done.is_set()
    return p


# -- event_nbytes -----------------------------------------------------------------------

def test_event_nbytes():
    assert EVENT_OVERHEAD == 256
    assert event_nbytes({}) == 256
    assert event_nbytes({"a": 1, "b": "text", "c": 2.5, "d": None}) == 256
    assert event_nbytes({"a": np.zeros(1000, np.uint8)}) == 1256
    assert event_nbytes({"a": np.zeros((10, 10), np.float64), "b": b"x" * 10}) == 256 + 800 + 10
    assert event_nbytes({"s": np.float32(1.0)}) == 256 + 4

    class Odd:
        nbytes = 10.5  # not an int: not counted

    assert event_nbytes({"o": Odd()}) == 256


# -- count bound -----------------------------------------------------------------------

def test_count_bound_oldest():
    q = EventQueue(3, 1 << 30, DROP_OLDEST)
    assert [q.put_event(OP_EVENT, ev(i), nothing) for i in range(5)] == [True] * 5
    assert ids(q) == [2, 3, 4]
    assert q.dropped == 2
    assert len(q) == 3 and q.nbytes == 3 * 256
    assert [item[0] for item in q.events] == [2, 3, 4]


def test_count_bound_newest():
    q = EventQueue(3, 1 << 30, DROP_NEWEST)
    assert [q.put_event(OP_EVENT, ev(i), nothing) for i in range(5)] == [True] * 3 + [False] * 2
    assert ids(q) == [0, 1, 2]
    assert q.dropped == 2
    assert q.nbytes == 3 * 256
    assert q.enqueued == 3


def test_count_bound_block():
    q = EventQueue(3, 1 << 30, DROP_BLOCK)
    for i in range(3):
        assert q.put_event(OP_EVENT, ev(i), nothing)
    p = blocked_producer(q, ev(3))
    with q.lock:
        item = q.pop_event()
    assert item[2]["i"] == 0
    p.join(JOIN)
    assert not p.is_alive() and p.result is True
    assert ids(q) == [1, 2, 3]
    assert q.dropped == 0


def test_a_producer_waiting_for_room_or_a_resume_gives_up_when_cancelled():
    """A source told to stop must not hang in a full or paused queue: its
    event is not accepted, and not counted anywhere."""
    from metropc.messages import OP_PAUSE
    for pause in (False, True):
        q = EventQueue(1, 1 << 30, DROP_BLOCK)
        if pause:
            q.put_control("all", OP_PAUSE, {}, nothing)
        else:
            assert q.put_event(OP_EVENT, ev(0), nothing)
        cancel = threading.Event()
        room = watched(q)
        p = threading.Thread(target=lambda: setattr(
            p, "result", q.put_event(OP_EVENT, ev(1), nothing, cancel)), daemon=True)
        p.start()
        assert room.waiting.wait(JOIN)
        cancel.set()
        p.join(JOIN)
        assert not p.is_alive() and p.result is False
        assert ids(q) == ([] if pause else [0])
        assert q.dropped == 0 and q.paused_events == 0


def test_a_blocked_producer_is_woken_at_three_quarters_not_per_event():
    """Waking the producer for every event taken made the source and the
    frontend thread trade the GIL and the lock per event (lossless tiny
    events: 20 % of the throughput).  It is woken once the queue is down
    to three quarters; its timed wait is only a safety net."""
    q = EventQueue(8, 1 << 30, DROP_BLOCK)
    for i in range(8):
        assert q.put_event(OP_EVENT, ev(i), nothing)
    p = blocked_producer(q, ev(8))
    notified = []
    notify_all = q._room.notify_all
    q._room.notify_all = lambda: (notified.append(len(q)), notify_all())
    with q.lock:
        q.pop_event()                        # 7 left of 8: no wake-up yet
        assert notified == []
        q.pop_event()                        # 6 = three quarters: wake it
        assert notified == [6]
        q.pop_event()                        # woken already (it waits for this lock)
        assert notified == [6]
    p.join(JOIN)
    assert p.result is True and ids(q) == [3, 4, 5, 6, 7, 8]
    with q.lock:
        q.pop_event()
    assert notified == [6]                   # nobody waits: nobody is woken


def test_wake_is_called_with_the_lock_held_only_for_accepted_events():
    q = EventQueue(1, 1 << 30, DROP_NEWEST)
    calls = []
    assert q.put_event(OP_EVENT, ev(0), lambda: calls.append(q.lock.locked()))
    assert not q.put_event(OP_EVENT, ev(1), lambda: calls.append("refused"))
    assert calls == [True]


# -- byte bound ------------------------------------------------------------------------

def byte_queue(policy):
    q = EventQueue(100, 3 * 1256, policy)
    for i in range(3):
        assert q.put_event(OP_EVENT, ev(i, 1000), nothing)
    assert q.nbytes == 3 * 1256
    return q


def test_byte_bound_oldest():
    q = byte_queue(DROP_OLDEST)
    # 2256 bytes: two of the 1256-byte events must go
    assert q.put_event(OP_EVENT, ev(3, 2000), nothing)
    assert ids(q) == [2, 3]
    assert q.dropped == 2
    assert q.nbytes == 1256 + 2256


def test_byte_bound_oldest_one_byte_over():
    q = EventQueue(100, 1000, DROP_OLDEST)
    assert q.put_event(OP_EVENT, ev(0, 244), nothing)     # 500
    assert q.put_event(OP_EVENT, ev(1, 244), nothing)     # 1000: exactly the bound
    assert q.dropped == 0
    assert q.put_event(OP_EVENT, ev(2), nothing)          # 256 more: one goes
    assert ids(q) == [1, 2] and q.dropped == 1 and q.nbytes == 756


def test_byte_bound_newest():
    q = byte_queue(DROP_NEWEST)
    assert not q.put_event(OP_EVENT, ev(3, 2000), nothing)
    assert not q.put_event(OP_EVENT, ev(4), nothing)
    assert ids(q) == [0, 1, 2]
    assert q.dropped == 2
    assert q.nbytes == 3 * 1256


def test_byte_bound_block():
    q = byte_queue(DROP_BLOCK)
    p = blocked_producer(q, ev(3, 2000))
    q._room.waiting.clear()
    with q.lock:
        q.pop_event()
    # 2512 + 2256 bytes still do not fit: it waits again
    assert q._room.waiting.wait(JOIN)
    assert not p.done.is_set()
    with q.lock:
        q.pop_event()
    p.join(JOIN)
    assert not p.is_alive() and p.result is True
    assert ids(q) == [2, 3]
    assert q.dropped == 0
    assert q.nbytes == 1256 + 2256


@pytest.mark.parametrize("policy", DROP_POLICIES)
def test_event_larger_than_the_byte_bound_goes_alone_into_an_empty_queue(policy):
    q = EventQueue(10, 1000, policy)
    assert q.put_event(OP_EVENT, ev(0, 5000), nothing)  # no wait even for 'block'
    assert ids(q) == [0]
    assert q.nbytes == 5256
    assert q.dropped == 0


def test_event_larger_than_the_byte_bound_oldest_empties_the_queue():
    q = EventQueue(10, 1000, DROP_OLDEST)
    for i in range(3):
        q.put_event(OP_EVENT, ev(i), nothing)
    assert q.put_event(OP_EVENT, ev(3, 5000), nothing)
    assert ids(q) == [3] and q.dropped == 3 and q.nbytes == 5256
    # and the next small one makes room by dropping it
    assert q.put_event(OP_EVENT, ev(4), nothing)
    assert ids(q) == [4] and q.dropped == 4 and q.nbytes == 256


def test_event_larger_than_the_byte_bound_newest_refused_unless_empty():
    q = EventQueue(10, 1000, DROP_NEWEST)
    q.put_event(OP_EVENT, ev(0), nothing)
    assert not q.put_event(OP_EVENT, ev(1, 5000), nothing)
    assert ids(q) == [0] and q.dropped == 1


def test_event_larger_than_the_byte_bound_block_waits_for_an_empty_queue():
    q = EventQueue(10, 1000, DROP_BLOCK)
    q.put_event(OP_EVENT, ev(0), nothing)
    q.put_event(OP_EVENT, ev(1), nothing)
    p = blocked_producer(q, ev(2, 5000))
    q._room.waiting.clear()
    with q.lock:
        q.pop_event()
    assert q._room.waiting.wait(JOIN)       # one left: still waiting
    assert not p.done.is_set()
    with q.lock:
        q.pop_event()
    p.join(JOIN)
    assert p.result is True and ids(q) == [2] and q.dropped == 0


# -- block: the taker, close -------------------------------------------------------------

def test_block_never_blocks_the_taker_thread():
    q = EventQueue(2, 1 << 30, DROP_BLOCK)
    q.put_event(OP_EVENT, ev(0), nothing)
    q.put_event(OP_EVENT, ev(1), nothing)
    result = {}

    def taker():
        q.taker = threading.current_thread()
        result["put"] = q.put_event(OP_EVENT, ev(2), nothing)

    t = threading.Thread(target=taker, daemon=True)
    t.start()
    t.join(JOIN)
    try:
        assert not t.is_alive(), "the taker thread blocked on its own queue"
    finally:
        q.close()  # releases it if it did block
        t.join(JOIN)
    # it cannot wait for itself: the oldest event makes room, counted
    assert result["put"] is True
    assert ids(q) == [1, 2]
    assert q.dropped == 1


def test_close_releases_a_blocked_producer_and_counts_its_event():
    q = EventQueue(1, 1 << 30, DROP_BLOCK)
    q.put_event(OP_EVENT, ev(0), nothing)
    p = blocked_producer(q, ev(1))
    q.close()
    p.join(JOIN)
    assert not p.is_alive()
    assert p.result is False
    assert q.dropped == 1
    assert ids(q) == [0]
    assert q.closed


def test_close_releases_several_blocked_producers():
    q = EventQueue(1, 1 << 30, DROP_BLOCK)
    q.put_event(OP_EVENT, ev(0), nothing)
    room = watched(q)
    producers = [Producer(q, ev(i)) for i in range(1, 4)]
    for p in producers:
        room.waiting.clear()
        p.start()
        assert room.waiting.wait(JOIN)
    q.close()
    for p in producers:
        p.join(JOIN)
        assert not p.is_alive() and p.result is False
    assert q.dropped == 3 and ids(q) == [0]


@pytest.mark.parametrize("policy", DROP_POLICIES)
def test_closed_queue_refuses_and_counts(policy):
    q = EventQueue(10, 1 << 30, policy)
    q.put_event(OP_EVENT, ev(0), nothing)
    q.close()
    woke = []
    assert q.put_event(OP_EVENT, ev(1), lambda: woke.append(1)) is False
    assert woke == [] and q.dropped == 1 and ids(q) == [0] and q.enqueued == 1


# -- control messages and requeue ----------------------------------------------------

def test_control_messages_remember_the_events_before_them():
    q = EventQueue(100, 1 << 30, DROP_OLDEST)
    woke = []
    q.put_control("all", b"params", {"a": 1}, lambda: woke.append(q.lock.locked()))
    q.put_event(OP_EVENT, ev(0), nothing)
    q.put_event(OP_EVENT, ev(1), nothing)
    q.put_control("reduce", b"index", {}, nothing)
    q.put_event(OP_EVENT, ev(2), nothing)
    q.put_control("all", b"step", {"n": 1}, nothing)
    q.put_control("all", b"params", {"a": 2}, nothing)
    assert list(q.control) == [(0, "all", b"params", {"a": 1}),
                               (2, "reduce", b"index", {}),
                               (3, "all", b"step", {"n": 1}),
                               (3, "all", b"params", {"a": 2})]
    assert [item[0] for item in q.events] == [0, 1, 2]
    assert woke == [True]
    # the frontend's rule: an event goes first iff its index < the control's
    assert [i for i, *_ in q.events if i < q.control[1][0]] == [0, 1]


def test_control_index_counts_accepted_events_only():
    q = EventQueue(2, 1 << 30, DROP_NEWEST)
    for i in range(3):
        q.put_event(OP_EVENT, ev(i), nothing)   # the third is refused
    q.put_control("all", b"params", {}, nothing)
    assert q.control[0][0] == 2
    q = EventQueue(2, 1 << 30, DROP_OLDEST)
    for i in range(3):
        q.put_event(OP_EVENT, ev(i), nothing)   # the first is dropped
    q.put_control("all", b"params", {}, nothing)
    assert q.control[0][0] == 3
    assert [item[0] for item in q.events] == [1, 2]
    q.put_event(OP_EVENT, ev(3), nothing)
    assert [item[0] for item in q.events] == [2, 3]  # index 1 dropped
    assert q.control[0][0] == 3                      # still before event 3


def test_pop_event_item_and_bytes():
    q = EventQueue(10, 1 << 30, DROP_OLDEST)
    data = ev(0, 100)
    q.put_event(OP_EVENT, data, nothing)
    with q.lock:
        item = q.pop_event()
    assert item == (0, OP_EVENT, data, 356, None)
    assert item[2] is data
    assert q.nbytes == 0 and len(q) == 0


def test_requeue_puts_items_back_in_front_in_order():
    q = EventQueue(3, 1 << 30, DROP_OLDEST)
    for i in range(3):
        q.put_event(OP_EVENT, ev(i, 100), nothing)
    with q.lock:
        taken = [q.pop_event(), q.pop_event()]
    assert q.nbytes == 356
    q.put_event(OP_EVENT, ev(3), nothing)
    q.put_event(OP_EVENT, ev(4), nothing)
    # taken events came back from a refused send, with their sequence numbers
    taken = [(*item[:4], seq) for item, seq in zip(taken, (10, 11))]
    with q.lock:
        q.requeue(taken)
    assert ids(q) == [0, 1, 2, 3, 4]
    assert [item[4] for item in q.events] == [10, 11, None, None, None]
    assert [item[0] for item in q.events] == [0, 1, 2, 3, 4]
    # accepted once: not subject to the bounds again, nothing dropped
    assert len(q) == 5 > q.max_events
    assert q.dropped == 0
    assert q.nbytes == 3 * 356 + 2 * 256
    # the next new event must make room: the oldest new ones go (the count is
    # over by 2); the requeued ones stay, REDUCE waits for them in order
    q.put_event(OP_EVENT, ev(5), nothing)
    assert ids(q) == [0, 1, 5] and q.dropped == 3
    assert [item[4] for item in q.events] == [10, 11, None]
    assert q.nbytes == 2 * 356 + 256


def test_oldest_refuses_the_new_event_when_only_requeued_ones_wait():
    q = EventQueue(2, 1 << 30, DROP_OLDEST)
    for i in range(2):
        q.put_event(OP_EVENT, ev(i), nothing)
    with q.lock:
        taken = [q.pop_event() for _ in range(2)]
        q.requeue([(*item[:4], seq) for item, seq in zip(taken, (7, 8))])
    assert q.put_event(OP_EVENT, ev(9), nothing) is False
    assert ids(q) == [0, 1] and q.dropped == 1 and q.nbytes == 2 * 256


def test_requeue_nothing():
    q = EventQueue(3, 1 << 30, DROP_OLDEST)
    q.requeue([])
    assert len(q) == 0 and q.nbytes == 0

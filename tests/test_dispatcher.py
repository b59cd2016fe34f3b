"""The POOL dispatch policy (metropc.stage.dispatcher), sans I/O, with a fake clock.

No sockets, processes or sleeps: events go into a real EventQueue, the
Dispatcher is asked for batches, and credits, refusals and worker losses
are reported to it as the frontend thread would.
"""

from __future__ import annotations

import numpy as np
import pytest

from metropc import messages as m
from metropc.config import DROP_OLDEST
from metropc.stage import dispatcher as dispatcher_mod
from metropc.stage import shm as shmem
from metropc.stage.common import KEY_SHM, KEY_STEP, OP_EVENT, SEQ_PATH
from metropc.stage.dispatcher import BATCH_MAX, BATCH_SECONDS, Batch, Dispatcher, batch_limit
from metropc.stage.queue import EventQueue
from metropc.transport import ZERO_COPY_MIN

VERSION_KEY = "internal#ctx_version"


def nothing():
    pass


def make_queue(events=()):
    q = EventQueue(10_000, 1 << 40, DROP_OLDEST)
    for data in events:
        assert q.put_event(OP_EVENT, data, nothing)
    return q


def small(i):
    return {"x": i}


def big_array(nbytes=ZERO_COPY_MIN):
    return np.zeros(nbytes, np.uint8)


def take(d, q, now=0.0, limit=None):
    with q.lock:
        batch = d.next_batch(q, limit, now)
    if batch is not None:
        d.fill(batch)  # (as the frontend loop does, after the lock)
    return batch


def sent_values(batch, key="x"):
    return [data.get(key) for _, data in batch.messages]


def dispatcher(*workers, credit=10, shm=None):
    d = Dispatcher(shm)
    for w in workers:
        d.add_worker(w)
        d.on_credit(w, credit, 0.0)
    return d


def measure(d, per_event, rounds=30, now=1000.0):
    """Measure the event cost honestly: a helper worker finishes messages
    of one event each in `per_event` seconds (fake clock)."""
    d.add_worker("calib")
    d.on_credit("calib", 1, now)
    for _ in range(rounds):
        b = take(d, make_queue([small(-1)]), now)
        assert b is not None and b.worker == "calib" and len(b.seqs) == 1
        now += per_event
        d.on_credit("calib", None, now)
    assert d.held() == []  # every message acknowledged
    d.remove_worker("calib")
    d.key_sets.clear()
    return now


# -- batch_limit -----------------------------------------------------------------------

def test_batch_limit_values():
    assert BATCH_MAX == 128 and BATCH_SECONDS == 0.005
    assert batch_limit(0.0) == BATCH_MAX
    assert batch_limit(1e-7) == BATCH_MAX
    assert batch_limit(BATCH_SECONDS / 32) == 32
    assert batch_limit(0.001) == 5
    assert batch_limit(0.0025) == 2
    assert batch_limit(BATCH_SECONDS) == 1
    assert batch_limit(0.010) == 1
    assert batch_limit(10.0) == 1


def test_event_cost_moving_average():
    d = dispatcher("a")
    assert d.event_cost == BATCH_SECONDS  # unknown: assume slow
    q = make_queue([small(0)])
    b = take(d, q, now=0.0)
    assert b.seqs == [0]
    d.on_credit("a", None, now=0.1)
    assert d.event_cost == pytest.approx(BATCH_SECONDS + 0.2 * (0.1 - BATCH_SECONDS))


# -- round robin and credit ----------------------------------------------------------

def test_round_robin_across_workers_with_credit():
    d = dispatcher("a", "b", "c", credit=2)
    q = make_queue(small(i) for i in range(8))
    batches = [take(d, q) for _ in range(6)]
    assert [b.worker for b in batches] == ["a", "b", "c", "a", "b", "c"]
    # unknown cost: one event per message, in order, numbered in order
    assert [sent_values(b) for b in batches] == [[i] for i in range(6)]
    assert [b.seqs for b in batches] == [[i] for i in range(6)]
    assert dict(d.credits) == {"a": 0, "b": 0, "c": 0}
    # nobody has credit: nothing is taken
    assert take(d, q) is None
    assert len(q) == 2
    assert not d.has_credit()


def test_workers_without_credit_are_skipped():
    d = dispatcher("a", "b", "c", credit=3)
    d.credits["a"] = 0
    q = make_queue(small(i) for i in range(4))
    assert [take(d, q).worker for _ in range(4)] == ["b", "c", "b", "c"]
    assert d.credits["b"] == 1 and d.credits["c"] == 1 and d.credits["a"] == 0


def test_no_dispatch_without_credit():
    d = Dispatcher()
    d.add_worker("a")  # hello, but no credit yet
    q = make_queue([small(0)])
    assert not d.has_credit()
    assert take(d, q) is None
    assert len(q) == 1 and d.seq == 0 and d.outstanding == {}
    d.on_credit("a", 1, 0.0)
    assert d.has_credit()
    b = take(d, q)
    assert b.worker == "a" and b.seqs == [0]


def test_no_workers_at_all():
    d = Dispatcher()
    q = make_queue([small(0)])
    assert take(d, q) is None
    assert d.step_batch(0.0) is None
    assert d.seq == 0


def test_one_credit_per_message_whatever_its_size():
    d = Dispatcher()
    measure(d, 0.0)
    d.add_worker("a")
    d.on_credit("a", 1, 0.0)
    base = d.seq
    q = make_queue(small(i) for i in range(10))
    b = take(d, q)
    assert b.worker == "a"
    assert sent_values(b) == list(range(10))
    assert b.seqs == list(range(base, base + 10))
    assert d.credits["a"] == 0
    assert take(d, make_queue([small(99)])) is None
    # one message finished: one credit
    d.on_credit("a", None, 1.0)
    assert d.credits["a"] == 1


def test_initial_and_late_credits_add_up():
    d = Dispatcher()
    d.add_worker("a")
    d.on_credit("a", 4, 0.0)
    d.on_credit("a", 2, 0.0)
    assert d.credits["a"] == 6
    q = make_queue(small(i) for i in range(7))
    assert [take(d, q).worker for _ in range(6)] == ["a"] * 6
    assert take(d, q) is None


def test_add_worker_again_resets_its_credit():
    d = dispatcher("a", credit=5)
    d.add_worker("a")
    assert d.workers == ["a"]
    assert d.credits["a"] == 0
    assert take(d, make_queue([small(0)])) is None


def test_round_robin_after_a_worker_is_removed():
    d = dispatcher("a", "b", "c", credit=5)
    q = make_queue(small(i) for i in range(10))
    assert take(d, q).worker == "a"
    d.remove_worker("a")  # removed before the turn: b is still next
    assert [take(d, q).worker for _ in range(4)] == ["b", "c", "b", "c"]
    d.remove_worker("c")  # c was last: b goes on
    assert [take(d, q).worker for _ in range(2)] == ["b", "b"]


# -- batching --------------------------------------------------------------------------

def test_tiny_measured_cost_batches_up_to_batch_max():
    d = Dispatcher()
    measure(d, 0.0)
    assert batch_limit(d.event_cost) == BATCH_MAX
    d.add_worker("a")
    d.on_credit("a", 4, 0.0)
    base, n = d.seq, BATCH_MAX + 8
    q = make_queue(small(i) for i in range(n))
    b1 = take(d, q)
    b2 = take(d, q)
    assert sent_values(b1) == list(range(BATCH_MAX))
    assert sent_values(b2) == list(range(BATCH_MAX, n))
    assert b1.seqs == list(range(base, base + BATCH_MAX))
    assert b2.seqs == list(range(base + BATCH_MAX, base + n))
    assert b1.small and b2.small
    assert take(d, q) is None  # empty queue
    assert d.credits["a"] == 2


def test_ten_ms_measured_cost_sends_one_event_per_message():
    d = Dispatcher()
    measure(d, 0.010)
    assert d.event_cost > BATCH_SECONDS
    d.add_worker("a")
    d.on_credit("a", 10, 0.0)
    q = make_queue(small(i) for i in range(5))
    batches = [take(d, q) for _ in range(5)]
    assert [sent_values(b) for b in batches] == [[i] for i in range(5)]
    assert len(q) == 0


def test_cost_measured_per_event_of_a_batch():
    # 32 events finished in 3.2 ms: 0.1 ms per event
    d = Dispatcher()
    measure(d, 0.0)
    before = d.event_cost
    d.add_worker("a")
    d.on_credit("a", 1, 0.0)
    q = make_queue(small(i) for i in range(32))
    b = take(d, q, now=10.0)
    assert len(b.seqs) == 32
    d.on_credit("a", None, 10.0032)
    assert d.event_cost == pytest.approx(before + 0.2 * (0.0001 - before))


def test_new_context_measures_anew():
    d = Dispatcher()
    measure(d, 0.0)
    d.new_context(3)
    assert d.version == 3
    assert d.event_cost == BATCH_SECONDS
    d.add_worker("a")
    d.on_credit("a", 3, 0.0)
    q = make_queue(small(i) for i in range(3))
    assert [len(take(d, q).seqs) for _ in range(3)] == [1, 1, 1]
    # a slow measured cost is kept
    d.event_cost = 0.5
    d.new_context(4)
    assert d.event_cost == 0.5


def test_large_buffer_event_goes_alone():
    d = Dispatcher()
    measure(d, 0.0)
    d.add_worker("a")
    d.on_credit("a", 10, 0.0)
    img = big_array()
    q = make_queue([small(0), small(1), {"x": 2, "img": img}, small(3), small(4)])
    b1, b2, b3 = take(d, q), take(d, q), take(d, q)
    assert sent_values(b1) == [0, 1] and b1.small
    assert sent_values(b2) == [2] and not b2.small
    assert b2.messages[0][1]["img"] is img  # by socket, unchanged
    assert sent_values(b3) == [3, 4] and b3.small
    assert take(d, q) is None


def test_large_buffer_threshold_is_zero_copy_min():
    d = Dispatcher()
    measure(d, 0.0)
    d.add_worker("a")
    d.on_credit("a", 10, 0.0)
    below = {"x": 1, "arr": big_array(ZERO_COPY_MIN - 1)}
    q = make_queue([small(0), below, small(2), {"x": 3, "arr": big_array(ZERO_COPY_MIN)}])
    b1, b2 = take(d, q), take(d, q)
    assert sent_values(b1) == [0, 1, 2] and b1.small
    assert sent_values(b2) == [3] and not b2.small


def test_two_large_events_in_a_row_go_in_two_messages():
    d = Dispatcher()
    measure(d, 0.0)
    d.add_worker("a")
    d.on_credit("a", 10, 0.0)
    q = make_queue([{"x": 0, "a": big_array()}, {"x": 1, "a": big_array()}])
    assert sent_values(take(d, q)) == [0]
    assert sent_values(take(d, q)) == [1]


def test_events_after_a_control_message_are_not_taken():
    d = Dispatcher()
    measure(d, 0.0)
    d.add_worker("a")
    d.on_credit("a", 5, 0.0)
    q = make_queue(small(i) for i in range(3))
    q.put_control("all", b"params", {"p": 1}, nothing)
    for i in range(3, 5):
        q.put_event(OP_EVENT, small(i), nothing)
    limit = q.control[0][0]
    assert limit == 3
    b = take(d, q, limit=limit)
    assert sent_values(b) == [0, 1, 2]
    credits = d.credits["a"]
    seq = d.seq
    # nothing before the control message is left: no batch, no credit used
    assert take(d, q, limit=limit) is None
    assert d.credits["a"] == credits and d.seq == seq
    assert len(q) == 2
    q.control.popleft()
    assert sent_values(take(d, q, limit=None)) == [3, 4]


def test_limit_zero_takes_nothing():
    d = dispatcher("a")
    q = make_queue([small(0)])
    assert take(d, q, limit=0) is None
    assert len(q) == 1 and d.credits["a"] == 10


def test_message_that_is_not_an_event_goes_alone_without_a_number():
    d = Dispatcher()
    measure(d, 0.0)
    d.add_worker("a")
    d.on_credit("a", 5, 0.0)
    base = d.seq
    q = make_queue([small(0)])
    q.put_event(b"params", {"p": 1}, nothing)
    q.put_event(OP_EVENT, small(2), nothing)
    b1, b2, b3 = take(d, q), take(d, q), take(d, q)
    assert sent_values(b1) == [0] and b1.seqs == [base]
    assert b2.messages == [(b"params", {"p": 1})] and b2.seqs == [] and not b2.small
    assert sent_values(b3) == [2] and b3.seqs == [base + 1]
    assert d.seq == base + 2


# -- sequence numbers, version, statistics --------------------------------------------

def test_events_are_stamped_without_touching_the_original():
    d = dispatcher("a")
    original = {"x": 1}
    q = make_queue([original])
    b = take(d, q)
    assert b.messages == [(OP_EVENT, {"x": 1, SEQ_PATH: 0})]
    assert original == {"x": 1}
    assert b.items[0][4] == 0  # the queue item carries its number, for requeue
    assert b.items[0][2] is b.messages[0][1]


def test_version_stamping():
    d = dispatcher("a")
    q = make_queue([small(0)])
    assert VERSION_KEY not in take(d, q).messages[0][1]  # no context yet
    d.new_context(7)
    q = make_queue([small(1), {"x": 2, VERSION_KEY: 3}])
    b1, b2 = take(d, q), take(d, q)
    assert b1.messages[0][1] == {"x": 1, VERSION_KEY: 7, SEQ_PATH: 1}
    # a version the event already has is kept
    assert b2.messages[0][1] == {"x": 2, VERSION_KEY: 3, SEQ_PATH: 2}


def test_input_key_statistics():
    d = dispatcher("a", credit=20)
    q = make_queue([{"x": 1}, {"x": 2}, {"x": 3, "y": 4}])
    for _ in range(3):
        take(d, q)
    assert dict(d.key_sets) == {("x",): 2, ("x", "y"): 1}
    d.new_context(1)
    take(d, make_queue([{"y": 0}]))
    assert d.key_sets[("y", VERSION_KEY)] == 1
    # sequence numbers are not input keys
    assert not any(SEQ_PATH in keys for keys in d.key_sets)


def test_reserved_shm_key_from_outside_is_dropped():
    d = dispatcher("a")
    q = make_queue([{"x": 1, KEY_SHM: b"forged"}])
    b = take(d, q)
    assert b.messages[0][1] == {"x": 1, SEQ_PATH: 0}
    assert dict(d.key_sets) == {("x",): 1}


# -- refused sends ---------------------------------------------------------------------

def test_refused_send_requeues_with_the_same_sequence_numbers():
    d = Dispatcher()
    d.new_context(5)
    measure(d, 0.0)  # after the context: it measures work anew
    for w in ("a", "b"):
        d.add_worker(w)
        d.on_credit(w, 3, 0.0)
    base = d.seq
    q = make_queue(small(i) for i in range(3))
    b = take(d, q, now=1.0)
    assert b.worker == "a" and b.seqs == [base, base + 1, base + 2]
    sent = [data for _, data in b.messages]
    key_sets = dict(d.key_sets)

    items = d.refused(b)
    assert items is b.items and len(items) == 3
    assert d.credits["a"] == 0
    assert d.oldest("a") is None and d.held() == []
    with q.lock:
        q.requeue(items)
    assert len(q) == 3

    again = take(d, q, now=2.0)
    assert again.worker == "b"
    assert again.seqs == [base, base + 1, base + 2]
    assert [data for _, data in again.messages] == sent
    assert all(data[VERSION_KEY] == 5 for data in sent)
    assert d.seq == base + 3  # no new numbers consumed
    assert dict(d.key_sets) == key_sets  # counted once
    assert d.held() == [base, base + 1, base + 2]
    assert d.remove_worker("a") == ([], [], [])  # it lost nothing


def test_refused_events_keep_their_place_before_newer_ones():
    d = dispatcher("a", "b", credit=5)
    q = make_queue(small(i) for i in range(3))
    b = take(d, q)
    assert b.seqs == [0]
    with q.lock:
        q.requeue(d.refused(b))
    assert [take(d, q).seqs for _ in range(3)] == [[0], [1], [2]]


def test_refused_worker_gets_nothing_until_hello():
    d = dispatcher("a", credit=3)
    q = make_queue(small(i) for i in range(2))
    b = take(d, q)
    with q.lock:
        q.requeue(d.refused(b))
    assert d.credits["a"] == 0
    assert take(d, q) is None
    assert len(q) == 2
    # it says hello again and sends its credit
    d.add_worker("a")
    assert take(d, q) is None
    d.on_credit("a", 3, 5.0)
    again = take(d, q, now=5.0)
    assert again.worker == "a" and again.seqs == [0]


def test_refused_worker_gets_nothing_from_a_late_credit():
    d = dispatcher("a", credit=3)
    q = make_queue(small(i) for i in range(3))
    first = take(d, q, now=0.0)        # accepted
    refused = take(d, q, now=1.0)      # ZeroMQ refuses this one
    assert first.seqs == [0] and refused.seqs == [1]
    with q.lock:
        q.requeue(d.refused(refused))
    d.on_credit("a", None, 2.0)        # the credit for `first`, already on its way
    assert take(d, q, now=2.0) is None


def test_refused_step_is_sent_again_with_its_number():
    d = dispatcher("a", "b", credit=2)
    step = d.step_batch(1.0)
    assert step.worker == "a" and step.seqs == [0]
    assert d.seq == 1
    assert d.refused(step) == []  # a step has no queue items
    again = d.step_batch(2.0, seq=step.seqs[0])
    assert again.worker == "b"
    assert again.seqs == [0]
    assert again.messages == [(OP_EVENT, {SEQ_PATH: 0, KEY_STEP: True})]
    assert d.seq == 1
    assert d.held() == [0]


def test_refused_batch_that_is_not_the_last_one_leaves_outstanding_alone():
    d = dispatcher("a", credit=3)
    q = make_queue(small(i) for i in range(2))
    b1 = take(d, q)
    b2 = take(d, q)
    d.refused(b1)  # an older one: not the one just sent
    assert d.held() == [0, 1]
    assert b2.seqs == [1]


# -- loss accounting -------------------------------------------------------------------

NOTHING = ([], [], [])


def seqs_of(items):
    return [item[4] for item in items]


def test_remove_worker_accounts_for_exactly_the_unacknowledged_events():
    d = Dispatcher()
    measure(d, 0.0)
    d.add_worker("a")
    d.add_worker("b")
    d.on_credit("a", 4, 0.0)
    d.on_credit("b", 4, 0.0)
    base = d.seq
    q = make_queue(small(i) for i in range(20))
    b1 = take(d, q, now=0.0, limit=3)     # a: events 0..2
    b2 = take(d, q, now=0.0, limit=5)     # b: 3..4
    b3 = take(d, q, now=1.0, limit=9)     # a: 5..8
    b4 = take(d, q, now=2.0, limit=10)    # b: 9
    b5 = take(d, q, now=3.0, limit=12)    # a: 10..11
    assert [b.worker for b in (b1, b2, b3, b4, b5)] == ["a", "b", "a", "b", "a"]
    assert b1.seqs == [base, base + 1, base + 2]
    # a finished its first message: those events are acknowledged
    d.on_credit("a", None, 4.0)
    assert sorted(d.held()) == list(range(base + 3, base + 12))
    # ... but until REDUCE reports them through, their results may not have
    # left a worker killed just after its credit: doubtful
    assert d.finished_unconfirmed("a") == b1.seqs
    d.on_progress(base + 2)
    assert d.finished_unconfirmed("a") == [base + 2]
    lost, requeue, steps = d.remove_worker("a")
    assert d.finished_unconfirmed("a") == []
    # the message it was working on is lost; the one behind it was never started
    assert lost == b3.seqs == [base + 5, base + 6, base + 7, base + 8]
    assert requeue == b5.items
    assert seqs_of(requeue) == b5.seqs == [base + 10, base + 11]
    assert steps == []
    accounted = lost + seqs_of(requeue) + steps
    assert sorted(accounted) == b3.seqs + b5.seqs  # exactly the unacknowledged ones
    assert not set(b1.seqs) & set(accounted)        # acknowledged: not in it
    assert "a" not in d.workers and "a" not in d.credits
    assert d.oldest("a") is None
    assert sorted(d.held()) == b2.seqs + b4.seqs
    # removing it again, or a late credit from it, changes nothing
    assert d.remove_worker("a") == NOTHING
    d.on_credit("a", None, 5.0)
    d.on_credit("a", 3, 5.0)
    assert "a" not in d.credits
    assert take(d, make_queue([small(99)]), now=5.0).worker == "b"


def test_events_it_never_started_are_sent_again_with_their_numbers():
    d = dispatcher("a", "b", credit=3)
    d.credits["b"] = 0
    q = make_queue(small(i) for i in range(3))
    sent = [take(d, q, now=float(i)) for i in range(3)]
    assert [b.worker for b in sent] == ["a"] * 3 and d.seq == 3
    d.new_context(4)  # meanwhile: it does not change events already numbered
    lost, requeue, steps = d.remove_worker("a")
    assert lost == [0] and seqs_of(requeue) == [1, 2] and steps == []
    with q.lock:
        q.requeue(requeue)
    d.on_credit("b", 2, 10.0)
    again = [take(d, q, now=10.0), take(d, q, now=10.0)]
    assert [b.worker for b in again] == ["b", "b"]
    assert [b.seqs for b in again] == [[1], [2]]
    assert [b.messages for b in again] == [sent[1].messages, sent[2].messages]
    assert VERSION_KEY not in again[0].messages[0][1]
    assert d.seq == 3
    assert dict(d.key_sets) == {("x",): 3}


def test_remove_worker_after_everything_was_acknowledged():
    d = dispatcher("a", credit=2)
    q = make_queue(small(i) for i in range(2))
    take(d, q, now=0.0)
    take(d, q, now=0.0)
    d.on_credit("a", None, 1.0)
    d.on_credit("a", None, 2.0)
    assert d.held() == []
    assert d.remove_worker("a") == NOTHING


def test_unknown_worker_removed():
    d = Dispatcher()
    assert d.remove_worker("nobody") == NOTHING


def test_steps_behind_the_lost_message_are_sent_again():
    d = dispatcher("a", "b", credit=4)
    d.credits["b"] = 0
    q = make_queue(small(i) for i in range(2))
    e0 = take(d, q)
    step = d.step_batch(1.0)
    e2 = take(d, q)
    assert (e0.seqs, step.seqs, e2.seqs) == ([0], [1], [2])
    assert step.step and not e0.step
    lost, requeue, steps = d.remove_worker("a")
    assert lost == [0]
    assert seqs_of(requeue) == [2]  # the step is not a queue item
    assert steps == [(1, None)]  # (sequence number, mark): None for a step
    d.on_credit("b", 1, 2.0)
    again = d.step_batch(2.0, seq=steps[0][0], mark=steps[0][1])
    assert again.worker == "b" and again.seqs == [1]
    assert again.messages == step.messages
    assert d.seq == 3


def test_step_being_worked_on_is_lost_like_an_event():
    d = dispatcher("a", credit=2)
    step = d.step_batch(0.0)
    take(d, make_queue([small(0)]))
    lost, requeue, steps = d.remove_worker("a")
    assert lost == step.seqs == [0]
    assert seqs_of(requeue) == [1] and steps == []


# -- oldest (busy_since) -------------------------------------------------------------

def test_oldest_reports_start_of_the_oldest_message():
    d = dispatcher("a", credit=5)
    assert d.oldest("a") is None
    q = make_queue(small(i) for i in range(5))
    take(d, q, now=10.0)                      # seq 0, starts at once
    assert d.oldest("a")[:2] == (10.0, [0])
    take(d, q, now=11.0)                      # seq 1, queued behind it
    take(d, q, now=12.0)                      # seq 2
    assert d.oldest("a")[:2] == (10.0, [0])
    # the first is done at 15: the second started then, not when it was sent
    d.on_credit("a", None, 15.0)
    assert d.oldest("a")[:2] == (15.0, [1])
    d.on_credit("a", None, 16.0)
    assert d.oldest("a")[:2] == (16.0, [2])
    d.on_credit("a", None, 17.0)
    assert d.oldest("a") is None
    # idle since 17; a message sent at 30 starts at 30
    take(d, q, now=30.0)
    assert d.oldest("a")[:2] == (30.0, [3])
    # a message sent after the previous one finished starts when sent
    d.on_credit("a", None, 31.0)
    take(d, q, now=40.0)
    assert d.oldest("a")[:2] == (40.0, [4])


def test_oldest_of_a_batch_lists_all_its_seqs():
    d = Dispatcher()
    measure(d, 0.0)
    d.add_worker("a")
    d.on_credit("a", 1, 0.0)
    base = d.seq
    q = make_queue(small(i) for i in range(3))
    take(d, q, now=5.0)
    assert d.oldest("a")[:2] == (5.0, [base, base + 1, base + 2])


def test_oldest_names_its_events_by_their_ids_for_the_operator():
    d = Dispatcher()
    measure(d, 0.0)
    d.add_worker("a")
    d.on_credit("a", 1, 0.0)
    q = make_queue([{"internal#train_id": 10100, "internal#event_id": 10100},
                    {"internal#train_id": 10101}, {"x": 1}])
    take(d, q, now=5.0)
    started, seqs, what = d.oldest("a")
    assert what == f"events [10100, 10101, {seqs[2]}]"  # (no id: the sequence number)


def test_busy_since_used_for_measuring_cost():
    # two messages sent together; the second one's work starts when the first ends
    d = dispatcher("a", credit=2)
    q = make_queue(small(i) for i in range(2))
    take(d, q, now=0.0)
    take(d, q, now=0.0)
    d.on_credit("a", None, 1.0)   # took 1 s
    cost1 = d.event_cost
    assert cost1 == pytest.approx(BATCH_SECONDS + 0.2 * (1.0 - BATCH_SECONDS))
    d.on_credit("a", None, 1.5)   # took 0.5 s (from 1.0), not 1.5 s
    assert d.event_cost == pytest.approx(cost1 + 0.2 * (0.5 - cost1))


# -- step batches ---------------------------------------------------------------------

def test_step_batch_consumes_a_sequence_number_in_order():
    d = dispatcher("a", "b", credit=3)
    d.new_context(2)
    q = make_queue(small(i) for i in range(2))
    e0 = take(d, q, now=0.0)
    step = d.step_batch(0.5)
    e1 = take(d, q, now=1.0)
    assert e0.seqs == [0] and step.seqs == [1] and e1.seqs == [2]
    assert step.worker == "b"
    assert step.messages == [(OP_EVENT, {SEQ_PATH: 1, KEY_STEP: True})]
    assert step.items == []
    assert d.credits["b"] == 2
    assert d.oldest("b")[:2] == (0.5, [1])
    assert d.seq == 3
    assert dict(d.key_sets) == {("x", VERSION_KEY): 2}  # steps are not input


def test_step_batch_without_credit_consumes_nothing():
    d = dispatcher("a", credit=1)
    take(d, make_queue([small(0)]))
    assert d.step_batch(1.0) is None
    assert d.seq == 1
    assert d.step_batch(1.0, seq=0) is None


# -- shared-memory slots (the real FrontendSlots, no worker process) ---------------

@pytest.fixture
def slots():
    if not shmem.available():
        pytest.skip("no usable /dev/shm")
    before = set(shmem.owned_segments())
    s = shmem.FrontendSlots(8 << 20, threshold=16 << 10)  # 4 MiB of event slots
    names = {s.input_name}
    try:
        assert s.input_name in shmem.owned_segments()
        yield s
    finally:
        names |= {seg.name for seg in s.outputs.values()}
        s.close()
        left = set(shmem.owned_segments())
        assert not names & left, f"segments left behind: {names & left}"
        assert left <= before


def slot_event(i, nbytes=200 << 10):
    return {"x": i, "img": np.full(nbytes, i % 256, np.uint8)}


def shm_dispatcher(slots, *workers, credit=10, shm_workers=None):
    d = Dispatcher(slots)
    measure(d, 0.0)
    for w in workers:
        d.add_worker(w, shm=w in (shm_workers if shm_workers is not None else workers))
        d.on_credit(w, credit, 0.0)
    return d


def test_shm_event_travels_in_a_slot(slots):
    d = shm_dispatcher(slots, "a")
    assert d.shm_workers == {"a"}
    ev = slot_event(7)
    q = make_queue([ev])
    b = take(d, q)
    (opcode, data), = b.messages
    assert opcode == OP_EVENT
    assert data["img"] is None and isinstance(data[KEY_SHM], bytes)
    assert data["x"] == 7 and data[SEQ_PATH] == b.seqs[0]
    assert b.small  # its array is in the slot: the batch goes as one pickled frame
    # the queue item keeps the event as it was before it went in a slot
    assert b.items[0][2]["img"] is ev["img"] and KEY_SHM not in b.items[0][2]
    assert slots.placed == 1 and slots.placed_bytes == 200 << 10
    assert slots.holds("a") and slots.held_bytes("a") == 200 << 10
    assert not slots.holds("b")


def test_the_copy_into_a_slot_is_made_after_the_queue_lock(slots):
    """Under the queue's lock the slot is only reserved; the copy (a third
    of a millisecond for 4 MiB) comes after, so that a source putting its
    next event meanwhile does not wait for it."""
    d = shm_dispatcher(slots, "a")
    q = make_queue([slot_event(7)])
    with q.lock:
        b = d.next_batch(q, None, 0.0)
    (_, data), = b.messages
    assert data["img"] is not None and KEY_SHM not in data  # not copied yet
    assert slots.holds("a") and slots.placed == 0           # but its slot is reserved
    assert q.put_event(OP_EVENT, small(8), lambda: None)    # (the lock is free)
    d.fill(b)
    (_, data), = b.messages
    assert data["img"] is None and isinstance(data[KEY_SHM], bytes)
    assert slots.placed == 1
    d.fill(b)  # (once only)
    assert slots.placed == 1


def test_shm_events_are_batched_together(slots, monkeypatch):
    d = shm_dispatcher(slots, "a")
    q = make_queue([slot_event(i) for i in range(4)] + [small(4)])
    b = take(d, q)
    assert sent_values(b) == [0, 1, 2, 3, 4]
    assert all(data.get("img", None) is None for _, data in b.messages)
    assert sum(KEY_SHM in data for _, data in b.messages) == 4
    assert slots.placed == 4


def test_event_with_an_array_left_out_of_its_slot_is_not_small(slots):
    # a structured dtype has no slot layout: that array stays in the event
    ev = {**slot_event(1), "rec": np.zeros(16 << 10, dtype=[("a", "<f4"), ("b", "<i4")])}
    b = take(shm_dispatcher(slots, "a"), make_queue([ev]))
    (_, data), = b.messages
    assert data["img"] is None and data["rec"] is ev["rec"]
    assert not b.small


def test_shm_batch_bytes_bound(slots, monkeypatch):
    monkeypatch.setattr(dispatcher_mod, "SHM_BATCH_BYTES", 500 << 10)
    d = shm_dispatcher(slots, "a")
    q = make_queue([slot_event(i) for i in range(5)])
    assert [sent_values(take(d, q)) for _ in range(3)] == [[0, 1], [2, 3], [4]]


def test_shm_batch_events_bound(slots, monkeypatch):
    # small slot events: the bytes would allow all six, the count allows four
    monkeypatch.setattr(dispatcher_mod, "SHM_BATCH_EVENTS", 4)
    d = shm_dispatcher(slots, "a")
    q = make_queue([slot_event(i, nbytes=16 << 10) for i in range(6)])
    assert [sent_values(take(d, q)) for _ in range(2)] == [[0, 1, 2, 3], [4, 5]]


def test_worker_without_shm_gets_arrays_by_socket(slots):
    # the 32 KiB array is above the slot threshold but below ZERO_COPY_MIN
    d = shm_dispatcher(slots, "a", "b", shm_workers={"a"})
    assert d.shm_workers == {"a"}
    mid = [{"x": i, "arr": np.zeros(32 << 10, np.uint8)} for i in range(4)]
    q = make_queue(mid)
    ba = take(d, q, limit=1)            # a: in a slot
    assert ba.worker == "a" and KEY_SHM in ba.messages[0][1] and ba.small
    bb = take(d, q)                     # b: by socket, small enough to batch
    assert bb.worker == "b"
    assert sent_values(bb) == [1, 2, 3] and bb.small
    assert all(KEY_SHM not in data and data["arr"] is mid[i + 1]["arr"]
               for i, (_, data) in enumerate(bb.messages))
    assert not slots.holds("b")


def test_add_worker_shm_needs_slots():
    d = Dispatcher(None)
    d.add_worker("a", shm=True)
    assert d.shm_workers == set()
    assert d.shm_saturated("a") is False


def test_saturated_worker_is_asked_last(slots, monkeypatch):
    monkeypatch.setattr(dispatcher_mod, "SHM_WORKER_BYTES", 128 << 10)
    d = shm_dispatcher(slots, "a", "b")
    q = make_queue([slot_event(i) for i in range(3)])
    b1 = take(d, q)
    assert b1.worker == "a" and sent_values(b1) == [0]  # 200 KiB: its share, alone
    assert d.shm_saturated("a") and not d.shm_saturated("b")
    # the next event could not join a's message: it waited (counted once)
    assert d.shm_waiting == 1 and slots.full == 1
    b2 = take(d, q)
    assert b2.worker == "b" and sent_values(b2) == [1]
    assert d.shm_saturated("b")
    assert d.shm_waiting == 2 and slots.full == 2
    # both saturated: the turn goes on (a) and the event waits for a slot
    assert take(d, q) is None
    assert take(d, q) is None
    assert d.shm_waiting == 2 and slots.full == 2  # the same event is counted once
    assert len(q) == 1
    # a finishes and frees its slot: the event goes to a
    d.on_credit("a", None, 1.0)
    slots.release("a", np.array(list(slots.held["a"]), "<i8").tobytes())
    assert not d.shm_saturated("a")
    b3 = take(d, q, now=1.0)
    assert b3.worker == "a" and sent_values(b3) == [2] and KEY_SHM in b3.messages[0][1]


def test_saturated_worker_with_nothing_to_finish_gets_it_by_socket(slots, monkeypatch):
    monkeypatch.setattr(dispatcher_mod, "SHM_WORKER_BYTES", 128 << 10)
    d = shm_dispatcher(slots, "a")
    q = make_queue([slot_event(0), slot_event(1)])
    assert KEY_SHM in take(d, q, now=0.0).messages[0][1]
    # done, but the slot stays pinned (the view kept the array): no slot will free
    d.on_credit("a", None, 1.0)
    assert d.shm_saturated("a") and not d.slots_will_free("a")
    ev = q.events[0][2]
    b = take(d, q, now=1.0)
    assert b is not None and sent_values(b) == [1]
    assert b.messages[0][1]["img"] is ev["img"] and KEY_SHM not in b.messages[0][1]
    assert slots.full == 1 and slots.placed == 1


def test_event_too_large_for_the_segment_goes_by_socket(slots):
    d = shm_dispatcher(slots, "a")
    huge = {"x": 0, "img": np.zeros(5 << 20, np.uint8)}  # the input segment has 4 MiB
    q = make_queue([huge, small(1)])
    b = take(d, q)
    assert sent_values(b) == [0]
    assert b.messages[0][1]["img"] is huge["img"]
    assert KEY_SHM not in b.messages[0][1]
    assert slots.full == 1 and slots.placed == 0
    assert sent_values(take(d, q)) == [1]


def test_refused_shm_batch_requeues_events_as_they_were(slots):
    d = shm_dispatcher(slots, "a", "b", shm_workers={"a"})
    ev = slot_event(3)
    q = make_queue([ev])
    b = take(d, q)
    assert b.worker == "a" and KEY_SHM in b.messages[0][1]
    seq = b.seqs[0]
    with q.lock:
        q.requeue(d.refused(b))
    again = take(d, q)
    assert again.worker == "b"
    assert again.seqs == [seq]
    assert again.messages[0][1]["img"] is ev["img"]
    assert KEY_SHM not in again.messages[0][1]
    # the slot a held is reclaimed when it is replaced
    assert slots.reclaim("a") == 1
    assert not slots.holds("a")


def test_slots_will_free():
    class Slots:
        """The part of FrontendSlots the share policy reads."""
        threshold = 1 << 16

        def __init__(self):
            self.bytes = {}

        def held_bytes(self, w):
            return self.bytes.get(w, 0)

        def holds(self, w):
            return self.bytes.get(w, 0) > 0

    s = Slots()
    d = Dispatcher(s)
    for w in ("a", "b"):
        d.add_worker(w, shm=True)
        d.on_credit(w, 1, 0.0)
    assert not d.slots_will_free("a")        # nobody holds anything
    s.bytes["b"] = 1 << 20
    assert not d.slots_will_free("a")        # b holds some but has nothing to finish
    d.step_batch(0.0)                        # a is busy now (holds nothing)
    d.step_batch(0.0)                        # b is busy
    assert d.slots_will_free("a")            # b will finish and free
    s.bytes["a"] = dispatcher_mod.SHM_WORKER_BYTES
    assert d.shm_saturated("a")
    assert d.slots_will_free("a")            # a itself will finish
    assert d.shm_saturated("a", 0) is False  # exactly its share, nothing more
    d.on_credit("a", None, 1.0)
    assert not d.slots_will_free("a")        # saturated, nothing to finish


def test_batch_defaults():
    b = Batch("w")
    assert b.messages == [] and b.seqs == [] and b.items == [] and b.small is True
    assert b.step is False


def test_a_mark_behind_the_lost_message_is_sent_again_as_the_same_mark():
    d = dispatcher("a", "b", credit=4)
    d.credits["b"] = 0
    q = make_queue([small(0)])
    take(d, q)
    mark = {"kind": "reset", "views": ["h"]}
    sent = d.step_batch(1.0, mark=mark)
    assert sent.messages[0][1][m.KEY_MARK] == mark
    lost, requeue, steps = d.remove_worker("a")
    assert lost == [0] and steps == [(1, mark)]
    d.on_credit("b", 1, 2.0)
    again = d.step_batch(2.0, seq=1, mark=mark)
    assert again.worker == "b" and again.messages == sent.messages


def test_dispatching_waits_for_reduce_within_its_reorder_window():
    """A worker's results can queue behind another's at REDUCE; REDUCE
    gives up on a missing event once 4096 later ones wait.  So new events
    go out only while fewer than MAX_AHEAD are beyond REDUCE's progress."""
    B = dispatcher_mod.BATCH_MAX
    d = dispatcher("a", "b", credit=1000)
    d.event_cost = 1e-9  # full batches
    d.max_ahead = 2 * B
    q = make_queue([small(i) for i in range(5 * B)])
    sent = []
    while (b := take(d, q)) is not None:
        sent += b.seqs
    assert sent == list(range(2 * B))        # two full batches, then it waits
    assert d.too_far_ahead() and d.held_back == 1
    d.on_progress(B + B // 4)                # REDUCE has 0..1.25 B: 0.75 B beyond it
    assert take(d, q).seqs == list(range(2 * B, 3 * B))
    assert take(d, q).seqs == list(range(3 * B, 4 * B))   # (one batch past the limit at most)
    assert take(d, q) is None
    d.on_progress(10)                        # an older report changes nothing
    assert d.reduce_next == B + B // 4 and len(q.events) == B


def test_events_a_dead_worker_left_go_out_even_when_far_ahead():
    """Requeued events keep their (old) numbers, inside REDUCE's window:
    they go out whatever the progress, or REDUCE would wait for them."""
    B = dispatcher_mod.BATCH_MAX
    d = dispatcher("a", "b", credit=10)
    d.event_cost = 1e-9
    d.max_ahead = 2 * B
    d.credits["b"] = 0
    q = make_queue([small(i) for i in range(3 * B + 4)])
    assert take(d, q).worker == "a" and take(d, q).worker == "a"   # two full batches
    assert d.too_far_ahead() and take(d, q) is None
    lost, requeue, _ = d.remove_worker("a")
    assert lost == list(range(B))            # the one it was working on
    q.requeue(requeue)                       # as the frontend does
    d.on_credit("b", 1, 1.0)
    again = take(d, q, now=1.0)
    assert again.worker == "b" and again.seqs == list(range(B, 2 * B))
    assert take(d, q, now=1.0) is None       # new events still wait


def test_max_ahead_fits_reduce_reorder_window():
    import inspect

    from metropc.stage.reduce import ReduceStage
    window = inspect.signature(ReduceStage).parameters["reorder_window"].default
    assert dispatcher_mod.MAX_AHEAD + dispatcher_mod.BATCH_MAX <= window


def test_reduce_reports_its_window_progress_at_once_and_its_restart_point_one_interval_late():
    """The dispatch window moves with REDUCE's current progress (`done_seq`);
    the restart point (`next_seq`) lags one report, so that it never names an
    event whose result may still sit in ZeroMQ's I/O thread.  Until that
    lagging report is out, REDUCE must wake for it even when idle: an idle
    REDUCE that slept on it kept the frontend waiting (throughput / 2.5)."""
    import zmq

    from metropc.stage.reduce import ReduceStage
    zctx = zmq.Context()
    xpub = zctx.socket(zmq.XPUB)
    xpub.bind("inproc://progress-test")
    try:
        stage = ReduceStage(None, xpub)
        assert stage.progress() is None and stage.progress_pending  # taken, not sent
        stage.buffer.next_seq = 100
        first = stage.progress()
        assert (first["next_seq"], first["done_seq"]) == (0, 100)
        assert stage.progress_pending              # 100 is taken, not reported
        stage.buffer.next_seq = 250
        second = stage.progress()
        assert (second["next_seq"], second["done_seq"]) == (100, 250)
        third = stage.progress()                   # idle since: the lag catches up
        assert (third["next_seq"], third["done_seq"]) == (250, 250)
        assert not stage.progress_pending and stage.progress() is None
        d = dispatcher("a")
        d.on_progress(third["done_seq"])
        assert d.reduce_next == 250
    finally:
        xpub.close(0)
        zctx.term()


def test_events_in_flight_leave_the_marks_out():
    """Steps, resets and runs take sequence numbers but are no events: what
    a close abandons is counted in events."""
    d = dispatcher("a", credit=10)
    q = make_queue([small(0), small(1)])
    assert take(d, q).seqs + take(d, q).seqs == [0, 1]
    step = d.step_batch(1.0)
    again = d.step_batch(2.0, seq=step.seqs[0])  # refused once: the same number
    mark = d.step_batch(3.0, mark={"kind": "reset", "views": []})
    assert take(d, make_queue([small(2)])).seqs == [4]
    assert (again.seqs, mark.seqs) == ([2], [3])
    assert d.seq == 5 and d.events_in_flight() == 3
    d.on_progress(3)  # REDUCE is through the step: two events and it
    assert d.events_in_flight() == 1
    d.on_progress(5)
    assert d.events_in_flight() == 0 and not d.mark_seqs

"""REDUCE's handling of one worker message of results (ReduceStage.on_results).

The usual message (results in order, current context, no REDUCE views,
batch clients only) is counted and published as a whole; anything else
goes result by result through on_result.  Both must publish the same and
count the same, so the same messages go once through on_results and once
result by result through on_result, into two stages with real (inproc)
ZeroMQ sockets, and what their clients receive is compared.
"""

from __future__ import annotations

import time

import pytest
import zmq

from metropc.frontend import Context
from metropc.messages import KEY_TIME, META_SKIP, pack_meta, unpack_seq
from metropc.protocol import decode_protocol
from metropc.protocol_batch import BATCH_PREFIX
from metropc.protocol_layouts import decode_batch
from metropc.stage.common import KEY_EVENT_ID, KEY_META
from metropc.stage.reduce import ReduceStage

pytestmark = pytest.mark.timeout(30)

POOL_ONLY = """
@View.Scalar
def a(t: 'internal#train_id'):
    return t + 0.5

@View.Scalar
def b(t: 'internal#train_id'):
    return t

@View.Scalar
def quiet(t: 'internal#train_id'):
    return t
"""

WITH_REDUCE = POOL_ONLY + """
@View.Scalar(stage='reduce')
def total(x: 'view#a'):
    return x * 2
"""


class Recorder(ReduceStage):
    """A REDUCE stage that notes which results took the general path."""

    def __init__(self, *args):
        super().__init__(*args)
        self.general = []

    def on_result(self, data):
        self.general.append(data[KEY_META][0])
        super().on_result(data)


@pytest.fixture
def zctx():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def make_stage(zctx, name, source, batch):
    control = zctx.socket(zmq.DEALER)
    control.bind(f"inproc://{name}-control")
    output = zctx.socket(zmq.XPUB)
    output.bind(f"inproc://{name}-output")
    client = zctx.socket(zmq.SUB)
    client.connect(f"inproc://{name}-output")
    for view in ("a", "b", "total"):  # not "quiet": nobody listens to it
        client.subscribe((BATCH_PREFIX if batch else b"") + f"view#{view}".encode())
    stage = Recorder(control, output)
    deadline = time.monotonic() + 10
    while len(stage.output.prefixes) < 3:
        assert time.monotonic() < deadline, "the client never subscribed"
        stage.output.read_subscriptions()
    stage.on_context({"ctx": Context(source, version=1).to_dict(), "from_seq": 0})
    return stage, client


def result(seq, version=1, event_id=None, failed=(), kind=0, views=("a", "b", "quiet"),
           **extra):
    produced = [v for v in views if v not in failed]
    data = {KEY_META: pack_meta(seq, version, 100 + seq if event_id is None else event_id,
                                produced, failed, kind), KEY_TIME: time.time(), **extra}
    for view in produced:
        data[f"view#{view}"] = seq + 0.5 if view == "a" else seq
    return data


def messages():
    """Worker messages: the usual ones, and one of every other kind."""
    return [
        [result(0)],                                        # switches to the new context
        [result(1), result(2, failed=("b",)), result(3), result(4)],   # usual
        [result(6), result(5)],                             # out of order
        [result(7, event_id=None, **{KEY_EVENT_ID: ("run", 7)})],
        [result(8, version=0)],                             # of an older context: stale
        [result(9, kind=META_SKIP, views=())],
        [result(10), {**result(11), "view#b": "eleven"}, result(12), result(13)],  # not a number
        [result(n) for n in range(14, 18)],                 # usual again
        [result(n) for n in range(22, 26)],                 # early: held
        [result(n) for n in range(18, 22)],                 # usual, then what was held
        [result(26), result(27)],                           # too short to be worth it
    ]


def received(client):
    out = []
    while client.poll(200):
        frames = client.recv_multipart()
        if frames[0].startswith(BATCH_PREFIX):
            topic, payloads = decode_batch(frames)
        else:
            topic, payload = decode_protocol(frames)
            payloads = [payload]
        out += [(topic, p["data"], p["event_id"], unpack_seq(p["seq"])[1]) for p in payloads]
    return sorted(out, key=lambda r: (r[0], r[3]))  # each topic in its order


def counters(stage):
    return (dict(stage.meter.counts), dict(stage.engine.errors), stage.obs.events,
            stage.stale, stage.buffer.lost, stage.buffer.next_seq,
            sum(stage.obs.latency[2:]), stage.output._seqs)


@pytest.mark.parametrize("batch", [True, False], ids=["batch-clients", "plain-clients"])
@pytest.mark.parametrize("source", [POOL_ONLY, WITH_REDUCE], ids=["pool-only", "with-reduce"])
def test_a_message_of_results_publishes_and_counts_as_one_by_one(zctx, source, batch):
    whole, whole_client = make_stage(zctx, "whole", source, batch)
    single, single_client = make_stage(zctx, "single", source, batch)
    for message in messages():
        whole.on_results(message, pytest.fail)
        whole.output.flush()
    for message in messages():
        for data in message:
            single.on_result(data)
        single.output.flush()

    got = received(whole_client)
    assert got == received(single_client)
    assert counters(whole) == counters(single)
    view_a = [(value, event_id) for topic, value, event_id, _ in got if topic == b"view#a"]
    assert view_a == [(n + 0.5, ("run", 7) if n == 7 else 100 + n)
                      for n in range(28) if n not in (8, 9)]
    view_b = [value for topic, value, _, _ in got if topic == b"view#b"]
    assert view_b == [n if n != 11 else "eleven" for n in range(28) if n not in (2, 8, 9)]
    counts, errors, events, stale, lost, next_seq, latencies, seqs = counters(whole)
    assert (counts["a"], counts["b"], errors["b"], events, stale, next_seq, latencies) == (
        26, 25, 1, 26, 1, 28, 26)
    assert lost == 1  # the event a worker passed on as skipped
    assert b"view#quiet" not in seqs  # nobody listened: not numbered
    if source is WITH_REDUCE:
        totals = [value for topic, value, _, _ in got if topic == b"view#total"]
        assert totals == [2 * v for v, _ in view_a]
    if source is WITH_REDUCE or not batch:
        assert whole.general == [0, 1, 2, 3, 4, 6, 5, *range(7, 18), *range(22, 26),
                                 *range(18, 22), 26, 27]    # as they came
    else:
        assert whole.general == [0, 6, 5, 7, 8, 9, *range(22, 26), 26, 27]  # not usual


def test_the_reorder_buffer_takes_a_run_only_from_the_next_one_with_nothing_in_it():
    from metropc.stage.ordering import ReorderBuffer
    buffer = ReorderBuffer()
    assert not buffer.take_run(1, 2)                    # 0 is next
    assert buffer.push(4, "e") == [] and buffer.push(2, "c") == []
    assert not buffer.take_run(0, 3)                    # 2 is held already
    assert buffer.take_run(0, 2) and buffer.next_seq == 2
    assert buffer.pop_ready() == ["c"]                  # what waited behind the run
    assert buffer.take_run(3, 1) and buffer.pop_ready() == ["e"]
    buffer.skip([7])
    assert not buffer.take_run(5, 1)                    # an announced loss: one by one


def test_the_reorder_buffer_gives_up_every_gap_that_waited_its_timeout_at_once():
    """A stopped worker held events 1 and 3 (a fake clock): both gaps are
    given up when the results behind them have waited the timeout, not one
    gap per timeout; a gap behind results that came later waits for them."""
    from metropc.stage.ordering import ReorderBuffer
    now = [0.0]
    buffer = ReorderBuffer(timeout=10.0, clock=lambda: now[0])
    assert buffer.push(0, "a") == ["a"]
    assert buffer.push(2, "c") == [] and buffer.push(4, "e") == []
    now[0] = 6.0
    assert buffer.push(6, "g") == []                    # 5 is missing too
    assert buffer.deadline() == 4.0
    now[0] = 10.0
    assert buffer.pop_ready() == ["c", "e"]             # 1 and 3 given up together
    assert buffer.next_seq == 5 and buffer.lost == buffer.given_up == 2
    assert buffer.deadline() == 6.0                     # "g" came at 6
    now[0] = 16.0
    assert buffer.pop_ready() == ["g"] and buffer.lost == 3
    assert buffer.deadline() is None


def test_events_a_killed_worker_had_just_finished_get_a_grace_then_count_lost():
    """The frontend names them doubtful; their grace starts once REDUCE has
    read its backlog (arm_doubts). One that comes within the grace is
    released as usual; one that does not is counted lost (announced, so not
    among the given up) after the grace, not after the reorder timeout."""
    from metropc.stage.ordering import ReorderBuffer
    now = [0.0]
    buffer = ReorderBuffer(timeout=10.0, clock=lambda: now[0])
    assert buffer.push(0, "a") == ["a"]
    buffer.doubt([0, 1, 2], grace=1.0)                  # 0 came already: ignored
    assert buffer.push(3, "d") == []
    assert buffer.doubts_unarmed and buffer.deadline() == 10.0
    now[0] = 5.0                                        # a backlog of 5 s: not armed
    assert buffer.pop_ready() == []
    buffer.arm_doubts()
    assert not buffer.doubts_unarmed and buffer.deadline() == 1.0
    now[0] = 5.5
    assert buffer.push(1, "b") == ["b"]                 # within the grace
    now[0] = 6.0
    assert buffer.pop_ready() == ["d"]                  # 2 did not come
    assert (buffer.next_seq, buffer.lost, buffer.given_up) == (4, 1, 0)


class Failing(ReduceStage):
    """A REDUCE stage with a bug: publishing the results of some events raises.

    (The one place this file replaces real code: a bug is what is tested.)"""

    def __init__(self, *args, failing=()):
        super().__init__(*args)
        self.failing = set(failing)

    def publish(self, results, event_id):
        if event_id in self.failing:
            raise RuntimeError(f"bug on event {event_id}")
        super().publish(results, event_id)

    def _publish_column(self, name, topic, column):
        if any(event_id in self.failing for _, event_id in column):
            raise RuntimeError("bug in a whole message")
        super()._publish_column(name, topic, column)


@pytest.mark.parametrize("batch", [True, False], ids=["batch-clients", "plain-clients"])
def test_a_failure_after_release_loses_only_its_events_and_counts_them(zctx, batch, caplog):
    stage, client = make_stage(zctx, "failing", POOL_ONLY, batch)
    stage.__class__ = Failing
    stage.failing = {100 + 5, 100 + 13}
    rejected = []
    stage.on_results([result(0)], rejected.append)
    stage.on_results([result(n) for n in range(4, 10)], rejected.append)    # early: held
    stage.on_results([result(n) for n in range(1, 4)], rejected.append)     # releases 1-9
    stage.on_results([result(n) for n in range(10, 14)], rejected.append)   # a usual message
    stage.on_results([result(n) for n in range(14, 16)], rejected.append)
    stage.output.flush()
    assert rejected == []  # every one reached the buffer: failures are the stage's own
    got = {event_id - 100 for topic, _, event_id, _ in received(client) if topic == b"view#a"}
    if batch:   # whole runs fail whole (which of their events got out is unknown):
        # 3-9, released at once when 3 came, and the message 10-13
        assert got == {0, 1, 2, 14, 15}
        assert stage.buffer.lost == 7 + 4
    else:       # the same message goes result by result: only 13 is lost
        assert got == set(range(16)) - {5, 13}
        assert stage.buffer.lost == 2
    assert stage.buffer.next_seq == 16
    assert stage.index()["internal#lost_events"] == (stage.buffer.lost, 0.0)
    assert sum("bug" in r.getMessage() for r in caplog.records) == 1  # logged once


def test_the_progress_report_keeps_out_of_a_lone_events_way_but_not_for_long():
    from metropc.stage.progress import ProgressClock
    clock = ProgressClock(interval=0.02, quiet=0.001, late=0.005)
    assert clock.due(0.0)                       # the first report goes at once
    clock.reported(0.0)
    assert not clock.due(0.019) and clock.wait(0.019) == pytest.approx(0.001)
    clock.published(0.0195, 1)                  # a lone event's result went out
    assert not clock.due(0.020)                 # its report would meet the client
    assert clock.wait(0.020) == pytest.approx(0.0005)
    assert clock.due(0.0205)                    # idle for `quiet`: it goes
    clock.reported(0.0205)
    # lone events every 0.8 ms keep REDUCE from ever being idle for 1 ms:
    # the report goes `late` after its time all the same
    t = 0.0205
    while not clock.due(t):
        clock.published(t, 1)
        t = round(t + 0.0008, 6)
    assert 0.0405 + 0.005 <= t < 0.0405 + 0.005 + 0.0008
    clock.reported(t)
    # a round of many results (a fast source) does not hold the report back
    assert not clock.pending
    clock.published(t + 0.0199, 128)
    assert clock.pending and clock.due(t + 0.02)
    clock.reported(t + 0.02)
    # a lone event after a long silence: the loop is told to wake for its
    # report (pending), which goes once REDUCE was idle for `quiet`
    clock.published(t + 5.0, 1)
    assert clock.pending and clock.wait(t + 5.0) == pytest.approx(0.001)


def test_giving_up_on_an_event_is_counted_and_said_once(zctx):
    """A result that never comes holds the output back until the reorder
    buffer gives up on it (a fake clock here): then it is counted lost and
    REDUCE tells the frontend, once."""
    from metropc.stage.common import recv
    from metropc.stage.ordering import ReorderBuffer
    stage, client = make_stage(zctx, "giving-up", POOL_ONLY, False)
    frontend = zctx.socket(zmq.DEALER)
    frontend.connect("inproc://giving-up-control")
    now = [100.0]
    stage.buffer = ReorderBuffer(timeout=10.0, clock=lambda: now[0])
    stage.on_results([result(0)], print)
    stage.on_results([result(2), result(3)], print)    # 1 never comes
    stage.publish_index()
    assert stage.buffer.next_seq == 1 and not frontend.poll(100)
    now[0] += 10.0
    stage.on_results([result(4)], print)               # the buffer looks again
    assert stage.buffer.next_seq == 5 and stage.buffer.lost == 1
    stage.publish_index()
    stage.publish_index()
    opcode, data = recv(frontend)
    assert opcode == b"error" and data["msg"] == (
        "[reduce] gave up waiting for 1 event(s) whose results did not come within 10 s "
        "(a worker that stalled or was lost); they are counted in internal#lost_events")
    assert not frontend.poll(100)  # said once
    frontend.close(0)

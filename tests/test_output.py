"""The output of REDUCE: subscription-aware publishing, and results that
cannot be sent.

REDUCE publishes on an XPUB socket and encodes a result only if a client
subscribed to a prefix of its topic (metropc.stage.output).  These tests use
real sockets: the subscription bookkeeping against real SUB clients
connecting, unsubscribing and disconnecting, and whole pipelines whose
clients subscribe late or whose views return values that cannot be encoded.
"""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
import zmq

from metropc.frontend import Context, ProcessRunner
from metropc.messages import pack_seq, unpack_seq
from metropc.protocol import decode_protocol, encode_protocol
from metropc.protocol_batch import INLINE_MAX, unpack_records
from metropc.stage.output import BATCH_MAX_RECORDS, Output

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def xpub(tmp_path):
    zctx = zmq.Context()
    sock = zctx.socket(zmq.XPUB)
    sock.linger = 0
    sock.bind(f"ipc://{tmp_path}/out")
    subs = []

    def subscriber(*topics):
        sub = zctx.socket(zmq.SUB)
        sub.linger = 0
        sub.connect(f"ipc://{tmp_path}/out")
        for t in topics:
            sub.subscribe(t)
        subs.append(sub)
        return sub

    yield Output(sock), subscriber
    for sub in subs:
        if not sub.closed:
            sub.close(0)
    sock.close(0)
    zctx.term()


def settle(output, predicate, timeout=10.0):
    """Read subscription changes until `predicate(output)` holds."""
    deadline = time.monotonic() + timeout
    while not predicate(output):
        assert time.monotonic() < deadline, f"prefixes stayed {list(output.prefixes)[:20]}"
        if output.socket.poll(100):
            output.read_subscriptions()
    return output


def test_output_knows_what_real_clients_subscribed_to(xpub):
    output, subscriber = xpub
    assert not output.wants(b"view#roi")  # nobody listens yet
    a = subscriber(b"view#roi")
    b = subscriber(b"index", b"view#s")
    settle(output, lambda o: set(o.prefixes) == {b"view#roi", b"index", b"view#s"})
    assert output.wants(b"view#roi")
    assert output.wants(b"view#roi_sum")    # prefix match, as ZeroMQ filters
    assert output.wants(b"view#spectrum")   # through b's 'view#s'
    assert output.wants(b"index")
    assert not output.wants(b"view#hist")

    b.unsubscribe(b"view#s")
    settle(output, lambda o: b"view#s" not in o.prefixes)
    assert not output.wants(b"view#spectrum")   # the cache was invalidated
    a.close(0)  # a disconnecting client takes its subscriptions along
    settle(output, lambda o: set(o.prefixes) == {b"index"})
    assert not output.wants(b"view#roi")


def test_a_prefix_shared_by_two_clients_stays_until_the_last_goes(xpub):
    output, subscriber = xpub
    first = subscriber(b"view#roi")
    second = subscriber(b"view#roi")
    everything = subscriber(b"")
    settle(output, lambda o: set(o.prefixes) == {b"view#roi", b""})
    assert output.wants(b"anything at all")
    everything.close(0)
    settle(output, lambda o: set(o.prefixes) == {b"view#roi"})
    first.close(0)
    # ZeroMQ reports an unsubscription only when the last holder goes: a
    # marker subscribed after the close arrives, the unsubscription never.
    marker = subscriber(b"marker")
    settle(output, lambda o: b"marker" in o.prefixes)
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        if output.socket.poll(50):
            output.read_subscriptions()
    assert set(output.prefixes) == {b"view#roi", b"marker"}
    marker.close(0)
    second.close(0)
    settle(output, lambda o: not o.prefixes)


def test_the_output_ignores_garbage_instead_of_subscriptions(xpub):
    output, _ = xpub
    # An XSUB peer can send anything upstream; nothing of it is a subscription.
    zctx = zmq.Context.instance()
    xsub = zctx.socket(zmq.XSUB)
    xsub.linger = 0
    xsub.connect(output.socket.getsockopt_string(zmq.LAST_ENDPOINT))
    try:
        xsub.send_multipart([b"\x07junk", b"more"])
        xsub.send(b"")
        xsub.send(b"\x01view#ok")
        settle(output, lambda o: set(o.prefixes) == {b"view#ok"})
    finally:
        xsub.close(0)


def test_routes_find_subscribed_prefixes_among_very_many(xpub):
    """Routes are looked up by the topic's own prefixes once there are more
    subscriptions than topic bytes: the same answers as testing each."""
    import random
    output, _ = xpub
    rng = random.Random(3)
    topics = [b"view#roi", b"view#r", b"index", b"status", b"view#other"]
    for few in (True, False):
        subs = [b"view#ro", b"batch#view#o", b"batch#", b"ind"]
        if not few:
            subs += [rng.randbytes(rng.randrange(1, 40)) for _ in range(5000)]
        output.prefixes = dict.fromkeys(subs)
        output._routes.clear()
        for topic in topics:
            plain = any(topic.startswith(p) for p in subs)
            batched = topic.startswith(b"view#") and any(
                p.startswith(b"batch#") and (b"batch#" + topic).startswith(p) for p in subs)
            assert output.routes(topic) == (plain, batched), (few, topic)
        if few:
            assert output.routes(b"view#roi") == (True, True)
            assert output.routes(b"view#r") == (False, True)


def test_the_restart_report_keeps_the_oldest_subscriptions_only(xpub):
    """A peer holding thousands of subscriptions does not make each 20 ms
    progress report carry them all: the oldest 1000 go (those a restarted
    REDUCE waits for), and the clients that were there first are among them."""
    from metropc.stage.output import MAX_REPORTED_SUBSCRIPTIONS
    output, subscriber = xpub
    subscriber(b"view#good")
    settle(output, lambda o: b"view#good" in o.prefixes)
    made_up = [b"view#made-up-%d" % i for i in range(2700)]
    for i in range(0, 2700, 900):  # (a SUB sends at most its HWM, 1000, on connecting)
        subscriber(*made_up[i:i + 900])
    settle(output, lambda o: len(o.prefixes) == 2701)
    reported = output.reported_subscriptions()
    assert len(reported) == MAX_REPORTED_SUBSCRIPTIONS
    assert reported[0] == b"view#good"
    assert output.reported_subscriptions() is reported  # cached until a change


def test_each_flood_of_subscriptions_is_warned_about(xpub, monkeypatch, caplog):
    """The warning doubles its mark as a flood grows, and comes back to
    the first mark once the flood is gone, so that the next one is said too."""
    import logging

    from metropc.stage import output as output_module
    monkeypatch.setattr(output_module, "SUBSCRIPTIONS_WARN", 8)
    output, subscriber = xpub
    output._warn_subscriptions = 8
    with caplog.at_level(logging.WARNING, "metropc.stage.output"):
        for flood, n in enumerate((20, 12)):
            peer = subscriber(*[b"made-up-%d-%d" % (flood, i) for i in range(n)])
            settle(output, lambda o: len(o.prefixes) == n)
            peer.close(0)
            settle(output, lambda o: not o.prefixes)
    warned = [r.getMessage() for r in caplog.records if "distinct subscriptions" in r.getMessage()]
    # the second, smaller flood is said too (the mark had stayed at 16)
    assert [w.split(";")[0] for w in warned] == ["output: 20 distinct subscriptions",
                                                 "output: 12 distinct subscriptions"], warned


FLOOD_CTX = """
@View.Scalar
def tid(t: 'internal#train_id'):
    return t

@View.Scalar
def other(t: 'internal#train_id'):
    return t
"""


@pytest.mark.timeout(180)
def test_a_subscription_flood_does_not_hold_up_the_results():
    """One peer sends 100 000 distinct made-up subscriptions to the output
    (anyone who can connect may).  REDUCE keeps publishing: a client reading
    one view gets every result of events sent during and after the flood.

    Before, REDUCE matched each topic against every subscription and put
    all of them, sorted, in each 20 ms progress report: at 200 000 it fell
    behind for good; here it took 5 s instead of 0.1 s to read the flood.
    """
    import random
    from metropc.client import Client
    from metropc.pipeline import Pipeline
    from metropc.stage.output import MAX_REPORTED_SUBSCRIPTIONS

    rng = random.Random(11)
    with Pipeline(FLOOD_CTX, source=None, pool=1, ready_timeout=60) as pipe, \
            Client(pipe.output_addr, views=["tid"], timeout=60) as client:
        pipe.request_index()
        client.wait_index()  # (subscribed: else the first result can pass it by)
        pipe.send({"internal#train_id": 0})
        assert client.recv(timeout=30)[1]["data"] == 0
        zctx = zmq.Context.instance()
        peer = zctx.socket(zmq.XSUB)
        peer.linger = 0
        peer.sndhwm = 0
        peer.connect(pipe.output_addr)
        try:
            for i in range(100_000):
                peer.send(b"\x01" + rng.randbytes(64))
            # Once REDUCE has read the flood, it publishes the view only the
            # peer's last subscription asks for.
            peer.send(b"\x01view#other")
            t, started = 1, time.monotonic()
            while not peer.poll(0):
                assert time.monotonic() - started < 60, "REDUCE did not read the flood"
                pipe.send({"internal#train_id": t})
                client.recv(timeout=30)
                t += 1
            absorbed = time.monotonic() - started
            first, got = t, []
            for t in range(first, first + 400):
                pipe.send({"internal#train_id": t})
                if t % 20 == 0:  # a steady stream, read as it comes
                    while len(got) < t - first - 20:
                        got.append(client.recv(timeout=30)[1]["data"])
            while len(got) < 400:
                got.append(client.recv(timeout=30)[1]["data"])
            after = time.monotonic() - started - absorbed
            # What REDUCE reports for a restart, every 20 ms, stays bounded
            # (it was the whole flood, sorted, in each report).
            # (The client's subscription is the plain one until its first
            # batch of results, the batch one after: either is reported.)
            reported = pipe._frontend._state.reduce_subs
            assert {b"view#tid", b"batch#view#tid"} & set(reported)
            assert len(reported) <= MAX_REPORTED_SUBSCRIPTIONS
        finally:
            peer.close(0)
    print(f"flood read in {absorbed:.1f} s; 400 results after it in {after:.1f} s")
    assert got == list(range(first, first + 400))
    assert client.missed == 0


# -- batches (metropc.protocol_batch) ----------------------------------------

def publish(output, n, topic=b"view#roi", start=0, value=float):
    for i in range(start, start + n):
        output.send(encode_protocol(topic, {"data": value(i), "event_id": i, "version": 1,
                                            "seq": output.seq(topic)}), topic)


def recv_all(sub, timeout_ms=2000):
    """Every message `sub` gets until it is quiet for a moment."""
    out = []
    while sub.poll(timeout_ms if not out else 200):
        out.append(sub.recv_multipart())
    return out


def test_a_batch_subscriber_gets_the_same_results_many_to_a_message(xpub):
    output, subscriber = xpub
    batched = subscriber(b"batch#view#roi")
    plain = subscriber(b"view#roi")
    settle(output, lambda o: len(o.prefixes) == 2)
    assert output.routes(b"view#roi") == (True, True)
    publish(output, 10)
    output.flush()
    plain_msgs = [decode_protocol(f)[1] for f in recv_all(plain)]
    batches = recv_all(batched)
    assert len(plain_msgs) == 10 and len(batches) == 1 and len(batches[0]) == 2
    topic, records = unpack_records(batches[0])
    assert [decode_protocol([topic, *r])[1] for r in records] == plain_msgs
    assert [unpack_seq(m["seq"])[1] for m in plain_msgs] == list(range(10))


def test_subscribing_to_everything_does_not_make_batches(xpub):
    output, subscriber = xpub
    everything = subscriber(b"")
    settle(output, lambda o: set(o.prefixes) == {b""})
    assert output.routes(b"view#roi") == (True, False)
    publish(output, 3)
    output.flush()
    assert [f[0] for f in recv_all(everything)] == [b"view#roi"] * 3
    batched = subscriber(b"batch#")            # every view, in batches
    settle(output, lambda o: b"batch#" in o.prefixes)
    assert output.routes(b"view#roi") == (True, True)
    assert output.routes(b"index") == (True, False)   # only views come in batches
    publish(output, 2, start=3)
    output.flush()
    assert len(unpack_records(recv_all(batched)[0])[1]) == 2


def test_a_mark_sends_the_open_batches_first(xpub):
    output, subscriber = xpub
    sub = subscriber(b"batch#view#roi", b"mark")
    settle(output, lambda o: len(o.prefixes) == 2)
    publish(output, 3)
    output.send(encode_protocol(b"mark", {"run": 1, "kind": "step"}))
    publish(output, 2, start=3)
    output.flush()
    got = recv_all(sub)
    assert [f[0] for f in got] == [b"batch#view#roi", b"mark", b"batch#view#roi"]
    assert [len(unpack_records(got[i])[1]) for i in (0, 2)] == [3, 2]


def test_the_last_seqs_follow_every_way_results_are_numbered(xpub):
    """What the status says of each view (its last result so far) is the
    seq of the last result numbered, sent in a batch or for batch clients."""
    output, subscriber = xpub
    sub = subscriber(b"batch#view#roi", b"status")
    settle(output, lambda o: len(o.prefixes) == 2)
    assert output.last_seqs() == {}
    publish(output, 3)
    output.send_records(b"view#fast", [b"r1", b"r2"])  # (for batch clients only)
    output.send(encode_protocol(b"status", {"seqs": output.last_seqs()}))
    got = recv_all(sub)
    assert [f[0] for f in got] == [b"batch#view#roi", b"status"]  # (batches first)
    last = unpack_records(got[0])[1][-1]
    seqs = decode_protocol(got[1])[1]["seqs"]
    assert seqs["view#roi"] == decode_protocol([b"view#roi", *last])[1]["seq"]
    assert {k: unpack_seq(v)[1] for k, v in seqs.items()} == {
        "view#roi": 2, "view#fast": 1}


def test_a_large_result_goes_at_once_uncopied_after_the_smaller_ones(xpub):
    output, subscriber = xpub
    sub = subscriber(b"batch#view#img")
    settle(output, lambda o: len(o.prefixes) == 1)
    publish(output, 2, topic=b"view#img", value=lambda i: np.full(3, i, np.float32))
    publish(output, 1, topic=b"view#img", start=2,
            value=lambda i: np.full(INLINE_MAX, i, np.float32))
    got = recv_all(sub)                        # no flush: the large one went at once
    assert [len(f) for f in got] == [2, 3]     # small ones; the large one + its array
    topic, records = unpack_records(got[1])
    image = decode_protocol([topic, *records[0]])[1]["data"]
    assert image.shape == (INLINE_MAX,) and (image == 2).all()


def test_results_no_one_gets_after_a_restart_are_numbered_for_the_clients_coming_back(xpub):
    """A new REDUCE numbers what it publishes on the views the old one's
    clients took, plain or in batches, before they are back: those clients
    count it as missed."""
    output, _ = xpub
    output.remembered = {b"view#plain", b"batch#view#batched"}
    for topic in (b"view#plain", b"view#batched", b"view#other"):
        assert not output.wants(topic)
        output.skip(topic)
    assert [unpack_seq(output.seq(t))[1] for t in (b"view#plain", b"view#batched",
                                                     b"view#other")] == [1, 1, 0]


def test_a_full_batch_is_sent_without_waiting_for_the_round(xpub):
    output, subscriber = xpub
    sub = subscriber(b"batch#view#roi")
    settle(output, lambda o: len(o.prefixes) == 1)
    publish(output, BATCH_MAX_RECORDS + 10)
    first = recv_all(sub)
    assert [len(unpack_records(f)[1]) for f in first] == [BATCH_MAX_RECORDS]
    output.flush()
    assert [len(unpack_records(f)[1]) for f in recv_all(sub)] == [10]


LATE_CTX = """
@View.Scalar
def a(t: 'internal#train_id'):
    return t

@View.Scalar
def b(t: 'internal#train_id'):
    return -t
"""


def test_a_view_subscribed_late_is_published_from_then_on(pipeline, collector_factory):
    fe = pipeline()
    col = collector_factory(fe.output_addr, topics=(b"index", b"view#a")).wait_connected(fe)
    fe.queue_to_all(b"context", Context(LATE_CTX, version=1).to_dict())
    for i in range(50):
        fe.queue_to_any(b"event", {"internal#train_id": i})
    col.poll_until(lambda m: len(col.values("a")) == 50)
    assert col.values("b") == []  # never subscribed: never sent

    col.sub.subscribe(b"view#b")
    # Wait until REDUCE saw the subscription: events sent from now on show up.
    n = 50
    while not col.values("b"):
        fe.queue_to_any(b"event", {"internal#train_id": n})
        n += 1
        col.poll_until(lambda m: len(col.values("a")) == n)
    first = -col.values("b")[0]
    for i in range(n, n + 50):
        fe.queue_to_any(b"event", {"internal#train_id": i})
    last = n + 49
    col.poll_until(lambda m: col.values("a")[-1:] == [last] and col.values("b")[-1:] == [-last])
    assert col.values("b") == [-i for i in range(first, n + 50)]
    assert col.values("a") == list(range(n + 50))


UNSENDABLE_CTX = """
@View.Scalar
def fine(t: 'internal#train_id'):
    return t

@View.Scalar                  # line 6
def closure_in_pool(t: 'internal#train_id'):
    return lambda: t          # cannot be pickled, so not sent to REDUCE

@View.Scalar(stage='reduce')  # line 10
def closure_in_reduce(t: 'view#fine'):
    return lambda: t          # cannot be published

@View.Scalar(stage='reduce')
def after(t: 'view#fine'):
    return t * 10

class Stubborn:
    def __reduce__(self):
        raise ValueError("will not be pickled")

@View.Scalar
def stubborn(t: 'internal#train_id'):
    return Stubborn()
"""


def test_a_result_that_cannot_be_sent_fails_its_view_not_the_stage(
        pipeline, collector_factory, tmp_path):
    ctx_file = tmp_path / "ctx.py"
    ctx_file.write_text(UNSENDABLE_CTX)
    fe = pipeline(sr_cls=ProcessRunner)
    col = collector_factory(fe.output_addr).wait_connected(fe)
    ctx = Context(UNSENDABLE_CTX, path=str(ctx_file), version=1)
    fe.queue_to_all(b"context", ctx.to_dict())
    for i in range(40):
        fe.queue_to_any(b"event", {"internal#train_id": i})

    def complete(m):
        idx = col.indexes()
        return (len(col.values("after")) == 40 and idx
                and idx[-1].get("view#closure_in_pool")
                and idx[-1]["view#closure_in_pool"].errors == 40
                and idx[-1]["view#closure_in_reduce"].errors == 40
                and idx[-1]["view#stubborn"].errors == 40)

    col.poll_until(complete, timeout=30)
    assert col.values("fine") == list(range(40))
    assert col.values("after") == [10 * i for i in range(40)]
    assert col.values("closure_in_pool") == col.values("closure_in_reduce") == []
    idx = col.indexes()[-1]
    assert idx["view#closure_in_pool"].counts == 0
    assert idx["view#closure_in_reduce"].counts == 0
    assert idx["internal#lost_events"].counts == 0
    # Reported with file and line of the view, rate-limited; no stage died.
    assert any(f"{ctx_file}:6" in e and "closure_in_pool" in e for e in fe.errors), fe.errors
    assert any(f"{ctx_file}:10" in e and "closure_in_reduce" in e for e in fe.errors), fe.errors
    assert any("stubborn" in e and "will not be pickled" in e for e in fe.errors), fe.errors
    assert len(fe.errors) <= 5, fe.errors  # once per view and stage (two workers)
    assert not fe.restarts and not fe.panics


# -- bursts, slow clients and what they miss ---------------------------------

#: A client in its own process: reads view#burst until the result numbered
#: `last` arrives and prints what it received and missed.  "frozen" waits
#: for a line on stdin before reading at all, and then reads until its queue
#: stays empty for a moment, prints "drained" and waits for `last`.
READER = """
import json, sys
from metropc.client import Client
from metropc.messages import unpack_seq
addr, last, mode, batch = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "batch"
# view#sync_<mode>: once the output sees this subscription, it has seen the
# one to view#burst before it (same connection, in order).
with Client(addr, views=["burst", "sync_" + mode], timeout=60, batch=batch) as client:
    print("connected", flush=True)
    if mode == "frozen":
        sys.stdin.readline()
        try:
            while True:
                client.recv(timeout=1.0)
        except TimeoutError:
            print("drained", flush=True)
    while unpack_seq(client.recv()[1]["seq"])[1] != last:
        pass
    print(json.dumps({"received": client.received, "missed": client.missed}), flush=True)
"""


def start_reader(addr, last, mode="reading", batch=False):
    """A reader process; plain messages (one per result) unless `batch`."""
    import subprocess
    import sys
    return subprocess.Popen([sys.executable, "-c", READER, addr, str(last), mode,
                             "batch" if batch else "plain"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def read_line(proc, timeout=60):
    """The next line `proc` prints, within `timeout` seconds."""
    import threading
    box = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    assert box and box[0], f"no output from the reader within {timeout} s"
    return box[0].strip()


def burst(output, n, start=0):
    from metropc.protocol import encode_protocol
    topic = b"view#burst"
    for i in range(start, start + n):
        output.send(encode_protocol(topic, {"data": float(i), "event_id": i, "version": 1,
                                            "seq": output.seq(topic)}), topic)


@pytest.fixture
def hwm_xpub(tmp_path):
    """An Output on an XPUB with the high-water mark of 100 messages."""
    zctx = zmq.Context()
    sock = zctx.socket(zmq.XPUB)
    sock.linger = 0
    sock.sndhwm = 100
    addr = f"ipc://{tmp_path}/burst"
    sock.bind(addr)
    procs = []
    yield Output(sock), addr, procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
    sock.close(0)
    zctx.term()


def test_a_burst_far_beyond_the_hwm_reaches_a_reading_client(hwm_xpub):
    """5000 results at once, 50 times the high-water mark: all arrive.

    Without pacing (a plain lossy XPUB) such a client got about a third of
    them here, and nothing anywhere said so.
    """
    import json
    output, addr, procs = hwm_xpub
    n = 5000
    procs.append(proc := start_reader(addr, n - 1))
    assert read_line(proc) == "connected"
    settle(output, lambda o: b"view#sync_reading" in o.prefixes)
    t0 = time.monotonic()
    burst(output, n)
    elapsed = time.monotonic() - t0
    got = json.loads(read_line(proc))
    assert got == {"received": n, "missed": 0}
    assert output.dropped == 0
    # The waits stay within their budget: a slow client cannot stall REDUCE.
    assert output.paced <= output.pace_burst + output.pace_share * elapsed + 0.01


def test_a_burst_reaches_a_batch_client_in_few_messages(hwm_xpub):
    import json
    output, addr, procs = hwm_xpub
    n = 5000
    procs.append(proc := start_reader(addr, n - 1, batch=True))
    assert read_line(proc) == "connected"
    settle(output, lambda o: b"view#sync_reading" in o.prefixes)
    output.send(encode_protocol(b"status", {"batch": True}))    # as REDUCE does
    settle(output, lambda o: b"batch#view#sync_reading" in o.prefixes)
    burst(output, n)
    output.flush()
    assert json.loads(read_line(proc)) == {"received": n, "missed": 0}
    assert output.dropped == 0


def test_a_frozen_client_misses_counted_results_and_does_not_hold_up_others(hwm_xpub):
    import json
    output, addr, procs = hwm_xpub
    n = 10000
    procs.append(frozen := start_reader(addr, n, "frozen"))
    procs.append(reading := start_reader(addr, n))
    assert read_line(frozen) == read_line(reading) == "connected"
    # Both subscribe to view#burst, which ZeroMQ reports once: wait for
    # their own sync topics instead.
    settle(output, lambda o: {b"view#sync_frozen", b"view#sync_reading"} <= o.prefixes.keys())
    t0 = time.monotonic()
    burst(output, n)
    elapsed = time.monotonic() - t0
    assert output.dropped >= 1  # the frozen client's queue overflowed
    assert output.paced <= output.pace_burst + output.pace_share * elapsed + 0.01
    assert elapsed < 20
    # The frozen client reads what it has, then one more message shows it
    # the gap up to the end.
    frozen.stdin.write("go\n")
    frozen.stdin.flush()
    assert read_line(frozen) == "drained"
    burst(output, 1, start=n)
    fast, slow = json.loads(read_line(reading)), json.loads(read_line(frozen))
    assert fast == {"received": n + 1, "missed": 0}
    assert slow["missed"] > 0
    assert slow["received"] + slow["missed"] == n + 1


STALL_CTX = """
import time

@View.Scalar
def v(t: 'internal#train_id'):
    if t == 1000:          # the first event after the warm-up hangs for a while
        time.sleep(3)
    return t

@View.Scalar(stage='reduce')
def w(t: 'view#v'):
    return -t
"""


def test_results_held_back_by_a_stall_reach_a_reading_client():
    """A stalled worker holds up REDUCE; the release is one burst of results.

    The client sees every result, or counts each one it does not see:
    received + missed == sent, per view.
    """
    from metropc.client import Client
    from metropc.pipeline import Pipeline

    n = 3000
    got = {"view#v": [], "view#w": []}   # (event_id, seq, arrival time)
    seq_stream = {}
    with Pipeline(STALL_CTX, source=None, pool=2, ready_timeout=60) as pipe, \
            Client(pipe.output_addr, views=["v", "w"], timeout=60) as client:

        def receive(timeout):
            path, data = client.recv(timeout=timeout)
            assert list(data) == ["data", "event_id", "version", "seq"]  # docs/protocol.md §7
            stream, n = unpack_seq(data["seq"])
            assert stream == seq_stream.setdefault(path, stream)
            got[path].append((data["event_id"], n, time.monotonic()))

        # Warm up until the client receives both views (from then on every
        # result sent to it is either received or counted).
        t = 0
        deadline = time.monotonic() + 60
        while not all(got.values()):
            assert time.monotonic() < deadline, "no results from the pipeline"
            pipe.send({"internal#train_id": t})
            t += 1
            try:
                receive(0.2)
            except TimeoutError:
                pass
        warm = t
        sent_at = time.monotonic()
        for t in range(1000, 1000 + n):
            pipe.send({"internal#train_id": t})
        # Read until REDUCE processed everything and nothing more comes.
        while True:
            try:
                receive(1.0)
            except TimeoutError:
                index = client.index or {}
                if "view#v" in index and index["view#v"].counts >= warm + n:
                    break
                assert time.monotonic() < deadline + 60, "the pipeline did not finish"
        # One more event, sent while the client's queue is empty, shows any
        # gap up to the end.
        pipe.send({"internal#train_id": 9999})
        while not (got["view#v"][-1][0] == got["view#w"][-1][0] == 9999):
            receive(30)
        index = client.wait_index(timeout=10)

    for path, results in got.items():
        seqs = [s for _, s, _ in results]
        assert seqs[0] == 0  # the client saw its stream from the start
        assert len(results) + client.missed_by_view.get(path, 0) == seqs[-1] + 1
    assert client.missed == 0
    ids = [e for e, _, _ in got["view#v"]]
    assert ids[-n - 1:] == list(range(1000, 1000 + n)) + [9999]
    assert [e for e, _, _ in got["view#w"]] == ids
    # The stall happened, and what it held back came as one burst.
    released = next(a for e, _, a in got["view#v"] if e == 1000)
    assert released - sent_at >= 2.5
    assert sum(1 for e, _, a in got["view#v"] if e > 1000 and a - released < 1.0) >= 1000
    assert index["internal#output_dropped"].counts == 0


def test_the_documented_result_message_is_byte_exact():
    """docs/protocol.md §6 shows a published result frame by frame."""
    from pathlib import Path

    from metropc.protocol import encode_protocol

    doc = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    block = doc.split("A result as the reduce stage publishes it")[1].split("```")[1]
    frames = [bytes.fromhex(re.match(r"frame \d+\s+((?:[0-9a-f]{2} )*[0-9a-f]{2})", line)
                            .group(1)) for line in block.strip().splitlines()]
    assert frames == [bytes(f) for f in encode_protocol(b"view#roi", {
        "data": 1.5, "event_id": 7, "version": 2, "seq": pack_seq(0x01234567, 41)})]


BATCH_CTX = """
import numpy as np
import xarray as xr

@View.Scalar
def tid(t: 'internal#train_id'):
    return t

@View.Vector(stage='reduce')
def profile(t: 'view#tid'):
    return xr.DataArray(np.arange(4.0) * t, dims=['q'], coords={'q': [1, 2, 3, 4]},
                        attrs={'units': 'a.u.'})

@View.Scalar(stage='reduce')
def label(t: 'view#tid'):
    return f'train {t}' if t % 3 else t * 0.5
"""


def test_batch_and_plain_clients_of_one_pipeline_get_the_same_results():
    """Batches change how results travel, not what arrives (docs/protocol.md §7a)."""
    import xarray as xr

    from metropc.client import Client
    from metropc.pipeline import Pipeline

    views = ["tid", "profile", "label"]
    n = 600
    with Pipeline(BATCH_CTX, source=None, pool=2, ready_timeout=60) as pipe, \
            Client(pipe.output_addr, views=views, timeout=30) as batched, \
            Client(pipe.output_addr, views=views, timeout=30, batch=False) as plain:
        batched.wait_index()
        deadline = time.monotonic() + 10
        while not batched.batching:               # REDUCE offers them on subscription
            assert time.monotonic() < deadline
            batched.wait_index()
        plain.wait_index()
        for t in range(n):
            pipe.send({"internal#train_id": t})
        got = {}
        for name, client in (("batched", batched), ("plain", plain)):
            got[name] = [client.recv() for _ in range(3 * n)]
            assert client.missed == 0
        assert not plain.batching
    # In order per view; across views, a batch holds one view's results
    # of a round of REDUCE's loop, so compare view by view.
    for path in ("view#tid", "view#profile", "view#label"):
        batched_results = [d for p, d in got["batched"] if p == path]
        plain_results = [d for p, d in got["plain"] if p == path]
        assert len(batched_results) == len(plain_results) == n
        for b, p in zip(batched_results, plain_results, strict=True):
            assert b.keys() == p.keys() == {"data", "event_id", "version", "seq"}
            assert (b["event_id"], b["version"], b["seq"]) == (p["event_id"], p["version"],
                                                              p["seq"])
            if isinstance(b["data"], xr.DataArray):
                assert b["data"].identical(p["data"])
            else:
                assert type(b["data"]) is type(p["data"]) and b["data"] == p["data"]
    assert [d["data"] for p, d in got["batched"] if p == "view#tid"] == list(range(n))


def test_a_client_switching_to_batches_mid_stream_loses_and_repeats_nothing():
    """Results flow while clients connect: each gets every result from its
    first one on, exactly once, across the switch from plain to batches."""
    import threading

    from metropc.client import Client
    from metropc.pipeline import Pipeline

    stop = threading.Event()
    with Pipeline(BATCH_CTX, source=None, pool=2, ready_timeout=60) as pipe:
        def feed():
            t = 0
            while not stop.is_set():
                pipe.send({"internal#train_id": t})
                t += 1
                if t % 20 == 0:
                    stop.wait(0.01)   # about 2 kHz
        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        try:
            for _ in range(3):
                with Client(pipe.output_addr, views=["tid"], timeout=30) as client:
                    ids = [client.recv()[1]["event_id"] for _ in range(3000)]
                    assert client.batching
                    assert ids == list(range(ids[0], ids[0] + 3000))
                    assert client.missed == 0
        finally:
            stop.set()
            feeder.join(10)

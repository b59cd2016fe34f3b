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

import pytest
import zmq

from metropc.messages import pack_seq, unpack_seq
from metropc.frontend import Context, ProcessRunner
from metropc.stage.output import Output

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
        assert time.monotonic() < deadline, f"prefixes stayed {output.prefixes}"
        if output.socket.poll(100):
            output.read_subscriptions()
    return output


def test_output_knows_what_real_clients_subscribed_to(xpub):
    output, subscriber = xpub
    assert not output.wants(b"view#roi")  # nobody listens yet
    a = subscriber(b"view#roi")
    b = subscriber(b"index", b"view#s")
    settle(output, lambda o: o.prefixes == {b"view#roi", b"index", b"view#s"})
    assert output.wants(b"view#roi")
    assert output.wants(b"view#roi_sum")    # prefix match, as ZeroMQ filters
    assert output.wants(b"view#spectrum")   # through b's 'view#s'
    assert output.wants(b"index")
    assert not output.wants(b"view#hist")

    b.unsubscribe(b"view#s")
    settle(output, lambda o: b"view#s" not in o.prefixes)
    assert not output.wants(b"view#spectrum")   # the cache was invalidated
    a.close(0)  # a disconnecting client takes its subscriptions along
    settle(output, lambda o: o.prefixes == {b"index"})
    assert not output.wants(b"view#roi")


def test_a_prefix_shared_by_two_clients_stays_until_the_last_goes(xpub):
    output, subscriber = xpub
    first = subscriber(b"view#roi")
    second = subscriber(b"view#roi")
    everything = subscriber(b"")
    settle(output, lambda o: o.prefixes == {b"view#roi", b""})
    assert output.wants(b"anything at all")
    everything.close(0)
    settle(output, lambda o: o.prefixes == {b"view#roi"})
    first.close(0)
    # ZeroMQ reports an unsubscription only when the last holder goes: a
    # marker subscribed after the close arrives, the unsubscription never.
    marker = subscriber(b"marker")
    settle(output, lambda o: b"marker" in o.prefixes)
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        if output.socket.poll(50):
            output.read_subscriptions()
    assert output.prefixes == {b"view#roi", b"marker"}
    marker.close(0)
    second.close(0)
    settle(output, lambda o: o.prefixes == set())


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
        settle(output, lambda o: o.prefixes == {b"view#ok"})
    finally:
        xsub.close(0)


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
addr, last, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
# view#sync_<mode>: once the output sees this subscription, it has seen the
# one to view#burst before it (same connection, in order).
with Client(addr, views=["burst", "sync_" + mode], timeout=60) as client:
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


def start_reader(addr, last, mode="reading"):
    import subprocess
    import sys
    return subprocess.Popen([sys.executable, "-c", READER, addr, str(last), mode],
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


def test_a_frozen_client_misses_counted_results_and_does_not_hold_up_others(hwm_xpub):
    import json
    output, addr, procs = hwm_xpub
    n = 10000
    procs.append(frozen := start_reader(addr, n, "frozen"))
    procs.append(reading := start_reader(addr, n))
    assert read_line(frozen) == read_line(reading) == "connected"
    # Both subscribe to view#burst, which ZeroMQ reports once: wait for
    # their own sync topics instead.
    settle(output, lambda o: {b"view#sync_frozen", b"view#sync_reading"} <= o.prefixes)
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

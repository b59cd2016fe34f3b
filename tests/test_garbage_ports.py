"""Garbage on every port of a real pipeline: nothing dies, results stay right.

Each test starts a :class:`~metropc.pipeline.Pipeline` (frontend thread, two
POOL worker processes, a REDUCE process), connects raw sockets to one of
its ports and sends what no stage would: well-framed messages with wrong
field types, unknown opcodes, broken frames, lying batch headers, random
bytes, non-ZMTP bytes.  Afterwards it feeds events and checks that every
result arrives with the right value at a :class:`~metropc.client.Client`,
and that no stage process died or was replaced.
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
import socket
import tempfile
import time

import msgpack
import pytest
import zmq

from metropc.client import Client
from metropc.messages import KEY_META, KEY_SHM, SEQ_PATH, pack_meta
from metropc.pipeline import Pipeline
from metropc.protocol import encode_protocol
from metropc.stage import common

pytestmark = pytest.mark.timeout(180)

CTX = """
@View.Scalar
def double(t: 'internal#train_id'):
    return 2 * t

@View.Scalar(stage='reduce')
def ordered(t: 'view#double'):
    return t + 1
"""

RNG = random.Random(20240611)


def random_frames(n=12):
    """Multipart messages of random bytes (1 to 4 frames, some empty)."""
    return [[RNG.randbytes(RNG.choice([0, 1, 3, 8, 40])) for _ in range(RNG.randint(1, 4))]
            for _ in range(n)]


@pytest.fixture
def pipe():
    # ipc paths must stay short (about 100 bytes): not under pytest's tmp_path.
    tmp = tempfile.mkdtemp(prefix="mpc-garbage-")
    ctx_file = os.path.join(tmp, "ctx.py")
    with open(ctx_file, "w", encoding="utf-8") as f:
        f.write(CTX)
    p = Pipeline(ctx_file, source=None, pool=2, control=f"ipc://{tmp}/control",
                 reduce=f"ipc://{tmp}/reduce")
    try:
        fe = p.frontend
        p.pids = {name: getattr(r, "pid", None) for name, r in fe._runners.items()}
        assert len(p.pids) == 3 and all(p.pids.values())
        client = Client(p.output_addr, views=["double", "ordered"], timeout=30)
        try:
            deadline = time.monotonic() + 30
            while True:  # the subscriptions are in once an index arrives
                p.request_index()
                try:
                    client.wait_index(timeout=0.5)
                    break
                except TimeoutError:
                    assert time.monotonic() < deadline, "no index from the pipeline"
            p.client = client
            yield p
        finally:
            client.close()
    finally:
        p.close()
        shutil.rmtree(tmp, ignore_errors=True)


def assert_alive(p):
    """No stage died or was replaced; the frontend thread runs."""
    fe = p.frontend
    assert fe._thread.is_alive(), "the frontend loop died"
    assert {n: getattr(r, "pid", None) for n, r in fe._runners.items()} == p.pids
    dead = [n for n, r in fe._runners.items() if not r.is_alive()]
    assert not dead, f"stages died: {dead}; errors: {p.errors}"
    assert not sum(fe.restarts.values()), f"stages restarted: {fe.restarts}"
    assert not [e for e in p.errors if "died" in e], p.errors


def assert_results(p, ids, lost=(), sent=()):
    """Feed events `ids`; the results of `sent` (fed already) and `ids` all
    arrive, right and in order, but those of `lost`."""
    for i in ids:
        p.send({"internal#train_id": i})
    want = [i for i in [*sent, *ids] if i not in lost]
    got = {"view#double": [], "view#ordered": []}
    deadline = time.monotonic() + 30
    while len(got["view#double"]) < len(want) or len(got["view#ordered"]) < len(want):
        left = deadline - time.monotonic()
        assert left > 0, f"results missing: {got}; errors: {p.errors}"
        try:
            path, data = p.client.recv(timeout=min(left, 1.0))
        except TimeoutError:
            continue
        got[path].append((data["event_id"], data["data"]))
    assert sorted(got["view#double"]) == [(i, 2 * i) for i in want]
    assert got["view#ordered"] == [(i, 2 * i + 1) for i in want]  # REDUCE keeps order
    assert_alive(p)


def wait_for(predicate, what, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not in time: {what}"
        time.sleep(0.02)


def raw_garbage(addr):
    """Bytes that are no ZMTP at all, straight to the transport."""
    if addr.startswith("ipc://"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target = addr[len("ipc://"):]
    else:
        host, port = addr[len("tcp://"):].rsplit(":", 1)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        target = (host, int(port))
    with s:
        s.settimeout(5)
        s.connect(target)
        try:
            s.sendall(b"\xff" + RNG.randbytes(4096))
        except OSError:
            pass  # the peer may hang up first: fine
    # A valid ZMTP 3.0 NULL greeting, then a command frame of nonsense.
    with socket.socket(s.family, socket.SOCK_STREAM) as s2:
        s2.settimeout(5)
        s2.connect(target)
        try:
            s2.sendall(b"\xff" + b"\x00" * 8 + b"\x7f\x03\x00NULL" + b"\x00" * 16 + b"\x00"
                       + b"\x00" * 31 + b"\x04\xff" + RNG.randbytes(300))
        except OSError:
            pass


# -- control ROUTER --------------------------------------------------------------------

CONTROL_BAD = [
    (b"credit", {"n": "x"}), (b"credit", {"n": None}), (b"credit", {"n": -5}),
    (b"credit", {"n": True}), (b"credit", {"n": 1.5}), (b"credit", {"n": [1]}),
    (b"credit", {"free": "abc"}), (b"credit", {"free": b"123"}), (b"credit", {"free": 5}),
    (b"lost", {"seqs": "a"}), (b"lost", {"seqs": [1, None]}),
    (b"hello", {"stage": "pool-garbage", "output_addr": 5}), (b"hello", {"stage": 5}),
    (b"hello", {}), (b"hello", {"stage": "pool-garbage", "shm": "yes"}),
    (b"hello", {"stage": "reduce", "reduce_addr": ["tcp://x"]}),
    (b"ctx_ready", {"version": [1]}), (b"ctx_ready", {}),
    (b"ctx_failed", {"version": {}, "msg": 5}), (b"ctx_failed", {"version": 1}),
    (b"error", {"msg": None}), (b"error", {}), (b"debug", {"msg": b"x"}),
    (b"progress", {"next_seq": "x", "lost": 0, "stale": 0}), (b"progress", {}),
    (b"bogus", {}), (b"view#double", {"data": 1}), (b"batch", {}), (b"pbatch", {}),
    (b"result", {KEY_META: None}), (b"event", {SEQ_PATH: "x"}),
    (b"context", {"ctx": "nope"}), (b"commit", {"version": "1"}),
]

CONTROL_BROKEN = [
    [b""], [b"", b""], [b"credit"], [b"credit", b"\x00i"], [b"credit", b"\x00i", b"n"],
    [b"credit", b"\x00i", b"n", b"12"],                 # an int of 2 bytes
    [b"credit", b"\x00z", b"n", b"x"],                  # unknown type ID
    [b"credit", b"\x00?", b"n", b"\x02"],               # bool neither 0 nor 1
    [b"credit", b"\x00i\x00i", b"n", b"\x01" * 8, b"n", b"\x01" * 8],  # duplicate key
    [b"credit", b"", b"extra"],                         # frames after the last value
    [b"\xff\xfe", b""],                                 # opcode not UTF-8
    [b"credit", b"\x00p", b"n", b"not a pickle"],
    [b"pbatch", pickle.dumps([(b"credit", {"n": "x"})])],
    [b"batch", msgpack.packb([2, 2])] + encode_protocol(b"credit", {}),
]


def test_garbage_on_the_control_router(pipe):
    fe = pipe.frontend
    assert_results(pipe, range(10))
    zctx = zmq.Context()
    dealer = zctx.socket(zmq.DEALER)
    dealer.linger = 1000
    dealer.identity = b"pool-garbage"  # stage-like, but no stage of this pipeline
    dealer.connect(fe.control_addr)
    garbage = ([encode_protocol(op, d) for op, d in CONTROL_BAD] + CONTROL_BROKEN
               + random_frames(20))
    before = common.rejected  # the frontend runs in this process: its counter
    try:
        for frames in garbage:
            dealer.send_multipart(frames)
        wait_for(lambda: common.rejected >= before + len(garbage),
                 f"frontend rejects {len(garbage)} messages "
                 f"(so far {common.rejected - before})")
        assert_results(pipe, range(10, 40))
        raw_garbage(fe.control_addr)
        sent = []
        for i, frames in enumerate(garbage):  # and once more, between events
            dealer.send_multipart(frames)
            pipe.send({"internal#train_id": 1000 + i})
            sent.append(1000 + i)
        wait_for(lambda: common.rejected >= before + 2 * len(garbage), "second barrage")
        assert_results(pipe, range(2000, 2030), sent=sent)
    finally:
        dealer.close()
        zctx.term()


# -- REDUCE's PULL -----------------------------------------------------------------------

def bad_results(v):
    """Results for event 0 that REDUCE would process (were they accepted)."""
    ok = pack_meta(0, v, 0, ("double",), ())
    metas = [
        None, list(ok), ok[:5], ok + (0,), ("0",) + ok[1:], (True,) + ok[1:],
        (0.0,) + ok[1:],
        (0, "x", 0, ("double",), (), 0), (0, [v], 0, ("double",), (), 0),
        (0, v, [1], ("double",), (), 0), (0, v, 0, ([1],), (), 0),
        (0, v, 0, ("double",), ({},), 0), (0, v, 0, "double", (), 0),
        (0, v, 0, ("double",), None, 0), (0, v, 0, ("double",), (), None),
        (0, v, 0, ("double",), (), "0"),
    ]
    out = [{KEY_META: m, "view#double": 0} for m in metas]
    out.append({"view#double": 0})  # no meta at all
    out.append({KEY_META: (-1,) + ok[1:], KEY_SHM: b"garbage"})  # a bad slot, too late anyway
    out.append({KEY_META: (-2,) + ok[1:], KEY_SHM: 5})
    return out


def index_when(pipe, path, holds, what, each=None, timeout=30):
    """The first index whose count of `path` `holds`, asking for one at a
    time; fails with `what` at the deadline.  `each()` runs between tries."""
    deadline = time.monotonic() + timeout
    while True:
        pipe.request_index()
        try:
            index = pipe.client.wait_index(timeout=0.5)
        except TimeoutError:
            index = {}
        entry = index.get(path)
        if entry is not None and holds(entry.counts):
            return index
        assert time.monotonic() < deadline, f"{what}: {path} {entry and entry.counts}"
        if each is not None:
            each()


def test_garbage_on_the_reduce_pull(pipe):
    fe = pipe.frontend
    v = pipe.ctx.version
    results = bad_results(v)
    unpicklable_keys = [(b"result", {KEY_META: pack_meta(0, v, 0, ("double",), ()), 5: "x"}),
                        (b"result", {KEY_META: pack_meta(0, v, 0, ("double",), ()),
                                     ("view#double",): 1})]
    garbage = [encode_protocol(b"result", r) for r in results]
    garbage += [
        [b"pbatch", pickle.dumps([(b"result", r) for r in results])],
        [b"pbatch", pickle.dumps(unpicklable_keys)],
        [b"pbatch", pickle.dumps([1, (b"result",), (b"result", [1]), (None, {}),
                                  ("result", {KEY_META: pack_meta(0, v)})])],
        [b"pbatch", pickle.dumps("not a list")], [b"pbatch", b"not a pickle"],
        [b"pbatch", pickle.dumps([]), b"extra"], [b"pbatch"],
        [b"batch"], [b"batch", b"\xc1"], [b"batch", msgpack.packb({"a": 1})],
        [b"batch", msgpack.packb([2, 5])] + encode_protocol(b"result", results[0]),  # lies
        [b"batch", msgpack.packb([1])] + [b"result"],
        [b"result", b"\x00z", b"k", b"v"], [b"result", b"\x06iinnni", b"#meta"],
        [b"result"], [b""], [b"credit", b""],
        [b"result", b"\x00p", KEY_META.encode(), pickle.dumps(object)],
    ]
    # a framed batch: every message bad but one harmless (already given up on)
    batch = [(b"result", r) for r in results] + [(b"result", {KEY_META: pack_meta(-5)})]
    parts = [encode_protocol(op, d) for op, d in batch]
    garbage.append([b"batch", msgpack.packb([len(p) for p in parts])]
                   + [f for p in parts for f in p])
    garbage += random_frames(20)
    zctx = zmq.Context()
    push = zctx.socket(zmq.PUSH)
    push.linger = 5000
    push.connect(fe.reduce_addr)
    try:
        for frames in garbage:
            push.send_multipart(frames)
        # A valid but stale result for event 0, after the garbage on the same
        # connection: once the index counts it, REDUCE has read everything
        # before it (and event 0 is taken: the first event fed is given up).
        push.send_multipart(encode_protocol(
            b"result", {KEY_META: pack_meta(0, v - 1, 0, ("double",), ()), "view#double": 0}))
        index = index_when(pipe, "internal#stale_events", lambda n: n >= 1,
                           "REDUCE never got the sentinel", each=lambda: assert_alive(pipe))
        assert_alive(pipe)
        # what REDUCE rejected is counted where users see it (the frontend
        # rejected nothing here: the sum is REDUCE's)
        assert index["internal#rejected_messages"].counts >= len(garbage)
        assert_results(pipe, [-1, *range(30)], lost=[-1])
        raw_garbage(fe.reduce_addr)
        for frames in garbage:  # once more, between events
            push.send_multipart(frames)
        assert_results(pipe, range(30, 60))
    finally:
        push.close()
        zctx.term()


# -- the output XPUB ---------------------------------------------------------------------

def test_garbage_on_the_output_xpub(pipe):
    assert_results(pipe, range(10))
    zctx = zmq.Context()
    xsub = zctx.socket(zmq.XSUB)
    xsub.linger = 1000
    xsub.connect(pipe.output_addr)
    sub = zctx.socket(zmq.SUB)
    sub.linger = 0
    try:
        garbage = [
            [b""], [b"\x02junk"], [b"\xff" * 100], [b"\x01view#", b"second frame"],
            [b"\x00view#double"], [b"\x00view#ordered"], [b"\x00index"], [b"\x00"],
            [b"\x00view#"], [b"\x01zzz-no-such-topic"], [b"\x00zzz-no-such-topic"],
            [b"view#double"], [b"index"], [RNG.randbytes(100_000)],
        ] + random_frames(20)
        for frames in garbage:
            xsub.send_multipart(frames)
        # A subscriber to the same topic that comes and goes.
        sub.subscribe(b"view#double")
        sub.connect(pipe.output_addr)
        assert_results(pipe, range(10, 40))
        sub.close()
        raw_garbage(pipe.output_addr)
        for frames in garbage:
            xsub.send_multipart(frames)
        assert_results(pipe, range(40, 70))
    finally:
        xsub.close()
        sub.close()
        zctx.term()


OVERSIZED = """
import os, sys, zmq
xsub = zmq.Context().socket(zmq.XSUB)
xsub.reconnect_ivl = -1  # once cut off, stay away (it would send it again)
cut_off = xsub.get_monitor_socket(zmq.EVENT_DISCONNECTED)
xsub.connect(sys.argv[1])
xsub.send(b"\\x01" + b"A" * 5_000_000)  # (XSUB keeps its own copy: 180 MB here)
# (os._exit: closing a socket that ZeroMQ cut off crashes libzmq 4.3 here)
os._exit(0 if cut_off.poll(30_000) else 1)  # REDUCE's side cut it off
"""


def test_an_oversized_subscription_is_cut_off_not_buffered(pipe):
    """A 5 MB "subscription" (subscriptions are topic prefixes): ZeroMQ cuts
    that peer off before buffering it, so REDUCE's memory stays where it was
    and results go on at once (it took REDUCE to gigabytes and stalled it)."""
    import subprocess
    import sys

    import psutil

    reduce = psutil.Process(pipe.pids["reduce"])
    before = reduce.memory_info().rss
    subprocess.run([sys.executable, "-c", OVERSIZED, pipe.output_addr], timeout=60,
                   check=True)
    assert_results(pipe, range(10))
    assert reduce.memory_info().rss < before + 20_000_000


def test_a_limited_log_says_how_many_lines_it_left_out(caplog):
    import logging

    from metropc.stage.common import LimitedLog
    now = [0.0]
    logger = logging.getLogger("metropc.test.limited")
    limited = LimitedLog(logger, logging.WARNING, burst=3, window=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, "metropc.test.limited"):
        for i in range(8):
            limited("refused %d", i)
        now[0] = 9.9
        limited("refused late")
        now[0] = 10.0
        limited("refused again")
    assert [r.getMessage() for r in caplog.records] == [
        "refused 0", "refused 1", "refused 2",
        "(6 more like the above were not logged)", "refused again"]


def test_refused_control_requests_are_logged_at_most_ten_per_10_s(pipe, caplog):
    """A refused request is a person's mistake and each is logged, but a
    script sending thousands does not flood the log (it logged one line each)."""
    import logging

    from metropc.protocol import decode_protocol
    zctx = zmq.Context()
    req = zctx.socket(zmq.DEALER)
    req.linger = 0
    try:
        req.connect(pipe.control_addr)
        with caplog.at_level(logging.INFO, "metropc.stage.remote"):
            for _ in range(300):
                req.send_multipart([b"", *encode_protocol(b"reset", {"views": ("nosuch",)})])
                assert req.poll(10_000)
                _, *reply = req.recv_multipart()
                opcode, data = decode_protocol(reply)
                assert opcode == b"error" and "nosuch" in data["msg"], data
        logged = [r for r in caplog.records if "control request refused" in r.getMessage()]
        assert 10 <= len(logged) <= 20, len(logged)
        assert "nosuch" in logged[0].getMessage()
    finally:
        req.close()
        zctx.term()


def test_the_control_endpoint_refuses_pickles_and_counts_garbage(pipe, caplog):
    """Clients' requests are never unpickled (unpickling runs code); garbage
    requests are counted and logged once, however many come."""
    import fractions

    from metropc.protocol import decode_protocol

    zctx = zmq.Context()
    req = zctx.socket(zmq.DEALER)
    req.linger = 0
    try:
        req.connect(pipe.control_addr)
        pipe.request_index()
        counted = pipe.client.wait_index(timeout=30).get("internal#rejected_messages")
        before = counted.counts if counted is not None else 0
        pickled = encode_protocol(b"params", {"x": fractions.Fraction(1, 3)})
        for frames in [pickled] * 3 + [[b"zzz", b""]] * 200:
            req.send_multipart([b"", *frames])
            assert req.poll(10_000)
            _, *reply = req.recv_multipart()
            opcode, data = decode_protocol(reply)
            assert opcode == b"error" and "ProtocolError" in data["msg"], data
        # counted where users see it (it was counted in a variable nothing read)
        index_when(pipe, "internal#rejected_messages", lambda n: n - before >= 203,
                   "not counted")
        logged = [r for r in caplog.records if "control endpoint" in r.getMessage()]
        assert len(logged) == 2, [r.getMessage() for r in logged]  # one per kind
        assert_results(pipe, range(5))
    finally:
        req.close()
        zctx.term()

"""metropc.client: index entries, index wire format, Client and metropc-client."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zmq

import metropc.client
from metropc.cli import client as cli
from metropc.client import (
    Client,
    IndexEntry,
    IndexViewEntry,
    ViewOutput,
    ViewStage,
    decode_index,
    decode_protocol,
    encode_index,
)
from metropc.error import ProtocolError
from metropc.messages import unpack_seq
from metropc.protocol import encode_protocol

REPO = Path(__file__).resolve().parent.parent


# -- index entries ---------------------------------------------------------

def test_index_entries_positional_and_slots():
    e = IndexEntry(10, 9.5)
    assert (e.counts, e.rate) == (10, 9.5)
    v = IndexViewEntry(3, 1.0, 11, 2)
    assert v.output is ViewOutput.SCALAR_FAST and v.stage is ViewStage.REDUCE
    assert (v.errors, v.hidden, v.label) == (0, False, "")
    assert isinstance(v, IndexEntry)
    for obj in (e, v):
        assert not hasattr(obj, "__dict__")
        with pytest.raises(AttributeError):
            obj.other = 1
    assert IndexViewEntry(3, 1.0, ViewOutput.IMAGE, ViewStage.POOL).output == ViewOutput.IMAGE
    with pytest.raises(ValueError):
        IndexViewEntry(1, 1.0, 99, 1)


def test_index_entries_repr_and_equality():
    v = IndexViewEntry(3, 1.5, ViewOutput.VECTOR, ViewStage.POOL, errors=2,
                       hidden=True, label="Spectrum")
    assert repr(v) == ("IndexViewEntry(counts=3, rate=1.5, output=ViewOutput.VECTOR, "
                       "stage=ViewStage.POOL, errors=2, hidden=True, label='Spectrum')")
    assert repr(IndexEntry(1, 2.0)) == "IndexEntry(counts=1, rate=2.0)"
    assert v == IndexViewEntry(3, 1.5, 2, 1, errors=2, hidden=True, label="Spectrum")
    assert v != IndexViewEntry(3, 1.5, 2, 1, errors=3, hidden=True, label="Spectrum")
    # Loose ViewOutput equality does not make entries equal.
    assert v != IndexViewEntry(3, 1.5, ViewOutput.VECTOR_LINE, 1, errors=2, hidden=True,
                               label="Spectrum")
    assert IndexEntry(1, 2.0) == IndexEntry(1, 2.0) != IndexEntry(2, 2.0)
    assert IndexEntry(1, 2.0) != IndexViewEntry(1, 2.0, 1, 1)


class ViewEntry(IndexViewEntry):
    """What EXtra-foam's correlator does with index entries, verbatim in spirit."""

    __slots__ = ["annotations", "aspect_unlocked"]

    def __init__(self, entry, annotations=None, aspect_unlocked=False):
        super().__init__(entry.counts, entry.rate, entry.output, entry.stage)
        self.annotations = annotations
        self.aspect_unlocked = aspect_unlocked


def test_extra_foam_style_subclass():
    _, index = decode_protocol(encode_protocol(b"index", encode_index({
        "view#img": IndexViewEntry(5, 2.0, ViewOutput.IMAGE, ViewStage.POOL),
        "internal#train_id": IndexEntry(5, 2.0)})))
    views = {p for p, v in index.items() if isinstance(v, IndexViewEntry)}
    assert views == {"view#img"}
    entry = ViewEntry(index["view#img"], ["roi"], True)
    assert entry.output == ViewOutput.IMAGE and entry.stage == ViewStage.POOL
    assert (entry.counts, entry.rate) == (5, 2.0)
    assert entry.annotations == ["roi"] and entry.aspect_unlocked is True
    assert not hasattr(entry, "__dict__")
    assert "ViewEntry(counts=5" in repr(entry)
    slots = {s for cls in type(entry).__mro__ for s in getattr(cls, "__slots__", [])}
    assert {"counts", "rate", "output", "stage", "annotations"} <= slots


# -- index wire format -----------------------------------------------------

INDEX = {
    "internal#train_id": IndexEntry(100, 10.0),
    "karabo#DEV.prop": IndexEntry(50, 5.0),
    "view#roi": IndexViewEntry(99, 9.9, ViewOutput.SCALAR, ViewStage.POOL, errors=1,
                               label="ROI sum"),
    "view#img": IndexViewEntry(10, 1.0, ViewOutput.IMAGE, ViewStage.REDUCE, hidden=True),
    "view#go": IndexViewEntry(0, 0.0, ViewOutput.COMPUTE, ViewStage.ACTION),
}


def test_index_wire_tuples():
    payload = encode_index(INDEX)
    assert payload["internal#train_id"] == (100, 10.0)
    assert payload["view#roi"] == (99, 9.9, 1, 1, 1, False, "ROI sum")
    assert payload["view#img"] == (10, 1.0, 3, 2, 0, True, "")
    frames = encode_protocol(b"index", payload)
    assert frames[1][:3] == b"\x02if"  # no pickle anywhere
    assert b"p" not in frames[1]
    op, decoded = metropc.client.decode_protocol(frames, allow_pickle=False)
    assert op == b"index" and decoded == INDEX
    assert decoded["view#go"].stage is ViewStage.ACTION


def test_index_tolerates_short_and_long_tuples():
    decoded = decode_index({
        "view#old": (4, 2.0, 2, 1),                       # original four fields
        "view#new": (4, 2.0, 13, 1, 0, False, "x", "future", 1),  # unknown hint, extras
        "karabo#A.b": (1, 2, "extra"),
        "view#odd": (1, 1.0),                             # view without metadata
    })
    assert decoded["view#old"] == IndexViewEntry(4, 2.0, ViewOutput.VECTOR, ViewStage.POOL)
    assert decoded["view#new"].output is ViewOutput.SCALAR  # hint 13 -> generic 1
    assert decoded["view#new"].label == "x"
    assert decoded["karabo#A.b"] == IndexEntry(1, 2.0)
    assert type(decoded["view#odd"]) is IndexEntry


@pytest.mark.parametrize("value, match", [
    (5, "not a tuple"), ((1,), "not a tuple"), (("1", 2.0), "counts"),
    ((1, "x"), "rate"), ((1, 1.0, 77, 1), "unknown output"), ((1, 1.0, 1, 9), "stage"),
    ((1, 1.0, "1", 1), "output"), ((1, 1.0, 1, 1, 0, "no"), "hidden"),
    ((1, 1.0, 1, 1, 0, False, 5), "label"),
])
def test_bad_index_entries(value, match):
    frames = encode_protocol(b"index", {"view#x": value})
    with pytest.raises(ProtocolError, match=match):
        decode_protocol(frames)


def test_non_index_messages_pass_through():
    frames = encode_protocol(b"view#x", {"data": (1, 2.0), "event_id": 3})
    assert decode_protocol(frames) == (b"view#x", {"data": (1, 2.0), "event_id": 3})
    assert metropc.client.ViewOutput is metropc.ViewOutput
    assert metropc.client.ViewStage is metropc.ViewStage


# -- a publisher standing in for the reduce stage ---------------------------

class Publisher:
    """A PUB socket re-sending `messages` every few ms from its own thread.

    Re-sending is how the tests beat the slow-joiner problem without sleeps.
    """

    def __init__(self, ctx, address="tcp://127.0.0.1"):
        self.socket = ctx.socket(zmq.PUB)
        if address.startswith("tcp://"):
            self.address = f"{address}:{self.socket.bind_to_random_port(address)}"
        else:
            self.socket.bind(address)
            self.address = address
        self.messages: list[list] = []
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        try:
            while not self._stop.wait(0.005):
                for frames in list(self.messages):
                    self.socket.send_multipart(frames, copy=False)
                self.sent += 1
        finally:
            self.socket.close(linger=0)

    def publish(self, path, data):
        self.messages.append(encode_protocol(path, data))

    def stop(self):
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def zctx():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)  # closes anything a failed test left open


@pytest.fixture
def publisher(zctx):
    pub = Publisher(zctx)
    yield pub
    pub.stop()


def test_wait_index_decodes_entries(zctx, publisher):
    publisher.publish(b"index", encode_index(INDEX))
    with Client(publisher.address, context=zctx) as client:
        assert client.index is None
        index = client.wait_index(timeout=10)
        assert index == INDEX and client.index is index
        assert index["view#img"].output == ViewOutput.IMAGE
        assert index["view#img"].stage is ViewStage.REDUCE
    assert client.closed


def test_exact_match_filtering(zctx, publisher):
    for path in ("view#foobar", "view#fo", "view#foo", "view#other"):
        publisher.publish(path, {"data": path, "event_id": 1})
    publisher.publish(b"index", encode_index(INDEX))
    with Client(publisher.address, views=["foo"], context=zctx, timeout=10) as client:
        assert client.views == {"view#foo"}
        got = [client.recv() for _ in range(20)]
        assert {p for p, _ in got} == {"view#foo"}
        assert all(d == {"data": "view#foo", "event_id": 1} for _, d in got)
        assert client.index == INDEX  # index messages were consumed on the way
        client.unsubscribe("view#foo")
        client.subscribe("view#foobar")
        assert client.views == {"view#foobar"}
        # Queued view#foo messages are dropped by the exact check.
        assert {client.recv()[0] for _ in range(20)} == {"view#foobar"}


def test_iteration_and_values(zctx, publisher):
    image = np.arange(20, dtype=np.float32).reshape(4, 5)
    publisher.publish(b"view#img", {"data": image, "event_id": 42})
    with Client(publisher.address, views=["view#img"], context=zctx, timeout=10) as client:
        for n, (path, data) in enumerate(client):
            assert path == "view#img" and data["event_id"] == 42
            np.testing.assert_array_equal(data["data"], image)
            assert not data["data"].flags.writeable
            if n == 3:
                break


def test_timeouts(zctx, publisher, tmp_path):
    publisher.publish(b"view#other", {"data": 1})
    with Client(publisher.address, views=["roi"], context=zctx) as client:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            client.recv(timeout=0.3)
        assert 0.25 < time.monotonic() - t0 < 5
        with pytest.raises(TimeoutError, match="no index"):
            client.wait_index(timeout=0.2)
    with Client(f"ipc://{tmp_path}/nobody", timeout=0.2, context=zctx) as client:
        with pytest.raises(TimeoutError):
            next(iter(client))
        with pytest.raises(TimeoutError):
            client.recv(timeout=0)


def test_wait_index_keeps_view_messages(zctx, publisher):
    publisher.publish(b"view#roi", {"data": 1.5, "event_id": 1})
    with Client(publisher.address, views=["roi"], context=zctx, timeout=10) as client:
        assert client.recv() == ("view#roi", {"data": 1.5, "event_id": 1})
        publisher.publish(b"index", encode_index(INDEX))
        client.wait_index()
        assert client._pending  # results that arrived while waiting were kept
        assert client.recv(timeout=0) == ("view#roi", {"data": 1.5, "event_id": 1})


def test_client_refuses_pickle_when_asked(zctx, publisher):
    publisher.publish(b"view#d", {"data": {"not": "fast path"}})
    with Client(publisher.address, views=["d"], context=zctx, timeout=10,
                allow_pickle=False) as client:
        with pytest.raises(ProtocolError, match="allow_pickle"):
            client.recv()
    with Client(publisher.address, views=["d"], context=zctx, timeout=10) as client:
        assert client.recv()[1] == {"data": {"not": "fast path"}}


def test_extra_foam_style_monitor_loop(zctx, publisher):
    """EXtra-foam's loop: raw SUB, recv_multipart() and client.decode_protocol."""
    publisher.publish(b"index", encode_index(INDEX))
    publisher.publish(b"view#roi", {"data": 3.0, "event_id": 5})
    sub = zctx.socket(zmq.SUB)
    try:
        sub.connect(publisher.address)
        sub.subscribe(b"index")
        subscriptions, outputs = {}, []
        deadline = time.monotonic() + 10
        while not outputs and time.monotonic() < deadline:
            if not sub.poll(100):
                continue
            path, data = decode_protocol(sub.recv_multipart())
            if path == b"index":
                for s in {p for p, v in data.items() if isinstance(v, IndexViewEntry)}:
                    if s not in subscriptions:
                        sub.subscribe(s.encode())
                    subscriptions[s] = ViewEntry(data[s], [], False)
            else:
                outputs.append((path.decode(), data["data"]))
        assert outputs and outputs[0] == ("view#roi", 3.0)
        assert set(subscriptions) == {"view#roi", "view#img", "view#go"}
    finally:
        sub.close(linger=0)


def test_close_and_repr(zctx, tmp_path):
    client = Client(f"ipc://{tmp_path}/x", views=["a"], context=zctx)
    assert "1 view(s)" in repr(client)
    client.close()
    client.close()
    assert client.closed and "closed" in repr(client)
    with pytest.raises(ValueError):
        client.subscribe("")


# -- sequence numbers and missed results ---------------------------------------

class XPub:
    """An XPUB socket that knows when a subscription arrived (no slow joiner)."""

    def __init__(self, zctx, address):
        self.socket = zctx.socket(zmq.XPUB)
        self.socket.bind(address)
        self.address = address

    def wait_subscribed(self, *topics):
        wanted, deadline = {b"\x01" + t for t in topics}, time.monotonic() + 10
        while wanted:
            assert time.monotonic() < deadline, f"never subscribed: {wanted}"
            if self.socket.poll(100):
                wanted.discard(self.socket.recv())

    def send_multipart(self, frames):
        self.socket.send_multipart(frames)


@pytest.fixture
def xpub(zctx, tmp_path):
    pub = XPub(zctx, f"ipc://{tmp_path}/seq")
    yield pub
    pub.socket.close(linger=0)


def send_seq(sock, path, stream, n, **extra):
    from metropc.messages import pack_seq

    sock.send_multipart(encode_protocol(path, {"data": float(n), "event_id": n,
                                               "seq": pack_seq(stream, n), **extra}))


def test_gaps_in_sequence_numbers_are_counted_per_view(zctx, xpub):
    with Client(xpub.address, views=["a", "b"], context=zctx, timeout=10) as client:
        xpub.wait_subscribed(b"index", b"view#a", b"view#b")
        assert (client.missed, client.missed_by_view, client.received) == (0, {}, 0)
        for n in (7, 8, 9, 12):          # first result: a baseline, not a gap of 7
            send_seq(xpub, b"view#a", 1, n)
        for n in (0, 3):
            send_seq(xpub, b"view#b", 1, n)
        send_seq(xpub, b"view#ab", 1, 50)  # prefix match, not subscribed: ignored
        send_seq(xpub, b"view#a", 2, 4)    # REDUCE restarted: a new stream from 0: 4 missed
        send_seq(xpub, b"view#a", 2, 6)
        xpub.send_multipart(encode_protocol(b"view#b", {"data": 1}))  # no seq: older pipeline
        got = [client.recv() for _ in range(9)]
        assert [(p, d["data"]) for p, d in got][-2:] == [("view#a", 6.0), ("view#b", 1)]
        assert client.received == 9
        assert client.missed_by_view == {"view#a": 2 + 4 + 1, "view#b": 2}
        assert client.missed == 9
        missed = client.missed_by_view
        missed["view#a"] = 0              # a copy
        assert client.missed == 9


def test_results_missed_at_the_very_end_are_counted_from_the_status(zctx, xpub):
    """No later result shows a gap after the last ones: the status's
    ``seqs`` (each view's last result so far) does."""
    from metropc.messages import pack_seq

    def status(**seqs):
        xpub.send_multipart(encode_protocol(b"status", {"state": "READY", "seqs": {
            f"view#{name}": seq for name, seq in seqs.items()}}))

    with Client(xpub.address, views=["a", "b"], context=zctx, timeout=10) as client:
        xpub.wait_subscribed(b"index", b"status", b"view#a", b"view#b")
        for n in (0, 1):
            send_seq(xpub, b"view#a", 1, n)
        status(a=pack_seq(1, 4), b=pack_seq(1, 6), c=pack_seq(1, 9))  # 2, 3 and 4 of a dropped
        send_seq(xpub, b"view#b", 1, 7)  # b's first since subscribing: a baseline
        got = [client.recv()[1]["seq"] for _ in range(3)]
        assert got == [pack_seq(1, 0), pack_seq(1, 1), pack_seq(1, 7)]
        assert client.missed_by_view == {"view#a": 3}
        status(a=pack_seq(1, 4), b=pack_seq(1, 7))     # nothing new: nothing more
        status(b="garbage")                            # garbage: ignored
        send_seq(xpub, b"view#a", 1, 5)                # follows on from the status
        assert client.recv()[1]["seq"] == pack_seq(1, 5)
        assert client.missed_by_view == {"view#a": 3} and client.received == 4
        status(a=pack_seq(2, 1))  # REDUCE restarted: 0 and 1 of its stream not got
        send_seq(xpub, b"view#a", 2, 2)
        assert client.recv()[1]["seq"] == pack_seq(2, 2)
        assert client.missed_by_view == {"view#a": 3 + 2}


def test_seq_packs_stream_and_count_into_one_int_and_wraps():
    from metropc.messages import pack_seq
    assert unpack_seq(pack_seq(5, 7)) == (5, 7)
    assert unpack_seq(pack_seq(0x7FFFFFFF, 0xFFFFFFFF)) == (0x7FFFFFFF, 0xFFFFFFFF)
    assert pack_seq(3, 1 << 32) == pack_seq(3, 0)  # the count wraps, the stream stays
    assert unpack_seq((1, 2)) is None and unpack_seq(-1) is None and unpack_seq(1.0) is None


def test_a_new_subscription_starts_counting_afresh(zctx, xpub):
    with Client(xpub.address, views=["a"], context=zctx, timeout=10) as client:
        xpub.wait_subscribed(b"index", b"view#a")
        send_seq(xpub, b"view#a", 1, 0)
        assert unpack_seq(client.recv()[1]["seq"]) == (1, 0)
        client.unsubscribe("a")
        client.subscribe("a")
        xpub.wait_subscribed(b"view#a")
        send_seq(xpub, b"view#a", 1, 40)  # sent while it was not subscribed: not missed
        send_seq(xpub, b"view#a", 1, 41)
        assert [unpack_seq(client.recv()[1]["seq"])[1] for _ in range(2)] == [40, 41]
        assert client.missed == 0


def test_wait_index_returns_the_newest_of_those_queued(zctx):
    """An idle client's socket holds every index published meanwhile: the
    newest is returned, not the oldest (counts from minutes ago)."""
    # inproc: a message sent is in the client's queue when the send returns.
    xpub = XPub(zctx, "inproc://wait-index")
    with Client(xpub.address, views=["a"], context=zctx, timeout=10) as client:
        xpub.wait_subscribed(b"index", b"view#a")
        for n in range(3):
            entry = IndexEntry(counts=n, rate=1.0)
            xpub.send_multipart(encode_protocol(b"index", encode_index({"karabo#X.y": entry})))
            send_seq(xpub, b"view#a", 1, n)
        assert client.wait_index()["karabo#X.y"].counts == 2
        assert [client.recv()[1]["data"] for _ in range(3)] == [0.0, 1.0, 2.0]
        assert (client.missed, client.received) == (0, 3)
        # Nothing queued: the next index to arrive.
        xpub.send_multipart(encode_protocol(
            b"index", encode_index({"karabo#X.y": IndexEntry(counts=7, rate=1.0)})))
        assert client.wait_index()["karabo#X.y"].counts == 7
    xpub.socket.close(linger=0)


class SmallClient(Client):
    PENDING_LIMIT = 3


def test_results_wait_index_had_to_drop_are_counted(zctx, xpub):
    with SmallClient(xpub.address, views=["a"], context=zctx, timeout=10) as client:
        xpub.wait_subscribed(b"index", b"view#a")
        for n in range(5):
            send_seq(xpub, b"view#a", 1, n)
        xpub.send_multipart(encode_protocol(b"index", encode_index(INDEX)))
        client.wait_index()
        assert [unpack_seq(client.recv()[1]["seq"])[1] for _ in range(3)] == [2, 3, 4]
        assert client.missed_by_view == {"view#a": 2}
        assert client.received == 5


def batch_of(path, stream, ns):
    from metropc.messages import pack_seq
    from metropc.protocol_batch import pack_records
    return pack_records(path, [encode_protocol(path, {"data": float(n), "event_id": n,
                                                      "seq": pack_seq(stream, n)})[1:]
                               for n in ns])


def test_a_client_switches_to_batches_when_offered_and_drops_copies(zctx, xpub):
    with Client(xpub.address, views=["a"], context=zctx, timeout=10) as client:
        xpub.wait_subscribed(b"index", b"status", b"view#a")
        assert not client.batching                  # plain until offered
        for n in range(3):
            send_seq(xpub, b"view#a", 1, n)
        xpub.send_multipart(encode_protocol(b"status", {"state": "RUN", "batch": True}))
        xpub.send_multipart(encode_protocol(b"index", encode_index(INDEX)))
        client.wait_index()                         # reads the status on the way
        assert client.batching and client.status["batch"] is True
        xpub.wait_subscribed(b"batch#view#a")
        # Published while the subscriptions change: 2 and 3 come both ways.
        # The plain subscription stays until the first batch came (plain
        # results before it are not lost to the SUB socket's own filter).
        send_seq(xpub, b"view#a", 1, 3)
        xpub.send_multipart(batch_of(b"view#a", 1, [2, 3, 4, 5]))
        send_seq(xpub, b"view#a", 1, 5)             # before the unsubscription arrived
        got = [unpack_seq(client.recv()[1]["seq"])[1] for _ in range(6)]
        assert got == [0, 1, 2, 3, 4, 5]
        assert (client.received, client.missed) == (6, 0)
        assert xpub.socket.poll(5000) and xpub.socket.recv() == b"\x00view#a"
        xpub.send_multipart([b"batch#view#a", b"\x01\x00"])   # malformed
        with pytest.raises(ProtocolError, match="frame count"):
            client.recv()
        xpub.send_multipart(batch_of(b"view#a", 1, [7]))    # 6 was missed
        assert client.recv()[1]["data"] == 7.0 and client.missed == 1
        client.unsubscribe("a")
        xpub.wait_subscribed()                      # (unsubscriptions are not awaited)
        client.subscribe("a")
        xpub.wait_subscribed(b"batch#view#a")       # batches from then on


def test_gaps_between_and_inside_batches_are_counted(zctx, xpub):
    with Client(xpub.address, views=["a"], context=zctx, timeout=10) as client:
        xpub.wait_subscribed(b"index", b"status", b"view#a")
        xpub.send_multipart(encode_protocol(b"status", {"batch": True}))
        xpub.send_multipart(encode_protocol(b"index", encode_index(INDEX)))
        client.wait_index()
        xpub.wait_subscribed(b"batch#view#a")
        for ns in ([0, 1, 2], [5, 6, 7], [8, 10, 11], [12], [11, 12, 13]):
            xpub.send_multipart(batch_of(b"view#a", 1, ns))
        got = [client.recv()[1]["event_id"] for _ in range(11)]
        assert got == [0, 1, 2, 5, 6, 7, 8, 10, 11, 12, 13]   # 11 and 12 once
        assert client.missed_by_view == {"view#a": 2 + 1}
        xpub.send_multipart(batch_of(b"view#a", 2, [0, 1]))  # a new stream: from 0
        xpub.send_multipart(batch_of(b"view#a", 2, [4]))
        assert [client.recv()[1]["event_id"] for _ in range(3)] == [0, 1, 4]
        assert client.missed == 3 + 2 and client.received == 14


def test_a_client_told_not_to_never_asks_for_batches(zctx, xpub):
    with Client(xpub.address, views=["a"], context=zctx, timeout=10, batch=False) as client:
        xpub.wait_subscribed(b"index", b"status", b"view#a")
        xpub.send_multipart(encode_protocol(b"status", {"batch": True}))
        send_seq(xpub, b"view#a", 1, 0)
        xpub.send_multipart(batch_of(b"view#a", 1, [1]))   # someone else's batch
        send_seq(xpub, b"view#a", 1, 2)
        assert [client.recv()[1]["data"] for _ in range(2)] == [0.0, 2.0]
        assert not client.batching and client.missed == 1


# -- metropc-client --------------------------------------------------------

def test_summaries():
    assert cli.summarize(1.5) == "1.5"
    assert cli.summarize(np.float32(2)) == "2 (float32)"
    assert cli.summarize(np.arange(4.0)) == "ndarray float64 (4,)  min 0  max 3  mean 1.5"
    assert cli.summarize(np.array([np.nan, 1.0])).endswith("min 1  max 1  mean 1")
    assert cli.summarize(np.zeros((0, 2))) == "ndarray float64 (0, 2)"
    da = xr.DataArray(np.ones((2, 3)), dims=("x", "y"), name="n")
    assert cli.summarize(da) == "DataArray 'n' float64 (x: 2, y: 3)  min 1  max 1  mean 1"
    assert cli.summarize((1, "a")) == "tuple[2] (1; 'a')"
    assert cli.summarize("x" * 100).endswith("...")


def test_rates_come_from_counts_but_not_for_gauges():
    """A gauge's count (slots in use, results waiting) is a level, not a
    total: it has no rate from successive counts; its own, or none, shows."""
    def index(tid, waiting, slots):
        return {"internal#train_id": IndexEntry(tid, 9.0),
                "internal#reorder_waiting": IndexEntry(waiting, 0.0),
                "internal#shm_slots_used": IndexEntry(slots, 300.0)}

    rates = cli.IndexRates()
    rates.add(100.0, index(10, 5, 8))
    later = index(30, 9, 12)
    rates.add(102.0, later)
    assert rates.rate("internal#train_id", later["internal#train_id"]) == 10.0
    assert rates.rate("internal#reorder_waiting", later["internal#reorder_waiting"]) == 0.0
    assert rates.rate("internal#shm_slots_used", later["internal#shm_slots_used"]) == 300.0
    rows = {row.split()[0]: row.split()[1:] for row in cli._path_rows(later, rates.rate)}
    assert rows["internal#train_id"] == ["30", "10.0/s"]
    assert rows["internal#reorder_waiting"] == ["9", "-"]
    assert rows["internal#shm_slots_used"] == ["12", "300.0/s"]


def test_render_and_terminal_refresh(capsys, monkeypatch):
    text = cli.render("tcp://h:1", None, {}, ["view#roi"])
    assert "no index yet" in text and "view#roi  (nothing yet)" in text
    text = cli.render("tcp://h:1", INDEX, {}, ["view#roi", "view#rio", "view#zzz"])
    assert "view#roi  (nothing yet)" in text
    assert "view#rio  (no such view in the index; did you mean 'view#roi'?)" in text
    assert "view#zzz  (no such view in the index)" in text
    cli._show("frame one", tty=True)
    assert capsys.readouterr().out == "\x1b[H\x1b[2Jframe one\n"
    assert cli.fit_screen("abcdef\nxy", columns=4, rows=10) == "abc>\nxy"
    assert cli.fit_screen("\n".join("0123456789"), 20, 5).splitlines() == [
        "0", "1", "2", "... 7 more lines (a "]
    monkeypatch.setenv("COLUMNS", "30")  # what a terminal of 30 x 6 says
    monkeypatch.setenv("LINES", "6")
    text = cli.render("tcp://h:1", INDEX, {}, ["view#roi", "view#img"], index_age=100)
    cli._show(text, tty=True)
    screen = capsys.readouterr().out.removeprefix("\x1b[H\x1b[2J").splitlines()
    assert len(screen) == 5 and all(len(line) <= 30 for line in screen)
    assert screen[0].startswith("metropc-client tcp://h:1  di")  # the state stays in sight
    assert screen[-1].startswith("... ") and "more lines" in screen[-1]
    cli._show("frame two", tty=False)
    out = capsys.readouterr().out
    assert out.startswith("--- ") and out.endswith("frame two\n\n")
    with pytest.raises(SystemExit):
        cli.main(["tcp://h:1", "--interval", "0"])


def run_cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "metropc.cli.client", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_cli_once_prints_index_and_values(publisher):
    publisher.publish(b"index", encode_index(INDEX))
    publisher.publish(b"view#roi", {"data": 22.5, "event_id": 7})
    publisher.publish(b"view#img", {"data": np.arange(20, dtype=np.float32).reshape(4, 5),
                                    "event_id": 8})
    publisher.publish(b"view#spec", {"data": xr.DataArray(np.arange(3.0), dims="energy"),
                                     "event_id": 9})
    res = run_cli(publisher.address, "--view", "roi", "--view", "view#img",
                  "--view", "spec", "--once", "--timeout", "30")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "\x1b[" not in out  # not a terminal: no ANSI codes
    assert re.search(r"view#roi\s+SCALAR\s+POOL\s+99\s+9\.9/s\s+1\s+ROI sum", out)
    assert re.search(r"view#img \(hidden\)\s+MATRIX\s+REDUCE\s+10", out)
    assert re.search(r"internal#train_id\s+100\s+10\.0/s", out)
    assert "view#roi  event 7  22.5" in out
    assert "view#img  event 8  ndarray float32 (4, 5)  min 0  max 19  mean 9.5" in out
    assert "view#spec  event 9  DataArray float64 (energy: 3)  min 0  max 2  mean 1" in out


def test_cli_live_mode_prints_blocks(publisher):
    publisher.publish(b"index", encode_index(INDEX))
    publisher.publish(b"view#roi", {"data": 1.25, "event_id": 3})
    proc = subprocess.Popen(
        [sys.executable, "-m", "metropc.cli.client", publisher.address, "--view", "roi",
         "--interval", "0.05", "--timeout", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        seen = ""
        deadline = time.monotonic() + 30
        while "view#roi  event 3  1.25" not in seen and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen += line
        assert "view#roi  event 3  1.25" in seen
        assert seen.count("--- ") >= 1 and "VIEW" in seen
    finally:
        proc.kill()
        proc.communicate(timeout=10)


def test_cli_timeout_exit_code(tmp_path, capsys):
    assert cli.main([f"ipc://{tmp_path}/nobody", "--once", "--timeout", "0.3"]) == 1
    err = capsys.readouterr().err
    assert "no index" in err and "within 0.3 s" in err


def test_cli_missing_view_and_bad_address(publisher, capsys):
    publisher.publish(b"index", encode_index(INDEX))
    assert cli.main([publisher.address, "--view", "nope", "--once", "--timeout", "1"]) == 1
    assert "(view#nope: no such view in the index)" in capsys.readouterr().err
    assert cli.main([publisher.address, "--view", "rio", "--once", "--timeout", "1"]) == 1
    assert ("(view#rio: no such view in the index; did you mean 'view#roi'?)"
            in capsys.readouterr().err)
    for blank in ("", "  ", "view#"):
        with pytest.raises(SystemExit) as info:
            cli.main([publisher.address, "--view", blank])
        assert info.value.code == 2
        assert "--view: wants a view name" in capsys.readouterr().err
    assert cli.main(["not-an-address", "--once"]) == 2
    assert "cannot connect" in capsys.readouterr().err


# -- docs/client.md examples ---------------------------------------------

def test_docs_client_examples_run(publisher):
    """Every python block in docs/client.md runs against a real publisher."""
    publisher.publish(b"index", encode_index(INDEX))
    publisher.publish(b"view#roi", {"data": 22.5, "event_id": 7})
    publisher.publish(b"view#img", {"data": np.ones((4, 5), np.float32), "event_id": 7})
    text = (REPO / "docs" / "client.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks
    for block in blocks:
        code = block.replace("tcp://127.0.0.1:5555", publisher.address)
        exec(compile(code, "docs/client.md", "exec"), {"__name__": "docs_example"})


def test_a_tcp_port_out_of_range_is_refused_not_wrapped():
    """ZeroMQ would connect to 70000 - 65536 = 4464: somewhere else."""
    from metropc.client import Client, Controller
    for cls in (Client, Controller):
        with pytest.raises(ValueError, match="port 70000 is out of range"):
            cls("tcp://127.0.0.1:70000")


@pytest.mark.parametrize("address, why", [
    ("tcp://127.0.0.1", "no port"),
    ("tcp://:5555", "no host"),
    ("tcp://*:5555", "not a host to connect to"),
    ("tcp://host:http", "not a number"),
    ("tcp://host name:5555", "white space"),
    ("udp://127.0.0.1:5555", "not a ZeroMQ address"),
    ("", "empty"),
    (5555, "not a string"),
    ("tcp://localhost:\u00b2", "not a number"),          # isdigit(), but no int()
    ("tcp://localhost:\u0661\u0662", "not a number"),    # int(), but ZeroMQ refuses
    ("tcp://h\u00e9:5555", "not a host"),
    ("tcp://[1.2.3.4]:5555", "not a host"),
    ("tcp://a;b:5555", "not a host"),
    ("tcp://[::1]", "no port"),
])
def test_an_address_no_client_can_connect_to_is_refused_with_the_reason(address, why):
    """The library and the command-line tools share one rule
    (metropc.endpoints.connect_problem): a reason, not "Invalid argument"."""
    from metropc.client import Client, Controller
    for cls in (Client, Controller):
        with pytest.raises(ValueError, match=why):
            cls(address)


def test_a_client_reaches_an_inproc_output_through_the_frontend_s_context(pipeline):
    """ZeroMQ connects inproc:// only within one context: the frontend
    offers its own (zmq_context) for clients in the same process."""
    from metropc.client import Client
    from metropc.frontend import Context

    fe = pipeline(output_addr="inproc://client-test-output")
    fe.queue_to_all(b"context", Context(
        "@View.Scalar\ndef tid(t: 'internal#train_id'):\n    return t\n", version=1).to_dict())
    with Client(fe.output_addr, views=["tid"], timeout=20, context=fe.zmq_context) as client:
        assert "view#tid" in client.wait_index(timeout=20)
        got = []
        t = 0
        while len(got) < 3:
            fe.queue_to_any(b"event", {"internal#train_id": t})
            t += 1
            try:
                got.append(client.recv(timeout=0.2)[1]["data"])
            except TimeoutError:
                pass
    assert got == sorted(got)

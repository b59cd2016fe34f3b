"""Client side of a pipeline's output: the index and view results.

    >>> from metropc.client import Client
    >>> with Client("tcp://127.0.0.1:5555", views=["roi"], timeout=10) as client:
    ...     index = client.wait_index()
    ...     path, data = client.recv()          # ("view#roi", {"data": ..., "event_id": ...})

The reduce stage publishes on a PUB socket: ``b"index"`` messages describe
every path the pipeline knows (counts, rate and, for views, output type and
stage), and ``b"view#<name>"`` messages carry one result each.  Both use the
frame format of :mod:`metropc.protocol`; the index values are plain tuples on
the wire so that clients in other languages need no pickle, and
:func:`decode_protocol` here turns them into :class:`IndexEntry` objects.

The output never waits for a client that does not read: when a client's
queue is full its messages are dropped for it alone.  Each view message
carries ``"seq": (stream, n)``, numbering the messages of its topic, so the
:class:`Client` counts every result it missed (:attr:`Client.missed`).

The index entry types and their encoding live in :mod:`metropc.index`, the
control-port client :class:`Controller` in :mod:`metropc.controller`; both
are re-exported here (``from metropc.client import IndexViewEntry`` works).
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Iterable, Iterator

from . import endpoints
from .controller import ControlError, Controller
from .enums import ViewOutput, ViewStage
from .error import ProtocolError
from .index import (INDEX, OUTPUT_LATENCY, STAGE_PREFIX, TIMING_PREFIX, IndexEntry,
                    IndexStageEntry, IndexTimingEntry, IndexViewEntry, decode_index,
                    encode_index, slowest_views, view_path)
from .protocol import decode_protocol as _decode_protocol
from .protocol import encode_protocol
from .protocol_batch import BATCH_PREFIX, batch_topic
from .protocol_layouts import decode_batch
from .seqgaps import SeqGaps

__all__ = [
    "Client", "SeqGaps", "IndexEntry", "IndexViewEntry", "IndexTimingEntry", "IndexStageEntry",
    "slowest_views", "TIMING_PREFIX", "STAGE_PREFIX", "OUTPUT_LATENCY", "ViewOutput",
    "ViewStage",
    "decode_protocol", "encode_protocol", "encode_index", "decode_index",
    "view_path", "INDEX", "STATUS", "TOPICS", "Controller", "ControlError",
]

log = logging.getLogger(__name__)

#: Published with the index: ``{"state", "run", "version", "path", "control"}``.
STATUS = b"status"
#: Topics besides views a client may subscribe to (docs/protocol.md §8).
TOPICS = ("mark", "context", "params", "status")


def decode_protocol(frames, **kwargs) -> tuple[bytes, dict]:
    """Like :func:`metropc.protocol.decode_protocol`, with index decoding.

    For ``b"index"`` messages the values become :class:`IndexEntry` /
    :class:`IndexViewEntry` objects; other messages are passed through.
    """
    opcode, data = _decode_protocol(frames, **kwargs)
    if opcode == INDEX:
        data = decode_index(data)
    return opcode, data


# -- client ----------------------------------------------------------------

class Client:
    """Subscriber to the output of a running pipeline.

    Always subscribed to the index; :meth:`subscribe` adds views.  Index
    messages update :attr:`index`, while :meth:`recv` and iteration return
    ``(path, data)`` of subscribed views only.  ZeroMQ filters topics by
    prefix (``view#foo`` also matches ``view#foobar``), so the client checks
    every path exactly before decoding its payload.

    Parameters
    ----------
    address : str
        ZeroMQ endpoint of the pipeline's output (``tcp://host:port``, ``ipc://...``).
    views : iterable of str
        Views to subscribe to right away (``"roi"`` or ``"view#roi"``).
    timeout : float, optional
        Default timeout in seconds for :meth:`recv`, :meth:`wait_index` and
        iteration; None waits forever.
    allow_pickle : bool
        Passed to the decoder; False refuses pickled values (pickle executes
        code chosen by the sender).
    context : zmq.Context, optional
        Defaults to the process-wide instance.
    keys : str, optional
        Key directory of a pipeline secured with CURVE (``metropc-keys``).
    batch : bool
        Receive each view's results in batches, many to a message
        (``batch#view#<name>``, docs/protocol.md section 7a), once the
        publisher's status says it offers them (metropc's REDUCE and
        ``metropc-replay`` do, within milliseconds of connecting; other
        publishers, like the original metropc, never do, and their
        results keep coming as plain messages).  The same results in the
        same order, at a fraction of the per-result cost on both ends;
        :meth:`recv` returns them one by one as usual.  False: never.

    Missed results are counted, not hidden: the pipeline numbers the
    messages of each view (payload key ``seq``), and a gap in the numbers
    is added to :attr:`missed` and :attr:`missed_by_view`.  Counting
    starts with the first result after :meth:`subscribe`.  When the
    pipeline's REDUCE stage was restarted (a new ``stream``), the new one
    numbers from 0 and also numbers what it published on this client's
    views before the client had subscribed again, so those count as
    missed too.  Results dropped here
    because :meth:`wait_index` kept too many are counted as well.

    A Client is not thread-safe, like the ZeroMQ socket it wraps.
    """

    #: How many view messages :meth:`wait_index` keeps for later :meth:`recv`.
    PENDING_LIMIT = 1000

    def __init__(self, address: str, *, views: Iterable[str] = (),
                 timeout: float | None = None, allow_pickle: bool = True,
                 context=None, keys=None, batch: bool = True):
        import zmq

        from .transport import recv_frames, try_recv_frames  # zmq only where needed
        self._recv_frames, self._try_recv_frames = recv_frames, try_recv_frames
        self._again = zmq.Again  # what a receive that timed out raises
        self.address = endpoints.connectable(address)
        self.timeout = timeout
        self.allow_pickle = allow_pickle
        self.batch = batch
        #: Whether view results come in batches now (see `batch`).
        self.batching = False
        #: Views subscribed plain as well until their first batch comes.
        self._plain_too: set[str] = set()
        #: Results of a received batch that :meth:`recv` has not returned yet.
        self._unpacked: collections.deque = collections.deque()
        #: Latest index, ``{path: IndexEntry}``, or None before the first.
        self.index: dict[str, IndexEntry] | None = None
        #: Monotonic time the latest index arrived.
        self.index_time: float | None = None
        #: Latest status: state (READY, RUN, STOP), run, context version and
        #: path, and the control address (for :class:`Controller`); {} before.
        self.status: dict = {}
        self._views: set[str] = set()
        self._pending: collections.deque = collections.deque(maxlen=self.PENDING_LIMIT)
        #: View results received (for subscribed views, counted on arrival).
        self.received = 0
        self._seqs = SeqGaps()  # what was missed, per view
        ctx = context if context is not None else zmq.Context.instance()
        self._socket = ctx.socket(zmq.SUB)
        try:
            if keys is not None:  # a pipeline secured with CURVE (metropc-keys)
                from .security import Keys
                (keys if isinstance(keys, Keys) else Keys.load(keys)).client(self._socket)
            endpoints.connect(self._socket, address)
            self._socket.subscribe(INDEX)
            self._socket.subscribe(STATUS)
            for name in views:
                self.subscribe(name)
        except BaseException:
            self._socket.close(linger=0)
            raise
        self._rcvtimeo = -1  # the socket's, as set last (see _recv_one)

    @property
    def missed(self) -> int:
        """View results the pipeline sent that this client did not get, in total.

        Never decreases, so that it can be shown as a counter with a rate.
        """
        return sum(self._seqs.missed.values())

    @property
    def missed_by_view(self) -> dict[str, int]:
        """:attr:`missed` per view path (``{"view#roi": 3}``), a copy."""
        return dict(self._seqs.missed)

    @property
    def views(self) -> frozenset[str]:
        """Paths (``view#name``) currently subscribed to."""
        return frozenset(self._views)

    def subscribe(self, name: str) -> str:
        """Receive results of view `name`; returns its path."""
        path = view_path(name)
        if path not in self._views:
            self._socket.subscribe(self._wire_topic(path))
            self._views.add(path)
            self._seqs.last.pop(path, None)  # count gaps from its next result on
            log.debug("subscribed to %s at %s", path, self.address)
        return path

    def subscribe_topic(self, topic: str) -> str:
        """Also receive messages of `topic` (``mark``, ``context``, ``params``):
        :meth:`recv` returns them as ``(topic, payload)`` like view results."""
        if topic not in TOPICS:
            raise ValueError(f"unknown topic {topic!r}; known: {', '.join(TOPICS)}")
        if topic not in self._views:
            self._socket.subscribe(topic.encode())
            self._views.add(topic)
        return topic

    def unsubscribe(self, name: str) -> str:
        """Stop receiving results of view `name`; returns its path."""
        path = view_path(name)
        if path in self._views:
            self._socket.unsubscribe(self._wire_topic(path))
            if path in self._plain_too:
                self._plain_too.discard(path)
                self._socket.unsubscribe(path.encode("utf-8"))
            self._views.discard(path)
            self._seqs.last.pop(path, None)
            self._pending = collections.deque(
                (m for m in self._pending if m[0] != path), maxlen=self.PENDING_LIMIT)
            self._unpacked = collections.deque(m for m in self._unpacked if m[0] != path)
        return path

    def _wire_topic(self, path: str) -> bytes:
        """What to subscribe to for view `path`: its batches, or its messages."""
        topic = path.encode("utf-8")
        return batch_topic(topic) if self.batching and path.startswith("view#") else topic

    def _start_batching(self) -> None:
        """The publisher offers batches: subscribe to them.

        The plain subscriptions stay until the first batch of each view
        arrives (:meth:`_handle_batch`): results published before the
        publisher saw the batch subscription come plain, ahead of that
        batch, and dropping the plain subscription earlier would make the
        SUB socket discard them.  Results published between the batch
        subscription and the end of the plain one come both ways;
        :meth:`SeqGaps.count` recognises the second copy and it is dropped.
        """
        self.batching = True
        for path in self._views:
            if path.startswith("view#"):
                self._socket.subscribe(self._wire_topic(path))
                self._plain_too.add(path)
        log.debug("%s: receiving results in batches", self.address)

    def _deadline(self, timeout):
        timeout = self.timeout if timeout is None else timeout
        return None if timeout is None else time.monotonic() + timeout

    def _recv_one(self, deadline) -> tuple[str, dict] | bool:
        """Receive and handle one message.

        Returns ``(path, data)`` for a subscribed view, True for an index
        (stored in :attr:`index`) and False for anything else (prefix
        matches of unsubscribed paths).
        """
        if self._unpacked:
            return self._unpacked.popleft()
        frames = self._try_recv_frames(self._socket)  # queued already: no wait needed
        if frames is None:
            if deadline is None:
                wait_ms = -1  # (ZeroMQ's "forever")
            else:
                wait_ms = max(0, int((deadline - time.monotonic()) * 1000 + 0.999))
            if wait_ms != self._rcvtimeo:
                self._socket.rcvtimeo = self._rcvtimeo = wait_ms
            try:
                # A blocking receive that gives up at the deadline, not a
                # poll and then a receive: less code between the wake-up and
                # the result (a lone result's hop, docs/pipeline.md).
                frames = self._recv_frames(self._socket)
            except self._again:
                raise TimeoutError(f"nothing received from {self.address} in time") from None
        return self._handle(frames)

    def _handle(self, frames) -> tuple[str, dict] | bool:
        """What :meth:`_recv_one` returns, for the received `frames`."""
        topic = frames[0].bytes
        if topic == INDEX:
            _, self.index = decode_protocol(frames, allow_pickle=self.allow_pickle)
            self.index_time = time.monotonic()
            return True
        if topic == STATUS:
            _, status = _decode_protocol(frames, allow_pickle=self.allow_pickle)
            if type(status) is dict:
                self.status = status
                self._seqs.caught_up(status.get("seqs"))  # (missed at the very end)
                if status.get("batch") is True and self.batch and not self.batching:
                    self._start_batching()
            if "status" not in self._views:
                return False  # kept in .status; not a result
        if topic.startswith(BATCH_PREFIX):
            return self._handle_batch(topic[len(BATCH_PREFIX):], frames)
        try:
            path = topic.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"topic {topic[:40]!r} is not UTF-8") from None
        if path not in self._views:
            return False
        _, data = _decode_protocol(frames, allow_pickle=self.allow_pickle)
        if type(data) is dict and not self._seqs.count(path, data.get("seq")):
            return False  # a copy of a result that came in a batch already
        self.received += 1
        return path, data

    def _handle_batch(self, topic: bytes, frames) -> tuple[str, dict] | bool:
        """The first result of a batch on view `topic`; the others wait in
        ``_unpacked``.

        The whole batch is decoded before any result is returned, so a
        malformed one raises ProtocolError without delivering half of it.
        """
        try:
            path = topic.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"topic {topic[:40]!r} is not UTF-8") from None
        if path not in self._views or not self.batching:
            return False
        _, payloads = decode_batch(frames, allow_pickle=self.allow_pickle)
        if path in self._plain_too:  # plain results before this one came already
            self._plain_too.discard(path)
            self._socket.unsubscribe(path.encode("utf-8"))
        results = self._seqs.count_batch(path, payloads)
        self.received += len(results)
        if not results:
            return False
        self._unpacked.extend(results[1:])
        return results[0]

    def _messages(self, timeout):
        """Results of :meth:`_recv_one` until the deadline.

        Messages already queued at the deadline are still handled (so a
        zero timeout drains the socket), but at most ``_DRAIN_LIMIT`` of
        them, so that a flood of other topics cannot block forever.
        """
        deadline = self._deadline(timeout)
        late = 0
        while True:
            yield self._recv_one(deadline)
            if deadline is not None and time.monotonic() > deadline:
                late += 1
                if late > self._DRAIN_LIMIT:
                    raise TimeoutError(f"nothing matching received from "
                                       f"{self.address} in time")

    _DRAIN_LIMIT = 1000

    def recv(self, timeout: float | None = None) -> tuple[str, dict]:
        """The next ``(path, data)`` of a subscribed view.

        `data` is the published dict: ``{"data": result, "event_id": ...}``.
        Index messages arriving meanwhile update :attr:`index`.

        Raises
        ------
        TimeoutError
            Nothing for a subscribed view within `timeout` seconds
            (default: the client's timeout).
        ProtocolError
            A malformed message arrived; the client stays usable.
        """
        while self._pending:
            msg = self._pending.popleft()
            if msg[0] in self._views:
                return msg
        if self._unpacked:
            return self._unpacked.popleft()
        # Fast path: a result is queued already (no deadline, no generator).
        frames = self._try_recv_frames(self._socket)
        if frames is not None:
            msg = self._handle(frames)
            if type(msg) is tuple:
                return msg
        for msg in self._messages(timeout):
            if type(msg) is tuple:
                return msg

    def wait_index(self, timeout: float | None = None) -> dict[str, IndexEntry]:
        """The newest index: the last of those queued already, else the next
        one to arrive.

        A client that has not read for a while has every index published
        meanwhile waiting in its socket (about one a second); returning the
        oldest of them would show counts from minutes ago, and each further
        call one second later.  View results received on the way are kept
        for :meth:`recv` (up to :attr:`PENDING_LIMIT`, oldest dropped first,
        and counted in :attr:`missed`).
        """
        newest = None
        try:
            for msg in self._messages(0):  # what is queued: no wait
                if msg is True:
                    newest = self.index
                elif msg:
                    self._keep(msg)
        except TimeoutError:
            pass  # nothing more is queued (or the drain limit was reached)
        if newest is not None:
            return newest
        try:
            for msg in self._messages(timeout):
                if msg is True:
                    return self.index
                if msg:
                    self._keep(msg)
        except TimeoutError:
            raise TimeoutError(f"no index received from {self.address} "
                               "in time") from None

    def _keep(self, msg):
        """Keep a result for :meth:`recv`; a result dropped for it is missed."""
        if len(self._pending) == self._pending.maxlen:
            lost = self._pending[0][0]  # the append drops it: count it
            self._seqs.missed[lost] = self._seqs.missed.get(lost, 0) + 1
        self._pending.append(msg)

    def __iter__(self) -> Iterator[tuple[str, dict]]:
        """Yield ``(path, data)`` forever; TimeoutError ends it if a timeout is set."""
        while True:
            yield self.recv()

    def close(self) -> None:
        """Close the socket at once (linger 0); idempotent."""
        if not self._socket.closed:
            self._socket.close(linger=0)

    @property
    def closed(self) -> bool:
        return self._socket.closed

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self):
        state = "closed" if self.closed else f"{len(self._views)} view(s)"
        return f"<Client {self.address} {state}>"

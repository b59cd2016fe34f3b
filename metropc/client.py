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
"""

from __future__ import annotations

import collections
import logging
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from .enums import ViewOutput, ViewStage
from .error import ProtocolError
from .messages import SEQ_BITS, unpack_seq
from .protocol import decode_protocol as _decode_protocol
from .protocol_batch import BATCH_PREFIX, batch_topic
from .protocol_layouts import decode_batch
from .protocol import encode_protocol
from .timing import pack_buckets, unpack_buckets

__all__ = [
    "Client", "IndexEntry", "IndexViewEntry", "IndexTimingEntry", "IndexStageEntry",
    "slowest_views", "TIMING_PREFIX", "STAGE_PREFIX", "OUTPUT_LATENCY", "ViewOutput",
    "ViewStage",
    "decode_protocol", "encode_protocol", "encode_index", "decode_index",
    "view_path", "INDEX", "STATUS", "TOPICS", "Controller", "ControlError",
]

log = logging.getLogger(__name__)

#: Topic (opcode) of index messages.
INDEX = b"index"
#: Published with the index: ``{"state", "run", "version", "path", "control"}``.
STATUS = b"status"
#: Topics besides views a client may subscribe to (docs/protocol.md §8).
TOPICS = ("mark", "context", "params", "status")
_VIEW_PREFIX = "view#"
#: Index paths of view timing (``timing#<view>``) and stage load
#: (``stage#<name>``), and of the event-to-output latency (docs/protocol.md §8).
TIMING_PREFIX = "timing#"
STAGE_PREFIX = "stage#"
OUTPUT_LATENCY = "internal#output_latency"


class IndexEntry:
    """Statistics of one non-view path in the index (e.g. ``karabo#SRC.key``).

    `counts` is how many events carried the path, `rate` how many per second
    recently.  Entries use ``__slots__`` so that clients can subclass them
    with extra slots of their own, as EXtra-foam does.
    """

    __slots__ = ("counts", "rate")

    def __init__(self, counts: int, rate: float):
        self.counts = counts
        self.rate = rate

    def _fields(self) -> tuple:
        return (self.counts, self.rate)

    def _field_names(self) -> tuple:
        return IndexEntry.__slots__

    def __eq__(self, other):
        if not isinstance(other, IndexEntry):
            return NotImplemented
        return type(self) is type(other) and self._fields() == other._fields()

    __hash__ = None  # mutable

    def __repr__(self):
        args = ", ".join(f"{n}={_repr_field(v)}"
                         for n, v in zip(self._field_names(), self._fields(), strict=True))
        return f"{type(self).__name__}({args})"


class IndexViewEntry(IndexEntry):
    """Statistics and metadata of one view (``view#<name>``) in the index.

    The four positional arguments are the original's; `errors` (kernel
    failures counted so far), `hidden` and `label` are optional additions.
    `output` and `stage` are converted to :class:`ViewOutput` and
    :class:`ViewStage`, so ints from the wire work as well.
    """

    __slots__ = ("output", "stage", "errors", "hidden", "label")

    def __init__(self, counts: int, rate: float, output: ViewOutput | int,
                 stage: ViewStage | int, *, errors: int = 0, hidden: bool = False,
                 label: str = ""):
        super().__init__(counts, rate)
        self.output = ViewOutput(output)
        self.stage = ViewStage(stage)
        self.errors = errors
        self.hidden = hidden
        self.label = label

    def _fields(self) -> tuple:
        return (self.counts, self.rate, self.output, self.stage, self.errors,
                self.hidden, self.label)

    def _field_names(self) -> tuple:
        return IndexEntry.__slots__ + IndexViewEntry.__slots__

    def __eq__(self, other):
        if not isinstance(other, IndexEntry):
            return NotImplemented
        # ViewOutput equality is loose (SCALAR == SCALAR_FAST); entries are
        # only equal when the exact output type matches.
        return (type(self) is type(other) and self._fields() == other._fields()
                and self.output is other.output)

    __hash__ = None


class IndexTimingEntry(IndexEntry):
    """Timing of one view (``timing#<view>``) or of the output
    (``internal#output_latency``), measured where it runs.

    `counts` are calls (events, for the latency) so far and `rate` calls
    per second; `errors` failed calls; `p50`, `p99` seconds over the last
    10 s (all time if there was no call in them); `seconds` the total time;
    `buckets` the call counts per bucket of :data:`metropc.timing.BOUNDS`
    (the last one: slower than every bound).  Older decoders see these
    paths as plain ``(counts, rate)`` entries.
    """

    __slots__ = ("errors", "p50", "p99", "seconds", "buckets")

    def __init__(self, counts: int, rate: float, *, errors: int = 0, p50: float = 0.0,
                 p99: float = 0.0, seconds: float = 0.0, buckets: tuple = ()):
        super().__init__(counts, rate)
        self.errors = errors
        self.p50 = p50
        self.p99 = p99
        self.seconds = seconds
        self.buckets = tuple(buckets)

    def _fields(self) -> tuple:
        return (self.counts, self.rate, self.errors, self.p50, self.p99, self.seconds,
                self.buckets)

    def _field_names(self) -> tuple:
        return IndexEntry.__slots__ + IndexTimingEntry.__slots__


class IndexStageEntry(IndexEntry):
    """Load of one stage process (``stage#pool-0``, ``stage#reduce``).

    `counts` are the events it ran views for, `rate` per second, `busy`
    the fraction of its recent time spent working (0..1), `pid` its
    process id.  Older decoders see a plain ``(counts, rate)`` entry.
    """

    __slots__ = ("busy", "pid")

    def __init__(self, counts: int, rate: float, *, busy: float = 0.0, pid: int = 0):
        super().__init__(counts, rate)
        self.busy = busy
        self.pid = pid

    def _fields(self) -> tuple:
        return (self.counts, self.rate, self.busy, self.pid)

    def _field_names(self) -> tuple:
        return IndexEntry.__slots__ + IndexStageEntry.__slots__


def slowest_views(index: Mapping[str, IndexEntry] | None,
                  n: int = 3) -> list[tuple[str, IndexTimingEntry]]:
    """The `n` views of `index` with the highest p99 that ran: ``[(name, entry)]``."""
    timed = [(path[len(TIMING_PREFIX):], e) for path, e in (index or {}).items()
             if path.startswith(TIMING_PREFIX) and isinstance(e, IndexTimingEntry)
             and e.counts]
    timed.sort(key=lambda item: (-item[1].p99, -item[1].p50, item[0]))
    return timed[:n]


def _repr_field(value):
    if isinstance(value, (ViewOutput, ViewStage)):
        return f"{type(value).__name__}.{value.name}"
    return repr(value)


def view_path(name: str) -> str:
    """``"roi"`` or ``"view#roi"`` -> ``"view#roi"``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"view name must be a non-empty str, not {name!r}")
    return name if name.startswith(_VIEW_PREFIX) else _VIEW_PREFIX + name


# -- index wire encoding ---------------------------------------------------

def encode_index(entries: Mapping[str, IndexEntry]) -> dict[str, tuple]:
    """The wire payload of an index: ``{path: tuple}``.

    Non-view paths become ``(counts, rate)``; views become ``(counts, rate,
    output, stage, errors, hidden, label)`` with the enum values as ints.
    All elements are fast-path types, so no pickle is involved.
    """
    payload = {}
    for path, entry in entries.items():
        if isinstance(entry, IndexViewEntry):
            payload[path] = (int(entry.counts), float(entry.rate),
                             int(entry.output.value), int(entry.stage.value),
                             int(entry.errors), bool(entry.hidden), str(entry.label))
        elif isinstance(entry, IndexTimingEntry):
            payload[path] = (int(entry.counts), float(entry.rate), int(entry.errors),
                             float(entry.p50), float(entry.p99), float(entry.seconds),
                             pack_buckets(entry.buckets))
        elif isinstance(entry, IndexStageEntry):
            payload[path] = (int(entry.counts), float(entry.rate), float(entry.busy),
                             int(entry.pid))
        elif isinstance(entry, IndexEntry):
            payload[path] = (int(entry.counts), float(entry.rate))
        else:
            raise TypeError(f"index entry for {path!r} is a {type(entry).__name__}")
    return payload


def _check(value, types, what, path):
    if type(value) not in types:
        raise ProtocolError(f"index entry {path!r}: {what} is a "
                            f"{type(value).__name__}")
    return value


def _view_output(value, path):
    try:
        return ViewOutput(value)
    except ValueError:
        # A hint this side does not know yet: fall back to its generic type.
        try:
            return ViewOutput(value // 10)
        except ValueError:
            raise ProtocolError(f"index entry {path!r}: unknown output type "
                                f"{value}") from None


def _decode_entry(path: str, value) -> IndexEntry:
    if type(value) is not tuple or len(value) < 2:
        raise ProtocolError(f"index entry {path!r} is {value!r}, not a tuple "
                            "(counts, rate, ...)")
    counts = _check(value[0], (int,), "counts", path)
    rate = float(_check(value[1], (float, int), "rate", path))
    if path.startswith((TIMING_PREFIX, STAGE_PREFIX)) or path == OUTPUT_LATENCY:
        return _decode_timing(path, value, counts, rate)
    if not path.startswith(_VIEW_PREFIX) or len(value) < 4:
        return IndexEntry(counts, rate)
    output = _view_output(_check(value[2], (int,), "output", path), path)
    try:
        stage = ViewStage(_check(value[3], (int,), "stage", path))
    except ValueError:
        raise ProtocolError(f"index entry {path!r}: unknown stage {value[3]}") from None
    # Later elements are optional (older pipelines) and anything beyond the
    # known ones is ignored (newer pipelines).
    errors = _check(value[4], (int,), "errors", path) if len(value) > 4 else 0
    hidden = _check(value[5], (bool,), "hidden", path) if len(value) > 5 else False
    label = _check(value[6], (str,), "label", path) if len(value) > 6 else ""
    return IndexViewEntry(counts, rate, output, stage, errors=errors,
                          hidden=hidden, label=label)


def _decode_timing(path, value, counts, rate) -> IndexEntry:
    """A timing or stage entry; a plain entry if the rest is not the layout
    this side knows (an older or newer sender): these paths are extras,
    and the index around them must still decode."""
    try:
        if path.startswith(STAGE_PREFIX):
            if len(value) >= 4:
                return IndexStageEntry(
                    counts, rate, busy=float(_check(value[2], (float, int), "busy", path)),
                    pid=_check(value[3], (int,), "pid", path))
        elif len(value) >= 7:
            return IndexTimingEntry(
                counts, rate, errors=_check(value[2], (int,), "errors", path),
                p50=float(_check(value[3], (float, int), "p50", path)),
                p99=float(_check(value[4], (float, int), "p99", path)),
                seconds=float(_check(value[5], (float, int), "seconds", path)),
                buckets=unpack_buckets(_check(value[6], (bytes,), "buckets", path)))
    except (ProtocolError, ValueError) as e:
        log.debug("%s", e)
    return IndexEntry(counts, rate)


def decode_index(payload: Mapping[str, Any]) -> dict[str, IndexEntry]:
    """Turn the wire payload of an index into ``{path: IndexEntry}``."""
    return {path: _decode_entry(path, value) for path, value in payload.items()}


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

_TCP_PORT = re.compile(r"^tcp://.*:(\d+)$")


def _checked_address(address: str) -> str:
    """`address`, unless its TCP port is out of range: ZeroMQ would take
    port 70000 for 4464 (modulo 65536) and connect somewhere else."""
    m = _TCP_PORT.match(address) if isinstance(address, str) else None
    if m is not None and int(m.group(1)) > 65535:
        raise ValueError(f"{address!r}: port {m.group(1)} is out of range (0-65535)")
    return address


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
        self.address = _checked_address(address)
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
        self._missed: dict[str, int] = {}
        self._last_seq: dict[str, tuple[int, int]] = {}  # path -> latest (stream, n)
        ctx = context if context is not None else zmq.Context.instance()
        self._socket = ctx.socket(zmq.SUB)
        try:
            if keys is not None:  # a pipeline secured with CURVE (metropc-keys)
                from .security import Keys
                (keys if isinstance(keys, Keys) else Keys.load(keys)).client(self._socket)
            self._socket.connect(address)
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
        return sum(self._missed.values())

    @property
    def missed_by_view(self) -> dict[str, int]:
        """:attr:`missed` per view path (``{"view#roi": 3}``), a copy."""
        return dict(self._missed)

    def _count_seq(self, path: str, seq) -> bool:
        """Add the gap between `path`'s previous sequence number and `seq`;
        False if `seq` came before (a copy, while switching to batches)."""
        seq = unpack_seq(seq)
        if seq is None:
            return True  # an older pipeline: no sequence numbers
        last = self._last_seq.get(path)
        if last is None:
            self._last_seq[path] = seq
            return True  # the first result since subscribing: the baseline
        if last[0] != seq[0]:
            # The pipeline's REDUCE restarted: its numbers start at 0, and
            # it numbered what it sent before this client was back.
            log.info("%s: new sequence (the pipeline's REDUCE restarted)", path)
            last = (seq[0], -1)
        gap = (seq[1] - last[1] - 1) % (1 << SEQ_BITS)  # n wraps at 2**32
        if gap >= 1 << (SEQ_BITS - 1):
            return False  # at or before the last one: seen already
        self._last_seq[path] = seq
        if gap > 0:
            self._missed[path] = self._missed.get(path, 0) + gap
            log.debug("%s: missed %d result(s)", path, gap)
        return True

    def _count_batch(self, path: str, payloads: list) -> list[tuple[str, Any]]:
        """``(path, payload)`` of a batch's results not seen before, their
        gaps counted as by :meth:`_count_seq`; in one step when the batch's
        ``seq`` numbers follow each other in one stream (the usual case)."""
        seqs = [data.get("seq") if type(data) is dict else None for data in payloads]
        first, last = seqs[0], seqs[-1]
        if (type(first) is int and type(last) is int and first >= 0
                and first >> SEQ_BITS == last >> SEQ_BITS
                and seqs == list(range(first, last + 1))):
            if not self._count_seq(path, first):
                return [(path, data) for data, seq in zip(payloads, seqs)
                        if self._count_seq(path, seq)]
            self._last_seq[path] = unpack_seq(last)
            return [(path, data) for data in payloads]
        return [(path, data) for data in payloads
                if type(data) is not dict or self._count_seq(path, data.get("seq"))]

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
            self._last_seq.pop(path, None)  # count gaps from its next result on
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
            self._last_seq.pop(path, None)
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
        :meth:`_count_seq` recognises the second copy and it is dropped.
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
        if type(data) is dict and not self._count_seq(path, data.get("seq")):
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
        results = self._count_batch(path, payloads)
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
        """Wait for the next index message and return it.

        View results received while waiting are kept for :meth:`recv`
        (up to :attr:`PENDING_LIMIT`, oldest dropped first).
        """
        try:
            for msg in self._messages(timeout):
                if msg is True:
                    return self.index
                if msg:
                    if len(self._pending) == self._pending.maxlen:
                        lost = self._pending[0][0]  # the append drops it: count it
                        self._missed[lost] = self._missed.get(lost, 0) + 1
                    self._pending.append(msg)
        except TimeoutError:
            raise TimeoutError(f"no index received from {self.address} "
                               "in time") from None

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


class ControlError(RuntimeError):
    """The pipeline refused a control request (the message says why)."""


class Controller:
    """Controls a running pipeline from anywhere: reset, pause, resume,
    parameters, actions, runs (docs/client.md, "Controlling a pipeline").

    `address` is the pipeline's control endpoint: ``Pipeline.control_addr``,
    printed by ``metropc-run``, and announced to every client in
    :attr:`Client.status` (``Controller.of(client)`` uses that).  A pipeline
    secured with CURVE needs `keys`; without them nothing can be controlled.
    Each call waits for the pipeline's answer (at most `timeout` seconds)
    and raises :class:`ControlError` if it refused, TimeoutError if it did
    not answer.  Commands apply after the events queued so far.
    """

    def __init__(self, address: str, *, keys=None, timeout: float = 10.0, context=None):
        import zmq

        self.address = _checked_address(address)
        self.timeout = timeout
        self._zctx = context if context is not None else zmq.Context.instance()
        if keys is not None and not isinstance(keys, str):
            self._keys = keys
        else:
            from .security import Keys
            self._keys = None if keys is None else Keys.load(keys)
        self._socket = self._connect()

    def _connect(self):
        import zmq

        sock = self._zctx.socket(zmq.DEALER)
        sock.linger = 0
        try:
            if self._keys is not None:
                self._keys.client(sock)
            sock.connect(self.address)
        except BaseException:
            sock.close(linger=0)
            raise
        return sock

    @classmethod
    def of(cls, client: Client, timeout: float = 10.0, **kwargs) -> Controller:
        """The controller of the pipeline `client` reads (waits for its status)."""
        deadline = time.monotonic() + timeout
        while not client.status.get("control"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{client.address} announced no control endpoint")
            client.wait_index(timeout=left)
        return cls(client.status["control"], timeout=timeout, **kwargs)

    def request(self, command: bytes, data: dict | None = None) -> dict:
        """Send one command and wait for the answer; its payload."""
        from .protocol import encode_protocol

        self._socket.send_multipart([b"", *encode_protocol(command, data or {})])
        if not self._socket.poll(int(self.timeout * 1000)):
            # The answer may still come: a new socket keeps the next one clean.
            self._socket.close(linger=0)
            self._socket = self._connect()
            raise TimeoutError(f"no answer from {self.address} within {self.timeout:g} s")
        frames = self._socket.recv_multipart()
        if frames and not frames[0]:
            frames = frames[1:]
        status, payload = _decode_protocol(frames)
        if status != b"ok":
            raise ControlError(str(payload.get("msg", payload)))
        return payload

    def reset(self, *views: str) -> None:
        """Clear accumulated state of `views` (none: all) from the next event on."""
        self.request(b"reset", {"views": list(views)})

    def pause(self) -> None:
        self.request(b"pause")

    def resume(self) -> None:
        self.request(b"resume")

    def set_parameters(self, **values) -> None:
        """Change parameters (checked against the context's declarations)."""
        self.request(b"params", values)

    def action(self, view_name: str) -> None:
        self.request(b"action", {"view_name": view_name})

    def start_run(self, run: int | None = None) -> None:
        self.request(b"run", {"kind": "run_start", "run": run})

    def end_run(self) -> None:
        self.request(b"run", {"kind": "run_end"})

    def close(self) -> None:
        self._socket.close(linger=0)

    def __enter__(self) -> Controller:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

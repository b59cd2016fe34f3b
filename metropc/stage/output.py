"""The output socket of REDUCE: publish results only where someone listens.

Clients subscribe to topics (``view#roi``, ``index``, or a prefix of them).
A plain PUB socket filters *after* the publisher encoded and sent every
message, so a context with fifty views pays for fifty messages per event
even when the only client watches two.  The output is therefore an XPUB
socket: ZeroMQ tells it which prefixes are subscribed (once per prefix,
however many clients share it; an unsubscription, explicit or by
disconnecting, arrives when the last of them goes), and REDUCE encodes a
result only if some subscription is a prefix of its topic.

For clients nothing changes: it is still PUB/SUB, and messages of a topic
nobody subscribed to were dropped by ZeroMQ anyway.

**Bursts and slow clients.**  After a stall REDUCE releases thousands of
held-back results at once.  A plain XPUB drops a message silently for every
client whose queue (the high-water mark) is full, and once it dropped one it
skips that client until it has read half its queue: a client that reads
continuously, only not as fast as REDUCE sends, lost most of a burst (1300 of
2000 small results at a high-water mark of 100, 9000 of 20000 at 1000,
measured on a loaded 2-core host, with nothing counted).  So the socket runs
with ``XPUB_NODROP``, which makes a send fail instead of dropping when a
subscriber's queue is full, and :meth:`Output.send` then *paces*: it waits
for room, but only within a budget (at most ``pace_max_wait`` per message
and ``pace_share`` of REDUCE's time, with ``pace_burst`` seconds saved up).
A client that reads gets the burst a little later; one that does not (a
frozen display) costs one wait, after which the message is sent the lossy
way: delivered to everyone with room and dropped for the full client only,
and counted (:attr:`Output.dropped`, ``internal#output_dropped`` in the
index).  ZeroMQ then stops sending to that client until it reads again, so
later messages it misses meanwhile are not seen here; every view message
carries a per-topic sequence number (:meth:`Output.seq`, payload key
``seq``) from which each client counts exactly what it missed
(``metropc.client.Client.missed``).

**Batches.**  A client that subscribes to ``batch#view#<name>``
(:mod:`metropc.protocol_batch`) gets that view's results packed many to a
message: :meth:`Output.send` adds each result to the view's open batch and
:meth:`Output.flush` sends the open batches, which REDUCE calls once per
round of its loop (so a batch never waits for more results to come) and
which happens before any other message, so marks stay in order with the
results around them.
"""

from __future__ import annotations

import logging
import os
import time
from itertools import islice

import zmq

from ..messages import pack_seq
from ..protocol_batch import (BATCH_PREFIX, INLINE_MAX, inline_record, join_records,
                              pack_records)
from ..transport import send_frames, try_recv_frames

log = logging.getLogger(__name__)

__all__ = ["Output"]

_SUBSCRIBE, _UNSUBSCRIBE = 1, 0

#: Subscriptions REDUCE reports to the frontend for a restart (the oldest
#: first): what a REDUCE that replaces a dead one waits for.
MAX_REPORTED_SUBSCRIPTIONS = 1000
#: Distinct subscriptions held at which the output warns (and at every
#: doubling): ZeroMQ keeps each in memory, about 50 bytes per byte.
SUBSCRIPTIONS_WARN = 10_000

#: An open batch is sent once it holds this many results or bytes.
BATCH_MAX_RECORDS = 256
BATCH_MAX_BYTES = 1 << 20


class Output:
    """An XPUB socket, the prefixes its subscribers asked for, and pacing.

    Parameters
    ----------
    socket : zmq.Socket
        A bound XPUB socket; this object sets ``XPUB_NODROP`` and
        ``SNDTIMEO`` on it and must be the only one sending on it.
    pace_max_wait : float
        Seconds one message may wait for a full subscriber queue.
    pace_share : float
        Fraction of the time REDUCE may spend waiting for subscribers in
        the long run, so that a slow client can slow it by at most this.
    pace_burst : float
        Seconds of waiting that may be saved up for one burst.
    """

    def __init__(self, socket, *, pace_max_wait: float = 0.25, pace_share: float = 0.1,
                 pace_burst: float = 1.0):
        self.socket = socket
        #: The subscribed prefixes, oldest first (a dict used as an ordered set).
        self.prefixes: dict[bytes, None] = {}
        self._reported: tuple[bytes, ...] | None = ()
        self._warn_subscriptions = SUBSCRIPTIONS_WARN  # (doubled at each warning)
        self._routes: dict[bytes, tuple[bool, bool]] = {}  # topic -> (plain, batch)
        #: Open batches: view topic -> [records, bytes]; see :meth:`flush`.
        self._batches: dict[bytes, list] = {}
        #: After a restart: what the clients of the REDUCE that died had
        #: subscribed to and have not subscribed to again yet.  Messages on
        #: those topics still take a sequence number, so that a client
        #: coming back counts them as missed (see :meth:`skip`).
        self.remembered: set[bytes] = set()
        #: Identifies this output's sequence numbers: a new REDUCE process
        #: (after a crash) starts new ones, which clients must not count
        #: as a gap.  Random, so that it differs from any earlier one.
        self.stream: int = int.from_bytes(os.urandom(4), "little") >> 1
        self._seqs: dict[bytes, int] = {}
        #: Results a full subscriber queue refused (each dropped for the
        #: subscribers that had no room, delivered to the others; a batch
        #: counts its results, any other message one).
        self.dropped = 0
        #: Seconds spent waiting for subscribers to make room.
        self.paced = 0.0
        self.pace_max_wait = pace_max_wait
        self.pace_share = pace_share
        self.pace_burst = pace_burst
        self._budget = pace_burst
        self._budget_time = time.monotonic()
        self._rate = 0.0
        self._rate_mark = (time.monotonic(), 0)
        self._warned = 0.0
        socket.setsockopt(zmq.XPUB_NODROP, 1)

    def read_subscriptions(self, limit=1000) -> bool:
        """Apply the (un)subscriptions waiting on the socket; True if one
        of them was a subscription (a client arrived, or asked for more)."""
        subscribed = False
        for _ in range(limit):
            frames = try_recv_frames(self.socket)
            if frames is None:
                break
            msg = frames[0].bytes
            if len(frames) != 1 or not msg or msg[0] not in (_SUBSCRIBE, _UNSUBSCRIBE):
                log.debug("output: ignoring a message that is no subscription")
                continue
            if msg[0] == _SUBSCRIBE:
                self.prefixes[msg[1:]] = None
                self.remembered.discard(msg[1:])
                subscribed = True
            else:
                self.prefixes.pop(msg[1:], None)
            self._routes.clear()
            self._reported = None
        if len(self.prefixes) < SUBSCRIPTIONS_WARN // 2:  # (a flood gone: warn anew)
            self._warn_subscriptions = SUBSCRIPTIONS_WARN
        elif len(self.prefixes) >= self._warn_subscriptions:
            self._warn_subscriptions *= 2
            log.warning("output: %d distinct subscriptions; ZeroMQ keeps each in memory, so a "
                        "client subscribing to made-up topics costs REDUCE memory (docs/"
                        "operations.md, Security: --keys admits known clients only)",
                        len(self.prefixes))
        return subscribed

    def reported_subscriptions(self) -> tuple[bytes, ...]:
        """The oldest MAX_REPORTED_SUBSCRIPTIONS prefixes, for the progress
        report: a restarted REDUCE waits for these clients to come back.
        Bounded, so that a peer flooding the output with subscriptions does
        not make each 20 ms report carry them all (cached until one changes)."""
        if self._reported is None:
            self._reported = tuple(islice(self.prefixes, MAX_REPORTED_SUBSCRIPTIONS))
        return self._reported

    def wants(self, topic: bytes) -> bool:
        """Whether a subscriber would receive a message on `topic` (or its batches)."""
        plain, batched = self.routes(topic)
        return plain or batched

    def routes(self, topic: bytes) -> tuple[bool, bool]:
        """``(plain, batched)``: whether some client subscribed to `topic`,
        and whether some client asked for its results in batches.

        Only subscriptions that start with ``batch#`` ask for batches: a
        client subscribed to everything (``""``) gets plain messages and
        does not make REDUCE build batches as well.
        """
        route = self._routes.get(topic)
        if route is None:
            route = (self._subscribed(topic, 0),
                     topic.startswith(b"view#")
                     and self._subscribed(BATCH_PREFIX + topic, len(BATCH_PREFIX)))
            if len(self._routes) > 10000:
                self._routes.clear()
            self._routes[topic] = route
        return route

    def _subscribed(self, topic: bytes, shortest: int) -> bool:
        """Whether a subscribed prefix of `topic` is at least `shortest` long.

        Looks up each prefix of the topic rather than testing each
        subscription, so that the cost does not grow with the number of
        subscriptions (a peer may hold hundreds of thousands)."""
        prefixes = self.prefixes
        if len(prefixes) <= len(topic) - shortest:
            return any(len(p) >= shortest and topic.startswith(p) for p in prefixes)
        return any(topic[:k] in prefixes for k in range(shortest, len(topic) + 1))

    def skip(self, topic: bytes, n: int = 1) -> None:
        """A message on `topic` nobody would receive now: if a client of
        the REDUCE before a restart listened to it, number it anyway, so
        that client counts it as missed when it is back (whether it took
        the topic's messages or its batches)."""
        if self.remembered:
            batched = BATCH_PREFIX + topic
            if any(topic.startswith(p) or batched.startswith(p) for p in self.remembered):
                self._seqs[topic] = self._seqs.get(topic, 0) + n

    def seq(self, topic: bytes) -> tuple[int, int]:
        """The ``seq`` payload value of the next message on `topic`.

        ``(stream, n)``: `n` counts the messages sent on `topic` from 0,
        so a client seeing n jump knows how many it missed.  Only
        :meth:`send` with this `topic` moves it on, so a message that
        failed to encode leaves no gap.
        """
        return pack_seq(self.stream, self._seqs.get(topic, 0))

    def last_seqs(self) -> dict[str, int]:
        """``{view path: seq}`` of the last result numbered on each topic: in
        the status, so that a client counts results it missed at the very
        end too (docs/protocol.md §7)."""
        return {topic.decode("utf-8", "replace"): pack_seq(self.stream, n - 1)
                for topic, n in self._seqs.items() if n > 0}

    def send(self, frames, topic: bytes | None = None) -> bool:
        """Send one encoded message; False if a subscriber had no room for it.

        `topic` is given for view results, which carry :meth:`seq`: their
        counter advances (sent or not: a dropped message is a gap clients
        count), and the result also goes into the topic's open batch if a
        client asked for batches.  Other messages first send the open
        batches, so that they keep their place among the results.
        """
        if topic is None:
            if self._batches:
                self.flush()
            return self._send(frames)
        self._seqs[topic] = self._seqs.get(topic, 0) + 1
        plain, batched = self.routes(topic)
        sent = self._send(frames) if plain else True
        if batched:
            self._add_to_batch(topic, frames)
        return sent

    def _add_to_batch(self, topic: bytes, frames) -> None:
        record = frames[1:]
        for i, frame in enumerate(record):
            if type(frame) is not bytes:
                if memoryview(frame).nbytes >= INLINE_MAX:
                    # A large array views memory that may be reused once this
                    # call returns (a shared-memory lease): send it now, as
                    # plain messages are, after what came before it.
                    self._flush_topic(topic)
                    self._send(pack_records(topic, [record]), 1)
                    return
                record[i] = bytes(frame)
        self._append(topic, inline_record(record))

    def seq_range(self, topic: bytes, n: int) -> range | list[int]:
        """The ``seq`` payload values of the next `n` messages on `topic`
        (:meth:`seq` of each, as :meth:`send_records` will count them)."""
        first = self._seqs.get(topic, 0)
        start = pack_seq(self.stream, first)
        if pack_seq(self.stream, first + n - 1) != start + n - 1:  # n wraps at 2**32
            return [pack_seq(self.stream, first + i) for i in range(n)]
        return range(start, start + n)

    def send_records(self, topic: bytes, records: list[bytes]) -> None:
        """:meth:`send_record` of each of `records`, in order."""
        self._seqs[topic] = self._seqs.get(topic, 0) + len(records)
        for record in records:
            self._append(topic, record)

    def send_record(self, topic: bytes, record: bytes) -> None:
        """Add a view result, already packed as a batch record (see
        :func:`metropc.protocol_layouts.result_record`), to `topic`'s open
        batch: for a topic only batch clients take (``routes(topic) ==
        (False, True)``).  Numbered like :meth:`send`."""
        self._seqs[topic] = self._seqs.get(topic, 0) + 1
        self._append(topic, record)

    def _append(self, topic: bytes, packed: bytes) -> None:
        batch = self._batches.get(topic)
        if batch is None:
            batch = self._batches[topic] = [[], 0]
        batch[0].append(packed)
        batch[1] += len(packed)
        if len(batch[0]) >= BATCH_MAX_RECORDS or batch[1] >= BATCH_MAX_BYTES:
            self._flush_topic(topic)

    def flush(self) -> None:
        """Send every open batch (REDUCE calls this once per loop round)."""
        for topic in list(self._batches):
            self._flush_topic(topic)

    def _flush_topic(self, topic: bytes) -> None:
        batch = self._batches.pop(topic, None)
        if batch is not None:
            self._send(join_records(topic, batch[0]), len(batch[0]))

    def _send(self, frames, results: int = 1) -> bool:
        try:
            send_frames(self.socket, frames, zmq.NOBLOCK)
            return True
        except zmq.Again:
            pass
        return self._send_slowly(frames, results)

    def _send_slowly(self, frames, results: int = 1) -> bool:
        """A subscriber's queue is full: wait for room within the budget, else drop."""
        now = time.monotonic()
        self._budget = min(self.pace_burst,
                           self._budget + (now - self._budget_time) * self.pace_share)
        self._budget_time = now
        wait = min(self.pace_max_wait, self._budget)
        if wait >= 0.001:
            self.socket.sndtimeo = int(wait * 1000)
            try:
                send_frames(self.socket, frames)  # blocks until room or SNDTIMEO
                sent = True
            except zmq.Again:
                sent = False
            waited = time.monotonic() - now
            self._budget -= waited
            self._budget_time = now + waited
            self.paced += waited
            if sent:
                return True
        # No room in time: deliver to everyone else, drop for the full ones.
        self.dropped += results
        self.socket.setsockopt(zmq.XPUB_NODROP, 0)
        try:
            send_frames(self.socket, frames, zmq.NOBLOCK)  # lossy: never fails
        finally:
            self.socket.setsockopt(zmq.XPUB_NODROP, 1)
        if time.monotonic() - self._warned > 10.0:
            self._warned = time.monotonic()
            log.warning("output: a client does not read fast enough; dropping messages "
                        "for it (%d so far, internal#output_dropped)", self.dropped)
        return False

    def drop_stats(self) -> tuple[int, float]:
        """``(dropped, rate)`` for the index: the count and drops per second.

        The rate is measured between calls at least 0.5 s apart (the index
        is published every second), so count and rate agree.
        """
        now = time.monotonic()
        t0, n0 = self._rate_mark
        if now - t0 >= 0.5:
            self._rate = (self.dropped - n0) / (now - t0)
            self._rate_mark = (now, self.dropped)
        return self.dropped, self._rate

"""The output socket of REDUCE: publish results only where someone listens.

Clients subscribe to topics (``view#roi``, ``index``, or a prefix of them).
A plain PUB socket filters *after* the publisher encoded and sent every
message, so a context with fifty views pays for fifty messages per event
even when the only client watches two.  The output is therefore an XPUB
socket: ZeroMQ tells it which prefixes are subscribed (once per prefix,
however many clients share it; an unsubscription, explicit or by
disconnecting, arrives when the last of them goes), and REDUCE encodes a
result only if some subscription is a prefix of its topic.

For clients nothing changes: it is still PUB/SUB, messages of a topic
nobody subscribed to were dropped by ZeroMQ anyway, and a slow client still
loses messages at the high-water mark instead of slowing REDUCE.
"""

from __future__ import annotations

import logging

import zmq

from ..transport import send_frames, try_recv_frames

log = logging.getLogger(__name__)

__all__ = ["Output"]

_SUBSCRIBE, _UNSUBSCRIBE = 1, 0


class Output:
    """An XPUB socket plus the set of prefixes its subscribers asked for."""

    def __init__(self, socket):
        self.socket = socket
        self.prefixes: set[bytes] = set()
        self._wanted: dict[bytes, bool] = {}  # topic -> subscribed? (cache)

    def read_subscriptions(self, limit=1000):
        """Apply the (un)subscriptions waiting on the socket."""
        for _ in range(limit):
            frames = try_recv_frames(self.socket)
            if frames is None:
                return
            msg = frames[0].bytes
            if len(frames) != 1 or not msg or msg[0] not in (_SUBSCRIBE, _UNSUBSCRIBE):
                log.debug("output: ignoring a message that is no subscription")
                continue
            if msg[0] == _SUBSCRIBE:
                self.prefixes.add(msg[1:])
            else:
                self.prefixes.discard(msg[1:])
            self._wanted.clear()

    def wants(self, topic: bytes) -> bool:
        """Whether a subscriber would receive a message on `topic`."""
        wanted = self._wanted.get(topic)
        if wanted is None:
            wanted = any(topic.startswith(p) for p in self.prefixes)
            if len(self._wanted) > 10000:  # topics are view names: bounded, but be safe
                self._wanted.clear()
            self._wanted[topic] = wanted
        return wanted

    def send(self, frames) -> bool:
        """Send one encoded message now, or drop it if the socket is full."""
        try:
            send_frames(self.socket, frames, zmq.NOBLOCK)
        except zmq.Again:
            return False  # no room for slow subscribers: drop, never wait
        return True

"""Sending and receiving the frames of one message, quickly.

Stages and clients move many small messages (a tiny event's result is eight
frames), so per-frame overhead sets their rate.  pyzmq's
``send_multipart``/``recv_multipart`` cost about 2 us per frame in Python
(enum flag arithmetic, a ``getsockopt(RCVMORE)`` per frame, type checks);
the backend socket methods with plain int flags cost a third of that.  This
module wraps them once, so no other module needs to know.

Frames of :data:`ZERO_COPY_MIN` bytes or more are handed to ZeroMQ without
a copy; smaller ones are copied, which is cheaper than tracking them.
"""

from __future__ import annotations

import zmq

__all__ = ["ZERO_COPY_MIN", "readable", "recv_frames", "send_frames", "try_recv_frames"]

#: Frames from this size on are sent without a copy.
ZERO_COPY_MIN = 65536

_send_frame = zmq.backend.Socket.send
_recv_frame = zmq.backend.Socket.recv
_get_option = zmq.backend.Socket.get
_SNDMORE = int(zmq.SNDMORE)
_NOBLOCK = int(zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


def send_frames(sock, frames, flags=0):
    """Send a list of frames as one message.

    With ``zmq.NOBLOCK`` in `flags`, only the first frame may raise
    ``zmq.Again``; the rest of a message ZeroMQ accepted always follows.
    """
    flags = int(flags)
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        copy = isinstance(frame, bytes) or memoryview(frame).nbytes < ZERO_COPY_MIN
        _send_frame(sock, frame, flags | _SNDMORE if i < last else flags, copy)
        flags &= ~_NOBLOCK


def recv_frames(sock, flags=0):
    """All frames of one message as ``zmq.Frame`` objects (no copy)."""
    frame = _recv_frame(sock, int(flags), False)
    frames = [frame]
    while frame.more:
        frame = _recv_frame(sock, 0, False)
        frames.append(frame)
    return frames


def readable(sock):
    """Whether a message is queued on `sock` (no waiting).

    A third of the cost of ``poll(0)``, and a fraction of a failed
    non-blocking receive (raising ``zmq.Again`` builds an error message).
    """
    return bool(_get_option(sock, _EVENTS) & _POLLIN)


def try_recv_frames(sock):
    """The frames of a message already queued on `sock`, or None.

    Cheaper than a poll followed by a receive when messages arrive in
    bursts: a reader drains with this and polls only when it returns None
    (a failed attempt, which raises zmq.Again inside, costs about two
    :func:`readable` checks).
    """
    try:
        return recv_frames(sock, _NOBLOCK)
    except zmq.Again:
        return None

"""What every stage shares: opcodes, reserved payload keys, socket set-up.

Messages between stages are metropc protocol messages
(:mod:`metropc.protocol`); on the control channel they travel through a
ROUTER (frontend) / DEALER (stage) pair, so the frontend can address one
stage or all of them, and each stage sees its control messages in the order
they were sent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import threading
import time

import msgpack

from ..core import Context
from ..error import ContextError, ProtocolError
# The stage vocabulary (metropc.messages), importable from here as it always was.
from ..messages import (KEY_EVENT_ID, KEY_META, KEY_SHM, KEY_STEP,
                        META_EVENT, META_SKIP, META_STEP, OP_ABORT, OP_ACTION,
                        OP_BATCH, OP_COMMIT, OP_CONTEXT, OP_CREDIT, OP_CTX_FAILED,
                        OP_CTX_READY, OP_DEBUG, OP_ERROR, OP_EVENT, OP_HEARTBEAT,
                        OP_HELLO, OP_INDEX, OP_LOST, OP_PARAMS, OP_PICKLED_BATCH,
                        OP_PROGRESS, OP_RESET, OP_RESULT, OP_SHM, OP_STATS, OP_STEP,
                        OP_STOP, SEQ_PATH, Op, pack_meta, unpack_meta, validate)
from ..messages import (OP_ANNOUNCE, OP_ARESULT, OP_BUSY, OP_BYE, OP_INPUTS,  # noqa: F401
                        OP_PAUSE, OP_RESUME, OP_RUN, OP_VSTATS, OP_WANT)
from ..protocol import decode_protocol, encode_protocol
from ..transport import ZERO_COPY_MIN, recv_frames, send_frames

log = logging.getLogger(__name__)


def send(sock, opcode, data=None, *, prefix=(), flags=0):
    """Encode and send one message; `prefix` frames go first (identities).

    Large buffers go zero-copy; small frames are copied, which is cheaper
    than wrapping each of them for zero-copy.
    """
    frames = list(prefix)
    encode_protocol(opcode, data or {}, frames)
    send_frames(sock, frames, flags)


def send_batch(sock, messages, *, prefix=(), flags=0, small=None):
    """Send several ``(opcode, data)`` messages as one ``batch`` message.

    Under load, the per-message costs (a poll, a wake-up, a credit) are
    paid once per batch instead of once per small event.  Frames:
    ``b"batch"``, a msgpack list of each message's frame count, then the
    messages' frames one after the other.  `small`: whether the caller
    knows that no message holds a large buffer (None: look).
    """
    if small is None:
        small = not any(has_large_value(data) for _, data in messages)
    if small:
        # Small messages: one pickle frame for all of them is far cheaper
        # than a frame per key and value.  Stages trust each other (they
        # exchange context code), so pickle between them is no new risk.
        try:
            payload = pickle.dumps(messages, protocol=5)
        except Exception:  # noqa: BLE001 - not picklable: frames below
            payload = None
        if payload is not None:
            send_frames(sock, [*prefix, OP_PICKLED_BATCH, payload], flags)
            return
    if len(messages) == 1:
        return send(sock, *messages[0], prefix=prefix, flags=flags)
    parts = [encode_protocol(opcode, data) for opcode, data in messages]
    frames = list(prefix)
    frames.append(OP_BATCH)
    frames.append(msgpack.packb([len(p) for p in parts]))
    for p in parts:
        frames.extend(p)
    send_frames(sock, frames, flags)


def recv(sock, *, identity=False, flags=0):
    """Receive one message: ``(opcode, data)`` or ``(ident, opcode, data)``.

    The message is decoded and validated (:func:`metropc.messages.validate`):
    anything malformed, of an unknown opcode or with a field of the wrong
    type is counted (:data:`rejected`) and raises ProtocolError, for the
    caller to log and drop.
    """
    frames = recv_frames(sock, flags)
    try:
        if identity:
            ident = frames[0].bytes
            opcode, data = decode_protocol(frames[1:])
            return ident, opcode, validate(opcode, data, str_keys=False)
        opcode, data = decode_protocol(frames)
        return opcode, validate(opcode, data, str_keys=False)
    except ProtocolError:
        count_rejected()
        raise


#: Messages this process rejected in recv() / recv_messages() (malformed,
#: unknown opcode, or a field of the wrong type); each was dropped.
rejected = 0


def count_rejected():
    """Count one message this process dropped as malformed (``rejected``)."""
    global rejected
    rejected += 1


def _drop(e):
    """Count one message left out of a batch; log only the first (a peer
    that sends one bad message usually sends thousands)."""
    count_rejected()
    _batch_rejects(b"batch item", e)


#: Types that never hold a buffer (``.nbytes``): skipped without a lookup.
#: (A tuple's items are not looked into, as before: a tuple is pickled.)
_PLAIN = frozenset({int, float, bool, str, bytes, type(None), tuple})


class RejectLog:
    """Warns once per kind of message a stage had to drop.

    A peer that sends one bad message usually sends thousands: the first of
    each kind is logged (with why), the others only counted where the
    stage counts them, so a flood of garbage cannot flood the log.
    """

    def __init__(self, logger: logging.Logger, who: str):
        self.logger, self.who = logger, who
        self.kinds: set = set()

    def __call__(self, kind, error) -> None:
        if isinstance(kind, (bytes, bytearray, memoryview)):
            kind = bytes(kind)[:32]
        if kind not in self.kinds:
            self.kinds.add(kind)
            self.logger.warning("%s: dropped a %r message: %s: %s (further ones like it are "
                                "only counted)", self.who, kind, type(error).__name__, error)


class LimitedLog:
    """Logs at most `burst` lines per `window` seconds, then says how many it
    left out.

    For messages each worth a line when a person causes them (a refused
    control request: a mistyped view name), which a script in a loop would
    otherwise turn into a flood of the log.  The count of left-out lines is
    logged with the first line after the window ends.
    """

    def __init__(self, logger: logging.Logger, level: int = logging.INFO, *,
                 burst: int = 10, window: float = 10.0, clock=time.monotonic):
        self.logger, self.level = logger, level
        self.burst, self.window, self.clock = burst, window, clock
        self._start = float("-inf")
        self._logged = self.left_out = 0

    def __call__(self, msg: str, *args) -> None:
        now = self.clock()
        if now - self._start >= self.window:
            if self.left_out:
                self.logger.log(self.level, "(%d more like the above were not logged)",
                                self.left_out)
            self._start, self._logged, self.left_out = now, 0, 0
        if self._logged < self.burst:
            self._logged += 1
            self.logger.log(self.level, msg, *args)
        else:
            self.left_out += 1


#: Logs the first message left out of a batch in this process (see _drop).
_batch_rejects = RejectLog(log, "this stage")


def has_large_value(data, threshold=ZERO_COPY_MIN):
    """Whether a payload holds a buffer (``.nbytes``) of `threshold` bytes or more."""
    for value in data.values():
        if type(value) not in _PLAIN and getattr(value, "nbytes", 0) >= threshold:
            return True
    return False


def split_batch(frames):
    """The frame lists of the messages in `frames` (one unless a batch)."""
    if frames[0].bytes != OP_BATCH:
        return [frames]
    if len(frames) < 2:
        raise ProtocolError("batch without header")
    try:
        counts = msgpack.unpackb(frames[1].bytes)
    except Exception as e:  # noqa: BLE001 - any garbage is a protocol error
        raise ProtocolError(f"malformed batch header: {e}") from None
    if (not isinstance(counts, list) or not all(isinstance(n, int) and n >= 2 for n in counts)
            or sum(counts) != len(frames) - 2):
        raise ProtocolError("batch header does not match its frames")
    out, i = [], 2
    for n in counts:
        out.append(frames[i:i + n])
        i += n
    return out


def recv_messages(sock, flags=0):
    """Receive one message or batch: a list of valid ``(opcode, data)``.

    A malformed batch (header, pickle) is counted and raises ProtocolError;
    a malformed or invalid message inside a batch is counted, logged and
    left out, so its neighbours survive.
    """
    frames = recv_frames(sock, flags)
    pickled = frames[0].bytes == OP_PICKLED_BATCH
    try:
        if pickled:
            if len(frames) != 2:
                raise ProtocolError("pickled batch with extra frames")
            try:
                messages = pickle.loads(frames[1].buffer)
            except Exception as e:  # noqa: BLE001 - any garbage is a protocol error
                raise ProtocolError(f"malformed pickled batch: {e}") from None
            if type(messages) is not list:
                raise ProtocolError("pickled batch is not a list of (opcode, data)")
        else:
            messages = split_batch(frames)
    except ProtocolError:
        count_rejected()
        raise
    out = []
    if pickled:  # already decoded
        try:  # the common case: all valid, one pass without copying
            for m in messages:
                if type(m) is not tuple or len(m) != 2:
                    break
                validate(m[0], m[1])
            else:
                return messages
        except ProtocolError:
            pass
        for m in messages:  # left out what is bad, one log line each
            try:
                if type(m) is not tuple or len(m) != 2:
                    raise ProtocolError("pickled batch entry is not (opcode, data)")
                validate(*m)
            except ProtocolError as e:
                _drop(e)
                continue
            out.append(m)
        return out
    for frames in messages:
        try:
            opcode, data = decode_protocol(frames)
            out.append((opcode, validate(opcode, data, str_keys=False)))
        except ProtocolError as e:
            _drop(e)
    return out


def ipc_path(addr):
    """The file behind an ``ipc://`` address (None for abstract or other)."""
    if addr.startswith("ipc://") and not addr.startswith("ipc://@"):
        return addr[len("ipc://"):]
    return None


def remove_ipc_file(addr):
    path = ipc_path(addr)
    if path and os.path.exists(path):
        try:
            os.unlink(path)
        except OSError:
            pass


#: The signals that stop a stage (they raise KeyboardInterrupt in it).
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})


@contextlib.contextmanager
def stop_signals_held():
    """Hold SIGTERM and SIGINT back while a stage makes its sockets and threads.

    A stop signal raises KeyboardInterrupt at whatever line runs; during
    setup, that can be after a resource was made and before the name its
    ``finally`` block releases was bound to it.  An unclosed socket then
    blocks ``Context.term()`` for ever: a worker given SIGTERM just after
    it started hung instead of leaving (4 times in 60).  A signal that comes
    meanwhile is noted and raised again once setup has ended, inside the
    ``try`` whose ``finally`` releases all that was made.

    (Not by blocking the signals: a thread that does not block them, such
    as numpy's, takes them instead.  Signal handlers belong to the main
    thread, so a stage running in another thread holds nothing; an ignored
    signal, such as a stage process's SIGINT, stays ignored.)
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came = []
    held = {signum: signal.signal(signum, lambda signum, _: came.append(signum))
            for signum in STOP_SIGNALS if callable(signal.getsignal(signum))}
    try:
        yield
    finally:
        for signum, handler in held.items():
            signal.signal(signum, handler)
        if came:  # (as many at once would have been, for the kernel: one)
            signal.raise_signal(signal.SIGTERM if signal.SIGTERM in came else came[0])


def make_socket(zctx, kind, *, hwm=None, identity=None, linger=0):
    sock = zctx.socket(kind)
    sock.linger = linger
    if hwm is not None:
        sock.sndhwm = hwm
        sock.rcvhwm = hwm
    if identity is not None:
        sock.identity = identity
    return sock


def build_context(data, stage):
    """Build the context sent in a ``context`` message for `stage`.

    Returns ``(ctx, None)`` or ``(None, error text with file:line)``; never
    raises, since a bad context must not take a stage down.
    """
    source = data["ctx"].get("source") if isinstance(data.get("ctx"), dict) else None
    try:
        return Context.from_dict(data["ctx"], stage=stage), None
    except ContextError as e:
        return None, e.format_for_context(source)
    except KeyboardInterrupt:  # how a stage is told to stop (see runner.py)
        raise
    except BaseException as e:  # noqa: BLE001 - even sys.exit(): reported, old context kept
        return None, f"{type(e).__name__}: {e}"

"""What every stage shares: opcodes, reserved payload keys, socket set-up.

Messages between stages are metropc protocol messages
(:mod:`metropc.protocol`); on the control channel they travel through a
ROUTER (frontend) / DEALER (stage) pair, so the frontend can address one
stage or all of them, and each stage sees its control messages in the order
they were sent.
"""

from __future__ import annotations

import logging
import os
import pickle

import msgpack

from ..error import ProtocolError
from ..protocol import decode_protocol, encode_protocol
from ..transport import ZERO_COPY_MIN, recv_frames, send_frames

log = logging.getLogger(__name__)

# Frontend -> stage opcodes.
OP_EVENT = b"event"      # one event (pool)
OP_CONTEXT = b"context"  # {"ctx": Context.to_dict(), "from_seq": int, "prepare": bool}
OP_COMMIT = b"commit"    # {"version": int, "from_seq": int}: use the prepared context
OP_ABORT = b"abort"      # {"version": int}: forget the prepared context
OP_PARAMS = b"params"    # {name: value}
OP_INDEX = b"index"      # publish the index now (reduce)
OP_ACTION = b"action"    # {"view_name": name} (reduce)
OP_STEP = b"step"        # operator step boundary (sent through a worker)
OP_STATS = b"stats"      # {path: count} input statistics (reduce)
OP_LOST = b"lost"        # {"seqs": [...]}: events a dead worker held (reduce)
OP_SHM = b"shm"          # {"out": segment name}: a fresh results segment (pool)
OP_STOP = b"stop"        # leave the stage loop

# Stage -> frontend opcodes.
OP_HELLO = b"hello"      # {"stage": str, "output_addr": str?}
OP_HEARTBEAT = b"heartbeat"  # an idle worker is alive (pool)
OP_CREDIT = b"credit"    # ready for {"n": int} (default 1) more events (pool);
                         # "free": int64 starts of input slots it released
OP_ERROR = b"error"      # {"msg": str}
OP_CTX_READY = b"ctx_ready"    # {"version": int}: prepared, waiting for commit
OP_CTX_FAILED = b"ctx_failed"  # {"version": int, "msg": str}
OP_DEBUG = b"debug"      # {"msg": str}

# Pool -> reduce.
OP_RESULT = b"result"

# Several messages in one (frontend -> pool, pool -> reduce): framed, or
# for small payloads one pickle frame of [(opcode, data), ...].
OP_BATCH = b"batch"
OP_PICKLED_BATCH = b"pbatch"

#: Reserved keys in result messages (never valid paths: no '#' type prefix).
KEY_META = "#meta"          # pack_meta(...): a 6-tuple
KEY_EVENT_ID = "#event_id"  # only when the event id does not fit in the meta
#: Marks the pseudo-event that carries an operator step boundary.
KEY_STEP = "#step"
#: A reference to arrays in a shared-memory slot (metropc.stage.shm).
KEY_SHM = "#shm"

#: Event key carrying the frontend's dispatch sequence number.
SEQ_PATH = "internal#seq"


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
    if len(messages) == 1:
        return send(sock, *messages[0], prefix=prefix, flags=flags)
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
    parts = [encode_protocol(opcode, data) for opcode, data in messages]
    frames = list(prefix)
    frames.append(OP_BATCH)
    frames.append(msgpack.packb([len(p) for p in parts]))
    for p in parts:
        frames.extend(p)
    send_frames(sock, frames, flags)


def recv(sock, *, identity=False, flags=0):
    """Receive one message: ``(opcode, data)`` or ``(ident, opcode, data)``."""
    frames = recv_frames(sock, flags)
    if identity:
        ident = frames[0].bytes
        opcode, data = decode_protocol(frames[1:])
        return ident, opcode, data
    return decode_protocol(frames)


_PLAIN = frozenset({int, float, bool, str, bytes, type(None)})


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
    """Receive one message or batch: a list of ``(opcode, data)``.

    A malformed batch header raises ProtocolError; a malformed message
    inside a batch is logged and left out, so its neighbours survive.
    """
    frames = recv_frames(sock, flags)
    if frames[0].bytes == OP_PICKLED_BATCH:
        if len(frames) != 2:
            raise ProtocolError("pickled batch with extra frames")
        try:
            messages = pickle.loads(frames[1].buffer)
        except Exception as e:  # noqa: BLE001 - any garbage is a protocol error
            raise ProtocolError(f"malformed pickled batch: {e}") from None
        if not isinstance(messages, list) or not all(
                isinstance(m, tuple) and len(m) == 2 and isinstance(m[0], bytes)
                and isinstance(m[1], dict) for m in messages):
            raise ProtocolError("pickled batch is not a list of (opcode, data)")
        return messages
    out = []
    for frames in split_batch(frames):
        try:
            out.append(decode_protocol(frames))
        except ProtocolError as e:
            log.warning("rejected a malformed message: %s", e)
    return out


def pack_meta(seq, version=None, event_id=None, produced=(), failed=(), kind=0):
    """The bookkeeping of one pool result, as one value.

    Sequence number, context version, event id, the views that produced or
    failed, and `kind` (META_EVENT, META_SKIP or META_STEP) travel together
    as one tuple: inside a pickled batch it costs next to nothing, and in a
    framed message it is one tuple value (docs/protocol.md).  An event id
    that is not a plain int, str or float travels under KEY_EVENT_ID.
    """
    if event_id is not None and type(event_id) not in (int, str, float):
        event_id = None
    return (seq, version, event_id, tuple(produced), tuple(failed), kind)


def unpack_meta(meta):
    """Check what :func:`pack_meta` made; ProtocolError for anything malformed."""
    if type(meta) is not tuple or len(meta) != 6:
        raise ProtocolError("result without valid metadata")
    seq, version, event_id, produced, failed, kind = meta
    if type(seq) is not int or type(kind) is not int:
        raise ProtocolError("result metadata without sequence number or kind")
    if type(produced) is not tuple or type(failed) is not tuple:
        raise ProtocolError("result metadata: view lists are not tuples")
    return meta


META_EVENT, META_SKIP, META_STEP = 0, 1, 2


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
    from ..core import Context
    from ..error import ContextError

    source = data["ctx"].get("source") if isinstance(data.get("ctx"), dict) else None
    try:
        return Context.from_dict(data["ctx"], stage=stage), None
    except ContextError as e:
        return None, e.format_for_context(source)
    except Exception as e:  # noqa: BLE001 - reported, old context kept
        return None, f"{type(e).__name__}: {e}"

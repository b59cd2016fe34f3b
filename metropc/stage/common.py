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

import zmq

from ..protocol import decode_protocol, encode_protocol

log = logging.getLogger(__name__)

# Frontend -> stage opcodes.
OP_EVENT = b"event"      # one event (pool)
OP_CONTEXT = b"context"  # {"ctx": Context.to_dict(), "from_seq": int}
OP_PARAMS = b"params"    # {name: value}
OP_INDEX = b"index"      # publish the index now (reduce)
OP_ACTION = b"action"    # {"view_name": name} (reduce)
OP_STEP = b"step"        # operator step boundary (sent through a worker)
OP_STATS = b"stats"      # {path: count} input statistics (reduce)
OP_STOP = b"stop"        # leave the stage loop

# Stage -> frontend opcodes.
OP_HELLO = b"hello"      # {"stage": str, "output_addr": str?}
OP_CREDIT = b"credit"    # {"n": int}: ready for n more events (pool)
OP_ERROR = b"error"      # {"msg": str}
OP_DEBUG = b"debug"      # {"msg": str}

# Pool -> reduce.
OP_RESULT = b"result"

#: Reserved keys in result messages (never valid paths: no '#' type prefix).
KEY_SEQ = "#seq"
KEY_VERSION = "#version"
KEY_EVENT_ID = "#event_id"
KEY_PRODUCED = "#produced"
KEY_FAILED = "#failed"
KEY_SKIP = "#skip"
#: Marks the pseudo-event that carries an operator step boundary.
KEY_STEP = "#step"
#: Event key carrying the frontend's dispatch sequence number.
SEQ_PATH = "internal#seq"


def send(sock, opcode, data=None, *, prefix=(), flags=0):
    """Encode and send one message; `prefix` frames go first (identities)."""
    frames = list(prefix)
    encode_protocol(opcode, data or {}, frames)
    sock.send_multipart(frames, flags=flags, copy=False)


def recv(sock, *, identity=False, flags=0):
    """Receive one message: ``(opcode, data)`` or ``(ident, opcode, data)``."""
    frames = sock.recv_multipart(flags, copy=False)
    if identity:
        ident = frames[0].bytes
        opcode, data = decode_protocol(frames[1:])
        return ident, opcode, data
    return decode_protocol(frames)


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

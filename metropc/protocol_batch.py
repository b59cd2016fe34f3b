"""Batches: many results of one view in one ZeroMQ message (negotiated).

A tiny result costs eight ZeroMQ frames, and at tens of thousands of
results per second the per-frame cost of sending (REDUCE) and receiving
(the client) bounds the pipeline, not the analysis.  A client that asks for
it -- by subscribing to ``batch#view#<name>`` instead of ``view#<name>`` --
gets the results of a view packed into one message of two frames, plus one
frame per large array.  Clients that do not ask get exactly today's frames;
clients that subscribe to everything (``""``) also receive batch messages,
which a well-behaved client skips like any unknown topic (docs/protocol.md,
section 7a, where the layout is specified byte for byte).

A *record* is one result's message without its topic: frames 1 .. k of
:func:`metropc.protocol.encode_protocol`'s output.  This module turns
records into batch frames and back; it touches no socket.
"""

from __future__ import annotations

import struct

from .error import ProtocolError

__all__ = ["BATCH_PREFIX", "EXTERNAL", "INLINE_MAX", "batch_topic", "inline_record",
           "join_records", "pack_records", "unpack_records"]

#: Frame 0 of a batch is this prefix followed by the view's topic.
BATCH_PREFIX = b"batch#"

#: Frames of this size or more travel as frames of their own (no copy
#: into the blob); their length field holds this marker instead.
INLINE_MAX = 65536
EXTERNAL = 0xFFFFFFFF

#: A record with more frames than this is malformed (a result's message has
#: a few frames per key; this bounds what a hostile length can make us do).
MAX_RECORD_FRAMES = 1 << 16

_U32 = struct.Struct("<I")
_HEADS: dict[int, struct.Struct] = {}  # frame count -> its record header


def _head(count: int) -> struct.Struct:
    head = _HEADS.get(count)
    if head is None:
        head = _HEADS[count] = struct.Struct(f"<I{count}I")
    return head


def batch_topic(topic: bytes) -> bytes:
    """The batch topic of a view topic: ``view#roi`` -> ``batch#view#roi``."""
    return BATCH_PREFIX + topic


def pack_records(topic: bytes, records) -> list:
    """The frames of a batch of `records` (lists of frames) on view `topic`.

    Frame 1 is the concatenation, per record, of its frame count, its frame
    lengths (``u32`` little-endian each; :data:`EXTERNAL` for a large frame)
    and the bytes of its small frames.  Large frames follow as frames 2, 3,
    ... in the order they are referenced, uncopied.
    """
    blob: list = []
    external: list = []
    for frames in records:
        lengths = []
        inline = []
        for frame in frames:
            size = len(frame) if type(frame) is bytes else memoryview(frame).nbytes
            if size >= INLINE_MAX:
                lengths.append(EXTERNAL)
                external.append(frame)
            else:
                lengths.append(size)
                inline.append(frame)
        blob.append(_head(len(lengths)).pack(len(lengths), *lengths))
        blob += inline
    return [BATCH_PREFIX + topic, b"".join(blob), *external]


def inline_record(frames) -> bytes:
    """One record of ``bytes`` frames, all inline, as it appears in frame 1.

    The fast path of :func:`pack_records` for results without large arrays:
    REDUCE packs each result as it is published and :func:`join_records`
    makes the batch, which equals ``pack_records`` of the same frames.
    """
    count = len(frames)
    return _head(count).pack(count, *map(len, frames)) + b"".join(frames)


def join_records(topic: bytes, records: list[bytes]) -> list:
    """The frames of a batch of :func:`inline_record` records on view `topic`."""
    return [BATCH_PREFIX + topic, b"".join(records)]


def unpack_records(frames) -> tuple[bytes, list[list]]:
    """``(topic, records)`` of a received batch; the inverse of :func:`pack_records`.

    `topic` is the view topic (without the batch prefix).  Each record is a
    list of frames (``bytes`` slices of the blob, or the external frames as
    received) that :func:`metropc.protocol.decode_protocol` decodes once
    the topic is put in front.  Anything malformed raises ProtocolError.
    """
    if len(frames) < 2:
        raise ProtocolError(f"batch has {len(frames)} frame(s); at least 2 are required")
    head = _bytes(frames[0])
    if not head.startswith(BATCH_PREFIX):
        raise ProtocolError(f"not a batch topic: {head[:40]!r}")
    blob = _bytes(frames[1])
    external = frames[2:]
    records: list[list] = []
    pos, end, used = 0, len(blob), 0
    while pos < end:
        if pos + 4 > end:
            raise ProtocolError("batch truncated inside a record's frame count")
        count = _U32.unpack_from(blob, pos)[0]
        if not 0 < count <= MAX_RECORD_FRAMES or pos + 4 + 4 * count > end:
            raise ProtocolError(f"batch record at byte {pos}: bad frame count {count}")
        lengths = struct.unpack_from(f"<{count}I", blob, pos + 4)
        pos += 4 + 4 * count
        record = []
        for size in lengths:
            if size == EXTERNAL:
                if used >= len(external):
                    raise ProtocolError("batch refers to a frame it does not have")
                record.append(external[used])
                used += 1
            else:
                if pos + size > end:
                    raise ProtocolError("batch truncated inside a frame")
                record.append(blob[pos:pos + size])
                pos += size
        records.append(record)
    if used != len(external):
        raise ProtocolError(f"batch has {len(external) - used} frame(s) no record refers to")
    return head[len(BATCH_PREFIX):], records


def _bytes(frame) -> bytes:
    if type(frame) is bytes:
        return frame
    data = getattr(frame, "bytes", None)  # zmq.Frame
    if type(data) is bytes:
        return data
    try:
        return bytes(memoryview(frame))
    except TypeError:
        raise ProtocolError(f"a frame must be bytes-like, not {type(frame).__name__}") from None

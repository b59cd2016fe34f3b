"""Records of plain numbers by fixed layout: the fast path of batches.

Most results are a number: a view returned an int or a float, and the
payload around it (event id, context version, ``seq``, run) is ints.  The
record of such a result (docs/protocol.md §7a: one message's frames
without its topic, inline in a batch) then has the same bytes for every
result of its view except eight per value.  Encoding and decoding it
through the general code (type dispatch per value, a frame per key) cost
REDUCE and each client about 4 and 6 microseconds per result, more than
the rest of a tiny event's path through either.

A :class:`Layout` is one such shape: the keys in order and the type of
each value (int as int64, float as binary64, or None, which has no frame).
It packs a payload into exactly the bytes that
``inline_record(encode_protocol(topic, payload)[1:])`` gives, and unpacks
records by one ``struct`` call each, checking every byte that is not a
value against the layout.  Anything else -- another type, an int beyond
64 bits, a record of another shape, a malformed batch -- takes the general
path, so the results are the same either way (tests/test_protocol_layouts.py
compares both on random payloads and damaged batches).  Pure functions
over bytes, like the rest of the protocol.
"""

from __future__ import annotations

import struct
from typing import Any, Mapping

import numpy as np

from .protocol import decode_protocol
from .protocol_batch import BATCH_PREFIX, inline_record, unpack_records

__all__ = ["Layout", "layout_of", "fast_record", "result_record", "decode_batch"]

#: Type -> (type ID, struct code, frame size) of the values a layout holds.
_PLAIN = {int: (ord("i"), "q", 8), float: (ord("f"), "d", 8), type(None): (ord("n"), "", 0)}
#: Layouts kept (by keys and value types); a pipeline has a few per view.
_CACHE_LIMIT = 1024


class Layout:
    """The fixed shape of a record whose values are all int, float or None.

    The record's bytes are: frame count and frame lengths (u32 each), the
    type IDs, then each key followed by its value's 8 bytes (none for
    None).  As a ``struct`` they alternate between a constant field (the
    bytes up to the next value) and a value, possibly ending with a
    constant (keys of None values after the last number); a reader
    compares every constant field (:func:`decode_batch`).
    """

    __slots__ = ("names", "valued", "sparse", "struct", "consts", "_codes", "_template",
                 "_bulk")

    def __init__(self, names: tuple[str, ...], types: tuple[type, ...]):
        ids, lengths, body = bytearray(), [], []
        for name, t in zip(names, types):
            key = name.encode("utf-8")
            type_id, code, size = _PLAIN[t]
            ids += bytes((0, type_id))
            lengths.append(len(key))
            if size:
                lengths.append(size)
            body.append((key, code))
        lengths.insert(0, len(ids))
        pending = struct.pack(f"<I{len(lengths)}I", len(lengths), *lengths) + bytes(ids)
        fmt, consts, codes, template = ["<"], [], [], []
        for key, code in body:
            pending += key
            if code:  # a value: the bytes before it are one constant field
                fmt.append(f"{len(pending)}s{code}")
                consts.append(pending)
                codes.append(code)
                template += [pending, None]
                pending = b""
        if pending:
            fmt.append(f"{len(pending)}s")
            consts.append(pending)
            codes.append("")
            template.append(pending)
        self.names = names
        self.valued = tuple(n for n, t in zip(names, types) if t is not type(None))
        self.sparse = len(self.valued) != len(names)
        self.struct = struct.Struct("".join(fmt))
        self.consts = tuple(consts)
        self._codes = codes  # each constant's following value ("" for none)
        self._template = template
        self._bulk = None

    def bulk(self) -> tuple[struct.Struct, np.ndarray, np.ndarray]:
        """``(values, mask, constants)`` for reading many records at once:
        a struct of the values alone (the constant fields skipped as pad
        bytes), and a byte mask and pattern that every record ANDed with
        the mask must equal (its constant fields, the values masked out)."""
        if self._bulk is None:
            fmt, mask, pattern = ["<"], bytearray(), bytearray()
            for const, code in zip(self.consts, self._codes):
                fmt.append(f"{len(const)}x{code}")
                mask += b"\xff" * len(const) + bytes(8 if code else 0)
                pattern += const + bytes(8 if code else 0)
            self._bulk = (struct.Struct("".join(fmt)), np.frombuffer(bytes(mask), np.uint8),
                          np.frombuffer(bytes(pattern), np.uint8))
        return self._bulk

    def pack(self, data: Mapping[str, Any]) -> bytes | None:
        """The record of `data` (keys and types as this layout's), or None
        if an int does not fit 64 bits."""
        values = data.values()
        if self.sparse:
            values = [v for v in values if v is not None]
        args = self._template.copy()
        args[1::2] = values
        try:
            return self.struct.pack(*args)
        except struct.error:
            return None


_layouts: dict[tuple, Layout | None] = {}


def layout_of(data: Mapping[str, Any]) -> Layout | None:
    """The layout of payload `data`, or None if a value is not int, float or None."""
    key = (tuple(data), tuple(map(type, data.values())))
    layout = _layouts.get(key, False)
    if layout is False:
        names, types = key
        ok = all(t in _PLAIN for t in types) and all(type(n) is str for n in names)
        try:
            layout = Layout(names, types) if ok and names else None
        except UnicodeEncodeError:  # a key the general path refuses as well
            layout = None
        if len(_layouts) >= _CACHE_LIMIT:
            _layouts.clear()
        _layouts[key] = layout
    return layout


def fast_record(data: Mapping[str, Any]) -> bytes | None:
    """``inline_record(encode_protocol(topic, data)[1:])`` of a payload of
    plain numbers, or None: then take that general path."""
    layout = layout_of(data)
    return None if layout is None else layout.pack(data)


#: The keys of a published result's payload (docs/protocol.md §7), in order.
RESULT_KEYS = ("data", "event_id", "version", "seq")
RUN_RESULT_KEYS = RESULT_KEYS + ("run",)
#: Batches of at least this many records of one layout are checked as a
#: whole (numpy); fewer, record by record (numpy's fixed cost is higher).
BULK_MIN = 8
_result_layouts: dict[tuple, Layout | None] = {}


def result_record(value, event_id, version, seq, run=None) -> bytes | None:
    """:func:`fast_record` of a published result's payload, ``{"data":
    value, "event_id": event_id, "version": version, "seq": seq}`` and
    ``"run": run`` unless `run` is None, without building it (REDUCE's
    path for every result of a view that batch clients take)."""
    key = (type(value), type(event_id), type(version), type(seq), type(run))
    layout = _result_layouts.get(key, False)
    if layout is False:
        names, types = (RESULT_KEYS, key[:4]) if run is None else (RUN_RESULT_KEYS, key)
        layout = Layout(names, types) if all(t in _PLAIN for t in types) else None
        if len(_result_layouts) >= _CACHE_LIMIT:
            _result_layouts.clear()
        _result_layouts[key] = layout
    if layout is None:
        return None
    if layout.sparse:  # a None among them: the general way of this module
        values = (value, event_id, version, seq) if run is None else (
            value, event_id, version, seq, run)
        return layout.pack(dict(zip(layout.names, values)))
    c = layout.consts
    try:
        if run is None:
            return layout.struct.pack(c[0], value, c[1], event_id, c[2], version, c[3], seq)
        return layout.struct.pack(c[0], value, c[1], event_id, c[2], version, c[3], seq,
                                  c[4], run)
    except struct.error:  # an int beyond 64 bits
        return None


_by_head: dict[bytes, Layout] = {}  # frame lengths and type IDs -> the layout learned


def _head_key(blob) -> bytes | None:
    """A record's frame count, frame lengths and type IDs: what a layout is
    looked up by (the key names are checked when unpacking)."""
    if len(blob) < 8:
        return None
    count, ids_len = struct.unpack_from("<II", blob)
    end = 4 + 4 * count + ids_len
    if count > 1024 or end > len(blob):
        return None
    return bytes(blob[:end])


def decode_batch(frames, *, allow_pickle: bool = True) -> tuple[bytes, list[dict]]:
    """``(topic, payloads)`` of a batch message.

    The same as decoding each record of :func:`unpack_records` with
    :func:`metropc.protocol.decode_protocol`, and the same ProtocolError
    for anything malformed; when every record of the batch has the layout
    of a record seen before, one ``struct`` call per record (and for
    BULK_MIN records or more, one numpy comparison of all their constant
    bytes).
    """
    if len(frames) == 2:
        fast = _decode_uniform(frames)
        if fast is not None:
            return fast
    topic, records = unpack_records(frames)
    full = [topic]
    payloads = [decode_protocol(full + record, allow_pickle=allow_pickle)[1]
                for record in records]
    if payloads and len(frames) == 2:
        _learn(records[0], payloads[0])
    return topic, payloads


def _decode_uniform(frames) -> tuple[bytes, list[dict]] | None:
    head, blob = frames
    head = getattr(head, "bytes", head)
    blob = getattr(blob, "bytes", blob)
    if type(head) is not bytes or type(blob) is not bytes:
        return None
    if not head.startswith(BATCH_PREFIX) or not blob:
        return None
    key = _head_key(blob)
    layout = None if key is None else _by_head.get(key)
    if layout is None or len(blob) % layout.struct.size:
        return None
    if not layout.sparse and len(blob) >= BULK_MIN * layout.struct.size:
        payloads = _unpack_bulk(layout, blob)
    else:
        payloads = _unpack_each(layout, blob)
    if payloads is None:
        return None
    topic = head[len(BATCH_PREFIX):]
    try:
        topic.decode("utf-8")
    except UnicodeDecodeError:
        return None  # the general path says what is wrong
    return topic, payloads


def _unpack_bulk(layout: Layout, blob: bytes) -> list[dict] | None:
    """The payloads of a batch of `layout`'s records, checked as a whole
    (one numpy comparison of every constant byte), or None."""
    values, mask, pattern = layout.bulk()
    records = np.frombuffer(blob, np.uint8).reshape(-1, layout.struct.size)
    if not ((records & mask) == pattern).all():
        return None
    rows = values.iter_unpack(blob)
    names = layout.names
    if names == RESULT_KEYS:  # (a dict display is twice as fast as dict(zip()))
        return [{"data": v, "event_id": e, "version": c, "seq": s} for v, e, c, s in rows]
    if names == RUN_RESULT_KEYS:
        return [{"data": v, "event_id": e, "version": c, "seq": s, "run": r}
                for v, e, c, s, r in rows]
    return [dict(zip(names, row)) for row in rows]


def _unpack_each(layout: Layout, blob: bytes) -> list[dict] | None:
    """The payloads of a batch of `layout`'s records, each checked, or None."""
    consts, names, payloads = layout.consts, layout.names, []
    if layout.sparse:
        for fields in layout.struct.iter_unpack(blob):
            if fields[0::2] != consts:
                return None
            data = dict.fromkeys(names)
            data.update(zip(layout.valued, fields[1::2]))
            payloads.append(data)
    else:
        for fields in layout.struct.iter_unpack(blob):
            if fields[0::2] != consts:
                return None
            payloads.append(dict(zip(names, fields[1::2])))
    return payloads


def _learn(record: list, payload) -> None:
    """Remember the layout of `record` (frames, all inline) if it has one."""
    layout = layout_of(payload) if type(payload) is dict else None
    if layout is None:
        return
    packed = layout.pack(payload)
    if packed is None or packed != inline_record(record):
        return  # not what this layout would write: never read by it
    key = _head_key(packed)
    if key is not None:
        if len(_by_head) >= _CACHE_LIMIT:
            _by_head.clear()
        _by_head[key] = layout

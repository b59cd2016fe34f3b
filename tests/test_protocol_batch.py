"""Batches of view results (metropc.protocol_batch): layout, round trips,
and that no input makes the decoder raise anything but ProtocolError.

Pure functions over frames: no sockets here (tests/test_output.py sends
batches through real ones, tests/test_client.py reads them).
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metropc.error import ProtocolError
from metropc.messages import pack_seq
from metropc.protocol import decode_protocol, encode_protocol
from metropc.protocol_batch import (BATCH_PREFIX, EXTERNAL, INLINE_MAX, batch_topic,
                                    inline_record, join_records, pack_records,
                                    unpack_records)

FUZZ = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def result(value, event_id, n):
    return encode_protocol(b"view#roi", {"data": value, "event_id": event_id, "version": 1,
                                         "seq": pack_seq(5, n)})


def decoded(topic, records):
    return [decode_protocol([topic, *record])[1] for record in records]


def test_small_results_travel_in_two_frames_and_come_back_equal():
    messages = [result(float(i), 100 + i, i) for i in range(50)]
    frames = pack_records(b"view#roi", [m[1:] for m in messages])
    assert len(frames) == 2 and frames[0] == b"batch#view#roi"
    topic, records = unpack_records(frames)
    assert topic == b"view#roi"
    assert decoded(topic, records) == [decode_protocol(m)[1] for m in messages]


def test_large_arrays_travel_uncopied_in_frames_of_their_own():
    big = np.arange(INLINE_MAX // 4, dtype=np.float32)     # exactly INLINE_MAX bytes
    small = np.arange(3, dtype=np.int16)
    messages = [result(small, 1, 0), result(big, 2, 1), result(big * 2, 3, 2)]
    frames = pack_records(b"view#roi", [m[1:] for m in messages])
    assert len(frames) == 4
    assert np.shares_memory(np.frombuffer(frames[2], np.float32), big)
    topic, records = unpack_records([bytes(f) for f in frames])
    out = decoded(topic, records)
    np.testing.assert_array_equal(out[0]["data"], small)
    np.testing.assert_array_equal(out[1]["data"], big)
    np.testing.assert_array_equal(out[2]["data"], big * 2)
    assert [o["event_id"] for o in out] == [1, 2, 3]


def test_the_fast_path_makes_the_same_bytes():
    """REDUCE packs each small result as it comes (inline_record) and joins
    them when the batch goes; that is pack_records' layout exactly."""
    records = [[bytes(f) for f in result(i * 0.5, i, i)[1:]] for i in range(5)]
    assert join_records(b"view#roi", [inline_record(r) for r in records]) == \
        pack_records(b"view#roi", records)


def test_an_empty_batch_is_valid_and_empty():
    assert unpack_records([b"batch#view#x", b""]) == (b"view#x", [])
    assert batch_topic(b"view#x") == BATCH_PREFIX + b"view#x"


def test_the_documented_batch_is_byte_exact():
    """docs/protocol.md §7a shows a batch of two results byte for byte."""
    doc = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    block = doc.split("A batch of two results of `view#roi`")[1].split("```")[1]
    frames = []
    for line in block.strip().splitlines():
        hexes = line.split("#")[0]
        head = re.match(r"frame \d+", hexes)
        if head:
            frames.append(b"")
            hexes = hexes[head.end():]
        frames[-1] += bytes.fromhex(hexes)
    records = [encode_protocol(b"view#roi", {"data": value, "event_id": event, "version": 2,
                                             "seq": pack_seq(0x01234567, n)})[1:]
               for value, event, n in ((1.5, 7, 41), (2.5, 8, 42))]
    assert frames == pack_records(b"view#roi", records)


# -- malformed batches -------------------------------------------------------

def good_batch():
    return pack_records(b"view#roi", [result(1.0, 1, 0)[1:], result(2.0, 2, 1)[1:]])


def test_every_truncation_is_a_protocol_error():
    topic, blob = good_batch()
    for cut in range(1, len(blob)):
        try:
            _, records = unpack_records([topic, blob[:cut]])
        except ProtocolError:
            continue
        # A cut exactly between records is a valid, shorter batch.
        assert len(records) == 1 and cut == len(inline_record(
            [bytes(f) for f in result(1.0, 1, 0)[1:]]))


@pytest.mark.parametrize("frames, why", [
    ([b"batch#view#roi"], "at least 2"),
    ([b"view#roi", b""], "not a batch"),
    ([b"batch#v", struct.pack("<I", 0)], "bad frame count"),
    ([b"batch#v", struct.pack("<II", 2, 1)], "bad frame count"),
    ([b"batch#v", struct.pack("<II", 1, EXTERNAL)], "does not have"),
    ([b"batch#v", struct.pack("<II", 1, 0), b"x"], "no record refers to"),
    ([b"batch#v", struct.pack("<II", 1, 5) + b"abc"], "inside a frame"),
    ([b"batch#v", b"\x01\x00"], "frame count"),
    ([b"batch#v", object()], "bytes-like"),
])
def test_malformed_batches_are_refused_with_a_reason(frames, why):
    with pytest.raises(ProtocolError, match=why):
        unpack_records(frames)


@FUZZ
@given(frames=st.lists(st.binary(max_size=40), max_size=5))
def test_random_frames_raise_only_protocol_errors(frames):
    unpack_and_decode(frames)


def unpack_and_decode(frames):
    """Unpack and decode every record: ProtocolError is the only way out."""
    try:
        topic, records = unpack_records(frames)
    except ProtocolError:
        return
    for record in records:
        try:
            decode_protocol([topic, *record], allow_pickle=False)
        except ProtocolError:
            pass


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=4))
def test_mutated_batches_raise_only_protocol_errors(flips):
    topic, blob = good_batch()
    blob = bytearray(blob)
    for pos, x in flips:
        blob[pos % len(blob)] ^= x
    unpack_and_decode([topic, bytes(blob)])


@FUZZ
@given(values=st.lists(st.one_of(st.none(), st.integers(-2**63, 2**63 - 1), st.floats(),
                                 st.text(max_size=20), st.binary(max_size=20)), max_size=20))
def test_any_results_round_trip(values):
    messages = [result(v, i, i) for i, v in enumerate(values)]
    topic, records = unpack_records(pack_records(b"view#roi", [m[1:] for m in messages]))
    out = decoded(topic, records)
    assert [struct.pack("<d", o["data"]) if type(o["data"]) is float else o["data"]
            for o in out] == [struct.pack("<d", v) if type(v) is float else v for v in values]

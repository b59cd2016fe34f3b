"""Fixed layouts for records of plain numbers (metropc.protocol_layouts):
the fast path must give exactly what the general path gives.

Encoding: ``fast_record(payload)`` is either None or byte for byte
``inline_record(encode_protocol(topic, payload)[1:])``.  Decoding:
``decode_batch(frames)`` returns what decoding every record of
``unpack_records(frames)`` with ``decode_protocol`` returns (values, types,
key order), and raises ProtocolError where that does -- for random
payloads, batches mixing layouts, and batches with damaged bytes.
"""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metropc import protocol_layouts
from metropc.error import ProtocolError
from metropc.messages import pack_seq
from metropc.protocol import decode_protocol, encode_protocol
from metropc.protocol_batch import inline_record, join_records, pack_records, unpack_records
from metropc.protocol_layouts import (Layout, decode_batch, fast_record, layout_of,
                                      result_record)

FUZZ = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
TOPIC = b"view#tiny"

plain_numbers = st.one_of(st.none(), st.integers(-(1 << 63), (1 << 63) - 1),
                          st.floats(allow_nan=True, allow_infinity=True))
any_value = st.one_of(plain_numbers, st.integers(), st.booleans(), st.text(max_size=5),
                      st.binary(max_size=5), st.tuples(st.integers(0, 5)))
payloads = st.dictionaries(st.text(min_size=1, max_size=8), any_value, min_size=1,
                           max_size=6)


def general_record(payload):
    return inline_record(encode_protocol(TOPIC, payload)[1:])


def general_decode(frames):
    topic, records = unpack_records(frames)
    return topic, [decode_protocol([topic, *r])[1] for r in records]


def same(a, b):
    """Equal payloads, NaN equal to NaN, types and key order included."""
    if list(a) != list(b):
        return False
    for x, y in zip(a.values(), b.values()):
        if type(x) is not type(y):
            return False
        if not (x == y or (type(x) is float and math.isnan(x) and math.isnan(y))):
            return False
    return True


def result(value, n, run=None):
    payload = {"data": value, "event_id": 1000 + n, "version": 3, "seq": pack_seq(2, n)}
    if run is not None:
        payload["run"] = run
    return payload


# -- encoding ---------------------------------------------------------------------------

def test_a_scalar_result_packs_to_the_general_record():
    for payload in (result(7, 0), result(2.5, 1, run=4), result(None, 2),
                    {"data": None, "event_id": None}, {"only": 1.0}):
        assert fast_record(payload) == general_record(payload)


def test_other_values_take_the_general_path():
    for value in (True, "text", b"raw", (1, 2), [1], 1 << 63, -(1 << 63) - 1):
        assert fast_record(result(value, 0)) is None
    assert fast_record({1: 2}) is None          # a key that is not str


@FUZZ
@given(payloads)
def test_fast_record_is_the_general_record_or_none(payload):
    record = fast_record(payload)
    if record is not None:
        assert record == general_record(payload)
    elif all(type(v) in (int, float, type(None)) for v in payload.values()):
        assert any(type(v) is int and not -(1 << 63) <= v < 1 << 63
                   for v in payload.values())


@FUZZ
@given(any_value, st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=3)),
       st.one_of(st.none(), st.integers(0, 1 << 40)), st.integers(0, (1 << 63) - 1),
       st.one_of(st.none(), st.integers(-5, 1 << 70)))
def test_result_record_is_fast_record_of_the_payload_reduce_publishes(value, event_id, version,
                                                                     seq, run):
    payload = {"data": value, "event_id": event_id, "version": version, "seq": seq}
    if run is not None:
        payload["run"] = run
    assert result_record(value, event_id, version, seq, run) == fast_record(payload)


def test_layout_constants_alternate_with_values():
    layout = Layout(("a", "b", "c"), (int, type(None), float))
    assert layout.valued == ("a", "c") and layout.sparse
    assert layout.struct.format.endswith("q2sd")     # key b and key c, then c's value


# -- decoding ---------------------------------------------------------------------------

def test_a_batch_of_one_layout_decodes_by_layout_after_the_first():
    frames = join_records(TOPIC, [fast_record(result(float(i), i)) for i in range(100)])
    first = decode_batch(frames)                     # learns the layout
    assert decode_batch(frames) == first == general_decode(frames)
    topic, out = first
    assert topic == TOPIC and [p["data"] for p in out] == [float(i) for i in range(100)]
    assert protocol_layouts._decode_uniform(frames) is not None


@pytest.mark.parametrize("value", [7, 2.5])
@pytest.mark.parametrize("run", [None, 3])
def test_long_batches_of_each_result_shape_decode_as_the_general_decoder(value, run):
    n = 3 * protocol_layouts.BULK_MIN
    frames = join_records(TOPIC, [result_record(value, i, 2, pack_seq(1, i), run)
                                  for i in range(n)])
    decode_batch(frames)                             # learns the layout
    assert protocol_layouts._decode_uniform(frames) is not None
    topic, out = decode_batch(frames)
    assert (topic, out) == general_decode(frames)
    assert all(same(a, b) for a, b in zip(out, general_decode(frames)[1]))
    assert [p["event_id"] for p in out] == list(range(n))


def test_records_of_other_layouts_in_a_batch_are_decoded_whole_by_the_general_path():
    records = [fast_record(result(1.0, 0)), general_record(result("x", 1)),
               fast_record(result(2, 2, run=5)), fast_record(result(3.0, 3))]
    frames = join_records(TOPIC, records)
    decode_batch(join_records(TOPIC, [records[0]]))  # the float layout is known
    assert decode_batch(frames) == general_decode(frames)


def test_a_key_renamed_with_the_same_lengths_is_not_read_by_layout():
    frames = join_records(TOPIC, [fast_record(result(1.0, i)) for i in range(3)])
    decode_batch(frames)
    renamed = [frames[0], frames[1].replace(b"version", b"versioN")]
    topic, out = decode_batch(renamed)
    assert all("versioN" in p and "version" not in p for p in out)
    assert (topic, out) == general_decode(renamed)


@FUZZ
@given(st.lists(st.sampled_from([0, 1, 2, 3]), min_size=1, max_size=20),
       st.floats(allow_nan=True), st.integers(-(1 << 63), (1 << 63) - 1))
def test_decode_batch_equals_the_general_decoder(kinds, f, i):
    shapes = [result(f, 0), result(i, 1), result(None, 2, run=9), result(f, 3, run=1)]
    payloads_in = [shapes[k] for k in kinds]
    frames = join_records(TOPIC, [general_record(p) for p in payloads_in])
    for _ in range(2):  # the second time with the layouts learned
        topic, out = decode_batch(frames)
        assert topic == TOPIC and len(out) == len(payloads_in)
        assert all(same(a, b) for a, b in zip(out, payloads_in))


@FUZZ
@given(st.data())
def test_a_damaged_batch_decodes_or_fails_as_the_general_decoder_does(data):
    n = data.draw(st.integers(1, 3 * protocol_layouts.BULK_MIN))  # both ways of checking
    blob = bytearray(join_records(TOPIC, [fast_record(result(float(k), k)) for k in
                                          range(n)])[1])
    decode_batch([b"batch#" + TOPIC, bytes(blob)])   # the layout is known
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(blob) - 1))
        blob[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        del blob[data.draw(st.integers(0, len(blob) - 1)):]
    frames = [b"batch#" + TOPIC, bytes(blob)]
    try:
        expected = general_decode(frames)
    except ProtocolError:
        with pytest.raises(ProtocolError):
            decode_batch(frames)
        return
    topic, out = decode_batch(frames)
    assert topic == expected[0] and len(out) == len(expected[1])
    assert all(same(a, b) for a, b in zip(out, expected[1]))


def test_batches_with_large_frames_are_decoded_by_the_general_path():
    import numpy as np
    big = np.arange(20000, dtype=np.float64)                   # 160 kB: external
    records = [encode_protocol(TOPIC, result(big, 0))[1:],
               encode_protocol(TOPIC, result(1.0, 1))[1:]]
    frames = pack_records(TOPIC, records)
    assert len(frames) == 3
    topic, out = decode_batch(frames)
    np.testing.assert_array_equal(out[0]["data"], big)
    assert out[1]["data"] == 1.0


def test_a_nan_with_a_payload_is_decoded_bit_for_bit_either_way():
    odd_nan = struct.pack("<Q", 0x7FF8DEADBEEF0001)
    record = bytearray(fast_record(result(1.5, 0)))
    at = record.index(struct.pack("<d", 1.5))
    record[at:at + 8] = odd_nan
    layout = layout_of(result(1.5, 0))
    frames = [b"batch#" + TOPIC, bytes(record)]
    protocol_layouts._by_head.clear()
    _, out = decode_batch(frames)
    assert struct.pack("<d", out[0]["data"]) == odd_nan
    protocol_layouts._by_head[protocol_layouts._head_key(bytes(record))] = layout
    _, again = decode_batch(frames)                   # read by layout: the same bits
    assert struct.pack("<d", again[0]["data"]) == odd_nan

"""Property and mutation fuzzing of metropc.protocol.

Two properties: every encodable payload decodes to an equal payload (bit
for bit for arrays and floats), and no input whatsoever makes the decoder
raise anything but ProtocolError.
"""

from __future__ import annotations

import math
import random
import struct

import msgpack
import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from metropc.error import ProtocolError
from metropc.protocol import TYPE_IDS, decode_protocol, encode_protocol

FUZZ = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def same(a, b) -> bool:
    """Exact equality: types, dtypes and bits (NaN equals NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, (np.ndarray, np.generic)):
        return (a.dtype.str == b.dtype.str and a.shape == b.shape
                and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes())
    if isinstance(a, xr.DataArray):
        return a.identical(b) and same(a.values, b.values)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


# -- strategies ------------------------------------------------------------

dtypes = st.one_of(
    hnp.boolean_dtypes(), hnp.integer_dtypes(endianness="?"),
    hnp.unsigned_integer_dtypes(endianness="?"), hnp.floating_dtypes(endianness="?"),
    hnp.complex_number_dtypes(endianness="?"), hnp.datetime64_dtypes(endianness="?"),
    hnp.timedelta64_dtypes(endianness="?"), hnp.byte_string_dtypes(max_len=4),
    hnp.unicode_string_dtypes(max_len=4),
)
arrays = dtypes.flatmap(lambda dt: hnp.arrays(
    dt, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)))
layouts = st.sampled_from(["c", "f", "strided"])


@st.composite
def laid_out_arrays(draw):
    arr = draw(arrays)
    layout = draw(layouts)
    if layout == "f":
        return np.asfortranarray(arr)
    if layout == "strided" and arr.ndim:
        return np.repeat(arr, 2, axis=-1)[..., ::2]
    return arr


numpy_scalars = arrays.filter(lambda a: a.size > 0).map(lambda a: a.flat[0])


@st.composite
def dataarrays(draw):
    arr = draw(hnp.arrays(draw(st.sampled_from(["<f8", ">i4", "<u2", "|b1"])),
                          hnp.array_shapes(min_dims=0, max_dims=2, max_side=3)))
    dims = [f"d{i}" for i in range(arr.ndim)]
    coords = {}
    for dim, n in zip(dims, arr.shape, strict=True):
        if draw(st.booleans()):
            coords[dim] = draw(st.sampled_from([np.arange(n), np.array(list("abc")[:n]),
                                                np.linspace(0, 1, n)]))
    if dims and draw(st.booleans()):
        coords["aux"] = (dims[0], np.arange(arr.shape[0], dtype=np.int16))
    attrs = draw(st.dictionaries(st.text(max_size=4), st.one_of(
        st.integers(), st.text(max_size=4), st.lists(st.integers(), max_size=3),
        st.tuples(st.integers()), st.floats()), max_size=3))
    name = draw(st.one_of(st.none(), st.text(max_size=4), st.integers()))
    return xr.DataArray(arr, dims=dims, coords=coords, attrs=attrs, name=name)


leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.binary(max_size=32),
    st.text(max_size=16), laid_out_arrays(), numpy_scalars,
)
values = st.one_of(
    leaves, dataarrays(),
    st.lists(leaves, max_size=6).map(tuple),          # fast-path tuples, and ()
    st.lists(st.integers(), max_size=4),              # pickled
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=3),
)
payloads = st.dictionaries(st.text(max_size=12), values, max_size=5)


@FUZZ
@given(opcode=st.text(max_size=16), data=payloads)
def test_roundtrip_is_exact(opcode, data):
    frames = encode_protocol(opcode, data)
    op, out = decode_protocol([bytes(f) for f in frames])
    assert op == opcode.encode()
    assert list(out) == list(data)
    for key in data:
        assert same(out[key], data[key]), key


@FUZZ
@given(data=payloads)
def test_roundtrip_without_copying_frames(data):
    # Frames exactly as encode_protocol produced them (memoryviews included).
    _, out = decode_protocol(encode_protocol(b"op", data))
    assert all(same(out[k], data[k]) for k in data)


# -- anything in, only ProtocolError out ----------------------------------

def decode_or_protocol_error(frames, allow_pickle=False):
    try:
        op, data = decode_protocol(frames, allow_pickle=allow_pickle)
    except ProtocolError:
        return None
    assert type(op) is bytes and type(data) is dict
    return data


@FUZZ
@given(frames=st.lists(st.binary(max_size=24), max_size=8))
def test_random_frames(frames):
    decode_or_protocol_error(frames)


alphabet = st.sampled_from([c.encode() for c in TYPE_IDS] + [b"Z", b"\x00"])


@st.composite
def structured_garbage(draw):
    """A plausible type-ID frame followed by frames of random content."""
    ids = b""
    nframes = 0
    for _ in range(draw(st.integers(0, 4))):
        count = draw(st.integers(0, 3))
        chars = b"".join(draw(alphabet) for _ in range(max(count, 1)))
        ids += bytes([count]) + chars
        nframes += 1 + len(chars) * draw(st.integers(0, 3))
    headers = st.builds(msgpack.packb, st.dictionaries(
        st.sampled_from(["dtype", "shape", "dims", "coords", "name", "attrs", "order",
                         "pickle"]),
        st.one_of(st.sampled_from(["<f4", ">i2", "|b1", "<U2", "O", "<M8[ns]", "F", "C"]),
                  st.lists(st.integers(-2, 2**40), max_size=3),
                  st.lists(st.text(max_size=2), max_size=3),
                  st.lists(st.dictionaries(st.sampled_from(["name", "dims", "dtype",
                                                            "shape"]),
                                           st.one_of(st.text(max_size=3),
                                                     st.lists(st.integers(0, 3))))),
                  st.none(), st.integers(-2**63, 2**63 - 1), st.binary(max_size=8)),
        max_size=6))
    frame = st.one_of(st.binary(max_size=16), headers)
    return [b"op", ids] + draw(st.lists(frame, min_size=nframes, max_size=nframes + 1))


@settings(FUZZ, max_examples=150)
@given(frames=structured_garbage())
def test_structured_garbage(frames):
    decode_or_protocol_error(frames)


@FUZZ
@given(frames=st.lists(st.one_of(st.binary(max_size=8), st.none(), st.integers(),
                                 st.text(max_size=4), st.floats(), st.just(object())),
                       max_size=5))
def test_non_bytes_frames(frames):
    decode_or_protocol_error(frames)


def corpus(with_numpy_pickles=True):
    da = xr.DataArray(np.arange(6.0).reshape(2, 3), dims=("x", "y"),
                      coords={"x": ["a", "b"], "y": [1, 2, 3], "aux": ("x", [5, 6])},
                      name="n", attrs={"u": "m", "t": (1, 2)})
    payloads = [
        {},
        {"tid": 10000, "x": 1.5, "ok": True, "n": None, "b": b"raw", "s": "µ"},
        {"img": np.arange(64, dtype=np.float32).reshape(8, 8), "tid": 1},
        {"f": np.asfortranarray(np.arange(6, dtype=">i2").reshape(2, 3))},
        {"t": (42, b"foo", None, np.int8(3), np.arange(3)), "big": 2**70},
        {"da": da},
        {"p": {"k": [1, 2, {"x": "y"}]}, "set": {1, 2}, "l": [1.5, "a"]},
        {"s": np.str_("ab"), "d": np.datetime64("2024-01-01", "ns"), "e": np.zeros(0)},
        {f"k{i}": (i, float(i)) for i in range(20)},
    ]
    if with_numpy_pickles:
        # Corrupted numpy pickles can reach numpy internals that misbehave
        # (numpy's business, pickle is trusted input), so only refuse them.
        payloads.append({"o": np.array([1, "a", None], dtype=object)})
        payloads.append({"da": da.assign_attrs(v=np.arange(2))})
    return [encode_protocol(b"view#x", p) for p in payloads]


JUNK = [None, 5, "text", 1.5, object(), [b"x"], b"", b"\x00" * 9, b"\xff" * 64]


def mutate(frames, rng):
    frames = [bytes(f) if isinstance(f, (bytes, memoryview)) else f for f in frames]
    kind = rng.randrange(11)
    i = rng.randrange(len(frames))
    f = frames[i] if isinstance(frames[i], bytes) else b""
    if kind == 0:
        del frames[i]
    elif kind == 1:
        frames.insert(i, f)
    elif kind == 2:
        j = rng.randrange(len(frames))
        frames[i], frames[j] = frames[j], frames[i]
    elif kind == 3:
        frames[i] = f[:rng.randrange(len(f) + 1)]
    elif kind == 4:
        frames[i] = f + rng.randbytes(rng.randrange(1, 9))
    elif kind in (5, 6) and f:
        b = bytearray(f)
        for _ in range(rng.randrange(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        frames[i] = bytes(b)
    elif kind == 7:
        frames[i] = rng.randbytes(rng.randrange(12))
    elif kind == 8:
        frames.insert(i, rng.randbytes(rng.randrange(12)))
    elif kind == 9 and len(frames) > 1 and isinstance(frames[1], bytes) and frames[1]:
        ids = bytearray(frames[1])
        ids[rng.randrange(len(ids))] = rng.choice(b"n?ifbsgaxpZ\x00\x01\x02\xff")
        frames[1] = bytes(ids)
    else:
        frames[i] = rng.choice(JUNK)
    return frames


@pytest.mark.parametrize("allow_pickle", [False, True])
def test_mutations_raise_only_protocol_error(allow_pickle):
    """Thousands of corrupted messages; the corpus pickles only harmless types."""
    rng = random.Random(20240501 + allow_pickle)
    messages = corpus(with_numpy_pickles=not allow_pickle)
    decoded = errors = 0
    for _ in range(20000):
        frames = rng.choice(messages)
        for _ in range(rng.randrange(1, 4)):
            if frames:
                frames = mutate(frames, rng)
        if decode_or_protocol_error(frames, allow_pickle) is None:
            errors += 1
        else:
            decoded += 1
    # Both outcomes must occur, or the mutations are not reaching the decoder.
    assert errors > 5000 and decoded > 500

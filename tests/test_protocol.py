"""Round trips, frame layout, errors and real sockets for metropc.protocol."""

from __future__ import annotations

import enum
import math
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zmq

from metropc.error import ProtocolError
from metropc.protocol import TYPE_IDS, decode_protocol, encode_protocol


def roundtrip(data, opcode=b"op", **kw):
    frames = encode_protocol(opcode, data)
    # What a socket would deliver: every frame as an independent bytes object.
    op, out = decode_protocol([bytes(f) for f in frames], **kw)
    assert op == (opcode.encode() if isinstance(opcode, str) else opcode)
    return out


def type_ids(data):
    return encode_protocol(b"op", data)[1]


# -- plain values ----------------------------------------------------------

@pytest.mark.parametrize("value, tid", [
    (None, b"\x00n"), (True, b"\x00?"), (False, b"\x00?"), (0, b"\x00i"),
    (-2**63, b"\x00i"), (2**63 - 1, b"\x00i"), (1.5, b"\x00f"), (float("inf"), b"\x00f"),
    (b"", b"\x00b"), (b"\x00\xff", b"\x00b"), ("", b"\x00s"), ("µ-roi ✓", b"\x00s"),
])
def test_scalar_roundtrip_and_type_id(value, tid):
    assert type_ids({"k": value}) == tid
    out = roundtrip({"k": value})["k"]
    assert out == value and type(out) is type(value)


def test_nan_roundtrip():
    assert math.isnan(roundtrip({"k": float("nan")})["k"])


def test_frame_layout_of_scalars():
    frames = encode_protocol("event", {"tid": 10000, "x": 1.5, "ok": True, "n": None,
                                       "s": "a"})
    assert frames == [
        b"event", b"\x00i\x00f\x00?\x00n\x00s",
        b"tid", (10000).to_bytes(8, "little"),
        b"x", bytes.fromhex("000000000000f83f"),
        b"ok", b"\x01",
        b"n",
        b"s", b"a",
    ]


@pytest.mark.parametrize("value", [2**63, -2**63 - 1, 10**40])
def test_big_ints_are_pickled(value):
    assert type_ids({"k": value}) == b"\x00p"
    assert roundtrip({"k": value})["k"] == value


class Color(enum.IntEnum):
    RED = 1


class MyFloat(float):
    pass


class SubArray(np.ndarray):
    pass


@pytest.mark.parametrize("value", [
    Color.RED, MyFloat(2.5), bytearray(b"ab"), {"a": [1, 2]}, [1, "x", None],
    {1, 2}, (), tuple(range(256)), "\ud800 lone surrogate", complex(1, 2),
])
def test_other_values_are_pickled_exactly(value):
    assert type_ids({"k": value}) == b"\x00p"
    out = roundtrip({"k": value})["k"]
    assert out == value and type(out) is type(value)


def test_tuples_keep_fast_path_elements():
    value = (42, b"foo", None, True, 2.5, "s", np.float32(1), np.arange(3), [1])
    assert type_ids({"t": value}) == b"\x09ibn?fsgap"
    out = roundtrip({"t": value})["t"]
    assert type(out) is tuple and len(out) == 9
    assert out[:6] == value[:6] and out[8] == [1]
    assert out[6] == np.float32(1) and type(out[6]) is np.float32
    np.testing.assert_array_equal(out[7], np.arange(3))


def test_tuple_sizes_and_nesting():
    assert type_ids({"t": (1,)}) == b"\x01i"
    assert type_ids({"t": tuple(range(255))}) == b"\xff" + b"i" * 255
    assert roundtrip({"t": tuple(range(255))})["t"] == tuple(range(255))
    # Nested tuples are one pickled element.
    assert type_ids({"t": ((1, 2), 3)}) == b"\x02pi"
    assert roundtrip({"t": ((1, 2), 3)})["t"] == ((1, 2), 3)


def test_many_keys_keep_order_and_empty_message():
    data = {f"k{i}": i for i in range(300)}
    assert list(roundtrip(data)) == list(data)
    assert roundtrip(data) == data
    assert encode_protocol(b"index") == [b"index", b""]
    assert decode_protocol([b"index", b""]) == (b"index", {})


def test_opcode_as_str_and_parts_argument():
    parts = [b"identity", b""]
    out = encode_protocol("view#roi", {"a": 1}, parts)
    assert out is parts and parts[:2] == [b"identity", b""]
    assert decode_protocol(parts[2:]) == (b"view#roi", {"a": 1})


# -- numpy -----------------------------------------------------------------

@pytest.mark.parametrize("arr", [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.arange(6, dtype=">i4").reshape(2, 3),  # byte order preserved
    np.array([True, False, True]),
    np.array([1 + 2j, 3 - 4j], dtype=np.complex64),
    np.array(3.5),  # 0-d
    np.zeros((0, 5), np.int16),
    np.zeros((3, 0), "<U3"),
    np.array(["a", "µµ", ""], dtype="<U2"),
    np.array(["x" * 20000]),  # itemsize beyond four digits
    np.array([b"ab", b"c"], dtype="S2"),
    np.array(["2024-01-01T00:00", "NaT"], dtype="M8[ns]"),
    np.array([1, 2], dtype="m8[s]"),
    np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
    np.array([1.0, 2.0], dtype=np.float16),
    np.zeros(3, "V4"),
])
def test_array_roundtrip(arr):
    out = roundtrip({"a": arr})["a"]
    assert type(out) is np.ndarray
    assert out.dtype == arr.dtype and out.dtype.str == arr.dtype.str
    assert out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)
    assert not out.flags.writeable


def test_array_frames_are_zero_copy_and_decoded_arrays_view_frames():
    arr = np.arange(1 << 16, dtype=np.float64)
    frames = encode_protocol(b"op", {"a": arr})
    assert np.shares_memory(np.frombuffer(frames[4], np.float64), arr)
    _, out = decode_protocol(frames)
    assert np.shares_memory(out["a"], arr)  # decoding did not copy either
    received = bytearray(frames[4])
    _, out = decode_protocol(frames[:4] + [received])
    assert np.shares_memory(out["a"], np.frombuffer(received, np.float64))
    assert not out["a"].flags.writeable
    with pytest.raises(ValueError):
        out["a"][0] = 1


def test_non_contiguous_and_fortran_arrays():
    base = np.arange(100, dtype=np.int32).reshape(10, 10)
    strided = base[::2, 1::3]
    out = roundtrip({"a": strided})["a"]
    np.testing.assert_array_equal(out, strided)
    fortran = np.asfortranarray(base)
    frames = encode_protocol(b"op", {"a": fortran})
    assert np.shares_memory(np.frombuffer(frames[4], np.int32), fortran)  # no copy
    out = roundtrip({"a": fortran})["a"]
    np.testing.assert_array_equal(out, base)


def test_array_header_schema():
    frames = encode_protocol(b"op", {"a": np.zeros((2, 3), ">f4")})
    import msgpack
    assert frames[1] == b"\x00a"
    assert msgpack.unpackb(frames[3]) == {"dtype": ">f4", "shape": [2, 3]}
    assert len(frames[4]) == 24


@pytest.mark.parametrize("arr", [
    np.array([1, "a", None], dtype=object),
    np.zeros(2, dtype=[("x", "<f4"), ("y", "<i2")]),
    np.ma.masked_array([1, 2], mask=[0, 1]),
    np.arange(3).view(SubArray),
])
def test_arrays_outside_fast_path(arr):
    out = roundtrip({"a": arr})["a"]
    assert type(out) is type(arr)
    np.testing.assert_array_equal(out, arr)
    if isinstance(arr, np.ma.MaskedArray):
        assert type_ids({"a": arr}) == b"\x00p"
        np.testing.assert_array_equal(out.mask, arr.mask)


@pytest.mark.parametrize("value", [
    np.float32(1.5), np.int8(-3), np.uint64(2**64 - 1), np.bool_(True),
    np.complex128(1 - 1j), np.datetime64("2024-05-01T12:00:00", "ns"),
    np.str_("µ"), np.bytes_(b"ab"), np.float16(0.25),
])
def test_numpy_scalars_keep_dtype(value):
    assert type_ids({"s": value}) == b"\x00g"
    out = roundtrip({"s": value})["s"]
    assert type(out) is type(value) and out.dtype == value.dtype and out == value


# -- xarray ----------------------------------------------------------------

def make_dataarray():
    da = xr.DataArray(
        np.arange(6, dtype=np.float32).reshape(2, 3), dims=("x", "energy"),
        coords={"x": ["a", "b"], "energy": [1.0, 2.0, 3.0],
                "pos": ("x", np.array([10, 20], dtype=np.int64)), "run": 5},
        name="spectrum", attrs={"units": "counts", "series": ["y0"], "nested": {"a": 1}})
    da.coords["energy"].attrs["units"] = "eV"
    return da


def test_dataarray_roundtrip_is_identical_and_zero_copy():
    da = make_dataarray()
    frames = encode_protocol(b"op", {"data": da})
    assert frames[1] == b"\x00x"
    assert len(frames) == 3 + 1 + 1 + 4  # key, header, data, one buffer per coord
    _, out = decode_protocol(frames)
    xr.testing.assert_identical(out["data"], da)
    assert np.shares_memory(out["data"].data, da.data)
    assert out["data"].coords["x"].dtype == np.dtype("<U1")


def test_dataarray_with_non_msgpack_parts():
    da = make_dataarray()
    da.attrs["vlines"] = np.array([1.5, 2.5])  # numpy value: pickled attrs
    da.attrs["pair"] = (1, 2)  # tuple would come back as list through msgpack
    da = da.assign_coords(obj=("energy", np.array([None, 1, "z"], dtype=object)))
    da.name = ("tuple", "name")
    out = roundtrip({"d": da})["d"]
    xr.testing.assert_identical(out, da)
    assert out.attrs["pair"] == (1, 2)
    with pytest.raises(ProtocolError, match="allow_pickle"):
        roundtrip({"d": da}, allow_pickle=False)


@pytest.mark.parametrize("da", [
    xr.DataArray(np.array([1, "a"], dtype=object), dims="x"),
    xr.DataArray(np.zeros((2, 2)), dims=("x", "y")).stack(z=("x", "y")),
    xr.DataArray(np.arange(3), dims="t", name=5,
                 coords={"t": np.array(["2024-01-01", "2024-01-02", "NaT"], "M8[ns]")}),
    xr.DataArray(5.0),
    xr.DataArray(np.zeros((0, 2)), dims=("a", "b")),
    xr.DataArray(np.arange(6.0).reshape(2, 3).T, dims=("u", "v")),
])
def test_dataarray_variants(da):
    xr.testing.assert_identical(roundtrip({"d": da})["d"], da)


def test_plain_dataarray_needs_no_pickle():
    da = make_dataarray()
    out = roundtrip({"d": da}, allow_pickle=False)["d"]
    xr.testing.assert_identical(out, da)


# -- pickle and security ---------------------------------------------------

def test_allow_pickle_false_refuses_pickle_frames():
    frames = encode_protocol(b"op", {"d": {"a": 1}})
    with pytest.raises(ProtocolError, match="allow_pickle"):
        decode_protocol(frames, allow_pickle=False)
    assert decode_protocol(frames)[1] == {"d": {"a": 1}}
    # Fast-path values never need pickle.
    assert decode_protocol(encode_protocol(b"op", {"a": np.ones(3)}),
                           allow_pickle=False)[1]["a"].sum() == 3


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_allow_pickle_false_does_not_run_code(capsys):
    frames = encode_protocol(b"op", {"x": Evil()})
    with pytest.raises(ProtocolError):
        decode_protocol(frames, allow_pickle=False)
    assert capsys.readouterr().out == ""


# -- encoding errors -------------------------------------------------------

def test_encode_errors_leave_parts_untouched():
    parts = [b"keep"]
    with pytest.raises(TypeError, match="keys must be str"):
        encode_protocol(b"op", {"ok": 1, 5: 2}, parts)
    assert parts == [b"keep"]
    with pytest.raises(TypeError, match="key 'f'"):
        encode_protocol(b"op", {"ok": 1, "f": lambda: 0}, parts)
    assert parts == [b"keep"]
    with pytest.raises(TypeError, match="opcode"):
        encode_protocol(5, {})


# -- decoding errors -------------------------------------------------------

GOOD = encode_protocol(b"op", {"i": 1, "a": np.arange(4, dtype=np.int16), "s": "x"})


@pytest.mark.parametrize("frames, match", [
    ([], "at least"),
    ([b"op"], "at least"),
    ([b"\xff\xfe", b""], "UnicodeDecodeError"),
    ([b"op", b"\x00"], "end inside a value"),
    ([b"op", b"\x03ii", b"k", b"1" * 8, b"2" * 8], "end inside a tuple"),
    ([b"op", b"\x00i"], "key frame missing"),
    ([b"op", b"\x00i", b"k"], "truncated"),
    ([b"op", b"\x00i", b"k", b"1234"], "8"),
    ([b"op", b"\x00f", b"k", b"123456789"], "8"),
    ([b"op", b"\x00?", b"k", b"\x02"], "bool"),
    ([b"op", b"\x00Z", b"k", b""], "unknown type ID 'Z'"),
    ([b"op", b"\x00s", b"k", b"\xc3\x28"], "UnicodeDecodeError"),
    ([b"op", b"\x00i\x00i", b"k", b"1" * 8, b"k", b"2" * 8], "duplicate key"),
    ([b"op", b"\x00i", b"k", b"1" * 8, b"extra"], "left after"),
    ([b"op", b"\x00p", b"k", b"not a pickle"], "key 'k'"),
    ([b"op", b"\x00a", b"k", b"\x92\x01\x02", b""], "not a map"),
    ([b"op", b"\x00a", b"k", b"\x81\xa5dtype\xa2O8", b""], "bad dtype"),
    ([b"op", b"\x00a", b"k", b"\x82\xa5dtype\xa3<f4\xa5shape\x91\x03", b"\x00" * 11],
     "needs 12 bytes"),
    ([b"op", b"\x00a", b"k", b"\x82\xa5dtype\xa3<f4\xa5shape\x91\xff", b""], "bad shape"),
    ([b"op", b"\x00a", b"k", b"\xc1", b""], "key 'k'"),
    ([b"op", b"\x00n", "k"], "not a buffer"),
    ([b"op", b"\x00n", None], "not a buffer"),
    (None, "malformed"),
    (5, "malformed"),
])
def test_malformed_messages(frames, match):
    with pytest.raises(ProtocolError, match=match):
        decode_protocol(frames)


def test_truncated_and_extended_good_message():
    for n in range(len(GOOD)):
        with pytest.raises(ProtocolError):
            decode_protocol(GOOD[:n])
    with pytest.raises(ProtocolError):
        decode_protocol(GOOD + [b""])
    assert decode_protocol(GOOD)[1]["s"] == "x"


def test_accepted_frame_types():
    frames = [bytes(f) for f in GOOD]
    for conv in (bytes, bytearray, memoryview, zmq.Frame,
                 lambda b: np.frombuffer(b, np.uint8)):
        op, data = decode_protocol(iter([conv(f) for f in frames]))
        assert op == b"op" and data["i"] == 1 and data["s"] == "x"
        np.testing.assert_array_equal(data["a"], np.arange(4))


def test_type_alphabet_is_documented():
    doc = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    for tid in TYPE_IDS:
        assert f"`{tid}`" in doc


def test_protocol_and_client_decoding_need_no_zmq():
    """The protocol is pure: it must import and work with zmq unavailable."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['zmq'] = None\n"
            "import numpy as np\n"
            "from metropc.protocol import encode_protocol\n"
            "from metropc.client import decode_protocol, encode_index, IndexEntry\n"
            "f = encode_protocol(b'index', encode_index({'a#b': IndexEntry(1, 2.0)}))\n"
            "print(decode_protocol(f)[1])\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=Path(__file__).parent.parent)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "{'a#b': IndexEntry(counts=1, rate=2.0)}"


# -- speed -----------------------------------------------------------------

def best_of(fn, n=200, rounds=5):
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def test_overhead_does_not_depend_on_array_size():
    """A copy of 16 MiB costs over 1 ms here; zero-copy stays in microseconds."""
    small = {"a": np.zeros(16, np.float32), "tid": 1}
    large = {"a": np.zeros((2048, 2048), np.float32), "tid": 1}
    t_small = best_of(lambda: decode_protocol(encode_protocol(b"event", small)))
    t_large = best_of(lambda: decode_protocol(encode_protocol(b"event", large)))
    assert t_large < 100e-6, f"{t_large * 1e6:.1f} us per 16 MiB event"
    assert t_large < 3 * t_small + 20e-6


# -- real sockets ----------------------------------------------------------

@pytest.fixture
def zctx():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)  # closes anything a failed test left open


def recv_within(sock, timeout=5.0):
    if not sock.poll(int(timeout * 1000)):
        raise TimeoutError("nothing received")
    return sock.recv_multipart(copy=False)


@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_push_pull_zero_copy(zctx, tmp_path, transport):
    pull = zctx.socket(zmq.PULL)
    push = zctx.socket(zmq.PUSH)
    try:
        if transport == "ipc":
            addr = f"ipc://{tmp_path}/pp"
            pull.bind(addr)
        else:
            addr = f"tcp://127.0.0.1:{pull.bind_to_random_port('tcp://127.0.0.1')}"
        push.connect(addr)
        image = np.random.default_rng(1).random((512, 512)).astype(np.float32)
        da = make_dataarray()
        for tid in range(3):
            push.send_multipart(encode_protocol(b"event", {
                "tid": tid, "img": image[::-1] + tid, "da": da, "meta": {"k": [tid]},
                "pair": (tid, "s")}), copy=False)
        for tid in range(3):
            op, data = decode_protocol(recv_within(pull))
            assert op == b"event" and data["tid"] == tid
            np.testing.assert_array_equal(data["img"], image[::-1] + tid)
            assert not data["img"].flags.owndata and not data["img"].flags.writeable
            xr.testing.assert_identical(data["da"], da)
            assert data["meta"] == {"k": [tid]} and data["pair"] == (tid, "s")
    finally:
        push.close(linger=0)
        pull.close(linger=0)


def test_pub_sub_with_slow_joiner(zctx):
    pub = zctx.socket(zmq.PUB)
    sub = zctx.socket(zmq.SUB)
    try:
        port = pub.bind_to_random_port("tcp://127.0.0.1")
        sub.connect(f"tcp://127.0.0.1:{port}")
        sub.subscribe(b"view#roi")
        frames = encode_protocol(b"view#roi", {"data": np.arange(5.0), "event_id": 3})
        deadline = time.monotonic() + 10
        received = None
        while received is None and time.monotonic() < deadline:
            pub.send_multipart(frames, copy=False)
            if sub.poll(20):
                received = sub.recv_multipart(copy=False)
        assert received is not None, "subscriber never joined"
        op, data = decode_protocol(received)
        assert op == b"view#roi" and data["event_id"] == 3
        np.testing.assert_array_equal(data["data"], np.arange(5.0))
    finally:
        pub.close(linger=0)
        sub.close(linger=0)


# -- golden vectors --------------------------------------------------------

VECTOR_DIR = Path(__file__).parent / "protocol_vectors"


def vector_messages():
    """The messages behind tests/protocol_vectors/*.hex (protocol v1)."""
    from metropc.client import IndexEntry, IndexViewEntry, encode_index
    from metropc.enums import ViewOutput, ViewStage

    spectrum = xr.DataArray(
        np.array([1.0, 2.0, 4.0], dtype="<f4"), dims=("energy",),
        coords={"energy": np.array([7.0, 7.5, 8.0]),
                "label": ("energy", np.array(["a", "b", "c"]))},
        name="spectrum", attrs={"units": "counts"})
    return {
        "scalars": ("event", "Every plain type and a tuple", {
            "internal#train_id": 10000, "x": 1.5, "ok": True, "none": None,
            "raw": b"foo", "name": "µ-roi", "pair": (42, b"foo")}),
        "array": ("view#img", "Big-endian int16 2x3 array and a float32 scalar", {
            "data": np.arange(6, dtype=">i2").reshape(2, 3), "event_id": 7,
            "gain": np.float32(0.5)}),
        "dataarray": ("view#spectrum", "DataArray with a dimension and a string coord", {
            "data": spectrum, "event_id": 8}),
        "index": ("index", "Index with one path and one view", encode_index({
            "internal#train_id": IndexEntry(100, 10.0),
            "view#roi": IndexViewEntry(99, 9.9, ViewOutput.SCALAR, ViewStage.POOL,
                                       errors=1, label="ROI")})),
    }


def write_vector(path, description, frames):
    lines = [f"# metropc protocol v1 test vector: {description}",
             "# one frame per line as hex; '-' is an empty frame"]
    lines += [bytes(f).hex() or "-" for f in frames]
    path.write_text("\n".join(lines) + "\n")


def read_vector(path):
    return [b"" if line == "-" else bytes.fromhex(line)
            for line in path.read_text().splitlines()
            if line and not line.startswith("#")]


def assert_payload_equal(a, b):
    assert list(a) == list(b)
    for key in a:
        if isinstance(a[key], xr.DataArray):
            xr.testing.assert_identical(a[key], b[key])
        elif isinstance(a[key], (np.ndarray, np.generic)):
            assert a[key].dtype.str == b[key].dtype.str
            np.testing.assert_array_equal(a[key], b[key])
        else:
            assert a[key] == b[key] and type(a[key]) is type(b[key])


@pytest.mark.parametrize("name", sorted(vector_messages()))
def test_golden_vectors(name):
    opcode, _, data = vector_messages()[name]
    golden = read_vector(VECTOR_DIR / f"{name}.hex")
    assert [bytes(f) for f in encode_protocol(opcode, data)] == golden
    op, decoded = decode_protocol(golden)
    assert op == opcode.encode()
    assert_payload_equal(decoded, data)


def test_vector_files_are_all_tested():
    assert {p.stem for p in VECTOR_DIR.glob("*.hex")} == set(vector_messages())


if __name__ == "__main__":
    # Regenerate the golden vectors: only after a deliberate format change,
    # together with a PROTOCOL_VERSION bump and docs/protocol.md.
    VECTOR_DIR.mkdir(exist_ok=True)
    for vname, (vop, vdesc, vdata) in vector_messages().items():
        write_vector(VECTOR_DIR / f"{vname}.hex", vdesc, encode_protocol(vop, vdata))
        print("wrote", VECTOR_DIR / f"{vname}.hex")

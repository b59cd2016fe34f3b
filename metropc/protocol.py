"""The metropc wire protocol: pure functions between messages and frames.

    >>> frames = encode_protocol(b"event", {"tid": 10000, "img": image})
    >>> socket.send_multipart(frames, copy=False)
    ...
    >>> opcode, data = decode_protocol(socket.recv_multipart(copy=False))

A message is an opcode (frontend <-> stages) or a path (output -> clients)
plus a flat ``{str: value}`` mapping.  Frame 0 holds the UTF-8 opcode, frame 1
the type IDs of all values, then each key is one UTF-8 frame followed by the
frames of its value (array headers: :mod:`metropc.protocol_arrays`).
``docs/protocol.md`` specifies the format byte for byte; this module is its
reference implementation and touches no socket, so every property of the
format can be tested without a network.

Why frames and not one serialized blob: an array travels as a tiny msgpack
header plus its own raw buffer.  Encoding hands ZeroMQ a memoryview of the
array (``send_multipart(frames, copy=False)`` then sends it without a copy)
and decoding wraps the received frame with :func:`numpy.frombuffer`.  The cost
per array is a few microseconds whatever its size.  Decoded arrays therefore
*view the received frames* and are read-only; call ``.copy()`` to modify one.
Conversely, an array must not be modified after its frames were handed to a
zero-copy send until ZeroMQ has sent them.

Values the fast path does not cover are pickled (protocol 5).  Unpickling
runs arbitrary code chosen by the sender, so a process that receives from
peers it does not trust must pass ``allow_pickle=False``; a pickled value then
raises :class:`~metropc.error.ProtocolError` instead of being loaded.
"""

from __future__ import annotations

import logging
import pickle
import struct
import sys
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import msgpack
import numpy as np

from .error import ProtocolError
from .protocol_arrays import (array_from, array_parts, dataarray_parts, dtype_descr,
                              header_dtype, str_list, unpack_header)

__all__ = ["encode_protocol", "decode_protocol", "TYPE_IDS", "PROTOCOL_VERSION"]

log = logging.getLogger(__name__)

#: Version of the frame layout in docs/protocol.md.  It is not sent: the
#: layout has no room for it without breaking the original's two fixed
#: frames.  New value types get new type IDs, which old decoders reject
#: with a ProtocolError naming the unknown ID.
PROTOCOL_VERSION = 1

#: Type ID -> meaning.  The order of frames per value is in docs/protocol.md.
TYPE_IDS = {
    "n": "None (no frame)",
    "?": "bool (1 byte, 0x00 or 0x01)",
    "i": "int, signed 64 bit little-endian (8 bytes)",
    "f": "float, IEEE 754 binary64 little-endian (8 bytes)",
    "b": "bytes (raw frame)",
    "s": "str (UTF-8 frame)",
    "g": "numpy scalar (msgpack header, raw item bytes)",
    "a": "numpy.ndarray (msgpack header, raw buffer)",
    "x": "xarray.DataArray (msgpack header, data buffer, one buffer per coord)",
    "p": "anything else, pickle protocol 5 (one frame)",
}

_NONE, _BOOL, _INT, _FLOAT, _BYTES, _STR, _SCALAR, _ARRAY, _XARRAY, _PICKLE = (
    ord(c) for c in "n?ifbsgaxp")

_INT64 = struct.Struct("<q")
_FLOAT64 = struct.Struct("<d")
_MAX_TUPLE = 255
_EMPTY: Mapping[str, Any] = MappingProxyType({})
_CACHE_LIMIT = 512



# -- encoding --------------------------------------------------------------

def _enc_none(value, parts):
    return _NONE


def _enc_bool(value, parts):
    parts.append(b"\x01" if value else b"\x00")
    return _BOOL


def _enc_int(value, parts):
    try:
        parts.append(_INT64.pack(value))
    except struct.error:  # beyond 64 bit: exact, but not fast
        return _enc_pickle(value, parts)
    return _INT


def _enc_float(value, parts):
    parts.append(_FLOAT64.pack(value))
    return _FLOAT


def _enc_bytes(value, parts):
    parts.append(value)
    return _BYTES


def _enc_str(value, parts):
    try:
        parts.append(value.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates are valid str, not UTF-8
        return _enc_pickle(value, parts)
    return _STR


def _enc_pickle(value, parts):
    parts.append(pickle.dumps(value, protocol=5))
    return _PICKLE


def _enc_ndarray(value, parts):
    ap = array_parts(value)
    if ap is None:
        return _enc_pickle(value, parts)
    parts.append(msgpack.packb(ap[0]))
    parts.append(ap[1])
    return _ARRAY


def _enc_scalar(value, parts):
    descr = dtype_descr(value.dtype)
    if descr is None:
        return _enc_pickle(value, parts)
    parts.append(msgpack.packb({"dtype": descr}))
    parts.append(value.tobytes())
    return _SCALAR


def _enc_dataarray(value, parts):
    dp = dataarray_parts(value)
    if dp is None:
        return _enc_pickle(value, parts)
    parts.append(msgpack.packb(dp[0]))
    parts.append(dp[1])
    parts.extend(dp[2])
    return _XARRAY


_ENCODERS = {
    type(None): _enc_none, bool: _enc_bool, int: _enc_int, float: _enc_float,
    bytes: _enc_bytes, str: _enc_str, np.ndarray: _enc_ndarray,
}


def _encoder_for(value):
    """Pick (and remember) the encoder for a type not in the exact table.

    Subclasses of fast-path types (IntEnum, masked arrays, ...) are pickled
    so that they come back as what they were.  xarray is only looked up when
    it is already imported: a DataArray cannot exist otherwise, and importing
    the protocol stays cheap.
    """
    t = type(value)
    if isinstance(value, np.generic):
        enc = _enc_scalar
    else:
        xr = sys.modules.get("xarray")
        if xr is not None and t is getattr(xr, "DataArray", None):
            enc = _enc_dataarray
        else:
            enc = _enc_pickle
            log.debug("values of type %s.%s are pickled", t.__module__, t.__qualname__)
    if t is not tuple and len(_ENCODERS) < _CACHE_LIMIT:
        _ENCODERS[t] = enc
    return enc


def encode_protocol(opcode: bytes | str, data: Mapping[str, Any] = _EMPTY,
                    parts: list | None = None) -> list:
    """Encode a message into a list of frames for ``send_multipart``.

    Parameters
    ----------
    opcode : bytes or str
        Opcode (``b"event"``) or path (``"view#roi"``); str is UTF-8 encoded.
    data : Mapping[str, Any]
        Flat payload.  Keys must be str.  Values of fast-path types are
        encoded without pickle; tuples of 1 to 255 elements keep their
        elements on the fast path; anything else is pickled.
    parts : list, optional
        List to append the frames to (and return); a new one by default.

    Returns
    -------
    list
        Frames: ``bytes`` or byte memoryviews of the caller's arrays.  Send
        them with ``copy=False`` for large arrays and do not modify those
        arrays until the send completed.

    Raises
    ------
    TypeError
        A key is not str, or a value can neither be fast-pathed nor pickled.
        `parts` is left as it was.
    """
    if parts is None:
        parts = []
    if type(opcode) is str:
        opcode = opcode.encode("utf-8")
    elif not isinstance(opcode, (bytes, bytearray, memoryview)):
        raise TypeError(f"opcode must be bytes or str, not {type(opcode).__name__}")
    start = len(parts)
    parts.append(bytes(opcode))
    parts.append(b"")  # type IDs, filled in below
    ids = bytearray()
    key = None
    try:
        for key, value in data.items():
            if type(key) is not str:
                raise TypeError(f"message keys must be str, not {type(key).__name__}")
            parts.append(key.encode("utf-8"))
            t = type(value)
            enc = _ENCODERS.get(t)
            if enc is not None:
                ids.append(0)
                ids.append(enc(value, parts))
            elif t is tuple and 0 < len(value) <= _MAX_TUPLE:
                ids.append(len(value))
                for v in value:
                    enc = _ENCODERS.get(type(v)) or _encoder_for(v)
                    ids.append(enc(v, parts))
            else:
                ids.append(0)
                ids.append(_encoder_for(value)(value, parts))
    except (TypeError, AttributeError, pickle.PicklingError) as e:
        del parts[start:]
        raise TypeError(f"cannot encode value of key {key!r}: {e}") from e
    except BaseException:
        del parts[start:]
        raise
    parts[start + 1] = bytes(ids)
    return parts


# -- decoding --------------------------------------------------------------

def _buf(frame):
    """A bytes-like view of one received frame, never a copy.

    Accepts bytes, bytearray, memoryview, zmq.Frame (through ``.buffer``)
    and any C-contiguous buffer; everything else is a ProtocolError.
    """
    t = type(frame)
    if t is bytes:
        return frame
    if t is not memoryview:
        if t is not bytearray:
            frame = getattr(frame, "buffer", frame)
        try:
            frame = memoryview(frame)
        except TypeError:
            raise ProtocolError(f"frame of type {t.__name__} is not a buffer") from None
    if frame.ndim != 1 or frame.format != "B":
        frame = frame.cast("B")
    return frame


def _small(frame):
    """`frame` as bytes if that is cheaper than a view (keys, headers, ints).

    Copying a short zmq.Frame with ``.bytes`` costs a fraction of creating
    a memoryview of it, and these frames are small by construction.
    """
    if type(frame) is bytes:
        return frame
    b = getattr(frame, "bytes", None)
    return b if type(b) is bytes else _buf(frame)


def _dec_none(frames, i, allow_pickle):
    return None, i


def _dec_bool(frames, i, allow_pickle):
    b = _small(frames[i])
    if b == b"\x01":
        return True, i + 1
    if b == b"\x00":
        return False, i + 1
    raise ProtocolError(f"bool frame is {bytes(b)[:8]!r}, not 0x00 or 0x01")


def _dec_int(frames, i, allow_pickle):
    return _INT64.unpack(_small(frames[i]))[0], i + 1


def _dec_float(frames, i, allow_pickle):
    return _FLOAT64.unpack(_small(frames[i]))[0], i + 1


def _dec_bytes(frames, i, allow_pickle):
    b = _small(frames[i])
    return (b if type(b) is bytes else bytes(b)), i + 1


def _dec_str(frames, i, allow_pickle):
    return str(_small(frames[i]), "utf-8"), i + 1


def _dec_scalar(frames, i, allow_pickle):
    dtype = header_dtype(unpack_header(_small(frames[i])))
    b = _small(frames[i + 1])
    if len(b) != dtype.itemsize:
        raise ProtocolError(f"scalar {dtype.str} needs {dtype.itemsize} bytes, "
                            f"its frame has {len(b)}")
    return np.frombuffer(b, dtype)[0], i + 2


def _dec_ndarray(frames, i, allow_pickle):
    return array_from(unpack_header(_small(frames[i])), _buf(frames[i + 1])), i + 2


def _dec_dataarray(frames, i, allow_pickle):
    import xarray as xr

    header = unpack_header(_small(frames[i]))
    data = array_from(header, _buf(frames[i + 1]))
    dims = str_list(header.get("dims"), "dims")
    name = header.get("name")
    attrs = header.get("attrs", {})
    coord_headers = header.get("coords", [])
    if name is not None and type(name) is not str:
        raise ProtocolError("DataArray name must be str or nil")
    if type(attrs) is not dict or type(coord_headers) is not list:
        raise ProtocolError("DataArray attrs must be a map and coords a list")
    i += 2
    coords = {}
    for ch in coord_headers:
        if type(ch) is not dict or type(ch.get("name")) is not str:
            raise ProtocolError(f"bad coordinate header {ch!r}")
        cattrs = ch.get("attrs")
        if cattrs is not None and type(cattrs) is not dict:
            raise ProtocolError("coordinate attrs must be a map")
        coords[ch["name"]] = xr.Variable(str_list(ch.get("dims"), "coordinate dims"),
                                         array_from(ch, _buf(frames[i])), cattrs)
        i += 1
    if "pickle" in header:
        extra = _unpickle(header["pickle"], allow_pickle)
        if type(extra) is not dict:
            raise ProtocolError("DataArray pickle entry is not a dict")
        name = extra.get("name", name)
        attrs = extra.get("attrs", attrs)
        coords.update(extra.get("coords", {}))
    return xr.DataArray(data, coords=coords, dims=dims, name=name, attrs=attrs), i


def _unpickle(buf, allow_pickle):
    if not allow_pickle:
        raise ProtocolError("pickled value refused (allow_pickle=False)")
    if type(buf) is not bytes:
        buf = _buf(buf)
    return pickle.loads(buf)


def _dec_pickle(frames, i, allow_pickle):
    return _unpickle(frames[i], allow_pickle), i + 1


_DECODERS = {
    _NONE: _dec_none, _BOOL: _dec_bool, _INT: _dec_int, _FLOAT: _dec_float,
    _BYTES: _dec_bytes, _STR: _dec_str, _SCALAR: _dec_scalar, _ARRAY: _dec_ndarray,
    _XARRAY: _dec_dataarray, _PICKLE: _dec_pickle,
}


def _unknown(type_id):
    return ProtocolError(f"unknown type ID {chr(type_id)!r} (this side speaks "
                            f"protocol version {PROTOCOL_VERSION})")


def decode_protocol(frames, *, allow_pickle: bool = True) -> tuple[bytes, dict]:
    """Decode the frames of one message into ``(opcode, data)``.

    Parameters
    ----------
    frames : iterable of bytes, memoryview, bytearray or zmq.Frame
        The received message, e.g. ``socket.recv_multipart(copy=False)``.
    allow_pickle : bool
        Whether pickled values are loaded.  Unpickling executes code chosen
        by the sender; pass False for peers you do not trust.

    Returns
    -------
    opcode : bytes
        Frame 0, checked to be UTF-8.
    data : dict
        The payload.  Arrays view the received frames (no copy) and are
        read-only; they keep the frames alive.

    Raises
    ------
    ProtocolError
        On malformed input of any kind, and for pickled values when
        `allow_pickle` is False.  No other exception escapes.
    """
    try:
        return _decode(frames, allow_pickle)
    except ProtocolError:
        raise
    except IndexError as e:
        raise ProtocolError("message truncated: a value is missing frames") from e
    except Exception as e:
        raise ProtocolError(f"malformed message: {type(e).__name__}: {e}") from e


def _decode(frames, allow_pickle):
    if type(frames) is not list and type(frames) is not tuple:
        frames = list(frames)
    if len(frames) < 2:
        raise ProtocolError(f"message has {len(frames)} frame(s); at least the "
                            "opcode and type ID frames are required")
    opcode = _small(frames[0])
    opcode = opcode if type(opcode) is bytes else bytes(opcode)
    opcode.decode("utf-8")
    ids = _small(frames[1])
    ids = ids if type(ids) is bytes else bytes(ids)
    data = {}
    nframes = len(frames)
    nids, t, i = len(ids), 0, 2
    while t < nids:
        count = ids[t]
        if count == 0:
            if t + 2 > nids:
                raise ProtocolError("type IDs end inside a value")
            type_id = ids[t + 1]
            t += 2
        else:
            type_ids = ids[t + 1:t + 1 + count]
            t += 1 + count
            if len(type_ids) != count:
                raise ProtocolError("type IDs end inside a tuple")
        if i >= nframes:
            raise ProtocolError("message truncated: key frame missing")
        key = str(_small(frames[i]), "utf-8")
        if key in data:
            raise ProtocolError(f"duplicate key {key!r}")
        i += 1
        try:
            if count == 0:
                # The commonest plain values are decoded inline: a function
                # call per value is a large part of a small message's cost.
                if type_id == _INT:
                    value = _INT64.unpack(_small(frames[i]))[0]
                    i += 1
                elif type_id == _FLOAT:
                    value = _FLOAT64.unpack(_small(frames[i]))[0]
                    i += 1
                else:
                    dec = _DECODERS.get(type_id)
                    if dec is None:
                        raise _unknown(type_id)
                    value, i = dec(frames, i, allow_pickle)
            else:
                values = []
                for type_id in type_ids:
                    dec = _DECODERS.get(type_id)
                    if dec is None:
                        raise _unknown(type_id)
                    v, i = dec(frames, i, allow_pickle)
                    values.append(v)
                value = tuple(values)
        except ProtocolError as e:
            raise ProtocolError(f"key {key!r}: {e}") from e.__cause__
        except IndexError as e:
            raise ProtocolError(f"key {key!r}: message truncated") from e
        except Exception as e:
            raise ProtocolError(f"key {key!r}: {type(e).__name__}: {e}") from e
        data[key] = value
    if i != len(frames):
        raise ProtocolError(f"{len(frames) - i} frame(s) left after the last value")
    return opcode, data

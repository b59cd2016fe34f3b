"""Array, numpy-scalar and DataArray values of the wire protocol: their headers.

:mod:`metropc.protocol` lays out messages and frames; an array value is a
msgpack header plus its raw buffer, a DataArray a header plus one buffer for
its data and one per coordinate (docs/protocol.md, section 3).  This module
builds those headers from values and values from checked headers, without
touching frames: only what numpy's canonical dtype strings allow is
accepted, so a header can never make numpy parse arbitrary text or build an
object array.  The shared-memory slots (:mod:`metropc.stage.shm`) describe
their arrays with the same dtype strings.
"""

from __future__ import annotations

import math
import pickle
import re

import msgpack
import numpy as np

from .error import ProtocolError

__all__ = ["DTYPE_RE", "dtype_descr", "byte_view", "array_parts", "msgpack_exact",
           "dataarray_parts", "unpack_header", "header_dtype", "array_from", "str_list"]

_MAX_DIMS = 64
_CACHE_LIMIT = 512

#: Canonical numpy dtype strings as produced by ``dtype.str``.  Decoders accept
#: nothing else, so a header can never smuggle in an object or structured
#: dtype, and numpy's dtype parser never sees arbitrary text (shm slots too).
DTYPE_RE = re.compile(r"[<>|][biufcmMSUV][0-9]{1,9}(\[[0-9]{0,4}[a-zA-Z]{1,2}\])?")
_DTYPE_KINDS = frozenset("biufcmMSUV")

_DESCR_CACHE: dict[np.dtype, str | None] = {}


def dtype_descr(dtype):
    """The canonical string of `dtype`, or None if it needs pickling."""
    try:
        return _DESCR_CACHE[dtype]
    except KeyError:
        pass
    descr = None
    if (dtype.kind in _DTYPE_KINDS and dtype.fields is None
            and dtype.subdtype is None and dtype.itemsize > 0):
        s = dtype.str
        if DTYPE_RE.fullmatch(s) and np.dtype(s) == dtype:
            descr = s
    if len(_DESCR_CACHE) < _CACHE_LIMIT:
        _DESCR_CACHE[dtype] = descr
    return descr


def byte_view(arr):
    """A flat byte memoryview of C-contiguous `arr`, without a copy."""
    if arr.size == 0:
        return b""
    try:
        return memoryview(arr).cast("B")
    except (TypeError, ValueError):
        # datetime64/timedelta64 export no buffer; reinterpret as bytes.
        return memoryview(arr.reshape(-1).view(np.uint8))


def array_parts(arr):
    """(header dict, buffer) of a plain ndarray, or None to fall back.

    C- and Fortran-contiguous arrays are sent as they lie in memory; any
    other layout is copied once into C order.
    """
    descr = dtype_descr(arr.dtype)
    if descr is None:
        return None
    header = {"dtype": descr, "shape": arr.shape}
    if arr.flags.c_contiguous:
        buf = byte_view(arr)
    elif arr.flags.f_contiguous:
        header["order"] = "F"
        buf = byte_view(arr.T)
    else:
        buf = byte_view(np.ascontiguousarray(arr))
    return header, buf

def msgpack_exact(value, depth=0):
    """Whether msgpack gives back exactly `value` (same types, same values).

    Tuples would come back as lists and numpy scalars not at all, so such
    attrs take the pickle route instead of silently changing type.
    """
    t = type(value)
    if value is None or t is str or t is bytes or t is float or t is bool:
        return True
    if t is int:
        return -(1 << 63) <= value < (1 << 64)
    if depth >= 32:
        return False
    if t is list:
        return all(msgpack_exact(v, depth + 1) for v in value)
    if t is dict:
        return all(type(k) is str and msgpack_exact(v, depth + 1)
                   for k, v in value.items())
    return False


def dataarray_parts(da):
    """Header and buffers of a DataArray, or None to pickle it whole.

    Whatever msgpack cannot carry exactly (odd names or attrs, object-dtype
    coords) goes into a pickled ``"pickle"`` entry of the header, so a
    DataArray with exotic attrs still sends its data zero-copy.
    """
    import xarray as xr

    data = da.data
    if type(data) is not np.ndarray or not all(type(d) is str for d in da.dims):
        return None
    for name, index in da.xindexes.items():
        if type(index) is not xr.indexes.PandasIndex or name not in da.dims:
            return None  # MultiIndex, custom or non-dimension indexes
    ap = array_parts(data)
    if ap is None:
        return None
    header, buf = ap
    header["dims"] = da.dims
    extra = {}
    if da.name is None or type(da.name) is str:
        header["name"] = da.name
    else:
        extra["name"] = da.name
    if da.attrs:
        if msgpack_exact(da.attrs):
            header["attrs"] = da.attrs
        else:
            extra["attrs"] = da.attrs
    coords, bufs = [], []
    for name, var in da.coords.variables.items():
        cp = None
        if type(name) is str and (not var.attrs or msgpack_exact(var.attrs)):
            cp = array_parts(var.values)
        if cp is None:
            extra.setdefault("coords", {})[name] = var
            continue
        ch, cbuf = cp
        ch["name"] = name
        ch["dims"] = var.dims
        if var.attrs:
            ch["attrs"] = var.attrs
        coords.append(ch)
        bufs.append(cbuf)
    header["coords"] = coords
    if extra:
        header["pickle"] = pickle.dumps(extra, protocol=5)
    return header, buf, bufs

def unpack_header(raw):
    """The msgpack map of a header frame (bytes); ProtocolError otherwise."""
    header = msgpack.unpackb(raw, raw=False, ext_hook=_no_ext)
    if type(header) is not dict:
        raise ProtocolError(f"header is a {type(header).__name__}, not a map")
    return header


def _no_ext(code, data):
    raise ProtocolError(f"msgpack extension type {code} in header")


_DTYPE_CACHE: dict[str, np.dtype] = {}


def header_dtype(header):
    s = header.get("dtype")
    try:
        return _DTYPE_CACHE[s]
    except (KeyError, TypeError):
        pass
    if type(s) is not str or not DTYPE_RE.fullmatch(s):
        raise ProtocolError(f"bad dtype {s!r} in header")
    dtype = np.dtype(s)
    if dtype.itemsize == 0 or dtype.hasobject:
        raise ProtocolError(f"unsupported dtype {s!r} in header")
    if len(_DTYPE_CACHE) < _CACHE_LIMIT:
        _DTYPE_CACHE[s] = dtype
    return dtype


def array_from(header, buf):
    """The read-only ndarray a header and its buffer (a byte buffer) describe."""
    dtype = header_dtype(header)
    shape = header.get("shape")
    if type(shape) is not list or len(shape) > _MAX_DIMS:
        raise ProtocolError(f"bad shape {shape!r} in header")
    for n in shape:
        if type(n) is not int or n < 0:
            raise ProtocolError(f"bad shape {shape!r} in header")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes != len(buf):
        raise ProtocolError(f"array {dtype.str}{shape} needs {nbytes} bytes, "
                            f"its frame has {len(buf)}")
    order = header.get("order", "C")
    if order == "C":
        arr = np.ndarray(shape, dtype, buf)
    elif order == "F":
        arr = np.ndarray(shape, dtype, buf, 0, None, "F")
    else:
        raise ProtocolError(f"bad order {order!r} in header")
    if arr.flags.writeable:
        arr.flags.writeable = False
    return arr

def str_list(value, what):
    if type(value) is not list or not all(type(v) is str for v in value):
        raise ProtocolError(f"{what} must be a list of str, not {value!r}")
    return value

"""Turn view results into what the browser draws (numpy only, no web stack).

Every function here takes a result as the pipeline published it and returns
a *frame*: ``(header, arrays)`` where `header` is a JSON-able dict and
`arrays` maps names to numpy arrays that travel as raw little-endian buffers
(see :func:`pack_frame`).  The browser never sees more than it can draw:

- images are reduced to at most ``max_side`` x ``max_side`` pixels by block
  means (NaN-aware), so a 1-Mpix detector costs 256 KiB per frame, not 4 MiB;
- vectors longer than ``max_points`` keep each bucket's min and max, so peaks
  survive the reduction;
- scalar and point histories are bounded ring buffers (:class:`History`).

The ``kind`` of a frame tells the page how to draw it: ``trace`` (scalar
history), ``line``, ``bars``, ``image``, ``points``, ``text``, ``html``,
``empty``.
"""

from __future__ import annotations

import json
import math
import numbers
import reprlib
import struct

import numpy as np

from ..enums import ViewOutput

__all__ = [
    "MAX_POINTS",
    "MAX_SIDE",
    "History",
    "block_reduce",
    "envelope",
    "output_info",
    "pack_frame",
    "points_of",
    "prepare",
    "prepare_history",
    "scalar_value",
    "unpack_frame",
]

#: Largest image side sent to the browser.
MAX_SIDE = 256
#: Largest number of samples of one line sent to the browser.
MAX_POINTS = 4096
#: Longest text sent to the browser.
MAX_TEXT = 100_000
#: Most lines drawn for a 2-D VECTOR result.
MAX_LINES = 16

_repr = reprlib.Repr()
_repr.maxstring = 200
_repr.maxother = 200
_repr.maxlist = 20
_repr.maxdict = 20


def output_info(output: ViewOutput | None) -> dict:
    """``{"output": "SCALAR", "hint": "FAST"|None}`` of an output type."""
    if output is None:
        return {"output": None, "hint": None}
    return {"output": output.generic.name, "hint": output.hint}


# -- history ------------------------------------------------------------------

class History:
    """A bounded ring buffer of rows ``(x, y, event_id)`` (float64).

    ``total`` counts every row ever appended, so a reader can tell how many
    it has not seen and where a ``clear`` it remembers lies.
    """

    def __init__(self, length: int):
        self.length = int(length)
        self._buf = np.full((self.length, 3), np.nan)
        self.total = 0

    def append(self, x, y, event_id=None):
        self._buf[self.total % self.length] = (x, y, np.nan if event_id is None
                                               else event_id)
        self.total += 1

    def extend(self, xs, ys, event_id=None):
        xs = np.asarray(xs, dtype=np.float64).ravel()
        ys = np.asarray(ys, dtype=np.float64).ravel()
        n = min(xs.size, ys.size)
        if n > self.length:
            xs, ys = xs[n - self.length:n], ys[n - self.length:n]
            self.total += n - self.length
            n = self.length
        for i in range(n):
            self.append(xs[i], ys[i], event_id)

    def __len__(self):
        return min(self.total, self.length)

    def last(self, n: int | None = None) -> np.ndarray:
        """The last `n` rows (all if None), oldest first, as a copy."""
        size = len(self)
        n = size if n is None else max(0, min(int(n), size))
        end = self.total % self.length
        idx = (np.arange(end - n, end)) % self.length
        return self._buf[idx].copy()

    def clear(self):
        self._buf[:] = np.nan
        self.total = 0


# -- value helpers -----------------------------------------------------------------

def scalar_value(data):
    """A finite-or-NaN float for a numeric scalar result, else None."""
    if isinstance(data, (bool, np.bool_)):
        return float(data)
    if isinstance(data, numbers.Real):
        return float(data)
    if isinstance(data, np.generic) and np.issubdtype(type(data), np.number):
        if np.iscomplexobj(data):
            return float(abs(data))
        return float(data)
    values = getattr(data, "values", data) if _is_dataarray(data) else data
    if isinstance(values, np.ndarray) and values.size == 1 and values.dtype.kind in "biuf":
        return float(values.reshape(()))
    return None


def _is_dataarray(data):
    return type(data).__name__ == "DataArray" and hasattr(data, "dims")


def points_of(data):
    """``(xs, ys)`` float arrays of a POINTS result, or None if it is none.

    Accepted: a point ``(x, y)``; a list of points; an ``(N, 2)`` array; a
    pair of equally long arrays ``(xs, ys)``.  Extra columns are ignored.
    """
    if data is None:
        return None
    if _is_dataarray(data):
        data = data.values
    try:
        if isinstance(data, tuple) and len(data) >= 2 and all(
                np.ndim(v) == 0 for v in data[:2]):
            xs, ys = [float(data[0])], [float(data[1])]
        elif isinstance(data, tuple) and len(data) >= 2 and np.ndim(data[0]) == 1:
            xs = np.asarray(data[0], dtype=np.float64)
            ys = np.asarray(data[1], dtype=np.float64)
            if xs.shape != ys.shape:
                return None
        else:
            arr = np.asarray(data, dtype=np.float64)
            if arr.ndim == 1 and arr.size >= 2:
                arr = arr[None, :]
            if arr.ndim != 2 or arr.shape[1] < 2:
                return None
            xs, ys = arr[:, 0], arr[:, 1]
    except (TypeError, ValueError):
        return None
    return np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)


def _text_of(data):
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            return _repr.repr(data)
    if isinstance(data, str):
        return data[:MAX_TEXT]
    if isinstance(data, np.ndarray):
        return (f"ndarray {data.dtype} {data.shape}\n"
                + np.array2string(data, threshold=200, edgeitems=5))[:MAX_TEXT]
    return _repr.repr(data)[:MAX_TEXT]


def _looks_like_html(text):
    head = text.lstrip()[:200].lower()
    return head.startswith("<") and ">" in head and (
        head.startswith(("<!doctype", "<html", "<div", "<table", "<p", "<h", "<span",
                         "<b", "<i", "<ul", "<ol", "<pre", "<svg", "<img", "<style",
                         "<br", "<em", "<strong", "<code", "<a ")))


def _text_frame(data):
    text = _text_of(data)
    if isinstance(data, str) and _looks_like_html(text):
        return {"kind": "html", "text": text}, {}
    return {"kind": "text", "text": text}, {}


def _label(name, attrs):
    """An axis label: the ``long_name`` attr (else `name`), with the ``units``.

    These are the CF conventions xarray itself uses for its plot labels, so
    data labelled for ``DataArray.plot()`` is labelled here the same way.
    """
    attrs = attrs or {}
    units = attrs.get("units") or attrs.get("unit")
    name = attrs.get("long_name") or attrs.get("standard_name") or name
    if units:
        return f"{name} ({units})"
    return str(name)


def _has_label(attrs):
    return bool(attrs) and any(attrs.get(k) for k in ("units", "unit", "long_name"))


def _coord(da, dim):
    """A DataArray's numeric 1-D coordinate along `dim` (float64) or None."""
    if dim not in da.coords:
        return None, {}
    coord = da.coords[dim]
    if coord.ndim != 1 or coord.dtype.kind not in "biuf":
        if coord.ndim == 1 and coord.dtype.kind == "M":
            return coord.values.astype("datetime64[ns]").astype(np.float64) / 1e9, dict(
                coord.attrs, units="s since 1970")
        return None, dict(coord.attrs)
    return np.asarray(coord.values, dtype=np.float64), dict(coord.attrs)


def _common_labels(data, header):
    attrs = dict(getattr(data, "attrs", {}) or {})
    name = getattr(data, "name", None)
    title = attrs.get("title")
    if title is None and name is not None:
        title = str(name)
    if title is not None:
        header["title"] = str(title)
    return attrs


def _numeric(values):
    """Real float64 values of a numeric array (complex -> magnitude), or None."""
    values = np.asarray(values)
    if values.dtype.kind == "c":
        return np.abs(values)
    if values.dtype.kind in "biuf":
        return values
    return None


# -- reductions for display ------------------------------------------------------------

def block_reduce(image: np.ndarray, max_side: int = MAX_SIDE) -> tuple[np.ndarray, int]:
    """Block means of `image` so that no side exceeds `max_side`.

    Returns ``(float32 image, factor)``: one displayed pixel is the mean of a
    ``factor`` x ``factor`` block (the same factor on both axes keeps the
    aspect).  Edge rows/columns that do not fill a block are averaged over the
    pixels they have.  NaNs are ignored (a block of only NaN stays NaN).
    """
    h, w = image.shape
    factor = max(1, math.ceil(max(h, w) / max_side))
    if factor == 1:
        return np.ascontiguousarray(image, dtype=np.float32), 1
    h2, w2 = -(-h // factor), -(-w // factor)
    hf, wf = (h // factor) * factor, (w // factor) * factor
    kind = image.dtype.kind
    acc = np.float64 if kind == "f" and image.dtype.itemsize > 4 else np.float32
    has_nan = kind == "f" and bool(np.isnan(image).any())
    if not has_nan and hf == h and wf == w:
        out = image.reshape(h2, factor, w2, factor).mean(axis=(1, 3), dtype=acc)
        return out.astype(np.float32, copy=False), factor
    # General case: pad to whole blocks with NaN and take NaN-aware means.
    padded = np.full((h2 * factor, w2 * factor), np.nan, dtype=acc)
    padded[:h, :w] = image
    blocks = padded.reshape(h2, factor, w2, factor)
    valid = ~np.isnan(blocks)
    sums = np.where(valid, blocks, 0).sum(axis=(1, 3), dtype=acc)
    counts = valid.sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = sums / counts
    return out.astype(np.float32, copy=False), factor


def envelope(x: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS):
    """Reduce a line to at most `max_points` samples, keeping each bucket's extremes."""
    n = y.shape[-1]
    if n <= max_points:
        return x, y
    buckets = max_points // 2
    edges = np.linspace(0, n, buckets + 1).astype(np.intp)
    starts = edges[:-1]
    yy = np.where(np.isnan(y), np.inf, y)
    lo = np.minimum.reduceat(yy, starts, axis=-1)
    yy = np.where(np.isnan(y), -np.inf, y)
    hi = np.maximum.reduceat(yy, starts, axis=-1)
    lo = np.where(np.isinf(lo), np.nan, lo)
    hi = np.where(np.isinf(hi), np.nan, hi)
    xs = x[starts]
    xe = x[np.maximum(edges[1:] - 1, starts)]
    out_x = np.stack([xs, xe], axis=-1).reshape(-1)
    out_y = np.stack([lo, hi], axis=-1).reshape(*y.shape[:-1], -1)
    return out_x, out_y


# -- frames ----------------------------------------------------------------------------

def prepare(data, output: ViewOutput | None, *, max_side: int = MAX_SIDE,
            max_points: int = MAX_POINTS, histogram: bool = False):
    """The frame showing one result of a view with output type `output`.

    `histogram` marks a histogram view (known from the context): its vector
    is drawn as bars at its bin coordinates, as are VECTOR_DISTRIBUTION
    results and vectors whose dimension is called ``bin``.  SCALAR and
    POINTS views are drawn from their history instead
    (:func:`prepare_history`); this gives their latest value alone.
    """
    if data is None:
        return {"kind": "empty"}, {}
    if isinstance(data, (str, bytes)):
        return _text_frame(data)
    generic = output.generic if output is not None else None
    if generic is ViewOutput.POINTS:
        pts = points_of(data)
        if pts is None:
            return _text_frame(data)
        header = {"kind": "points", "n": int(pts[0].size)}
        return header, {"x": pts[0], "y": pts[1]}
    if isinstance(data, tuple) and len(data) == 2 and generic is ViewOutput.VECTOR:
        x, y = (np.asarray(v) for v in data)
        if x.ndim == 1 and y.ndim == 1 and x.shape == y.shape:
            x, y = _numeric(x), _numeric(y)
            if x is not None and y is not None:
                return _line_frame(np.asarray(x, np.float64), np.asarray(y, np.float64),
                                   {}, output, histogram, max_points, {})
    values = data.values if _is_dataarray(data) else data
    if not isinstance(values, np.ndarray):
        if isinstance(values, (list, tuple)) and generic in (ViewOutput.VECTOR,
                                                             ViewOutput.MATRIX):
            try:
                values = np.asarray(values)
            except (ValueError, TypeError):
                return _text_frame(data)
        else:
            value = scalar_value(data)
            if value is None:
                return _text_frame(data)
            return {"kind": "value", "value": _json_float(value)}, {}
    numeric = _numeric(values)
    if numeric is None or numeric.size == 0:
        return _text_frame(data)
    if numeric.ndim == 0 or numeric.size == 1 and generic is ViewOutput.SCALAR:
        return {"kind": "value", "value": _json_float(float(numeric.reshape(-1)[0]))}, {}
    if generic is ViewOutput.MATRIX or (generic is None and numeric.ndim >= 2) or (
            generic is not ViewOutput.VECTOR and numeric.ndim == 2):
        return _image_frame(data, numeric, max_side)
    return _vector_frame(data, numeric, output, histogram, max_points)


def _json_float(v):
    return v if math.isfinite(v) else None


def _vector_frame(data, values, output, histogram, max_points):
    header = {}
    if values.ndim > 2:  # e.g. a stack of images shown as VECTOR: flatten the rest
        values = values.reshape(values.shape[0], -1)
    attrs = _common_labels(data, header)
    dim = data.dims[-1] if _is_dataarray(data) else None
    x, xattrs = _coord(data, dim) if dim is not None else (None, {})
    n = values.shape[-1]
    if x is None or x.size != n:
        x = np.arange(n, dtype=np.float64)
    if "xlabel" in attrs:
        header["xlabel"] = str(attrs["xlabel"])
    elif dim is not None and not dim.startswith("dim_"):
        header["xlabel"] = _label(dim, xattrs)
    if "ylabel" in attrs:
        header["ylabel"] = str(attrs["ylabel"])
    elif _has_label(attrs):
        header["ylabel"] = _label(getattr(data, "name", None) or "value", attrs)
    series = None
    if values.ndim == 2:
        series_dim = data.dims[0] if _is_dataarray(data) else None
        labels, _ = _coord(data, series_dim) if series_dim else (None, {})
        if values.shape[0] > MAX_LINES:
            values = values[-MAX_LINES:]
            labels = labels[-MAX_LINES:] if labels is not None else None
            first = data.shape[0] - MAX_LINES
        else:
            first = 0
        if labels is None or labels.size != values.shape[0]:
            labels = np.arange(first, first + values.shape[0])
        name = series_dim if series_dim and not series_dim.startswith("dim_") else "#"
        series = [f"{name} = {v:g}" for v in labels]
    return _line_frame(x, np.asarray(values, dtype=np.float64), header, output,
                       histogram or dim == "bin", max_points, series)


def _line_frame(x, y, header, output, histogram, max_points, series):
    bars = histogram or output is ViewOutput.VECTOR_DISTRIBUTION
    header = dict(header)
    header["kind"] = "bars" if bars else "line"
    if series:
        header["series"] = series
    if bars and x.size > 1:
        # Bars are centred on their coordinate; their width is the spacing.
        width = float(np.nanmedian(np.abs(np.diff(x)))) if x.size > 1 else 1.0
        header["width"] = width if math.isfinite(width) and width > 0 else 1.0
    if y.ndim == 1:
        y = y[None, :]
    header["n"] = int(y.shape[-1])
    if not bars:
        x, y = envelope(x, y, max_points)
    elif y.shape[-1] > max_points:  # bars: add neighbours together
        f = math.ceil(y.shape[-1] / max_points)
        m = (y.shape[-1] // f) * f
        y = np.nansum(y[:, :m].reshape(y.shape[0], -1, f), axis=-1)
        x = x[:m].reshape(-1, f).mean(axis=-1)
        header["width"] = header.get("width", 1.0) * f
    header["lines"] = int(y.shape[0])
    return header, {"x": np.asarray(x, np.float64),
                    "y": np.ascontiguousarray(y, dtype=np.float64).reshape(-1)}


def _image_frame(data, values, max_side):
    header = {"kind": "image"}
    attrs = _common_labels(data, header)
    dims = list(data.dims) if _is_dataarray(data) else None
    if values.ndim > 2:
        # A stack (steps, y, x) or more: show the last 2-D slice.
        lead = values.shape[:-2]
        header["note"] = f"showing [{', '.join(str(n - 1) for n in lead)}] of {values.shape}"
        values = values.reshape(-1, *values.shape[-2:])[-1]
        if dims:
            dims = dims[-2:]
    elif values.ndim == 1:
        values = values[None, :]
        if dims:
            dims = ["", dims[0]]
    h, w = values.shape
    header["shape"] = [int(h), int(w)]
    if values.dtype == np.bool_:
        values = values.view(np.uint8)
    small, factor = block_reduce(values, max_side)
    header["factor"] = factor
    header["dshape"] = [int(small.shape[0]), int(small.shape[1])]
    for axis, dim, size in (("y", dims[0] if dims else None, h),
                            ("x", dims[1] if dims else None, w)):
        label_key = axis + "label"
        coord, cattrs = _coord(data, dim) if dim else (None, {})
        if coord is not None and coord.size == size and size > 1 and np.all(
                np.isfinite(coord[[0, -1]])):
            header[axis + "range"] = [float(coord[0]), float(coord[-1])]
        else:
            header[axis + "range"] = [0.0, float(size - 1)]
        if label_key in attrs:
            header[label_key] = str(attrs[label_key])
        elif dim and not dim.startswith("dim_"):
            header[label_key] = _label(dim, cattrs)
    zlabel = attrs.get("zlabel") or attrs.get("clabel")
    if zlabel is None and _has_label(attrs):
        zlabel = _label(getattr(data, "name", None) or "value", attrs)
    if zlabel is not None:
        header["zlabel"] = str(zlabel)
    finite = small[np.isfinite(small)]
    header["min"] = float(finite.min()) if finite.size else None
    header["max"] = float(finite.max()) if finite.size else None
    return header, {"z": small}


def prepare_history(history: np.ndarray, output: ViewOutput | None, total: int,
                    kind: str = "trace"):
    """The frame of a SCALAR (``trace``) or POINTS (``points``) history.

    `history` are rows ``(x, y, event_id)`` as :meth:`History.last` gives;
    `total` is how many rows were ever appended.
    """
    header = {"kind": kind, "n": int(history.shape[0]), "total": int(total)}
    if kind == "trace":
        ids = history[:, 2]
        header["xlabel"] = "train id" if np.isfinite(ids).any() else "result #"
        if history.shape[0]:
            last = history[-1, 1]
            header["last"] = _json_float(float(last))
    return header, {"x": history[:, 0], "y": history[:, 1]}


# -- wire format of frames ----------------------------------------------------------

def pack_frame(header: dict, arrays: dict) -> bytes:
    """One binary websocket message: ``u32 n, n bytes JSON header, pad, buffers``.

    The buffers start at the first multiple of 8 after the header; the header
    gains ``"arrays": {name: [offset, count, dtype]}`` with offsets relative to
    that start (multiples of 8) and dtype ``"f8"`` or ``"f4"`` (little-endian),
    so the page makes typed-array views on the received buffer without copying.
    """
    specs, chunks, offset = {}, [], 0
    for name, arr in arrays.items():
        arr = np.asarray(arr)
        dtype = "<f4" if arr.dtype == np.float32 else "<f8"
        arr = np.ascontiguousarray(arr, dtype=dtype)
        specs[name] = [offset, int(arr.size), dtype[1:]]
        chunks.append(arr)
        offset += -(-arr.nbytes // 8) * 8
    head = json.dumps(dict(header, arrays=specs), separators=(",", ":"),
                      allow_nan=False).encode()
    start = -(-(4 + len(head)) // 8) * 8
    parts = [struct.pack("<I", len(head)), head, b" " * (start - 4 - len(head))]
    for arr in chunks:
        parts.append(arr.tobytes())
        parts.append(b"\0" * (-arr.nbytes % 8))
    return b"".join(parts)


def unpack_frame(message: bytes) -> tuple[dict, dict]:
    """The reverse of :func:`pack_frame` (for tests and Python clients)."""
    (n,) = struct.unpack_from("<I", message)
    header = json.loads(message[4:4 + n])
    start = -(-(4 + n) // 8) * 8
    arrays = {}
    for name, (offset, count, dtype) in header.get("arrays", {}).items():
        arrays[name] = np.frombuffer(message, dtype="<" + dtype, count=count,
                                     offset=start + offset)
    return header, arrays

"""The recording file format: names, sentinels and how a result is classified.

Shared by the writer and the reader, so that both agree on every name.
docs/recording.md describes the layout for readers using plain h5py.

A result is stored by *kind*:

- ``array``: numbers, numpy scalars and arrays, lists of numbers (as the
  array numpy makes of them);
- ``dataarray``: an ``xarray.DataArray`` (data as an array, plus dims,
  coords, name and attrs);
- ``string``: a ``str`` (variable-length UTF-8);
- ``bytes``: ``bytes`` (variable-length uint8).

Anything else (None, dicts, objects) is not recorded: it has no faithful
HDF5 form, and storing pickles would make reading a file run code.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

FORMAT = "metropc-recording"
FORMAT_VERSION = 1

#: train_id of a result that belongs to no event (STEP and ACTION views).
NO_EVENT = -(2 ** 63)
#: run value of a result whose payload said ``"run": None``.
RUN_NONE = -1
#: run value of a result whose payload had no ``run`` key (older pipelines).
RUN_ABSENT = -2
#: version/seq value when the payload had none.
MISSING = -1

VIEWS = "views"
META = "meta"
#: Per-result columns every segment has, besides ``data`` (and ``shape``).
COLUMNS = {"train_id": "<i8", "version": "<i8", "run": "<i8", "seq": "<i8",
           "time": "<f8"}

#: Metadata tables under /meta: table -> {column: dtype}; "str" is vlen UTF-8.
META_TABLES = {
    "contexts": {"version": "<i8", "path": "str", "source": "str",
                 "parameters": "str", "time": "<f8"},
    "params": {"version": "<i8", "parameters": "str", "time": "<f8"},
    "marks": {"kind": "str", "run": "<i8", "train_id": "<i8", "views": "str",
              "time": "<f8"},
    "views": {"name": "str", "output": "<i8", "stage": "<i8", "hidden": "|b1",
              "label": "str", "time": "<f8"},
}

_NUMERIC = frozenset("biufc")
#: Coordinates may also be text (stored as variable-length UTF-8).
_COORD_KINDS = _NUMERIC | {"U"}


@dataclass
class Layout:
    """What a segment of a view holds; results of another layout start a new one."""

    kind: str                     # array | dataarray | string | bytes
    dtype: str = ""               # numpy dtype.str of the data (array kinds)
    ndim: int = 0                 # ndim of one result
    dims: tuple = ()              # DataArray dims
    name: Any = None              # DataArray name
    attrs: dict = field(default_factory=dict)      # DataArray attrs (of the first result)
    coords: dict = field(default_factory=dict)     # name -> (dims, ndarray, attrs)
    per_event_coords: bool = False
    #: The Python type the result had, when it was no ndarray: "int",
    #: "float", "bool", "complex" (plain numbers), "scalar" (a numpy
    #: scalar), "list" or "tuple" (of numbers), "list-arrays" or
    #: "tuple-arrays" (of arrays of one shape, as a Points view's (x, y)).
    #: Replay gives it back.
    pytype: str = ""

    def accepts(self, other: "Layout") -> bool:
        """Whether a result of layout `other` can go into a segment of this one."""
        if other.kind != self.kind or other.ndim != self.ndim or other.dims != self.dims \
                or other.pytype != self.pytype:
            return False
        if self.kind in ("array", "dataarray") and other.dtype != self.dtype and not \
                np.can_cast(np.dtype(other.dtype), np.dtype(self.dtype), "safe"):
            return False
        if self.kind == "dataarray":
            if set(other.coords) != set(self.coords):
                return False
            for cname, (cdims, values, _) in other.coords.items():
                mine = self.coords[cname]
                if cdims != mine[0] or values.ndim != mine[1].ndim:
                    return False
                if not self.per_event_coords and not _same(values, mine[1]):
                    return False
                if self.per_event_coords and values.dtype != mine[1].dtype and not \
                        np.can_cast(values.dtype, mine[1].dtype, "safe"):
                    return False
        return True


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))


def classify(value) -> tuple[Layout, Any] | None:
    """``(layout, data)`` for a result, or None if it cannot be recorded.

    `data` is what gets written: the array itself (no copy for arrays and
    DataArrays), the str or the bytes.
    """
    if isinstance(value, str):
        return Layout("string"), value
    if isinstance(value, bytes):
        return Layout("bytes"), value
    kind = type(value)
    if kind is np.ndarray:
        arr, pytype = value, ""
    elif kind in (bool, int, float, complex):
        arr, pytype = np.asarray(value), kind.__name__
    elif isinstance(value, np.generic):
        arr, pytype = np.asarray(value), "scalar"
    elif type(value).__name__ == "DataArray" and hasattr(value, "dims"):
        return _classify_dataarray(value)
    elif kind in (list, tuple):
        try:
            arr = np.asarray(value)
        except (ValueError, TypeError):
            return None
        # (x, y) of a Points view: a tuple of arrays, given back as one
        pytype = kind.__name__ + ("-arrays" if any(type(v) is np.ndarray for v in value)
                                  else "")
    else:
        return None
    if arr.dtype.kind not in _NUMERIC or arr.dtype.hasobject:
        return None
    return Layout("array", arr.dtype.str, arr.ndim, pytype=pytype), arr


def _classify_dataarray(da) -> tuple[Layout, Any] | None:
    data = da.values
    if not isinstance(data, np.ndarray) or data.dtype.kind not in _NUMERIC:
        return None
    if not all(isinstance(d, str) for d in da.dims):
        return None
    coords = {}
    for cname, coord in da.coords.items():
        values = np.asarray(coord.values)
        if not isinstance(cname, str) or values.dtype.kind not in _COORD_KINDS:
            continue  # not recordable; documented
        coords[cname] = (tuple(coord.dims), values, dict(coord.attrs))
    name = da.name if isinstance(da.name, (str, int, float)) else None
    return Layout("dataarray", data.dtype.str, data.ndim, tuple(da.dims), name,
                  dict(da.attrs), coords), data


def to_json(value) -> str:
    """JSON for metadata (parameters, attrs); what JSON cannot hold becomes its repr."""
    return json.dumps(value, default=_jsonable, sort_keys=True)


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return repr(value)


def fill_value(dtype: np.dtype):
    """What padding reads as: NaN for floats and complex, 0 otherwise.

    (HDF5 takes no real NaN as the fill value of a complex dataset.)
    """
    if dtype.kind == "c":
        return complex(np.nan, np.nan)
    return np.nan if dtype.kind == "f" else 0

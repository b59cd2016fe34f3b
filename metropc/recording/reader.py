"""Reading recordings back: as an ``xarray.Dataset``, or result by result.

:func:`open_recording` gives one variable per view on a ``train_id``
dimension, which is what notebooks want; :func:`iter_messages` gives the
recorded messages in the order they arrived, which is what replay wants.
Both work on a file that is still being written (SWMR), reading as many
rows as every column of a segment has.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import time
from collections.abc import Iterator

import h5py
import numpy as np
import xarray as xr

from .layout import META, META_TABLES, NO_EVENT, RUN_ABSENT, RUN_NONE, VIEWS

__all__ = ["open_recording", "iter_messages", "recording_files", "open_file"]

log = logging.getLogger(__name__)


def recording_files(path: str | os.PathLike) -> list[str]:
    """The files of a recording: `path` itself, or the ``*.h5`` of a directory."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return sorted(glob.glob(os.path.join(path, "*.h5")))
    return [path]


def open_file(path: str, timeout: float = 5.0) -> h5py.File:
    """Open a recording file for reading, also while it is written.

    The writer leaves SWMR mode for a moment when it adds views; an open
    failing then is retried until `timeout`.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return h5py.File(path, "r", swmr=True, locking=False)
        except OSError:
            try:
                return h5py.File(path, "r", locking=False)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def _rows(group: h5py.Group) -> int:
    """Rows every column of a segment has (a growing file may differ)."""
    return min(group[name].shape[0] for name in ("train_id", "data", "time"))


class _Segment:
    """One segment read from a file (``views/<name>/<k>``)."""

    def __init__(self, group: h5py.Group):
        self.group = group
        a = group.attrs
        self.view = str(a["view"])
        self.kind = str(a["kind"])
        self.ndim = int(a["ndim"])
        self.pytype = str(a.get("pytype", ""))
        self.n = _rows(group)
        self.train_id = group["train_id"][:self.n]
        self.time = group["time"][:self.n]
        self.shapes = group["shape"][:self.n] if "shape" in group else None
        if self.kind == "dataarray":
            self.dims = tuple(json.loads(a["dims"]))
            self.name = json.loads(a["name"])
            self.attrs = json.loads(a["attrs"])
            self.per_event = bool(a["per_event_coords"])
        else:
            self.dims = tuple(f"{self.view}_dim_{i}" for i in range(self.ndim))
            self.name, self.attrs, self.per_event = None, {}, False
        self.view_attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in a.items()
                           if k in ("output", "stage", "hidden", "label")}

    def column(self, name: str, rows=slice(None)):
        return self.group[name][:self.n][rows]

    # -- whole segment, for open_recording ----------------------------------------------
    def dataarray(self, rows) -> tuple[xr.DataArray, xr.DataArray | None]:
        """The results at `rows` (a boolean mask) on a ``train_id`` dimension,
        and their shapes if they vary (else None)."""
        data = self.group["data"]
        n_sel = int(rows.sum())
        if self.kind == "string":
            values = np.array([str(s) for s in data.asstr()[:self.n][rows]], dtype=str)
        elif self.kind == "bytes":
            # Objects, not numpy "S", which cuts trailing zero bytes off.
            raw = data[:self.n][rows]
            values = np.empty(len(raw), dtype=object)
            for i, b in enumerate(raw):
                values[i] = bytes(b)
        else:
            values = data[:self.n][rows] if n_sel else np.zeros(
                (0,) + data.shape[1:], data.dtype)
        shapes = None
        if self.shapes is not None:
            sel = self.shapes[rows]
            full = np.array(values.shape[1:])
            if len(sel) and (sel != full).any():
                if values.dtype.kind not in "fc":
                    values = values.astype(np.float64)
                for i, shape in enumerate(sel):  # padding reads as NaN
                    mask = np.ones(values.shape[1:], bool)
                    mask[tuple(slice(0, s) for s in shape)] = False
                    values[i][mask] = np.nan
                shapes = sel
        tid = self.train_id[rows]
        coords = {"train_id": tid}
        if "coords" in self.group:
            for cname, ds in self.group["coords"].items():
                cdims = tuple(json.loads(ds.attrs["dims"]))
                cvalues = ds.asstr()[()] if h5py.check_string_dtype(ds.dtype) else ds[()]
                if self.per_event:
                    cvalues = cvalues[:self.n][rows]
                    cdims = ("train_id",) + cdims
                elif h5py.check_string_dtype(ds.dtype):
                    cvalues = np.array(cvalues, dtype=str)
                coords[cname] = xr.Variable(cdims, cvalues, json.loads(ds.attrs["attrs"]))
        attrs = dict(self.attrs)
        attrs.update({f"view_{k}": v for k, v in self.view_attrs.items()})
        da = xr.DataArray(values, dims=("train_id",) + self.dims, coords=coords,
                          attrs=attrs, name=self.view)
        shape_da = None if shapes is None else xr.DataArray(
            shapes, dims=("train_id", f"{self.view}_axis"), coords={"train_id": tid})
        return da, shape_da

    # -- one result, for replay -------------------------------------------------------
    def value(self, i: int):
        """The result in row `i` as it was published."""
        data = self.group["data"]
        if self.kind == "string":
            return data.asstr()[i]
        if self.kind == "bytes":
            return bytes(data[i])
        if self.shapes is not None:
            value = data[(i,) + tuple(slice(0, int(s)) for s in self.shapes[i])]
        else:
            value = data[i]
        if self.kind == "array":
            if self.pytype in ("int", "float", "bool", "complex"):
                return value.item()
            if self.pytype == "scalar":
                return value[()]
            if self.pytype == "list":
                return value.tolist()
            if self.pytype == "tuple":
                return tuple(value.tolist())
            if self.pytype in ("list-arrays", "tuple-arrays"):
                rows = [np.asarray(row) for row in value]
                return rows if self.pytype == "list-arrays" else tuple(rows)
            return np.asarray(value)
        coords = {}
        if "coords" in self.group:
            for cname, ds in self.group["coords"].items():
                cdims = tuple(json.loads(ds.attrs["dims"]))
                if self.per_event:
                    cvalues = ds[i]
                    # a dimension coordinate has the length of its dimension
                    cvalues = cvalues[tuple(slice(0, value.shape[self.dims.index(d)])
                                            for d in cdims)]
                elif h5py.check_string_dtype(ds.dtype):
                    cvalues = np.array(ds.asstr()[()], dtype=str)
                else:
                    cvalues = ds[()]
                coords[cname] = xr.Variable(cdims, cvalues, json.loads(ds.attrs["attrs"]))
        return xr.DataArray(value, dims=self.dims, coords=coords, name=self.name,
                            attrs=dict(self.attrs))


def _segments(f: h5py.File, views=None) -> list[_Segment]:
    found = []
    for view, group in f.get(VIEWS, {}).items():
        if views is not None and view not in views:
            continue
        for key in sorted(group, key=int):
            if "train_id" in group[key]:
                found.append(_Segment(group[key]))
    return found


def _last_unique(tid: np.ndarray) -> np.ndarray:
    """Mask keeping the last result of each train_id (a train recorded twice,
    e.g. after a REDUCE restart, keeps its latest result)."""
    _, first_of_reversed = np.unique(tid[::-1], return_index=True)
    keep = np.zeros(len(tid), bool)
    keep[len(tid) - 1 - first_of_reversed] = True
    return keep


def open_recording(path: str | os.PathLike, views=None) -> xr.Dataset:
    """A recording as an ``xarray.Dataset``, one variable per view.

    Parameters
    ----------
    path : str or PathLike
        A recording file, or a directory of them (one per run).
    views : collection of str, optional
        Read only these views.

    Every variable has the dimension ``train_id`` (the union of the
    views' event ids; a view without a result for a train reads NaN, or
    ``""`` for text, so ints and bools with gaps become floats).  Results
    of a shape that varies are padded with NaN to the largest, and the
    variable ``<view>_shape`` gives each result's real shape.  Results
    of no event (STEP and ACTION views) are the variable ``<view>_results``
    on a dimension of their own, ``<view>_result``.  A view whose results changed layout (dtype that
    cannot be cast, number of axes, coordinates) has one variable per
    layout: ``<view>``, ``<view>~1``, ...  See docs/recording.md.
    """
    views = None if views is None else set(views)
    parts: dict[str, list[tuple[xr.DataArray, xr.DataArray | None]]] = {}
    no_event: dict[str, list[tuple[xr.DataArray, xr.DataArray | None]]] = {}
    root_attrs = None
    for file_path in recording_files(path):
        with open_file(file_path) as f:
            if root_attrs is None:
                root_attrs = {k: (v.item() if hasattr(v, "item") else v)
                              for k, v in f.attrs.items()}
            for seg in _segments(f, views):
                has_event = seg.train_id != NO_EVENT
                if has_event.any():
                    parts.setdefault(seg.view, []).append(seg.dataarray(has_event))
                if not has_event.all():
                    no_event.setdefault(seg.view, []).append(seg.dataarray(~has_event))
    results: list[xr.DataArray] = []
    for view, pieces in no_event.items():
        # Like the views' variables: one per layout that cannot be joined
        # (a StepStacked view's results grow a step at a time).
        for k, (da, _) in enumerate(_combine(pieces)):
            name = view if k == 0 else f"{view}~{k}"
            da = da.drop_vars("train_id").rename({"train_id": f"{name}_result"})
            results.append(da.rename(f"{name}_results"))
    variables: list[xr.DataArray] = []
    fill: dict[str, object] = {}
    for view, pieces in parts.items():
        for k, (da, shapes) in enumerate(_combine(pieces)):
            name = view if k == 0 else f"{view}~{k}"
            keep = _last_unique(da["train_id"].values)
            variables.append(da[keep].rename(name))
            if da.dtype.kind == "U":
                fill[name] = ""
            elif da.dtype.kind == "O":  # bytes
                fill[name] = b""
            if shapes is not None:
                variables.append(shapes[keep].rename(f"{name}_shape"))
                fill[f"{name}_shape"] = 0
    if not variables and not results:
        ds = xr.Dataset(coords={"train_id": np.zeros(0, np.int64)})
    else:
        ds = xr.merge(_unique_dims(variables + results), join="outer",
                      compat="no_conflicts", fill_value=fill or xr.core.dtypes.NA,
                      combine_attrs="override")
    ds.attrs = root_attrs or {}  # (not the first view's)
    return ds


def _unique_dims(arrays: list[xr.DataArray]) -> list[xr.DataArray]:
    """Rename a dimension that two views use with other sizes or coordinates
    to ``<view>.<dim>`` in the later view, so that the views can share a
    Dataset (only ``train_id`` is aligned)."""
    seen: dict[str, xr.DataArray] = {}
    out = []
    for da in arrays:
        renames = {}
        for dim in da.dims:
            if dim == "train_id":
                continue
            mine = da[dim] if dim in da.coords else da.sizes[dim]
            other = seen.get(dim)
            if other is None:
                seen[dim] = mine
            elif not (other.equals(mine) if isinstance(other, xr.DataArray)
                      and isinstance(mine, xr.DataArray) else
                      (not isinstance(other, xr.DataArray) and other == mine)):
                renames[dim] = f"{da.name}.{dim}"
        out.append(da.rename(renames) if renames else da)
    return out


def _joinable(a: np.dtype, b: np.dtype) -> bool:
    """Numbers join numbers (numpy promotes them), text text, bytes bytes;
    anything else would make an array of mixed objects."""
    numeric = "biufc"
    return (a.kind in numeric and b.kind in numeric) or a.kind == b.kind


def _combine(pieces):
    """Concatenate a view's segments where their layouts allow; the rest
    stay separate (one variable each)."""
    out = []
    for da, shapes in pieces:
        if out:
            prev, prev_shapes = out[-1]
            if (shapes is None) == (prev_shapes is None) and prev.dims == da.dims \
                    and _joinable(prev.dtype, da.dtype):
                try:
                    merged = xr.concat([prev, da], dim="train_id", coords="different",
                                       compat="equals", join="exact",
                                       combine_attrs="override")
                    merged_shapes = None if shapes is None else xr.concat(
                        [prev_shapes, shapes], dim="train_id")
                    out[-1] = (merged, merged_shapes)
                    continue
                except (ValueError, TypeError):
                    pass
        out.append((da, shapes))
    return out


# -- result by result, for replay ---------------------------------------------------

def _table(f: h5py.File, name: str) -> dict[str, np.ndarray]:
    group = f[f"{META}/{name}"]
    n = min(group[c].shape[0] for c in META_TABLES[name])
    return {c: (group[c].asstr()[:n] if t == "str" else group[c][:n])
            for c, t in META_TABLES[name].items()}


def view_info(f: h5py.File) -> dict[str, tuple]:
    """The latest (output, stage, hidden, label) of each view in a file."""
    t = _table(f, "views")
    info = {}
    for i in range(len(t["name"])):
        info[str(t["name"][i])] = (int(t["output"][i]), int(t["stage"][i]),
                                   bool(t["hidden"][i]), str(t["label"][i]))
    return info


def iter_messages(f: h5py.File, views=None) -> Iterator[tuple[float, str, dict]]:
    """``(time, topic, payload)`` of every recorded message in `f`, in the
    order they arrived; arrays are read from the file as they are yielded."""
    order = []  # (time, tie, kind, where)
    segs = _segments(f, views)
    for s, seg in enumerate(segs):
        order.extend((seg.time[i], 1, s, i) for i in range(seg.n))
    tables = {name: _table(f, name) for name in ("contexts", "params", "marks")}
    for t, name in enumerate(("contexts", "params", "marks")):
        order.extend((tables[name]["time"][i], 0, -1 - t, i)
                     for i in range(len(tables[name]["time"])))
    order.sort(key=lambda o: (o[0], o[1]))
    for when, _, s, i in order:
        if s >= 0:
            seg = segs[s]
            tid = int(seg.train_id[i])
            payload = {"data": seg.value(i), "event_id": None if tid == NO_EVENT else tid}
            version = int(seg.group["version"][i])
            if version >= 0:
                payload["version"] = version
            run = int(seg.group["run"][i])
            if run != RUN_ABSENT:
                payload["run"] = None if run == RUN_NONE else run
            yield float(when), f"view#{seg.view}", payload
            continue
        name = ("contexts", "params", "marks")[-1 - s]
        row = {c: v[i] for c, v in tables[name].items()}
        yield float(when), *_meta_message(name, row)


def _meta_message(name: str, row: dict) -> tuple[str, dict]:
    if name == "contexts":
        return "context", {"version": int(row["version"]), "path": str(row["path"]),
                           "source": str(row["source"]),
                           "parameters": json.loads(row["parameters"])}
    if name == "params":
        return "params", {"version": int(row["version"]),
                          "parameters": json.loads(row["parameters"])}
    run = int(row["run"])
    tid = int(row["train_id"])
    return "mark", {"kind": str(row["kind"]), "run": None if run < 0 else run,
                    "views": json.loads(row["views"]),
                    "event_id": None if tid == NO_EVENT else tid}

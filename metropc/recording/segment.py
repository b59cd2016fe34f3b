"""A segment: the results of one view that share a layout, in one HDF5 group.

``/views/<name>/<k>`` holds ``data`` (one row per result), ``shape`` (each
row's shape, for results with axes), the per-result columns of
:data:`~metropc.recording.layout.COLUMNS` and, for DataArrays,
``coords/<name>`` (once, or one row per result when they vary).  A view
starts a new segment when a result does not fit the current one (another
dtype that cannot be cast safely, another number of axes or dims, other
coordinates), so that nothing is ever converted in a way that loses
information.
"""

from __future__ import annotations

import json

import h5py
import numpy as np

from .columns import LARGE_ROW, Column
from .layout import COLUMNS, VIEWS, Layout, to_json


class Segment:
    """Results of view `view` in layout `layout`, group ``views/<view>/<index>``."""

    def __init__(self, view: str, index: int, layout: Layout, first_shape: tuple,
                 view_info: tuple | None = None):
        self.view = view
        self.index = index
        self.layout = layout
        self.group = f"{VIEWS}/{view}/{index}"
        self.view_info = view_info  # (output, stage, hidden, label) when known
        self.created = False
        kind = layout.kind
        dtype = {"string": "str", "bytes": "bytes"}.get(kind, layout.dtype)
        self.data = Column(f"{self.group}/data", dtype, first_shape, ragged=True)
        self.shape = (Column(f"{self.group}/shape", "<i8", (layout.ndim,))
                      if layout.ndim else None)
        self.meta = {name: Column(f"{self.group}/{name}", dtype)
                     for name, dtype in COLUMNS.items()}
        self.coords: dict[str, Column] = {}
        if layout.per_event_coords:
            for cname, (_, values, _) in layout.coords.items():
                if values.dtype.kind == "U":
                    continue  # text coordinates that vary are not recorded
                self.coords[cname] = Column(f"{self.group}/coords/{cname}",
                                            values.dtype.str, values.shape, ragged=True)
        self.rows = 0
        self.failed = False  # HDF5 refused its results: the view's next ones are skipped

    def fail(self) -> int:
        """Give up on this segment: drop what waits, take nothing more;
        returns how many results were dropped."""
        self.failed = True
        return self.drop_pending()

    def drop_pending(self) -> int:
        """Forget the results not written yet; how many they were."""
        for col in self.columns():
            col.pending = []
        # (train_id is written last: its rows are the results written whole)
        return self.rows - self.meta["train_id"].rows

    def bytes_ahead(self) -> int:
        """At most how many bytes of the disk the next :meth:`write` takes."""
        return 0 if self.failed else sum(col.bytes_ahead() for col in self.columns())

    def columns(self) -> list[Column]:
        """Every column, data first and train_id last (the order of writing:
        a reader that sees a train_id sees the row it belongs to)."""
        cols = [self.data] + ([self.shape] if self.shape else []) + list(self.coords.values())
        meta = [c for n, c in self.meta.items() if n != "train_id"]
        return cols + meta + [self.meta["train_id"]]

    def append(self, data, layout: Layout, meta: tuple) -> None:
        """Add one result; `meta` is (train_id, version, run, seq, time)."""
        large = getattr(data, "nbytes", 0) >= LARGE_ROW
        self.data.append(data, now=large and self.created)
        if self.shape is not None:
            self.shape.append(np.shape(data))
        for cname, col in self.coords.items():
            col.append(layout.coords[cname][1])
        for col, value in zip(self.meta.values(), meta, strict=True):
            col.append(value)
        self.rows += 1

    def create(self, h5: h5py.File) -> None:
        """Create the group and its datasets (the file is not in SWMR mode)."""
        layout = self.layout
        if self.group in h5:  # appending to a file that has this segment already
            raise ValueError(f"segment {self.group} exists")
        group = h5.require_group(self.group)
        group.attrs["view"] = self.view
        group.attrs["kind"] = layout.kind
        group.attrs["ndim"] = layout.ndim
        if layout.dtype:
            group.attrs["dtype"] = layout.dtype
        group.attrs["pytype"] = layout.pytype
        if self.view_info is not None:
            output, stage, hidden, label = self.view_info
            group.attrs["output"], group.attrs["stage"] = output, stage
            group.attrs["hidden"], group.attrs["label"] = hidden, label
        if layout.kind == "dataarray":
            group.attrs["dims"] = json.dumps(list(layout.dims))
            group.attrs["name"] = json.dumps(layout.name)
            group.attrs["attrs"] = to_json(layout.attrs)
            group.attrs["per_event_coords"] = layout.per_event_coords
            coords = group.require_group("coords")
            for cname, (cdims, values, cattrs) in layout.coords.items():
                if layout.per_event_coords:
                    continue  # columns, created below
                text = values.dtype.kind == "U"
                ds = coords.create_dataset(
                    cname, data=values.astype(object) if text else values,
                    dtype=h5py.string_dtype() if text else None)
                ds.attrs["dims"] = json.dumps(list(cdims))
                ds.attrs["attrs"] = to_json(cattrs)
        for col in self.columns():
            col.create(h5)
        for cname, col in self.coords.items():
            cdims, cattrs = layout.coords[cname][0], layout.coords[cname][2]
            col.ds.attrs["dims"] = json.dumps(list(cdims))
            col.ds.attrs["attrs"] = to_json(cattrs)
        self.created = True

    def bind(self, h5: h5py.File) -> None:
        for col in self.columns():
            col.bind(h5)

    def write(self) -> None:
        """Write pending rows, in :meth:`columns` order."""
        for col in self.columns():
            col.write()

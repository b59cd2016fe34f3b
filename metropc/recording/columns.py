"""Extendable HDF5 columns: one row per result, appended in blocks.

A :class:`Column` is one dataset that grows along axis 0.  Rows are kept in
memory until :meth:`Column.write` (the recorder calls it at least once a
second), so that a thousand scalars a second cost one HDF5 write instead of
a thousand; rows of 64 KiB or more are written as they come instead, from
the received message's own buffer, so that large arrays are never copied
nor held.

Rows may vary in shape: every axis after the first is extendable, a row
smaller than the dataset is padded (NaN for floats, 0 otherwise), and the
segment keeps each row's shape in its ``shape`` column.
"""

from __future__ import annotations

import logging

import h5py
import numpy as np

from .layout import fill_value

log = logging.getLogger(__name__)

#: Rows at least this large are written at once instead of buffered.
LARGE_ROW = 64 * 1024
#: Target size of one chunk (bytes), and the most rows a chunk holds.
CHUNK_BYTES = 1 << 20
CHUNK_ROWS = 16384
STR = h5py.string_dtype("utf-8")
BYTES = h5py.vlen_dtype(np.uint8)


def h5_dtype(dtype: str):
    """The HDF5 dtype of a column declared as `dtype` ("str", "bytes" or numpy)."""
    if dtype == "str":
        return STR
    if dtype == "bytes":
        return BYTES
    return np.dtype(dtype)


class Column:
    """One extendable dataset at `path`, created on first :meth:`create`.

    `row_shape` is the shape of the first row (the chunk shape follows it);
    `ragged` makes every axis after the first extendable.
    """

    def __init__(self, path: str, dtype: str, row_shape: tuple = (), *,
                 ragged: bool = False):
        self.path = path
        self.dtype = h5_dtype(dtype)
        self.vlen = dtype in ("str", "bytes")
        self.row_shape = tuple(row_shape)
        self.ragged = ragged and bool(row_shape)
        self.ds = None
        self.rows = 0          # rows in the file
        self.pending: list = []
        #: Bytes of one item in a chunk (a vlen item is a reference to the heap).
        self.item_bytes = 8 if self.vlen else self.dtype.itemsize
        row_bytes = max(1, int(np.prod(self.row_shape, dtype=np.int64))) * self.item_bytes
        #: Rows per chunk, and the bytes a new chunk takes on the disk.
        self.chunk_rows = max(1, min(CHUNK_ROWS, CHUNK_BYTES // row_bytes))
        self.chunk_bytes = self.chunk_rows * row_bytes

    def create(self, h5: h5py.File, start_rows: int = 0) -> None:
        """Create the dataset (in a file not in SWMR mode), or bind an existing one."""
        if self.path in h5:
            self.bind(h5)
            return
        rows = self.chunk_rows
        chunk_row = tuple(max(1, n) for n in self.row_shape)
        maxshape = (None,) + ((None,) * len(self.row_shape) if self.ragged
                              else self.row_shape)
        kwargs = {}
        if not self.vlen:
            kwargs["fillvalue"] = fill_value(self.dtype)
        self.ds = h5.create_dataset(self.path, shape=(start_rows,) + self.row_shape,
                                    maxshape=maxshape, chunks=(rows,) + chunk_row,
                                    dtype=self.dtype, **kwargs)
        self.rows = start_rows

    def bind(self, h5: h5py.File) -> None:
        """Take the dataset from a (re)opened file."""
        self.ds = h5[self.path]
        self.rows = self.ds.shape[0]
        chunks = self.ds.chunks
        if chunks:  # (a file appended to has the chunks it was made with)
            self.chunk_rows = chunks[0]
            self.chunk_bytes = int(np.prod(chunks, dtype=np.int64)) * self.item_bytes

    def bytes_ahead(self, rows: list | None = None) -> int:
        """At most how many bytes of the disk writing takes: of the pending
        rows, or of `rows` written after them; their data, and every chunk
        they start.

        Conservative on purpose: it decides when the recorder stops before
        the disk is full (see :mod:`metropc.recording.space`).
        """
        start = self.rows
        if rows is None:
            rows = self.pending
        else:
            start += len(self.pending)
        if not rows:
            return 0
        end = start + len(rows)
        chunks = _chunks_for(end, self.chunk_rows) - _chunks_for(start, self.chunk_rows)
        if len(rows) == 1 or self.vlen or self.row_shape:
            data = sum(_nbytes(r, self.dtype.itemsize) for r in rows)
        else:  # (a thousand scalars: no need to look at each)
            data = len(rows) * self.dtype.itemsize
        return data + chunks * self.chunk_bytes

    def append(self, value, *, now: bool = False) -> None:
        """Add one row; written at once if `now` (and the dataset exists)."""
        if now and self.ds is not None and not self.pending:
            self._write([value])
        else:
            self.pending.append(value)

    def write(self) -> None:
        """Write the pending rows."""
        if self.pending:
            rows, self.pending = self.pending, []
            self._write(rows)

    def _write(self, rows: list) -> None:
        ds, start, k = self.ds, self.rows, len(rows)
        if self.vlen:
            ds.resize((start + k,))
            if self.dtype is BYTES:
                arrays = [np.frombuffer(r, dtype=np.uint8) for r in rows]
                if len({len(r) for r in rows}) == 1:
                    # h5py takes k arrays of one length for a (k, n) block
                    # that does not fit a 1-D dataset: row by row then.
                    for i, a in enumerate(arrays):
                        ds[start + i] = a
                else:
                    block = np.empty(k, dtype=object)
                    for i, a in enumerate(arrays):
                        block[i] = a
                    ds[start:start + k] = block
            else:
                ds[start:start + k] = rows
        elif not self.row_shape and not self.ragged:
            ds.resize((start + k,))
            ds[start:start + k] = np.asarray(rows, dtype=self.dtype)
        else:
            shape = tuple(ds.shape[1:])
            grown = shape
            for r in rows:
                if np.shape(r) != shape:
                    grown = tuple(max(a, b) for a, b in zip(grown, np.shape(r)))
            if grown != shape and not self.ragged:
                raise ValueError(f"{self.path}: row shape {grown} != {shape}")
            ds.resize((start + k,) + grown)
            if k > 1 and all(np.shape(r) == grown for r in rows):
                ds[start:start + k] = np.stack(rows).astype(self.dtype, copy=False)
            else:
                for i, r in enumerate(rows):
                    r = np.asarray(r)
                    if r.dtype != self.dtype:
                        r = r.astype(self.dtype)
                    if r.shape == grown:
                        ds[start + i] = r
                    else:
                        ds[(start + i,) + tuple(slice(0, n) for n in r.shape)] = r
        self.rows = start + k


def _chunks_for(rows: int, chunk_rows: int) -> int:
    """Chunks that `rows` rows occupy."""
    return -(-rows // chunk_rows)


def _nbytes(row, itemsize: int) -> int:
    """Bytes of one row: an array's, a text's or bytes' length, or one item."""
    nbytes = getattr(row, "nbytes", None)
    if nbytes is not None:
        return int(nbytes)
    if isinstance(row, (str, bytes, bytearray, memoryview)):
        return len(row) + 16  # (and the heap's record of it)
    return itemsize * max(1, int(np.size(row)))

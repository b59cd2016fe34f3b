"""Histogram views: 1-D (vector) and 2-D (matrix) binning of kernel results.

Per event the values are binned with one vectorised pass (see
:meth:`BinnedAxis.indices`) and added to a persistent buffer with
:func:`numpy.bincount`; when only a few values meet many bins, the counts go
in with :func:`numpy.add.at` instead, so a scalar per event does not pay for
a full-size count array.  Results are DataArrays whose coordinates are the
bin centres; a matrix histogram is laid out ``(y, x)`` (rows are y, as
numpy and image displays expect).
"""

from __future__ import annotations

import logging
import math
import numbers

import numpy as np
import xarray as xr

from ..enums import ViewOutput, ViewStage
from ._util import AccumulatingView, check_int, drop_none_items, numeric_array
from .binning import CHUNK, BinnedAxis

__all__ = ["HistogramView", "VectorHistogramView", "MatrixHistogramView"]

log = logging.getLogger(__name__)

#: Input rate assumed by the bandwidth limit of matrix histograms (Hz).
ASSUMED_RATE = 10

#: Use np.add.at instead of bincount below this values-per-bin ratio.
_SPARSE_RATIO = 8

_SCALAR_TYPES = (numbers.Real, np.bool_, np.integer, np.floating)


def _view_name(args, kwargs):
    name = kwargs.get("name")
    if name is None and args and callable(args[0]):
        name = getattr(args[0], "__name__", None)
    return name or "HistogramView"


def _as_output(output):
    if output is None or isinstance(output, ViewOutput):
        return output
    try:
        return ViewOutput(output)
    except ValueError:
        return output


class HistogramView(AccumulatingView, stage=ViewStage.REDUCE):
    """Bins kernel results into a histogram; dispatches on the output type.

    ``HistogramView(kernel, output=ViewOutput.VECTOR, ...)`` returns a
    :class:`VectorHistogramView`, ``MATRIX`` (or ``IMAGE``) a
    :class:`MatrixHistogramView`; this is what ``View.Vector_Histogram`` and
    ``View.Matrix_Histogram`` construct.  Any other output type is an error,
    since there is no sensible way to show a histogram as a scalar.
    """

    BinnedAxis = BinnedAxis

    def __new__(cls, *args, **kwargs):
        target = cls
        if cls is HistogramView:
            output = _as_output(kwargs.get("output"))
            if output == ViewOutput.VECTOR:
                target = VectorHistogramView
            elif output == ViewOutput.MATRIX:
                target = MatrixHistogramView
            else:
                shown = getattr(output, "name", output)
                raise ValueError(
                    f"view '{_view_name(args, kwargs)}': a histogram needs output VECTOR "
                    "(View.Vector_Histogram) or MATRIX/IMAGE (View.Matrix_Histogram), "
                    f"got {shown}")
        return super().__new__(target)

    def _setup_common(self, dtype, count_clipped, output_every, clear_every, allowed):
        if not (self.output == allowed or self.output == ViewOutput.COMPUTE):
            raise ValueError(f"view '{self.name}': {type(self).__name__} produces "
                             f"{allowed.name} output, not {self.output.name}")
        try:
            self.dtype = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"view '{self.name}': dtype={dtype!r} is not a data type") from None
        if self.dtype.kind not in "iuf":
            raise TypeError(f"view '{self.name}': dtype must be an integer or float "
                            f"type for counting, got {self.dtype}")
        self.count_clipped = bool(count_clipped)
        self.output_every = check_int(self.name, "output_every", output_every, 1)
        self.clear_every = check_int(self.name, "clear_every", clear_every, 1, allow_none=True)
        self._events = 0
        #: Values that fell outside the axes since the last clear (whether
        #: or not `count_clipped` put them into the outermost bins).
        self.clipped = 0

    def process(self, data):
        added = self._add_event(data)
        if not added:
            return None
        output_due, clear_due = self._event_counted()
        out = self.result if output_due else None
        if clear_due:
            self._clear()
        return out

    def reset(self):
        """Forget all counts, restore the axes and restart the cadence."""
        self._clear()
        self._events = 0


class VectorHistogramView(HistogramView, output=ViewOutput.VECTOR):
    """Bins 1-D data (every element of what the kernel returns) into a histogram.

    Accepts a single number, an array of any shape (all its elements are
    binned), a DataArray, or any iterable or generator of numbers or arrays.
    The ``bin_*`` arguments are those of :class:`BinnedAxis`.
    """

    def __init__(self, *args, bin_step=None, bin_min=None, bin_max=None, bin_count=None,
                 bin_limit=50000, bin_margin=1, dtype=np.float64, dim_label="bin",
                 count_clipped=False, output_every=10, clear_every=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._setup_common(dtype, count_clipped, output_every, clear_every, ViewOutput.VECTOR)
        self.axis = BinnedAxis(bin_step, bin_min, bin_max, bin_count, bin_limit,
                               bin_margin=bin_margin, owner=self.name)
        self.dim_label = str(dim_label)
        self._hist = np.zeros(self.axis.count, self.dtype)
        self._template = None

    @property
    def result(self):
        """The counts so far: DataArray along `dim_label`, coords = bin centres."""
        if self._template is None or self._template.shape != self._hist.shape:
            self._template = xr.DataArray(self._hist.copy(), dims=(self.dim_label,),
                                          coords={self.dim_label: self.axis.centres})
            return self._template.copy(deep=False)
        # Reusing the coordinates of the last result is ~6x cheaper than
        # building the coordinate index again.
        return self._template.copy(deep=False, data=self._hist.copy())

    def _clear(self):
        self.axis.reset()
        self._hist = np.zeros(self.axis.count, self.dtype)
        self._template = None
        self.clipped = 0

    # -- input --------------------------------------------------------------
    def _values(self, data):
        """A float for one number, a 1-D array for many, None for nothing."""
        if isinstance(data, _SCALAR_TYPES):
            return float(data)
        if isinstance(data, (np.ndarray, xr.DataArray, str, bytes)) or not hasattr(data, "__iter__"):
            array = numeric_array(self.name, data)
        else:
            items = drop_none_items(data)
            if not items:
                return None
            try:
                array = numeric_array(self.name, items)
            except ValueError:  # ragged: arrays of different sizes
                array = np.concatenate([numeric_array(self.name, x).ravel() for x in items])
        if array.dtype.kind == "c":
            raise ValueError(f"view '{self.name}': complex values cannot be binned")
        array = array.reshape(-1)
        if array.size <= 1:
            return float(array[0]) if array.size else None
        return array

    def _add_event(self, data):
        values = self._values(data)
        if values is None:
            return False
        if isinstance(values, float):
            self._add_scalar(values)
        else:
            self._add_array(values)
        return True

    # -- counting -----------------------------------------------------------
    def _grow(self, added):
        lo, hi = added
        if lo or hi:
            new = np.zeros(self.axis.count, self.dtype)
            new[lo:lo + self._hist.size] = self._hist
            self._hist = new
            self._template = None

    def _add_scalar(self, value):
        if math.isnan(value):  # nothing to count
            return
        if self.axis.growing and math.isfinite(value):
            self._grow(self.axis.align_range(value, value))
        n = self.axis.count
        s = self.axis.index_of(value) if n else 0
        if s == 0 or s == n + 1:
            self.clipped += 1
            if not (self.count_clipped and n):
                return
            s = 1 if s == 0 else n
        self._hist[s - 1] += 1

    def _add_array(self, values):
        if values.dtype.kind == "f":
            if self.axis.growing:
                vmin, vmax = values.min(), values.max()
                if math.isnan(vmin):  # NaN present (min propagates it)
                    values = values[~np.isnan(values)]
                    if not values.size:
                        return
                    vmin, vmax = values.min(), values.max()
                if not (math.isfinite(vmin) and math.isfinite(vmax)):
                    finite = values[np.isfinite(values)]
                    vmin, vmax = ((finite.min(), finite.max()) if finite.size
                                  else (None, None))
            else:
                if np.isnan(values).any():
                    values = values[~np.isnan(values)]
                    if not values.size:
                        return
        elif self.axis.growing:
            vmin, vmax = values.min(), values.max()
        if self.axis.growing and vmin is not None:
            self._grow(self.axis.align_range(float(vmin), float(vmax)))
        n = self.axis.count
        if not n:
            self.clipped += values.size
            return
        if values.size * _SPARSE_RATIO < n:
            s = self.axis.indices(values)
            inside = (s > 0) & (s <= n)
            self.clipped += int(values.size - np.count_nonzero(inside))
            if self.count_clipped:
                np.clip(s, 1, n, out=s)
            else:
                s = s[inside]
            np.add.at(self._hist, s - 1, 1)
            return
        # Chunks big enough that the per-chunk bincount of n + 2 bins stays
        # a small part of the work.
        chunk = max(CHUNK, 4 * n)
        counts = None
        for _, s in self.axis.chunk_indices(values, chunk):
            part = np.bincount(s, minlength=n + 2)
            if counts is None:
                counts = part
            else:
                counts += part
        self.clipped += int(counts[0] + counts[n + 1])
        if self.count_clipped:
            counts[1] += counts[0]
            counts[n] += counts[n + 1]
        np.add(self._hist, counts[1:n + 1], out=self._hist, casting="unsafe")


class MatrixHistogramView(HistogramView, output=ViewOutput.MATRIX):
    """Bins 2-D points (x, y) into a matrix histogram laid out (y, x).

    Accepts a generator of points (two numbers per item), a tuple of two
    1-D arrays ``(xs, ys)``, an iterable of 2-number points, an (N, 2)
    array, or a single point ``(x, y)``.  The ``x_*``/``y_*`` arguments are
    those of :class:`BinnedAxis`.  `bandwidth_limit` (bytes/s, None to
    disable) raises `output_every` at construction if the largest matrix the
    axes allow, sent at an assumed 10 Hz input rate, would exceed it.
    """

    def __init__(self, *args, x_step=None, x_min=None, x_max=None, x_count=None,
                 x_limit=1000, x_label="x", y_step=None, y_min=None, y_max=None,
                 y_count=None, y_limit=1000, y_label="y", bandwidth_limit=10485760,
                 dtype=np.float64, count_clipped=False, output_every=10, clear_every=None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self._setup_common(dtype, count_clipped, output_every, clear_every, ViewOutput.MATRIX)
        self.x_axis = BinnedAxis(x_step, x_min, x_max, x_count, x_limit, owner=self.name)
        self.y_axis = BinnedAxis(y_step, y_min, y_max, y_count, y_limit, owner=self.name)
        self.x_label, self.y_label = str(x_label), str(y_label)
        if self.x_label == self.y_label:
            raise ValueError(f"view '{self.name}': x_label and y_label must differ, "
                             f"both are {self.x_label!r}")
        self.bandwidth_limit = bandwidth_limit
        self._apply_bandwidth_limit()
        self._hist = np.zeros((self.y_axis.count, self.x_axis.count), self.dtype)
        self._template = None

    def _apply_bandwidth_limit(self):
        """Raise `output_every` so the worst-case output rate fits the limit.

        Worst case: the largest matrix the axes can reach (the fixed count,
        or the limit of a growing axis) times the item size, sent every
        `output_every` events at 10 Hz.  Lowering the output rate keeps the
        resolution the context asked for, which is what the author chose.
        """
        limit = self.bandwidth_limit
        if limit is None:
            return
        if isinstance(limit, (bool, np.bool_)) or not isinstance(limit, numbers.Real) \
                or not limit > 0:
            raise ValueError(f"view '{self.name}': bandwidth_limit must be a positive "
                             f"number of bytes/s or None, got {limit!r}")
        nx = self.x_axis.limit if self.x_axis.growing else self.x_axis.count
        ny = self.y_axis.limit if self.y_axis.growing else self.y_axis.count
        per_output = nx * ny * self.dtype.itemsize
        needed = math.ceil(per_output * ASSUMED_RATE / limit)
        if needed > self.output_every:
            log.warning("view '%s': up to %dx%d bins of %s at 10 Hz every %d events "
                        "exceeds bandwidth_limit=%s B/s; outputting every %d events",
                        self.name, ny, nx, self.dtype, self.output_every, limit, needed)
            self.output_every = needed

    @property
    def result(self):
        """The counts so far: DataArray (y_label, x_label), coords = centres."""
        if self._template is None or self._template.shape != self._hist.shape:
            self._template = xr.DataArray(
                self._hist.copy(), dims=(self.y_label, self.x_label),
                coords={self.y_label: self.y_axis.centres, self.x_label: self.x_axis.centres})
            return self._template.copy(deep=False)
        return self._template.copy(deep=False, data=self._hist.copy())

    def _clear(self):
        self.x_axis.reset()
        self.y_axis.reset()
        self._hist = np.zeros((self.y_axis.count, self.x_axis.count), self.dtype)
        self._template = None
        self.clipped = 0

    # -- input --------------------------------------------------------------
    def _bad(self, what):
        return ValueError(f"view '{self.name}': a matrix histogram needs points: an (N, 2) "
                          "array, a tuple of two 1-D arrays (xs, ys), an iterable or "
                          f"generator of (x, y) pairs, or one (x, y) pair; got {what}")

    def _points(self, data):
        """(x, y) as two floats for one point, two 1-D arrays, or None."""
        if isinstance(data, tuple) and len(data) == 2:
            x = numeric_array(self.name, data[0], "x")
            y = numeric_array(self.name, data[1], "y")
            if x.ndim == 0 and y.ndim == 0:
                return self._check_kind(x.reshape(1), y.reshape(1))
            if x.ndim != 1 or y.ndim != 1:
                raise self._bad(f"a tuple of arrays of shapes {x.shape} and {y.shape}")
            if x.shape != y.shape:
                raise ValueError(f"view '{self.name}': x and y arrays differ in length "
                                 f"({x.size} and {y.size})")
            return self._check_kind(x, y)
        if isinstance(data, (*_SCALAR_TYPES, str, bytes)):
            raise self._bad(repr(data)[:40])
        if isinstance(data, (np.ndarray, xr.DataArray)) or not hasattr(data, "__iter__"):
            array = numeric_array(self.name, data)
        else:
            items = drop_none_items(data)
            if not items:
                return None
            try:
                array = numeric_array(self.name, items)
            except ValueError:
                raise self._bad("items that are not all (x, y) pairs") from None
        if array.ndim == 1 and array.shape == (2,):
            array = array.reshape(1, 2)
        if array.ndim != 2 or array.shape[1] != 2:
            raise self._bad(f"an array of shape {array.shape}")
        return self._check_kind(array[:, 0], array[:, 1])

    def _check_kind(self, x, y):
        if x.dtype.kind == "c" or y.dtype.kind == "c":
            raise ValueError(f"view '{self.name}': complex values cannot be binned")
        if not x.size:
            return None
        return x, y

    def _add_event(self, data):
        points = self._points(data)
        if points is None:
            return False
        x, y = points
        if x.dtype.kind == "f" or y.dtype.kind == "f":
            bad = np.isnan(x) | np.isnan(y)
            if bad.any():
                keep = ~bad
                x, y = x[keep], y[keep]
                if not x.size:
                    return True
        added_x = self._align(self.x_axis, x)
        added_y = self._align(self.y_axis, y)
        if any(added_x) or any(added_y):
            new = np.zeros((self.y_axis.count, self.x_axis.count), self.dtype)
            ny, nx = self._hist.shape
            new[added_y[0]:added_y[0] + ny, added_x[0]:added_x[0] + nx] = self._hist
            self._hist = new
            self._template = None
        self._count(x, y)
        return True

    @staticmethod
    def _align(axis, values):
        if not axis.growing:
            return 0, 0
        vmin, vmax = values.min(), values.max()
        if not (math.isfinite(vmin) and math.isfinite(vmax)):
            values = values[np.isfinite(values)]
            if not values.size:
                return 0, 0
            vmin, vmax = values.min(), values.max()
        return axis.align_range(float(vmin), float(vmax))

    def _count(self, x, y):
        nx, ny = self.x_axis.count, self.y_axis.count
        npoints = x.size
        if not (nx and ny):
            self.clipped += npoints
            return
        if npoints == 1:
            sx = self.x_axis.index_of(float(x[0]))
            sy = self.y_axis.index_of(float(y[0]))
            if 0 < sx <= nx and 0 < sy <= ny:
                self._hist[sy - 1, sx - 1] += 1
                return
            self.clipped += 1
            if self.count_clipped:
                self._hist[min(max(sy, 1), ny) - 1, min(max(sx, 1), nx) - 1] += 1
            return
        if npoints * _SPARSE_RATIO < nx * ny:
            sx = self.x_axis.indices(x)
            sy = self.y_axis.indices(y)
            inside = (sx > 0) & (sx <= nx) & (sy > 0) & (sy <= ny)
            self.clipped += int(npoints - np.count_nonzero(inside))
            if self.count_clipped:
                np.clip(sx, 1, nx, out=sx)
                np.clip(sy, 1, ny, out=sy)
            else:
                sx, sy = sx[inside], sy[inside]
            np.add.at(self._hist, (sy - 1, sx - 1), 1)
            return
        # Flat index into the (ny + 2, nx + 2) table with the overflow bins
        # around the edge, computed chunk by chunk, then one bincount.
        flat = np.empty(npoints, np.intp)
        for (start, sx), (_, sy) in zip(self.x_axis.chunk_indices(x),
                                        self.y_axis.chunk_indices(y)):
            part = flat[start:start + len(sx)]
            np.multiply(sy, nx + 2, out=part)
            np.add(part, sx, out=part)
        counts = np.bincount(flat, minlength=(ny + 2) * (nx + 2)).reshape(ny + 2, nx + 2)
        del flat
        inner = counts[1:ny + 1, 1:nx + 1]
        self.clipped += int(npoints - inner.sum())
        if self.count_clipped:
            # Fold the overflow rows, then columns (corners land in corners).
            counts[1] += counts[0]
            counts[ny] += counts[ny + 1]
            counts[:, 1] += counts[:, 0]
            counts[:, nx] += counts[:, nx + 1]
        np.add(self._hist, inner, out=self._hist, casting="unsafe")

"""Average views: local (blocks of N), global (everything), moving (last N).

Sums are kept in float64 (complex128 for complex input) whatever the input
dtype, because averages over long runs of float32 or integer data lose
precision or overflow otherwise; the result is ``sum / count`` in that type.
A result keeps the layout of the input: a DataArray input gives a DataArray
with the same dims, coords, attrs and name (minus the reduced axis); a plain
array gives a DataArray with dims ``dim_0, dim_1, ...`` and no coords; a plain
scalar gives a NumPy float.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np
import xarray as xr

from ..enums import ViewStage
from ._util import (
    AccumulatingView,
    Layout,
    check_int,
    drop_none_items,
    is_multi,
    numeric_array,
    resolve_output_every,
)

__all__ = ["LocalAverageView", "GlobalAverageView", "MovingAverageView", "Mean",
           "value_batches"]

log = logging.getLogger(__name__)

#: Re-add the moving window from scratch every this many windows, which
#: bounds the rounding drift of the running sum at an amortised cost of
#: 1/64 of an addition per value.
_RESUM_WINDOWS = 64


class Batch(NamedTuple):
    """k values of one event: `array` holds them along `axis` (None: k == 1)."""

    array: np.ndarray
    axis: int | None
    k: int
    source: object

    @property
    def value_shape(self):
        shape = list(self.array.shape)
        if self.axis is not None:
            del shape[self.axis]
        return tuple(shape)

    @property
    def dims(self):
        """Dims of one value if the input was a DataArray, else None."""
        if not isinstance(self.source, xr.DataArray):
            return None
        dims = list(self.source.dims)
        if self.axis is not None:
            del dims[self.axis]
        return tuple(dims)

    def head(self, n):
        """The first `n` values of this batch (a view)."""
        index = [slice(None)] * self.array.ndim
        index[self.axis] = slice(0, n)
        return Batch(self.array[tuple(index)], self.axis, n, self.source)

    def stacked(self):
        """The values stacked on a new first axis (a view, no copy)."""
        if self.axis is None:
            return self.array[np.newaxis]
        return np.moveaxis(self.array, self.axis, 0)

    def layout(self):
        if isinstance(self.source, xr.DataArray):
            return Layout.of(self.source, self.array, drop_axis=self.axis)
        shape = self.value_shape
        return Layout(shape, [f"dim_{i}" for i in range(len(shape))])


def _one_batch(view_name, value, reduce_axis):
    array = numeric_array(view_name, value)
    if reduce_axis is None or array.ndim == 0:
        return Batch(array, None, 1, value)
    if not -array.ndim <= reduce_axis < array.ndim:
        raise ValueError(f"view '{view_name}': value of shape {array.shape} has no "
                         f"axis {reduce_axis} to reduce")
    axis = reduce_axis % array.ndim
    return Batch(array, axis, array.shape[axis], value)


def value_batches(view_name, data, reduce_axis=None):
    """The values of one event as batches, validated against each other.

    A generator (or other iterator) gives several values; numbers from it
    are stacked into one batch so that adding them is one numpy call.
    Anything else is one value (a list is an array, not several values),
    split along `reduce_axis` if given.
    """
    if not is_multi(data):
        batches = [_one_batch(view_name, data, reduce_axis)]
    else:
        items = drop_none_items(data)
        if items and reduce_axis is None and all(np.ndim(x) == 0 for x in items) \
                and not any(isinstance(x, xr.DataArray) for x in items):
            array = numeric_array(view_name, items)
            batches = [Batch(array, 0, array.size, None)]
        else:
            batches = [_one_batch(view_name, x, reduce_axis) for x in items]
    batches = [b for b in batches if b.k]
    for b in batches[1:]:
        if b.value_shape != batches[0].value_shape:
            raise ValueError(f"view '{view_name}': values of one event differ in shape "
                             f"({batches[0].value_shape} and {b.value_shape})")
    return batches


class Mean:
    """Running sum and count of values of one layout (shared by several views)."""

    def __init__(self, view_name):
        self.view_name = view_name
        self.clear()

    def clear(self, keep_buffer=True):
        if keep_buffer and getattr(self, "sum", None) is not None:
            # Kept for the next block: refilling an existing buffer avoids
            # the page faults of a fresh large allocation (LocalAverage).
            self._spare = self.sum
        else:
            self._spare = None
        self.sum = None
        self.count = 0
        self.layout = None

    def check(self, batches):
        """ValueError if `batches` do not fit what was accumulated; no changes."""
        if self.layout is not None and batches:
            self.layout.check(self.view_name, batches[0].value_shape, batches[0].dims)

    def add(self, batch):
        """Add a validated batch."""
        array = batch.array
        if self.sum is None:
            self.layout = batch.layout()
            dtype = np.complex128 if array.dtype.kind == "c" else np.float64
            spare = self._spare
            if spare is None or spare.shape != batch.value_shape or spare.dtype != dtype:
                spare = np.empty(batch.value_shape, dtype)
            self._spare = None
            if batch.axis is None:
                np.copyto(spare, array)
            else:
                np.add.reduce(array, axis=batch.axis, dtype=dtype, out=spare)
            self.sum = spare
            self.count = batch.k
            return
        if array.dtype.kind == "c" and self.sum.dtype.kind != "c":
            self.sum = self.sum.astype(np.complex128)
        if batch.axis is None:
            np.add(self.sum, array, out=self.sum)
        else:
            np.add(self.sum, np.add.reduce(array, axis=batch.axis, dtype=self.sum.dtype),
                   out=self.sum)
        self.count += batch.k

    def mean(self):
        """The average so far in the input's layout, or None if empty."""
        if not self.count:
            return None
        return self.layout.wrap(self.sum / self.count)


class _AverageView(AccumulatingView, abstract=True, stage=ViewStage.REDUCE):
    """Shared set-up of the averages: the accumulator and `reduce_axis`."""

    def _init_mean(self, reduce_axis):
        self.reduce_axis = check_int(self.name, "reduce_axis", reduce_axis, -2**31,
                                     allow_none=True)
        self._mean = Mean(self.name)
        self._events = 0

    def _batches(self, data):
        batches = value_batches(self.name, data, self.reduce_axis)
        self._mean.check(batches)
        return batches

    @property
    def result(self):
        """The average of the values accumulated so far (None if none)."""
        return self._mean.mean()

    def reset(self):
        self._mean.clear(keep_buffer=False)
        self._events = 0


class LocalAverageView(_AverageView):
    """Averages blocks of N values: outputs each block's mean, then restarts.

    Input: numbers or arrays, one per event or several from a generator;
    with `reduce_axis` each slice along that axis is one value.  At most one
    result per event: values beyond the one completing a block are dropped.
    """

    def __init__(self, *args, N=10, reduce_axis=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.N = check_int(self.name, "N", N, 1)
        self._init_mean(reduce_axis)

    def process(self, data):
        batches = self._batches(data)
        if not batches:
            return None
        self._events += 1
        for batch in batches:
            need = self.N - self._mean.count
            if batch.k >= need:
                self._mean.add(batch if batch.k == need else batch.head(need))
                out = self._mean.mean()
                self._mean.clear()
                if batch.k > need or batch is not batches[-1]:
                    log.debug("view '%s': dropped values past a complete average", self.name)
                return out
            self._mean.add(batch)
        return None


class GlobalAverageView(_AverageView):
    """Averages everything since the start (or the last reset).

    Outputs the average so far every `output_every` events with input;
    `throttling` is the deprecated name of `output_every`.  Input as for
    :class:`LocalAverageView`.
    """

    def __init__(self, *args, output_every=10, throttling=None, reduce_axis=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.output_every = resolve_output_every(self.name, output_every, throttling, log)
        self._init_mean(reduce_axis)

    def process(self, data):
        batches = self._batches(data)
        if not batches:
            return None
        for batch in batches:
            self._mean.add(batch)
        output_due, _ = self._event_counted()
        return self._mean.mean() if output_due else None


class MovingAverageView(AccumulatingView, stage=ViewStage.REDUCE):
    """Average of the last N values, output every `output_every` events.

    Values live in a preallocated ring buffer of N slots next to a float64
    running sum, so an update costs one subtraction, one copy and one
    addition whatever N is.  The ring stores float32 for bool, 8/16-bit
    integer and float16/32 input (float64 for wider types, complex kept),
    which keeps large windows of detector images affordable.  `accumulating_input`: each input is a
    running total, and the differences between consecutive inputs are
    averaged.  `smooth_start`: before the window is full, divide by the
    number of values seen (True) or by N (False, the ramping-up signal of
    the original).
    """

    def __init__(self, *args, N=100, accumulating_input=False, smooth_start=True,
                 output_every=10, throttling=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.N = check_int(self.name, "N", N, 1)
        self.output_every = resolve_output_every(self.name, output_every, throttling, log)
        self.accumulating_input = bool(accumulating_input)
        self.smooth_start = bool(smooth_start)
        self.reset()

    def reset(self):
        self._ring = self._sum = self._prev = self.layout = None
        self._pos = self._filled = self._pushes = 0
        self._events = 0

    @property
    def result(self):
        """The average over the current window (None before any value)."""
        if not self._filled:
            return None
        divisor = self._filled if self.smooth_start else self.N
        return self.layout.wrap(self._sum / divisor)

    def process(self, data):
        batches = value_batches(self.name, data)
        if not batches:
            return None
        self._check(batches)
        for batch in batches:
            self._push(batch)
        output_due, _ = self._event_counted()
        return self.result if output_due else None

    def _check(self, batches):
        """ValueError if the event does not fit the window; changes nothing."""
        first = batches[0]
        if self.layout is not None:
            self.layout.check(self.name, first.value_shape, first.dims)
        ring_dtype = (self._ring.dtype if self._ring is not None else
                      self._prev.dtype if self._prev is not None else
                      self._ring_dtype(first.array.dtype))
        for b in batches:
            if not np.can_cast(b.array.dtype, ring_dtype, "same_kind"):
                raise ValueError(f"view '{self.name}': values of dtype {b.array.dtype} "
                                 f"cannot join a window of {ring_dtype} values")

    def _ring_dtype(self, dtype):
        if self.accumulating_input:
            return np.result_type(dtype, np.float64)
        return np.result_type(dtype, np.float32)

    def _push(self, batch):
        values = batch.stacked()
        if self.layout is None:
            self.layout = batch.layout()
        if self.accumulating_input:
            values = self._differences(values)
        if not len(values):
            return
        if self._ring is None:
            dtype = self._ring_dtype(values.dtype)
            self._ring = np.empty((self.N,) + values.shape[1:], dtype)
            self._sum = np.zeros(values.shape[1:], np.result_type(dtype, np.float64))
        if len(values) > self.N:
            values = values[-self.N:]
        k, first = len(values), min(len(values), self.N - self._pos)
        self._replace(self._pos, values[:first])
        if k > first:
            self._replace(0, values[first:])
        self._pos = (self._pos + k) % self.N
        self._pushes += k
        if self._pushes >= _RESUM_WINDOWS * self.N:
            self._pushes = 0
            np.sum(self._ring[:self._filled], axis=0, dtype=self._sum.dtype, out=self._sum)

    def _differences(self, values):
        """Differences of consecutive running totals (the first only primes)."""
        if self._prev is None:
            self._prev = np.array(values[0], dtype=self._ring_dtype(values.dtype))
            values = values[1:]
            if not len(values):
                return values
        if len(values) == 1:
            diff = np.subtract(values[0], self._prev, dtype=self._prev.dtype)[np.newaxis]
        else:
            diff = np.diff(values, axis=0, prepend=self._prev[np.newaxis]).astype(
                self._prev.dtype, copy=False)
        self._prev[...] = values[-1]
        return diff

    def _replace(self, i, values):
        """Write `values` into slots i.. and update the running sum."""
        j = i + len(values)
        ring, total = self._ring, self._sum
        if self._filled == self.N:
            if j - i == 1:
                np.subtract(total, ring[i], out=total)
            else:
                np.subtract(total, ring[i:j].sum(axis=0, dtype=total.dtype), out=total)
        ring[i:j] = values
        # Add what the ring holds (after its cast), so that the later
        # subtraction removes exactly what was added.
        if j - i == 1:
            np.add(total, ring[i], out=total)
        else:
            np.add(total, ring[i:j].sum(axis=0, dtype=total.dtype), out=total)
        self._filled = max(self._filled, j)

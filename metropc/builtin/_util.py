"""Pieces every builtin view shares: the accumulating base class, argument
checks, input normalisation and the DataArray layout of results.

Kept apart from the views so that each view module only holds what is
particular to it, and so that every builtin reports bad input with the same
wording (``view 'name': ...``).
"""

from __future__ import annotations

import operator
import types
from collections.abc import Iterable

import numpy as np
import xarray as xr

from ..view import View

__all__ = ["AccumulatingView", "Layout", "NUMERIC_KINDS", "check_int",
           "drop_none_items", "is_multi", "numeric_array", "resolve_output_every"]

#: dtype kinds accepted as numbers: bool, signed, unsigned, float, complex.
NUMERIC_KINDS = "biufc"


def check_int(view_name, arg, value, minimum, allow_none=False):
    """`value` as a Python int >= `minimum`; TypeError/ValueError naming the view.

    Booleans are rejected although they are ints, because ``N=True`` is far
    more likely a mistake than a request for a window of one.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"view '{view_name}': {arg} must be an integer, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"view '{view_name}': {arg} must be an integer, "
                        f"got {value!r}") from None
    if value < minimum:
        raise ValueError(f"view '{view_name}': {arg} must be >= {minimum}, got {value}")
    return value


def drop_none_items(data):
    """The items of a generator or iterable, without the Nones.

    Kernels written as generators commonly ``yield None`` for "nothing
    here"; the base View drops those too.
    """
    return [item for item in data if item is not None]


def is_multi(data):
    """True if `data` is a generator/iterator: several values in one event."""
    return isinstance(data, (types.GeneratorType, map, filter, zip)) or (
        isinstance(data, Iterable) and not isinstance(
            data, (np.ndarray, xr.DataArray, str, bytes, list, tuple, dict, set))
        and hasattr(data, "__next__"))


def numeric_array(view_name, value, what="value"):
    """`value` as a numeric ndarray (no copy when it already is one).

    Raises ValueError naming the view for strings, objects, ragged lists and
    anything else numpy cannot turn into numbers.
    """
    if isinstance(value, xr.DataArray):
        value = value.data
    if isinstance(value, (str, bytes)):
        raise ValueError(f"view '{view_name}': {what} must be numeric, got a string {value!r:.40}")
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as e:
        raise ValueError(f"view '{view_name}': {what} cannot be read as a numeric "
                         f"array ({e})") from None
    if array.dtype.kind not in NUMERIC_KINDS:
        raise ValueError(f"view '{view_name}': {what} must be numeric, got "
                         f"{type(value).__name__} with dtype {array.dtype}")
    return array


class Layout:
    """Dimensions, coordinates, attrs and name of the values a view receives.

    Averages and stacks hand back the layout of their input: a DataArray
    input keeps its dims and coords; a plain array gets xarray's default
    dimension names ``dim_0, dim_1, ...`` and no coordinates.  The layout is
    taken from the first value and later values must have the same shape
    (and, for DataArrays, the same dims), because mixing them into one
    accumulator would be meaningless.
    """

    def __init__(self, shape, dims, coords=None, attrs=None, name=None, labelled=False):
        self.shape = tuple(shape)
        self.dims = tuple(dims)
        self.coords = coords
        self.attrs = attrs
        self.name = name
        #: True if the input was a DataArray (0-d results stay DataArrays).
        self.labelled = labelled
        self._template = None

    @classmethod
    def of(cls, value, array, drop_axis=None):
        """The layout of one input value; `drop_axis` is removed (reduce_axis)."""
        if isinstance(value, xr.DataArray):
            if drop_axis is not None:
                dim = value.dims[drop_axis]
                value = value.isel({dim: 0}, drop=True)
            return cls(value.shape, value.dims,
                       {k: c.variable.copy() for k, c in value.coords.items()},
                       dict(value.attrs), value.name, labelled=True)
        shape = list(array.shape)
        if drop_axis is not None:
            del shape[drop_axis]
        return cls(shape, [f"dim_{i}" for i in range(len(shape))])

    def check(self, view_name, shape, dims=None):
        """ValueError unless a value of `shape` (and `dims`, for DataArrays) fits."""
        if tuple(shape) != self.shape:
            raise ValueError(f"view '{view_name}': value of shape {tuple(shape)} does not "
                             f"match the shape {self.shape} accumulated so far")
        if self.labelled and dims is not None and tuple(dims) != self.dims:
            raise ValueError(f"view '{view_name}': value with dims {tuple(dims)} does not "
                             f"match the dims {self.dims} accumulated so far")

    def wrap(self, array, prepend=None):
        """A DataArray of `array` with this layout (`prepend`: (dim, coord) first).

        `array` must be a fresh array the caller hands over.  Without
        `prepend` the first result becomes a template whose coordinates are
        reused by later results, which is several times cheaper than
        building them again on every output.
        """
        if array.ndim == 0 and not self.labelled and prepend is None:
            return array[()]  # plain NumPy scalar for scalar inputs
        if prepend is None and self._template is not None \
                and self._template.shape == array.shape:
            return self._template.copy(deep=False, data=array)
        dims = self.dims
        coords = dict(self.coords or {})
        if prepend is not None:
            dim, coord = prepend
            dims = (dim,) + dims
            coords[dim] = coord
        result = xr.DataArray(array, dims=dims, coords=coords or None,
                              attrs=dict(self.attrs) if self.attrs else None, name=self.name)
        if prepend is None:
            self._template = result.copy(deep=False)
        return result


class AccumulatingView(View, abstract=True):
    """Base of the builtin views that keep state between events.

    Adds the notebook-friendly side: construct without a kernel, feed values
    with :meth:`add` (the same as an event reaching :meth:`process`) and read
    the accumulated state at any time with :attr:`result`, independent of
    the ``output_every`` cadence.  A new run clears the state (``reset_on``).
    """

    default_reset_on = "run"

    def add(self, data):
        """Feed `data` as if a kernel had returned it for one event; returns self.

        Returning the view (rather than the per-event output) lets notebook
        code chain ``h.add(values).result``.
        """
        if data is not None:
            self.process(data)
        return self

    @property
    def result(self):
        """The current accumulated result (a fresh object), or None if empty."""
        raise NotImplementedError

    def _event_counted(self):
        """Advance the count of events with input; (output due, clear due)."""
        self._events += 1
        every = getattr(self, "output_every", None)
        clear = getattr(self, "clear_every", None)
        return (every is not None and self._events % every == 0,
                clear is not None and self._events % clear == 0)


def resolve_output_every(view_name, output_every, throttling, logger):
    """``output_every`` after applying the deprecated ``throttling`` alias."""
    if throttling is not None:
        import warnings

        warnings.warn(f"view '{view_name}': throttling= is deprecated, use output_every=",
                      DeprecationWarning, stacklevel=4)
        logger.info("view '%s': using deprecated throttling=%r as output_every",
                    view_name, throttling)
        output_every = throttling
    return check_int(view_name, "output_every", output_every, 1)

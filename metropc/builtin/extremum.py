"""Extremum view: keeps the result whose comparison value is most extreme."""

from __future__ import annotations

import logging

import numpy as np
import xarray as xr

from ..enums import ViewStage
from ._util import AccumulatingView, drop_none_items

__all__ = ["ExtremumView"]

log = logging.getLogger(__name__)

_REQUIRED = object()


class ExtremumView(AccumulatingView, stage=ViewStage.REDUCE):
    """Outputs a result whenever its comparison value beats the extremum so far.

    Each input is a pair ``(result, comparison_value)``; a pair becomes the
    new extremum if it is the first one or ``op(comparison_value,
    previous_comparison_value)`` is true (``operator.gt`` keeps the largest,
    ``operator.lt`` the smallest).  Accepts one pair (a 2-tuple), or any
    number of pairs from a generator, list or other iterable; of several new
    extrema in one event the last one is output.  Events without a new
    extremum give no output.
    """

    def __init__(self, *args, op=_REQUIRED, **kwargs):
        super().__init__(*args, **kwargs)
        if op is _REQUIRED or op is None:
            raise TypeError(f"view '{self.name}': ExtremumView needs op=, a comparison "
                            "of two values such as operator.gt")
        if not callable(op):
            raise TypeError(f"view '{self.name}': op must be callable, got {op!r}")
        self.op = op
        self.reset()

    def reset(self):
        self._best = None

    @property
    def result(self):
        """The result of the current extremum (None before any input)."""
        return None if self._best is None else self._best[0]

    @property
    def comparison_value(self):
        """The comparison value of the current extremum (None before any input)."""
        return None if self._best is None else self._best[1]

    def _pairs(self, data):
        if isinstance(data, tuple) and len(data) == 2:
            return [data]
        if isinstance(data, (str, bytes, dict, np.ndarray, xr.DataArray)) \
                or not hasattr(data, "__iter__"):
            raise ValueError(f"view '{self.name}': needs (result, comparison value) "
                             f"pairs, got {type(data).__name__}")
        pairs = drop_none_items(data)
        for pair in pairs:
            if isinstance(pair, (str, bytes, dict)) or not hasattr(pair, "__len__") \
                    or len(pair) != 2:
                raise ValueError(f"view '{self.name}': every item must be a "
                                 f"(result, comparison value) pair, got {pair!r:.60}")
        return pairs

    def process(self, data):
        pairs = self._pairs(data)
        best, changed = self._best, False
        for result, value in pairs:
            if best is not None:
                try:
                    better = bool(self.op(value, best[1]))
                except (TypeError, ValueError) as e:
                    raise ValueError(f"view '{self.name}': op({value!r:.40}, "
                                     f"{best[1]!r:.40}) failed: {e}") from None
                if not better:
                    continue
            best, changed = (result, value), True
        if not changed:
            return None
        self._best = best
        return best[0]

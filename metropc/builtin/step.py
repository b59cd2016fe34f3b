"""Step views: results per operator step (scan step) of an experiment.

Both run in the virtual STEP stage inside reduce.  :class:`StepAverageView`
accumulates every event of a step and gives the average at the boundary;
:class:`StepStackedView` has its kernel run only at the boundary (with the
latest inputs) and stacks those results along a new first axis.
"""

from __future__ import annotations

import logging

import numpy as np
import xarray as xr

from ..enums import ViewStage
from ._util import AccumulatingView, Layout, drop_none_items, is_multi, numeric_array
from .average import Mean, value_batches

__all__ = ["StepAverageView", "StepStackedView"]

log = logging.getLogger(__name__)


class StepAverageView(AccumulatingView, stage=ViewStage.STEP):
    """Average of all values during one operator step.

    Every event adds its value (numbers or arrays, several from a
    generator) and gives no output; :meth:`on_step` returns the step's
    average and starts the next step empty.  A step without values gives
    no result.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._mean = Mean(self.name)

    def process(self, data):
        batches = value_batches(self.name, data)
        self._mean.check(batches)
        for batch in batches:
            self._mean.add(batch)
        # No per-event output: the result comes from on_step().

    def on_step(self):
        out = self._mean.mean()
        self._mean.clear()
        return out

    @property
    def result(self):
        """The average of the current step so far (None if empty)."""
        return self._mean.mean()

    def reset(self):
        self._mean.clear(keep_buffer=False)


class StepStackedView(AccumulatingView, stage=ViewStage.STEP):
    """Stacks one result per step along a new first dimension `dim_label`.

    The engine runs the kernel at each step boundary and passes its result
    to :meth:`process`, which returns the stack so far: a DataArray
    ``(dim_label, *value dims)`` with the step number (0, 1, ...) as
    coordinate along `dim_label` and the coords of a DataArray input kept.
    All steps must give values of the same shape.
    """

    kernel_at_step = True

    def __init__(self, *args, dim_label="step", **kwargs):
        super().__init__(*args, **kwargs)
        self.dim_label = str(dim_label)
        self.reset()

    def reset(self):
        self._stack = None
        self._steps = 0
        self.layout = None

    def _value(self, data):
        if is_multi(data):
            data = drop_none_items(data)
        array = numeric_array(self.name, data)
        dims = tuple(data.dims) if isinstance(data, xr.DataArray) else None
        if self.layout is None:
            layout = Layout.of(data, array)
            if self.dim_label in layout.dims:
                raise ValueError(f"view '{self.name}': the value already has a dimension "
                                 f"'{self.dim_label}'; choose another dim_label")
        else:
            self.layout.check(self.name, array.shape, dims)
            layout = self.layout
        return array, layout

    def process(self, data):
        array, layout = self._value(data)
        self.layout = layout
        stack = self._stack
        if stack is None:
            stack = np.empty((4,) + array.shape, array.dtype)
        elif self._steps == len(stack) or not np.can_cast(array.dtype, stack.dtype, "same_kind"):
            grown = np.empty((max(len(stack), 2 * self._steps),) + array.shape,
                             np.result_type(stack.dtype, array.dtype))
            grown[:self._steps] = stack[:self._steps]
            stack = grown
        stack[self._steps] = array
        self._stack = stack
        self._steps += 1
        return self.result

    @property
    def result(self):
        """The stack of all steps so far (None before the first step)."""
        if not self._steps:
            return None
        n = self._steps
        return self.layout.wrap(self._stack[:n].copy(), prepend=(self.dim_label, np.arange(n)))

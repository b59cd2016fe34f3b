"""Builtin view implementations: histograms, averages, extremum, step views.

Context code reaches them through decorator symbols registered by
:mod:`metropc.viewdef` (``View.Vector_Histogram``, ``View.Scalar_GlobalAverage``,
``View.Image_StepStacked`` ...).  Each one also works on its own without a
kernel, which is handy in notebooks::

    h = VectorHistogramView(bin_min=0, bin_max=10, bin_count=10)
    h.add(values)
    h.result          # DataArray of the counts so far

See docs/builtin.md for arguments, input forms and result layouts.
"""

from __future__ import annotations

from .average import GlobalAverageView, LocalAverageView, MovingAverageView
from .binning import BinnedAxis
from .extremum import ExtremumView
from .histogram import HistogramView, MatrixHistogramView, VectorHistogramView
from .step import StepAverageView, StepStackedView

__all__ = [
    "HistogramView",
    "VectorHistogramView",
    "MatrixHistogramView",
    "BinnedAxis",
    "LocalAverageView",
    "GlobalAverageView",
    "MovingAverageView",
    "ExtremumView",
    "StepAverageView",
    "StepStackedView",
]

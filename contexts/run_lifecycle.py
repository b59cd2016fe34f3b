"""Run lifecycle: accumulating views that a reset, a new run or a step clear.

Used by tests/test_lifecycle.py and docs/pipeline.md ("Runs, resets and
pausing").  Feed it ``internal#train_id`` (any source does).
"""

import numpy as np


@View.Vector_Histogram(bin_min=0, bin_max=10, bin_count=10, output_every=1)
def tid_histogram(tid: 'internal#train_id'):
    """Train ids modulo 10, histogrammed (cleared at each run)."""
    return np.array([tid % 10])


@View.Scalar_GlobalAverage(output_every=1)
def mean_tid(tid: 'internal#train_id'):
    """Mean train id since the last reset (cleared at each run)."""
    return float(tid)


@View.Scalar_GlobalAverage(output_every=1, reset_on=None)
def mean_tid_forever(tid: 'internal#train_id'):
    """Mean train id over everything (only an explicit reset clears it)."""
    return float(tid)


@View.Scalar
def tid(tid: 'internal#train_id'):
    return tid

"""An expensive analysis beside the stream: the ASYNC stage.

A histogram of a simulated peak position accumulates in REDUCE at full
rate; ``peak_fit`` (stage ``async``) takes half a second per call on the
newest histogram, at most once per ``interval``, without slowing REDUCE.
Used by tests/test_async.py and docs/contexts.md ("The ASYNC stage").
"""

import time

import numpy as np


@View.Vector_Histogram(bin_min=0, bin_max=100, bin_count=100, output_every=1)
def position_histogram(tid: 'internal#train_id'):
    """Where the peak was found in each train (simulated from the train id)."""
    return np.array([50 + (tid % 7) - 3])


@View.Scalar(stage='async', interval=0.5)
def peak_fit(hist: 'view#position_histogram'):
    """The histogram's mean position, computed slowly (a stand-in for a fit)."""
    time.sleep(fit_seconds)
    counts = np.asarray(hist, dtype=float)
    if not counts.sum():
        return None
    increase_view_counts('fits_done', 1)  # a pure counter, in the index
    return float((counts * np.arange(len(counts))).sum() / counts.sum())


@View.Scalar(stage='async')
def fit_entries(hist: 'view#position_histogram', fit: 'view#peak_fit'):
    """How many entries the histogram had when fitted (async on async)."""
    return int(np.asarray(hist).sum())


parameters(fit_seconds=0.5)

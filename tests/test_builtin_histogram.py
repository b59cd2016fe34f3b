"""Histogram builtins: the binned axis, vector and matrix histograms.

Counts are compared with independent numpy computations (np.histogram and
np.histogram2d on the same edges; values equal to the last edge are left
out there because numpy closes its last bin and we do not).
"""

from __future__ import annotations

import logging
import math
import os

import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metropc.builtin import (
    BinnedAxis,
    HistogramView,
    MatrixHistogramView,
    VectorHistogramView,
)
from metropc.enums import ViewOutput, ViewStage

#: Raise METROPC_HYPOTHESIS_EXAMPLES for a longer hunt (the default keeps
#: the file well under a few seconds).
FAST = settings(max_examples=int(os.environ.get("METROPC_HYPOTHESIS_EXAMPLES", "60")),
                deadline=None, suppress_health_check=[HealthCheck.too_slow])

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


def reference_bins(edges, values):
    """Bin of each value by the rule edge[i] <= v < edge[i+1]; -1/n outside."""
    values = np.asarray(values, dtype=np.float64)
    idx = np.searchsorted(edges, values, side="right") - 1
    n = len(edges) - 1
    idx[values >= edges[-1]] = n
    idx[values < edges[0]] = -1
    return idx


# -- BinnedAxis modes ---------------------------------------------------------

def test_axis_min_max_count_computes_step_and_pins_last_edge():
    axis = BinnedAxis(None, 0.1, 0.7, 3, None)
    assert not axis.growing
    assert axis.count == 3
    assert axis.step == pytest.approx(0.2)
    edges = axis.edges
    assert edges[0] == 0.1 and edges[-1] == 0.7
    np.testing.assert_allclose(axis.centres, [0.2, 0.4, 0.6])


def test_axis_min_max_with_step_rounds_count_up():
    axis = BinnedAxis(3.0, 0, 10, None, None)
    assert axis.count == 4
    np.testing.assert_array_equal(axis.edges, [0, 3, 6, 9, 12])
    exact = BinnedAxis(None, 0, 10, None, None)  # step 1.0 by default
    assert exact.count == 10 and exact.edges[-1] == 10


def test_axis_count_with_one_end():
    up = BinnedAxis(0.5, 2.0, None, 4, None)
    np.testing.assert_array_equal(up.edges, [2.0, 2.5, 3.0, 3.5, 4.0])
    down = BinnedAxis(None, None, 5.0, 3, None)
    np.testing.assert_array_equal(down.edges, [2.0, 3.0, 4.0, 5.0])
    assert not up.growing and not down.growing


def test_axis_free_has_centres_on_multiples_of_step():
    axis = BinnedAxis(None, None, None, None, 100, bin_margin=0)
    assert axis.growing and axis.count == 0
    axis.align([3, 5])
    np.testing.assert_array_equal(axis.centres, [3, 4, 5])
    np.testing.assert_array_equal(axis.edges, [2.5, 3.5, 4.5, 5.5])
    axis = BinnedAxis(0.25, None, None, None, 100, bin_margin=0)
    axis.align([1.0])
    np.testing.assert_array_equal(axis.centres, [1.0])


def test_axis_fixed_end_never_moves():
    up = BinnedAxis(None, 10.0, None, None, 100, bin_margin=2)
    assert up.align([12.5, 3.0]) == (0, 5)  # bins 10..12 plus 2 margin bins
    assert up.edges[0] == 10.0 and up.count == 5
    down = BinnedAxis(2.0, None, 0.0, None, 100, bin_margin=1)
    down.align([-3.0, 7.0])
    np.testing.assert_array_equal(down.edges, [-6.0, -4.0, -2.0, 0.0])


def test_axis_margin_only_on_the_side_that_grows():
    axis = BinnedAxis(None, None, None, None, 1000, bin_margin=3)
    axis.align([0, 10])
    assert (axis.centres[0], axis.centres[-1]) == (-3, 13)
    assert axis.align([12.0]) == (0, 0)  # inside: no growth
    assert axis.align([20.0]) == (0, 10)  # up to 20 plus 3 margin
    assert axis.centres[0] == -3 and axis.centres[-1] == 23


def test_axis_limit_split_evenly_between_sides():
    axis = BinnedAxis(None, None, None, None, 10, bin_margin=0)
    axis.align([0])
    axis.align([-100, 100])
    assert axis.count == 10
    np.testing.assert_array_equal(axis.centres, np.arange(-5, 5))
    # A side that needs little leaves the rest to the other.
    axis = BinnedAxis(None, None, None, None, 10, bin_margin=0)
    axis.align([0])
    axis.align([-1, 100])
    np.testing.assert_array_equal(axis.centres, np.arange(-1, 9))


def test_axis_reset_restores_initial_range():
    axis = BinnedAxis(None, 0.0, None, None, 50)
    axis.align([20.0])
    assert axis.count > 0
    axis.reset()
    assert axis.count == 0


def test_histogram_exposes_binned_axis():
    assert HistogramView.BinnedAxis is BinnedAxis


@pytest.mark.parametrize("args, error, words", [
    ((None, None, None, 5, 10), ValueError, "bin_count=5 needs bin_min or bin_max"),
    ((1.0, None, None, 5, 10), ValueError, "needs bin_min or bin_max"),
    ((None, 0, 10, -1, None), ValueError, "bin_count must be >= 1"),
    ((None, 0, 10, 0, None), ValueError, "bin_count must be >= 1"),
    ((None, 5, 5, None, None), ValueError, "must be smaller"),
    ((None, 6, 5, 3, None), ValueError, "must be smaller"),
    ((0.0, None, None, None, 10), ValueError, "bin_step must be > 0"),
    ((-1.0, None, None, None, 10), ValueError, "bin_step must be > 0"),
    ((None, float("nan"), None, None, 10), ValueError, "finite"),
    ((None, None, float("inf"), None, 10), ValueError, "finite"),
    ((2.0, 0, 10, 10, None), ValueError, "disagrees"),
    ((None, 0, 10, 2.5, None), TypeError, "bin_count must be an integer"),
    ((None, "0", 10, None, None), TypeError, "bin_min must be a real number"),
    ((None, None, None, None, 0), ValueError, "bin_limit must be >= 1"),
    ((None, None, None, None, None), TypeError, "bin_limit must be an integer"),
])
def test_axis_bad_arguments(args, error, words):
    with pytest.raises(error, match=words):
        BinnedAxis(*args, owner="axisview")
    with pytest.raises(error, match="view 'axisview'"):
        BinnedAxis(*args, owner="axisview")


def test_axis_limit_ignored_when_fixed():
    assert BinnedAxis(None, 0, 1, 4, None).limit is None
    assert BinnedAxis(None, 0, 1, 4, -5).count == 4
    with pytest.raises(ValueError, match="bin_margin"):
        BinnedAxis(None, None, None, None, 10, bin_margin=-1)


# -- edge rule, property-based ------------------------------------------------

@FAST
@given(lo=finite, width=st.floats(1e-3, 1e4), count=st.integers(1, 200),
       values=st.lists(finite, min_size=1, max_size=60), pick_edges=st.booleans())
def test_edge_rule_fixed_axis(lo, width, count, values, pick_edges):
    hi = lo + width
    axis = BinnedAxis(None, lo, hi, count, None)
    edges = axis.edges
    assert edges[0] == lo and edges[-1] == hi
    values = np.array(values)
    if pick_edges:  # put values exactly on edges, where rounding bites
        values = np.concatenate([values, edges, np.nextafter(edges, -np.inf)])
    s = axis.indices(values)
    expected = reference_bins(edges, values) + 1
    np.testing.assert_array_equal(s, expected)
    assert [axis.index_of(float(v)) for v in values] == list(expected)
    # Same counts as numpy on these edges, apart from values on the last edge.
    inside = values[(values >= lo) & (values < hi)]
    np.testing.assert_array_equal(np.bincount(s, minlength=count + 2)[1:-1],
                                  np.histogram(inside, bins=edges)[0])


@FAST
@given(step=st.sampled_from([0.1, 0.3, 1.0, 2.5, 1e-3]),
       values=st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=50))
def test_edge_rule_float32_input_is_binned_by_its_exact_value(step, values):
    axis = BinnedAxis(step, None, None, None, 10**7)
    data = np.array(values, dtype=np.float32)
    axis.align(data)
    s = axis.indices(data)
    np.testing.assert_array_equal(s, reference_bins(axis.edges, data) + 1)


@FAST
@given(batches=st.lists(st.lists(st.floats(-500, 500), min_size=1, max_size=30),
                        min_size=1, max_size=6),
       step=st.sampled_from([0.5, 1.0, 3.0]), margin=st.integers(0, 4),
       anchor=st.sampled_from(["free", "min", "max"]))
def test_growth_keeps_counts_and_covers_data(batches, step, margin, anchor):
    kwargs = dict(bin_step=step, bin_margin=margin)
    if anchor == "min":
        kwargs["bin_min"] = -100.0
    elif anchor == "max":
        kwargs["bin_max"] = 100.0
    view = VectorHistogramView(output_every=1, **kwargs)
    seen = []
    for batch in batches:
        out = view.process(np.array(batch))
        seen.extend(batch)
        edges = view.axis.edges
        assert np.allclose(np.diff(edges), step)
        data = np.array(seen)
        if not edges.size:  # everything so far lay beyond the fixed end
            assert out.size == 0
            assert (data < -100).all() if anchor == "min" else (data >= 100).all()
            continue
        if anchor == "min":
            assert edges[0] == -100.0
            data = data[data >= -100.0]
        elif anchor == "max":
            assert edges[-1] == 100.0
            data = data[data < 100.0]
        if data.size:
            assert edges[0] <= data.min() and data.max() < edges[-1]
        expected = np.histogram(data, bins=edges)[0]
        np.testing.assert_array_equal(out.values, expected)
        assert out.values.sum() == data.size
    # Growth leaves at most `margin` empty bins beyond the data.
    if anchor == "free":
        low, top = reference_bins(edges, [min(seen), max(seen)])
        assert 0 <= view.axis.count - 1 - top <= margin
        assert 0 <= low <= margin


@FAST
@given(values=st.lists(st.floats(-1e4, 1e4), min_size=1, max_size=80),
       limit=st.integers(1, 40), count_clipped=st.booleans())
def test_growth_stops_at_limit_and_clips(values, limit, count_clipped):
    view = VectorHistogramView(bin_limit=limit, count_clipped=count_clipped, bin_margin=0)
    view.process(np.array(values))
    hist = view.result
    assert 1 <= hist.size <= limit
    edges = view.axis.edges
    data = np.array(values)
    inside = (data >= edges[0]) & (data < edges[-1])
    expected = np.histogram(data[inside], bins=edges)[0]
    if count_clipped:
        expected[0] += np.count_nonzero(data < edges[0])
        expected[-1] += np.count_nonzero(data >= edges[-1])
    np.testing.assert_array_equal(hist.values, expected)
    assert view.clipped == np.count_nonzero(~inside)


# -- VectorHistogramView -------------------------------------------------------

def test_vector_counts_match_numpy_and_layout():
    rng = np.random.default_rng(1)
    data = rng.normal(5, 3, 10_000)
    view = VectorHistogramView(bin_min=0, bin_max=10, bin_count=20, output_every=1,
                               dim_label="energy")
    out = view.process(data)
    assert isinstance(out, xr.DataArray) and out.dims == ("energy",)
    np.testing.assert_allclose(out.coords["energy"], np.arange(20) * 0.5 + 0.25)
    expected = np.histogram(data[data < 10], bins=20, range=(0, 10))[0]
    np.testing.assert_array_equal(out.values, expected)
    assert out.dtype == np.float64
    assert view.clipped == np.count_nonzero((data < 0) | (data >= 10))


def test_vector_bin_min_included_bin_max_excluded():
    view = VectorHistogramView(bin_min=0, bin_max=4, bin_count=4)
    view.add([0.0, 4.0, 3.9999999])
    np.testing.assert_array_equal(view.result.values, [1, 0, 0, 1])
    assert view.clipped == 1


def test_vector_count_clipped_puts_outliers_in_outer_bins():
    view = VectorHistogramView(bin_min=0, bin_max=3, bin_count=3, count_clipped=True)
    view.add(np.array([-5, -1, 0.5, 2.5, 3, 100, np.inf, -np.inf]))
    view.add(-7.0)  # scalar path
    np.testing.assert_array_equal(view.result.values, [5, 0, 4])
    assert view.clipped == 7


@pytest.mark.parametrize("data, expected", [
    (3, [0, 0, 0, 1, 0]),
    (np.float32(1.5), [0, 1, 0, 0, 0]),
    ([0, 1, 1, 4], [1, 2, 0, 0, 1]),
    ((0, 0), [2, 0, 0, 0, 0]),
    (np.array([[0, 1], [2, 3]]), [1, 1, 1, 1, 0]),
    (xr.DataArray([4.5, 4.5]), [0, 0, 0, 0, 2]),
    ((x for x in [1, None, 2]), [0, 1, 1, 0, 0]),
    ((np.full(n, n) for n in [1, 2, 3]), [0, 1, 2, 3, 0]),
    (np.array([True, False]), [1, 1, 0, 0, 0]),
    (np.array([np.nan, 2.0]), [0, 0, 1, 0, 0]),
])
def test_vector_input_forms(data, expected):
    view = VectorHistogramView(bin_min=0, bin_max=5, bin_count=5, output_every=1)
    np.testing.assert_array_equal(view.process(data).values, expected)


def test_vector_empty_input_is_no_event():
    view = VectorHistogramView(bin_min=0, bin_max=5, bin_count=5, output_every=2)
    assert view.process([]) is None
    assert view.process(x for x in ()) is None
    assert view.process(np.array([])) is None
    assert view.process(1) is None
    assert view.process(2) is not None  # the second event with input


def test_vector_output_and_clear_cadence():
    view = VectorHistogramView(bin_min=0, bin_max=10, bin_count=10, output_every=3,
                               clear_every=6)
    outs = [view.process(i) for i in range(12)]
    assert [o is not None for o in outs] == [False, False, True] * 4
    np.testing.assert_array_equal(outs[2].values, [1, 1, 1] + [0] * 7)
    np.testing.assert_array_equal(outs[5].values, [1] * 6 + [0] * 4)  # output, then clear
    np.testing.assert_array_equal(outs[8].values, [0] * 6 + [1, 1, 1, 0])
    np.testing.assert_array_equal(outs[11].values, [0] * 6 + [1] * 4)  # 10, 11 clipped


def test_vector_clear_restarts_growing_axis():
    view = VectorHistogramView(bin_margin=0, clear_every=2, output_every=1)
    view.process(100.0)
    view.process(101.0)
    out = view.process(-3.0)
    np.testing.assert_array_equal(out.coords["bin"], [-3.0])


@pytest.mark.parametrize("bad", [
    "abc", np.array(["a", "b"]), [1, "x"], object(), np.array([1 + 2j]),
    [np.array([1.0]), "x"],
])
def test_vector_bad_input_keeps_state(bad):
    view = VectorHistogramView(bin_min=0, bin_max=4, bin_count=4, output_every=1,
                               name="spectrum")
    view.process([1, 2])
    with pytest.raises(ValueError, match="view 'spectrum'"):
        view.process(bad)
    out = view.process(3)
    np.testing.assert_array_equal(out.values, [0, 1, 1, 1])


def test_vector_large_and_sparse_paths_agree():
    rng = np.random.default_rng(3)
    data = rng.uniform(-10, 1010, 300_000)
    dense = VectorHistogramView(bin_min=0, bin_max=1000, bin_count=1000)
    dense.add(data)  # one array: bincount in several chunks
    sparse = VectorHistogramView(bin_min=0, bin_max=1000, bin_count=1000)
    for part in np.array_split(data, 3000):  # ~100 values vs 1000 bins: np.add.at
        sparse.add(part)
    np.testing.assert_array_equal(dense.result.values, sparse.result.values)
    expected = np.histogram(data[data < 1000], bins=1000, range=(0, 1000))[0]
    np.testing.assert_array_equal(dense.result.values, expected)
    assert dense.clipped == sparse.clipped == np.count_nonzero((data < 0) | (data >= 1000))


def test_vector_dtype_and_results_are_independent_copies():
    view = VectorHistogramView(bin_min=0, bin_max=2, bin_count=2, dtype=np.uint32)
    view.add([0, 1, 1])
    first = view.result
    assert first.dtype == np.uint32
    first.values[:] = 99
    view.add(0)
    second = view.result
    np.testing.assert_array_equal(second.values, [2, 2])
    np.testing.assert_array_equal(first.values, [99, 99])
    assert view.add(1) is view  # chaining


def test_vector_reset():
    view = VectorHistogramView(output_every=2)
    view.process(5)
    view.reset()
    assert view.result.size == 0
    assert view.process(1) is None  # cadence restarted too


# -- MatrixHistogramView ----------------------------------------------------------

def make_matrix(**kwargs):
    kwargs = {**dict(x_min=0, x_max=4, x_count=4, y_min=0, y_max=3, y_count=3,
                     output_every=1), **kwargs}
    return MatrixHistogramView(**kwargs)


def test_matrix_layout_is_y_then_x_and_matches_histogram2d():
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 5, 5000)
    y = rng.uniform(-1, 4, 5000)
    view = make_matrix(x_label="tof", y_label="energy")
    out = view.process((x, y))
    assert out.dims == ("energy", "tof")
    assert out.shape == (3, 4)
    np.testing.assert_allclose(out.coords["tof"], [0.5, 1.5, 2.5, 3.5])
    np.testing.assert_allclose(out.coords["energy"], [0.5, 1.5, 2.5])
    keep = (x < 4) & (y < 3)
    ref = np.histogram2d(x[keep], y[keep], bins=[4, 3], range=[[0, 4], [0, 3]])[0]
    np.testing.assert_array_equal(out.values, ref.T)


@pytest.mark.parametrize("data", [
    np.array([[0.5, 0.5], [1.5, 2.5], [3.5, 2.5]]),
    (np.array([0.5, 1.5, 3.5]), np.array([0.5, 2.5, 2.5])),
    ([0.5, 1.5, 3.5], [0.5, 2.5, 2.5]),
    [(0.5, 0.5), (1.5, 2.5), (3.5, 2.5)],
    (p for p in [(0.5, 0.5), None, (1.5, 2.5), (3.5, 2.5)]),
    ((0.5, 0.5), (1.5, 2.5), (3.5, 2.5)),
    xr.DataArray([[0.5, 0.5], [1.5, 2.5], [3.5, 2.5]]),
])
def test_matrix_input_forms(data):
    out = make_matrix().process(data)
    expected = np.zeros((3, 4))
    expected[0, 0] = expected[2, 1] = expected[2, 3] = 1
    np.testing.assert_array_equal(out.values, expected)


@pytest.mark.parametrize("data", [(1.5, 2.5), np.array([1.5, 2.5]), [(1.5, 2.5)]])
def test_matrix_single_point(data):
    out = make_matrix().process(data)
    assert out.values.sum() == 1 and out.values[2, 1] == 1


@pytest.mark.parametrize("bad, words", [
    (np.zeros((5, 3)), r"shape \(5, 3\)"),
    (np.zeros((2, 5)), r"shape \(2, 5\)"),
    (np.zeros(3), r"shape \(3,\)"),
    ((np.zeros(3), np.zeros(4)), "differ in length"),
    ((np.zeros((2, 2)), np.zeros(2)), "tuple of arrays"),
    (1.0, "needs points"),
    ([(1, 2), (3, 4, 5)], "not all"),
    ("xy", "needs points"),
    ((np.array([1j]), np.array([1.0])), "complex"),
])
def test_matrix_bad_input_keeps_state(bad, words):
    view = make_matrix(name="map")
    view.process((1.5, 1.5))
    with pytest.raises(ValueError, match=words) as info:
        view.process(bad)
    assert "view 'map'" in str(info.value)
    out = view.process((1.5, 1.5))
    assert out.values[1, 1] == 2 and out.values.sum() == 2


def test_matrix_nan_points_dropped_and_clipped_folded():
    view = make_matrix(count_clipped=True)
    x = np.array([-1, 9, -1, 9, 1.5, np.nan, 1.5])
    y = np.array([-1, -1, 9, 9, 1.5, 1.0, np.inf])
    out = view.process((x, y))
    expected = np.zeros((3, 4))
    expected[0, 0] = expected[0, 3] = expected[2, 0] = expected[2, 3] = 1
    expected[1, 1] = 1
    expected[2, 1] = 1  # (1.5, inf) -> top row
    np.testing.assert_array_equal(out.values, expected)
    assert view.clipped == 5


def test_matrix_dense_and_sparse_paths_agree():
    rng = np.random.default_rng(5)
    pts = rng.uniform(-1, 11, (20_000, 2))
    kwargs = dict(x_min=0, x_max=10, x_count=10, y_min=0, y_max=10, y_count=20)
    for clipped in (False, True):
        dense = MatrixHistogramView(count_clipped=clipped, **kwargs)
        dense.add(pts)
        sparse = MatrixHistogramView(count_clipped=clipped, **kwargs)
        for part in np.array_split(pts, 1000):
            sparse.add(part)
        np.testing.assert_array_equal(dense.result.values, sparse.result.values)
        assert dense.clipped == sparse.clipped


def test_matrix_growing_axes():
    view = MatrixHistogramView(x_step=1.0, y_min=0.0, y_step=0.5, output_every=1,
                               bandwidth_limit=None)
    view.process((np.array([0.0, 2.0]), np.array([0.2, 1.2])))
    out = view.process((5.0, 0.1))
    assert out.coords["x"].values[0] <= 0 and out.coords["x"].values[-1] >= 5
    assert view.y_axis.edges[0] == 0.0
    x = np.array([0.0, 2.0, 5.0])
    y = np.array([0.2, 1.2, 0.1])
    ref = np.histogram2d(x, y, bins=[view.x_axis.edges, view.y_axis.edges])[0]
    np.testing.assert_array_equal(out.values, ref.T)


@FAST
@given(points=st.lists(st.tuples(st.floats(-50, 50), st.floats(-50, 50)), min_size=1,
                       max_size=40))
def test_matrix_matches_histogram2d_property(points):
    pts = np.array(points)
    view = MatrixHistogramView(x_min=-20, x_max=20, x_count=8, y_min=-30, y_max=10,
                               y_count=5, output_every=1)
    out = view.process(pts)
    keep = (pts[:, 0] >= -20) & (pts[:, 0] < 20) & (pts[:, 1] >= -30) & (pts[:, 1] < 10)
    ref = np.histogram2d(pts[keep, 0], pts[keep, 1],
                         bins=[view.x_axis.edges, view.y_axis.edges])[0]
    np.testing.assert_array_equal(out.values, ref.T)
    assert view.clipped == np.count_nonzero(~keep)


def test_matrix_bandwidth_default_fits():
    view = MatrixHistogramView()
    assert view.output_every == 10  # 1000 x 1000 x 8 B x 10 Hz / 10 = 8 MB/s


def test_matrix_bandwidth_raises_output_every(caplog):
    with caplog.at_level(logging.WARNING, logger="metropc.builtin.histogram"):
        view = MatrixHistogramView(x_min=0, x_max=2000, x_count=2000,
                                   y_min=0, y_max=2000, y_count=2000, name="big")
    # 2000*2000*8 B per output, 10 Hz -> every ceil(320e6 / 10 MiB) = 31 events.
    assert view.output_every == math.ceil(2000 * 2000 * 8 * 10 / 10485760) == 31
    assert "big" in caplog.text and "every 31 events" in caplog.text
    # 1144 x 1144 float64 fits 10 MiB/s, 1145 x 1145 does not (the reference's figure).
    assert MatrixHistogramView(x_limit=1144, y_limit=1144).output_every == 10
    assert MatrixHistogramView(x_limit=1145, y_limit=1145).output_every == 11
    # Smaller items, a looser limit or no limit at all leave it alone.
    assert MatrixHistogramView(x_limit=1500, y_limit=1500,
                               dtype=np.float32).output_every == 10
    assert MatrixHistogramView(x_limit=5000, y_limit=5000,
                               bandwidth_limit=None).output_every == 10
    assert MatrixHistogramView(x_limit=5000, y_limit=5000, output_every=1000,
                               ).output_every == 1000


def test_matrix_bandwidth_uses_fixed_count_not_limit():
    view = MatrixHistogramView(x_min=0, x_max=10, x_count=10, x_limit=10**6,
                               y_limit=10**6, bandwidth_limit=8 * 10 * 10**6)
    # 10 x 1e6 x 8 B, 10 Hz, every 10 events = 80 MB/s: exactly at the limit.
    assert view.output_every == 10


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(bandwidth_limit=0), ValueError, "bandwidth_limit"),
    (dict(bandwidth_limit="lots"), ValueError, "bandwidth_limit"),
    (dict(x_label="a", y_label="a"), ValueError, "must differ"),
    (dict(x_count=-3, x_min=0), ValueError, "bin_count must be >= 1"),
    (dict(y_min=3, y_max=1), ValueError, "must be smaller"),
    (dict(output_every=0), ValueError, "output_every must be >= 1"),
    (dict(clear_every=0), ValueError, "clear_every must be >= 1"),
    (dict(dtype=np.complex128), TypeError, "dtype"),
    (dict(dtype="nonsense"), TypeError, "dtype"),
    (dict(x_bins=3), TypeError, "x_bins"),
])
def test_matrix_bad_constructor_arguments(kwargs, error, words):
    with pytest.raises(error, match=words) as info:
        MatrixHistogramView(name="m2", **kwargs)
    if "x_bins" not in kwargs:
        assert "view 'm2'" in str(info.value)


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(bin_count=5), ValueError, "needs bin_min or bin_max"),
    (dict(bin_min=1, bin_max=1), ValueError, "must be smaller"),
    (dict(bin_step=-1), ValueError, "bin_step"),
    (dict(bin_limit=0), ValueError, "bin_limit"),
    (dict(bin_margin=-2), ValueError, "bin_margin"),
    (dict(output_every=True), TypeError, "output_every"),
    (dict(dtype=bool), TypeError, "dtype"),
])
def test_vector_bad_constructor_arguments(kwargs, error, words):
    with pytest.raises(error, match=words) as info:
        VectorHistogramView(name="h1", **kwargs)
    assert "view 'h1'" in str(info.value)


def test_unknown_keyword_is_type_error_from_base():
    with pytest.raises(TypeError, match="bins"):
        VectorHistogramView(bins=10)


# -- HistogramView dispatch -------------------------------------------------------

@pytest.mark.parametrize("output, cls", [
    (ViewOutput.VECTOR, VectorHistogramView),
    (ViewOutput.VECTOR_DISTRIBUTION, VectorHistogramView),
    (ViewOutput.MATRIX, MatrixHistogramView),
    (ViewOutput.IMAGE, MatrixHistogramView),
])
def test_dispatch_on_output(output, cls):
    view = HistogramView(output=output)
    assert type(view) is cls
    assert view.stage is ViewStage.REDUCE
    assert view.output == output


def test_dispatch_passes_arguments_and_kernel():
    def tof(x: "karabo#DEV.x"):  # noqa: F821, UP037 - a path, not a type
        return x

    view = HistogramView(tof, output=ViewOutput.VECTOR, bin_min=0, bin_max=3, bin_count=3)
    assert view.name == "tof" and view.kernel is tof and view.axis.count == 3
    assert [a.spec for a in view.args] == ["karabo#DEV.x"]


@pytest.mark.parametrize("output", [ViewOutput.SCALAR, ViewOutput.POINTS, None, "bogus"])
def test_dispatch_rejects_other_outputs(output):
    with pytest.raises(ValueError, match="view 'spec'.*VECTOR.*MATRIX"):
        HistogramView(output=output, name="spec")


def test_subclass_rejects_wrong_output():
    with pytest.raises(ValueError, match="VECTOR output"):
        VectorHistogramView(output=ViewOutput.MATRIX)
    assert MatrixHistogramView(output=ViewOutput.COMPUTE).output == ViewOutput.COMPUTE


def test_notebook_usage():
    h = VectorHistogramView(bin_min=0, bin_max=10, bin_count=10)
    for values in ([1, 2, 2], np.array([9.5])):
        h.add(values)
    np.testing.assert_array_equal(h.result.values, [0, 1, 2, 0, 0, 0, 0, 0, 0, 1])

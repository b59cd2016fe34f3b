"""Average builtins: local, global and moving averages, against plain numpy."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metropc.builtin import GlobalAverageView, LocalAverageView, MovingAverageView
from metropc.builtin import average as average_module
from metropc.enums import ViewStage

FAST = settings(max_examples=int(os.environ.get("METROPC_HYPOTHESIS_EXAMPLES", "60")),
                deadline=None, suppress_health_check=[HealthCheck.too_slow])

ALL = [LocalAverageView, GlobalAverageView, MovingAverageView]


def make(cls, n, **kwargs):
    """A view of `cls` that outputs the mean of its first n values at event n."""
    if cls is LocalAverageView:
        return cls(N=n, **kwargs)
    if cls is GlobalAverageView:
        return cls(output_every=n, **kwargs)
    return cls(N=n, output_every=n, **kwargs)


@pytest.fixture
def rng():
    return np.random.default_rng(7)


# -- shared behaviour -------------------------------------------------------------

@pytest.mark.parametrize("cls", ALL)
def test_stage_and_notebook_api(cls):
    view = cls()
    assert view.stage is ViewStage.REDUCE
    assert view.result is None
    assert view.add(2.0).add(4.0) is view
    assert view.result == 3.0


@pytest.mark.parametrize("cls", ALL)
def test_scalar_input_gives_float(cls):
    view = make(cls, 2)
    view.process(1)
    out = view.process(np.float32(2))
    assert type(out) is np.float64 and out == 1.5


@pytest.mark.parametrize("cls", ALL)
def test_dataarray_layout_kept(cls):
    data = xr.DataArray(np.arange(6.0).reshape(2, 3), dims=("y", "x"),
                        coords={"x": [10, 20, 30], "y": [1, 2], "t": 5},
                        attrs={"units": "keV"}, name="spectrum")
    view = make(cls, 2)
    view.process(data)
    out = view.process(data + 2)
    assert out.dims == ("y", "x") and out.name == "spectrum"
    assert out.attrs == {"units": "keV"}
    np.testing.assert_array_equal(out.coords["x"], [10, 20, 30])
    assert int(out.coords["t"]) == 5
    np.testing.assert_array_equal(out.values, data.values + 1)
    # Later results reuse the layout but never share data.
    view.process(data)
    again = view.process(data)
    if again is not None:
        again.values[:] = -1
        assert (out.values != -1).all()


@pytest.mark.parametrize("cls", ALL)
def test_ndarray_gets_default_dims(cls):
    view = make(cls, 1)
    out = view.process(np.ones((2, 3), np.float32))
    assert isinstance(out, xr.DataArray)
    assert out.dims == ("dim_0", "dim_1") and not out.coords
    assert out.dtype == np.float64


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("bad, words", [
    (np.ones(4), "shape"),
    ("text", "numeric"),
    (np.array(["a", "b", "c"]), "numeric"),
    ([[1, 2], [3]], "numeric"),
    (xr.DataArray(np.ones(3), dims=("z",)), "dims"),
])
def test_wrong_value_keeps_state(cls, bad, words):
    view = make(cls, 3, name="avg")
    view.process(xr.DataArray(np.zeros(3), dims=("x",)))
    with pytest.raises(ValueError, match=words) as info:
        view.process(bad)
    assert "view 'avg'" in str(info.value)
    view.process(xr.DataArray(np.full(3, 3.0), dims=("x",)))
    out = view.process(xr.DataArray(np.full(3, 6.0), dims=("x",)))
    np.testing.assert_allclose(out.values, 3.0)


@pytest.mark.parametrize("cls, kwargs, error, words", [
    (LocalAverageView, dict(N=0), ValueError, "N must be >= 1"),
    (LocalAverageView, dict(N=2.5), TypeError, "N must be an integer"),
    (LocalAverageView, dict(N=True), TypeError, "N must be an integer"),
    (LocalAverageView, dict(reduce_axis="0"), TypeError, "reduce_axis"),
    (GlobalAverageView, dict(output_every=0), ValueError, "output_every"),
    (GlobalAverageView, dict(output_every=None), TypeError, "output_every"),
    (MovingAverageView, dict(N=-1), ValueError, "N must be >= 1"),
    (MovingAverageView, dict(output_every=-5), ValueError, "output_every"),
])
def test_bad_constructor_arguments(cls, kwargs, error, words):
    with pytest.raises(error, match=words) as info:
        cls(name="badavg", **kwargs)
    assert "view 'badavg'" in str(info.value)


@pytest.mark.parametrize("cls", ALL)
def test_unknown_keyword_rejected_by_base(cls):
    with pytest.raises(TypeError, match="windw"):
        cls(windw=3)


def test_moving_average_has_no_reduce_axis():
    with pytest.raises(TypeError, match="reduce_axis"):
        MovingAverageView(reduce_axis=0)


# -- GlobalAverageView --------------------------------------------------------------

def test_global_matches_numpy_mean(rng):
    frames = rng.normal(size=(25, 4, 5)).astype(np.float32)
    view = GlobalAverageView(output_every=5)
    outs = [view.process(f) for f in frames]
    assert [i for i, o in enumerate(outs) if o is not None] == [4, 9, 14, 19, 24]
    for i in (4, 14, 24):
        np.testing.assert_allclose(outs[i].values,
                                   frames[:i + 1].astype(np.float64).mean(axis=0), rtol=1e-12)


def test_global_reduce_axis_and_generators(rng):
    pulses = [rng.normal(size=(n, 3)) for n in (2, 5, 1)]
    view = GlobalAverageView(output_every=1, reduce_axis=0)
    for p in pulses:
        out = view.process(p)
    np.testing.assert_allclose(out.values, np.concatenate(pulses).mean(axis=0))
    assert out.dims == ("dim_0",)
    # Negative axes, and a generator of arrays each reduced.
    view = GlobalAverageView(output_every=1, reduce_axis=-1)
    out = view.process(p.T for p in pulses)
    np.testing.assert_allclose(out.values, np.concatenate(pulses).mean(axis=0))
    # A generator of numbers adds each of them.
    view = GlobalAverageView(output_every=1)
    assert view.process(x for x in [1, None, 2, 6]) == 3.0
    assert view.process(iter([]) ) is None


def test_global_reduce_axis_on_dataarray_drops_that_dim():
    data = xr.DataArray(np.arange(6.0).reshape(3, 2), dims=("pulse", "x"),
                        coords={"pulse": [0, 1, 2], "x": [5, 6]})
    out = GlobalAverageView(output_every=1, reduce_axis=0).process(data)
    assert out.dims == ("x",) and "pulse" not in out.coords
    np.testing.assert_array_equal(out.values, [2.0, 3.0])
    with pytest.raises(ValueError, match="no axis 2"):
        GlobalAverageView(reduce_axis=2).process(np.ones((2, 2)))


def test_global_throttling_alias_is_deprecated():
    with pytest.warns(DeprecationWarning, match="throttling"):
        view = GlobalAverageView(throttling=2)
    assert view.output_every == 2
    assert [view.process(i) for i in range(4)] == [None, 0.5, None, 1.5]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert GlobalAverageView(throttling=None).output_every == 10


def test_global_complex_and_reset():
    view = GlobalAverageView(output_every=2)
    view.process(1.0)
    assert view.process(1j) == 0.5 + 0.5j
    view.reset()
    assert view.result is None
    assert view.process(4) is None and view.process(2) == 3.0


# -- LocalAverageView ---------------------------------------------------------------

def test_local_outputs_block_means(rng):
    values = rng.normal(size=30)
    view = LocalAverageView(N=10)
    outs = [view.process(v) for v in values]
    got = [o for o in outs if o is not None]
    assert [i for i, o in enumerate(outs) if o is not None] == [9, 19, 29]
    np.testing.assert_allclose(got, values.reshape(3, 10).mean(axis=1))


def test_local_drops_values_past_a_complete_block():
    view = LocalAverageView(N=3)
    assert view.process(v for v in [1, 2, 3, 100, 200]) == 2.0
    assert view.result is None  # the extra values did not start a new block
    assert view.process(4) is None
    assert view.process(v for v in [5, 6, 7]) == 5.0


def test_local_reduce_axis_splits_across_events():
    view = LocalAverageView(N=5, reduce_axis=0)
    assert view.process(np.array([[1.0], [2.0], [3.0]])) is None
    out = view.process(np.array([[4.0], [5.0], [99.0]]))
    np.testing.assert_array_equal(out.values, [3.0])
    assert view.result is None


def test_local_of_arrays_from_generator(rng):
    frames = rng.normal(size=(4, 2, 2))
    view = LocalAverageView(N=4)
    out = view.process(f for f in frames)
    np.testing.assert_allclose(out.values, frames.mean(axis=0))


# -- MovingAverageView --------------------------------------------------------------

@FAST
@given(values=st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=60),
       n=st.integers(1, 12), every=st.integers(1, 5), smooth=st.booleans())
def test_moving_matches_naive_window(values, n, every, smooth):
    view = MovingAverageView(N=n, output_every=every, smooth_start=smooth)
    for i, v in enumerate(values):
        out = view.process(v)
        if (i + 1) % every:
            assert out is None
            continue
        window = np.array(values[max(0, i + 1 - n):i + 1])
        expected = window.mean() if smooth else window.sum() / n
        assert out == pytest.approx(expected, rel=1e-9, abs=1e-6)


@FAST
@given(blocks=st.lists(st.integers(1, 9), min_size=1, max_size=8), n=st.integers(1, 7))
def test_moving_generators_push_several_values(blocks, n):
    view = MovingAverageView(N=n, output_every=1)
    seen = []
    for size in blocks:
        block = list(range(len(seen), len(seen) + size))
        seen.extend(block)
        out = view.process(x for x in block)
        assert out == pytest.approx(np.mean(seen[-n:]))


def test_moving_arrays_and_ring_dtype(rng):
    frames = rng.integers(0, 1000, size=(12, 3, 4)).astype(np.uint16)
    view = MovingAverageView(N=5, output_every=4)
    outs = [view.process(f) for f in frames]
    assert view._ring.dtype == np.float32 and view._ring.shape == (5, 3, 4)
    np.testing.assert_allclose(outs[11].values, frames[7:12].mean(axis=0))
    np.testing.assert_allclose(outs[3].values, frames[:4].mean(axis=0))
    with pytest.raises(ValueError, match="dtype complex"):
        view.process(frames[0] * 1j)
    np.testing.assert_allclose(view.result.values, frames[7:12].mean(axis=0))


def test_moving_accumulating_input_averages_differences():
    totals = np.cumsum([5.0, 1, 2, 3, 4, 10])
    view = MovingAverageView(N=3, output_every=1, accumulating_input=True)
    outs = [view.process(t) for t in totals]
    assert outs[0] is None  # the first total only primes the difference
    assert outs[1] == 1.0 and outs[2] == 1.5
    assert outs[5] == pytest.approx(np.mean([3, 4, 10]))
    # Unsigned counters may not wrap around in the differences.
    view = MovingAverageView(N=2, output_every=1, accumulating_input=True)
    view.process(np.array([10], np.uint8))
    out = view.process(np.array([4], np.uint8))
    np.testing.assert_array_equal(out.values, [-6.0])


def test_moving_accumulating_generator():
    view = MovingAverageView(N=10, output_every=1, accumulating_input=True)
    assert view.process(x for x in [1.0, 2.0, 4.0]) == 1.5
    assert view.process(x for x in [8.0]) == pytest.approx(7 / 3)


def test_moving_window_equal_to_cadence_is_local_average(rng):
    values = rng.normal(size=40)
    moving = MovingAverageView(N=8, output_every=8)
    local = LocalAverageView(N=8)
    for v in values:
        assert moving.process(v) == pytest.approx(local.process(v))


def test_moving_resum_removes_rounding_drift(monkeypatch):
    monkeypatch.setattr(average_module, "_RESUM_WINDOWS", 1)
    view = MovingAverageView(N=2, output_every=1)
    view.process(1e20)
    view.process(1.0)
    outs = [view.process(v) for v in (2.0, 3.0, 4.0)]
    assert outs[-1] == 3.5  # exact: the sum was rebuilt from the ring


def test_moving_throttling_and_reset():
    with pytest.warns(DeprecationWarning):
        view = MovingAverageView(N=2, throttling=3)
    assert view.output_every == 3
    view.process(1)
    view.reset()
    assert view.result is None and view._ring is None

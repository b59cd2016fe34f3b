"""Extremum and step builtins, and the public signatures of all builtins."""

from __future__ import annotations

import inspect
import operator

import numpy as np
import pytest
import xarray as xr

from metropc import builtin
from metropc.builtin import (
    ExtremumView,
    GlobalAverageView,
    HistogramView,
    LocalAverageView,
    MatrixHistogramView,
    MovingAverageView,
    StepAverageView,
    StepStackedView,
    VectorHistogramView,
)
from metropc.enums import ViewStage
from metropc.view import View

# -- signatures as in the reference --------------------------------------------------

REFERENCE_DEFAULTS = {
    VectorHistogramView: dict(bin_step=None, bin_min=None, bin_max=None, bin_count=None,
                              bin_limit=50000, bin_margin=1, dtype=np.float64,
                              dim_label="bin", count_clipped=False, output_every=10,
                              clear_every=None),
    MatrixHistogramView: dict(x_step=None, x_min=None, x_max=None, x_count=None,
                              x_limit=1000, x_label="x", y_step=None, y_min=None,
                              y_max=None, y_count=None, y_limit=1000, y_label="y",
                              bandwidth_limit=10485760, dtype=np.float64,
                              count_clipped=False, output_every=10, clear_every=None),
    LocalAverageView: dict(N=10, reduce_axis=None),
    GlobalAverageView: dict(output_every=10, throttling=None, reduce_axis=None),
    MovingAverageView: dict(N=100, accumulating_input=False, smooth_start=True,
                            output_every=10, throttling=None),
    StepStackedView: dict(dim_label="step"),
    StepAverageView: dict(),
}


@pytest.mark.parametrize("cls", list(REFERENCE_DEFAULTS))
def test_constructor_keywords_and_defaults(cls):
    params = inspect.signature(cls.__init__).parameters
    own = {name: p.default for name, p in params.items()
           if p.kind is p.KEYWORD_ONLY}
    assert own == REFERENCE_DEFAULTS[cls]
    kinds = [p.kind for p in params.values()]
    assert inspect.Parameter.VAR_POSITIONAL in kinds
    assert inspect.Parameter.VAR_KEYWORD in kinds


def test_exports_and_stages():
    assert set(builtin.__all__) >= {
        "HistogramView", "VectorHistogramView", "MatrixHistogramView", "LocalAverageView",
        "GlobalAverageView", "MovingAverageView", "ExtremumView", "StepAverageView",
        "StepStackedView"}
    for cls in (VectorHistogramView, MatrixHistogramView, LocalAverageView,
                GlobalAverageView, MovingAverageView, ExtremumView):
        assert issubclass(cls, View) and cls.default_stage is ViewStage.REDUCE
        assert not cls._abstract and not cls.kernel_at_step
    assert StepAverageView.default_stage is ViewStage.STEP
    assert StepStackedView.default_stage is ViewStage.STEP
    assert StepStackedView.kernel_at_step and not StepAverageView.kernel_at_step
    assert not HistogramView._abstract


def test_kernel_and_base_keywords_pass_through():
    def peak(trace: "view#trace"):  # noqa: UP037 - a path, not a type
        return trace.max()

    view = StepAverageView(peak, name="peak_avg", hidden=True, label="Peak")
    assert (view.kernel, view.name, view.hidden, view.label) == (peak, "peak_avg", True, "Peak")
    assert view.args[0].spec == "view#trace"


# -- ExtremumView ----------------------------------------------------------------------

def test_extremum_keeps_largest():
    view = ExtremumView(op=operator.gt)
    outs = [view.process((f"r{i}", v)) for i, v in enumerate([3, 1, 5, 5, 2, 8])]
    assert outs == ["r0", None, "r2", None, None, "r5"]
    assert view.result == "r5" and view.comparison_value == 8


def test_extremum_smallest_from_generator_and_list():
    view = ExtremumView(op=operator.lt)
    frames = {v: np.full(2, v) for v in (4, 2, 7, 1)}
    out = view.process((frames[v], v) for v in (4, 2, 7))
    np.testing.assert_array_equal(out, frames[2])
    assert view.process([(frames[7], 7), None]) is None
    np.testing.assert_array_equal(view.process([(frames[1], 1)]), frames[1])
    assert view.process(iter([])) is None


def test_extremum_with_custom_op_and_array_result():
    view = ExtremumView(op=lambda new, old: abs(new) > abs(old))
    assert view.process(("a", -3.0)) == "a"
    assert view.process(("b", 2.0)) is None
    assert view.process(("c", -4.0)) == "c"


@pytest.mark.parametrize("bad, words", [
    (5.0, "pairs"),
    ("ab", "pairs"),
    (np.array([1, 2]), "pairs"),
    ([(1, 2, 3)], "pair"),
    ([(1, 2), 7], "pair"),
    (("r", "not comparable"), "failed"),
    (("r", np.array([1, 2])), "failed"),
])
def test_extremum_bad_input_keeps_state(bad, words):
    view = ExtremumView(op=operator.gt, name="best")
    view.process(("keep", 1.0))
    with pytest.raises(ValueError, match=words) as info:
        view.process(bad)
    assert "view 'best'" in str(info.value)
    assert view.result == "keep" and view.comparison_value == 1.0


def test_extremum_needs_op():
    with pytest.raises(TypeError, match="view 'ex'.*needs op="):
        ExtremumView(name="ex")
    with pytest.raises(TypeError, match="op must be callable"):
        ExtremumView(op="max", name="ex")


def test_extremum_reset():
    view = ExtremumView(op=operator.gt)
    view.process(("a", 10))
    view.reset()
    assert view.result is None
    assert view.process(("b", 1)) == "b"


# -- StepAverageView ---------------------------------------------------------------------

def test_step_average_per_step():
    view = StepAverageView()
    assert [view.process(v) for v in (1.0, 2.0, 6.0)] == [None] * 3
    assert view.result == 3.0
    assert view.on_step() == 3.0
    assert view.on_step() is None  # an empty step gives nothing
    view.process(np.array([1.0, 3.0]))
    view.process(xr.DataArray([3.0, 5.0]))
    out = view.on_step()
    np.testing.assert_array_equal(out.values, [2.0, 4.0])


def test_step_average_generator_and_bad_value():
    view = StepAverageView(name="stepavg")
    view.process(x for x in (2, 4))
    with pytest.raises(ValueError, match="view 'stepavg'.*shape"):
        view.process(np.ones(3))
    assert view.on_step() == 3.0
    view.process(1)
    view.reset()
    assert view.on_step() is None


# -- StepStackedView --------------------------------------------------------------------

def test_step_stacked_stacks_along_new_first_dim():
    view = StepStackedView(dim_label="scan")
    spectra = [xr.DataArray(np.arange(3.0) + i, dims=("e",), coords={"e": [1, 2, 3]},
                            attrs={"units": "keV"}) for i in range(6)]
    for i, s in enumerate(spectra):
        out = view.process(s)
        assert out.dims == ("scan", "e") and out.shape == (i + 1, 3)
    np.testing.assert_array_equal(out.coords["scan"], np.arange(6))
    np.testing.assert_array_equal(out.coords["e"], [1, 2, 3])
    np.testing.assert_array_equal(out.values, np.stack([s.values for s in spectra]))
    assert out.attrs == {"units": "keV"}
    assert view.result.shape == (6, 3)


def test_step_stacked_scalars_and_dtype_upgrade():
    view = StepStackedView()
    view.process(1)
    out = view.process(2.5)
    assert out.dims == ("step",)
    np.testing.assert_array_equal(out.values, [1.0, 2.5])


def test_step_stacked_results_are_copies():
    view = StepStackedView()
    first = view.process(np.zeros(2))
    first.values[:] = 5
    second = view.process(np.ones(2))
    np.testing.assert_array_equal(second.values, [[0, 0], [1, 1]])


@pytest.mark.parametrize("bad, words", [
    (np.ones(3), "shape"),
    ("x", "numeric"),
    (xr.DataArray(np.ones(2), dims=("other",)), "dims"),
])
def test_step_stacked_bad_value_keeps_state(bad, words):
    view = StepStackedView(name="stack")
    view.process(xr.DataArray(np.zeros(2), dims=("e",)))
    with pytest.raises(ValueError, match=words) as info:
        view.process(bad)
    assert "view 'stack'" in str(info.value)
    out = view.process(xr.DataArray(np.ones(2), dims=("e",)))
    np.testing.assert_array_equal(out.values, [[0, 0], [1, 1]])


def test_step_stacked_dim_label_clash_and_reset():
    view = StepStackedView(dim_label="e")
    with pytest.raises(ValueError, match="already has a dimension 'e'"):
        view.process(xr.DataArray(np.zeros(2), dims=("e",)))
    view = StepStackedView()
    view.process(np.zeros(2))
    view.reset()
    assert view.result is None
    assert view.process(np.zeros(5)).shape == (1, 5)

"""Builtin views declared in context source and run through ``metropc.run``."""

from __future__ import annotations

import logging
import textwrap

import numpy as np
import pytest

import metropc
from metropc.builtin import (
    ExtremumView,
    GlobalAverageView,
    MatrixHistogramView,
    StepStackedView,
    VectorHistogramView,
)
from metropc.core import Context
from metropc.enums import ViewStage
from metropc.error import ViewDefError


def run(src, events):
    return list(metropc.run(textwrap.dedent(src), events))


def outputs(results, name):
    return [(eid, res[name]) for eid, res in results if name in res]


def test_vector_histogram_in_context():
    src = """
        @View.Vector_Histogram(bin_min=0, bin_max=10, bin_count=10, output_every=2)
        def tof(x: 'karabo#DET.hits'):
            return x
    """
    data = {1: [0.5, 1.5], 2: [1.5, 9.99, 10.0], 3: [3.0], 4: [np.nan, -1]}
    events = [{"internal#train_id": t, "karabo#DET.hits": np.array(v)}
              for t, v in data.items()]
    out = outputs(run(src, events), "tof")
    assert [eid for eid, _ in out] == [2, 4]
    np.testing.assert_array_equal(out[0][1].values, [1, 2, 0, 0, 0, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(out[1][1].values, [1, 2, 0, 1, 0, 0, 0, 0, 0, 1])
    assert out[1][1].dims == ("bin",)


def test_matrix_histogram_from_generator_kernel():
    src = """
        @View.Matrix_Histogram(x_min=0, x_max=2, x_count=2, y_min=0, y_max=3, y_count=3,
                               output_every=1)
        def correlation(a: 'karabo#A.x', b: 'karabo#B.y'):
            for x, y in zip(a, b):
                yield x, y
    """
    events = [{"internal#train_id": 1, "karabo#A.x": [0.5, 1.5, 1.5],
               "karabo#B.y": [0.5, 2.5, 2.5]}]
    (_, res), = run(src, events)
    np.testing.assert_array_equal(res["correlation"].values, [[1, 0], [0, 0], [0, 2]])
    assert res["correlation"].dims == ("y", "x")


def test_scalar_global_average_every_five_events():
    src = """
        @View.Scalar_GlobalAverage(output_every=5)
        def intensity(v: 'karabo#XGM.intensity'):
            return v
    """
    events = [{"internal#train_id": t, "karabo#XGM.intensity": float(t)}
              for t in range(1, 13)]
    out = outputs(run(src, events), "intensity")
    assert out == [(5, 3.0), (10, 5.5)]


def test_moving_and_local_average_in_context():
    src = """
        @View.Vector_MovingAverage(N=3, output_every=1)
        def smooth(s: 'karabo#SPEC.y'):
            return s

        @View.Scalar_LocalAverage(N=2)
        def pairs(s: 'karabo#SPEC.y'):
            return s.sum()
    """
    spectra = [np.full(4, float(t)) for t in range(5)]
    events = [{"internal#train_id": t, "karabo#SPEC.y": s} for t, s in enumerate(spectra)]
    results = run(src, events)
    smooth = outputs(results, "smooth")
    np.testing.assert_array_equal(smooth[-1][1].values, np.full(4, 3.0))
    assert outputs(results, "pairs") == [(1, 2.0), (3, 10.0)]


def test_bad_event_is_reported_and_state_survives(caplog):
    src = """
        @View.Scalar_GlobalAverage(output_every=3)
        def avg(v: 'karabo#DEV.v'):
            return v
    """
    events = [{"internal#train_id": 1, "karabo#DEV.v": np.ones(2)},
              {"internal#train_id": 2, "karabo#DEV.v": np.ones(3)},  # wrong shape
              {"internal#train_id": 3, "karabo#DEV.v": np.full(2, 3.0)},
              {"internal#train_id": 4, "karabo#DEV.v": np.full(2, 5.0)}]
    with caplog.at_level(logging.ERROR):
        out = outputs(run(src, events), "avg")
    assert "view 'avg'" in caplog.text and "shape" in caplog.text
    assert [eid for eid, _ in out] == [4]
    np.testing.assert_array_equal(out[0][1].values, [3.0, 3.0])


def test_extremum_in_context():
    src = """
        import operator

        @View.Vector_Extremum(op=operator.gt)
        def brightest(img: 'karabo#CAM.image'):
            return img, img.sum()
    """
    sums = [3, 1, 7, 2]
    events = [{"internal#train_id": t, "karabo#CAM.image": np.full(2, float(s))}
              for t, s in enumerate(sums)]
    out = outputs(run(src, events), "brightest")
    assert [eid for eid, _ in out] == [0, 2]
    np.testing.assert_array_equal(out[1][1], [7.0, 7.0])


def test_step_average_and_step_stacked():
    src = """
        @View.Scalar_StepAverage
        def step_mean(v: 'karabo#DEV.v'):
            return v

        @View.Vector_StepStacked(dim_label='scan')
        def stack(v: 'karabo#DEV.v'):
            return np.array([v, 2 * v])
    """
    events = []
    for step, values in enumerate([[1.0, 3.0], [10.0, 20.0, 30.0]]):
        events += [{"internal#train_id": 10 * step + i, "karabo#DEV.v": v}
                   for i, v in enumerate(values)]
        events.append(metropc.STEP)
    results = run(src, events)
    per_event = [res for eid, res in results if eid is not metropc.STEP]
    assert all("step_mean" not in r and "stack" not in r for r in per_event)
    steps = [res for eid, res in results if eid is metropc.STEP]
    assert [s["step_mean"] for s in steps] == [2.0, 20.0]
    final = steps[-1]["stack"]
    assert final.dims == ("scan", "dim_0")
    # The stacked kernel ran at each boundary on the latest input value.
    np.testing.assert_array_equal(final.values, [[3.0, 6.0], [30.0, 60.0]])


def test_views_built_by_decorators_have_builtin_types_and_stages():
    ctx = Context(textwrap.dedent("""
        import operator

        @View.Vector_Histogram(bin_step=0.5)
        def h(x: 'karabo#A.x'):
            return x

        @View.Image_Histogram(x_count=4, x_min=0, y_count=4, y_min=0)
        def m(x: 'karabo#A.x'):
            return x, x

        @View.Scalar_Extremum(op=operator.lt)
        def e(x: 'karabo#A.x'):
            return x, x

        @View.Vector_StepStacked
        def s(x: 'karabo#A.x'):
            return x
    """))
    assert type(ctx.views["h"]) is VectorHistogramView
    assert type(ctx.views["m"]) is MatrixHistogramView
    assert isinstance(ctx.views["e"], ExtremumView)
    assert isinstance(ctx.views["s"], StepStackedView)
    assert ctx.views["h"].stage is ViewStage.REDUCE
    assert ctx.views["s"].stage is ViewStage.STEP
    assert GlobalAverageView.default_stage is ViewStage.REDUCE


@pytest.mark.parametrize("decorator, words", [
    ("View.Scalar_Histogram(bin_count=3, bin_min=0)", "needs output VECTOR"),
    ("View.Vector_Histogram(bin_count=5)", "needs bin_min or bin_max"),
    ("View.Vector_Histogram(bins=5)", "bins"),
    ("View.Scalar_MovingAverage(N=0)", "N must be >= 1"),
    ("View.Scalar_Extremum", "needs op="),
])
def test_bad_arguments_name_the_context_line(decorator, words):
    src = f"\n\n@{decorator}\ndef broken(x: 'karabo#A.x'):\n    return x\n"
    with pytest.raises(ViewDefError, match=words) as info:
        Context(src)
    assert ":3:" in str(info.value) and "broken" in str(info.value)

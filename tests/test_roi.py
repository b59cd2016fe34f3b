"""metropc.roi: the ROI parameter types, and how contexts declare and change them."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from metropc.core import Context, coerce_parameter
from metropc.error import ParameterError
from metropc.roi import LineROI, RectROI

CONTEXT = '''
parameters(roi=RectROI(x=2, y=1, width=3, height=2), cut=LineROI(0, 0, 3, 4))

@View.Scalar
def roi_sum(image: 'karabo#DET:output[data]'):
    return float(image[roi.slice].sum())
'''


def test_rect_roi_slices_like_numpy():
    roi = RectROI(x=2, y=1, width=3, height=2)
    image = np.arange(30).reshape(5, 6)
    assert roi.slice == (slice(1, 3), slice(2, 5))
    assert image[roi.slice].tolist() == [[8, 9, 10], [14, 15, 16]]
    assert (roi.yslice, roi.xslice) == roi.slice
    assert roi.clip((2, 4)) == RectROI(2, 1, 2, 1)
    assert roi.clip((1, 1)) is None
    assert roi.to_dict() == {"x": 2, "y": 1, "width": 3, "height": 2}


def test_rois_are_frozen_picklable_values():
    roi, line = RectROI(1, 2, 3, 4), LineROI(0.5, 1, 2, 3)
    for value in (roi, line):
        assert pickle.loads(pickle.dumps(value)) == value
        assert hash(pickle.loads(pickle.dumps(value))) == hash(value)
    with pytest.raises(AttributeError):
        roi.x = 5
    assert line.length == pytest.approx(np.hypot(1.5, 2))
    rows, cols = LineROI(0, 0, 3, 4).points()
    assert rows.size == 6 and (rows[0], cols[0], rows[-1], cols[-1]) == (0, 0, 4, 3)


def test_rois_refuse_nonsense():
    with pytest.raises(ValueError, match="at least 1"):
        RectROI(0, 0, 0, 5)
    with pytest.raises(ValueError, match="whole number"):
        RectROI(0.5, 0, 1, 1)
    with pytest.raises(TypeError):
        RectROI("a", 0, 1, 1)
    with pytest.raises(ValueError, match="finite"):
        LineROI(0, 0, float("nan"), 1)
    with pytest.raises(ValueError, match="missing height"):
        RectROI.coerce({"x": 1, "y": 1, "width": 1})
    with pytest.raises(ValueError, match="unknown w"):
        RectROI.coerce({"x": 1, "y": 1, "width": 1, "height": 1, "w": 2})


def test_coerce_from_what_the_dashboard_and_command_line_send():
    declared = RectROI(0, 0, 1, 1)
    assert coerce_parameter({"x": 3, "y": 4, "width": 5.0, "height": 6}, declared) == \
        RectROI(3, 4, 5, 6)
    assert coerce_parameter([3, 4, 5, 6], declared) == RectROI(3, 4, 5, 6)
    assert coerce_parameter(RectROI(1, 1, 1, 1), declared) == RectROI(1, 1, 1, 1)
    assert coerce_parameter((1, 2, 3, 4.5), LineROI(0, 0, 1, 1)) == LineROI(1, 2, 3, 4.5)
    # text, as metropc-client --set sends it
    for text in ("3,4,5,6", " (3, 4, 5, 6) ", "[3, 4, 5, 6]", "RectROI(3, 4, 5, 6)",
                 '{"x": 3, "y": 4, "width": 5, "height": 6}'):
        assert coerce_parameter(text, declared) == RectROI(3, 4, 5, 6), text
    assert coerce_parameter("0,0,1,2.5", LineROI(0, 0, 1, 1)) == LineROI(0, 0, 1, 2.5)
    for text, why in (("3,4", "needs 4 numbers"), ("abc", "such as 1,2,3,4"),
                      ("__import__('os')", "such as 1,2,3,4")):
        with pytest.raises(ValueError, match=why):
            coerce_parameter(text, declared)
    # a list parameter reads a literal from text; text that is none stays text
    assert coerce_parameter("[1, 2, 4]", [0]) == [1, 2, 4]
    assert coerce_parameter("not a list", [0]) == "not a list"


def test_context_declares_and_updates_roi_parameters():
    ctx = Context(CONTEXT, "roi_ctx.py")
    assert ctx.parameters["roi"] == RectROI(2, 1, 3, 2)
    assert isinstance(ctx.parameters["cut"], LineROI)
    checked = ctx.check_parameters({"roi": {"x": 0, "y": 0, "width": 2, "height": 2}})
    assert checked == {"roi": RectROI(0, 0, 2, 2)}
    with pytest.raises(ParameterError, match="parameter 'roi' is a RectROI"):
        ctx.check_parameters({"roi": {"x": 0}})
    assert ctx.update_parameters(checked) == []
    assert ctx.namespace["roi"] == RectROI(0, 0, 2, 2)
    kernel = ctx.views["roi_sum"].kernel
    assert kernel(np.ones((5, 6))) == 4.0
    # the override travels with the context to other stages
    rebuilt = Context.from_dict(ctx.to_dict())
    assert rebuilt.parameters["roi"] == RectROI(0, 0, 2, 2)


def test_importable_for_editors():
    from metropc import context

    assert context.RectROI is RectROI and "LineROI" in context.__all__

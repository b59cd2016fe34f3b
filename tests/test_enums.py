"""ViewStage, ContextStage and ViewOutput: members, numbering, comparison."""

import pickle

import pytest

import metropc
from metropc.enums import ContextStage, ViewOutput, ViewStage

GENERIC = [ViewOutput.COMPUTE, ViewOutput.SCALAR, ViewOutput.VECTOR,
           ViewOutput.MATRIX, ViewOutput.POINTS]
HINTED = [ViewOutput.SCALAR_FAST, ViewOutput.SCALAR_SLOW, ViewOutput.VECTOR_LINE,
          ViewOutput.VECTOR_DISTRIBUTION, ViewOutput.POINTS_BINNED,
          ViewOutput.POINTS_SCATTER]


def test_exported_from_package():
    assert metropc.ViewStage is ViewStage
    assert metropc.ContextStage is ContextStage
    assert metropc.ViewOutput is ViewOutput


def test_view_stage_members():
    assert [s.name for s in ViewStage] == [
        "FRONTEND", "POOL", "REDUCE", "ASYNC", "STEP", "ACTION"]
    assert ViewStage(1) is ViewStage.POOL
    assert ViewStage["ACTION"] is ViewStage.ACTION


def test_context_stage_members():
    # Only real stages with their own context object; STEP/ACTION live in REDUCE.
    assert [s.name for s in ContextStage] == ["FRONTEND", "POOL", "REDUCE", "ASYNC"]
    assert ContextStage.FRONTEND.value == 0
    assert not hasattr(ContextStage, "STEP")


def test_output_numbering():
    for out in GENERIC:
        assert out.value < 10
        assert not out.is_hinted
        assert out.generic is out
        assert out.hint is None
    for out in HINTED:
        assert out.value >= 10
        assert out.is_hinted
        assert out.value // 10 == out.generic.value
        assert out.value % 10 < 10
        assert out.name == f"{out.generic.name}_{out.hint}"
    assert ViewOutput.SCALAR_FAST.generic is ViewOutput.SCALAR
    assert ViewOutput.POINTS_SCATTER.hint == "SCATTER"


def test_image_is_matrix():
    assert ViewOutput.IMAGE is ViewOutput.MATRIX
    assert ViewOutput["IMAGE"] is ViewOutput.MATRIX
    assert ViewOutput(3) is ViewOutput.IMAGE


@pytest.mark.parametrize("hinted", HINTED)
def test_hinted_equals_its_generic(hinted):
    assert hinted == hinted.generic
    assert hinted.generic == hinted
    assert not hinted != hinted.generic
    # ... but not any other generic type
    for other in GENERIC:
        if other is not hinted.generic:
            assert hinted != other
            assert other != hinted


def test_two_different_hints_are_unequal():
    assert ViewOutput.SCALAR_FAST != ViewOutput.SCALAR_SLOW
    assert ViewOutput.VECTOR_LINE != ViewOutput.VECTOR_DISTRIBUTION
    assert ViewOutput.POINTS_BINNED != ViewOutput.POINTS_SCATTER
    assert ViewOutput.SCALAR_FAST != ViewOutput.VECTOR_LINE
    assert ViewOutput.SCALAR_FAST == ViewOutput.SCALAR_FAST


def test_generic_types_differ_from_each_other():
    for a in GENERIC:
        for b in GENERIC:
            assert (a == b) is (a is b)


def test_not_equal_to_plain_values():
    assert ViewOutput.SCALAR != 1
    assert ViewOutput.SCALAR != "SCALAR"


def test_hash_consistent_with_equality():
    # Equal members hash alike, so a hinted type is found in a set of generics.
    for out in HINTED:
        assert hash(out) == hash(out.generic)
    assert ViewOutput.SCALAR_FAST in {ViewOutput.SCALAR}
    assert {ViewOutput.SCALAR: "plot"}[ViewOutput.SCALAR_SLOW] == "plot"


@pytest.mark.parametrize("member", list(ViewStage) + list(ContextStage) + GENERIC + HINTED)
def test_pickle_round_trip(member):
    assert pickle.loads(pickle.dumps(member)) is member

"""Parameter names and values are checked against the context's declarations (issue 14)."""

from __future__ import annotations

import pickle
import textwrap

import numpy as np
import pytest

import metropc
from metropc.core import Context
from metropc.error import ContextError, ParameterError, UnknownParameterError

SRC = textwrap.dedent("""
    from metropc.viewdef import Parameter

    parameters(threshold=0.5, count=3, enabled=True, label='run',
               roi=None, bins=[1, 2, 3])

    class Cam(ViewGroup):
        gain: Parameter = 1.0
        rot90: Parameter = 1

        @View.Scalar(name='{prefix}value')
        def value(self, t: 'internal#train_id'):
            return t * self.gain

    cam = Cam(prefix='cam/')

    @View.Scalar
    def above(t: 'internal#train_id'):
        if enabled and t > threshold:
            return (t, count, label)
""")


@pytest.fixture
def ctx():
    return Context(SRC, path="params_ctx.py")


@pytest.mark.parametrize("name, value, expected", [
    ("threshold", 1, 1.0), ("threshold", 0.25, 0.25), ("threshold", "0.5", 0.5),
    ("threshold", " 2 ", 2.0), ("threshold", np.float32(1.5), 1.5), ("threshold", np.int64(4), 4.0),
    ("count", 7, 7), ("count", "12", 12), ("count", np.int16(2), 2),
    ("count", 3.0, 3), ("count", np.float64(-2.0), -2),  # whole floats: sliders, JSON
    ("enabled", False, False), ("enabled", "false", False), ("enabled", "TRUE", True),
    ("enabled", "1", True), ("enabled", "0", False), ("enabled", 0, False),
    ("enabled", np.bool_(True), True),
    ("label", "other", "other"), ("label", 5, "5"), ("label", 0.5, "0.5"),
    ("roi", (1, 2, 3, 4), (1, 2, 3, 4)), ("roi", None, None),
    ("bins", "anything", "anything"),
    ("cam.gain", 2, 2.0), ("cam.gain", "0.1", 0.1), ("cam.rot90", "-1", -1),
])
def test_values_are_coerced_to_the_declared_type(ctx, name, value, expected):
    checked = ctx.check_parameters({name: value})
    assert checked == {name: expected}
    assert type(checked[name]) is type(expected)


def test_check_changes_nothing(ctx):
    before = dict(ctx.parameters)
    ctx.check_parameters({"threshold": "3", "cam.gain": 2})
    assert ctx.parameters == before and ctx.namespace["threshold"] == 0.5


@pytest.mark.parametrize("name, value, kind", [
    ("threshold", "lots", "float"), ("threshold", True, "float"), ("threshold", None, "float"),
    ("threshold", [1.0], "float"),
    ("count", 1.5, "int"), ("count", "1.5", "int"), ("count", False, "int"),
    ("enabled", "maybe", "bool"), ("enabled", 2, "bool"), ("enabled", 0.0, "bool"),
    ("cam.rot90", 0.5, "int"), ("count", float("nan"), "int"), ("count", [3], "int"),
    ("label", ["x", "y"], "str"), ("label", {"a": 1}, "str"), ("label", b"run", "str"),
])
def test_bad_values_name_parameter_type_and_value(ctx, name, value, kind):
    with pytest.raises(ParameterError) as info:
        ctx.check_parameters({name: value})
    err = info.value
    assert isinstance(err, ValueError) and isinstance(err, ContextError)
    assert not isinstance(err, UnknownParameterError)
    assert (err.name, err.value, err.expected) == (name, value, kind)
    assert f"parameter '{name}' is a{'n' if kind == 'int' else ''} {kind}" in str(err)
    assert repr(value) in str(err)
    assert err.path == "params_ctx.py"


def test_bad_value_points_at_the_declaring_line(ctx):
    with pytest.raises(ParameterError) as info:
        ctx.check_parameters({"threshold": "lots"})
    assert info.value.lineno == 4
    assert str(info.value) == (
        "params_ctx.py:4: parameter 'threshold' is a float (declared as 0.5) and "
        "cannot take 'lots' (not a number of type float)")
    with pytest.raises(ParameterError) as info:
        ctx.check_parameters({"cam.rot90": 1.5})
    assert info.value.lineno == SRC.splitlines().index("cam = Cam(prefix='cam/')") + 1


def test_unknown_name_lists_declared_ones_with_did_you_mean(ctx):
    with pytest.raises(UnknownParameterError) as info:
        ctx.check_parameters({"treshold": 1})
    err = info.value
    assert isinstance(err, ParameterError) and isinstance(err, KeyError)
    assert str(err) == (
        "params_ctx.py: unknown parameter 'treshold'; did you mean 'threshold'? (this "
        "context declares: threshold, count, enabled, label, roi, bins, cam.gain, cam.rot90)")
    assert err.name == "treshold"
    assert err.declared == ["threshold", "count", "enabled", "label", "roi", "bins",
                            "cam.gain", "cam.rot90"]
    with pytest.raises(UnknownParameterError, match=r"did you mean 'cam.gain'\?"):
        ctx.check_parameters({"cam.gian": 1})
    with pytest.raises(UnknownParameterError) as info:
        ctx.check_parameters({"zzz": 1})
    assert "did you mean" not in str(info.value)


def test_errors_survive_pickling(ctx):
    with pytest.raises(ParameterError) as info:
        ctx.check_parameters({"count": 1.5})
    copy = pickle.loads(pickle.dumps(info.value))
    assert type(copy) is ParameterError
    assert (str(copy), copy.name, copy.value, copy.expected) == (
        str(info.value), "count", 1.5, "int")


def test_constructor_parameters_are_checked_and_coerced():
    ctx = Context(SRC, parameters={"threshold": "2", "cam.gain": 3, "enabled": "no"})
    assert ctx.parameters["threshold"] == 2.0 and ctx.namespace["threshold"] == 2.0
    assert ctx.parameters["cam.gain"] == 3.0 and ctx.groups[0].gain == 3.0
    assert ctx.parameters["enabled"] is False
    # what travels to the stages is the coerced value
    assert Context.from_dict(ctx.to_dict()).parameters == ctx.parameters
    with pytest.raises(UnknownParameterError, match="did you mean 'count'"):
        Context(SRC, parameters={"cont": 1})
    with pytest.raises(ParameterError, match="parameter 'count' is an int") as info:
        Context(SRC, path="c.py", parameters={"count": "many"})
    assert str(info.value).startswith("c.py:4: ")
    with pytest.raises(ParameterError, match="parameter 'cam.rot90'"):
        Context(SRC, parameters={"cam.rot90": "x"})


def test_update_parameters_coerces_and_keeps_its_contract(ctx, caplog):
    assert ctx.update_parameters({"threshold": "3", "nope": 1, "count": "4"}) == ["nope"]
    assert ctx.namespace["threshold"] == 3.0 and ctx.namespace["count"] == 4
    # a bad value is logged and not applied (stages must not fail on a message)
    assert ctx.update_parameters({"threshold": "lots", "label": 7}) == []
    assert ctx.parameters["threshold"] == 3.0 and ctx.parameters["label"] == "7"
    assert "parameter 'threshold' is a float" in caplog.text
    # or handed to the caller (the stages: REDUCE reports them)
    caplog.clear()
    refused = []
    assert ctx.update_parameters({"count": 2.5, "threshold": 1}, refused) == []
    assert [e.name for e in refused] == ["count"] and ctx.parameters["count"] == 4
    assert ctx.parameters["threshold"] == 1.0 and not caplog.text


def test_run_checks_parameters_of_a_context_object(ctx):
    out = list(metropc.run(ctx, [{"internal#train_id": 2}], parameters={"threshold": "1"}))
    assert out == [(2, {"cam/value": 2.0, "above": (2, 3, "run")})]
    with pytest.raises(ParameterError, match="'count' is an int"):
        list(metropc.run(ctx, [], parameters={"count": 0.5}))
    with pytest.raises(KeyError, match="unknown parameter 'nope'"):
        list(metropc.run(ctx, [], parameters={"nope": 1}))

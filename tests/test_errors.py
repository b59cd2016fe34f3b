"""Errors in context code: classes, attributes, and that every message names
the file and the line."""

import logging
import pickle
import re
import textwrap

import pytest

import metropc
from metropc.core import Context
from metropc.enums import ViewOutput
from metropc.engine import ErrorReporter
from metropc.error import (
    ContextError,
    ContextSyntaxError,
    MetropcError,
    PathResolutionError,
    ProtocolError,
    SourceError,
    ViewDefError,
    ViewExecutionError,
)


def load(source, path="ctx.py", **kwargs):
    return Context(textwrap.dedent(source).lstrip("\n"), path=path, **kwargs)


def test_hierarchy():
    assert issubclass(ContextError, MetropcError)
    assert issubclass(ContextSyntaxError, ContextError)
    assert issubclass(ViewDefError, ContextError)
    assert issubclass(PathResolutionError, ViewDefError)
    assert issubclass(ViewExecutionError, ContextError)
    assert issubclass(ProtocolError, ValueError) and issubclass(ProtocolError, MetropcError)
    assert issubclass(SourceError, MetropcError)


def test_context_error_attributes_and_format():
    err = ContextError("something is off", "ctx.py", 2)
    assert (err.message, err.path, err.lineno) == ("something is off", "ctx.py", 2)
    assert str(err) == "ctx.py:2: something is off"
    source = "a = 1\nb = a +\nc = 3\n"
    assert err.format_for_context(source) == "ctx.py:2: something is off\n       2 | b = a +"
    assert err.format_for_context() == str(err)
    assert err.format_for_context("only one line") == str(err)  # line out of range
    assert str(ContextError("no line")) == "<ctx>: no line"


def test_syntax_error():
    source = "x = 1\n\ndef broken(:\n    pass\n"
    with pytest.raises(ContextSyntaxError) as info:
        Context(source, path="ctx.py")
    err = info.value
    assert isinstance(err.orig_error, SyntaxError)
    assert err.orig_error.lineno == err.lineno == 3
    assert str(err).startswith("ctx.py:3: syntax error: ")
    assert err.format_for_context(source).endswith("3 | def broken(:")
    assert err._find_context_frame("ctx.py") == 3


def test_exception_while_loading_names_line():
    with pytest.raises(ContextError) as info:
        load("""
            import math

            def helper():
                return undefined_name

            value = helper()
        """)
    err = info.value
    assert type(err) is ContextError
    # the innermost line in the context file: inside helper()
    assert err.lineno == 4 and str(err) == (
        "ctx.py:4: NameError: name 'undefined_name' is not defined")
    assert isinstance(err.__cause__, NameError)


def test_path_resolution_error_api():
    source = """
        x = 1


        @View.Scalar
        def roi_sum(roi: 'view#roi'):
            return roi.sum()
    """
    with pytest.raises(PathResolutionError) as info:
        load(source)
    err = info.value
    assert str(err) == "ctx.py:4: view 'roi_sum' needs 'view#roi' which no view provides"
    # the EXtra-foam GUI finds the line through the failing view's kernel
    assert err.view.name == "roi_sum"
    assert err.view.kernel.__code__.co_firstlineno == 4
    assert err._find_context_frame("ctx.py") == 4
    assert "4 | @View.Scalar" in err.format_for_context(textwrap.dedent(source).lstrip("\n"))


def test_view_def_error_find_context_frame_default_path():
    with pytest.raises(ViewDefError) as info:
        Context("\n\n@View.Scalar(bogus=1)\ndef a(t: 'internal#train_id'):\n    return t\n")
    assert info.value._find_context_frame("<ctx>") == 3
    assert info.value._find_context_frame("elsewhere.py") is None
    assert str(info.value).startswith("<ctx>:3: ")


BROKEN = {
    "missing view": ("""
        @View.Scalar
        def roi_sum(roi: 'view#roi'):
            return roi
    """, PathResolutionError, 1, "needs 'view#roi' which no view provides"),
    "unknown keyword": ("""
        x = 1
        @View.Scalar(colour='red')
        def a(t: 'internal#train_id'):
            return t
    """, ViewDefError, 2, "unknown keyword 'colour'"),
    "unknown output": ("""
        @View.Plot
        def a(t: 'internal#train_id'):
            return t
    """, ContextError, 1, "unknown output 'Plot'"),
    "bare View": ("""
        x = 1
        @View
        def a(t: 'internal#train_id'):
            return t
    """, ViewDefError, 2, "'a' is a bare View, no view of this context: declare a view "
                          "with its output type, such as @View.Scalar"),
    "hint of another output": ("""
        @View.Scalar_Line
        def a(t: 'internal#train_id'):
            return t
    """, ContextError, 1, "'Line' is a hint of Vector, not of Scalar (Scalar takes Fast, Slow)"),
    "a class": ("""
        @View.Scalar
        class X:
            def __init__(self, t: 'internal#train_id'):
                self.t = t
    """, ViewDefError, 1, "View.Scalar decorates a function, not a class ('X')"),
    "name no string": ("""
        @View.Scalar(name=5)
        def a(t: 'internal#train_id'):
            return t
    """, ViewDefError, 1, "name must be a string, not 5"),
    "hidden no bool": ("""
        @View.Scalar(hidden='yes')
        def a(t: 'internal#train_id'):
            return t
    """, ViewDefError, 1, "hidden must be True or False, not 'yes'"),
    "unknown stage": ("""
        @View.Scalar(stage='pol')
        def a(t: 'internal#train_id'):
            return t
    """, ViewDefError, 1, "view 'a': unknown stage 'pol'; use one of pool, reduce, async, "
                          "step, action"),
    "bad annotation": ("""
        @View.Scalar
        def a(t):
            return t
    """, ViewDefError, 1, "argument 't' of view 'a' has no path annotation"),
    "bad karabo path": ("""
        @View.Scalar
        def a(t: 'karabo#DEVICE'):
            return t
    """, PathResolutionError, 1, "is not a Karabo path"),
    "unknown type": ("""
        @View.Scalar
        def a(t: 'nosuch#thing'):
            return t
    """, PathResolutionError, 1, "unknown path type 'nosuch#'"),
    "duplicate": ("""
        @View.Scalar
        def a(t: 'internal#train_id'):
            return t
        @View.Scalar(name='a')
        def b(t: 'internal#train_id'):
            return t
    """, ViewDefError, 4, "'a' is already defined (line 1)"),
    "cycle": ("""
        @View.Scalar
        def a(x: 'b'):
            return x
        @View.Scalar
        def b(x: 'a'):
            return x
    """, ViewDefError, 1, "cycle"),
    "stage conflict": ("""
        @View.Scalar(stage='reduce')
        def a(t: 'internal#train_id'):
            return t
        @View.Scalar(stage='pool')
        def b(x: 'a'):
            return x
    """, ViewDefError, 4, "declared stage=pool but needs 'a'"),
    "template": ("""
        class G(ViewGroup):
            @View.Scalar(name='{prefix}{nope}')
            def a(t: 'internal#train_id'):
                return t
        g = G()
    """, ViewDefError, 2, "missing field 'nope'"),
    "feature": ("""
        require_feature('teleportation')
    """, ContextError, 1, "unsupported feature(s): teleportation"),
    "syntax": ("""
        @View.Scalar
        def a(t: 'internal#train_id')
            return t
    """, ContextSyntaxError, 2, "syntax error"),
    "runtime": ("""
        import math
        math.sqrt(-1)
    """, ContextError, 2, "ValueError: math domain error"),
}


def test_the_output_type_is_case_insensitive_as_in_the_original():
    ctx = load("""
        @View.scalar
        def a(t: 'internal#train_id'):
            return t
        @View.vector_line
        def b(t: 'internal#train_id'):
            return [t]
    """)
    assert ctx.views["a"].output is ViewOutput.SCALAR
    assert ctx.views["b"].output is ViewOutput.VECTOR_LINE


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_every_message_names_file_and_line(case):
    source, cls, line, text = BROKEN[case]
    with pytest.raises(cls) as info:
        load(source)
    err = info.value
    assert re.match(r"^ctx\.py:\d+: ", str(err)), str(err)
    assert err.lineno == line, str(err)
    assert str(err).startswith(f"ctx.py:{line}: ")
    assert text in str(err)
    # and the readable report quotes the line
    assert f"{line:4d} | " in err.format_for_context(textwrap.dedent(source).lstrip("\n"))


def test_errors_pickle_with_attributes():
    with pytest.raises(PathResolutionError) as info:
        load("@View.Scalar\ndef a(t: 'nope'):\n    return t\n")
    err = pickle.loads(pickle.dumps(info.value))
    assert type(err) is PathResolutionError
    assert (err.path, err.lineno, str(err)) == ("ctx.py", 1, str(info.value))
    assert err.view is None  # the view holds context code, which cannot travel
    with pytest.raises(ContextSyntaxError) as info:
        load("x = (\n")
    err = pickle.loads(pickle.dumps(info.value))
    assert err.orig_error.lineno == 1 and err.lineno == 1
    exc = ViewExecutionError("boom", "ctx.py", 3, view="v", event_id=7, traceback_text="tb")
    err = pickle.loads(pickle.dumps(exc))
    assert (err.view, err.event_id, err.traceback_text, str(err)) == (
        "v", 7, "tb", "ctx.py:3: boom")


# -- errors while running -----------------------------------------------------------------

RUNTIME_SRC = """
@View.Scalar
def ok(t: 'internal#train_id'):
    return t

@View.Scalar
def fails(t: 'internal#train_id'):
    values = [1, 2]
    return values[t]

@View.Scalar
def after_fails(v: 'fails'):
    return v * 10
"""


def test_failing_view_is_logged_with_file_line_and_skipped(caplog):
    ctx = Context(RUNTIME_SRC, path="ctx.py")
    with caplog.at_level(logging.ERROR, logger="metropc.engine"):
        out = list(metropc.run(ctx, [{"internal#train_id": 1}, {"internal#train_id": 5},
                                     {"internal#train_id": 0}]))
    assert out == [(1, {"ok": 1, "fails": 2, "after_fails": 20}),
                   (5, {"ok": 5}),
                   (0, {"ok": 0, "fails": 1, "after_fails": 10})]
    (record,) = caplog.records
    assert record.getMessage().startswith(
        "ctx.py:9: view 'fails' failed on event 5: IndexError: list index out of range")
    assert 'File "ctx.py", line 9, in fails' in record.getMessage()


def test_error_reporter_suppresses_repeats():
    now = [0.0]
    reports = []
    reporter = ErrorReporter(window=10.0, sink=reports.append, clock=lambda: now[0])
    ctx = Context(RUNTIME_SRC, path="ctx.py")
    engine = metropc.engine.Engine(ctx, reporter)
    for t in (5, 6, 7):
        engine.process({"internal#train_id": t})
    assert len(reports) == 1 and engine.errors["fails"] == 3
    now[0] = 11.0
    engine.process({"internal#train_id": 8})
    assert len(reports) == 2
    assert reports[1].report_text.endswith("(and 2 more failure(s) of this view not shown)")
    assert (reports[1].view, reports[1].event_id, reports[1].lineno) == ("fails", 8, 9)
    assert "values[t]" in reports[1].traceback_text



def test_syntax_errors_pickle_even_where_tblib_changed_exception_pickling():
    """dask installs tblib's exception pickling on import (xarray imports
    dask when it is there), which loses a SyntaxError's lineno."""
    tblib = pytest.importorskip("tblib.pickling_support")
    tblib.install()
    with pytest.raises(ContextSyntaxError) as info:
        load("x = (\n")
    err = pickle.loads(pickle.dumps(info.value))
    assert err.orig_error.lineno == 1 and err.lineno == 1

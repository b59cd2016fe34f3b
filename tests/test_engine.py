"""The in-process engine: ``metropc.run``, event ids, internal paths, and the
STEP and Action markers."""

import pathlib
import textwrap

import numpy as np
import pytest

import metropc
from metropc.core import Context
from metropc.engine import Engine
from metropc.enums import ContextStage, ViewStage
from metropc.view import View
from metropc.viewdef import ViewDecorator

SRC = textwrap.dedent("""
    @View.Compute
    def doubled(t: 'internal#train_id'):
        return 2 * t

    @View.Scalar
    def plus_one(d: 'doubled'):
        return d + 1

    @View.Vector
    def spectrum(y: 'karabo#SPEC/A/B:output[data.y]'):
        return np.asarray(y) * 2
""")


def test_run_accepts_context_path_and_source(tmp_path):
    file = tmp_path / "my_ctx.py"
    file.write_text(SRC)
    events = [{"internal#train_id": 3}]
    expected = [(3, {"doubled": 6, "plus_one": 7})]
    assert list(metropc.run(Context(SRC), events)) == expected
    assert list(metropc.run(SRC, events)) == expected
    assert list(metropc.run(str(file), events)) == expected
    assert list(metropc.run(pathlib.Path(file), events)) == expected


def test_errors_from_file_name_the_file(tmp_path):
    file = tmp_path / "broken.py"
    file.write_text("@View.Scalar\ndef a(x: 'missing_view'):\n    return x\n")
    with pytest.raises(metropc.error.PathResolutionError, match=r"broken\.py:1: "):
        list(metropc.run(str(file), []))


def test_results_in_order_with_compute_views():
    events = [{"internal#train_id": t, "karabo#SPEC/A/B:output[data.y]": [t, t + 1]}
              for t in (10, 11, 12)]
    out = list(metropc.run(SRC, events))
    assert [eid for eid, _ in out] == [10, 11, 12]
    for (eid, res), t in zip(out, (10, 11, 12)):
        assert res["doubled"] == 2 * t  # COMPUTE results are included
        assert res["plus_one"] == 2 * t + 1
        np.testing.assert_array_equal(res["spectrum"], [2 * t, 2 * t + 2])


def test_events_are_consumed_lazily_and_not_modified():
    consumed = []

    def events():
        for t in range(3):
            consumed.append(t)
            yield {"internal#train_id": t}

    stream = metropc.run(SRC, events())
    assert consumed == []
    assert next(stream)[0] == 0 and consumed == [0]
    original = {"internal#train_id": 7}
    list(metropc.run(SRC, [original]))
    assert original == {"internal#train_id": 7}


def test_event_id_and_internal_paths():
    ctx = Context(textwrap.dedent("""
        @View.Compute
        def internals(e: 'internal#event_id', s: 'internal#sequence_id',
                      v: 'internal#ctx_version'):
            return (e, s, v)
    """), version=4)
    out = list(metropc.run(ctx, [
        {"internal#event_id": 100, "internal#train_id": 5},  # explicit event id wins
        {"internal#train_id": 6},                            # else the train id
        {"internal#sequence_id": 3},                         # else a running count
    ]))
    assert out == [(100, {"internals": (100, -1, 4)}),
                   (6, {"internals": (6, -1, 4)}),
                   (3, {"internals": (3, 3, 4)})]


def test_event_aliases():
    ctx = Context(textwrap.dedent("""
        @View.Compute
        def ids(t: 'internal#train_id', n: 'internal#train_counter'):
            return (t, n)
    """), event_alias="train", event_id_alias="train_id",
        event_counter_alias="train_counter")
    out = list(metropc.run(ctx, [{"internal#event_id": 40}, {"internal#event_id": 41}]))
    assert out == [(40, {"ids": (40, 1)}), (41, {"ids": (41, 2)})]


def test_view_without_inputs_never_runs():
    ctx = Context("@View.Scalar\ndef constant():\n    return 1\n")
    assert list(metropc.run(ctx, [{"internal#train_id": 1}])) == [(1, {})]


class Total(View, stage=ViewStage.REDUCE):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.total = 0

    def process(self, data):
        self.total += data
        return self.total

    def reset(self):
        self.total = 0


def test_pool_then_reduce_split_equals_process(monkeypatch):
    monkeypatch.setitem(ViewDecorator.kwargs_symbols, "Total", dict(view_impl=Total))
    src = textwrap.dedent("""
        @View.Compute
        def value(t: 'internal#train_id'):
            return t * 10

        @View.Scalar_Total
        def total(v: 'value'):
            return v
    """)
    pool = Engine(Context(src, stage=ContextStage.POOL))
    reduce = Engine(Context(src, stage=ContextStage.REDUCE))
    whole = Engine(Context(src))
    assert [v.name for v in pool.pool_views] == ["value"]
    assert [v.name for v in reduce.reduce_views] == ["total"]
    for t in (1, 2, 3):
        event = {"internal#train_id": t}
        pool.prepare(event)
        pool_results = pool.pool(event)
        reduce_results = reduce.reduce(event, pool_results)
        assert {**pool_results, **reduce_results} == whole.process({"internal#train_id": t})
    assert reduce_results == {"total": 60}
    assert whole.counts == {"value": 3, "total": 3}
    whole.reset()
    assert whole.process({"internal#train_id": 1}) == {"value": 10, "total": 10}


# -- STEP and Action markers ---------------------------------------------------------------

class StepTotal(View, stage=ViewStage.STEP):
    """Accumulates during a step, gives the sum at the step boundary."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.total = 0

    def process(self, data):
        self.total += data
        return None

    def on_step(self):
        total, self.total = self.total, 0
        return total


MARKER_SRC = textwrap.dedent("""
    @View.Compute
    def value(t: 'internal#train_id'):
        return t

    @View.Scalar_StepTotal
    def step_total(v: 'value'):
        return v

    @View.Scalar
    def step_report(total: 'step_total', last: 'value'):
        return f'{total} (last {last})'

    @View.Scalar(stage='step')
    def last_in_step(v: 'value'):
        return v

    @View.Scalar_Action
    def snapshot(v: 'value', t: 'internal#train_id'):
        return (v, t)

    @View.Scalar
    def after_snapshot(s: 'snapshot'):
        return s[0] * 100

    @View.Scalar_Action
    def ping():
        return 'pong'
""")


@pytest.fixture
def marker_ctx(monkeypatch):
    monkeypatch.setitem(ViewDecorator.kwargs_symbols, "StepTotal",
                        dict(view_impl=StepTotal))
    return Context(MARKER_SRC)


def test_marker_stages(marker_ctx):
    stages = {n: v.stage for n, v in marker_ctx.views.items()}
    assert stages == {"value": ViewStage.POOL, "step_total": ViewStage.STEP,
                      "step_report": ViewStage.STEP, "last_in_step": ViewStage.STEP,
                      "snapshot": ViewStage.ACTION, "after_snapshot": ViewStage.ACTION,
                      "ping": ViewStage.ACTION}


def test_step_and_action_markers(marker_ctx):
    events = [{"internal#train_id": 1}, {"internal#train_id": 2}, metropc.STEP,
              metropc.Action("snapshot"), {"internal#train_id": 5}, metropc.STEP,
              metropc.Action("ping"), metropc.Action("value"), metropc.Action("nope")]
    out = list(metropc.run(marker_ctx, events))
    assert [key for key, _ in out] == [1, 2, metropc.STEP, events[3], 5, metropc.STEP,
                                       events[6], events[7], events[8]]
    # per event only the POOL/REDUCE results: the step accumulator gives nothing
    assert out[0][1] == {"value": 1} and out[4][1] == {"value": 5}
    assert out[2][1] == {"step_total": 3, "step_report": "3 (last 2)", "last_in_step": 2}
    # an action runs with the latest values of its inputs, then its dependants
    assert out[3][1] == {"snapshot": (2, 2), "after_snapshot": 200}
    assert out[5][1] == {"step_total": 5, "step_report": "5 (last 5)", "last_in_step": 5}
    assert out[6][1] == {"ping": "pong"}  # an action needs no inputs
    assert out[7][1] == {} and out[8][1] == {}  # not an action view / unknown
    assert repr(metropc.STEP) == "metropc.STEP"
    assert repr(metropc.Action("x")) == "metropc.Action('x')"


def test_action_before_any_event_lacks_inputs(marker_ctx):
    out = list(metropc.run(marker_ctx, [metropc.Action("snapshot"), metropc.STEP]))
    assert out[0][1] == {}
    assert out[1][1] == {"step_total": 0}

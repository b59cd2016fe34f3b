"""REDUCE's parts without I/O: the restart point it reports, the take-over
of a REDUCE that died (with a fake clock), and the index counts.

The whole stage is exercised with real processes in test_reliability.py and
test_faults.py; these pin the rules themselves.
"""

from __future__ import annotations

import collections

from metropc.core import Context
from metropc.stage.reduce_index import ReduceIndex, status_payload
from metropc.stage.reduce_restart import SUBSCRIBE_GRACE, RestartPoint, Takeover

CTX = """
@View.Scalar
def tid(t: 'internal#train_id'):
    return t

@View.Scalar(stage='reduce')
def last(t: 'view#tid'):
    return t
"""


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def state(next_seq, lost=0, subs=frozenset({b"view#tid"}), run=None):
    return (next_seq, lost, 0, subs, run, "RUN", 0, next_seq - lost)  # (last: events out)


# -- RestartPoint ----------------------------------------------------------------------
def test_the_restart_point_reported_is_the_state_of_one_report_before():
    point = RestartPoint()
    assert point.report(state(5)) is None          # nothing taken before: wait
    assert point.pending
    first = point.report(state(9, lost=1))
    # Where to restart: as it was one report ago (its results have left);
    # how far done: now (the dispatch window only paces by it).
    assert (first["next_seq"], first["done_seq"], first["lost"]) == (5, 9, 0)
    assert first["subs"] == [b"view#tid"] and first["state"] == "RUN"
    second = point.report(state(9, lost=1))
    assert (second["next_seq"], second["done_seq"], second["lost"]) == (9, 9, 1)
    assert (first["events"], second["events"]) == (5, 8)  # "out" goes on after a restart
    assert point.report(state(9, lost=1)) is None  # nothing changed: nothing sent
    assert not point.pending


# -- Takeover ----------------------------------------------------------------------------
def test_results_wait_for_the_dead_reduce_s_clients_until_they_are_back():
    clock = Clock()
    takeover = Takeover(clock)
    takeover.start({"subs": [b"view#a", b"view#b"], "doubtful": [7, 8], "grace": 1.0})
    assert takeover.awaiting_clients({b"view#a"})       # one of two is back
    clock.now += 1.5
    assert takeover.given_up({b"view#a"}) == []         # still waiting for clients
    assert not takeover.awaiting_clients({b"view#a", b"view#b", b"index"})
    # The doubtful results get their grace from when results are read again.
    clock.now += 0.9
    assert takeover.given_up(set()) == []
    clock.now += 0.2
    assert takeover.given_up(set()) == [7, 8]
    assert takeover.given_up(set()) == []               # each once


def test_clients_that_never_come_back_hold_results_for_the_subscribe_grace_at_most():
    clock = Clock()
    takeover = Takeover(clock)
    takeover.start({"subs": [b"view#gone"], "grace": 0.5})
    assert takeover.awaiting_clients(set())
    clock.now += SUBSCRIBE_GRACE + 0.01
    assert not takeover.awaiting_clients(set())
    assert not takeover.clients_back


def test_a_takeover_without_clients_or_doubtful_results_waits_for_nothing():
    takeover = Takeover(Clock())
    takeover.start({})
    assert not takeover.awaiting_clients(set())
    assert takeover.given_up(set()) == []


# -- ReduceIndex ------------------------------------------------------------------------
def entries(index, ctx, errors=None):
    return index.entries(ctx, collections.Counter(errors or {}), state="RUN", run=3,
                         lost=2, stale=1, output_dropped=(0, 0.0), observed={})


def test_index_counts_add_what_other_processes_counted_for_the_context_in_use():
    ctx = Context(CTX, version=2)
    index = ReduceIndex()
    index.meter.add("last", 4)
    index.meter.add("#events", 4)
    index.add_worker_counts([(2, "tid", 4), (2, "hits", 10), (1, "tid", 99)], current=2)
    index.on_stats({"internal#train_id": (4, 2.0)})
    got = entries(index, ctx, {"tid": 1})
    assert got["view#tid"][0] == 4 and got["view#tid"][4] == 1   # count, errors
    assert got["view#last"][0] == 4
    assert got["view#hits"] == (10, 0.0)  # a pure counter: a plain entry
    assert got["internal#train_id"] == (4, 2.0)
    assert got["internal#run"] == (3, 0.0) and got["internal#lost_events"] == (2, 0.0)
    assert got["internal#state"] == (1, 0.0)


def test_a_new_context_counts_from_zero_and_forgets_older_contexts_counts():
    index = ReduceIndex()
    index.meter.add("last", 4)
    index.add_worker_counts([(2, "hits", 10), (3, "hits", 1)], current=2)
    index.new_context(3)
    got = entries(index, Context(CTX, version=3))
    assert got["view#last"][0] == 0
    assert got["view#hits"] == (1, 0.0)


def test_the_status_names_the_context_and_where_to_control():
    ctx = Context(CTX, path="ctx.py", version=4)
    assert status_payload("RUN", 7, ctx, "tcp://127.0.0.1:5000", {"view#a": 9}) == {
        "state": "RUN", "run": 7, "version": 4, "path": "ctx.py",
        "control": "tcp://127.0.0.1:5000", "batch": True, "seqs": {"view#a": 9}}
    assert status_payload("READY", None, None, None)["version"] is None
    assert status_payload("READY", None, None, None)["seqs"] == {}

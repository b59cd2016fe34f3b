"""The two-phase context reload (metropc.stage.reload), both ends, without I/O."""

from __future__ import annotations

import textwrap

import pytest

from metropc.core import Context
from metropc.enums import ContextStage
from metropc.stage.common import OP_CTX_FAILED, OP_CTX_READY
from metropc.stage.reload import (RELOAD_TIMEOUT, Aborted, Committed, ReloadCoordinator,
                                  StagedContext)

STAGES = ("pool-0", "pool-1", "reduce")

GOOD = textwrap.dedent("""\
    @View.Scalar
    def scalar(tid: "internal#train_id"):
        return tid
""")


def ctx_dict(version=1, source=GOOD, path="ctx.py"):
    """A real context message body: Context(...).to_dict(), its source
    replaced if given (a source that fails cannot be built here first)."""
    data = Context(GOOD, path=path, version=version).to_dict()
    data["source"] = source
    return data


# -- ReloadCoordinator ---------------------------------------------------------------------

def test_begin_returns_the_prepare_message():
    rc = ReloadCoordinator()
    assert rc.timeout == RELOAD_TIMEOUT == 30.0
    assert not rc.busy
    data = ctx_dict(4)
    msg = rc.begin(data, STAGES, 0.0)
    assert msg == {"ctx": data, "prepare": True}
    assert msg["ctx"] is data
    assert rc.busy


def test_committed_only_when_all_answered_ok():
    rc = ReloadCoordinator()
    data = ctx_dict(2)
    rc.begin(data, STAGES, 0.0)
    assert rc.on_answer("pool-0", 2, True) is None
    assert rc.busy
    assert rc.on_answer("reduce", 2, True) is None
    out = rc.on_answer("pool-1", 2, True)
    assert out == Committed(2, data, frozenset(STAGES))
    assert out.data is data
    assert not rc.busy


def test_aborted_with_every_failure():
    rc = ReloadCoordinator()
    rc.begin(ctx_dict(3), STAGES, 0.0)
    assert rc.on_answer("pool-1", 3, False, "ctx.py:2: NameError: name 'x' is not defined") is None
    assert rc.on_answer("pool-0", 3, True) is None
    out = rc.on_answer("reduce", 3, False, "ctx.py:5: boom")
    assert out == Aborted(3, "[pool-1] ctx.py:2: NameError: name 'x' is not defined; "
                             "[reduce] ctx.py:5: boom")
    assert not rc.busy


def test_one_failure_is_enough():
    rc = ReloadCoordinator()
    rc.begin(ctx_dict(3), ("pool-0", "reduce"), 0.0)
    rc.on_answer("pool-0", 3, False, "bad")
    assert rc.on_answer("reduce", 3, True) == Aborted(3, "[pool-0] bad")


def test_stage_gone_while_waiting():
    rc = ReloadCoordinator()
    data = ctx_dict(5)
    rc.begin(data, STAGES, 0.0)
    rc.on_answer("pool-0", 5, True)
    assert rc.stage_gone("pool-1") is None
    out = rc.on_answer("reduce", 5, True)
    # the replacement of pool-1 gets the context whole at commit
    assert out == Committed(5, data, frozenset({"pool-0", "reduce"}))


def test_last_stage_gone_ends_the_reload():
    rc = ReloadCoordinator()
    data = ctx_dict(5)
    rc.begin(data, STAGES, 0.0)
    rc.on_answer("pool-0", 5, True)
    rc.on_answer("reduce", 5, True)
    assert rc.stage_gone("pool-1") == Committed(5, data, frozenset({"pool-0", "reduce"}))
    assert not rc.busy


def test_stage_gone_after_a_failure_aborts():
    rc = ReloadCoordinator()
    rc.begin(ctx_dict(5), ("pool-0", "reduce"), 0.0)
    rc.on_answer("reduce", 5, False, "nope")
    assert rc.stage_gone("pool-0") == Aborted(5, "[reduce] nope")


def test_every_stage_gone_commits_with_nobody_ready():
    rc = ReloadCoordinator()
    data = ctx_dict(6)
    rc.begin(data, ("pool-0", "reduce"), 0.0)
    assert rc.stage_gone("pool-0") is None
    assert rc.stage_gone("reduce") == Committed(6, data, frozenset())


def test_stage_gone_that_already_answered_or_unknown_changes_nothing():
    rc = ReloadCoordinator()
    assert rc.stage_gone("pool-0") is None  # nothing pending
    rc.begin(ctx_dict(1), ("pool-0", "reduce"), 0.0)
    rc.on_answer("pool-0", 1, True)
    assert rc.stage_gone("pool-0") is None
    assert rc.stage_gone("pool-9") is None
    assert rc.busy
    out = rc.on_answer("reduce", 1, True)
    assert out.ready == frozenset({"pool-0", "reduce"})


def test_timeout_via_tick():
    rc = ReloadCoordinator(timeout=10.0)
    rc.begin(ctx_dict(7), STAGES, 100.0)
    rc.on_answer("pool-0", 7, True)
    assert rc.tick(105.0) is None
    assert rc.tick(110.0) is None  # exactly the timeout: not yet
    assert rc.busy
    assert rc.tick(110.5) == Aborted(7, "no answer from pool-1, reduce")
    assert not rc.busy
    assert rc.tick(200.0) is None
    # late answers for it mean nothing now
    assert rc.on_answer("pool-1", 7, True) is None
    assert rc.on_answer("reduce", 7, True) is None


def test_tick_without_reload():
    assert ReloadCoordinator().tick(1e9) is None


def test_answers_for_an_old_version_are_ignored():
    rc = ReloadCoordinator(timeout=10.0)
    rc.begin(ctx_dict(1), ("pool-0", "reduce"), 0.0)
    assert isinstance(rc.tick(11.0), Aborted)
    data = ctx_dict(2)
    rc.begin(data, ("pool-0", "reduce"), 12.0)
    # pool-0 answers the first reload (refused or not): it is still waited for
    assert rc.on_answer("pool-0", 1, False, "old failure") is None
    assert rc.on_answer("reduce", 1, True) is None
    assert rc.pending.waiting == {"pool-0", "reduce"}
    assert rc.on_answer("pool-0", 2, True) is None
    assert rc.on_answer("reduce", 2, True) == Committed(2, data, frozenset({"pool-0", "reduce"}))


def test_duplicate_and_unknown_answers_are_ignored():
    rc = ReloadCoordinator()
    rc.begin(ctx_dict(1), ("pool-0", "reduce"), 0.0)
    assert rc.on_answer("pool-0", 1, True) is None
    assert rc.on_answer("pool-0", 1, False, "changed its mind") is None
    assert rc.on_answer("stranger", 1, False, "who?") is None
    out = rc.on_answer("reduce", 1, True)
    assert isinstance(out, Committed)


def test_answer_without_reload_is_ignored():
    assert ReloadCoordinator().on_answer("pool-0", 1, True) is None


# -- StagedContext ---------------------------------------------------------------------------

def test_prepare_then_commit():
    staged = StagedContext(ContextStage.POOL)
    reply, ctx = staged.on_context({"ctx": ctx_dict(3), "prepare": True})
    assert reply == (OP_CTX_READY, {"version": 3})
    assert ctx is None
    prepared = staged.prepared
    assert isinstance(prepared, Context)
    assert prepared.version == 3 and prepared.stage is ContextStage.POOL
    assert set(prepared.views) == {"scalar"}
    reply, ctx = staged.on_commit({"version": 3, "from_seq": 10})
    assert reply is None and ctx is prepared
    assert staged.prepared is None
    # committing again gives nothing
    assert staged.on_commit({"version": 3}) == (None, None)


def test_prepare_then_abort():
    staged = StagedContext(ContextStage.REDUCE)
    staged.on_context({"ctx": ctx_dict(3), "prepare": True})
    assert staged.prepared.stage is ContextStage.REDUCE
    assert staged.on_abort({"version": 3}) == (None, None)
    assert staged.prepared is None
    assert staged.on_commit({"version": 3}) == (None, None)


def test_commit_of_another_version_uses_nothing():
    staged = StagedContext(ContextStage.POOL)
    staged.on_context({"ctx": ctx_dict(3), "prepare": True})
    assert staged.on_commit({"version": 4}) == (None, None)
    assert staged.prepared is None


def test_whole_context_is_used_at_once():
    staged = StagedContext(ContextStage.POOL)
    reply, ctx = staged.on_context({"ctx": ctx_dict(8), "from_seq": 0})
    assert reply is None
    assert isinstance(ctx, Context) and ctx.version == 8 and ctx.stage is ContextStage.POOL
    assert staged.prepared is None


def test_context_that_exits_is_refused_with_file_and_line():
    staged = StagedContext(ContextStage.POOL)
    source = "x = 1\nimport sys\nsys.exit(3)\n"
    reply, ctx = staged.on_context({"ctx": ctx_dict(9, source, path="edited.py"),
                                    "prepare": True})
    assert ctx is None and staged.prepared is None
    opcode, data = reply
    assert opcode == OP_CTX_FAILED
    assert data["version"] == 9
    msg = data["msg"]
    assert msg.startswith("edited.py:3: SystemExit: 3"), msg
    assert "context code must not exit the process" in msg
    assert msg.endswith("\n       3 | sys.exit(3)"), msg


def test_context_that_exits_refused_without_prepare_too():
    staged = StagedContext(ContextStage.REDUCE)
    reply, ctx = staged.on_context({"ctx": ctx_dict(9, "import sys; sys.exit(3)\n")})
    assert ctx is None
    assert reply[0] == OP_CTX_FAILED
    assert reply[1]["msg"].startswith("ctx.py:1: SystemExit: 3")


def test_failed_context_keeps_nothing_new():
    staged = StagedContext(ContextStage.POOL)
    bad = "@View.Scalar\ndef v(x: 'internal#train_id'):\n    return x\n\n1 / 0\n"
    reply, ctx = staged.on_context({"ctx": ctx_dict(2, bad), "prepare": True})
    assert ctx is None and staged.prepared is None
    assert reply[0] == OP_CTX_FAILED
    assert reply[1]["version"] == 2
    assert reply[1]["msg"].startswith("ctx.py:5: ZeroDivisionError: division by zero")
    assert "\n       5 | 1 / 0" in reply[1]["msg"]


def test_syntax_error_is_refused_with_the_line():
    staged = StagedContext(ContextStage.POOL)
    reply, _ = staged.on_context({"ctx": ctx_dict(2, "x = 1\ny = (\n"), "prepare": True})
    assert reply[0] == OP_CTX_FAILED
    assert reply[1]["msg"].startswith("ctx.py:2:"), reply[1]["msg"]


def test_keyboard_interrupt_propagates():
    staged = StagedContext(ContextStage.POOL)
    staged.on_context({"ctx": ctx_dict(1), "prepare": True})
    kept = staged.prepared
    with pytest.raises(KeyboardInterrupt):
        staged.on_context({"ctx": ctx_dict(2, "raise KeyboardInterrupt\n"), "prepare": True})
    assert staged.prepared is kept


# -- both ends together --------------------------------------------------------------------

def answer(rc, name, reply):
    opcode, data = reply
    return rc.on_answer(name, data["version"], opcode == OP_CTX_READY, data.get("msg", ""))


def test_round_trip_commit():
    stages = {"pool-0": StagedContext(ContextStage.POOL),
              "reduce": StagedContext(ContextStage.REDUCE)}
    rc = ReloadCoordinator()
    msg = rc.begin(ctx_dict(11), stages, 0.0)
    outcomes = [answer(rc, name, s.on_context(msg)[0]) for name, s in stages.items()]
    assert outcomes[0] is None
    committed = outcomes[1]
    assert isinstance(committed, Committed) and committed.ready == frozenset(stages)
    used = {name: s.on_commit({"version": committed.version})[1] for name, s in stages.items()}
    assert used["pool-0"].stage is ContextStage.POOL and used["pool-0"].version == 11
    assert used["reduce"].stage is ContextStage.REDUCE and used["reduce"].version == 11


def test_round_trip_abort_names_the_stage_file_and_line():
    stages = {"pool-0": StagedContext(ContextStage.POOL),
              "reduce": StagedContext(ContextStage.REDUCE)}
    rc = ReloadCoordinator()
    msg = rc.begin(ctx_dict(12, "import sys\nsys.exit(3)\n"), stages, 0.0)
    outcomes = [answer(rc, name, s.on_context(msg)[0]) for name, s in stages.items()]
    aborted = outcomes[-1]
    assert isinstance(aborted, Aborted) and aborted.version == 12
    parts = aborted.why.split("; [")
    assert len(parts) == 2
    assert parts[0].startswith("[pool-0] ctx.py:2: SystemExit: 3")
    assert parts[1].startswith("reduce] ctx.py:2: SystemExit: 3")
    for s in stages.values():
        assert s.on_abort({"version": 12}) == (None, None)

"""The stage supervision policy (metropc.stage.supervisor), with a fake clock."""

from __future__ import annotations

import pytest

from metropc.stage.supervisor import (REMOTE_SILENCE, RESTART_LIMIT, RESTART_WINDOW,
                                      START_RETRY, GiveUp, Gone, Panic, Replace, StageState,
                                      Supervisor)


def proc(name, alive=True, exitcode=None):
    """A local stage in a process (can be stopped and replaced)."""
    return StageState(name, alive, exitcode, True)


def thread(name, alive=True):
    return StageState(name, alive, None, False)


def dead(name, exitcode=1):
    return proc(name, alive=False, exitcode=exitcode)


def idle(name):
    return None


def ready_supervisor(*names, event_timeout=30.0, **kwargs):
    sup = Supervisor(event_timeout, **kwargs)
    for i, name in enumerate(names):
        sup.on_hello(name, float(i))
    sup.pipeline_ready = True
    return sup


def test_defaults():
    assert (RESTART_LIMIT, RESTART_WINDOW, REMOTE_SILENCE) == (5, 60.0, 5.0)
    sup = Supervisor(30.0)
    assert (sup.restart_limit, sup.restart_window, sup.remote_silence) == (5, 60.0, 5.0)
    assert sup.check(0.0, [], idle) == []


def test_healthy_stages_need_nothing():
    sup = ready_supervisor("pool-0", "reduce")
    stages = [proc("pool-0"), proc("reduce")]
    assert sup.check(100.0, stages, idle) == []
    assert sup.check(100.0, stages, lambda name: (99.0, [1, 2])) == []


# -- dead stages -----------------------------------------------------------------------

def test_dead_stage_is_replaced():
    sup = ready_supervisor("pool-0", "pool-1", "reduce")
    out = sup.check(10.0, [proc("pool-0"), dead("pool-1", -9), proc("reduce")], idle)
    assert out == [Replace("pool-1", "stage pool-1 died (exit code -9)", stop=False)]
    assert sup.restart_times == {"pool-1": [10.0]}


def test_dead_reduce_is_replaced_too():
    sup = ready_supervisor("reduce")
    assert sup.check(1.0, [dead("reduce", 1)], idle) == [
        Replace("reduce", "stage reduce died (exit code 1)")]


def test_dead_stage_is_not_checked_for_being_stuck():
    sup = ready_supervisor("pool-0", event_timeout=1.0)
    out = sup.check(100.0, [dead("pool-0")], lambda name: (0.0, [1]))
    assert out == [Replace("pool-0", "stage pool-0 died (exit code 1)", stop=False)]
    out = sup.check(1.0, [dead("pool-0", 0)], idle)  # a SIGTERM from outside, say
    assert out == [Replace("pool-0", "stage pool-0 ended (exit code 0) without being told to",
                           stop=False)]


def test_crash_before_ready_gives_up():
    sup = Supervisor(30.0)
    sup.on_hello("reduce", 0.0)  # reduce said hello, pool-0 never did
    out = sup.check(2.0, [dead("pool-0", 3), proc("reduce")], idle)
    assert out == [GiveUp("pool-0", "stage pool-0 died (exit code 3) before it started up, "
                                    "so it is not restarted; its output above says why (a "
                                    "script that starts a pipeline of processes needs 'if "
                                    "__name__ == \"__main__\":' around that code)")]
    assert sup.given_up == {"pool-0"}
    assert sup.restart_times == {}


def test_a_stage_that_reported_why_it_could_not_start_gets_no_main_guard_hint():
    """Exit code 2 (STAGE_REFUSED): the stage said why itself (an address it
    cannot bind); the main-guard hint would send the user the wrong way."""
    from metropc.stage.supervisor import STAGE_REFUSED
    sup = Supervisor(30.0)
    out = sup.check(2.0, [dead("reduce", STAGE_REFUSED)], idle)
    assert out == [GiveUp("reduce", "stage reduce died (exit code 2) before it started up, "
                                    "so it is not restarted; its report above says why")]


def test_stage_that_was_ready_once_is_replaced_before_the_pipeline_is_ready():
    sup = Supervisor(30.0)
    sup.on_hello("pool-0", 0.0)
    assert not sup.pipeline_ready
    assert sup.check(1.0, [dead("pool-0")], idle) == [
        Replace("pool-0", "stage pool-0 died (exit code 1)")]


def test_after_the_pipeline_was_ready_a_new_stage_crashing_is_replaced():
    # e.g. a replacement that has not said hello yet
    sup = Supervisor(30.0)
    sup.pipeline_ready = True
    assert sup.check(1.0, [dead("pool-3")], idle) == [
        Replace("pool-3", "stage pool-3 died (exit code 1)")]


def test_restart_limit_within_the_window():
    sup = ready_supervisor("pool-0")
    outs = []
    for i in range(5):  # the 5th death within the window is the last (RESTART_LIMIT)
        outs += sup.check(10.0 + i, [dead("pool-0")], idle)
    assert [type(o) for o in outs] == [Replace] * 4 + [GiveUp]
    assert outs[-1] == GiveUp("pool-0", "stage pool-0 died (exit code 1); it died 5 times "
                                        "within 60 s, so it is not restarted again")
    assert sup.given_up == {"pool-0"}
    # given up: never reported again, dead or alive, stuck or not
    assert sup.check(20.0, [dead("pool-0")], idle) == []
    assert sup.check(500.0, [proc("pool-0")], lambda name: (0.0, [1])) == []


def test_a_stage_that_could_not_be_started_is_tried_again_later_then_given_up():
    """A replacement whose start failed (no process: the frontend is out of
    file descriptors) is no busy loop: tried again every START_RETRY
    seconds, each try a death, until the restart limit gives it up."""
    sup = ready_supervisor("pool-0", "reduce")
    not_started = proc("pool-0", alive=False, exitcode=None)
    assert sup.check(10.0, [dead("pool-0", -9)], idle)[0].reason == \
        "stage pool-0 died (exit code -9)"
    assert sup.check(10.0 + START_RETRY / 2, [not_started], idle) == []
    outs = []
    t = 10.0
    while not outs or type(outs[-1]) is Replace:
        t += START_RETRY
        outs += sup.check(t, [not_started], idle)
        outs += sup.check(t + START_RETRY / 2, [not_started], idle)  # (too soon)
    assert [type(o) for o in outs] == [Replace] * 3 + [GiveUp]
    assert outs[0] == Replace("pool-0", "stage pool-0 could not be started", stop=False)
    assert outs[-1].reason.startswith("stage pool-0 could not be started; it died 5 times")
    assert sup.given_up == {"pool-0"}


def test_restarts_spaced_out_are_allowed():
    sup = ready_supervisor("pool-0")
    for i in range(20):
        now = 15.0 * i  # at most 4 within any 60 s window
        assert sup.check(now, [dead("pool-0")], idle) == [
            Replace("pool-0", "stage pool-0 died (exit code 1)")], i
    assert sup.given_up == set()
    assert sup.restart_times["pool-0"] == [240.0, 255.0, 270.0, 285.0]


def test_restart_window_slides():
    sup = ready_supervisor("pool-0")
    for t in (0.0, 1.0, 2.0, 3.0):
        assert isinstance(sup.check(t, [dead("pool-0")], idle)[0], Replace)
    # 60 s after the first restart it has left the window: the 4th death within it
    out = sup.check(60.0, [dead("pool-0")], idle)
    assert out == [Replace("pool-0", "stage pool-0 died (exit code 1)")]
    assert sup.restart_times["pool-0"] == [1.0, 2.0, 3.0, 60.0]
    # at 60.5 the restart at 1.0 is still within the window: the 5th death
    out = sup.check(60.5, [dead("pool-0")], idle)
    assert [type(o) for o in out] == [GiveUp]


def test_restart_limits_are_per_stage():
    sup = ready_supervisor("pool-0", "pool-1")
    for t in range(4):
        sup.check(float(t), [dead("pool-0")], idle)
    out = sup.check(5.0, [dead("pool-0"), dead("pool-1")], idle)
    assert [(type(o), o.name) for o in out] == [(GiveUp, "pool-0"), (Replace, "pool-1")]


def test_custom_restart_limit_and_window():
    sup = ready_supervisor("pool-0", restart_limit=2, restart_window=10.0)
    assert isinstance(sup.check(0.0, [dead("pool-0")], idle)[0], Replace)
    out = sup.check(1.0, [dead("pool-0")], idle)
    assert out == [GiveUp("pool-0", "stage pool-0 died (exit code 1); it died 2 times within "
                                    "10 s, so it is not restarted again")]
    sup = ready_supervisor("pool-0", restart_limit=2, restart_window=10.0)
    assert isinstance(sup.check(0.0, [dead("pool-0")], idle)[0], Replace)
    assert isinstance(sup.check(10.5, [dead("pool-0")], idle)[0], Replace)  # window passed


# -- stuck workers ------------------------------------------------------------------------

def test_stuck_worker_is_stopped_and_replaced():
    sup = ready_supervisor("pool-0", "pool-1", event_timeout=2.0)
    busy = {"pool-0": (100.0, [7, 8, 9]), "pool-1": (100.0, [3])}
    stages = [proc("pool-0"), proc("pool-1")]
    # 3 events: 6 s allowed; 1 event: 2 s allowed
    assert sup.check(102.0, stages, busy.get) == []
    out = sup.check(102.5, stages, busy.get)
    assert out == [Replace("pool-1", "stage pool-1 spent more than 2 s per event on events "
                                     "[3]; stopped it", stop=True)]
    assert sup.check(106.0, [proc("pool-0")], busy.get) == []
    out = sup.check(106.01, [proc("pool-0")], busy.get)
    assert out == [Replace("pool-0", "stage pool-0 spent more than 2 s per event on events "
                                     "[7, 8, 9]; stopped it", stop=True)]


def test_stuck_report_lists_at_most_five_events():
    sup = ready_supervisor("pool-0", event_timeout=0.5)
    out = sup.check(100.0, [proc("pool-0")], lambda name: (0.0, list(range(10, 20))))
    assert out[0].reason == ("stage pool-0 spent more than 0.5 s per event on events "
                             "[10, 11, 12, 13, 14]; stopped it")
    assert out[0].stop is True


def test_stuck_report_names_what_the_dispatcher_says():
    sup = ready_supervisor("pool-0", event_timeout=0.5)
    out = sup.check(100.0, [proc("pool-0")], lambda name: (0.0, [3], "events [10100]"))
    assert out[0].reason == ("stage pool-0 spent more than 0.5 s per event on events "
                             "[10100]; stopped it")


def test_stuck_counts_toward_the_restart_limit():
    sup = ready_supervisor("pool-0", event_timeout=1.0)
    outs = []
    for i in range(5):
        outs += sup.check(100.0 + i, [proc("pool-0")], lambda name: (0.0, [i]))
    assert [type(o) for o in outs] == [Replace] * 4 + [GiveUp]
    assert all(o.stop for o in outs[:4])


def test_message_without_events_is_not_stuck_at_once():
    # Dispatcher.oldest() gives (started, []) for a message queued with
    # queue_to_any(<an opcode other than b"event">): it goes to one worker
    # like an event, without a sequence number.
    sup = ready_supervisor("pool-0", event_timeout=30.0)
    assert sup.check(100.5, [proc("pool-0")], lambda name: (100.0, [])) == []


def test_no_event_timeout_means_no_stuck_check():
    sup = ready_supervisor("pool-0", event_timeout=None)
    asked = []

    def oldest(name):
        asked.append(name)
        return (0.0, [1])

    assert sup.check(1e9, [proc("pool-0")], oldest) == []
    assert asked == []


def test_threads_are_not_stopped_for_being_slow():
    sup = ready_supervisor("pool-0", event_timeout=1.0)
    assert sup.check(100.0, [thread("pool-0")], lambda name: (0.0, [1])) == []


# -- threads ------------------------------------------------------------------------------

def test_dead_thread_panics_once():
    sup = ready_supervisor("pool-0", "reduce")
    out = sup.check(1.0, [thread("pool-0", alive=False), thread("reduce")], idle)
    assert out == [Panic("pool-0", "stage pool-0 died (exit code None)")]
    assert sup.check(2.0, [thread("pool-0", alive=False), thread("reduce")], idle) == []
    assert sup.check(3.0, [thread("pool-0", alive=False)], idle) == []
    # another thread dying is reported, once
    out = sup.check(4.0, [thread("pool-0", alive=False), thread("reduce", alive=False)], idle)
    assert out == [Panic("reduce", "stage reduce died (exit code None)")]
    assert sup.restart_times == {} and sup.given_up == set()


def test_thread_crash_before_ready_panics_rather_than_gives_up():
    sup = Supervisor(30.0)
    assert sup.check(1.0, [thread("pool-0", alive=False)], idle) == [
        Panic("pool-0", "stage pool-0 died (exit code None)")]


# -- remote workers -------------------------------------------------------------------------

def test_remote_worker_gone_after_silence_and_not_before():
    sup = ready_supervisor()
    sup.on_hello("pool-remote", 100.0, remote=True)
    assert sup.remote == {"pool-remote": 100.0}
    assert sup.check(104.9, [], idle) == []
    assert sup.check(105.0, [], idle) == []  # exactly the silence: not yet
    out = sup.check(105.5, [], idle)
    assert out == [Gone("pool-remote", "remote worker pool-remote went silent for 6 s")]
    assert sup.remote == {}
    assert sup.check(200.0, [], idle) == []  # reported once


def test_heard_resets_silence():
    sup = ready_supervisor()
    sup.on_hello("w", 0.0, remote=True)
    sup.heard("w", 4.0)
    assert sup.check(8.0, [], idle) == []
    sup.heard("w", 8.5)
    assert sup.check(13.0, [], idle) == []
    out = sup.check(13.6, [], idle)
    assert out == [Gone("w", "remote worker w went silent for 5 s")]


def test_heard_from_an_unknown_or_gone_worker_is_ignored():
    sup = ready_supervisor()
    sup.heard("stranger", 1.0)
    assert sup.remote == {}
    sup.on_hello("w", 0.0, remote=True)
    assert [type(o) for o in sup.check(10.0, [], idle)] == [Gone]
    sup.heard("w", 11.0)  # too late: it is forgotten until it says hello again
    assert sup.remote == {}
    sup.on_hello("w", 12.0, remote=True)
    assert sup.remote == {"w": 12.0}


def test_custom_remote_silence_and_several_workers():
    sup = Supervisor(30.0, remote_silence=1.0)
    sup.pipeline_ready = True
    sup.on_hello("a", 0.0, remote=True)
    sup.on_hello("b", 0.5, remote=True)
    sup.on_hello("local", 0.0)
    assert set(sup.remote) == {"a", "b"}
    out = sup.check(1.2, [proc("local")], idle)
    assert out == [Gone("a", "remote worker a went silent for 1 s")]
    out = sup.check(1.6, [proc("local")], idle)
    assert out == [Gone("b", "remote worker b went silent for 1 s")]


def test_everything_at_once_in_order():
    sup = ready_supervisor("pool-0", "pool-1", event_timeout=1.0)
    sup.on_hello("r", 0.0, remote=True)
    stages = [dead("pool-0"), proc("pool-1")]
    out = sup.check(10.0, stages, lambda name: (0.0, [5]))
    assert [type(o) for o in out] == [Gone, Replace, Replace]
    assert [o.name for o in out] == ["r", "pool-0", "pool-1"]
    assert [o.stop for o in out[1:]] == [False, True]


@pytest.mark.parametrize("cls", [Replace, GiveUp, Panic, Gone])
def test_instructions_are_frozen(cls):
    inst = cls("x", "why")
    with pytest.raises(AttributeError):
        inst.name = "y"


# -- a stalled REDUCE ----------------------------------------------------------------------

def test_reduce_stall_is_reported_once_and_its_end_too():
    from metropc.stage.supervisor import ReduceWatch
    watch = ReduceWatch(after=10.0)
    assert watch.check(0.0, 100, 140) is None      # 40 finished by workers wait
    assert watch.check(5.0, 120, 160) is None      # REDUCE moves: fine
    assert watch.check(14.9, 120, 170) is None     # no move for 9.9 s
    msg = watch.check(15.0, 120, 170)
    assert msg.startswith("REDUCE has finished no event for 10 s while 50 that the workers "
                          "finished wait for it")
    assert watch.check(30.0, 120, 400) is None     # said once
    assert watch.check(31.0, 121, 400) == "REDUCE goes on after a stall of 26 s"
    assert watch.check(60.0, 121, 400) is not None  # and a new stall is new


def test_reduce_waiting_for_a_worker_or_idle_is_no_stall():
    from metropc.stage.supervisor import ReduceWatch
    watch = ReduceWatch(after=10.0)
    # a worker holds event 100: REDUCE waits for it (the worker's timeout applies)
    for t in range(0, 100, 5):
        assert watch.check(float(t), 100, 100) is None
    # idle: nothing dispatched since
    assert watch.check(200.0, 300, 300) is None
    assert watch.check(205.0, 300, 300) is None
    assert watch.check(205.1, 300, 301) is None      # one event comes
    assert watch.check(214.9, 300, 301) is None
    assert watch.check(215.1, 300, 301) is not None  # 10 s since it last had nothing to do

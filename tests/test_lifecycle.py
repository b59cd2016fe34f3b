"""Run lifecycle with real processes: resets, runs, pausing (issue 15).

Uses contexts/run_lifecycle.py: a histogram and an average that a new run
clears, an average that only an explicit reset clears, and a plain view.
"""

from __future__ import annotations

import logging
import pathlib

import numpy as np
import pytest
from conftest import has_ipv6_loopback

from metropc.client import Client
from metropc.pipeline import Pipeline

pytestmark = pytest.mark.timeout(120)

CTX = str(pathlib.Path(__file__).resolve().parents[1] / "contexts" / "run_lifecycle.py")
VIEWS = ["tid_histogram", "mean_tid", "mean_tid_forever", "tid"]


def collect(client, until, timeout=30):
    """Results by view (path -> [payload]) until `until(results)` holds."""
    import time
    results = {}
    deadline = time.monotonic() + timeout
    while not until(results):
        assert time.monotonic() < deadline, {k: len(v) for k, v in results.items()}
        path, payload = client.recv(timeout=max(0.1, deadline - time.monotonic()))
        results.setdefault(path, []).append(payload)
    return results


def by_event(payloads):
    return {p["event_id"]: p for p in payloads}


def hist_total(payload):
    return int(np.asarray(payload["data"]).sum())


def test_reset_clears_accumulated_views_from_the_next_event_on():
    with Pipeline(CTX, source=None) as pipe, \
            Client(pipe.output_addr, views=VIEWS, timeout=30) as client:
        client.wait_index(timeout=30)  # subscribed: nothing published is missed
        for i in range(20):
            pipe.send({"internal#train_id": i})
        pipe.reset()                             # all views
        for i in range(20, 25):
            pipe.send({"internal#train_id": i})
        pipe.reset("mean_tid")                   # one view: the others go on
        for i in range(25, 30):
            pipe.send({"internal#train_id": i})
        got = collect(client, lambda r: all(len(r.get(f"view#{v}", ())) == 30
                                            for v in VIEWS))
    hist = by_event(got["view#tid_histogram"])
    assert [hist_total(hist[i]) for i in (0, 19, 20, 24, 25, 29)] == [1, 20, 1, 5, 6, 10]
    mean = by_event(got["view#mean_tid"])
    assert mean[19]["data"] == pytest.approx(9.5)
    assert mean[20]["data"] == pytest.approx(20.0)        # from the reset on
    assert mean[25]["data"] == pytest.approx(25.0)        # reset again, alone
    forever = by_event(got["view#mean_tid_forever"])
    assert forever[24]["data"] == pytest.approx(22.0)     # reset with all: 20..24
    assert forever[29]["data"] == pytest.approx(24.5)     # not reset alone: 20..29
    with pytest.raises(ValueError, match="nope"):
        Pipeline.reset(pipe, "nope")


def test_pause_computes_nothing_new_and_resume_goes_on():
    with Pipeline(CTX, source=None, drop_policy="oldest") as pipe, \
            Client(pipe.output_addr, views=["tid"], timeout=30) as client:
        client.wait_index(timeout=30)  # subscribed: nothing published is missed
        for i in range(5):
            pipe.send({"internal#train_id": i})
        collect(client, lambda r: len(r.get("view#tid", ())) == 5)
        pipe.pause()
        refused = [pipe.send({"internal#train_id": i}) for i in range(5, 10)]
        assert refused == [False] * 5
        index = client.wait_index(timeout=10)
        def count(path):  # the frontend's counters reach the index once a second
            entry = index.get(path)
            return -1 if entry is None else entry.counts
        while count("internal#paused_events") < 5 or count("internal#state") != 2:
            index = client.wait_index(timeout=10)
        pipe.resume()
        for i in range(10, 13):
            pipe.send({"internal#train_id": i})
        got = collect(client, lambda r: len(r.get("view#tid", ())) == 3)
        assert [p["data"] for p in got["view#tid"]] == [10, 11, 12]
        index = client.wait_index(timeout=10)
        while index["internal#state"].counts != 1:  # RUN
            index = client.wait_index(timeout=10)


def test_simulated_runs_reset_builtins_and_every_result_carries_its_run():
    # The simulator starts at once; on a loaded machine the client may first
    # hear from any run, so the test takes the first two whole runs it hears.
    def whole_runs(results):
        runs = [p.get("run") for p in results.get("view#tid_histogram", ())]
        later = set(runs) - set(runs[:1])  # the first run heard may be partial
        return [r for r in sorted(later) if runs.count(r) == 10]

    with Pipeline(CTX, source="sim", rate=50, run_length=10, max_events=400) as pipe, \
            Client(pipe.output_addr, views=["tid_histogram"], timeout=30) as client:
        client.wait_index(timeout=30)  # subscribed: nothing published is missed
        got = collect(client, lambda r: len(whole_runs(r)) >= 2)
    hist = got["view#tid_histogram"]
    runs = [p.get("run") for p in hist]
    assert runs == sorted(runs)
    for run in whole_runs(got)[:2]:
        # Each run starts empty: the counts go 1, 2, ..., 10 within it.
        assert [hist_total(p) for p in hist if p.get("run") == run] == list(range(1, 11))


def test_operator_runs_are_numbered_and_marked():
    with Pipeline(CTX, source=None) as pipe, \
            Client(pipe.output_addr, views=["tid_histogram"], timeout=30) as client:
        client.subscribe_topic("mark")
        client.wait_index(timeout=30)  # subscribed: nothing published is missed
        pipe.start_run()
        for i in range(3):
            pipe.send({"internal#train_id": i})
        pipe.end_run()
        pipe.start_run(7)
        pipe.send({"internal#train_id": 3})
        got = collect(client, lambda r: len(r.get("view#tid_histogram", ())) == 4
                      and len(r.get("mark", ())) >= 3)
    assert [p.get("run") for p in got["view#tid_histogram"]] == [1, 1, 1, 7]
    assert [hist_total(p) for p in got["view#tid_histogram"]] == [1, 2, 3, 1]
    assert [(m["kind"], m.get("run")) for m in got["mark"][:3]] == [
        ("run_start", 1), ("run_end", 1), ("run_start", 7)]


def test_run_numbers_out_of_int64_are_refused():
    from metropc.frontend import ThreadedFrontend
    with pytest.raises(ValueError, match=r"run number 18446744073709551616 is out of range"):
        ThreadedFrontend.start_run(None, 2**64)  # checked before anything is queued


def test_clients_control_the_pipeline_through_its_endpoint():
    from metropc.client import ControlError, Controller
    with Pipeline(CTX, source=None) as pipe, \
            Client(pipe.output_addr, views=["tid_histogram", "tid"], timeout=30) as client, \
            Controller.of(client) as control:
        assert control.address == pipe.control_addr
        for i in range(4):
            pipe.send({"internal#train_id": i})
        control.reset("tid_histogram")
        pipe.send({"internal#train_id": 4})
        got = collect(client, lambda r: len(r.get("view#tid_histogram", ())) == 5)
        assert [hist_total(p) for p in got["view#tid_histogram"]] == [1, 2, 3, 4, 1]
        with pytest.raises(ControlError, match="nope"):
            control.reset("nope")
        with pytest.raises(ControlError, match="unknown parameter"):
            control.set_parameters(nope=1)
        with pytest.raises(ControlError, match=r"no ACTION view named 'tid' .*actions: none"):
            control.action("tid")
        for bad in (2**70, -2):  # run numbers are int64 where they are stored
            with pytest.raises(ControlError, match=r"out of range \(0 to 2\*\*62\)"):
                control.start_run(bad)
        control.pause()
        while client.status.get("state") != "STOP":
            client.wait_index(timeout=10)
        control.resume()
        while client.status.get("state") != "RUN":
            client.wait_index(timeout=10)
        control.start_run(12)
        while client.status.get("run") != 12:
            client.wait_index(timeout=10)


def test_control_endpoint_refuses_clients_without_the_keys(tmp_path):
    from metropc.client import Controller
    from metropc.security import generate_keys
    keys = tmp_path / "keys"
    generate_keys(str(keys))
    with Pipeline(CTX, source=None, keys=str(keys)) as pipe:
        with Controller(pipe.control_addr, timeout=2) as intruder:
            with pytest.raises(TimeoutError):
                intruder.pause()
        with Controller(pipe.control_addr, keys=str(keys), timeout=10) as operator:
            operator.pause()
            operator.resume()


def test_two_run_directories_in_a_row_reset_builtins_at_the_boundary(tmp_path):
    """A replay of r0001 then r0002: each result carries its run number, and
    the builtins start empty with the second run."""
    pytest.importorskip("extra_data")
    from extra_data.tests.mockdata import write_file
    from extra_data.tests.mockdata.xgm import XGM

    dirs = []
    for run, (first, n) in ((1, (10000, 20)), (2, (10020, 4))):
        d = tmp_path / f"r{run:04d}"
        d.mkdir()
        write_file(str(d / f"RAW-R{run:04d}-DA01-S00000.h5"), [XGM("SA1_XTD2_XGM/DOOCS/MAIN")],
                   ntrains=n, firsttrain=first, chunksize=n)
        dirs.append(str(d))
    # Replays wait for the pipeline (drop policy "block"); the first run may
    # pass before the client listens (it has a second, at 20 Hz, to
    # subscribe), so the second one is checked whole.
    pipe = Pipeline(CTX, source=",".join(dirs), rate=20)
    try:
        with Client(pipe.output_addr, views=["tid_histogram"], timeout=30) as client:
            client.subscribe_topic("mark")
            got = collect(client, lambda r: len(r.get("view#tid_histogram", ())) >= 1
                          and any(m["kind"] == "run_end" and m.get("run") == 2
                                  for m in r.get("mark", ())))
    finally:
        pipe.close()
    hist = got["view#tid_histogram"]
    second = [p for p in hist if p.get("run") == 2]
    assert [p["event_id"] for p in second] == [10020, 10021, 10022, 10023]
    assert [hist_total(p) for p in second] == [1, 2, 3, 4]
    assert all(p.get("run") == 1 for p in hist if p["event_id"] < 10020)
    kinds = [(m["kind"], m.get("run")) for m in got["mark"]]
    assert ("run_start", 2) in kinds and ("run_end", 2) in kinds


def test_a_pipeline_built_not_started_feeds_from_its_first_event_on_start():
    """start=False: the source is open but feeds nothing until start(), so a
    client (or recorder) that subscribed first gets every event, even of a
    source that would be over before it could subscribe."""
    with Pipeline(CTX, source="sim", rate="max", max_events=20, start=False,
                  drop_policy="block") as pipe, \
            Client(pipe.output_addr, views=["tid"], timeout=30) as client:
        client.wait_index(timeout=30)  # subscribed: nothing published is missed
        assert not pipe.finished.is_set()
        pipe.start()
        pipe.start()  # once only
        got = collect(client, lambda r: len(r.get("view#tid", ())) == 20)
        assert pipe.finished.wait(30)
    tids = [p["data"] for p in got["view#tid"]]
    assert tids == list(range(tids[0], tids[0] + 20))


SLOW_CTX = """
import time

@View.Scalar
def tid(tid: 'internal#train_id'):
    time.sleep(0.005)  # the source is done long before the pool
    return tid
"""


def test_drain_lets_the_last_events_of_a_finished_source_through():
    """A finite source is done long before its last events are: drain()
    waits until each went through REDUCE, so close() loses none of them."""
    with Pipeline(SLOW_CTX, source="sim", rate="max", max_events=100, start=False,
                  drop_policy="block", pool=1) as pipe, \
            Client(pipe.output_addr, views=["tid"], timeout=30) as client:
        client.wait_index(timeout=30)
        pipe.start()
        assert pipe.finished.wait(30)
        assert pipe.in_flight() > 0
        assert pipe.drain() == 0
        assert pipe.in_flight() == 0
        pipe.close()  # at once: what is published is on its way to the client
        got = collect(client, lambda r: len(r.get("view#tid", ())) == 100)
    tids = [p["data"] for p in got["view#tid"]]
    assert tids == list(range(tids[0], tids[0] + 100))


def test_close_counts_and_names_the_events_it_stops(caplog):
    """close() without drain() stops the stages with events still in them:
    they produce no results, so they are counted and named in a warning."""
    ctx = SLOW_CTX.replace("time.sleep(0.005)", "time.sleep(0.5)")
    with Pipeline(ctx, source=None, pool=1, drop_policy="block") as pipe, \
            Client(pipe.output_addr, views=["tid"], timeout=30) as client:
        client.wait_index(timeout=30)
        for i in range(6):
            assert pipe.send({"internal#train_id": i})
        assert pipe.abandoned == 0
        with caplog.at_level(logging.WARNING, logger="metropc"):
            pipe.close()  # within the first view call: none is through
        assert pipe.abandoned == 6
    assert "stopping with 6 event(s) still in the pipeline" in caplog.text


def test_close_after_drain_names_nothing(caplog):
    with Pipeline(SLOW_CTX, source=None, pool=1) as pipe, \
            Client(pipe.output_addr, views=["tid"], timeout=30) as client:
        client.wait_index(timeout=30)
        for i in range(6):
            assert pipe.send({"internal#train_id": i})
        assert pipe.drain(timeout=30) == 0
        with caplog.at_level(logging.WARNING, logger="metropc"):
            pipe.close()
        assert pipe.abandoned == 0
    assert "still in the pipeline" not in caplog.text


def test_marks_are_no_events_and_drain_waits_for_them(caplog):
    """Steps and resets travel like events but are none: drain() waits until
    they are through REDUCE too, and close() does not count them as events."""
    with Pipeline(CTX, source=None, pool=1) as pipe, \
            Client(pipe.output_addr, views=VIEWS, timeout=30) as client:
        client.wait_index(timeout=30)
        for i in range(3):
            assert pipe.send({"internal#train_id": i})
        pipe.step()
        pipe.reset()
        pipe.step()
        assert pipe.drain(timeout=30) == 0
        assert pipe.frontend.unfinished() == 0  # the marks went through as well
        pipe.step()
        pipe.step()
        with caplog.at_level(logging.WARNING, logger="metropc"):
            pipe.close()
        assert pipe.abandoned == 0
    assert "still in the pipeline" not in caplog.text


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback on this host")
def test_a_pipeline_on_ipv6_addresses():
    """Bracketed IPv6 addresses work for every socket: stages, output, control."""
    from metropc.client import Controller
    with Pipeline(CTX, source=None, output="tcp://[::1]:*", control="tcp://[::1]:*",
                  reduce="tcp://[::1]:*", control_endpoint="tcp://[::1]:*") as pipe, \
            Client(pipe.output_addr, views=["tid"], timeout=30) as client:
        assert pipe.output_addr.startswith("tcp://[::1]:")
        assert pipe.control_addr.startswith("tcp://[::1]:")
        client.wait_index(timeout=30)
        for i in range(3):
            pipe.send({"internal#train_id": i})
        got = collect(client, lambda r: len(r.get("view#tid", ())) == 3)
        assert [p["data"] for p in got["view#tid"]] == [0, 1, 2]
        with Controller(pipe.control_addr, timeout=10) as operator:
            operator.pause()
        index = client.wait_index(timeout=10)
        while index["internal#state"].counts != 2:  # STOP
            index = client.wait_index(timeout=10)


def test_stopping_the_source_of_a_paused_replay_does_not_hang():
    """With ``block``, a paused pipeline makes the source wait; told to stop,
    it stops waiting (its event was not accepted: nothing to count)."""
    with Pipeline(CTX, source="sim", rate="max", drop_policy="block") as pipe, \
            Client(pipe.output_addr, views=["tid"], timeout=30) as client:
        client.wait_index(timeout=30)
        pipe.pause()
        pipe.stop_source(timeout=20)
        assert pipe.finished.is_set()  # the feeding thread ended
        assert pipe.drain(timeout=20) == 0


def test_a_stage_that_cannot_bind_ends_the_start_at_once_saying_why():
    """REDUCE reports that it cannot bind its output (ZeroMQ refuses the
    address); the pipeline does not wait its whole start timeout for it."""
    with pytest.raises(RuntimeError, match=r"cannot bind tcp://127\.0\.0\.1;127\.0\.0\.2:5555"):
        Pipeline(CTX, source=None, output="tcp://127.0.0.1;127.0.0.2:5555")

"""The pipeline survives faults: dead or stuck workers, a dead REDUCE, bad
views, malformed messages, contexts that fail only in some stages.

Every test provokes the fault for real (SIGKILL, os.abort() in a view, an
endless loop, garbage frames on the stages' sockets) and checks what goes on.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import zmq

from conftest import pid_running, wait_for
from metropc.frontend import Context, ProcessRunner
from metropc.stage.dispatcher import BATCH_MAX

pytestmark = pytest.mark.timeout(90)

COUNTING_CTX = """
import os

@View.Scalar
def tid(t: 'internal#train_id'):
    if t == abort_on:
        os.abort()            # a segfault-like crash in user code
    if t == hang_on:
        while True:           # a view that never returns
            pass
    return t

@View.Scalar(stage='reduce')
def total(t: 'view#tid'):
    return t

parameters(abort_on=-1, hang_on=-1)
"""


class Feeder:
    """Feeds train ids at a steady pace from a thread until stopped."""

    def __init__(self, fe, rate=200.0, start=0):
        self.fe, self.period, self.next = fe, 1.0 / rate, start
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.is_set():
            self.fe.queue_to_any(b"event", {"internal#train_id": self.next})
            self.next += 1
            self.stop.wait(self.period)

    def close(self):
        self.stop.set()
        self.thread.join(5)


def start_counting(pipeline, collector_factory, **kwargs):
    fe = pipeline(sr_cls=ProcessRunner, **kwargs)
    col = collector_factory(fe.output_addr).wait_connected(fe)
    fe.queue_to_all(b"context", Context(COUNTING_CTX, version=1).to_dict())
    return fe, col


def test_stage_processes_carry_their_names(pipeline, collector_factory):
    """`top`, `pgrep metropc-reduce` and `pstree` tell the stages apart."""
    fe, col = start_counting(pipeline, collector_factory)
    for name in ("pool-0", "pool-1", "reduce"):
        with open(f"/proc/{fe._runners[name].pid}/comm") as f:
            assert f.read().strip() == f"metropc-{name}"


def test_killed_worker_is_replaced_and_its_events_counted(pipeline, collector_factory):
    fe, col = start_counting(pipeline, collector_factory)
    feeder = Feeder(fe)
    try:
        col.poll_until(lambda m: len(col.values("total")) >= 50)
        victim = fe._runners["pool-0"].pid
        os.kill(victim, signal.SIGKILL)
        t_kill = time.monotonic()
        wait_for(lambda: fe._runners["pool-0"].pid != victim
                 and fe._runners["pool-0"].is_alive(), timeout=10)
        replaced_after = time.monotonic() - t_kill
        n = len(col.values("total"))
        col.poll_until(lambda m: len(col.values("total")) >= n + 100)
    finally:
        feeder.close()
    assert replaced_after < 1.5
    assert any("pool-0 died" in e and "lost" in e for e in fe.errors), fe.errors
    # At most what that worker held is lost (prefetch messages of <= BATCH_MAX events).
    assert fe.lost_events <= fe.prefetch * BATCH_MAX
    got = col.values("total")
    assert got == sorted(got)  # still in order
    # Every event fed gave its result or is counted lost.  (The index, not
    # fe.lost_events: results that left the worker just before the kill come.)
    def accounted():
        index = col.indexes()[-1] if col.indexes() else {}
        counted = [index.get(f"internal#{k}") for k in ("lost_events", "dropped_events")]
        return None not in counted and \
            len(col.values("total")) + sum(e.counts for e in counted) == feeder.next
    col.poll_until(lambda m: accounted(), timeout=30)


def test_abort_in_user_code_loses_only_that_workers_events(pipeline, collector_factory):
    fe, col = start_counting(pipeline, collector_factory)
    fe.queue_to_all(b"params", {"abort_on": 100})
    feeder = Feeder(fe)
    try:
        col.poll_until(lambda m: any(v > 300 for v in col.values("total")), timeout=30)
    finally:
        feeder.close()
    got = set(col.values("total"))
    assert 100 not in got
    assert any("died (exit code -6)" in e for e in fe.errors), fe.errors
    missing = set(range(max(got))) - got
    assert len(missing) == fe.lost_events <= fe.prefetch * 32


def test_hung_view_gets_its_worker_replaced_and_the_rest_keeps_going(
        pipeline, collector_factory):
    fe, col = start_counting(pipeline, collector_factory, event_timeout=1.0)
    fe.queue_to_all(b"params", {"hang_on": 50})
    feeder = Feeder(fe, rate=100)
    try:
        col.poll_until(lambda m: any(v > 250 for v in col.values("total")), timeout=30)
    finally:
        feeder.close()
    assert any("more than 1 s per event" in e for e in fe.errors), fe.errors
    assert 50 not in col.values("total")
    assert fe.restarts["pool-0"] + fe.restarts["pool-1"] == 1


def test_dead_reduce_is_restarted_on_the_same_output(pipeline, collector_factory):
    fe, col = start_counting(pipeline, collector_factory)
    feeder = Feeder(fe)
    try:
        col.poll_until(lambda m: len(col.values("total")) >= 30)
        address = fe.output_addr
        os.kill(fe._runners["reduce"].pid, signal.SIGKILL)
        wait_for(lambda: any("reduce died" in e for e in fe.errors), timeout=10)
        n = len(col.values("total"))
        col.poll_until(lambda m: len(col.values("total")) >= n + 50, timeout=30)

        def events_out():  # the index's count of events out (the status's "out")
            entry = col.indexes()[-1].get("internal#event") if col.indexes() else None
            return 0 if entry is None else entry.counts
        # It goes on from the old REDUCE's count (less its last report's 20 ms).
        col.poll_until(lambda m: events_out() >= n + 40, timeout=10)
    finally:
        feeder.close()
    assert fe.output_addr == address
    assert any("accumulated state" in e and "lost" in e for e in fe.errors)
    after = col.values("total")[n:]
    assert after == sorted(after)


BAD_VIEW_CTX = """
@View.Scalar
def fragile(t: 'internal#train_id'):
    if t % 2:
        raise ValueError(f"odd train {t}")
    return t

@View.Scalar
def fine(t: 'internal#train_id'):
    return t
"""


def test_failing_view_is_reported_rate_limited_and_counted(pipeline, collector_factory):
    fe = pipeline(num_pool_stages=1)
    col = collector_factory(fe.output_addr).wait_connected(fe)
    fe.queue_to_all(b"context", Context(BAD_VIEW_CTX, version=1).to_dict())
    for t in range(200):
        fe.queue_to_any(b"event", {"internal#train_id": t})
    col.poll_until(lambda m: len(col.values("fine")) >= 200)
    assert col.values("fine") == list(range(200))
    assert col.values("fragile") == list(range(0, 200, 2))
    reports = [e for e in fe.errors if "fragile" in e]
    assert len(reports) == 1  # once, not once per event
    assert "<ctx>:5: view 'fragile' failed on event 1: ValueError: odd train 1" in reports[0]
    col.poll_until(lambda m: any(d.get("view#fragile") and d["view#fragile"].errors == 100
                                 for d in col.indexes()))


def test_malformed_messages_on_every_bound_socket_are_rejected(pipeline, collector_factory):
    fe, col = start_counting(pipeline, collector_factory)
    zctx = zmq.Context()
    garbage = [[b"result", b"\x05zz"], [b"\xff\xfe"], [b"batch", b"not msgpack", b"x"],
               [b"pbatch", b"not a pickle"], [b"result", b"\x00p", b"#meta", b"\x80junk"],
               [b"event"], [b"credit", b"\x00i", b"n", b"abc"]]
    try:
        push = zctx.socket(zmq.PUSH)          # into REDUCE's result socket
        push.linger = 0
        push.connect(fe.reduce_addr)
        dealer = zctx.socket(zmq.DEALER)      # into the frontend's control socket
        dealer.linger = 0
        dealer.identity = b"intruder"
        dealer.connect(fe.control_addr)
        for frames in garbage * 20:
            push.send_multipart(frames)
            dealer.send_multipart(frames)
        for t in range(100):
            fe.queue_to_any(b"event", {"internal#train_id": t})
        col.poll_until(lambda m: len(col.values("total")) >= 100)
        push.close()
        dealer.close()
    finally:
        zctx.term()
    assert col.values("total") == list(range(100))
    assert all(r.is_alive() for r in fe._runners.values())
    assert not fe.panics


def test_context_that_fails_only_in_the_workers_is_refused_everywhere(
        pipeline, collector_factory):
    fe, col = start_counting(pipeline, collector_factory)
    for t in range(20):
        fe.queue_to_any(b"event", {"internal#train_id": t})
    col.poll_until(lambda m: len(col.values("total")) >= 20)
    worker_only_failure = COUNTING_CTX.replace(
        "parameters(abort_on=-1, hang_on=-1)",
        "parameters(abort_on=-1, hang_on=-1)\n"
        "from metropc import ContextStage\n"
        "if ctx.stage is ContextStage.POOL:\n"
        "    raise RuntimeError('no detector library on the worker nodes')\n")
    fe.queue_to_all(b"context", Context(worker_only_failure, version=2).to_dict())
    for t in range(20, 60):
        fe.queue_to_any(b"event", {"internal#train_id": t})
    col.poll_until(lambda m: len(col.values("total")) >= 60)
    assert col.values("total") == list(range(60))  # the old context ran on
    assert all(p["version"] == 1 for p in col.payloads("total"))
    refusal = [e for e in fe.errors if "context version 2 refused" in e]
    assert refusal and "no detector library on the worker nodes" in refusal[0]
    assert "<ctx>:" in refusal[0]


def test_close_stops_every_process_and_leaves_no_socket_files(collector_factory):
    from conftest import recording_frontend

    fe = recording_frontend()(num_pool_stages=2, sr_cls=ProcessRunner)
    assert fe.wait_ready(30)
    tmpdir = fe._tmpdir
    pids = [r.pid for r in fe._runners.values()]
    assert os.listdir(tmpdir)  # control and reduce ipc sockets
    t0 = time.monotonic()
    fe.close(timeout=5)
    assert time.monotonic() - t0 < 5
    assert not os.path.exists(tmpdir)
    for pid in pids:
        assert not pid_running(pid)


def _die_at_start(**kwargs):
    raise SystemExit(3)


class _OneBrokenRunner(ProcessRunner):
    """pool-1 dies at once, every time it is started."""

    def start(self):
        if self.name == "pool-1":
            self.target = _die_at_start
        super().start()


def test_stage_that_cannot_start_is_given_up_not_restarted_forever():
    from conftest import recording_frontend

    fe = recording_frontend()(num_pool_stages=2, sr_cls=_OneBrokenRunner)
    try:
        t0 = time.monotonic()
        assert not fe.wait_ready(30)
        assert time.monotonic() - t0 < 10
        wait_for(lambda: fe.panics, timeout=10)
        assert "pool-1" in fe.panics[0] and "not restarted" in fe.panics[0]
        assert fe.restarts["pool-1"] == 0
    finally:
        fe.close(timeout=5)


PID_CTX = """
import os, time
@View.Scalar
def pid(t: 'internal#train_id'):
    time.sleep(0.005)
    return os.getpid()
"""


def test_events_are_shared_between_workers(pipeline, collector_factory):
    fe = pipeline(sr_cls=ProcessRunner)
    col = collector_factory(fe.output_addr).wait_connected(fe)
    fe.queue_to_all(b"context", Context(PID_CTX, version=1).to_dict())
    feeder = Feeder(fe, rate=150)
    try:
        col.poll_until(lambda m: len(col.values("pid")) >= 300, timeout=30)
    finally:
        feeder.close()
    pids = col.values("pid")[:300]
    shares = sorted(pids.count(p) for p in set(pids))
    assert len(shares) == 2 and shares[0] >= 60, shares

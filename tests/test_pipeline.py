"""End-to-end tests of the pipeline: real stages, real ZeroMQ sockets.

Most tests run the stages as threads (``ThreadRunner``) to stay fast; the
ordering and EXtra-foam tests use real child processes (``ProcessRunner``).
"""

from __future__ import annotations

import collections
import itertools
import os
import random
import string
import threading

import pytest
from conftest import wait_for

from metropc.client import IndexEntry, IndexViewEntry, ViewOutput, decode_protocol
from metropc.enums import ViewStage
from metropc.frontend import Context, ProcessRunner, ThreadedFrontend

pytestmark = pytest.mark.timeout(60)


def events(ids, **extra):
    return [{"internal#train_id": i, **extra} for i in ids]


def set_context(fe, source, version=1, **kwargs):
    ctx = Context(source, version=version, **kwargs)
    fe.queue_to_all(b"context", ctx.to_dict())
    return ctx


ORDER_CTX = """
import time, random
@View.Compute
def jitter(t: 'internal#train_id'):
    time.sleep(random.random() * 0.004)   # finish out of order
    return t

@View.Scalar(stage='reduce')
def ordered(t: 'view#jitter'):
    return t
"""


def run_in_processes(pipeline, collector_factory, source, n, view):
    """Run context `source` in stage processes over events 0 .. n-1; the
    collector, once `view` has n results."""
    fe = pipeline(sr_cls=ProcessRunner)
    col = collector_factory(fe.output_addr).wait_connected(fe)
    set_context(fe, source)
    for ev in events(range(n)):
        fe.queue_to_any(b"event", ev)
    col.poll_until(lambda m: len(col.values(view)) >= n, timeout=30)
    return col


def test_results_reach_reduce_in_event_order_through_two_worker_processes(
        pipeline, collector_factory):
    col = run_in_processes(pipeline, collector_factory, ORDER_CTX, 200, "ordered")
    assert col.values("ordered") == list(range(200))
    assert [p["event_id"] for p in col.payloads("ordered")] == list(range(200))


PARAM_CTX = """
parameters(scale=1)

@View.Scalar
def scaled(t: 'internal#train_id'):
    return t * scale
"""


def test_params_reach_every_stage_and_apply_to_the_next_events(pipeline, collector_factory):
    fe = pipeline()
    col = collector_factory(fe.output_addr).wait_connected(fe)
    set_context(fe, PARAM_CTX)
    for ev in events(range(50)):
        fe.queue_to_any(b"event", ev)
    fe.queue_to_all(b"params", {"scale": 10})
    for ev in events(range(50, 100)):
        fe.queue_to_any(b"event", ev)
    col.poll_until(lambda m: len(col.values("scaled")) >= 100)
    by_id = {p["event_id"]: p["data"] for p in col.payloads("scaled")}
    assert by_id == {i: i * (1 if i < 50 else 10) for i in range(100)}


def test_params_the_context_cannot_take_are_reported_once_and_not_applied(
        pipeline, collector_factory):
    """Values sent straight to the stages (as EXtra-foam does) are checked
    there: a whole float is taken by an int parameter, a wrong value or an
    unknown name is reported through on_pipeline_error, once, by REDUCE."""
    fe = pipeline(sr_cls=ProcessRunner)
    col = collector_factory(fe.output_addr).wait_connected(fe)
    set_context(fe, PARAM_CTX, path="param_ctx.py")
    fe.queue_to_all(b"params", {"scale": 3.0})        # a slider's whole number
    fe.queue_to_all(b"params", {"scale": 2.5, "scael": 4})
    for ev in events(range(20)):
        fe.queue_to_any(b"event", ev)
    col.poll_until(lambda m: len(col.values("scaled")) >= 20, timeout=30)
    assert col.values("scaled") == [i * 3 for i in range(20)]
    wait_for(lambda: len(fe.errors) >= 2, timeout=10)
    assert sorted(fe.errors) == [
        "[reduce] parameters: param_ctx.py: unknown parameter 'scael'; did you mean "
        "'scale'? (this context declares: scale); not applied",
        "[reduce] parameters: param_ctx.py:2: parameter 'scale' is an int (declared as 1) "
        "and cannot take 2.5 (not a whole number); not applied"]


def test_reload_under_load_never_mixes_versions(pipeline, collector_factory):
    fe = pipeline()
    col = collector_factory(fe.output_addr).wait_connected(fe)
    set_context(fe, "@View.Scalar\ndef a(t: 'internal#train_id'): return t\n", version=1)
    stop = threading.Event()

    def feed():
        i = 0
        while not stop.is_set() and i < 20000:
            fe.queue_to_any(b"event", {"internal#train_id": i})
            i += 1
            if i % 50 == 0:
                stop.wait(0.001)

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        col.poll_until(lambda m: len(col.values("a")) >= 20)
        set_context(fe, "@View.Scalar\ndef b(t: 'internal#train_id'): return -t\n",
                    version=2)
        col.poll_until(lambda m: len(col.values("b")) >= 20)
    finally:
        stop.set()
        feeder.join()
    a, b = col.payloads("a"), col.payloads("b")
    assert all(p["version"] == 1 for p in a)
    assert all(p["version"] == 2 and p["data"] == -p["event_id"] for p in b)
    # Every result of the old context precedes every result of the new one.
    assert max(p["event_id"] for p in a) < min(p["event_id"] for p in b)
    col.poll_until(lambda m: any("view#b" in d for d in col.indexes()))
    assert not any("view#a" in d for d in col.indexes()[-1:])


ACTION_CTX = """
@View.Scalar
def tid(t: 'internal#train_id'):
    return t

@View.Scalar(stage='action')
def snapshot(t: 'view#tid'):
    return t * 100
"""


def test_action_runs_on_request_with_the_latest_values(pipeline, collector_factory):
    fe = pipeline()
    col = collector_factory(fe.output_addr).wait_connected(fe)
    set_context(fe, ACTION_CTX)
    for ev in events(range(10)):
        fe.queue_to_any(b"event", ev)
    col.poll_until(lambda m: 9 in col.values("tid"))
    assert col.values("snapshot") == []
    fe.queue_to("reduce", b"action", {"view_name": "snapshot"})
    col.poll_until(lambda m: col.values("snapshot"))
    assert col.values("snapshot") == [900]
    n = len(col.indexes())
    fe.queue_to("reduce", b"index")
    col.poll_until(lambda m: len(col.indexes()) > n)
    entry = col.indexes()[-1]["view#snapshot"]
    assert entry.stage == ViewStage.ACTION
    assert entry.counts == 1  # action runs count like any result


STEP_CTX = """
@View.Scalar
def tid(t: 'internal#train_id'):
    return t

@View.Scalar(stage='step')
def at_step(t: 'view#tid'):
    return t
"""


def test_step_boundary_runs_step_views_after_the_events_before_it(pipeline, collector_factory):
    fe = pipeline()
    col = collector_factory(fe.output_addr).wait_connected(fe)
    set_context(fe, STEP_CTX)
    for ev in events(range(30)):
        fe.queue_to_any(b"event", ev)
    fe.step()
    for ev in events(range(30, 40)):
        fe.queue_to_any(b"event", ev)
    fe.step()
    col.poll_until(lambda m: len(col.values("at_step")) >= 2)
    assert col.values("at_step") == [29, 39]


INDEX_CTX = """
@View.Scalar
def tid(t: 'internal#train_id'):
    return t

@View.Compute
def hidden_work(t: 'internal#train_id'):
    return t

@View.Vector(hidden=True, label='Spectrum')
def spectrum(x: 'karabo#SPEC/A/B:output[data.spectrum]'):
    return x

@View.Scalar
def broken(t: 'internal#train_id'):
    return 1 / 0
"""


def test_index_lists_views_and_inputs_with_counts(pipeline, collector_factory):
    import numpy as np
    fe = pipeline()
    col = collector_factory(fe.output_addr).wait_connected(fe)
    set_context(fe, INDEX_CTX)
    for ev in events(range(25), **{"karabo#SPEC/A/B:output[data.spectrum]": np.arange(4.0)}):
        fe.queue_to_any(b"event", ev)

    def complete(m):
        idx = col.indexes()
        return idx and idx[-1].get("view#tid") and idx[-1]["view#tid"].counts == 25 \
            and idx[-1].get("internal#train_id") and idx[-1]["internal#train_id"].counts == 25

    col.poll_until(complete, timeout=15)  # the index comes about once a second
    idx = col.indexes()[-1]
    assert isinstance(idx["view#tid"], IndexViewEntry)
    assert idx["view#tid"].output == ViewOutput.SCALAR
    assert idx["view#tid"].stage == ViewStage.POOL
    assert idx["view#hidden_work"].output == ViewOutput.COMPUTE
    assert idx["view#spectrum"].hidden and idx["view#spectrum"].label == "Spectrum"
    assert idx["view#broken"].errors == 25 and idx["view#broken"].counts == 0
    assert isinstance(idx["internal#train_id"], IndexEntry)
    assert not isinstance(idx["internal#train_id"], IndexViewEntry)
    assert idx["karabo#SPEC/A/B:output[data.spectrum]"].counts == 25
    assert idx["internal#dropped_events"].counts == 0
    # COMPUTE results are never published.
    assert col.values("hidden_work") == []
    np.testing.assert_array_equal(col.values("spectrum")[0], np.arange(4.0))


COUNTS_CTX = """
set_view_docs('det', 'Detector', 'Hit finding on the detector')

@View.Scalar
def hits(t: 'internal#train_id'):
    increase_view_counts('hits_total', 2)   # a pure counter, counted in POOL
    increase_view_counts('hits', 10)        # adds to a view's own count
    return t

@View.Scalar(stage='reduce')
def summed(h: 'view#hits'):
    ctx.increase_view_counts('reduce_total', 1)
    return h
"""


def test_view_counts_of_every_stage_reach_the_index_as_in_process(pipeline, collector_factory):
    """increase_view_counts() in POOL kernels counts as it does in-process;
    a pure counter is a plain entry, which EXtra-foam's loop does not take
    for a view; set_view_docs() of a name that is no view comes with the
    context topic."""
    import metropc
    n = 30
    local = Context(COUNTS_CTX)
    list(metropc.run(local, events(range(n))))
    assert dict(local.view_counts) == {"hits_total": 2 * n, "hits": 10 * n, "reduce_total": n}

    fe = pipeline(sr_cls=ProcessRunner)
    col = collector_factory(fe.output_addr).wait_connected(fe)
    set_context(fe, COUNTS_CTX)
    for ev in events(range(n)):
        fe.queue_to_any(b"event", ev)

    def counted(m):
        idx = col.indexes()
        return idx and "view#hits_total" in idx[-1] and idx[-1]["view#hits_total"].counts == 2 * n

    col.poll_until(counted, timeout=20)  # workers send their counts about once a second
    idx = col.indexes()[-1]
    assert idx["view#hits"].counts == n + 10 * n  # results, and what the kernel added
    assert idx["view#summed"].counts == n
    assert idx["view#reduce_total"].counts == n
    for name in ("hits_total", "reduce_total"):
        assert type(idx[f"view#{name}"]) is IndexEntry
    assert {p for p, e in idx.items() if isinstance(e, IndexViewEntry)} == {
        "view#hits", "view#summed"}
    (context,) = [d for p, d in col.messages if p == "context"]
    assert context["docs"] == {"det": ["Detector", "Hit finding on the detector"]}


SLOW_CTX = """
import time
@View.Scalar
def slow(t: 'internal#train_id'):
    time.sleep(0.02)
    return t
"""


@pytest.mark.parametrize("policy", ["oldest", "newest"])
def test_overload_drops_by_policy_and_counts(pipeline, collector_factory, policy):
    fe = pipeline(num_pool_stages=1, queue_size=4, drop_policy=policy, prefetch=1)
    col = collector_factory(fe.output_addr).wait_connected(fe)
    set_context(fe, SLOW_CTX)
    for ev in events(range(200)):
        fe.queue_to_any(b"event", ev)
    assert len(fe._events) <= 4
    col.poll_until(lambda m: any(d.get("internal#dropped_events") and
                                 d["internal#dropped_events"].counts >= 150
                                 for d in col.indexes()), timeout=15)
    col.poll_until(lambda m: len(col.values("slow")) >= 200 - fe.dropped)
    got = col.values("slow")
    assert len(got) == 200 - fe.dropped
    assert got == sorted(got)
    if policy == "oldest":
        assert got[-1] == 199  # the newest survived
    else:
        assert got[0] == 0  # what waited first survived


def abstract_prefix():
    return "".join(random.choices(string.ascii_lowercase, k=8))


class FoamLikePipeline(ThreadedFrontend):
    """Shaped like EXtra-foam's MetroPipeline (correlator_proc.py)."""

    def __init__(self):
        self.ready_event = threading.Event()
        self.errors = []
        prefix = abstract_prefix()
        self.output_addr = f"ipc://@{prefix}-output"
        super().__init__(control_addr=f"ipc://@{prefix}-control",
                         reduce_addr=f"ipc://@{prefix}-reduce",
                         output_addr=self.output_addr,
                         queue_addr=f"inproc://{prefix}-ctrl-queue",
                         num_pool_stages=max(2, os.cpu_count() // 2),
                         sr_cls=ProcessRunner)

    def on_pipeline_ready(self):
        self.ready_event.set()

    def on_pipeline_error(self, msg):
        self.errors.append(msg)

    def on_pipeline_panic(self, msg):
        self.errors.append(msg)

    def on_pipeline_debug(self, msg):
        pass


FOAM_CTX = """
@View.Scalar
def scalar(tid: "internal#train_id"):
    return tid

@View.Vector
def digitizer(trace: "karabo#SQS_DIGITIZER_UTC1/ADC/1:network[digitizers.channel_1_A.raw.samples]"):
    return trace[:4]

@View.Compute
def compute(tid: "internal#train_id"):
    return tid
"""


def test_extra_foam_shaped_frontend_and_client(collector_factory):
    import numpy as np
    import zmq

    pipe = FoamLikePipeline()
    try:
        assert pipe.ready_event.wait(30)
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.linger = 0
        sub.connect(pipe.output_addr)
        sub.subscribe(b"index")
        ctx = Context(FOAM_CTX, version=0, features=["karabo"], event_alias="train")
        pipe.queue_to_all(b"context", ctx.to_dict())
        key = str(ctx.get_paths()[1])
        assert key == ("karabo#SQS_DIGITIZER_UTC1/ADC/1:network"
                       "[digitizers.channel_1_A.raw.samples]")
        subscribed, values = set(), {}
        tid = 1000
        deadline = __import__("time").monotonic() + 30
        while len(values.get("view#scalar", [])) < 5:
            assert __import__("time").monotonic() < deadline, values
            pipe.queue_to_any(b"event", {"internal#train_id": tid, "internal#event_id": tid,
                                         "internal#sequence_id": -1,
                                         "internal#ctx_version": ctx.version,
                                         key: np.arange(10, dtype=np.float32) + tid})
            tid += 1
            if not zmq.select([sub], [], [], timeout=0.05)[0]:
                pipe.queue_to("reduce", b"index")
                continue
            path, data = decode_protocol(sub.recv_multipart())
            if path == b"index":
                views = {p for p, v in data.items() if isinstance(v, IndexViewEntry)}
                assert views == {"view#scalar", "view#digitizer", "view#compute"}
                assert "internal#train" in data
                for p in views - subscribed:
                    sub.subscribe(p.encode())
                subscribed |= views
            else:
                values.setdefault(path.decode(), []).append(data["data"])
        sub.close(0)
        assert values["view#scalar"] == sorted(values["view#scalar"])
        assert "view#compute" not in values
        first = values["view#digitizer"][0]
        np.testing.assert_array_equal(first, np.arange(4, dtype=np.float32) + first[0])
        assert not pipe.errors
    finally:
        pipe.close(timeout=5)


BUILTIN_CTX = """
@View.Vector_Histogram(bin_min=0, bin_max=10, bin_count=10, output_every=5)
def digits(t: 'internal#train_id'):
    return t % 10

@View.Scalar_StepAverage
def per_step(t: 'internal#train_id'):
    return t

@View.Scalar_MovingAverage(N=4, output_every=4)
def moving(t: 'internal#train_id'):
    return float(t)
"""


def test_builtin_views_accumulate_in_reduce_across_worker_processes(
        pipeline, collector_factory):
    import numpy as np
    fe = pipeline(sr_cls=ProcessRunner)
    col = collector_factory(fe.output_addr).wait_connected(fe)
    set_context(fe, BUILTIN_CTX)
    for ev in events(range(20)):
        fe.queue_to_any(b"event", ev)
    fe.step()
    for ev in events(range(20, 30)):
        fe.queue_to_any(b"event", ev)
    fe.step()
    col.poll_until(lambda m: len(col.values("per_step")) >= 2
                   and len(col.values("digits")) >= 6)
    hist = col.values("digits")[3]  # after 20 events
    np.testing.assert_array_equal(hist.values, np.histogram(np.arange(20) % 10,
                                                            bins=10, range=(0, 10))[0])
    np.testing.assert_array_equal(hist.coords["bin"].values, np.arange(10) + 0.5)
    assert [float(v) for v in col.values("per_step")] == [9.5, 24.5]
    assert [float(v) for v in col.values("moving")][:2] == [1.5, 5.5]
    index = col.indexes()[-1]
    assert index["view#digits"].stage.name == "REDUCE"
    assert index["view#per_step"].stage.name == "STEP"


SLOW_VIEW_CTX = """
import os, time
@View.Scalar
def worker_pid(t: 'internal#train_id'):
    time.sleep(0.02)   # a slow view (sleeping, so the two workers never compete for a core)
    return os.getpid()
"""


def test_slow_views_spread_evenly_over_the_pool(pipeline, collector_factory):
    """Slow events queued in a burst go one per message, alternating between
    the workers, not 32 to one worker and then 32 to the other: the frontend
    starts from 'slow' and measures the cost per event as it goes."""
    fe = pipeline(sr_cls=ProcessRunner)
    col = collector_factory(fe.output_addr).wait_connected(fe)
    set_context(fe, SLOW_VIEW_CTX)
    for ev in events(range(100)):
        fe.queue_to_any(b"event", ev)
    col.poll_until(lambda m: len(col.values("worker_pid")) == 100, timeout=30)
    pids = col.values("worker_pid")  # in event order
    share = collections.Counter(pids)
    assert len(share) == 2 and min(share.values()) >= 45, share
    longest = max(len(list(run)) for _, run in itertools.groupby(pids))
    assert longest <= 8, pids  # at most the prefetch of single-event messages


def test_batches_hold_about_five_milliseconds_of_work():
    from metropc.stage.dispatcher import BATCH_MAX, batch_limit
    assert batch_limit(5e-6) == BATCH_MAX == 128  # tiny events share a message
    assert batch_limit(1e-3) == 5
    assert batch_limit(0.010) == 1                # a 10 ms view: one per message
    assert batch_limit(0.0) == BATCH_MAX


GC_CTX = """
import gc, os

@View.Scalar
def pool_frozen(t: 'internal#train_id'):
    return (os.getpid(), gc.get_freeze_count())

@View.Scalar(stage='reduce')
def reduce_frozen(p: 'view#pool_frozen'):
    return (os.getpid(), gc.get_freeze_count())
"""


def test_stage_processes_keep_their_imports_out_of_the_cyclic_collector(
        pipeline, collector_factory):
    """A full collection over numpy, xarray and pandas took ~40 ms here, a
    pause every event behind it waited for; stage processes freeze what
    they imported at start (gc.freeze), so collections see only new objects."""
    col = run_in_processes(pipeline, collector_factory, GC_CTX, 20, "reduce_frozen")
    stages = {tuple(v) for v in col.values("pool_frozen") + col.values("reduce_frozen")}
    assert all(pid != os.getpid() for pid, _ in stages)
    assert all(frozen > 10_000 for _, frozen in stages), stages

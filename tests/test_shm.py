"""Shared-memory slots for large arrays (metropc.stage.shm, docs/shm.md).

Real processes (``ProcessRunner``) and real segments in /dev/shm: results
are the same with slots and without, a killed worker's slots come back, a
full ring makes events wait (then the drop policy applies) and never
deadlocks, and no segment outlives its frontend, however it ends.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest

from conftest import running, wait_for
from metropc.client import IndexEntry
from metropc.error import ProtocolError
from metropc.frontend import Context, ProcessRunner
from metropc.stage import shm as shmem

pytestmark = [pytest.mark.timeout(90),
              pytest.mark.skipif(not shmem.available(), reason="no /dev/shm")]

IMG = "karabo#DET/SHM/1:output[data.image]"
SMALL = "karabo#DET/SHM/2:output[data.small]"
COUNTS = "karabo#DET/SHM/3:output[data.counts]"
SHAPE = (512, 512)  # float32: 1 MiB
BASE = np.arange(SHAPE[0] * SHAPE[1], dtype=np.float32).reshape(SHAPE)


def image(i):
    return BASE + np.float32(i)


def event(i):
    return {"internal#train_id": i, IMG: image(i), SMALL: np.arange(8.0) + i,
            COUNTS: np.full((256, 256), i, np.int16).T}   # large, Fortran order


VALUES_CTX = f"""
import numpy as np

@View.Scalar
def total(img: '{IMG}'):
    return float(img.sum(dtype=np.float64))

@View.Image
def same(img: '{IMG}'):
    return img                       # the input itself: must outlive its slot

@View.Vector
def corner(img: '{IMG}'):
    return img[0, :8]                # a small view of the input

@View.Image
def doubled(img: '{IMG}'):
    return img * 2                   # a new large result

@View.Image
def counts(c: '{COUNTS}'):
    return c                         # large, Fortran order, int16

@View.Vector
def small(s: '{SMALL}'):
    return s                         # below the threshold: always by socket

@View.Scalar
def writable(img: '{IMG}'):
    try:
        img[0, 0] = -1
    except ValueError:
        return 0                     # read-only, as documented
    return 1

@View.Scalar(stage='reduce')
def in_reduce(img: '{IMG}', d: 'view#doubled'):
    return float(img[1, 1]) + float(d[2, 2])
"""
VIEWS = ("total", "same", "corner", "doubled", "counts", "small", "writable", "in_reduce")


def start(pipeline, collector_factory, ctx, **kwargs):
    kwargs.setdefault("sr_cls", ProcessRunner)
    fe = pipeline(**kwargs)
    col = collector_factory(fe.output_addr).wait_connected(fe)
    fe.queue_to_all(b"context", Context(ctx, version=1).to_dict())
    return fe, col


def latest_index(col):
    return col.indexes()[-1] if col.indexes() else {}


def index_count(col, path):
    entry = latest_index(col).get(path)
    return None if entry is None else entry.counts


class Feeder:
    """Feeds event(i) at a steady pace from a thread until stopped."""

    def __init__(self, fe, rate=100.0, start=0, make=event):
        self.fe, self.period, self.next, self.make = fe, 1.0 / rate, start, make
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.is_set():
            self.fe.queue_to_any(b"event", self.make(self.next))
            self.next += 1
            self.stop.wait(self.period)

    def close(self):
        self.stop.set()
        self.thread.join(5)


# -- same results with and without shared memory ---------------------------------------

N_VALUES = 24


def run_values(pipeline, collector_factory, shm, n=N_VALUES):
    fe, col = start(pipeline, collector_factory, VALUES_CTX, shm=shm)
    assert (fe.shm is not None) == shm
    for i in range(n):
        fe.queue_to_any(b"event", event(i))
    col.poll_until(lambda m: all(len(col.payloads(v)) >= n for v in VIEWS), timeout=40)
    fe.queue_to("reduce", b"index")
    col.poll_until(lambda m: (index_count(col, "internal#shm_slots_used") is not None) == shm
                   and index_count(col, IMG) == n, timeout=10)
    out = {v: [(p["event_id"], p["data"]) for p in col.payloads(v)] for v in VIEWS}
    assert not fe.errors and not fe.panics
    return fe, col, out


def test_results_are_identical_with_and_without_shared_memory(pipeline, collector_factory):
    n = N_VALUES
    fe, col, with_shm = run_values(pipeline, collector_factory, shm=True)
    assert fe.shm.placed >= n  # the images did travel in slots
    index = latest_index(col)
    for key in ("internal#shm_slots_used", "internal#shm_bytes_used",
                "internal#shm_reclaimed", "internal#shm_full"):
        assert isinstance(index[key], IndexEntry), key
    assert index["internal#shm_reclaimed"].counts == 0
    # Every slot comes back; close() leaves no segment behind.
    names = shmem.owned_segments()
    assert fe.shm.input_name in names and len(names) >= 3  # events + one per worker
    col.poll_until(lambda m: index_count(col, "internal#shm_slots_used") == 0, timeout=10)
    fe.close(timeout=5)
    assert not set(names) & set(shmem.owned_segments())

    fe2, col2, without = run_values(pipeline, collector_factory, shm=False)
    assert "internal#shm_slots_used" not in latest_index(col2)

    for results in (with_shm, without):
        for view, values in results.items():
            assert [i for i, _ in values] == list(range(n)), view
        for i, value in results["total"]:
            assert value == float(image(i).sum(dtype=np.float64))
        for i, value in results["same"]:
            np.testing.assert_array_equal(value, image(i))
        for i, value in results["doubled"]:
            np.testing.assert_array_equal(value, image(i) * 2)
        for i, value in results["counts"]:
            assert value.dtype == np.int16 and value.flags.f_contiguous
            np.testing.assert_array_equal(value, np.full((256, 256), i, np.int16))
        assert [v for _, v in results["writable"]] == [0] * n
        assert [v for _, v in results["in_reduce"]] == [
            float(image(i)[1, 1] + image(i)[2, 2] * 2) for i in range(n)]
    for view in VIEWS:
        for (i, a), (j, b) in zip(with_shm[view], without[view]):
            assert i == j
            assert type(a) is type(b), view
            if isinstance(a, np.ndarray):
                assert a.dtype == b.dtype and a.shape == b.shape and \
                    a.flags.f_contiguous == b.flags.f_contiguous, view
                np.testing.assert_array_equal(a, b)
            else:
                assert a == b, view


# -- faults ---------------------------------------------------------------------------

SLOW_CTX = f"""
import time

@View.Scalar
def first(img: '{IMG}'):
    time.sleep(0.03)
    return float(img[0, 0])
"""


def test_killed_worker_slots_are_reclaimed_counted_and_the_pipeline_goes_on(
        pipeline, collector_factory):
    fe, col = start(pipeline, collector_factory, SLOW_CTX)
    feeder = Feeder(fe, rate=100)
    try:
        col.poll_until(lambda m: len(col.values("first")) >= 10)
        # Kill the worker while it holds slots (the frontend knows which).
        wait_for(lambda: fe.shm.holds("pool-0"), timeout=10, interval=0.001)
        victim = fe._runners["pool-0"].pid
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: fe._runners["pool-0"].pid != victim
                 and fe._runners["pool-0"].is_alive(), timeout=10)
        n = len(col.values("first"))
        col.poll_until(lambda m: len(col.values("first")) >= n + 20, timeout=30)
    finally:
        feeder.close()
    assert fe.shm.reclaimed >= 1
    assert any("pool-0 died" in e and "slot(s) it held are reclaimed" in e
               for e in fe.errors), fe.errors
    got = col.values("first")
    assert got == sorted(got) and all(v == float(v) for v in got)
    # Counted in the index; and once everything drained, nothing is held and
    # every event fed gave its result or is counted.  (Not fe.lost_events:
    # results that left the worker just before the kill still come.)
    col.poll_until(lambda m: index_count(col, "internal#shm_reclaimed") == fe.shm.reclaimed
                   and index_count(col, "internal#shm_slots_used") == 0
                   and len(col.values("first")) + index_count(col, "internal#lost_events")
                   + index_count(col, "internal#dropped_events") == feeder.next, timeout=15)


@pytest.mark.parametrize("policy", ["oldest", "newest"])
def test_full_ring_makes_events_wait_then_the_drop_policy_applies(
        pipeline, collector_factory, policy):
    # 2 MiB for events: two 1 MiB slots, fewer than the worker's credits.
    fe, col = start(pipeline, collector_factory, SLOW_CTX, num_pool_stages=1,
                    shm_size=4 << 20, queue_size=4, drop_policy=policy)
    sent = 60
    for i in range(sent):
        fe.queue_to_any(b"event", event(i))
        time.sleep(0.002)
    col.poll_until(lambda m: len(col.values("first")) >= sent - fe.dropped, timeout=30)
    got = [int(v) for v in col.values("first")]
    assert fe.dropped > 0 and len(got) == sent - fe.dropped
    assert got == sorted(got)
    if policy == "oldest":
        assert got[-1] == sent - 1
    else:
        assert got[0] == 0
    col.poll_until(lambda m: index_count(col, "internal#shm_full") == fe.shm.full > 0
                   and index_count(col, "internal#shm_slots_used") == 0
                   and index_count(col, "internal#dropped_events") == fe.dropped, timeout=10)
    assert not fe.errors and not fe.panics


KEEPING_CTX = f"""
kept = []

@View.Scalar
def intact(t: 'internal#train_id', img: '{IMG}'):
    kept.append((t, img))            # keeps every input: its slot stays pinned
    return sum(1 for i, a in kept if a[0, 0] != i or a[-1, -1] != i + a.size - 1)
"""


def test_views_that_keep_inputs_pin_slots_and_events_then_go_by_socket(
        pipeline, collector_factory):
    fe, col = start(pipeline, collector_factory, KEEPING_CTX, num_pool_stages=1,
                    shm_size=4 << 20)
    for i in range(12):
        fe.queue_to_any(b"event", event(i))
    col.poll_until(lambda m: len(col.values("intact")) >= 12, timeout=30)
    assert col.values("intact") == [0] * 12       # no kept array was overwritten
    assert fe.shm.placed >= 1 and fe.shm.full >= 1  # the ring filled with pinned slots
    assert not fe.errors


REDUCE_CTX = f"""
@View.Image
def same(img: '{IMG}'):
    return img

@View.Scalar(stage='reduce')
def check(t: 'internal#train_id', img: 'view#same'):
    return float(img[0, 0]) - t
"""


def test_restarted_reduce_gets_fresh_result_segments(pipeline, collector_factory):
    fe, col = start(pipeline, collector_factory, REDUCE_CTX)
    before = dict((w, s.name) for w, s in fe.shm.outputs.items())
    feeder = Feeder(fe, rate=100)
    try:
        col.poll_until(lambda m: len(col.values("check")) >= 20)
        os.kill(fe._runners["reduce"].pid, signal.SIGKILL)
        wait_for(lambda: any("reduce died" in e for e in fe.errors), timeout=10)
        n = len(col.values("check"))
        col.poll_until(lambda m: len(col.values("check")) >= n + 40, timeout=30)
    finally:
        feeder.close()
    after = dict((w, s.name) for w, s in fe.shm.outputs.items())
    assert set(after) == set(before) and not set(after.values()) & set(before.values())
    assert set(col.values("check")) == {0.0}


# -- no leftover segments ---------------------------------------------------------

RUN_CTX = """
@View.Scalar
def train(t: 'internal#train_id'):
    return t
"""


def test_sigterm_to_metropc_run_leaves_no_segments(tmp_path):
    ctx = tmp_path / "ctx.py"
    ctx.write_text(RUN_CTX)
    proc = subprocess.Popen(
        [sys.executable, "-m", "metropc.cli.run", str(ctx), "--pool", "1", "--rate", "20",
         "--status", "off"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "output on" in line, (line, proc.stderr.read() if proc.poll() else "")
        assert shmem.owned_segments(proc.pid)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert shmem.owned_segments(proc.pid) == []


KILLED_FRONTEND = """
import sys, time
from metropc.frontend import ProcessRunner, ThreadedFrontend
if __name__ == "__main__":
    fe = ThreadedFrontend(num_pool_stages=1, sr_cls=ProcessRunner)
    assert fe.wait_ready(30) and fe.shm is not None
    print("ready", flush=True)
    time.sleep(60)
"""


def test_segments_of_a_killed_frontend_are_removed_by_the_next_start(tmp_path, pipeline):
    script = tmp_path / "frontend.py"
    script.write_text(KILLED_FRONTEND)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        children = psutil.Process(proc.pid).children(recursive=True)
        left = shmem.owned_segments(proc.pid)
        assert len(left) == 2  # events, results of its one worker
        # No clean-up at all: the frontend and its resource tracker, which
        # would unlink them (test_faults.py), are killed (a SIGKILL to the
        # whole process group, say).
        tracker = [p for p in children if "resource_tracker" in " ".join(p.cmdline())]
        assert len(tracker) == 1, children
        tracker[0].kill()
        wait_for(lambda: not running(tracker[0]))  # (a zombie: its parent sleeps)
        proc.kill()
        proc.wait(10)
        psutil.wait_procs(children, timeout=10)  # stages follow (PR_SET_PDEATHSIG)
        assert shmem.owned_segments(proc.pid) == left
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    pipeline(num_pool_stages=1)  # any next frontend, even one not using shm
    assert shmem.owned_segments(proc.pid) == []


KILLED_TRACKER = """
import os, signal, time
from multiprocessing import resource_tracker
from metropc.frontend import ProcessRunner, ThreadedFrontend
if __name__ == "__main__":
    fe = ThreadedFrontend(num_pool_stages=1, sr_cls=ProcessRunner)
    assert fe.wait_ready(30) and fe.shm is not None
    pid = resource_tracker._resource_tracker._pid
    os.kill(pid, signal.SIGKILL)
    while open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()[0] != "Z":
        time.sleep(0.01)  # (a zombie until a relaunch would wait for it)
    fe.close()
    print("closed", os.getpid(), flush=True)
"""


def test_a_killed_resource_tracker_makes_no_tracebacks_at_the_end(tmp_path):
    """The tracker is killed (by hand, or with the process group): the
    frontend unlinks its segments itself and asks no tracker to forget them.
    Asking started a new tracker, with a warning, which printed a KeyError
    traceback for each segment it had never heard of."""
    script = tmp_path / "frontend.py"
    script.write_text(KILLED_TRACKER)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60)
    said, pid = proc.stdout.split()
    assert said == "closed", proc.stderr
    assert "Traceback" not in proc.stderr and "relaunching" not in proc.stderr, proc.stderr
    assert shmem.owned_segments(int(pid)) == []  # (the frontend unlinked them)


# -- workers on other hosts -------------------------------------------------------

PID_CTX = f"""
import os

@View.Scalar
def total(img: '{IMG}'):
    return float(img.sum(dtype=np.float64))

@View.Scalar
def pid(t: 'internal#train_id'):
    return os.getpid()

import numpy as np
"""


def test_remote_worker_gets_arrays_by_socket_next_to_a_local_one(pipeline, collector_factory):
    fe, col = start(pipeline, collector_factory, PID_CTX, num_pool_stages=1,
                    control_addr="tcp://127.0.0.1:*", reduce_addr="tcp://127.0.0.1:*")
    worker = subprocess.Popen(
        [sys.executable, "-m", "metropc.cli.worker", "--control", fe.control_addr,
         "--reduce", fe.reduce_addr, "--name", "far-away"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: "pool-far-away" in fe._state.remote, timeout=20)
        n = 0
        while worker.pid not in col.values("pid"):
            assert n < 400, "the remote worker got no events"
            for i in range(n, n + 10):
                fe.queue_to_any(b"event", event(i))
            n += 10
            col.poll_until(lambda m: len(col.values("total")) >= n, timeout=20)
    finally:
        worker.terminate()
        worker.wait(10)
    assert fe._state.shm_workers == {"pool-0"}  # the local one only
    assert fe.shm.placed > 0
    assert len(set(col.values("pid"))) == 2
    by_id = {p["event_id"]: p["data"] for p in col.payloads("total")}
    assert by_id == {i: float(image(i).sum(dtype=np.float64)) for i in range(n)}
    assert not fe.errors


# -- the pieces, without processes ----------------------------------------------------

def test_arena_allocates_first_fit_and_coalesces():
    arena = shmem.Arena(10)
    a, b, c = arena.alloc(3), arena.alloc(3), arena.alloc(3)
    assert (a, b, c) == (0, 3, 6) and arena.alloc(2) is None and arena.used == 9
    arena.free(b, 3)
    assert arena.alloc(4) is None and arena.alloc(2) == 3
    arena.free(a, 3)
    arena.free(3, 2)
    arena.free(c, 3)
    assert arena.starts == [0] and arena.sizes == {0: 10} and arena.used == 0
    assert arena.alloc(10) == 0


def test_parse_size():
    assert shmem.parse_size("1G") == 1 << 30
    assert shmem.parse_size("512M") == 512 << 20
    assert shmem.parse_size("65536") == 65536
    assert shmem.parse_size("0") == shmem.parse_size("off") == 0
    with pytest.raises(ValueError):
        shmem.parse_size("lots")


def test_cleanup_removes_only_segments_of_dead_owners(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    names = [f"{shmem.PREFIX}{shmem.owner_tag()}-in0",                 # alive: this process
             f"{shmem.PREFIX}{dead.pid}-12345-in0",                   # dead pid
             f"{shmem.PREFIX}{os.getpid()}-1-out3",                   # pid reused: other start
             "metropc-other-file", "unrelated"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    removed = shmem.cleanup_stale(str(tmp_path))
    assert sorted(removed) == sorted(names[1:3])
    assert sorted(os.listdir(tmp_path)) == sorted([names[0], *names[3:]])


def fill(slots, data, plan, ticket):
    """The event as the dispatcher sends it, its arrays copied into the slot."""
    sent, copies = slots.place(data, plan, ticket)
    shmem.copy_into_slots(copies)
    return sent


def test_slot_references_are_checked_and_only_raise_protocol_error():
    slots = shmem.FrontendSlots(4 << 20, num_workers=1)
    try:
        data = {"a": np.arange(40000, dtype=np.float32), "b": 1}
        plan = slots.plan(data)
        ticket = slots.reserve_for("pool-0", plan)
        sent = fill(slots, data, plan, ticket)
        assert sent["a"] is None and sent["b"] == 1
        reader = shmem.SlotReader()
        got = {}
        lease = reader.attach(sent[shmem.KEY_SHM], got)
        np.testing.assert_array_equal(got["a"], data["a"])
        assert not got["a"].flags.writeable
        with pytest.raises(ValueError):
            got["a"][0] = 1
        del got
        reader.done(lease)
        assert reader.collect() == [lease]  # nothing refers to it: free

        import msgpack
        name = slots.input_name
        bad = [b"", b"\xc1", msgpack.packb([1, 2, 3]), msgpack.packb(None),
               msgpack.packb(["../../etc/passwd", 0, 1, 7, []]),
               msgpack.packb([name.replace("in", "zz"), 0, 1, 7, []]),
               msgpack.packb([name, -1, 1, 7, []]),
               msgpack.packb([name, slots.input.nunits, 1, 7, []]),
               msgpack.packb([name, 0, 1, 7, [["a", 0, "|O8", [1], False]]]),
               msgpack.packb([name, 0, 1, 7, [["a", 0, "<f4", [1 << 40], False]]]),
               msgpack.packb([name, 0, 1, 7, [["a", 4090, "<f4", [10], False]]]),
               msgpack.packb([name, 0, 1, 7, [["a", 0, "<f4", [-1], False]]]),
               msgpack.packb([name, 0, 1, 7, [["a", 0, "<f4"]]]),
               msgpack.packb([name, 0, 1, 7, [[1, 0, "<f4", [1], False]]])]
        for raw in bad:
            with pytest.raises(ProtocolError):
                reader.attach(raw, {})
        good = sent[shmem.KEY_SHM]
        rng = random.Random(9)
        for _ in range(500):
            raw = bytearray(good)
            for _ in range(rng.randint(1, 4)):
                raw[rng.randrange(len(raw))] = rng.randrange(256)
            raw = bytes(raw[:rng.randint(0, len(raw))] if rng.random() < 0.2 else raw)
            try:
                reader.attach(raw, {})
            except ProtocolError:
                pass
        reader.close()
    finally:
        slots.close()
    assert slots.input_name not in shmem.owned_segments()


def test_worker_maps_a_batch_of_slots_and_skips_only_a_forged_one():
    """A POOL worker maps every slot of a message before it runs the views;
    a forged reference skips its own event, reported once, and the events
    around it keep their arrays; every slot is released."""
    import zmq
    from metropc.core import Context as LoadedContext
    from metropc.enums import ContextStage
    from metropc.messages import KEY_META, META_EVENT, META_SKIP, OP_ERROR, OP_EVENT
    from metropc.stage.common import SEQ_PATH, recv
    from metropc.stage.pool import PoolWorker

    src = "@View.Scalar\ndef total(a: 'karabo#X:o[a]'):\n    return float(a.sum())\n"
    slots = shmem.FrontendSlots(4 << 20, num_workers=1)
    zctx = zmq.Context()
    control, frontend = zctx.socket(zmq.PAIR), zctx.socket(zmq.PAIR)
    control.bind("inproc://control")
    frontend.connect("inproc://control")
    try:
        worker = PoolWorker("pool-0", control, None)
        worker.slots = shmem.SlotReader()
        worker.activate(LoadedContext(src, stage=ContextStage.POOL, version=1))
        worker.forward_views = {"total"}
        messages = []
        for seq in range(3):
            data = {"karabo#X:o[a]": np.full(40000, seq + 1, np.float32), SEQ_PATH: seq}
            if seq == 1:
                messages.append((OP_EVENT, {**data, "karabo#X:o[a]": None,
                                            shmem.KEY_SHM: b"forged"}))
                continue
            plan = slots.plan(data)
            messages.append((OP_EVENT, fill(slots, data, plan, slots.reserve_for("pool-0", plan))))
        assert len(slots.held["pool-0"]) == 2
        calls = []
        attach, run = worker.slots.attach, worker._event
        worker.slots.attach = lambda raw, target: calls.append("map") or attach(raw, target)
        worker._event = lambda event: calls.append("run") or run(event)
        results, had_event, stop = worker.handle(messages)
        assert calls == ["map", "map", "map", "run", "run"]  # all mapped, then run
        assert had_event and not stop
        metas = [out[KEY_META] for _, out in results]
        assert [(m[0], m[-1]) for m in metas] == [(0, META_EVENT), (1, META_SKIP),
                                                  (2, META_EVENT)]
        assert [out.get("view#total") for _, out in results] == [40000.0, None, 120000.0]
        assert frontend.poll(2000)
        opcode, data = recv(frontend)
        assert opcode == OP_ERROR and "bad shared-memory reference" in data["msg"]
        assert not frontend.poll(100)  # reported once
        del results, messages
        free = worker.released_slots()
        assert free is not None and len(free) == 2 * 8
        slots.release("pool-0", free)
        assert not slots.holds("pool-0")
        worker.slots.close()
    finally:
        control.close(0)
        frontend.close(0)
        zctx.term()
        slots.close()


def test_place_leaves_the_copy_to_the_caller():
    """The dispatcher places a batch's events first and copies their arrays
    together afterwards; the reference is the same either way."""
    slots = shmem.FrontendSlots(4 << 20, num_workers=1)
    try:
        data = {"a": np.arange(40000, dtype=np.float32), "b": 1}
        plan = slots.plan(data)
        sent, copies = slots.place(data, plan, slots.reserve_for("pool-0", plan))
        assert sent["a"] is None and sent["b"] == 1 and len(copies) == 1
        reader = shmem.SlotReader()
        got = {}
        lease = reader.attach(sent[shmem.KEY_SHM], got)
        assert not got["a"].any()  # placed, not copied yet
        shmem.copy_into_slots(copies)
        np.testing.assert_array_equal(got["a"], data["a"])
        del got, copies
        reader.done(lease)
        assert reader.collect() == [lease]
        reader.close()
    finally:
        slots.close()

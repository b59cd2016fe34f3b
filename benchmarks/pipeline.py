"""Pipeline benchmark: metropc (ProcessRunner) against a bare ZeroMQ skeleton.

Run with ``python benchmarks/pipeline.py`` (about two minutes).

Measures in one run, with the targets of issue 20:

1. tiny events, lossless: 100 000 train IDs pushed as fast as they are taken,
   every one delivered.  The skeleton is a source process (PUSH), 2 worker
   processes (PULL -> PUSH, ``pickle`` in and out) and a sink process (PULL)
   over ipc://; metropc is the frontend with the lossless queue
   (``drop_policy='block'``), 2 POOL workers, REDUCE, and a
   ``metropc.client.Client`` reading every result in a process of its own.
   Target: >= 0.6x the skeleton, nothing dropped or missed;
2. tiny events, 1 MiB and 4 MiB float32 images with a bounded number in
   flight (64 tiny events, 16 images: sent - received < WINDOW), read by a
   Client in the benchmark's process; the skeleton is PUSH (main) -> 2
   workers -> PULL (main).  Images travel in shared memory in metropc.
   Targets: 1 MiB >= 1.4x, 4 MiB >= 1.7x the skeleton (tiny: reported);
3. the pool 1 -> 2 speed-up for a CPU-bound view (~10 ms busy loop per
   event).  Target: >= x1.9;
4. latency from ``queue_to_any`` to the client's decoded result for tiny
   events at 100 Hz.  Targets: p50 < 1 ms, p99 < 2 ms.  The skeleton is a
   bare message through the same hops (a thread, two processes, back):
   the wake-ups alone, the floor on this machine.  Both are measured at
   1 kHz too (reported): there the code an event runs is still in the
   caches when the next one comes, which at 100 Hz it is not.  The 100 Hz
   percentiles pool LAT_BLOCKS blocks of LAT_N events, alternating with as
   many blocks of the skeleton.

Every ratio is taken within one run (this VM's speed drifts by +-35 %
within minutes); the lossless case (1) alternates PAIRS runs of the
skeleton and the pipeline and reports the median of the pairs' ratios, and
the paced cases (2) alternate PACED_PAIRS phases of PAIR_S seconds of the
skeleton and of the pipeline and report the median of the pairs' ratios.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import shutil
import sys
import tempfile
import time

import numpy as np
import zmq

WINDOW = 64
IMG_WINDOW = 16
PHASE_S = 3.0          # seconds of sending per throughput measurement
PAIRS = 3              # lossless case: alternating skeleton/pipeline runs
# Paced cases: alternating skeleton/pipeline phases of PAIR_S each.  The
# skeleton's rate for 1 MiB images moves between 1,300 and 3,500 events/s
# from one phase to the next; the median of five pairs is steadier than of three.
PACED_PAIRS = 5
PAIR_S = 1.0
DRAIN_TIMEOUT = 5.0    # give up waiting for results after this much silence
LAT_HZ = 100.0
LAT_N = 500            # events per latency block
# Latency blocks, each a block of the skeleton then one of the pipeline: a
# p99 of 500 events is their 5th slowest, which one burst of this VM's
# noise decides; of 2000 events taken in four places, it is steadier, and
# the skeleton meets the same moments of noise.
LAT_BLOCKS = 4
FAST_HZ = 1000.0       # latency at a rate that keeps every stage's code in the caches
FAST_N = 2000
CPU_MS = 10.0

IMG_PATH = "karabo#BENCH/DET:output[data.image]"
TS_PATH = "karabo#BENCH/CLOCK:output[data.ts]"

PAYLOADS = {
    "tiny": None,
    "1 MiB image": (512, 512),      # 512*512*4 B = 1 MiB
    "4 MiB image": (1024, 1024),    # 4 MiB
}


# -- skeleton ----------------------------------------------------------------

def _skeleton_worker(in_addr, out_addr):
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.connect(in_addr)
    push = ctx.socket(zmq.PUSH)
    push.connect(out_addr)
    try:
        while True:
            frames = pull.recv_multipart(copy=False)
            head = pickle.loads(frames[0].buffer)
            if head.get("stop"):
                break
            if len(frames) > 1:
                img = np.frombuffer(frames[1].buffer, dtype=np.float32)
                value = float(img.mean())
            else:
                value = head["train_id"]
            push.send(pickle.dumps({"event_id": head["train_id"], "data": value}))
    finally:
        pull.close(0)
        push.close(0)
        ctx.term()


def run_skeleton(mpctx, shape, duration=PHASE_S):
    tmp = tempfile.mkdtemp(prefix="metropc-bench-")
    in_addr, out_addr = f"ipc://{tmp}/in", f"ipc://{tmp}/out"
    zctx = zmq.Context()
    push = zctx.socket(zmq.PUSH)
    push.bind(in_addr)
    pull = zctx.socket(zmq.PULL)
    pull.bind(out_addr)
    workers = [mpctx.Process(target=_skeleton_worker, args=(in_addr, out_addr), daemon=True)
               for _ in range(2)]
    try:
        for w in workers:
            w.start()
        img = None if shape is None else np.random.rand(*shape).astype(np.float32)
        window = WINDOW if shape is None else IMG_WINDOW

        def send(i):
            head = pickle.dumps({"train_id": i})
            if img is None:
                push.send(head)
            else:
                push.send_multipart([head, img], copy=False)

        # warm-up: wait until both workers are connected and answering
        for i in range(8):
            send(-1 - i)
        for _ in range(8):
            if not pull.poll(10000):
                raise RuntimeError("skeleton workers did not answer")
            pull.recv()
        def recv(timeout_ms):
            if not pull.poll(timeout_ms):
                return 0
            pull.recv()
            return 1

        return _paced_run(send, recv, window, duration)
    finally:
        for _ in workers:
            try:
                push.send(pickle.dumps({"stop": True}), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        for w in workers:
            w.join(2)
            if w.is_alive():
                w.terminate()
                w.join(2)
        push.close(0)
        pull.close(0)
        zctx.term()
        shutil.rmtree(tmp, ignore_errors=True)


def _paced_run(send, recv, window, duration):
    """Send while fewer than `window` are in flight for `duration`; return events/s.

    `recv(timeout_ms)` receives at most one result and returns how many (0 or 1).
    """
    sent = received = 0
    t0 = time.perf_counter()
    stop_at = t0 + duration
    last_rx = t0
    while True:
        now = time.perf_counter()
        sending = now < stop_at
        while sending and sent - received < window:
            send(sent)
            sent += 1
        if not sending and received >= sent:
            break
        if recv(100):
            received += 1
            while recv(0):
                received += 1
            last_rx = time.perf_counter()
        elif time.perf_counter() - last_rx > DRAIN_TIMEOUT:
            print(f"  warning: {sent - received} events never came back", file=sys.stderr)
            break
    elapsed = last_rx - t0
    return received / elapsed if elapsed > 0 else 0.0


# -- latency floor: the same hops, nothing else --------------------------------

def paced(n, hz):
    """Yield ``(i, due)`` for i in 0 .. n-1, each at its time of a `hz`
    schedule (sleeping between); `due` is when the next one is."""
    period = 1.0 / hz
    t_next = time.perf_counter()
    for i in range(n):
        while time.perf_counter() < t_next:
            time.sleep(min(0.005, max(0.0, t_next - time.perf_counter())))
        t_next += period
        yield i, t_next


def _relay(in_addr, out_addr, bind_out):
    """A process that passes each message on (a stage doing nothing);
    it passes ``stop`` on too, and ends."""
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.connect(in_addr)
    push = ctx.socket(zmq.PUSH)
    (push.bind if bind_out else push.connect)(out_addr)
    try:
        while True:
            msg = pull.recv()
            push.send(msg)
            if msg == b"stop":
                break
    finally:
        pull.close(0)
        push.close(1000)
        ctx.term()


def latency_skeleton(mpctx, n=LAT_N, hz=LAT_HZ):
    """Latency (ms) of a bare message through metropc's hops at `hz`: the
    caller's thread -> a thread (inproc, as to the frontend thread) -> a
    process (as POOL) -> a process (as REDUCE) -> back to the caller (as
    to a client), all over ipc://.  What the wake-ups cost on this machine."""
    import threading
    tmp = tempfile.mkdtemp(prefix="metropc-bench-")
    a, b, back = (f"ipc://{tmp}/{x}" for x in ("a", "b", "back"))
    zctx = zmq.Context()
    to_thread = zctx.socket(zmq.PAIR)
    to_thread.bind("inproc://bench-wake")
    pull = zctx.socket(zmq.PULL)
    pull.bind(back)
    push = zctx.socket(zmq.PUSH)
    push.bind(a)
    relays = [mpctx.Process(target=_relay, args=(a, b, True), daemon=True),
              mpctx.Process(target=_relay, args=(b, back, False), daemon=True)]

    def forward():
        inner = zctx.socket(zmq.PAIR)
        inner.connect("inproc://bench-wake")
        while True:
            msg = inner.recv()
            push.send(msg)
            if msg == b"stop":
                break
        inner.close(0)

    forwarder = threading.Thread(target=forward, daemon=True)
    try:
        for r in relays:
            r.start()
        forwarder.start()
        for _ in range(100):  # until the chain answers
            to_thread.send(b"warm")
            if pull.poll(200):
                break
        while pull.poll(300):
            pull.recv()
        lat = []
        for _ in paced(n, hz):
            t0 = time.perf_counter()
            to_thread.send(b"x")
            if pull.poll(1000):
                pull.recv()
                lat.append(time.perf_counter() - t0)
        return np.array(lat) * 1000.0
    finally:
        to_thread.send(b"stop")
        forwarder.join(2)
        for r in relays:
            r.join(5)
            if r.is_alive():
                r.terminate()
        for sock in (to_thread, pull, push):
            sock.close(0)
        zctx.term()
        shutil.rmtree(tmp, ignore_errors=True)


# -- lossless bulk: every event delivered, nothing paced ------------------------

BULK_N = 100_000


def cpu_seconds(pid=None):
    """CPU seconds (user + system) a process has used so far (Linux /proc)."""
    import os
    with open(f"/proc/{pid or os.getpid()}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_per_event(pids, before, n):
    """Microseconds of CPU per event of each named process since `before`."""
    return {name: (cpu_seconds(pid) - before[name]) / n * 1e6 for name, pid in pids.items()}


def _skeleton_sink(addr, n, conn):
    """The skeleton's reducing end: count `n` results, report when the last came."""
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind(addr)
    conn.send("ready")
    try:
        got = 0
        while got < n and pull.poll(int(DRAIN_TIMEOUT * 1000)):
            pull.recv()
            got += 1
        conn.send((got, time.perf_counter()))
        conn.recv()  # measured: stay until the workers' CPU time is taken
    finally:
        pull.close(0)
        ctx.term()


def bulk_skeleton(mpctx, n=BULK_N, costs=None):
    """Events/s of `n` tiny events pushed as fast as ZeroMQ takes them
    (source -> 2 workers -> sink, three kinds of process), all delivered.
    `costs` (a dict) receives the CPU microseconds per event of each process."""
    tmp = tempfile.mkdtemp(prefix="metropc-bench-")
    in_addr, out_addr = f"ipc://{tmp}/in", f"ipc://{tmp}/out"
    here, there = mpctx.Pipe()
    sink = mpctx.Process(target=_skeleton_sink, args=(out_addr, n + 8, there), daemon=True)
    sink.start()
    zctx = zmq.Context()
    push = zctx.socket(zmq.PUSH)
    push.bind(in_addr)
    workers = [mpctx.Process(target=_skeleton_worker, args=(in_addr, out_addr), daemon=True)
               for _ in range(2)]
    try:
        if not here.poll(30) or here.recv() != "ready":
            raise RuntimeError("skeleton sink did not start")
        for w in workers:
            w.start()
        for i in range(8):  # reach both workers before the clock starts
            push.send(pickle.dumps({"train_id": -1 - i}))
        time.sleep(1.0)  # (benchmark only) let both workers connect
        pids = {"source": None, "worker 1": workers[0].pid, "worker 2": workers[1].pid,
                "sink": sink.pid}
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        t0 = time.perf_counter()
        for i in range(n):
            push.send(pickle.dumps({"train_id": i}))
        if not here.poll(60):
            raise RuntimeError("skeleton sink did not finish")
        got, t_end = here.recv()
        if costs is not None:
            costs.update(cpu_per_event(pids, before, n))
        here.send("done")
        if got < n + 8:
            print(f"  warning: skeleton delivered {got - 8}/{n}", file=sys.stderr)
        return (got - 8) / (t_end - t0)
    finally:
        for _ in workers:
            push.send(pickle.dumps({"stop": True}))
        for p in (*workers, sink):
            p.join(5)
            if p.is_alive():
                p.terminate()
                p.join(2)
        push.close(0)
        zctx.term()
        shutil.rmtree(tmp, ignore_errors=True)


def _bulk_client(addr, view, n, conn):
    """A reading client in its own process, as a display would be."""
    from metropc.client import Client
    with Client(addr, views=[view]) as client:
        conn.send("subscribed")
        client.recv(30)  # the warm-up's result: subscribed at REDUCE
        # REDUCE offers batches (its status): wait until they are used.
        # (getattr: benchmarks/metrics.py runs this against older code too.)
        while getattr(client, "batch", False) and not client.batching:
            client.recv(30)
        conn.send("receiving")
        got = 0
        cpu0 = cpu_seconds()
        while got < n:
            try:
                client.recv(DRAIN_TIMEOUT)
            except TimeoutError:
                break
            got += 1
        conn.send((got, time.perf_counter(), client.missed, cpu_seconds() - cpu0))


def bulk_pipeline(mpctx, n=BULK_N, costs=None):
    """Events/s of `n` tiny events through metropc with the lossless queue
    (``drop_policy='block'``), read by a Client in another process.
    `costs` (a dict) receives the CPU microseconds per event of each process."""
    from metropc.frontend import Context, ProcessRunner, ThreadedFrontend
    tmp = tempfile.mkdtemp(prefix="metropc-bench-")
    fe = ThreadedFrontend(num_pool_stages=2, sr_cls=ProcessRunner,
                          output_addr=f"ipc://{tmp}/output", queue_size=1000,
                          drop_policy="block", output_hwm=100_000)
    here, there = mpctx.Pipe()
    client = None
    try:
        if not fe.wait_ready(60):
            raise RuntimeError("pipeline did not become ready")
        fe.queue_to_all(b"context", Context(CTX_TINY, version=1).to_dict())
        client = mpctx.Process(target=_bulk_client,
                               args=(fe.output_addr, "bench_tiny", n, there), daemon=True)
        client.start()
        if not here.poll(30) or here.recv() != "subscribed":
            raise RuntimeError("bench client did not start")
        i = 0
        while not here.poll(0.05):  # until a result reached the client
            fe.queue_to_any(b"event", {"internal#train_id": -1 - i})
            i += 1
        here.recv()
        time.sleep(0.5)  # (benchmark only) the warm-up's other results drain
        pids = {"source + frontend": None, "pool-0": fe._runners["pool-0"].pid,
                "pool-1": fe._runners["pool-1"].pid, "reduce": fe._runners["reduce"].pid}
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        t0 = time.perf_counter()
        for i in range(n):
            fe.queue_to_any(b"event", {"internal#train_id": i})
        if not here.poll(120):
            raise RuntimeError("bench client did not finish")
        got, t_end, missed, client_cpu = here.recv()
        if costs is not None:
            costs.update(cpu_per_event(pids, before, n))
            costs["client"] = client_cpu / n * 1e6
        if got < n or missed:
            print(f"  warning: pipeline delivered {got}/{n}, client missed {missed}",
                  file=sys.stderr)
        return got / (t_end - t0)
    finally:
        if client is not None:
            client.join(10)
            if client.is_alive():
                client.terminate()
        fe.close(timeout=5)
        shutil.rmtree(tmp, ignore_errors=True)


# -- metropc pipeline --------------------------------------------------------

CTX_TINY = """
@View.Scalar
def bench_tiny(t: 'internal#train_id'):
    return t
"""

CTX_IMG = f"""
@View.Scalar
def bench_img(img: '{IMG_PATH}'):
    return float(img.mean())
"""

CTX_CPU = f"""
import time
@View.Scalar
def bench_cpu(t: 'internal#train_id'):
    end = time.perf_counter() + {CPU_MS / 1000!r}
    x = 0
    while time.perf_counter() < end:
        x += 1
    return t
"""

CTX_LAT = f"""
@View.Scalar
def bench_lat(ts: '{TS_PATH}'):
    return ts
"""


class Bench:
    """One ThreadedFrontend plus a metropc Client on its output."""

    def __init__(self, num_pool, **frontend_kwargs):
        from metropc.client import Client
        from metropc.frontend import ProcessRunner, ThreadedFrontend
        self.errors = []
        # Every socket on ipc://, as in the skeleton (metropc-run's default
        # output is tcp://127.0.0.1, about 10 % slower for tiny results).
        self.tmp = tempfile.mkdtemp(prefix="metropc-bench-")
        # output_hwm: the benchmark counts every result, so the output must
        # not drop any (by default it drops for slow clients).
        self.fe = ThreadedFrontend(num_pool_stages=num_pool, sr_cls=ProcessRunner,
                                   output_addr=f"ipc://{self.tmp}/output",
                                   queue_size=10000, drop_policy="newest",
                                   output_hwm=100_000, **frontend_kwargs)
        self.fe.on_pipeline_error = self.errors.append
        self.client = None
        self.version = 0
        if not self.fe.wait_ready(60):
            raise RuntimeError("pipeline did not become ready")
        self.client = Client(self.fe.output_addr)
        self.view = None

    def set_context(self, source, view):
        from metropc.frontend import Context
        if self.view is not None:
            self.client.unsubscribe(self.view)
        self.view = view
        self.client.subscribe(view)
        self.version += 1
        self.fe.queue_to_all(b"context", Context(source, version=self.version).to_dict())
        time.sleep(0.3)  # let the SUB subscription and the context settle

    def recv(self, timeout=None):
        """The payload of the next result; TimeoutError after `timeout` s."""
        return self.client.recv(timeout)[1]

    def poll(self, timeout_ms):
        """Receive one result within `timeout_ms`; 1 if one came, else 0."""
        try:
            self.recv(timeout_ms / 1000)
        except TimeoutError:
            return 0
        return 1

    def warm_up(self, make_event, n=8):
        for i in range(n):
            self.fe.queue_to_any(b"event", make_event(-1 - i))
        got = 0
        deadline = time.monotonic() + 15
        while got < n and time.monotonic() < deadline:
            got += self.poll(200)
        if got < n:
            raise RuntimeError(f"pipeline warm-up: {got}/{n} results; errors: {self.errors}")

    def throughput(self, make_event, window, duration=PHASE_S):
        self.warm_up(make_event)

        def send(i):
            if not self.fe.queue_to_any(b"event", make_event(i)):
                raise RuntimeError("event dropped by the frontend queue")

        return _paced_run(send, self.poll, window, duration)

    def latency(self, make_event, n=LAT_N, hz=LAT_HZ):
        """Event-to-output latency (ms) of `n` events sent at `hz`.

        The context's view must return the event's TS_PATH value, which is
        set to the send time here.
        """
        def timed(i):
            return {**make_event(i), TS_PATH: time.perf_counter()}

        self.warm_up(timed)
        lat = []
        for i, t_next in paced(n, hz):
            self.fe.queue_to_any(b"event", timed(i))
            # the result should be back long before the next event is due
            while (left := t_next - time.perf_counter()) > 0:
                try:
                    payload = self.recv(left)
                except TimeoutError:
                    break
                lat.append(time.perf_counter() - payload["data"])
        while len(lat) < n:
            try:
                payload = self.recv(1.0)
            except TimeoutError:
                break
            lat.append(time.perf_counter() - payload["data"])
        return np.array(lat) * 1000.0

    def close(self):
        if self.client is not None:
            self.client.close()
        deadline = time.monotonic() + 5  # the last window's events get through
        while self.fe.in_flight() and time.monotonic() < deadline:
            time.sleep(0.01)
        self.fe.close(timeout=5)
        shutil.rmtree(self.tmp, ignore_errors=True)


def latency_blocks(mpctx, bench, results):
    """Latency at LAT_HZ in LAT_BLOCKS alternating blocks of the skeleton and
    the pipeline (pooled), and one pair at FAST_HZ: events close enough
    together that the code they run is still cached (reported, to tell cold
    code from hops)."""
    def tiny(i):
        return {"internal#train_id": i}

    skel, pipe = [], []
    for _ in range(LAT_BLOCKS):
        skel.append(latency_skeleton(mpctx))
        pipe.append(bench.latency(tiny))
        print(f"  latency @ {LAT_HZ:.0f} Hz, p50 / p99: skeleton "
              f"{np.percentile(skel[-1], 50):.2f} / {np.percentile(skel[-1], 99):.2f} ms, "
              f"pipeline {np.percentile(pipe[-1], 50):.2f} / {np.percentile(pipe[-1], 99):.2f}"
              f" ms ({len(pipe[-1])}/{LAT_N} results)", flush=True)
    results["lat_skel"], results["lat"] = np.concatenate(skel), np.concatenate(pipe)
    results["lat_skel_fast"] = latency_skeleton(mpctx, n=FAST_N, hz=FAST_HZ)
    results["lat_fast"] = bench.latency(tiny, n=FAST_N, hz=FAST_HZ)


def pipeline_throughputs(mpctx, results):
    """The paced cases, each as PACED_PAIRS alternating phases of the skeleton and
    the pipeline (the machine drifts within a minute: each pair is measured
    within seconds).  Stores the median rates and the median of the pairs'
    ratios."""
    bench = Bench(2)
    try:
        for name, shape in PAYLOADS.items():
            if shape is None:
                bench.set_context(CTX_TINY, "bench_tiny")
                make, window = (lambda i: {"internal#train_id": i}), WINDOW
            else:
                img = np.random.rand(*shape).astype(np.float32)
                bench.set_context(CTX_IMG, "bench_img")
                make, window = (lambda i, img=img: {"internal#train_id": i, IMG_PATH: img},
                                IMG_WINDOW)
            pairs = []
            for _ in range(PACED_PAIRS):
                skel = run_skeleton(mpctx, shape, PAIR_S)
                pipe = bench.throughput(make, window, PAIR_S)
                pairs.append((skel, pipe))
                print(f"  {name:>12}: skeleton {skel:10.1f} ev/s, pipeline {pipe:10.1f} ev/s",
                      flush=True)
            results[("skel", name)] = float(np.median([a for a, _ in pairs]))
            results[("pipe", name)] = float(np.median([b for _, b in pairs]))
            results[("ratio", name)] = float(np.median([b / a if a else 0.0 for a, b in pairs]))

        bench.set_context(CTX_CPU, "bench_cpu")
        results[("cpu", 2)] = bench.throughput(lambda i: {"internal#train_id": i}, WINDOW)
        print(f"  pipeline cpu pool=2   : {results[('cpu', 2)]:10.1f} ev/s", flush=True)

        bench.set_context(CTX_LAT, "bench_lat")
        latency_blocks(mpctx, bench, results)
    finally:
        bench.close()

    bench = Bench(1)
    try:
        bench.set_context(CTX_CPU, "bench_cpu")
        results[("cpu", 1)] = bench.throughput(lambda i: {"internal#train_id": i}, WINDOW)
        print(f"  pipeline cpu pool=1   : {results[('cpu', 1)]:10.1f} ev/s", flush=True)
    finally:
        bench.close()


def bulk_lossless(mpctx, results, pairs=PAIRS):
    """The lossless case as `pairs` alternating runs of the skeleton and the
    pipeline, each 100 000 events (this machine's speed drifts between
    runs a few seconds apart: one pair gave 0.78x, the next 0.56x, the CPU
    per event of every process up by a third).  Stores the median rates and
    the median of the pairs' ratios; prints the CPU per event of each pair."""
    ratios, skels, pipes = [], [], []
    for _ in range(pairs):
        skel_costs, pipe_costs = {}, {}
        skels.append(bulk_skeleton(mpctx, costs=skel_costs))
        pipes.append(bulk_pipeline(mpctx, costs=pipe_costs))
        ratios.append(pipes[-1] / skels[-1] if skels[-1] else 0.0)
        print(f"  tiny lossless: skeleton {skels[-1]:10.1f} ev/s, "
              f"pipeline {pipes[-1]:10.1f} ev/s", flush=True)
        for label, costs in (("skeleton", skel_costs), ("metropc", pipe_costs)):
            print(f"    CPU per event, {label}: " + ", ".join(
                f"{name} {us:.1f} us" for name, us in costs.items())
                + f"; total {sum(costs.values()):.1f} us", flush=True)
    results[("skel", "bulk")] = float(np.median(skels))
    results[("pipe", "bulk")] = float(np.median(pipes))
    results[("ratio", "bulk")] = float(np.median(ratios))


# -- main --------------------------------------------------------------------

TARGETS = {"tiny": None, "1 MiB image": 1.4, "4 MiB image": 1.7}
TARGET_BULK = 0.6
TARGET_SPEEDUP = 1.9
TARGET_P50_MS, TARGET_P99_MS = 1.0, 2.0


def main():
    t_start = time.perf_counter()
    mpctx = mp.get_context("spawn")
    results = {}
    print("measuring (about two minutes) ...", flush=True)
    bulk_lossless(mpctx, results)
    pipeline_throughputs(mpctx, results)

    checks = []
    rows = []
    skel, pipe = results[("skel", "bulk")], results[("pipe", "bulk")]
    ratio = results[("ratio", "bulk")]
    rows.append(("tiny, lossless, all delivered", f"{skel:,.0f} ev/s", f"{pipe:,.0f} ev/s",
                 f"{ratio:.2f}x", f">= {TARGET_BULK}x"))
    checks.append(("tiny lossless vs skeleton", ratio >= TARGET_BULK,
                   f"{ratio:.2f}x (target >= {TARGET_BULK}x)"))
    for name in PAYLOADS:
        skel, pipe = results[("skel", name)], results[("pipe", name)]
        ratio = results[("ratio", name)]
        target = TARGETS[name]
        window = WINDOW if PAYLOADS[name] is None else IMG_WINDOW
        rows.append((f"{name}, {window} in flight", f"{skel:,.0f} ev/s", f"{pipe:,.0f} ev/s",
                     f"{ratio:.2f}x", "(reported)" if target is None else f">= {target}x"))
        if target is not None:
            checks.append((f"{name} vs skeleton", ratio >= target,
                           f"{ratio:.2f}x (target >= {target}x)"))
    c1, c2 = results[("cpu", 1)], results[("cpu", 2)]
    speedup = c2 / c1 if c1 else 0.0
    rows.append((f"cpu {CPU_MS:.0f} ms/event", f"pool=1 {c1:,.0f} ev/s", f"pool=2 {c2:,.0f} ev/s",
                 f"x{speedup:.2f}", f">= x{TARGET_SPEEDUP}"))
    checks.append(("pool 1 -> 2 speed-up", speedup >= TARGET_SPEEDUP,
                   f"x{speedup:.2f} (target >= x{TARGET_SPEEDUP})"))
    lat, floor = results["lat"], results["lat_skel"]
    if len(lat):
        p50, p99 = np.percentile(lat, 50), np.percentile(lat, 99)
    else:
        p50 = p99 = float("inf")
    f50, f99 = np.percentile(floor, 50), np.percentile(floor, 99)
    rows.append((f"latency @ {LAT_HZ:.0f} Hz, p50", f"{f50:.2f} ms (same hops)", f"{p50:.2f} ms",
                 f"+{p50 - f50:.2f} ms", f"< {TARGET_P50_MS} ms"))
    rows.append((f"latency @ {LAT_HZ:.0f} Hz, p99", f"{f99:.2f} ms", f"{p99:.2f} ms",
                 f"n={len(lat)}", f"< {TARGET_P99_MS} ms"))
    fast, fast_floor = results["lat_fast"], results["lat_skel_fast"]
    if len(fast):
        q50, q99 = (np.percentile(fast, q) for q in (50, 99))
        g50, g99 = (np.percentile(fast_floor, q) for q in (50, 99))
        rows.append((f"latency @ {FAST_HZ:.0f} Hz, p50 / p99", f"{g50:.2f} / {g99:.2f} ms",
                     f"{q50:.2f} / {q99:.2f} ms", f"n={len(fast)}", "(reported)"))
    checks.append(("latency p50", p50 < TARGET_P50_MS,
                   f"{p50:.2f} ms (target < {TARGET_P50_MS} ms; the bare hops take {f50:.2f})"))
    checks.append(("latency p99", p99 < TARGET_P99_MS,
                   f"{p99:.2f} ms (target < {TARGET_P99_MS} ms; the bare hops take {f99:.2f})"))

    head = ("measurement", "skeleton / a", "metropc / b", "ratio", "target")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    print()
    print(fmt.format(*head))
    print(fmt.format(*("-" * w for w in widths)))
    for r in rows:
        print(fmt.format(*r))
    print()
    for label, ok, text in checks:
        print(f"{'OK' if ok else 'BELOW TARGET':<12}  {label}: {text}")
    print(f"\n(total {time.perf_counter() - t_start:.0f} s; numbers are noisy, +-35 %)")
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())

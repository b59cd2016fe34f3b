"""Pipeline benchmark: metropc (ProcessRunner) against a bare ZeroMQ skeleton.

Run with ``python benchmarks/pipeline.py`` (takes about a minute, < 3 min).

Measures in one run:

1. a bare ZeroMQ skeleton: PUSH (main) -> 2 spawned workers (PULL -> PUSH) ->
   PULL (main) over ipc:// in a temporary directory; tiny events, 1 MiB and
   4 MiB float32 images (raw frames, copy=False), workers reply with a small
   result;
2. the metropc pipeline (2 POOL workers, every socket on ipc:// as in the
   skeleton) moving the same payloads, with a POOL view returning a scalar,
   read by a ``metropc.client.Client``: events/s and ratio to the skeleton;
3. the pool 1 -> 2 speed-up for a CPU-bound view (~10 ms busy loop per event);
4. event-to-output latency p50/p99 at 10 Hz.

Senders keep a bounded number of events in flight (sent - received < WINDOW),
so nothing is dropped by queues and the rates are the sustained throughput.
Numbers are noisy (+-35 %).
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
DRAIN_TIMEOUT = 5.0    # give up waiting for results after this much silence
LAT_HZ = 10.0
LAT_N = 100
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
        period = 1.0 / hz
        t_next = time.perf_counter()
        for i in range(n):
            while time.perf_counter() < t_next:
                time.sleep(min(0.005, max(0.0, t_next - time.perf_counter())))
            self.fe.queue_to_any(b"event", timed(i))
            t_next += period
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
        self.fe.close(timeout=5)
        shutil.rmtree(self.tmp, ignore_errors=True)


def pipeline_throughputs(results):
    bench = Bench(2)
    try:
        for name, shape in PAYLOADS.items():
            if shape is None:
                bench.set_context(CTX_TINY, "bench_tiny")
                rate = bench.throughput(lambda i: {"internal#train_id": i}, WINDOW)
            else:
                img = np.random.rand(*shape).astype(np.float32)
                bench.set_context(CTX_IMG, "bench_img")
                rate = bench.throughput(
                    lambda i: {"internal#train_id": i, IMG_PATH: img}, IMG_WINDOW)
            results[("pipe", name)] = rate
            print(f"  pipeline {name:>12}: {rate:10.1f} ev/s", flush=True)

        bench.set_context(CTX_CPU, "bench_cpu")
        results[("cpu", 2)] = bench.throughput(lambda i: {"internal#train_id": i}, WINDOW)
        print(f"  pipeline cpu pool=2   : {results[('cpu', 2)]:10.1f} ev/s", flush=True)

        # latency at 10 Hz
        bench.set_context(CTX_LAT, "bench_lat")
        lat = bench.latency(lambda i: {"internal#train_id": i})
        results["lat"] = lat
        print(f"  latency: {len(lat)}/{LAT_N} results", flush=True)
    finally:
        bench.close()

    bench = Bench(1)
    try:
        bench.set_context(CTX_CPU, "bench_cpu")
        results[("cpu", 1)] = bench.throughput(lambda i: {"internal#train_id": i}, WINDOW)
        print(f"  pipeline cpu pool=1   : {results[('cpu', 1)]:10.1f} ev/s", flush=True)
    finally:
        bench.close()


# -- main --------------------------------------------------------------------

def main():
    t_start = time.perf_counter()
    mpctx = mp.get_context("spawn")
    results = {}
    print("measuring (about a minute) ...", flush=True)
    for name, shape in PAYLOADS.items():
        results[("skel", name)] = run_skeleton(mpctx, shape)
        print(f"  skeleton {name:>12}: {results[('skel', name)]:10.1f} ev/s", flush=True)
    pipeline_throughputs(results)

    checks = []
    rows = []
    for name in PAYLOADS:
        skel, pipe = results[("skel", name)], results[("pipe", name)]
        ratio = pipe / skel if skel else 0.0
        target = 0.25 if name == "tiny" else 0.60
        rows.append((f"throughput {name}", f"{skel:,.0f} ev/s", f"{pipe:,.0f} ev/s",
                     f"{ratio:.0%}", f">= {target:.0%}"))
        checks.append((f"throughput {name} vs skeleton", ratio >= target,
                       f"{ratio:.0%} (target >= {target:.0%})"))
    c1, c2 = results[("cpu", 1)], results[("cpu", 2)]
    speedup = c2 / c1 if c1 else 0.0
    rows.append((f"cpu {CPU_MS:.0f} ms/event", f"pool=1 {c1:,.0f} ev/s", f"pool=2 {c2:,.0f} ev/s",
                 f"x{speedup:.2f}", "x2 ideal"))
    checks.append(("pool 1 -> 2 speed-up", speedup >= 1.6, f"x{speedup:.2f} (target >= x1.6)"))
    lat = results["lat"]
    if len(lat):
        p50, p99 = np.percentile(lat, 50), np.percentile(lat, 99)
    else:
        p50 = p99 = float("inf")
    rows.append((f"latency @ {LAT_HZ:.0f} Hz", f"p50 {p50:.2f} ms", f"p99 {p99:.2f} ms",
                 f"n={len(lat)}", "p50 < 2 ms"))
    checks.append(("latency p50", p50 < 2.0, f"{p50:.2f} ms (target < 2 ms)"))

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

"""Soak test: the real pipeline under steady mixed load for a long time.

A :class:`metropc.pipeline.Pipeline` (``source=None``, 2 POOL workers, one
REDUCE, all real processes and sockets) is fed from two threads of this
process:

- 1 kHz of small events (train id + one pulse energy),
- 10 Hz of 1-Mpix float32 images (4 MiB, a fresh array every time),

through a context with POOL views (a scalar per small event, the sum of
each image, which worker ran each event) and REDUCE views (the
``GlobalAverage`` of the image, a histogram of the pulse energy, a tally
of events per worker).  One client reads everything the pipeline
publishes.  Every few seconds the RSS and the number of open file
descriptors (``psutil.Process.num_fds``) of every process are sampled:
the frontend (this process), each POOL worker and REDUCE.

After a warm-up (``WARMUP_S``, 10 s: imports, first allocations, allocator
arenas, ZeroMQ buffers reaching their working size) nothing may grow:

- RSS of each process at most ``RSS_GROWTH_MB`` (48 MB) above its value at
  the end of the warm-up.  That is a dozen 4 MiB images: what the
  pipeline's own bounded buffers may legitimately hold at a peak (the
  frontend queue, ~3 images at this mix; up to ``prefetch`` messages per
  worker in flight; the client's receive queue with an 8 MiB average),
  and glibc keeps a process's peak heap mapped, so a scheduling stall on a
  busy machine ratchets RSS up by a few images without any leak (measured
  on a 2-core machine at load 5-12: up to +26 MB in the frontend, +13 MB
  in REDUCE; on an idle one < 5 MB).  A leaked image per second exceeds
  the bound within 12 s, a leak of 1 kB per small event within 50 s; the
  30-minute run catches leaks 30 times smaller.  The report also shows the
  least-squares trend (MB/min) for a closer look;
- open file descriptors within +-``FD_SLACK`` (5) of the warm-up value
  (a socket or pipe per reconnect, reload or restart would show);
- no lost and no stale events, no stage restarted, no stage error;
- every event accounted for: events sent = events out (index counter
  ``internal#event``) + dropped (``internal#dropped_events``), and the
  frontend's drop counter equals the index's.

Drops are allowed (on a busy machine the pool may not keep up: seen up to
3 % at load 12, none on an idle machine) and reported; above
``MAX_DROP_FRACTION`` (20 %) they count as a failure.

Usage::

    python benchmarks/soak.py                 # 30 minutes
    python benchmarks/soak.py --minutes 1 --report

``--report`` prints a table: per process initial / warm / final / max RSS
and open fds, events in / out and drops.  The exit code is 1 when a bound
is exceeded, 0 otherwise.  ``tests/test_load.py`` runs the same soak for
60 s (:func:`run_soak`).
"""

from __future__ import annotations

import argparse
import collections
import itertools
import os
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import psutil
import zmq

IMAGE_PATH = "karabo#SOAK_DET/CAM/DET1:output[data.image.pixels]"
ENERGY_PATH = "karabo#SOAK_XGM/XGM/XGM1:output[data.pulseEnergy]"

#: Seconds after the start that are not held to the bounds.
WARMUP_S = 10.0
#: Most a process's RSS may grow after the warm-up (MB, 10**6 bytes).
RSS_GROWTH_MB = 48.0
#: Most the number of open file descriptors may move after the warm-up.
FD_SLACK = 5
#: Largest share of events the frontend may drop before it is a failure.
MAX_DROP_FRACTION = 0.20
#: Seconds between samples of RSS and fds.
SAMPLE_EVERY_S = 2.0
#: Events that may wait in the frontend (~0.25 s of the 1 kHz stream, so a
#: scheduling hiccup of this busy machine does not turn into drops).
QUEUE_SIZE = 256
#: The tally of events per worker is published every this many events.
TALLY_EVERY = 100

SOAK_CTX = f"""
import os
import numpy as np

IMAGE = '{IMAGE_PATH}'
ENERGY = '{ENERGY_PATH}'


@View.Scalar
def energy(e: ENERGY):                       # POOL, 1 kHz
    return float(e)


@View.Scalar
def image_sum(image: IMAGE):                 # POOL, 10 Hz, 4 MiB in
    return float(image.sum(dtype=np.float64))


@View.Image_GlobalAverage(output_every=10)   # REDUCE: 4 MiB in, 8 MiB out once a second
def mean_image(image: IMAGE):
    return image


@View.Vector_Histogram(bin_min=0.0, bin_max=2.0, bin_count=100, output_every=1000)
def energy_histogram(e: 'view#energy'):      # REDUCE, from a POOL result
    return e


@View.Compute
def worker_pid(t: 'internal#train_id'):      # POOL: which worker ran the event
    return os.getpid()


_tally = {{}}


@View.Vector(stage='reduce')
def events_per_worker(pid: 'view#worker_pid'):
    _tally[pid] = _tally.get(pid, 0) + 1
    if sum(_tally.values()) % {TALLY_EVERY} == 0:
        return np.array([x for item in sorted(_tally.items()) for x in item], np.int64)
"""

MB = 1e6


# -- measurements ------------------------------------------------------------------


@dataclass
class ProcessTrace:
    """RSS and open fds of one pipeline process over time."""

    name: str
    samples: list = field(default_factory=list)  # (t, pid, rss, fds), t from the start

    def add(self, t, proc):
        try:
            with proc.oneshot():
                self.samples.append((t, proc.pid, proc.memory_info().rss, proc.num_fds()))
        except psutil.Error:  # died between listing and sampling: a restart shows elsewhere
            pass

    def _after(self, warmup):
        later = [s for s in self.samples if s[0] >= warmup]
        return later or self.samples[-1:]

    def warm(self, warmup):
        """The first sample at or after the warm-up."""
        return self._after(warmup)[0]

    @property
    def pids(self):
        return sorted({s[1] for s in self.samples})

    def rss_growth(self, warmup):
        """Largest RSS after the warm-up minus RSS at its end (bytes)."""
        later = self._after(warmup)
        return max(s[2] for s in later) - later[0][2]

    def fd_drift(self, warmup):
        """Largest distance of the fd count after the warm-up from its value then."""
        later = self._after(warmup)
        return max(abs(s[3] - later[0][3]) for s in later)

    def rss_slope(self, warmup):
        """Least-squares RSS trend after the warm-up, MB per minute (information only)."""
        later = self._after(warmup)
        if len(later) < 3:
            return 0.0
        t = np.array([s[0] for s in later])
        rss = np.array([s[2] for s in later], float)
        return float(np.polyfit(t, rss, 1)[0]) * 60.0 / MB


class Reader(threading.Thread):
    """A client reading everything the pipeline publishes (counts, last values)."""

    def __init__(self, addr):
        super().__init__(name="soak-reader", daemon=True)
        self.zctx = zmq.Context()
        self.sub = self.zctx.socket(zmq.SUB)
        self.sub.linger = 0
        # Like the pipeline's PUB: if this thread falls behind, ZeroMQ drops
        # rather than buffering 1000 messages (8 MiB averages among them)
        # in the frontend process, whose RSS is under test.
        self.sub.rcvhwm = 100
        self.sub.connect(addr)
        self.sub.subscribe(b"")
        self.counts = collections.Counter()
        self.last = {}
        self.index = None
        self.index_seen = threading.Event()
        self.stop = threading.Event()

    def run(self):
        from metropc.client import decode_protocol
        try:
            while not self.stop.is_set():
                if not self.sub.poll(100):
                    continue
                while True:
                    try:
                        frames = self.sub.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    path, data = decode_protocol(frames)
                    path = path.decode()
                    self.counts[path] += 1
                    if path == "index":
                        self.index = data
                        self.index_seen.set()
                    else:
                        self.last[path] = data  # only the latest: no growth here
        finally:
            self.sub.close(0)
            self.zctx.term()

    def counter(self, path):
        entry = (self.index or {}).get(path)
        return None if entry is None else entry.counts


class PacedFeeder(threading.Thread):
    """Sends ``make_event(id)`` at `rate` per second until stopped.

    Paced by the clock, not by sleeps: after a late wake-up the events
    that were due are sent at once, as a facility would.  If the feeder
    falls more than a second behind (the machine stalled it), it skips
    ahead rather than sending the backlog as one burst, and counts that.
    """

    def __init__(self, send, make_event, rate, ids, name):
        super().__init__(name=name, daemon=True)
        self.send, self.make_event, self.rate, self.ids = send, make_event, rate, ids
        self.sent = 0
        self.skipped = 0
        self.stop = threading.Event()

    def run(self):
        period = 1.0 / self.rate
        t_next = time.perf_counter()
        while not self.stop.is_set():
            now = time.perf_counter()
            if now - t_next > 1.0:
                n = int((now - t_next) / period)
                self.skipped += n
                t_next += n * period
            while t_next <= now:
                self.send(self.make_event(next(self.ids)))
                self.sent += 1
                t_next += period
            # >= 2 ms: at 1 kHz, small groups of events rather than a wake-up each.
            self.stop.wait(max(0.002, t_next - time.perf_counter()))


@dataclass
class SoakResult:
    duration: float
    warmup: float
    rss_bound_mb: float
    fd_slack: int
    processes: dict
    sent_small: int = 0
    sent_images: int = 0
    skipped: int = 0
    dropped: int = 0
    events_out: int | None = None
    dropped_index: int | None = None
    lost: int | None = None
    stale: int | None = None
    view_counts: dict = field(default_factory=dict)
    received: dict = field(default_factory=dict)
    per_worker: dict = field(default_factory=dict)
    restarts: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)
    drained: bool = False

    @property
    def sent(self):
        return self.sent_small + self.sent_images

    def violations(self):
        """What exceeded a bound, one line each (empty when all is well)."""
        out = []
        for name, trace in self.processes.items():
            growth = trace.rss_growth(self.warmup) / MB
            if growth > self.rss_bound_mb:
                out.append(f"{name}: RSS grew {growth:.1f} MB after the warm-up "
                           f"(bound {self.rss_bound_mb:g} MB)")
            drift = trace.fd_drift(self.warmup)
            if drift > self.fd_slack:
                out.append(f"{name}: open fds moved by {drift} after the warm-up "
                           f"(bound +-{self.fd_slack})")
        if not self.drained:
            out.append(f"not every event accounted for: sent {self.sent}, out "
                       f"{self.events_out}, dropped {self.dropped}")
        if self.dropped_index != self.dropped:
            out.append(f"index internal#dropped_events {self.dropped_index} != frontend "
                       f"count {self.dropped}")
        if self.lost:
            out.append(f"{self.lost} lost events")
        if self.stale:
            out.append(f"{self.stale} stale events")
        if self.lost is None or self.stale is None:
            out.append("the index never reported lost/stale counters")
        if self.sent and self.dropped > MAX_DROP_FRACTION * self.sent:
            out.append(f"{self.dropped} of {self.sent} events dropped "
                       f"(> {MAX_DROP_FRACTION:.0%})")
        if any(self.restarts.values()):
            out.append(f"stages restarted: {dict(self.restarts)}")
        if self.errors:
            out.append(f"{len(self.errors)} stage errors, first: {self.errors[0]}")
        processed = self.sent - self.dropped
        for view, expected in (("energy", self.sent_small), ("image_sum", self.sent_images)):
            got = self.view_counts.get(view)
            # Dropped events are not known by kind; all others must show.
            if got is None or not expected - self.dropped <= got <= expected:
                out.append(f"view {view}: {got} results for {expected} events sent "
                           f"({self.dropped} dropped)")
        if self.drained and sum(self.per_worker.values()) > processed:
            out.append(f"per-worker tally {self.per_worker} exceeds {processed} events")
        return out

    def table(self):
        """The --report table."""
        w = self.warmup
        head = ("process", "pids", "RSS init", "at warm-up", "final", "max",
                "growth", "trend", "fds init/warm/final", "fds min-max",
                "events in", "events out", "drops")
        rows = []
        processed = self.sent - self.dropped
        reduce_in = sum(self.per_worker.values()) if self.per_worker else None
        by_pid = dict(self.per_worker)
        for name, tr in self.processes.items():
            s = tr.samples
            if not s:
                continue
            fds = [x[3] for x in s]
            if name == "frontend":
                ev_in, ev_out, drops = self.sent, processed, self.dropped
            elif name == "reduce":
                ev_in, ev_out, drops = processed, self.events_out, 0
            else:
                n = sum(by_pid.get(pid, 0) for pid in tr.pids)
                ev_in = ev_out = f"~{n}" if by_pid else "?"
                drops = 0
            rows.append((name, ",".join(map(str, tr.pids)),
                         f"{s[0][2] / MB:.1f}", f"{tr.warm(w)[2] / MB:.1f}",
                         f"{s[-1][2] / MB:.1f}", f"{max(x[2] for x in s) / MB:.1f}",
                         f"{tr.rss_growth(w) / MB:+.1f}", f"{tr.rss_slope(w):+.2f}/min",
                         f"{s[0][3]}/{tr.warm(w)[3]}/{s[-1][3]}", f"{min(fds)}-{max(fds)}",
                         str(ev_in), str(ev_out), str(drops)))
        widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
        fmt = "  ".join(f"{{:<{x}}}" for x in widths)
        lines = [fmt.format(*head), fmt.format(*("-" * x for x in widths))]
        lines += [fmt.format(*r) for r in rows]
        lines.append("")
        lines.append(f"duration {self.duration:.0f} s (warm-up {w:g} s); RSS in MB; growth = "
                     f"max after warm-up - value at warm-up (bound {self.rss_bound_mb:g} MB); "
                     f"fds bound +-{self.fd_slack}")
        lines.append(f"events sent: {self.sent_small} small + {self.sent_images} images "
                     f"(feeder skipped {self.skipped}); out {self.events_out}; dropped "
                     f"{self.dropped} ({self.dropped / max(1, self.sent):.2%}); lost "
                     f"{self.lost}; stale {self.stale}; pool events per worker "
                     f"(every {TALLY_EVERY}): {reduce_in}")
        lines.append("view results (index counts): " + ", ".join(
            f"{k} {v}" for k, v in sorted(self.view_counts.items())))
        lines.append("client received: " + ", ".join(
            f"{k} {v}" for k, v in sorted(self.received.items())))
        problems = self.violations()
        lines.append("")
        lines += [f"BOUND EXCEEDED  {p}" for p in problems] or ["OK  all bounds hold"]
        return "\n".join(lines)


# -- the soak ----------------------------------------------------------------------------


def _stage_processes(pipe):
    """{name: psutil.Process} of the frontend (this process) and every stage."""
    procs = {"frontend": psutil.Process(os.getpid())}
    for name, runner in sorted(pipe.frontend._runners.items()):
        try:
            procs[name] = psutil.Process(runner.pid)
        except psutil.Error:
            pass
    return procs


def run_soak(duration=60.0, *, warmup=WARMUP_S, small_rate=1000.0, image_rate=10.0,
             image_shape=(1024, 1024), pool=2, sample_every=SAMPLE_EVERY_S,
             rss_bound_mb=RSS_GROWTH_MB, fd_slack=FD_SLACK, queue_size=QUEUE_SIZE,
             progress=None, drain_timeout=30.0):
    """Run the soak for `duration` seconds of feeding; returns a :class:`SoakResult`.

    `progress`, if given, is called with a line of text at every sample.
    """
    from metropc.pipeline import Pipeline

    rng = np.random.default_rng(0)
    base_image = rng.random(image_shape, dtype=np.float32) * 100
    ids = itertools.count(1_000_000)

    def small_event(i):
        return {"internal#train_id": i, ENERGY_PATH: (i * 0.6180339887) % 2.0}

    def image_event(i):
        # A fresh 4 MiB array every time: a kept reference anywhere would show.
        return {"internal#train_id": i, IMAGE_PATH: base_image + np.float32(i % 16)}

    traces = {}
    result = None
    # A paced feeder stands for a live source: it drops (oldest) when behind.
    # Input statistics (the dropped counter) reach the index 4x/s, so the
    # final accounting does not wait for the default 1 s cadence.
    with Pipeline(SOAK_CTX, source=None, pool=pool, queue_size=queue_size,
                  drop_policy="oldest", stats_interval=0.25) as pipe:
        reader = Reader(pipe.output_addr)
        reader.start()
        try:
            deadline = time.monotonic() + 30
            while not reader.index_seen.wait(0.1):  # subscribed and the context is in
                if time.monotonic() > deadline:
                    raise RuntimeError("the soak client never received the index")
                pipe.request_index()
            feeders = [PacedFeeder(pipe.send, small_event, small_rate, ids, "soak-small"),
                       PacedFeeder(pipe.send, image_event, image_rate, ids, "soak-images")]
            t0 = time.monotonic()
            for f in feeders:
                f.start()
            next_sample = t0
            while True:
                now = time.monotonic()
                if now >= next_sample:
                    t = now - t0
                    for name, proc in _stage_processes(pipe).items():
                        traces.setdefault(name, ProcessTrace(name)).add(t, proc)
                    if progress is not None:
                        progress(f"{t:6.1f} s  sent {feeders[0].sent}+{feeders[1].sent}  "
                                 f"out {reader.counter('internal#event')}  dropped "
                                 f"{pipe.dropped}  RSS MB " + " ".join(
                                     f"{n}={tr.samples[-1][2] / MB:.0f}"
                                     for n, tr in traces.items() if tr.samples))
                    next_sample += sample_every
                if now - t0 >= duration:
                    break
                time.sleep(max(0.0, min(next_sample, t0 + duration) - time.monotonic()))
            for f in feeders:
                f.stop.set()
            for f in feeders:
                f.join(10)
            elapsed = time.monotonic() - t0
            result = SoakResult(duration=elapsed, warmup=warmup, rss_bound_mb=rss_bound_mb,
                                fd_slack=fd_slack, processes=traces,
                                sent_small=feeders[0].sent, sent_images=feeders[1].sent,
                                skipped=sum(f.skipped for f in feeders))
            # Drain: every event sent must come out or be counted as dropped.
            deadline = time.monotonic() + drain_timeout
            while True:
                dropped = pipe.dropped
                out = reader.counter("internal#event")
                if (out is not None and out + dropped == result.sent
                        and reader.counter("internal#dropped_events") == dropped):
                    result.drained = True
                    break
                if time.monotonic() > deadline:
                    break
                reader.index_seen.clear()
                pipe.request_index()
                reader.index_seen.wait(0.2)
            index = reader.index or {}
            result.dropped = pipe.dropped
            result.events_out = reader.counter("internal#event")
            result.dropped_index = reader.counter("internal#dropped_events")
            result.lost = reader.counter("internal#lost_events")
            result.stale = reader.counter("internal#stale_events")
            result.view_counts = {k[5:]: v.counts for k, v in index.items()
                                  if k.startswith("view#")}
            result.received = dict(reader.counts)
            tally = reader.last.get("view#events_per_worker", {}).get("data")
            if tally is not None:
                tally = np.asarray(tally).tolist()
                result.per_worker = dict(zip(tally[::2], tally[1::2]))
            result.restarts = dict(pipe.frontend.restarts)
            result.errors = list(pipe.errors)
        finally:
            reader.stop.set()
            reader.join(5)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0,
                        help="how long to feed the pipeline (default 30)")
    parser.add_argument("--report", action="store_true",
                        help="print progress and a table per process at the end")
    parser.add_argument("--warmup", type=float, default=WARMUP_S,
                        help=f"seconds not held to the bounds (default {WARMUP_S:g})")
    parser.add_argument("--rss-bound-mb", type=float, default=RSS_GROWTH_MB,
                        help=f"most RSS growth per process after warm-up "
                             f"(default {RSS_GROWTH_MB:g})")
    parser.add_argument("--fd-slack", type=int, default=FD_SLACK,
                        help=f"most drift of open fds after warm-up (default {FD_SLACK})")
    parser.add_argument("--pool", type=int, default=2, help="POOL workers (default 2)")
    parser.add_argument("--small-rate", type=float, default=1000.0,
                        help="small events per second (default 1000)")
    parser.add_argument("--image-rate", type=float, default=10.0,
                        help="1-Mpix images per second (default 10)")
    args = parser.parse_args(argv)

    def progress(line):
        print(line, file=sys.stderr, flush=True)

    result = run_soak(args.minutes * 60.0, warmup=args.warmup, small_rate=args.small_rate,
                      image_rate=args.image_rate, pool=args.pool,
                      rss_bound_mb=args.rss_bound_mb, fd_slack=args.fd_slack,
                      sample_every=SAMPLE_EVERY_S if args.minutes <= 5 else 10.0,
                      progress=progress if args.report else None)
    problems = result.violations()
    if args.report:
        print(result.table())
    else:
        for p in problems:
            print(f"BOUND EXCEEDED  {p}")
        if not problems:
            print(f"OK  {result.sent} events in {result.duration:.0f} s, "
                  f"{result.dropped} dropped, all bounds hold")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

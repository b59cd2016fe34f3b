"""What observability costs: tiny-event throughput with and without it.

Run with ``python benchmarks/metrics.py`` (about two minutes).

Per-view timing (``metropc.engine``), the workers' ``vstats`` messages and
the event-to-output latency stamps are always on, so "without" is the
code of a commit before them (``--baseline``, default the commit before
issue 18's, exported with ``git archive`` to a temporary directory).  Each
round measures, in fresh processes one after the other:

1. ``baseline``: the baseline commit's pipeline;
2. ``timing``: this tree's pipeline (timing, vstats, latency stamps);
3. ``scraped``: the same plus a :class:`metropc.metrics.MetricsServer`
   reading the index, scraped every 0.5 s (Prometheus' default is 15 s).

and, without processes, the cost per call of the timing itself: how long
``Engine.pool`` takes for an event of one trivial view, in the baseline's
engine and in this one (``engine``, a best-of-5 of 100 000 events).

Each pipeline measurement is ``benchmarks/pipeline.py``'s tiny-event throughput
(2 POOL workers, ipc://, 64 events in flight, 3 s, twice).  The rates are
printed per round, then the medians and their ratios to the baseline
measured in the same run: the machine's speed drifts, so only ratios
within one run mean anything.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODES = ("baseline", "timing", "scraped")
DEFAULT_BASELINE = "58a73c4~1"


def measure(mode: str, repeats: int = 2) -> list[float]:
    """Tiny events/s of a 2-worker pipeline, `repeats` times (in this process)."""
    sys.path.insert(0, HERE)
    from pipeline import CTX_TINY, WINDOW, Bench  # noqa: E402 - benchmarks/pipeline.py

    bench = Bench(2)
    stop = threading.Event()
    server = scraper = None
    try:
        if mode == "scraped":
            from metropc.metrics import MetricsServer

            server = MetricsServer(bench.fe.output_addr, port=0, pipeline=bench.fe).start()
            url = f"http://127.0.0.1:{server.port}/metrics"

            def scrape():
                while not stop.wait(0.5):
                    with urllib.request.urlopen(url, timeout=5) as r:
                        r.read()

            scraper = threading.Thread(target=scrape, daemon=True)
            scraper.start()
        bench.set_context(CTX_TINY, "bench_tiny")
        return [bench.throughput(lambda i: {"internal#train_id": i}, WINDOW)
                for _ in range(repeats)]
    finally:
        stop.set()
        if scraper is not None:
            scraper.join(5)
        if server is not None:
            server.stop()
        bench.close()


def measure_engine(n: int = 100_000, repeats: int = 5) -> float:
    """Seconds per event of ``Engine.pool`` with one trivial view (best of `repeats`)."""
    from metropc.core import Context
    from metropc.engine import Engine

    engine = Engine(Context("@View.Scalar\ndef v(t: 'internal#train_id'):\n    return t\n"))
    event = {"internal#train_id": 1}
    engine.prepare(event)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            engine.pool(event)
        best = min(best, (time.perf_counter() - t0) / n)
        if hasattr(engine, "take_timings"):  # the records would grow forever otherwise
            engine.take_timings()
    return best


def run_mode(mode: str, baseline_tree: str, what: str = "pipeline") -> list[float]:
    env = dict(os.environ)
    tree = baseline_tree if mode == "baseline" else ROOT
    env["PYTHONPATH"] = tree + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--measure", mode,
                           "--what", what],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tree)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--baseline", default=DEFAULT_BASELINE,
                   help=f"git revision without the feature (default {DEFAULT_BASELINE})")
    p.add_argument("--measure", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--what", choices=("pipeline", "engine"), default="pipeline",
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.measure:
        result = measure(args.measure) if args.what == "pipeline" else [measure_engine()]
        print(json.dumps(result))
        return 0
    with tempfile.TemporaryDirectory(prefix="metropc-baseline-") as tree:
        archive = subprocess.run(["git", "archive", args.baseline], cwd=ROOT,
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
        engine = {mode: run_mode(mode, tree, "engine")[0] for mode in ("baseline", "timing")}
        print(f"Engine.pool, one trivial view: baseline {engine['baseline'] * 1e9:.0f} ns, "
              f"with timing {engine['timing'] * 1e9:.0f} ns per event "
              f"(+{(engine['timing'] - engine['baseline']) * 1e9:.0f} ns)", flush=True)
        rates = {mode: [] for mode in MODES}
        print(f"tiny events/s, 2 POOL workers; baseline {args.baseline}; load "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
        for r in range(args.rounds):
            for mode in MODES:
                got = run_mode(mode, tree)
                rates[mode] += got
                print(f"  round {r + 1} {mode:>8}: " + ", ".join(f"{x:8.0f}" for x in got),
                      flush=True)
    base = statistics.median(rates["baseline"])
    print("median events/s (ratio to baseline):")
    for mode in MODES:
        med = statistics.median(rates[mode])
        print(f"  {mode:>8}: {med:8.0f}  ({med / base:6.1%})")
    print(f"load at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

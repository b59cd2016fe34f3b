"""Karabo bridge source: our iteration vs the plain ``karabo_bridge.Client``.

    python benchmarks/bridge.py [--trains 50] [--reps 5] [--socket REQ|PUSH|both]

A ``karabo_bridge.server.SimServer`` streams one raw AGIPD module
(16.8 MB per train, zeros so that the generator is not the bottleneck) from
a child process bound to 127.0.0.1 with a port the OS picks.  In the same
run, alternating repetitions read N trains with

- ``client``: the plain ``karabo_bridge.Client`` loop (``client.next()``);
- ``source``: ``metropc.sources.open_source(endpoint)`` iterated, every
  key put into the event dict;
- ``source+paths``: the same with ``paths=[image.data]``, as a pipeline
  whose context uses only the image would run it;
- ``pipeline``: the whole metropc pipeline (``metropc.pipeline.Pipeline``, 2
  POOL workers) fed from the bridge, with a context that takes the mean of
  the module image in POOL and averages it in REDUCE; trains/s counted from
  its output.  The issue's target: at least 30 trains/s.

It prints trains/s and MB/s (array bytes handed to the consumer) as median
(min-max) and the ratios source/client.  Figures on this shared VM are
noisy (limits.md: +-35 % between runs); compare ratios within one run.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from metropc.sources import open_source  # noqa: E402

SOURCE = "SPB_DET_AGIPD1M-1/DET/0CH0:xtdf"
IMAGE_PATH = f"karabo#{SOURCE}[image.data]"
_SERVER_FOR = {"REQ": "REP", "PULL": "PUSH"}


def serve(sock, conn):
    """Child process: a SimServer on 127.0.0.1, port chosen by the OS."""
    from karabo_bridge.server import SimServer

    server = SimServer("tcp://127.0.0.1:0", sock=sock, detector="AGIPDModule",
                       raw=True, nsources=1, datagen="zeros", debug=False)
    conn.send(server.endpoint)
    conn.close()
    sys.stdout = open(os.devnull, "w")  # its start-up banner
    server.loop()


def array_bytes(values):
    return sum(v.nbytes for v in values if isinstance(v, np.ndarray))


def read_client(endpoint, sock, n):
    from karabo_bridge import Client

    with Client(endpoint, sock=sock, timeout=30) as client:
        client.next()  # connected and streaming before the clock starts
        nbytes = 0
        t0 = time.perf_counter()
        for _ in range(n):
            data, _meta = client.next()
            for values in data.values():
                nbytes += array_bytes(values.values())
        return n, nbytes, time.perf_counter() - t0


def read_source(endpoint, sock, n, paths=None):
    with open_source(endpoint, bridge_socket=sock, paths=paths, timeout=30) as source:
        next(source)
        nbytes = 0
        t0 = time.perf_counter()
        for _ in range(n):
            nbytes += array_bytes(next(source).values())
        return n, nbytes, time.perf_counter() - t0


PIPELINE_CTX = f"""
@View.Scalar
def module_mean(image: 'karabo#{SOURCE}[image.data]'):
    return float(image.mean())

@View.Scalar_GlobalAverage(output_every=1)
def average(mean: 'module_mean'):
    return mean
"""


def read_pipeline(endpoint, sock, n):
    """Trains through the whole pipeline: first to last result of N trains."""
    from metropc.client import Client
    from metropc.pipeline import Pipeline

    with Pipeline(PIPELINE_CTX, source=endpoint, bridge_socket=sock, pool=2,
                  max_events=n + 5, queue_size=8) as pipe:
        with Client(pipe.output_addr, views=["average"], timeout=30) as client:
            client.recv()  # first result: the stream is flowing
            t0 = time.perf_counter()
            got = 0
            try:
                while got < n - 1:
                    client.recv(timeout=5)
                    got += 1
            except TimeoutError:
                pass
            dt = time.perf_counter() - t0
    return got, got * 16.8e6, dt


def fmt(values):
    return (f"{statistics.median(values):8.1f} "
            f"({min(values):.1f}-{max(values):.1f})")


def bench(sock, trains, reps):
    server_sock = _SERVER_FOR[sock]
    parent, child = mp.Pipe()
    proc = mp.get_context("spawn").Process(target=serve, args=(server_sock, child),
                                           daemon=True)
    proc.start()
    try:
        if not parent.poll(30):
            raise RuntimeError("simulator did not start")
        endpoint = parent.recv()
        readers = {
            "client": lambda: read_client(endpoint, sock, trains),
            "source": lambda: read_source(endpoint, sock, trains),
            "source+paths": lambda: read_source(endpoint, sock, trains, [IMAGE_PATH]),
            "pipeline": lambda: read_pipeline(endpoint, sock, trains),
        }
        for read in readers.values():  # warm-up
            read()
        rates = {name: [] for name in readers}
        mbps = {name: [] for name in readers}
        for _ in range(reps):
            for name, read in readers.items():
                n, nbytes, dt = read()
                rates[name].append(n / dt)
                mbps[name].append(nbytes / dt / 1e6)
    finally:
        proc.terminate()
        proc.join(10)
    print(f"\n{server_sock} server -> {sock}: {trains} trains x {reps} reps, "
          f"{endpoint}")
    print(f"  {'reader':14s} {'trains/s median (min-max)':>28s} "
          f"{'MB/s median (min-max)':>28s}")
    for name in readers:
        print(f"  {name:14s} {fmt(rates[name]):>28s} {fmt(mbps[name]):>28s}")
    base = statistics.median(rates["client"])
    for name in ("source", "source+paths", "pipeline"):
        print(f"  ratio {name}/client: {statistics.median(rates[name]) / base:.2f}")
    pipe = statistics.median(rates["pipeline"])
    print(f"  pipeline keeps up with {pipe:.1f} trains/s "
          f"({'OK' if pipe >= 30 else 'BELOW'} target >= 30 trains/s)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trains", type=int, default=50)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--socket", choices=("REQ", "PULL", "both"), default="both",
                        help="client socket type (server REP or PUSH)")
    args = parser.parse_args(argv)
    for sock in (("REQ", "PULL") if args.socket == "both" else (args.socket,)):
        bench(sock, args.trains, args.reps)


if __name__ == "__main__":
    main()

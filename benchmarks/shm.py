"""Shared-memory transport benchmark: large frames through the full pipeline.

Run with ``python benchmarks/shm.py`` (about a minute and a half).

Measures in one run, for 1 MiB and 4 MiB float32 frames:

1. the bare ZeroMQ skeleton of benchmarks/pipeline.py (PUSH -> 2 workers ->
   PULL, zero-copy frames, a small result per event);
2. the metropc pipeline (2 POOL workers, ``ProcessRunner``) with the frames
   going by socket (``shm=False``);
3. the same pipeline with shared-memory slots (``shm=True``, the default);

each as sustained events/s (a bounded number in flight, nothing dropped),
and the event-to-output latency (p50/p99) at 10 Hz for both pipeline
variants.  The POOL view reads the whole frame (``float(img.mean())``), so
every byte is really delivered.  Printed as a table with the ratios
shm / skeleton and shm / socket.  Numbers are noisy (+-35 %, more when the
machine is shared).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pipeline as skel  # noqa: E402  benchmarks/pipeline.py: skeleton and pacing

SIZES = {"1 MiB": (512, 512), "4 MiB": (1024, 1024)}
WINDOW = skel.IMG_WINDOW
PHASE_S = 3.0
LAT_HZ = 10.0
LAT_N = 50
TARGET_VS_SKELETON_4MIB = 1.5

CTX_IMG = skel.CTX_IMG
CTX_LAT = f"""
@View.Scalar
def bench_lat(img: '{skel.IMG_PATH}', ts: '{skel.TS_PATH}'):
    img.mean()
    return ts
"""


class Bench(skel.Bench):
    """benchmarks/pipeline.py's Bench with shared memory on or off."""

    def __init__(self, shm, num_pool=2):
        super().__init__(num_pool, shm=shm)
        if shm and self.fe.shm is None:
            self.close()
            raise RuntimeError("shared memory was asked for but is unavailable")

    def latency(self, img, n=LAT_N, hz=LAT_HZ):
        """Event-to-output latency (ms) of `n` events carrying `img` at `hz`."""
        self.set_context(CTX_LAT, "bench_lat")
        return super().latency(lambda i: {"internal#train_id": i, skel.IMG_PATH: img},
                               n, hz)


def measure_pipeline(shm, results):
    bench = Bench(shm)
    label = "shm" if shm else "socket"
    try:
        for name, shape in SIZES.items():
            img = np.random.rand(*shape).astype(np.float32)
            bench.set_context(CTX_IMG, "bench_img")
            rate = bench.throughput(lambda i: {"internal#train_id": i, skel.IMG_PATH: img},
                                    WINDOW, PHASE_S)
            results[(label, name)] = rate
            print(f"  pipeline {label:>6} {name}: {rate:8.1f} ev/s", flush=True)
        for name, shape in SIZES.items():
            img = np.random.rand(*shape).astype(np.float32)
            lat = bench.latency(img)
            results[(label, "lat", name)] = lat
            print(f"  latency  {label:>6} {name}: p50 {np.percentile(lat, 50):.2f} ms "
                  f"({len(lat)}/{LAT_N})", flush=True)
        if shm:
            slots, nbytes = bench.fe.shm.usage()
            results["shm_left"] = (slots, nbytes)
    finally:
        bench.close()


def main():
    t_start = time.perf_counter()
    mpctx = mp.get_context("spawn")
    results = {}
    print("measuring (about a minute and a half) ...", flush=True)
    for name, shape in SIZES.items():
        results[("skel", name)] = skel.run_skeleton(mpctx, shape, PHASE_S)
        print(f"  skeleton        {name}: {results[('skel', name)]:8.1f} ev/s", flush=True)
    measure_pipeline(False, results)
    measure_pipeline(True, results)

    rows = []
    for name, shape in SIZES.items():
        mb = np.prod(shape) * 4 / 1e6
        sk, so, sh = (results[(k, name)] for k in ("skel", "socket", "shm"))
        rows.append((f"throughput {name}", f"{sk:,.0f} ev/s ({sk * mb / 1e3:.1f} GB/s)",
                     f"{so:,.0f} ev/s", f"{sh:,.0f} ev/s ({sh * mb / 1e3:.1f} GB/s)",
                     f"x{sh / sk:.2f}" if sk else "-", f"x{sh / so:.2f}" if so else "-"))
    for name in SIZES:
        lo, lh = results[("socket", "lat", name)], results[("shm", "lat", name)]
        p = (lambda a, q: np.percentile(a, q) if len(a) else float("inf"))
        rows.append((f"latency {name} @ {LAT_HZ:.0f} Hz", "-",
                     f"p50 {p(lo, 50):.2f} / p99 {p(lo, 99):.2f} ms",
                     f"p50 {p(lh, 50):.2f} / p99 {p(lh, 99):.2f} ms", "-",
                     f"x{p(lh, 50) / p(lo, 50):.2f} (p50)"))
    head = ("measurement", "bare skeleton", "metropc socket", "metropc shm",
            "shm/skeleton", "shm/socket")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    print()
    print(fmt.format(*head))
    print(fmt.format(*("-" * w for w in widths)))
    for r in rows:
        print(fmt.format(*r))

    ratio = results[("shm", "4 MiB")] / results[("skel", "4 MiB")]
    lat_ok = all(np.percentile(results[("shm", "lat", n)], 50)
                 <= np.percentile(results[("socket", "lat", n)], 50) * 1.1 for n in SIZES)
    checks = [("4 MiB throughput vs bare skeleton", ratio >= TARGET_VS_SKELETON_4MIB,
               f"x{ratio:.2f} (target >= x{TARGET_VS_SKELETON_4MIB})"),
              ("latency p50 shm vs socket", lat_ok, "no worse than the socket path (+10 %)"),
              ("slots in use after the run", results.get("shm_left", (1, 0))[0] == 0,
               f"{results.get('shm_left')}")]
    print()
    for label, ok, text in checks:
        print(f"{'OK' if ok else 'BELOW TARGET':<12}  {label}: {text}")
    print(f"\n(total {time.perf_counter() - t_start:.0f} s, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus; numbers are noisy, +-35 %)")
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Per-event cost of each builtin view against the plain numpy it wraps.

For every builtin, two inputs: one scalar per event, and one 1-Mpix float32
image per event (1 M points for the matrix histogram).  Each builtin is timed
with its default cadence (``output_every=10``) and compared with the bare
numpy operations doing the same work, including the same amortised output
copy, measured in the same run: the table shows both times and their ratio.

Builtin and baseline are timed in alternating rounds and the fastest round
of each counts, which cancels most of the noise of a shared machine.

Run: ``python benchmarks/builtin.py`` (about 30 s).  ``--rounds`` trades time
for stability.
"""

from __future__ import annotations

import argparse
import logging
import operator
import time

import numpy as np

from metropc.builtin import (
    ExtremumView,
    GlobalAverageView,
    LocalAverageView,
    MatrixHistogramView,
    MovingAverageView,
    StepAverageView,
    StepStackedView,
    VectorHistogramView,
)

log = logging.getLogger("metropc.benchmarks.builtin")

EVERY = 10  # the builtins' default output_every


def time_pair(builtin, baseline, events, rounds):
    """Fastest per-event time (s) of `builtin` and `baseline`, alternating."""
    best = [float("inf"), float("inf")]
    for fn in (builtin, baseline):  # warm-up: allocations, caches, growth
        fn(events[:2])
    for _ in range(rounds):
        for i, fn in enumerate((builtin, baseline)):
            t0 = time.perf_counter()
            fn(events)
            best[i] = min(best[i], (time.perf_counter() - t0) / len(events))
    return best


# -- cases: (name, input, make builtin runner, make baseline runner, baseline text) --

def histogram_case(events):
    view = VectorHistogramView(bin_min=0, bin_max=100, bin_count=100)
    acc = np.zeros(100)
    state = {"n": 0}

    def builtin(evs):
        for e in evs:
            view.process(e)

    def baseline(evs):
        for e in evs:
            counts, _ = np.histogram(e, bins=100, range=(0, 100))
            acc.__iadd__(counts)
            state["n"] += 1
            if state["n"] % EVERY == 0:
                acc.copy()
    return builtin, baseline, "np.histogram(100 bins) + add"


def histogram_bincount_case(events):
    view = VectorHistogramView(bin_min=0, bin_max=100, bin_count=100)
    acc = np.zeros(100)
    # Bin indices precomputed outside the timing: only the counting remains.
    indices = [np.clip(np.asarray(e, np.float64).ravel().astype(np.intp), 0, 99)
               for e in events]

    def builtin(evs):
        for e in evs:
            view.process(e)

    def baseline(evs):
        for idx in indices[:len(evs)]:
            np.add(acc, np.bincount(idx, minlength=100), out=acc)
    return builtin, baseline, "np.bincount of ready indices + add"


def growing_histogram_case(events):
    view = VectorHistogramView(bin_step=1.0)
    acc = np.zeros(200)

    def builtin(evs):
        for e in evs:
            view.process(e)

    def baseline(evs):
        for e in evs:
            acc.__iadd__(np.histogram(e, bins=200, range=(-50, 150))[0])
    return builtin, baseline, "np.histogram(fixed range) + add"


def matrix_case(events):
    view = MatrixHistogramView(x_min=0, x_max=100, x_count=100, y_min=0, y_max=100,
                               y_count=100)
    acc = np.zeros((100, 100))
    state = {"n": 0}
    pairs = [(e, e) if np.ndim(e) == 0 else (e.ravel(), e.ravel()[::-1]) for e in events]

    def builtin(evs):
        for p in pairs[:len(evs)]:
            view.process(p)

    def baseline(evs):
        for x, y in pairs[:len(evs)]:
            h, _, _ = np.histogram2d(np.atleast_1d(y), np.atleast_1d(x), bins=100,
                                     range=[[0, 100], [0, 100]])
            acc.__iadd__(h)
            state["n"] += 1
            if state["n"] % EVERY == 0:
                acc.copy()
    return builtin, baseline, "np.histogram2d(100x100) + add"


def accumulate_baseline(events):
    acc = np.zeros(np.shape(events[0]))
    state = {"n": 0}

    def baseline(evs):
        for e in evs:
            np.add(acc, e, out=acc)
            state["n"] += 1
            if state["n"] % EVERY == 0:
                acc / state["n"]
    return baseline


def average_case(cls, **kwargs):
    def case(events):
        view = cls(**kwargs)

        def builtin(evs):
            for e in evs:
                view.process(e)
        return builtin, accumulate_baseline(events), "np.add into float64 + mean/10 ev"
    return case


def moving_case(events):
    n = 10
    view = MovingAverageView(N=n)
    shape = np.shape(events[0])
    ring = np.zeros((n,) + shape, np.float32)
    acc = np.zeros(shape)
    state = {"i": 0}

    def builtin(evs):
        for e in evs:
            view.process(e)

    def baseline(evs):
        for e in evs:
            i = state["i"] % n
            np.subtract(acc, ring[i], out=acc)
            ring[i] = e
            np.add(acc, ring[i], out=acc)
            state["i"] += 1
            if state["i"] % EVERY == 0:
                acc / n
    return builtin, baseline, "ring write + running sum by hand"


def extremum_case(events):
    view = ExtremumView(op=operator.gt)
    pairs = [(e, float(np.sum(e))) for e in events]
    best = {"v": None}

    def builtin(evs):
        for p in pairs[:len(evs)]:
            view.process(p)

    def baseline(evs):
        for result, value in pairs[:len(evs)]:
            if best["v"] is None or value > best["v"][1]:
                best["v"] = (result, value)
    return builtin, baseline, "if value > best: keep (Python)"


def stacked_case(events):
    def builtin(evs):
        view = StepStackedView()
        for e in evs:
            view.process(e)

    def baseline(evs):
        steps = []
        for e in evs:
            steps.append(np.array(e))
            np.stack(steps)
    return builtin, baseline, "np.stack of all steps so far"


CASES = [
    ("VectorHistogram fixed", histogram_case),
    ("VectorHistogram fixed", histogram_bincount_case),
    ("VectorHistogram growing", growing_histogram_case),
    ("MatrixHistogram fixed", matrix_case),
    ("GlobalAverage", average_case(GlobalAverageView)),
    ("LocalAverage N=10", average_case(LocalAverageView)),
    ("StepAverage", average_case(StepAverageView)),
    ("MovingAverage N=10", moving_case),
    ("Extremum", extremum_case),
    ("StepStacked (per step)", stacked_case),
]


def inputs(kind, count, rng):
    if kind == "scalar":
        return [float(v) for v in rng.uniform(-5, 105, count)]
    return [rng.normal(50, 20, (1000, 1000)).astype(np.float32) for _ in range(count)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    data = {"scalar": inputs("scalar", 2000, rng), "1 Mpix f32": inputs("large", 20, rng)}
    print(f"{'builtin':26s} {'input':10s} {'builtin':>11s} {'numpy':>11s} {'ratio':>6s}  baseline")
    started = time.perf_counter()
    for name, case in CASES:
        for kind, events in data.items():
            builtin, baseline, text = case(events)
            t_builtin, t_base = time_pair(builtin, baseline, events, args.rounds)
            print(f"{name:26s} {kind:10s} {fmt(t_builtin):>11s} {fmt(t_base):>11s} "
                  f"{t_builtin / t_base:6.2f}  {text}", flush=True)
    print(f"(total {time.perf_counter() - started:.0f} s; per-event times, fastest of "
          f"{args.rounds} rounds)")


def fmt(seconds):
    return f"{seconds * 1e6:.1f} us" if seconds < 1e-3 else f"{seconds * 1e3:.2f} ms"


if __name__ == "__main__":
    main()

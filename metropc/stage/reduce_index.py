"""What REDUCE tells about the pipeline: the ``index`` and ``status`` payloads.

The index (docs/protocol.md §8) is where a client learns what exists and
how it goes: every view with its count, rate, kind and errors, the input
paths, the state and run, what was lost, stale or dropped, and the timing
entries.  Its counts come from three places -- what REDUCE's own views
produce (:class:`RateMeter`), what the kernels of other processes add with
``increase_view_counts`` (their ``vstats``), and the frontend's input
statistics -- and :class:`ReduceIndex` keeps them and builds the payload
from them and the stage's state, which is passed in.

Kept apart from :class:`~metropc.stage.reduce.ReduceStage`, which owns a
:class:`ReduceIndex`, feeds it and publishes what it builds: so the
payloads are built, and can be tested, from plain values, without sockets
and without the stage's event handling.
"""

from __future__ import annotations

import collections
import time

from . import common

__all__ = ["RateMeter", "ReduceIndex", "STATE_CODES", "status_payload"]

#: Codes of the states in the index entry ``internal#state``.
STATE_CODES = {"READY": 0, "RUN": 1, "STOP": 2}


#: The meter's key for events whose results went out (``internal#<alias>``).
EVENTS = "#events"


class RateMeter:
    """Counts plus a rate over the last index interval."""

    def __init__(self):
        self.reset()

    def reset(self, keep=()):
        """Count from zero (a new context: new views), except the `keep` keys."""
        counts = getattr(self, "counts", {})
        self.counts = {k: counts[k] for k in keep if k in counts}
        self._prev = dict(self.counts)
        self.rates = {}
        self._t = time.monotonic()

    def set(self, key, count):
        self.counts[key] = count

    def add(self, key, delta=1):
        self.counts[key] = self.counts.get(key, 0) + delta

    def update_rates(self):
        now = time.monotonic()
        dt = now - self._t
        if dt < 0.2:
            return
        for key, count in self.counts.items():
            self.rates[key] = (count - self._prev.get(key, 0)) / dt
        self._prev = dict(self.counts)
        self._t = now


class ReduceIndex:
    """The counts behind REDUCE's index, and the index built from them.

    ``meter`` counts what REDUCE's views produced in the context in use,
    and its events (``#events``); it is one object for the stage's life,
    reset when a new context is used (the stage counts into it directly).
    ``worker_counts`` is what POOL kernels added with
    ``increase_view_counts``, from the workers' vstats: ``{context version:
    Counter}`` (REDUCE's own are in its context's).  ``inputs`` is
    ``{path: (count, rate)}`` from the frontend.
    """

    def __init__(self):
        self.meter = RateMeter()
        self.worker_counts = {}
        self.inputs = {}

    def new_context(self, version):
        """Context `version` is used from now on: its views count from zero,
        and what other processes counted for older contexts is dropped.
        The events out go on counting (``out`` + dropped + lost = fed)."""
        self.meter.reset(keep=(EVENTS,))
        self.worker_counts = {v: c for v, c in self.worker_counts.items()
                              if v is None or version is None or v >= version}

    def add_worker_counts(self, counts, current):
        """``(context version, name, delta)`` of another process's kernels;
        those of a context older than `current` (the version in use) are
        dropped, as its index is."""
        for version, name, delta in counts:
            if version is None or current is None or version >= current:
                self.worker_counts.setdefault(version, collections.Counter())[name] += delta

    def on_stats(self, data):
        """Input statistics from the frontend: {path: (count, rate)}."""
        self.inputs = dict(data)

    def entries(self, ctx, errors, *, state, run, lost, stale, output_dropped, observed):
        """The index payload: views and input paths with counts and rates.

        `ctx` is the context in use (or None), `errors` its engine's error
        counts by view; `state` (a key of :data:`STATE_CODES`), `run`,
        `lost`, `stale` and `output_dropped` (``(count, rate)``) are the
        stage's; `observed` are the timing, load and latency entries
        (:meth:`metropc.timing.ReduceObserver.entries`), added last.
        """
        meter = self.meter
        meter.update_rates()
        entries = {}
        for path, (count, rate) in self.inputs.items():
            entries[path] = (int(count), float(rate))
        # What this process's recv rejected (garbage on the results port,
        # above all), with the frontend's own count (its stats).
        count, rate = entries.get("internal#rejected_messages", (0, 0.0))
        entries["internal#rejected_messages"] = (count + common.rejected, rate)
        if ctx is not None:
            alias = f"internal#{ctx.event_alias}"
            entries[alias] = (int(meter.counts.get(EVENTS, 0)),
                              float(meter.rates.get(EVENTS, 0.0)))
            counts = collections.Counter(ctx.view_counts)
            counts.update(self.worker_counts.get(ctx.version, {}))
            for name, view in ctx.views.items():
                entries[f"view#{name}"] = (
                    int(meter.counts.get(name, 0) + counts.pop(name, 0)),
                    float(meter.rates.get(name, 0.0)), view.output.value,
                    view.stage.value, int(errors.get(name, 0)),
                    bool(view.hidden), view.label or "")
            for name, count in counts.items():
                # A pure counter (a name that is no view): a plain entry,
                # which clients do not take for a view to subscribe to.
                entries[f"view#{name}"] = (int(count), 0.0)
        entries["internal#state"] = (STATE_CODES[state], 0.0)
        entries["internal#run"] = (run or 0, 0.0)
        entries["internal#lost_events"] = (lost, 0.0)
        entries["internal#stale_events"] = (stale, 0.0)
        entries["internal#output_dropped"] = output_dropped
        entries.update(observed)
        return entries


def status_payload(state, run, ctx, control, seqs=None):
    """What a display shows at the top: state, run, context (`ctx`, or
    None), where to control (`control`: the frontend's control endpoint, or
    None); that results come in batches to who asks (``batch``); and the
    ``seq`` of each view's last result so far (`seqs`, ``{path: seq}``)."""
    return {"state": state, "run": run,
            "version": None if ctx is None else ctx.version,
            "path": None if ctx is None else ctx.path,
            "control": control, "batch": True, "seqs": seqs or {}}

"""Per-view timing: fixed log-spaced histograms, cheap to fill and to merge.

Operators need to know *which* view is slow, and Prometheus wants
histograms whose buckets never change.  A view's timing is one small list
(a *record*): ``[errors, seconds, bucket_0, ..., bucket_N]`` where bucket
``i`` counts calls that took at most ``BOUNDS[i]`` seconds (and more than
the bound before it) and the last bucket counts the rest.  Filling one
costs a dict lookup, a :func:`bisect.bisect_left` over 22 floats and two
list increments (:meth:`metropc.engine.Engine._run`); merging is adding
lists, so the records of several POOL workers, of restarted workers and of
REDUCE simply add up and never go backwards.

Where the records go: :class:`~metropc.engine.Engine` fills them where a
view runs, a POOL worker sends what it collected about once a second to
REDUCE (opcode ``vstats``, docs/protocol.md §12), and REDUCE merges them in
a :class:`TimingTable` and puts them into the index (``timing#<view>``,
``stage#<name>``, docs/protocol.md §8).

Only the standard library is used: the stages import this module.
"""

from __future__ import annotations

import bisect
import collections
import logging
import struct
import time
from collections.abc import Iterable, Mapping, Sequence

__all__ = ["BOUNDS", "NBUCKETS", "ERRORS", "SECONDS", "FIRST", "new_record", "add_time",
           "merge", "calls", "quantile", "TimingTable", "StageLoad", "WINDOW", "format_seconds",
           "pack_buckets", "unpack_buckets", "ReduceObserver"]

log = logging.getLogger(__name__)

#: Upper bounds of the histogram buckets in seconds (1-2-5 steps from 1 µs
#: to 10 s); a last bucket counts everything slower.  Fixed: they are part
#: of the index format (docs/protocol.md §8).
BOUNDS: tuple[float, ...] = tuple(m * 10.0 ** e for e in range(-6, 1) for m in (1, 2, 5)) + (10.0,)
NBUCKETS = len(BOUNDS) + 1
#: Positions in a record.
ERRORS, SECONDS, FIRST = 0, 1, 2
#: Seconds of history that the p50/p99 in the index describe.
WINDOW = 10.0


def new_record() -> list:
    """An empty record: no errors, no time, every bucket 0."""
    return [0, 0.0] + [0] * NBUCKETS


def add_time(record: list, seconds: float, n: int = 1) -> None:
    """Count one call (or `n` calls) that took `seconds` (each)."""
    record[SECONDS] += seconds * n
    record[FIRST + bisect.bisect_left(BOUNDS, seconds)] += n


def merge(into: list, record: Sequence) -> None:
    """Add `record` to `into` (same layout)."""
    for i, value in enumerate(record):
        into[i] += value


def calls(record: Sequence) -> int:
    """Calls counted in a record."""
    return sum(record[FIRST:])


def quantile(buckets: Sequence[int], q: float) -> float:
    """The `q` quantile (0..1) of a histogram's bucket counts, in seconds.

    Interpolated linearly inside the bucket the quantile falls in, as
    Prometheus' ``histogram_quantile`` does; the first bucket starts at 0
    and a quantile in the last (unbounded) bucket is its lower bound.
    0.0 for an empty histogram.
    """
    total = sum(buckets)
    if total <= 0:
        return 0.0
    rank = q * total
    seen = 0
    for i, n in enumerate(buckets):
        if n and seen + n >= rank:
            if i >= len(BOUNDS):
                return BOUNDS[-1]
            lower = BOUNDS[i - 1] if i else 0.0
            return lower + (BOUNDS[i] - lower) * max(0.0, rank - seen) / n
        seen += n
    return BOUNDS[-1]


def pack_buckets(buckets: Sequence[int]) -> bytes:
    """Bucket counts as one bytes value (int64 little-endian each): one
    frame in an index message instead of one per bucket."""
    return struct.pack(f"<{len(buckets)}q", *buckets)


def unpack_buckets(data: bytes) -> tuple[int, ...]:
    """What :func:`pack_buckets` made; ValueError if it is not whole int64s."""
    if len(data) % 8:
        raise ValueError("bucket counts are not a whole number of int64")
    return struct.unpack(f"<{len(data) // 8}q", data)


def format_seconds(seconds: float) -> str:
    """``"21.3 ms"``, ``"45 µs"``, ``"1.20 s"``: a duration for people."""
    if seconds >= 1.0:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} µs"


def valid_record(value) -> bool:
    """Whether a received tuple is a record of this module's layout."""
    return len(value) == FIRST + NBUCKETS


class TimingTable:
    """Records merged per name, with rates and recent quantiles for the index.

    Counts only grow: a record added is never taken back, so calls and
    errors are Prometheus counters (they restart from 0 only with REDUCE).
    The p50/p99 describe the last :data:`WINDOW` seconds, or all time when
    the name had no call in them (a finished run keeps its numbers).
    """

    def __init__(self, clock=time.monotonic, window: float = WINDOW):
        self.clock = clock
        self.window = window
        self.records: dict[str, list] = {}
        self._history: collections.deque = collections.deque()  # (t, {name: buckets})
        self._prev: tuple[float, dict[str, int]] = (clock(), {})

    def add(self, name: str, record: Sequence) -> None:
        mine = self.records.get(name)
        if mine is None:
            self.records[name] = list(record)
        else:
            merge(mine, record)

    def add_all(self, records: Mapping[str, Sequence]) -> None:
        for name, record in records.items():
            self.add(name, record)

    def entries(self, names: Iterable[str] | None = None) -> dict[str, tuple]:
        """``{name: (calls, rate, errors, p50, p99, seconds, packed buckets)}``.

        Also remembers the buckets for the recent quantiles and the counts
        for the rates: call it once per index.
        """
        now = self.clock()
        t_prev, prev = self._prev
        dt = now - t_prev
        snapshot = {name: tuple(r[FIRST:]) for name, r in self.records.items()}
        history = self._history
        if not history or now - history[-1][0] >= 0.5:
            history.append((now, snapshot))
        while len(history) > 1 and now - history[1][0] >= self.window:
            history.popleft()
        base = history[0][1]
        out = {}
        counts = {}
        for name, record in self.records.items():
            if names is not None and name not in names:
                continue
            buckets = snapshot[name]
            n = sum(buckets)
            counts[name] = n
            old = base.get(name)
            recent = buckets if old is None else tuple(a - b for a, b in zip(buckets, old))
            if not any(recent):
                recent = buckets
            rate = (n - prev.get(name, 0)) / dt if dt > 0.2 and name in prev else 0.0
            out[name] = (n, float(rate), int(record[ERRORS]), quantile(recent, 0.5),
                         quantile(recent, 0.99), float(record[SECONDS]),
                         pack_buckets(buckets))
        if dt > 0.2:
            self._prev = (now, {**prev, **counts})
        else:  # too soon for a rate: new names get their baseline only
            for name, n in counts.items():
                prev.setdefault(name, n)
        return out


class StageLoad:
    """Events, busy fraction and pid of each stage process, by name.

    A worker reports the seconds it spent busy in an interval; its busy
    fraction is the last report's, and 0 once it has not reported for
    `silent` seconds (an idle or gone worker).  A name not heard of for
    `forget` seconds (a remote worker that left) is dropped.
    """

    def __init__(self, clock=time.monotonic, silent: float = 3.0, forget: float = 60.0):
        self.clock = clock
        self.silent = silent
        self.forget = forget
        self.stages: dict[str, list] = {}  # name -> [events, busy, pid, last, prev events]
        self._t = clock()

    def report(self, name: str, events: int, busy: float, interval: float,
               pid: int) -> None:
        entry = self.stages.get(name)
        fraction = min(1.0, max(0.0, busy / interval)) if interval > 0 else 0.0
        if entry is None:
            self.stages[name] = [events, fraction, pid, self.clock(), 0]
        else:
            entry[0] += events
            entry[1:4] = [fraction, pid, self.clock()]

    def entries(self) -> dict[str, tuple]:
        """``{name: (events, rate, busy, pid)}``; call once per index."""
        now = self.clock()
        dt = now - self._t
        out = {}
        for name, entry in list(self.stages.items()):
            age = now - entry[3]
            if age > self.forget:
                del self.stages[name]
                continue
            rate = (entry[0] - entry[4]) / dt if dt > 0.2 else 0.0
            busy = entry[1] if age <= self.silent else 0.0
            out[name] = (int(entry[0]), float(rate), float(busy), int(entry[2]))
        if dt > 0.2:
            for entry in self.stages.values():
                entry[4] = entry[0]
            self._t = now
        return out


class ReduceObserver:
    """What REDUCE keeps for the index about speed and load.

    View timing merged from every worker's ``vstats`` and REDUCE's own
    engine, each stage process's load, and the event-to-output latency
    (``latency``: a record REDUCE fills per event).  :meth:`entries` makes
    the index entries (docs/protocol.md §8) once per index.
    """

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.timing = TimingTable(clock)
        self.load = StageLoad(clock)
        self.latency = new_record()      # events published since the last index
        self.busy = 0.0                  # seconds REDUCE worked since the last index
        self.events = 0                  # events REDUCE finished since the last index
        self._latency = TimingTable(clock)
        self._t = clock()
        self._odd_senders: set[str] = set()

    def on_vstats(self, data: Mapping) -> None:
        """A worker's timing deltas (they add up) and its load."""
        for key, record in data.items():
            if key.startswith("view#"):
                if valid_record(record):
                    self.timing.add(key[5:], record)
                elif data["stage"] not in self._odd_senders:
                    self._odd_senders.add(data["stage"])
                    log.warning("reduce: %s sends timing records of another layout; "
                                "ignored", data["stage"])
        self.load.report(data["stage"], data["events"], data["busy"], data["interval"],
                         data.get("pid", 0))

    def entries(self, engine_timings: Mapping[str, Sequence], reorder_waiting: int,
                pid: int) -> dict[str, tuple]:
        """``timing#<view>``, ``stage#<name>``, ``internal#output_latency`` and
        ``internal#reorder_waiting`` entries; REDUCE's own `engine_timings`
        (taken from its engine) and load are added first."""
        self.timing.add_all(engine_timings)
        now = self.clock()
        self.load.report("reduce", self.events, self.busy, now - self._t, pid)
        self.events, self.busy, self._t = 0, 0.0, now
        self._latency.add("output", self.latency)
        self.latency = new_record()
        entries = {f"timing#{name}": e for name, e in self.timing.entries().items()}
        entries.update((f"stage#{name}", e) for name, e in self.load.entries().items())
        latency = self._latency.entries().get("output")
        if latency is not None:
            entries["internal#output_latency"] = latency
        entries["internal#reorder_waiting"] = (int(reorder_waiting), 0.0)
        return entries

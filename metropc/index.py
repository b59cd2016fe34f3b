"""The index: what a pipeline publishes about every path it knows.

REDUCE publishes ``b"index"`` messages (docs/protocol.md section 8) that map
each path to its statistics: counts and rate for every path, plus output
type, stage, errors, hidden flag and label for views (``view#<name>``),
call timing for ``timing#<view>`` and ``internal#output_latency``, and load
for ``stage#<name>``.  This module holds the entry types
(:class:`IndexEntry` and its subclasses), their wire encoding
(:func:`encode_index`, :func:`decode_index`; on the wire the values are
plain tuples, so that clients in other languages need no pickle) and two
helpers, :func:`view_path` and :func:`slowest_views`.

It needs no ZeroMQ and does not import the client; :mod:`metropc.client`
re-exports its public names (``from metropc.client import IndexViewEntry``
works as before) and decodes index messages with it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from .enums import ViewOutput, ViewStage
from .error import ProtocolError
from .timing import pack_buckets, unpack_buckets

__all__ = [
    "IndexEntry", "IndexViewEntry", "IndexTimingEntry", "IndexStageEntry",
    "slowest_views", "view_path", "encode_index", "decode_index",
    "INDEX", "TIMING_PREFIX", "STAGE_PREFIX", "OUTPUT_LATENCY", "GAUGES",
]

log = logging.getLogger(__name__)

#: Topic (opcode) of index messages.
INDEX = b"index"
_VIEW_PREFIX = "view#"
#: Index paths of view timing (``timing#<view>``) and stage load
#: (``stage#<name>``), and of the event-to-output latency (docs/protocol.md §8).
TIMING_PREFIX = "timing#"
STAGE_PREFIX = "stage#"
OUTPUT_LATENCY = "internal#output_latency"
#: Index paths whose count is a level now (it goes down as well as up), not
#: a running total: no rate follows from successive counts; their `rate`
#: is their own (docs/shm.md), or 0.0.
GAUGES = frozenset({"internal#shm_slots_used", "internal#shm_bytes_used",
                    "internal#reorder_waiting"})


class IndexEntry:
    """Statistics of one non-view path in the index (e.g. ``karabo#SRC.key``).

    `counts` is how many events carried the path, `rate` how many per second
    recently.  Entries use ``__slots__`` so that clients can subclass them
    with extra slots of their own, as EXtra-foam does.
    """

    __slots__ = ("counts", "rate")

    def __init__(self, counts: int, rate: float):
        self.counts = counts
        self.rate = rate

    def _fields(self) -> tuple:
        return (self.counts, self.rate)

    def _field_names(self) -> tuple:
        return IndexEntry.__slots__

    def __eq__(self, other):
        if not isinstance(other, IndexEntry):
            return NotImplemented
        return type(self) is type(other) and self._fields() == other._fields()

    __hash__ = None  # mutable

    def __repr__(self):
        args = ", ".join(f"{n}={_repr_field(v)}"
                         for n, v in zip(self._field_names(), self._fields(), strict=True))
        return f"{type(self).__name__}({args})"


class IndexViewEntry(IndexEntry):
    """Statistics and metadata of one view (``view#<name>``) in the index.

    The four positional arguments are the original's; `errors` (kernel
    failures counted so far), `hidden` and `label` are optional additions.
    `output` and `stage` are converted to :class:`ViewOutput` and
    :class:`ViewStage`, so ints from the wire work as well.
    """

    __slots__ = ("output", "stage", "errors", "hidden", "label")

    def __init__(self, counts: int, rate: float, output: ViewOutput | int,
                 stage: ViewStage | int, *, errors: int = 0, hidden: bool = False,
                 label: str = ""):
        super().__init__(counts, rate)
        self.output = ViewOutput(output)
        self.stage = ViewStage(stage)
        self.errors = errors
        self.hidden = hidden
        self.label = label

    def _fields(self) -> tuple:
        return (self.counts, self.rate, self.output, self.stage, self.errors,
                self.hidden, self.label)

    def _field_names(self) -> tuple:
        return IndexEntry.__slots__ + IndexViewEntry.__slots__

    def __eq__(self, other):
        if not isinstance(other, IndexEntry):
            return NotImplemented
        # ViewOutput equality is loose (SCALAR == SCALAR_FAST); entries are
        # only equal when the exact output type matches.
        return (type(self) is type(other) and self._fields() == other._fields()
                and self.output is other.output)

    __hash__ = None


class IndexTimingEntry(IndexEntry):
    """Timing of one view (``timing#<view>``) or of the output
    (``internal#output_latency``), measured where it runs.

    `counts` are calls (events, for the latency) so far and `rate` calls
    per second; `errors` failed calls; `p50`, `p99` seconds over the last
    10 s (all time if there was no call in them); `seconds` the total time;
    `buckets` the call counts per bucket of :data:`metropc.timing.BOUNDS`
    (the last one: slower than every bound).  Older decoders see these
    paths as plain ``(counts, rate)`` entries.
    """

    __slots__ = ("errors", "p50", "p99", "seconds", "buckets")

    def __init__(self, counts: int, rate: float, *, errors: int = 0, p50: float = 0.0,
                 p99: float = 0.0, seconds: float = 0.0, buckets: tuple = ()):
        super().__init__(counts, rate)
        self.errors = errors
        self.p50 = p50
        self.p99 = p99
        self.seconds = seconds
        self.buckets = tuple(buckets)

    def _fields(self) -> tuple:
        return (self.counts, self.rate, self.errors, self.p50, self.p99, self.seconds,
                self.buckets)

    def _field_names(self) -> tuple:
        return IndexEntry.__slots__ + IndexTimingEntry.__slots__


class IndexStageEntry(IndexEntry):
    """Load of one stage process (``stage#pool-0``, ``stage#reduce``).

    `counts` are the events it ran views for, `rate` per second, `busy`
    the fraction of its recent time spent working (0..1), `pid` its
    process id.  Older decoders see a plain ``(counts, rate)`` entry.
    """

    __slots__ = ("busy", "pid")

    def __init__(self, counts: int, rate: float, *, busy: float = 0.0, pid: int = 0):
        super().__init__(counts, rate)
        self.busy = busy
        self.pid = pid

    def _fields(self) -> tuple:
        return (self.counts, self.rate, self.busy, self.pid)

    def _field_names(self) -> tuple:
        return IndexEntry.__slots__ + IndexStageEntry.__slots__


def slowest_views(index: Mapping[str, IndexEntry] | None,
                  n: int = 3) -> list[tuple[str, IndexTimingEntry]]:
    """The `n` views of `index` with the highest p99 that ran: ``[(name, entry)]``."""
    timed = [(path[len(TIMING_PREFIX):], e) for path, e in (index or {}).items()
             if path.startswith(TIMING_PREFIX) and isinstance(e, IndexTimingEntry)
             and e.counts]
    timed.sort(key=lambda item: (-item[1].p99, -item[1].p50, item[0]))
    return timed[:n]


def _repr_field(value):
    if isinstance(value, (ViewOutput, ViewStage)):
        return f"{type(value).__name__}.{value.name}"
    return repr(value)


def view_path(name: str) -> str:
    """``"roi"`` or ``"view#roi"`` -> ``"view#roi"``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"view name must be a non-empty str, not {name!r}")
    return name if name.startswith(_VIEW_PREFIX) else _VIEW_PREFIX + name


# -- index wire encoding ---------------------------------------------------

def encode_index(entries: Mapping[str, IndexEntry]) -> dict[str, tuple]:
    """The wire payload of an index: ``{path: tuple}``.

    Non-view paths become ``(counts, rate)``; views become ``(counts, rate,
    output, stage, errors, hidden, label)`` with the enum values as ints.
    All elements are fast-path types, so no pickle is involved.
    """
    payload = {}
    for path, entry in entries.items():
        if isinstance(entry, IndexViewEntry):
            payload[path] = (int(entry.counts), float(entry.rate),
                             int(entry.output.value), int(entry.stage.value),
                             int(entry.errors), bool(entry.hidden), str(entry.label))
        elif isinstance(entry, IndexTimingEntry):
            payload[path] = (int(entry.counts), float(entry.rate), int(entry.errors),
                             float(entry.p50), float(entry.p99), float(entry.seconds),
                             pack_buckets(entry.buckets))
        elif isinstance(entry, IndexStageEntry):
            payload[path] = (int(entry.counts), float(entry.rate), float(entry.busy),
                             int(entry.pid))
        elif isinstance(entry, IndexEntry):
            payload[path] = (int(entry.counts), float(entry.rate))
        else:
            raise TypeError(f"index entry for {path!r} is a {type(entry).__name__}")
    return payload


def _check(value, types, what, path):
    if type(value) not in types:
        raise ProtocolError(f"index entry {path!r}: {what} is a "
                            f"{type(value).__name__}")
    return value


def _view_output(value, path):
    try:
        return ViewOutput(value)
    except ValueError:
        # A hint this side does not know yet: fall back to its generic type.
        try:
            return ViewOutput(value // 10)
        except ValueError:
            raise ProtocolError(f"index entry {path!r}: unknown output type "
                                f"{value}") from None


def _decode_entry(path: str, value) -> IndexEntry:
    if type(value) is not tuple or len(value) < 2:
        raise ProtocolError(f"index entry {path!r} is {value!r}, not a tuple "
                            "(counts, rate, ...)")
    counts = _check(value[0], (int,), "counts", path)
    rate = float(_check(value[1], (float, int), "rate", path))
    if path.startswith((TIMING_PREFIX, STAGE_PREFIX)) or path == OUTPUT_LATENCY:
        return _decode_timing(path, value, counts, rate)
    if not path.startswith(_VIEW_PREFIX) or len(value) < 4:
        return IndexEntry(counts, rate)
    output = _view_output(_check(value[2], (int,), "output", path), path)
    try:
        stage = ViewStage(_check(value[3], (int,), "stage", path))
    except ValueError:
        raise ProtocolError(f"index entry {path!r}: unknown stage {value[3]}") from None
    # Later elements are optional (older pipelines) and anything beyond the
    # known ones is ignored (newer pipelines).
    errors = _check(value[4], (int,), "errors", path) if len(value) > 4 else 0
    hidden = _check(value[5], (bool,), "hidden", path) if len(value) > 5 else False
    label = _check(value[6], (str,), "label", path) if len(value) > 6 else ""
    return IndexViewEntry(counts, rate, output, stage, errors=errors,
                          hidden=hidden, label=label)


def _decode_timing(path, value, counts, rate) -> IndexEntry:
    """A timing or stage entry; a plain entry if the rest is not the layout
    this side knows (an older or newer sender): these paths are extras,
    and the index around them must still decode."""
    try:
        if path.startswith(STAGE_PREFIX):
            if len(value) >= 4:
                return IndexStageEntry(
                    counts, rate, busy=float(_check(value[2], (float, int), "busy", path)),
                    pid=_check(value[3], (int,), "pid", path))
        elif len(value) >= 7:
            return IndexTimingEntry(
                counts, rate, errors=_check(value[2], (int,), "errors", path),
                p50=float(_check(value[3], (float, int), "p50", path)),
                p99=float(_check(value[4], (float, int), "p99", path)),
                seconds=float(_check(value[5], (float, int), "seconds", path)),
                buckets=unpack_buckets(_check(value[6], (bytes,), "buckets", path)))
    except (ProtocolError, ValueError) as e:
        log.debug("%s", e)
    return IndexEntry(counts, rate)


def decode_index(payload: Mapping[str, Any]) -> dict[str, IndexEntry]:
    """Turn the wire payload of an index into ``{path: IndexEntry}``."""
    return {path: _decode_entry(path, value) for path, value in payload.items()}

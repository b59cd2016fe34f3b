"""The :class:`Source` base class and helpers shared by all data sources.

A source turns some outside stream (a simulator, a Karabo bridge, run files,
a user's generator) into *events*: plain dicts mapping full path strings to
values, the format the pipeline's frontend and :func:`metropc.run` consume.
Everything that is the same for every source lives here, so each source only
writes a generator of events: pacing to a trains/s rate, stopping cleanly
when :meth:`Source.close` is called from any thread, and knowing which paths
the context actually uses.
"""

from __future__ import annotations

import difflib
import math
import threading
import time
from collections.abc import Iterator

from .. import euxfel as _euxfel  # noqa: F401  (registers the karabo# type)
from ..error import SourceError
from ..messages import RUN_PATH  # noqa: F401  (the sources' name for it)
from ..path import Path, path_types, split_type

__all__ = ["Source", "Pacer", "normalize_paths", "normalize_path", "karabo_selection",
           "internal_event", "karabo_key", "resolve_rate", "closest", "did_you_mean", "key_hint",
           "source_hint",
           "COMMON_OPTIONS"]

#: Keyword options :func:`metropc.sources.open_source` passes to every source
#: factory; a factory may ignore those it has no use for.
COMMON_OPTIONS = frozenset({"paths", "rate", "seed", "bridge_socket", "timeout"})


def internal_event(train_id):
    """A new event dict with the internal paths a source must fill.

    ``event_id`` is the train id, as at European XFEL where an event is a
    train; ``sequence_id`` is -1 because no source here splits trains.
    ``ctx_version`` is the frontend's business, not the source's.
    """
    return {"internal#train_id": train_id, "internal#event_id": train_id,
            "internal#sequence_id": -1}


def normalize_path(path):
    """The event key for one path (a Path or a string), or None if unusable."""
    if isinstance(path, Path):
        return str(path)
    kind, body = split_type(path)
    types = path_types()
    if kind is None:
        # A bare Karabo path, as context code may write it.
        karabo = types.get("karabo")
        if karabo is not None and karabo.accepts_bare(body):
            return str(karabo(body))
        return path
    cls = types.get(kind)
    if cls is None:
        return path
    try:
        return str(cls(path))
    except ValueError:
        return path


def normalize_paths(paths):
    """`paths` as a frozenset of normalised event keys; None stays None.

    Accepts what ``ctx.get_paths()`` returns (Path objects) as well as
    strings, so that ``'DEV:out.data.x'`` and ``'karabo#DEV:out[data.x]'``
    select the same data.
    """
    if paths is None:
        return None
    if isinstance(paths, (str, Path)):
        paths = [paths]
    return frozenset(k for k in map(normalize_path, paths) if k is not None)


def karabo_selection(paths):
    """``{source: {key: event_key}}`` for the ``karabo#`` paths in `paths`.

    Bridge and file sources use it to pick only the needed keys from a
    train instead of flattening everything and filtering afterwards.
    """
    from ..euxfel import KaraboPath

    selection: dict[str, dict[str, str]] = {}
    for key in paths or ():
        if split_type(key)[0] != "karabo":
            continue
        try:
            kp = KaraboPath(key)
        except ValueError:
            continue
        selection.setdefault(kp.source, {})[kp.key] = str(kp)
    return selection


def closest(wanted: str, offered) -> str | None:
    """The entry of `offered` closest to `wanted`, or None if none is close."""
    close = difflib.get_close_matches(wanted, list(offered), n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(wanted: str, offered) -> str:
    """``"; did you mean 'X'?"`` for the entry of `offered` closest to
    `wanted`, or "" if none is close.

    A misspelled path is the commonest reason a view never runs, and the
    one its author cannot see: the view is simply skipped for every event.
    """
    close = closest(wanted, offered)
    return f"; did you mean {close!r}?" if close is not None else ""


def source_hint(source: str, key: str, sources) -> str:
    """:func:`did_you_mean` for a Karabo `source` that is not among
    `sources`, naming the path to `key` of the closest one."""
    close = closest(source, sources)
    return f"; did you mean {karabo_key(close, key)!r}?" if close is not None else ""


def key_hint(source: str, key: str, available) -> str:
    """:func:`did_you_mean` for a key that Karabo `source` lacks, given the
    keys it has, named as the event key a context would use."""
    control = ":" not in source
    offered = [k.removesuffix(".value") if control else k for k in available
               if k != "metadata" and not (control and k.endswith(".timestamp"))]
    close = closest(key, offered)
    return f"; did you mean {karabo_key(source, close)!r}?" if close is not None else ""


def karabo_key(source, key):
    """The event key of ``data[source][key]`` from Karabo: bracket form for
    pipeline sources (with ':'), dotted form for control sources."""
    if ":" in source:
        return f"karabo#{source}[{key}]"
    return f"karabo#{source}.{key}"


def resolve_rate(rate, default):
    """Trains/s as a float, or None for "as fast as possible".

    ``None`` means the source's own default (10 Hz for recorded and
    simulated data, unpaced for live streams); ``'max'``, 0 and infinity
    mean unpaced.
    """
    if rate is None:
        rate = default
    if rate is None:
        return None
    if isinstance(rate, str):
        if rate.strip().lower() in ("max", "inf", "none", ""):
            return None
        try:
            rate = float(rate)
        except ValueError:
            raise SourceError(f"rate must be a number of trains/s or 'max', "
                              f"not {rate!r}") from None
    rate = float(rate)
    if math.isnan(rate) or rate < 0:
        raise SourceError(f"rate must be positive, not {rate}")
    if rate == 0 or math.isinf(rate):
        return None
    if rate < MIN_RATE:  # (the pacing would overflow the clock's range)
        raise SourceError(f"rate must be at least {MIN_RATE:g} trains/s (one per "
                          f"{1 / MIN_RATE:g} s), not {rate:g}")
    return rate


#: The slowest rate a source paces to (trains/s).
MIN_RATE = 0.001


class Pacer:
    """Spaces events to `rate` per second on a fixed schedule.

    The schedule is absolute (start + n / rate) so that small delays in
    the consumer do not accumulate into a slower rate; if the consumer
    falls far behind, the schedule restarts instead of bursting to catch
    up, as a facility would not send the missed trains faster either.
    """

    def __init__(self, rate):
        self.interval = 1.0 / rate
        self._next = None

    def wait(self, stop: threading.Event):
        """Wait for the next slot; True if `stop` was set meanwhile."""
        now = time.monotonic()
        if self._next is None:
            self._next = now
        delay = self._next - now
        if delay > 0:
            if stop.wait(delay):
                return True
        elif delay < -max(1.0, 2 * self.interval):
            self._next = now
        self._next += self.interval
        return stop.is_set()


_END = object()


class Source:
    """An iterator of events that can be closed from any thread.

    Subclasses implement :meth:`events`, a generator of event dicts, and
    may override :meth:`release` for resources opened in ``__init__``
    (opening there lets :func:`~metropc.sources.open_source` report a bad
    spec at once rather than on the first event).  Long waits inside
    :meth:`events` should poll :attr:`stopping` so that :meth:`close` from
    another thread ends the iteration promptly.

    Like a file object, a source is its own iterator: iterating twice
    continues where the first loop stopped.  Iteration ends when the
    source is exhausted or closed; a failure is raised as
    :class:`~metropc.error.SourceError`.

    Parameters
    ----------
    paths : collection of str or Path, optional
        The paths the context uses (``ctx.get_paths()``); only those
        ``karabo#`` paths are put into events.  None means all.
    rate : float, 'max' or None
        Trains per second; None is :attr:`default_rate`.
    """

    #: Whether the data comes from a live system that does not wait for us.
    #: A live source's events are dropped (and counted) when the pipeline
    #: falls behind; a replay (files, a Python callable) is slowed down
    #: instead, so it loses nothing (the ``block`` drop policy).
    live = True

    #: Trains/s when the caller passes ``rate=None`` (None = unpaced).
    default_rate: float | None = None
    #: A short name for messages.
    kind = "source"

    def __init__(self, *, paths=None, rate=None):
        self.paths = normalize_paths(paths)
        #: Bumped by set_paths(), so that events() can redo its selection.
        self.paths_version = 0
        self.rate = resolve_rate(rate, self.default_rate)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._gen: Iterator | None = None
        self._busy = False
        self._released = False
        self._pacer = Pacer(self.rate) if self.rate else None

    # -- for subclasses ---------------------------------------------------

    def events(self) -> Iterator[dict]:
        """Generate the events; ends when the source is exhausted."""
        raise NotImplementedError

    def release(self):
        """Free resources held outside :meth:`events` (called once)."""

    @property
    def stopping(self):
        """The event :meth:`close` sets; poll it during long waits."""
        return self._stop

    def wants(self, key):
        """Whether the event key `key` should go into events."""
        return self.paths is None or key in self.paths

    # -- public interface ---------------------------------------------------

    def set_paths(self, paths):
        """Change which paths go into events, e.g. after a context reload.

        Safe from any thread; takes effect from the next event on, without
        reopening the source (a bridge stays connected, a replay goes on
        from the next train).
        """
        self.paths = normalize_paths(paths)
        self.paths_version += 1

    @property
    def closed(self):
        return self._stop.is_set()

    def __iter__(self):
        return self

    def __next__(self):
        with self._lock:
            if self._stop.is_set():
                raise StopIteration
            if self._gen is None:
                self._gen = iter(self.events())
            self._busy = True
        event = _END
        try:
            event = next(self._gen, _END)
            if event is not _END and self._pacer is not None:
                self._pacer.wait(self._stop)
        finally:
            with self._lock:
                self._busy = False
        if event is _END or self._stop.is_set():
            self.close()
            raise StopIteration
        return event

    def close(self):
        """Stop the source and free its resources; safe from any thread.

        If another thread is inside ``next()`` right now, that thread
        notices within its polling interval and cleans up itself, because
        sockets and files must not be closed under a running reader.
        """
        self._stop.set()
        with self._lock:
            if self._busy or self._released:
                return
            self._released = True
            gen, self._gen = self._gen, None
        try:
            if gen is not None and hasattr(gen, "close"):
                gen.close()
        finally:
            self.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        # Best effort only: sockets and files should not outlive a source
        # that was dropped without close().
        try:
            if not self._released and not self._busy:
                self.close()
        except Exception:
            pass

    def __repr__(self):
        return f"<{type(self).__name__} {self.kind}>"


"""The dashboard's one subscriber: latest value per view, bounded histories.

A :class:`Hub` owns one ZeroMQ SUB socket on a pipeline's output address and
one thread that reads it as fast as messages come.  For every view some
browser shows it keeps only the **latest** result (a sequence number tells
readers whether it changed); SCALAR and POINTS views additionally feed a
bounded :class:`~metropc.dashboard.display.History`, so a trace is there as
soon as a panel opens.  Nothing here waits for a browser: readers take what
is there when they are ready (see :mod:`metropc.dashboard.server`), so a slow
or frozen browser can never hold up this thread, let alone the pipeline.

Frames for the browser are made on demand by :meth:`Hub.frame`, at most once
per (result, options), whichever thread asks.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

import numpy as np

from ..client import Client
from ..enums import ViewOutput, ViewStage
from ..error import ProtocolError
from ..index import IndexViewEntry
from . import display

__all__ = ["Hub", "ViewState"]

log = logging.getLogger(__name__)

_VIEW = "view#"

#: Messages handled per loop turn before subscriptions are looked at again.
_DRAIN = 500


class ViewState:
    """What the hub knows of one view (guarded by the hub's lock)."""

    __slots__ = (
        "_rate_n",
        "_rate_t",
        "cache",
        "data",
        "event_id",
        "history",
        "name",
        "rate",
        "received",
        "seq",
        "time",
        "version",
    )

    def __init__(self, name):
        self.name = name
        self.seq = 0            # bumped by every result
        self.data = None
        self.event_id = None
        self.version = None
        self.time = None        # monotonic time of the latest result
        self.history = None     # display.History for SCALAR / POINTS views
        self.received = 0
        self.rate = 0.0         # results per second received here
        self._rate_t = time.monotonic()
        self._rate_n = 0
        self.cache = {}         # (seq, options) -> packed frame


class Hub:
    """Subscribes to a pipeline's output and keeps what the dashboard shows.

    Parameters
    ----------
    address : str
        The pipeline's output address.
    allow_pickle : bool
        Passed to the decoder (False refuses pickled results).
    history : int
        Length of the history of each SCALAR / POINTS view.
    max_side, max_points : int
        Display limits, see :func:`metropc.dashboard.display.prepare`.
    context : zmq.Context, optional
        Defaults to the process-wide instance.
    keys : str, optional
        Key directory of a pipeline secured with CURVE (``metropc-keys``).
    """

    def __init__(self, address, *, allow_pickle=True, history=10_000,
                 max_side=display.MAX_SIDE, max_points=display.MAX_POINTS, context=None,
                 keys=None):
        self.address = address
        if keys is not None:  # load now, so that a bad key directory fails in the caller
            from ..security import Keys
            keys = keys if isinstance(keys, Keys) else Keys.load(keys)
        self.keys = keys
        self.allow_pickle = allow_pickle
        # Refused here, in the caller: in the thread they fail every result
        # (a ring buffer of 0 rows, an image of no pixels) and nothing shows.
        for what, value in (("history", history), ("max_side", max_side),
                            ("max_points", max_points)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
                    or value < 1:
                raise ValueError(f"{what} must be an integer of 1 or more, got {value!r}")
        self.history_length = int(history)
        self.max_side = int(max_side)
        self.max_points = int(max_points)
        self._zctx = context
        self._lock = threading.Lock()
        self._views: dict[str, ViewState] = {}
        self._watch = collections.Counter()     # view name -> number of watchers
        self._auto: set[str] = set()            # views with history or rare results
        self._subs_dirty = threading.Event()
        self._stop = threading.Event()
        self._thread = None
        self._ready = threading.Event()
        self._connect_error = None
        #: Latest index ``{path: IndexEntry}`` and its bookkeeping.
        self.index = None
        self.index_seq = 0
        self.index_time = None
        #: Views whose results are histograms (drawn as bars); set by the server.
        self.histograms: frozenset[str] = frozenset()
        self.bad_messages = 0
        self.last_error = None
        self.received = 0

    # -- lifecycle --------------------------------------------------------------------
    def start(self):
        self._thread = threading.Thread(target=self._run, name="metropc-dashboard-sub",
                                        daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._connect_error is not None:  # e.g. not a ZeroMQ address
            self._thread.join(5)
            raise ValueError(f"cannot connect to {self.address!r}: "
                             f"{self._connect_error}")
        return self

    def stop(self, timeout=5.0):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- what the readers use -------------------------------------------------------
    def watch(self, name):
        """Keep receiving view `name` (reference counted)."""
        with self._lock:
            self._watch[name] += 1
            self._views.setdefault(name, ViewState(name))
        self._subs_dirty.set()

    def unwatch(self, name):
        with self._lock:
            if self._watch[name] > 0:
                self._watch[name] -= 1
            if self._watch[name] <= 0:
                del self._watch[name]
                # A name that is no view of the pipeline keeps nothing (a
                # page asking for a million made names grew by 300 MB).
                if name not in self._auto and self.entry(name) is None:
                    self._views.pop(name, None)
        self._subs_dirty.set()

    def seq(self, name):
        """The sequence number of view `name`'s latest result (0: none yet)."""
        state = self._views.get(name)
        return 0 if state is None else state.seq

    def entry(self, name):
        index = self.index
        return None if index is None else index.get(_VIEW + name)

    def output(self, name):
        entry = self.entry(name)
        return entry.output if isinstance(entry, IndexViewEntry) else None

    def frame(self, name, window=None):
        """``(seq, packed frame)`` of view `name` for the browser, or None.

        `window` is how many history points a trace or scatter shows.
        """
        output = self.output(name)
        with self._lock:
            state = self._views.get(name)
            if state is None or state.seq == 0:
                return None
            seq = state.seq
            key = (seq, window)
            cached = state.cache.get(key)
            if cached is not None:
                return seq, cached
            data, event_id, version = state.data, state.event_id, state.version
            history = None
            if state.history is not None and len(state.history):
                rows = state.history.last(window or self.history_length)
                history = (rows, state.history.total)
            age_ref = state.time
            rate = state.rate
        histogram = name in self.histograms
        try:
            header, arrays = self._prepare(data, output, history, histogram)
        except Exception as e:
            log.debug("cannot prepare %s", name, exc_info=True)
            header, arrays = {"kind": "text", "text": f"cannot display: "
                              f"{type(e).__name__}: {e}"}, {}
        header.update(op="data", view=name, seq=seq, event_id=event_id, version=version,
                      rate=round(rate, 2), **display.output_info(output))
        header["age"] = round(time.monotonic() - age_ref, 3) if age_ref else None
        try:
            packed = display.pack_frame(header, arrays)
        except (TypeError, ValueError) as e:  # e.g. a label that is not JSON
            log.debug("cannot pack %s", name, exc_info=True)
            packed = display.pack_frame(
                {"op": "data", "view": name, "seq": seq, "kind": "text",
                 "text": f"cannot display: {type(e).__name__}: {e}"}, {})
        with self._lock:
            if state.seq == seq:
                state.cache[key] = packed
        return seq, packed

    def _prepare(self, data, output, history, histogram):
        generic = output.generic if output is not None else None
        if history is not None and generic is ViewOutput.POINTS:
            return display.prepare_history(history[0], output, history[1], "points")
        if history is not None and display.scalar_value(data) is not None:
            header, arrays = display.prepare_history(history[0], output, history[1])
            return header, arrays
        return display.prepare(data, output, max_side=self.max_side,
                               max_points=self.max_points, histogram=histogram)

    def stats(self):
        with self._lock:
            return {"received": self.received, "bad_messages": self.bad_messages,
                    "subscribed": sorted(self._subscribed_names()),
                    "views": {n: {"seq": s.seq, "received": s.received,
                                  "rate": round(s.rate, 2)}
                              for n, s in self._views.items() if s.seq}}

    # -- the thread -----------------------------------------------------------------
    def _subscribed_names(self):
        return set(self._watch) | self._auto

    def _run(self):
        """Read the output with :class:`metropc.client.Client`, the same code
        as every other client (and ``metropc-run``'s status), keys included."""
        import zmq

        base = self._zctx if self._zctx is not None else zmq.Context.instance()
        # A small queue: if this thread ever falls behind, ZeroMQ drops old
        # results instead of piling up images in memory.  A shadow context
        # carries that default to the client's socket without touching
        # other sockets of the shared context.
        zctx = zmq.Context.shadow(base.underlying)
        zctx.setsockopt(zmq.RCVHWM, 50)
        client = None
        try:
            try:
                client = Client(self.address, keys=self.keys,
                                allow_pickle=self.allow_pickle, context=zctx)
            except Exception as e:  # noqa: BLE001 - start() raises it in the caller
                self._connect_error = e
                return
            self._ready.set()
            index = None
            while not self._stop.is_set():
                if self._subs_dirty.is_set():
                    self._subs_dirty.clear()
                    with self._lock:
                        wanted = self._subscribed_names()
                    subscribed = {path[len(_VIEW):] for path in client.views}
                    for name in wanted - subscribed:
                        client.subscribe(name)
                    for name in subscribed - wanted:
                        client.unsubscribe(name)
                for _ in range(_DRAIN):
                    try:
                        path, payload = client.recv(timeout=0.1)
                    except TimeoutError:
                        break
                    except ProtocolError as e:
                        self.bad_messages += 1
                        self.last_error = f"malformed message: {e}"
                        continue
                    finally:
                        if client.index is not index:
                            index = client.index
                            self._on_index(index)
                    self.received += 1
                    self._on_result(path[len(_VIEW):], payload)
                    if self._subs_dirty.is_set() or self._stop.is_set():
                        break
        except Exception:
            log.exception("dashboard subscriber failed")
            self.last_error = "subscriber failed (see log)"
        finally:
            self._ready.set()
            if client is not None:
                client.close()

    def _on_index(self, index):
        auto = set()
        for path, entry in index.items():
            if not (isinstance(entry, IndexViewEntry) and path.startswith(_VIEW)):
                continue
            name = path[len(_VIEW):]
            if entry.output.generic in (ViewOutput.SCALAR, ViewOutput.POINTS) or (
                    entry.stage in (ViewStage.ACTION, ViewStage.STEP)
                    and entry.output is not ViewOutput.COMPUTE):
                auto.add(name)
        with self._lock:
            self.index = index
            self.index_time = time.monotonic()
            self.index_seq += 1
            if auto != self._auto:
                self._auto = auto
                self._subs_dirty.set()

    def _on_result(self, name, payload):
        data = payload.get("data") if isinstance(payload, dict) else None
        event_id = payload.get("event_id") if isinstance(payload, dict) else None
        if not isinstance(event_id, (int, np.integer)) or isinstance(event_id, bool):
            event_id = None
        output = self.output(name)
        generic = output.generic if output is not None else None
        now = time.monotonic()
        with self._lock:
            state = self._views.get(name)
            if state is None:
                state = self._views[name] = ViewState(name)
            if generic is ViewOutput.POINTS:
                pts = display.points_of(data)
                if pts is not None:
                    if state.history is None:
                        state.history = display.History(self.history_length)
                    state.history.extend(pts[0], pts[1], event_id)
            elif generic is ViewOutput.SCALAR or generic is None:
                value = display.scalar_value(data)
                if value is not None:
                    if state.history is None:
                        state.history = display.History(self.history_length)
                    x = float(event_id) if event_id is not None else float(
                        state.history.total)
                    state.history.append(x, value, event_id)
            state.data = data
            state.event_id = None if event_id is None else int(event_id)
            version = payload.get("version") if isinstance(payload, dict) else None
            state.version = version if isinstance(version, int) else None
            state.time = now
            state.seq += 1
            state.received += 1
            state.cache.clear()
            state._rate_n += 1
            dt = now - state._rate_t
            if dt >= 1.0:
                state.rate = state._rate_n / dt
                state._rate_t, state._rate_n = now, 0

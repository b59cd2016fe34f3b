"""Publishing a recording again, with the protocol of a live pipeline.

:func:`replay` sends every recorded message on an XPUB socket as REDUCE
would: ``view#<name>`` with ``{"data", "event_id", "version", "seq"}``
(and ``run`` when it was recorded), the ``context``, ``params`` and
``mark`` topics, and an ``index`` every second with counts, rates and each
view's output type, stage, hidden flag and label.  So ``metropc-client``,
the dashboard and frontends work on a replay unchanged.  It uses REDUCE's
own :class:`~metropc.stage.output.Output` (publish only what is subscribed,
pace slow clients, number each topic's messages).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

import h5py
import zmq

from ..index import IndexEntry, IndexViewEntry, encode_index
from ..enums import ViewOutput, ViewStage
from ..protocol import encode_protocol
from ..stage.output import Output
from .layout import FORMAT, META, VIEWS
from .reader import iter_messages, open_file, recording_files, view_info

__all__ = ["replay", "recorded_views", "INDEX_INTERVAL", "RecordingError"]

log = logging.getLogger(__name__)

INDEX_INTERVAL = 1.0


class _Counts:
    """Counts and rates per path, for the index."""

    def __init__(self):
        self.counts: dict[str, int] = {}
        self.rates: dict[str, float] = {}
        self._mark = (time.monotonic(), {})

    def add(self, path: str) -> None:
        self.counts[path] = self.counts.get(path, 0) + 1

    def update_rates(self) -> None:
        now = time.monotonic()
        t0, before = self._mark
        if now - t0 >= 0.5:
            self.rates = {p: (n - before.get(p, 0)) / (now - t0)
                          for p, n in self.counts.items()}
            self._mark = (now, dict(self.counts))


def _index(counts: _Counts, info: dict[str, tuple], output: Output) -> dict:
    counts.update_rates()
    entries = {}
    for name, (kind, stage, hidden, label) in info.items():
        path = f"view#{name}"
        entries[path] = IndexViewEntry(counts.counts.get(path, 0),
                                       counts.rates.get(path, 0.0), ViewOutput(kind),
                                       ViewStage(stage), hidden=hidden, label=label)
    entries["internal#event"] = IndexEntry(counts.counts.get("#events", 0),
                                           counts.rates.get("#events", 0.0))
    for path in ("internal#lost_events", "internal#stale_events"):
        entries[path] = IndexEntry(0, 0.0)
    entries["internal#output_dropped"] = IndexEntry(*output.drop_stats())
    return encode_index(entries)


class RecordingError(ValueError):
    """A path that is no metropc recording, or views it does not have."""


def recorded_views(path, timeout: float = 5.0) -> list[str]:
    """Names of the views recorded at `path` (a file, or a directory of them).

    RecordingError (one line naming the file) when a file cannot be opened,
    is no HDF5 file, or is HDF5 but no metropc recording.  `timeout`: how long
    to retry opening a file that is being written (see ``open_file``).
    """
    files = recording_files(path)
    if not files:
        raise RecordingError(f"no recording (*.h5) in {os.fspath(path)}")
    names: set[str] = set()
    for file_path in files:
        if not os.path.isfile(file_path):
            raise RecordingError(f"no recording at {file_path}")
        try:
            if not h5py.is_hdf5(file_path):
                raise RecordingError(f"{file_path} is not a recording (not an HDF5 "
                                     "file)")
            f = open_file(file_path, timeout)
        except OSError as e:
            raise RecordingError(f"{file_path}: cannot read it: "
                                 f"{e.strerror or str(e).splitlines()[0]}") from None
        with f:
            if f.attrs.get("format") != FORMAT or META not in f:
                raise RecordingError(f"{file_path} is an HDF5 file but no metropc "
                                     "recording")
            try:
                names.update(view_info(f))
                names.update(f.get(VIEWS, {}))
            except (KeyError, ValueError, OSError) as e:
                raise RecordingError(f"{file_path}: its table of views cannot be "
                                     f"read ({type(e).__name__}: {e})") from None
    return sorted(names)


def check_views(views, known) -> None:
    """RecordingError naming the `views` that are not among `known`."""
    unknown = sorted(set(views) - set(known))
    if unknown:
        raise RecordingError(
            f"no view {', '.join(map(repr, unknown))} in the recording; it has: "
            + (", ".join(known) if known else "no views"))


def _guess_info(view: str, payload: dict) -> tuple:
    """(output, stage, hidden, label) of a view the recording has no index for."""
    ndim = getattr(payload.get("data"), "ndim", 0)
    output = {0: ViewOutput.SCALAR, 1: ViewOutput.VECTOR}.get(ndim, ViewOutput.MATRIX)
    return (int(output.value), int(ViewStage.REDUCE.value), False, "")


def replay(path: str, socket: zmq.Socket, *, rate: float | str | None = None,
           views=None, wait: bool = True, stop: threading.Event | None = None,
           on_start: Callable[[], None] | None = None) -> int:
    """Publish the recording at `path` on the bound XPUB `socket`; messages sent.

    `rate`: events (distinct train ids) per second, ``"max"`` for as fast
    as clients take them, or None for the pace at which they were
    recorded.  With `wait`, results start once a client subscribed to a
    view (the index is published meanwhile), so that nothing is sent to
    nobody.  `stop` ends it early.  `views` (names) not in the recording
    raise RecordingError, which lists those it has.
    """
    stop = stop or threading.Event()
    output = Output(socket)
    counts = _Counts()
    info: dict[str, tuple] = {}
    files = recording_files(path)
    recorded: set[str] = set()
    for file_path in files:
        with open_file(file_path) as f:
            info.update(view_info(f))
            recorded.update(f.get(VIEWS, {}))
    if views is not None:
        views = list(views)
        check_views(views, sorted(recorded | set(info)))
    next_index = 0.0

    def tick():
        nonlocal next_index
        subscribed = output.read_subscriptions()
        if time.monotonic() >= next_index:
            if output.wants(b"index"):
                output.send(encode_protocol(b"index", _index(counts, info, output)))
            next_index = time.monotonic() + INDEX_INTERVAL
            subscribed = True
        if subscribed and output.wants(b"status"):
            output.send(encode_protocol(b"status", REPLAY_STATUS))

    while wait and not stop.is_set():
        tick()
        # A prefix some view topic (or its batches) starts with: "", "v",
        # "view#", "view#roi", "batch#view#roi".
        if any(p.startswith(t) or t.startswith(p) for p in output.prefixes
               for t in (b"view#", b"batch#view#")):
            break
        socket.poll(50)
    if on_start is not None:
        on_start()
    sent = 0
    last_event = object()
    t_start = None      # (monotonic, recorded time) of the first message
    events = 0
    for file_path in files:
        with open_file(file_path) as f:
            for when, topic, payload in iter_messages(f, views):
                if stop.is_set():
                    output.flush()
                    return sent
                if topic.startswith("view#"):
                    event = payload.get("event_id")
                    if event is not None and event != last_event:
                        last_event = event
                        output.flush()  # the previous event's batched results
                        events += 1
                        counts.add("#events")
                        _pace(rate, events, when, t_start, stop, tick)
                    if t_start is None:
                        t_start = (time.monotonic(), when)
                    name = topic[5:]
                    if name not in info:
                        info[name] = _guess_info(name, payload)
                    counts.add(topic)
                tick()
                btopic = topic.encode()
                if not output.wants(btopic):
                    output.skip(btopic)
                    continue
                if topic.startswith("view#"):
                    data = {"data": payload["data"], "event_id": payload["event_id"]}
                    if "version" in payload:
                        data["version"] = payload["version"]
                    data["seq"] = output.seq(btopic)
                    if "run" in payload:
                        data["run"] = payload["run"]
                    output.send(encode_protocol(btopic, data), btopic)
                else:
                    output.send(encode_protocol(btopic, payload))
                sent += 1
    output.flush()
    next_index = 0.0
    tick()  # a last index with the final counts
    return sent


#: The status a replay publishes (docs/protocol.md §7): it runs, it has no
#: context or control endpoint, and it sends batches to who asks (§7a).
REPLAY_STATUS = {"state": "RUN", "run": None, "version": None, "path": None,
                 "control": None, "batch": True}


def _pace(rate, events, when, t_start, stop, tick):
    """Wait until event number `events` (recorded at `when`) is due."""
    if rate == "max" or t_start is None:
        return
    if rate is None:
        due = t_start[0] + (when - t_start[1])
    else:
        due = t_start[0] + (events - 1) / float(rate)
    while not stop.is_set():
        left = due - time.monotonic()
        if left <= 0:
            return
        tick()
        stop.wait(min(left, 0.05))

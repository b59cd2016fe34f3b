"""What a Dask worker runs: the POOL views over one chunk of trains.

The task gets the context (as :meth:`Context.to_dict`, a few kilobytes),
the run's path and the chunk's train ids, never the data: the worker opens
the run itself with EXtra-data and reads only its trains, so detector data
goes from the file system to the worker that needs it and nowhere else.
It returns, per train, only what the driver needs: the POOL results that
are recorded or feed REDUCE views, and the event paths REDUCE views read
(the same selection a live POOL worker forwards to REDUCE).

Contexts and open runs are kept per worker thread between tasks (compiling
a context and opening a run's files take longer than a small chunk), at
most :data:`KEEP_OPEN` of each.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import socket
import threading
import time
from dataclasses import dataclass, field

from ..core import Context
from ..engine import Engine, ErrorReporter
from ..enums import ContextStage
from ..sources.files import FileSource
from .plan import Chunk

__all__ = ["process_chunk", "ChunkResult", "KEEP_OPEN"]

log = logging.getLogger(__name__)

#: Contexts and runs kept open per worker thread.
KEEP_OPEN = 2


@dataclass
class ChunkResult:
    """The outcome of one chunk, returned to the driver.

    ``trains`` holds ``(train id, data)`` in train order, ``data`` mapping
    ``view#<name>`` to forwarded POOL results and event paths to values
    (as a live POOL worker's message to REDUCE); ``errors`` counts failures
    per view and ``messages`` has the first failure of each view in this
    chunk as ``(report with file:line, context traceback)``.
    """

    index: int
    trains: list[tuple[int, dict]]
    errors: dict[str, int] = field(default_factory=dict)
    messages: dict[str, tuple[str, str]] = field(default_factory=dict)
    seconds: float = 0.0
    worker: str = ""


class _ChunkFiles(FileSource):
    """A run's files, read one chunk of trains at a time.

    The run is opened once (file metadata, the selection of the context's
    paths); :meth:`read` then reads only the given trains, with the same
    conversion to events as a live replay.
    """

    def read(self, train_ids):
        self._chunk = list(train_ids)
        return self.events()

    def _trains(self, data, after):
        chunk = self._chunk
        if data is None:  # nothing the context wants is in the run
            return ((t, {}) for t in chunk)
        return data.select_trains(self._by_id[chunk]).trains(require_all=False)


class _Cache(threading.local):
    """Per worker thread: contexts by key, open runs by path."""

    def __init__(self):
        self.contexts: collections.OrderedDict = collections.OrderedDict()
        self.runs: collections.OrderedDict = collections.OrderedDict()


_cache = _Cache()


def _keep(table: collections.OrderedDict, key, make, close=None):
    value = table.get(key)
    if value is None:
        value = table[key] = make()
        while len(table) > KEEP_OPEN:
            _, old = table.popitem(last=False)
            if close is not None:
                close(old)
    else:
        table.move_to_end(key)
    return value


def _engine(ctx_key: str, ctx_dict: dict) -> Engine:
    def make():
        return Engine(Context.from_dict(ctx_dict, stage=ContextStage.POOL))
    return _keep(_cache.contexts, ctx_key, make)


def _run(path: str, paths: tuple[str, ...]) -> _ChunkFiles:
    # parallelize=False: Dask workers are daemon processes, which may not
    # start the processes EXtra-data would open files in.
    return _keep(_cache.runs, (path, paths),
                 lambda: _ChunkFiles(path, paths=list(paths), rate="max", parallelize=False),
                 lambda old: old.release())


def process_chunk(ctx_key: str, ctx_dict: dict, chunk: Chunk, paths: tuple[str, ...],
                  forward_views: frozenset[str], forward_paths: frozenset[str]
                  ) -> ChunkResult:
    """Run the POOL views over the trains of `chunk`; see the module doc.

    `ctx_key` identifies `ctx_dict` (the driver hashes it) so that a worker
    compiles each context once; `paths` are the context's paths, the
    selection read from the files.  A failing view is counted and its first
    failure kept; a run that cannot be read raises SourceError, which Dask
    retries and the driver reports.
    """
    t0 = time.perf_counter()
    engine = _engine(ctx_key, ctx_dict)
    failures = []
    engine.reporter = ErrorReporter(window=math.inf, sink=failures.append)
    errors_before = dict(engine.errors)
    counter = engine.ctx.event_counter_alias
    counter_key = f"internal#{counter}" if counter else None
    trains = []
    for n, event in enumerate(_run(chunk.path, paths).read(chunk.train_ids)):
        if counter_key is not None:  # the running count over all runs, as metropc.run
            event.setdefault(counter_key, chunk.first + n + 1)
        event_id = engine.prepare(event)
        results = engine.pool(event)
        data = {f"view#{name}": results[name] for name in forward_views.intersection(results)}
        for key in forward_paths.intersection(event):
            data[key] = event[key]
        data["internal#event_id"] = event_id
        trains.append((int(event["internal#train_id"]), data))
    engine.take_timings()  # not reported here; keeps them from piling up
    if len(trains) != len(chunk):
        log.warning("%s: read %d of the %d trains of chunk %d", chunk.path, len(trains),
                    len(chunk), chunk.index)
    errors = {name: count - errors_before.get(name, 0) for name, count in engine.errors.items()
              if count != errors_before.get(name, 0)}
    messages = {}
    for error in failures:
        messages.setdefault(error.view, (str(error), error.traceback_text))
    return ChunkResult(chunk.index, trains, errors, messages, time.perf_counter() - t0,
                       f"{socket.gethostname()}:{os.getpid()}")

"""The driver of a reprocessing: chunks out to Dask, REDUCE in train order.

:func:`reprocess` plans chunks of trains (:mod:`.plan`), submits one Dask
task per chunk (:func:`.worker.process_chunk`: the worker reads its trains
and runs the POOL views), and feeds the chunks' results through the REDUCE
views on the driver in train order (:class:`OrderedReduce`), writing every
result with the recording writer (:class:`metropc.recording.Recording`).

Why the driver runs REDUCE: accumulating views (histograms, averages) see
every train in order, exactly once, so their results equal the live
pipeline's and ``metropc.run``'s only if one engine runs them in order.
Chunks finish in any order; a chunk's results wait in a reorder buffer
until every earlier chunk has gone through REDUCE.  The buffer is bounded:
at most ``max_ahead`` chunks are submitted beyond the first unreduced one,
so the driver holds at most that many chunks of results however far a
slow chunk lags behind.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import math
import os
import pickle
import shutil
import tempfile
import time
import uuid
from collections.abc import Collection, Iterable, Mapping
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from ..core import Context
from ..engine import Engine, ErrorReporter
from ..enums import ContextStage, ViewOutput
from ..error import MetropcError
from .plan import Chunk, default_chunk_trains, plan_runs, run_trains

if TYPE_CHECKING:
    import xarray

__all__ = ["reprocess", "ReprocessError", "OrderedReduce", "Summary"]

log = logging.getLogger(__name__)

#: How often the recording is flushed while results come in (seconds).
FLUSH_INTERVAL = 1.0
#: Times Dask runs a chunk again after it raised (a transient read error).
#: A chunk whose worker died is rescheduled by the scheduler on its own
#: (up to ``distributed.scheduler.allowed-failures`` times).
RETRIES = 2


class ReprocessError(MetropcError):
    """Something that stops a reprocessing before it starts (one line)."""


def import_distributed():
    """``distributed``, or a one-line ReprocessError saying how to get it."""
    try:
        import dask  # noqa: F401
        import distributed
    except ImportError:
        raise ReprocessError("reprocessing needs dask and distributed: "
                             "pip install 'metropc[cluster]'") from None
    return distributed


class Summary:
    """Counts of a reprocessing: trains, lost trains, view errors by view.

    ``messages`` has the first failure of each view (its report with the
    context file and line).  :meth:`attrs` is what the result Dataset's
    attrs say.
    """

    def __init__(self):
        self.trains = 0
        self.lost_chunks: list[dict] = []  # path, run, trains, first/last train, why
        self.errors: collections.Counter = collections.Counter()
        self.messages: dict[str, str] = {}
        self.runs: list[int | None] = []

    @property
    def trains_lost(self) -> int:
        return sum(c["trains"] for c in self.lost_chunks)

    def add_errors(self, counts: Mapping[str, int], messages: Mapping[str, tuple[str, str]]):
        self.errors.update(counts)
        for view, (text, tb) in messages.items():
            if view not in self.messages:
                self.messages[view] = text
                log.error("%s\n%s", text, tb.rstrip())

    def attrs(self) -> dict[str, Any]:
        return {"trains": self.trains, "trains_lost": self.trains_lost,
                "chunks_lost": json.dumps(self.lost_chunks),
                "runs": json.dumps(self.runs),
                "view_errors": sum(self.errors.values()),
                "view_errors_by_view": json.dumps(dict(sorted(self.errors.items()))),
                "view_error_messages": json.dumps(dict(sorted(self.messages.items())))}


class OrderedReduce:
    """Feeds chunk results through REDUCE in train order and records them.

    :meth:`add` takes chunks in any order; a chunk goes through the REDUCE
    engine once every earlier chunk has (a lost chunk, :meth:`lose`, is
    skipped in its turn).  Run boundaries are handled as the live pipeline
    does: where the run number changes, the old run ends and the new one
    starts, resetting views with ``reset_on='run'`` (the builtins).
    """

    def __init__(self, ctx, recording, record_views: Collection[str], summary: Summary):
        self.ctx = ctx
        self.engine = Engine(ctx)
        self.engine.reporter = ErrorReporter(window=math.inf, sink=self._failed)
        self.recording = recording
        self.record_views = frozenset(record_views)
        self.summary = summary
        self.next_index = 0
        self.run: int | None = None
        self._buffer: dict[int, tuple[Chunk, Any]] = {}
        self._seq: collections.Counter = collections.Counter()
        self._lost = object()

    def __len__(self) -> int:
        """Chunks waiting for an earlier one."""
        return len(self._buffer)

    def add(self, chunk: Chunk, result) -> int:
        """A chunk's :class:`~.worker.ChunkResult`; returns the number of
        trains that went through REDUCE now (this chunk's and later ones')."""
        self._buffer[chunk.index] = (chunk, result)
        return self._drain()

    def lose(self, chunk: Chunk, why: str) -> int:
        """A chunk that could not be processed: skipped in its turn."""
        self.summary.lost_chunks.append({
            "path": chunk.path, "run": chunk.run, "trains": len(chunk),
            "first_train": chunk.train_ids[0] if chunk.train_ids else None,
            "last_train": chunk.train_ids[-1] if chunk.train_ids else None, "why": why})
        return self.add(chunk, self._lost)

    def _drain(self) -> int:
        done = 0
        while self.next_index in self._buffer:
            chunk, result = self._buffer.pop(self.next_index)
            self.next_index += 1
            self._enter_run(chunk.run)
            if result is self._lost:
                continue
            self.summary.add_errors(result.errors, result.messages)
            for train_id, data in result.trains:
                self._train(train_id, data)
            done += len(result.trains)
        return done

    def _enter_run(self, run: int | None) -> None:
        if run == self.run and self.summary.runs:
            return
        if self.run is not None:
            self._mark("run_end")
        self.run = run
        self.summary.runs.append(run)
        if run is not None:
            self.engine.reset_on("run")
            self._mark("run_start")

    def _mark(self, kind: str) -> None:
        self.recording.add_meta("mark", {"kind": kind, "run": self.run}, time.time())

    def _train(self, train_id: int, data: dict) -> None:
        event, pool_results = {}, {}
        for key, value in data.items():
            if key.startswith("view#"):
                pool_results[key[5:]] = value
            else:
                event[key] = value
        event_id = event.get("internal#event_id", train_id)
        results = self.engine.reduce(event, pool_results)
        self.summary.trains += 1
        now = time.time()
        version = self.ctx.version
        for found in (pool_results, results):
            for name, value in found.items():
                if name in self.record_views:
                    n = self._seq[name]
                    self._seq[name] = n + 1
                    self.recording.add_result(name, {
                        "data": value, "event_id": event_id, "version": version,
                        "seq": (0, n), "run": self.run}, now)

    def finish(self) -> None:
        """End the last run (after the last chunk); count REDUCE's failures."""
        self.summary.errors.update(self.engine.errors)
        if self.run is not None:
            self._mark("run_end")
            self.run = None

    def _failed(self, error) -> None:
        """A REDUCE view failed: its first report is kept (counts: :meth:`finish`)."""
        self.summary.add_errors({}, {error.view: (str(error), error.traceback_text)})


def _select_views(ctx, views: Iterable[str] | None) -> frozenset[str]:
    """The views to record: `views`, or every view that the live pipeline
    publishes (all but COMPUTE)."""
    if views is None:
        return frozenset(n for n, v in ctx.views.items() if v.output != ViewOutput.COMPUTE)
    names = [v for v in views if v]
    unknown = [n for n in names if n not in ctx.views]
    if unknown:
        raise ReprocessError(f"{ctx.path}: no view named {', '.join(map(repr, unknown))} "
                             f"(views: {', '.join(sorted(ctx.views))})")
    return frozenset(names)


def _forward(ctx, record: frozenset[str]) -> tuple[frozenset[str], frozenset[str]]:
    """POOL results and event paths a worker sends back.

    What REDUCE-stage views read (POOL results and event paths, the same
    rule as a live POOL worker's ``reduce_inputs``), plus the POOL views
    that are recorded; nothing else leaves the worker.
    """
    from ..enums import ViewStage

    pool = {n for n, v in ctx.views.items() if v.stage is ViewStage.POOL}
    names, paths = set(record & pool), set()
    for view in ctx.views.values():
        if view.stage is ViewStage.POOL:
            continue
        for arg in view.args:
            key = str(arg.path)
            if not key.startswith("view#"):
                paths.add(key)
            elif key[5:] in pool:
                names.add(key[5:])
    return frozenset(names), frozenset(paths)


def _check_output(output: str, runs) -> None:
    """Refuse an output that would mix with earlier results (one line)."""
    from ..recording.writer import RecordPathError, check_record_path

    try:
        check_record_path(output)
    except RecordPathError as e:
        raise ReprocessError(str(e)) from None
    if os.path.isdir(output):
        names = {"recording.h5" if run is None else f"run_{run:04d}.h5" for _, run, _ in runs}
        there = sorted(n for n in names if os.path.exists(os.path.join(output, n)))
        if there:
            raise ReprocessError(f"{output} has {', '.join(there)} already; reprocess into "
                                 "another directory, or remove them first")
    elif os.path.exists(output):
        raise ReprocessError(f"{output} exists already; give a new file (it is never "
                             "appended to or overwritten)")


def _context_hash(ctx_dict: dict) -> str:
    try:
        blob = pickle.dumps(ctx_dict)
    except Exception:  # noqa: BLE001 - a parameter pickle refuses; identity then
        blob = repr(sorted(ctx_dict.items())).encode()
    return hashlib.sha1(blob).hexdigest()


def reprocess(context, run, *, client=None, parameters: Mapping[str, Any] | None = None,
              views: Iterable[str] | None = None, output: str | os.PathLike | None = None,
              chunk_trains: int | None = None, n_workers: int | None = None,
              progress=None, retries: int = RETRIES, max_ahead: int | None = None
              ) -> "xarray.Dataset":
    """Run `context` over whole runs on a Dask cluster; the results as a Dataset.

    Parameters
    ----------
    context : Context, path or str
        As for :func:`metropc.run`.
    run : path or list of paths
        Run directories (or HDF5 files), processed in this order; each is a
        run, so builtins start empty at each boundary as in the live pipeline.
    client : distributed.Client, optional
        The cluster to use; without one a ``LocalCluster`` of `n_workers`
        processes (default: the CPU count) with one thread each is started
        here and closed at the end.
    parameters : dict, optional
        Parameter values overriding the context's.
    views : names, optional
        Record only these views (default: every non-COMPUTE view).
    output : path, optional
        A new recording file, or a directory (one ``run_NNNN.h5`` per run),
        kept after the call; default a temporary file, removed after reading.
    chunk_trains : int, optional
        Trains per task (default: a few chunks per worker thread, at most 64).
    progress : optional
        An object with ``start(total)``, ``advance(n)`` and ``close()``
        (:mod:`metropc.reprocess.progress`), or None.
    retries, max_ahead : int, optional
        Dask retries of a chunk that raised; chunks submitted beyond the first
        one not yet through REDUCE (default: 4 per worker thread, at least 4).

    Returns what ``metropc.open_recording(output)`` gives, with the counts in
    its attrs (``trains``, ``trains_lost``, ``chunks_lost``, ``view_errors``,
    ``view_errors_by_view``, ``view_error_messages``, ``runs``).  A failing
    view is counted and reported with file:line, never fatal; a chunk that
    failed on every retry is counted in ``trains_lost`` (and logged).
    """
    from ..inprocess import load_context

    distributed = import_distributed()
    paths = [os.fspath(run)] if isinstance(run, (str, os.PathLike)) else [
        os.fspath(r) for r in run]
    if not paths:
        raise ReprocessError("no run to reprocess")
    ctx = load_context(context, parameters)
    record = _select_views(ctx, views)
    ctx_paths = tuple(str(p) for p in ctx.get_paths())
    runs = run_trains(paths, ctx_paths)
    temporary = output is None
    out_dir = tempfile.mkdtemp(prefix="metropc-reprocess-") if temporary else None
    output = os.path.join(out_dir, "reprocess.h5") if temporary else os.fspath(output)
    own_cluster = None
    try:
        if not temporary:
            _check_output(output, runs)
        if client is None:
            n_workers = n_workers or os.cpu_count() or 1
            own_cluster = distributed.LocalCluster(
                n_workers=n_workers, threads_per_worker=1, processes=True,
                dashboard_address=":0")  # a free port: never "8787 is in use"
            client = distributed.Client(own_cluster, direct_to_workers=True)
        n_threads = sum(client.nthreads().values()) or (n_workers or 1)
        total = sum(len(tids) for _, _, tids in runs)
        chunks = plan_runs(runs, chunk_trains or default_chunk_trains(total, n_threads))
        summary = _run_chunks(distributed, client, ctx, chunks, ctx_paths, record, output,
                              progress, retries, max_ahead or max(4, 4 * n_threads))
        from ..recording.reader import open_recording
        ds = open_recording(output).load()
        ds.attrs.update(summary.attrs())
        return ds
    finally:
        if own_cluster is not None:
            client.close()
            own_cluster.close()
        if temporary:
            shutil.rmtree(out_dir, ignore_errors=True)


def _run_chunks(distributed, client, ctx, chunks, ctx_paths, record, output, progress,
                retries, max_ahead) -> Summary:
    """Submit the chunks (at most `max_ahead` beyond REDUCE), reduce them in order."""
    from ..recording.space import DiskNearlyFull
    from ..recording.writer import Recording
    from .worker import process_chunk

    summary = Summary()
    recording = Recording(output, views=record)
    try:
        now = time.time()
        recording.note_index({f"view#{n}": SimpleNamespace(
            output=v.output, stage=v.stage, hidden=v.hidden, label=v.label or "")
            for n, v in ctx.views.items()}, now)
        recording.add_meta("context", {"version": ctx.version, "path": ctx.path,
                                       "source": ctx.source,
                                       "parameters": dict(ctx.parameters)}, now)
        ctx_dict = ctx.to_dict()
        # REDUCE gets a context of its own, as the live REDUCE stage does: a
        # Context object the caller passes (or used before) keeps builtin
        # state and module globals, which must not leak into the results.
        reduce_ctx = Context.from_dict(ctx_dict, stage=ContextStage.REDUCE)
        reducer = OrderedReduce(reduce_ctx, recording, record, summary)
        ctx_key = _context_hash(ctx_dict)
        forward_views, forward_paths = _forward(ctx, record)
        token = uuid.uuid4().hex[:12]
        todo = iter(chunks)
        futures = {}
        done = distributed.as_completed()
        submitted = 0

        def submit_more():
            nonlocal submitted
            while submitted - reducer.next_index < max_ahead:
                chunk = next(todo, None)
                if chunk is None:
                    return
                future = client.submit(
                    process_chunk, ctx_key, ctx_dict, chunk, ctx_paths, forward_views,
                    forward_paths, key=f"metropc-chunk-{token}-{chunk.index}",
                    retries=retries, pure=False)
                futures[future] = chunk
                done.add(future)
                submitted += 1

        if progress is not None:
            progress.start(sum(len(c) for c in chunks))
        next_flush = time.monotonic() + FLUSH_INTERVAL
        try:
            submit_more()
            for future in done:
                chunk = futures.pop(future)
                try:
                    result = client.gather(future, direct=True)
                except Exception as e:  # noqa: BLE001 - counted and reported, never fatal
                    why = f"{type(e).__name__}: {e}"
                    log.error("chunk %d (%d trains of %s from train %s) lost: %s",
                              chunk.index, len(chunk), chunk.path,
                              chunk.train_ids[0] if chunk.train_ids else "-", why)
                    reducer.lose(chunk, why)
                else:
                    reducer.add(chunk, result)
                future.release()
                if progress is not None:
                    progress.advance(len(chunk))
                if time.monotonic() >= next_flush:
                    recording.flush()
                    next_flush = time.monotonic() + FLUSH_INTERVAL
                submit_more()
        finally:
            for future in futures:
                future.cancel()
            if progress is not None:
                progress.close()
        reducer.finish()
        recording.flush()  # (before close: a disk all but full leaves the files whole)
    except DiskNearlyFull as e:
        left_out = recording.abandon()
        raise ReprocessError(
            f"stopped: the disk of {output} is nearly full ({e}); the files are closed "
            f"and keep every result up to the last flush" + (
                f" ({left_out} after it are not written)" if left_out else "")) from None
    finally:
        recording.close()
    return summary

"""The REDUCE stage: event order, accumulating views, output, index.

One process receives every pool result, puts them back into dispatch order
(:class:`~metropc.stage.ordering.ReorderBuffer`), runs the REDUCE, STEP and
ACTION views, and publishes every non-COMPUTE result that some client
subscribed to (:mod:`metropc.stage.output`) as topic ``view#<name>`` with
payload ``{"data": result, "event_id": id, "version": ctx_version}``.  The
output drops messages for clients that do not keep up (its high-water
mark), so a slow client never slows this loop.

Large results of local workers arrive in shared-memory slots
(:mod:`metropc.stage.shm`): REDUCE maps them read-only and frees each slot
once nothing refers to its arrays any more (published zero-copy messages
included).

:class:`ReduceStage` decides and sends; it polls nothing.  The process's
sockets and poll loop are :mod:`metropc.stage.reduce_loop`'s, and parts with
a job of their own are small classes the stage owns, each in its module:
the counts and payloads of the index (:mod:`metropc.stage.reduce_index`),
the restart point and taking over from a REDUCE that died
(:mod:`metropc.stage.reduce_restart`), and the ASYNC stage's inputs
(:mod:`metropc.stage.reduce_async`).
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import time

from ..engine import Engine, ErrorReporter
from ..enums import ContextStage, ViewOutput, ViewStage
from ..error import ParameterError, ProtocolError
from ..protocol import encode_protocol
from ..protocol_layouts import result_record
from . import shm as shmem
from .common import (KEY_EVENT_ID, KEY_META, KEY_SHM, META_EVENT, META_SKIP, META_STEP,
                     OP_CTX_FAILED, OP_ERROR, OP_INDEX, OP_RESULT, RejectLog, send)
from ..messages import KEY_MARK, KEY_TIME, META_MARK, OP_ARESULT, OP_WANT
from ..timing import ReduceObserver, add_time
from .ordering import ReorderBuffer
from .reduce_async import AsyncFeed
from .reduce_index import EVENTS, STATE_CODES, ReduceIndex, status_payload
from .reduce_restart import RestartPoint, Takeover
from .reload import StagedContext
from .output import Output

log = logging.getLogger(__name__)

__all__ = ["ReduceStage"]

#: Topics besides ``view#<name>`` and ``index`` (docs/protocol.md §8).
TOPIC_CONTEXT = b"context"
TOPIC_PARAMS = b"params"
TOPIC_MARK = b"mark"
TOPIC_STATUS = b"status"
#: Results of a worker message (or released at once) counted and published
#: as a whole if usual (ReduceStage.on_results): from 4 on, that is cheaper
#: than one by one (a single result: 4 us one by one, 10 us as a whole).
RUN_MIN = 4


class ReduceStage:
    """State of the reduce process; :func:`metropc.stage.reduce_loop.run_reduce`
    drives it."""

    def __init__(self, control, output, reorder_window=4096, reorder_timeout=10.0):
        self.control = control
        self.output = Output(output)
        self.ctx = None
        self.topics = {}           # view name -> output topic, published views only
        self.engine = None
        self.pending = {}          # version -> (Context, from_seq)
        self.buffer = ReorderBuffer(reorder_window, reorder_timeout)
        # The counts of the index (metropc.stage.reduce_index); `meter` is
        # its RateMeter, one object for good (reset on a new context).
        self.index_counts = ReduceIndex()
        self.meter = self.index_counts.meter
        self.stale = 0
        self.stalled = collections.deque()  # results waiting for their context
        self.stalled_since = None
        self.refused = set()               # context versions refused somewhere
        self.staged = StagedContext(ContextStage.REDUCE)
        self.run = None                    # the current run number (None: no run)
        self.last_run = None
        self.state = "READY"               # READY, RUN or STOP (paused)
        self.events_seen = False
        self.announced = {}                # {"control": address} from the frontend
        self.async_feed = AsyncFeed()      # for the ASYNC stage (metropc.stage.reduce_async)
        # Being replaced (metropc.stage.reduce_restart): what this one
        # reports, and what it waits for if it replaces one that died.
        self.restart_point = RestartPoint()
        self.takeover = Takeover()
        self.slots = shmem.SlotReader(header_writable=True)
        self.leases = {}           # seq -> shm.Lease of its result's arrays
        # Observability (metropc.timing): view timing merged from every
        # worker and this stage, stage load, event-to-output latency.
        self.obs = ReduceObserver()
        self.rejected = RejectLog(log, "reduce")  # what failed, logged once per kind

    # -- control ---------------------------------------------------------------
    def report(self, error):
        # The context's frames of the traceback go along: the stage logs
        # nothing itself, the frontend reports it once (with file:line).
        frames = (getattr(error, "traceback_text", "") or "").rstrip()
        send(self.control, OP_ERROR,
             {"msg": f"[reduce] {error.report_text}" + (f"\n{frames}" if frames else "")})

    def on_context(self, data):
        """Build a new context: prepare it (two-phase reload) or use it now."""
        reply, ctx = self.staged.on_context(data)
        if reply is not None:
            send(self.control, *reply)
            if reply[0] == OP_CTX_FAILED:
                self.refused.add(reply[1]["version"])
                self._resume()
        if ctx is None:
            return
        if "start_seq" in data:  # this stage replaces one that died
            self.restart(data)
        self._schedule(ctx, int(data.get("from_seq", 0)))

    def restart(self, data):
        """Pick up where the REDUCE that died left off (see FrontendLoop.reduce_restart).

        Its counters go on; events it had finished are not waited for;
        events whose results may still come get `grace` seconds to arrive.
        """
        self.buffer.restart(int(data["start_seq"]))
        counters = data.get("counters") or {}
        self.buffer.lost += int(counters.get("lost", 0))
        self.stale += int(counters.get("stale", 0))
        self.output.dropped += int(counters.get("output_dropped", 0))
        self.meter.add(EVENTS, int(counters.get("events", 0)))  # the status's "out"
        run = data.get("run")
        self.run = self.last_run = run if type(run) is int else None
        if data.get("state") in STATE_CODES:
            self.state = data["state"]
        self.takeover.start(data)  # (its clients and doubtful events: see Takeover)
        self.output.remembered = set(self.takeover.clients_back)
        self._process_all(self.buffer.skip(int(s) for s in data.get("skip") or ()))

    def awaiting_clients(self):
        """Whether results wait for the clients of a REDUCE that died to resubscribe."""
        return self.takeover.awaiting_clients(self.output.prefixes.keys())

    def check_doubtful(self):
        """After the grace period, results that did not come are lost."""
        doubtful = self.takeover.given_up(self.output.prefixes.keys())
        if doubtful:
            self._process_all(self.buffer.skip(doubtful))

    def on_commit(self, data):
        _, ctx = self.staged.on_commit(data)
        if ctx is not None:
            self._schedule(ctx, int(data.get("from_seq", 0)))

    def on_abort(self, data):
        self.staged.on_abort(data)
        self.refused.add(data.get("version"))
        self._resume()

    def progress(self):
        """What the frontend needs, if changed: how far this stage got (for
        its dispatch window) and where to restart it after a crash, which
        lags one report behind (see :meth:`RestartPoint.report
        <metropc.stage.reduce_restart.RestartPoint.report>`)."""
        return self.restart_point.report((
            self.buffer.next_seq, self.buffer.lost, self.stale,
            self.output.reported_subscriptions(),
            self.run, self.state, self.output.dropped, self.meter.counts.get(EVENTS, 0)))

    @property
    def progress_pending(self) -> bool:
        """Whether the state taken last is not reported yet (the loop wakes for it)."""
        return self.restart_point.pending

    def _schedule(self, ctx, from_seq):
        """Use `ctx` from event `from_seq` on (now, if nothing older waits)."""
        if self.ctx is None or from_seq <= self.buffer.next_seq:
            self._switch(ctx)
        else:
            self.pending[ctx.version] = (ctx, from_seq)
        self._resume()

    def _resume(self):
        """Process results that waited for their context to arrive."""
        stalled, self.stalled = self.stalled, collections.deque()
        self.stalled_since = None
        self._process_all(stalled)

    def _switch(self, ctx):
        """Start using `ctx`: new views, so accumulated state starts empty."""
        if self.engine is not None:  # its views' timing goes on counting
            self.obs.timing.add_all(self.engine.take_timings())
        self.ctx = ctx
        self.async_feed.new_context()
        self.engine = Engine(ctx, ErrorReporter(sink=self.report))
        self.topics = {name: f"view#{name}".encode("utf-8")
                       for name, view in ctx.views.items()
                       if view.output != ViewOutput.COMPUTE}
        self.pending = {v: p for v, p in self.pending.items() if v > ctx.version}
        self.index_counts.new_context(ctx.version)
        self.publish_context()
        self.publish_index()

    def on_mark(self, mark):
        """A reset, run start or end, pause or resume, in order with events."""
        if not isinstance(mark, dict):
            return
        kind = mark.get("kind")
        if kind == "action":  # a source's Action, after the events before it
            self.on_action({"view_name": mark.get("view_name")})
            return
        if kind == "reset":
            mark = {"kind": "reset", "views": self.engine.reset(mark.get("views") or None)}
            self.reset_async(mark["views"])
        elif kind == "run_start":
            self.run = mark.get("run")
            if self.run is None:
                self.run = (self.last_run or 0) + 1  # an operator's run: the next number
            self.last_run = self.run
            self.engine.reset_on("run")
            self.state = "RUN"
            mark = {"kind": kind, "run": self.run}
        elif kind == "run_end":
            mark = {"kind": kind, "run": self.run}
            self.run = None
            self.state = "READY"
        elif kind == "pause":
            self.state = "STOP"
        elif kind == "resume":
            self.state = "RUN" if self.run is not None or self.events_seen else "READY"
        else:
            return
        self.publish_mark(mark)
        self.publish_index()

    def reset_async(self, views):
        """Async views (in their own process) are reset with the others."""
        self.async_feed.reset([n for n in views if n in self.ctx.views
                               and self.ctx.views[n].stage is ViewStage.ASYNC])

    def publish_mark(self, mark):
        """Tell clients (and recorders) about a mark, with the current run."""
        if self.output.wants(TOPIC_MARK):
            self.output.send(encode_protocol(TOPIC_MARK, {"run": self.run, **mark}))

    def publish_context(self):
        """The context now in use, for recorders and displays (topic ``context``)."""
        ctx = self.ctx
        if self.output.wants(TOPIC_CONTEXT):
            # set_view_docs() of names that are no views (a group's prefix):
            # displays label those here; a view's label is in the index.
            docs = {name: [str(label), "" if doc is None else str(doc)]
                    for name, (label, doc) in ctx.view_docs.items()
                    if name not in ctx.views}
            self.output.send(encode_protocol(TOPIC_CONTEXT, {
                "version": ctx.version, "path": ctx.path, "source": ctx.source,
                "parameters": dict(ctx.parameters), "docs": docs}))

    def publish_params(self):
        if self.ctx is not None and self.output.wants(TOPIC_PARAMS):
            self.output.send(encode_protocol(TOPIC_PARAMS, {
                "version": self.ctx.version, "parameters": dict(self.ctx.parameters)}))

    def on_vstats(self, data):
        """A worker's statistics: timing and load (metropc.timing), and what
        its kernels added with ``increase_view_counts`` since the last ones."""
        self.obs.on_vstats(data)
        self.add_worker_counts(data.get("counts", ()))

    def add_worker_counts(self, counts):
        """``(context version, name, delta)`` of another process's kernels
        (see ReduceIndex.add_worker_counts)."""
        current = self.ctx.version if self.ctx is not None else None
        self.index_counts.add_worker_counts(counts, current)

    def on_announce(self, data):
        """Addresses the frontend's process offers (its control endpoint)."""
        self.announced = {k: v for k, v in data.items() if type(v) is str}

    def on_lost(self, data):
        """Events a dead worker held: skip them when their turn comes; those
        it had just finished (`doubtful`) get `grace` seconds to arrive."""
        doubtful = data.get("doubtful")
        if doubtful:  # (the loop arms them: see _ReduceLoop.arm_doubts)
            self.buffer.doubt(doubtful, float(data.get("grace", 1.0)))
        self._process_all(self.buffer.skip(int(s) for s in data.get("seqs", ())))

    def on_params(self, data):
        """New parameter values. What the context in use cannot take (an
        unknown name, a value of the wrong type) is reported here, once for
        the pipeline, as the workers refuse it too."""
        if self.ctx is not None:
            refused = []
            for name in self.ctx.update_parameters(data, refused):  # the unknown ones
                try:
                    self.ctx.check_parameters({name: data[name]})
                except ParameterError as e:  # (an UnknownParameterError, with a hint)
                    refused.append(e)
            for error in refused:
                send(self.control, OP_ERROR, {"msg": f"[reduce] parameters: {error}; "
                                                     "not applied"})
        for ctx, _ in self.pending.values():
            ctx.update_parameters(data, [])
        self.publish_params()

    def on_action(self, data):
        if self.engine is None:
            return
        name = data.get("view_name")
        results = self.engine.action(name)
        if results is None:
            send(self.control, OP_ERROR, {"msg": f"[reduce] no action view named {name!r}"})
            return
        for view_name in results:
            self.meter.add(view_name)
        self.publish(results, None)
        if self.engine.async_inputs:
            self.async_feed.feed(self.engine.async_inputs, {}, results, None)

    # -- the ASYNC stage ------------------------------------------------------------
    def on_async(self, ident, opcode, data):
        """`want` (the async stage is ready) or `aresult` (its results)."""
        self.async_feed.peer = ident
        if opcode == OP_WANT:
            self.async_feed.want(data.get("version"),
                                 None if self.ctx is None else self.ctx.version)
        elif opcode == OP_ARESULT and self.ctx is not None:
            if data.get("version") != self.ctx.version:
                return  # computed under another context: stale
            for name in data.get("failed") or ():
                if name in self.ctx.views:
                    self.engine.errors[name] += 1
            results = {k: v for k, v in data["results"].items() if k in self.ctx.views}
            for name in results:
                self.meter.add(name)
            self.add_worker_counts(data.get("counts", ()))
            self.publish(results, data.get("event_id"))

    def async_inputs_message(self):
        """``(peer, inputs message)`` when the async stage asked and there is
        something new (or None): at most one in flight, never queued."""
        if self.ctx is None:
            return None
        return self.async_feed.inputs_message(self.ctx.version, self.run)

    # -- events -------------------------------------------------------------------
    def on_results(self, results, rejected):
        """The results of one worker message, in its order.

        The usual message of RUN_MIN results or more -- results that follow
        each other from the next one expected, of events of the current
        context, no REDUCE or ASYNC views, views that only batch clients
        take -- is counted and published as a whole (:meth:`_publish_run`),
        which costs a quarter of taking its results one by one; so is such
        a run that the reorder buffer releases at once.  Anything else goes result by
        result through :meth:`on_result`; a result that fails there is
        passed to `rejected(exception)` and the others go on (it never
        reached the reorder buffer, which counts it lost when it gives up
        waiting).  A failure after the buffer released an event is counted
        by :meth:`_failed`.
        """
        metas = [data[KEY_META] for data in results]  # (validated: a meta each)
        routes = self._usual_run(metas, results) if len(metas) >= RUN_MIN else None
        if routes is not None and self.buffer.take_run(metas[0][0], len(metas)):
            self._publish_run_guarded(metas, results, routes)
            self._process_all(self.buffer.pop_ready())  # what waited behind them
            return
        for data in results:
            try:
                self.on_result(data)
            except Exception as e:  # noqa: BLE001 - never ends the stage
                rejected(e)

    def _failed(self, count, error):
        """`count` events released by the reorder buffer whose results did
        not all get out, because handling them raised (a bug, not bad
        input: that is rejected before).  They are lost, and counted so
        (``internal#lost_events``); the first failure of the stage is logged."""
        self.buffer.lost += count
        self.rejected(OP_RESULT, error)

    def _publish_run_guarded(self, metas, datas, routes):
        try:
            self._publish_run(metas, datas, routes)
        except Exception as e:  # noqa: BLE001 - never ends the stage
            self._failed(len(metas), e)  # (which of them got out is unknown)

    def _usual_run(self, metas, datas):
        """The output routes of the published views if the results (`metas`
        and the rest of each, `datas`) can be published as a whole: see
        :meth:`on_results`.  None if not."""
        ctx, engine = self.ctx, self.engine
        if (ctx is None or engine is None or engine.reduces or engine.async_inputs
                or self.pending or self.stalled or self.takeover.clients_back or self.leases
                or not self.events_seen):
            return None
        first, n, version = metas[0][0], len(metas), ctx.version
        if ([meta[0] for meta in metas] != list(range(first, first + n))
                or any(meta[1] != version or meta[5] != META_EVENT for meta in metas)
                or any(KEY_SHM in data or KEY_EVENT_ID in data for data in datas)):
            return None
        routes = [(name, topic, self.output.routes(topic)) for name, topic in self.topics.items()]
        if any(plain for _, _, (plain, _) in routes):
            return None
        return routes

    def _publish_run(self, metas, datas, routes):
        """Count and publish a run of results that :meth:`_usual_run` passed."""
        self._count_run(metas)
        for name, topic, (_, batched) in routes:
            key = f"view#{name}"
            column = [(data[key], meta[2]) for data, meta in zip(datas, metas) if key in data]
            if not column:
                continue
            if batched:
                self._publish_column(name, topic, column)
            else:
                self.output.skip(topic, len(column))  # nobody listens (now)
        now = time.time()  # the latency from each worker message's receipt
        for received, count in collections.Counter(d.get(KEY_TIME) for d in datas).items():
            if type(received) is float:
                add_time(self.obs.latency, max(0.0, now - received), count)

    def _count_run(self, metas):
        """The counts of :meth:`_process` for a run of events' results."""
        meter, n = self.meter, len(metas)
        produced = collections.Counter(itertools.chain.from_iterable(m[3] for m in metas))
        for name, count in produced.items():
            meter.add(name, count)
        errors = self.engine.errors
        for meta in metas:
            for name in meta[4]:
                errors[name] += 1
        meter.add(EVENTS, n)
        self.obs.events += n

    def _publish_column(self, name, topic, column):
        """Publish `column`, ``(value, event_id)`` results of view `name` in
        event order, to batch clients: a record each, packed by
        :func:`result_record`; by :meth:`publish` if one is not a plain number."""
        version, run = self.ctx.version, self.run
        seqs = self.output.seq_range(topic, len(column))
        records = [result_record(value, event_id, version, seq, run)
                   for (value, event_id), seq in zip(column, seqs)]
        if None in records:
            for value, event_id in column:
                self.publish({name: value}, event_id)
        else:
            self.output.send_records(topic, records)

    def on_result(self, data):
        """One pool result, validated already (``recv_messages`` checked its
        meta with :func:`metropc.messages.unpack_meta`)."""
        meta = data.pop(KEY_META)
        seq = meta[0]
        ref = data.pop(KEY_SHM, None)
        if ref is not None:
            try:
                lease = self.slots.attach(ref, data)
            except ProtocolError as e:
                log.warning("reduce: result of event %s lost: %s", seq, e)
                self._process_all(self.buffer.skip([seq]))
                return
            if seq < self.buffer.next_seq:  # too late: given up already
                self.slots.done(lease)
                return
            old = self.leases.pop(seq, None)
            if old is not None:
                self.slots.done(old)
            self.leases[seq] = lease
        self._process_all(self.buffer.push(seq, (meta, data)))

    def release_slots(self):
        """Free the result slots nothing refers to any more."""
        self.slots.free_in_header(self.slots.collect())

    def flush(self):
        """Release what the reorder deadline allows (called on timeouts)."""
        self._process_all(self.buffer.pop_ready())

    def _process_all(self, items):
        """Handle what the reorder buffer released, in event order: each
        item is guarded, so a failure loses that event alone (counted)."""
        if len(items) >= RUN_MIN:  # a run released at once: as a whole if usual
            metas, datas = [item[0] for item in items], [item[1] for item in items]
            routes = self._usual_run(metas, datas)
            if routes is not None:
                self._publish_run_guarded(metas, datas, routes)
                return
        for item in items:
            try:
                self._process_released(item)
            except Exception as e:  # noqa: BLE001 - never ends the stage
                self._failed(1 if item[0][5] == META_EVENT else 0, e)  # (a mark is no event)

    def _process_released(self, item):
        ctx = self.ctx  # (the common case first: nothing waits, the current context)
        if (ctx is not None and item[0][1] == ctx.version and not self.stalled
                and not self.takeover.clients_back):
            self.process(*item)
        elif self.stalled or (self.takeover.clients_back and self.awaiting_clients()) or (
                not self._context_known(item[0])):
            # Results can overtake their context on the way here (they
            # come from the workers, the context from the frontend):
            # wait for it, keeping event order.
            if not self.stalled:
                self.stalled_since = time.monotonic()
            self.stalled.append(item)
        else:
            self.process(*item)

    def _context_known(self, meta):
        version = meta[1]
        if meta[5] == META_SKIP or version is None:
            return True  # events, steps and marks wait for their context
        if self.ctx is not None and version <= self.ctx.version:
            return True
        return version in self.pending or version in self.refused

    def check_stalled(self, timeout=5.0):
        """Give up on a context that never came: its results are stale."""
        if self.stalled and not self.awaiting_clients() and (
                time.monotonic() - self.stalled_since > timeout):
            version = self.stalled[0][0][1]
            log.warning("reduce: context version %s never arrived; dropping its results",
                        version)
            self.refused.add(version)
            self._resume()

    def process(self, meta, data):
        if not self.leases:  # no result arrays in shared memory to give back
            self._process(meta, data)
            return
        try:
            self._process(meta, data)
        finally:
            lease = self.leases.pop(meta[0], None)
            if lease is not None:
                self.slots.done(lease)

    def _process(self, meta, data):
        seq, version, event_id, produced, failed, kind = meta
        if self.pending:
            for _, (ctx, from_seq) in sorted(self.pending.items()):
                if seq >= from_seq:
                    self._switch(ctx)
        if kind == META_SKIP:  # a worker could not handle the event (it said why)
            self.buffer.lost += 1
            return
        if self.engine is None:
            return
        if kind == META_STEP:
            results = self.engine.step()
            for name in results:
                self.meter.add(name)
            self.publish(results, None)
            self.engine.reset_on("step")
            self.publish_mark({"kind": "step"})
            return
        if kind == META_MARK:
            self.on_mark(data.get(KEY_MARK))
            return
        if version != self.ctx.version:
            self.stale += 1
            return
        if not self.events_seen:
            self.events_seen = True
            if self.state == "READY" and self.last_run is None:
                self.state = "RUN"  # a source without runs: running once events flow
        event, pool_results = {}, {}
        for key, value in data.items():
            if key.startswith("view#"):
                pool_results[key[5:]] = value
            elif not key.startswith("#"):
                event[key] = value
        if KEY_EVENT_ID in data:
            event_id = data[KEY_EVENT_ID]
        event["internal#event_id"] = event_id
        meter = self.meter
        for name in produced:
            meter.add(name)
        engine = self.engine
        errors = engine.errors
        for name in failed:
            errors[name] += 1
        results = engine.reduce(event, pool_results) if engine.reduces else {}
        for name in results:
            meter.add(name)
        meter.add(EVENTS)
        self.publish(pool_results, event_id)
        if results:
            self.publish(results, event_id)
        if engine.async_inputs:
            self.async_feed.feed(engine.async_inputs, pool_results, results, event_id)
        obs = self.obs
        obs.events += 1
        received = data.get(KEY_TIME)
        if type(received) is float:  # from the worker's receipt to published
            add_time(obs.latency, max(0.0, time.time() - received))

    def publish(self, results, event_id):
        """Send each wanted result to the clients (see metropc.stage.output).

        The payload's ``seq`` lets each client count what it missed, since
        the output cannot wait for a client that does not read.
        """
        topics, output = self.topics, self.output
        version = self.ctx.version
        for name, value in results.items():
            topic = topics.get(name)
            if topic is None:
                continue  # a COMPUTE view
            plain, batched = output.routes(topic)
            if not (plain or batched):
                output.skip(topic)  # nobody listens (now)
                continue
            # "seq": per-topic sequence number, for clients to count gaps.
            seq = output.seq(topic)
            if not plain:  # batch clients only: a plain number needs no frames
                record = result_record(value, event_id, version, seq, self.run)
                if record is not None:
                    output.send_record(topic, record)
                    continue
            payload = {"data": value, "event_id": event_id, "version": version, "seq": seq}
            if self.run is not None:  # only inside runs: a frame less
                payload["run"] = self.run
            try:
                frames = encode_protocol(topic, payload)
            except KeyboardInterrupt:  # how a stage is told to stop
                raise
            except BaseException as e:  # noqa: BLE001 - unpicklable; __reduce__ may raise anything
                self.meter.add(name, -1)  # counted as produced: it failed after all
                self.engine.errors[name] += 1
                self.engine.reporter.report(self.ctx.views[name], e, event_id,
                                            self.ctx.path)
                continue
            output.send(frames, topic)

    # -- index -----------------------------------------------------------------------
    def index(self):
        """The index payload: views and input paths with counts and rates
        (built by :class:`~metropc.stage.reduce_index.ReduceIndex`)."""
        engine = self.engine
        return self.index_counts.entries(
            self.ctx, engine.errors if engine is not None else {}, state=self.state,
            run=self.run, lost=self.buffer.lost, stale=self.stale,
            output_dropped=self.output.drop_stats(),
            # View timing, stage load, output latency (metropc.timing, §8).
            observed=self.obs.entries(engine.take_timings() if engine is not None else {},
                                      len(self.buffer), os.getpid()))

    def on_stats(self, data):
        """Input statistics from the frontend: {path: (count, rate)}."""
        self.index_counts.on_stats(data)

    def publish_index(self):
        """Send the status and the index (no ``seq``: its keys are paths,
        and it is sent again).  The status first: a client that has the
        new index (of a reloaded context, say) has the status that goes
        with it (its context version) already."""
        self.report_given_up()
        self.publish_status()
        if self.output.wants(OP_INDEX):
            self.output.send(encode_protocol(OP_INDEX, self.index()))

    _given_up_reported = 0

    def report_given_up(self):
        """Say (once a second at most) that the reorder buffer gave up
        waiting for events: counted lost, and the reason output stalled."""
        n = self.buffer.given_up - self._given_up_reported
        if n > 0:
            self._given_up_reported = self.buffer.given_up
            send(self.control, OP_ERROR, {"msg": (
                f"[reduce] gave up waiting for {n} event(s) whose results did not come "
                f"within {self.buffer.timeout:g} s (a worker that stalled or was lost); "
                "they are counted in internal#lost_events")})

    def publish_status(self):
        if self.output.wants(TOPIC_STATUS):
            self.output.send(encode_protocol(TOPIC_STATUS, self.status()))

    def status(self):
        """The status payload (see :func:`~metropc.stage.reduce_index.status_payload`)."""
        return status_payload(self.state, self.run, self.ctx, self.announced.get("control"),
                              self.output.last_seqs())

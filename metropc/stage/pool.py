"""A POOL worker: runs the POOL views of whole events.

The worker receives events and control messages on one DEALER connected to
the frontend's control ROUTER (so a new context is always applied before
the events dispatched after it), and pushes one result message per event to
REDUCE.  It asks for work with credits: it never holds more than `prefetch`
events, which keeps memory bounded and lets the frontend apply its drop
policy.

Large arrays may arrive in shared-memory slots instead of the message
(:mod:`metropc.stage.shm`, local workers only): the views get read-only
arrays in place, and the worker frees a slot with its next credit once
nothing refers to it any more.  Large results go to REDUCE the same way.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import threading
import time
from time import perf_counter

import numpy as np
import zmq

from .. import endpoints
from ..engine import Engine, ErrorReporter
from ..enums import ContextStage, ViewOutput, ViewStage
from ..error import ProtocolError
from ..protocol import encode_protocol
from ..security import secure
from . import shm as shmem
from ..messages import EVENT_ID_TYPES, KEY_MARK, KEY_TIME, META_MARK, OP_BYE, OP_VSTATS
from ..timing import merge
from .reload import StagedContext
from .common import (KEY_EVENT_ID, KEY_META, KEY_SHM, KEY_STEP, META_SKIP, META_STEP,
                     OP_CREDIT, OP_ERROR, OP_EVENT, pack_meta,
                     OP_HEARTBEAT, OP_HELLO, OP_PARAMS, OP_RESULT, OP_SHM, OP_STOP, SEQ_PATH,
                     RejectLog, make_socket, recv_messages, send, send_batch,
                     stop_signals_held, unpack_meta)

log = logging.getLogger(__name__)

__all__ = ["run_pool", "reduce_inputs"]

#: A worker says it is alive this often, busy or not (remote workers are
#: declared gone after a few seconds of silence).
HEARTBEAT_S = 1.0
#: While input slots are still referenced (pinned), look at them this often.
PIN_POLL_MS = 50
#: A worker sends its views' timing and its load to REDUCE this often
#: (seconds), busy or idle, so REDUCE's numbers are at most this old.
STATS_INTERVAL = 1.0
#: Seconds without a word from the frontend before a worker says so (once).
SILENT_WARNING = 10.0


class _Heartbeat:
    """A thread saying "alive" on its own socket, even while a view runs.

    The frontend cannot watch processes on other hosts; silence of this
    heartbeat is how it learns that a remote worker is gone.  Its identity
    is ``<worker name>#hb``.
    """

    def __init__(self, zctx, control_addr, name, secure_client):
        self._stop = threading.Event()
        self._sock = make_socket(zctx, zmq.DEALER, identity=f"{name}#hb".encode())
        secure_client(self._sock)
        endpoints.connect(self._sock, control_addr)
        self._thread = threading.Thread(target=self._run, name="metropc-heartbeat",
                                        daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(HEARTBEAT_S):
            try:
                send(self._sock, OP_HEARTBEAT, flags=zmq.NOBLOCK)
            except zmq.ZMQError:
                pass

    def stop(self):
        self._stop.set()
        self._thread.join(2 * HEARTBEAT_S)
        self._sock.close(0)


def reduce_inputs(ctx):
    """What a worker must forward to REDUCE for `ctx`.

    Returns ``(view_names, paths)``: POOL views whose results REDUCE needs
    (to publish them, or as inputs of REDUCE/STEP/ACTION views), and event
    paths that REDUCE-stage views read directly.
    """
    names, paths = set(), set()
    for view in ctx.views.values():
        if view.stage is ViewStage.POOL:
            if view.output != ViewOutput.COMPUTE:
                names.add(view.name)
            continue
        for arg in view.args:
            key = str(arg.path)
            if key.startswith("view#"):
                dep = ctx.views[key[5:]]
                if dep.stage is ViewStage.POOL:
                    names.add(dep.name)
            else:
                paths.add(key)
    return names, paths


class PoolWorker:
    """State of one worker process; :func:`run_pool` drives it."""

    def __init__(self, name, control, results):
        self.name = name
        self.control = control
        self.results = results
        self.ctx = None
        self.engine = None
        self.forward_views = set()
        self.forward_paths = set()
        self.staged = StagedContext(ContextStage.POOL)
        self.rejected = RejectLog(log, name)
        self.slots = None        # shm.SlotReader for input slots (local workers)
        self.results_slots = None  # shm.SlotWriter for large results
        self.threshold = shmem.DEFAULT_THRESHOLD
        # Load and timing since the last `vstats` message (send_stats).
        self.timings = {}        # records of engines replaced meanwhile
        self.events = 0          # events whose views ran
        self.busy = 0.0          # seconds spent on messages
        self.stats_t = time.monotonic()
        # increase_view_counts() calls of kernels, {(ctx version, name): delta}
        self.counts = collections.Counter()
        self.received = 0.0      # time.time() the message being handled arrived

    def open_slots(self, shm):
        """Map the frontend's segments; False if this host cannot (no shm then)."""
        try:
            reader = shmem.SlotReader()
            reader.segment(shm["in"])
        except Exception as e:  # noqa: BLE001 - any failure: use the socket path
            log.warning("%s: shared memory unavailable, arrays come by socket: %s",
                        self.name, e)
            return False
        self.slots = reader
        self.threshold = int(shm.get("threshold", shmem.DEFAULT_THRESHOLD))
        self.on_shm({"out": shm.get("out")})
        return True

    def on_shm(self, data):
        """Use a fresh results segment (after a REDUCE restart)."""
        old, self.results_slots = self.results_slots, None
        if old is not None:
            old.close()
        name = data.get("out")
        if name is None or self.slots is None:
            return
        try:
            self.results_slots = shmem.SlotWriter(name, self.threshold, self.slots)
        except Exception as e:  # noqa: BLE001 - results then go by socket
            log.warning("%s: no results segment, results go by socket: %s", self.name, e)

    def released_slots(self):
        """Serials (int64 bytes) of input slots nothing refers to any more."""
        if self.slots is None:
            return None
        free = self.slots.collect()
        if not free:
            return None
        return np.array([lease.serial for lease in free], "<i8").tobytes()

    def handle(self, messages):
        """Run one received message (or batch); returns (results, had_event, stop).

        A message that fails in its handler (a value of the wrong kind that
        validation could not see) is logged once per kind and dropped; an
        event that fails that way is passed on as skipped, so REDUCE does
        not wait for it.
        """
        results_out, had_event = [], False
        self.received = time.time()
        leases = self.attach_slots(messages)
        for i, (opcode, data) in enumerate(messages):
            if opcode == OP_STOP:
                for lease in leases.values():
                    if lease is not None:
                        self.slots.done(lease)
                return results_out, had_event, True
            if opcode == OP_EVENT:
                had_event = True
            try:
                if opcode != OP_EVENT:
                    out = self.on_message(opcode, data)
                elif i in leases:  # (its slot is mapped already)
                    out = self.slot_event(data, leases.pop(i))
                else:
                    out = self._event(data)
            except Exception as e:  # noqa: BLE001 - no message may end a worker
                self.rejected(opcode, e)
                seq = data.get(SEQ_PATH) if opcode == OP_EVENT else None
                out = {KEY_META: pack_meta(seq, kind=META_SKIP)} if type(seq) is int else None
            if out is not None:
                results_out.append((OP_RESULT, out))
        if self.results_slots is not None:
            for _, out in results_out:
                self.results_slots.export(out)
        return results_out, had_event, False

    def on_message(self, opcode, data):
        """Apply one message other than an event (handle() runs those)."""
        if opcode in StagedContext.OPCODES:
            reply, ctx = self.staged.handle(opcode, data)
            if reply is not None:
                send(self.control, *reply)
            if ctx is not None:
                self.activate(ctx)
        elif opcode == OP_PARAMS:
            if self.ctx is not None:
                refused = []  # (REDUCE reports them, once for the pipeline)
                unknown = self.ctx.update_parameters(data, refused)
                if unknown or refused:
                    log.debug("%s: unknown parameters %s, refused %s", self.name, unknown,
                              [str(e) for e in refused])
        elif opcode == OP_SHM:
            self.on_shm(data)
        else:
            log.debug("%s: ignoring opcode %r", self.name, opcode)
        return None

    def report(self, error):
        # The context's frames of the traceback go along: the stage logs
        # nothing itself, the frontend reports it once (with file:line).
        frames = (getattr(error, "traceback_text", "") or "").rstrip()
        send(self.control, OP_ERROR,
             {"msg": f"[{self.name}] {error.report_text}" + (f"\n{frames}" if frames else "")})

    def send_results(self, results_out):
        """Push result messages to REDUCE; a value that cannot be encoded
        (neither fast-path type nor picklable) fails its view, not the
        worker, so checking costs nothing until it happens."""
        try:
            send_batch(self.results, results_out)
        except zmq.ZMQError:
            raise
        except KeyboardInterrupt:  # how a stage is told to stop
            raise
        except BaseException:  # noqa: BLE001 - a value's own __reduce__ may raise anything
            for _, out in results_out:
                self.drop_unencodable(out)
            send_batch(self.results, results_out)

    def drop_unencodable(self, out):
        """Remove the values of `out` that cannot be encoded; report their views."""
        seq, version, event_id, produced, failed, kind = unpack_meta(out[KEY_META])
        failed_views = []
        for key in [k for k in out if not k.startswith("#")]:
            try:
                encode_protocol(OP_RESULT, {key: out[key]})
            except KeyboardInterrupt:
                raise
            except BaseException as e:  # noqa: BLE001 - see send_results
                del out[key]
                if not key.startswith("view#"):
                    log.warning("%s: event data %r cannot be sent to REDUCE: %s",
                                self.name, key, e)
                    continue
                name = key[5:]
                failed_views.append(name)
                view = self.ctx.views.get(name) if self.ctx is not None else None
                if view is not None:
                    self.engine.reporter.report(view, e, out.get(KEY_EVENT_ID, event_id),
                                                self.ctx.path)
        if failed_views:
            produced = [n for n in produced if n not in failed_views]
            out[KEY_META] = pack_meta(seq, version, event_id, produced,
                                      [*failed, *failed_views], kind)

    def send_stats(self, now):
        """Send the views' timing and this worker's load to REDUCE (``vstats``).

        Deltas since the last one: REDUCE adds them up, so a replaced
        worker's counts add to its successor's and never go back.  If the
        socket cannot take it now, the numbers wait for the next time.
        """
        records = self.collect_timings()
        data = {"stage": self.name, "pid": os.getpid(), "events": self.events,
                "busy": self.busy, "interval": max(0.0, now - self.stats_t)}
        for name, record in records.items():
            data[f"view#{name}"] = tuple(record)
        counts = self.collect_counts()
        if counts:
            data["counts"] = [(version, name, delta) for (version, name), delta in counts.items()]
        try:
            send(self.results, OP_VSTATS, data, flags=zmq.NOBLOCK)
        except zmq.Again:
            return
        self.timings, self.events, self.busy, self.stats_t = {}, 0, 0.0, now
        counts.clear()

    def collect_timings(self):
        """The engine's timing records added to those not sent yet."""
        records = self.timings
        if self.engine is not None:
            for name, record in self.engine.take_timings().items():
                if name in records:
                    merge(records[name], record)
                else:
                    records[name] = record
        return records

    def collect_counts(self):
        """What kernels added with ``increase_view_counts`` (it counts in the
        context, which here nobody reads) added to what is not sent yet."""
        ctx = self.ctx
        if ctx is not None and ctx.view_counts:
            for name, delta in ctx.view_counts.items():
                self.counts[(ctx.version, name)] += delta
            ctx.view_counts.clear()
        return self.counts

    def activate(self, ctx):
        self.collect_timings()  # the old engine's calls are still to be sent
        self.collect_counts()  # and the old context's counts
        self.ctx = ctx
        self.engine = Engine(ctx, ErrorReporter(sink=self.report))
        self.forward_views, self.forward_paths = reduce_inputs(ctx)

    def attach_slots(self, messages):
        """Map the slots of a message's events before running any of them:
        ``{index: Lease, or None if malformed}``.

        Mapping a slot takes 3 us of Python when its code is in the caches,
        40 us when a view has just streamed a megabyte through them, as each
        view of a large event does.  Mapped together, only the first is cold.
        """
        leases = {}
        for i, (opcode, data) in enumerate(messages):
            if opcode == OP_EVENT and KEY_SHM in data:
                leases[i] = self.attach(data, data.pop(KEY_SHM))
        return leases

    def slot_event(self, event, lease):
        """Run an event whose arrays `lease` mapped (None: it could not be)."""
        if lease is None:
            seq = event.get(SEQ_PATH)
            return None if type(seq) is not int else {KEY_META: pack_meta(seq, kind=META_SKIP)}
        try:
            return self._event(event)
        finally:
            self.slots.done(lease)

    def attach(self, event, raw):
        """Put the arrays of an input slot into `event`; None if malformed."""
        try:
            if self.slots is None:
                raise ProtocolError("a slot reference, but no shared memory here")
            return self.slots.attach(raw, event)
        except ProtocolError as e:
            # (Not `e` itself in the record: its traceback holds the frames,
            # and with them the message's other events and their slots.)
            log.warning("%s: event dropped: %s", self.name, str(e))
            send(self.control, OP_ERROR, {"msg": f"[{self.name}] event dropped: {e}"})
            return None

    def _event(self, event):
        seq = event.pop(SEQ_PATH, None)
        if seq is None:
            return None
        if event.get(KEY_STEP):
            # The context version goes along, so REDUCE applies a step or a
            # mark only once it has that context too (marks overtake commits).
            version = None if self.ctx is None else self.ctx.version
            return {KEY_META: pack_meta(seq, version, kind=META_STEP)}
        mark = event.get(KEY_MARK)
        if mark is not None:  # a reset, run or pause mark: REDUCE applies it in order
            version = None if self.ctx is None else self.ctx.version
            return {KEY_META: pack_meta(seq, version, kind=META_MARK), KEY_MARK: mark}
        engine = self.engine
        if engine is None:
            return {KEY_META: pack_meta(seq, kind=META_SKIP)}
        event_id = engine.prepare(event)
        results = engine.pool(event)
        meta = pack_meta(seq, self.ctx.version, event_id, results, engine.failed_now)
        out = {KEY_META: meta, KEY_TIME: self.received}
        self.events += 1
        if type(event_id) not in EVENT_ID_TYPES:
            out[KEY_EVENT_ID] = event_id
        for name in self.forward_views.intersection(results):
            out[f"view#{name}"] = results[name]
        if self.forward_paths:
            for path in self.forward_paths.intersection(event):
                out[path] = event[path]
        return out


#: How long a remote worker that leaves waits for its ``bye`` to go out.
BYE_LINGER_MS = 1000


def _say_bye(control) -> bool:
    """Tell the frontend this worker leaves; False if that cannot be sent."""
    try:
        send(control, OP_BYE, {}, flags=zmq.NOBLOCK)
        return True
    except (zmq.ZMQError, KeyboardInterrupt):  # (a second signal: just go)
        return False


def run_pool(control_addr, reduce_addr, index=0, prefetch=2, zmq_context=None, name=None,
             keys=None, shm=None, remote=False):
    """Run one POOL worker until told to stop; returns an exit code.

    `name` must be unique in the pipeline (``pool-N`` for local workers,
    ``pool-<host>-<pid>`` for remote ones); `keys` a key directory when the
    pipeline is secured with CURVE; `shm` the frontend's shared-memory
    segments (``{"in": name, "out": name, "threshold": bytes}``) for a
    worker on the frontend's host.  A `remote` worker (``metropc-worker``)
    stopped by its own operator says so (``bye``): the frontend then knows
    at once, instead of taking its silence for a failure seconds later.
    """
    name = name or f"pool-{index}"
    zctx = zmq_context or zmq.Context()
    control = results = heartbeat = auth = None
    try:
        with stop_signals_held():  # all that is made here, `finally` releases
            _, secure_client, auth = secure(zctx, keys)
            control = make_socket(zctx, zmq.DEALER, identity=name.encode())
            results = make_socket(zctx, zmq.PUSH)
            secure_client(control)
            secure_client(results)
            endpoints.connect(control, control_addr)
            endpoints.connect(results, reduce_addr)
            heartbeat = _Heartbeat(zctx, control_addr, name, secure_client)
        worker = PoolWorker(name, control, results)
        # Where it runs: two workers given one name are told apart.
        hello = {"stage": name, "host": socket.gethostname(), "pid": os.getpid()}
        if shm and worker.open_slots(shm):
            hello["shm"] = True
        send(control, OP_HELLO, hello)
        send(control, OP_CREDIT, {"n": prefetch})
        next_stats = time.monotonic() + STATS_INTERVAL
        rcvtimeo = None  # the control socket's, as set last
        unanswered = time.monotonic() + SILENT_WARNING  # (None once the frontend spoke)
        while True:
            now = time.monotonic()
            if unanswered is not None and now >= unanswered:
                log.warning("%s: no word from the pipeline at %s for %g s (is it running, "
                            "is the address right, are the keys its keys?); still trying",
                            name, control_addr, SILENT_WARNING)
                unanswered = float("inf")  # said once
            if now >= next_stats:
                worker.send_stats(now)
                next_stats = now + STATS_INTERVAL
            if worker.slots is not None and worker.slots.pending:
                # Input slots still referenced (pinned): free them once they
                # are not, even if no message comes meanwhile.
                if not control.poll(PIN_POLL_MS):
                    free = worker.released_slots()
                    if free:
                        send(control, OP_CREDIT, {"n": 0, "free": free})
                    continue
            wait_ms = int((next_stats - now) * 1000) + 1
            if wait_ms != rcvtimeo:  # (set before waiting: off a lone event's path)
                control.rcvtimeo = rcvtimeo = wait_ms
            try:
                # A blocking receive, not a poll and then a receive: a lone
                # event's worker is up 20-50 us sooner (cold code, measured).
                # It gives up when the stats are due (rcvtimeo).
                messages = recv_messages(control)
            except zmq.Again:
                continue
            except ProtocolError as e:
                log.warning("%s: rejected a malformed message: %s", name, e)
                continue
            unanswered = None
            t0 = perf_counter()
            results_out, had_event, stop = worker.handle(messages)
            messages = None
            if stop:
                return 0
            if results_out:
                worker.send_results(results_out)
                results_out = None
            free = worker.released_slots()
            if had_event:  # one credit per message, however many events it held
                send(control, OP_CREDIT, {"free": free} if free else None)
            elif free:
                send(control, OP_CREDIT, {"n": 0, "free": free})
            worker.busy += perf_counter() - t0
    except KeyboardInterrupt:
        if remote and control is not None and _say_bye(control):
            control.close(BYE_LINGER_MS)  # (sent before the socket goes)
        return 0
    except zmq.ContextTerminated:
        return 0
    finally:
        if heartbeat is not None:
            heartbeat.stop()
        for sock in (control, results):
            if sock is not None:
                sock.close(0)
        if auth is not None:
            auth.stop()
        if zmq_context is None:
            zctx.term()

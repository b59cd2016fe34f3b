"""The ASYNC stage: slow analysis on the newest results, beside the stream.

A fit, a peak search or a 2D transform over an accumulated histogram may take
seconds; REDUCE must not wait for it.  Views declared ``stage='async'`` run
here, in a process of their own:

- when it is ready (its previous call finished, and each view's
  ``interval`` passed), this stage asks REDUCE for the newest results the
  async views read (``want``); REDUCE answers with what it has then
  (``inputs``), or as soon as something new came.  Results in between are
  never queued: REDUCE keeps only the latest, so the stream goes on at full
  rate however slow the async views are;
- the results go back to REDUCE (``aresult``), which publishes them like any
  view's, with the event id of the newest input they used;
- the stage takes contexts (two-phase, like the others), parameters and
  resets from the frontend, reports failing views with file:line, and tells
  the frontend when it starts and ends a call (``busy``), so the supervisor
  can replace it when a call takes longer than ``event_timeout``.
"""

from __future__ import annotations

import logging
import time

import zmq

from .. import endpoints
from ..engine import Engine, ErrorReporter
from ..enums import ContextStage
from ..error import ProtocolError
from ..messages import (OP_ARESULT, OP_BUSY, OP_ERROR, OP_HELLO, OP_INPUTS, OP_PARAMS,
                        OP_RESET, OP_STOP, OP_WANT)
from ..security import secure
from .common import RejectLog, make_socket, recv, send, stop_signals_held
from .reload import StagedContext

log = logging.getLogger(__name__)
_reject = RejectLog(log, "async")

__all__ = ["run_async", "AsyncStage"]

#: Ask REDUCE again if no inputs came for this long (REDUCE may have restarted).
WANT_AGAIN = 5.0


class AsyncStage:
    """State of the async process; :func:`run_async` drives it."""

    def __init__(self, control, link, clock=time.monotonic):
        self.control, self.link, self.clock = control, link, clock
        self.staged = StagedContext(ContextStage.ASYNC)
        self.ctx = self.engine = None
        self.last_call: dict[str, float] = {}   # view -> when it last ran
        self.results: dict = {}                 # newest async results (inputs of others)
        self.asked = None                       # when we last sent `want`

    # -- from the frontend -------------------------------------------------------
    def on_control(self, opcode, data):
        if opcode in StagedContext.OPCODES:
            reply, ctx = self.staged.handle(opcode, data)
            if reply is not None:
                send(self.control, *reply)
            if ctx is not None:
                self.activate(ctx)
        elif opcode == OP_PARAMS and self.ctx is not None:
            self.ctx.update_parameters(data, [])  # (REDUCE reports what is refused)
        elif opcode == OP_RESET and self.engine is not None:
            self.engine.reset(data.get("views") or None)

    def activate(self, ctx):
        self.ctx = ctx
        self.engine = Engine(ctx, ErrorReporter(sink=self.report))
        self.last_call, self.results, self.asked = {}, {}, None

    def report(self, error):
        frames = (getattr(error, "traceback_text", "") or "").rstrip()
        send(self.control, OP_ERROR,
             {"msg": f"[async] {error.report_text}" + (f"\n{frames}" if frames else "")})

    # -- with REDUCE --------------------------------------------------------------
    def next_want(self):
        """When to ask REDUCE for inputs next (None: nothing to run)."""
        if self.engine is None or not self.engine.async_views:
            return None
        if self.asked is not None:
            return self.asked + WANT_AGAIN
        now = self.clock()
        return min(self.last_call.get(v.name, -1e9) + v.interval
                   for v in self.engine.async_views) if self.last_call else now

    def want(self):
        self.asked = self.clock()
        send(self.link, OP_WANT, {"version": self.ctx.version})

    def on_inputs(self, data):
        """Run the due async views on the newest inputs; send their results."""
        self.asked = None
        if self.engine is None or data.get("version") != self.ctx.version:
            return  # from another context: ask again with ours
        now = self.clock()
        due = [v for v in self.engine.async_views
               if now - self.last_call.get(v.name, -1e9) >= v.interval]
        if not due:
            return
        known = {**data["inputs"], **self.results}
        errors_before = dict(self.engine.errors)
        send(self.control, OP_BUSY, {"busy": True})
        try:
            results = self.engine.run_async(known, data.get("event_id"), views=due)
        finally:
            send(self.control, OP_BUSY, {"busy": False})
        for view in due:
            self.last_call[view.name] = now
        self.results.update(results)
        failed = [n for n, c in self.engine.errors.items() if errors_before.get(n, 0) != c]
        counts = [(self.ctx.version, name, delta)  # increase_view_counts() of the kernels
                  for name, delta in self.ctx.view_counts.items()]
        self.ctx.view_counts.clear()
        send(self.link, OP_ARESULT, {"results": results, "event_id": data.get("event_id"),
                                     "version": self.ctx.version, "failed": failed,
                                     "counts": counts})


def run_async(control_addr, async_addr, keys=None, zmq_context=None):
    """Run the ASYNC stage until told to stop; returns an exit code."""
    zctx = zmq_context or zmq.Context()
    control = link = auth = None
    try:
        with stop_signals_held():  # all that is made here, `finally` releases
            _, secure_client, auth = secure(zctx, keys)
            control = make_socket(zctx, zmq.DEALER, identity=b"async")
            link = make_socket(zctx, zmq.DEALER)
        secure_client(control)
        endpoints.connect(control, control_addr)
        endpoints.connect(link, async_addr)
        stage = AsyncStage(control, link)
        send(control, OP_HELLO, {"stage": "async"})
        poller = zmq.Poller()
        poller.register(control, zmq.POLLIN)
        poller.register(link, zmq.POLLIN)
        while True:
            due = stage.next_want()
            wait = 1000 if due is None else max(0, int((due - time.monotonic()) * 1000))
            ready = dict(poller.poll(min(wait, 1000)))
            if control in ready:
                opcode, data = _recv(control, "a control message")
                if opcode == OP_STOP:
                    return 0
                if opcode is not None:
                    _guarded(stage.on_control, opcode, data)
            if link in ready:
                opcode, data = _recv(link, "a message from reduce")
                if opcode == OP_INPUTS:
                    _guarded(lambda _, d: stage.on_inputs(d), opcode, data)
            due = stage.next_want()  # WANT_AGAIN after an unanswered one: REDUCE may
            if due is not None and time.monotonic() >= due:  # have restarted
                stage.want()
    except (KeyboardInterrupt, zmq.ContextTerminated):
        return 0
    finally:
        for sock in (control, link):
            if sock is not None:
                sock.close(0)
        if auth is not None:
            auth.stop()
        if zmq_context is None:
            zctx.term()


def _recv(sock, what):
    """One validated message, or ``(None, None)`` for a malformed one (logged)."""
    try:
        return recv(sock)
    except ProtocolError as e:
        _reject(what, e)
        return None, None


def _guarded(handler, opcode, data):
    try:
        handler(opcode, data)
    except Exception as e:  # noqa: BLE001 - no message may end this stage
        _reject(opcode, e)

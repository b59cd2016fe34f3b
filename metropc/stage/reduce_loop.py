"""The REDUCE process's sockets and poll loop.

:class:`~metropc.stage.reduce.ReduceStage` decides everything REDUCE does
(event order, contexts, runs, what is published and counted) and does no
I/O of its own but sending on the sockets it is given.  This module owns
those sockets: :func:`run_reduce` makes and binds them, and
:class:`_ReduceLoop` polls them, hands each message to the stage and, on
its clocks, asks it for the index and the progress report.  Kept apart so
that the decisions are read (and tested) without the loop, and the loop
without the decisions; the dependency is one-way (this module imports
:mod:`metropc.stage.reduce`, never the reverse).
"""

from __future__ import annotations

import time
from time import perf_counter

import zmq

from .. import endpoints
from ..error import ProtocolError
from ..messages import OP_ANNOUNCE, OP_ARESULT, OP_INPUTS, OP_VSTATS, OP_WANT
from ..security import secure
from ..transport import readable
from .common import (OP_ABORT, OP_ACTION, OP_COMMIT, OP_CONTEXT, OP_ERROR, OP_HELLO, OP_INDEX,
                     OP_LOST, OP_PARAMS, OP_PROGRESS, OP_RESULT, OP_STATS, OP_STOP, make_socket,
                     recv, recv_messages, send, stop_signals_held)
from .progress import PROGRESS_INTERVAL, ProgressClock
from .reduce import ReduceStage
from .supervisor import STAGE_REFUSED

__all__ = ["run_reduce"]

#: Milliseconds the output may take, on stop, to send what it was given.
OUTPUT_LINGER_MS = 500
#: How often the index is published without being asked (seconds).
INDEX_INTERVAL = 1.0
#: Bytes a message to the output (a subscription) may have.
MAX_SUBSCRIPTION = 64 * 1024


def run_reduce(control_addr, reduce_addr, output_addr, output_hwm=100,
               reorder_window=4096, reorder_timeout=10.0, zmq_context=None, keys=None,
               async_addr=None):
    """Run the REDUCE stage until told to stop; returns an exit code.

    `async_addr`: where the ASYNC stage (metropc.stage.async_stage) connects
    for the newest inputs of its views (a private ipc socket of this host).
    """
    zctx = zmq_context or zmq.Context()
    control = results = output = link = auth = None
    try:
        with stop_signals_held():  # all that is made here, `finally` releases
            secure_server, secure_client, auth = secure(zctx, keys)
            control = make_socket(zctx, zmq.DEALER, identity=b"reduce")
            results = make_socket(zctx, zmq.PULL)
            output = make_socket(zctx, zmq.XPUB, hwm=output_hwm)
            link = make_socket(zctx, zmq.ROUTER) if async_addr else None
        # What clients send the output is subscriptions (topic prefixes): a
        # peer sending a bigger message is cut off by ZeroMQ before it is
        # buffered (one 100 MB "subscription" took REDUCE to 11 GB).
        output.maxmsgsize = MAX_SUBSCRIPTION
        secure_client(control)
        secure_server(results)
        secure_server(output)
        endpoints.connect(control, control_addr)
        binds = [(results, reduce_addr), (output, output_addr)]
        if link is not None:
            binds.append((link, async_addr))
        for sock, addr in binds:
            try:
                endpoints.bind(sock, addr)
            except zmq.ZMQError as e:  # one clear line, not a traceback
                control.linger = 1000  # let the report reach the frontend
                send(control, OP_ERROR, {"msg": f"[reduce] cannot bind {addr}: {e}"})
                return STAGE_REFUSED
        stage = ReduceStage(control, output, reorder_window, reorder_timeout)
        stage.async_feed.socket = link
        send(control, OP_HELLO, {"stage": "reduce",
                                 "output_addr": output.last_endpoint.decode(),
                                 "reduce_addr": results.last_endpoint.decode()})
        _ReduceLoop(stage, control, results, output, link).run()
        return 0
    except (KeyboardInterrupt, zmq.ContextTerminated):
        return 0
    finally:
        for sock in (control, results, output, link):
            if sock is not None:
                # The output's last results may still be on their way out
                # (ZeroMQ's I/O thread sends them a moment after us): a
                # pipeline that drained (Pipeline.drain) stops only then.
                # (The others by their own linger: 0, or a moment for a
                # report about to go, such as "cannot bind".)
                sock.close(OUTPUT_LINGER_MS if sock is output else None)
        if auth is not None:
            auth.stop()
        if zmq_context is None:
            zctx.term()


class _ReduceLoop:
    """Polls REDUCE's sockets and hands what comes to :class:`ReduceStage`.

    A message that is malformed, or fails in its handler, is logged once
    per kind and dropped: no input ends this stage.
    """

    def __init__(self, stage, control, results, output, link=None):
        self.stage, self.control, self.results, self.output = stage, control, results, output
        self.link = link  # the ASYNC stage's socket (ROUTER), or None
        self.handlers = {OP_CONTEXT: stage.on_context, OP_COMMIT: stage.on_commit,
                         OP_ABORT: stage.on_abort, OP_PARAMS: stage.on_params,
                         OP_ACTION: stage.on_action, OP_LOST: stage.on_lost,
                         OP_STATS: stage.on_stats, OP_ANNOUNCE: stage.on_announce,
                         OP_INDEX: lambda data: stage.publish_index()}
        self.rejected = stage.rejected
        self.results_polled = True

    def run(self):
        stage = self.stage
        poller = zmq.Poller()
        for sock in (self.control, self.results, self.output):  # output: subscriptions
            poller.register(sock, zmq.POLLIN)
        if self.link is not None:
            poller.register(self.link, zmq.POLLIN)
        next_index = time.monotonic() + INDEX_INTERVAL
        progress_clock = ProgressClock()
        while True:
            wait = next_index - time.monotonic()
            deadline = stage.buffer.deadline()
            if deadline is not None:
                wait = min(wait, deadline)
            if stage.slots.pending or stage.takeover.doubtful:  # look again soon
                wait = min(wait, 0.05)
            results_polled = not stage.awaiting_clients()
            if results_polled != self.results_polled:
                (poller.register if results_polled else poller.unregister)(self.results)
                self.results_polled = results_polled
                if results_polled:  # the clients are back: what waited goes out
                    stage._resume()
            if not results_polled:
                wait = min(wait, 0.05)
            elif stage.buffer.doubts_unarmed:
                wait = min(wait, 0.01)  # (armed once the results socket is empty)
            if stage.progress_pending or progress_clock.pending:
                wait = min(wait, progress_clock.wait(time.monotonic()))
            ready = dict(poller.poll(max(0, int(wait * 1000)) + 1))
            t0 = perf_counter()
            if self.results in ready:
                count = self.drain_results()
                stage.output.flush()  # out before the bookkeeping below (72 us cold)
                progress_clock.published(time.monotonic(), count)
            if self.output in ready and stage.output.read_subscriptions():
                stage.publish_status()  # a new client learns at once what we offer
            if self.control in ready and self.on_control():
                return
            if self.link is not None:
                if self.link in ready:
                    self.on_link()
                self.send_async_inputs()
            if results_polled and stage.buffer.doubts_unarmed:
                self.arm_doubts()
            stage.flush()
            stage.check_stalled()
            stage.check_doubtful()
            stage.release_slots()
            stage.output.flush()  # the batches this round filled
            stage.obs.busy += perf_counter() - t0
            now = time.monotonic()
            if progress_clock.due(now):
                progress = stage.progress()
                if progress is not None:
                    send(self.control, OP_PROGRESS, progress)
                progress_clock.reported(now)
            if now >= next_index:
                stage.publish_index()
                stage.slots.prune()
                next_index = time.monotonic() + INDEX_INTERVAL

    def on_link(self, limit=16):
        """Messages of the ASYNC stage: it wants inputs, or sends results."""
        for _ in range(limit):
            try:
                ident, opcode, data = recv(self.link, identity=True, flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            except ProtocolError as e:
                self.rejected(b"async", e)
                continue
            if opcode in (OP_WANT, OP_ARESULT):
                self.guarded(opcode, lambda d: self.stage.on_async(ident, opcode, d), data)

    def send_async_inputs(self):
        """The newest inputs, if the ASYNC stage asked and there is news."""
        message = self.stage.async_inputs_message()
        if message is not None:
            peer, data = message
            try:
                send(self.link, OP_INPUTS, data, prefix=[peer], flags=zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # it went away; it asks again when it is back
            except Exception as e:  # noqa: BLE001 - an input that cannot be sent
                self.rejected(b"inputs", e)

    def drain_results(self, limit=256) -> int:
        """Take the results waiting (at most `limit` messages, and for half a
        progress interval: let control in, and report progress on time, as
        a replacement REDUCE starts from the last report and counts every
        event after it lost); returns how many results there were."""
        count = 0
        until = perf_counter() + PROGRESS_INTERVAL / 2
        for _ in range(limit):
            try:
                results = []
                for opcode, data in recv_messages(self.results, zmq.NOBLOCK):
                    if opcode == OP_RESULT:
                        results.append(data)
                    elif opcode == OP_VSTATS:
                        self.guarded(opcode, self.stage.on_vstats, data)
                if results:
                    count += len(results)
                    self.stage.on_results(results, self.reject_result)
            except zmq.Again:
                break
            except ProtocolError as e:
                self.rejected(b"result", e)
            if not readable(self.results) or perf_counter() > until:
                break  # (readable: a third of the cost of poll(0))
        return count

    def arm_doubts(self):
        """A killed worker's last results are either read by now or never
        come: once nothing waits on the results socket (a backlog of
        seconds would otherwise count results that are there as lost),
        they get their grace."""
        if not readable(self.results):  # (stage.flush() then releases what is over)
            self.stage.buffer.arm_doubts()

    def reject_result(self, error):
        self.rejected(OP_RESULT, error)

    def on_control(self):
        """Handle one control message; True to stop."""
        try:
            opcode, data = recv(self.control)
        except ProtocolError as e:
            self.rejected(b"control", e)
            return False
        if opcode == OP_STOP:
            return True
        handler = self.handlers.get(opcode)
        if handler is not None:
            self.guarded(opcode, handler, data)
        return False

    def guarded(self, opcode, handler, data):
        try:
            handler(data)
        except Exception as e:  # noqa: BLE001 - no message may end this stage
            self.rejected(opcode, e)

"""The frontend API: start a pipeline and feed it, as EXtra-foam does.

::

    class MyPipeline(ThreadedFrontend):
        def on_pipeline_ready(self, reduce_addr, output_addr): ...
        def on_pipeline_error(self, msg): print(msg)

    pipe = MyPipeline(control_addr=..., reduce_addr=..., output_addr=...,
                      queue_addr="inproc://q", num_pool_stages=2,
                      sr_cls=ProcessRunner)
    pipe.queue_to_all(b"context", Context(source, version=1).to_dict())
    pipe.queue_to_any(b"event", {"internal#train_id": 1, ...})

Constructing a :class:`ThreadedFrontend` starts the stages and one
background thread that owns every socket of the frontend.  The ``queue_*``
methods may be called from any thread: they put the message into a queue
and wake that thread.  Events wait in a bounded queue; when the pool is
slower than the source, the drop policy decides which events are lost, and
they are counted in the index (``internal#dropped_events``).
"""

from __future__ import annotations

import collections
import inspect
import itertools
import logging
import os
import shutil
import tempfile
import threading
import time

import zmq

from .core import Context
from .error import ContextError, ProtocolError
from .protocol import decode_protocol, encode_protocol
from .stage.common import (OP_CONTEXT, OP_CREDIT, OP_DEBUG, OP_ERROR, OP_EVENT,
                           KEY_STEP, OP_HELLO, OP_STATS, OP_STEP, OP_STOP, SEQ_PATH,
                           make_socket, recv, remove_ipc_file, send)
from .stage.pool import run_pool
from .stage.reduce import run_reduce
from .stage.runner import ProcessRunner, StageRunner, ThreadRunner

__all__ = ["ThreadedFrontend", "ProcessRunner", "ThreadRunner", "StageRunner",
           "Context", "ContextError", "encode_protocol", "decode_protocol",
           "DROP_OLDEST", "DROP_NEWEST"]

log = logging.getLogger(__name__)

DROP_OLDEST = "oldest"
DROP_NEWEST = "newest"
_instances = itertools.count()


class ThreadedFrontend:
    """A pipeline frontend running in a background thread.

    Parameters
    ----------
    control_addr, reduce_addr, output_addr, queue_addr : str, optional
        ZeroMQ endpoints: control (frontend ROUTER, stages connect), reduce
        (REDUCE's PULL, pool workers connect), output (REDUCE's PUB, clients
        connect), queue (inproc wake-up of the frontend thread).  Left out,
        they are ``ipc://`` sockets in a private temporary directory and
        output is ``tcp://127.0.0.1`` on a free port.
    num_pool_stages : int
        Number of POOL workers.
    sr_cls : type
        ``ProcessRunner`` (default) or ``ThreadRunner``.
    queue_size : int
        Events that may wait for a free worker before the drop policy applies.
    drop_policy : ``'oldest'`` or ``'newest'``
        Which event to drop when the queue is full: ``'oldest'`` (default)
        keeps the display current; ``'newest'`` keeps what already waits.
    prefetch : int
        Events each worker may hold at once.
    output_hwm : int
        Messages the output socket queues per client before dropping.
    reorder_timeout : float
        Seconds REDUCE waits for a missing event before giving it up.
    """

    def __init__(self, control_addr=None, reduce_addr=None, output_addr=None,
                 queue_addr=None, num_pool_stages=2, sr_cls=ProcessRunner, *,
                 queue_size=16, drop_policy=DROP_OLDEST, prefetch=4, output_hwm=100,
                 reorder_timeout=1.0, stats_interval=1.0):
        if drop_policy not in (DROP_OLDEST, DROP_NEWEST):
            raise ValueError(f"drop_policy must be 'oldest' or 'newest', not {drop_policy!r}")
        self._tmpdir = None
        if control_addr is None or reduce_addr is None:
            self._tmpdir = tempfile.mkdtemp(prefix="metropc-")
            os.chmod(self._tmpdir, 0o700)
        self.control_addr = control_addr or f"ipc://{self._tmpdir}/control"
        self.reduce_addr = reduce_addr or f"ipc://{self._tmpdir}/reduce"
        self.output_addr = output_addr or "tcp://127.0.0.1:*"
        self.queue_addr = queue_addr or f"inproc://metropc-queue-{next(_instances)}"
        self.num_pool_stages = int(num_pool_stages)
        self.sr_cls = sr_cls
        self.drop_policy = drop_policy
        self.prefetch = prefetch
        self.stats_interval = stats_interval
        self.dropped = 0
        self.ready = threading.Event()

        self._zctx = zmq.Context()
        self._events = collections.deque()
        self._queue_size = queue_size
        self._control = collections.deque()
        self._enqueued = 0
        self._wake_pending = False
        self._lock = threading.Lock()
        self._stopping = False
        self._stage_kwargs = dict(output_hwm=output_hwm, reorder_timeout=reorder_timeout)

        # Bind the wake-up socket before anyone can queue.
        self._wake_pull = make_socket(self._zctx, zmq.PULL)
        self._wake_pull.bind(self.queue_addr)
        self._wake_push = make_socket(self._zctx, zmq.PUSH, hwm=1)
        self._wake_push.connect(self.queue_addr)
        self._router = make_socket(self._zctx, zmq.ROUTER)
        self._router.router_mandatory = True
        self._router.bind(self.control_addr)
        self.control_addr = self._router.last_endpoint.decode()

        self._runners = self._make_runners()
        self._thread = threading.Thread(target=self._loop, name="metropc-frontend",
                                        daemon=True)
        self._thread.start()

    # -- callbacks to override -----------------------------------------------------
    def on_pipeline_ready(self, reduce_addr, output_addr):
        """All stages are up; `output_addr` is where clients connect."""

    def on_pipeline_error(self, msg):
        """A recoverable error: a view failed, a context was refused, ..."""
        log.error("%s", msg)

    def on_pipeline_panic(self, msg):
        """An unrecoverable error: a stage died."""
        log.critical("%s", msg)

    def on_pipeline_debug(self, msg):
        """Chatty diagnostics."""
        log.debug("%s", msg)

    # -- API (any thread) --------------------------------------------------------------
    def queue_to_any(self, opcode, data=None):
        """Send one message (an event) to whichever POOL worker is free."""
        with self._lock:
            if len(self._events) >= self._queue_size:
                self.dropped += 1
                if self.drop_policy == DROP_NEWEST:
                    return False
                self._events.popleft()
            self._events.append((self._enqueued, opcode, data or {}))
            self._enqueued += 1
            self._wake()
        return True

    def queue_to_all(self, opcode, data=None):
        """Send one message to every stage (``b"context"``, ``b"params"``)."""
        self._queue_control("all", opcode, data)

    def queue_to(self, stage, opcode, data=None):
        """Send one message to ``'reduce'``, ``'pool'`` (all workers) or ``'pool-N'``."""
        if stage not in ("reduce", "pool") and not str(stage).startswith("pool-"):
            raise ValueError(f"unknown stage {stage!r}; use 'reduce', 'pool' or 'pool-N'")
        self._queue_control(stage, opcode, data)

    def step(self):
        """Mark an operator step boundary after the events queued so far."""
        self.queue_to("reduce", OP_STEP)

    def wait_ready(self, timeout=None):
        """Block until the pipeline is ready; returns False on timeout."""
        return self.ready.wait(timeout)

    def close(self, timeout=5.0):
        """Stop every stage (within `timeout` seconds) and release resources."""
        if self._stopping:
            return
        self._stopping = True
        with self._lock:
            self._wake()
        self._thread.join(timeout)
        for runner in self._runners.values():
            runner.join(max(0.1, timeout / 4))
            if runner.is_alive():
                runner.stop()
        for sock in (self._wake_push, self._wake_pull, self._router):
            sock.close(0)
        self._zctx.term()
        for addr in (self.control_addr, self.reduce_addr, self.output_addr):
            remove_ipc_file(addr)
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)

    # -- internals -------------------------------------------------------------------------
    def _wake(self):
        """Wake the frontend thread (called with the lock held).

        One wake-up message is enough until the thread has drained it, so
        a busy source does not pay a socket send per event.
        """
        if self._wake_pending:
            return
        self._wake_pending = True
        try:
            self._wake_push.send(b"", zmq.NOBLOCK)
        except zmq.Again:
            pass  # a wake-up is already on its way

    def _queue_control(self, target, opcode, data):
        with self._lock:
            # Applies after every event queued before it, as the caller expects.
            self._control.append((self._enqueued, target, opcode, data or {}))
            self._wake()

    def _make_runners(self):
        extra = {}
        if self.sr_cls.shares_context:
            extra["zmq_context"] = self._zctx
        runners = {"reduce": self.sr_cls(run_reduce, dict(
            control_addr=self.control_addr, reduce_addr=self.reduce_addr,
            output_addr=self.output_addr, **self._stage_kwargs, **extra), "reduce")}
        for i in range(self.num_pool_stages):
            runners[f"pool-{i}"] = self.sr_cls(run_pool, dict(
                control_addr=self.control_addr, reduce_addr=self.reduce_addr, index=i,
                prefetch=self.prefetch, **extra), f"pool-{i}")
        for runner in runners.values():
            runner.start()
        return runners

    def _call_ready(self):
        try:
            params = inspect.signature(self.on_pipeline_ready).parameters
        except (TypeError, ValueError):
            params = {}
        if len(params) >= 2:
            self.on_pipeline_ready(self.reduce_addr, self.output_addr)
        else:  # the older single-argument form EXtra-foam overrides
            self.on_pipeline_ready()

    def _loop(self):
        state = _LoopState(self)
        try:
            state.run()
        except Exception as e:  # noqa: BLE001 - the frontend thread must report
            log.exception("frontend loop failed")
            self.on_pipeline_panic(f"frontend loop failed: {type(e).__name__}: {e}")
        finally:
            state.shutdown()


class _LoopState:
    """The frontend thread's bookkeeping; only that thread touches it."""

    def __init__(self, fe):
        self.fe = fe
        self.credits = collections.Counter()
        self.hello = set()
        self.seq = 0
        self.version = None
        self.input_counts = collections.Counter()
        self.input_prev = {}
        self.stats_t = time.monotonic()
        self.dropped_prev = 0

    def run(self):
        fe = self.fe
        poller = zmq.Poller()
        poller.register(fe._router, zmq.POLLIN)
        poller.register(fe._wake_pull, zmq.POLLIN)
        next_stats = time.monotonic() + fe.stats_interval
        next_check = 0.0
        while not fe._stopping:
            ready = dict(poller.poll(100))
            if fe._wake_pull in ready:
                with fe._lock:
                    fe._wake_pending = False
                    while True:
                        try:
                            fe._wake_pull.recv(zmq.NOBLOCK)
                        except zmq.Again:
                            break
            if fe._router in ready:
                self.drain_stage_messages()
            now = time.monotonic()
            if now >= next_check:
                self.check_stages()
                next_check = now + 0.25
            if fe.ready.is_set():
                self.dispatch()
                if time.monotonic() >= next_stats:
                    self.send_stats()
                    next_stats = time.monotonic() + fe.stats_interval

    def drain_stage_messages(self, limit=1000):
        for _ in range(limit):
            try:
                self.on_stage_message(zmq.NOBLOCK)
            except zmq.Again:
                return

    def on_stage_message(self, flags=0):
        fe = self.fe
        try:
            ident, opcode, data = recv(fe._router, identity=True, flags=flags)
        except ProtocolError as e:
            log.warning("frontend: rejected malformed stage message: %s", e)
            return
        name = ident.decode(errors="replace")
        if opcode == OP_CREDIT:
            self.credits[name] += int(data.get("n", 1))
        elif opcode == OP_ERROR:
            fe.on_pipeline_error(str(data.get("msg")))
        elif opcode == OP_DEBUG:
            fe.on_pipeline_debug(str(data.get("msg")))
        elif opcode == OP_HELLO:
            self.hello.add(name)
            if name == "reduce":
                fe.output_addr = data.get("output_addr", fe.output_addr)
            if not fe.ready.is_set() and self.hello >= set(fe._runners):
                fe.ready.set()
                fe._call_ready()

    def check_stages(self):
        fe = self.fe
        for name, runner in fe._runners.items():
            if not runner.is_alive() and not getattr(runner, "_reported", False):
                runner._reported = True
                fe.on_pipeline_panic(f"stage {name} died (exit code {runner.exitcode})")

    def send_to(self, name, opcode, data):
        try:
            send(self.fe._router, opcode, data, prefix=[name.encode()])
        except zmq.ZMQError as e:  # EHOSTUNREACH: that stage is gone
            log.warning("frontend: cannot reach %s: %s", name, e)

    def dispatch(self):
        """Send queued control messages and events, in the order queued."""
        fe = self.fe
        pools = [n for n in fe._runners if n.startswith("pool-")]
        while True:
            with fe._lock:
                control = fe._control[0] if fe._control else None
                event_first = fe._events and (
                    control is None or fe._events[0][0] < control[0])
                if not event_first:
                    if control is None:
                        return
                    fe._control.popleft()
            if not event_first and control[2] != OP_STEP:
                self.send_control(*control[1:])
                continue
            if not event_first:
                # A step boundary travels like an event through a worker, so
                # REDUCE sees it exactly between the events around it.
                worker = next((n for n in pools if self.credits[n] > 0), None)
                if worker is None:
                    with fe._lock:
                        fe._control.appendleft(control)
                    return
                self.credits[worker] -= 1
                self.send_to(worker, OP_EVENT, {SEQ_PATH: self.seq, KEY_STEP: True})
                self.seq += 1
                continue
            worker = next((n for n in pools if self.credits[n] > 0), None)
            if worker is None:
                return
            with fe._lock:
                if not fe._events:
                    continue
                _, opcode, data = fe._events.popleft()
            if opcode == OP_EVENT:
                data = dict(data)
                data[SEQ_PATH] = self.seq
                self.seq += 1
                if self.version is not None:
                    data.setdefault("internal#ctx_version", self.version)
                self.input_counts.update(k for k in data if k != SEQ_PATH)
            self.credits[worker] -= 1
            pools.append(pools.pop(pools.index(worker)))  # round robin among free
            self.send_to(worker, opcode, data)

    def send_control(self, target, opcode, data):
        fe = self.fe
        if opcode == OP_CONTEXT:
            self.version = data.get("version")
            data = {"ctx": data, "from_seq": self.seq}
        if target == "all":
            names = list(fe._runners)
        elif target == "pool":
            names = [n for n in fe._runners if n.startswith("pool-")]
        else:
            names = [target]
        for name in names:
            self.send_to(name, opcode, data)

    def send_stats(self):
        fe = self.fe
        now = time.monotonic()
        dt = max(1e-6, now - self.stats_t)
        stats = {k: (int(v), (v - self.input_prev.get(k, 0)) / dt)
                 for k, v in self.input_counts.items()}
        stats["internal#dropped_events"] = (fe.dropped, (fe.dropped - self.dropped_prev) / dt)
        self.input_prev = dict(self.input_counts)
        self.dropped_prev = fe.dropped
        self.stats_t = now
        self.send_to("reduce", OP_STATS, stats)

    def shutdown(self):
        for name in self.fe._runners:
            self.send_to(name, OP_STOP, {})

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

With POOL workers on this host (``ProcessRunner``), large arrays travel to
the workers, and large results to REDUCE, in shared-memory slots instead
of socket messages (:mod:`metropc.stage.shm`, docs/shm.md).
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
from .security import secure
from .stage import shm as shmem
from .stage.common import (OP_ABORT, OP_COMMIT, OP_CONTEXT, OP_CREDIT, OP_CTX_FAILED,
                           OP_CTX_READY, OP_DEBUG, OP_ERROR, OP_EVENT,
                           KEY_SHM, KEY_STEP, OP_HELLO, OP_LOST, OP_PARAMS, OP_SHM, OP_STATS,
                           OP_STEP, OP_STOP, SEQ_PATH,
                           has_large_value, make_socket, recv, remove_ipc_file, send,
                           send_batch)
from .transport import ZERO_COPY_MIN, readable
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
    event_timeout : float or None
        Seconds a worker may spend per event before it is stopped and
        replaced (a hung or runaway view); None disables the check.
    keys : str, optional
        A key directory (``metropc-keys DIR``): every socket is secured with
        CURVE, so only holders of the keys can connect.  Required for
        addresses other hosts can reach (see docs/operations.md).
    reorder_timeout : float
        Seconds REDUCE waits for a missing event before giving it up (a
        safety net: events of a worker that died are announced at once).
    shm : bool or None
        Move large arrays to local POOL workers, and large results to
        REDUCE, through shared-memory slots (docs/shm.md).  None (default):
        on with ``ProcessRunner``, off with ``ThreadRunner``.  Workers on
        other hosts (``metropc-worker``) always get arrays by socket.
    shm_size : int or None
        Bytes of shared memory (half for events, half for results); None:
        min(1 GiB, RAM / 8, half the free space of /dev/shm); 0: off.
    shm_threshold : int
        Arrays of this many bytes or more travel in slots (default 64 KiB).
    """

    def __init__(self, control_addr=None, reduce_addr=None, output_addr=None,
                 queue_addr=None, num_pool_stages=2, sr_cls=ProcessRunner, *,
                 queue_size=16, drop_policy=DROP_OLDEST, prefetch=4, output_hwm=100,
                 reorder_timeout=10.0, event_timeout=30.0, stats_interval=1.0, keys=None,
                 shm=None, shm_size=None, shm_threshold=shmem.DEFAULT_THRESHOLD):
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
        self.lost_events = 0
        self.restarts = collections.Counter()
        self.event_timeout = event_timeout
        self.ready = threading.Event()
        #: Set when a stage kept dying and was given up.
        self.failed = threading.Event()

        self._zctx = zmq.Context()
        self._events = collections.deque()
        self._queue_size = queue_size
        self._control = collections.deque()
        self._enqueued = 0
        self._wake_pending = False
        self._lock = threading.Lock()
        self._stopping = False
        self._stage_kwargs = dict(output_hwm=output_hwm, reorder_timeout=reorder_timeout,
                                  keys=keys)

        # Bind the wake-up socket before anyone can queue.
        self._wake_pull = make_socket(self._zctx, zmq.PULL)
        self._wake_pull.bind(self.queue_addr)
        self._wake_push = make_socket(self._zctx, zmq.PUSH, hwm=1)
        self._wake_push.connect(self.queue_addr)
        self.keys = keys
        secure_server, _, self._auth = secure(self._zctx, keys)
        self._router = make_socket(self._zctx, zmq.ROUTER)
        secure_server(self._router)
        self._router.router_mandatory = True
        self._router.router_handover = True  # a replacement stage takes over its name
        self._router.bind(self.control_addr)
        self.control_addr = self._router.last_endpoint.decode()

        self.shm = None
        try:
            self._open_shm(shm, shm_size, shm_threshold)
            self._runners = self._make_runners()
        except BaseException:
            if self.shm is not None:
                self.shm.close()
            raise
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
        """Block until the pipeline is ready; False on timeout or if a stage
        could not start (see ``on_pipeline_panic``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.ready.wait(0.1):
            if self.failed.is_set():
                return False
            if deadline is not None and time.monotonic() >= deadline:
                return False
        return True

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
        if self._auth is not None:
            self._auth.stop()
        self._zctx.term()
        if self.shm is not None:
            self.shm.close(unmap=not self._thread.is_alive())
        for addr in (self.control_addr, self.reduce_addr, self.output_addr):
            remove_ipc_file(addr)
        if self._tmpdir:
            # A stage stopped while starting may still have been creating its
            # socket file as the directory went: try again briefly.
            deadline = time.monotonic() + 1.0
            while True:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
                if not os.path.exists(self._tmpdir) or time.monotonic() > deadline:
                    break
                time.sleep(0.02)

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

    def _open_shm(self, shm, size, threshold):
        """Create the shared-memory segments, if they are to be used."""
        shmem.cleanup_stale()  # whatever a killed frontend left behind
        if shm is None:
            shm = self.sr_cls.can_stop and not self.sr_cls.shares_context
        if not shm or self.num_pool_stages < 1 or not shmem.available():
            return
        size = shmem.default_size() if size is None else int(size)
        if size < 2 * shmem.MIN_SEGMENT:
            return
        try:
            self.shm = shmem.FrontendSlots(size, threshold, self.num_pool_stages)
        except OSError as e:
            log.warning("shared memory unavailable, arrays go by socket: %s", e)

    def _make_runners(self):
        names = ["reduce"] + [f"pool-{i}" for i in range(self.num_pool_stages)]
        runners = {name: self._make_runner(name) for name in names}
        runners["reduce"].start()
        if not self._reduce_addr_pending():
            self._start_pools(runners)
        return runners

    def _reduce_addr_pending(self):
        """A tcp reduce address with a wildcard port is known once REDUCE binds."""
        return self.reduce_addr.startswith("tcp://") and (
            self.reduce_addr.endswith(":*") or self.reduce_addr.endswith(":0"))

    def _start_pools(self, runners):
        for name, runner in runners.items():
            if name != "reduce":
                runner.kwargs["reduce_addr"] = self.reduce_addr
                runner.start()

    def _make_runner(self, name):
        """A (not yet started) runner for stage `name` ('reduce' or 'pool-N')."""
        extra = {}
        if self.sr_cls.shares_context:
            extra["zmq_context"] = self._zctx
        if name == "reduce":
            # A restarted REDUCE binds the address clients already use.
            return self.sr_cls(run_reduce, dict(
                control_addr=self.control_addr, reduce_addr=self.reduce_addr,
                output_addr=self.output_addr, **self._stage_kwargs, **extra), name)
        if self.shm is not None:
            extra["shm"] = {"in": self.shm.input_name, "out": self.shm.new_output(name),
                            "threshold": self.shm.threshold}
        return self.sr_cls(run_pool, dict(
            control_addr=self.control_addr, reduce_addr=self.reduce_addr, name=name,
            prefetch=self.prefetch, keys=self.keys, **extra), name)

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
        state = self._state = _LoopState(self)
        try:
            state.run()
        except Exception as e:  # noqa: BLE001 - the frontend thread must report
            log.exception("frontend loop failed")
            self.on_pipeline_panic(f"frontend loop failed: {type(e).__name__}: {e}")
        finally:
            state.shutdown()


#: Most small events sent to a worker in one message.
BATCH_MAX = 32
#: Most bytes of shared-memory slots referred to by one worker message.
SHM_BATCH_BYTES = 8 << 20
#: Most bytes of shared-memory slots one worker holds at once (beyond one
#: event): keeps the memory each process touches, and the events a worker
#: sits on, small.
SHM_WORKER_BYTES = 32 << 20
#: Events are batched only up to about this much work per message (measured
#: per event in the workers), so that slow views get one event per message:
#: work spreads evenly over the pool, and an overloaded pipeline keeps what
#: it shows current.
BATCH_SECONDS = 0.005
#: Seconds the stages get to build a new context before it is refused.
RELOAD_TIMEOUT = 30.0
#: A stage that dies this often within RESTART_WINDOW seconds is not restarted.
RESTART_LIMIT = 5
RESTART_WINDOW = 60.0
#: Seconds without a heartbeat after which a remote worker is gone.
REMOTE_SILENCE = 5.0


def batch_limit(event_cost):
    """Most events per worker message when each takes `event_cost` seconds.

    About BATCH_SECONDS of work, at least one event, at most BATCH_MAX.
    """
    return max(1, min(BATCH_MAX, int(BATCH_SECONDS / max(event_cost, 1e-9))))


class _Reload:
    """A context the stages are building (first phase of a reload)."""

    def __init__(self, data, stages):
        self.data = data
        self.version = data.get("version")
        self.waiting = set(stages)
        self.ready = set()
        self.failures = []
        self.started = time.monotonic()


class _LoopState:
    """The frontend thread's bookkeeping; only that thread touches it."""

    def __init__(self, fe):
        self.fe = fe
        self.credits = collections.Counter()
        self.turn = 0           # round-robin position among workers with credit
        self.outstanding = {}   # worker -> deque of (sent time, [seq, ...]) per message
        self.busy_since = {}    # worker -> when it started its oldest message
        self.last_context = None
        self.restart_times = {}  # stage -> recent restart times
        self.given_up = set()    # stages that kept dying: not restarted
        self.ever_ready = set()  # stages that said hello at least once
        self.remote = {}        # workers started elsewhere -> last time heard from
        self.reload = None      # a context being prepared by the stages
        self.params = {}
        self.hello = set()
        self.seq = 0
        self.version = None
        self.input_counts = collections.Counter()
        self.key_sets = collections.Counter()  # tuple of an event's paths -> events
        self.pools = None         # cached pool_names()
        self.input_prev = {}
        self.stats_t = time.monotonic()
        self.dropped_prev = 0
        self.shm_workers = set()  # local workers that mapped the shared memory
        self.shm_prev = {}
        self.shm_waiting = None   # the event that waits for a free slot
        # Seconds per event in a worker (moving average); unknown at first,
        # so assume slow: the first events go one per message.
        self.event_cost = BATCH_SECONDS

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
        router = self.fe._router
        for i in range(limit):
            if i and not readable(router):  # the poll said the first is there
                return
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
        if name.endswith("#hb"):  # a worker's heartbeat socket
            worker = name[:-3]
            if worker in self.remote:
                self.remote[worker] = time.monotonic()
            return
        if name in self.remote:
            self.remote[name] = time.monotonic()
        if opcode == OP_CREDIT:
            if "free" in data and fe.shm is not None:
                fe.shm.release(name, data["free"])
            if "n" in data:  # initial credit (or a late slot release): nothing acknowledged
                self.credits[name] += int(data["n"])
            else:  # one message done
                self.credits[name] += 1
                batches = self.outstanding.get(name)
                now = time.monotonic()
                if batches:
                    sent, seqs = batches.popleft()
                    took = now - max(sent, self.busy_since.get(name, 0.0))
                    self.event_cost += 0.2 * (took / max(1, len(seqs)) - self.event_cost)
                self.busy_since[name] = now
        elif opcode == OP_ERROR:
            fe.on_pipeline_error(str(data.get("msg")))
        elif opcode in (OP_CTX_READY, OP_CTX_FAILED):
            reload = self.reload
            if reload is not None and data.get("version") == reload.version:
                reload.waiting.discard(name)
                if opcode == OP_CTX_FAILED:
                    reload.failures.append(f"[{name}] {data.get('msg')}")
                else:
                    reload.ready.add(name)
                self.finish_reload()
        elif opcode == OP_DEBUG:
            fe.on_pipeline_debug(str(data.get("msg")))
        elif opcode == OP_HELLO:
            self.ever_ready.add(name)
            if name not in fe._runners:
                if not name.startswith("pool-"):
                    log.warning("frontend: ignoring hello from unknown stage %r", name)
                    return
                # A worker started elsewhere (metropc-worker) joins the pool.
                fe.on_pipeline_debug(f"remote worker {name} joined")
                log.info("remote worker %s joined", name)
                self.remote[name] = time.monotonic()
                self.pools = None
            self.hello.add(name)
            if data.get("shm") and fe.shm is not None and name in fe._runners:
                self.shm_workers.add(name)
            else:
                self.shm_workers.discard(name)
            if name == "reduce":
                fe.output_addr = data.get("output_addr", fe.output_addr)
                if fe._reduce_addr_pending():
                    fe.reduce_addr = data.get("reduce_addr", fe.reduce_addr)
                    fe._start_pools(fe._runners)
            if not fe.ready.is_set():
                if self.hello >= set(fe._runners):
                    fe.ready.set()
                    fe._call_ready()
            else:
                self.bring_up_to_date(name)

    def finish_reload(self, timed_out=False):
        """Commit the prepared context everywhere, or abort it everywhere."""
        reload = self.reload
        if reload.waiting and not timed_out:
            return
        self.reload = None
        fe = self.fe
        if reload.failures or timed_out:
            why = "; ".join(reload.failures) or (
                "no answer from " + ", ".join(sorted(reload.waiting)))
            for name in self.stage_names():
                self.send_to(name, OP_ABORT, {"version": reload.version})
            fe.on_pipeline_error(f"context version {reload.version} refused, the "
                                 f"previous one keeps running: {why}")
            return
        self.version = reload.version
        self.last_context = reload.data
        self.event_cost = max(self.event_cost, BATCH_SECONDS)  # new views: measure anew
        self.params = {}  # the new context brings its own values
        for name in self.stage_names():
            if name in reload.ready:
                self.send_to(name, OP_COMMIT, {"version": reload.version,
                                               "from_seq": self.seq})
            else:  # a replacement started meanwhile: give it the context whole
                self.send_to(name, OP_CONTEXT, {"ctx": reload.data, "from_seq": self.seq})

    def bring_up_to_date(self, name):
        """A replacement stage gets the running context and parameters."""
        if self.last_context is not None:
            data = {"ctx": self.last_context, "from_seq": self.seq}
            if name == "reduce":
                # Continue with the oldest event a worker still holds.
                held = [seq for batches in self.outstanding.values()
                        for _, seqs in batches for seq in seqs]
                data["start_seq"] = min(held, default=self.seq)
            self.send_to(name, OP_CONTEXT, data)
        if self.params:
            self.send_to(name, OP_PARAMS, dict(self.params))

    def check_stages(self):
        """Replace stages that died; replace workers stuck on one message."""
        fe = self.fe
        now = time.monotonic()
        if self.reload is not None and now - self.reload.started > RELOAD_TIMEOUT:
            self.finish_reload(timed_out=True)
        self.check_remote(now)
        if fe.shm is not None:
            fe.shm.tick()
        for name, runner in list(fe._runners.items()):
            if not runner.started:
                continue
            if not runner.is_alive():
                self.replace(name, f"stage {name} died (exit code {runner.exitcode})")
                continue
            batches = self.outstanding.get(name)
            if fe.event_timeout and batches and runner.can_stop:
                started = max(batches[0][0], self.busy_since.get(name, 0.0))
                if now - started > fe.event_timeout * len(batches[0][1]):
                    runner.stop()
                    self.replace(name, f"stage {name} spent more than {fe.event_timeout:g} s "
                                       f"per event on events {batches[0][1][:5]}; stopped it")

    def stage_names(self):
        return list(self.fe._runners) + list(self.remote)

    def pool_names(self):
        """Names of the POOL workers, local and remote (cached: asked per dispatch)."""
        if self.pools is None:
            self.pools = [n for n in self.stage_names() if n.startswith("pool-")]
        return self.pools

    def check_remote(self, now):
        """Remote workers that went silent are gone: their events are lost."""
        fe = self.fe
        for name, seen in list(self.remote.items()):
            if now - seen > REMOTE_SILENCE:
                del self.remote[name]
                self.pools = None
                self.hello.discard(name)
                self.credits.pop(name, None)
                lost = [seq for _, seqs in self.outstanding.pop(name, ()) for seq in seqs]
                fe.lost_events += len(lost)
                fe.on_pipeline_error(f"remote worker {name} went silent for {now - seen:.0f} s;"
                                     f" {len(lost)} event(s) it held are lost")
                if lost:
                    self.send_to("reduce", OP_LOST, {"seqs": lost})
                if self.reload is not None:
                    self.reload.waiting.discard(name)
                    self.finish_reload()

    def replace(self, name, reason):
        """Start a new stage `name`; report what was lost."""
        fe = self.fe
        if fe._stopping or name in self.given_up:
            return
        if not fe._runners[name].can_stop:  # threads cannot be replaced
            if not getattr(fe._runners[name], "_reported", False):
                fe._runners[name]._reported = True
                fe.on_pipeline_panic(reason)
            return
        now = time.monotonic()
        recent = [t for t in self.restart_times.get(name, []) if now - t < RESTART_WINDOW]
        if len(recent) >= RESTART_LIMIT or (name not in self.ever_ready and
                                            fe.ready.is_set() is False):
            # Crashing at start or in a loop: restarting again will not help.
            if name not in self.given_up:
                self.given_up.add(name)
                fe.failed.set()
                fe.on_pipeline_panic(f"{reason}; it died {len(recent) + 1} times within "
                                     f"{RESTART_WINDOW:g} s (or before starting up), so it "
                                     "is not restarted again")
            return
        self.restart_times[name] = recent + [now]
        self.hello.discard(name)
        self.credits[name] = 0
        self.shm_workers.discard(name)
        if self.reload is not None:
            self.reload.waiting.discard(name)
            self.finish_reload()
        if name == "reduce":
            fe.restarts["reduce"] += 1
            fe.on_pipeline_error(f"{reason}; restarting it: accumulated state (averages, "
                                 "histograms, step data) is lost")
            if fe.shm is not None:
                # The dead REDUCE never frees the result slots it held: every
                # worker gets a fresh results segment.
                for worker in list(fe.shm.outputs):
                    out = fe.shm.new_output(worker)
                    runner = fe._runners.get(worker)
                    if runner is not None and "shm" in runner.kwargs:
                        runner.kwargs["shm"]["out"] = out
                    self.send_to(worker, OP_SHM, {"out": out})
        else:
            lost = [seq for _, seqs in self.outstanding.pop(name, ()) for seq in seqs]
            fe.restarts[name] += 1
            fe.lost_events += len(lost)
            reclaimed = ""
            if fe.shm is not None:
                n = fe.shm.reclaim(name)
                if n:
                    reclaimed = f"; {n} shared-memory slot(s) it held are reclaimed"
            fe.on_pipeline_error(f"{reason}; {len(lost)} event(s) it held are lost{reclaimed}; "
                                 "starting a replacement")
            if lost:
                self.send_to("reduce", OP_LOST, {"seqs": lost})
        runner = fe._make_runner(name)
        fe._runners[name] = runner
        runner.start()

    def send_to(self, name, opcode, data):
        try:
            send(self.fe._router, opcode, data, prefix=[name.encode()])
        except zmq.ZMQError as e:  # EHOSTUNREACH: that stage is gone
            log.warning("frontend: cannot reach %s: %s", name, e)

    def dispatch(self):
        """Send queued control messages and events, in the order queued.

        While a new context is being prepared by the stages nothing moves:
        what was queued after it must run under it (or under the old one if
        it is refused).
        """
        fe = self.fe
        pools = self.pool_names()
        while self.reload is None:
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
                worker = self.free_worker(pools)
                if worker is None:
                    with fe._lock:
                        fe._control.appendleft(control)
                    return
                self.credits[worker] -= 1
                self.track(worker, [self.seq])
                self.send_to(worker, OP_EVENT, {SEQ_PATH: self.seq, KEY_STEP: True})
                self.seq += 1
                continue
            worker = self.free_worker(pools, avoid=self.shm_saturated)
            if worker is None:
                return
            batch, small = self.take_batch(control, worker)
            if not batch:
                return  # the next event waits for a free shared-memory slot
            messages, seqs = [], []
            key_sets, version = self.key_sets, self.version
            for opcode, data in batch:
                if opcode == OP_EVENT:
                    data = dict(data)
                    if version is not None:
                        data.setdefault("internal#ctx_version", version)
                    key_sets[tuple(data)] += 1  # input statistics, see send_stats
                    data[SEQ_PATH] = self.seq
                    seqs.append(self.seq)
                    self.seq += 1
                messages.append((opcode, data))
            self.credits[worker] -= 1
            self.track(worker, seqs)
            try:
                send_batch(fe._router, messages, prefix=[worker.encode()], small=small)
            except zmq.ZMQError as e:  # EHOSTUNREACH: that stage is gone
                log.warning("frontend: cannot reach %s: %s", worker, e)

    def free_worker(self, pools, avoid=None):
        """The next worker with credit, in turn (round robin across calls).

        Workers for which `avoid(name)` is true are taken only if no other
        has credit (those holding their share of shared-memory slots).
        """
        n = len(pools)
        fallback = None
        for i in range(n):
            name = pools[(self.turn + i) % n]
            if self.credits[name] > 0:
                if avoid is not None and avoid(name):
                    if fallback is None:
                        fallback = (i, name)
                    continue
                self.turn = (self.turn + i + 1) % n
                return name
        if fallback is not None:
            self.turn = (self.turn + fallback[0] + 1) % n
            return fallback[1]
        return None

    def track(self, worker, seqs):
        """Remember what `worker` holds until it acknowledges the message."""
        batches = self.outstanding.setdefault(worker, collections.deque())
        now = time.monotonic()
        if not batches:
            self.busy_since[worker] = now
        batches.append((now, seqs))

    def take_batch(self, control, worker):
        """Events for one worker message: one large event or several small.

        Up to BATCH_MAX small events, and only as many as take about
        BATCH_SECONDS in a worker (so a CPU-bound view gets one per message).

        Returns ``(batch, small)``; `small` is true if no message in the
        batch holds a buffer worth a frame of its own (see send_batch).

        Small events waiting together go in one message, so their per-message
        costs are shared; large ones (with a buffer of 64 KiB or more) go
        alone, so batching never multiplies the memory a worker holds.
        Only events queued before the next control message are taken.

        For a worker on this host, the large arrays of an event are copied
        into a shared-memory slot (outside the lock); such events are small
        messages and batch like small events, up to SHM_BATCH_BYTES of slots
        per message.  If no slot is free while workers still hold some, the
        event waits (and the queue's drop policy applies); if none will
        come back, it goes by socket.
        """
        fe = self.fe
        shm = fe.shm if worker in self.shm_workers else None
        # Below this size no array needs a slot or a frame of its own.
        scan_min = ZERO_COPY_MIN if shm is None else min(ZERO_COPY_MIN, shm.threshold)
        limit = control[0] if control is not None else None
        batch, placed, slot_bytes, small = [], [], 0, True
        batch_max = batch_limit(self.event_cost)
        with fe._lock:
            events = fe._events
            while events and len(batch) < batch_max and (limit is None or events[0][0] < limit):
                index, opcode, data = events[0]
                if opcode == OP_EVENT and KEY_SHM in data:  # reserved, never from outside
                    data = {k: v for k, v in data.items() if k != KEY_SHM}
                plan = None
                big = opcode != OP_EVENT or has_large_value(data, scan_min)
                if big and shm is not None and opcode == OP_EVENT:
                    plan = shm.plan(data)
                if plan is not None:
                    nbytes = plan[1] * shmem.UNIT
                    if batch and slot_bytes + nbytes > SHM_BATCH_BYTES:
                        break
                    ticket = None
                    if shm.fits_ever(plan) and not self.shm_saturated(worker, nbytes):
                        ticket = shm.reserve_for(worker, plan)
                    if ticket is None:
                        if self.shm_waiting != index:
                            self.shm_waiting = index
                            shm.full += 1
                        if batch or (shm.fits_ever(plan) and self.slots_will_free(worker)):
                            break  # a worker will free slots: wait for it
                        plan = None  # nothing will free slots: by socket
                    else:
                        placed.append((len(batch), plan, ticket))
                        slot_bytes += nbytes
                large = big and plan is None and (opcode != OP_EVENT or has_large_value(data))
                if large and batch:
                    break
                events.popleft()
                batch.append((opcode, data))
                small = small and not big
                if large:
                    break
        for i, plan, ticket in placed:
            opcode, data = batch[i]
            batch[i] = (opcode, shm.fill(data, plan, ticket))
        return batch, small

    def shm_saturated(self, worker, more=1):
        """Whether `worker` holds its share of slots (SHM_WORKER_BYTES)."""
        shm = self.fe.shm
        if shm is None or worker not in self.shm_workers:
            return False
        held = shm.held_bytes(worker)
        return held > 0 and held + more > SHM_WORKER_BYTES

    def slots_will_free(self, worker):
        """Whether slots will come back: a worker holding some has messages to finish."""
        shm = self.fe.shm
        if self.shm_saturated(worker):
            return bool(self.outstanding.get(worker))
        return any(shm.holds(w) and self.outstanding.get(w) for w in self.shm_workers)

    def send_control(self, target, opcode, data):
        if opcode == OP_CONTEXT:
            # Two-phase reload: every stage builds the context first; it is
            # used only if all of them could (see on_stage_message).
            self.reload = _Reload(data, set(self.stage_names()))
            data = {"ctx": data, "prepare": True}
        elif opcode == OP_PARAMS:
            self.params.update(data)
        if target == "all":
            names = self.stage_names()
        elif target == "pool":
            names = self.pool_names()
        else:
            names = [target]
        for name in names:
            self.send_to(name, opcode, data)

    def send_stats(self):
        fe = self.fe
        now = time.monotonic()
        dt = max(1e-6, now - self.stats_t)
        counts = self.input_counts
        for keys, n in self.key_sets.items():
            for key in keys:
                if key != KEY_SHM:
                    counts[key] += n
        self.key_sets.clear()
        stats = {k: (int(v), (v - self.input_prev.get(k, 0)) / dt)
                 for k, v in counts.items()}
        stats["internal#dropped_events"] = (fe.dropped, (fe.dropped - self.dropped_prev) / dt)
        if fe.shm is not None:
            shm = fe.shm
            slots, nbytes = shm.usage()
            now_counts = {"placed": shm.placed, "bytes": shm.placed_bytes,
                          "reclaimed": shm.reclaimed, "full": shm.full}
            rate = {k: (v - self.shm_prev.get(k, 0)) / dt for k, v in now_counts.items()}
            self.shm_prev = now_counts
            stats["internal#shm_slots_used"] = (slots, rate["placed"])
            stats["internal#shm_bytes_used"] = (nbytes, rate["bytes"])
            stats["internal#shm_reclaimed"] = (shm.reclaimed, rate["reclaimed"])
            stats["internal#shm_full"] = (shm.full, rate["full"])
        self.input_prev = dict(self.input_counts)
        self.dropped_prev = fe.dropped
        self.stats_t = now
        self.send_to("reduce", OP_STATS, stats)

    def shutdown(self):
        for name in self.stage_names():
            self.send_to(name, OP_STOP, {})

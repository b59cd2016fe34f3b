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
import re
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from multiprocessing import resource_tracker

import zmq

from .. import endpoints
from ..config import DROP_BLOCK, DROP_NEWEST, DROP_OLDEST, PipelineConfig
from ..core import Context
from ..error import ContextError
from ..protocol import decode_protocol, encode_protocol
from ..security import secure
from . import shm as shmem
from ..messages import OP_PAUSE, OP_RESET, OP_RESUME, OP_RUN, SCHEMAS, run_number_problem, validate
from .common import OP_CONTEXT, OP_STEP, make_socket, remove_ipc_file
from .frontend_loop import FrontendLoop
from .async_stage import run_async
from .frontend_loop import START_ASYNC
from .pool import run_pool
from .queue import EventQueue
from .reduce_loop import run_reduce
from .runner import (STAGES_FILE, ProcessRunner, StageRunner, ThreadRunner,
                     end_left_processes, note_process)
from .segments import left_by_dead_owners, owner_tag
from .stagelogs import LogForwarder

__all__ = ["ThreadedFrontend", "ProcessRunner", "ThreadRunner", "StageRunner",
           "Context", "ContextError", "encode_protocol", "decode_protocol",
           "DROP_OLDEST", "DROP_NEWEST", "DROP_BLOCK", "PipelineConfig"]

log = logging.getLogger(__name__)

_instances = itertools.count()


_SOCKET_DIR = re.compile(r"metropc-([0-9]{1,10})-([0-9]{1,20})-[A-Za-z0-9_]+")


def remove_stale_socket_dirs(directory=None) -> list[str]:
    """Remove the private socket directories of frontends that are gone
    (killed with SIGKILL, they could not); returns their paths.  Only
    directories of this user that hold nothing but sockets (and the list of
    the processes the frontend started) are touched; processes of theirs
    that still run, left stopped, are ended
    (:func:`~metropc.stage.runner.end_left_processes`)."""
    directory = directory or tempfile.gettempdir()
    removed, ended = [], 0
    for name in left_by_dead_owners(directory, _SOCKET_DIR):
        path = os.path.join(directory, name)
        try:
            if os.lstat(path).st_uid != os.getuid() or not all(
                    f == STAGES_FILE or stat.S_ISSOCK(os.lstat(os.path.join(path, f)).st_mode)
                    for f in os.listdir(path)):
                continue
            ended += end_left_processes(os.path.join(path, STAGES_FILE))
            shutil.rmtree(path)
        except OSError:
            continue
        removed.append(path)
    if removed:
        log.info("removed %d socket director%s left by dead frontends", len(removed),
                 "y" if len(removed) == 1 else "ies")
    if ended:
        log.warning("ended %d process(es) of dead frontends that were left stopped "
                    "(SIGSTOP) when their frontend died", ended)
    return removed


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
    config : PipelineConfig, optional
        All the settings below in one object (:mod:`metropc.config`, where
        every default is defined); keyword settings override it.
    queue_size : int
        Events that may wait for a free worker before the drop policy applies.
    queue_bytes : int
        Bytes (of the arrays in them) that waiting events may hold before
        the drop policy applies (default 256 MiB).
    drop_policy : ``'oldest'``, ``'newest'`` or ``'block'``
        What happens when the queue is full: ``'oldest'`` (default) drops
        the oldest waiting event, which keeps the display current;
        ``'newest'`` refuses the new one, which keeps what already waits;
        ``'block'`` (``DROP_BLOCK``) makes ``queue_to_any`` wait for room, so
        nothing is lost (for replays and scripts).
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
                 queue_addr=None, num_pool_stages=None, sr_cls=ProcessRunner, *,
                 config: PipelineConfig | None = None, **settings):
        unknown = set(settings) - PipelineConfig.fields()
        if unknown:
            raise TypeError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        config = config or PipelineConfig()
        if num_pool_stages is not None:
            settings["pool"] = int(num_pool_stages)
        self.config = config = config.replace(**settings) if settings else config
        # A private directory for ipc sockets (0700: only this user gets in),
        # named after this process, so that the next frontend removes it if
        # this one is killed (remove_stale_socket_dirs).
        remove_stale_socket_dirs()
        self._tmpdir = tempfile.mkdtemp(prefix=f"metropc-{owner_tag()}-")
        os.chmod(self._tmpdir, 0o700)
        #: Where REDUCE serves the ASYNC stage (this host only).
        self.async_addr = f"ipc://{self._tmpdir}/async"
        self.control_addr = control_addr or f"ipc://{self._tmpdir}/control"
        self.reduce_addr = reduce_addr or f"ipc://{self._tmpdir}/reduce"
        self.output_addr = output_addr or "tcp://127.0.0.1:*"
        self.queue_addr = queue_addr or f"inproc://metropc-queue-{next(_instances)}"
        self.num_pool_stages = config.pool
        self.sr_cls = sr_cls
        self.keys = config.keys
        self.lost_events = 0
        #: Events still queued or in the stages when :meth:`close` stopped
        #: them: they produced no results (see :meth:`close`).
        self.abandoned = 0
        self.restarts = collections.Counter()
        self.ready = threading.Event()
        #: Set when a stage kept dying and was given up.
        self.failed = threading.Event()
        #: Messages refused by other servers of this process (the control
        #: endpoint: ``Pipeline`` sets it), added to internal#rejected_messages.
        self.rejected_elsewhere: Callable[[], int] | None = None

        self._zctx = zmq.Context()
        self._queue = EventQueue(config.queue_size, config.queue_bytes, config.drop_policy)
        self._wake_pending = False
        self._stopping = False
        self._standing_down = False
        self._logs = None

        # The frontend thread is woken through a pipe: writing a byte costs
        # the caller (who holds the queue's lock meanwhile) a third of a
        # ZeroMQ send, and the thread is up 10-40 us sooner (measured on
        # two cores; a lone event's latency).  The inproc socket at
        # `queue_addr` (the reference API's argument) stays bound and
        # polled: a message sent there wakes the thread too.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._wake_pull = make_socket(self._zctx, zmq.PULL)
        self._wake_pull.bind(self.queue_addr)
        secure_server, _, self._auth = secure(self._zctx, config.keys)
        self._router = make_socket(self._zctx, zmq.ROUTER)
        secure_server(self._router)
        self._router.router_mandatory = True
        self._router.router_handover = True  # a replacement stage takes over its name
        endpoints.bind(self._router, self.control_addr)
        self.control_addr = self._router.last_endpoint.decode()

        self.shm = None
        try:
            if sr_cls.can_stop:
                self._logs = LogForwarder(self._tmpdir)
            self._open_shm(config.shm, config.shm_size, config.shm_threshold)
            self._runners = self._make_runners()
            tracker = getattr(resource_tracker, "_resource_tracker", None)
            if getattr(tracker, "_pid", None) is not None:  # (started by our stages)
                self.note_process(tracker._pid)
        except BaseException:
            if self.shm is not None:
                self.shm.close()
            if self._logs is not None:
                self._logs.close()
            for fd in (self._wake_r, self._wake_w):
                os.close(fd)
            raise
        self._state = FrontendLoop(self)
        self._loop_failure: str | None = None
        self._thread = threading.Thread(target=self._loop, name="metropc-frontend",
                                        daemon=True)
        self._queue.taker = self._thread
        self._thread.start()

    @property
    def zmq_context(self) -> zmq.Context:
        """The ZeroMQ context of this frontend and of its ThreadRunner stages:
        an ``inproc://`` address is reachable only from it, so a client of
        an ``inproc://`` output passes it (``Client(addr, context=...)``)."""
        return self._zctx

    # Settings kept as attributes for code that reads them.
    drop_policy = property(lambda self: self.config.drop_policy)
    prefetch = property(lambda self: self.config.prefetch)
    event_timeout = property(lambda self: self.config.event_timeout)
    stats_interval = property(lambda self: self.config.stats_interval)

    @property
    def dropped(self) -> int:
        """Events the drop policy dropped (or refused) so far."""
        return self._queue.dropped

    @property
    def paused(self) -> bool:
        """Whether events are refused for a pause (by whoever asked: a key,
        a remote ``Controller``, the dashboard)."""
        return self._queue.paused

    @property
    def _events(self):
        return self._queue.events

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

    def on_context_committed(self, version):
        """Every stage took context `version`: it runs from the next event
        queued after it.  Called in the frontend thread: return quickly."""

    def on_context_refused(self, version, why):
        """A stage refused context `version` (two-phase reload): nothing
        changed, the previous context goes on.  By default an error
        (:meth:`on_pipeline_error`).  Called in the frontend thread."""
        self.on_pipeline_error(f"context version {version} refused, the previous one "
                               f"keeps running: {why}")

    # -- API (any thread) --------------------------------------------------------------
    def queue_to_any(self, opcode, data=None, *, cancel: threading.Event | None = None):
        """Send one message (an event) to whichever POOL worker is free.

        When the queue is full (``queue_size`` events or ``queue_bytes``
        bytes), the drop policy applies: ``'oldest'`` drops the oldest
        waiting event, ``'newest'`` refuses this one (returns False),
        ``'block'`` waits here until there is room.  Dropped events are
        counted (``internal#dropped_events`` in the index).  A caller
        waiting for room (or for a resume) gives up when `cancel` is set:
        the event was not accepted (False).
        """
        return self._queue.put_event(opcode, data or {}, self._wake, cancel)

    def in_flight(self) -> int:
        """Events accepted but not through REDUCE yet: queued here, or
        dispatched and not yet reported done by REDUCE (published, or
        counted lost; it reports every 20 ms).  A moment's view."""
        dispatcher = self._state.dispatcher
        with self._queue.lock:  # (events get their sequence number under it)
            return len(self._queue) + dispatcher.events_in_flight()

    def unfinished(self) -> int:
        """What was queued and is not through yet: the events of
        :meth:`in_flight`, and the control messages and marks (steps,
        resets, runs) still queued or on their way through REDUCE."""
        dispatcher = self._state.dispatcher
        with self._queue.lock:
            return (len(self._queue) + len(self._queue.control)
                    + max(0, dispatcher.seq - dispatcher.reduce_next))

    def stand_down(self) -> None:
        """Replace no stage from now on (the pipeline is about to close):
        one that ends (a SIGTERM to the whole process group, say) stays
        gone, and what it held is counted at :meth:`close`."""
        self._standing_down = True

    @property
    def standing_down(self) -> bool:
        """Whether :meth:`stand_down` was called."""
        return self._standing_down

    def stages_alive(self) -> bool:
        """Whether REDUCE and at least one POOL worker still run (local
        stages: their threads or processes; remote workers: as last heard)."""
        runners = self._runners
        reduce = runners.get("reduce")
        if reduce is None or not reduce.is_alive():
            return False
        return bool(self._state.supervisor.remote) or any(
            runner.is_alive() for name, runner in runners.items() if name.startswith("pool-"))

    @property
    def registry(self) -> str:
        """The file naming the processes this frontend started (STAGES_FILE),
        so that the next frontend can end those a kill -9 of this one left
        stopped (:func:`remove_stale_socket_dirs`)."""
        return os.path.join(self._tmpdir, STAGES_FILE)

    def note_process(self, pid: int) -> None:
        """Add a process this frontend's user started for it (the recorder)
        to :attr:`registry`."""
        note_process(self.registry, pid)

    def latest_counts(self) -> dict[str, int]:
        """Events out, lost and dropped as of now: out and lost from REDUCE's
        progress reports (every 20 ms, one report old), dropped from the
        queue.  Fresher than the index (about once a second), and known
        after REDUCE is gone: the last summary line of a run uses them."""
        progress = self._state.progress
        return {"events": int(progress.get("events", 0)), "lost": int(progress.get("lost", 0)),
                "dropped": int(self.dropped)}

    def given_up(self) -> str | None:
        """Why no results can come any more, or None: REDUCE was given up
        (it died too often, or could not start), or every local POOL worker
        was and no remote one is known, or the frontend's own loop failed
        (nothing is dispatched any more).  (A stage being restarted is not.)"""
        if self._loop_failure is not None:
            return self._loop_failure
        supervisor = self._state.supervisor
        gone = supervisor.given_up
        if "reduce" in gone:
            return "REDUCE is not restarted any more"
        pools = [name for name in self._runners if name.startswith("pool-")]
        if pools and set(pools) <= gone and not supervisor.remote:
            return "no POOL worker is restarted any more"
        return None

    def enable_async(self) -> None:
        """Start the ASYNC stage (once), for contexts with ``stage='async'`` views.

        It starts before the context queued after this call is prepared, so
        it takes part in that reload like every stage."""
        self._queue.put_control("async", START_ASYNC, {}, self._wake)

    def set_drop_policy(self, policy: str) -> None:
        """Change what happens when the queue is full (see the class docs)."""
        self.config = self.config.replace(drop_policy=policy)
        with self._queue.lock:
            self._queue.policy = policy

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

    def reset(self, *views: str) -> None:
        """Clear the accumulated state of `views` (none given: of every view)
        from the next event on: applied after the events queued so far."""
        self.queue_to("reduce", OP_RESET, {"views": list(views)})

    def pause(self) -> None:
        """Stop dispatching: events queued from now on are refused (and
        counted in ``internal#paused_events``), or, with the ``block``
        policy, their callers wait; parameters and reloads still work."""
        self.queue_to("reduce", OP_PAUSE)

    def resume(self) -> None:
        """Dispatch events again after :meth:`pause`."""
        self.queue_to("reduce", OP_RESUME)

    def start_run(self, run: int | None = None) -> None:
        """A run starts after the events queued so far (None: the next number);
        views with ``reset_on='run'`` (the builtins) start empty.  A run
        number is an int from 0 to 2**62 (ValueError otherwise)."""
        problem = run_number_problem(run)
        if problem is not None:
            raise ValueError(f"run number {problem}")
        self.queue_to("reduce", OP_RUN, {"kind": "run_start", "run": run})

    def end_run(self) -> None:
        """The current run ends after the events queued so far."""
        self.queue_to("reduce", OP_RUN, {"kind": "run_end"})

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
        """Stop every stage (within `timeout` seconds) and release resources.

        The stages stop at once: events still queued or in them produce no
        results.  They are counted (:attr:`abandoned`) and named in a
        warning; let them through first where that matters
        (:meth:`metropc.pipeline.Pipeline.drain`, or wait for
        :meth:`in_flight` to reach 0)."""
        if self._stopping:
            return
        self._queue.close()  # (refuses what comes now: counted as dropped)
        self.abandoned = self.in_flight()
        self._stopping = True
        if self.abandoned:
            log.warning("stopping with %d event(s) still in the pipeline: their results "
                        "are not published", self.abandoned)
        with self._queue.lock:
            self._wake()
        self._thread.join(timeout)
        for runner in self._runners.values():
            runner.join(max(0.1, timeout / 4))
            if runner.is_alive():
                runner.stop()
        for sock in (self._wake_pull, self._router):
            sock.close(0)
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        if self._auth is not None:
            self._auth.stop()
        self._zctx.term()
        if self._logs is not None:
            self._logs.close()
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
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already

    def _queue_control(self, target, opcode, data):
        data = data or {}
        if opcode in SCHEMAS and opcode != OP_CONTEXT:  # wrong fields: the caller's error
            validate(opcode, data)
        # Applies after every event queued before it, as the caller expects.
        self._queue.put_control(target, opcode, data, self._wake)

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
        config = self.config
        extra = {}
        if self.sr_cls.shares_context:
            extra["zmq_context"] = self._zctx
        options = {"registry": self.registry}
        if self._logs is not None:
            options.update(log_level=logging.getLogger("metropc").getEffectiveLevel(),
                           log_address=self._logs.address)
        if name == "reduce":
            # A restarted REDUCE binds the address clients already use.
            return self.sr_cls(run_reduce, dict(
                control_addr=self.control_addr, reduce_addr=self.reduce_addr,
                output_addr=self.output_addr, output_hwm=config.output_hwm,
                reorder_timeout=config.reorder_timeout, keys=config.keys,
                async_addr=self.async_addr, **extra), name, **options)
        if name == "async":
            return self.sr_cls(run_async, dict(
                control_addr=self.control_addr, async_addr=self.async_addr,
                keys=config.keys, **extra), name, **options)
        if self.shm is not None:
            extra["shm"] = {"in": self.shm.input_name, "out": self.shm.new_output(name),
                            "threshold": self.shm.threshold}
        return self.sr_cls(run_pool, dict(
            control_addr=self.control_addr, reduce_addr=self.reduce_addr, name=name,
            prefetch=config.prefetch, keys=config.keys, **extra), name, **options)

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
        state = self._state
        try:
            state.run()
        except BaseException as e:  # noqa: BLE001 - the frontend thread must report
            log.exception("frontend loop failed")
            self._loop_failure = f"the frontend loop failed ({type(e).__name__}: {e})"
            self.on_pipeline_panic(f"frontend loop failed: {type(e).__name__}: {e}")
        finally:
            state.shutdown()

"""The frontend's own thread: sockets in, decisions applied, sockets out.

A :class:`~metropc.stage.frontend.ThreadedFrontend` owns one background
thread that owns every frontend socket; :class:`FrontendLoop` is that
thread.  It decides nothing itself: it polls, hands what it received to
the sans-I/O parts and applies what they say:

- :class:`~metropc.stage.dispatcher.Dispatcher`: which worker gets which
  events (credits, batches, shared-memory slots, loss accounting);
- :class:`~metropc.stage.supervisor.Supervisor`: which stage to replace or
  give up;
- :class:`~metropc.stage.reload.ReloadCoordinator`: the two-phase reload.

Every message from a socket is validated when it is decoded
(:mod:`metropc.messages`); one that is malformed, or that fails in its
handler, is counted (``internal#rejected_messages``), logged once per kind
and dropped: no input ends this thread.  Replacing a stage never waits for
the old process (it is reaped later), so dispatching goes on meanwhile.
"""

from __future__ import annotations

import logging
import os
import time

import zmq

from ..error import ProtocolError
from .common import (OP_ABORT, OP_ACTION, OP_COMMIT, OP_CONTEXT, OP_CREDIT, OP_CTX_FAILED,
                     OP_CTX_READY, OP_DEBUG, OP_ERROR, OP_HELLO, OP_INDEX, OP_LOST, OP_PARAMS,
                     OP_PROGRESS, OP_SHM, OP_STATS, OP_STEP, OP_STOP, RejectLog, recv, send,
                     send_batch)
from ..messages import (MARK_OPS, OP_ANNOUNCE, OP_BUSY, OP_BYE, OP_PAUSE, OP_RESET, OP_RESUME,
                        OP_RUN)
from .dispatcher import Dispatcher
from .reload import Aborted, Committed, ReloadCoordinator
from .supervisor import (START_RETRY, GiveUp, Gone, Panic, ReduceWatch, Replace, StageState,
                         Supervisor)
from ..transport import readable

log = logging.getLogger(__name__)

__all__ = ["FrontendLoop"]


def _origin(hello) -> tuple:
    """``(host, pid)`` of a remote worker, from its hello: two of one name
    are told apart by it."""
    return hello.get("host"), hello.get("pid")


def _origin_text(origin) -> str:
    """`` (host H, pid P)`` for messages, from :func:`_origin`."""
    host, pid = origin
    return "" if host is None else f" (host {host}, pid {pid})"

#: Seconds a restarted REDUCE waits for results that may still be on their
#: way from the workers (sent before the restart) before counting them lost.
RESTART_GRACE = 1.0
#: Seconds REDUCE waits for the results of events a killed worker had just
#: finished (they leave a process a moment after its credit, or never),
#: from when it has read everything received before.
DOUBT_GRACE = 1.0
#: A control item (never on a socket) that starts the ASYNC stage.
START_ASYNC = b"#start-async"
#: How often the stages are checked (seconds).
CHECK_INTERVAL = 0.1


def is_mark(opcode, data) -> bool:
    """Whether a control message goes to REDUCE in order with the events
    queued before it (through a worker), rather than at once."""
    return opcode in MARK_OPS or (opcode == OP_ACTION and type(data) is dict
                                  and data.get("ordered") is True)


def mark_of(opcode, data):
    """The mark a control message becomes on its way to REDUCE."""
    if opcode == OP_ACTION:
        return {"kind": "action", "view_name": data["view_name"]}
    if opcode == OP_RESET:
        return {"kind": "reset", "views": list(data.get("views") or ())}
    if opcode == OP_RUN:
        return {"kind": data["kind"], "run": data.get("run")}
    return {"kind": {OP_PAUSE: "pause", OP_RESUME: "resume"}[opcode]}


class FrontendLoop:
    """The frontend thread: polls sockets and applies the decisions."""

    def __init__(self, fe):
        self.fe = fe
        self.queue = fe._queue
        self.dispatcher = Dispatcher(fe.shm)
        self.supervisor = Supervisor(fe.config.event_timeout)
        self.reduce_watch = ReduceWatch()
        self.reload = ReloadCoordinator()
        self.hello: set[str] = set()
        self.remote_origins: dict[str, tuple] = {}  # remote worker -> (host, pid)
        self.failed_starts: dict[str, int] = {}  # stage -> tries to start it that failed
        self.last_context = None
        self.params: dict = {}
        self.dying = []              # stopped runners, not yet gone
        self.retry_steps = []        # step sequence numbers a worker refused
        # What REDUCE last said of its progress; survives its restarts.
        self.progress = {"next_seq": 0, "lost": 0, "stale": 0}
        self.announced_lost: set[int] = set()  # lost seqs REDUCE may not have seen
        self.reduce_subs: list[bytes] = []     # what REDUCE's clients subscribed to
        self.reduce_state: dict = {}           # its run and state (READY, RUN, STOP)
        self.async_busy = None                 # since when the ASYNC stage computes
        self.announce: dict = {}               # what REDUCE publishes in its status
        self.rejected = 0
        self._log_reject = RejectLog(log, "frontend")
        self.input_counts: dict = {}
        self.input_prev: dict = {}
        self.shm_prev: dict = {}
        self.stats_t = time.monotonic()
        self.dropped_prev = 0

    # Names kept for tests and tools that look inside.
    @property
    def remote(self):
        return self.supervisor.remote

    @property
    def shm_workers(self):
        return self.dispatcher.shm_workers

    # -- the loop ----------------------------------------------------------------------
    def run(self):
        fe = self.fe
        poller = zmq.Poller()
        poller.register(fe._router, zmq.POLLIN)
        poller.register(fe._wake_r, zmq.POLLIN)
        poller.register(fe._wake_pull, zmq.POLLIN)
        next_stats = time.monotonic() + fe.config.stats_interval
        next_check = 0.0
        while not fe._stopping:
            ready = dict(poller.poll(100))
            if fe._wake_r in ready:
                with self.queue.lock:
                    fe._wake_pending = False
                    os.read(fe._wake_r, 4096)
            if fe._wake_pull in ready:  # a wake-up sent to queue_addr
                while readable(fe._wake_pull):  # (a failed recv raises: dearer)
                    fe._wake_pull.recv(zmq.NOBLOCK)
            if fe._router in ready:
                self.drain_stage_messages()
            if fe.ready.is_set():
                self.dispatch()  # before the checks: an event waits for nothing periodic
            now = time.monotonic()
            if now >= next_check:
                self.check_stages(now)  # (76 us here, 10 times a second)
                next_check = now + CHECK_INTERVAL
                if fe.ready.is_set():
                    self.dispatch()  # what the checks let go (a reload timed out)
            if fe.ready.is_set() and time.monotonic() >= next_stats:
                self.send_stats()
                next_stats = time.monotonic() + fe.config.stats_interval

    def drain_stage_messages(self, limit=1000):
        router = self.fe._router
        for i in range(limit):
            if i and not readable(router):  # the poll said the first is there
                return
            try:
                self.on_stage_message(zmq.NOBLOCK)
            except zmq.Again:
                return

    def reject(self, kind, why):
        """Count a message that could not be used (internal#rejected_messages);
        log each kind once."""
        self.rejected += 1
        self._log_reject(kind, why)

    def on_stage_message(self, flags=0):
        try:
            ident, opcode, data = recv(self.fe._router, identity=True, flags=flags)
        except ProtocolError as e:
            self.reject("malformed", e)
            return
        name = ident.decode(errors="replace")
        try:
            self.handle(name, opcode, data, time.monotonic())
        except Exception as e:  # noqa: BLE001 - no message may end this thread
            self.reject(bytes(opcode)[:32], f"{type(e).__name__}: {e}")
            log.debug("frontend: handler failed", exc_info=True)

    def handle(self, name, opcode, data, now):
        fe = self.fe
        if name.endswith("#hb"):  # a worker's heartbeat socket
            self.supervisor.heard(name[:-3], now)
            return
        self.supervisor.heard(name, now)
        if opcode == OP_CREDIT:
            if "free" in data and fe.shm is not None:
                fe.shm.release(name, data["free"])
            self.dispatcher.on_credit(name, data["n"] if "n" in data else None, now)
        elif opcode == OP_PROGRESS:
            if name == "reduce":
                self.on_progress(data)
        elif opcode == OP_ERROR:
            if name not in self.hello and name not in fe._runners:
                # (a peer that never said hello: its "errors" are not the pipeline's)
                self.reject(b"error from an unknown stage", name[:32])
                return
            fe.on_pipeline_error(str(data.get("msg")))
        elif opcode in (OP_CTX_READY, OP_CTX_FAILED):
            self.apply(self.reload.on_answer(name, data.get("version"),
                                             opcode == OP_CTX_READY, str(data.get("msg"))))
        elif opcode == OP_DEBUG:
            fe.on_pipeline_debug(str(data.get("msg")))
        elif opcode == OP_BUSY and name == "async":
            self.async_busy = now if data["busy"] else None
        elif opcode == OP_BYE and self.supervisor.left(name):
            log.warning("%s", self.forget(name, f"remote worker {name} left (stopped by "
                                                "its operator)"))
        elif opcode == OP_HELLO:
            self.on_hello(name, data, now)

    def on_hello(self, name, data, now):
        fe = self.fe
        local = name in fe._runners
        if not local:
            if not name.startswith("pool-"):
                log.warning("frontend: ignoring hello from unknown stage %r", name)
                return
            if not self.name_taken(name, data):
                # A worker started elsewhere (metropc-worker) joins the pool.
                fe.on_pipeline_debug(f"remote worker {name} joined")
                log.info("remote worker %s joined%s", name, _origin_text(_origin(data)))
        self.supervisor.on_hello(name, now, remote=not local)
        self.hello.add(name)
        if name.startswith("pool-"):
            self.dispatcher.add_worker(name, shm=bool(data.get("shm")) and local)
        if name == "reduce":
            fe.output_addr = data.get("output_addr", fe.output_addr)
            if fe._reduce_addr_pending():
                fe.reduce_addr = data.get("reduce_addr", fe.reduce_addr)
                fe._start_pools(fe._runners)
        if not fe.ready.is_set():
            if self.hello >= set(fe._runners):
                self.supervisor.pipeline_ready = True
                fe.ready.set()
                fe._call_ready()
        else:
            self.bring_up_to_date(name)

    def on_progress(self, data):
        self.progress = {k: int(data[k]) for k in ("next_seq", "lost", "stale",
                                                    "output_dropped", "events") if k in data}
        self.reduce_state = {"run": data.get("run"), "state": data.get("state")}
        self.reduce_subs = list(data.get("subs", ()))
        next_seq = self.progress.get("next_seq", 0)
        self.announced_lost = {s for s in self.announced_lost if s >= next_seq}
        self.dispatcher.on_progress(int(data.get("done_seq", next_seq)))

    # -- reloads ---------------------------------------------------------------------------
    def apply(self, outcome):
        """Finish a reload: commit everywhere, or abort everywhere."""
        if outcome is None:
            return
        fe = self.fe
        if isinstance(outcome, Aborted):
            for name in self.stage_names():
                self.send_to(name, OP_ABORT, {"version": outcome.version})
            fe.on_context_refused(outcome.version, outcome.why)
            return
        assert isinstance(outcome, Committed)
        self.last_context = outcome.data
        self.dispatcher.new_context(outcome.version)
        self.params = {}  # the new context brings its own values
        from_seq = self.dispatcher.seq
        for name in self.stage_names():
            if name in outcome.ready:
                self.send_to(name, OP_COMMIT, {"version": outcome.version,
                                               "from_seq": from_seq})
            else:  # a replacement started meanwhile: give it the context whole
                self.send_to(name, OP_CONTEXT, {"ctx": outcome.data, "from_seq": from_seq})
        fe.on_context_committed(outcome.version)

    def bring_up_to_date(self, name):
        """A replacement stage gets the running context and parameters."""
        if self.last_context is not None:
            data = {"ctx": self.last_context, "from_seq": self.dispatcher.seq}
            if name == "reduce":
                data.update(self.reduce_restart())
            self.send_to(name, OP_CONTEXT, data)
        if name == "reduce" and self.announce:
            self.send_to(name, OP_ANNOUNCE, dict(self.announce))
        if self.params:
            self.send_to(name, OP_PARAMS, dict(self.params))

    def reduce_restart(self):
        """Where a new REDUCE picks up: after what the old one finished.

        Events from there on that a worker still holds will come; those
        announced lost are skipped; the rest were finished by a worker before
        the restart, so their results are either still on their way (sent to
        the old REDUCE's address, delivered once the new one binds it) or
        were lost with the old process: the new REDUCE waits RESTART_GRACE
        for them, then counts the missing ones lost.
        """
        start = self.progress.get("next_seq", 0)
        held = set(self.dispatcher.held()) | {seq for seq, _ in self.retry_steps}
        skip, doubtful = [], []
        for seq in range(start, self.dispatcher.seq):
            if seq in held:
                continue
            (skip if seq in self.announced_lost else doubtful).append(seq)
        return {"start_seq": start, "skip": skip, "doubtful": doubtful,
                "grace": RESTART_GRACE, "subs": list(self.reduce_subs),
                **{k: v for k, v in self.reduce_state.items() if v is not None},
                "counters": {"lost": self.progress.get("lost", 0),
                             "stale": self.progress.get("stale", 0),
                             "output_dropped": self.progress.get("output_dropped", 0),
                             "events": self.progress.get("events", 0)}}

    # -- supervision -----------------------------------------------------------------------
    def check_stages(self, now):
        fe = self.fe
        self.apply(self.reload.tick(now))
        if fe.shm is not None:
            fe.shm.tick()
        self.dying = [r for r in self.dying if not r.reap(now)]
        stages = [StageState(name, r.is_alive(), r.exitcode, r.can_stop)
                  for name, r in fe._runners.items() if r.started]
        for instruction in self.supervisor.check(now, stages, self.oldest):
            self.apply_supervision(instruction, now)
        if fe.ready.is_set():
            dispatcher = self.dispatcher
            news = self.reduce_watch.check(now, dispatcher.reduce_next,
                                           dispatcher.finished_up_to())
            if news is not None:
                fe.on_pipeline_error(news)

    def oldest(self, name):
        """What `name` works on since when (for stuck detection)."""
        if name == "async":  # (one call of its views: no event)
            return None if self.async_busy is None else (self.async_busy, [0],
                                                         "a call of its ASYNC views")
        return self.dispatcher.oldest(name)

    def apply_supervision(self, instruction, now):
        fe = self.fe
        if fe._stopping or fe._standing_down:  # about to close: nothing is replaced
            return
        name = instruction.name
        if isinstance(instruction, Panic):
            fe.on_pipeline_panic(instruction.reason)
        elif isinstance(instruction, GiveUp):
            fe.failed.set()
            self.forget(name, instruction.reason)
            fe.on_pipeline_panic(instruction.reason)
        elif isinstance(instruction, Gone):
            self.forget(name, instruction.reason, report=True)
        elif isinstance(instruction, Replace):
            self.replace(name, instruction, now)

    def forget(self, name, reason, report=False):
        """`name` is gone for good or for now: what it held is lost."""
        self.hello.discard(name)
        self.apply(self.reload.stage_gone(name))
        if not name.startswith("pool-"):
            return ""
        doubtful = self.dispatcher.finished_unconfirmed(name)
        lost, requeue, steps = self.dispatcher.remove_worker(name)
        self.fe.lost_events += len(lost)
        self.announce_lost(lost, doubtful)
        with self.queue.lock:
            self.queue.requeue(requeue)  # never started: another worker takes them
        self.retry_steps.extend(steps)  # (seq, mark) pairs
        reclaimed = ""
        if self.fe.shm is not None:
            n = self.fe.shm.reclaim(name)
            if n:
                reclaimed = f"; {n} shared-memory slot(s) it held are reclaimed"
        text = f"{reason}; {len(lost)} event(s) it held are lost{reclaimed}"
        if doubtful:  # (how many REDUCE can tell only when it has read its backlog)
            text += ("; REDUCE counts as lost any results of events it had finished "
                     "that did not leave it")
        if requeue:
            text += f"; {len(requeue)} it had not started go to another worker"
        if report:
            self.fe.on_pipeline_error(text)
        return text

    def announce_lost(self, seqs, doubtful=()):
        """Tell REDUCE which events will not come (`seqs`), and which may
        not (`doubtful`: counted lost if they do not come within DOUBT_GRACE)."""
        if seqs or doubtful:
            self.announced_lost.update(seqs)
            data = {"seqs": list(seqs)}
            if doubtful:
                data.update(doubtful=list(doubtful), grace=DOUBT_GRACE)
            self.send_to("reduce", OP_LOST, data)

    def replace(self, name, instruction, now):
        """Start a new `name` now; the old one (if stopped) is reaped later.

        A start that fails (no fds or memory left) is said and tried again
        by the supervisor; what the death costs is said at the first try
        only, and the start that works at last is said too."""
        fe = self.fe
        old = fe._runners[name]
        retry = not old.spawned  # (the last try failed: all was said then)
        if instruction.stop:
            old.terminate(now)
            self.dying.append(old)
        if not retry:
            fe.restarts[name] += 1
            self.on_stage_lost(name, instruction.reason)
        runner = fe._make_runner(name)
        fe._runners[name] = runner
        try:
            runner.start()
        except OSError as e:  # out of file descriptors or memory: try again later
            self.failed_starts[name] = self.failed_starts.get(name, 0) + 1
            fe.on_pipeline_error(f"cannot start a new {name}: {e}; trying again in "
                                 f"{START_RETRY:g} s")
            return
        if retry:
            log.warning("started a new %s after %d failed tr%s", name,
                        self.failed_starts[name], "y" if self.failed_starts[name] == 1
                        else "ies")
        self.failed_starts.pop(name, None)

    def on_stage_lost(self, name, reason):
        """What a stage's death costs, said, and its part forgotten."""
        fe = self.fe
        if name == "reduce":
            self.hello.discard(name)
            self.apply(self.reload.stage_gone(name))
            fe.on_pipeline_error(f"{reason}; restarting it: accumulated state "
                                 "(averages, histograms, step data) is lost")
            self.fresh_result_segments()
        elif name == "async":
            self.hello.discard(name)
            self.async_busy = None
            self.apply(self.reload.stage_gone(name))
            fe.on_pipeline_error(f"{reason}; starting a replacement (the async "
                                 "views go on with the newest results)")
        else:
            text = self.forget(name, reason)
            fe.on_pipeline_error(f"{text}; starting a replacement")

    def fresh_result_segments(self):
        """The dead REDUCE never frees the result slots it held: every
        worker gets a fresh results segment."""
        fe = self.fe
        if fe.shm is None:
            return
        for worker in list(fe.shm.outputs):
            out = fe.shm.new_output(worker)
            runner = fe._runners.get(worker)
            if runner is not None and "shm" in runner.kwargs:
                runner.kwargs["shm"]["out"] = out
            self.send_to(worker, OP_SHM, {"out": out})

    def stage_names(self):
        return list(self.fe._runners) + list(self.supervisor.remote)

    def name_taken(self, name, data):
        """Whether a remote worker's hello comes under a name that a live one
        (another process) has.  Both then share one ZeroMQ identity: the
        newcomer takes the name's messages over, and the first one is cut
        off (idle from then on, unaware).  That is said, naming both, and
        what the name held is counted as when a worker dies; the name goes
        on afresh with the newcomer."""
        origin = _origin(data)
        known = self.remote_origins.get(name)
        self.remote_origins[name] = origin
        if known is None or known == origin or name not in self.supervisor.remote:
            return False  # (the first, or one after the last of that name left)
        log.warning("%s", self.forget(name, (
            f"remote worker {name}{_origin_text(origin)} joined while one of that name runs"
            f"{_origin_text(known)}: it takes over the name's messages, and the other one "
            "is cut off and idles; give each metropc-worker its own --name")))
        return True

    def send_to(self, name, opcode, data):
        try:
            send(self.fe._router, opcode, data, prefix=[name.encode()])
        except zmq.ZMQError as e:  # EHOSTUNREACH: that stage is gone
            log.debug("frontend: cannot reach %s: %s", name, e)
            return False
        return True

    # -- dispatching -----------------------------------------------------------------------
    def dispatch(self):
        """Send queued control messages and events, in the order queued.

        While a new context is being prepared by the stages nothing moves:
        what was queued after it must run under it (or under the old one if
        it is refused).
        """
        queue, dispatcher = self.queue, self.dispatcher
        while self.retry_steps:
            seq, mark = self.retry_steps[0]
            if not self.send_step(seq, mark):
                return
            self.retry_steps.pop(0)
        while not self.reload.busy:
            now = time.monotonic()
            with queue.lock:
                control = queue.control[0] if queue.control else None
                event_first = queue.events and (
                    control is None or queue.events[0][0] < control[0])
                if not event_first:
                    if control is None:
                        return
                    if is_mark(control[2], control[3]) and not dispatcher.has_credit():
                        return  # a mark waits for a worker, like an event
                    queue.control.popleft()
                    batch = None
                else:
                    batch = dispatcher.next_batch(queue, control[0] if control else None, now)
                    if batch is None:
                        return
            if batch is not None:
                dispatcher.fill(batch)
                self.send_events(batch)
            elif control[2] == OP_STEP:
                self.send_step(None)
            elif is_mark(control[2], control[3]):
                self.send_step(None, mark_of(control[2], control[3]))
            else:
                self.send_control(*control[1:])

    def send_events(self, batch):
        try:
            send_batch(self.fe._router, batch.messages, prefix=[batch.worker.encode()],
                       small=batch.small)
        except zmq.ZMQError as e:  # EHOSTUNREACH: the worker is gone; nothing lost
            log.debug("frontend: %s refused %d event(s) (%s); they go to another worker",
                      batch.worker, len(batch.seqs), e)
            items = self.dispatcher.refused(batch)
            with self.queue.lock:
                self.queue.requeue(items)

    def send_step(self, seq, mark=None):
        """A step boundary or another mark through a worker; False if no
        worker has credit (it is sent again later, with the same number)."""
        while True:
            batch = self.dispatcher.step_batch(time.monotonic(), seq, mark)
            if batch is None:
                if seq is not None and (seq, mark) not in self.retry_steps:
                    self.retry_steps.append((seq, mark))
                return False
            try:
                send_batch(self.fe._router, batch.messages, prefix=[batch.worker.encode()])
                return True
            except zmq.ZMQError:
                self.dispatcher.refused(batch)
                seq = batch.seqs[0]

    def send_control(self, target, opcode, data):
        if opcode == START_ASYNC:
            if "async" not in self.fe._runners:
                runner = self.fe._runners["async"] = self.fe._make_runner("async")
                runner.start()
            return
        if opcode == OP_CONTEXT:
            # Two-phase reload: every stage builds the context first; it is
            # used only if all of them could (see apply).
            data = self.reload.begin(data, self.stage_names(), time.monotonic())
        elif opcode == OP_PARAMS:
            self.params.update(data)
        elif opcode == OP_ANNOUNCE:
            self.announce = dict(data)
        elif opcode == OP_INDEX and target == "reduce" and self.fe.ready.is_set():
            self.send_stats()  # an index asked for carries this moment's input counts
        if target == "all":
            names = self.stage_names()
        elif target == "pool":
            names = [n for n in self.stage_names() if n.startswith("pool-")]
        else:
            names = [target]
        for name in names:
            if not self.send_to(name, opcode, data) and opcode == OP_CONTEXT:
                self.apply(self.reload.stage_gone(name))

    # -- statistics --------------------------------------------------------------------------
    def send_stats(self):
        fe = self.fe
        now = time.monotonic()
        dt = max(1e-6, now - self.stats_t)
        counts = self.input_counts
        for keys, n in self.dispatcher.key_sets.items():
            for key in keys:
                counts[key] = counts.get(key, 0) + n
        self.dispatcher.key_sets.clear()
        stats = {k: (int(v), (v - self.input_prev.get(k, 0)) / dt) for k, v in counts.items()}
        dropped = self.queue.dropped
        stats["internal#dropped_events"] = (dropped, (dropped - self.dropped_prev) / dt)
        stats["internal#paused_events"] = (self.queue.paused_events, 0.0)
        elsewhere = fe.rejected_elsewhere() if fe.rejected_elsewhere is not None else 0
        stats["internal#rejected_messages"] = (self.rejected + elsewhere, 0.0)
        if fe.shm is not None:
            stats.update(self.shm_stats(dt))
        self.input_prev = dict(counts)
        self.dropped_prev = dropped
        self.stats_t = now
        self.send_to("reduce", OP_STATS, stats)

    def shm_stats(self, dt):
        shm = self.fe.shm
        slots, nbytes = shm.usage()
        now_counts = {"placed": shm.placed, "bytes": shm.placed_bytes,
                      "reclaimed": shm.reclaimed, "full": shm.full}
        rate = {k: (v - self.shm_prev.get(k, 0)) / dt for k, v in now_counts.items()}
        self.shm_prev = now_counts
        return {"internal#shm_slots_used": (slots, rate["placed"]),
                "internal#shm_bytes_used": (nbytes, rate["bytes"]),
                "internal#shm_reclaimed": (shm.reclaimed, rate["reclaimed"]),
                "internal#shm_full": (shm.full, rate["full"])}

    def shutdown(self):
        for name in self.stage_names():
            self.send_to(name, OP_STOP, {})

"""The frontend's own thread: feeding the POOL, supervising the stages.

A :class:`~metropc.frontend.ThreadedFrontend` owns one background thread
that owns every frontend socket; :class:`FrontendLoop` is its state and its
loop.  It

- dispatches queued events to POOL workers that have credit, in batches
  of small events (about BATCH_SECONDS of measured work per message), with
  large arrays in shared-memory slots for local workers;
- keeps control messages in order with the events around them, and runs
  the two-phase context reload (prepare everywhere, then commit or abort);
- supervises the stages: replaces a dead or hung stage, announces the events
  it held as lost to REDUCE, gives up on a stage that keeps dying, notices
  remote workers going silent;
- sends REDUCE the input statistics for the index.

It reads the frontend's queues under the frontend's lock and calls its
callbacks; it is not meant to be used on its own.
"""

from __future__ import annotations

import collections
import logging
import time

import zmq

from .error import ProtocolError
from .stage import shm as shmem
from .stage.common import (OP_ABORT, OP_COMMIT, OP_CONTEXT, OP_CREDIT, OP_CTX_FAILED,
                           OP_CTX_READY, OP_DEBUG, OP_ERROR, OP_EVENT,
                           KEY_SHM, KEY_STEP, OP_HELLO, OP_LOST, OP_PARAMS, OP_SHM, OP_STATS,
                           OP_STEP, OP_STOP, SEQ_PATH,
                           has_large_value, recv, send, send_batch)
from .transport import ZERO_COPY_MIN, readable

log = logging.getLogger(__name__)

__all__ = ["FrontendLoop", "BATCH_MAX", "BATCH_SECONDS", "batch_limit"]


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


class FrontendLoop:
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

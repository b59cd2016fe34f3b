"""Deciding what to do about stages that died, hang or went silent.

The :class:`Supervisor` holds the policy and nothing else: the frontend
thread tells it what it saw (a stage said hello, a remote worker was
heard from, which processes are alive) and applies the instructions it
returns.  It never waits, kills or starts anything itself, so a stuck
worker's replacement can never block event dispatching, and the policy is
tested with a fake clock (tests/test_supervisor.py).

The policy:

- a stage process that died is replaced (a thread cannot be: that is
  reported once as a panic);
- a worker that spends more than ``event_timeout`` seconds per event on
  its oldest message is stopped and replaced;
- a stage whose replacement could not be started (no process: the
  frontend ran out of file descriptors, say) is tried again after
  START_RETRY seconds, and counts as a death;
- a stage that dies RESTART_LIMIT times within RESTART_WINDOW seconds, or
  before the pipeline was ever ready, is given up (restarting it again
  would not help: it crashes at start or in a loop);
- a remote worker (``metropc-worker`` on another host) silent for
  REMOTE_SILENCE seconds is gone;
- REDUCE that finishes none of the events the workers finished for
  STALL_AFTER seconds is reported (:class:`ReduceWatch`), and again when it
  goes on: a REDUCE view that takes that long, or a stopped process.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Supervisor", "ReduceWatch", "Replace", "GiveUp", "Panic", "Gone", "StageState",
           "RESTART_LIMIT", "RESTART_WINDOW", "START_RETRY", "REMOTE_SILENCE", "STALL_AFTER",
           "STAGE_REFUSED"]

#: A stage that dies this often within RESTART_WINDOW seconds is not restarted.
RESTART_LIMIT = 5
RESTART_WINDOW = 60.0
#: Seconds before a stage that could not be started is tried again.
START_RETRY = 2.0
#: Seconds without a heartbeat after which a remote worker is gone.
REMOTE_SILENCE = 5.0
#: Seconds REDUCE may finish nothing while events wait for it before that is said.
STALL_AFTER = 10.0
#: The exit code of a stage that could not start and reported why itself
#: (an address it cannot bind: run_reduce returns it).
STAGE_REFUSED = 2


@dataclass(frozen=True)
class StageState:
    """What the frontend thread saw of one local stage."""

    name: str
    alive: bool
    exitcode: int | None
    can_stop: bool


@dataclass(frozen=True)
class Replace:
    """Start a new `name`; `stop` first (without waiting) if it still runs."""

    name: str
    reason: str
    stop: bool = False


@dataclass(frozen=True)
class GiveUp:
    """`name` keeps dying: leave it dead and say so."""

    name: str
    reason: str


@dataclass(frozen=True)
class Panic:
    """`name` died and cannot be replaced (a thread)."""

    name: str
    reason: str


@dataclass(frozen=True)
class Gone:
    """Remote worker `name` went silent: forget it."""

    name: str
    reason: str


class Supervisor:
    """Liveness, stuck detection and the restart policy of the stages."""

    def __init__(self, event_timeout: float | None, *, restart_limit: int = RESTART_LIMIT,
                 restart_window: float = RESTART_WINDOW,
                 remote_silence: float = REMOTE_SILENCE):
        self.event_timeout = event_timeout
        self.restart_limit = restart_limit
        self.restart_window = restart_window
        self.remote_silence = remote_silence
        self.restart_times: dict[str, list[float]] = {}
        self.given_up: set[str] = set()
        self.ever_ready: set[str] = set()
        self.panicked: set[str] = set()
        self.remote: dict[str, float] = {}  # remote worker -> last heard from
        self.pipeline_ready = False

    def on_hello(self, name: str, now: float, remote: bool = False) -> None:
        self.ever_ready.add(name)
        if remote:
            self.remote[name] = now

    def left(self, name: str) -> bool:
        """Remote worker `name` said it leaves: no longer watched; False if
        it is no remote worker (a local stage's word is not taken)."""
        return self.remote.pop(name, None) is not None

    def heard(self, name: str, now: float) -> None:
        """Any message (or heartbeat) from a remote worker."""
        if name in self.remote:
            self.remote[name] = now

    def check(self, now: float, stages, oldest) -> list:
        """Instructions for the stages as seen now.

        `stages`: StageState of every started local stage; `oldest(name)`:
        ``(started, seqs[, what])`` of the oldest message that stage works on
        (`what` names it for the operator: its events' ids), or None.
        """
        out = []
        for name, seen in list(self.remote.items()):
            if now - seen > self.remote_silence:
                del self.remote[name]
                out.append(Gone(name, f"remote worker {name} went silent for "
                                      f"{now - seen:.0f} s"))
        for stage in stages:
            if stage.name in self.given_up:
                continue
            if not stage.alive:
                if stage.exitcode is None and stage.can_stop:  # started, no process
                    last = self.restart_times.get(stage.name) or [float("-inf")]
                    if now - last[-1] < START_RETRY:
                        continue
                    why = f"stage {stage.name} could not be started"
                elif stage.exitcode == 0:  # (a SIGTERM from outside, say)
                    why = f"stage {stage.name} ended (exit code 0) without being told to"
                else:  # (a thread has no exit code)
                    why = f"stage {stage.name} died (exit code {stage.exitcode})"
                out.append(self._restart(stage, why, now, stop=False))
                continue
            busy = oldest(stage.name) if self.event_timeout else None
            if busy is not None and busy[1] and stage.can_stop:
                started, seqs, *named = busy
                if now - started > self.event_timeout * len(seqs):
                    what = named[0] if named else f"events {list(seqs[:5])}"
                    why = (f"stage {stage.name} spent more than {self.event_timeout:g} s "
                           f"per event on {what}; stopped it")
                    out.append(self._restart(stage, why, now, stop=True))
        return [i for i in out if i is not None]

    def _restart(self, stage: StageState, reason: str, now: float, stop: bool):
        name = stage.name
        if not stage.can_stop:  # a thread: cannot be replaced
            if name in self.panicked:
                return None
            self.panicked.add(name)
            return Panic(name, reason)
        recent = [t for t in self.restart_times.get(name, ())
                  if now - t < self.restart_window]
        if name not in self.ever_ready and not self.pipeline_ready:
            # A new one would die the same way.  Exit code 2 is a stage's own
            # report (an address it cannot bind); a crash while starting
            # (1) is usually a script without a main guard, which the
            # spawned stage imports first.
            self.given_up.add(name)
            why = ("its report above says why" if stage.exitcode == STAGE_REFUSED else
                   "its output above says why (a script that starts a pipeline of "
                   "processes needs 'if __name__ == \"__main__\":' around that code)")
            return GiveUp(name, f"{reason} before it started up, so it is not restarted; "
                                + why)
        if len(recent) + 1 >= self.restart_limit:  # (this death is one of them)
            self.given_up.add(name)
            return GiveUp(name, f"{reason}; it died {len(recent) + 1} times within "
                                f"{self.restart_window:g} s, so it is not restarted again")
        self.restart_times[name] = recent + [now]
        return Replace(name, reason, stop=stop)


class ReduceWatch:
    """Notices a REDUCE that stalls, and when it goes on again.

    REDUCE reports how far it got (``next_seq``); the workers' credits say
    how far they got.  Events the workers finished but REDUCE did not,
    with no progress for `after` seconds, mean REDUCE itself is stuck: a
    REDUCE view that takes that long, or a stopped process.  Nothing is
    lost by it, but no result comes out meanwhile, so people must be told.
    Sans I/O: :meth:`check` takes the clock.
    """

    def __init__(self, after: float | None = None):
        self.after = STALL_AFTER if after is None else after
        self.progress = None   # REDUCE's next_seq as last seen
        self.since = None      # when it last moved (or nothing waited)
        self.stalled_at = None  # when the reported stall began
        self.progress_at_stall = None

    def check(self, now: float, reduce_next: int, finished: int) -> str | None:
        """A message when REDUCE starts to stall or goes on again, else None.

        `reduce_next`: the first event REDUCE has not finished; `finished`:
        the first event some worker still holds (or the next to dispatch).
        """
        if reduce_next != self.progress or finished <= reduce_next:
            self.progress, self.since = reduce_next, now
            if self.stalled_at is not None and reduce_next != self.progress_at_stall:
                stalled, self.stalled_at = now - self.stalled_at, None
                return f"REDUCE goes on after a stall of {stalled:.0f} s"
            return None
        if self.stalled_at is None and now - self.since >= self.after:
            self.stalled_at, self.progress_at_stall = self.since, reduce_next
            return (f"REDUCE has finished no event for {now - self.since:.0f} s while "
                    f"{finished - reduce_next} that the workers finished wait for it "
                    "(a REDUCE view that takes that long, or a stopped process); "
                    "nothing is lost by this, but no results come out")
        return None

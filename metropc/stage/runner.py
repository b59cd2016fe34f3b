"""Stage runners: run a stage loop in a thread or in a child process.

A frontend chooses the runner class (``sr_cls``): ``ProcessRunner`` for the
real pipeline (each stage its own process, so heavy views run in parallel
and a crash in user code cannot take the frontend down), ``ThreadRunner``
for tests and embedding with ``inproc://`` addresses.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import multiprocessing
from multiprocessing import resource_tracker
import os
import signal
import sys
import threading
import time

from ..error import StopRequested
from . import segments
from .stagelogs import forward_logging

log = logging.getLogger(__name__)

__all__ = ["StageRunner", "ThreadRunner", "ProcessRunner", "STAGES_FILE",
           "note_process", "resume_listed", "end_left_processes", "name_process"]


def _stage_main(target, kwargs, log_level=None, log_address=None):
    """Entry point of a stage process: run the loop, exit with its code."""
    # The frontend owns shutdown: Ctrl-C in a terminal reaches the whole
    # process group, and children must not die before being told to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # ignored now
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # (the terminal closing: the same)
    global _leaving
    code = 0
    # SIGTERM (from the frontend, or the kernel when the frontend died)
    # leaves through the stage's finally blocks, which close its sockets.
    # It raises KeyboardInterrupt, the one exception that context code
    # cannot swallow (every other one, SystemExit included, is a refused
    # context or a failed view).
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        sys.unraisablehook = _leave_later
        _die_with_parent()
        name_process(multiprocessing.current_process().name)
        forward_logging(log_level, log_address)
        # Everything imported so far (numpy, xarray, pandas: ~70 000 objects)
        # lives as long as the process: out of the cyclic collector's sight,
        # a full collection takes microseconds instead of tens of
        # milliseconds, a pause every event behind it waited for
        # (docs/operations.md).
        gc.freeze()
        code = target(**kwargs) or 0
    except KeyboardInterrupt:  # SIGTERM outside the stage loop (starting, closing)
        pass
    finally:
        _leaving = True
    raise SystemExit(code)


#: Set once the stage's loop has ended: the process is on its way out.
_leaving = False
#: When the last stop signal was raised as KeyboardInterrupt (monotonic).
_raised_at = float("-inf")
#: A SIGTERM this soon after the one raised is the same request again (the
#: frontend's and the kernel's when the frontend quit at once, say).
REPEAT_S = 1.0


def _exit_on_signal(signum, frame):
    global _raised_at
    now = time.monotonic()
    if _leaving or now - _raised_at < REPEAT_S:
        # Leaving already, or about to: raising again could only interrupt
        # that, and print a traceback from wherever it came (from inside
        # _leave_later, say, or from the exit's clean-up).
        return
    _raised_at = now
    raise StopRequested(f"signal {signum}")


def _leave_later(unraisable, default=sys.unraisablehook):
    """A SIGTERM that came while a finaliser ran (ZeroMQ freeing a frame,
    say) cannot leave from there: Python would print its traceback and go
    on.  Send it again instead, to leave from the stage's next line."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        # From another thread, a moment later: a signal sent from here would
        # be handled here again, still inside the finaliser.
        threading.Timer(0.01, _signal_again).start()
        return
    default(unraisable)


def _signal_again():
    global _raised_at
    _raised_at = float("-inf")  # not a repeat: the first one never left
    os.kill(os.getpid(), signal.SIGTERM)


def _prctl(option, arg) -> bool:
    """Linux's prctl(2); False where there is none."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(option, arg) == 0
    except (OSError, AttributeError):
        return False


def _die_with_parent():
    """Ask Linux to send SIGTERM when the frontend process dies (no orphans)."""
    PR_SET_PDEATHSIG = 1
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)  # (not Linux: the parent's close() must do)
    if os.getppid() == 1:  # the parent died before prctl took effect
        raise SystemExit(1)


def name_process(name: str) -> None:
    """Give this process the name `top`, `ps -o comm`, `pstree` and `pgrep`
    show (Linux keeps 15 bytes), e.g. ``metropc-reduce``: the stages are
    all ``python3 ... spawn_main`` on their command lines, and the one to
    look at, or to signal, must be found by name."""
    PR_SET_NAME = 15
    _prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]))


class StageRunner:
    """Runs ``target(**kwargs)``; subclasses choose thread or process."""

    #: Whether the stage shares the frontend's ZeroMQ context (inproc works).
    shares_context = False
    #: Whether a stuck stage can be stopped (and so replaced).
    can_stop = False

    def __init__(self, target, kwargs, name, **options):
        self.target = target
        self.kwargs = kwargs
        self.name = name
        self.started = False

    def start(self):
        raise NotImplementedError

    @property
    def spawned(self) -> bool:
        """Whether the stage exists (False after a start that failed)."""
        return self.started

    def is_alive(self):
        raise NotImplementedError

    def join(self, timeout=None):
        raise NotImplementedError

    def stop(self):
        """Force the stage to end (used after it ignored the stop message)."""

    def terminate(self, now):
        """Ask the stage to end without waiting (only processes can be)."""

    def reap(self, now):
        """True once a terminated stage is gone; never waits."""
        return not self.is_alive()

    @property
    def exitcode(self):
        return None


class ThreadRunner(StageRunner):
    """A stage in a daemon thread of this process."""

    shares_context = True

    def start(self):
        self.started = True
        self._thread = threading.Thread(target=self.target, kwargs=self.kwargs,
                                        name=f"metropc-{self.name}", daemon=True)
        self._thread.start()

    def is_alive(self):
        return self.started and self._thread.is_alive()

    def join(self, timeout=None):
        if self.started:
            self._thread.join(timeout)


#: The file, in a frontend's socket directory, naming the processes it
#: started (stages, the recorder, multiprocessing's resource tracker).
STAGES_FILE = "stages"


def note_process(registry: str, pid: int) -> None:
    """Add process `pid` to `registry` (STAGES_FILE), for :func:`end_left_processes`."""
    try:
        with open(registry, "a") as f:
            f.write(segments.owner_tag(pid) + "\n")
    except OSError as e:  # (only the clean-up after a kill -9 needs it)
        log.debug("cannot note process %d in %s: %s", pid, registry, e)


def _listed(registry: str) -> list[int]:
    """The processes `registry` names that still run (the same process:
    its start time matches, so a pid used again is left alone)."""
    try:
        with open(registry) as f:
            tags = f.read().split()
    except OSError:
        return []
    pids = []
    for tag in tags:
        pid, _, start = tag.partition("-")
        if (pid.isdigit() and start.isdigit() and int(start) != 0
                and segments.owner_alive(int(pid), int(start))):
            pids.append(int(pid))
    return pids


def resume_listed(registry: str) -> None:
    """SIGCONT to the processes `registry` names: one stopped (SIGSTOP, a
    debugger) would not see its frontend go, and stay for ever."""
    for pid in _listed(registry):
        try:
            os.kill(pid, signal.SIGCONT)
        except OSError:
            pass


def end_left_processes(registry: str, grace: float = 1.0) -> int:
    """End the processes a frontend that is gone listed in `registry` and
    that still run; returns how many there were.

    A stage outlives its frontend only while it is stopped (SIGSTOP, Ctrl-Z
    of its group): the SIGTERM the kernel sends it when the frontend dies
    waits until it is continued, which may be never; a stopped recorder or
    resource tracker waits for the end of its input the same way.  So they
    are continued first (a stage leaves through its clean-up, the recorder
    closes its file), and what is left after `grace` seconds is killed.
    """
    pids = _listed(registry)
    resume_listed(registry)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _listed(registry):
        time.sleep(0.05)  # (another process's exit: nothing to wait on)
    for pid in _listed(registry):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:  # gone meanwhile, or not ours
            pass
    return len(pids)


class ProcessRunner(StageRunner):
    """A stage in a spawned child process (never forked: fresh ZeroMQ state)."""

    can_stop = True
    #: Seconds a stopped stage gets to leave before it is killed.
    KILL_AFTER = 1.0

    def __init__(self, target, kwargs, name, *, log_level=None, log_address=None,
                 registry=None, **options):
        super().__init__(target, kwargs, name)
        self.log_level = log_level
        #: Where the stage sends its log records (a stagelogs.LogForwarder).
        self.log_address = log_address
        #: A file to note the process in (STAGES_FILE), for end_left_processes.
        self.registry = registry
        self._kill_at = None
        #: Whether the process exists: `started` but not spawned when the
        #: start failed (no fds left); the supervisor tries again then.
        self._spawned = False

    @property
    def spawned(self) -> bool:
        return self._spawned

    def start(self):
        self.started = True
        mp = multiprocessing.get_context("spawn")
        self._process = mp.Process(target=_stage_main,
                                   args=(self.target, self.kwargs, self.log_level,
                                         self.log_address),
                                   name=f"metropc-{self.name}", daemon=True)
        # The child must never see a Ctrl-C meant for the frontend, not even
        # before it ignores SIGINT: it starts with SIGINT blocked.  The
        # resource tracker is started first, as starting it unblocks SIGINT.
        resource_tracker.ensure_running()
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self._process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        self._spawned = True
        if self.registry is not None:
            note_process(self.registry, self._process.pid)

    @property
    def pid(self):
        return self._process.pid if self._spawned else None

    def is_alive(self):
        return self._spawned and self._process.is_alive()

    def join(self, timeout=None):
        if self._spawned:
            self._process.join(timeout)

    def terminate(self, now):
        """Ask the process to end (SIGTERM) without waiting for it."""
        if self._spawned and self._process.is_alive():
            self._process.terminate()
            self._kill_at = now + self.KILL_AFTER

    def reap(self, now):
        """Kill a terminated process that is still there after KILL_AFTER;
        True once it is gone (never waits)."""
        if not self._spawned:
            return True
        if not self._process.is_alive():
            self._process.join(0)
            return True
        if self._kill_at is not None and now >= self._kill_at:
            self._process.kill()
            self._kill_at = None
        return False

    def stop(self):
        """Force the stage to end now, waiting for it (used at shutdown)."""
        if not self._spawned:
            return
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(self.KILL_AFTER)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(1.0)

    @property
    def exitcode(self):
        return self._process.exitcode if self._spawned else None

"""Stage runners: run a stage loop in a thread or in a child process.

A frontend chooses the runner class (``sr_cls``): ``ProcessRunner`` for the
real pipeline (each stage its own process, so heavy views run in parallel
and a crash in user code cannot take the frontend down), ``ThreadRunner``
for tests and embedding with ``inproc://`` addresses.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import threading

log = logging.getLogger(__name__)

__all__ = ["StageRunner", "ThreadRunner", "ProcessRunner"]


def _stage_main(target, kwargs):
    """Entry point of a stage process: run the loop, exit with its code."""
    # The frontend owns shutdown: Ctrl-C in a terminal reaches the whole
    # process group, and children must not die before being told to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # SIGTERM (from the frontend, or the kernel when the frontend died)
    # leaves through the stage's finally blocks, which close its sockets.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    _die_with_parent()
    raise SystemExit(target(**kwargs) or 0)


def _exit_on_signal(signum, frame):
    raise SystemExit(128 + signum)


def _die_with_parent():
    """Ask Linux to send SIGTERM when the frontend process dies (no orphans)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the parent's close() must do
        pass
    if os.getppid() == 1:  # the parent died before prctl took effect
        raise SystemExit(1)


class StageRunner:
    """Runs ``target(**kwargs)``; subclasses choose thread or process."""

    #: Whether the stage shares the frontend's ZeroMQ context (inproc works).
    shares_context = False
    #: Whether a stuck stage can be stopped (and so replaced).
    can_stop = False

    def __init__(self, target, kwargs, name):
        self.target = target
        self.kwargs = kwargs
        self.name = name
        self.started = False

    def start(self):
        raise NotImplementedError

    def is_alive(self):
        raise NotImplementedError

    def join(self, timeout=None):
        raise NotImplementedError

    def stop(self):
        """Force the stage to end (used after it ignored the stop message)."""

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


class ProcessRunner(StageRunner):
    """A stage in a spawned child process (never forked: fresh ZeroMQ state)."""

    can_stop = True

    def start(self):
        self.started = True
        mp = multiprocessing.get_context("spawn")
        self._process = mp.Process(target=_stage_main, args=(self.target, self.kwargs),
                                   name=f"metropc-{self.name}", daemon=True)
        self._process.start()

    @property
    def pid(self):
        return self._process.pid if self.started else None

    def is_alive(self):
        return self.started and self._process.is_alive()

    def join(self, timeout=None):
        if self.started:
            self._process.join(timeout)

    def stop(self):
        if not self.started:
            return
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(1.0)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(1.0)

    @property
    def exitcode(self):
        return self._process.exitcode if self.started else None

"""Starting and stopping the recorder process from the pipeline's side.

``metropc-run --record`` uses :class:`RecorderProcess`; tests and scripts
that run a :class:`metropc.pipeline.Pipeline` can too::

    with RecorderProcess("run.h5") as rec:       # refuses an unwritable path
        with Pipeline(ctx, source=None) as pipe:
            rec.connect(pipe.output_addr)         # returns once subscribed
            ...                                   # send events
        # leaving the with blocks stops the recorder: everything is written

The recorder is a process of its own so that writing (HDF5, the disk)
never slows REDUCE, and so that a recorder that fails (a full disk) leaves
the pipeline running.  It is started before the pipeline, so that its
imports are done by the time the output exists and it misses nothing.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time

__all__ = ["RecorderProcess", "RecorderError"]

log = logging.getLogger("metropc.recording")


class RecorderError(RuntimeError):
    """The recorder could not start, or stopped on its own (see its message)."""


class RecorderProcess:
    """A recorder child process writing to `path` (see metropc.recording.recorder).

    Parameters
    ----------
    path : str
        A recording file, or a directory (one file per run).
    views : iterable of str, optional
        Record only these views.
    keys : str, optional
        Key directory of a pipeline secured with CURVE.
    timeout : float
        Seconds to wait for the process to open `path`.
    """

    def __init__(self, path: str, *, views=None, keys: str | None = None,
                 timeout: float = 30.0, flush_interval: float | None = None):
        self.path = path
        cmd = [sys.executable, "-m", "metropc.recording.recorder", path]
        if views is not None:
            cmd += ["--views", ",".join(views)]
        if keys is not None:
            cmd += ["--keys", keys]
        if flush_interval is not None:
            cmd += ["--flush-interval", str(flush_interval)]
        self._stopping = False
        #: When the recorder last said it flushed (every flush interval).
        self.last_alive = time.monotonic()
        self._lines: queue.Queue = queue.Queue()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1)
        self._reader = threading.Thread(target=self._read, name="metropc-recorder-out",
                                        daemon=True)
        self._reader.start()
        line = self._expect(("opened", "error:"), timeout)
        if line != "opened":
            self.proc.wait(timeout)
            raise RecorderError(line.partition(": ")[2] if line else
                                f"the recorder did not start (exit {self.proc.returncode})")

    def _read(self):
        for line in self.proc.stdout:
            line = line.strip()
            if line == "alive":
                self.last_alive = time.monotonic()
                continue
            if line == "failed" and not self._stopping:
                log.error("recording to %s stopped (see the message above); the "
                          "pipeline goes on", self.path)
            self._lines.put(line)
        self._lines.put(None)

    def _expect(self, prefixes, timeout) -> str | None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return None
            if line is None or line.startswith(prefixes):
                return line

    def connect(self, address: str, timeout: float = 30.0) -> bool:
        """Subscribe to a pipeline's output; True once the recorder is
        subscribed (it received an index), False if not within `timeout`."""
        self._send(f"connect {address}")
        return self._expect(("ready", "failed"), timeout) == "ready"

    def send_meta(self, topic: str, payload: dict) -> None:
        """Record a metadata message (``context``, ``params``, ``mark``) that
        the output published before the recorder was subscribed, e.g. the
        first context.  Values JSON cannot hold are recorded as their repr."""
        import json

        self._send("meta " + json.dumps({"topic": topic, "payload": payload},
                                        default=repr))

    def _send(self, line: str) -> None:
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass  # it ended already; stop() reports how

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def silent_for(self) -> float:
        """Seconds since the recorder last flushed its file: it says so every
        flush interval (1 s), so a long silence is a write that hangs (a
        hung network disk) or a stopped process; nothing else tells."""
        return time.monotonic() - self.last_alive

    def stop(self, timeout: float = 10.0) -> int:
        """Write what is left, close the files, end the process; its exit code."""
        self._stopping = True
        try:  # a recorder stopped (SIGSTOP) would not hear the stop: continue it
            os.kill(self.proc.pid, signal.SIGCONT)
        except OSError:  # (gone already)
            pass
        self._send("stop")
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error("the recorder did not stop within %g s; killing it (the file "
                      "keeps what was flushed)", timeout)
            self.proc.kill()
            code = self.proc.wait()
        self._reader.join(1.0)
        return code

    def __enter__(self) -> RecorderProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

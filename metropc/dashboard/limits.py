"""Limits shared by the two HTTP servers of a pipeline: the dashboard's and
the metrics server's.

Both run inside the ``metropc-run`` process, beside the frontend that needs
file descriptors to restart a stage, open shared memory or accept a worker.
Whoever can reach their port must therefore not be able to take those
descriptors: each server closes connections that stay idle (or send their
headers too slowly), holds at most :func:`connection_cap` connections and
closes any beyond at once, and when ``accept()`` fails for want of
descriptors it says so once and pauses instead of retrying in a busy loop
that logs each failure.  :class:`LogThrottle` keeps all these messages (and
any other that a peer can trigger at will) to one line per interval.
"""

from __future__ import annotations

import errno
import logging
import threading
import time

__all__ = ["ACCEPT_PAUSE", "FD_ERRORS", "LogThrottle", "accept_failure", "connection_cap",
           "fd_limit"]

#: ``accept()`` errors that mean "no descriptor or memory for a new
#: connection now": trying again at once fails again.
FD_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

#: Seconds a server stops accepting after ``accept()`` failed.
ACCEPT_PAUSE = 0.5


def fd_limit() -> int | None:
    """The process's soft limit of open files (``ulimit -n``), None if unknown."""
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return None
    return None if soft == resource.RLIM_INFINITY else int(soft)


def connection_cap(wanted: int) -> int:
    """`wanted`, but at most a quarter of the process's descriptor limit (and
    at least 4), so that the two servers together never hold more than half
    of the descriptors of the process they share with the pipeline."""
    if wanted < 1:
        raise ValueError(f"max_connections must be at least 1, got {wanted}")
    limit = fd_limit()
    return wanted if limit is None else min(wanted, max(4, limit // 4))


def accept_failure(server: str, port: int, error: OSError) -> str:
    """The warning for a failed ``accept()``: what failed, on which port,
    the limit that was reached, and what the server does about it."""
    if error.errno == errno.EMFILE:
        why = f"this process has all the {fd_limit()} files it may open (ulimit -n)"
    elif error.errno == errno.ENFILE:
        why = "the system has all the files it may open (fs.file-max)"
    else:
        why = "the system is short of memory for sockets"
    return (f"{server}: cannot accept connections on port {port}: {error.strerror}: {why}; "
            f"trying again every {ACCEPT_PAUSE:g} s")


class LogThrottle:
    """Log a message the first time, then at most once per `interval`
    seconds with the number of times it happened meanwhile.

    For events that a peer can cause as often as it likes (a refused
    connection, a malformed message, ``accept()`` failing): one line says
    it happens and how often, where one line per event would flood the log.
    ``throttle("refused %s", who)`` returns True if it logged.
    """

    def __init__(self, logger: logging.Logger, interval: float = 60.0,
                 level: int = logging.WARNING, clock=time.monotonic):
        self.logger = logger
        self.clock = clock
        self.interval = float(interval)
        self.level = level
        self.count = 0              # every call, logged or not
        self._suppressed = 0
        self._last: float | None = None
        self._lock = threading.Lock()  # the metrics server calls from many threads

    def __call__(self, msg: str, *args) -> bool:
        with self._lock:
            self.count += 1
            now = self.clock()
            if self._last is not None and now - self._last < self.interval:
                self._suppressed += 1
                return False
            first, suppressed = self._last is None, self._suppressed
            since = 0.0 if first else now - self._last
            self._last, self._suppressed = now, 0
        if first:
            msg += " (repeats are logged at most once every %g s, with their number)"
            args += (self.interval,)
        elif suppressed:
            msg += " (and %d more times in the last %.0f s)"
            args += (suppressed, since)
        self.logger.log(self.level, msg, *args)
        return True

"""When REDUCE reports its progress to the frontend (sans I/O: a clock is passed in).

REDUCE tells the frontend how far it got every PROGRESS_INTERVAL while
events flow: the frontend paces dispatching by it and restarts a dead
REDUCE from it.  The report wakes the frontend thread.  Sent in the same
round as a lone event's result, that wake-up comes just when the client
wakes for the result, and on a small machine the two compete for a core:
measured at 100 Hz on two cores, the last hop took 160 us instead of 103 us
(medians) for the one event in five whose result met such a report.  So
after a round that published a lone event the report waits until REDUCE
has been idle for `quiet` seconds, but never more than `late` seconds past
its time (or past the first result after a silence), so that a steady
stream of lone events still gets its reports.  The loop wakes for a report
while one is :attr:`ProgressClock.pending`, even if nothing else comes.
A round of several results (events arriving faster than REDUCE wakes) is
throughput, not latency: its report goes on time.
"""

from __future__ import annotations

__all__ = ["ProgressClock", "PROGRESS_INTERVAL", "PROGRESS_QUIET", "PROGRESS_LATE", "LONE_MAX"]

#: How often REDUCE tells the frontend how far it got (if it moved): what a
#: replacement would miss if REDUCE died now is at most about this much of events.
PROGRESS_INTERVAL = 0.02
#: Idle time after a lone event's round before its report goes.
PROGRESS_QUIET = 0.001
#: The most a report waits past its time for REDUCE to be idle.
PROGRESS_LATE = 0.005
#: A round of at most this many results published a "lone" event.
LONE_MAX = 3


class ProgressClock:
    """Decides when the next progress report is due; the loop sends it."""

    def __init__(self, interval: float = PROGRESS_INTERVAL, quiet: float = PROGRESS_QUIET,
                 late: float = PROGRESS_LATE):
        self.interval, self.quiet, self.late = interval, quiet, late
        self.next = 0.0          # when the next report is due
        self.quiet_until = 0.0   # not before this, unless `late` past `next`
        #: Results were published since the last report: the loop must wake
        #: for the next one even if nothing else comes.
        self.pending = False

    def published(self, now: float, count: int) -> None:
        """A round published `count` results at `now`."""
        if count > 0 and not self.pending:
            # The first results since the last report: the report may be
            # late from now on, not from when it fell due with nothing new.
            self.pending = True
            self.next = max(self.next, now)
        if 0 < count <= LONE_MAX:
            self.quiet_until = now + self.quiet

    def due(self, now: float) -> bool:
        """Whether to report now."""
        return now >= self.next and (now >= self.quiet_until or now >= self.next + self.late)

    def reported(self, now: float) -> None:
        """The loop reported (or had nothing new) at `now`."""
        self.next = now + self.interval
        self.pending = False

    def wait(self, now: float) -> float:
        """Seconds until :meth:`due` turns true, if nothing else happens."""
        return max(self.next, min(self.quiet_until, self.next + self.late)) - now

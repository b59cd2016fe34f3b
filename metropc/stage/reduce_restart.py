"""REDUCE's side of being replaced: the restart point it reports, and the
take-over by a REDUCE that replaces one that died.

The frontend starts a new REDUCE where the dead one's last progress report
said (:meth:`FrontendLoop.reduce_restart
<metropc.stage.frontend_loop.FrontendLoop.reduce_restart>`).  Two parts of
that are REDUCE's, each a small class without I/O that the stage owns:

- :class:`RestartPoint` makes the progress report, whose restart state
  lags one report behind (why: :meth:`RestartPoint.report`);
- :class:`Takeover` is what a new REDUCE waits for: the dead one's clients
  to subscribe again, and results that may still come (``doubtful``).

Kept apart from :class:`~metropc.stage.reduce.ReduceStage` so that these
timing rules are read, and can be tested, on their own (with a clock of
their own), not among the handling of events.
"""

from __future__ import annotations

import time

__all__ = ["RestartPoint", "Takeover", "SUBSCRIBE_GRACE"]

#: Seconds a restarted REDUCE holds results back until the clients of the
#: one that died have subscribed again.
SUBSCRIBE_GRACE = 2.0


class RestartPoint:
    """The progress reports of REDUCE to the frontend (OP_PROGRESS)."""

    def __init__(self):
        self._sent = None
        self._next = None   # taken last time, reported next time

    def report(self, state):
        """What the frontend needs, if changed: how far this stage got (for
        its dispatch window) and where to restart it after a crash.

        `state` is the stage's now: ``(next_seq, lost, stale, subscription
        prefixes (a tuple, oldest first), run, state, output_dropped, events out)``; called every
        PROGRESS_INTERVAL.  The restart state (``next_seq`` and the
        counters) reported is the one taken at the call before: a result is
        published by handing it to ZeroMQ, whose I/O thread writes it out a
        moment later, so a report of the state at once could name an event
        whose result died with this process (SIGKILL) before it left, and
        the new REDUCE would count it neither received nor lost.  One
        interval old, every result the report covers has left; the events
        of the last interval are counted lost after a crash, even if their
        results got out.  ``done_seq`` is current: the frontend only paces
        dispatching by it, and a lagging window would idle the pipeline.
        """
        report, self._next = self._next, state
        if report is None or (report, state[0]) == self._sent:
            return None
        self._sent = (report, state[0])
        return {"next_seq": report[0], "done_seq": state[0], "lost": report[1],
                "stale": report[2], "subs": list(report[3]), "run": report[4],
                "state": report[5], "output_dropped": report[6], "events": report[7]}

    @property
    def pending(self) -> bool:
        """Whether the state taken last is not reported yet: the loop must
        wake for the next report even if nothing else comes (an idle
        REDUCE would otherwise keep the frontend waiting on its window)."""
        sent = self._sent
        return self._next is not None and (sent is None or self._next != sent[0])


class Takeover:
    """What a REDUCE that replaces one that died waits for.

    Clients reconnect on their own within moments: results published
    before their subscriptions are back would be lost to them unseen, so
    results are held back until the subscription prefixes the dead REDUCE
    had (``clients_back``) are back, or for SUBSCRIBE_GRACE seconds at most.
    Events whose results may still come (``doubtful``) get `grace` seconds
    from when results are read again, then they are lost.
    """

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.doubtful = []          # results that may still come (seqs)
        self.doubtful_until = 0.0
        self.clients_back = set()   # subscription prefixes to wait for
        self.clients_until = 0.0
        self.grace = 1.0

    def start(self, data):
        """Take over: `data` is the restart's context message (``doubtful``,
        ``grace`` and ``subs`` are read here)."""
        self.doubtful = list(data.get("doubtful") or ())
        self.grace = float(data.get("grace", 1.0))
        self.doubtful_until = self.clock() + self.grace
        self.clients_back = set(data.get("subs") or ())
        self.clients_until = self.clock() + SUBSCRIBE_GRACE

    def awaiting_clients(self, prefixes):
        """Whether results wait for the clients of the REDUCE that died to
        subscribe again (`prefixes`: the subscriptions there are now)."""
        if not self.clients_back:
            return False
        now = self.clock()
        if self.clients_back <= prefixes or now > self.clients_until:
            self.clients_back = set()
            # Results are read again from now on: their grace starts now.
            self.doubtful_until = max(self.doubtful_until, now + self.grace)
            return False
        return True

    def given_up(self, prefixes):
        """The doubtful events whose grace is over: lost (each returned once)."""
        if self.doubtful and not self.awaiting_clients(prefixes) and (
                self.clock() >= self.doubtful_until):
            doubtful, self.doubtful = self.doubtful, []
            return doubtful
        return []

"""REDUCE's side of the ASYNC stage: the newest inputs of the async views.

ASYNC views (:mod:`metropc.stage.async_stage`) run in a process of their
own, at their own pace, on the newest results they read.  REDUCE keeps a
reference to each such result as events pass (no copies, nothing queued)
and sends what it has when the ASYNC stage asks (``want``) and something
is new: at most one ``inputs`` message in flight, so the stream goes on at
full rate however slow the async views are.  :class:`AsyncFeed` is that
bookkeeping, and passes resets of async views on; the results that come
back (``aresult``) are the stage's to count and publish like any view's.

Kept apart from :class:`~metropc.stage.reduce.ReduceStage` (which owns an
:class:`AsyncFeed`): it is state of its own about another process, and
nothing of the stage's event handling needs to know it beyond
:meth:`AsyncFeed.feed`.
"""

from __future__ import annotations

from ..messages import OP_RESET
from .common import send

__all__ = ["AsyncFeed"]


class AsyncFeed:
    """What REDUCE holds for the ASYNC stage, and whether it asked for it."""

    def __init__(self):
        self.socket = None     # the ROUTER the ASYNC stage connects to (run_reduce's)
        self.peer = None       # its identity on that socket
        self.latest = {}       # newest results the async views read
        self.fresh = False     # new ones since the last `inputs`
        self.wanted = False    # the async stage asked for inputs
        self.event = None      # the event id of the newest

    def new_context(self):
        """Another context is used: what the old one's views produced is no input."""
        self.latest, self.fresh = {}, False

    def feed(self, names, pool_results, results, event_id):
        """Keep the newest results the async views read (`names`; references,
        no copies), from an event's `pool_results` and REDUCE `results`."""
        latest = self.latest
        fresh = False
        for name in names:
            value = results.get(name, pool_results.get(name))
            if value is not None:
                latest[name] = value
                fresh = True
        if fresh:
            self.fresh = True
            self.event = event_id

    def want(self, version, current):
        """The ASYNC stage is ready for inputs; it has context `version`,
        this stage `current` (None: none yet)."""
        self.wanted = True
        if version != current:
            self.fresh = True  # a new context there: give it what there is

    def inputs_message(self, version, run):
        """``(peer, inputs message)`` when the ASYNC stage asked and there is
        something new (or None): at most one in flight, never queued."""
        if not (self.wanted and self.fresh and self.peer is not None):
            return None
        self.wanted = self.fresh = False
        return self.peer, {"inputs": dict(self.latest), "event_id": self.event,
                           "version": version, "run": run}

    def reset(self, names):
        """Async views `names` are reset with the others (a ``reset`` mark)."""
        if names and self.peer is not None and self.socket is not None:
            send(self.socket, OP_RESET, {"views": names}, prefix=[self.peer])

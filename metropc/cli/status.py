"""The terminal status of ``metropc-run``, read from the pipeline's index.

It reads the output with :class:`metropc.client.Client` (the index only),
like any client and like the dashboard's reader, so what it shows is what
clients see, and a pipeline secured with ``--keys`` works the same way:
events/s out, per-view counts, rates and errors, drops.  It also shows
which context version runs and, after a refused edit, that the previous
version goes on and why (file:line).

Two forms: :meth:`StatusDisplay.render` gives a rich renderable for the
live region at the bottom of a terminal (``metropc-run`` keeps it there
with :class:`rich.live.Live`, log lines scroll above it), and
:meth:`StatusDisplay.summary` a one-line summary printed now and then when
stderr is not a terminal.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time

from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..client import Client
from ..error import ProtocolError
from ..index import IndexViewEntry, slowest_views
from ..timing import format_seconds

log = logging.getLogger(__name__)


#: How the status line names the pipeline's states (docs/pipeline.md).
STATE_WORDS = {"READY": "ready", "RUN": "running", "STOP": "PAUSED (p resumes)",
               "ENDED": "ended"}

class ContextState:
    """Which context version runs, and the latest refused edit if any."""

    def __init__(self, path=None):
        self.name = os.path.basename(path) if path else "context"
        self.version = None
        self.views = None
        self.refused = None      # "ctx.py:15: message" of the last refused edit
        self.refused_at = None   # wall-clock time of it

    def loaded(self, version, views):
        if self.version is not None and version != self.version:
            self._previous = (self.version, self.views)
        self.version, self.views = version, views
        self.refused = self.refused_at = None

    _previous = None
    _STAGE_REFUSAL = re.compile(r"context version (\d+) refused, the previous one keeps "
                                r"running: (.*)", re.S)

    def stage_message(self, msg):
        """A stage's error message; a refused context version is noted.

        A context that builds here can still be refused by a stage (the
        reload is two-phase, docs/pipeline.md), and then the previous
        version goes on everywhere.
        """
        m = self._STAGE_REFUSAL.search(str(msg))
        if m is None:
            return
        if int(m[1]) == self.version and self._previous is not None:
            self.version, self.views = self._previous
        self.refuse(m[2].strip())

    def refuse(self, where_and_why):
        self.refused = where_and_why
        self.refused_at = time.time()

    def line(self):
        if self.version is None:
            return Text(f"{self.name}: starting", style="dim")
        text = Text(f"{self.name}: version {self.version} running "
                    f"({self.views} views)")
        if self.refused:
            stamp = time.strftime("%H:%M:%S", time.localtime(self.refused_at))
            text.append(f" — the edit saved at {stamp} was refused, so version "
                        f"{self.version} goes on: ", style="bold red")
            text.append(self.refused, style="red")
        return text


class StatusDisplay:
    """Keeps the latest index of a pipeline's output and shows it.

    Parameters
    ----------
    output_addr : str
        The pipeline's output address.
    event_alias : str
        The context's event alias (``internal#<alias>`` counts events out).
    keys : str or metropc.security.Keys, optional
        Key directory of a pipeline secured with CURVE.
    context : ContextState, optional
        Context version and refused edits, shown on the second line.
    stream : file, optional
        Where :meth:`print_summary` writes (default stderr).
    line_interval : float
        Seconds between summaries of :meth:`update` in line mode.
    """

    def __init__(self, output_addr, event_alias="event", *, keys=None, context=None,
                 stream=None, line_interval=10.0, live=False):
        self.event_path = f"internal#{event_alias}"
        self.context = context or ContextState()
        self.stream = stream
        self.line_interval = line_interval
        self.live = live
        self.client = Client(output_addr, keys=keys, timeout=0)
        self.output_addr = output_addr
        #: Rows of the terminal (a callable), so that the live region leaves
        #: half of it to the log; None: every view is listed.
        self.height = None
        self._last_line = time.monotonic()
        self._last_index = None  # when the latest index came (monotonic)
        #: Fresher counts than the index's, for the last line of a run
        #: (:meth:`ThreadedFrontend.latest_counts`): set when the run ends.
        self.latest: dict[str, int] | None = None

    @property
    def index(self):
        return self.client.index

    def poll(self):
        """Take every index message waiting; True if the index changed."""
        changed = False
        try:
            while True:
                self.client.wait_index(timeout=0)
                changed = True
        except TimeoutError:
            pass
        except ProtocolError as e:
            log.warning("status: malformed index message: %s", e)
        if changed:
            self._last_index = time.monotonic()
        return changed

    def refresh(self, request, timeout: float = 2.0) -> bool:
        """Ask for an index now (`request()`) and take the next one that
        comes within `timeout` seconds: the numbers of now, not of up to a
        second ago (a short run may not have had any index yet)."""
        self.poll()
        request()
        try:
            self.client.wait_index(timeout=timeout)
        except (TimeoutError, ProtocolError):
            return False
        self._last_index = time.monotonic()
        return True

    def update(self, final=False):
        """Poll; in line mode print a summary every `line_interval` seconds."""
        self.poll()
        if self.live or self.index is None:
            return
        now = time.monotonic()
        if final or now - self._last_line >= self.line_interval:
            self._last_line = now
            print(self.summary(), file=self.stream or sys.stderr, flush=True)

    def summary(self):
        idx = self.index
        if idx is None:
            return "metropc: waiting for the first index from the output"

        def count(path):
            entry = idx.get(path)
            return entry.counts if entry is not None else 0

        latest = self.latest or {}

        def newest(path, key):  # (counts only grow: the larger is the newer)
            return max(count(path), latest.get(key, 0))

        events = idx.get(self.event_path)
        out = f"out {newest(self.event_path, 'events')}" + (
            f" ({events.rate:.1f}/s)" if events else "")
        errors = sum(e.errors for e in idx.values() if isinstance(e, IndexViewEntry))
        status = self.client.status
        state = status.get("state")
        if state is not None and self.latest is not None:  # the last line: not running
            state = "ENDED"
        where = "" if state is None else (
            f"; {STATE_WORDS.get(state, state)}"
            + (f", run {status['run']}" if status.get("run") is not None else ""))
        paused = count("internal#paused_events")
        # Which view is slow: from the index's timing#<view> entries, measured
        # where each view runs over the last 10 s (docs/operations.md).
        slowest = slowest_views(idx, 1)
        slowest = (f"; slowest view {slowest[0][0]} (p99 {format_seconds(slowest[0][1].p99)})"
                   if slowest else "")
        return (f"metropc: {out}, dropped {newest('internal#dropped_events', 'dropped')}, "
                f"lost {newest('internal#lost_events', 'lost')}, view errors {errors}"
                + (f", refused while paused {paused}" if paused else "") + where + slowest
                + self._staleness()
                # (the last line: what to check the counts against)
                + (f"; fed {latest['fed']}" if latest.get("fed") is not None else ""))

    #: The index comes about once a second; this much later, the numbers are old.
    STALE_AFTER = 3.0

    def _staleness(self):
        age = None if self._last_index is None else time.monotonic() - self._last_index
        if age is None or age < self.STALE_AFTER:
            return ""
        return (f"; NO INDEX FOR {age:.0f} s: these numbers are old (REDUCE busy or "
                "stopped?)")

    def render(self):
        """The live region: summary, context line, one row per view."""
        parts = [Text(self.summary(), style="bold"), self.context.line()]
        if self.index is not None:
            table = Table(box=None, pad_edge=False, show_edge=False,
                          header_style="bold dim")
            table.add_column("view", overflow="fold")
            table.add_column("output")
            table.add_column("stage")
            table.add_column("count", justify="right")
            table.add_column("rate/s", justify="right")
            table.add_column("errors", justify="right")
            views = sorted((p, e) for p, e in self.index.items()
                           if isinstance(e, IndexViewEntry) and not e.hidden)
            shown, more = self._fit(views)
            for path, e in shown:
                table.add_row(path[5:], e.output.name, e.stage.name, str(e.counts),
                              f"{e.rate:.1f}", str(e.errors),
                              style="red" if e.errors else None)
            parts.append(table)
            if more:
                parts.append(Text(f"... and {more} more views (metropc-client "
                                  f"{self.output_addr} lists every one)", style="dim"))
        return Group(*parts)

    def _fit(self, views):
        """The views that fit in half the terminal, those that fail first;
        and how many did not fit.  Many views would fill the screen, and the
        log lines (a refused edit, a failing view) would have no room."""
        if self.height is None:
            return views, 0
        # (the other rows: summary, context, header and the "more" line)
        room = max(3, self.height() // 2 - 4)
        if len(views) <= room + 1:
            return views, 0
        failing = [v for v in views if v[1].errors]
        shown = (failing + [v for v in views if not v[1].errors])[:room]
        return sorted(shown), len(views) - len(shown)

    def __rich__(self):
        return self.render()

    def close(self):
        self.client.close()

"""The live terminal status of ``metropc-run``, read from the pipeline's index.

It listens to the output like any client (topic ``b"index"`` only), so what
it shows is exactly what clients see: events/s in and out, per-view counts,
rates and errors, drops.
"""

from __future__ import annotations

import sys
import time

import zmq

from ..client import IndexViewEntry, decode_protocol


class StatusDisplay:
    """Redraws in place on a terminal (`live`), else prints a line now and then."""

    def __init__(self, frontend, live=True, stream=None, line_interval=10.0):
        self.frontend = frontend
        self.live = live
        self.stream = stream or sys.stderr
        self.line_interval = line_interval
        self._zctx = zmq.Context()
        self._sub = self._zctx.socket(zmq.SUB)
        self._sub.linger = 0
        self._sub.connect(frontend.output_addr)
        self._sub.subscribe(b"index")
        self.index = None
        self._last_line = 0.0
        self._lines_drawn = 0

    def update(self, final=False):
        while self._sub.poll(0):
            try:
                path, data = decode_protocol(self._sub.recv_multipart())
            except ValueError:
                continue
            if path == b"index":
                self.index = data
        if self.index is None:
            return
        now = time.monotonic()
        if self.live and not final:
            self._draw(self.render())
        elif final or now - self._last_line >= self.line_interval:
            self._last_line = now
            print(self.summary(), file=self.stream, flush=True)

    def summary(self):
        idx = self.index
        events = next((e for p, e in idx.items() if p.startswith("internal#")
                       and p not in _COUNTERS and not isinstance(e, IndexViewEntry)
                       and p == self._event_path()), None)
        out = f"out {events.counts} ({events.rate:.1f}/s)" if events else "out 0"
        dropped = idx.get("internal#dropped_events")
        errors = sum(e.errors for e in idx.values() if isinstance(e, IndexViewEntry))
        return (f"metropc: {out}, dropped {dropped.counts if dropped else 0}, "
                f"lost {idx.get('internal#lost_events').counts if 'internal#lost_events' in idx else 0}, "
                f"view errors {errors}")

    def _event_path(self):
        ctx = getattr(self.frontend, "ctx", None)
        alias = ctx.event_alias if ctx is not None else "event"
        return f"internal#{alias}"

    def render(self):
        lines = [self.summary(), f"{'view':<32} {'output':<20} {'stage':<7} "
                                 f"{'count':>8} {'rate/s':>8} {'errors':>6}"]
        for path, e in sorted(self.index.items()):
            if isinstance(e, IndexViewEntry):
                lines.append(f"{path[5:]:<32} {e.output.name:<20} {e.stage.name:<7} "
                             f"{e.counts:>8} {e.rate:>8.1f} {e.errors:>6}")
        return lines

    def _draw(self, lines):
        out = self.stream
        if self._lines_drawn:
            out.write(f"\x1b[{self._lines_drawn}F")
        for line in lines:
            out.write("\x1b[2K" + line + "\n")
        out.flush()
        self._lines_drawn = len(lines)

    def close(self):
        self._sub.close(0)
        self._zctx.term()


_COUNTERS = ("internal#dropped_events", "internal#lost_events", "internal#stale_events")

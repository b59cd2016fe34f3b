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

    def __init__(self, output_addr, event_alias="event", live=True, stream=None,
                 line_interval=10.0):
        self.event_path = f"internal#{event_alias}"
        self.live = live
        self.stream = stream or sys.stderr
        self.line_interval = line_interval
        self._zctx = zmq.Context()
        self._sub = self._zctx.socket(zmq.SUB)
        self._sub.linger = 0
        self._sub.connect(output_addr)
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

        def count(path):
            entry = idx.get(path)
            return entry.counts if entry is not None else 0

        events = idx.get(self.event_path)
        out = f"out {events.counts} ({events.rate:.1f}/s)" if events else "out 0"
        errors = sum(e.errors for e in idx.values() if isinstance(e, IndexViewEntry))
        return (f"metropc: {out}, dropped {count('internal#dropped_events')}, "
                f"lost {count('internal#lost_events')}, view errors {errors}")

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


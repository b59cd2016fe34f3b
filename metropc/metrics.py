"""Prometheus metrics and a JSON status of a running pipeline, over HTTP.

Operators watch facility services with Prometheus and Grafana; this module
lets them watch a pipeline the same way.  :class:`MetricsServer` serves

- ``/metrics``: the Prometheus text format, made by ``prometheus_client``
  from the pipeline's index (per-view calls, errors and latency histograms,
  stage load, queues, shared memory, dropped/lost/stale counters);
- ``/status``: JSON with the state, context version and file, run number,
  stages (pids, alive, restarts, busy) and counters.

It reads the index as a client does (:class:`metropc.client.Client`, keys
included), so what it reports is what every client sees; given the
:class:`~metropc.pipeline.Pipeline` object (``metropc-run --metrics``) it
also asks it for what only the frontend knows: process health, restarts
and the frontend's queue.  docs/operations.md ("Metrics and status")
explains every metric.  ``prometheus_client`` is optional
(``pip install 'metropc[metrics]'``); :func:`require_prometheus` says so
in one line.
"""

from __future__ import annotations

import http.server
import json
import logging
import socket
import sys
import threading
import time
from typing import Any

from .client import Client
from .error import ProtocolError
from .index import (OUTPUT_LATENCY, STAGE_PREFIX, TIMING_PREFIX, IndexEntry, IndexStageEntry,
                    IndexTimingEntry, IndexViewEntry, slowest_views)
from .dashboard.limits import (ACCEPT_PAUSE, FD_ERRORS, LogThrottle, accept_failure,
                               connection_cap)
from .timing import BOUNDS

__all__ = ["MetricsServer", "PipelineMetrics", "require_prometheus", "for_dashboard",
           "MISSING", "IDLE_TIMEOUT", "MAX_CONNECTIONS"]

log = logging.getLogger(__name__)

MISSING = "metrics need prometheus_client: pip install 'metropc[metrics]'"

#: Seconds a connection may take to send its request (and each read or write
#: may take): a scraper sends it at once, a held connection is closed.
IDLE_TIMEOUT = 10.0
#: Connections served at once (each one a thread of the frontend's process);
#: Prometheus needs one per scrape.
MAX_CONNECTIONS = 64

#: Index counters exported as Prometheus counters: path -> (name, help).
COUNTERS = {
    "internal#dropped_events": ("metropc_dropped_events",
                                "Events the frontend queue's drop policy dropped"),
    "internal#lost_events": ("metropc_lost_events",
                             "Events dispatched whose results never came"),
    "internal#stale_events": ("metropc_stale_events",
                              "Results computed under a context no longer in use"),
    "internal#output_dropped": ("metropc_output_dropped",
                                "Output messages dropped for a client that did not read"),
    "internal#rejected_messages": ("metropc_rejected_messages",
                                   "Malformed messages the frontend dropped"),
    "internal#paused_events": ("metropc_paused_events",
                               "Events refused while the pipeline was paused"),
    "internal#shm_reclaimed": ("metropc_shm_reclaimed",
                               "Shared-memory slots reclaimed from dead workers"),
    "internal#shm_full": ("metropc_shm_full",
                          "Times an event waited because no shared-memory slot was free"),
}


def require_prometheus() -> None:
    """ImportError with a one-line message if ``prometheus_client`` is missing."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ImportError(MISSING) from None


class PipelineMetrics:
    """The latest index and status of a pipeline, as metrics and as JSON.

    A thread reads the output's index with its own :class:`Client`;
    `pipeline` (optional) is asked for process ids, health and queues.
    """

    def __init__(self, output_addr: str, *, pipeline: Any = None, keys=None,
                 stop_when=None):
        self.output_addr = output_addr
        self.pipeline = pipeline
        self.keys = keys
        self._stop_when = stop_when  # a callable: True when the owner closed
        self._lock = threading.Lock()
        self._index: dict[str, IndexEntry] | None = None
        self._status: dict = {}
        self._index_time: float | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._read, name="metropc-metrics-index",
                                        daemon=True)
        self._registry = None  # made on the first scrape: /status needs no prometheus_client

    def start(self) -> PipelineMetrics:
        self._thread.start()
        self._ready.wait(5.0)
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _read(self):
        client = None
        try:
            client = Client(self.output_addr, keys=self.keys)
            self._ready.set()
            while not self._stop.is_set():
                if self._stop_when is not None and self._stop_when():
                    break
                try:
                    index = client.wait_index(timeout=0.25)
                except (TimeoutError, ProtocolError) as e:
                    if isinstance(e, ProtocolError):
                        log.warning("metrics: malformed index message: %s", e)
                    index = None
                with self._lock:
                    # The status comes right after its index: kept whenever it changed.
                    self._status = dict(client.status)
                    if index is not None:
                        self._index, self._index_time = index, time.monotonic()
        except Exception:  # noqa: BLE001 - reported, /status then says no index
            log.exception("metrics: index reader failed")
        finally:
            self._ready.set()
            if client is not None:
                client.close()

    def snapshot(self) -> tuple[dict[str, IndexEntry], dict, float | None]:
        """``(index, status, age in seconds)`` of the latest index ({} before one)."""
        with self._lock:
            index, status, t = self._index or {}, self._status, self._index_time
        return index, status, None if t is None else time.monotonic() - t

    # -- what only the Pipeline object knows ----------------------------------------------
    def _frontend(self):
        pipeline = self.pipeline
        return getattr(pipeline, "frontend", pipeline) if pipeline is not None else None

    def stages(self, index: dict[str, IndexEntry]) -> dict[str, dict]:
        """Per stage process: pid, alive, restarts (with a pipeline), events, busy."""
        out: dict[str, dict] = {}
        fe = self._frontend()
        runners = dict(getattr(fe, "_runners", None) or {})
        restarts = getattr(fe, "restarts", {}) or {}
        for name, runner in runners.items():
            try:
                alive = bool(runner.is_alive())
            except Exception:  # noqa: BLE001 - a runner being replaced
                alive = False
            out[name] = {"pid": getattr(runner, "pid", None), "alive": alive,
                         "restarts": int(restarts.get(name, 0))}
        for path, entry in index.items():
            if path.startswith(STAGE_PREFIX) and isinstance(entry, IndexStageEntry):
                info = out.setdefault(path[len(STAGE_PREFIX):], {"pid": entry.pid,
                                                                 "alive": None,
                                                                 "restarts": None})
                if info.get("pid") is None:
                    info["pid"] = entry.pid
                info.update(events=entry.counts, events_per_s=round(entry.rate, 3),
                            busy=round(entry.busy, 4), reported_pid=entry.pid)
        return out

    def queues(self, index: dict[str, IndexEntry]) -> dict[str, int]:
        """Queue depths: frontend queue and worker messages (with a pipeline),
        results waiting in REDUCE for their turn."""
        out = {}
        fe = self._frontend()
        queue = getattr(fe, "_queue", None)
        if queue is not None:
            out["frontend"] = len(queue.events)
        dispatcher = getattr(getattr(fe, "_state", None), "dispatcher", None)
        if dispatcher is not None:
            try:  # the frontend thread changes it meanwhile: a snapshot is enough
                out["in_flight"] = sum(len(d) for d in list(dispatcher.outstanding.values()))
            except RuntimeError:
                pass
        waiting = index.get("internal#reorder_waiting")
        if waiting is not None:
            out["reorder"] = waiting.counts
        return out

    def events_entry(self, index):
        """The index entry of the events out: ``internal#<event alias>``,
        which goes on across a REDUCE restart (as ``lost_events`` does, so
        that they add up), or, without a pipeline to name the alias,
        REDUCE's own count (``stage#reduce``, this REDUCE process's)."""
        alias = getattr(getattr(self.pipeline, "ctx", None), "event_alias", None)
        entry = index.get(f"internal#{alias}") if alias else None
        return entry if entry is not None else index.get(STAGE_PREFIX + "reduce")

    def status(self) -> dict:
        """The ``/status`` document (JSON-ready)."""
        index, status, age = self.snapshot()
        counters = {path.split("#", 1)[1]: e.counts for path, e in index.items()
                    if path in COUNTERS}
        events = self.events_entry(index)
        counters["events"] = events.counts if events is not None else 0
        counters["view_errors"] = sum(e.errors for e in index.values()
                                      if isinstance(e, IndexViewEntry))
        pipeline = self.pipeline
        errors = list(getattr(pipeline, "errors", None) or [])[-10:]
        return {
            "state": status.get("state"), "run": status.get("run"),
            "version": status.get("version"), "context": status.get("path"),
            "loaded_version": getattr(getattr(pipeline, "ctx", None), "version", None),
            "output_addr": self.output_addr, "index_age": age,
            "stages": self.stages(index), "queues": self.queues(index),
            "counters": counters,
            "shm": {k: index[f"internal#shm_{k}"].counts for k in ("slots_used", "bytes_used")
                    if f"internal#shm_{k}" in index} or None,
            "slowest_views": [{"view": name, "p50": e.p50, "p99": e.p99, "calls": e.counts}
                              for name, e in slowest_views(index, 5)],
            "errors": [str(e) for e in errors],
        }

    # -- prometheus_client collector ------------------------------------------------------
    def collect(self):
        """Metric families from the latest index (called on every scrape)."""
        from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                            HistogramMetricFamily)

        index, status, age = self.snapshot()
        view_stage = {path[5:]: e.stage.name.lower() for path, e in index.items()
                      if isinstance(e, IndexViewEntry)}
        calls = CounterMetricFamily("metropc_view_calls", "Calls of a view's code",
                                    labels=["view", "stage"])
        errors = CounterMetricFamily("metropc_view_errors", "Calls of a view that raised",
                                     labels=["view", "stage"])
        seconds = HistogramMetricFamily("metropc_view_seconds",
                                        "Time a view's code took per call",
                                        labels=["view", "stage"])
        for path, e in sorted(index.items()):
            if not (path.startswith(TIMING_PREFIX) and isinstance(e, IndexTimingEntry)):
                continue
            name = path[len(TIMING_PREFIX):]
            labels = [name, view_stage.get(name, "unknown")]
            calls.add_metric(labels, e.counts)
            errors.add_metric(labels, e.errors)
            seconds.add_metric(labels, _buckets(e.buckets), e.seconds)
        yield from (calls, errors, seconds)
        latency = index.get(OUTPUT_LATENCY)
        if isinstance(latency, IndexTimingEntry):
            family = HistogramMetricFamily(
                "metropc_event_latency_seconds",
                "From a POOL worker receiving an event to REDUCE publishing its results")
            family.add_metric([], _buckets(latency.buckets), latency.seconds)
            yield family
        stages = self.stages(index)
        busy = GaugeMetricFamily("metropc_stage_busy_ratio",
                                 "Fraction of recent time a stage process spent working",
                                 labels=["stage"])
        events = CounterMetricFamily("metropc_stage_events",
                                     "Events a stage process ran views for", labels=["stage"])
        up = GaugeMetricFamily("metropc_stage_up", "1 if the stage process is alive",
                               labels=["stage"])
        restarts = CounterMetricFamily("metropc_stage_restarts",
                                       "Times a stage process was replaced", labels=["stage"])
        for name, info in sorted(stages.items()):
            if "busy" in info:
                busy.add_metric([name], info["busy"])
                events.add_metric([name], info["events"])
            if info.get("alive") is not None:
                up.add_metric([name], 1.0 if info["alive"] else 0.0)
                restarts.add_metric([name], info["restarts"])
        yield from (busy, events, up, restarts)
        events = self.events_entry(index)
        if events is not None:
            yield CounterMetricFamily("metropc_events", "Events REDUCE finished",
                                      value=events.counts)
        for path, (name, text) in COUNTERS.items():
            entry = index.get(path)
            if entry is not None:
                yield CounterMetricFamily(name, text, value=entry.counts)
        depth = GaugeMetricFamily("metropc_queue_depth", "Items waiting in a queue",
                                  labels=["queue"])
        for name, n in sorted(self.queues(index).items()):
            depth.add_metric([name], n)
        yield depth
        for key, text in (("slots_used", "Shared-memory slots in use"),
                          ("bytes_used", "Shared-memory bytes in use")):
            entry = index.get(f"internal#shm_{key}")
            if entry is not None:
                yield GaugeMetricFamily(f"metropc_shm_{key}", text, value=entry.counts)
        if status.get("version") is not None:
            yield GaugeMetricFamily("metropc_context_version", "Context version running",
                                    value=status["version"])
        if age is not None:
            yield GaugeMetricFamily("metropc_index_age_seconds",
                                    "Seconds since the latest index arrived", value=age)

    def metrics_text(self) -> tuple[bytes, str]:
        """``(body, content type)`` of a ``/metrics`` answer."""
        require_prometheus()
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        if self._registry is None:
            self._registry = CollectorRegistry(auto_describe=False)
            self._registry.register(self)
        return generate_latest(self._registry), CONTENT_TYPE_LATEST


def _buckets(counts) -> list[tuple[str, int]]:
    """Cumulative ``(le, count)`` pairs of our bucket counts, ``+Inf`` last."""
    out, total = [], 0
    for bound, n in zip((*BOUNDS, float("inf")), counts):
        total += n
        out.append(("+Inf" if bound == float("inf") else repr(bound), total))
    if len(out) < len(BOUNDS) + 1:  # a record of another layout: only the total
        out = [("+Inf", sum(counts))]
    return out


def for_dashboard(dashboard) -> PipelineMetrics:
    """The metrics of the pipeline a :class:`metropc.dashboard.server.Dashboard`
    shows (made on first use; its reader ends when the dashboard stops)."""
    metrics = getattr(dashboard, "_pipeline_metrics", None)
    if metrics is None:
        metrics = PipelineMetrics(dashboard.output_addr,
                                  pipeline=getattr(dashboard.control, "target", None),
                                  keys=getattr(dashboard.hub, "keys", None),
                                  stop_when=lambda: dashboard._closed).start()
        dashboard._pipeline_metrics = metrics
    return metrics


class _Server(http.server.ThreadingHTTPServer):
    """The HTTP server, on IPv4 or IPv6 as the host is, with limits: it runs
    in the frontend's process, one thread per connection, so a peer that
    opens connections and sends nothing must not pile up threads and file
    descriptors there (docs/operations.md, "Metrics and status").

    - A connection must send its request line and headers within
      `idle_timeout` seconds (a watchdog in the serving thread shuts it
      down otherwise), and each read or write of its socket times out after
      as long: its thread then ends.
    - At most `max_connections` are open (:func:`connection_cap`); one
      more takes the place of the oldest that has not sent its request
      yet, or, if all are being answered, is closed at once (logged once a
      minute with the count).
    - ``accept()`` failing for want of file descriptors is logged once a
      minute and accepting pauses for :data:`ACCEPT_PAUSE` (socketserver
      would otherwise retry at once, in a busy loop).

    A client that goes away mid-answer is no error worth a traceback (slow
    or killed scrapers would fill the log with them).
    """

    daemon_threads = True
    #: Listen backlog (socketserver's 5 left a burst of scrapers waiting for
    #: the kernel's SYN retries, a second and more).
    request_queue_size = 64

    def __init__(self, host: str, port: int, *, idle_timeout: float = IDLE_TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS):
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.idle_timeout = float(idle_timeout)
        self.max_connections = connection_cap(max_connections)
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._reading: dict[socket.socket, float] = {}  # connection -> deadline of its headers
        self._next_sweep = 0.0
        self._wake = threading.Event()
        self.refused = LogThrottle(log)
        self.accept_failed = LogThrottle(log)
        #: Connections closed before their request to make room at the cap.
        self.evicted = 0
        super().__init__((host, port), _Handler)

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def get_request(self):
        """``accept()``; on EMFILE and the like a warning (once a minute) and a
        pause: the listening socket stays readable, and socketserver would
        call this again at once, for ever."""
        try:
            return super().get_request()
        except OSError as e:
            if e.errno not in FD_ERRORS:
                raise
            self.accept_failed(accept_failure("metrics", self.server_address[1], e))
            self._wake.wait(ACCEPT_PAUSE)
            raise

    def verify_request(self, request, client_address) -> bool:
        """Take the connection if fewer than `max_connections` are open, or
        if one of them has not sent its request yet: the oldest of those is
        closed for it.  A peer holding connections idle cannot lock out a
        scraper, which sends its request at once."""
        evicted = None
        with self._lock:
            if len(self._open) >= self.max_connections and self._reading:
                evicted = min(self._reading, key=self._reading.get)
                del self._reading[evicted]
                self._open.discard(evicted)
            if len(self._open) < self.max_connections:
                self._open.add(request)
                self._reading[request] = time.monotonic() + self.idle_timeout
                accepted = True
            else:
                accepted = False
        if evicted is not None:
            self.evicted += 1
            _hang_up(evicted)
        if accepted:
            return True
        self.refused("metrics: closed a connection from %s at once: %d are open, the most "
                     "this server takes (idle ones are closed after %g s)",
                     client_address[0], self.max_connections, self.idle_timeout)
        return False

    def headers_read(self, request) -> bool:
        """The handler has the headers: no deadline any more.  False if the
        watchdog closed the connection meanwhile (what was read is cut)."""
        with self._lock:
            return self._reading.pop(request, None) is not None

    def service_actions(self):
        """Shut down connections still sending their headers after
        `idle_timeout` (called by serve_forever every poll interval)."""
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + min(1.0, self.idle_timeout / 4)
        with self._lock:
            late = [r for r, deadline in self._reading.items() if deadline < now]
            for request in late:
                del self._reading[request]
        for request in late:
            log.debug("metrics: no request within %g s, closing", self.idle_timeout)
            _hang_up(request)

    def shutdown_request(self, request):
        with self._lock:
            self._open.discard(request)
            self._reading.pop(request, None)
        super().shutdown_request(request)

    def shutdown(self):
        self._wake.set()
        super().shutdown()

    def server_close(self):
        """Close the listening socket and end the connections still open
        (their threads would otherwise wait for their timeout)."""
        super().server_close()
        with self._lock:
            open_now = list(self._open)
        for request in open_now:
            _hang_up(request)

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], ConnectionError):
            log.debug("metrics: client %s went away", client_address)
            return
        super().handle_error(request, client_address)


def _hang_up(connection: socket.socket) -> None:
    """End `connection` from here: its handler's blocking read wakes with an
    end of file, and its thread ends (closing is left to that thread)."""
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:  # (gone already)
        pass


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "metropc-metrics"

    def setup(self):
        self.timeout = self.server.idle_timeout  # each read and write of the socket
        super().setup()

    def parse_request(self) -> bool:
        ok = super().parse_request()  # reads the headers
        if not self.server.headers_read(self.connection):
            self.close_connection = True  # cut off by the watchdog: no answer
            return False
        return ok

    def do_GET(self):  # noqa: N802 - http.server's name
        metrics: PipelineMetrics = self.server.metrics
        path = self.path.split("?", 1)[0]
        try:
            if path == "/metrics":
                body, kind = metrics.metrics_text()
            elif path == "/status":
                body, kind = json.dumps(metrics.status(), default=str).encode(), \
                    "application/json"
            else:
                self.send_error(404, "only /metrics and /status")
                return
        except Exception as e:  # noqa: BLE001 - one failed scrape, not a dead server
            log.exception("metrics: %s failed", path)
            self.send_error(500, f"{type(e).__name__}: {e}")
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        log.debug("%s %s", self.address_string(), fmt % args)


class MetricsServer:
    """``/metrics`` and ``/status`` of one pipeline, served from a thread.

    ``MetricsServer(pipeline.output_addr, port=9100, pipeline=pipeline).start()``;
    port 0 picks a free one (:attr:`port`).  Binding to a non-loopback host
    needs `allow_remote` (the status names files and processes).
    `idle_timeout` (seconds to send a request) and `max_connections` (open
    at once; more are closed at once) are the limits :class:`_Server` explains.
    """

    def __init__(self, output_addr: str, host: str = "127.0.0.1", port: int = 0, *,
                 pipeline: Any = None, keys=None, allow_remote: bool = False,
                 idle_timeout: float = IDLE_TIMEOUT, max_connections: int = MAX_CONNECTIONS):
        from .dashboard.address import is_loopback

        require_prometheus()
        if not is_loopback(host) and not allow_remote:
            raise ValueError(f"refusing to serve metrics on {host!r}, which is not a "
                             "loopback interface; pass --allow-remote to do it on purpose")
        self.metrics = PipelineMetrics(output_addr, pipeline=pipeline, keys=keys)
        self.host = host
        self._httpd = _Server(host.strip("[]"), int(port), idle_timeout=idle_timeout,
                              max_connections=max_connections)
        self._httpd.metrics = self.metrics
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.2},
                                        name="metropc-metrics-http", daemon=True)

    @property
    def url(self) -> str:
        host = self.host if ":" not in self.host else f"[{self.host.strip('[]')}]"
        return f"http://{host}:{self.port}/metrics"

    def start(self) -> MetricsServer:
        self.metrics.start()
        self._thread.start()
        log.info("metrics on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving and reading; idempotent."""
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(2.0)
        self._httpd.server_close()
        self.metrics.stop()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

"""The dashboard's web server: one page, one websocket per browser (Tornado).

Everything runs on one Tornado IO loop in a background thread of its own,
beside the :class:`~metropc.dashboard.hub.Hub` thread that reads the
pipeline's output.  Each browser gets a :class:`Session`; a timer (``fps``
times a second) lets every session send what changed **if the browser has
acknowledged what it got**: at most ``window`` messages are in flight per
browser, and a view whose result changed several times meanwhile is sent
once, with its latest value.  A slow browser therefore skips frames, a
frozen one stops receiving, and neither makes anything queue up here or in
the pipeline.

Messages to the browser: JSON text for ``hello``, ``index``, ``control`` and
``reply``; binary frames (:func:`metropc.dashboard.display.pack_frame`) for
view data.  From the browser (JSON): ``watch``, ``ack``, ``params``,
``action``, ``reset`` (``{"views": [...]}``, empty for all).  A malformed
message (not a JSON object, an unknown ``op``, a ``watch`` whose ``views``
is no object) changes nothing and is answered with ``{"op": "error",
"message": ...}``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import os
import secrets
import socket
import threading
import time
import urllib.parse

import tornado.httpserver
import tornado.netutil
import tornado.web
import tornado.websocket

from .._version import __version__
from ..enums import ViewStage
from ..index import IndexViewEntry
from . import display
from .address import check_bind, is_loopback
from .control import Control, parse_error, parse_value, roi_info
from .hub import Hub
from .http import LimitedHTTPServer
from .limits import LogThrottle, connection_cap

__all__ = ["STATIC_DIR", "Dashboard", "serve"]

log = logging.getLogger(__name__)

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")

_VIEW = "view#"

#: Messages a browser may have unacknowledged before we stop sending to it.
WINDOW = 8
#: Longest history a panel may ask for.
MAX_WINDOW = 100_000
#: Views one page may watch at once, and the longest view name taken.
MAX_WATCHED = 1024
MAX_NAME = 256
#: Error messages sent to the browser (the newest).
MAX_ERRORS = 50
#: Seconds an HTTP connection may wait for (or take to send) its next request
#: before it is closed; a websocket is not concerned once open.
IDLE_TIMEOUT = 30.0
#: Connections open at once, websockets included: a browser holds one
#: websocket and, for a few seconds, up to six HTTP connections.
MAX_CONNECTIONS = 256


class Session:
    """One browser: what it shows and what it has not acknowledged yet."""

    def __init__(self, dashboard, handler):
        self.dashboard = dashboard
        self.handler = handler
        self.watched: dict[str, int | None] = {}    # view -> history window
        self.sent: dict[str, tuple] = {}            # view -> (seq, window) sent
        self.last_sent: dict[str, float] = {}
        self.in_flight = 0
        self.index_sent = -1
        self.control_sent = -1
        self.messages = 0
        self.skipped_ticks = 0
        self.rejected = 0       # malformed messages from the browser
        self.closed = False

    def send_text(self, obj):
        self._write(json.dumps(obj, separators=(",", ":")), binary=False)

    def _write(self, message, binary):
        if self.closed:
            return
        try:
            done = self.handler.write_message(message, binary=binary)
        except tornado.websocket.WebSocketClosedError:
            self.closed = True
            return
        # A browser that goes away mid-write fails the write's future later;
        # retrieve that error so asyncio does not log it as never retrieved.
        done.add_done_callback(_retrieve)
        self.in_flight += 1
        self.messages += 1

    def set_watched(self, views):
        """Show `views`, ``{name: {"window": N}}``; ValueError for anything else."""
        if views is None:
            views = {}
        if not isinstance(views, dict):
            raise ValueError("views must be an object {name: {options}}, got "
                             f"{type(views).__name__}")
        hub = self.dashboard.hub
        if len(views) > MAX_WATCHED:
            raise ValueError(f"at most {MAX_WATCHED} views at once, got {len(views)}")
        new = {}
        for name, opts in views.items():
            if not isinstance(name, str) or not name or len(name) > MAX_NAME:
                continue
            window = opts.get("window") if isinstance(opts, dict) else None
            if not isinstance(window, int) or window <= 0:
                window = None
            new[name] = min(window, MAX_WINDOW) if window else None
        for name in set(new) - set(self.watched):
            hub.watch(name)
        for name in set(self.watched) - set(new):
            hub.unwatch(name)
            self.sent.pop(name, None)
        self.watched = new

    def close(self):
        if not self.closed:
            self.closed = True
        for name in list(self.watched):
            self.dashboard.hub.unwatch(name)
        self.watched = {}

    def pump(self):
        """Send what changed, as far as the browser's window allows."""
        if self.closed:
            return
        if self.in_flight >= WINDOW:
            self.skipped_ticks += 1
            return
        dash = self.dashboard
        if dash.index_seq != self.index_sent and dash.index_message is not None:
            self.index_sent = dash.index_seq
            self.send_text(dash.index_message)
        if dash.control_seq != self.control_sent and self.in_flight < WINDOW:
            self.control_sent = dash.control_seq
            self.send_text(dash.control_message)
        hub = dash.hub
        due = []
        for name, window in self.watched.items():
            seq = hub.seq(name)
            if seq and self.sent.get(name) != (seq, window):
                due.append((self.last_sent.get(name, 0.0), name, window))
        due.sort()
        for _, name, window in due:
            if self.in_flight >= WINDOW or self.closed:
                break
            frame = hub.frame(name, window)
            if frame is None:
                continue
            seq, packed = frame
            self.sent[name] = (seq, window)
            self.last_sent[name] = time.monotonic()
            self._write(packed, binary=True)

    def on_message(self, message):
        """One message from the browser; a malformed one is answered with an
        ``error`` message (and logged) and changes nothing."""
        if not isinstance(message, str):
            self.reject("binary messages are not understood")
            return
        try:
            msg = json.loads(message)
        except (ValueError, TypeError, RecursionError) as e:
            self.reject(f"not JSON: {e}")
            return
        if not isinstance(msg, dict):
            self.reject(f"a message must be a JSON object, got {type(msg).__name__}")
            return
        op = msg.get("op")
        if op == "ack":
            n = msg.get("n", 1)
            if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
                self.reject(f"ack: n must be a positive integer, got {n!r}"[:200])
                return
            self.in_flight = max(0, self.in_flight - n)
            self.pump()   # the browser is ready for more: don't wait for the timer
        elif op == "watch":
            try:
                self.set_watched(msg.get("views"))
            except ValueError as e:
                self.reject(f"watch: {e}")
                return
            self.pump()
        elif op == "params":
            self._reply(msg, self.dashboard.set_parameters, msg.get("values"))
        elif op == "action":
            self._reply(msg, self.dashboard.run_action, msg.get("view"))
        elif op == "reset":
            self._reply(msg, self.dashboard.reset_views, msg.get("views"))
        else:
            self.reject(f"unknown op {op!r}"[:200])

    def reject(self, reason):
        """Refuse a malformed message, with an ``error`` message to the browser
        while it reads what it gets.  Logged as a warning the first time, then
        at most once a minute with the number since, for all browsers together
        (one per browser made 200 warnings for 200 connections), and each one
        at debug level."""
        self.rejected += 1
        text = "dashboard: refused a message from a browser (%s): %s"
        peer = getattr(getattr(self.handler, "request", None), "remote_ip", "?")
        if not self.dashboard.rejects(text, peer, reason):
            log.debug(text, peer, reason)
        if self.in_flight < 4 * WINDOW:  # a client that reads nothing gets no more answers
            self.send_text({"op": "error", "message": reason})

    def _reply(self, msg, func, arg):
        try:
            text = func(arg)
            reply = {"op": "reply", "id": msg.get("id"), "ok": True, "message": text}
        except (PermissionError, ValueError, TypeError, KeyError) as e:
            reply = {"op": "reply", "id": msg.get("id"), "ok": False, "message": str(e)}
        except Exception as e:
            log.exception("dashboard request failed")
            reply = {"op": "reply", "id": msg.get("id"), "ok": False,
                     "message": f"{type(e).__name__}: {e}"}
        if self.in_flight < 4 * WINDOW:  # a client that reads nothing gets no more answers
            self.send_text(reply)


class _Base(tornado.web.RequestHandler):
    def initialize(self, dashboard):
        self.dashboard = dashboard

    def prepare(self):
        self.dashboard.check_access(self)

    def set_default_headers(self):
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-store")


class _PageHandler(_Base):
    def get(self):
        with open(os.path.join(STATIC_DIR, "index.html"), encoding="utf-8") as f:
            page = f.read()
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Content-Security-Policy",
                        "default-src 'self'; img-src 'self' data:; style-src 'self' "
                        "'unsafe-inline'; frame-src 'self' about: data:; "
                        "connect-src 'self' ws: wss:")
        self.write(page)


class _IconHandler(_Base):
    def get(self):
        self.set_status(204)


class _StatusHandler(_Base):
    def get(self):
        from ..metrics import for_dashboard  # the pipeline's status, as metropc-run --metrics
        status = {**for_dashboard(self.dashboard).status(), **self.dashboard.status()}
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(status, default=str))


class _MetricsHandler(_Base):
    """Prometheus metrics of the pipeline (metropc.metrics; needs prometheus_client)."""

    def get(self):
        from ..metrics import for_dashboard
        try:
            body, kind = for_dashboard(self.dashboard).metrics_text()
        except ImportError as e:
            raise tornado.web.HTTPError(501, str(e)) from None
        self.set_header("Content-Type", kind)
        self.write(body)


def _log_request(handler) -> None:
    """Requests at debug level, server errors at error level: a browser's or
    a scanner's 404s are no warnings (200 requests for /nope made 200)."""
    status = handler.get_status()
    level = logging.ERROR if status >= 500 else logging.DEBUG
    log.log(level, "%d %s %.1f ms", status, handler._request_summary(),
            1000 * handler.request.request_time())


class _StaticHandler(tornado.web.StaticFileHandler):
    def initialize(self, path, dashboard):
        super().initialize(path)
        self.dashboard = dashboard

    def prepare(self):
        self.dashboard.check_access(self)
        if "\x00" in (self.path_args[0] if self.path_args else ""):
            raise tornado.web.HTTPError(404)  # (the file system's ValueError: a 500)

    def set_extra_headers(self, path):
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Content-Type-Options", "nosniff")


class _SocketHandler(tornado.websocket.WebSocketHandler):
    def initialize(self, dashboard):
        self.dashboard = dashboard
        self.session = None

    def prepare(self):
        self.dashboard.check_access(self, websocket=True)

    def open(self):
        server = self.dashboard._server
        if server is not None:  # (its connection is not closed to make room)
            server.websocket_opened(getattr(self.ws_connection, "stream", None))
        self.session = Session(self.dashboard, self)
        self.dashboard.sessions.add(self.session)
        self.session.send_text(self.dashboard.hello())
        self.session.pump()

    def on_message(self, message):
        if self.session is None:
            return
        try:
            self.session.on_message(message)
        except Exception as e:  # noqa: BLE001 - a bug here must not drop the browser
            log.exception("dashboard: a browser message failed")
            self.session.reject(f"{type(e).__name__}: {e}"[:200])

    def on_close(self):
        if self.session is not None:
            self.session.close()
            self.dashboard.sessions.discard(self.session)


class Dashboard:
    """A web dashboard for one pipeline output, served from a background thread.

    Parameters
    ----------
    output_addr : str
        The pipeline's output address (what ``metropc-client`` connects to).
    host, port : str, int
        Where to serve HTTP; port 0 picks a free port (see :attr:`port`).
        Binding to a non-loopback host is refused unless `allow_remote`.
    control : Pipeline or ThreadedFrontend, optional
        The pipeline's control side, to edit parameters and run actions
        (:class:`~metropc.dashboard.control.Control`); without it the
        dashboard only watches.
    allow_pickle : bool
        False refuses pickled results from the pipeline.
    history : int
        Points kept per SCALAR / POINTS view.
    max_side : int
        Largest image side sent to browsers (images are block-averaged).
    fps : float
        How often per second changes are sent to browsers at most.
    title : str, optional
        Shown in the page title.
    token : None, bool or str
        A secret the browser must present (in the URL once, then as a
        cookie).  None: required only when serving on a non-loopback host,
        where it cannot be switched off; True: always, generated; a str:
        that token.  :attr:`url` includes it.
    keys : str, optional
        Key directory of a pipeline secured with CURVE (``metropc-keys``).
    idle_timeout : float
        Seconds an HTTP connection may wait for its next request (or take
        to send it) before it is closed; open websockets are not concerned.
    max_connections : int
        Connections open at once, websockets included; more are closed at
        once (at most a quarter of the process's file-descriptor limit).
    """

    def __init__(self, output_addr, host="127.0.0.1", port=0, control=None, *,
                 allow_pickle=True, allow_remote=False, history=10_000,
                 max_side=display.MAX_SIDE, fps=30.0, title=None, token=None, keys=None,
                 zmq_context=None, idle_timeout=IDLE_TIMEOUT, max_connections=MAX_CONNECTIONS):
        check_bind(host, allow_remote)
        if token is None or token is True:
            token = secrets.token_urlsafe(24) if (token or not is_loopback(host)) else None
        elif token is False:
            if not is_loopback(host):
                raise ValueError("a dashboard served on a non-loopback interface needs "
                                 "a token")
            token = None
        elif not isinstance(token, str) or not token:
            raise ValueError("token must be None, a bool or a non-empty str")
        self.token = token
        self.output_addr = output_addr
        self.host = host
        self.requested_port = int(port)
        self.port = None
        self.control = control if isinstance(control, Control) else Control(control)
        self.title = title or output_addr
        self.fps = float(fps)
        self.idle_timeout = float(idle_timeout)
        self.max_connections = connection_cap(max_connections)
        #: Malformed browser messages: one warning, then one a minute (Session.reject).
        self.rejects = LogThrottle(log)
        self.hub = Hub(output_addr, allow_pickle=allow_pickle, history=history,
                       max_side=max_side, context=zmq_context, keys=keys)
        self.sessions: set[Session] = set()
        self.index_seq = 0
        self.index_message = None
        self.control_seq = 0
        self.control_message = None
        self._hub_index_seq = 0
        self._control_key = None
        self._view_info = {}
        self._loop = None
        self._thread = None
        self._started = threading.Event()
        self._start_error = None
        self._sockets = None
        self._server = None
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------
    @property
    def url(self):
        host = self.host if ":" not in self.host else f"[{self.host.strip('[]')}]"
        if host in ("0.0.0.0", "[::]"):
            host = socket.gethostname()
        query = "" if self.token is None else "?" + urllib.parse.urlencode(
            {"token": self.token})
        return f"http://{host}:{self.port}/{query}"

    def start(self, timeout=10.0):
        """Bind, start the threads, return once the page is being served."""
        # Bind here, so that an unusable address fails in the caller.
        self._sockets = tornado.netutil.bind_sockets(self.requested_port,
                                                     self.host.strip("[]"))
        self.port = self._sockets[0].getsockname()[1]
        try:
            self.hub.start()
        except BaseException:
            for sock in self._sockets:
                sock.close()
            self._sockets = None
            raise
        self._thread = threading.Thread(target=self._run, name="metropc-dashboard-web",
                                        daemon=True)
        self._thread.start()
        if not self._started.wait(timeout) or self._start_error is not None:
            self.stop()
            raise RuntimeError(f"dashboard did not start: {self._start_error}")
        log.info("dashboard for %s on %s", self.output_addr, self.url)
        return self

    def _run(self):
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            app = tornado.web.Application([
                (r"/", _PageHandler, {"dashboard": self}),
                (r"/ws", _SocketHandler, {"dashboard": self}),
                (r"/status", _StatusHandler, {"dashboard": self}),
                (r"/metrics", _MetricsHandler, {"dashboard": self}),
                (r"/favicon.ico", _IconHandler, {"dashboard": self}),
                (r"/static/(.*)", _StaticHandler, {"path": STATIC_DIR, "dashboard": self}),
            ], websocket_max_message_size=1 << 20, compress_response=False,
                log_function=_log_request)
            # Tornado applies idle_connection_timeout to the wait for each
            # request's headers, the first included; a websocket's connection
            # leaves HTTP once upgraded, so an open page is never cut off.
            self._server = LimitedHTTPServer(app, idle_connection_timeout=self.idle_timeout,
                                             body_timeout=self.idle_timeout,
                                             max_connections=self.max_connections)
            self._server.add_sockets(self._sockets)
            self._tick_handle = None
            loop.call_soon(self._tick)
        except Exception as e:  # noqa: BLE001 - reported by start()
            self._start_error = e
            self._started.set()
            loop.close()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    def _tick(self):
        if self._closed:
            return
        try:
            self._refresh()
            for session in list(self.sessions):
                session.pump()
        except Exception:
            log.exception("dashboard tick failed")
        self._tick_handle = self._loop.call_later(1.0 / self.fps, self._tick)

    def stop(self, timeout=5.0):
        """Close every browser connection, stop serving and unsubscribe; idempotent."""
        if self._closed:
            return
        self._closed = True
        loop = self._loop
        if loop is not None and self._thread is not None and self._thread.is_alive():
            done = threading.Event()

            def shutdown():
                try:
                    if self._server is not None:
                        self._server.stop()
                    for session in list(self.sessions):
                        session.close()
                        session.handler.close()
                    self.sessions.clear()
                finally:
                    done.set()
                    loop.call_later(0.05, finish)

            def finish():  # after the websockets' close frames went out
                try:
                    if self._server is not None:
                        self._server.close_all()
                finally:
                    loop.stop()

            loop.call_soon_threadsafe(shutdown)
            done.wait(timeout)
            self._thread.join(timeout)
        elif self._sockets:
            for sock in self._sockets:
                sock.close()
        self.hub.stop(timeout)

    def __enter__(self):
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    # -- security -------------------------------------------------------------------
    @property
    def cookie_name(self):
        return f"metropc_dashboard_{self.port}"

    def check_access(self, handler, websocket=False):
        """Refuse foreign Host headers on loopback (DNS rebinding), and wrong tokens."""
        if is_loopback(self.host) and not is_loopback(handler.request.host_name):
            raise tornado.web.HTTPError(403, "unexpected Host header")
        if self.token is None:
            return
        given = handler.get_query_argument("token", None)
        if given is not None and hmac.compare_digest(given.encode(), self.token.encode()):
            if not websocket:  # remember it, so that reloads need no token in the URL
                handler.set_cookie(self.cookie_name, self.token, path="/", httponly=True,
                                   samesite="Strict")
            return
        cookie = handler.get_cookie(self.cookie_name)
        if cookie is not None and hmac.compare_digest(cookie.encode(), self.token.encode()):
            return
        raise tornado.web.HTTPError(
            403, "this dashboard needs its token: open the URL it printed (…/?token=…)")

    # -- state shared by the sessions -------------------------------------------------
    def _refresh(self):
        hub = self.hub
        if hub.index_seq != self._hub_index_seq and hub.index is not None:
            self._hub_index_seq = hub.index_seq
            # The context may have been reloaded with the index: docs and
            # histogram arguments are read again with it.
            self._view_info = self.control.view_info()
            self.index_message = self._index_message(hub.index)
            self.index_seq += 1
            self.hub.histograms = self.control.histogram_views()
        params = self.control.parameters()
        errors = self.control.errors()
        key = (repr(params), len(errors), errors[-1] if errors else None)
        if key != self._control_key:
            self._control_key = key
            self.control_message = self._control_message(params, errors)
            self.control_seq += 1

    def _index_message(self, index):
        views, paths = [], []
        for path, entry in sorted(index.items()):
            if isinstance(entry, IndexViewEntry) and path.startswith(_VIEW):
                views.append({"name": path[len(_VIEW):], "counts": entry.counts,
                              "rate": _round(entry.rate), "errors": entry.errors,
                              "hidden": entry.hidden, "label": entry.label,
                              "stage": entry.stage.name,
                              **self._view_info.get(path[len(_VIEW):], {}),
                              **display.output_info(entry.output)})
            else:
                paths.append({"path": path, "counts": entry.counts,
                              "rate": _round(entry.rate)})
        return {"op": "index", "views": views, "paths": paths,
                "time": time.time()}

    def _control_message(self, params, errors):
        parameters = None
        if params is not None:
            parameters = []
            for k, v in sorted(params.items()):
                roi = roi_info(v)
                # An ROI is shown as the dict literal the text box accepts back.
                shown = {f: x for f, x in roi.items() if f != "kind"} if roi else v
                parameters.append({"name": k, "value": _param_repr(shown),
                                   "type": type(v).__name__, "roi": roi})
        return {"op": "control", "enabled": self.control.enabled, "note": self.control.note,
                "parameters": parameters, "errors_total": len(errors),
                "errors": [parse_error(e) for e in errors[-MAX_ERRORS:]][::-1]}

    def hello(self):
        return {"op": "hello", "title": self.title, "output_addr": self.output_addr,
                "context": self.control.context_path(),
                "version": __version__, "control": self.control.enabled,
                "max_side": self.hub.max_side, "history": self.hub.history_length,
                "window": WINDOW}

    def status(self):
        hub = self.hub
        age = None if hub.index_time is None else time.monotonic() - hub.index_time
        return {"output_addr": self.output_addr, "url": self.url, "index_age": age,
                "control": self.control.enabled, "hub": hub.stats(),
                "connections": self.connection_stats(),
                "sessions": [{"watched": sorted(s.watched), "in_flight": s.in_flight,
                              "messages": s.messages, "skipped_ticks": s.skipped_ticks}
                             for s in list(self.sessions)]}

    def connection_stats(self) -> dict:
        """Open connections and what the limits refused (for ``/status``; call
        it on the IO loop, which owns the server's connections)."""
        server = self._server
        return {"open": server.open_connections if server is not None else 0,
                "max": self.max_connections, "idle_timeout": self.idle_timeout,
                "refused": server.refused.count if server is not None else 0,
                "evicted": server.evicted if server is not None else 0,
                "accept_failures": server.accept_failed.count if server is not None else 0,
                "rejected_messages": self.rejects.count}

    # -- requests from browsers -----------------------------------------------------------
    def set_parameters(self, values):
        if not isinstance(values, dict) or not values:
            raise ValueError("no parameter values given")
        # Text typed by people is parsed as a Python literal; an ROI drawn on
        # an image arrives as a JSON object, which the context coerces to
        # the declared ROI type (core.coerce_parameter).
        parsed = {str(k): parse_value(v) for k, v in values.items()}
        self.control.set_parameters(parsed)
        self._control_key = None  # show the new values at once
        return "sent " + ", ".join(f"{k}={_param_repr(v)}" for k, v in parsed.items())

    def reset_views(self, views):
        """Reset the accumulating `views` (a list of names; empty: all)."""
        if views is None:
            views = []
        if not isinstance(views, list) or not all(isinstance(v, str) and v for v in views):
            raise ValueError("views must be a list of view names")
        self.control.reset(views)
        return "reset " + (", ".join(views) if views else "all views")

    def run_action(self, name):
        if not isinstance(name, str) or not name:
            raise ValueError("no view given")
        entry = self.hub.entry(name)
        if entry is not None and entry.stage is not ViewStage.ACTION:
            raise ValueError(f"view {name!r} is not an ACTION view")
        self.control.action(name)
        return f"ran {name}"


def _retrieve(future):
    if not future.cancelled():
        future.exception()


def _round(x):
    x = float(x)
    return round(x, 3) if math.isfinite(x) else 0.0


def _param_repr(value):
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def serve(output_addr, host="127.0.0.1", port=0, control=None, **kwargs):
    """Start a :class:`Dashboard` and return it (call ``.stop()`` to end it).

    ``dash = serve(pipeline.output_addr, "127.0.0.1", 8050, control=pipeline)``;
    ``dash.url`` is where to point a browser.
    """
    return Dashboard(output_addr, host, port, control, **kwargs).start()

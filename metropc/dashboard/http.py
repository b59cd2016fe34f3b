"""The dashboard's HTTP server: Tornado's, with limits on connections.

The dashboard runs in ``metropc-run``'s process, which needs file
descriptors of its own (to restart a stage, accept a worker): however many
connections a peer opens, the server must leave it those
(docs/dashboard.md, Security).  :class:`LimitedHTTPServer` caps the open
connections; :class:`Acceptor` replaces Tornado's accept loop, which spins
and logs a traceback per turn once the process is out of descriptors.
"""

from __future__ import annotations

import logging
import socket

import tornado.httpserver
import tornado.ioloop
import tornado.iostream

from .limits import ACCEPT_PAUSE, FD_ERRORS, LogThrottle, accept_failure, connection_cap

__all__ = ["Acceptor", "LimitedHTTPServer"]

log = logging.getLogger("metropc.dashboard.server")


class Acceptor:
    """Accepts connections on one listening socket for the IO loop, and
    pauses for :data:`ACCEPT_PAUSE` seconds when ``accept()`` fails.

    Tornado's own handler (``netutil.add_accept_handler``) lets EMFILE
    escape: the listening socket stays readable, so the loop calls it again
    at once and asyncio logs a traceback each turn (a million of them in
    150 s at the fd limit).  This one reports the failure to `on_failure`
    (which logs it, rate-limited) and stops watching the socket meanwhile.
    """

    BATCH = 128  # connections taken per turn of the loop, as tornado does

    def __init__(self, sock: socket.socket, on_connection, on_failure):
        self.sock = sock
        self.on_connection = on_connection
        self.on_failure = on_failure
        self.loop = tornado.ioloop.IOLoop.current()
        self._timer = None
        self._closed = False
        self.loop.add_handler(sock, self._ready, tornado.ioloop.IOLoop.READ)

    def _ready(self, fd, events):
        for _ in range(self.BATCH):
            try:
                connection, address = self.sock.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:  # gone while in the backlog
                continue
            except OSError as e:
                self.on_failure(e)
                self.loop.remove_handler(self.sock)
                self._timer = self.loop.call_later(ACCEPT_PAUSE, self._resume)
                return
            self.on_connection(connection, address)

    def _resume(self):
        self._timer = None
        if not self._closed:
            self.loop.add_handler(self.sock, self._ready, tornado.ioloop.IOLoop.READ)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self.loop.remove_timeout(self._timer)
        else:
            self.loop.remove_handler(self.sock)
        self.sock.close()


class LimitedHTTPServer(tornado.httpserver.HTTPServer):
    """Tornado's HTTPServer with a cap on open connections, websockets
    included, and an accept loop (:class:`Acceptor`) that survives running
    out of file descriptors.

    The dashboard runs in ``metropc-run``'s process: however many
    connections a peer opens, the server must leave that process the
    descriptors it needs.  At `max_connections` a new connection takes the
    place of the oldest that is no websocket (an idle keep-alive one, most
    likely: a browser opens a new one when it needs it), so that a peer
    holding connections cannot keep new browsers out; if all are
    websockets, the new one is closed at once (logged once a minute with
    the count).  Idle ones are closed by tornado's ``idle_connection_timeout``.
    """

    def initialize(self, *args, max_connections: int = 256, **kwargs) -> None:
        super().initialize(*args, **kwargs)
        self.max_connections = connection_cap(max_connections)
        self.port = None
        self._acceptors: list[Acceptor] = []
        self._streams: dict[tornado.iostream.IOStream, None] = {}  # oldest first
        self._websockets: set[tornado.iostream.IOStream] = set()
        #: Connections closed to make room for a new one at the cap.
        self.evicted = 0
        self.refused = LogThrottle(log)
        self.accept_failed = LogThrottle(log)

    def add_sockets(self, sockets) -> None:
        for sock in sockets:
            self.port = sock.getsockname()[1]
            self._acceptors.append(Acceptor(sock, self._accepted, self._accept_failed))

    def stop(self) -> None:
        """Stop accepting (connections already open stay: see :meth:`close_all`)."""
        for acceptor in self._acceptors:
            acceptor.close()
        self._acceptors = []

    def close_all(self) -> None:
        """Close every connection, websockets and idle ones included."""
        for stream in list(self._streams):
            stream.close()
        self._streams.clear()
        self._websockets.clear()

    def websocket_opened(self, stream) -> None:
        """`stream` is a browser's websocket now: never closed for room."""
        if stream is not None:
            self._websockets.add(stream)

    @property
    def open_connections(self) -> int:
        self._streams = {s: None for s in self._streams if not s.closed()}
        self._websockets = {s for s in self._websockets if not s.closed()}
        return len(self._streams)

    def _accepted(self, connection, address):
        # Forget closed connections only when it matters (not on each accept).
        if len(self._streams) >= self.max_connections and \
                self.open_connections >= self.max_connections:
            self._make_room()
        if len(self._streams) >= self.max_connections:
            connection.close()
            self.refused("dashboard: closed a connection from %s at once: %d are open, the "
                         "most this server takes", address[0] if address else "?",
                         self.max_connections)
            return
        stream = tornado.iostream.IOStream(connection, max_buffer_size=self.max_buffer_size,
                                           read_chunk_size=self.read_chunk_size)
        self._streams[stream] = None
        self.handle_stream(stream, address)

    def _make_room(self) -> None:
        """Close the oldest connection that is no websocket, if any."""
        victim = next((s for s in self._streams if s not in self._websockets), None)
        if victim is not None:
            del self._streams[victim]
            victim.close()
            self.evicted += 1

    def _accept_failed(self, error: OSError):
        if error.errno in FD_ERRORS:
            self.accept_failed(accept_failure("dashboard", self.port, error))
        else:
            self.accept_failed("dashboard: accept() on port %s failed: %s; trying again "
                               "every %g s", self.port, error, ACCEPT_PAUSE)

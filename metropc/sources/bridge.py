"""Live data from a Karabo bridge (``tcp://HOST:PORT``, ``ipc://PATH``).

The Karabo bridge is how European XFEL streams train data out of the
control system.  Messages are decoded by ``karabo_bridge``'s own
deserializer, so arrays arrive as read-only views on the ZeroMQ frames and
are passed on without a copy.  ``data[source][key]`` becomes
``karabo#SOURCE[key]`` for pipeline sources (with ':') and
``karabo#SOURCE.key`` for control sources, as EXtra-foam does.

A live stream is never "finished": when the bridge goes quiet the source
keeps waiting, warns every so often, and picks the stream up again when it
comes back.  The socket is ours rather than ``karabo_bridge.Client``'s
because a REQ socket needs care the Client cannot give: a request that went
to a server which then died is never answered, so the socket is replaced as
soon as ZeroMQ reports the disconnect (a restarted bridge is picked up
within milliseconds).  A server that is alive but silent is *not*
reconnected to: every abandoned request would be answered later with a
train nobody reads.  ZMTP heartbeats detect peers that vanish without
closing the connection.  SUB and PULL sockets reconnect by themselves.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from urllib.parse import urlsplit

from .. import endpoints
from ..error import SourceError
from .base import (RUN_PATH, Source, internal_event, karabo_key, karabo_selection, key_hint,
                   source_hint)

__all__ = ["BridgeSource", "open_bridge"]

log = logging.getLogger(__name__)

SOCKET_TYPES = ("REQ", "SUB", "PULL")
_SERVER_FOR = {"REQ": "REP", "SUB": "PUB", "PULL": "PUSH"}
#: Longest single wait inside next(), so that close() from another thread
#: is noticed promptly.
POLL_INTERVAL = 0.1
#: Seconds between two warnings about the same source missing from trains.
MISSING_WARN_INTERVAL = 60.0
#: Longest gap between two "still no data" warnings.
MAX_WARN_INTERVAL = 300.0
#: ZMTP heartbeat interval and timeout (ms): a bridge host that disappears
#: without closing the connection counts as disconnected after this.
HEARTBEAT_IVL, HEARTBEAT_TIMEOUT = 3000, 20000


def _import_deserialize():
    try:
        from karabo_bridge.serializer import deserialize
    except ImportError as e:
        raise SourceError(
            "reading a Karabo bridge needs the karabo-bridge package: "
            "pip install metropc[karabo]") from e
    return deserialize


def _check_endpoint(endpoint):
    """Fail early on a host name that cannot resolve (zmq would just wait)."""
    if not endpoint.startswith("tcp://"):
        return
    try:
        host = urlsplit(endpoint).hostname
    except ValueError:
        return
    if not host or host == "*":
        return
    try:
        socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError) as e:
        raise SourceError(f"Karabo bridge {endpoint}: cannot resolve host "
                          f"{host!r} ({e})") from None


def _train_id(data, meta):
    """The train id of a bridge message, or None if it has none."""
    for md in meta.values():
        tid = md.get("timestamp.tid")
        if tid is not None:
            return int(tid)
    for d in data.values():  # protocol 1.0 and file streams repeat it here
        md = d.get("metadata") if isinstance(d, dict) else None
        if md and md.get("timestamp.tid") is not None:
            return int(md["timestamp.tid"])
    return None


def _run_number(meta):
    """The run number if the bridge's metadata carries one (``runNumber``)."""
    for md in meta.values():
        run = md.get("runNumber") if isinstance(md, dict) else None
        if isinstance(run, int) and not isinstance(run, bool) and run > 0:
            return run
    return None


class BridgeSource(Source):
    """Events from a Karabo bridge endpoint.

    Parameters
    ----------
    endpoint : str
        Any ZeroMQ endpoint the bridge serves on.
    bridge_socket : 'REQ', 'SUB' or 'PULL'
        Must match the server: REQ for REP (default), SUB for PUB, PULL for
        PUSH.
    timeout : float
        Seconds without data before a warning; later warnings come at
        doubling intervals up to 5 minutes.
    give_up : float, optional
        Seconds without data after which iteration raises SourceError;
        None waits for ever, which is what an online pipeline wants.
    """

    kind = "bridge"

    def __init__(self, endpoint, *, paths=None, rate=None, bridge_socket=None,
                 timeout=10.0, give_up=None):
        super().__init__(paths=paths, rate=rate)
        self.endpoint = endpoint
        self.socket_type = (bridge_socket or "REQ").upper()
        if self.socket_type not in SOCKET_TYPES:
            raise SourceError(f"bridge socket must be one of "
                              f"{', '.join(SOCKET_TYPES)}, not {bridge_socket!r}")
        self.timeout = float(timeout if timeout is not None else 10.0)
        if self.timeout <= 0:
            raise SourceError(f"bridge timeout must be positive, not {timeout!r}")
        self.give_up = give_up
        self._missing_warned = {}
        self._selection = (karabo_selection(self.paths)
                           if self.paths is not None else None)
        self._deserialize = _import_deserialize()
        _check_endpoint(endpoint)
        import zmq

        self._zmq = zmq
        self._ctx = zmq.Context()
        self._sock = self._monitor = None
        self._poller = None
        self._pending = False
        self.trains_received = 0
        self.reconnects = 0
        try:
            self._connect()
        except BaseException:
            self.release()
            raise

    def _connect(self):
        """A fresh socket (and its disconnect monitor) on the endpoint."""
        zmq = self._zmq
        self._disconnect()
        sock = self._ctx.socket(getattr(zmq, self.socket_type))
        sock.setsockopt(zmq.LINGER, 0)
        sock.set_hwm(1)  # as karabo_bridge.Client: at most one train queued
        sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT)
        if self.socket_type == "SUB":
            sock.setsockopt(zmq.SUBSCRIBE, b"")
        self._sock = sock
        try:
            endpoints.connect(sock, self.endpoint)
        except zmq.ZMQError as e:
            raise SourceError(f"cannot connect to Karabo bridge "
                              f"{self.endpoint!r}: {e}") from None
        self._poller = zmq.Poller()
        self._poller.register(sock, zmq.POLLIN)
        if self.socket_type == "REQ":
            self._monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
            self._poller.register(self._monitor, zmq.POLLIN)
        self._pending = False

    def _disconnect(self):
        sock, self._sock = self._sock, None
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            sock.disable_monitor()
            monitor.close(linger=0)
        if sock is not None:
            sock.close(linger=0)

    def release(self):
        self._disconnect()
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def _receive(self, wait):
        """One message (a list of frames), or None after `wait` seconds."""
        zmq = self._zmq
        if self.socket_type == "REQ" and not self._pending:
            try:
                self._sock.send(b"next", zmq.NOBLOCK)
                self._pending = True
            except zmq.Again:  # no pipe yet; try again next time
                time.sleep(min(wait, POLL_INTERVAL))
                return None
        ready = dict(self._poller.poll(int(wait * 1000)))
        if self._sock in ready:
            frames = self._sock.recv_multipart(copy=False)
            self._pending = False
            return frames
        if self._monitor is not None and self._monitor in ready:
            from zmq.utils.monitor import recv_monitor_message

            event = recv_monitor_message(self._monitor)
            if event["event"] == zmq.EVENT_DISCONNECTED and self._pending:
                # The outstanding request died with the connection.
                log.info("Karabo bridge %s disconnected; reconnecting",
                         self.endpoint)
                self._connect()
                self.reconnects += 1
        return None

    def events(self):
        seen_paths = self.paths_version
        last_data = time.monotonic()
        warn_at = last_data + self.timeout
        warn_gap = self.timeout
        silent = False
        while not self._stop.is_set():
            try:
                frames = self._receive(min(POLL_INTERVAL, self.timeout))
            except self._zmq.ZMQError as e:
                raise SourceError(f"Karabo bridge {self.endpoint}: {e}") from None
            now = time.monotonic()
            if frames is None:
                if self.give_up is not None and now - last_data >= self.give_up:
                    raise SourceError(
                        f"no data from Karabo bridge {self.endpoint} for "
                        f"{now - last_data:.1f} s; giving up")
                if now >= warn_at:
                    self._warn_silent(now - last_data, first=not silent)
                    silent = True
                    warn_gap = min(2 * warn_gap, MAX_WARN_INTERVAL)
                    warn_at = now + warn_gap
                continue
            try:
                data, meta = self._deserialize(frames)
            except Exception as e:  # a malformed message must not stop us
                log.warning("bad message from Karabo bridge %s, skipped: %s",
                            self.endpoint, e)
                continue
            if silent:
                log.warning("Karabo bridge %s is sending again after %.1f s",
                            self.endpoint, now - last_data)
                silent = False
            last_data = now
            warn_at = now + self.timeout
            warn_gap = self.timeout
            if seen_paths != self.paths_version:
                seen_paths = self.paths_version
                paths = self.paths
                self._selection = (karabo_selection(paths)
                                   if paths is not None else None)
            event = self._event(data, meta)
            if event is not None:
                self.trains_received += 1
                yield event

    def _warn_silent(self, seconds, first):
        hint = ""
        if first and self.trains_received == 0:
            hint = (f" Is the bridge running at that address, and is it a "
                    f"{_SERVER_FOR[self.socket_type]} socket (this source "
                    f"uses {self.socket_type})?")
        log.warning("no data from Karabo bridge %s for %.1f s; still "
                    "waiting.%s", self.endpoint, seconds, hint)

    def _warn_missing(self, src, tid, data):
        """Say (once a minute per source) that a needed source is absent.

        The views that need it simply do not run for such trains; the
        warning tells the operator why they show nothing, and which source
        of the train is named most like it (a misspelled name).
        """
        if self._due(src):
            key = next(iter(self._selection[src]))
            log.warning("train %s from Karabo bridge %s has no data from %s, which "
                        "the context uses%s; views that need it do not run",
                        tid, self.endpoint, src, source_hint(src, key, data))

    def _warn_missing_key(self, src, key, event_key, tid, values):
        """Say (once a minute per path) that a needed key of a source that is
        there is absent: most often a misspelled path, named with the
        closest key the source has."""
        if self._due(event_key):
            log.warning("train %s from Karabo bridge %s has no %s: %s sends no key %r%s; "
                        "views that need it do not run", tid, self.endpoint, event_key,
                        src, key, key_hint(src, key, values))

    def _due(self, what):
        """Whether a warning about `what` is due (once a minute at most)."""
        now = time.monotonic()
        warned = self._missing_warned.get(what)
        if warned is None or now - warned >= MISSING_WARN_INTERVAL:
            self._missing_warned[what] = now
            return True
        return False

    def _event(self, data, meta):
        tid = _train_id(data, meta)
        if tid is None:
            log.warning("Karabo bridge %s sent a train without "
                        "timestamp.tid; skipped", self.endpoint)
            return None
        event = internal_event(tid)
        run = _run_number(meta)
        if run is not None:
            event[RUN_PATH] = run
        if self._selection is None:
            for src, values in data.items():
                for key, value in values.items():
                    if key != "metadata":
                        event[karabo_key(src, key)] = value
            return event
        for src, keys in self._selection.items():
            values = data.get(src)
            if values is None:
                self._warn_missing(src, tid, data)
                continue
            for key, event_key in keys.items():
                value = values.get(key)
                if value is None and ":" not in src:
                    # Bridges fed from files name control values key.value.
                    value = values.get(key + ".value")
                if value is not None:
                    event[event_key] = value
                elif key not in values:
                    self._warn_missing_key(src, key, event_key, tid, values)
        return event


def open_bridge(target, *, paths=None, rate=None, seed=None, bridge_socket=None,
                timeout=10.0, give_up=None, **options):
    """Factory for ``tcp://``, ``ipc://`` and other ZeroMQ endpoint specs."""
    from . import check_options

    check_options("bridge", options)
    if target.startswith(("tcp://", "ipc://", "inproc://")):
        # ZeroMQ would take tcp://HOST:70000 for port 4464, or wait forever
        # on an ipc path in no directory: say so now (the source's error).
        problem = endpoints.connect_problem(target)
        if problem is None and target.startswith("ipc://"):
            folder = os.path.dirname(target[len("ipc://"):]) or "."
            if not os.path.isdir(folder):
                problem = f"no directory {folder}"
        if problem is not None:
            raise SourceError(f"the Karabo bridge address {target!r}: {problem}")
    return BridgeSource(target, paths=paths, rate=rate, bridge_socket=bridge_socket,
                        timeout=timeout, give_up=give_up)

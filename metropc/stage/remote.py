"""The control endpoint: clients reset, pause, resume and set parameters.

Results flow to clients over PUB/SUB, which has no way back.  Operators
also want to act from where they watch (``metropc-client ADDR --reset``,
the dashboard, a script on another machine), so the pipeline's process
offers a request/reply endpoint: a ROUTER socket served by one thread,
speaking metropc protocol messages (docs/protocol.md §9).  Each request is
one message, ``(command, payload)``; the reply is ``(b"ok", result)`` or
``(b"error", {"msg": text})``.  With a key directory the endpoint is a
CURVE server like every other socket, so a client without the key can
neither connect nor control anything; without keys it binds only to the
loopback interface.  The address is announced in the ``status`` message
every client receives (``Client.status["control"]``).
"""

from __future__ import annotations

import logging
import threading

import zmq

from .. import endpoints
from ..error import MetropcError, ProtocolError
from ..messages import validate
from ..protocol import decode_protocol, encode_protocol
from ..security import secure
from . import common

log = logging.getLogger(__name__)

__all__ = ["ControlServer", "COMMANDS"]

#: Bytes a control request may have (ZeroMQ disconnects a peer sending more).
MAX_REQUEST = 1 << 20

#: Command -> what it does to the pipeline (a Pipeline or ThreadedFrontend).
COMMANDS = {
    b"reset": lambda target, data: target.reset(*data.get("views", ())),
    b"pause": lambda target, data: target.pause(),
    b"resume": lambda target, data: target.resume(),
    b"params": lambda target, data: _set_parameters(target, data),
    b"action": lambda target, data: target.action(data["view_name"]),
    b"run": lambda target, data: (target.start_run(data.get("run"))
                                  if data["kind"] == "run_start" else target.end_run()),
    b"ping": lambda target, data: None,
}


def _set_parameters(target, values):
    setter = getattr(target, "set_parameters", None)
    if setter is not None:
        return setter(**values)
    return target.queue_to_all(b"params", values)


class ControlServer:
    """Serves control requests for `target` on `address` from a thread."""

    def __init__(self, target, address: str = "tcp://127.0.0.1:*", keys=None):
        self.target = target
        self._zctx = zmq.Context()
        secure_server, _, self._auth = secure(self._zctx, keys)
        self._socket = self._zctx.socket(zmq.ROUTER)
        self._socket.linger = 0
        # Requests are small: a peer sending more is cut off by ZeroMQ
        # before anything is buffered (not gigabytes of one "request").
        self._socket.maxmsgsize = MAX_REQUEST
        self._refused = common.RejectLog(log, "control endpoint")
        self._refusals = common.LimitedLog(log)
        #: Malformed requests refused (the index's internal#rejected_messages).
        self.rejected = 0
        secure_server(self._socket)
        try:
            endpoints.bind(self._socket, address)
        except zmq.ZMQError:
            self.close()
            raise
        #: The bound address clients connect to.
        self.address = self._socket.last_endpoint.decode()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metropc-control",
                                        daemon=True)
        self._thread.start()

    def _run(self):
        sock = self._socket
        while not self._stop.is_set():
            try:
                if not sock.poll(100):
                    continue
                frames = sock.recv_multipart(copy=False)
            except zmq.ZMQError:
                return
            # [identity, empty delimiter (REQ/DEALER clients), message frames...]
            ident, rest = frames[0], frames[1:]
            if rest and not rest[0].bytes:
                rest = rest[1:]
            reply = self.handle(rest)
            try:
                sock.send_multipart([ident, b"", *reply], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # the client went away

    def handle(self, frames) -> list:
        """The reply frames for one request (never raises)."""
        command = b"?"
        try:
            # No pickles from clients: unpickling runs code (docs/protocol.md).
            command, data = decode_protocol(frames, allow_pickle=False)
            action = COMMANDS.get(bytes(command))
            if action is None:
                raise ProtocolError(f"unknown command {bytes(command)[:32]!r}; known: "
                                    + ", ".join(c.decode() for c in COMMANDS))
            if command in (b"reset", b"action", b"run"):
                validate(command, data)
            action(self.target, data)
        except ProtocolError as e:  # garbage: counted, logged once per kind
            self.rejected += 1
            self._refused(bytes(command)[:32], e)
            return encode_protocol(b"error", {"msg": f"{type(e).__name__}: {e}"})
        except (MetropcError, ValueError, KeyError, TypeError) as e:
            self._refusals("control request refused: %s", e)  # (a person's mistake)
            return encode_protocol(b"error", {"msg": f"{type(e).__name__}: {e}"})
        except Exception as e:  # noqa: BLE001 - a request never ends the endpoint
            log.exception("control request failed")
            return encode_protocol(b"error", {"msg": f"{type(e).__name__}: {e}"})
        return encode_protocol(b"ok", {})

    def close(self):
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
            self._thread.join(2)
        self._socket.close(0)
        if self._auth is not None:
            self._auth.stop()
        self._zctx.term()

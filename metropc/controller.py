"""Control of a running pipeline: reset, pause, resume, parameters,
actions and runs (docs/client.md, "Controlling a pipeline").

    >>> from metropc.client import Client, Controller
    >>> with Client("tcp://127.0.0.1:5555", timeout=10) as client:
    ...     with Controller.of(client) as control:
    ...         control.reset("roi")

:class:`Controller` talks to the pipeline's control endpoint, not to its
output.  :mod:`metropc.client` re-exports it and :class:`ControlError`;
this module does not import the client (one-way).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from . import endpoints
from .messages import run_number_problem
from .protocol import decode_protocol as _decode_protocol
from .roi import ROI_TYPES

if TYPE_CHECKING:
    from .client import Client

__all__ = ["Controller", "ControlError"]


class ControlError(RuntimeError):
    """The pipeline refused a control request (the message says why)."""


def _wire_value(value):
    """A parameter value as the control endpoint takes it (no pickles)."""
    if isinstance(value, ROI_TYPES):
        return tuple(value.to_dict().values())
    if isinstance(value, (list, dict)):
        return repr(value)
    return value


class Controller:
    """Controls a running pipeline from anywhere: reset, pause, resume,
    parameters, actions, runs (docs/client.md, "Controlling a pipeline").

    `address` is the pipeline's control endpoint: ``Pipeline.control_addr``,
    printed by ``metropc-run``, and announced to every client in
    :attr:`Client.status` (``Controller.of(client)`` uses that).  A pipeline
    secured with CURVE needs `keys`; without them nothing can be controlled.
    Each call waits for the pipeline's answer (at most `timeout` seconds)
    and raises :class:`ControlError` if it refused, TimeoutError if it did
    not answer.  Commands apply after the events queued so far.
    """

    def __init__(self, address: str, *, keys=None, timeout: float = 10.0, context=None):
        import zmq

        self.address = endpoints.connectable(address)
        self.timeout = timeout
        self._zctx = context if context is not None else zmq.Context.instance()
        if keys is not None and not isinstance(keys, str):
            self._keys = keys
        else:
            from .security import Keys
            self._keys = None if keys is None else Keys.load(keys)
        self._socket = self._connect()

    def _connect(self):
        import zmq

        sock = self._zctx.socket(zmq.DEALER)
        sock.linger = 0
        try:
            if self._keys is not None:
                self._keys.client(sock)
            endpoints.connect(sock, self.address)
        except BaseException:
            sock.close(linger=0)
            raise
        return sock

    @classmethod
    def of(cls, client: Client, timeout: float = 10.0, **kwargs) -> Controller:
        """The controller of the pipeline `client` reads (waits for its status)."""
        deadline = time.monotonic() + timeout
        while not client.status.get("control"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{client.address} announced no control endpoint")
            client.wait_index(timeout=left)
        return cls(client.status["control"], timeout=timeout, **kwargs)

    def request(self, command: bytes, data: dict | None = None) -> dict:
        """Send one command and wait for the answer; its payload."""
        from .protocol import encode_protocol

        self._socket.send_multipart([b"", *encode_protocol(command, data or {})])
        if not self._socket.poll(int(self.timeout * 1000)):
            # The answer may still come: a new socket keeps the next one clean.
            self._socket.close(linger=0)
            self._socket = self._connect()
            raise TimeoutError(f"no answer from {self.address} within {self.timeout:g} s")
        frames = self._socket.recv_multipart()
        if frames and not frames[0]:
            frames = frames[1:]
        status, payload = _decode_protocol(frames)
        if status != b"ok":
            raise ControlError(str(payload.get("msg", payload)))
        return payload

    def reset(self, *views: str) -> None:
        """Clear accumulated state of `views` (none: all) from the next event on."""
        self.request(b"reset", {"views": tuple(views)} if views else {})  # (no pickles)

    def pause(self) -> None:
        self.request(b"pause")

    def resume(self) -> None:
        self.request(b"resume")

    def set_parameters(self, **values) -> None:
        """Change parameters (checked against the context's declarations).

        The endpoint takes no pickles (unpickling runs code), so an ROI goes
        as the tuple of its numbers, and a list or dict as its Python literal
        text, which the pipeline reads back for a parameter declared as one.
        """
        self.request(b"params", {k: _wire_value(v) for k, v in values.items()})

    def action(self, view_name: str) -> None:
        self.request(b"action", {"view_name": view_name})

    def start_run(self, run: int | None = None) -> None:
        problem = run_number_problem(run)
        if problem is not None:  # (said here: a big int would go as a pickle)
            raise ControlError(f"ValueError: run number {problem}")
        self.request(b"run", {"kind": "run_start", "run": run})

    def end_run(self) -> None:
        self.request(b"run", {"kind": "run_end"})

    def close(self) -> None:
        self._socket.close(linger=0)

    def __enter__(self) -> Controller:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

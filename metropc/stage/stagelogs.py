"""Log records of stage processes, shown by the frontend's process.

Only the CLI configures logging, and it does so in the frontend's process;
a stage process sends each record it logs there, and the frontend hands it
to the logger of the same name, so it goes wherever the application's
handlers say.

The records travel over ZeroMQ (a PUSH socket per stage, one PULL socket
on ``ipc://`` in the frontend's private socket directory), not over a
``multiprocessing.Queue``: such a queue is three named semaphores in
``/dev/shm``, and when the whole process group is SIGKILLed nothing
removes them, ever.  A socket file in the socket directory is removed by
the next frontend with the rest of the directory.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import pickle
import threading

import zmq

from .common import remove_ipc_file

__all__ = ["LogForwarder", "forward_logging"]

log = logging.getLogger(__name__)

#: Records a stage keeps for a frontend that does not read them, then drops.
SEND_HWM = 10000
#: Milliseconds a leaving stage waits for its last records to get out.
LINGER_MS = 500


class LogForwarder:
    """The frontend's end: a PULL socket at :attr:`address` and a thread
    that replays each record it receives (its own ZeroMQ context, so that
    closing it does not depend on the frontend's)."""

    def __init__(self, directory: str):
        self.address = f"ipc://{directory}/logs"
        self._zctx = zmq.Context()
        self._socket = self._zctx.socket(zmq.PULL)
        self._socket.linger = 0
        self._stop_r, self._stop_w = os.pipe()
        self.malformed = 0
        try:
            self._socket.bind(self.address)
        except zmq.ZMQError:
            self._close_sockets()
            raise
        self._thread = threading.Thread(target=self._run, name="metropc-stage-logs",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        poller.register(self._stop_r, zmq.POLLIN)
        while True:
            ready = dict(poller.poll())
            while True:  # (also what came just before the stop)
                try:
                    data = self._socket.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._replay(data)
            if self._stop_r in ready:
                return

    def _replay(self, data: bytes) -> None:
        try:
            record = pickle.loads(data)
            if not isinstance(record, logging.LogRecord):
                raise TypeError(type(record).__name__)
        except Exception as e:  # noqa: BLE001 - the socket is ours; say it once
            self.malformed += 1
            if self.malformed == 1:
                log.warning("frontend: a stage sent a log record that cannot be read "
                            "(%s: %s); dropped", type(e).__name__, e)
            return
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)

    def close(self) -> None:
        """Replay what has arrived, then stop."""
        os.write(self._stop_w, b"x")
        self._thread.join(5)
        self._close_sockets()

    def _close_sockets(self) -> None:
        self._socket.close(0)
        self._zctx.term()
        remove_ipc_file(self.address)
        for fd in (self._stop_r, self._stop_w):
            os.close(fd)


class _Sender(logging.handlers.QueueHandler):
    """A stage's end: each record, prepared as :class:`QueueHandler` does
    (message formatted, traceback merged in), pickled to the frontend."""

    def __init__(self, address: str):
        super().__init__(None)
        self._zctx = zmq.Context()
        self._socket = self._zctx.socket(zmq.PUSH)
        self._socket.linger = LINGER_MS
        self._socket.sndhwm = SEND_HWM
        self._socket.connect(address)
        self.dropped = 0

    def enqueue(self, record: logging.LogRecord) -> None:
        if self._socket is None:  # (closed: the process is leaving)
            return
        try:
            data = pickle.dumps(record)
        except Exception:  # noqa: BLE001 - an `extra` value that cannot be pickled
            data = pickle.dumps(logging.makeLogRecord({
                "name": record.name, "levelno": record.levelno,
                "levelname": record.levelname, "msg": record.getMessage(),
                "created": record.created, "process": record.process}))
        try:
            self._socket.send(data, zmq.NOBLOCK)
        except zmq.Again:  # the frontend does not read: keep the stage going
            self.dropped += 1

    def close(self) -> None:
        """Let the last records get out (at most LINGER_MS), then close:
        logging.shutdown calls it when the process leaves."""
        with self.lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None
                self._zctx.term()
        super().close()


def forward_logging(level: int | None, address: str | None) -> None:
    """In a stage process: send every record of `level` and above (WARNING
    by default) to the frontend's :class:`LogForwarder` at `address`."""
    if address is None:
        return
    root = logging.getLogger()
    root.handlers[:] = [_Sender(address)]
    root.setLevel(logging.WARNING if level is None else level)

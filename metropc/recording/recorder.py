"""The recorder process: subscribe to a pipeline's output and write it.

Run as ``python -m metropc.recording.recorder PATH [--views a,b] [--keys DIR]``
(:class:`metropc.recording.process.RecorderProcess` does that for
``metropc-run --record``).  It talks to its parent on stdin and stdout,
one line each way:

- it prints ``opened`` once `PATH` is open for writing (or ``error: ...``
  and exits 2), so a path it cannot write is refused before anything runs;
- ``connect ADDR`` on stdin makes it subscribe to ``ADDR``; it prints
  ``ready`` when the first index arrived, which proves the subscriptions
  are in place;
- ``meta {"topic": ..., "payload": ...}`` records a metadata message the
  parent knows and the output sent before the recorder subscribed (the
  first ``context``);
- ``stop`` or the end of stdin (the parent exited or was killed) makes it
  take in what is still on its way (until nothing came for 0.2 s), write
  what it has, close the files and exit 0.

It is a client like any other: a SUB socket subscribed to ``index``,
``context``, ``params``, ``mark`` and the results in batches,
``batch#view#`` (or each ``batch#view#<name>`` of ``--views``;
docs/protocol.md section 7a): it only ever records metropc's own
pipeline, which offers them, and a batch of small results costs REDUCE
one message where plain ones cost one per result.  Everything it has is written and flushed at
least every second.  When the disk is all but full it closes its files
without what waits (metropc.recording.space), says so in one line and
exits 3; when a write fails anyway, it says so and exits 3 at once
without writing anything more.  The pipeline is not affected.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import sys
import time

from .. import endpoints
from ..protocol import decode_protocol
from ..protocol_batch import BATCH_PREFIX
from ..protocol_layouts import decode_batch
from ..seqgaps import SeqGaps
from ..stage.runner import name_process
from .space import DiskNearlyFull, os_error_text

log = logging.getLogger("metropc.recording")

FLUSH_INTERVAL = 1.0
META_TOPICS = ("context", "params", "mark")
STATUS = b"status"
EXIT_WRITE_FAILED = 3
#: At a stop, results are taken in until none came for this long (seconds).
QUIET_S = 0.2


class Recorder:
    """The receive-and-write loop over one SUB socket (see the module doc)."""

    def __init__(self, recording, views=None, keys=None, zmq_context=None):
        import zmq

        self.recording = recording
        self.views = None if views is None else frozenset(views)
        self.ctx = zmq_context or zmq.Context.instance()
        self.socket = self.ctx.socket(zmq.SUB)
        self.socket.rcvhwm = 100000  # a burst waits here, not in REDUCE
        self.socket.linger = 0
        if keys is not None:
            from ..security import Keys
            Keys.load(keys).client(self.socket)
        self.ready = False
        self.received = 0
        #: What the pipeline published and this recorder did not get (it did
        #: not keep up: ZeroMQ dropped them on the way), per view path.
        self.gaps = SeqGaps()

    def connect(self, address: str) -> None:
        from ..index import INDEX

        endpoints.connect(self.socket, address)
        self.socket.subscribe(INDEX)
        self.socket.subscribe(STATUS)
        for topic in META_TOPICS:
            self.socket.subscribe(topic.encode())
        if self.views is None:
            self.socket.subscribe(BATCH_PREFIX + b"view#")
        else:
            for name in sorted(self.views):
                self.socket.subscribe(BATCH_PREFIX + f"view#{name}".encode())

    def handle(self, frames) -> None:
        """Decode one message and hand it to the recording."""
        from ..index import decode_index

        topic = frames[0].bytes
        now = time.time()
        if topic.startswith(BATCH_PREFIX):
            view_topic = topic[len(BATCH_PREFIX):]
            name = view_topic[5:].decode("utf-8", "replace")
            if not view_topic.startswith(b"view#") or (
                    self.views is not None and name not in self.views):
                return  # a prefix match (batch#view#a also matches batch#view#ab)
            # All decoded first: a malformed batch records nothing of itself.
            _, payloads = decode_batch(frames)
            new = self.gaps.count_batch(view_topic.decode(), payloads)
            for i, (_, payload) in enumerate(new):
                self.received += 1
                try:
                    self.recording.add_result(name, payload, now)
                except DiskNearlyFull as e:  # (the rest of the batch is left out too)
                    e.unwritten += len(new) - i
                    raise
        elif topic == b"index":
            _, payload = decode_protocol(frames)
            self.recording.note_index(decode_index(payload), now)
            self.ready = True
        elif topic == STATUS:  # the last seq of each view: gaps at the very end
            _, payload = decode_protocol(frames)
            if type(payload) is dict:
                self.gaps.caught_up(payload.get("seqs"))
        elif topic.decode("utf-8", "replace") in META_TOPICS:
            _, payload = decode_protocol(frames)
            self.recording.add_meta(topic.decode(), payload, now)

    def drain(self, limit: int = 100000) -> int:
        """Handle what is queued already, without waiting."""
        from ..transport import try_recv_frames

        n = 0
        while n < limit:
            frames = try_recv_frames(self.socket)
            if frames is None:
                break
            self._safe_handle(frames)
            n += 1
        return n

    def drain_until_quiet(self, quiet: float = QUIET_S, longest: float = 2.0) -> int:
        """At a stop: handle what is still on its way, until nothing came
        for `quiet` s (`longest` s at most).  A recorder that was stopped
        (SIGSTOP) and is continued to stop has results waiting in the
        kernel that ZeroMQ's thread has not taken in yet: a plain drain
        would miss them."""
        n = 0
        deadline = time.monotonic() + longest
        while time.monotonic() < deadline and self.socket.poll(int(quiet * 1000)):
            n += self.drain()
        return n

    def _safe_handle(self, frames) -> None:
        from ..error import ProtocolError

        try:
            self.handle(frames)
        except ProtocolError as e:
            log.warning("recorder: dropped a malformed message: %s", e)

    def close(self) -> None:
        self.socket.close(0)


def _say(text: str) -> None:
    """One line to the parent; nothing if it is gone (killed, say): the
    recording goes on to its end regardless, quietly."""
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):  # ValueError: stdout closed already
        _drop_stdout()


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so that nothing written later (not even the
    flush at exit) raises BrokenPipeError again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _write_failed(e: BaseException, path: str) -> None:
    """A write failed (an I/O error, a disk filled by someone else): say so
    and leave at once.

    Nothing more is written, not even by closing the files, so each file
    stays as SWMR keeps it after a crash: up to the last flush, except what
    the failed write itself may have left half done.
    """
    reason = os_error_text(e)
    if reason == os.strerror(errno.ENOSPC):
        reason = "the disk is full"
    log.error("recording to %s stopped: %s; the files keep everything up to the "
              "last flush (at most a second before); the pipeline goes on", path, reason)
    logging.shutdown()
    sys.stderr.flush()
    _say("failed")
    os._exit(EXIT_WRITE_FAILED)


def _disk_nearly_full(e: DiskNearlyFull, recording) -> None:
    """The disk is all but full: close the files without the results that
    wait (so they are whole), say so, and leave."""
    try:
        left_out = recording.abandon() + e.unwritten
    except (OSError, ValueError, RuntimeError) as error:
        _write_failed(error, e.path)
    log.error("recording to %s stopped: the disk is nearly full (%s); the files are "
              "closed and keep every result up to the last flush%s; the pipeline goes on",
              e.path, e, f" ({left_out} result(s) after it are not recorded)"
              if left_out else "")
    logging.shutdown()
    sys.stderr.flush()
    _say("failed")
    os._exit(EXIT_WRITE_FAILED)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="metropc-recorder")
    p.add_argument("path")
    p.add_argument("--views", default=None, help="comma-separated view names")
    p.add_argument("--keys", default=None)
    p.add_argument("--connect", default=None, metavar="ADDR",
                   help="connect at once instead of waiting for 'connect ADDR' on stdin")
    p.add_argument("--flush-interval", type=float, default=FLUSH_INTERVAL)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
                        datefmt="%H:%M:%S")
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # metropc-run stops it, and last
    name_process("metropc-record")

    import zmq

    from .writer import RecordPathError, Recording

    views = None if args.views is None else [v for v in args.views.split(",") if v]
    try:
        recording = Recording(args.path, views=views,
                              attrs={"address": args.connect or ""})
    except (RecordPathError, OSError) as e:
        _say(f"error: {e}")
        return 2
    _say("opened")
    recorder = Recorder(recording, views, args.keys)
    poller = zmq.Poller()
    poller.register(recorder.socket, zmq.POLLIN)
    stdin = sys.stdin.fileno()
    poller.register(stdin, zmq.POLLIN)
    if args.connect:
        recorder.connect(args.connect)
    buffered = b""
    next_flush = time.monotonic() + args.flush_interval
    try:
        while not stop:
            wait = max(0.0, next_flush - time.monotonic())
            events = dict(poller.poll(int(wait * 1000) + 1))
            try:
                if recorder.socket in events:
                    was_ready = recorder.ready
                    recorder.drain(10000)
                    if recorder.ready and not was_ready:
                        _say("ready")
                if time.monotonic() >= next_flush:
                    recording.flush()
                    next_flush = time.monotonic() + args.flush_interval
                    _say("alive")  # (a flush hung on the disk says nothing)
            except DiskNearlyFull as e:
                _disk_nearly_full(e, recording)
            except (OSError, ValueError, RuntimeError) as e:
                _write_failed(e, args.path)
            if stdin in events:
                chunk = os.read(stdin, 4096)
                buffered += chunk
                if not chunk:
                    break  # the parent is gone
                *lines, buffered = buffered.split(b"\n")
                for line in lines:
                    command, _, arg = line.decode().strip().partition(" ")
                    if command == "connect":
                        recorder.connect(arg.strip())
                        recording.set_attrs(address=arg.strip())
                    elif command == "meta":  # from the parent, see send_meta
                        message = json.loads(arg)
                        recording.add_meta(message["topic"], message["payload"],
                                           time.time())
                    elif command == "stop":
                        stop.append(1)
        try:
            recorder.drain_until_quiet()  # what arrived, or is on its way, before the stop
            recording.flush()  # (before close: a disk all but full leaves the files whole)
            recording.close()
        except DiskNearlyFull as e:
            _disk_nearly_full(e, recording)
        except (OSError, ValueError, RuntimeError) as e:
            _write_failed(e, args.path)
        log.info("recorded %d results to %s", recording.recorded, args.path)
        if recorder.gaps.missed:
            log.warning("not recorded: %d published result(s) the recorder did not get "
                        "(it did not keep up; ZeroMQ dropped them on the way): %s",
                        sum(recorder.gaps.missed.values()), ", ".join(
                            f"{n} of {path[5:]}"
                            for path, n in sorted(recorder.gaps.missed.items())))
        if recording.skipped:
            log.warning("not recorded: %s", ", ".join(
                f"{n} result(s) of {view}" for view, n in sorted(recording.skipped.items())))
        _say(f"stopped {recording.recorded}")
        return 0
    finally:
        recorder.close()


if __name__ == "__main__":
    sys.exit(main())

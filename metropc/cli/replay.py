"""``metropc-replay``: publish a recording as a live pipeline would.

::

    metropc-replay run_0007.h5                      # at the recorded pace
    metropc-replay recordings/ --rate 50 --output tcp://127.0.0.1:5555

Clients (``metropc-client``, the dashboard, EXtra-foam) connect to the
printed address exactly as to ``metropc-run``'s output.  Results start
when a client subscribes to a view (``--no-wait`` starts at once); the
program ends when the recording has been sent (``--loop`` starts over).
See docs/recording.md.

Exit codes: 0 when the recording was sent, 130 after Ctrl-C/SIGTERM, 2 for
bad arguments (one line naming the value, before anything is sent): a path
that is no recording, ``--views`` it does not have, an output address that
cannot be bound (a tcp port outside 0..65535; a non-loopback interface
without ``--allow-remote`` and ``--keys``, the rule of ``metropc-run``), a
key directory that cannot be loaded.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import SimpleNamespace

from .. import endpoints
from .client import check_keys
from .addresses import check_addresses, check_port_free, parse_address
from .logsafe import log_to_stderr
from .run_args import parse_rate
from .usage import Parser, UsageError, one_line, shown

log = logging.getLogger("metropc.replay")
PROG = "metropc-replay"


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description="Publish a metropc recording "
                                      "with the protocol of a live pipeline.")
    p.add_argument("path", help="a recording file, or a directory of them")
    p.add_argument("--rate", type=parse_rate, default=None, metavar="HZ",
                   help="events per second, or 'max' (default: the recorded pace)")
    p.add_argument("--output", default="tcp://127.0.0.1:0", metavar="ADDR",
                   help="address to publish on: tcp://HOST:PORT (port 0..65535, 0 "
                        "picks a free one) or ipc://PATH (default: a free loopback "
                        "TCP port)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow publishing on a non-loopback interface (needs --keys)")
    p.add_argument("--views", default=None, metavar="A,B",
                   help="comma-separated views to replay (names the recording has)")
    p.add_argument("--no-wait", action="store_true",
                   help="start at once instead of when a client subscribes to a view")
    p.add_argument("--loop", action="store_true", help="start over at the end")
    p.add_argument("--keys", default=None, metavar="DIR",
                   help="secure the output with CURVE (keys from metropc-keys DIR)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    log_to_stderr(logging.INFO)
    try:
        from ..recording.replay import RecordingError, check_views, recorded_views, replay
    except ImportError as e:
        print(f"{PROG}: error: {e} (pip install 'metropc[record]')", file=sys.stderr)
        return 1

    views = None if args.views is None else [v.strip() for v in args.views.split(",")
                                             if v.strip()]
    try:
        host, port = parse_address("--output", args.output)
        check_addresses(SimpleNamespace(output=args.output, control=None, reduce=None,
                                        allow_remote=args.allow_remote, keys=args.keys))
        check_keys(args.keys)
        try:
            known = recorded_views(args.path)
            if views is not None:
                if not views:
                    raise RecordingError("--views names no view")
                check_views(views, known)
        except RecordingError as e:  # (HDF5's text may hold line breaks)
            raise UsageError(one_line(e)) from None
        check_port_free("--output", args.output, host, port)
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    import zmq

    from ..stage.common import make_socket

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    ctx = zmq.Context()
    socket = make_socket(ctx, zmq.XPUB, hwm=1000)
    try:
        if args.keys is not None:
            from ..security import Keys
            try:
                Keys.load(args.keys).server(socket)
            except (OSError, ValueError) as e:  # no server secret: cannot bind
                print(f"{PROG}: error: --keys {shown(args.keys)}: {e}", file=sys.stderr)
                return 2
        output = args.output
        if output.startswith("tcp://") and output.endswith(":0"):
            output = output[:-2] + ":*"
        try:
            endpoints.bind(socket, output)
        except zmq.ZMQError as e:
            print(f"{PROG}: error: --output {args.output!r}: cannot bind it: {e}",
                  file=sys.stderr)
            return 2
        addr = socket.last_endpoint.decode()
        print(f"{PROG}: output on {addr}  (watch it with: metropc-client {addr})",
              flush=True)
        while True:
            sent = replay(args.path, socket, rate=args.rate, views=views,
                          wait=not args.no_wait, stop=stop)
            log.info("replayed %d messages from %s", sent, args.path)
            if not args.loop or stop.is_set():
                break
        return 130 if stop.is_set() else 0
    finally:
        socket.close(linger=1000)
        ctx.term()


if __name__ == "__main__":
    sys.exit(main())

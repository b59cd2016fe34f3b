"""``metropc-replay``: publish a recording as a live pipeline would.

::

    metropc-replay run_0007.h5                      # at the recorded pace
    metropc-replay recordings/ --rate 50 --output tcp://127.0.0.1:5555

Clients (``metropc-client``, the dashboard, EXtra-foam) connect to the
printed address exactly as to ``metropc-run``'s output.  Results start
when a client subscribes to a view (``--no-wait`` starts at once); the
program ends when the recording has been sent (``--loop`` starts over).
See docs/recording.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

log = logging.getLogger("metropc.replay")
PROG = "metropc-replay"


def _rate(text: str):
    if text == "max":
        return "max"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rate wants a number or 'max', got {text!r}")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"--rate must be positive, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Publish a metropc recording "
                                "with the protocol of a live pipeline.")
    p.add_argument("path", help="a recording file, or a directory of them")
    p.add_argument("--rate", type=_rate, default=None, metavar="HZ",
                   help="events per second, or 'max' (default: the recorded pace)")
    p.add_argument("--output", default="tcp://127.0.0.1:0", metavar="ADDR",
                   help="address to publish on (default: a free loopback TCP port)")
    p.add_argument("--views", default=None, help="comma-separated views to replay")
    p.add_argument("--no-wait", action="store_true",
                   help="start at once instead of when a client subscribes to a view")
    p.add_argument("--loop", action="store_true", help="start over at the end")
    p.add_argument("--keys", default=None, metavar="DIR",
                   help="secure the output with CURVE (keys from metropc-keys DIR)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
                        datefmt="%H:%M:%S")
    from ..recording.reader import recording_files
    from ..recording.replay import replay

    files = recording_files(args.path)
    if not files or not all(os.path.isfile(f) for f in files):
        print(f"{PROG}: error: no recording at {args.path}", file=sys.stderr)
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
            Keys.load(args.keys).server(socket)
        output = args.output
        if output.startswith("tcp://") and output.endswith(":0"):
            output = output[:-2] + ":*"
        try:
            socket.bind(output)
        except zmq.ZMQError as e:
            print(f"{PROG}: error: cannot bind {args.output}: {e}", file=sys.stderr)
            return 2
        addr = socket.last_endpoint.decode()
        print(f"{PROG}: output on {addr}  (watch it with: metropc-client {addr})",
              flush=True)
        views = None if args.views is None else [v for v in args.views.split(",") if v]
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

"""``metropc-worker``: a POOL worker on another host joining a running pipeline.

::

    metropc-worker --control tcp://daq-node:41000 --reduce tcp://daq-node:41001 \\
                   --keys ~/.metropc/keys

The pipeline must have been started with control and reduce addresses other
hosts can reach (``metropc-run --control tcp://0.0.0.0:41000 --reduce
tcp://0.0.0.0:41001 --allow-remote --keys DIR``) and the same key
directory.  The worker receives the running context and parameters when it
joins, takes events like the local workers, and leaves with Ctrl-C; if it
dies or loses the network, the frontend notices its silence and counts the
events it held as lost.

Exit codes: 2 for a bad argument (an address that is not
``tcp://HOST:PORT``, ``ipc://PATH`` or ``inproc://NAME``, a key directory
that cannot be loaded, ``--prefetch`` below 1), one line naming it.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys

from ..error import StopRequested
from .client import check_connect_address, check_keys
from .logsafe import log_to_stderr
from .usage import Parser, UsageError, positive_int

PROG = "metropc-worker"


def build_parser():
    p = Parser(prog=PROG, description="Join a running metropc pipeline as a POOL worker.")
    p.add_argument("--control", required=True, metavar="ADDR",
                   help="the pipeline's control address")
    p.add_argument("--reduce", required=True, metavar="ADDR",
                   help="the pipeline's reduce address")
    p.add_argument("--keys", metavar="DIR", default=None,
                   help="key directory of a pipeline secured with CURVE")
    p.add_argument("--name", type=worker_name, default=None,
                   help="worker name, unique in the pipeline (default pool-HOST-PID)")
    p.add_argument("--prefetch", type=prefetch_count, default=4, metavar="N",
                   help="messages this worker may hold at once, 1 to 64 (default 4)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


#: Bytes a worker name may have: a ZeroMQ identity holds 255, and the
#: heartbeat socket's is the name with "#hb" (and "pool-" may be added).
MAX_NAME = 255 - len("pool-") - len("#hb")


def worker_name(text: str) -> str:
    """--name: printable, no white space or '#', at most MAX_NAME bytes, and
    not a local worker's name (``pool-N``): the frontend routes messages by
    name, so such a worker would take a local worker's messages."""
    if (not text or not text.isprintable() or any(c.isspace() for c in text)
            or "#" in text):
        raise argparse.ArgumentTypeError(f"wants a name without spaces or '#', got {text!r}")
    if len(text.encode()) > MAX_NAME:
        raise argparse.ArgumentTypeError(
            f"must be at most {MAX_NAME} bytes, got {len(text.encode())}")
    if text.removeprefix("pool-").isdigit():
        raise argparse.ArgumentTypeError(
            f"pool-N names are the local workers' (metropc-run's), got {text!r}")
    return text


#: Most messages a worker may take ahead (--prefetch): each holds up to 128
#: events, all lost if the worker dies.
MAX_PREFETCH = 64


def prefetch_count(text: str) -> int:
    """--prefetch: 1 to MAX_PREFETCH."""
    n = positive_int(text)
    if n > MAX_PREFETCH:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_PREFETCH}, got {text!r}")
    return n


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        check_connect_address("--control", args.control)
        check_connect_address("--reduce", args.reduce)
        check_keys(args.keys)
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    from ..stage.pool import run_pool

    log_to_stderr(logging.DEBUG if args.verbose else logging.INFO, datefmt=None)
    name = args.name or f"pool-{socket.gethostname()}-{os.getpid()}"
    if not name.startswith("pool-"):
        name = f"pool-{name}"

    def on_term(signum, frame):
        # The first signal stops the worker (its events are counted lost by
        # the pipeline); a second one, even within a millisecond (a SIGTERM
        # to the group and one to us), quits at once, as metropc-run does,
        # instead of interrupting the clean-up with a traceback.
        signal.signal(signal.SIGTERM, quit_now)
        signal.signal(signal.SIGINT, quit_now)
        raise StopRequested(f"signal {signum}")

    def quit_now(signum, frame):
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        logging.getLogger("metropc.worker").info("worker %s joining %s", name, args.control)
        return run_pool(args.control, args.reduce, name=name, prefetch=args.prefetch,
                        keys=args.keys, remote=True)
    except KeyboardInterrupt:  # a signal before run_pool took over (it returns 0 too)
        return 0
    finally:
        # All is released; what is left is the interpreter's exit, which
        # sets the signals back to their defaults first: a late second
        # signal would end it by SIGTERM (-15) rather than with a code.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main())

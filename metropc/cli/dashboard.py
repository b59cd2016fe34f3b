"""``metropc-dashboard``: a live web dashboard for a running pipeline's output.

::

    metropc-dashboard tcp://127.0.0.1:5555                # http://127.0.0.1:8050/
    metropc-dashboard tcp://127.0.0.1:5555 --bind 9000    # another port
    metropc-dashboard tcp://127.0.0.1:5555 --bind 0.0.0.0:8050 --allow-remote  # with a token

It only has the output address, so it shows everything but cannot change
parameters or run actions; ``metropc-run CONTEXT --dashboard PORT`` serves
the same page with those enabled.  Ctrl-C or SIGTERM stops it.

Exit codes: 0 after Ctrl-C/SIGTERM (or ``--duration``), 2 for bad arguments
(one line naming the value: an output address that is not ``tcp://HOST:PORT``,
``ipc://PATH`` or ``inproc://NAME``, ``--history`` outside 1..1000000,
``--max-side`` below 1, a ``--duration`` that is not a positive number, a key
directory that cannot be loaded) or an address that cannot be served, 1 if
the dashboard extra is missing.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time

from ..dashboard import DEFAULT_PORT, check_bind, parse_bind
from .client import check_connect_address, check_keys
from .logsafe import log_to_stderr
from .usage import Parser, UsageError, positive_float, positive_int, shown

log = logging.getLogger("metropc.dashboard")
PROG = "metropc-dashboard"

#: Most points kept per SCALAR / POINTS view (24 bytes each; a panel shows
#: at most metropc.dashboard.server.MAX_WINDOW of them).
MAX_HISTORY = 1_000_000


def _history(text):
    value = positive_int(text)
    if value > MAX_HISTORY:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_HISTORY}, got {text!r}")
    return value


_history.__name__ = "int"


def build_parser():
    p = Parser(
        prog=PROG,
        description="Serve a live web dashboard of a metropc pipeline's output.")
    p.add_argument("address", metavar="ADDR",
                   help="output address of the pipeline, e.g. tcp://127.0.0.1:5555")
    p.add_argument("--bind", default=None, metavar="[HOST:]PORT",
                   help=f"where to serve the page (default 127.0.0.1:{DEFAULT_PORT}, or a "
                        "free port if that one is taken); port 0 picks a free port")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow serving on a non-loopback interface (the page then "
                        "needs the token in the printed URL)")
    p.add_argument("--token", action="store_true",
                   help="require a token (in the printed URL) on loopback too")
    p.add_argument("--keys", default=None, metavar="DIR",
                   help="key directory of a pipeline secured with CURVE (metropc-keys)")
    p.add_argument("--no-pickle", action="store_true",
                   help="refuse pickled results (unpickling runs code chosen by the sender)")
    p.add_argument("--history", type=_history, default=10_000, metavar="N",
                   help="points kept per scalar / points view, 1 to "
                        f"{MAX_HISTORY} (default 10000)")
    p.add_argument("--max-side", type=positive_int, default=256, metavar="PX",
                   help="largest image side sent to the browser, 1 or more "
                        "(default 256)")
    p.add_argument("--title", default=None, help="title shown on the page")
    p.add_argument("--duration", type=positive_float, default=None, metavar="S",
                   help="stop after S seconds (a positive number)")
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    log_to_stderr(logging.INFO if args.verbose else logging.WARNING)
    try:
        check_connect_address("output address", args.address)
        try:  # (an empty --bind is an error, as metropc-run's --dashboard '')
            host, port = (("127.0.0.1", DEFAULT_PORT) if args.bind is None
                          else parse_bind(args.bind))
            check_bind(host, args.allow_remote)
        except ValueError as e:
            raise UsageError(f"--bind {shown(args.bind)}: {e}" if args.bind is not None
                             else str(e)) from None
        check_keys(args.keys)
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    try:
        from ..dashboard import Dashboard
    except ImportError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1

    def make(port):
        return Dashboard(args.address, host, port, allow_pickle=not args.no_pickle,
                         allow_remote=args.allow_remote, history=args.history,
                         max_side=args.max_side, title=args.title,
                         token=True if args.token else None, keys=args.keys).start()

    try:
        try:
            dash = make(port)
        except OSError as e:
            if args.bind is not None:
                raise
            log.warning("port %d is taken (%s); using a free one", port, e.strerror)
            dash = make(0)
    except OSError as e:
        print(f"{PROG}: error: cannot serve on {shown(f'{host}:{port}')}: {e.strerror or e}",
              file=sys.stderr)
        return 2
    except (ValueError, RuntimeError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2

    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        print(f"{PROG}: {dash.url}  (pipeline output {args.address})", flush=True)
        deadline = None if args.duration is None else time.monotonic() + args.duration
        while not stop.wait(0.5):
            if deadline is not None and time.monotonic() >= deadline:
                break
        return 0
    finally:
        dash.stop()


if __name__ == "__main__":
    sys.exit(main())

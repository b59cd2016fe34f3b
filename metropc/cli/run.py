"""``metropc-run``: run a context on a data source through the full pipeline.

::

    metropc-run ctx.py                       # built-in simulator at 10 Hz
    metropc-run ctx.py --source tcp://exflqr1234:45000 --pool 4
    metropc-run ctx.py --param threshold=0.5 --duration 60

It starts the pipeline (a frontend in this process, POOL workers and REDUCE
as child processes), prints the output address clients connect to, watches
the context file and reloads it on save (a broken edit is reported with
file and line, and the running context goes on), and shows a live status.
Ctrl-C or SIGTERM stops everything within a few seconds; a second Ctrl-C
exits at once.
"""

from __future__ import annotations

import argparse
import ast
import logging
import os
import shutil
import signal
import sys
import threading
import time

from ..error import ContextError, SourceError
from ..frontend import DROP_NEWEST, DROP_OLDEST
from ..pipeline import Pipeline
from ..stage.shm import parse_size, unlink_owned
from .status import StatusDisplay

log = logging.getLogger("metropc.run")

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")


def parse_param(text):
    """``NAME=VALUE`` with VALUE a Python literal (else a string)."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"--param wants NAME=VALUE, got {text!r}")
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value
    return name.strip(), parsed


def parse_rate(text):
    if text == "max":
        return "max"
    try:
        rate = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rate wants a number or 'max', got {text!r}")
    if rate <= 0:
        raise argparse.ArgumentTypeError("--rate must be positive")
    return rate


def build_parser():
    p = argparse.ArgumentParser(
        prog="metropc-run", description="Run a metropc context on a data source.")
    p.add_argument("context", help="the context file (Python)")
    p.add_argument("--source", default="sim",
                   help="data source: 'sim' (default), a Karabo bridge endpoint "
                        "(tcp://HOST:PORT), a run directory or HDF5 file, or "
                        "module:callable")
    p.add_argument("--pool", type=int, default=2, metavar="N",
                   help="number of POOL worker processes (default 2)")
    p.add_argument("--output", default="tcp://127.0.0.1:0", metavar="ADDR",
                   help="ZeroMQ address clients connect to (default: a free "
                        "loopback TCP port)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow binding to a non-loopback interface (needs --keys)")
    p.add_argument("--control", default=None, metavar="ADDR",
                   help="control address (default: private ipc socket); a tcp:// "
                        "address lets metropc-worker join from other hosts")
    p.add_argument("--reduce", default=None, metavar="ADDR",
                   help="address pool workers send results to (default: private "
                        "ipc socket)")
    p.add_argument("--keys", default=None, metavar="DIR",
                   help="secure every socket with CURVE using the keys made by "
                        "metropc-keys DIR")
    p.add_argument("--event-timeout", type=float, default=30.0, metavar="S",
                   help="seconds a worker may spend per event before it is replaced "
                        "(default 30; 0 disables)")
    p.add_argument("--shm-size", type=parse_size, default=None, metavar="SIZE",
                   help="shared memory for large arrays between the stages on this "
                        "host, e.g. 512M or 2G; 0 or 'off' disables (default: "
                        "min(1 GiB, RAM/8)); see docs/shm.md")
    p.add_argument("--dashboard", default=None, metavar="[HOST:]PORT",
                   help="also serve the live web dashboard there (host 127.0.0.1 "
                        "unless given; port 0 picks a free one); needs "
                        "metropc[dashboard]")
    p.add_argument("--param", action="append", type=parse_param, default=[],
                   metavar="NAME=VALUE", help="override a context parameter")
    p.add_argument("--rate", type=parse_rate, default=None,
                   help="trains/s of the simulator or file replay, or 'max'")
    p.add_argument("--seed", type=int, default=0, help="simulator seed")
    p.add_argument("--bridge-socket", choices=("REQ", "SUB", "PULL"), default=None,
                   help="socket type for a Karabo bridge (default REQ)")
    p.add_argument("--queue-size", type=int, default=16,
                   help="events waiting for a worker before dropping (default 16)")
    p.add_argument("--drop-policy", choices=(DROP_OLDEST, DROP_NEWEST),
                   default=DROP_OLDEST, help="which event to drop when full")
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help="stop after S seconds")
    p.add_argument("--max-events", type=int, default=None, metavar="N",
                   help="stop after the source gave N events")
    p.add_argument("--no-watch", action="store_true",
                   help="do not reload the context file when it changes")
    p.add_argument("--status", choices=("auto", "live", "lines", "off"), default="auto",
                   help="status display: live (in place), lines, off; auto picks "
                        "live on a terminal")
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p


def check_addresses(args):
    """Refuse addresses other hosts can reach unless asked, and then with keys."""
    for option, addr in (("--output", args.output), ("--control", args.control),
                         ("--reduce", args.reduce)):
        if not addr or not addr.startswith("tcp://"):
            continue
        host = addr[len("tcp://"):].rsplit(":", 1)[0]
        if host in LOOPBACK_HOSTS:
            continue
        if not args.allow_remote:
            raise SystemExit(
                f"metropc-run: refusing to bind {option} to {host!r}, which is not a "
                "loopback interface; pass --allow-remote (with --keys) to do it on "
                "purpose")
        if args.keys is None:
            raise SystemExit(
                f"metropc-run: {option} {addr} is reachable from other hosts, and "
                "context code is Python: secure it with --keys DIR (make keys with "
                "metropc-keys DIR)")


class ContextWatcher:
    """Reloads the context file when it changes; keeps the old one on error."""

    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.path = pipeline.context_path
        self._stamp = self._read_stamp()

    def _read_stamp(self):
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def poll(self):
        stamp = self._read_stamp()
        if stamp is None or stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            self.pipeline.reload()
        except ContextError as e:
            log.error("context refused, the previous one keeps running\n%s",
                      e.format_for_context(_read(self.path)))
        except OSError as e:
            log.error("cannot read context %s: %s", self.path, e)


def _read(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return None


def main(argv=None):
    args = build_parser().parse_args(argv)
    level = logging.WARNING if args.verbose < 0 else (
        logging.INFO if args.verbose == 0 else logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s: %(message)s",
                        datefmt="%H:%M:%S")
    check_addresses(args)
    dashboard_bind = None
    if args.dashboard is not None:
        from ..dashboard import check_bind, parse_bind
        try:
            dashboard_bind = parse_bind(args.dashboard)
            check_bind(dashboard_bind[0], args.allow_remote)
        except ValueError as e:
            print(f"metropc-run: --dashboard: {e}", file=sys.stderr)
            return 2
    if not os.path.isfile(args.context):
        print(f"metropc-run: no such context file: {args.context}", file=sys.stderr)
        return 2
    output = args.output
    if output.startswith("tcp://") and output.endswith(":0"):
        output = output[:-2] + ":*"

    stop = threading.Event()
    leftovers = []  # what to remove even when leaving at once

    def on_signal(signum, frame):
        if stop.is_set():
            # Second Ctrl-C: leave at once.  The stages end with us
            # (PR_SET_PDEATHSIG); only our private socket directory is ours
            # to remove on the way out.
            for path in leftovers:
                shutil.rmtree(path, ignore_errors=True)
            unlink_owned()  # shared memory would outlive os._exit
            os._exit(130)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    try:
        pipeline = Pipeline(args.context, source=args.source, pool=args.pool,
                            output=output, parameters=dict(args.param), rate=args.rate,
                            seed=args.seed, bridge_socket=args.bridge_socket,
                            queue_size=args.queue_size, drop_policy=args.drop_policy,
                            max_events=args.max_events, control=args.control,
                            reduce=args.reduce, keys=args.keys,
                            event_timeout=args.event_timeout or None,
                            shm_size=args.shm_size)
    except ContextError as e:
        log.error("context refused, nothing runs\n%s",
                  e.format_for_context(_read(args.context)))
        return 1
    except SourceError as e:
        log.error("%s", e)
        return 1
    if pipeline.frontend._tmpdir:
        leftovers.append(pipeline.frontend._tmpdir)
    status = None
    dashboard = None
    try:
        print(f"metropc-run: output on {pipeline.output_addr}  "
              f"(watch it with: metropc-client {pipeline.output_addr})", flush=True)
        if dashboard_bind is not None:
            try:
                from ..dashboard import serve
                dashboard = serve(pipeline.output_addr, *dashboard_bind, control=pipeline,
                                  allow_remote=args.allow_remote, keys=args.keys,
                                  title=os.path.basename(args.context))
            except (ImportError, OSError) as e:
                log.error("cannot serve the dashboard on %s: %s", args.dashboard, e)
                return 2
            print(f"metropc-run: dashboard on {dashboard.url}", flush=True)
        watcher = None if args.no_watch else ContextWatcher(pipeline)
        mode = args.status
        if mode == "auto":
            mode = "live" if sys.stderr.isatty() else "lines"
        if mode != "off":
            status = StatusDisplay(pipeline.output_addr, pipeline.ctx.event_alias,
                                   live=(mode == "live"))
        t_end = None if args.duration is None else time.monotonic() + args.duration
        while not stop.is_set() and not pipeline.finished.is_set():
            stop.wait(0.5)
            if watcher is not None:
                watcher.poll()
            if status is not None:
                status.update()
            if t_end is not None and time.monotonic() >= t_end:
                break
        if status is not None:
            status.update(final=True)
        return 0
    finally:
        if dashboard is not None:
            dashboard.stop()
        pipeline.close(timeout=3.0)
        if status is not None:
            status.close()


if __name__ == "__main__":
    sys.exit(main())

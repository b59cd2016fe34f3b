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
import difflib
import errno
import gc
import logging
import os
import re
import shutil
import signal
import socket
import sys
import threading
import time

from ..dashboard.address import is_loopback
from ..error import ContextError, SourceError

# The pipeline's modules are imported in main(), once SIGINT is blocked, so
# that a Ctrl-C while they load is handled like any other.

log = logging.getLogger("metropc.run")

PROG = "metropc-run"


class UsageError(Exception):
    """A command-line value metropc-run refuses: one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line, not the usage block: the user sees what is wrong at once.
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parse_param(text):
    """``NAME=VALUE``; VALUE stays text until the context says its type."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"--param wants NAME=VALUE, got {text!r}")
    return name.strip(), value


def parse_rate(text):
    if text == "max":
        return "max"
    try:
        rate = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rate wants a number or 'max', got {text!r}")
    if not rate > 0 or rate == float("inf"):
        raise argparse.ArgumentTypeError(f"--rate must be a positive number, got {text!r}")
    from ..sources.base import MIN_RATE
    if rate < MIN_RATE:
        raise argparse.ArgumentTypeError(
            f"--rate must be at least {MIN_RATE:g} (one event per {1 / MIN_RATE:g} s), "
            f"got {text!r}")
    return rate



def _number(kind, minimum, what):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"wants {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")) or value < minimum:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


positive_int = _number(int, 1, "at least 1")
non_negative_int = _number(int, 0, "0 or more")
non_negative_float = _number(float, 0, "0 or more")
positive_float = _number(float, 1e-9, "positive")


def build_parser():
    from ..frontend import DROP_BLOCK, DROP_NEWEST, DROP_OLDEST
    from ..stage.shm import parse_size

    p = _Parser(
        prog=PROG, description="Run a metropc context on a data source.")
    p.add_argument("context", help="the context file (Python)")
    p.add_argument("--source", default="sim",
                   help="data source: 'sim' (default), a Karabo bridge endpoint "
                        "(tcp://HOST:PORT), a run directory or HDF5 file, or "
                        "module:callable")
    p.add_argument("--pool", type=positive_int, default=2, metavar="N",
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
    p.add_argument("--event-timeout", type=non_negative_float, default=30.0, metavar="S",
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
    p.add_argument("--metrics", default=None, metavar="[HOST:]PORT",
                   help="serve Prometheus metrics (/metrics) and a JSON status "
                        "(/status) there (host 127.0.0.1 unless given; port 0 picks a "
                        "free one); needs metropc[metrics]")
    p.add_argument("--record", default=None, metavar="PATH",
                   help="record every view result to HDF5: a file, or a directory "
                        "for one file per run (needs metropc[record]; "
                        "docs/recording.md)")
    p.add_argument("--record-views", default=None, metavar="A,B",
                   help="with --record: record only these views")
    p.add_argument("--param", action="append", type=parse_param, default=[],
                   metavar="NAME=VALUE",
                   help="set a parameter the context declares; VALUE is read as the "
                        "type of the declared default")
    p.add_argument("--rate", type=parse_rate, default=None,
                   help="trains/s of the simulator or file replay, or 'max'")
    p.add_argument("--seed", type=non_negative_int, default=0, help="simulator seed")
    p.add_argument("--bridge-socket", choices=("REQ", "SUB", "PULL"), default=None,
                   help="socket type for a Karabo bridge (default REQ)")
    p.add_argument("--queue-size", type=positive_int, default=16,
                   help="events waiting for a worker before dropping (default 16)")
    p.add_argument("--drop-policy", choices=(DROP_OLDEST, DROP_NEWEST, DROP_BLOCK),
                   default=None, help="what happens when the queue is full: drop the "
                   "oldest or the newest event, or block (slow the source down); "
                   "default: oldest for live sources, block for run files")
    p.add_argument("--sim-run-length", type=positive_int, default=None, metavar="N",
                   help="the simulator starts a new run every N trains (default: no runs)")
    p.add_argument("--duration", type=positive_float, default=None, metavar="S",
                   help="stop after S seconds")
    p.add_argument("--max-events", type=positive_int, default=None, metavar="N",
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
        if is_loopback(host):  # (one rule for every address: 127.x, localhost, ::1)
            continue
        if not args.allow_remote:
            raise UsageError(
                f"refusing to bind {option} to {host!r}, which is not a "
                "loopback interface; pass --allow-remote (with --keys) to do it on "
                "purpose")
        if args.keys is None:
            raise UsageError(
                f"{option} {addr} is reachable from other hosts, and "
                "context code is Python: secure it with --keys DIR (make keys with "
                "metropc-keys DIR)")


_TCP = re.compile(r"^tcp://(?P<host>\[[^\]]*\]|[^:/\[\]\s]+):(?P<port>\*|\d+)$")


def parse_address(option, addr):
    """``(host, port)`` of a ``tcp://`` address (port None for any), or
    ``(None, None)`` for ``ipc://``; UsageError naming the address else."""
    if addr.startswith("ipc://"):
        path = addr[len("ipc://"):]
        directory = os.path.dirname(path) or "."
        if not path or path.endswith("/"):
            raise UsageError(f"{option} {addr!r}: an ipc:// address needs a file name")
        if not path.startswith("@"):  # "@name": Linux abstract namespace, no file
            if not os.path.isdir(directory):
                raise UsageError(f"{option} {addr!r}: no directory {directory!r}")
            if not os.access(directory, os.W_OK | os.X_OK):
                raise UsageError(f"{option} {addr!r}: cannot create a socket file in "
                                 f"{directory!r} (permission denied)")
        return None, None
    m = _TCP.match(addr)
    if m is None:
        raise UsageError(f"{option} {addr!r} is not an address: use tcp://HOST:PORT "
                         "(port 0 or * picks a free one) or ipc://PATH")
    port = m["port"]
    if port == "*" or int(port) == 0:
        return m["host"], None
    if int(port) > 65535:
        raise UsageError(f"{option} {addr!r}: port {port} is out of range (0-65535)")
    return m["host"], int(port)


def check_port_free(option, addr, host, port):
    """Bind (and release) `host`:`port` now, so that a taken port is one clear
    line before any stage starts.  ZeroMQ binds with SO_REUSEADDR, so we do too."""
    if port is None:
        return
    host = host.strip("[]")
    if host == "*":
        host = "0.0.0.0"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return  # an interface name, say: leave it to ZeroMQ
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(sockaddr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise UsageError(f"{option} {addr}: port {port} is already in use "
                                 "(another metropc-run?); pick another port, or 0 for "
                                 "a free one") from None
            raise UsageError(f"{option} {addr}: cannot bind there: "
                             f"{e.strerror or e}") from None


def check_context_path(path):
    if "\n" in path or "\r" in path:
        raise UsageError(f"the context path {path!r} contains a line break; "
                         "give the path of a context file")
    if not os.path.exists(path):
        raise UsageError(f"no such context file: {path}")
    if not os.path.isfile(path):
        raise UsageError(f"the context {path} is not a file")


def _coerce(text, default):
    """`text` as the type of `default` (bool, int, float, str; else a literal)."""
    if isinstance(default, bool):
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError("wants true or false")
    if isinstance(default, int):
        return int(text, 0)
    if isinstance(default, float):
        return float(text)
    if isinstance(default, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if default is not None and not isinstance(value, type(default)):
        raise ValueError(f"wants a {type(default).__name__}")
    return value


def _did_you_mean(name, declared):
    close = difflib.get_close_matches(name, declared, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _declared_text(declared):
    return ", ".join(sorted(declared)) if declared else "none"


def check_parameters(ctx, pairs):
    """The `--param` values checked against what `ctx` declares.

    ``Context.check_parameters`` does it (unknown names with a did-you-mean
    and the declared ones, values coerced to the declared type); for a
    core without it, a check of its own does the same.  Either way a
    refused value is a UsageError naming the file (and line).
    """
    if not pairs:
        return {}
    declared = dict(ctx.parameters)
    raw = {}
    for name, text in pairs:
        default = declared.get(name)
        # Scalars are parsed by the declared type; anything else (None, an
        # ROI object, a list) takes a Python literal.
        scalar = isinstance(default, (bool, int, float, str))
        raw[name] = text if scalar else _parse_literal(text)
    check = getattr(ctx, "check_parameters", None)
    if check is not None:
        try:
            return dict(check(raw))
        except (ContextError, ValueError) as e:  # metropc.error.ParameterError
            raise UsageError(f"--param: {e}") from None
    where = ctx.path
    values = {}
    for name, text in pairs:
        if name not in declared:
            raise UsageError(
                f"--param {name}: {where} declares no parameter {name!r}"
                f"{_did_you_mean(name, list(declared))} (declared: "
                f"{_declared_text(declared)})")
        default = declared[name]
        try:
            values[name] = _coerce(text, default)
        except ValueError as e:
            kind = type(default).__name__
            raise UsageError(f"--param {name}={text}: {where} declares {name} as a "
                             f"{kind} (default {default!r}); {text!r} is not one"
                             + (f" ({e})" if "wants" in str(e) else "")) from None
    return values


def _parse_literal(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


class ContextWatcher:
    """Reloads the context file when it changes; keeps the old one on error.

    A reload runs in a thread of its own, so that the main loop (status,
    keys, Ctrl-C) goes on while the context's top-level code runs, however
    long it takes (Pipeline refuses it after RELOAD_TIMEOUT).  A change
    saved meanwhile is loaded after it.
    """

    def __init__(self, pipeline, state=None):
        self.pipeline = pipeline
        self.path = pipeline.context_path
        self.state = state
        self._stamp = self._read_stamp()
        self._loading = None

    def _read_stamp(self):
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def poll(self):
        if self._loading is not None and self._loading.is_alive():
            return
        stamp = self._read_stamp()
        if stamp is None or stamp == self._stamp:
            return
        self._stamp = stamp
        self._loading = threading.Thread(target=self.reload, name="metropc-reload",
                                         daemon=True)
        self._loading.start()

    def reload(self):
        try:
            ctx = self.pipeline.reload()
        except ContextError as e:
            log.error("context refused, the previous one keeps running (version %d)\n%s",
                      self.pipeline.version, e.format_for_context(_read(self.path)))
            if self.state is not None:
                self.state.refuse(str(e))
        except OSError as e:
            log.error("cannot read context %s: %s", self.path, e)
            if self.state is not None:
                self.state.refuse(f"{self.path}: cannot read: {e.strerror or e}")
        else:
            if self.state is not None:
                self.state.loaded(ctx.version, len(ctx.views))


def _read(path):
    """The context's text to quote in an error report; None if unreadable."""
    from ..core import read_context_file  # (numpy and xarray: not for --help)
    try:
        return read_context_file(path)
    except (OSError, ContextError):
        return None


class Interrupts:
    """Ctrl-C and SIGTERM, at any moment, without a traceback.

    SIGINT is blocked in every thread and taken by one thread with
    ``sigtimedwait``; stage processes are spawned while it is blocked, so
    they inherit the block and never see Ctrl-C, not even while Python
    starts up in them (before they can ignore it).  The first signal sets
    :attr:`stop` and calls `on_stop`; a second one calls `on_exit`.
    """

    def __init__(self, on_stop, on_exit):
        self.stop = threading.Event()
        self.signum = None
        self._on_stop, self._on_exit = on_stop, on_exit
        self._done = threading.Event()
        self._old_mask = self._old_term = self._old_int = None
        self._thread = None

    @staticmethod
    def block():
        """Block SIGINT in this thread, and so in every thread and process it
        starts later; call it before anything else starts.  Returns the old mask."""
        return signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})

    def install(self, old_mask):
        self._old_mask = old_mask
        self._thread = threading.Thread(target=self._wait, name="metropc-run-sigint",
                                        daemon=True)
        self._thread.start()
        handler = lambda signum, frame: self.request(signum)  # noqa: E731
        self._old_term = signal.signal(signal.SIGTERM, handler)
        # Should anything unblock SIGINT again, it still is no traceback.
        self._old_int = signal.signal(signal.SIGINT, handler)
        # multiprocessing's resource tracker, when it starts, unblocks SIGINT
        # in the thread that starts it (ensure_running); start it now and
        # block again, so that the stage processes, spawned later, inherit
        # the block (ensure_running leaves the mask alone once it runs).
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})

    def _wait(self):
        while not self._done.is_set():
            info = signal.sigtimedwait({signal.SIGINT}, 0.2)
            # A stop and continue (Ctrl-Z, fg) during the wait can make it
            # return a record of no signal at all (CPython 3.11): not a Ctrl-C.
            if info is not None and info.si_signo == signal.SIGINT:
                self.request(signal.SIGINT)

    def request(self, signum):
        if self.stop.is_set():
            self._on_exit()
            return
        self.signum = signum
        self.stop.set()
        self._on_stop(signum)

    def uninstall(self):
        self._done.set()
        if self._thread is not None:
            self._thread.join(1.0)
        if self._old_term is not None:
            signal.signal(signal.SIGTERM, self._old_term)
            signal.signal(signal.SIGINT, self._old_int)
        if self._old_mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask)


class ChildOutput:
    """What stage processes write to fds 1 and 2, through the rich console.

    In live mode the status region is redrawn in place, so raw writes by
    child processes (a context's ``print``, a stage's warning, a crash)
    would garble it.  Fds 1 and 2 become one pipe that the children
    inherit; this process writes through duplicates of the real ones
    (:attr:`stdout`, :attr:`stderr`), and a thread prints each captured line
    with the console, above the status region.
    """

    def __init__(self):
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = {fd: os.dup(fd) for fd in (1, 2)}
        read_end, write_end = os.pipe()
        os.dup2(write_end, 1)
        os.dup2(write_end, 2)
        os.close(write_end)
        self._read_end = read_end
        self.stdout = open(self._saved[1], "w", buffering=1, closefd=False)
        self.stderr = open(self._saved[2], "w", buffering=1, closefd=False)
        sys.stdout, sys.stderr = self.stdout, self.stderr
        # Children started from here on: unbuffered, so a print shows at once.
        os.environ["PYTHONUNBUFFERED"] = "1"
        self.console = None
        self._thread = threading.Thread(target=self._pump, name="metropc-run-children",
                                        daemon=True)

    def start(self, console):
        self.console = console
        self._thread.start()

    def _pump(self):
        from rich.text import Text

        with open(self._read_end, "rb", buffering=0) as f:
            for raw in iter(f.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\n")
                try:
                    self.console.print(Text(line), soft_wrap=True)
                except Exception:  # noqa: BLE001 - never lose a child's words
                    os.write(self._saved[2], raw)

    def close(self):
        for fd in (1, 2):
            os.dup2(self._saved[fd], fd)  # the pipe ends once the children end
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        self._thread.join(1.0)
        self.stdout.close()
        self.stderr.close()

    def restore_cursor(self):
        os.write(self._saved[2], b"\x1b[?25h\n")


class Keys:
    """Single keys typed in the terminal of ``metropc-run``: r, p, s, q.

    The terminal is put in cbreak mode (no echo, no line buffering; Ctrl-C
    still interrupts) while the live status runs, and restored at the end.
    """

    def __init__(self, fd):
        import termios
        import tty

        self.fd = fd
        self._saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
        self.paused = False

    @classmethod
    def open(cls, live):
        """Keys of the terminal on stdin, or None if stdin is not one."""
        if not live or not sys.stdin.isatty():
            return None
        try:
            return cls(sys.stdin.fileno())
        except (ImportError, OSError, ValueError):
            return None

    def act(self, pipeline, timeout):
        """Wait up to `timeout` s for a key and do what it says; "quit" for q."""
        import select

        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return None
        key = os.read(self.fd, 1).decode(errors="replace").lower()
        if key == "r":
            pipeline.reset()
            log.info("reset: every view starts empty from the next event")
        elif key == "p":
            self.paused = not self.paused
            (pipeline.pause if self.paused else pipeline.resume)()
            log.info("paused: new events are not computed (p resumes)" if self.paused
                     else "resumed")
        elif key == "s":
            pipeline.step()
            log.info("step boundary")
        elif key == "q":
            return "quit"
        return None

    def close(self):
        import termios

        termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)


def setup_logging(verbose, console=None):
    """Log lines for the user: through `console` in live mode (so they
    scroll above the status region), else plain lines on stderr."""
    level = logging.INFO if verbose == 0 else logging.DEBUG
    if console is not None:
        from rich.logging import RichHandler

        handler = RichHandler(console=console, show_path=False, markup=False,
                              rich_tracebacks=False, log_time_format="%H:%M:%S",
                              keywords=[])
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(name)s %(levelname)s: %(message)s", datefmt="%H:%M:%S"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    if verbose < 2:  # one line per web request would drown everything else
        logging.getLogger("tornado.access").setLevel(logging.WARNING)
    return handler


def check_arguments(args):
    """Everything that can be checked before any process starts (UsageError)."""
    check_context_path(args.context)
    bound = []
    for option in ("--control", "--reduce"):
        addr = getattr(args, option[2:])
        if addr is not None:
            bound.append((option, addr, *parse_address(option, addr)))
    bound.append(("--output", args.output, *parse_address("--output", args.output)))
    check_addresses(args)
    for option, addr, host, port in bound:
        check_port_free(option, addr, host, port)
    dashboard_bind = None
    if args.dashboard is not None:
        from ..dashboard import check_bind, parse_bind
        try:
            dashboard_bind = parse_bind(args.dashboard)
            check_bind(dashboard_bind[0], args.allow_remote)
        except ValueError as e:
            raise UsageError(f"--dashboard {args.dashboard}: {e}") from None
        host, port = dashboard_bind
        check_port_free("--dashboard", f"{host}:{port}", host, port or None)
    if args.keys is not None:
        from ..security import Keys
        try:
            Keys.load(args.keys)
        except OSError as e:
            raise UsageError(f"--keys {args.keys}: {e}") from None
    check_record(args)
    args.metrics_bind = check_metrics(args)
    if args.sim_run_length is not None and not str(args.source).startswith("sim"):
        raise UsageError("--sim-run-length is for the simulator (--source sim); "
                         f"{args.source!r} says where its runs are by itself")
    return dashboard_bind


def check_metrics(args):
    """--metrics: prometheus_client present, a loopback (or allowed) free port."""
    if args.metrics is None:
        return None
    from ..dashboard.address import is_loopback, parse_bind
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise UsageError("--metrics needs prometheus_client: pip install "
                         "'metropc[metrics]'") from None
    try:
        host, port = parse_bind(args.metrics)
    except ValueError as e:
        raise UsageError(f"--metrics {args.metrics}: {e}") from None
    if not is_loopback(host) and not args.allow_remote:
        raise UsageError(f"--metrics {args.metrics}: {host!r} is not a loopback "
                         "interface; pass --allow-remote to serve metrics there on purpose")
    check_port_free("--metrics", f"{host}:{port}", host, port or None)
    return host, port


def source_options(args):
    """Options only one kind of source takes (checked in check_arguments)."""
    return {} if args.sim_run_length is None else {"run_length": args.sim_run_length}


def check_record(args):
    """--record: a path the recorder can write, and h5py to write it with."""
    if args.record is None:
        if args.record_views is not None:
            raise UsageError("--record-views needs --record PATH")
        return
    try:
        from ..recording.writer import RecordPathError, check_record_path
    except ImportError:
        raise UsageError("--record needs h5py: pip install 'metropc[record]'") from None
    try:
        check_record_path(args.record)
    except RecordPathError as e:
        raise UsageError(f"--record {args.record}: {e}") from None


def main(argv=None):
    old_mask = Interrupts.block()  # first: before any import, thread or process
    try:
        args = build_parser().parse_args(argv)
        try:
            dashboard_bind = check_arguments(args)
        except UsageError as e:
            print(f"{PROG}: error: {e}", file=sys.stderr)
            return 2
        return _main(args, dashboard_bind, old_mask)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


#: The smallest terminal (columns, rows) the live status region fits in; in a
#: smaller one, log lines would be folded into a column a few letters wide.
LIVE_MIN_SIZE = (60, 12)


def _roomy(stream) -> bool:
    """Whether the terminal of `stream` is large enough for the live region."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (OSError, ValueError):
        return False
    return size.columns >= LIVE_MIN_SIZE[0] and size.lines >= LIVE_MIN_SIZE[1]


def _main(args, dashboard_bind, old_mask):
    from ..stage.shm import unlink_owned

    mode = args.status
    if mode == "auto":
        mode = "live" if sys.stderr.isatty() and _roomy(sys.stderr) else "lines"
    children = console = None
    leftovers = []  # what to remove even when leaving at once

    def say(text):
        if console is not None:
            console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            print(text, file=sys.stderr, flush=True)

    def on_stop(signum):
        what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        say(f"{PROG}: {what}: stopping (Ctrl-C again quits at once)")

    def on_exit():
        # Second Ctrl-C: leave at once.  The stages end with us
        # (PR_SET_PDEATHSIG); only our private socket directory is ours
        # to remove on the way out.
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True)
        unlink_owned()  # shared memory would outlive os._exit
        if children is not None:
            children.restore_cursor()
        os._exit(130)

    interrupts = Interrupts(on_stop, on_exit)
    stop = interrupts.stop
    # Before ChildOutput: the resource tracker it starts keeps the real fds.
    interrupts.install(old_mask)
    try:
        if mode == "live":
            from rich.console import Console

            children = ChildOutput()
            console = Console(file=children.stderr)
            children.start(console)
        handler = setup_logging(args.verbose, console)
        # While stopping, only warnings and errors: Ctrl-C is one line.
        handler.addFilter(lambda record: not stop.is_set()
                          or record.levelno >= logging.WARNING)
        try:
            return _run(args, dashboard_bind, mode, console, interrupts, leftovers, say)
        finally:
            logging.getLogger().removeHandler(handler)
    finally:
        interrupts.uninstall()
        if children is not None:
            children.close()


def _run(args, dashboard_bind, mode, console, interrupts, leftovers, say):
    from ..core import Context, read_context_file
    from ..pipeline import Pipeline
    from .status import ContextState, StatusDisplay

    stop = interrupts.stop

    def exit_code():
        return 130 if interrupts.signum == signal.SIGINT else 0

    if stop.is_set():  # Ctrl-C before anything started
        return exit_code()
    try:
        source = read_context_file(args.context)
    except OSError as e:
        say(f"{PROG}: error: cannot read the context file {args.context}: "
            f"{e.strerror or e}")
        return 2
    except ContextError as e:  # not text
        log.error("context refused, nothing runs\n%s", e)
        return 1
    try:
        ctx = Context(source, path=args.context)
        parameters = check_parameters(ctx, args.param)
    except UsageError as e:
        say(f"{PROG}: error: {e}")
        return 2
    except ContextError as e:
        log.error("context refused, nothing runs\n%s", e.format_for_context(source))
        return 1
    if stop.is_set():
        return exit_code()

    output = args.output
    if output.startswith("tcp://") and output.endswith(":0"):
        output = output[:-2] + ":*"
    recorder = None
    if args.record is not None:  # before the pipeline: subscribed by its first result
        from ..recording.process import RecorderError, RecorderProcess
        views = (None if args.record_views is None
                 else [v.strip() for v in args.record_views.split(",") if v.strip()])
        unknown = None if views is None else [v for v in views if v not in ctx.views]
        if views is not None and (unknown or not views):
            known = ", ".join(n for n, v in ctx.views.items() if not v.hidden) or "none"
            say(f"{PROG}: error: --record-views {args.record_views!r}: "
                + (f"no view named {', '.join(unknown)}" if unknown else "names no view")
                + f" in {args.context} (its views: {known})")
            return 2
        try:
            recorder = RecorderProcess(args.record, views=views, keys=args.keys)
        except RecorderError as e:
            say(f"{PROG}: error: --record {args.record}: {e}")
            return 2
    try:
        try:
            pipeline = Pipeline(args.context, source=args.source, pool=args.pool,
                                output=output, parameters=parameters, rate=args.rate,
                                seed=args.seed, bridge_socket=args.bridge_socket,
                                queue_size=args.queue_size, drop_policy=args.drop_policy,
                                max_events=args.max_events, control=args.control,
                                reduce=args.reduce, keys=args.keys,
                                event_timeout=args.event_timeout or None,
                                shm_size=args.shm_size, **source_options(args))
        except BaseException:
            if recorder is not None:
                recorder.stop()
            raise
    except ContextError as e:
        log.error("context refused, nothing runs\n%s",
                  e.format_for_context(_read(args.context)))
        return 1
    except SourceError as e:
        log.error("%s", e)
        return 1
    except RuntimeError:  # a stage could not start (e.g. its address taken)
        if stop.is_set():
            return exit_code()
        log.error("the pipeline did not start; the messages above say why")
        return 1
    # As in the stage processes (metropc.stage.runner): what is imported and
    # built by now stays, so full collections need not walk it (a ~40 ms
    # pause of the frontend thread otherwise).
    gc.freeze()
    if pipeline.frontend._tmpdir:
        leftovers.append(pipeline.frontend._tmpdir)
    status = live = dashboard = keys = metrics = None
    try:
        if stop.is_set():  # Ctrl-C while the stages started
            return exit_code()
        print(f"{PROG}: output on {pipeline.output_addr}  "
              f"(watch it with: metropc-client {pipeline.output_addr})", flush=True)
        if pipeline.control_addr is not None:
            print(f"{PROG}: control on {pipeline.control_addr}  (metropc-client "
                  f"{pipeline.output_addr} --reset | --pause | --resume)", flush=True)
        if recorder is not None:
            if recorder.connect(pipeline.output_addr):
                ctx = pipeline.ctx  # published before the recorder subscribed
                recorder.send_meta("context", {
                    "version": ctx.version, "path": ctx.path, "source": ctx.source,
                    "parameters": dict(ctx.parameters)})
                print(f"{PROG}: recording to {args.record}", flush=True)
            else:
                log.error("the recorder did not subscribe to %s; nothing is recorded",
                          pipeline.output_addr)
        if dashboard_bind is not None:
            try:
                from ..dashboard import serve
                dashboard = serve(pipeline.output_addr, *dashboard_bind, control=pipeline,
                                  allow_remote=args.allow_remote, keys=args.keys,
                                  title=os.path.basename(args.context))
            except (ImportError, OSError) as e:
                log.error("cannot serve the dashboard on %s: %s", args.dashboard, e)
                return 2
            print(f"{PROG}: dashboard on {dashboard.url}", flush=True)
        if getattr(args, "metrics_bind", None) is not None:
            from ..metrics import MetricsServer
            try:
                metrics = MetricsServer(pipeline.output_addr, *args.metrics_bind,
                                        pipeline=pipeline, keys=args.keys,
                                        allow_remote=args.allow_remote).start()
            except (ImportError, OSError, ValueError) as e:
                log.error("cannot serve metrics on %s: %s", args.metrics, e)
                return 2
            print(f"{PROG}: metrics on {metrics.url} (and /status)", flush=True)
        state = ContextState(args.context)
        if pipeline.ctx is not None:
            state.loaded(pipeline.version, len(pipeline.ctx.views))
        on_error = pipeline.on_error

        def on_stage_error(msg):  # called in the frontend's thread
            on_error(msg)
            state.stage_message(msg)

        pipeline.on_error = on_stage_error
        watcher = None if args.no_watch else ContextWatcher(pipeline, state)
        if mode != "off":
            status = StatusDisplay(pipeline.output_addr, pipeline.ctx.event_alias,
                                   keys=args.keys, context=state, live=(mode == "live"))
        if mode == "live":
            from rich.live import Live

            live = Live(get_renderable=status.render, console=console,
                        refresh_per_second=4, redirect_stdout=True, redirect_stderr=True)
            live.start()
        t_end = None if args.duration is None else time.monotonic() + args.duration
        keys = Keys.open(mode == "live")
        if keys is not None:
            print(f"{PROG}: keys: r reset, p pause/resume, s step, q quit", flush=True)
        while not stop.is_set() and not pipeline.finished.is_set():
            if keys is None:
                stop.wait(0.25)
            elif keys.act(pipeline, 0.25) == "quit":
                break
            if watcher is not None:
                watcher.poll()
            if recorder is not None and not recorder.alive:
                log.error("the recorder died (exit code %s): nothing more is recorded to "
                          "%s (it keeps what was flushed); the pipeline goes on",
                          recorder.proc.returncode, args.record)
                recorder.stop(1.0)  # (reaped)
                recorder = None
            if status is not None:
                status.update()
            if t_end is not None and time.monotonic() >= t_end:
                break
        if status is not None:
            status.update(final=not stop.is_set())
        return exit_code()
    finally:
        if keys is not None:
            keys.close()
        if live is not None:
            live.refresh()
            live.stop()
        if dashboard is not None:
            dashboard.stop()
        if metrics is not None:
            metrics.stop()
        pipeline.close(timeout=3.0)
        if recorder is not None:
            recorder.stop()  # after the pipeline: it writes every last result
        if status is not None:
            status.close()


if __name__ == "__main__":
    sys.exit(main())

"""Reading and checking the ``metropc-run`` command line.

The parser (:func:`build_parser`, with the value parsers its options use)
and every check that can be made before any process starts
(:func:`check_arguments`, :func:`check_parameters`): a refused value is a
:class:`UsageError`, reported as one line with exit code 2.  The other
command-line tools (``metropc-client``, ``-worker``, ``-dashboard``,
``-replay``, ``-reprocess``) share the parser class and the number and
address parsers from here.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import errno
import os
import re
import socket

from ..dashboard.address import is_loopback
from ..endpoints import BIND_HOST
from ..error import ContextError

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


#: POOL workers per CPU metropc-run starts at most (each is a process).
POOL_PER_CPU = 4


def pool_size(text):
    """--pool: at least 1, at most POOL_PER_CPU per CPU of this machine
    (a typo of a few digits more would start that many processes)."""
    n = positive_int(text)
    cpus = os.cpu_count() or 1
    if n > POOL_PER_CPU * cpus:
        raise argparse.ArgumentTypeError(
            f"must be at most {POOL_PER_CPU * cpus} ({POOL_PER_CPU} per CPU; this machine "
            f"has {cpus}), got {text!r}")
    return n


def shm_size(text):
    """--shm-size: a size (``512M``, ``off``) no larger than this machine's memory."""
    from ..stage.segments import parse_size, physical_memory
    try:
        size = parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    ram = physical_memory()
    if ram and size > ram:
        raise argparse.ArgumentTypeError(
            f"{text!r} is more than this machine's memory ({ram / 2**30:.1f} GiB)")
    return size


shm_size.__name__ = "size"  # argparse names the type in its messages


def build_parser():
    from ..frontend import DROP_BLOCK, DROP_NEWEST, DROP_OLDEST

    p = _Parser(
        prog=PROG, description="Run a metropc context on a data source.")
    p.add_argument("context", help="the context file (Python)")
    p.add_argument("--source", default="sim",
                   help="data source: 'sim' (default), a Karabo bridge endpoint "
                        "(tcp://HOST:PORT), a run directory or HDF5 file, or "
                        "module:callable")
    p.add_argument("--pool", type=pool_size, default=2, metavar="N",
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
    p.add_argument("--shm-size", type=shm_size, default=None, metavar="SIZE",
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
        if option != "--output" and args.keys is None:
            # Stages exchange context code and pickles: on TCP, every user of
            # this host could send them some (ipc sockets are in a private
            # directory instead).
            raise UsageError(
                f"{option} {addr}: the stage sockets carry Python code, and on TCP "
                "every user of this host can reach them; secure them with --keys DIR "
                "(make keys with metropc-keys DIR), or leave the option out")
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


_TCP = re.compile(rf"tcp://(?P<host>{BIND_HOST.pattern}):(?P<port>\*|[0-9]+)", re.ASCII)


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
    m = _TCP.fullmatch(addr)
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

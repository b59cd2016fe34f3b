"""Reading and checking the ``metropc-run`` command line.

The parser (:func:`build_parser`, with the value parsers its options use)
and every check that can be made before any process starts
(:func:`check_arguments`, :func:`check_parameters`): a refused value is a
:class:`~metropc.cli.usage.UsageError`, reported as one line with exit
code 2.  What the other tools share is in :mod:`metropc.cli.usage` (the
parser class, number types) and :mod:`metropc.cli.addresses` (bind checks).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib.util
import os

from ..dashboard.address import is_loopback
from ..error import ContextError, SourceError
from .addresses import check_addresses, check_port_free, check_same_address, parse_address
from .usage import (Parser, UsageError, non_negative_float, non_negative_int, one_line,
                    positive_float, positive_int, shown)

PROG = "metropc-run"


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

    p = Parser(
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


def check_context_path(path):
    if "\n" in path or "\r" in path:
        raise UsageError(f"the context path {path!r} contains a line break; "
                         "give the path of a context file")
    if not os.path.exists(path):
        raise UsageError(f"no such context file: {shown(path)}")
    if not os.path.isfile(path):
        raise UsageError(f"the context {shown(path)} is not a file")


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
            raise UsageError(f"--param {shown(f'{name}={text}')}: {where} declares {name} as a "
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
    check_source(args.source)
    bound = []  # (option, address, host, port): every socket metropc-run binds
    for option in ("--control", "--reduce"):
        addr = getattr(args, option[2:])
        if addr is not None:
            bound.append((option, addr, *parse_address(option, addr)))
    bound.append(("--output", args.output, *parse_address("--output", args.output)))
    check_addresses(args)
    dashboard_bind = check_dashboard(args)
    args.metrics_bind = check_metrics(args)
    for option, bind in (("--dashboard", dashboard_bind), ("--metrics", args.metrics_bind)):
        if bind is not None:
            host, port = bind
            bound.append((option, f"{host}:{port}", host, port or None))
    check_allow_remote(args, dashboard_bind, args.metrics_bind)
    check_same_address(bound)
    for option, addr, host, port in bound:
        check_port_free(option, addr, host, port)
    if args.keys is not None:
        from ..security import Keys
        try:
            Keys.load(args.keys)
        except OSError as e:
            raise UsageError(f"--keys {shown(args.keys)}: {e}") from None
    check_record(args)
    if args.sim_run_length is not None and not str(args.source).startswith("sim"):
        raise UsageError("--sim-run-length is for the simulator (--source sim); "
                         f"{args.source!r} says where its runs are by itself")
    return dashboard_bind


def check_dashboard(args):
    """--dashboard: ``(host, port)`` on loopback (or allowed), or None."""
    if args.dashboard is None:
        return None
    from ..dashboard.address import check_bind, parse_bind
    try:
        host, port = parse_bind(args.dashboard)
        check_bind(host, args.allow_remote)
    except ValueError as e:
        raise UsageError(f"--dashboard {shown(args.dashboard)}: {e}") from None
    return host, port


def check_metrics(args):
    """--metrics: prometheus_client present, ``(host, port)`` on loopback (or
    allowed), or None."""
    if args.metrics is None:
        return None
    from ..dashboard.address import is_loopback, parse_bind
    try:
        importlib.import_module("prometheus_client")  # (the server needs it)
    except ImportError:
        raise UsageError("--metrics needs prometheus_client: pip install "
                         "'metropc[metrics]'") from None
    try:
        host, port = parse_bind(args.metrics)
    except ValueError as e:
        raise UsageError(f"--metrics {shown(args.metrics)}: {e}") from None
    if not is_loopback(host) and not args.allow_remote:
        raise UsageError(f"--metrics {shown(args.metrics)}: {host!r} is not a loopback "
                         "interface; pass --allow-remote to serve metrics there on purpose")
    return host, port


def check_allow_remote(args, dashboard_bind, metrics_bind):
    """--allow-remote needs --keys (docs/operations.md, Security), except for a
    --dashboard or --metrics on another interface alone: keys secure the
    ZeroMQ sockets, not those HTTP servers (the dashboard asks for a token
    there, and metrics are read-only; docs/dashboard.md, docs/operations.md).
    (A non-loopback ZeroMQ address without keys is refused by
    :func:`check_addresses`, naming it.)"""
    if not args.allow_remote or args.keys is not None:
        return
    if any(bind is not None and not is_loopback(bind[0])
           for bind in (dashboard_bind, metrics_bind)):
        return
    raise UsageError("--allow-remote without --keys: a pipeline open to other hosts "
                     "must be secured with --keys DIR (make keys with metropc-keys DIR); "
                     "leave --allow-remote out to keep it on this host")


def check_source(spec):
    """--source: refuse now what :func:`metropc.sources.open_source` would
    refuse once the context is loaded and the stages run (exit 1 then): an
    empty spec, one that is no source at all, a missing file or run
    directory, a missing ``file.py`` or module of ``module:callable``.  What
    needs the source opened or a module imported (a missing attribute, an
    unreachable bridge) is left to it."""
    if not str(spec).strip():
        raise UsageError(f"--source {shown(spec)} is empty: use 'sim', a Karabo bridge "
                         "endpoint (tcp://HOST:PORT), a run directory or HDF5 file, or "
                         "module:callable")
    from .. import sources

    spec = spec.strip()
    try:
        kind, target = sources.source_kind(spec)  # what open_source would open
    except SourceError as e:
        raise UsageError(f"--source: {one_line(e)}") from None
    if kind == "files":
        problem = _files_problem(target)
    elif kind == "python":
        problem = _callable_problem(target)
    else:
        problem = None
    if problem is not None:
        raise UsageError(f"--source {shown(spec)}: {problem}")


def _files_problem(target):
    """Why the files source cannot open `target` (``PATH``, ``A,B``), or None."""
    target = target.removeprefix("file://")
    if not target or os.path.exists(os.path.expanduser(target)):
        return None  # (an empty one: the source says what to give)
    paths = [t.strip() for t in target.split(",") if t.strip()]
    for path in paths:
        if not os.path.exists(os.path.expanduser(path)):
            return ("no such file or directory" if len(paths) == 1
                    else f"no such file or directory: {shown(path)}")
    return None


def _callable_problem(target):
    """Why ``module:callable`` or ``file.py:callable`` cannot be loaded, as
    far as can be told without importing it, or None."""
    where, _, _ = target.rpartition(":")
    if where.endswith(".py"):
        return None if os.path.isfile(where) else f"no such file: {shown(where)}"
    top = where.split(".")[0]
    if not top.isidentifier():
        return None  # (the source says what is wrong)
    if os.path.isfile(f"{top}.py") or os.path.isdir(top):  # (it imports from here too)
        return None
    try:
        found = importlib.util.find_spec(top) is not None  # (imports nothing)
    except (ImportError, ValueError):
        found = False
    return None if found else f"no module named {top!r} (here or installed)"


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
        raise UsageError(f"--record {shown(args.record)}: {e}") from None

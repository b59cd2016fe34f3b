"""``metropc-client``: watch a running pipeline's output from a terminal.

    metropc-client tcp://host:5555                      # index + latest value of every view
    metropc-client tcp://host:5555 --view roi --view img # only these views' values
    metropc-client tcp://host:5555 --view roi --once     # one snapshot, then exit

It shows the index (views with output type, stage, counts, rates and
errors; other paths with counts and rates) and the latest value of each
view (all published views, or those chosen with ``--view``): scalars as
values, arrays summarised by shape, dtype, min, max and mean, strings
shortened.  Results the client missed (the pipeline numbers them) are
counted in the header and per view.  When no index arrives for
:data:`STALE_AFTER` seconds the header says the pipeline is disconnected;
the display recovers by itself when it comes back.  Rates are computed
here from the counts of successive indexes, so a count and its rate always
agree (the pipeline sends no rate for some ``internal#`` counters).  On a
terminal the display refreshes in place; otherwise (pipes, logs) each
refresh is printed as a separate block.

Exit codes: 0 on success or Ctrl-C, 1 when nothing arrived in time,
2 for a bad address or arguments.
"""

from __future__ import annotations

import argparse
import collections
import difflib
import logging
import math
import shutil
import sys
import time
import warnings
from collections.abc import Mapping

import numpy as np

from ..client import Client
from ..endpoints import connect_problem
from ..enums import ViewOutput
from ..error import ProtocolError
from ..index import (GAUGES, IndexEntry, IndexStageEntry, IndexTimingEntry, IndexViewEntry,
                     slowest_views, view_path)
from ..messages import RUN_MAX
from ..timing import format_seconds
from .logsafe import log_to_stderr
from .usage import Parser, UsageError, non_negative_int, shown

log = logging.getLogger(__name__)

_CLEAR = "\x1b[H\x1b[2J"
_MAX_TEXT = 60
_VIEW_WIDTH = 28
_PATH_WIDTH = 40
#: Seconds without an index after which the pipeline counts as gone (it
#: publishes one every second).
STALE_AFTER = 3.0
#: Seconds of index history rates are computed over.
RATE_WINDOW = 3.0


#: Longest --timeout / --interval taken (about 11.6 days): more is a typo, and
#: ZeroMQ's poll counts milliseconds in a C int.
MAX_SECONDS = 1e6


def _seconds(text: str) -> float:
    """A number of seconds in (0, MAX_SECONDS] (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"wants a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or not 0 < value <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(
            f"must be more than 0 and at most {MAX_SECONDS:.0f} seconds, got {text!r}")
    return value


def _run_number(text: str) -> int:
    """A run number for ``--start-run`` (argparse type): 0 to RUN_MAX, the
    pipeline's own limit, so that a number beyond it is refused here at once
    rather than by the pipeline once its index came."""
    run = non_negative_int(text)
    if run > RUN_MAX:
        raise argparse.ArgumentTypeError(f"must be at most 2**62 ({RUN_MAX}), got {text!r}")
    return run


_run_number.__name__ = "int"  # argparse names the type in its messages


def _view_name(text: str) -> str:
    """A view name or path for ``--view`` (argparse type): not blank."""
    if not text.strip() or text.strip() in ("view#",):
        raise argparse.ArgumentTypeError(f"wants a view name, e.g. roi or view#roi, "
                                         f"got {text!r}")
    return text.strip()


def _unknown_view(path: str, index) -> str:
    """Why `path` has no value yet when the index does not list it."""
    names = [p.removeprefix("view#") for p in published_views(index)]
    close = difflib.get_close_matches(path.removeprefix("view#"), names, n=1)
    return ("no such view in the index"
            + (f"; did you mean 'view#{close[0]}'?" if close else ""))


def _parse_set(text: str):
    """``NAME=VALUE`` (argparse type); the pipeline checks VALUE against the
    parameter's type."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"wants NAME=VALUE, got {text!r}")
    return name.strip(), value


def check_connect_address(what: str, addr: str) -> None:
    """Refuse (UsageError ``WHAT 'ADDR': reason``) what a client cannot
    connect to (:func:`metropc.endpoints.connect_problem`)."""
    problem = connect_problem(addr)
    if problem is not None:
        raise UsageError(f"{what} {addr!r}: {problem}")


def check_keys(keys: str | None) -> None:
    """Load the key directory now, so that a bad one is one line (UsageError)."""
    if keys is None:
        return
    from ..security import Keys
    try:
        Keys.load(keys)
    except (OSError, ValueError) as e:
        raise UsageError(f"--keys {shown(keys)}: {e}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="metropc-client",
        description="Show the live index and view results of a metropc pipeline.")
    parser.add_argument("address", metavar="ADDR",
                        help="output address of the pipeline, e.g. tcp://host:5555")
    parser.add_argument("--view", dest="views", metavar="NAME", action="append",
                        type=_view_name, default=[], help="show the latest value of this view only "
                        "(name or view#name; repeatable); default: every view")
    parser.add_argument("--interval", type=_seconds, default=1.0, metavar="S",
                        help="refresh interval in seconds, more than 0 and at most "
                        "1e6 (default: 1)")
    parser.add_argument("--once", action="store_true",
                        help="print one snapshot after the first index and the "
                        "first value of each chosen view, then exit")
    parser.add_argument("--timeout", type=_seconds, default=10.0, metavar="S",
                        help="how long to wait for the first index (and, with "
                        "--once, for the first values), more than 0 and at most "
                        "1e6 seconds (default: 10)")
    parser.add_argument("--no-pickle", dest="allow_pickle", action="store_false",
                        help="refuse pickled values (pickle runs code chosen by "
                        "the sender)")
    parser.add_argument("--keys", metavar="DIR", default=None,
                        help="key directory of a pipeline secured with CURVE "
                             "(made by metropc-keys)")
    control = parser.add_argument_group(
        "control", "act on the pipeline instead of watching it (through its control "
        "endpoint, announced in its status; --keys for a secured pipeline)")
    acts = control.add_mutually_exclusive_group()
    acts.add_argument("--reset", nargs="*", metavar="VIEW",
                      help="clear the accumulated state of these views (none: all)")
    acts.add_argument("--pause", action="store_true", help="stop computing new events")
    acts.add_argument("--resume", action="store_true", help="go on after --pause")
    acts.add_argument("--start-run", nargs="?", type=_run_number, const=-1, metavar="N",
                      help="start a run (number N, 0 to 2**62; default the next)")
    acts.add_argument("--end-run", action="store_true", help="end the current run")
    acts.add_argument("--set", dest="params", action="append", default=None,
                      type=_parse_set, metavar="NAME=VALUE",
                      help="set a parameter (repeatable)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def _control(client: Client, args, timeout: float) -> int:
    """Carry out the control option given; prints one line, returns the exit code."""
    from ..controller import ControlError, Controller

    try:
        with Controller.of(client, timeout=timeout, keys=args.keys) as control:
            if args.reset is not None:
                control.reset(*args.reset)
                done = "reset " + (", ".join(args.reset) or "every view")
            elif args.pause:
                control.pause()
                done = "paused"
            elif args.resume:
                control.resume()
                done = "resumed"
            elif args.start_run is not None:
                control.start_run(None if args.start_run < 0 else args.start_run)
                done = "run started"
            elif args.end_run:
                control.end_run()
                done = "run ended"
            else:
                values = dict(args.params)
                control.set_parameters(**values)
                done = "set " + ", ".join(f"{k}={v!r}" for k, v in values.items())
    except ControlError as e:
        print(f"metropc-client: refused: {e}", file=sys.stderr)
        return 1
    print(f"{args.address}: {done}")
    return 0


# -- formatting (pure, so that tests can check it without sockets) ---------

def _short(text: str) -> str:
    return text if len(text) <= _MAX_TEXT else text[:_MAX_TEXT - 3] + "..."


def middle(text: str, width: int) -> str:
    """`text` in at most `width` characters, cut in the middle with "…".

    Paths differ at both ends (``karabo#DEVICE/…:output[key]``), so
    both are kept; the table columns stay aligned.
    """
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


def _num(value) -> str:
    return f"{value:.6g}" if isinstance(value, (float, np.floating)) else str(value)


def _array_stats(arr: np.ndarray) -> str:
    if arr.size == 0 or arr.dtype.kind not in "biuf":
        return ""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        if arr.dtype.kind == "b":
            return f"  true {int(np.count_nonzero(arr))}"
        return (f"  min {_num(np.nanmin(arr))}  max {_num(np.nanmax(arr))}"
                f"  mean {_num(np.nanmean(arr))}")


def summarize(value) -> str:
    """One line describing a view result."""
    try:
        import xarray as xr
    except ImportError:  # pragma: no cover - xarray is a dependency
        xr = None
    if xr is not None and isinstance(value, xr.DataArray):
        dims = ", ".join(f"{d}: {n}" for d, n in value.sizes.items())
        name = f" {value.name!r}" if value.name is not None else ""
        data = value.data if isinstance(value.data, np.ndarray) else value.values
        return f"DataArray{name} {value.dtype} ({dims}){_array_stats(data)}"
    if isinstance(value, np.ndarray):
        return f"ndarray {value.dtype} {value.shape}{_array_stats(value)}"
    if isinstance(value, np.generic):
        return f"{_num(value)} ({value.dtype})"
    if value is None or isinstance(value, (bool, int, float)):
        return _num(value)
    if isinstance(value, str):
        return _short(repr(value))
    if isinstance(value, bytes):
        return f"bytes[{len(value)}] {_short(repr(value[:_MAX_TEXT]))}"
    if isinstance(value, (tuple, list)):
        items = "; ".join(summarize(v) for v in value[:4])
        more = "; ..." if len(value) > 4 else ""
        return f"{type(value).__name__}[{len(value)}] ({items}{more})"
    if isinstance(value, Mapping):
        return _short(f"{type(value).__name__} keys {list(value)!r}")
    return _short(f"{type(value).__name__} {value!r}")


class IndexRates:
    """Rates from the counts of successive indexes, so that they agree.

    The pipeline's own rates are over its last index interval, and some
    ``internal#`` counters come with none at all (always 0.0) while their
    count grows.  Here the rate of a path is its count's increase over
    the indexes of the last :data:`RATE_WINDOW` seconds (arrival times);
    until there are two such indexes, or after a count went down (a new
    context or a restarted stage), the pipeline's rate is shown.
    """

    def __init__(self, window: float = RATE_WINDOW):
        self.window = window
        self._history: collections.deque = collections.deque()  # (time, {path: counts})

    def add(self, when: float, index: Mapping[str, IndexEntry]) -> None:
        """Record the index that arrived at monotonic time `when`."""
        self._history.append((when, {p: e.counts for p, e in index.items()}))
        while len(self._history) > 2 and when - self._history[1][0] >= self.window:
            self._history.popleft()

    def rate(self, path: str, entry: IndexEntry) -> float:
        """Events per second of `path`, whose latest entry is `entry`; a
        gauge's own rate (its count is a level: no rate follows from it)."""
        if len(self._history) >= 2 and path not in GAUGES:
            now, _ = self._history[-1]
            for then, counts in self._history:
                old = counts.get(path)
                if old is not None and old <= entry.counts and now - then >= 0.5:
                    return (entry.counts - old) / (now - then)
        return entry.rate


def _view_rows(index: Mapping[str, IndexEntry], rate) -> list[str]:
    rows = [f"{'VIEW':<{_VIEW_WIDTH}} {'OUTPUT':<20} {'STAGE':<7} {'COUNTS':>9} "
            f"{'RATE':>9} {'ERRORS':>6}"]
    for path in sorted(p for p, e in index.items() if isinstance(e, IndexViewEntry)):
        e = index[path]
        hidden = " (hidden)" if e.hidden else ""
        name = middle(path, _VIEW_WIDTH - len(hidden)) + hidden
        rows.append(f"{name:<{_VIEW_WIDTH}} {e.output.name:<20} {e.stage.name:<7} "
                    f"{e.counts:>9} {rate(path, e):>7.1f}/s {e.errors:>6}"
                    + (f"  {_short(e.label)}" if e.label else ""))
    return rows


def _timing_rows(index: Mapping[str, IndexEntry]) -> list[str]:
    """The slowest views (p50/p99, where they run) and each stage's load."""
    rows = []
    slow = slowest_views(index, 3)
    if slow:
        rows.append("slowest views (p50 / p99): " + ", ".join(
            f"{name} {format_seconds(e.p50)} / {format_seconds(e.p99)}" for name, e in slow))
    stages = sorted((p[len("stage#"):], e) for p, e in index.items()
                    if isinstance(e, IndexStageEntry))
    if stages:
        rows.append("stages busy: " + ", ".join(f"{name} {e.busy:.0%}" for name, e in stages))
    return rows


def _path_rows(index: Mapping[str, IndexEntry], rate) -> list[str]:
    # Timing and stage entries are summed up by _timing_rows instead.
    paths = sorted(p for p, e in index.items() if not isinstance(
        e, (IndexViewEntry, IndexTimingEntry, IndexStageEntry)))
    if not paths:
        return []
    rows = [f"{'PATH':<{_PATH_WIDTH}} {'COUNTS':>9} {'RATE':>9}"]
    for path in paths:
        e = index[path]
        per_s = rate(path, e)
        shown = "-" if path in GAUGES and not per_s else f"{per_s:.1f}/s"
        rows.append(f"{middle(path, _PATH_WIDTH):<{_PATH_WIDTH}} {e.counts:>9} {shown:>9}")
    return rows


def render(address: str, index: Mapping[str, IndexEntry] | None,
           values: Mapping[str, Mapping], wanted=(), index_age: float | None = None,
           error: str | None = None, *, rates: IndexRates | None = None,
           received: int | None = None, missed: Mapping[str, int] | None = None,
           status: Mapping | None = None) -> str:
    """The text of one snapshot.

    `index_age` over :data:`STALE_AFTER` seconds shows as disconnected;
    `received` and `missed` (per view path) are the client's counts.
    """
    if index_age is None:
        state = ""
    elif index_age > STALE_AFTER:
        state = f"  disconnected / no index for {index_age:.0f} s"
    else:
        state = f"  (index {index_age:.1f} s old)"
    lines = [f"metropc-client {address}{state}"]
    if status:
        run = status.get("run")
        lines.append(f"state: {status.get('state', '?')}"
                     + (f", run {run}" if run is not None else "")
                     + (f"  context version {status['version']}"
                        if status.get("version") is not None else ""))
    missed = missed or {}
    if received is not None:
        lines.append(f"results: {received} received, {sum(missed.values())} missed")
    lines.append("")
    if index is None:
        lines.append("no index yet")
    else:
        rate = rates.rate if rates is not None else (lambda path, e: e.rate)
        lines += _view_rows(index, rate)
        timing_rows = _timing_rows(index)
        if timing_rows:
            lines += [""] + timing_rows
        path_rows = _path_rows(index, rate)
        if path_rows:
            lines += [""] + path_rows
    if wanted:
        lines += ["", "LATEST VALUES"]
        for path in wanted:
            payload = values.get(path)
            lost = f"  (missed {missed[path]})" if missed.get(path) else ""
            name = middle(path, _PATH_WIDTH)
            if payload is None:
                why = ("nothing yet" if index is None or path in index
                       else _unknown_view(path, index))
                lines.append(f"{name}  ({why}){lost}")
                continue
            event = payload.get("event_id")
            event = "" if event is None else f"  event {event}"
            lines.append(f"{name}{event}  {summarize(payload.get('data'))}{lost}")
    if error:
        lines += ["", f"last error: {error}"]
    return "\n".join(lines)


def published_views(index: Mapping[str, IndexEntry] | None) -> list[str]:
    """Paths of the views in `index` whose results are sent (not COMPUTE)."""
    return sorted(p for p, e in (index or {}).items()
                  if isinstance(e, IndexViewEntry) and e.output != ViewOutput.COMPUTE)


def _follow_index(client: Client, values: dict) -> list[str]:
    """Subscribe to every published view of the latest index, and only those."""
    views = published_views(client.index)
    for path in client.views - set(views):
        client.unsubscribe(path)
        values.pop(path, None)
    for path in views:
        client.subscribe(path)
    return views


# -- running ---------------------------------------------------------------

def _wait_index(client: Client, timeout: float) -> None:
    try:
        client.wait_index(timeout)
    except TimeoutError:
        raise TimeoutError(f"no index from {client.address} within {timeout:g} s; "
                           "is the pipeline running and is this its output "
                           "address?") from None


def _snapshot_once(client: Client, wanted: list[str], timeout: float):
    deadline = time.monotonic() + timeout
    _wait_index(client, timeout)
    values: dict[str, Mapping] = {}
    while len(values) < len(wanted):
        try:
            path, data = client.recv(max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            missing = [p for p in wanted if p not in values]
            unknown = [p for p in missing if p not in (client.index or {})]
            hint = "".join(f" ({p}: {_unknown_view(p, client.index)})" for p in unknown)
            raise TimeoutError(f"no value for {', '.join(missing)} within "
                               f"{timeout:g} s{hint}") from None
        values.setdefault(path, data)
    return values


def fit_screen(text: str, columns: int, rows: int) -> str:
    """`text` cut to a terminal of `columns` x `rows`.

    A redrawn screen must fit: a line wider than the terminal wraps, and
    more lines than it has scroll the first ones, the address and the
    connection state, out of sight at every refresh.
    """
    lines = [line[:columns - 1] + ">" if len(line) > columns else line  # (ASCII: any locale)
             for line in text.splitlines()]
    if len(lines) > rows - 1:
        more = len(lines) - (rows - 2)
        lines = lines[:rows - 2] + [f"... {more} more lines (a larger window, or --view NAME)"
                                    [:columns]]
    return "\n".join(lines)


def _show(text: str, tty: bool) -> None:
    if tty:
        size = shutil.get_terminal_size()
        sys.stdout.write(_CLEAR + fit_screen(text, max(20, size.columns),
                                             max(4, size.lines)) + "\n")
    else:
        sys.stdout.write(f"--- {time.strftime('%H:%M:%S')}\n{text}\n\n")
    sys.stdout.flush()


def _snapshot_all(client: Client, timeout: float):
    """For ``--once`` without ``--view``: every published view, briefly.

    Views that publish per event have a value within an index interval;
    STEP and ACTION views may never, so wait :data:`_ONCE_WINDOW` seconds
    (at most `timeout`) and show "(nothing yet)" for the rest.
    """
    deadline = time.monotonic() + timeout
    _wait_index(client, timeout)
    wanted = _follow_index(client, {})
    values: dict[str, Mapping] = {}
    until = min(deadline, time.monotonic() + _ONCE_WINDOW)
    while len(values) < len(wanted):
        try:
            path, data = client.recv(max(0.0, until - time.monotonic()))
        except TimeoutError:
            break
        values.setdefault(path, data)
    return wanted, values


_ONCE_WINDOW = 1.5


def _run_live(client: Client, wanted: list[str], interval: float, timeout: float):
    """Redraw every `interval` s until Ctrl-C; with no `wanted`, follow the index."""
    tty = sys.stdout.isatty()
    follow = not wanted
    _wait_index(client, timeout)
    values: dict[str, Mapping] = {}
    rates = IndexRates()
    seen_index = None
    error = None
    next_draw = 0.0
    while True:
        if client.index_time != seen_index:  # a new index came with the last recv
            seen_index = client.index_time
            rates.add(seen_index, client.index)
            if follow:
                wanted = _follow_index(client, values)
        now = time.monotonic()
        if now >= next_draw:
            _show(render(client.address, client.index, values, wanted,
                         now - client.index_time, error, rates=rates,
                         received=client.received, missed=client.missed_by_view,
                         status=client.status), tty)
            next_draw = now + interval
        try:
            path, data = client.recv(max(0.0, next_draw - time.monotonic()))
            values[path] = data
        except TimeoutError:
            pass
        except ProtocolError as e:
            error = str(e)
            log.warning("bad message: %s", e)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log_to_stderr(logging.DEBUG if args.verbose else logging.WARNING, datefmt=None)
    try:
        check_connect_address("cannot connect to", args.address)
        check_keys(args.keys)
    except UsageError as e:
        print(f"metropc-client: error: {e}", file=sys.stderr)
        return 2
    try:
        wanted = [view_path(v) for v in args.views]
        client = Client(args.address, views=wanted, allow_pickle=args.allow_pickle,
                        keys=args.keys)
    except Exception as e:
        print(f"metropc-client: cannot connect to {args.address!r}: {e}", file=sys.stderr)
        return 2
    try:
        if (args.reset is not None or args.pause or args.resume or args.end_run
                or args.start_run is not None or args.params):
            return _control(client, args, args.timeout)
        if args.once:
            if wanted:
                values = _snapshot_once(client, wanted, args.timeout)
            else:
                wanted, values = _snapshot_all(client, args.timeout)
            print(render(args.address, client.index, values, wanted, status=client.status,
                         missed=client.missed_by_view))
            return 0
        _run_live(client, wanted, args.interval, args.timeout)
    except TimeoutError as e:
        print(f"metropc-client: {e}", file=sys.stderr)
        return 1
    except ProtocolError as e:
        print(f"metropc-client: bad message from {args.address}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

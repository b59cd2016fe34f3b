"""``metropc-client``: watch a running pipeline's output from a terminal.

    metropc-client tcp://host:5555                      # live index
    metropc-client tcp://host:5555 --view roi --view img # plus latest values
    metropc-client tcp://host:5555 --view roi --once     # one snapshot, then exit

It shows the index (views with output type, stage, counts, rates and
errors; other paths with counts and rates) and the latest value of each
chosen view: scalars as values, arrays summarised by shape, dtype, min,
max and mean.  On a terminal the display refreshes in place; otherwise
(pipes, logs) each refresh is printed as a separate block.

Exit codes: 0 on success or Ctrl-C, 1 when nothing arrived in time,
2 for a bad address or arguments.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from collections.abc import Mapping

import numpy as np

from ..client import Client, IndexEntry, IndexViewEntry, view_path
from ..error import ProtocolError

log = logging.getLogger(__name__)

_CLEAR = "\x1b[H\x1b[2J"
_MAX_TEXT = 60


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metropc-client",
        description="Show the live index and view results of a metropc pipeline.")
    parser.add_argument("address", metavar="ADDR",
                        help="output address of the pipeline, e.g. tcp://host:5555")
    parser.add_argument("--view", dest="views", metavar="NAME", action="append",
                        default=[], help="also show the latest value of this view "
                        "(name or view#name); repeatable")
    parser.add_argument("--interval", type=_positive, default=1.0, metavar="S",
                        help="refresh interval in seconds (default: 1)")
    parser.add_argument("--once", action="store_true",
                        help="print one snapshot after the first index and the "
                        "first value of each chosen view, then exit")
    parser.add_argument("--timeout", type=_positive, default=10.0, metavar="S",
                        help="how long to wait for the first index (and, with "
                        "--once, for the first values) (default: 10)")
    parser.add_argument("--no-pickle", dest="allow_pickle", action="store_false",
                        help="refuse pickled values (pickle runs code chosen by "
                        "the sender)")
    parser.add_argument("--keys", metavar="DIR", default=None,
                        help="key directory of a pipeline secured with CURVE "
                             "(made by metropc-keys)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


# -- formatting (pure, so that tests can check it without sockets) ---------

def _short(text: str) -> str:
    return text if len(text) <= _MAX_TEXT else text[:_MAX_TEXT - 3] + "..."


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


def _view_rows(index: Mapping[str, IndexEntry]) -> list[str]:
    rows = [f"{'VIEW':<28} {'OUTPUT':<20} {'STAGE':<7} {'COUNTS':>9} "
            f"{'RATE':>9} {'ERRORS':>6}"]
    for path in sorted(p for p, e in index.items() if isinstance(e, IndexViewEntry)):
        e = index[path]
        name = path + (" (hidden)" if e.hidden else "")
        rows.append(f"{name:<28} {e.output.name:<20} {e.stage.name:<7} "
                    f"{e.counts:>9} {e.rate:>7.1f}/s {e.errors:>6}"
                    + (f"  {e.label}" if e.label else ""))
    return rows


def _path_rows(index: Mapping[str, IndexEntry]) -> list[str]:
    paths = sorted(p for p, e in index.items() if not isinstance(e, IndexViewEntry))
    if not paths:
        return []
    rows = [f"{'PATH':<40} {'COUNTS':>9} {'RATE':>9}"]
    for path in paths:
        e = index[path]
        rows.append(f"{path:<40} {e.counts:>9} {e.rate:>7.1f}/s")
    return rows


def render(address: str, index: Mapping[str, IndexEntry] | None,
           values: Mapping[str, Mapping], wanted=(), index_age: float | None = None,
           error: str | None = None) -> str:
    """The text of one snapshot."""
    age = "" if index_age is None else f"  (index {index_age:.1f} s old)"
    lines = [f"metropc-client {address}{age}", ""]
    if index is None:
        lines.append("no index yet")
    else:
        lines += _view_rows(index)
        path_rows = _path_rows(index)
        if path_rows:
            lines += [""] + path_rows
    if wanted:
        lines += ["", "LATEST VALUES"]
        for path in wanted:
            payload = values.get(path)
            if payload is None:
                lines.append(f"{path}  (nothing yet)")
                continue
            event = payload.get("event_id")
            event = "" if event is None else f"  event {event}"
            lines.append(f"{path}{event}  {summarize(payload.get('data'))}")
    if error:
        lines += ["", f"last error: {error}"]
    return "\n".join(lines)


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
            hint = f" ({', '.join(unknown)} not in the index)" if unknown else ""
            raise TimeoutError(f"no value for {', '.join(missing)} within "
                               f"{timeout:g} s{hint}") from None
        values.setdefault(path, data)
    return values


def _show(text: str, tty: bool) -> None:
    if tty:
        sys.stdout.write(_CLEAR + text + "\n")
    else:
        sys.stdout.write(f"--- {time.strftime('%H:%M:%S')}\n{text}\n\n")
    sys.stdout.flush()


def _run_live(client: Client, wanted: list[str], interval: float, timeout: float):
    tty = sys.stdout.isatty()
    _wait_index(client, timeout)
    values: dict[str, Mapping] = {}
    error = None
    next_draw = 0.0
    while True:
        now = time.monotonic()
        if now >= next_draw:
            _show(render(client.address, client.index, values, wanted,
                         now - client.index_time, error), tty)
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
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        wanted = [view_path(v) for v in args.views]
        client = Client(args.address, views=wanted, allow_pickle=args.allow_pickle,
                        keys=args.keys)
    except Exception as e:
        print(f"metropc-client: cannot connect to {args.address!r}: {e}", file=sys.stderr)
        return 2
    try:
        if args.once:
            values = _snapshot_once(client, wanted, args.timeout)
            print(render(args.address, client.index, values, wanted))
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

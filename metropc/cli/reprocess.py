"""``metropc-reprocess``: a context over whole runs, on a Dask cluster.

::

    metropc-reprocess ctx.py /gpfs/.../raw/r0042 -o r0042.h5 --workers 8
    metropc-reprocess ctx.py raw/r0042 raw/r0043 -o results/ --scheduler tcp://node:8786
    metropc-reprocess ctx.py raw/r0042 -o out.h5 --param threshold=0.5 --views roi_sum,hist

Writes every view's results in the recording format (docs/recording.md), so
``metropc.open_recording(OUT)`` reads them; shows progress on stderr (a bar
on a terminal, a line every few seconds otherwise) and ends with a summary:
trains, time, rate, view errors by view.  Exit codes: 0 done, 1 done but
some trains could not be processed (named in the log), 2 refused before
starting (one line), 130 interrupted.  See docs/reprocess.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from ..error import ContextError, SourceError
from .logsafe import log_to_stderr
from .run_args import parse_param
from .usage import Parser, positive_int, shown

log = logging.getLogger("metropc.reprocess")
PROG = "metropc-reprocess"
#: Seconds to reach a --scheduler before giving up with one line.
CONNECT_TIMEOUT = 10


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description="Run a context over whole runs on a Dask cluster "
                                      "and write the results as a metropc recording.")
    p.add_argument("context", help="the context file")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="run directories (or HDF5 files), each one run, in this order")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="a new recording file, or a directory (one run_NNNN.h5 per run)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=positive_int, default=None, metavar="N",
                       help="local worker processes (default: the number of CPUs)")
    where.add_argument("--scheduler", default=None, metavar="ADDR",
                       help="use the Dask cluster whose scheduler is at ADDR")
    p.add_argument("--param", action="append", type=parse_param, default=[],
                   metavar="NAME=VALUE", help="set a context parameter (repeatable)")
    p.add_argument("--views", default=None, metavar="A,B",
                   help="record only these views (default: every non-COMPUTE view)")
    p.add_argument("--chunk-trains", type=positive_int, default=None, metavar="N",
                   help="trains per task (default: a few tasks per worker, at most 64)")
    return p


def _quiet_dask(record: logging.LogRecord) -> bool:
    """Dask's own INFO lines (every worker started, every connection) would
    bury the progress and the view errors; its warnings stay."""
    return record.levelno >= logging.WARNING or not record.name.startswith("distributed")


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def summary_line(ds, output: str, seconds: float) -> str:
    """One line: trains, time, rate, where, view errors (by view), lost trains."""
    trains = int(ds.attrs.get("trains", 0))
    runs = json.loads(ds.attrs.get("runs", "[]"))
    errors = json.loads(ds.attrs.get("view_errors_by_view", "{}"))
    text = (f"{PROG}: {trains} trains of {len(runs)} run(s) in {seconds:.1f} s "
            f"({trains / max(seconds, 1e-9):.1f}/s) -> {output}; view errors: "
            f"{sum(errors.values())}")
    if errors:
        text += " (" + ", ".join(f"{v}: {n}" for v, n in sorted(errors.items())) + ")"
    lost = int(ds.attrs.get("trains_lost", 0))
    if lost:
        text += f"; {lost} trains LOST (see the log)"
    return text


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    log_to_stderr(logging.INFO, "%(asctime)s %(levelname)-8s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_quiet_dask)
    from ..inprocess import load_context
    from ..reprocess.driver import ReprocessError, import_distributed
    from .run_args import check_parameters
    from .usage import UsageError

    try:
        distributed = import_distributed()
        if not os.path.isfile(args.context):  # (else it would be compiled as code)
            return _fail(f"cannot read the context file {shown(args.context)}: "
                         + ("it is a directory" if os.path.isdir(args.context)
                            else "no such file"))
        ctx = load_context(args.context)
        parameters = check_parameters(ctx, args.param)
        if parameters:
            ctx.update_parameters(parameters)
    except (ReprocessError, UsageError, SourceError) as e:
        return _fail(str(e))
    except ContextError as e:
        return _fail(str(e).splitlines()[0])
    except OSError as e:
        return _fail(f"cannot read {shown(args.context)}: {e.strerror or e}")
    views = None if args.views is None else [v.strip() for v in args.views.split(",")
                                             if v.strip()]
    client = None
    t0 = time.monotonic()
    try:
        if args.scheduler is not None:
            try:
                client = distributed.Client(args.scheduler, timeout=CONNECT_TIMEOUT,
                                            direct_to_workers=True)
            except OSError as e:
                return _fail(f"no Dask scheduler at {shown(args.scheduler)}: {e}")
        from ..reprocess.driver import reprocess
        from ..reprocess.progress import make_progress

        ds = reprocess(ctx, args.runs, client=client, views=views, output=args.output,
                       chunk_trains=args.chunk_trains, n_workers=args.workers,
                       progress=make_progress())
    except (ReprocessError, SourceError, ValueError) as e:
        return _fail(str(e).splitlines()[0])
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; {args.output} holds what was done", file=sys.stderr)
        return 130
    finally:
        if client is not None:
            client.close()
    print(summary_line(ds, args.output, time.monotonic() - t0), file=sys.stderr)
    return 1 if ds.attrs.get("trains_lost") else 0


if __name__ == "__main__":
    sys.exit(main())

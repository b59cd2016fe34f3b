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

import gc
import logging
import os
import shutil
import signal
import sys
import threading

from ..error import ContextError, SourceError, StopRequested, _context_frame_lineno
from .run_args import PROG, build_parser, check_arguments, check_parameters, source_options
from .run_session import (TIME_UP, ChildOutput, Interrupts, context_text,
                          detach_from_terminal, restore_terminal, setup_logging)
from .usage import Leave, UsageError, one_line, shown

# The pipeline's modules are imported in main(), once SIGINT is blocked, so
# that a Ctrl-C while they load is handled like any other.

log = logging.getLogger("metropc.run")


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


def release_semaphores() -> None:
    """Unlink the semaphores of this process's multiprocessing queues (the
    log forwarder's) before ``os._exit``, which skips their finalizers:
    otherwise multiprocessing's resource tracker unlinks them after we are
    gone, with a warning about "leaked semaphore objects" on the terminal.
    Only the finalizers of priority 0 and up run (closing, unlinking), not
    those that join threads."""
    from multiprocessing import util

    try:
        util._run_finalizers(0)
    except Exception:  # noqa: BLE001 - leaving at once all the same
        pass


def _roomy(stream) -> bool:
    """Whether the terminal of `stream` can show the live region: large
    enough, and able to move its cursor (not TERM=dumb, nor unset)."""
    if os.environ.get("TERM", "dumb") in ("dumb", "unknown", ""):
        return False
    try:
        size = os.get_terminal_size(stream.fileno())
    except (OSError, ValueError):
        return False
    return size.columns >= LIVE_MIN_SIZE[0] and size.lines >= LIVE_MIN_SIZE[1]


def _main(args, dashboard_bind, old_mask):
    from ..stage.runner import STAGES_FILE, resume_listed
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
        if signum == signal.SIGHUP:  # the terminal is gone: stop as for SIGTERM,
            if children is not None:  # silently (a write to it would fail)
                children.detach()
            else:
                detach_from_terminal()
        if signum == signal.SIGINT:
            say(f"{PROG}: Ctrl-C: stopping (Ctrl-C again quits at once)")
        elif signum == TIME_UP:
            say(f"{PROG}: --duration is up while the context's top level still runs")
        else:
            say(f"{PROG}: {signal.Signals(signum).name}: stopping (a second signal "
                "quits at once)")

    def on_exit(signum):
        # Second Ctrl-C: leave at once.  The stages end with us
        # (PR_SET_PDEATHSIG); only our private socket directory is ours
        # to remove on the way out.
        for path in leftovers:
            # A stopped stage, recorder or tracker would not see us go.
            resume_listed(os.path.join(path, STAGES_FILE))
            shutil.rmtree(path, ignore_errors=True)
        unlink_owned()  # shared memory would outlive os._exit
        release_semaphores()
        if children is not None:
            children.restore_cursor()
        restore_terminal()  # echo and line editing, which the keys turned off
        # 130 for Ctrl-C, 143 for SIGTERM; 1 when --duration ended a context
        # whose top level never returned (nothing ran)
        os._exit(1 if signum == TIME_UP else 128 + signum)

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


def load_context(source, args, interrupts):
    """The context of `args.context`, its top level run here, in the main
    thread.  A top level that does not return is said after SLOW_LOAD
    seconds, and ends at Ctrl-C, SIGTERM or the end of --duration
    (StopRequested) rather than hanging metropc-run."""
    from ..core import SLOW_LOAD, Context
    slow = threading.Timer(SLOW_LOAD, log.warning, (
        "the top level of %s has run for %g s and not returned (Ctrl-C stops)",
        args.context, SLOW_LOAD))
    slow.daemon = True
    slow.start()
    try:
        with interrupts.raising(args.duration):
            return Context(source, path=args.context)
    finally:
        slow.cancel()


def _run(args, dashboard_bind, mode, console, interrupts, leftovers, say):
    # Imported now, not when first used: a run at its limit of open files
    # could not open them then.
    from .run_live import LiveRun, interrupted

    stop = interrupts.stop

    def exit_code():
        return 130 if interrupts.signum == signal.SIGINT else 0

    if stop.is_set():  # Ctrl-C before anything started
        return exit_code()
    try:
        stamp, ctx, parameters = _load(args, interrupts, say, exit_code)
        if stop.is_set():
            return exit_code()
        recorder = _start_recorder(args, ctx, say)
        pipeline = _start_pipeline(args, parameters, recorder, stop, say, exit_code)
    except Leave as e:
        return e.code
    # As in the stage processes (metropc.stage.runner): what is imported and
    # built by now stays, so full collections need not walk it (a ~40 ms
    # pause of the frontend thread otherwise).
    gc.freeze()
    # A SIGTERM to the process group ends the stages as it reaches us: from
    # that moment none is restarted (see interrupted).
    interrupts.when_stopped(pipeline.stand_down)
    if pipeline.frontend._tmpdir:
        leftovers.append(pipeline.frontend._tmpdir)
    run = LiveRun(pipeline, recorder, args)
    try:
        if stop.is_set():  # Ctrl-C while the stages started (the source may have begun)
            interrupted(pipeline)
            return exit_code()
        run.announce()
        run.start_recording()
        run.serve(dashboard_bind)
        run.show(mode, console, stamp)
        broken = run.watch(stop)
        return run.wind_up(broken, stop, exit_code)
    except Leave as e:
        return e.code
    finally:
        run.close()


def _load(args, interrupts, say, exit_code):
    """``(stamp, ctx, parameters)``: the context file as read (for its
    watcher), its context and the --param values; Leave if it cannot run."""
    from ..core import context_file_stamp, read_context_file

    try:
        stamp = context_file_stamp(args.context)  # (before reading: see ContextWatcher)
        source = read_context_file(args.context)
    except OSError as e:
        say(f"{PROG}: error: cannot read the context file {args.context}: "
            f"{e.strerror or e}")
        raise Leave(2) from None
    except ContextError as e:  # not text
        log.error("context refused, nothing runs\n%s", e)
        raise Leave(1) from None
    try:
        ctx = load_context(source, args, interrupts)
        return stamp, ctx, check_parameters(ctx, args.param)
    except StopRequested as e:
        line = _context_frame_lineno(e.__traceback__, args.context)
        where = "" if line is None else f" (at line {line})"
        say(f"{PROG}: stopped while the top level of {args.context} ran{where}; nothing "
            "ran (a context's top level must return: put loops in views)")
        raise Leave(1 if interrupts.signum == TIME_UP else exit_code()) from None
    except UsageError as e:
        say(f"{PROG}: error: {e}")
        raise Leave(2) from None
    except ContextError as e:
        log.error("context refused, nothing runs\n%s", e.format_for_context(source))
        raise Leave(1) from None


def _start_recorder(args, ctx, say):
    """The recorder of --record (None without), started before the pipeline:
    the source waits until it subscribed.  Leave(2) if it cannot record."""
    if args.record is None:
        return None
    from ..recording.process import RecorderError, RecorderProcess

    views = (None if args.record_views is None
             else [v.strip() for v in args.record_views.split(",") if v.strip()])
    unknown = None if views is None else [v for v in views if v not in ctx.views]
    if views is not None and (unknown or not views):
        known = ", ".join(n for n, v in ctx.views.items() if not v.hidden) or "none"
        say(f"{PROG}: error: --record-views {args.record_views!r}: "
            + (f"no view named {', '.join(unknown)}" if unknown else "names no view")
            + f" in {args.context} (its views: {known})")
        raise Leave(2)
    try:
        return RecorderProcess(args.record, views=views, keys=args.keys)
    except RecorderError as e:
        say(f"{PROG}: error: --record {args.record}: {e}")
        raise Leave(2) from None


def _start_pipeline(args, parameters, recorder, stop, say, exit_code):
    """The pipeline's stages, started (its source too, unless a recorder
    must subscribe first); Leave if it did not start."""
    from ..pipeline import Pipeline

    output = args.output
    if output.startswith("tcp://") and output.endswith(":0"):
        output = output[:-2] + ":*"
    try:
        try:
            return Pipeline(args.context, source=args.source, pool=args.pool,
                            output=output, parameters=parameters, rate=args.rate,
                            seed=args.seed, bridge_socket=args.bridge_socket,
                            queue_size=args.queue_size, drop_policy=args.drop_policy,
                            max_events=args.max_events, control=args.control,
                            reduce=args.reduce, keys=args.keys,
                            event_timeout=args.event_timeout or None,
                            shm_size=args.shm_size, start=recorder is None,
                            **source_options(args))
        except BaseException:
            if recorder is not None:
                recorder.stop()
            raise
    except ContextError as e:
        log.error("context refused, nothing runs\n%s",
                  e.format_for_context(context_text(args.context)))
        raise Leave(1) from None
    except SourceError as e:  # (what needs the source opened: --source os:nosuch)
        say(f"{PROG}: error: --source {shown(args.source)}: {one_line(e)}")
        raise Leave(2) from None
    except RuntimeError:  # a stage could not start (e.g. its address taken)
        if stop.is_set():
            raise Leave(exit_code()) from None
        log.error("the pipeline did not start; the messages above say why")
        raise Leave(1) from None

if __name__ == "__main__":
    sys.exit(main())

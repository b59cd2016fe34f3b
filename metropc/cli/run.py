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
import time

from ..error import ContextError, SourceError, StopRequested, _context_frame_lineno
from .run_args import PROG, build_parser, check_arguments, check_parameters, source_options
from .run_session import (TIME_UP, ChildOutput, ContextWatcher, FdWatch, Interrupts, Keys,
                          RecorderWatch, context_text, detach_from_terminal,
                          restore_terminal, setup_logging)
from .usage import UsageError, one_line, shown

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


#: Seconds without an event getting through after which a finished source's
#: last events are given up (metropc.pipeline.Pipeline.drain).
DRAIN_STALL_TIMEOUT = 30.0


#: The exit code when the last events were given up (their results were not
#: published): a script that runs metropc-run can tell.
EXIT_NOT_PUBLISHED = 3


#: Seconds Ctrl-C or SIGTERM leaves the events already in the pipeline to
#: get through (a second Ctrl-C quits at once).
INTERRUPT_WAIT = 3.0


def finish(pipeline, stop, on_wait=None) -> int:
    """The source finished, or the run ends (--duration, key q): let the
    last events through before stopping (their results are published, or
    counted lost); returns how many did not get through (the pipeline's
    close names them).  `on_wait()` keeps a status display going meanwhile."""
    pipeline.stop_source()
    left = pipeline.drain(DRAIN_STALL_TIMEOUT, stop, timeout=1.0, on_wait=on_wait)
    if pipeline.frontend.unfinished() and not stop.is_set():  # (a run's end mark, too)
        if left:  # slow views: say what we wait for
            log.info("letting the last %d event(s) through (Ctrl-C stops sooner)", left)
        left = pipeline.drain(DRAIN_STALL_TIMEOUT, stop, on_wait=on_wait)
    if left and not stop.is_set():
        why = pipeline.frontend.given_up()
        log.warning("giving up on the last events: %s", why or
                    f"none got through for {DRAIN_STALL_TIMEOUT:g} s")
    return left


def interrupted(pipeline, on_wait=None) -> int:
    """Ctrl-C or SIGTERM: the source stops at once, and what it already fed
    gets INTERRUPT_WAIT seconds to get through (at the usual rate that is
    milliseconds); returns how many did not (the pipeline's close names
    them, so Ctrl-C stays one line when nothing is lost)."""
    pipeline.stop_source()
    pipeline.stand_down()  # a SIGTERM to the process group ends the stages too
    return pipeline.drain(INTERRUPT_WAIT, timeout=INTERRUPT_WAIT, on_wait=on_wait)


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
    from ..core import context_file_stamp, read_context_file
    from ..pipeline import Pipeline
    from .status import ContextState, StatusDisplay

    stop = interrupts.stop

    def exit_code():
        return 130 if interrupts.signum == signal.SIGINT else 0

    if stop.is_set():  # Ctrl-C before anything started
        return exit_code()
    try:
        stamp = context_file_stamp(args.context)  # (before reading: see ContextWatcher)
        source = read_context_file(args.context)
    except OSError as e:
        say(f"{PROG}: error: cannot read the context file {args.context}: "
            f"{e.strerror or e}")
        return 2
    except ContextError as e:  # not text
        log.error("context refused, nothing runs\n%s", e)
        return 1
    try:
        ctx = load_context(source, args, interrupts)
        parameters = check_parameters(ctx, args.param)
    except StopRequested as e:
        line = _context_frame_lineno(e.__traceback__, args.context)
        where = "" if line is None else f" (at line {line})"
        say(f"{PROG}: stopped while the top level of {args.context} ran{where}; nothing "
            "ran (a context's top level must return: put loops in views)")
        return 1 if interrupts.signum == TIME_UP else exit_code()
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
    if args.record is not None:  # the source waits until it subscribed
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
                                shm_size=args.shm_size, start=recorder is None,
                                **source_options(args))
        except BaseException:
            if recorder is not None:
                recorder.stop()
            raise
    except ContextError as e:
        log.error("context refused, nothing runs\n%s",
                  e.format_for_context(context_text(args.context)))
        return 1
    except SourceError as e:  # (what needs the source opened: --source os:nosuch)
        say(f"{PROG}: error: --source {shown(args.source)}: {one_line(e)}")
        return 2
    except RuntimeError:  # a stage could not start (e.g. its address taken)
        if stop.is_set():
            return exit_code()
        log.error("the pipeline did not start; the messages above say why")
        return 1
    # As in the stage processes (metropc.stage.runner): what is imported and
    # built by now stays, so full collections need not walk it (a ~40 ms
    # pause of the frontend thread otherwise).
    gc.freeze()
    # A SIGTERM to the process group ends the stages as it reaches us: from
    # that moment none is restarted (see interrupted).
    interrupts.when_stopped(pipeline.stand_down)
    if pipeline.frontend._tmpdir:
        leftovers.append(pipeline.frontend._tmpdir)
    status = live = dashboard = keys = metrics = None
    try:
        if stop.is_set():  # Ctrl-C while the stages started (the source may have begun)
            interrupted(pipeline)
            return exit_code()
        if recorder is not None:  # (noted first: ended by the next frontend if left stopped)
            pipeline.frontend.note_process(recorder.proc.pid)
        with_keys = f" --keys {args.keys}" if args.keys else ""  # (CURVE: clients need them)
        print(f"{PROG}: output on {pipeline.output_addr}  "
              f"(watch it with: metropc-client {pipeline.output_addr}{with_keys})", flush=True)
        if pipeline.control_addr is not None:
            print(f"{PROG}: control on {pipeline.control_addr}  (metropc-client "
                  f"{pipeline.output_addr}{with_keys} --reset | --pause | --resume)",
                  flush=True)
        if any(str(a).startswith("tcp://") for a in (args.control, args.reduce)):
            fe = pipeline.frontend  # their bound addresses (port 0: the one picked)
            print(f"{PROG}: stages on {fe.control_addr} and {fe.reduce_addr}  "
                  f"(join with: metropc-worker --control {fe.control_addr} --reduce "
                  f"{fe.reduce_addr}" + (f" --keys {args.keys}" if args.keys else "") + ")",
                  flush=True)
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
            pipeline.start()  # the recorder listens: from the first event on
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
        watcher = None if args.no_watch else ContextWatcher(pipeline, state, stamp)
        if mode != "off":
            status = StatusDisplay(pipeline.output_addr, pipeline.ctx.event_alias,
                                   keys=args.keys, context=state, live=(mode == "live"))
        if mode == "live":
            from rich.live import Live

            status.height = lambda: console.size.height
            live = Live(get_renderable=status.render, console=console,
                        refresh_per_second=4, redirect_stdout=True, redirect_stderr=True)
            live.start()
        t_end = None if args.duration is None else time.monotonic() + args.duration
        keys = Keys.open(mode == "live")
        if keys is not None:
            print(f"{PROG}: keys: r reset, p pause/resume, s step, q quit", flush=True)
        broken = None
        fds = FdWatch()
        recorder_watch = None if recorder is None else RecorderWatch(args.record)
        while not stop.is_set() and not pipeline.finished.is_set():
            broken = pipeline.frontend.given_up()
            if broken is not None:  # (the reason was logged when it happened)
                log.critical("%s: no more results can come; stopping", broken)
                break
            if keys is None:
                stop.wait(0.25)
            elif keys.act(pipeline, 0.25) == "quit":
                break
            if watcher is not None:
                watcher.poll()
            fds.poll()
            if recorder is not None and recorder.alive:
                news = recorder_watch.check(recorder.silent_for())
                if news is not None:
                    (log.warning if recorder_watch.silent else log.info)("%s", news)
            if recorder is not None and not recorder.alive:
                code = recorder.proc.returncode
                log.error("the recorder %s: nothing more is recorded to %s (%s); the "
                          "pipeline goes on", f"died (exit code {code})" if code else
                          "ended (exit code 0) without being told to", args.record,
                          "it keeps what was flushed" if code else "it closed the file")
                recorder.stop(1.0)  # (reaped)
                recorder = None
            if status is not None:
                status.update()
            if t_end is not None and time.monotonic() >= t_end:
                break
        left = 0
        on_wait = None if status is None else status.update
        if broken is not None:
            pipeline.stop_source()  # (close() names what is left)
        elif not stop.is_set():
            left = finish(pipeline, stop, on_wait)
            if status is not None and not stop.is_set():  # the last line: the last counts
                status.refresh(pipeline.request_index)
        if stop.is_set():  # Ctrl-C or SIGTERM, also while finishing
            interrupted(pipeline, on_wait)
            if status is not None and pipeline.frontend.stages_alive():
                status.refresh(pipeline.request_index, timeout=0.5)  # the counts of now
        if status is not None:
            # Counts of the end also when REDUCE is gone: the last index may be
            # a second old (a SIGTERM to the whole group, a given-up REDUCE).
            status.latest = {**pipeline.frontend.latest_counts(), "fed": pipeline.fed}
            status.update(final=True)  # (line mode: the last line, also after Ctrl-C)
        if (left or broken is not None) and not stop.is_set():
            return EXIT_NOT_PUBLISHED
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

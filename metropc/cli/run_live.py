"""A started ``metropc-run``: what it announces and serves, the loop that
watches it until it ends, and how it ends.

:class:`LiveRun` holds what a run opened besides its pipeline (recorder,
dashboard, metrics server, status display, keys) so that one ``close()``
ends them in the right order whichever way the run ended: the pipeline
before the recorder, which writes every last result.
"""

from __future__ import annotations

import logging
import os
import time

from .run_args import PROG
from .run_session import ContextWatcher, FdWatch, Keys, RecorderWatch
from .status import ContextState, StatusDisplay
from .usage import Leave

log = logging.getLogger("metropc.run")

__all__ = ["LiveRun", "finish", "interrupted", "DRAIN_STALL_TIMEOUT",
           "EXIT_NOT_PUBLISHED", "INTERRUPT_WAIT"]

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


class LiveRun:
    """A started pipeline, with what `args` asked for around it."""

    def __init__(self, pipeline, recorder, args):
        self.pipeline, self.recorder, self.args = pipeline, recorder, args
        self.status = self.live = self.dashboard = self.metrics = self.keys = None
        self.watcher = None

    # -- starting ---------------------------------------------------------------

    def announce(self) -> None:
        """Print where clients, controllers and remote workers connect."""
        pipeline, args = self.pipeline, self.args
        if self.recorder is not None:  # (noted first: ended by the next frontend if left stopped)
            pipeline.frontend.note_process(self.recorder.proc.pid)
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
                  f"{fe.reduce_addr}{with_keys})", flush=True)

    def start_recording(self) -> None:
        """Subscribe the recorder, then start the source (from the first event on)."""
        pipeline, recorder = self.pipeline, self.recorder
        if recorder is None:
            return
        if recorder.connect(pipeline.output_addr):
            ctx = pipeline.ctx  # published before the recorder subscribed
            recorder.send_meta("context", {
                "version": ctx.version, "path": ctx.path, "source": ctx.source,
                "parameters": dict(ctx.parameters)})
            print(f"{PROG}: recording to {self.args.record}", flush=True)
        else:
            log.error("the recorder did not subscribe to %s; nothing is recorded",
                      pipeline.output_addr)
        pipeline.start()

    def serve(self, dashboard_bind) -> None:
        """The dashboard and the metrics server, if asked for; Leave(2) if
        one cannot be served."""
        pipeline, args = self.pipeline, self.args
        if dashboard_bind is not None:
            try:
                from ..dashboard import serve
                self.dashboard = serve(pipeline.output_addr, *dashboard_bind, control=pipeline,
                                       allow_remote=args.allow_remote, keys=args.keys,
                                       title=os.path.basename(args.context))
            except (ImportError, OSError) as e:
                log.error("cannot serve the dashboard on %s: %s", args.dashboard, e)
                raise Leave(2) from None
            print(f"{PROG}: dashboard on {self.dashboard.url}", flush=True)
        if getattr(args, "metrics_bind", None) is not None:
            from ..metrics import MetricsServer
            try:
                self.metrics = MetricsServer(pipeline.output_addr, *args.metrics_bind,
                                             pipeline=pipeline, keys=args.keys,
                                             allow_remote=args.allow_remote).start()
            except (ImportError, OSError, ValueError) as e:
                log.error("cannot serve metrics on %s: %s", args.metrics, e)
                raise Leave(2) from None
            print(f"{PROG}: metrics on {self.metrics.url} (and /status)", flush=True)

    def show(self, mode, console, stamp) -> None:
        """The status display (`mode`: live, lines or off), the context file's
        watcher (`stamp`: the file as loaded) and, on a terminal, the keys."""
        pipeline, args = self.pipeline, self.args
        state = ContextState(args.context)
        if pipeline.ctx is not None:
            state.loaded(pipeline.version, len(pipeline.ctx.views))
        on_error = pipeline.on_error

        def on_stage_error(msg):  # called in the frontend's thread
            on_error(msg)
            state.stage_message(msg)

        pipeline.on_error = on_stage_error
        self.watcher = None if args.no_watch else ContextWatcher(pipeline, state, stamp)
        if mode != "off":
            self.status = StatusDisplay(pipeline.output_addr, pipeline.ctx.event_alias,
                                        keys=args.keys, context=state, live=(mode == "live"))
        if mode == "live":
            from rich.live import Live

            self.status.height = lambda: console.size.height
            self.live = Live(get_renderable=self.status.render, console=console,
                             refresh_per_second=4, redirect_stdout=True, redirect_stderr=True)
            self.live.start()
        self.keys = Keys.open(mode == "live")
        if self.keys is not None:
            print(f"{PROG}: keys: r reset, p pause/resume, s step, q quit", flush=True)

    # -- running ----------------------------------------------------------------

    def watch(self, stop):
        """Until the source ends, the time is up, a stop or the key q: reload
        edits, check the recorder, update the status.  Returns why no more
        results can come, or None."""
        pipeline, args = self.pipeline, self.args
        t_end = None if args.duration is None else time.monotonic() + args.duration
        fds = FdWatch()
        recorder_watch = None if self.recorder is None else RecorderWatch(args.record)
        while not stop.is_set() and not pipeline.finished.is_set():
            broken = pipeline.frontend.given_up()
            if broken is not None:  # (the reason was logged when it happened)
                log.critical("%s: no more results can come; stopping", broken)
                return broken
            if self.keys is None:
                stop.wait(0.25)
            elif self.keys.act(pipeline, 0.25) == "quit":
                break
            if self.watcher is not None:
                self.watcher.poll()
            fds.poll()
            self.check_recorder(recorder_watch)
            if self.status is not None:
                self.status.update()
            if t_end is not None and time.monotonic() >= t_end:
                break
        return None

    def check_recorder(self, recorder_watch) -> None:
        """Say when the recorder falls silent, comes back or dies (then the
        pipeline goes on without it)."""
        recorder = self.recorder
        if recorder is None:
            return
        if recorder.alive:
            news = recorder_watch.check(recorder.silent_for())
            if news is not None:
                (log.warning if recorder_watch.silent else log.info)("%s", news)
            return
        code = recorder.proc.returncode
        log.error("the recorder %s: nothing more is recorded to %s (%s); the "
                  "pipeline goes on", f"died (exit code {code})" if code else
                  "ended (exit code 0) without being told to", self.args.record,
                  "it keeps what was flushed" if code else "it closed the file")
        recorder.stop(1.0)  # (reaped)
        self.recorder = None

    # -- ending -----------------------------------------------------------------

    def wind_up(self, broken, stop, exit_code) -> int:
        """Let the last events through (or what a stop allows), show the last
        counts; the exit code: EXIT_NOT_PUBLISHED if events were given up,
        else `exit_code()`, asked last (a Ctrl-C while finishing makes it 130)."""
        pipeline, status = self.pipeline, self.status
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

    def close(self) -> None:
        if self.keys is not None:
            self.keys.close()
        if self.live is not None:
            self.live.refresh()
            self.live.stop()
        if self.dashboard is not None:
            self.dashboard.stop()
        if self.metrics is not None:
            self.metrics.stop()
        self.pipeline.close(timeout=3.0)
        if self.recorder is not None:
            self.recorder.stop()  # after the pipeline: it writes every last result
        if self.status is not None:
            self.status.close()

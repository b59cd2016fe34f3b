"""A whole pipeline in one object: stages, a context, and a data source.

:class:`Pipeline` is what ``metropc-run`` is made of, and what scripts and
notebooks use to run the real multi-process pipeline::

    from metropc.pipeline import Pipeline
    from metropc.client import Client

    with Pipeline("contexts/sim_example.py", source="sim", rate=50) as pipe:
        with Client(pipe.output_addr, views=["ring_radius"], timeout=10) as client:
            path, payload = client.recv()

For in-process runs over recorded events without any processes, use
:func:`metropc.run` instead.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time

from .core import SLOW_LOAD, Context, context_file_stamp, read_context_file
from .engine import STEP, Action
from .error import ContextError, SourceError, UnknownParameterError
from .config import DROP_BLOCK, PipelineConfig
from .enums import ViewStage
from .sources import open_source
from .sources.base import RUN_PATH
from .stage.common import OP_ACTION, OP_CONTEXT, OP_EVENT, OP_INDEX, OP_PARAMS
from .messages import OP_ANNOUNCE
from .stage.frontend import ProcessRunner, ThreadedFrontend
from .stage.reload import RELOAD_TIMEOUT
from .stage.remote import ControlServer

__all__ = ["Pipeline"]

log = logging.getLogger(__name__)


class _Frontend(ThreadedFrontend):
    """Routes stage messages to the owning Pipeline's handlers."""

    def __init__(self, owner, **kwargs):
        self._owner = owner
        super().__init__(**kwargs)

    def on_pipeline_error(self, msg):
        self._owner.on_error(msg)

    def on_pipeline_panic(self, msg):
        self._owner.on_panic(msg)

    def on_context_committed(self, version):
        self._owner.on_committed(version)

    def on_context_refused(self, version, why):
        self._owner.on_refused(version)
        super().on_context_refused(version, why)


class _LoadAbandoned(BaseException):
    """Raised in a context's loading thread that took too long (not an
    Exception: the context's own ``except Exception`` does not catch it)."""


class Pipeline:
    """Frontend + POOL workers + REDUCE, fed from a source, with a context.

    Parameters
    ----------
    context : str or os.PathLike
        A context file (reloadable with :meth:`reload`) or context source.
    source : str
        A source spec for :func:`metropc.sources.open_source`; ``None`` to
        feed events yourself with :meth:`send`.
    pool : int
        Number of POOL workers.
    output : str, optional
        Output address; default a free TCP port on 127.0.0.1.
    parameters : dict, optional
        Parameter overrides, kept across reloads.
    rate, seed, bridge_socket : optional
        Passed to the source.
    max_events : int, optional
        Stop feeding after this many events from the source.
    control, reduce : str, optional
        Control and reduce addresses (default private ``ipc://`` sockets);
        give ``tcp://`` ones to let ``metropc-worker`` join from other hosts.
    keys : str, optional
        Key directory (``metropc-keys``) securing every socket with CURVE.
    event_timeout : float
        Seconds a worker may spend per event before it is replaced.
    shm, shm_size, shm_threshold : optional
        Shared-memory transport of large arrays to local workers and of
        large results to REDUCE (docs/shm.md): on by default with
        ``ProcessRunner``; ``shm_size`` in bytes (0: off), default
        min(1 GiB, RAM / 8); arrays of ``shm_threshold`` bytes (64 KiB) or
        more use it.
    ready_timeout : float
        Seconds to wait for the stages to start.
    queue_size, queue_bytes, drop_policy : optional
        The event queue's bounds and what happens when they are reached
        (see ThreadedFrontend).  The default policy depends on where events
        come from: ``'oldest'`` for a live source (the simulator, a Karabo
        bridge), ``'block'`` for a replay (run files, a Python callable) and
        for :meth:`send`, so that those lose nothing.
    control_endpoint : str or None
        Where clients may control the pipeline (reset, pause, resume,
        parameters, actions, runs: :class:`metropc.client.Controller`);
        default a free loopback TCP port, None for no endpoint.  Secured
        with CURVE when `keys` are given.
    config : PipelineConfig, optional
        Every setting above in one object (:mod:`metropc.config`).
    start : bool
        Feed events from the source at once (default).  ``False`` opens
        the source (its errors are raised here) but feeds nothing until
        :meth:`start`: for whatever must listen from the first event on,
        such as a recorder (results published before a subscriber
        connected never reach it).

    Errors the stages report (failing views, refused contexts) are logged
    and kept in :attr:`errors` (the last 100).
    """

    def __init__(self, context, source="sim", *, pool=None, output=None, parameters=None,
                 rate=None, seed=0, bridge_socket=None, sr_cls=ProcessRunner,
                 max_events=None, control=None, reduce=None,
                 control_endpoint: str | None = "tcp://127.0.0.1:*",
                 config: PipelineConfig | None = None, start: bool = True, **options):
        settings = {k: options.pop(k) for k in list(options) if k in PipelineConfig.fields()}
        if pool is not None:
            settings["pool"] = pool
        if settings.get("drop_policy") is None:
            settings.pop("drop_policy", None)
        explicit_policy = "drop_policy" in settings or config is not None
        if not explicit_policy and source is None:
            settings["drop_policy"] = DROP_BLOCK  # events come from send(): never dropped
        config = (config or PipelineConfig()).replace(**settings)
        self.config = config
        source_options = options
        self.errors = []
        self.parameters = dict(parameters or {})
        self.version = 0
        self.ctx = None
        self._previous = {}  # version being voted on -> the context running before it
        self._ctx_lock = threading.Lock()
        self.context_path = None
        self.finished = threading.Event()
        self._stop = threading.Event()
        #: Events taken from the source and offered to the frontend, once the
        #: source is done (the tally of a run: out + dropped + lost + what
        #: was still in the pipeline at the end).
        self.fed: int | None = None
        self._source = None
        self._feeder = None
        self._max_events = max_events
        self._frontend = None
        self._remote = None
        if isinstance(context, os.PathLike) or (
                isinstance(context, str) and "\n" not in context
                and os.path.isfile(context)):
            self.context_path = os.fspath(context)
            text, path = read_context_file(self.context_path), self.context_path
        else:
            text, path = context, "<ctx>"
        # A broken context is refused before any process starts.
        first = self._build(text, path)
        self._frontend = _Frontend(self, output_addr=output or "tcp://127.0.0.1:*",
                                   control_addr=control, reduce_addr=reduce,
                                   sr_cls=sr_cls, config=config)
        try:
            self._use(first, path)
            if not self._frontend.wait_ready(config.ready_timeout):
                if self._frontend.failed.is_set():
                    raise RuntimeError("a pipeline stage could not start: "
                                       + ("; ".join(self.errors) or "see the log"))
                raise RuntimeError("pipeline stages did not start within "
                                   f"{config.ready_timeout:g} s")
            if control_endpoint:
                self._remote = remote = ControlServer(self, control_endpoint, keys=config.keys)
                self._frontend.rejected_elsewhere = lambda: remote.rejected
                self._frontend.queue_to("reduce", OP_ANNOUNCE,
                                        {"control": self._remote.address})
            if source is not None:
                self._source = open_source(source, paths=self.ctx.get_paths(), rate=rate,
                                           seed=seed, bridge_socket=bridge_socket,
                                           **source_options)
                if not explicit_policy and not self._source.live:
                    self._frontend.set_drop_policy(DROP_BLOCK)  # a replay loses nothing
                if start:
                    self.start()
        except BaseException:
            self.close()
            raise

    # -- reporting ---------------------------------------------------------------------
    def on_error(self, msg):
        """A stage reported an error (a failing view, a refused context)."""
        log.error("%s", msg)
        self.errors.append(msg)
        del self.errors[:-100]

    def on_panic(self, msg):
        """A stage died."""
        log.critical("%s", msg)
        self.errors.append(msg)

    # -- control ---------------------------------------------------------------------------
    @property
    def output_addr(self):
        """Where clients connect (the bound address, once ready)."""
        return self._frontend.output_addr

    @property
    def control_addr(self) -> str | None:
        """Where :class:`metropc.client.Controller` connects (None: no endpoint)."""
        return None if self._remote is None else self._remote.address

    @property
    def frontend(self):
        return self._frontend

    @property
    def abandoned(self) -> int:
        """Events :meth:`close` stopped while still queued or in the stages:
        they produced no results (0 before it; see :meth:`drain`)."""
        return 0 if self._frontend is None else self._frontend.abandoned

    def load(self, source, path="<ctx>"):
        """Load context `source`; raise ContextError and keep the old one if bad."""
        return self._use(self._build(source, path), path)

    def _build(self, source, path, superseded=None):
        """Build a context (:meth:`_build_now`), giving up after
        RELOAD_TIMEOUT seconds, as the stages do.

        The context's top-level code runs in a thread of its own, so that
        code that never ends (a loop, a blocking call) cannot hang the
        caller (metropc-run's main loop): it is refused with a ContextError,
        and the thread is told to stop (an exception raised in it, which a
        loop of Python code gets at once and a blocking call when it returns).
        One still running after SLOW_LOAD seconds is said; one that
        `superseded()` (a newer edit of the file was saved) is given up at
        once, so that the fix is loaded without waiting for the timeout.
        """
        outcome = {}

        def build():
            try:
                outcome["ctx"] = self._build_now(source, path)
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                outcome["error"] = e

        thread = threading.Thread(target=build, name="metropc-context-load", daemon=True)
        thread.start()
        why = self._wait_for_build(thread, path, superseded)
        if why is not None:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident),
                                                       ctypes.py_object(_LoadAbandoned))
            error = ContextError(why, path, None)
            self._refused(error)
            raise error
        if "error" in outcome:
            raise outcome["error"]
        return outcome["ctx"]

    @staticmethod
    def _wait_for_build(thread, path, superseded):
        """Wait for a context's top level to return; None if it did, else
        why it is given up (the timeout, or a newer edit)."""
        start = time.monotonic()
        slow_said = False
        while thread.is_alive():
            waited = time.monotonic() - start
            if waited >= RELOAD_TIMEOUT:
                return (f"its top-level code did not finish within {RELOAD_TIMEOUT:g} s "
                        "(a loop or a call that never ends?), so it is refused")
            if superseded is not None and superseded():
                return (f"its top-level code had not finished after {waited:.0f} s when a "
                        "newer edit was saved, which is loaded instead")
            if not slow_said and waited >= SLOW_LOAD:
                slow_said = True
                log.warning("the top level of the edit of %s has run for %g s and not "
                            "returned; it is refused after %g s, or at once when you save "
                            "again", path, SLOW_LOAD, RELOAD_TIMEOUT)
            thread.join(0.1)
        return None

    def _refused(self, error):
        # Kept with the stages' errors, so dashboards show it too.
        self.errors.append(f"context refused: {error}")
        del self.errors[:-100]

    def _build_now(self, source, path):
        """Build a context with the parameter overrides it still declares.

        An override of a parameter the edited file no longer declares is
        dropped with a warning: removing a parameter from the file must
        not make every later edit be refused.
        """
        try:
            try:
                return Context(source, path=path, version=self.version + 1,
                               parameters=self.parameters)
            except UnknownParameterError as e:
                if self.ctx is None or e.name not in self.parameters:
                    raise
                ctx = Context(source, path=path, version=self.version + 1)
                kept = {k: v for k, v in self.parameters.items() if k in ctx.parameters}
                for name in sorted(set(self.parameters) - set(kept)):
                    log.warning("%s no longer declares parameter %r; its value %r is "
                                "dropped", path, name, self.parameters[name])
                self.parameters = kept
                return Context(source, path=path, version=self.version + 1,
                               parameters=kept)
        except ContextError as e:
            self._refused(e)
            raise

    def _use(self, ctx, path):
        """Send a built context to the stages, which vote on it (two-phase
        reload): until they took it, the source reads what the running
        context needs as well, and if they refuse it, that one goes on
        (:meth:`on_refused`)."""
        with self._ctx_lock:
            self._previous[ctx.version] = self.ctx
            self.version = ctx.version
            self.ctx = ctx
            if any(v.stage is ViewStage.ASYNC for v in ctx.views.values()):
                self._frontend.enable_async()  # its own process, started once
            self._frontend.queue_to_all(OP_CONTEXT, ctx.to_dict())
            self._select_paths()
        log.debug("context %s sent to the stages (version %d)", path, ctx.version)
        return ctx

    def _select_paths(self):
        """The source reads what the contexts in use or voted on need."""
        if self._source is not None:
            paths = set(self.ctx.get_paths())
            for previous in self._previous.values():
                if previous is not None:
                    paths.update(previous.get_paths())
            self._source.set_paths(list(paths))

    def on_committed(self, version):
        """Every stage took context `version` (the frontend thread)."""
        with self._ctx_lock:
            self._previous.pop(version, None)
            ctx = self.ctx if self.ctx is not None and self.ctx.version == version else None
            self._select_paths()
        if ctx is not None:
            log.info("context %s loaded (version %d, %d views)", ctx.path, version,
                     len(ctx.views))

    def on_refused(self, version):
        """A stage refused context `version`: the one before goes on."""
        with self._ctx_lock:
            previous = self._previous.pop(version, None)
            if previous is not None and self.ctx is not None and self.ctx.version == version:
                self.ctx = previous  # (self.version stays: numbers are never reused)
            self._select_paths()

    def reload(self):
        """Read the context file again and load it (see :meth:`load`)."""
        if self.context_path is None:
            raise ValueError("this pipeline was not started from a context file")
        stamp = context_file_stamp(self.context_path)
        source = read_context_file(self.context_path)
        return self._use(self._build(source, self.context_path,
                                     lambda: context_file_stamp(self.context_path) != stamp),
                         self.context_path)

    def set_parameters(self, **values):
        """Change parameters in every stage from the next event on.

        Raises :class:`~metropc.error.ParameterError` (and changes nothing)
        for a name the context does not declare or a value that does not
        fit the declared type; values are coerced (``"0.5"`` for a float).
        """
        if self.ctx is not None:
            values = self.ctx.check_parameters(values)
        self.parameters.update(values)
        if self.ctx is not None:
            self.ctx.update_parameters(values)
        self._frontend.queue_to_all(OP_PARAMS, values)

    def send(self, event):
        """Feed one event yourself (dict of path -> value)."""
        return self._frontend.queue_to_any(OP_EVENT, event)

    def step(self):
        """End an operator step after the events sent so far."""
        self._frontend.step()

    def reset(self, *views: str) -> None:
        """Clear the accumulated state of `views` (none: every view) from
        the next event on; unknown names raise ValueError."""
        unknown = sorted(set(views) - set(self.ctx.views)) if self.ctx is not None else []
        if unknown:
            raise ValueError(f"no view named {', '.join(map(repr, unknown))} in "
                             f"{self.ctx.path}")
        self._frontend.reset(*views)

    def pause(self) -> None:
        """Stop computing: events from the source are not dispatched, and
        counted (``internal#paused_events``); a replay waits instead.
        Parameters and reloads still work."""
        self._frontend.pause()

    def resume(self) -> None:
        """Go on after :meth:`pause`."""
        self._frontend.resume()

    def start_run(self, run: int | None = None) -> None:
        """Start a run by hand (None: the next number); builtins start empty."""
        self._frontend.start_run(run)

    def end_run(self) -> None:
        """End the current run by hand."""
        self._frontend.end_run()

    def action(self, view_name, *, after_events=False):
        """Run the ACTION view `view_name` in REDUCE; a name that is no
        ACTION view raises ValueError.  At once by default (an operator's
        button); `after_events`: once REDUCE has the results of every event
        fed before, as a source's ``metropc.Action`` runs."""
        if self.ctx is not None:
            view = self.ctx.views.get(view_name)
            if view is None or view.stage is not ViewStage.ACTION:
                actions = [n for n, v in self.ctx.views.items() if v.stage is ViewStage.ACTION]
                raise ValueError(f"no ACTION view named {view_name!r} in {self.ctx.path} "
                                 f"(actions: {', '.join(actions) or 'none'})")
        data = {"view_name": view_name}
        if after_events:
            data["ordered"] = True
        self._frontend.queue_to("reduce", OP_ACTION, data)

    def request_index(self):
        """Have REDUCE publish the index now, with the input counts of now."""
        self._frontend.queue_to("reduce", OP_INDEX)

    @property
    def dropped(self):
        return self._frontend.dropped

    @property
    def paused(self) -> bool:
        """Whether the pipeline is paused (:meth:`pause`, or a remote client's)."""
        return self._frontend.paused

    def start(self) -> None:
        """Start feeding events from the source (once; see `start`)."""
        if self._source is None or self._feeder is not None or self._stop.is_set():
            return
        self._feeder = threading.Thread(target=self._feed, args=(self._max_events,),
                                        name="metropc-source", daemon=True)
        self._feeder.start()

    def stop_source(self, timeout: float = 3.0) -> None:
        """Feed nothing more from the source (the stages go on)."""
        self._stop.set()
        if self._source is not None:
            self._source.close()
        if self._feeder is not None and self._feeder is not threading.current_thread():
            self._feeder.join(timeout)

    def in_flight(self) -> int:
        """Events accepted and not through REDUCE yet (see :meth:`drain`)."""
        return self._frontend.in_flight()

    def drain(self, stall_timeout: float = 30.0, stop: threading.Event | None = None,
              timeout: float | None = None, on_wait=None) -> int:
        """Wait until everything fed so far (events, steps and other marks)
        went through REDUCE: its results published, or counted lost
        (docs/operations.md).

        Call it before :meth:`close` when a finite source has finished
        (:attr:`finished`), or after :meth:`stop_source`: closing at once
        would stop the stages with the last events still in them,
        unpublished.  Waits as long as events move on; gives up when none
        finished for `stall_timeout` seconds, when `stop` is set, after
        `timeout` seconds in all (None: no limit), or when nothing can get
        through any more (a stage given up; after :meth:`stand_down`,
        REDUCE or every worker gone).  `on_wait()`, if given, is called
        about four times a second meanwhile (to refresh a display).
        Returns how many events were still in the pipeline (0: all through).
        """
        frontend = self._frontend
        left = frontend.unfinished()  # (steps and other marks too)
        moved = start = waited = time.monotonic()
        while left:
            if on_wait is not None and time.monotonic() - waited >= 0.25:
                on_wait()
                waited = time.monotonic()
            if stop is not None and stop.is_set() or not self._can_move():
                break
            now = time.monotonic()
            if now - moved > stall_timeout or (timeout is not None and now - start > timeout):
                break
            time.sleep(0.01)  # (REDUCE reports its progress every 20 ms)
            now_left = frontend.unfinished()
            if now_left < left:
                moved = time.monotonic()
            left = now_left
        return self.in_flight()

    def _can_move(self) -> bool:
        """False when nothing more can get through: REDUCE or every POOL
        worker was given up (one worker of several, or the ASYNC stage, is
        not enough: the others go on), or after :meth:`stand_down` REDUCE
        or every worker is gone."""
        frontend = self._frontend
        if frontend.given_up() is not None:
            return False
        return not frontend.standing_down or frontend.stages_alive()

    def stand_down(self) -> None:
        """Restart no stage from now on: the pipeline is about to close
        (``metropc-run`` does this on Ctrl-C or SIGTERM, which may have
        reached the stages too).  :meth:`drain` then stops waiting as soon
        as REDUCE or every worker is gone."""
        self._frontend.stand_down()

    def _feed(self, max_events):
        n, run = 0, None
        frontend = self._frontend
        try:
            for event in self._source:
                if self._stop.is_set():
                    break
                if event is STEP or isinstance(event, Action):
                    self._marker(event)  # a callable source's, see docs/sources.md
                    continue
                number = event.get(RUN_PATH)
                if number != run:  # the source says where runs start and end
                    if run is not None:
                        frontend.end_run()
                    if number is not None:
                        frontend.start_run(number)
                    run = number
                if not frontend.queue_to_any(OP_EVENT, event, cancel=self._stop):
                    if self._stop.is_set():  # it waited for room or a resume
                        break
                n += 1
                if max_events is not None and n >= max_events:
                    break
        except SourceError as e:
            self.on_error(f"source failed: {e}")
        except Exception as e:  # noqa: BLE001 - report and stop feeding
            log.exception("source failed")
            self.on_error(f"source failed: {type(e).__name__}: {e}")
        finally:
            if run is not None:
                frontend.end_run()
            self.fed = n
            if self._stop.is_set():  # (stop_source: --duration, the key q, Ctrl-C)
                log.info("stopped reading the source after %d events", n)
            else:
                log.info("source finished after %d events", n)
            self.finished.set()

    def _marker(self, item) -> None:
        """``metropc.STEP`` ends a step after the events fed so far;
        ``metropc.Action(name)`` runs that ACTION view (a name that is none
        is reported, and feeding goes on)."""
        if item is STEP:
            self.step()
            return
        try:
            self.action(item.view_name, after_events=True)
        except ValueError as e:
            self.on_error(f"source: {e}")

    def close(self, timeout=3.0):
        """Stop the source and every stage at once; what is still in them
        produces no results, and is counted (:attr:`abandoned`) and named
        in a warning (:meth:`drain` first lets it through).  Idempotent."""
        self._stop.set()
        if self._remote is not None:
            self._remote.close()
            self._remote = None
        self.stop_source(timeout)
        if self._frontend is not None:
            self._frontend.close(timeout=timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

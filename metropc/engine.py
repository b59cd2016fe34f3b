"""Executing a context's views for events, without any I/O.

The same :class:`Engine` runs in-process (:func:`metropc.run`, notebooks,
tests) and inside the pipeline's stages: a POOL worker calls
:meth:`Engine.pool`, the REDUCE stage calls :meth:`Engine.reduce`,
:meth:`Engine.step` and :meth:`Engine.action`.  Keeping it free of sockets is
what makes "same semantics in-process and in the pipeline" true by
construction.

An event is a dict mapping full path strings (``'internal#train_id'``,
``'karabo#DEV:ch[key]'``) to values.  Results are dicts mapping view names to
values; only views that produced a result appear.
"""

from __future__ import annotations

import collections
import logging
import time
import traceback
from bisect import bisect_left
from time import perf_counter

from .enums import ViewStage
from .error import ViewExecutionError, operator_interrupt
from .timing import BOUNDS, ERRORS, FIRST, SECONDS, new_record

__all__ = ["Engine", "ErrorReporter", "STEP", "Action"]

log = logging.getLogger(__name__)

_MISSING = object()


class _StepMarker:
    """Marks an operator step boundary in an event stream."""

    def __repr__(self):
        return "metropc.STEP"


#: Put into the events given to :func:`metropc.run` to end an operator step.
STEP = _StepMarker()


class Action:
    """Put into the events given to :func:`metropc.run` to run an ACTION view."""

    def __init__(self, view_name):
        self.view_name = view_name

    def __repr__(self):
        return f"metropc.Action({self.view_name!r})"


class ErrorReporter:
    """Reports failing views with file:line, at most once per view per window.

    The first failure of a view is logged at once with the context part of
    its traceback; later failures within `window` seconds are only counted,
    and the next report says how many were suppressed.  `sink`, if given,
    receives each report (the pipeline forwards them to the frontend).
    """

    def __init__(self, window=10.0, sink=None, clock=time.monotonic):
        self.window = window
        self.sink = sink
        self.clock = clock
        self._last = {}
        self._suppressed = collections.Counter()

    def report(self, view, exc, event_id, ctx_path):
        error = _execution_error(view, exc, event_id, ctx_path)
        now = self.clock()
        last = self._last.get(view.name)
        if last is not None and now - last < self.window:
            self._suppressed[view.name] += 1
            return None
        self._last[view.name] = now
        suppressed = self._suppressed.pop(view.name, 0)
        text = str(error)
        if suppressed:
            text += f" (and {suppressed} more failure(s) of this view not shown)"
        error.report_text = text
        if self.sink is None:
            log.error("%s\n%s", text, error.traceback_text.rstrip())
        else:  # the sink's owner reports it (once, not twice)
            log.debug("%s\n%s", text, error.traceback_text.rstrip())
            self.sink(error)
        return error


def _execution_error(view, exc, event_id, ctx_path):
    frames = traceback.extract_tb(exc.__traceback__)
    ctx_frames = [f for f in frames if f.filename == ctx_path]
    lineno = ctx_frames[-1].lineno if ctx_frames else view.lineno
    filename = ctx_path if ctx_frames else view.filename
    tb_text = "".join(traceback.format_list(ctx_frames))
    message = (f"view '{view.name}' failed on event {event_id}: "
               f"{_describe(exc)}")
    return ViewExecutionError(message, filename, lineno, view=view.name,
                              event_id=event_id, traceback_text=tb_text)


def _describe(exc):
    """``'Type: message'`` of a kernel's exception, whatever its ``__str__`` does."""
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - a context's exception class may be broken
        text = "<exception text unavailable>"
    message = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if isinstance(exc, SystemExit):
        message += " (a view must not exit the process)"
    elif isinstance(exc, KeyboardInterrupt):
        message += " (raised by the view itself, not by Ctrl-C)"
    return message


def input_keys(view) -> tuple:
    """``(arg, path string, view name or None)`` of each argument of `view`:
    what :meth:`Engine._run` looks up per event, worked out once."""
    out = []
    for arg in view.args:
        key = str(arg.path)
        out.append((arg, key, key[5:] if key.startswith("view#") else None))
    return tuple(out)


class Engine:
    """Runs the views of one context; keeps their counts and error counts."""

    def __init__(self, ctx, reporter=None):
        self.ctx = ctx
        self.reporter = reporter or ErrorReporter()
        self.counts = collections.Counter()
        self.errors = collections.Counter()
        self.latest = {}
        order = ctx.order
        self.pool_views = [v for v in order if v.stage is ViewStage.POOL]
        self.reduce_views = [v for v in order if v.trigger == "event"
                             and v.stage in (ViewStage.REDUCE, ViewStage.STEP)]
        self.step_views = [v for v in order if v.stage is ViewStage.STEP]
        self.action_views = [v for v in order if v.trigger == "action"]
        self.async_views = [v for v in order if v.stage is ViewStage.ASYNC]
        #: Views whose latest results the async views read (not async themselves).
        self.async_inputs = {a.path.view_name for v in self.async_views for a in v.args
                             if ctx.views[a.path.view_name].stage is not ViewStage.ASYNC}
        # Paths whose latest value step and action kernels read.
        self._latest_keys = {str(a.path) for v in order if v.trigger != "event"
                             for a in v.args}
        self._inputs = {v.name: input_keys(v) for v in order}  # looked up per event
        #: Names of the views that failed in the last pool or reduce pass.
        self.failed_now: list[str] = []
        #: Whether :meth:`reduce` has anything to do (REDUCE skips it if not).
        self.reduces = bool(self.reduce_views or self._latest_keys)
        self._event_counter = 0
        #: {view name: timing record} of the calls since :meth:`take_timings`
        #: (metropc.timing): measured here, where every view runs.
        self.timings: dict[str, list] = {}

    def take_timings(self) -> dict[str, list]:
        """The timing records collected so far, and start new ones.

        Whoever takes them adds them up (a POOL worker sends them to
        REDUCE), so nothing is counted twice and counts never go back.
        """
        taken, self.timings = self.timings, {}
        return taken

    def _timing(self, name):
        record = self.timings.get(name)
        if record is None:
            record = self.timings[name] = new_record()
        return record

    # -- per event -------------------------------------------------------------
    def prepare(self, event):
        """Fill in the internal paths an event lacks (id, version, aliases)."""
        ctx = self.ctx
        self._event_counter += 1
        event_id = event.get("internal#event_id", _MISSING)
        if event_id is _MISSING:
            event_id = event.get("internal#train_id", self._event_counter)
            event["internal#event_id"] = event_id
        event.setdefault("internal#ctx_version", ctx.version)
        event.setdefault("internal#sequence_id", -1)
        if ctx.event_id_alias:
            event.setdefault(f"internal#{ctx.event_id_alias}", event_id)
        if ctx.event_counter_alias:
            event.setdefault(f"internal#{ctx.event_counter_alias}", self._event_counter)
        return event_id

    def pool(self, event):
        """Run the POOL views of one event; returns {view name: result}."""
        return self._run(self.pool_views, event, {})

    def reduce(self, event, pool_results):
        """Run the per-event REDUCE-stage views, given the POOL results."""
        results = self._run(self.reduce_views, event, pool_results)
        if self._latest_keys:
            self._remember(event, results, pool_results)
        return results

    def process(self, event):
        """POOL then REDUCE for one event, as the pipeline does; all results."""
        self.prepare(event)
        results = self.pool(event)
        results.update(self.reduce(event, results))
        return results

    def step(self):
        """End an operator step: run the STEP views; returns their results."""
        results = {}
        for view in self.step_views:
            if view.trigger == "event":
                t0 = perf_counter()
                value = self._guard(view, view.on_step, "step")
                dt = perf_counter() - t0
                record = self._timing(view.name)
                record[SECONDS] += dt
                record[FIRST + bisect_left(BOUNDS, dt)] += 1
                if value is not None:
                    results[view.name] = value
                    self.counts[view.name] += 1
            else:
                results.update(self._run([view], self.latest, results, "step"))
        self._remember({}, results, {})
        return results

    def action(self, name):
        """Run the ACTION view `name` and what depends on it; None if unknown."""
        if name not in self.ctx.views or self.ctx.views[name].trigger != "action":
            return None
        chain = [self.ctx.views[name]] + [
            v for v in self.action_views if v.name != name
            and self._depends_on(v, name)]
        return self._run(chain, self.latest, {}, "action")

    def run_async(self, inputs, event_id=None, views=None):
        """Run the async views on `inputs` ({view name: latest result}).

        The ASYNC stage calls this on the newest results REDUCE had when it
        asked; :func:`metropc.run` calls it after each event (in-process,
        nothing is skipped there).
        """
        return self._run(self.async_views if views is None else views,
                         {"internal#event_id": event_id}, dict(inputs), event_id)

    def reset(self, names=None):
        """Clear the accumulated state of the views `names` (None: all of them).

        Returns the names of the views that were reset; unknown names are
        left out.  A view whose reset fails is reported like a failing
        view, and the others are reset all the same.
        """
        views = self.ctx.views
        chosen = list(views) if not names else [n for n in names if n in views]
        for name in chosen:
            self._guard(views[name], views[name].reset, "reset")
        return chosen

    def reset_on(self, kind):
        """Reset the views whose ``reset_on`` is `kind` ('run' or 'step')."""
        names = [n for n, v in self.ctx.views.items() if getattr(v, "reset_on", None) == kind]
        return self.reset(names) if names else []

    # -- internals ---------------------------------------------------------------
    def _depends_on(self, view, name):
        for arg in view.args:
            dep = getattr(arg.path, "view_name", None)
            if dep is None:
                continue
            if dep == name or self._depends_on(self.ctx.views[dep], name):
                return True
        return False

    def _remember(self, event, results, pool_results):
        latest = self.latest
        for key in self._latest_keys:
            if key.startswith("view#"):
                name = key[5:]
                value = results.get(name, pool_results.get(name, _MISSING))
            else:
                value = event.get(key, _MISSING)
            if value is not _MISSING:
                latest[key] = value

    def _run(self, views, data, known, event_id=None):
        """Run `views` in order over `data`; `known` holds earlier results."""
        results = {}
        self.failed_now = []  # views that raise in this pass (read by POOL workers)
        timings = self.timings
        if event_id is None:
            event_id = data.get("internal#event_id")
        for view in views:
            if not view.args and view.trigger == "event":
                continue  # no input can trigger it (contexts add `_: 'internal#train_id'`)
            kwargs = {}
            for arg, key, name in self._inputs[view.name]:
                if name is not None:
                    value = results.get(name, known.get(name, _MISSING))
                    if value is _MISSING and view.trigger != "event":
                        value = data.get(key, _MISSING)
                else:
                    value = data.get(key, _MISSING)
                if value is _MISSING:
                    if not arg.optional:
                        break
                    value = arg.default
                kwargs[arg.name] = value
            else:
                # Timed here, around the view's own code only: two clock
                # reads, a lookup, a bisect and two increments per call.
                t0 = perf_counter()
                try:  # (_guard, inline: this runs per view and event)
                    raw = view.kernel(**kwargs)
                    value = None if raw is None else view.process(raw)
                except BaseException as exc:  # noqa: BLE001 - a failing view is never fatal
                    if isinstance(exc, KeyboardInterrupt) and operator_interrupt(exc):
                        raise
                    value = self._failed(view, exc, event_id)
                    self.failed_now.append(view.name)
                dt = perf_counter() - t0
                record = timings.get(view.name)
                if record is None:
                    record = timings[view.name] = new_record()
                record[SECONDS] += dt
                record[FIRST + bisect_left(BOUNDS, dt)] += 1
                if value is not None:
                    results[view.name] = value
                    self.counts[view.name] += 1
        return results

    def _guard(self, view, fn, event_id):
        """Run `fn` for `view`; a failure is the view's, reported and counted.

        Any BaseException counts as the view's failure, SystemExit and
        GeneratorExit included: a kernel calling ``sys.exit()`` must not end
        a POOL worker or the REDUCE stage, and the other views go on.  Only
        the operator's KeyboardInterrupt passes (Ctrl-C, a stage told to
        stop: :func:`metropc.error.operator_interrupt`), since it is meant
        for the process; one the kernel raised itself is its failure.
        """
        try:
            return fn()
        except BaseException as exc:  # noqa: BLE001 - a failing view is never fatal
            if isinstance(exc, KeyboardInterrupt) and operator_interrupt(exc):
                raise
            return self._failed(view, exc, event_id)

    def _failed(self, view, exc, event_id):
        """Count and report a failure of `view`; its result is None."""
        self.errors[view.name] += 1
        self._timing(view.name)[ERRORS] += 1
        self.reporter.report(view, exc, event_id, self.ctx.path)
        return None

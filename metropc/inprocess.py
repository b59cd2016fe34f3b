"""``metropc.run``: a context over recorded events, in this process.

This is what notebooks and tests use.  It has the pipeline's semantics
(POOL views, then REDUCE views in event order, STEP views at step
boundaries) without processes or sockets.
"""

from __future__ import annotations

import logging
import os

from .core import Context
from .engine import STEP, Action, Engine
from .inputs import UnseenInputs
from .messages import RUN_PATH

log = logging.getLogger(__name__)

__all__ = ["run", "load_context"]


def load_context(context, parameters=None, **kwargs):
    """A Context from a Context, a file path or a source string.

    `parameters` are checked (:meth:`Context.check_parameters`): an unknown
    name or a value that does not fit raises ParameterError.
    """
    if isinstance(context, Context):
        if parameters:
            # Raises UnknownParameterError (a KeyError) / ParameterError.
            context.update_parameters(context.check_parameters(parameters))
        return context
    if isinstance(context, os.PathLike) or (
            isinstance(context, str) and "\n" not in context and context.endswith(".py")):
        return Context.from_file(context, parameters=parameters, **kwargs)
    return Context(context, parameters=parameters, **kwargs)


def run(context, events, *, parameters=None):
    """Run `context` over `events`; yield ``(event_id, results)`` per event.

    Parameters
    ----------
    context : Context, path or str
        A Context, the path of a context file, or context source.
    events : iterable
        Dicts mapping path strings to values.  ``metropc.STEP`` in the
        stream ends an operator step (yields ``(metropc.STEP, results)``
        with the STEP views' results); ``metropc.Action('name')`` runs an
        ACTION view (yields ``(action, results)``).  Where the
        ``internal#run`` of the events changes to a run number (run files
        do that), a run starts: views with ``reset_on='run'`` (the
        builtins' default) start empty, as in the pipeline.
    parameters : dict, optional
        Parameter values overriding those the context declares.

    A view that raises is reported (logged with file:line) and skipped;
    ``results`` maps view name to result for every view that produced one
    for that event, COMPUTE views included.  A required input path that
    none of the first 20 events has (a misspelled path: its views never
    run) is named in a warning, with the closest path the events have.
    """
    ctx = load_context(context, parameters)
    engine = Engine(ctx)
    latest = {}  # the newest results the async views read

    def with_async(results, event_id):
        # In-process, async views run after every event, on its results
        # (the pipeline's ASYNC stage runs them at most once per interval,
        # on the newest results, skipping the ones in between).
        if engine.async_views:
            latest.update((n, results[n]) for n in engine.async_inputs if n in results)
            results.update(engine.run_async(latest, event_id))
        return results

    run = None
    unseen = UnseenInputs(ctx)  # names a misspelled path (a view that never runs)
    for event in events:
        if event is STEP:
            yield STEP, with_async(engine.step(), None)
        elif isinstance(event, Action):
            yield event, with_async(engine.action(event.view_name) or {}, None)
        else:
            event = dict(event)
            number = event.get(RUN_PATH)
            if number != run:  # a run starts: as in the pipeline, views
                if number is not None:  # with reset_on='run' start empty
                    engine.reset_on("run")
                run = number
            for message in unseen.note(event):
                log.warning("%s", message)
            results = engine.process(event)
            yield event["internal#event_id"], with_async(results, event["internal#event_id"])
    for message in unseen.finish():
        log.warning("%s", message)

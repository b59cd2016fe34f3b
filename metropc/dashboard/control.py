"""What the dashboard may change in a pipeline: parameters, actions, resets.

The output address only lets the dashboard *watch*.  Changing parameters
and running ACTION views needs the frontend's control side, which only the
process running the pipeline has; ``metropc-run --dashboard`` passes its
:class:`metropc.pipeline.Pipeline`, and an embedding frontend may pass its
:class:`metropc.frontend.ThreadedFrontend`.  :class:`Control` adapts either
(or anything with the same methods) and also reads the context's current
parameters and the stages' error messages, when the object has them.
"""

from __future__ import annotations

import ast
import logging
import re

from ..roi import ROI_TYPES

__all__ = ["Control", "parse_error", "parse_value", "roi_info"]

log = logging.getLogger(__name__)

#: ``ctx.py:12:`` at the start of a message (after an optional ``[stage]``).
_LOCATION = re.compile(r"(?:^|\s)(?P<file>[^\s:\[\]][^\s:]*):(?P<line>\d+):")

READ_ONLY_NOTE = ("read-only: this dashboard only has the pipeline's output address. "
                  "Start it with `metropc-run CONTEXT --dashboard PORT` to edit "
                  "parameters and run actions.")


def parse_value(text):
    """A parameter value typed by the user: a Python literal, else the text."""
    if not isinstance(text, str):
        return text
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def parse_error(message):
    """``{"text", "file", "line"}`` of a stage error message."""
    text = str(message)
    m = _LOCATION.search(text.split("\n", 1)[0])
    if m is None:
        return {"text": text, "file": None, "line": None}
    return {"text": text, "file": m.group("file"), "line": int(m.group("line"))}


def roi_info(value):
    """``{"kind": "rect"|"line", fields...}`` of an ROI parameter value, else None.

    The page draws these on image panels; the fields are the dataclass's.
    """
    if not isinstance(value, ROI_TYPES):
        return None
    return {"kind": "rect" if type(value).__name__ == "RectROI" else "line",
            **value.to_dict()}


def _first_line(text):
    for line in str(text or "").strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def _short_path(arg):
    """What a histogram's argument reads, short enough for an axis label."""
    spec = str(getattr(arg, "spec", "") or "")
    if "[" in spec and spec.endswith("]"):
        short = spec[spec.rindex("[") + 1:-1]
    elif "#" in spec:
        short = spec.split("#", 1)[1].rsplit(".", 1)[-1]
    else:
        short = spec  # a view name
    name = str(getattr(arg, "name", "") or "")
    return name if not short or short == name else f"{name} ({short})"


class Control:
    """Adapter over a Pipeline, a ThreadedFrontend, or nothing (read-only)."""

    def __init__(self, target=None):
        self.target = target
        self._sent: dict = {}   # parameters sent through a frontend without a context

    @property
    def enabled(self) -> bool:
        return self.target is not None

    @property
    def note(self) -> str:
        return "" if self.enabled else READ_ONLY_NOTE

    def _context(self):
        return getattr(self.target, "ctx", None)

    def parameters(self) -> dict | None:
        """Current parameters ``{name: value}``, None if unknown."""
        if self.target is None:
            return None
        ctx = self._context()
        params = getattr(ctx, "parameters", None)
        if isinstance(params, dict):
            return dict(params)
        params = getattr(self.target, "parameters", None)
        if isinstance(params, dict):
            return {**params, **self._sent}
        return dict(self._sent) if self._sent else None

    def errors(self) -> list[str]:
        errors = getattr(self.target, "errors", None)
        try:
            return [str(e) for e in list(errors or ())]
        except TypeError:
            return []

    def histogram_views(self) -> frozenset[str]:
        """Names of the views whose implementation is a histogram."""
        ctx = self._context()
        views = getattr(ctx, "views", None)
        if not isinstance(views, dict):
            return frozenset()
        return frozenset(name for name, view in views.items()
                         if any(c.__name__.endswith("HistogramView")
                                for c in type(view).__mro__))

    def context_path(self) -> str | None:
        """The context file's path, which keys the page's saved layout."""
        path = getattr(self._context(), "path", None)
        return str(path) if path else None

    def view_info(self) -> dict[str, dict]:
        """``{view: {"doc": first doc line, "binned": what a histogram bins}}``.

        The index carries only a view's label; its docstring and, for
        histograms, the argument that was binned are known only from the
        context, so only a dashboard with control can show them.
        """
        views = getattr(self._context(), "views", None)
        if not isinstance(views, dict):
            return {}
        info = {}
        for name, view in views.items():
            entry = {}
            doc = _first_line(getattr(view, "doc", None))
            if doc:
                entry["doc"] = doc
            if any(c.__name__.endswith("HistogramView") for c in type(view).__mro__):
                args = getattr(view, "args", None) or []
                if args:
                    entry["binned"] = _short_path(args[0])
            if entry:
                info[name] = entry
        return info

    def set_parameters(self, values: dict) -> None:
        """Send parameter values to every stage; ValueError for unknown names."""
        if self.target is None:
            raise PermissionError(READ_ONLY_NOTE)
        ctx = self._context()
        check = getattr(ctx, "check_parameters", None)
        if check is not None:  # names and types, as on the command line
            values = check(values)
        known = self.parameters()
        if ctx is not None and known is not None:
            unknown = sorted(set(values) - set(known))
            if unknown:
                raise ValueError("unknown parameter(s): " + ", ".join(unknown))
        setter = getattr(self.target, "set_parameters", None)
        if setter is not None:
            setter(**values)
        else:
            self.target.queue_to_all(b"params", dict(values))
        self._sent.update(values)

    def action(self, name: str) -> None:
        """Run the ACTION view `name` in REDUCE."""
        if self.target is None:
            raise PermissionError(READ_ONLY_NOTE)
        runner = getattr(self.target, "action", None)
        if runner is not None:
            runner(name)
        else:
            self.target.queue_to("reduce", b"action", {"view_name": name})

    def reset(self, views=()) -> None:
        """Forget what the accumulating `views` (all if empty) have gathered.

        Uses ``Pipeline.reset(*views)`` when the target has it, else the
        frontend opcode ``b"reset"`` to REDUCE, where accumulating views
        live (an empty list means every view).
        """
        if self.target is None:
            raise PermissionError(READ_ONLY_NOTE)
        views = [str(v) for v in views]
        resetter = getattr(self.target, "reset", None)
        if resetter is not None:
            resetter(*views)
        elif hasattr(self.target, "queue_to"):
            self.target.queue_to("reduce", b"reset", {"views": list(views)})
        else:
            raise ValueError("this pipeline cannot reset views (it has no reset())")
        log.info("reset %s", ", ".join(views) if views else "all views")

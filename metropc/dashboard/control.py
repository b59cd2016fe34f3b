"""What the dashboard may change in a pipeline: parameters and actions.

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
import re

__all__ = ["Control", "parse_error", "parse_value"]

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

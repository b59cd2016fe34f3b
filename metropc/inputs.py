"""Inputs a context wants that no event has: a misspelled path, named.

A view whose required input is missing from an event does not run for that
event: right for a device that sends only now and then, and silent for a
typo in the path, the commonest reason a new view shows nothing.  The
sources name what they do not have (docs/sources.md); events made by hand
(a notebook over EXtra-data, a test) go through :func:`metropc.run` only,
which asks :class:`UnseenInputs` what to say.
"""

from __future__ import annotations

import difflib

from .enums import ViewStage

__all__ = ["UnseenInputs"]

#: Distinct event keys kept for the "did you mean" hints.
_MAX_OFFERED = 10_000


class UnseenInputs:
    """The required input paths that none of the first events had.

    Only ``view#`` and ``internal#`` paths are not watched (views provide
    the first, the engine fills in some of the second), nor optional
    arguments (a view that runs without them).  Checking an event costs a
    lookup per path not seen yet, and nothing once every path was seen or
    the verdict was given.
    """

    #: Events after which a path none of them had is named.
    AFTER = 20

    def __init__(self, ctx, after: int = AFTER):
        self.after = after
        self.events = 0
        #: path -> the views that need it, for the paths not seen yet
        self.unseen: dict[str, list] = {}
        for view in ctx.order:
            if view.trigger != "event" or view.stage is ViewStage.ASYNC:
                continue
            for arg in view.args:
                key = str(arg.path)
                if not arg.optional and not key.startswith(("view#", "internal#")):
                    self.unseen.setdefault(key, []).append(view)
        self.offered: set[str] = set()
        self.done = not self.unseen

    def note(self, event) -> list[str]:
        """Count one event; what to say now (once, after :attr:`after` events)."""
        if self.done:
            return []
        for key in [k for k in self.unseen if k in event]:
            del self.unseen[key]
        if len(self.offered) < _MAX_OFFERED:
            self.offered.update(k for k in event if isinstance(k, str))
        self.events += 1
        if not self.unseen:
            self.done = True
        return self.finish() if self.events >= self.after else []

    def finish(self) -> list[str]:
        """What to say at the end of fewer events than :attr:`after`."""
        if self.done or not self.events:
            return []
        self.done = True
        return [self._message(path, views) for path, views in sorted(self.unseen.items())]

    def _message(self, path: str, views: list) -> str:
        names = ", ".join(f"'{v.name}' ({v.filename}:{v.lineno})" for v in views)
        offered = [k for k in self.offered if not k.startswith("internal#")]
        close = difflib.get_close_matches(path, offered, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return (f"none of the first {self.events} event(s) has {path!r}{hint}; "
                f"view(s) needing it did not run: {names}")

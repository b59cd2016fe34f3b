"""Names that context code finds as globals, importable for IDEs and linters.

A context file may write ``from metropc.context import ctx, View, ViewGroup,
ViewPrototype, parameters`` so that editors know these names.  When the file
is loaded by metropc, ``ctx`` and ``parameters`` act on the context being
loaded; outside of loading they raise a clear error.
"""

from __future__ import annotations

from .roi import LineROI, RectROI
from .view import View
from .viewdef import Parameter, ViewGroup, ViewPrototype, current_context

__all__ = ["ctx", "View", "ViewGroup", "ViewPrototype", "Parameter", "parameters",
           "require_feature", "require_version", "set_view_docs",
           "increase_view_counts", "RectROI", "LineROI"]


class _CurrentContext:
    """Forwards attribute access to the context being loaded."""

    def __getattr__(self, name):
        return getattr(current_context(), name)

    def __repr__(self):
        ctx = current_context(required=False)
        return f"<current context: {ctx!r}>"


ctx = _CurrentContext()


def parameters(**values):
    current_context().declare_parameters(**values)


def require_feature(*features):
    current_context().require_feature(*features)


def require_version(version_str):
    current_context().require_version(version_str)


def set_view_docs(name, label, docstring=None):
    current_context().set_view_docs(name, label, docstring)


def increase_view_counts(view_name, delta):
    current_context().increase_view_counts(view_name, delta)

"""The Context: context source turned into views, paths and parameters.

A Context is built the same way in every stage (frontend, pool workers,
reduce) from the same source, so building one must be deterministic and free
of side effects beyond what the context code itself does.  Everything
another process needs to rebuild it is in :meth:`Context.to_dict`, and
:meth:`Context.from_dict` rebuilds it.
"""

from __future__ import annotations

import ast
import collections
import difflib
import io
import linecache
import logging
import numbers
import os
import sys
import tokenize
import types
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from ._version import __version__
from .enums import ContextStage, ViewStage
from .error import (ContextError, ContextSyntaxError, ParameterError, PathResolutionError,
                    UnknownParameterError, ViewDefError, _context_frame_lineno,
                    operator_interrupt)
from .euxfel import KaraboPath  # noqa: F401  (registers the karabo# type)
from .path import Path, ViewPath, split_type
from .roi import ROI_TYPES, LineROI, RectROI
from .view import View
from .viewdef import Parameter, ViewDecorator, ViewGroup, ViewPrototype, _loading

__all__ = ["Context", "View", "Path", "read_context_file"]

log = logging.getLogger(__name__)

#: Features this implementation always provides.
BUILTIN_FEATURES = ("karabo",)

#: The order in which a view's trigger can be raised by its dependencies.
_STAGE_RANK = {ViewStage.POOL: 0, ViewStage.REDUCE: 1, ViewStage.STEP: 2,
               ViewStage.ACTION: 2, ViewStage.ASYNC: 3}


class Context:
    """Online analysis context: the views defined by one context source.

    Parameters
    ----------
    source : str
        Python source of the context.
    path : str
        File name used in tracebacks and error messages.
    stage : ContextStage
        The stage this context object lives in.  Only the frontend rejects
        path types it does not know; other stages accept them as opaque keys.
    version : int
        Context version, sent with every event as ``internal#ctx_version``.
    parameters : dict, optional
        Values overriding those the source declares with ``parameters()``
        (and group parameters, ``'<instance>.<name>'``).  They are checked
        like :meth:`check_parameters` does: an undeclared name or a value
        that does not fit its declaration raises :class:`ParameterError`.
    features : list of str
        Optional capabilities the frontend provides, for ``require_feature``.
    event_alias, event_id_alias, event_counter_alias : str
        Names of the event concept: ``event_alias='train'`` names the index
        entry counting events ``internal#train``; ``event_id_alias='train_id'``
        makes ``internal#train_id`` and ``internal#event_id`` the same value;
        ``event_counter_alias`` names an internal path holding a running count
        of events (``internal#<alias>``).
    """

    def __init__(self, source, path="<ctx>", stage=ContextStage.FRONTEND, version=0,
                 parameters=None, features=[], event_alias="event",  # noqa: B006
                 event_id_alias=None, event_counter_alias=None):
        self.source = source
        self.path = str(path)
        self.stage = ContextStage(stage)
        self.version = version
        self.features = list(features)
        self.event_alias = event_alias
        self.event_id_alias = event_id_alias
        self.event_counter_alias = event_counter_alias
        self.views: dict[str, View] = {}
        self.parameters: dict = {}
        self.view_docs: dict[str, tuple] = {}
        self.view_counts = collections.Counter()
        self.groups: list[ViewGroup] = []
        self._overrides = dict(parameters or {})
        self._group_params: dict[str, tuple] = {}
        #: name -> (declared value, line of the declaration or None)
        self._declared: dict[str, tuple[Any, int | None]] = {}
        self._view_lines: dict[str, int] = {}
        self._load()

    # -- loading -------------------------------------------------------------
    def _namespace(self):
        module = types.ModuleType(f"metropc_context_{id(self):x}")
        ns = module.__dict__
        ns.update(
            __file__=self.path, ctx=self, View=View, ViewGroup=ViewGroup,
            ViewPrototype=ViewPrototype, Parameter=Parameter,
            parameters=self.declare_parameters,
            require_feature=self.require_feature, require_version=self.require_version,
            set_view_docs=self.set_view_docs, increase_view_counts=self.increase_view_counts,
            np=np, xr=xr, RectROI=RectROI, LineROI=LineROI)
        return module

    def _load(self):
        lines = self.source.splitlines(keepends=True)
        linecache.cache[self.path] = (len(self.source), None, lines, self.path)
        try:
            # dont_inherit: context code must not get this module's
            # `from __future__ import annotations` (annotations are evaluated).
            code = compile(self.source, self.path, "exec", dont_inherit=True)
        except SyntaxError as e:
            raise ContextSyntaxError(e, self.path) from None
        module = self._namespace()
        self.namespace = module.__dict__
        token = _loading.set(self)
        sys.modules[module.__name__] = module  # for dataclasses in contexts
        try:
            exec(code, self.namespace)
            self._check_bare_views()
            self._bind_imported_globals()
            for name, (label, _) in self.view_docs.items():
                if name in self.views:  # set_view_docs() before the view was defined
                    self.views[name].label = label
            self._collect_group_parameters()
            self._check_overrides_declared()
            # These run context code too: custom path types and view_impl classes.
            self._resolve_paths()
            self.order = self._sort_views()
            self._assign_stages()
        except ContextError:
            raise
        except KeyboardInterrupt as e:
            if operator_interrupt(e):
                # Ctrl-C belongs to the process (the frontend's operator),
                # not to the context.
                raise
            raise self._load_error(e) from e
        except BaseException as e:
            # Anything else is the context's failure, SystemExit and
            # GeneratorExit included: `sys.exit()` at the top of a context
            # must not end metropc-run silently or kill a POOL worker.
            raise self._load_error(e) from e
        finally:
            _loading.reset(token)
            sys.modules.pop(module.__name__, None)

    def _check_bare_views(self):
        """``@View`` without an output type (``@View.Scalar``) makes a View
        object that belongs to no context: the function would silently
        never run.  Refused at its line."""
        for name, value in self.namespace.items():
            if type(value) is View and value.kernel is not None:
                code = getattr(value.kernel, "__code__", None)
                raise ViewDefError(
                    f"'{name}' is a bare View, no view of this context: declare a view "
                    "with its output type, such as @View.Scalar, @View.Vector, "
                    "@View.Image or @View.Compute", self.path,
                    code.co_firstlineno if code is not None else None)

    def _load_error(self, exc):
        """The ContextError for `exc` raised by context code while loading.

        It carries `exc`'s traceback, so that frontends which walk
        ``__traceback__`` for frames of the context file (EXtra-foam's
        editor) find the failing line, as they did when such exceptions
        propagated unchanged.
        """
        lineno = _context_frame_lineno(exc.__traceback__, self.path)
        text = str(exc)
        message = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        if isinstance(exc, SystemExit):
            message += " (context code must not exit the process)"
        elif isinstance(exc, KeyboardInterrupt):
            message += " (raised by the context code, not by Ctrl-C)"
        return ContextError(message, self.path, lineno).with_traceback(exc.__traceback__)

    def _bind_imported_globals(self):
        """Replace names imported from :mod:`metropc.context` by this context's.

        ``from metropc.context import ctx`` gives a proxy that only works
        while the source is being loaded; kernels run later, so the module
        globals are rebound to the real objects (aliases included).
        """
        from . import context as importable

        real = {id(importable.ctx): self,
                id(importable.parameters): self.declare_parameters,
                id(importable.require_feature): self.require_feature,
                id(importable.require_version): self.require_version,
                id(importable.set_view_docs): self.set_view_docs,
                id(importable.increase_view_counts): self.increase_view_counts}
        for name, value in list(self.namespace.items()):
            if id(value) in real:
                self.namespace[name] = real[id(value)]

    def _add_view(self, view, filename, lineno):
        """Called by the decorators for each new view."""
        if view.name in self.views:
            first = self._view_lines.get(view.name)
            raise ViewDefError(f"a view named '{view.name}' is already defined "
                               f"(line {first})", filename, lineno)
        self.views[view.name] = view
        self._view_lines[view.name] = lineno

    def _add_group(self, group):
        self.groups.append(group)

    def _collect_group_parameters(self):
        """Expose group parameters as ``<instance name>.<parameter>``."""
        names = {id(v): k for k, v in self.namespace.items() if isinstance(v, ViewGroup)}
        for group in self.groups:
            var = names.get(id(group))
            if var is None:
                continue
            for param in type(group).group_parameters():
                key = f"{var}.{param}"
                self._group_params[key] = (group, param)
                self._declared[key] = (getattr(group, param),
                                       getattr(group, "_metropc_line", None))
                if key in self._overrides:
                    value = self._checked(key, self._overrides[key])
                    self._overrides[key] = value
                    setattr(group, param, value)
                self.parameters[key] = getattr(group, param)

    def _check_overrides_declared(self):
        """Constructor parameters must name declared parameters."""
        for name in self._overrides:
            if name not in self.parameters:
                raise self._unknown_parameter(name)

    def _error_at(self, view, message, cls=PathResolutionError):
        lineno = getattr(view, "decorator_line", None) or view.lineno
        if cls is PathResolutionError:
            return cls(message, view.filename, lineno, view=view)
        return cls(message, view.filename, lineno)

    def _resolve_paths(self):
        for view in self.views.values():
            for arg in view.args:
                arg.path = self._resolve(view, arg.spec)

    def _resolve(self, view, spec):
        kind, body = split_type(spec)
        if kind == "view" or (kind is None and spec in self.views):
            name = body
            if name not in self.views:
                others = [n for n in self.views if n != view.name]
                hint = difflib.get_close_matches(name, others, n=1)
                extra = f"; did you mean 'view#{hint[0]}'?" if hint else ""
                raise self._error_at(
                    view, f"view '{view.name}' needs 'view#{name}' which no view "
                          f"provides{extra}")
            if name == view.name:
                raise self._error_at(view, f"view '{view.name}' uses its own result")
            return ViewPath(f"view#{name}")
        types_ = Path._types
        if kind is not None:
            cls = types_.get(kind)
            if cls is None:
                if self.stage is not ContextStage.FRONTEND:
                    return Path(spec)
                known = ", ".join(sorted(types_))
                raise self._error_at(
                    view, f"view '{view.name}' needs '{spec}' of unknown path type "
                          f"'{kind}#' (known: {known})")
            try:
                return cls(spec)
            except ValueError as e:
                raise self._error_at(view, f"view '{view.name}': {e}") from None
        for cls in types_.values():
            if cls.accepts_bare(spec):
                return cls(spec)
        hint = difflib.get_close_matches(spec, [n for n in self.views if n != view.name], n=1)
        extra = f"; did you mean the view '{hint[0]}'?" if hint else ""
        raise self._error_at(
            view, f"view '{view.name}' needs '{spec}', which is neither a view nor "
                  f"a path of a known type{extra}")

    def _sort_views(self):
        """Views in dependency order; a cycle is an error naming its views."""
        deps = {name: [a.path.view_name for a in v.args if isinstance(a.path, ViewPath)]
                for name, v in self.views.items()}
        order, state = [], {}

        def visit(name, trail):
            if state.get(name) == "done":
                return
            if state.get(name) == "active":
                cycle = trail[trail.index(name):] + [name]
                view = self.views[name]
                lines = ", ".join(f"'{n}' (line {self._view_lines.get(n)})"
                                  for n in cycle[:-1])
                raise self._error_at(view, "views depend on each other in a cycle: "
                                     + " -> ".join(cycle) + f" [{lines}]", ViewDefError)
            state[name] = "active"
            for dep in deps[name]:
                visit(dep, trail + [name])
            state[name] = "done"
            order.append(self.views[name])

        for name in self.views:
            visit(name, [])
        return order

    def _assign_stages(self):
        """Apply the stage rules of docs/contexts.md (section Stages)."""
        for view in self.order:
            if view.stage is ViewStage.FRONTEND:
                raise self._error_at(view, f"view '{view.name}': stage "
                                     f"{view.stage.name} is not implemented", ViewDefError)
            if view.stage is ViewStage.ASYNC:
                self._check_async(view)
                continue
            for arg in view.args:
                dep = self.views.get(getattr(arg.path, "view_name", None))
                if dep is not None and dep.stage is ViewStage.ASYNC:
                    raise self._error_at(
                        view, f"view '{view.name}' needs '{dep.name}', an async view: "
                        "only async views can take async results (they come when "
                        "they are ready, not with each event)", ViewDefError)
            view.trigger = ("action" if view.stage is ViewStage.ACTION else
                            "step" if view.kernel_at_step or _plain_step(view) else "event")
            for arg in view.args:
                if not isinstance(arg.path, ViewPath):
                    continue
                dep = self.views[arg.path.view_name]
                self._raise_stage(view, dep)

    def _check_async(self, view):
        """An async view runs on the latest results of other views."""
        view.trigger = "async"
        for arg in view.args:
            if not isinstance(arg.path, ViewPath):
                raise self._error_at(
                    view, f"view '{view.name}' is async: its inputs are other views' "
                    f"results ('view#name'), not event data ({str(arg.path)!r})",
                    ViewDefError)

    def _raise_stage(self, view, dep):
        # A STEP view's result exists only at a step boundary (on_step or a
        # kernel run there), so whatever consumes it runs there too.
        dep_trigger = "step" if dep.stage is ViewStage.STEP else dep.trigger
        triggers = {view.trigger, dep_trigger} - {"event"}
        if len(triggers) > 1:
            raise self._error_at(view, f"view '{view.name}' mixes inputs of step and "
                                 "action views", ViewDefError)
        if dep_trigger != "event":
            view.trigger = dep_trigger
        wanted = {"event": dep.stage, "step": ViewStage.STEP,
                  "action": ViewStage.ACTION}[dep_trigger]
        if _STAGE_RANK[wanted] > _STAGE_RANK[view.stage]:
            if view.explicit_stage is not None:
                raise self._error_at(
                    view, f"view '{view.name}' is declared stage="
                    f"{view.explicit_stage.name.lower()} but needs '{dep.name}', which "
                    f"runs in stage {dep.stage.name.lower()}", ViewDefError)
            view.stage = wanted

    # -- context API (also injected into the source's globals) ----------------
    def declare_parameters(self, **values):
        """``parameters(name=value, ...)``: declare context parameters.

        Each becomes a global of the context code; values given to the
        Context constructor (or later through ``b"params"``) win.
        """
        lineno = self._caller_line()
        for name, value in values.items():
            self._declared[name] = (value, lineno)
            if name in self._overrides:
                value = self._overrides[name] = self._checked(name, self._overrides[name])
            self.parameters[name] = value
            self.namespace[name] = value

    def check_parameters(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Check parameter values before setting them; returns them coerced.

        Meant for every place where values come from people (command line,
        dashboard, scripts), so that a typo or a wrong value is refused
        with a clear message before it reaches any stage, instead of being
        ignored or making kernels fail on every event.  Nothing is changed;
        pass the result to :meth:`update_parameters` (or ``b"params"``).

        Each name must be declared (``parameters()`` or a group
        ``Parameter``, as ``'<instance>.<name>'``), else
        :class:`UnknownParameterError` lists the declared names with a
        did-you-mean.  Each value must fit the type of the declared value:
        a float takes ints, floats and strings such as ``"0.5"``; an int
        takes integers, whole floats (3.0) and strings of integers (not 1.5);
        a bool takes booleans, 0/1 and the strings true/false/yes/no/on/off/1/0;
        a str takes strings and numbers (as ``str(value)``), not lists.  An
        ROI takes the ROI, a dict of its fields, a sequence of its numbers
        or their text (``"5,6,7,8"``).  Parameters declared with None or
        another non-scalar value (a list) take any value; text for a
        list, tuple or dict is read as a Python literal where it is one.  A
        value that does not fit raises :class:`ParameterError`, naming the
        parameter, its type, the value and the declaring line.
        """
        return {name: self._checked(name, value) for name, value in values.items()}

    def _checked(self, name, value):
        if name not in self._declared:
            raise self._unknown_parameter(name)
        declared, lineno = self._declared[name]
        try:
            return coerce_parameter(value, declared)
        except (TypeError, ValueError) as e:
            kind = _scalar_kind(declared) or type(declared).__name__  # ROI types too
            raise ParameterError(
                f"parameter '{name}' is {_ARTICLE.get(kind, 'a')} {kind} (declared as "
                f"{declared!r}) and cannot take {value!r} ({e})", self.path, lineno,
                name=name, value=value, expected=kind,
                declared=list(self._declared)) from None

    def _unknown_parameter(self, name):
        declared = list(self._declared)
        hint = difflib.get_close_matches(str(name), declared, n=1)
        extra = f"; did you mean '{hint[0]}'?" if hint else ""
        known = ", ".join(declared) if declared else "none"
        return UnknownParameterError(
            f"unknown parameter '{name}'{extra} (this context declares: {known})",
            self.path, None, name=name, declared=declared)

    def update_parameters(self, values: Mapping[str, Any],
                          refused: list | None = None) -> list[str]:
        """Change parameters at run time; returns the names that are unknown.

        Context parameters are globals of the context code, so the next
        kernel call sees the new value.  Group parameters (``grp.name``) are
        set on the group instance.  Values are coerced as
        :meth:`check_parameters` does; one that does not fit its declaration
        is not applied: its ParameterError is appended to `refused`, or
        logged if that is None (this runs in the stages, which must not fail
        on a message: check values with check_parameters first).
        """
        unknown = []
        for name, value in values.items():
            if name in self._declared:
                try:
                    value = self._checked(name, value)
                except ParameterError as e:
                    if refused is None:
                        log.error("%s; keeping %r", e, self.parameters.get(name))
                    else:
                        refused.append(e)
                    continue
            if name in self._group_params:
                group, attr = self._group_params[name]
                setattr(group, attr, value)
            elif name in self.parameters:
                self.namespace[name] = value
            else:
                unknown.append(name)
                continue
            self.parameters[name] = value
            self._overrides[name] = value  # travels with to_dict()
        return unknown

    def require_feature(self, *features):
        """Raise ContextError unless every feature is available here."""
        missing = [f for f in features if f not in self.features and f not in BUILTIN_FEATURES]
        if missing:
            raise ContextError(f"context requires unsupported feature(s): "
                               f"{', '.join(missing)}", self.path, self._caller_line())

    def require_version(self, version_str):
        """Raise ContextError if metropc is older than `version_str`."""
        if _parse_version(__version__) < _parse_version(version_str):
            raise ContextError(f"context requires metropc >= {version_str}, this is "
                               f"{__version__}", self.path, self._caller_line())

    def set_view_docs(self, name, label, docstring=None):
        """Set a label (and docstring, for names that are not views)."""
        self.view_docs[name] = (label, docstring)
        if name in self.views:
            self.views[name].label = label

    def increase_view_counts(self, view_name, delta):
        """Add `delta` to the counts of `view_name` (which need not exist)."""
        self.view_counts[view_name] += int(delta)

    def _caller_line(self):
        frame = sys._getframe(2)
        while frame is not None and frame.f_code.co_filename != self.path:
            frame = frame.f_back
        return frame.f_lineno if frame is not None else None

    # -- introspection and transfer --------------------------------------------
    def get_paths(self):
        """Every distinct Path the views use, in first-use order."""
        seen = {}
        for view in self.views.values():
            for arg in view.args:
                seen.setdefault(str(arg.path), arg.path)
        return list(seen.values())

    def to_dict(self):
        """What another process needs to rebuild this context (:meth:`from_dict`).

        Symbols registered by a frontend (``ViewDecorator.kwargs_symbols``)
        travel too, so worker processes that never imported the frontend's
        module still understand ``View.Image_WithROIs``; their classes are
        sent by reference (module and name) and imported on the other side.
        """
        return {
            "source": self.source, "path": self.path, "version": self.version,
            # Only values that differ from the source's declarations: the
            # rest is rebuilt from the source, and declared values may be
            # instances of classes defined in the context, which cannot be
            # pickled for another process.
            "parameters": dict(self._overrides), "features": list(self.features),
            "event_alias": self.event_alias, "event_id_alias": self.event_id_alias,
            "event_counter_alias": self.event_counter_alias,
            "symbols": {k: dict(v) for k, v in ViewDecorator.kwargs_symbols.items()
                        if k not in _BUILTIN_SYMBOLS},
        }

    @classmethod
    def from_dict(cls, data, stage=ContextStage.POOL):
        """Rebuild a context sent with :meth:`to_dict` in stage `stage`."""
        for name, kwargs in (data.get("symbols") or {}).items():
            ViewDecorator.kwargs_symbols.setdefault(name, kwargs)
        return cls(data["source"], path=data.get("path", "<ctx>"), stage=stage,
                   version=data.get("version", 0), parameters=data.get("parameters"),
                   features=data.get("features", []),
                   event_alias=data.get("event_alias", "event"),
                   event_id_alias=data.get("event_id_alias"),
                   event_counter_alias=data.get("event_counter_alias"))

    @classmethod
    def from_file(cls, filename, **kwargs):
        """Load a context file; its name appears in every error message."""
        return cls(read_context_file(filename), path=str(filename), **kwargs)

    def views_in(self, *stages):
        """Views of the given stages, in dependency order."""
        return [v for v in self.order if v.stage in stages]

    def __repr__(self):
        return (f"<Context {self.path!r} v{self.version} stage={self.stage.name} "
                f"views={len(self.views)}>")


_BUILTIN_SYMBOLS = frozenset(ViewDecorator.kwargs_symbols)

_ARTICLE = {"bool": "a", "int": "an", "float": "a", "str": "a"}
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


def _scalar_kind(declared):
    """'bool', 'int', 'float', 'str', or None for values that take anything."""
    if isinstance(declared, (bool, np.bool_)):
        return "bool"
    if isinstance(declared, numbers.Integral):
        return "int"
    if isinstance(declared, numbers.Real):
        return "float"
    if isinstance(declared, str):
        return "str"
    return None


#: Seconds after which a context's top level that has not returned is said
#: (metropc-run's first load, and a reload of an edit).
SLOW_LOAD = 5.0


def context_file_stamp(filename) -> tuple[int, int] | None:
    """``(mtime, size)`` of a context file, which an edit changes; None if
    it cannot be read.  How the file is watched for edits."""
    try:
        st = os.stat(filename)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def read_context_file(filename) -> str:
    """The text of a context file, decoded as Python decodes source (UTF-8,
    or the encoding its coding comment names).

    A file that is not text in that encoding (an editor saved it as
    Latin-1, or it is binary) raises ContextError at the line of the first
    bad byte, so that a reload refuses it like any broken edit.  OSError
    if it cannot be read.
    """
    with open(filename, "rb") as f:
        data = f.read()
    path = str(filename)
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    except SyntaxError as e:  # an unknown coding comment
        raise ContextError(f"not Python source text ({e.msg})", path, None) from None
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise ContextError(f"not {encoding} text: byte 0x{data[e.start]:02x} at column "
                           f"{column}; save the file as UTF-8", path, line) from None


def coerce_parameter(value: Any, declared: Any) -> Any:
    """`value` as the type of the `declared` parameter value.

    Raises TypeError/ValueError saying why it does not fit; see
    :meth:`Context.check_parameters` for the rules.  A parameter declared
    with an ROI (metropc.roi) takes that ROI type, a dict of its fields or a
    sequence of its numbers (what the dashboard and ``--param`` send).
    """
    if isinstance(declared, ROI_TYPES):
        return type(declared).coerce(value)
    kind = _scalar_kind(declared)
    if kind is None:
        if isinstance(value, str) and isinstance(declared, (list, tuple, dict)):
            # a command line's text (metropc-client --set bins=[1,2,4]), read
            # as metropc-run --param reads it: a Python literal, else the text
            try:
                return ast.literal_eval(value)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                return value
        return value
    if kind == "str":
        if isinstance(value, str):
            return value
        if isinstance(value, numbers.Number):  # a number typed into a text field
            return str(value)
        raise TypeError(f"got {type(value).__name__}, not a string")
    if isinstance(value, str):
        text = value.strip()
        if kind == "bool":
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError("use true/false, yes/no, on/off or 1/0")
        try:
            return int(text) if kind == "int" else float(text)
        except ValueError:
            raise ValueError(f"not a number of type {kind}") from None
    if kind == "bool":
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        if isinstance(value, numbers.Integral) and value in (0, 1):
            return bool(value)
        raise TypeError(f"got {type(value).__name__}")
    if isinstance(value, (bool, np.bool_)):
        raise TypeError("got a bool")
    if kind == "int":
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, numbers.Real) and float(value).is_integer():
            return int(value)  # 3.0, as a slider or JSON sends a whole number
        if isinstance(value, numbers.Real):
            raise ValueError("not a whole number")
        raise TypeError(f"got {type(value).__name__}, not an integer")
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(f"got {type(value).__name__}")


def _plain_step(view):
    """A view declared stage=STEP without a step hook runs its kernel there."""
    return view.stage is ViewStage.STEP and type(view).on_step is View.on_step


def _parse_version(text):
    try:
        from packaging.version import Version
        return Version(text)
    except ImportError:
        return tuple(int(p) if p.isdigit() else 0 for p in text.split("."))


"""How context code declares views: ``View.<Output>`` decorators, groups, prototypes.

The decorators only *record*: a decorated module-level function becomes a
view object registered with the context being loaded (found through a
context variable, so several contexts can load in one process), and the
function itself is returned unchanged.  Methods inside a :class:`ViewGroup`
class body are only marked; each group instance turns the marks into views
with its own name and path fields.  Keyword errors are raised at decoration
time as :class:`~metropc.error.ViewDefError` naming the decorator's line.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import re
import sys
import types

from . import builtin
from .enums import ViewOutput, ViewStage
from .error import ViewDefError
from .view import View, _as_stage, _ViewMeta

__all__ = ["ViewDecorator", "Parameter", "ViewGroup", "ViewPrototype",
           "current_context"]

#: The Context whose source is being executed right now.
_loading = contextvars.ContextVar("metropc_loading_context", default=None)

#: Keywords the decorators understand themselves; all others go to view_impl.
DECORATOR_KEYWORDS = ("name", "hidden", "rank", "view_impl", "stage", "label", "doc",
                      "reset_on", "interval")

_GENERIC_OUTPUTS = {"COMPUTE", "SCALAR", "VECTOR", "MATRIX", "IMAGE", "POINTS"}


def current_context(required=True):
    """The context being loaded; raises outside of context code if required."""
    ctx = _loading.get()
    if ctx is None and required:
        raise RuntimeError("this only works inside context code being loaded "
                           "by metropc")
    return ctx


def _caller_line(depth=2):
    """File and line of the context code that called the decorator."""
    frame = sys._getframe(depth)
    return frame.f_code.co_filename, frame.f_lineno


def _outermost_line(filename):
    """Line of the outermost frame in `filename`: where a group is created."""
    frame, line = sys._getframe(1), None
    while frame is not None:
        if frame.f_code.co_filename == filename:
            line = frame.f_lineno
        frame = frame.f_back
    return line


def _in_class_body(func):
    """True for a function defined directly in a class body (a group method)."""
    parts = func.__qualname__.split(".")
    return len(parts) > 1 and parts[-2] != "<locals>"


class ViewDecorator:
    """``View.Scalar``, ``View.Vector_MovingAverage(N=20)`` and friends.

    Used bare (``@View.Scalar``) or called with keywords
    (``@View.Scalar(name='x')``), which returns a new decorator with those
    keywords added.  ``kwargs_symbols`` maps the symbols usable after the
    output name (``_Histogram``) to the keywords they add; frontends register
    their own (``ViewDecorator.kwargs_symbols.update(WithROIs=dict(
    view_impl=ImageWithROIsView))``).
    """

    kwargs_symbols: dict[str, dict] = {}

    #: Whether views are created (View) or only templates (ViewPrototype).
    prototype = False

    def __init__(self, output=None, kwargs=None, origin=None):
        self.output = output
        self.kwargs = dict(kwargs or {})
        self.origin = origin

    @classmethod
    def from_attribute(cls, attr):
        """Parse ``Output[_Hint][_Symbol...]`` into a decorator."""
        tokens = attr.split("_")
        generic = tokens[0].upper()
        if generic not in _GENERIC_OUTPUTS:
            raise AttributeError(
                f"View.{attr}: unknown output '{tokens[0]}'; use one of Compute, "
                "Scalar, Vector, Matrix, Image, Points")
        output = ViewOutput[generic]
        kwargs = {}
        rest = tokens[1:]
        while rest:
            hinted = f"{generic}_{rest[0].upper()}"
            if not kwargs and hinted in ViewOutput.__members__ and output is ViewOutput[generic]:
                output = ViewOutput[hinted]
                rest = rest[1:]
                continue
            # Longest symbol first, so that symbols may contain underscores.
            for n in range(len(rest), 0, -1):
                symbol = "_".join(rest[:n])
                if symbol in cls.kwargs_symbols:
                    kwargs.update(cls.kwargs_symbols[symbol])
                    rest = rest[n:]
                    break
            else:
                raise AttributeError(f"View.{attr}: " + _unknown_token(rest[0], generic,
                                                                       cls.kwargs_symbols))
        return cls(output, kwargs, origin=attr)

    def __call__(self, func=None, /, **kwargs):
        if func is None:
            new = type(self)(self.output, {**self.kwargs, **kwargs}, self.origin)
            new.prototype = self.prototype  # ViewPrototype.Image(name=...) stays one
            return new
        if kwargs or not callable(func):
            raise TypeError(f"View.{self.origin} takes keyword arguments only")
        filename, lineno = _caller_line()
        if isinstance(func, type):
            raise ViewDefError(f"View.{self.origin} decorates a function, not a class "
                               f"({func.__name__!r}): the view's code is a function of "
                               "its inputs", filename, lineno)
        self._check_keywords(self.kwargs.get("name", getattr(func, "__name__", "?")),
                             filename, lineno)
        spec = ViewSpec(func, self.output, self.kwargs, filename, lineno, self.origin)
        if _in_class_body(func):
            # A group method: remember it; instances make the views.
            return spec.as_prototype() if self.prototype else spec.mark(func)
        if self.prototype:
            return spec.as_prototype()
        spec.create(current_context(), owner=None)
        return func

    def _check_keywords(self, name, filename, lineno):
        impl = self.kwargs.get("view_impl", View)
        if not (isinstance(impl, type) and issubclass(impl, View)):
            raise ViewDefError(f"view_impl={impl!r} is not a View subclass",
                               filename, lineno)
        if "stage" in self.kwargs:
            try:
                _as_stage(self.kwargs["stage"])
            except ValueError as e:
                raise ViewDefError(f"view '{name}': {e}", filename, lineno) from None


def _unknown_token(token, generic, symbols):
    """Why `token` after output `generic` is refused: a hint of another
    output is named as such; anything else lists what there is."""
    hints = {name.split("_", 1)[1] for name in ViewOutput.__members__ if "_" in name}
    if token.upper() in hints:
        owners = [n.split("_")[0].title() for n in ViewOutput.__members__
                  if n.endswith("_" + token.upper())]
        own = [n.split("_", 1)[1].title() for n in ViewOutput.__members__
               if n.startswith(generic + "_")]
        return (f"'{token}' is a hint of {' and '.join(owners)}, not of {generic.title()} "
                f"({generic.title()} takes " + (", ".join(own) or "no hint") + ")")
    return (f"'{token}' is neither an output hint nor a registered symbol "
            f"({', '.join(sorted(symbols))})")


class ViewSpec:
    """Everything a decorator recorded about one kernel."""

    def __init__(self, func, output, kwargs, filename, lineno, origin):
        self.func = func
        self.output = output
        self.kwargs = kwargs
        self.filename = filename
        self.lineno = lineno
        self.origin = origin

    def mark(self, func):
        specs = list(getattr(func, "__metropc_views__", ()))
        specs.append(self)
        func.__metropc_views__ = specs
        return func

    def as_prototype(self):
        return PrototypeMethod(self)

    def create(self, ctx, owner=None, fields=None):
        """Instantiate the view for `ctx` (bound to group `owner` if any)."""
        kwargs = dict(self.kwargs)
        impl = kwargs.pop("view_impl", View)
        kernel = self.func
        if owner is not None:
            kernel = _with_group_globals(kernel, owner, fields)
            if _takes_self(kernel):
                kernel = types.MethodType(kernel, owner)
        elif fields:  # a module-level prototype call: its fields as bare names too
            kernel = _with_group_globals(kernel, None, fields)
        name = kwargs.pop("name", None)
        if name is None:
            name = self.func.__name__
        if fields:
            try:
                name = name.format(**fields)
            except (KeyError, IndexError, ValueError) as e:
                raise ViewDefError(f"view name template {name!r} cannot be filled: "
                                   f"missing field {e}", self.filename, self.lineno) from None
        if impl._abstract:
            raise ViewDefError(f"view '{name}': {impl.__name__} is abstract",
                               self.filename, self.lineno)
        try:
            view = impl(kernel, name=name, output=self.output, fields=fields, **kwargs)
        except ViewDefError:
            raise
        except (TypeError, ValueError) as e:
            m = re.search(r"unexpected keyword argument '(\w+)'", str(e))
            if m is not None:
                e = (f"unknown keyword '{m[1]}' (the decorator takes "
                     f"{', '.join(DECORATOR_KEYWORDS)}; other keywords go to "
                     f"{impl.__name__}, which does not take '{m[1]}')")
            raise ViewDefError(f"view '{name}' (View.{self.origin}): {e}",
                               self.filename, self.lineno) from None
        view.decorator_line = self.lineno
        if ctx is not None:
            ctx._add_view(view, self.filename, self.lineno)
        return view


class GroupGlobals(dict):
    """The globals a group kernel sees: the group's fields, then the module's.

    Published contexts read a group's fields as bare names in its kernels
    (``if prefix == 'KEPLER1/':``), as the original metropc allowed.  Each
    group instance's kernels get a copy of the function whose globals are
    one of these: a group field (``prefix``, a constructor keyword, a
    ``Parameter``) is read live from the instance, so a parameter changed
    at run time is seen by the next call; a ViewPrototype call's own fields
    (``kind=``) come next; every other name is looked up in the context's
    module namespace when it is used, so later module-level changes
    (``parameters()`` updates, functions defined further down) are seen too.

    CPython looks up globals of a function whose globals are a dict
    *subclass* through ``__getitem__``; a ``global x; x = ...`` in a group
    kernel stores into this mapping, not into the module.
    """

    def __init__(self, module, group, extra=None):
        super().__init__(__builtins__=module.get("__builtins__", __builtins__))
        self._module = module
        self._group = group
        self._extra = dict(extra or {})

    def __getitem__(self, name):
        if self._group is not None and name in self._group._fields:
            try:
                return getattr(self._group, name)
            except AttributeError:
                return self._group._fields[name]
        if name in self._extra:
            return self._extra[name]
        try:
            return dict.__getitem__(self, name)  # a `global` assignment in a kernel
        except KeyError:
            return self._module[name]

    def __repr__(self):
        if self._group is None:
            return "<globals of a prototype's view kernel>"
        return f"<globals of a {type(self._group).__name__} kernel>"


def _with_group_globals(func, group, fields=None):
    """A copy of `func` that reads `group`'s fields (None: no group, only
    a prototype call's `fields`) as globals (see GroupGlobals)."""
    module = getattr(func, "__globals__", None)
    if not isinstance(func, types.FunctionType) or module is None:
        return func
    own = group._fields if group is not None else {}
    extra = {k: v for k, v in (fields or {}).items() if k not in own}
    copy = types.FunctionType(func.__code__, GroupGlobals(module, group, extra),
                              func.__name__, func.__defaults__, func.__closure__)
    copy.__kwdefaults__ = func.__kwdefaults__
    copy.__annotations__ = func.__annotations__
    copy.__qualname__ = func.__qualname__
    copy.__doc__ = func.__doc__
    copy.__module__ = func.__module__
    copy.__dict__.update(func.__dict__)
    return copy


def _takes_self(func):
    """A group kernel takes the group if its first argument has no path."""
    params = list(inspect.signature(func).parameters.values())
    if not params:
        return False
    first = params[0]
    return (first.kind in (first.POSITIONAL_ONLY, first.POSITIONAL_OR_KEYWORD)
            and first.name not in getattr(func, "__annotations__", {})
            and first.default is first.empty)


class PrototypeMethod:
    """A ``ViewPrototype`` kernel: calling it with fields creates a view.

    Inside a group, ``self._labelled_image(kind='shot')`` creates a view
    whose name and path templates are filled from the group's fields plus
    ``kind``; at module level ``proto(kind='shot')`` does the same with only
    the call's fields.  The call returns the new view.
    """

    def __init__(self, spec):
        self.spec = spec
        functools.update_wrapper(self, spec.func)

    def __get__(self, instance, owner=None):
        if instance is None:
            return self
        return functools.partial(self._create, instance)

    def __call__(self, **fields):
        return self._create(None, **fields)

    def _create(self, group, **fields):
        all_fields = dict(group._fields) if group is not None else {}
        all_fields.update(fields)
        return self.spec.create(current_context(), owner=group, fields=all_fields)


class _PrototypeNamespace:
    """``ViewPrototype.Image(...)``: like ``View.Image`` but makes templates."""

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        deco = ViewDecorator.from_attribute(name)
        deco.prototype = True
        return deco


ViewPrototype = _PrototypeNamespace()


class Parameter:
    """Annotation marking a ViewGroup class attribute as a parameter.

    ``rot90: Parameter = 1`` in a group class body declares a parameter with
    default 1, overridable by subclasses and by constructor keyword, readable
    as ``self.rot90`` and changeable at run time under the name
    ``<instance>.rot90`` (see docs/contexts.md).
    """


class ViewGroup:
    """A set of views built from methods, instantiated with fields.

    Each instance turns the class's ``@View.*`` methods into views; names and
    paths are ``str.format`` templates filled from the instance's fields:
    the group's parameters, ``prefix`` and every constructor keyword.
    """

    def __init__(self, *args, prefix="", **kwargs):
        if args:
            raise TypeError(f"{type(self).__name__}() takes keyword arguments only")
        params = self.group_parameters()
        self.prefix = prefix
        fields = {name: getattr(self, name) for name in params}
        for key, value in kwargs.items():
            setattr(self, key, value)
            fields[key] = value
        fields["prefix"] = prefix
        self._fields = fields
        ctx = current_context()
        self._metropc_line = _outermost_line(ctx.path)
        ctx._add_group(self)
        seen = set()
        for klass in type(self).__mro__:
            for attr, value in vars(klass).items():
                if attr in seen:
                    continue
                seen.add(attr)  # subclasses override views of their bases
                for spec in getattr(value, "__metropc_views__", ()):
                    spec.create(ctx, owner=self, fields=fields)

    @classmethod
    def group_parameters(cls):
        """Names of the class attributes annotated with ``Parameter``."""
        names = []
        for klass in reversed(cls.__mro__):
            for name, ann in getattr(klass, "__annotations__", {}).items():
                if (ann is Parameter or ann == "Parameter") and name not in names:
                    names.append(name)
        return names


def _register_builtin_symbols():
    """The builtin views' symbols (``View.Vector_Histogram``)."""
    ViewDecorator.kwargs_symbols.update(
        Histogram=dict(view_impl=builtin.HistogramView),
        LocalAverage=dict(view_impl=builtin.LocalAverageView),
        GlobalAverage=dict(view_impl=builtin.GlobalAverageView),
        MovingAverage=dict(view_impl=builtin.MovingAverageView),
        Extremum=dict(view_impl=builtin.ExtremumView),
        StepAverage=dict(view_impl=builtin.StepAverageView),
        StepStacked=dict(view_impl=builtin.StepStackedView),
    )


ViewDecorator.kwargs_symbols.update(Action=dict(stage=ViewStage.ACTION))
_register_builtin_symbols()
_ViewMeta.attribute_factory = ViewDecorator.from_attribute

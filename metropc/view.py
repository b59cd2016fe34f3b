"""The view object: one kernel, its inputs, and how its results are formed.

A context file never builds these directly; the ``View.<Output>`` decorators
(see :mod:`metropc.viewdef`) do.  Builtin accumulating views
(:mod:`metropc.builtin`) and user implementations (EXtra-foam's
``ImageWithROIsView``) subclass :class:`View` with class keywords::

    class AnnotatedView(View, abstract=True): ...
    class ImageWithROIsView(AnnotatedView, output=ViewOutput.IMAGE): ...

Contract with the engine, per event: the engine calls ``kernel(**inputs)``;
a ``None`` return means "no result".  Anything else goes through
:meth:`View.process`, whose return value is the view's result for the event
(``None`` again means no result).  Accumulating implementations keep state
between calls, and must validate a value before touching that state so that a
bad event loses nothing.  :meth:`View.on_step` produces the result of a STEP
view at an operator step boundary; :meth:`View.reset` clears state.
"""

from __future__ import annotations

import ast
import inspect
import types
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .enums import ViewOutput, ViewStage
from .error import ViewDefError

__all__ = ["View", "ViewArg", "REQUIRED"]

#: Marker for a kernel argument without a default (a required input).
REQUIRED = inspect.Parameter.empty


#: The values of a view's ``reset_on`` option.
RESET_ON = ("run", "step", None)
_DEFAULT = object()


@dataclass
class ViewArg:
    """One kernel argument: its name, the path it reads, and its default."""

    name: str
    spec: str
    default: Any = REQUIRED
    #: The resolved :class:`metropc.path.Path`, set when the context resolves.
    path: Any = field(default=None, compare=False)

    @property
    def optional(self) -> bool:
        return self.default is not REQUIRED


class _ViewMeta(type):
    """Gives the ``View`` class its decorator attributes (``View.Scalar``).

    The decorators live in :mod:`metropc.viewdef`, which builds on this
    module; it installs its factory in :attr:`attribute_factory` when it is
    imported (importing ``metropc`` always does), so that imports go one way
    only: viewdef -> view, never back.
    """

    #: ``factory(attribute_name)`` making the decorator; set by metropc.viewdef.
    attribute_factory = None

    def __getattr__(cls, name):
        factory = _ViewMeta.attribute_factory
        # (The output's name is case-insensitive, as in the original
        # metropc: View.scalar is View.Scalar.)
        if name.startswith("_") or not name[:1].isalpha() or factory is None:
            raise AttributeError(name)
        return factory(name)


def _annotation_path(annotation):
    """The path string of an annotation; unwraps PEP 563 string forms."""
    if isinstance(annotation, str) and len(annotation) >= 2 and annotation[0] in "'\"":
        try:
            value = ast.literal_eval(annotation)
        except (ValueError, SyntaxError):
            return annotation
        if isinstance(value, str):
            return value
    return annotation


def kernel_arguments(kernel, name, fields=None):
    """Read a kernel's arguments from its signature and path annotations.

    `fields` are ``str.format`` fields applied to every path template (views
    in groups and prototypes).  Raises ViewDefError for arguments that cannot
    be fed: ``*args``/``**kwargs`` or an argument with neither path nor
    default.
    """
    code = getattr(kernel, "__code__", None)
    lineno = code.co_firstlineno if code else None
    filename = code.co_filename if code else "<ctx>"
    sig = inspect.signature(kernel)
    annotations = getattr(kernel, "__annotations__", {})
    args = []
    for param in sig.parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ViewDefError(
                f"view '{name}' cannot take *{param.name}: every kernel argument "
                "needs a path annotation", filename, lineno)
        spec = _annotation_path(annotations.get(param.name, REQUIRED))
        if spec is REQUIRED:
            if param.default is REQUIRED:
                raise ViewDefError(
                    f"argument '{param.name}' of view '{name}' has no path "
                    "annotation (write it as  "
                    f"{param.name}: 'view#other' or 'karabo#DEV.prop')", filename, lineno)
            continue  # a plain default keyword, passed as it is
        if not isinstance(spec, str):
            raise ViewDefError(
                f"argument '{param.name}' of view '{name}' is annotated with "
                f"{spec!r}; annotations of kernel arguments must be path strings",
                filename, lineno)
        if fields:
            try:
                spec = spec.format(**fields)
            except (KeyError, IndexError, ValueError) as e:
                raise ViewDefError(
                    f"path template {spec!r} of view '{name}' cannot be filled: "
                    f"missing field {e}", filename, lineno) from None
        args.append(ViewArg(param.name, spec, param.default))
    return args


class View(metaclass=_ViewMeta):
    """A view: a kernel plus how its per-event results are formed.

    The plain implementation passes the kernel's return value through; a
    generator kernel gives the list of its non-None values.  Subclasses
    override :meth:`process` to accumulate (see :mod:`metropc.builtin`).

    Class keywords: ``abstract=True`` marks a base class that the decorators
    should not pick; ``output=`` sets the default output type; ``stage=`` the
    default stage of views of this class.
    """

    #: Default output when a decorator does not name one.
    output = ViewOutput.COMPUTE
    #: Default stage of views of this implementation.
    default_stage = ViewStage.POOL
    #: True if the kernel runs only at a step boundary (StepStackedView).
    kernel_at_step = False
    _abstract = False

    def __init_subclass__(cls, abstract=False, output=None, stage=None, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._abstract = abstract
        if output is not None:
            cls.output = ViewOutput(output)
        if stage is not None:
            cls.default_stage = ViewStage(stage)

    #: When accumulated state is cleared by itself: ``'run'`` (a new run
    #: starts), ``'step'`` (after each operator step) or None (only by an
    #: explicit reset).  Builtin accumulating views default to ``'run'``.
    default_reset_on = None

    def __init__(self, kernel=None, *, name=None, output=None, stage=None, hidden=False,
                 rank=None, label=None, doc=None, args=None, fields=None, reset_on=_DEFAULT,
                 interval=1.0):
        self.kernel = kernel
        if name is None:
            name = kernel.__name__ if kernel is not None else type(self).__name__
        if not isinstance(name, str):  # (clients look views up by their path's text)
            raise ValueError(f"name must be a string, not {name!r}")
        self.name = name
        if output is not None:
            self.output = ViewOutput(output)
        self.explicit_stage = None if stage is None else _as_stage(stage)
        self.stage = self.explicit_stage or self.default_stage
        if not isinstance(hidden, (bool, int)):
            raise ValueError(f"hidden must be True or False, not {hidden!r}")
        self.hidden = bool(hidden)
        if reset_on is _DEFAULT:
            reset_on = self.default_reset_on
        if reset_on not in RESET_ON:
            raise ValueError(f"reset_on must be 'run', 'step' or None, not {reset_on!r}")
        self.reset_on = reset_on
        if not isinstance(interval, (int, float)) or isinstance(interval, bool) or not (
                interval >= 0):
            raise ValueError(f"interval must be a number of seconds >= 0, not {interval!r}")
        #: Async views: the least time between two calls, in seconds.
        self.interval = float(interval)
        self.rank = rank
        self.label = label
        self.doc = doc if doc is not None or kernel is None else inspect.getdoc(kernel)
        if args is None:
            # A view without kernel is fed by hand (notebooks, tests).
            args = [] if kernel is None else kernel_arguments(kernel, self.name, fields)
        self.args = args
        code = getattr(kernel, "__code__", None)
        self.filename = code.co_filename if code else "<ctx>"
        self.lineno = code.co_firstlineno if code else None
        #: True when the kernel runs only at a step boundary / on request.
        self.trigger = "event"

    # -- engine hooks -------------------------------------------------------
    def process(self, data):
        """This view's result for one event, from what the kernel returned."""
        if isinstance(data, types.GeneratorType):
            data = [value for value in data if value is not None]
            if not data:
                return None
        if self.rank is not None:
            ndim = np.ndim(data)
            if ndim != self.rank:
                raise ValueError(
                    f"view '{self.name}' is declared with rank={self.rank} but its "
                    f"result has {ndim} dimension(s)")
        return data

    def on_step(self):
        """The result at an operator step boundary (STEP views); None by default."""
        return None

    def reset(self):
        """Forget accumulated state; plain views have none."""

    # -- introspection --------------------------------------------------------
    @property
    def paths(self):
        """The resolved input paths of this view."""
        return [arg.path for arg in self.args]

    def __repr__(self):
        return (f"<{type(self).__name__} {self.name!r} output={self.output.name} "
                f"stage={self.stage.name}>")


def _as_stage(stage):
    if isinstance(stage, ViewStage):
        return stage
    if isinstance(stage, str):
        try:
            return ViewStage[stage.upper()]
        except KeyError:
            pass
    raise ValueError(f"unknown stage {stage!r}; use one of "  # (FRONTEND: not implemented)
                     + ", ".join(s.name.lower() for s in ViewStage
                                 if s is not ViewStage.FRONTEND))

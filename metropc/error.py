"""Every public exception of metropc.

Errors a context author causes (``ContextError`` and its subclasses) carry
the context file and line, so that every message can start with
``ctx.py:12:``.  Protocol errors are ``ValueError``s so that code which
already guards against bad input keeps working.
"""

from __future__ import annotations

import pickle
import signal
import threading
import traceback

__all__ = [
    "MetropcError",
    "ContextError",
    "ContextSyntaxError",
    "PathResolutionError",
    "ViewDefError",
    "ViewExecutionError",
    "ParameterError",
    "UnknownParameterError",
    "ProtocolError",
    "SourceError",
    "StopRequested",
    "operator_interrupt",
]


class MetropcError(Exception):
    """Root of all metropc exceptions."""


def _context_frame_lineno(tb, filename):
    """The innermost traceback line that lies in `filename`, or None."""
    lineno = None
    for frame, line in traceback.walk_tb(tb):
        if frame.f_code.co_filename == filename:
            lineno = line
    return lineno


class ContextError(MetropcError):
    """A problem in context code, reported with file and line.

    Attributes
    ----------
    path : str
        The context file (``'<ctx>'`` for source without a file).
    lineno : int or None
        The line in that file the problem is tied to.
    message : str
        The message without the location prefix.
    """

    def __init__(self, message, path="<ctx>", lineno=None):
        self.message = str(message)
        self.path = path
        self.lineno = lineno
        super().__init__(self.location_prefix() + self.message)

    def location_prefix(self):
        if self.lineno is None:
            return f"{self.path}: "
        return f"{self.path}:{self.lineno}: "

    def format_for_context(self, source=None):
        """A readable report: the message, then the offending source line.

        `source` is the context source text; without it only the message is
        returned.
        """
        text = str(self)
        if source is None or self.lineno is None:
            return text
        lines = source.splitlines()
        if 1 <= self.lineno <= len(lines):
            text += f"\n    {self.lineno:4d} | {lines[self.lineno - 1].rstrip()}"
        return text

    def _find_context_frame(self, filename="<ctx>"):
        """Line number of the innermost frame in `filename` (EXtra-foam API)."""
        if self.path == filename and self.lineno is not None:
            return self.lineno
        return _context_frame_lineno(self.__traceback__, filename)

    def __reduce__(self):
        # Keep the structured attributes when errors cross process borders;
        # those that cannot travel (a PathResolutionError's view holds a
        # kernel defined in context code) arrive as None.
        state = {}
        for key, value in self.__dict__.items():
            try:
                pickle.dumps(value)
            except Exception:  # noqa: BLE001 - any reason not to pickle
                value = None
            state[key] = value
        return (_rebuild_error, (type(self), self.message, self.path, self.lineno, state))


def _rebuild_error(cls, message, path, lineno, state):
    err = cls.__new__(cls)
    ContextError.__init__(err, message, path, lineno)
    err.__dict__.update(state)
    return err


class ContextSyntaxError(ContextError):
    """The context source does not compile; ``orig_error`` is the SyntaxError."""

    def __init__(self, orig_error, path="<ctx>"):
        self.orig_error = orig_error
        msg = f"syntax error: {orig_error.msg}"
        super().__init__(msg, path, orig_error.lineno)

    def __reduce__(self):
        # The SyntaxError travels as its arguments and is built anew: how
        # exceptions pickle can be changed by libraries (tblib, installed by
        # dask on import, loses a SyntaxError's lineno).
        rebuild, (cls, message, path, lineno, state) = super().__reduce__()
        orig = state.pop("orig_error", None)
        if isinstance(orig, SyntaxError):
            state["orig_error"] = None
            return (_rebuild_syntax_error, (cls, message, path, lineno, state,
                                            type(orig), orig.args))
        return rebuild, (cls, message, path, lineno, state)


def _rebuild_syntax_error(cls, message, path, lineno, state, orig_cls, orig_args):
    err = _rebuild_error(cls, message, path, lineno, state)
    err.orig_error = orig_cls(*orig_args)
    return err


class ViewDefError(ContextError):
    """A view is defined in a way that cannot work (bad keyword, cycle, ...)."""


class PathResolutionError(ViewDefError):
    """A view's argument names a path nothing provides; ``view`` is the view."""

    def __init__(self, message, path="<ctx>", lineno=None, view=None):
        self.view = view
        super().__init__(message, path, lineno)


class ViewExecutionError(ContextError):
    """A view's kernel raised while processing an event.

    These are reported (logged and counted), never raised into a stage loop.
    ``view`` is the view name, ``event_id`` the event, ``traceback_text``
    the traceback restricted to frames in the context file.
    """

    def __init__(self, message, path="<ctx>", lineno=None, view=None,
                 event_id=None, traceback_text=""):
        self.view = view
        self.event_id = event_id
        self.traceback_text = traceback_text
        super().__init__(message, path, lineno)


class ParameterError(ContextError, ValueError):
    """A parameter value the context does not accept.

    A ContextError, so that whatever reports a refused context (metropc-run,
    the pipeline, the stages) reports this one too, located at the line that
    declares the parameter; a ValueError, so that code validating input
    from a command line or a web form catches it as bad input.

    Attributes
    ----------
    name : str or None
        The parameter (``'gain'``, ``'kepler1.rot90'``).
    value : object
        The value that was refused.
    expected : str or None
        The type the declaration asks for (``'float'``), None if any.
    declared : list of str
        Every parameter the context declares.
    """

    def __init__(self, message, path="<ctx>", lineno=None, name=None, value=None,
                 expected=None, declared=()):
        self.name = name
        self.value = value
        self.expected = expected
        self.declared = list(declared)
        super().__init__(message, path, lineno)


class UnknownParameterError(ParameterError, KeyError):
    """A parameter name the context does not declare.

    Also a KeyError, as the unknown-name error of :func:`metropc.run` was
    before parameters were checked.
    """

    # KeyError's __str__ would quote the message.
    __str__ = BaseException.__str__


class ProtocolError(MetropcError, ValueError):
    """A message does not follow the wire protocol."""


class SourceError(MetropcError):
    """A data source cannot be opened or read."""


class StopRequested(KeyboardInterrupt):
    """A stop signal raised as an exception (SIGTERM in a stage process).

    A KeyboardInterrupt, so that context code cannot swallow it with
    ``except Exception``; its own class, so that it is never mistaken for a
    KeyboardInterrupt raised by context code.
    """


def operator_interrupt(exc: BaseException) -> bool:
    """Whether KeyboardInterrupt `exc` can be the operator's (Ctrl-C, or a
    stage told to stop) rather than raised by the code that was running.

    Python raises Ctrl-C's KeyboardInterrupt in the main thread, and only
    while SIGINT has its default handler and is not blocked; any other is
    the code's own (``raise KeyboardInterrupt`` at the top of a context
    file), and so that code's failure, reported with its file and line.
    """
    if isinstance(exc, StopRequested):
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return False
    return signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, ())

"""Events from user Python code: ``module:callable`` or ``file.py:callable``.

The simplest way to feed the pipeline something no built-in source knows
(a detector's own library, a database, a synthetic test pattern) is to
write a generator of event dicts.  This source imports it, calls it, and
makes its events look like every other source's: internal paths filled in
and only the paths the context uses kept.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import itertools
import logging
import os
import sys
from collections.abc import Iterable, Mapping

from ..error import SourceError
from .base import Source, normalize_path

__all__ = ["CallableSource", "open_callable", "load_callable"]

log = logging.getLogger(__name__)

_file_modules = itertools.count()


def load_callable(spec):
    """The object named by ``module:attr`` or ``path/to/file.py:attr``."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise SourceError(f"{spec!r}: use module:callable or file.py:callable")
    try:
        if target.endswith(".py"):
            if not os.path.isfile(target):
                raise SourceError(f"{target}: no such file")
            name = f"metropc_source_{next(_file_modules)}"
            modspec = importlib.util.spec_from_file_location(name, target)
            module = importlib.util.module_from_spec(modspec)
            sys.modules[name] = module  # dataclasses and pickle need this
            try:
                modspec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
        else:
            module = _import_module(target)
    except SourceError:
        raise
    except Exception as e:
        raise SourceError(f"cannot import {target!r} for source {spec!r}: "
                          f"{type(e).__name__}: {e}") from e
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise SourceError(f"{target!r} has no attribute {attr!r}") from None
    return obj


def _import_module(name):
    """Import `name`, also from the current directory.

    Console scripts such as ``metropc-run`` do not have the working
    directory on ``sys.path``, yet ``--source mysource:events`` naturally
    means the ``mysource.py`` right there.
    """
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        cwd = os.getcwd()
        if e.name != name.split(".")[0] or cwd in sys.path or "" in sys.path:
            raise
    sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(cwd)


class CallableSource(Source):
    """Events from an iterable of dicts (or a callable returning one).

    Missing internal paths are filled: ``train_id`` from ``event_id`` or,
    failing that, counting up from the previous event's id (0 for the
    first); ``event_id`` from ``train_id``; ``sequence_id`` as -1.
    ``metropc.STEP`` and ``metropc.Action`` items pass through unchanged,
    so a script can end operator steps; anything else is a SourceError.
    """

    live = False  # a replay: slowed down, never dropped

    kind = "python"

    def __init__(self, events, *, name="<callable>", paths=None, rate=None):
        super().__init__(paths=paths, rate=rate)
        if not isinstance(events, Iterable):
            raise SourceError(f"{name} returned {type(events).__name__}, "
                              f"not an iterable of event dicts")
        self.name = name
        self._events = events
        self._norm: dict[str, str] = {}

    def _key(self, key):
        """The normalised form of an event key (cached: keys repeat)."""
        norm = self._norm.get(key)
        if norm is None:
            norm = self._norm[key] = normalize_path(key)
        return norm

    def events(self):
        from ..engine import STEP, Action

        next_id = 0
        items = iter(self._events)
        for n in itertools.count():
            try:
                item = next(items)
            except StopIteration:
                return
            except Exception as e:
                raise SourceError(f"{self.name} raised after {n} events: "
                                  f"{type(e).__name__}: {e}") from e
            if item is STEP or isinstance(item, Action):
                yield item
                continue
            if not isinstance(item, Mapping):
                raise SourceError(f"{self.name}: item {n} is a "
                                  f"{type(item).__name__}, not an event dict")
            event = {}
            paths = self.paths
            for key, value in item.items():
                key = self._key(key)
                if paths is None or key.startswith("internal#") or key in paths:
                    event[key] = value
            tid = event.get("internal#train_id", event.get("internal#event_id"))
            if tid is None:
                tid = next_id
            event.setdefault("internal#train_id", tid)
            event.setdefault("internal#event_id", tid)
            event.setdefault("internal#sequence_id", -1)
            try:
                next_id = int(tid) + 1
            except (TypeError, ValueError):
                next_id += 1
            yield event

    def release(self):
        close = getattr(self._events, "close", None)  # a generator
        if close is not None:
            close()


def open_callable(target, *, paths=None, rate=None, seed=None, bridge_socket=None,
                  timeout=None, **options):
    """Factory for ``module:callable`` and ``file.py:callable`` specs.

    A callable is called with the extra keyword `options`, plus ``paths``
    if it has such a parameter (so it can skip producing unused data).  A
    non-callable iterable (a list, a generator object) is used as it is.
    """
    obj = load_callable(target)
    if callable(obj):
        kwargs = dict(options)
        try:
            params = inspect.signature(obj).parameters
        except (TypeError, ValueError):
            params = {}
        if "paths" in params:
            kwargs["paths"] = paths
        try:
            events = obj(**kwargs)
        except Exception as e:
            raise SourceError(f"{target}: calling it failed: "
                              f"{type(e).__name__}: {e}") from e
    elif options:
        raise SourceError(f"{target} is not callable, so it takes no options "
                          f"({', '.join(sorted(options))})")
    else:
        events = obj
    return CallableSource(events, name=target, paths=paths, rate=rate)

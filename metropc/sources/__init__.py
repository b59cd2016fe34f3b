"""Data sources: where the pipeline's events come from.

``open_source(spec)`` turns a short string, as given to
``metropc-run --source SPEC``, into a :class:`Source`: an iterator of event
dicts that is also a context manager.  Spec forms, tried in this order:

===============================  ==========================================
``sim``, ``sim:OPT=V,OPT=V``     the built-in simulated facility (default)
``tcp://HOST:PORT``, ``ipc://``   a Karabo bridge (any ZeroMQ endpoint)
``files:PATH``, ``PATH``          a European XFEL run directory or HDF5 file
``module:callable``,              a Python callable returning event dicts
``path/to/file.py:callable``
===============================  ==========================================

New kinds are added with :func:`register_source`; see docs/sources.md.
"""

from __future__ import annotations

import importlib
import os
import re

from ..error import SourceError
from .base import COMMON_OPTIONS, Source, internal_event, karabo_key

__all__ = ["open_source", "register_source", "available_sources", "source_kind", "Source",
           "internal_event", "karabo_key", "parse_options", "SourceError"]

#: name -> factory (a callable or a lazily imported "module:attr" string).
_NAMED: dict[str, object] = {}
#: URL scheme -> factory; the factory gets the whole spec as its target.
_SCHEMES: dict[str, object] = {}

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_NAMED_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_-]*):(?!//)(.*)$", re.DOTALL)
_CALLABLE_RE = re.compile(
    r"^(?:(?P<file>.+\.py)|(?P<mod>[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*))"
    r":(?P<attr>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)$")


def register_source(name, factory, *, schemes=(), replace=False):
    """Make ``NAME:TARGET`` (and ``SCHEME://...`` specs) open `factory`.

    `factory` is called as ``factory(target, **options)`` and returns a
    :class:`Source`.  `target` is the text after ``NAME:`` (or the whole
    spec for a scheme).  `options` always holds the common options
    (``paths``, ``rate``, ``seed``, ``bridge_socket``, ``timeout``) plus
    any extra keywords given to :func:`open_source`; accept ``**kwargs``
    for those you do not use.  `factory` may be a ``"module:attr"``
    string, imported on first use so that optional dependencies are only
    needed by those who use the source.
    """
    if not replace and (name in _NAMED or any(s in _SCHEMES for s in schemes)):
        raise ValueError(f"source {name!r} (or one of its schemes) is "
                         f"already registered; pass replace=True")
    _NAMED[name] = factory
    for scheme in schemes:
        _SCHEMES[scheme.lower()] = factory


def available_sources():
    """``{'names': [...], 'schemes': [...]}`` of the registered sources."""
    return {"names": sorted(_NAMED), "schemes": sorted(_SCHEMES)}


def _resolve(factory):
    if isinstance(factory, str):
        mod, _, attr = factory.partition(":")
        factory = getattr(importlib.import_module(mod), attr)
    return factory


def parse_options(text):
    """``'shape=256x256,ntrains=5'`` -> ``{'shape': (256, 256), 'ntrains': 5}``.

    Values become int, float, bool, None, or a tuple of ints for ``AxB``;
    everything else stays a string.  Used for ``sim:OPT=V,...`` specs.
    """
    options = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise SourceError(f"bad option {item!r}: use NAME=VALUE, "
                              f"separated by commas")
        options[key] = _convert(value.strip())
    return options


def _convert(value):
    low = value.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low == "none":
        return None
    if re.fullmatch(r"\d+(x\d+)+", low):
        return tuple(int(v) for v in low.split("x"))
    for conv in (int, float):
        try:
            return conv(value)
        except ValueError:
            pass
    return value


def source_kind(spec) -> tuple[str, str]:
    """``(name, target)``: the registered source `spec` would open (``"sim"``,
    ``"files"``, ``"python"``, ...) and what it would be given, without
    opening or importing anything (so that a command line can be checked
    before a pipeline starts); SourceError if no source fits."""
    factory, target = _pick(spec)
    return next((n for n, f in _NAMED.items() if f is factory), "?"), target


def _pick(spec):
    """(factory, target) for `spec`; raises SourceError if nothing fits."""
    spec = spec.strip()
    if not spec:
        return _NAMED["sim"], ""
    m = _SCHEME_RE.match(spec)
    if m:
        scheme = m.group(1).lower()
        if scheme not in _SCHEMES:
            raise SourceError(
                f"unknown source scheme {scheme + '://'!r} in {spec!r}; known: "
                + ", ".join(s + "://" for s in sorted(_SCHEMES)))
        return _SCHEMES[scheme], spec
    if spec in _NAMED:
        return _NAMED[spec], ""
    m = _NAMED_RE.match(spec)
    if m and m.group(1) in _NAMED:
        return _NAMED[m.group(1)], m.group(2)
    if os.path.exists(spec):
        return _NAMED["files"], spec
    if _CALLABLE_RE.match(spec):
        return _NAMED["python"], spec
    if spec.endswith((".h5", ".hdf5")) or os.sep in spec:
        return _NAMED["files"], spec  # reports the missing file by name
    raise SourceError(
        f"{spec!r} is not a data source (and no file or directory of that "
        f"name exists): use 'sim', a Karabo bridge endpoint (tcp://HOST:PORT, "
        f"ipc://PATH), a run directory or HDF5 file, or 'module:callable'")


def open_source(spec="sim", *, paths=None, rate=None, seed=0,
                bridge_socket=None, timeout=10.0, **options) -> Source:
    """Open the data source described by `spec`.

    Parameters
    ----------
    spec : str
        See the module docstring; ``None`` or ``''`` is ``'sim'``.
    paths : collection of str or Path, optional
        The paths the context uses (``ctx.get_paths()``).  Only those
        ``karabo#`` paths are put into events; all ``internal#`` ones are.
    rate : float, 'max' or None
        Trains/s.  None is the source's default: 10 for the simulator and
        files, unpaced for a bridge or a callable.
    seed : int
        Random seed of the simulator.
    bridge_socket : 'REQ', 'SUB' or 'PULL', optional
        Socket type for a Karabo bridge (default REQ).
    timeout : float
        Seconds a live source waits for data before it warns (and, for a
        REQ bridge, reconnects).
    **options
        Source-specific options (see docs/sources.md).

    Raises
    ------
    SourceError
        For a bad spec, a missing optional package, an unreachable
        endpoint or a missing or corrupt file.
    """
    if spec is None:
        spec = "sim"
    factory, target = _pick(str(spec))
    try:
        factory = _resolve(factory)
    except (ImportError, AttributeError) as e:
        raise SourceError(f"cannot load the source for {spec!r}: {e}") from e
    source = factory(target, paths=paths, rate=rate, seed=seed,
                     bridge_socket=bridge_socket, timeout=timeout, **options)
    if not isinstance(source, Source):
        raise SourceError(f"the factory for {spec!r} returned "
                          f"{type(source).__name__}, not a Source")
    return source


def check_options(kind, options):
    """Raise SourceError for options no source understands (typos)."""
    unknown = sorted(set(options) - COMMON_OPTIONS)
    if unknown:
        raise SourceError(f"unknown option(s) for the {kind} source: "
                          + ", ".join(unknown))


register_source("sim", "metropc.sources.sim:open_sim")
register_source("bridge", "metropc.sources.bridge:open_bridge",
                schemes=("tcp", "ipc", "inproc", "pgm", "epgm", "ws", "wss"))
register_source("files", "metropc.sources.files:open_files", schemes=("file",))
register_source("python", "metropc.sources.callables:open_callable")

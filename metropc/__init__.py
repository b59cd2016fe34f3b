"""metropc: programmable online analysis for large-facility experiments.

The public API most users need is here: the enums, :func:`run` for running a
context in-process, and the step/action markers for it.  Context files get
``View`` and friends as globals; see docs/contexts.md.

:func:`run`, ``STEP``, ``Action`` and :func:`open_recording` (a recording
made with ``metropc-run --record``, as an xarray Dataset; docs/recording.md)
and :func:`reprocess` (whole runs on a Dask cluster; docs/reprocess.md)
are loaded on first use: they bring
numpy and xarray, which take most of a second to import, and the command
line tools (``metropc-run``) must be able to take Ctrl-C from their first
instant, before any of that is loaded.
"""

from ._version import __version__
from .enums import ContextStage, ViewOutput, ViewStage

__all__ = ["ViewStage", "ContextStage", "ViewOutput", "run", "STEP", "Action",
           "open_recording", "reprocess", "__version__"]


def __getattr__(name):
    if name in ("STEP", "Action"):
        from . import engine
        return getattr(engine, name)
    if name == "run":
        from .inprocess import run
        return run
    if name == "open_recording":  # h5py and xarray: loaded only when asked for
        from .recording.reader import open_recording
        return open_recording
    if name == "reprocess":  # the package is callable (docs/reprocess.md)
        import importlib
        return importlib.import_module(".reprocess", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))

"""Recording a pipeline's results to HDF5, reading them back, replaying them.

- :class:`~metropc.recording.process.RecorderProcess` (``metropc-run
  --record PATH``): a process subscribed to the output like any client,
  writing every view result, the context, parameters and marks with h5py;
- :func:`open_recording`: a recording as an ``xarray.Dataset``;
- :mod:`metropc.recording.replay` (``metropc-replay``): a recording
  published again with the live protocol.

The file format is in docs/recording.md.  Names are loaded on first use:
h5py and xarray take a while to import, and ``import metropc`` must stay light.
"""

from __future__ import annotations

__all__ = ["open_recording", "RecorderProcess", "RecorderError", "Recording"]


def __getattr__(name):
    if name == "open_recording":
        from .reader import open_recording
        return open_recording
    if name in ("RecorderProcess", "RecorderError"):
        from . import process
        return getattr(process, name)
    if name == "Recording":
        from .writer import Recording
        return Recording
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

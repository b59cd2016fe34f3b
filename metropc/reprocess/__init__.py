"""Reprocessing whole runs on a Dask cluster (``metropc.reprocess``).

After a beamtime the same context is run again over whole runs (thousands
of trains).  POOL views run in parallel on Dask workers, each opening the
run files itself and reading only its chunk of trains with EXtra-data
(:mod:`.worker`); REDUCE views run on the driver in train order, exactly
as in the live pipeline (:mod:`.driver`); the results are written in the
recording format (docs/recording.md) and read back with
``metropc.open_recording``.  docs/reprocess.md has the details.

Names are loaded on first use: dask, distributed, EXtra-data, h5py and
xarray take seconds to import, and ``import metropc`` must stay light.

This package is itself callable: ``metropc.reprocess(context, run, ...)``
is :func:`metropc.reprocess.driver.reprocess`.  Importing any of its
modules (a Dask worker imports :mod:`.worker`) makes the name
``metropc.reprocess`` refer to the package, so a plain function exported
under the same name would be replaced by the module on first use.
"""

from __future__ import annotations

import sys
import types

__all__ = ["reprocess", "ReprocessError", "Chunk", "plan_runs"]


class _CallableModule(types.ModuleType):
    """The package, callable as :func:`~metropc.reprocess.driver.reprocess`."""

    def __call__(self, *args, **kwargs):
        from .driver import reprocess
        return reprocess(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule


def __getattr__(name):
    if name in ("reprocess", "ReprocessError"):
        from . import driver
        return getattr(driver, name)
    if name in ("Chunk", "plan_runs"):
        from . import plan
        return getattr(plan, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

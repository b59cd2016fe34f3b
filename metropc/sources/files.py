"""Replay of recorded European XFEL data (run directories, HDF5 files).

Running a context over a recorded run is how analyses are developed before
and checked after beam time, so a run should look to the pipeline like the
live stream it was recorded from: trains in order, at the facility's
10 Hz unless asked for more, with the same ``karabo#`` paths a bridge
gives.  EXtra-data does the reading; it is imported only here, so that
metropc works without it.

Control data is stored in files as ``prop.value`` and ``prop.timestamp``,
while the live bridge (and so every context) says ``prop``.  Without a path
selection, ``prop.value`` is put into events as ``karabo#SRC.prop`` and the
timestamps are left out; with a selection, both ``karabo#SRC.prop`` and
``karabo#SRC.prop.value`` find the stored value.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re

import numpy as np

from ..error import SourceError
from .base import (RUN_PATH, Source, internal_event, karabo_key, karabo_selection, key_hint,
                   source_hint)

__all__ = ["FileSource", "RunsSource", "open_files", "run_number"]

log = logging.getLogger(__name__)

#: European XFEL run directories are named ``r0001`` and so on.
_RUN_DIR_RE = re.compile(r"^r(\d{1,6})$")


def _import_extra_data():
    try:
        import extra_data
    except ImportError as e:
        raise SourceError("replaying run files needs the extra-data package: "
                          "pip install metropc[files]") from e
    return extra_data


def _candidate_files(path):
    """The files EXtra-data's RunDirectory would try to open."""
    return sorted(f for f in os.listdir(path)
                  if f.endswith(".h5") and f.lower() != "overview.h5")


class FileSource(Source):
    """Events from a run directory or a single HDF5 file.

    Parameters
    ----------
    path : str
        A run directory (opened with ``extra_data.RunDirectory``) or one
        ``.h5`` file (``extra_data.H5File``).
    skip_corrupt : bool
        Replay the rest of a run directory when some files cannot be
        opened (with a warning) instead of raising SourceError.
    parallelize : bool
        Let EXtra-data open many files in worker processes (faster for
        real runs with hundreds of files).
    """

    live = False  # a replay: slowed down, never dropped

    default_rate = 10.0
    kind = "files"

    def __init__(self, path, *, paths=None, rate=None, skip_corrupt=False,
                 parallelize=True):
        super().__init__(paths=paths, rate=rate)
        self.path = os.fspath(path)
        ed = _import_extra_data()
        if not os.path.exists(self.path):
            raise SourceError(f"{self.path}: no such file or directory")
        self._by_id = ed.by_id
        self.run = self._open(ed, skip_corrupt, parallelize)
        #: The run's number (events carry it as ``internal#run``), or None.
        self.run_number = run_number(self.path, self.run)
        try:
            self._data = self._select()
        except BaseException:
            self.release()
            raise

    def _open(self, ed, skip_corrupt, parallelize):
        path = self.path
        if not os.path.isdir(path):
            try:
                return ed.H5File(path)
            except Exception as e:
                raise SourceError(f"{path}: cannot open as a European XFEL "
                                  f"HDF5 file: {e}") from None
        candidates = _candidate_files(path)
        if not candidates:
            raise SourceError(f"{path}: no HDF5 (.h5) files in this directory")
        # EXtra-data reports unreadable files by printing; turn that into
        # our own error or warning, naming the files.
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                run = ed.RunDirectory(path, parallelize=parallelize)
        except Exception as e:
            raise SourceError(f"{path}: cannot open the run: {e}\n"
                              f"{err.getvalue().strip()}".rstrip()) from None
        opened = {os.path.basename(f.filename) for f in run.files}
        bad = [f for f in candidates if f not in opened]
        if bad:
            detail = err.getvalue().strip()
            msg = (f"{path}: corrupt or unreadable file(s): "
                   f"{', '.join(bad)}" + (f"\n{detail}" if detail else ""))
            if not skip_corrupt:
                run.__exit__(None, None, None)
                raise SourceError(msg + "\n(pass skip_corrupt=True to replay "
                                  "the rest of the run)")
            log.warning("%s; skipping them", msg)
        return run

    def _select(self):
        """The DataCollection to iterate, for the current :attr:`paths`.

        Sets ``self._keymap`` to ``{source: [(stored key, event key)]}``, or
        None for all keys named as the bridge would (module docstring).
        Returns None when nothing the context wants is in the run.
        """
        run = self.run
        if self.paths is None:
            self._keymap = None
            return run
        wanted = karabo_selection(self.paths)
        keymap, selection, missing = {}, {}, []
        for src, keys in wanted.items():
            if src not in run.all_sources:
                missing.extend((event_key, source_hint(src, key, run.all_sources))
                               for key, event_key in keys.items())
                continue
            available = run.keys_for_source(src)
            for key, event_key in keys.items():
                stored = key if key in available else (
                    key + ".value" if key + ".value" in available else None)
                if stored is None:
                    missing.append((event_key, key_hint(src, key, available)))
                    continue
                keymap.setdefault(src, []).append((stored, event_key))
                selection.setdefault(src, set()).add(stored)
        for event_key, hint in sorted(missing):
            log.warning("%s has no data for %s%s; views that need it do not run",
                        self.path, event_key, hint)
        self._keymap = keymap
        return run.select(selection) if selection else None

    @property
    def train_ids(self):
        """The train ids this source replays, in order."""
        return [int(t) for t in self.run.train_ids]

    def release(self):
        run, self.run = getattr(self, "run", None), None
        if run is not None:
            run.__exit__(None, None, None)

    def _trains(self, data, after):
        """(train id, data) from `data` for the trains after `after`."""
        tids = self.train_ids
        if after is not None and (not tids or after >= tids[-1]):
            return iter(())
        if data is None:  # nothing the context wants is in the run
            return ((t, {}) for t in tids if after is None or t > after)
        train_range = None if after is None else self._by_id[after + 1:]
        return data.trains(train_range=train_range, require_all=False)

    def events(self):
        seen_paths = self.paths_version
        trains = self._trains(self._data, None)
        tid = None
        while True:
            if seen_paths != self.paths_version:
                # New paths (a context reload): select again, go on from
                # the next train.
                seen_paths = self.paths_version
                self._data = self._select()
                trains = self._trains(self._data, tid)
            try:
                tid, data = next(trains)
            except StopIteration:
                return
            except Exception as e:
                raise SourceError(f"{self.path}: error reading data: "
                                  f"{type(e).__name__}: {e}") from e
            tid = int(tid)
            yield self._event(tid, data)

    def _event(self, tid, data):
        event = internal_event(tid)
        if self.run_number is not None:
            event[RUN_PATH] = self.run_number
        if self._keymap is None:
            for src, values in data.items():
                control = ":" not in src
                for key, value in values.items():
                    if key == "metadata":
                        continue
                    if control:
                        if key.endswith(".timestamp"):
                            continue
                        key = key.removesuffix(".value")
                    event[karabo_key(src, key)] = value
            return event
        for src, keys in self._keymap.items():
            values = data.get(src)
            if values is None:
                continue
            for stored, event_key in keys:
                if stored in values:
                    event[event_key] = values[stored]
        return event


def run_number(path, run=None):
    """The run number of a run directory: from its metadata if it has one,
    else from its name (``.../r0042`` -> 42); None if neither says."""
    try:
        number = run.run_metadata().get("runNumber") if run is not None else None
    except Exception:  # noqa: BLE001 - older files have no run metadata
        number = None
    if isinstance(number, (int, np.integer)) and number > 0:
        return int(number)
    m = _RUN_DIR_RE.search(os.path.basename(os.path.normpath(path)))
    return int(m.group(1)) if m else None


class RunsSource(Source):
    """Several run directories replayed one after the other.

    Each event carries its run's number (``internal#run``), so the pipeline
    starts and ends runs at the boundaries (builtin views start empty with
    each run).
    """

    live = False
    default_rate = 10.0
    kind = "files"

    def __init__(self, targets, *, paths=None, rate=None, **options):
        super().__init__(paths=paths, rate=rate)
        self.targets = list(targets)
        self.options = options
        self.current = None
        FileSource(self.targets[0], paths=paths, **options).release()  # fail early

    def set_paths(self, paths):
        super().set_paths(paths)
        if self.current is not None:
            self.current.set_paths(paths)

    def events(self):
        for target in self.targets:
            self.current = FileSource(target, paths=self.paths, **self.options)
            try:
                yield from self.current.events()
            finally:
                self.current.release()
                self.current = None


def open_files(target, *, paths=None, rate=None, seed=None, bridge_socket=None,
               timeout=None, skip_corrupt=False, parallelize=True, **options):
    """Factory for ``files:PATH``, ``file://PATH`` and bare path specs.

    ``PATH1,PATH2,...`` replays several run directories in a row.
    """
    from . import check_options

    check_options("files", options)
    target = target.removeprefix("file://")
    if not target:
        raise SourceError("files: give a run directory or HDF5 file, "
                          "e.g. files:/path/to/raw/r0001")
    if "," in target and not os.path.exists(target):
        targets = [os.path.expanduser(t.strip()) for t in target.split(",") if t.strip()]
        return RunsSource(targets, paths=paths, rate=rate, skip_corrupt=skip_corrupt,
                          parallelize=parallelize)
    return FileSource(os.path.expanduser(target), paths=paths, rate=rate,
                      skip_corrupt=skip_corrupt, parallelize=parallelize)

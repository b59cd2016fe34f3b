"""Writing view results to HDF5 files: one file, or one file per run.

:class:`Recording` takes decoded output messages (view results, the index,
and the ``context``/``params``/``mark`` metadata topics) and writes them
with h5py.  Files are written in SWMR mode (``libver='latest'``), so a
reader can open them while they grow and a file killed at any moment
opens and holds everything up to the last :meth:`Recording.flush`.

SWMR forbids creating groups and datasets while it is on, so new
segments (a view seen for the first time, a result of a new layout) wait
in memory until the next flush, which closes the file, creates all of
them in one go, and switches SWMR on again: one short window per batch of
new views, not one per result.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Mapping

import h5py

from ..messages import unpack_seq
from .._version import __version__
from .columns import LARGE_ROW, Column
from .layout import (FORMAT, FORMAT_VERSION, META, META_TABLES, MISSING, NO_EVENT,
                     RUN_ABSENT, RUN_NONE, VIEWS, classify, to_json)
from .segment import Segment
from .space import Room, os_error_text

__all__ = ["Recording", "RecordingFile", "check_record_path", "RecordPathError"]

log = logging.getLogger(__name__)


class RecordPathError(ValueError):
    """A --record path that cannot be written (one line for the user)."""



def check_record_path(path: str) -> None:
    """Refuse a path the recorder could not write, before anything starts.

    A directory gets one file per run (a path ending in ``/`` is one, created
    if missing); anything else is a file, which may exist only if it is a
    recording (new results are appended to it).
    """
    if os.path.isdir(path):
        if not os.access(path, os.W_OK | os.X_OK):
            raise RecordPathError(f"cannot write in the directory {path} (permission denied)")
        return
    parent = os.path.dirname(os.path.abspath(path))
    if path.endswith(os.sep):  # a directory to create (Recording does)
        if not os.path.isdir(parent):
            raise RecordPathError(f"no directory {parent} to create {path} in")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise RecordPathError(f"cannot create {path}: {parent} is not writable")
        return
    if not os.path.isdir(parent):
        raise RecordPathError(f"no directory {parent} for the recording {path}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RecordPathError(f"cannot create {path}: {parent} is not writable")
    if os.path.exists(path):
        if not os.access(path, os.R_OK | os.W_OK):
            raise RecordPathError(f"cannot write {path} (permission denied)")
        try:
            with h5py.File(path, "r", locking=False) as f:
                fmt = f.attrs.get("format")
        except OSError:
            try:  # an SWMR file that was not closed opens only like this
                with h5py.File(path, "r", swmr=True, locking=False) as f:
                    fmt = f.attrs.get("format")
            except OSError:
                fmt = None
            if fmt == FORMAT:
                raise RecordPathError(
                    f"{path} is being written, or was not closed (its writer was "
                    f"killed); record to another file, or run 'h5clear -s {path}' "
                    "first to append to it") from None
        if fmt != FORMAT:
            raise RecordPathError(f"{path} exists and is not a metropc recording; "
                                  "refusing to overwrite it")


def _int(value, default):
    return value if type(value) is int else default


class RecordingFile:
    """One HDF5 file being written: its segments and metadata tables."""

    def __init__(self, path: str, attrs: Mapping[str, str], on_unwritable=None):
        self.path = path
        #: called as (view, n) with the n results of a view HDF5 refused
        self.on_unwritable = on_unwritable
        self.segments: dict[str, list[Segment]] = {}
        self.first_index: dict[str, int] = {}  # view -> first segment number of this session
        self.new: list[Segment] = []           # segments waiting to be created
        self.view_info: dict[str, tuple] = {}  # what meta/views says per view
        self.tables = {
            table: {name: Column(f"{META}/{table}/{name}", dtype)
                    for name, dtype in columns.items()}
            for table, columns in META_TABLES.items()}
        self.room = Room(path)  # (stop before the disk is full: recording.space)
        exists = os.path.exists(path)
        #: Whether this session made the file (its root attributes are ours).
        self.created = not exists
        try:
            self.h5 = h5py.File(path, "a" if exists else "w", libver="latest", locking=False)
        except OSError as e:
            raise RecordPathError(f"cannot {'open' if exists else 'create'} {path}: "
                                  f"{os_error_text(e)}") from None
        try:
            if exists:
                if self.h5.attrs.get("format") != FORMAT:
                    raise RecordPathError(f"{path} is not a metropc recording")
                for view, group in self.h5.get(VIEWS, {}).items():
                    # (numbers may have gaps: a segment that could not be written)
                    self.first_index[view] = max(map(int, group), default=-1) + 1
            else:
                self.h5.attrs["format"] = FORMAT
                self.h5.attrs["format_version"] = FORMAT_VERSION
                self.h5.attrs["metropc_version"] = __version__
                self.h5.attrs["created"] = datetime.datetime.now(
                    datetime.timezone.utc).isoformat(timespec="seconds")
                for key, value in attrs.items():
                    self.h5.attrs[key] = value
                self.h5.require_group(VIEWS)
            for col in self._table_columns():
                col.create(self.h5)
            self.h5.swmr_mode = True
        except BaseException:
            self.h5.close()
            raise

    def add(self, view: str, layout, data, meta: tuple, view_info) -> bool:
        """Add one result; False if results of its layout proved unwritable."""
        segments = self.segments.setdefault(view, [])
        if segments and segments[-1].layout.accepts(layout):
            segment = segments[-1]
            if segment.failed:
                return False
            if segment.created and getattr(data, "nbytes", 0) >= LARGE_ROW:
                # (written at once, so its room is looked at now)
                self.room.take(segment.data.bytes_ahead([data]))
            segment.append(data, layout, meta)
            return True
        if segments and segments[-1].layout.kind == "dataarray":
            # Coordinates that differ from the segment's: a segment of
            # per-event coordinates, so that varying ones do not start a
            # segment per result.
            layout.per_event_coords = True
        index = self.first_index.get(view, 0) + len(segments)
        segment = Segment(view, index, layout, getattr(data, "shape", ()), view_info)
        segments.append(segment)
        self.new.append(segment)
        segment.append(data, layout, meta)
        return True

    def add_row(self, table: str, row: Mapping) -> None:
        for name, col in self.tables[table].items():
            col.append(row[name])

    def note_view(self, view: str, info: tuple, now: float) -> None:
        """Record a view's output type, stage, hidden and label once, and on change."""
        if info is not None and self.view_info.get(view) != info:
            self.view_info[view] = info
            output, stage, hidden, label = info
            self.add_row("views", {"name": view, "output": output, "stage": stage,
                                   "hidden": hidden, "label": label, "time": now})

    def flush(self) -> None:
        """Create waiting segments, write every pending row, flush the file.

        Raises :class:`~metropc.recording.space.DiskNearlyFull`, having
        written nothing, when that would leave the disk all but full.
        """
        self.room.take(self.bytes_ahead())
        if self.new:
            self._create(self.new)
            self.new = []
        for segment in self._all_segments():
            self._write(segment)
        for col in self._table_columns():
            col.write()
        self.h5.flush()

    def _all_segments(self):
        """Every segment of every view, in the order they were made."""
        for segments in self.segments.values():
            yield from segments

    def _table_columns(self):
        """Every column of the metadata tables."""
        for columns in self.tables.values():
            yield from columns.values()

    def bytes_ahead(self) -> int:
        """At most how many bytes of the disk the next :meth:`flush` takes."""
        return (sum(seg.bytes_ahead() for seg in self._all_segments())
                + sum(col.bytes_ahead() for col in self._table_columns()))

    def abandon(self) -> int:
        """Close the file without writing what waits (the disk is all but
        full); how many results that leaves out."""
        dropped = sum(seg.drop_pending() for seg in self._all_segments())
        for col in self._table_columns():
            col.pending = []
        self.new = []
        self.h5.close()
        return dropped

    def _create(self, segments: list[Segment]) -> None:
        """Leave SWMR mode (close, reopen), create `segments`, enter it again."""
        for segment in self._all_segments():
            if segment.created:
                self._write(segment)
        self.h5.close()
        self.h5 = h5py.File(self.path, "r+", libver="latest", locking=False)
        for segment in segments:
            try:
                segment.create(self.h5)
            except (TypeError, ValueError) as e:  # what HDF5 cannot hold
                # (its group stays, without train_id: readers skip it; deleting
                # it here would keep SWMR mode from starting again)
                self._failed(segment, e)
        for segment in self._all_segments():
            if segment.created and segment not in segments:
                segment.bind(self.h5)
        for col in self._table_columns():
            col.bind(self.h5)
        self.h5.swmr_mode = True

    def _write(self, segment: Segment) -> None:
        if segment.failed:
            return
        try:
            segment.write()
        except (TypeError, ValueError) as e:  # a value HDF5 cannot hold
            self._failed(segment, e)

    def _failed(self, segment: Segment, error: Exception) -> None:
        """One view's results that HDF5 refuses stop that view's segment,
        not the recording: logged once, the rest counted as skipped."""
        dropped = segment.fail()
        if self.on_unwritable is not None:
            self.on_unwritable(segment.view, dropped)
        layout = segment.layout
        what = ", ".join(x for x in (layout.kind, layout.dtype, f"{layout.ndim} axes") if x)
        log.warning("view %s: its results (%s) cannot be written to %s (%s: %s); "
                    "the next ones like them are not recorded", segment.view, what,
                    self.path, type(error).__name__, error)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.h5.close()


class Recording:
    """Every published result, and the metadata topics, into HDF5.

    Parameters
    ----------
    path : str
        A file, or a directory that gets one file per run
        (``run_NNNN.h5``; results of no run go to ``recording.h5``).
    views : collection of str, optional
        Record only these views.
    attrs : mapping, optional
        Extra root attributes of new files (e.g. the pipeline's address).
    """

    def __init__(self, path: str, *, views=None, attrs: Mapping[str, str] | None = None):
        check_record_path(path)
        if path.endswith(os.sep) and not os.path.isdir(path):
            os.mkdir(path)
        self.path = path
        self.directory = os.path.isdir(path)
        self.views = None if views is None else frozenset(views)
        self.attrs = dict(attrs or {})
        self.files: dict[object, RecordingFile] = {}
        self.run: int | None = None         # the current run, from marks
        self.view_info: dict[str, tuple] = {}
        # latest context and params messages with their time, for new run files
        self.context: tuple[dict, float] | None = None
        self.params: tuple[dict, float] | None = None
        self.recorded = 0
        self.skipped: dict[str, int] = {}  # view -> results that cannot be recorded
        if not self.directory:
            self._file(None)  # open (and check) the file now

    def set_attrs(self, **attrs: str) -> None:
        """Root attributes learnt after the file was opened (the address of
        the pipeline, known once it runs): in the files this session made,
        and in those it makes from now on."""
        self.attrs.update(attrs)
        for f in self.files.values():
            if f.created:
                for key, value in attrs.items():
                    f.h5.attrs[key] = value

    def _file(self, run) -> RecordingFile:
        key = run if self.directory else None
        f = self.files.get(key)
        if f is None:
            if len(self.files) >= 2:  # a run ended: close the oldest file
                oldest = next(iter(self.files))
                self.files.pop(oldest).close()
            if self.directory:
                f = self._open_in_directory("recording" if key is None else f"run_{key:04d}")
            else:
                f = RecordingFile(self.path, self.attrs, self._unwritable)
            self.files[key] = f
            path = f.path
            if self.context is not None:  # with the time they arrived
                f.add_row("contexts", self._context_row(*self.context))
            if self.params is not None:
                f.add_row("params", self._params_row(*self.params))
            log.info("recording to %s", path)
        else:  # most recently used last
            self.files[key] = self.files.pop(key)
        return f

    def _open_in_directory(self, stem: str) -> RecordingFile:
        """``<stem>.h5``, appended to if it exists; if that file cannot be
        opened (its writer was killed, it is written elsewhere), the next
        free ``<stem>-<k>.h5`` instead: the reader reads them all."""
        for k in range(1000):
            path = os.path.join(self.path, f"{stem}.h5" if k == 0 else f"{stem}-{k}.h5")
            try:
                return RecordingFile(path, self.attrs, self._unwritable)
            except (OSError, RecordPathError) as e:
                log.warning("cannot append to %s (%s); trying the next name", path, e)
        raise RecordPathError(f"no file name left for {stem} in {self.path}")

    def _unwritable(self, view: str, n: int) -> None:
        """Results counted as recorded that HDF5 then refused: skipped instead."""
        self.recorded -= n
        self.skipped[view] = self.skipped.get(view, 0) + n

    # -- input -------------------------------------------------------------------------
    def add_result(self, view: str, payload: Mapping, now: float) -> bool:
        """Record one ``view#<view>`` payload; False if it could not be."""
        if self.views is not None and view not in self.views:
            return False
        found = classify(payload.get("data"))
        if found is None:
            n = self.skipped[view] = self.skipped.get(view, 0) + 1
            if n == 1:
                log.warning("view %s: a %s result cannot be recorded (only numbers, "
                            "arrays, DataArrays, str and bytes are)", view,
                            type(payload.get("data")).__name__)
            return False
        layout, data = found
        event_id = payload.get("event_id")
        if type(event_id) is not int:
            event_id = (int(event_id) if isinstance(event_id, float)
                        and event_id.is_integer() else NO_EVENT)
        if "run" in payload:
            run = payload["run"]
            run_value = run if type(run) is int else RUN_NONE
        else:
            run, run_value = self.run, RUN_ABSENT
        seq = unpack_seq(payload.get("seq"))
        seq = MISSING if seq is None else seq[1]
        f = self._file(run if type(run) is int else None)
        info = self.view_info.get(view)
        f.note_view(view, info, now)
        if not f.add(view, layout, data,
                     (event_id, _int(payload.get("version"), MISSING), run_value, seq, now),
                     info):
            self.skipped[view] = self.skipped.get(view, 0) + 1
            return False
        self.recorded += 1
        return True

    def note_index(self, entries: Mapping, now: float) -> None:
        """Keep each view's output type, stage, hidden flag and label."""
        for path, entry in entries.items():
            if path.startswith("view#") and hasattr(entry, "stage"):
                self.view_info[path[5:]] = (int(entry.output.value), int(entry.stage.value),
                                            bool(entry.hidden), str(entry.label))

    def add_meta(self, topic: str, payload: Mapping, now: float) -> None:
        """Record a ``context``, ``params`` or ``mark`` message."""
        if topic == "context":
            self.context = (dict(payload), now)
            for f in self._targets():
                f.add_row("contexts", self._context_row(payload, now))
        elif topic == "params":
            self.params = (dict(payload), now)
            for f in self._targets():
                f.add_row("params", self._params_row(payload, now))
        elif topic == "mark":
            kind = str(payload.get("kind"))
            run = payload.get("run")
            if kind == "run_start" and type(run) is int:
                self.run = run
            event_id = payload.get("event_id")
            row = {"kind": kind, "run": run if type(run) is int else RUN_NONE,
                   "train_id": event_id if type(event_id) is int else NO_EVENT,
                   "views": to_json(payload.get("views") or []), "time": now}
            self._file(run if type(run) is int else self.run).add_row("marks", row)
            if kind == "run_end":
                self.run = None

    def _targets(self) -> list[RecordingFile]:
        """The open files; none yet is fine: every new file starts with the
        latest context and parameters."""
        return list(self.files.values())

    @staticmethod
    def _context_row(payload, now):
        return {"version": _int(payload.get("version"), MISSING),
                "path": str(payload.get("path", "")), "source": str(payload.get("source", "")),
                "parameters": to_json(payload.get("parameters", {})), "time": now}

    @staticmethod
    def _params_row(payload, now):
        return {"version": _int(payload.get("version"), MISSING),
                "parameters": to_json(payload.get("parameters", {})), "time": now}

    # -- output ------------------------------------------------------------------------
    def flush(self) -> None:
        """Write everything pending and flush every open file."""
        for f in self.files.values():
            f.flush()

    def abandon(self) -> int:
        """Close every file without writing what waits, for a disk that is
        all but full; how many results that leaves out."""
        dropped, error = self._close_each(RecordingFile.abandon)
        self.recorded -= dropped
        if error is not None:
            raise error
        return dropped

    def close(self) -> None:
        """Flush and close every file."""
        _, error = self._close_each(RecordingFile.close)
        if error is not None:
            raise error

    def _close_each(self, close) -> tuple[int, Exception | None]:
        """`close` every open file, all of them even when one raises: the
        sum of what they returned, and the first error (for the caller to
        raise once the counts are kept)."""
        files, self.files = list(self.files.values()), {}
        total, error = 0, None
        for f in files:
            try:
                total += close(f) or 0
            except Exception as e:  # noqa: BLE001 - close the others, then report
                error = error or e
        return total, error

"""Splitting runs into chunks of trains, the unit of work of a Dask worker.

A chunk never spans two runs: the driver resets builtins at run
boundaries, and a worker opens one run per chunk.  The driver only reads
each run's train ids here (file metadata); the data itself is read by the
workers, each for its own chunk.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["Chunk", "plan_runs", "default_chunk_trains", "MAX_DEFAULT_CHUNK"]

log = logging.getLogger(__name__)

#: The largest chunk chosen without ``chunk_trains``: a worker holds the
#: results of one chunk until it returns them, so this bounds its memory.
MAX_DEFAULT_CHUNK = 64
#: Chunks per worker thread aimed at without ``chunk_trains``: enough that
#: a slow chunk or a lost worker does not leave the others idle at the end.
CHUNKS_PER_THREAD = 4


@dataclass(frozen=True)
class Chunk:
    """Consecutive trains of one run, processed by one task.

    ``index`` is the chunk's place in train order (over all runs), which is
    the order the driver feeds REDUCE in; ``first`` the number of trains
    before it over all runs (the running event count, for contexts with an
    ``event_counter_alias``).
    """

    index: int
    path: str
    run: int | None
    train_ids: tuple[int, ...]
    first: int

    def __len__(self) -> int:
        return len(self.train_ids)


def default_chunk_trains(n_trains: int, n_threads: int) -> int:
    """Trains per chunk: a few chunks per worker thread, at most
    :data:`MAX_DEFAULT_CHUNK` trains."""
    per = math.ceil(n_trains / max(1, CHUNKS_PER_THREAD * n_threads))
    return max(1, min(MAX_DEFAULT_CHUNK, per))


def run_trains(paths: Sequence[str], ctx_paths: Iterable[str] | None = None
               ) -> list[tuple[str, int | None, list[int]]]:
    """``(path, run number, train ids)`` of each run, in the order given.

    Opens each run with the same reader as a live replay
    (:class:`metropc.sources.files.FileSource`), so the trains and the run
    number are those the live pipeline would see; raises SourceError (one
    line) for a path that is not a readable run.
    """
    from ..sources.files import FileSource

    wanted = None if ctx_paths is None else list(ctx_paths)
    runs = []
    for path in paths:
        source = FileSource(os.fspath(path), paths=wanted, rate="max")
        try:
            runs.append((source.path, source.run_number, source.train_ids))
        finally:
            source.release()
    return runs


def plan_runs(runs: Sequence[tuple[str, int | None, Sequence[int]]],
              chunk_trains: int) -> list[Chunk]:
    """Chunks of at most `chunk_trains` trains over `runs` (from
    :func:`run_trains`), in train order, none spanning two runs."""
    if chunk_trains < 1:
        raise ValueError(f"chunk_trains must be at least 1, got {chunk_trains}")
    chunks: list[Chunk] = []
    first = 0
    for path, run, tids in runs:
        for start in range(0, len(tids), chunk_trains):
            part = tuple(int(t) for t in tids[start:start + chunk_trains])
            chunks.append(Chunk(len(chunks), path, run, part, first))
            first += len(part)
    return chunks

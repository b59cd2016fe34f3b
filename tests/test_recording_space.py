"""How much of the disk a recording's next write takes, and the stop
before the disk is full (the recorder's side: tests/test_recording.py)."""

from __future__ import annotations

import numpy as np
import pytest

from metropc.recording import space
from metropc.recording.columns import CHUNK_ROWS, Column
from metropc.recording.space import RESERVE, DiskNearlyFull, Room


def test_a_row_that_starts_a_chunk_costs_the_chunk():
    col = Column("v/0/data", "<f8", (20000,), ragged=True)
    assert (col.chunk_rows, col.chunk_bytes) == (6, 960000)  # 1 MiB chunks
    row = np.zeros(20000)
    assert col.bytes_ahead([row]) == 160000 + 960000  # the first row: a new chunk
    col.rows = 1
    assert col.bytes_ahead([row]) == 160000           # in the chunk already there
    col.rows = 6
    assert col.bytes_ahead([row]) == 160000 + 960000  # the seventh: the next chunk
    col.pending = [row] * 5                           # rows 6..10, then row 11 ...
    assert col.bytes_ahead() == 5 * 160000 + 960000
    assert col.bytes_ahead([row]) == 160000           # ... is in their chunk
    col.pending = []
    assert col.bytes_ahead() == 0


def test_scalars_cost_their_items_and_their_chunks():
    col = Column("v/0/train_id", "<i8")
    assert col.chunk_rows == CHUNK_ROWS
    col.pending = list(range(1000))
    assert col.bytes_ahead() == 8000 + CHUNK_ROWS * 8
    col.rows = 1
    assert col.bytes_ahead() == 8000


def test_text_costs_its_length():
    col = Column("meta/contexts/source", "str")
    col.rows = 1
    col.pending = ["x" * 1000, "y"]
    assert col.bytes_ahead() == 1000 + 1 + 2 * 16


class FakeDisk:
    """free_bytes answers, counted, and a clock that moves when told."""

    def __init__(self, free):
        self.free, self.asked, self.now = free, 0, 0.0

    def free_bytes(self, path):
        self.asked += 1
        return self.free


@pytest.fixture
def disk(monkeypatch):
    fake = FakeDisk(10 * RESERVE)
    monkeypatch.setattr(space, "free_bytes", fake.free_bytes)
    return fake


def test_room_keeps_the_reserve(disk):
    room = Room("/data/rec.h5", clock=lambda: disk.now)
    room.take(9 * RESERVE)  # leaves exactly the reserve
    room.take(0)
    with pytest.raises(DiskNearlyFull) as e:
        room.take(1)
    assert (e.value.free, e.value.need) == (RESERVE, 1)
    assert str(e.value) == "1.0 MiB free; the next write needs up to 0.0 MiB, " \
        "and 1.0 MiB is kept free"


def test_room_asks_the_file_system_at_most_every_interval(disk):
    """Between two answers what was taken is subtracted; a refusal is
    checked against a fresh answer (space freed meanwhile counts)."""
    room = Room("/data/rec.h5", interval=0.5, clock=lambda: disk.now)
    for _ in range(8):
        room.take(RESERVE)
    assert disk.asked == 1                    # (8 MiB taken of 10)
    with pytest.raises(DiskNearlyFull):
        room.take(2 * RESERVE)                # 2 left: refused (the answer is this instant's)
    assert disk.asked == 1
    disk.now = 0.1
    disk.free = 20 * RESERVE                  # someone freed space
    room.take(2 * RESERVE)                    # refused by the count, accepted by a fresh answer
    assert disk.asked == 2
    room.take(RESERVE)
    assert disk.asked == 2
    disk.now = 0.7
    room.take(1)
    assert disk.asked == 3                    # the interval is over: asked again


def test_free_bytes_of_a_real_directory(tmp_path):
    import shutil

    free = space.free_bytes(str(tmp_path / "rec.h5"))
    assert abs(free - shutil.disk_usage(tmp_path).free) < 64 << 20


def test_a_recording_stops_whole_when_the_disk_is_nearly_full(tmp_path, monkeypatch):
    """In process: a flush that would leave less than the reserve writes
    nothing; abandoning closes the file with every flushed result whole."""
    import h5py

    from metropc.recording.writer import Recording

    free = [1 << 40]
    monkeypatch.setattr(space, "free_bytes", lambda path: free[0])
    monkeypatch.setattr(space.Room, "INTERVAL", 0.0)  # (each write asks)
    path = tmp_path / "rec.h5"
    rec = Recording(str(path))
    for n in range(3):
        assert rec.add_result("v", {"data": np.full(1000, n), "event_id": n}, 0.0)
    rec.flush()
    free[0] = RESERVE + 100  # (less than the next flush takes)
    for n in range(3, 5):
        rec.add_result("v", {"data": np.full(1000, n), "event_id": n}, 0.0)
    with pytest.raises(DiskNearlyFull):
        rec.flush()
    assert rec.abandon() == 2
    assert rec.recorded == 3
    with h5py.File(path, "r") as f:  # closed cleanly: no SWMR needed
        tid = f["views/v/0/train_id"][:]
        np.testing.assert_array_equal(tid, [0, 1, 2])
        np.testing.assert_array_equal(f["views/v/0/data"][:3],
                                      np.repeat(tid[:, None], 1000, axis=1))


def test_a_large_row_is_looked_at_before_it_is_written(tmp_path, monkeypatch):
    """Rows of 64 KiB or more are written as they come: their room too."""
    from metropc.recording.writer import Recording

    free = [1 << 40]
    monkeypatch.setattr(space, "free_bytes", lambda path: free[0])
    monkeypatch.setattr(space.Room, "INTERVAL", 0.0)  # (each write asks)
    rec = Recording(str(tmp_path / "rec.h5"))
    rec.add_result("v", {"data": np.zeros(20000), "event_id": 0}, 0.0)
    rec.flush()  # (creates the segment: the next large rows go straight to the file)
    free[0] = RESERVE + 100000
    with pytest.raises(DiskNearlyFull):
        rec.add_result("v", {"data": np.zeros(20000), "event_id": 1}, 0.0)
    assert rec.abandon() == 0
    assert rec.recorded == 1


def test_the_rest_of_a_batch_is_counted_as_left_out(tmp_path, monkeypatch):
    """The disk fills in the middle of a batch of results: those of the batch
    not handed to the writer are counted with the ones that waited."""
    import zmq

    from metropc.messages import pack_seq
    from metropc.protocol import encode_protocol
    from metropc.protocol_batch import pack_records
    from metropc.recording.recorder import Recorder
    from metropc.recording.writer import Recording

    free = [1 << 40]
    monkeypatch.setattr(space, "free_bytes", lambda path: free[0])
    monkeypatch.setattr(space.Room, "INTERVAL", 0.0)
    recording = Recording(str(tmp_path / "rec.h5"))
    recorder = Recorder(recording, ["a"])
    try:
        def batch(first, n):
            records = [encode_protocol(b"view#a", {
                "data": np.full(20000, float(t)), "event_id": t, "version": 1,
                "seq": pack_seq(7, t)})[1:] for t in range(first, first + n)]
            return [zmq.Frame(f) for f in pack_records(b"view#a", records)]

        recorder.handle(batch(0, 1))
        recording.flush()  # (the segment exists: large rows are written as they come)
        recorder.handle(batch(1, 2))  # two written at once, waiting for their train ids
        free[0] = RESERVE + 100
        with pytest.raises(DiskNearlyFull) as e:
            recorder.handle(batch(3, 5))
        assert e.value.unwritten == 5
        assert recording.abandon() == 2  # + those 5: 7 left out, 1 recorded
        assert recording.recorded == 1
    finally:
        recorder.close()

"""Replaying run directories and HDF5 files made by EXtra-data's mock helpers."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

import numpy as np
import pytest

from metropc.error import SourceError
from metropc.sources import open_source

pytest.importorskip("extra_data", reason="extra-data not installed "
                    "(pip install metropc[files])")
import h5py  # noqa: E402
from extra_data.tests.make_examples import make_spb_run  # noqa: E402
from extra_data.tests.mockdata import write_file  # noqa: E402
from extra_data.tests.mockdata.basler_camera import BaslerCamera  # noqa: E402
from extra_data.tests.mockdata.xgm import XGM  # noqa: E402

pytestmark = pytest.mark.timeout(60)

XGM_ID = "SA1_XTD2_XGM/DOOCS/MAIN"
CAM_ID = "SPB_IRU_CAM/CAM/SIDEMIC"
INTENSITY = f"karabo#{XGM_ID}:output[data.intensityTD]"
IXPOS = f"karabo#{XGM_ID}.beamPosition.ixPos"
PIXELS = f"karabo#{CAM_ID}:daqOutput[data.image.pixels]"
INTERNAL = {"internal#train_id", "internal#event_id", "internal#sequence_id",
            "internal#run"}  # the run directory is r0001


@pytest.fixture(autouse=True)
def no_leftover_threads():
    before = set(threading.enumerate())
    yield
    assert set(threading.enumerate()) <= before


def _fill(path, first, n):
    """Known values instead of the mock's zeros: they encode the train id."""
    tids = np.arange(first, first + n)
    with h5py.File(path, "r+") as f:
        f[f"INSTRUMENT/{XGM_ID}:output/data/intensityTD"][:, :4] = tids[:, None] + np.arange(4)
        f[f"CONTROL/{XGM_ID}/beamPosition/ixPos/value"][:] = tids / 10
        f[f"INSTRUMENT/{CAM_ID}:daqOutput/data/image/pixels"][:] = (tids % 1000)[:, None, None]


@pytest.fixture
def run_dir(tmp_path):
    """A two-sequence run of 6 + 4 trains with an XGM and a small camera."""
    run = tmp_path / "r0001"
    run.mkdir()
    for seq, (first, n) in enumerate([(10000, 6), (10006, 4)]):
        path = run / f"RAW-R0001-DA01-S{seq:05d}.h5"
        write_file(str(path), [XGM(XGM_ID), BaslerCamera(CAM_ID, sensor_size=(8, 6))],
                   ntrains=n, firsttrain=first, chunksize=n)
        _fill(path, first, n)
    return run


def test_replays_all_trains_in_order_with_values(run_dir):
    with open_source(str(run_dir), rate="max") as source:
        events = list(source)
    assert [e["internal#train_id"] for e in events] == list(range(10000, 10010))
    assert all(e["internal#event_id"] == e["internal#train_id"] for e in events)
    assert all(e["internal#sequence_id"] == -1 for e in events)
    ev = events[7]
    np.testing.assert_array_equal(ev[INTENSITY][:4], 10007 + np.arange(4))
    assert ev[IXPOS] == pytest.approx(1000.7)
    assert ev[PIXELS].shape == (8, 6) and (ev[PIXELS] == 7).all()
    # Control values are named as the bridge names them; no timestamps.
    assert not any(k.endswith((".value", ".timestamp")) for k in ev)
    assert source.run is None  # files closed


def test_only_wanted_paths(run_dir):
    paths = [INTENSITY, f"{XGM_ID}.beamPosition.ixPos.value", "karabo#NOT/THERE/X.y",
             "view#v"]
    with open_source(f"files:{run_dir}", rate="max", paths=paths) as source:
        events = list(source)
    assert len(events) == 10
    assert set(events[0]) == INTERNAL | {INTENSITY, IXPOS + ".value"}
    assert events[3][IXPOS + ".value"] == pytest.approx(1000.3)


def test_misspelled_paths_are_named_with_the_closest_the_run_has(run_dir, caplog):
    caplog.set_level(logging.WARNING, logger="metropc.sources.files")
    paths = [f"karabo#{XGM_ID}:output[data.intensityTDD]",   # a key of a source there
             f"karabo#{XGM_ID}.beamPosition.ixPoz",           # a control key
             f"karabo#{CAM_ID[:-1]}:daqOutput[data.image.pixels]",  # the source itself
             "karabo#NOT/THERE/X.y"]                           # nothing like it
    with open_source(str(run_dir), rate="max", paths=paths) as source:
        events = list(source)
    assert len(events) == 10 and all(set(e) == INTERNAL for e in events)
    said = {r.getMessage().split(" has no data for ")[1] for r in caplog.records
            if " has no data for " in r.getMessage()}
    assert said == {
        f"{paths[0]}; did you mean '{INTENSITY}'?; views that need it do not run",
        f"{paths[1]}; did you mean '{IXPOS}'?; views that need it do not run",
        f"{paths[2]}; did you mean '{PIXELS}'?; views that need it do not run",
        f"{paths[3]}; views that need it do not run"}


def test_set_paths_goes_on_from_the_next_train(run_dir):
    with open_source(str(run_dir), rate="max", paths=[IXPOS]) as source:
        first = [next(source) for _ in range(7)]
        source.set_paths([INTENSITY])
        rest = list(source)
        source.set_paths(None)  # after the end: nothing more
        assert list(source) == []
    assert [e["internal#train_id"] for e in first + rest] == list(range(10000, 10010))
    assert set(first[-1]) == INTERNAL | {IXPOS}
    assert [set(e) for e in rest] == [INTERNAL | {INTENSITY}] * 3
    np.testing.assert_array_equal(rest[0][INTENSITY][:4], 10007 + np.arange(4))


def test_nothing_wanted_still_gives_every_train(run_dir):
    with open_source(str(run_dir), rate="max", paths=["view#x"]) as source:
        events = list(source)
    assert [set(e) for e in events] == [INTERNAL] * 10
    assert events[-1]["internal#train_id"] == 10009


def test_single_file_and_file_url(run_dir):
    path = run_dir / "RAW-R0001-DA01-S00001.h5"
    with open_source(f"file://{path}", rate="max", paths=[IXPOS]) as source:
        events = list(source)
    assert [e["internal#train_id"] for e in events] == [10006, 10007, 10008, 10009]
    assert events[0][IXPOS] == pytest.approx(1000.6)


def test_default_rate_is_the_facility_10_hz(run_dir):
    with open_source(str(run_dir)) as source:
        assert source.rate == 10.0
    t0 = time.monotonic()
    with open_source(str(run_dir), rate=40, paths=[IXPOS]) as source:
        assert len(list(source)) == 10
    assert time.monotonic() - t0 >= 9 / 40 * 0.9


def test_mock_spb_run(tmp_path):
    make_spb_run(str(tmp_path), sensor_size=(16, 12))
    agipd = "karabo#SPB_DET_AGIPD1M-1/DET/3CH0:xtdf[image.cellId]"
    with open_source(str(tmp_path), rate="max", parallelize=False,
                     paths=[agipd, PIXELS]) as source:
        events = list(source)
    assert len(events) == 64 and events[0]["internal#train_id"] == 10000
    assert events[0][agipd].shape[0] == 64  # one per frame
    assert events[0][PIXELS].shape == (16, 12)


def test_missing_path():
    with pytest.raises(SourceError, match="/no/such/run: no such file or directory"):
        open_source("/no/such/run")
    with pytest.raises(SourceError, match=r"no_such_file.h5"):
        open_source("no_such_file.h5")


def test_empty_directory(tmp_path):
    with pytest.raises(SourceError, match="no HDF5"):
        open_source(f"files:{tmp_path}")


def test_corrupt_file_in_run_is_named(run_dir):
    bad = run_dir / "RAW-R0001-DA01-S00001.h5"
    with open(bad, "r+b") as f:
        f.truncate(500)
    with pytest.raises(SourceError, match=r"corrupt or unreadable.*S00001.h5"):
        open_source(str(run_dir))
    with open_source(str(run_dir), rate="max", skip_corrupt=True) as source:
        tids = [e["internal#train_id"] for e in source]
    assert tids == list(range(10000, 10006))


def test_corrupt_single_file_is_named(tmp_path):
    bad = tmp_path / "RAW-R0001-DA01-S00000.h5"
    bad.write_bytes(b"not an HDF5 file at all")
    with pytest.raises(SourceError, match=r"RAW-R0001-DA01-S00000.h5: cannot open"):
        open_source(str(bad))


def test_read_error_during_replay(run_dir):
    source = open_source(str(run_dir), rate="max", paths=[INTENSITY])
    # Damage the second file after the run was opened.
    with open(run_dir / "RAW-R0001-DA01-S00001.h5", "r+b") as f:
        f.seek(4096)
        f.write(b"\xff" * 100_000)
    for f in source.run.files:
        f.close()
    with source, pytest.raises(SourceError, match="error reading"):
        list(source)


def test_missing_package_says_what_to_install(monkeypatch, run_dir):
    monkeypatch.setitem(sys.modules, "extra_data", None)
    with pytest.raises(SourceError, match=r"pip install metropc\[files\]"):
        open_source(str(run_dir))


def test_unknown_option(run_dir):
    with pytest.raises(SourceError, match="unknown option"):
        open_source(str(run_dir), colour="red")


def test_paths_leave_no_cache_outside_the_run(run_dir):
    before = set(os.listdir(run_dir.parent))
    with open_source(str(run_dir), rate="max") as source:
        list(source)
    assert set(os.listdir(run_dir.parent)) == before

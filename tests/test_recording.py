"""Recording (issue 16): real recorder processes on real pipelines, HDF5 files
read back with h5py and xarray, replay decoded like the live output.

Every process has a deadline and is ended in a ``finally``; files live in
``tmp_path``; readiness is waited for by polling with deadlines.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import end_session
import zmq

pytest.importorskip("h5py", reason="h5py not installed (pip install metropc[record])")
import h5py  # noqa: E402
import xarray as xr  # noqa: E402

import metropc  # noqa: E402
from metropc.messages import pack_seq, unpack_seq
from metropc.client import decode_index, encode_index, IndexViewEntry  # noqa: E402
from metropc.enums import ViewOutput, ViewStage  # noqa: E402
from metropc.protocol import decode_protocol, encode_protocol  # noqa: E402
from metropc.recording.process import RecorderError, RecorderProcess  # noqa: E402
from metropc.recording.reader import iter_messages, open_file  # noqa: E402

pytestmark = pytest.mark.timeout(120)

XGM_ID = "SA1_XTD2_XGM/DOOCS/MAIN"
CAM_ID = "SPB_IRU_CAM/CAM/SIDEMIC"
INTENSITY = f"karabo#{XGM_ID}:output[data.intensityTD]"
IXPOS = f"karabo#{XGM_ID}.beamPosition.ixPos"
PIXELS = f"karabo#{CAM_ID}:daqOutput[data.image.pixels]"

CONTEXT = f"""
import numpy as np
import xarray as xr

@View.Scalar
def intensity(v: '{INTENSITY}'):
    return float(v[:4].sum())

@View.Vector
def first(v: '{INTENSITY}', x: '{IXPOS}'):
    return np.asarray(v[:round(x * 10) % 3 + 2], dtype=np.float32)  # varying length

@View.Image
def image(px: '{PIXELS}'):
    return xr.DataArray(px.astype(np.float32), dims=["y", "x"],
                        coords={{"x": np.arange(px.shape[1]) * 0.5}},
                        attrs={{"unit": "adu"}}, name="cam")

@View.Scalar(stage='reduce')
def position(x: '{IXPOS}'):
    return x

@View.Scalar
def label(x: '{IXPOS}'):
    return f"at {{x:.1f}}"

@View.Scalar
def phase(x: '{IXPOS}'):
    return complex(x, -x)

@View.Scalar
def raw(t: 'internal#train_id'):
    return t.to_bytes(4, "little")  # all of one length

@View.Points
def points(v: '{INTENSITY}'):
    return np.arange(4.0), np.asarray(v[:4], dtype=np.float64)  # (x, y)

@View.Vector
def pair(x: '{IXPOS}'):
    return (float(x), 2 * float(x))

@View.Vector
def listed(x: '{IXPOS}'):
    return [float(x), -float(x)]
"""
VIEWS = ("intensity", "first", "image", "position", "label", "phase", "raw", "points",
         "pair", "listed")


def deadline_poll(predicate, timeout=30.0, what="condition"):
    """Call `predicate` until it returns something true; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(0.05)  # polling a file written by another process


@pytest.fixture
def run_dir(tmp_path):
    """A two-sequence EXtra-data mock run (6 + 4 trains) with known values."""
    pytest.importorskip("extra_data", reason="extra-data not installed")
    from extra_data.tests.mockdata import write_file
    from extra_data.tests.mockdata.basler_camera import BaslerCamera
    from extra_data.tests.mockdata.xgm import XGM

    run = tmp_path / "r0001"
    run.mkdir()
    for seq, (first, n) in enumerate([(10000, 6), (10006, 4)]):
        path = run / f"RAW-R0001-DA01-S{seq:05d}.h5"
        write_file(str(path), [XGM(XGM_ID), BaslerCamera(CAM_ID, sensor_size=(8, 6))],
                   ntrains=n, firsttrain=first, chunksize=n)
        tids = np.arange(first, first + n)
        with h5py.File(path, "r+") as f:
            f[f"INSTRUMENT/{XGM_ID}:output/data/intensityTD"][:, :4] = \
                tids[:, None] + np.arange(4)
            f[f"CONTROL/{XGM_ID}/beamPosition/ixPos/value"][:] = tids / 10
            f[f"INSTRUMENT/{CAM_ID}:daqOutput/data/image/pixels"][:] = \
                (tids % 1000)[:, None, None]
    return run


def run_events(run_dir):
    from metropc.sources import open_source

    with open_source(str(run_dir), rate="max") as source:
        return list(source)


def expected_results(ctx_file, events):
    """{view: {train_id: result}} from the in-process metropc.run."""
    out = {v: {} for v in VIEWS}
    for event_id, results in metropc.run(str(ctx_file), events):
        for view in VIEWS:
            if view in results:
                out[view][event_id] = results[view]
    return out


def record_live(tmp_path, ctx_file, events, path, collect=None):
    """Run a real pipeline with a recorder subscribed before the first event;
    returns the live messages a raw SUB received meanwhile (if `collect`)."""
    from metropc.pipeline import Pipeline

    live = []
    with RecorderProcess(str(path), flush_interval=0.2) as rec:
        with Pipeline(str(ctx_file), source=None, pool=2) as pipe:
            assert rec.connect(pipe.output_addr, timeout=30)
            zctx = zmq.Context()
            sub = zctx.socket(zmq.SUB)
            sub.linger = 0
            try:
                sub.connect(pipe.output_addr)
                sub.subscribe(b"view#")
                sub.subscribe(b"index")

                def got_index():
                    pipe.request_index()
                    return sub.poll(100) and sub.recv_multipart()[0] == b"index"
                deadline_poll(got_index, 30, "live subscriber ready")
                for event in events:
                    pipe.send(event)
                n_expected = len(events) * len(VIEWS)
                deadline = time.monotonic() + 60
                while sum(p.startswith("view#") for p, _ in live) < n_expected:
                    assert time.monotonic() < deadline, "live results missing"
                    if sub.poll(200):
                        topic, data = decode_protocol(sub.recv_multipart())
                        live.append((topic.decode(), data))
            finally:
                sub.close()
                zctx.term()
            # the recorder got them too: wait until they are in the file
            deadline_poll(lambda: _rows(path) >= len(events), 30, "rows recorded")
    return live


def _rows(path):
    try:
        ds = metropc.open_recording(path)
    except (OSError, KeyError, RuntimeError, ValueError):  # (mid-write: look again)
        return 0
    return 0 if "position" not in ds else int(ds["position"].notnull().sum())


def test_recorded_values_equal_metropc_run(tmp_path, run_dir):
    ctx_file = tmp_path / "ctx.py"
    ctx_file.write_text(CONTEXT)
    events = run_events(run_dir)
    path = tmp_path / "rec.h5"
    record_live(tmp_path, ctx_file, events, path)
    expected = expected_results(ctx_file, events)
    ds = metropc.open_recording(path)
    tids = list(range(10000, 10010))
    assert list(ds["train_id"].values) == tids
    for view in ("intensity", "position"):
        assert list(ds[view].values) == [expected[view][t] for t in tids]
        assert ds[view].dtype == np.asarray(expected[view][10000]).dtype  # kept
    assert list(ds["label"].values) == [expected["label"][t] for t in tids]
    assert ds["label"].dtype.kind == "U"
    assert list(ds["phase"].values) == [expected["phase"][t] for t in tids]
    assert ds["phase"].dtype == np.complex128
    assert list(ds["raw"].values) == [expected["raw"][t] for t in tids]
    # varying length: padded with NaN, real lengths alongside
    lengths = [len(expected["first"][t]) for t in tids]
    assert list(ds["first_shape"].values[:, 0]) == lengths
    for t, row, n in zip(tids, ds["first"].values, lengths):
        np.testing.assert_array_equal(row[:n], expected["first"][t])
        assert np.isnan(row[n:]).all()
    # a DataArray keeps dims, coords, attrs and dtype
    image = ds["image"]
    assert image.dims == ("train_id", "y", "x") and image.dtype == np.float32
    assert image.attrs["unit"] == "adu"
    np.testing.assert_array_equal(ds["x"].values, np.arange(6) * 0.5)
    for t in tids:
        xr.testing.assert_equal(image.sel(train_id=t, drop=True).drop_attrs(),
                                expected["image"][t].drop_attrs().rename(None)
                                .rename("image"))
    with h5py.File(path, "r") as f:  # plain h5py, as docs/recording.md says
        seg = f["views/intensity/0"]
        assert list(seg["train_id"][:]) == tids
        assert list(seg["version"][:]) == [1] * 10
        assert list(seg["seq"][:]) == list(range(10))
        assert seg.attrs["output"] == ViewOutput.SCALAR.value
        assert seg.attrs["stage"] == ViewStage.POOL.value
        assert f["views/image/0/data"].chunks[0] >= 1
        assert f.attrs["format"] == "metropc-recording"


def test_replay_decodes_like_the_live_output(tmp_path, run_dir):
    ctx_file = tmp_path / "ctx.py"
    ctx_file.write_text(CONTEXT)
    events = run_events(run_dir)
    path = tmp_path / "rec.h5"
    live = record_live(tmp_path, ctx_file, events, path, collect=True)
    addr = f"ipc://{tmp_path}/replay"
    proc = subprocess.Popen([sys.executable, "-m", "metropc.cli.replay", str(path),
                             "--rate", "max", "--output", addr],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    zctx = zmq.Context()
    sub = zctx.socket(zmq.SUB)
    sub.linger = 0
    replayed, index = [], None
    try:
        sub.connect(addr)
        sub.subscribe(b"index")
        sub.subscribe(b"view#")
        n = sum(p.startswith("view#") for p, _ in live)
        deadline = time.monotonic() + 60
        # the index after the last result counts them all
        while len(replayed) < n or index is None or index["view#image"].counts < 10:
            assert time.monotonic() < deadline, f"replay gave {len(replayed)} of {n}"
            if sub.poll(200):
                frames = sub.recv_multipart()
                topic, data = decode_protocol(frames)
                if topic == b"index":
                    index = decode_index(data)
                else:
                    replayed.append((topic.decode(), data))
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        sub.close()
        zctx.term()

    def by_key(messages):
        return {(p, d["event_id"]): d for p, d in messages if p.startswith("view#")}
    live_by, replay_by = by_key(live), by_key(replayed)
    assert live_by.keys() == replay_by.keys()
    for key, want in live_by.items():
        got = replay_by[key]
        assert list(got) == list(want)  # same keys, same order
        assert got["version"] == want["version"]
        assert type(got["data"]) is type(want["data"]), key
        if key[0] in ("view#points", "view#pair", "view#listed"):  # (x, y), (a, b), [a, b]
            assert [type(v) for v in got["data"]] == [type(v) for v in want["data"]], key
        if isinstance(want["data"], xr.DataArray):
            xr.testing.assert_identical(got["data"], want["data"])
        else:
            np.testing.assert_array_equal(got["data"], want["data"])
    # per topic, seq numbers count 0, 1, 2, ... as live
    for view in VIEWS:
        seqs = [unpack_seq(d["seq"])[1] for p, d in replayed if p == f"view#{view}"]
        assert seqs == list(range(len(seqs)))
    entry = index["view#image"]
    assert isinstance(entry, IndexViewEntry)
    assert entry.output == ViewOutput.MATRIX and entry.stage == ViewStage.POOL
    assert entry.counts == 10


def test_sigkill_of_the_recorder_leaves_a_readable_file(tmp_path):
    """Results go on flowing; the recorder is killed mid-way; the file keeps
    everything flushed up to then, and every row is right."""
    from metropc.pipeline import Pipeline

    ctx = "@View.Scalar\ndef double(x: 'karabo#DEV.x'):\n    return 2.0 * x\n" \
          "@View.Vector\ndef ramp(x: 'karabo#DEV.x'):\n    " \
          "import numpy as np\n    return np.full(50000, x)\n"
    path = tmp_path / "rec.h5"
    with RecorderProcess(str(path), flush_interval=0.2) as rec, \
            Pipeline(ctx, source=None, pool=1) as pipe:
        assert rec.connect(pipe.output_addr, timeout=30)
        send = _sender(pipe)

        def some_rows():
            for _ in range(20):
                send()
            try:
                with open_file(str(path)) as f:
                    return f["views/double/0/train_id"].shape[0] >= 100
            except (OSError, KeyError):
                return False
        deadline_poll(some_rows, 60, "100 rows flushed")
        with open(f"/proc/{rec.proc.pid}/comm") as f:  # (found by its name)
            assert f.read().strip() == "metropc-record"
        rec.proc.kill()
        rec.proc.wait(10)
    # A killed SWMR writer leaves the "open for writing" flag: plain h5py
    # opens the file with swmr=True (or after `h5clear -s`).
    with h5py.File(path, "r", swmr=True) as f:
        tid = f["views/double/0/train_id"][:]
        data = f["views/double/0/data"][:len(tid)]
    assert len(tid) >= 100
    np.testing.assert_array_equal(data, 2.0 * tid)
    ds = metropc.open_recording(path)
    np.testing.assert_array_equal(ds["double"].values[:len(tid)] if len(ds["double"]) == len(tid)
                                  else ds["double"].sel(train_id=tid).values, 2.0 * tid)
    ramp = ds["ramp"].dropna("train_id", how="all")
    np.testing.assert_array_equal(ramp.values[:, 0], ramp["train_id"].values)


def _metropc_run(tmp_path, *args, timeout=60):
    return subprocess.run([sys.executable, "-m", "metropc.cli.run", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=tmp_path)


def test_metropc_run_records_a_run_directory(tmp_path, run_dir):
    """The whole command: files source, --record into a directory (created:
    the path ends in /), --record-views."""
    ctx_file = tmp_path / "ctx.py"
    ctx_file.write_text(CONTEXT)
    out = tmp_path / "recordings"
    proc = _metropc_run(tmp_path, ctx_file, "--source", run_dir, "--rate", "max",
                        "--status", "off", "--record", f"{out}/", "--record-views",
                        "intensity,image", "--pool", "1")
    assert proc.returncode == 0, proc.stderr
    assert f"metropc-run: recording to {out}" in proc.stdout
    files = os.listdir(out)
    # The files source knows the run (r0001): one file for it; a pipeline
    # that does not publish runs yet gives one file for everything.
    assert files in (["run_0001.h5"], ["recording.h5"])
    if files == ["run_0001.h5"]:
        with h5py.File(out / files[0], "r") as f:
            assert set(f["views/intensity/0/run"][:]) == {1}
    with open_file(str(out / files[0])) as f:
        contexts = [p for _, t, p in iter_messages(f) if t == "context"]
    assert contexts[0]["source"] == CONTEXT and contexts[0]["version"] == 1
    ds = metropc.open_recording(out)
    assert set(ds.data_vars) == {"intensity", "image"}
    expected = expected_results(ctx_file, run_events(run_dir))
    tids = list(ds["train_id"].values)
    # Every train: the source waits until the recorder is subscribed.
    assert tids == list(range(10000, 10010))
    for t in tids:
        assert ds["intensity"].sel(train_id=t).item() == expected["intensity"][t]


@pytest.mark.parametrize("where", ["missing_dir", "missing_parent", "not_a_recording"])
def test_unwritable_path_is_refused_before_starting(tmp_path, where):
    ctx_file = tmp_path / "ctx.py"
    ctx_file.write_text("@View.Scalar\ndef v(x: 'internal#train_id'):\n    return x\n")
    if where == "missing_dir":
        target = tmp_path / "nowhere" / "rec.h5"
    elif where == "missing_parent":  # a directory is created, its parent not
        target = f"{tmp_path}/nowhere/runs/"
    else:
        target = tmp_path / "notes.h5"
        target.write_text("precious")
    proc = _metropc_run(tmp_path, ctx_file, "--record", target, "--status", "off")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("metropc-run: error: --record")
    assert "output on" not in proc.stdout
    if where == "not_a_recording":
        assert target.read_text() == "precious"


@pytest.mark.parametrize("views, why", [("v,nosuch", "no view named nosuch"),
                                         (",,,", "names no view")])
def test_record_views_that_are_no_views_are_refused_before_starting(tmp_path, views, why):
    ctx_file = tmp_path / "ctx.py"
    ctx_file.write_text("@View.Scalar\ndef v(x: 'internal#train_id'):\n    return x\n")
    proc = _metropc_run(tmp_path, ctx_file, "--record", tmp_path / "rec.h5",
                        "--record-views", views, "--status", "off")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"metropc-run: error: --record-views {views!r}: {why} "
                                   f"in {ctx_file} (its views: v)")
    assert not (tmp_path / "rec.h5").exists()


def _recording_run(tmp_path, path, rate, stderr):
    """metropc-run recording a one-view context to `path`, in a session of
    its own; returns once it says it records."""
    ctx_file = tmp_path / "ctx.py"
    ctx_file.write_text("@View.Scalar\ndef tid(x: 'internal#train_id'):\n    return x\n")
    proc = subprocess.Popen([sys.executable, "-m", "metropc.cli.run", str(ctx_file),
                             "--rate", rate, "--status", "off", "--pool", "1",
                             "--record", str(path)],
                            stdout=subprocess.PIPE, stderr=stderr, text=True,
                            cwd=tmp_path, start_new_session=True)
    deadline = time.monotonic() + 60
    try:
        for line in proc.stdout:
            if "recording to" in line:
                return proc
            assert time.monotonic() < deadline, "no 'recording to' within 60 s"
        raise AssertionError(f"metropc-run ended (exit {proc.wait(10)}) before recording")
    except BaseException:
        end_session(proc)
        raise


def test_sigkill_of_metropc_run_leaves_a_complete_file(tmp_path):
    """The parent dies: the recorder sees its stdin end, writes and closes."""
    path = tmp_path / "rec.h5"
    proc = _recording_run(tmp_path, path, "50", stderr=subprocess.DEVNULL)
    try:
        deadline_poll(lambda: _count(path, "tid") >= 20, 60, "20 results recorded")
        proc.kill()
        proc.wait(10)
        deadline_poll(lambda: _recorder_gone(proc.pid), 30, "recorder ended")
    finally:
        end_session(proc)  # the stages and the recorder are in its session
    with h5py.File(path, "r") as f:  # closed cleanly: no swmr=True needed
        tid = f["views/tid/0/train_id"][:]
        np.testing.assert_array_equal(f["views/tid/0/data"][:len(tid)], tid)
        assert len(tid) >= 20


def _recorder_gone(session):
    import psutil

    return not any("metropc.recording.recorder" in " ".join(p.info["cmdline"] or [])
                   for p in psutil.process_iter(["cmdline"])
                   if _sid(p.pid) == session)


def _sid(pid):
    try:
        return os.getsid(pid)
    except OSError:
        return None


def _count(path, view):
    try:
        with open_file(str(path), timeout=1) as f:
            return f[f"views/{view}/0/train_id"].shape[0]
    except (OSError, KeyError, RuntimeError, ValueError):  # (mid-write: look again)
        return 0


# -- the metadata topics, from a publisher of our own ------------------------------

class FakeOutput:
    """An XPUB standing in for REDUCE, publishing exactly what a test says."""

    def __init__(self, tmp_path):
        self.zctx = zmq.Context()
        self.pub = self.zctx.socket(zmq.XPUB)
        self.pub.linger = 0
        self.addr = f"ipc://{tmp_path}/out"
        self.pub.bind(self.addr)
        self.seq = {}

    def send(self, topic, payload):
        self.pub.send_multipart(encode_protocol(topic, payload))

    def view(self, name, data, event_id, **extra):
        """A result, in a batch of one, as REDUCE sends it to the recorder
        (which subscribes to batches: docs/protocol.md §7a)."""
        from metropc.protocol_batch import pack_records

        n = self.seq.get(name, 0)
        self.seq[name] = n + 1
        topic = f"view#{name}".encode()
        frames = encode_protocol(topic, {"data": data, "event_id": event_id, "version": 1,
                                         "seq": pack_seq(7, n), **extra})
        self.pub.send_multipart(pack_records(topic, [frames[1:]]))

    def index(self, views):
        self.send("index", encode_index({
            f"view#{v}": IndexViewEntry(1, 1.0, ViewOutput.SCALAR, ViewStage.REDUCE)
            for v in views}))

    def close(self):
        self.pub.close()
        self.zctx.term()


def _connect(rec, out, views):
    """connect() returns once the recorder got an index: keep sending one."""
    import threading

    done = threading.Event()

    def ticker():
        while not done.is_set():
            out.index(views)
            done.wait(0.05)
    # the XPUB is used from the ticker only while connecting
    t = threading.Thread(target=ticker)
    t.start()
    try:
        assert rec.connect(out.addr, timeout=30)
    finally:
        done.set()
        t.join()


def test_metadata_topics_and_runs_go_to_one_file_per_run(tmp_path):
    out = FakeOutput(tmp_path)
    target = tmp_path / "runs"
    target.mkdir()
    try:
        with RecorderProcess(str(target), flush_interval=0.2) as rec:
            _connect(rec, out, ["a"])
            out.send("context", {"version": 1, "path": "ctx.py", "source": "x = 1\n",
                                 "parameters": {"gain": 2.0}})
            out.send("mark", {"kind": "run_start", "run": 7, "views": [], "event_id": 100})
            for t in range(100, 105):
                out.view("a", float(t), t, run=7)
            out.send("params", {"version": 1, "parameters": {"gain": 3.0}})
            out.send("mark", {"kind": "run_end", "run": 7, "views": [], "event_id": 104})
            out.send("mark", {"kind": "run_start", "run": 8, "views": [], "event_id": 200})
            for t in range(200, 203):
                out.view("a", np.int32(t), t, run=8)   # another dtype: a new segment
            out.view("a", 1.5, None, run=8)            # a result of no event
            deadline_poll(lambda: _count(target / "run_0008.h5", "a") >= 3, 30,
                          "run 8 written")
    finally:
        out.close()
    assert sorted(os.listdir(target)) == ["run_0007.h5", "run_0008.h5"]
    with open_file(str(target / "run_0007.h5")) as f:
        messages = [(topic, payload) for _, topic, payload in iter_messages(f)]
    topics = [t for t, _ in messages]
    assert topics[:2] == ["context", "mark"] and topics.count("view#a") == 5
    assert messages[0][1] == {"version": 1, "path": "ctx.py", "source": "x = 1\n",
                              "parameters": {"gain": 2.0}}
    assert ("params", {"version": 1, "parameters": {"gain": 3.0}}) in messages
    assert messages[-1] == ("mark", {"kind": "run_end", "run": 7, "views": [],
                                     "event_id": 104})
    view = [p for t, p in messages if t == "view#a"]
    assert [p["data"] for p in view] == [100.0, 101.0, 102.0, 103.0, 104.0]
    assert all(p["run"] == 7 and type(p["data"]) is float for p in view)
    with open_file(str(target / "run_0008.h5")) as f:
        view = [p for _, t, p in iter_messages(f) if t == "view#a"]
    assert [type(p["data"]) for p in view] == [np.int32] * 3 + [float]
    assert view[-1]["event_id"] is None
    ds = metropc.open_recording(target)
    assert list(ds["train_id"].values) == [100, 101, 102, 103, 104, 200, 201, 202]
    assert list(ds["a"].values) == [100.0, 101.0, 102.0, 103.0, 104.0, 200, 201, 202]
    assert list(ds["a_results"].values) == [1.5]  # the result of no event
    assert ds["a"].sizes["train_id"] == 8


def test_results_the_recorder_did_not_get_are_counted_and_named(tmp_path, capfd):
    """A recorder that did not keep up misses results on the way (ZeroMQ
    drops them): the gaps in their seq numbers say how many, per view."""
    out = FakeOutput(tmp_path)
    target = tmp_path / "rec.h5"
    try:
        with RecorderProcess(str(target), flush_interval=0.2) as rec:
            _connect(rec, out, ["a", "b"])
            for t in range(100, 103):
                out.view("a", float(t), t)
                out.view("b", float(t), t)
            out.seq["a"] += 2  # two of a's results lost on the way
            for t in range(105, 107):
                out.view("a", float(t), t)
            out.seq["b"] += 3  # b's last three: no later result shows the gap,
            out.send("status", {"state": "READY", "seqs": {  # the status does
                "view#a": pack_seq(7, out.seq["a"] - 1), "view#b": pack_seq(7, out.seq["b"] - 1)}})
            deadline_poll(lambda: _count(target, "a") >= 5, 30, "a written")
    finally:
        out.close()
    err = capfd.readouterr().err
    assert ("not recorded: 5 published result(s) the recorder did not get "
            "(it did not keep up; ZeroMQ dropped them on the way): 2 of a, 3 of b") in err, err
    assert list(metropc.open_recording(target)["a"].values) == [100, 101, 102, 105, 106]
    # Connected after the file was made (as metropc-run --record does): the
    # address is in the file all the same.
    with h5py.File(target, "r", locking=False) as f:
        assert f.attrs["address"] == out.addr


def test_a_stopped_recorder_is_continued_to_stop_and_closes_its_file(tmp_path):
    """SIGSTOP of the recorder (a debugger, a Ctrl-Z of its group): stopping
    it continues it, so it records what waited, closes its file and exits 0
    at once, instead of being killed after 10 s with the file not closed."""
    import signal

    out = FakeOutput(tmp_path)
    target = tmp_path / "rec.h5"
    try:
        rec = RecorderProcess(str(target), flush_interval=0.2)
        _connect(rec, out, ["a"])
        out.view("a", 100.0, 100)
        deadline_poll(lambda: _count(target, "a") >= 1, 30, "a written")
        rec.proc.send_signal(signal.SIGSTOP)
        # Published while it is stopped: in the kernel's buffers when it is
        # continued, not yet taken in by its ZeroMQ thread (a plain drain at
        # the stop missed them: a CI run recorded 1 of 4).
        for t in range(101, 601):  # (within the sockets' high-water marks)
            out.view("a", float(t), t)
        t0 = time.monotonic()
        assert rec.stop() == 0
        assert time.monotonic() - t0 < 5
    finally:
        out.close()
    with h5py.File(target, "r", locking=False) as f:  # closed: opens without SWMR
        assert f.attrs["format"] == "metropc-recording"
    assert list(metropc.open_recording(target)["a"].values) == list(range(100, 601))


def test_recorder_refuses_a_path_it_cannot_write(tmp_path):
    with pytest.raises(RecorderError, match="no directory"):
        RecorderProcess(str(tmp_path / "missing" / "x.h5"))


def test_a_file_hdf5_cannot_create_is_said_in_one_line():
    # /proc passes the checks for root but takes no new file, for anyone.
    with pytest.raises(RecorderError) as e:
        RecorderProcess("/proc/metropc-test.h5")
    assert str(e.value) == "cannot create /proc/metropc-test.h5: No such file or directory" \
        or "not writable" in str(e.value), str(e.value)


BIG_CTX = ("import numpy as np\n@View.Vector\ndef big(x: 'karabo#DEV.x'):\n"
           "    return np.full(20000, x)\n")


def _sender(pipe):
    """A function that sends the next numbered event (train id n, x = n) to `pipe`."""
    numbers = itertools.count()

    def send():
        n = next(numbers)
        pipe.send({"internal#train_id": n, "internal#event_id": n, "karabo#DEV.x": float(n)})
    return send


def _assert_big_results_go_on(pipe, send):
    """A client still gets results of BIG_CTX's view (the recorder has stopped)."""
    from metropc.client import Client
    with Client(pipe.output_addr, views=["big"], timeout=30) as client:
        def result():
            send()
            try:
                return client.recv(timeout=0.2)
            except TimeoutError:
                return None
        _, payload = deadline_poll(result, 30, "a result after the stop")
        assert payload["data"][0] == payload["event_id"]


def test_full_disk_stops_recording_not_the_pipeline(tmp_path, capfd):
    """An 8 MiB tmpfs fills up: the recorder stops before it is full, closes
    its file cleanly (whole: every train id next to its own data), says so
    and exits 3; the pipeline keeps publishing."""
    from metropc.pipeline import Pipeline

    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
            capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        path = mnt / "rec.h5"
        with RecorderProcess(str(path), flush_interval=0.2) as rec, \
                Pipeline(BIG_CTX, source=None, pool=1) as pipe:
            assert rec.connect(pipe.output_addr, timeout=30)
            send = _sender(pipe)
            for _ in range(2):  # flushed before the disk fills: kept
                send()
            deadline_poll(lambda: _count(path, "big") >= 2, 30, "two results flushed")
            deadline_poll(lambda: send() or rec.proc.poll() is not None, 60,
                          "the disk to fill up")
            assert rec.proc.returncode == 3
            _assert_big_results_go_on(pipe, send)
        err = capfd.readouterr().err
        assert re.search(r"recording to \S+rec\.h5 stopped: the disk is nearly full "
                         r"\(\d+\.\d MiB free", err), err
        assert shutil.disk_usage(mnt).free >= 1 << 20  # (nothing failed half way)
        # closed cleanly: a plain (not SWMR) reader opens it
        with h5py.File(path, "r") as f:
            tid = f["views/big/0/train_id"][:]
            data = f["views/big/0/data"][:len(tid)]
        assert len(tid) >= 2
        assert list(tid) == list(range(len(tid)))
        np.testing.assert_array_equal(data, np.repeat(tid[:, None], 20000, axis=1))
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def test_a_write_that_fails_stops_the_recorder_in_one_line_and_keeps_the_file(
        tmp_path, capfd):
    """A file size limit (ulimit -f) reached in the middle of a recording: a
    write fails for real (EFBIG; Python ignores SIGXFSZ).  The recorder says
    why in a few words, exits 3, and the file keeps every flushed row, each
    whole; the pipeline goes on."""
    import psutil

    from metropc.pipeline import Pipeline

    path = tmp_path / "rec.h5"
    with RecorderProcess(str(path), flush_interval=0.2) as rec, \
            Pipeline(BIG_CTX, source=None, pool=1) as pipe:
        assert rec.connect(pipe.output_addr, timeout=30)
        send = _sender(pipe)
        deadline_poll(lambda: send() or _count(path, "big") >= 3, 30, "three results flushed")
        # From now on the file may grow by 1 MiB (about six more results).
        limit = path.stat().st_size + (1 << 20)
        psutil.Process(rec.proc.pid).rlimit(psutil.RLIMIT_FSIZE, (limit, limit))
        deadline_poll(lambda: send() or rec.proc.poll() is not None, 60, "a write to fail")
        assert rec.proc.returncode == 3
        _assert_big_results_go_on(pipe, send)
    err = capfd.readouterr().err
    stopped = [line for line in err.splitlines() if "stopped:" in line]
    assert len(stopped) == 1, err
    assert re.search(r"recording to \S+rec\.h5 stopped: File too large; the files keep "
                     r"everything up to the last flush", stopped[0]), stopped[0]
    with h5py.File(path, "r", swmr=True) as f:  # (as after a SIGKILL)
        tid = f["views/big/0/train_id"][:]
        data = f["views/big/0/data"][:len(tid)]
    assert len(tid) >= 3 and list(tid[:3]) == [0, 1, 2]
    np.testing.assert_array_equal(data[:3], np.repeat(tid[:3, None], 20000, axis=1))


def test_metropc_run_says_when_its_recorder_dies(tmp_path):
    """A recorder killed under a running metropc-run: one error line, the
    pipeline goes on, the exit is clean."""
    import threading

    import psutil

    from conftest import cmdline
    ctx_file = tmp_path / "ctx.py"
    ctx_file.write_text("@View.Scalar\ndef tid(x: 'internal#train_id'):\n    return x\n")
    path = tmp_path / "rec.h5"
    proc = subprocess.Popen([sys.executable, "-m", "metropc.cli.run", str(ctx_file),
                             "--rate", "50", "--status", "off", "--pool", "1",
                             "--record", str(path), "--duration", "60"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")),
                              daemon=True)
    reader.start()
    try:
        deadline_poll(lambda: _count(path, "tid") >= 10, 60, "10 results recorded")
        (recorder,) = [p for p in psutil.Process(proc.pid).children()
                       if "metropc.recording.recorder" in cmdline(p)]
        recorder.kill()
        deadline_poll(lambda: any("the recorder died" in line for line in lines), 30,
                      "the report")
        assert proc.poll() is None  # the pipeline goes on
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        reader.join(5)
    err = "".join(lines)
    assert proc.returncode == 130, err
    assert "the recorder died (exit code -9): nothing more is recorded to" in err, err
    assert "Traceback" not in err


def test_results_hdf5_refuses_skip_their_view_not_the_recording(tmp_path, caplog):
    """HDF5 takes at most 32 axes: such results of one view are skipped with
    one warning and counted; every other view, and that view's results of
    another layout, are recorded; the numbering gap does not hurt appending."""
    from metropc.recording.writer import Recording

    path = tmp_path / "rec.h5"
    deep = np.zeros((1,) * 33)
    rec = Recording(str(path))
    for t in range(4):
        rec.add_result("v", {"data": np.arange(2.0), "event_id": t}, 0.0)
        rec.add_result("ok", {"data": float(t), "event_id": t}, 0.0)
    for t in range(4, 8):
        rec.add_result("v", {"data": deep, "event_id": t}, 0.0)
        rec.add_result("ok", {"data": float(t), "event_id": t}, 0.0)
        if t == 5:
            rec.flush()  # two refused at creation, two more after it
    for t in range(8, 10):
        rec.add_result("v", {"data": f"text {t}", "event_id": t}, 0.0)
    rec.close()
    assert rec.skipped == {"v": 4} and rec.recorded == 4 + 8 + 2
    warnings = [r.getMessage() for r in caplog.records if "cannot be written" in r.getMessage()]
    assert len(warnings) == 1 and "view v" in warnings[0] and "33 axes" in warnings[0]
    with h5py.File(path, "r") as f:  # 1 was refused: no train_id, readers skip it
        assert [k for k in sorted(f["views/v"], key=int)
                if "train_id" in f["views/v"][k]] == ["0", "2"]
    rec = Recording(str(path))  # append: the next segment is 3, not an existing 2
    rec.add_result("v", {"data": b"\x00\x01\x00", "event_id": 10}, 0.0)
    rec.close()
    assert rec.skipped == {} and rec.recorded == 1
    ds = metropc.open_recording(path)
    assert list(ds["ok"].values[:8]) == [float(t) for t in range(8)]
    np.testing.assert_array_equal(ds["v"].values[:4], [[0.0, 1.0]] * 4)
    assert list(ds["v~1"].values[8:10]) == ["text 8", "text 9"]
    assert ds["v~2"].values[10] == b"\x00\x01\x00"  # trailing zero bytes kept


STEP_CONTEXT = """
@View.Scalar_StepAverage
def step_mean(t: 'internal#train_id'):
    return float(t)

@View.Vector_StepStacked
def step_means(m: 'step_mean'):
    return m
"""


def test_a_step_stacked_view_records_and_reads_back(tmp_path):
    """StepStacked results grow by a step each time (per-result step
    coordinates): every one is recorded, and the file opens."""
    from metropc.pipeline import Pipeline

    ctx_file = tmp_path / "ctx.py"
    ctx_file.write_text(STEP_CONTEXT)
    path = tmp_path / "rec.h5"
    with RecorderProcess(str(path), flush_interval=0.2) as rec:
        with Pipeline(str(ctx_file), source=None, pool=2) as pipe:
            assert rec.connect(pipe.output_addr, timeout=30)
            for step in range(3):
                for t in range(1000 + 10 * step, 1005 + 10 * step):
                    pipe.send({"internal#train_id": t})
                pipe.step()  # in order after the events
            assert pipe.drain() == 0
            deadline_poll(lambda: _count_all(path, "step_means") >= 3, 30, "3 steps recorded")
    ds = metropc.open_recording(path)
    assert list(ds["step_mean_results"].values) == [1002.0, 1012.0, 1022.0]
    first, later = ds["step_means_results"], ds["step_means~1_results"]
    assert first.values.tolist() == [[1002.0]]
    np.testing.assert_array_equal(later.values, [[1002.0, 1012.0, np.nan],
                                                 [1002.0, 1012.0, 1022.0]])


def _count_all(path, view):
    """Results of `view` in all its segments so far."""
    try:
        with open_file(str(path), timeout=1) as f:
            return sum(seg["train_id"].shape[0] for seg in f[f"views/{view}"].values())
    except (OSError, KeyError, RuntimeError, ValueError):  # (mid-write: look again)
        return 0


def test_a_recorder_that_stops_writing_is_said_and_so_is_its_return(tmp_path):
    """A write hung on a network disk (here: the recorder stopped with
    SIGSTOP) was noticed only at the end of the run.  The recorder says it
    flushed every second; 10 s without it is a warning, and its return a note."""
    import psutil
    import signal
    import threading

    path = tmp_path / "rec.h5"
    proc = _recording_run(tmp_path, path, "20", stderr=subprocess.PIPE)
    err = []
    reader = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        recorder, = [p for p in psutil.Process(proc.pid).children()
                     if "metropc.recording.recorder" in " ".join(p.cmdline())]
        recorder.suspend()
        try:
            deadline_poll(lambda: any("the recorder has flushed nothing" in e for e in err),
                          30, "the warning")
        finally:
            recorder.resume()
        deadline_poll(lambda: any("the recorder writes to" in e for e in err), 30, "the note")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 130
    finally:
        end_session(proc)
        reader.join(5)
    text = "".join(err)
    assert re.search(rf"has flushed nothing to {re.escape(str(path))} for 1\d s \(a hung disk, "
                     r"or a stopped process\?\)", text), text
    assert text.count("the recorder has flushed nothing") == 1

"""Reprocessing runs on a Dask LocalCluster of real worker processes.

Every test compares against ``metropc.run`` over the same run files (one
call per run: a fresh context starts every builtin empty, which is what a
run boundary does), on EXtra-data mock runs whose values encode the train
id, so a train processed twice, out of order or not at all shows.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("distributed", reason="dask/distributed not installed "
                    "(pip install 'metropc[cluster]')")
pytest.importorskip("extra_data", reason="extra-data not installed (pip install metropc[files])")
pytest.importorskip("h5py", reason="h5py not installed (pip install metropc[record])")
import h5py  # noqa: E402
import psutil  # noqa: E402

import metropc  # noqa: E402
from conftest import cmdline, pid_running, running  # noqa: E402
from metropc.reprocess.plan import Chunk, default_chunk_trains, plan_runs, run_trains  # noqa: E402

pytestmark = pytest.mark.timeout(120)

XGM_ID = "SA1_XTD2_XGM/DOOCS/MAIN"
CAM_ID = "SPB_IRU_CAM/CAM/SIDEMIC"
INTENSITY = f"karabo#{XGM_ID}:output[data.intensityTD]"
IXPOS = f"karabo#{XGM_ID}.beamPosition.ixPos"
PIXELS = f"karabo#{CAM_ID}:daqOutput[data.image.pixels]"

#: A POOL scalar and vector, a COMPUTE feeding a plain REDUCE view that
#: remembers the previous train (so it sees the order), builtins in REDUCE
#: (an average and a histogram, reset at each run; an average that is not),
#: a view failing on some
#: trains, a parameter, and the pid of the worker (left out of comparisons).
CONTEXT = f"""
import os
import time

import numpy as np

parameters(busy_s=0.0)

@View.Scalar
def intensity(v: '{INTENSITY}'):
    if busy_s:
        end = time.perf_counter() + busy_s
        while time.perf_counter() < end:
            pass
    return float(v[:4].sum())

@View.Vector
def profile(px: '{PIXELS}'):
    return px.sum(axis=0).astype(np.float64)

@View.Compute
def xpos(x: '{IXPOS}'):
    return float(x)

_previous = {{}}

@View.Scalar(stage='reduce')
def previous_train(tid: 'internal#train_id', run: 'internal#run', x: 'xpos'):
    prev = _previous.get(run, -1)
    _previous[run] = tid
    return prev

@View.Scalar_GlobalAverage(output_every=1)
def mean_intensity(v: 'intensity'):
    return v

@View.Scalar_GlobalAverage(output_every=1, reset_on=None)
def mean_forever(v: 'intensity'):
    return v

@View.Vector_Histogram(bin_min=0, bin_max=10, bin_count=10, output_every=1)
def tid_histogram(tid: 'internal#train_id'):
    return np.array([tid % 10])

@View.Scalar
def flaky(tid: 'internal#train_id'):
    if tid % 7 == 0:
        raise ValueError('a train id divisible by 7')
    return tid

@View.Scalar
def pid(tid: 'internal#train_id'):
    return os.getpid()
"""
#: The line of the context file where `flaky` raises.
FLAKY_LINE = 1 + CONTEXT.splitlines().index(
    "        raise ValueError('a train id divisible by 7')")
COMPARED = ("intensity", "profile", "previous_train", "mean_intensity", "tid_histogram",
            "flaky")


def _write_run(root, run, sequences):
    """A run directory ``r<run>`` with one file per (first train, n trains)."""
    from extra_data.tests.mockdata import write_file
    from extra_data.tests.mockdata.basler_camera import BaslerCamera
    from extra_data.tests.mockdata.xgm import XGM

    path = root / f"r{run:04d}"
    path.mkdir()
    for seq, (first, n) in enumerate(sequences):
        name = path / f"RAW-R{run:04d}-DA01-S{seq:05d}.h5"
        write_file(str(name), [XGM(XGM_ID), BaslerCamera(CAM_ID, sensor_size=(8, 6))],
                   ntrains=n, firsttrain=first, chunksize=n)
        tids = np.arange(first, first + n)
        with h5py.File(name, "r+") as f:
            f[f"INSTRUMENT/{XGM_ID}:output/data/intensityTD"][:, :4] = \
                tids[:, None] + np.arange(4)
            f[f"CONTROL/{XGM_ID}/beamPosition/ixPos/value"][:] = tids / 10
            f[f"INSTRUMENT/{CAM_ID}:daqOutput/data/image/pixels"][:] = \
                (tids % 1000)[:, None, None]
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs: r0001 (14 + 9 trains in two files), r0002 (12 trains)."""
    root = tmp_path_factory.mktemp("runs")
    return [_write_run(root, 1, [(10000, 14), (10014, 9)]),
            _write_run(root, 2, [(10023, 12)])]


@pytest.fixture(scope="module")
def ctx_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ctx") / "reprocess_ctx.py"
    path.write_text(CONTEXT)
    return path


def _children():
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _no_children_left(before=frozenset()):
    """Every process started since `before` (pids) is gone; the resource
    tracker lives on by design, and a module's cluster is not this test's."""
    deadline = time.monotonic() + 20
    while True:
        left = [p for p in psutil.Process().children(recursive=True)
                if p.pid not in before and running(p)
                and "resource_tracker" not in cmdline(p)]
        if not left:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"child processes left behind: {left}")
        time.sleep(0.05)  # polling processes that are exiting


def _local_cluster():
    """A client of a LocalCluster of 2 worker processes, one thread each;
    the cluster is closed, and no child process left, at the end."""
    from distributed import Client, LocalCluster

    before = _children()
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=":0")
    try:
        with Client(cluster, direct_to_workers=True) as c:
            yield c
    finally:
        cluster.close()
        _no_children_left(before)


@pytest.fixture(scope="module")
def client():
    """A cluster shared by the tests of this module."""
    yield from _local_cluster()


def expected(ctx_file, run_dirs, parameters=None):
    """{view: {train id: result}} from one metropc.run over the runs in a
    row (it starts each run where the events' internal#run changes)."""
    import logging

    from metropc.sources import open_source

    out = {v: {} for v in COMPARED}
    with open_source(",".join(map(str, run_dirs)), rate="max") as source:
        events = list(source)
    assert {e["internal#run"] for e in events} == set(range(1, len(run_dirs) + 1))
    logging.disable(logging.ERROR)  # flaky's failures
    try:
        for event_id, results in metropc.run(str(ctx_file), events, parameters=parameters):
            for view in COMPARED:
                if view in results:
                    out[view][event_id] = results[view]
    finally:
        logging.disable(logging.NOTSET)
    return out


def assert_equal_to(ds, want, train_ids):
    assert list(ds["train_id"].values) == list(train_ids)
    for view in COMPARED:
        for i, tid in enumerate(train_ids):
            got = ds[view].values[i]
            if tid not in want[view]:
                assert np.isnan(got).all(), (view, tid, got)
                continue
            np.testing.assert_array_equal(got, np.asarray(want[view][tid]),
                                          err_msg=f"{view} at train {tid}")


def test_plan_chunks_never_span_runs():
    runs = [("a", 1, list(range(10, 17))), ("b", None, [20, 21]), ("c", 3, [])]
    chunks = plan_runs(runs, 3)
    assert [(c.path, c.run, c.train_ids, c.first) for c in chunks] == [
        ("a", 1, (10, 11, 12), 0), ("a", 1, (13, 14, 15), 3), ("a", 1, (16,), 6),
        ("b", None, (20, 21), 7)]
    assert [c.index for c in chunks] == [0, 1, 2, 3]
    assert default_chunk_trains(10000, 2) == 64 and default_chunk_trains(20, 2) == 3
    with pytest.raises(ValueError):
        plan_runs(runs, 0)


def test_results_equal_metropc_run_over_two_runs(tmp_path, runs, ctx_file, client):
    """Same views, values and train ids as metropc.run; builtins start empty
    with the second run; each result carries its run; errors are counted."""
    out = tmp_path / "out.h5"
    ds = metropc.reprocess(str(ctx_file), [str(r) for r in runs], client=client,
                           output=str(out), chunk_trains=5)
    tids = list(range(10000, 10035))
    assert_equal_to(ds, expected(ctx_file, runs), tids)
    # the builtins restarted at the second run's first train
    assert ds["mean_intensity"].sel(train_id=10023).item() == 4 * 10023 + 6
    assert ds["tid_histogram"].sel(train_id=10023).values.sum() == 1
    assert ds["tid_histogram"].sel(train_id=10022).values.sum() == 23
    # what open_recording gives for the file, plus the counts
    stored = metropc.open_recording(out)
    assert stored.equals(ds)
    assert sorted(ds.data_vars) == sorted(COMPARED + ("pid", "mean_forever"))
    # reset_on=None: the average goes on over both runs, as in the live pipeline
    assert ds["mean_forever"].sel(train_id=10034).item() == 4 * 10017 + 6
    n_flaky = sum(1 for t in tids if t % 7 == 0)
    assert ds.attrs["trains"] == 35 and ds.attrs["trains_lost"] == 0
    assert ds.attrs["view_errors"] == n_flaky
    assert json.loads(ds.attrs["view_errors_by_view"]) == {"flaky": n_flaky}
    message = json.loads(ds.attrs["view_error_messages"])["flaky"]
    assert message.startswith(f"{ctx_file}:{FLAKY_LINE}: view 'flaky' failed on event 10003")
    assert json.loads(ds.attrs["runs"]) == [1, 2]
    # both workers took part, and the run is stored with every result
    assert len(set(ds["pid"].values.astype(int))) == 2
    with h5py.File(out, "r") as f:
        seg = f["views/intensity/0"]
        assert list(seg["train_id"][:]) == tids
        assert list(seg["run"][:]) == [1] * 23 + [2] * 12
        marks = f["meta/marks"]
        kinds = [k.decode() if isinstance(k, bytes) else k for k in marks["kind"][:]]
        assert kinds == ["run_start", "run_end", "run_start", "run_end"]
        assert list(marks["run"][:]) == [1, 1, 2, 2]


def test_a_disk_nearly_full_stops_with_whole_files(tmp_path, runs, ctx_file, client,
                                                   monkeypatch):
    """The output's disk is all but full: one line, and a file closed cleanly."""
    from metropc.recording import space
    from metropc.reprocess.driver import ReprocessError

    monkeypatch.setattr(space, "free_bytes", lambda path: space.RESERVE + 1000)
    out = tmp_path / "out.h5"
    with pytest.raises(ReprocessError) as e:
        metropc.reprocess(str(ctx_file), [str(r) for r in runs], client=client,
                          output=str(out), chunk_trains=5)
    assert re.fullmatch(rf"stopped: the disk of {re.escape(str(out))} is nearly full "
                        r"\(1\.0 MiB free; .*\); the files are closed and keep every "
                        r"result up to the last flush \(\d+ after it are not written\)",
                        str(e.value)), str(e.value)
    with h5py.File(out, "r") as f:  # (a plain reader: the file was closed)
        assert f.attrs["format"] == "metropc-recording"


@pytest.fixture
def fresh_client():
    """A cluster of its own, for a test that kills one of its workers."""
    yield from _local_cluster()


def _kill_a_busy_worker(client, killed, stop):
    """SIGKILL the process of a worker that is running a chunk (its pid from
    the LocalCluster's worker info)."""
    deadline = time.monotonic() + 60
    while not stop.is_set() and time.monotonic() < deadline:
        busy = {w: keys for w, keys in client.processing().items()
                if any(str(k).startswith("metropc-chunk-") for k in keys)}
        if busy:
            worker = sorted(busy)[0]
            pid = {nanny.worker_address: nanny.pid
                   for nanny in client.cluster.workers.values()}[worker]
            killed.append((pid, sorted(map(str, busy[worker]))))
            os.kill(pid, signal.SIGKILL)
            return
        stop.wait(0.01)  # polling the scheduler


def test_a_worker_killed_mid_run_loses_no_train(tmp_path, runs, ctx_file, fresh_client):
    """A worker SIGKILLed while it runs a slow view: Dask runs its chunk again
    elsewhere, and every train is there with metropc.run's values."""
    params = {"busy_s": 0.05}
    killed, stop = [], threading.Event()
    killer = threading.Thread(target=_kill_a_busy_worker, args=(fresh_client, killed, stop))
    killer.start()
    try:
        ds = metropc.reprocess(str(ctx_file), [str(r) for r in runs], client=fresh_client,
                               parameters=params, chunk_trains=3)
    finally:
        stop.set()
        killer.join()
    assert killed, "no worker was busy with a chunk"
    pid, keys = killed[0]
    assert not pid_running(pid)
    assert ds.attrs["trains_lost"] == 0 and ds.attrs["trains"] == 35
    assert_equal_to(ds, expected(ctx_file, runs, params), list(range(10000, 10035)))
    # the chunks the killed worker held were done (again) by another process
    chunks = plan_runs(run_trains([str(r) for r in runs]), 3)
    held = [chunks[int(key.rsplit("-", 1)[1])] for key in keys]
    pids = {t: int(p) for t, p in zip(ds["train_id"].values, ds["pid"].values)}
    assert any(pids[t] != pid for chunk in held for t in chunk.train_ids)


def _cli(*args, timeout=90):
    return subprocess.run([sys.executable, "-m", "metropc.cli.reprocess", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def test_cli_writes_a_recording_with_a_summary(tmp_path, runs, ctx_file):
    """metropc-reprocess with its own 2-worker LocalCluster: the file reads
    back with open_recording and equals metropc.run; the summary counts the
    view errors; progress goes to stderr as lines (not a terminal)."""
    out = tmp_path / "out.h5"
    done = _cli(ctx_file, *runs, "-o", out, "--workers", 2, "--chunk-trains", 4,
                "--param", "busy_s=0.001", "--views", "intensity,mean_intensity,flaky")
    assert done.returncode == 0, done.stderr
    ds = metropc.open_recording(out)
    assert sorted(ds.data_vars) == ["flaky", "intensity", "mean_intensity"]
    want = expected(ctx_file, runs, {"busy_s": 0.001})
    tids = list(range(10000, 10035))
    for view in ("intensity", "mean_intensity"):
        assert list(ds[view].values) == [want[view][t] for t in tids]
    lines = done.stderr.splitlines()
    assert "metropc-reprocess: 35/35 trains (" in done.stderr
    assert lines[-1].startswith("metropc-reprocess: 35 trains of 2 run(s) in ")
    assert lines[-1].endswith(f"-> {out}; view errors: 5 (flaky: 5)")
    assert f"{ctx_file}:{FLAKY_LINE}: view 'flaky' failed on event 10003" in done.stderr
    assert "distributed.scheduler" not in done.stderr  # Dask's INFO lines kept out


@pytest.mark.parametrize("case", ["exists", "no run", "unknown view", "unknown param",
                                  "no scheduler", "no context"])
def test_cli_refuses_with_one_line(tmp_path, runs, ctx_file, case):
    out = tmp_path / "out.h5"
    args = [ctx_file, runs[0], "-o", out]
    if case == "exists":
        out.write_text("")
    elif case == "no run":
        args[1] = tmp_path / "r0099"
    elif case == "unknown view":
        args += ["--views", "intensity,nope"]
    elif case == "no scheduler":
        args += ["--scheduler", "tcp://127.0.0.1:1"]
    elif case == "no context":  # (it was compiled as code: '<ctx>:1: syntax error')
        args[0] = tmp_path / "nonexistent"
    else:
        args += ["--param", "nope=1"]
    done = _cli(*args)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("metropc-reprocess: error: ")
    assert {"exists": "out.h5 exists", "no run": "r0099: no such file or directory",
            "unknown view": "no view named 'nope'",
            "unknown param": "unknown parameter 'nope'",
            "no scheduler": "no Dask scheduler at tcp://127.0.0.1:1: ",
            "no context": "cannot read the context file "
                          f"{tmp_path / 'nonexistent'}: no such file"}[case] in done.stderr
    assert case == "exists" or not out.exists()


def test_missing_dask_is_one_line(tmp_path, runs, ctx_file):
    code = ("import sys; sys.modules['distributed'] = None\n"
            "from metropc.cli.reprocess import main\n"
            f"sys.exit(main([{str(ctx_file)!r}, {str(runs[0])!r}, '-o', "
            f"{str(tmp_path / 'o.h5')!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == ("metropc-reprocess: error: reprocessing needs dask and "
                                   "distributed: pip install 'metropc[cluster]'")


def test_ordered_reduce_waits_for_earlier_chunks_and_skips_lost_ones():
    """Chunks arriving 2, 0, 3, 1 (1 lost) reach REDUCE as 0, 2, 3: a REDUCE
    view sees the trains in order, builtins restart where the run changes."""
    from metropc.core import Context
    from metropc.reprocess.driver import OrderedReduce, Summary
    from metropc.reprocess.worker import ChunkResult

    ctx = Context("import numpy as np\n"
                  "seen = []\n"
                  "@View.Scalar(stage='reduce')\n"
                  "def order(tid: 'internal#train_id'):\n"
                  "    seen.append(tid)\n"
                  "    return len(seen)\n"
                  "@View.Scalar_GlobalAverage(output_every=1)\n"
                  "def mean_tid(tid: 'internal#train_id'):\n"
                  "    return float(tid)\n", path="ordered.py")

    class Sink:
        def __init__(self):
            self.results, self.marks = [], []

        def add_result(self, view, payload, now):
            self.results.append((view, payload["event_id"], payload["data"], payload["run"]))

        def add_meta(self, topic, payload, now):
            self.marks.append((payload["kind"], payload["run"]))

    sink, summary = Sink(), Summary()
    reducer = OrderedReduce(ctx, sink, {"order", "mean_tid"}, summary)
    chunks = [Chunk(0, "r1", 1, (1, 2), 0), Chunk(1, "r1", 1, (3, 4), 2),
              Chunk(2, "r2", 2, (5, 6), 4), Chunk(3, "r2", 2, (7,), 6)]

    def result(chunk):
        return ChunkResult(chunk.index, [(t, {"internal#train_id": t, "internal#event_id": t})
                                         for t in chunk.train_ids])

    assert reducer.add(chunks[2], result(chunks[2])) == 0 and len(reducer) == 1
    assert reducer.add(chunks[0], result(chunks[0])) == 2
    assert reducer.add(chunks[3], result(chunks[3])) == 0 and len(reducer) == 2
    assert reducer.lose(chunks[1], "KilledWorker") == 3 and len(reducer) == 0
    reducer.finish()
    assert ctx.namespace["seen"] == [1, 2, 5, 6, 7]
    order = [(t, v, r) for view, t, v, r in sink.results if view == "order"]
    assert order == [(1, 1, 1), (2, 2, 1), (5, 3, 2), (6, 4, 2), (7, 5, 2)]
    means = {t: v for view, t, v, _ in sink.results if view == "mean_tid"}
    assert means == {1: 1.0, 2: 1.5, 5: 5.0, 6: 5.5, 7: 6.0}  # reset at run 2
    assert sink.marks == [("run_start", 1), ("run_end", 1), ("run_start", 2), ("run_end", 2)]
    assert summary.trains == 5 and summary.trains_lost == 2 and summary.runs == [1, 2]


def test_a_chunk_that_fails_everywhere_is_counted_not_fatal(tmp_path, runs):
    """A view that kills its worker on one train: with no failures allowed
    that chunk is lost (counted, logged, said where), every other train is
    there.  Dask may count a chunk queued on the dying worker as lost too;
    the test allows for that, asking only that the counts add up."""
    import dask
    from distributed import Client, LocalCluster

    ctx = tmp_path / "deadly.py"
    ctx.write_text("import os\n"
                   "@View.Scalar\n"
                   "def tid(t: 'internal#train_id'):\n"
                   "    if t == 10007:\n"
                   "        os._exit(1)\n"
                   "    return t\n"
                   "@View.Scalar_GlobalAverage(output_every=1)\n"
                   "def mean_tid(t: 'tid'):\n"
                   "    return float(t)\n")
    before = _children()
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               dashboard_address=":0")
    try:
        with Client(cluster, direct_to_workers=True) as client:
            ds = metropc.reprocess(str(ctx), str(runs[0]), client=client, chunk_trains=5,
                                   retries=0)
    finally:
        cluster.close()
        _no_children_left(before)
    lost = json.loads(ds.attrs["chunks_lost"])
    gone = {t for c in lost for t in range(c["first_train"], c["last_train"] + 1)}
    assert {(c["path"], c["run"]) for c in lost} == {(str(runs[0]), 1)}
    assert all(c["why"].startswith("KilledWorker") for c in lost)
    assert set(range(10005, 10010)) <= gone
    kept = [t for t in range(10000, 10023) if t not in gone]
    assert ds.attrs["trains_lost"] == len(gone) and ds.attrs["trains"] == len(kept)
    assert list(ds["train_id"].values) == kept
    assert list(ds["tid"].values) == kept
    means = [np.mean(kept[:k + 1]) for k in range(len(kept))]  # REDUCE went on past them
    assert list(ds["mean_tid"].values) == means


def test_cli_on_an_existing_cluster(tmp_path, runs, ctx_file, client):
    """--scheduler ADDR: the work runs on that cluster's workers."""
    out = tmp_path / "results"
    out.mkdir()
    done = _cli(ctx_file, *runs, "-o", out, "--scheduler", client.scheduler.address,
                "--views", "pid,tid_histogram")
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(out)) == ["run_0001.h5", "run_0002.h5"]
    ds = metropc.open_recording(out)
    assert ds.sizes["train_id"] == 35
    workers = set(client.run(os.getpid).values())
    assert set(ds["pid"].values.astype(int)) <= workers
    want = expected(ctx_file, runs)["tid_histogram"]
    for t in (10000, 10022, 10023, 10034):
        np.testing.assert_array_equal(ds["tid_histogram"].sel(train_id=t).values, want[t])


def test_progress_lines_and_bar():
    import io

    from metropc.reprocess.progress import BarProgress, LineProgress, make_progress

    now = [0.0]
    out = io.StringIO()
    lines = LineProgress(out, interval=5.0, clock=lambda: now[0])
    lines.start(100)
    for _ in range(4):
        now[0] += 2.0
        lines.advance(10)
    lines.close()
    assert out.getvalue().splitlines() == [
        "metropc-reprocess: 30/100 trains (5.0/s), ETA 0:00:14",
        "metropc-reprocess: 40/100 trains (5.0/s), ETA 0:00:12"]
    assert isinstance(make_progress(io.StringIO()), LineProgress)

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    bar = make_progress(term)
    assert isinstance(bar, BarProgress)
    bar.start(10)
    bar.advance(4)
    bar.close()
    assert "4/10" in term.getvalue() and "trains" in term.getvalue()


def test_ctrl_c_stops_closes_the_cluster_and_keeps_what_was_done(tmp_path, runs, ctx_file):
    """SIGINT to metropc-reprocess mid-run: exit 130 with one line, its
    workers gone, and the file readable with the trains done so far."""
    out = tmp_path / "out.h5"
    proc = subprocess.Popen(
        [sys.executable, "-m", "metropc.cli.reprocess", str(ctx_file), *map(str, runs),
         "-o", str(out), "--workers", "2", "--chunk-trains", "1", "--param", "busy_s=0.3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        def some_trains_recorded():
            try:
                return out.exists() and metropc.open_recording(out).sizes["train_id"] >= 2
            except (OSError, KeyError):
                return False
        deadline = time.monotonic() + 60
        while not some_trains_recorded():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "no results recorded in time"
            time.sleep(0.1)  # polling a file another process writes
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
                   if "resource_tracker" not in cmdline(p)]
        assert len(workers) >= 2
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert err.splitlines()[-1] == f"metropc-reprocess: interrupted; {out} holds what was done"
    gone, alive = psutil.wait_procs(workers, timeout=20)
    assert not alive, f"left behind: {alive}"
    ds = metropc.open_recording(out)
    assert 2 <= ds.sizes["train_id"] < 35
    assert list(ds["train_id"].values) == list(range(10000, 10000 + ds.sizes["train_id"]))


def test_a_context_object_used_before_starts_fresh(runs, ctx_file, client):
    """A Context that already ran (its builtins hold state) gives the same
    results: REDUCE rebuilds it, as the live REDUCE stage does."""
    import logging

    from metropc.core import Context
    from metropc.sources import open_source

    ctx = Context.from_file(str(ctx_file))
    with open_source(str(runs[1]), rate="max") as source:
        logging.disable(logging.ERROR)
        try:
            used = list(metropc.run(ctx, source))
        finally:
            logging.disable(logging.NOTSET)
    assert used[-1][1]["mean_forever"] == 4 * 10028.5 + 6
    ds = metropc.reprocess(ctx, [str(r) for r in runs], client=client, chunk_trains=7)
    assert_equal_to(ds, expected(ctx_file, runs), list(range(10000, 10035)))
    assert ds["mean_forever"].sel(train_id=10034).item() == 4 * 10017 + 6


def test_import_metropc_stays_light():
    """``metropc.reprocess`` is there without loading dask, EXtra-data or h5py,
    and stays callable once its modules are imported (they rebind the name)."""
    code = ("import sys, metropc\n"
            "assert callable(metropc.reprocess)\n"
            "heavy = {'dask', 'distributed', 'extra_data', 'h5py', 'xarray'}\n"
            "assert not heavy & set(sys.modules), heavy & set(sys.modules)\n"
            "import metropc.reprocess.worker\n"
            "assert callable(metropc.reprocess)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr

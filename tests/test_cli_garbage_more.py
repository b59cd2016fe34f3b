"""The other commands refuse bad command-line values at once, as metropc-run
does (tests/test_cli_values.py): one line ``PROG: error: ...`` naming the
value, exit 2 (or 1 where said), no traceback, nothing started.

Each case runs the real command as a subprocess.  Also: malformed websocket
messages to a real dashboard, and a recorder whose metropc-run is killed.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import end_session
from ws_client import WsClient

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[1]
GOOD = "tcp://127.0.0.1:5"  # a valid address nothing listens on


def cli(module, *args, timeout=60):
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)
    proc.elapsed = time.monotonic() - t0
    return proc


def assert_one_line_error(proc, prog, *fragments, code=2):
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"{prog}: error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in proc.stderr
    assert "output on" not in proc.stdout and "http://" not in proc.stdout


# -- metropc-dashboard -----------------------------------------------------------------

@pytest.mark.parametrize("args, fragments", [
    ([GOOD, "--history", "0"], ["--history", "'0'"]),
    ([GOOD, "--history", "-1"], ["--history", "'-1'"]),
    ([GOOD, "--history", "many"], ["--history", "'many'"]),
    ([GOOD, "--history", "100000000"], ["--history", "at most 1000000"]),
    ([GOOD, "--max-side", "0"], ["--max-side", "'0'"]),
    ([GOOD, "--max-side", "-1"], ["--max-side", "'-1'"]),
    ([GOOD, "--duration", "nan"], ["--duration", "'nan'"]),
    ([GOOD, "--duration", "inf"], ["--duration", "'inf'"]),
    ([GOOD, "--duration", "-5"], ["--duration", "'-5'"]),
    (["garbage"], ["'garbage'", "tcp://HOST:PORT"]),
    ([""], ["''", "empty"]),
    (["tcp://127.0.0.1:70000"], ["70000", "out of range"]),
    (["tcp://127.0.0.1"], ["'tcp://127.0.0.1'", "port"]),
    (["tcp://:5555"], ["'tcp://:5555'", "no host"]),
    (["udp://127.0.0.1:5"], ["'udp://127.0.0.1:5'"]),
    ([GOOD, "--keys", "/nonexistent"], ["--keys /nonexistent", "does not exist"]),
    ([GOOD, "--bind", "99999"], ["--bind 99999", "out of range"]),
    # garbage audit F12: said "must be positive"; ran on the default port
    ([GOOD, "--duration", "5e-324"], ["--duration", "at least 1e-09", "'5e-324'"]),
    ([GOOD, "--bind", "", "--duration", "1"], ["--bind ''"]),
    ([GOOD, "--bind", "1\x1b[2J"], ["--bind '1\\x1b[2J'"]),
    (["ipc:///tmp/" + "a" * 120], ["more than the 107"]),
])
def test_dashboard_refuses_bad_values(args, fragments):
    proc = cli("metropc.cli.dashboard", *args)
    assert_one_line_error(proc, "metropc-dashboard", *fragments)
    assert proc.elapsed < 30


def test_dashboard_takes_the_smallest_good_values():
    pytest.importorskip("tornado")
    proc = cli("metropc.cli.dashboard", GOOD, "--bind", "127.0.0.1:0", "--history", "1",
               "--max-side", "1", "--duration", "0.5")
    assert proc.returncode == 0, proc.stderr
    assert "http://127.0.0.1:" in proc.stdout
    assert "Traceback" not in proc.stderr and "Error" not in proc.stderr


# -- metropc-keys ----------------------------------------------------------------------

def test_keys_refuse_an_empty_directory_name(tmp_path):
    assert_one_line_error(cli("metropc.security", ""), "metropc-keys", "empty")


def test_keys_refuse_an_existing_file(tmp_path):
    target = tmp_path / "afile"
    target.write_text("precious")
    assert_one_line_error(cli("metropc.security", target), "metropc-keys",
                          str(target), "not a directory")
    assert target.read_text() == "precious"


def test_keys_refuse_a_path_through_a_file(tmp_path):
    target = tmp_path / "afile"
    target.write_text("x")
    assert_one_line_error(cli("metropc.security", target / "keys"), "metropc-keys",
                          str(target / "keys"), "Not a directory")
    assert_one_line_error(cli("metropc.security", "/dev/null/x"), "metropc-keys",
                          "/dev/null/x")


def test_keys_where_the_system_refuses_exit_1():
    if not os.path.isdir("/proc/self"):
        pytest.skip("no /proc")
    proc = cli("metropc.security", "/proc/nokeys")
    assert_one_line_error(proc, "metropc-keys", "'/proc/nokeys'", code=1)
    assert not os.path.exists("/proc/nokeys")


# -- metropc-worker --------------------------------------------------------------------

@pytest.mark.parametrize("args, fragments", [
    (["--control", "garbage", "--reduce", "garbage"], ["--control", "'garbage'"]),
    (["--control", "", "--reduce", ""], ["--control", "''"]),
    (["--control", GOOD, "--reduce", "garbage"], ["--reduce", "'garbage'"]),
    (["--control", GOOD, "--reduce", "tcp://127.0.0.1:99999"], ["--reduce", "99999"]),
    (["--control", "ipc://", "--reduce", GOOD], ["--control", "'ipc://'"]),
    (["--control", GOOD, "--reduce", GOOD, "--keys", "/nonexistent"],
     ["--keys /nonexistent"]),
    (["--control", GOOD, "--reduce", GOOD, "--prefetch", "0"], ["--prefetch", "'0'"]),
    (["--control", GOOD, "--reduce", GOOD, "--name", "a" * 300], ["--name", "at most 247"]),
    (["--control", GOOD, "--reduce", GOOD, "--name", "a b"], ["--name", "without spaces"]),
    (["--control", GOOD, "--reduce", GOOD, "--prefetch", "-1"], ["--prefetch", "'-1'"]),
    (["--control", GOOD, "--reduce", GOOD, "--prefetch", "x"], ["--prefetch", "'x'"]),
    (["--control", GOOD, "--reduce", GOOD, "--prefetch", "1e20"], ["--prefetch", "'1e20'"]),
    (["--control", GOOD, "--reduce", GOOD, "--prefetch", "65"], ["--prefetch", "at most 64"]),
    # a local worker's name would take that worker's messages
    (["--control", GOOD, "--reduce", GOOD, "--name", "0"], ["--name", "local workers'"]),
    (["--control", GOOD, "--reduce", GOOD, "--name", "pool-1"], ["--name", "local workers'"]),
    (["--control", GOOD, "--reduce", GOOD, "--name", "x#hb"], ["--name", "or '#'"]),
    # garbage audit F7: a traceback from ZeroMQ's connect
    (["--control", "ipc:///tmp/" + "a" * 120, "--reduce", GOOD], ["--control", "107"]),
    (["--control", GOOD, "--reduce", "ipc:///tmp/" + "a" * 120], ["--reduce", "107"]),
    (["--control", GOOD, "--reduce", GOOD, "--keys", "k\nx"], ["--keys 'k\\nx'"]),
])
def test_worker_refuses_bad_values(args, fragments):
    proc = cli("metropc.cli.worker", *args)
    assert_one_line_error(proc, "metropc-worker", *fragments)
    assert "joining" not in proc.stderr


@pytest.mark.parametrize("delay", [0, 0.001, 0.002, 0.004, 0.008])
def test_worker_stopped_by_two_signals_at_once_leaves_no_traceback(delay):
    """Two SIGTERMs back to back (a group's and one's own): the first stops
    the worker, the second quits at once (143), neither with a traceback.
    They come at a few moments of the worker's setup: one that came after a
    socket was made and before its ``finally`` knew of it left the worker
    hanging in ``Context.term()`` (3 times in 50)."""
    proc = subprocess.Popen([sys.executable, "-m", "metropc.cli.worker", "--control", GOOD,
                             "--reduce", GOOD], stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()  # logged once its handlers are in place
        assert "joining" in line, line
        time.sleep(delay)  # (not a wait for readiness: a moment of its setup)
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=30)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode in (0, 143) and "Traceback" not in err, (proc.returncode, err)


def test_worker_says_when_the_pipeline_never_answers():
    """Nothing listens at its address: after 10 s it says so, once, and goes
    on trying (a pipeline may start later)."""
    proc = subprocess.Popen([sys.executable, "-m", "metropc.cli.worker", "--control", GOOD,
                             "--reduce", GOOD], stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 40
        while not any("no word from the pipeline" in line for line in lines):
            assert time.monotonic() < deadline, lines
            lines.append(proc.stderr.readline())
        assert GOOD in lines[-1] and "still trying" in lines[-1]
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            err = proc.communicate(timeout=30)[1]
        finally:
            if proc.poll() is None:  # (hung: no worker left behind for later tests)
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0 and "Traceback" not in err, err


# -- metropc-client --------------------------------------------------------------------

@pytest.mark.parametrize("args, fragments", [
    (["--once", "--timeout", "inf"], ["--timeout", "'inf'"]),
    (["--once", "--timeout", "1e300"], ["--timeout", "'1e300'"]),
    (["--once", "--timeout", "nan"], ["--timeout", "'nan'"]),
    (["--once", "--timeout", "0"], ["--timeout", "'0'"]),
    (["--once", "--timeout", "soon"], ["--timeout", "'soon'"]),
    (["--interval", "inf"], ["--interval", "'inf'"]),
    (["--interval", "-1"], ["--interval", "'-1'"]),
    (["--set", "x"], ["--set", "NAME=VALUE", "'x'"]),
    (["--set", "=1"], ["--set", "'=1'"]),
    (["--start-run", "-3"], ["--start-run", "'-3'"]),
    (["--keys", "/nonexistent"], ["--keys /nonexistent"]),
    # run numbers stop at 2**62 (metropc.messages.RUN_MAX): refused at once,
    # not by the pipeline once its index came (garbage audit F12)
    (["--start-run", str(2**63)], ["--start-run", "at most 2**62"]),
    (["--start-run", str(2**62 + 1)], ["--start-run", "at most 2**62"]),
])
def test_client_refuses_bad_values(args, fragments):
    # port 1: nothing answers, so anything but a usage error would wait
    proc = cli("metropc.cli.client", "tcp://127.0.0.1:1", *args)
    assert_one_line_error(proc, "metropc-client", *fragments)
    assert "no index" not in proc.stderr
    assert proc.elapsed < 20


@pytest.mark.parametrize("addr, fragment", [
    ("tcp://127.0.0.1:70000", "out of range"),
    ("tcp://127.0.0.1:0", "out of range"),
    ("tcp://*:5555", "not a host"),
    ("garbage", "tcp://HOST:PORT"),
    ("", "empty"),
    ("inproc://", "needs a name"),
    ("ipc:///tmp/" + "a" * 120, "more than the 107"),
])
def test_client_refuses_bad_addresses(addr, fragment):
    proc = cli("metropc.cli.client", addr, "--once", "--timeout", "1")
    assert_one_line_error(proc, "metropc-client", repr(addr), fragment)


# -- metropc-replay --------------------------------------------------------------------

@pytest.fixture
def recording(tmp_path):
    """A small recording of views alpha and beta, made by the recorder's writer."""
    pytest.importorskip("h5py")
    from metropc.recording.writer import Recording

    path = tmp_path / "rec.h5"
    rec = Recording(str(path))
    for i in range(5):
        rec.add_result("alpha", {"data": float(i), "event_id": 1000 + i}, time.time())
        rec.add_result("beta", {"data": np.arange(3.0) * i, "event_id": 1000 + i},
                       time.time())
    rec.close()
    return path


def test_replay_refuses_a_file_that_is_no_hdf5(tmp_path):
    pytest.importorskip("h5py")
    notes = tmp_path / "notes.h5"
    notes.write_text("not HDF5")
    assert_one_line_error(cli("metropc.cli.replay", notes), "metropc-replay",
                          str(notes), "not an HDF5 file")


def test_replay_of_an_unreadable_file_is_one_line():
    """HDF5's message about /proc/self/mem holds a line break (garbage audit F12)."""
    pytest.importorskip("h5py")
    if not os.path.exists("/proc/self/mem"):
        pytest.skip("no /proc")
    proc = cli("metropc.cli.replay", "/proc/self/mem", "--no-wait")
    assert_one_line_error(proc, "metropc-replay", "/proc/self/mem")


def test_replay_refuses_hdf5_that_is_no_recording(tmp_path):
    h5py = pytest.importorskip("h5py")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.arange(3)
    assert_one_line_error(cli("metropc.cli.replay", other), "metropc-replay",
                          str(other), "no metropc recording")


def test_replay_refuses_unknown_views_naming_the_recorded_ones(recording):
    proc = cli("metropc.cli.replay", recording, "--views", "alpha,nosuch", "--no-wait")
    assert_one_line_error(proc, "metropc-replay", "'nosuch'", "alpha, beta")
    assert "'alpha'" not in proc.stderr.split("it has")[0]


@pytest.mark.parametrize("args, fragments", [
    (["--keys", "/nonexistent"], ["--keys /nonexistent"]),
    (["--output", "tcp://127.0.0.1:70000"], ["--output", "70000", "out of range"]),
    (["--output", "tcp://0.0.0.0:0"], ["--output", "'0.0.0.0'", "--allow-remote"]),
    (["--output", "tcp://0.0.0.0:0", "--allow-remote"], ["--output", "--keys DIR"]),
    (["--output", "garbage"], ["--output", "'garbage'"]),
    (["--views", ","], ["--views"]),
])
def test_replay_refuses_bad_options(recording, args, fragments):
    proc = cli("metropc.cli.replay", recording, *args, "--no-wait")
    assert_one_line_error(proc, "metropc-replay", *fragments)


def test_replay_of_a_known_view_runs(recording):
    tmp = tempfile.mkdtemp(prefix="mpc-replay-")  # ipc paths must stay short
    try:
        proc = cli("metropc.cli.replay", recording, "--views", "beta", "--no-wait",
                   "--rate", "max", "--output", f"ipc://{tmp}/out")
        assert proc.returncode == 0, proc.stderr
        assert "output on ipc://" in proc.stdout
        assert "Traceback" not in proc.stderr
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- the dashboard's websocket ---------------------------------------------------------

def read_line_matching(proc, pattern, timeout=90.0):
    """The first match of `pattern` in `proc`'s stdout lines, within `timeout`."""
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no line matching {pattern!r} in time: {seen}"
        ready, _, _ = select.select([proc.stdout], [], [], min(left, 1.0))
        if not ready:
            assert proc.poll() is None, f"exited {proc.returncode}: {seen}"
            continue
        line = proc.stdout.readline()
        assert line, f"stdout ended: {seen}"
        seen.append(line)
        m = re.search(pattern, line)
        if m:
            return m


MALFORMED = [
    json.dumps({"op": "watch", "views": ["a", "b"]}),
    json.dumps({"op": "watch", "views": "abc"}),
    json.dumps({"op": "watch", "views": 5}),
    json.dumps({"op": "ack", "n": "x"}),
    json.dumps({"op": "nosuch"}),
    json.dumps([1, 2]),
    "not json {",
]


def test_malformed_websocket_messages_are_refused_and_watch_still_works(tmp_path):
    pytest.importorskip("tornado")
    errors = tmp_path / "stderr.txt"
    with open(errors, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "metropc.cli.run", "contexts/sim_example.py",
             "--dashboard", "127.0.0.1:0", "--status", "off", "--pool", "1",
             "--rate", "20", "--duration", "100"],
            stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO)
    ws = None
    try:
        port = int(read_line_matching(proc, r"dashboard on http://127\.0\.0\.1:(\d+)/")[1])
        ws = WsClient(f"ws://127.0.0.1:{port}/ws")
        assert ws.recv(10)[0]["op"] == "hello"
        for message in MALFORMED:
            ws.send_raw(message)
        ws.send_raw(b"\x00\x01binary", binary=True)
        refused = []

        def all_refused(header, arrays):
            if header.get("op") == "error":
                refused.append(header["message"])
            return len(refused) == len(MALFORMED) + 1
        ws.until(all_refused, timeout=30)
        assert any("views must be an object" in m for m in refused), refused
        assert any("unknown op 'nosuch'" in m for m in refused), refused
        # the same connection still works: a well-formed watch gets data
        ws.send({"op": "watch", "views": {"ring_radius": {}}})
        data, _ = ws.until(lambda h, a: h.get("op") == "data", timeout=30)
        assert data["view"] == "ring_radius"
    finally:
        if ws is not None:
            ws.close()
        proc.send_signal(signal.SIGINT)
        try:
            assert proc.wait(30) == 130
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
    text = errors.read_text()
    assert "Traceback" not in text and "Uncaught exception" not in text, text
    assert "AttributeError" not in text, text
    # one warning for the browser, not one per message
    assert text.count("refused a message from a browser") == 1, text


# -- the recorder when metropc-run is killed -------------------------------------------

def _recorder_of(session):
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if (os.getsid(p.pid) == session
                    and "metropc.recording.recorder" in " ".join(p.info["cmdline"] or [])):
                found.append(p)
        except (OSError, psutil.Error):
            pass
    return found


def test_recorder_ends_quietly_when_metropc_run_is_killed(tmp_path):
    pytest.importorskip("h5py")
    ctx_file = tmp_path / "ctx.py"
    ctx_file.write_text("@View.Scalar\ndef tid(x: 'internal#train_id'):\n    return x\n")
    errors = tmp_path / "stderr.txt"
    with open(errors, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "metropc.cli.run", str(ctx_file), "--rate", "50",
             "--status", "off", "--pool", "1", "--record", str(tmp_path / "rec.h5"),
             "--duration", "100"],
            stdout=subprocess.PIPE, stderr=err, text=True, cwd=tmp_path,
            start_new_session=True)
    try:
        read_line_matching(proc, r"recording to")
        recorder = _recorder_of(proc.pid)
        assert len(recorder) == 1, "no recorder process"
        proc.kill()
        proc.wait(10)
        # its stdin ends: it writes what it has and says "stopped" to nobody
        recorder[0].wait(30)  # (not our child: psutil gives no exit code)
    finally:
        end_session(proc)  # the stages and the recorder are in its session
        proc.stdout.close()
    text = errors.read_text()
    assert "Traceback" not in text and "BrokenPipeError" not in text, text

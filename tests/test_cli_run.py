"""``metropc-run`` as a user starts it: a real subprocess on the simulator."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from conftest import running, wait_for

pytestmark = pytest.mark.timeout(90)

CTX = """
@View.Scalar
def train(t: 'internal#train_id'):
    return t

@View.Scalar
def flux(x: 'karabo#SIM_XGM/XGM/XGM1.pulseEnergy.photonFlux'):
    return x * scale

parameters(scale=1.0)
"""


def start(ctx_file, *args, env=None):
    proc = subprocess.Popen(
        [sys.executable, "-m", "metropc.cli.run", str(ctx_file), "--pool", "1",
         "--rate", "50", "--status", "lines", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    proc.err_lines = []
    reader = threading.Thread(target=lambda: proc.err_lines.extend(iter(proc.stderr.readline, "")),
                              daemon=True)
    reader.start()
    proc.reader = reader
    line = proc.stdout.readline()  # printed once the pipeline is ready
    assert "output on" in line, (line, proc.err_lines)
    return proc, line.split("output on ")[1].split()[0]


def stop(proc):
    proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    proc.wait(timeout=10)
    elapsed = time.monotonic() - t0
    proc.reader.join(5)
    return elapsed, "".join(proc.err_lines)


def descendants_of(pid):
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_run_serves_views_reloads_on_save_and_stops_cleanly(tmp_path, collector_factory):
    ctx_file = tmp_path / "ctx.py"
    ctx_file.write_text(CTX)
    proc, addr = start(ctx_file, "--param", "scale=2.0")
    children = descendants_of(proc.pid)
    try:
        col = collector_factory(addr)
        col.poll_until(lambda m: len(col.values("flux")) >= 3 and col.indexes(), timeout=30)
        trains = col.values("train")
        assert trains == sorted(trains) and trains[0] >= 10000
        # --param applied: simulator flux is around 1000 uJ-ish, scaled by 2
        assert all(v > 1000 for v in col.values("flux"))

        # A broken edit is refused with file:line; the old context goes on.
        ctx_file.write_text(CTX + "\n@View.Scalar\ndef broken(x: 'view#nothing'):\n    return x\n")
        wait_for(lambda: any("context refused" in line for line in proc.err_lines), 30)
        n = len(col.values("train"))
        col.poll_until(lambda m: len(col.values("train")) > n + 20, timeout=30)

        # So is a save in another encoding than UTF-8 (an editor's Latin-1).
        ctx_file.write_bytes(CTX.encode() + "# café\n".encode("latin-1"))
        latin1 = f"{ctx_file}:{CTX.count(chr(10)) + 1}: not utf-8 text: byte 0xe9 at column 6"
        wait_for(lambda: any(latin1 in line for line in proc.err_lines), 30)
        n = len(col.values("train"))
        col.poll_until(lambda m: len(col.values("train")) > n + 20, timeout=30)

        # A good edit is picked up: a new view appears, old results stop.
        ctx_file.write_text(CTX + "\n@View.Scalar\ndef doubled(t: 'internal#train_id'):\n"
                            "    return 2 * t\n")
        col.poll_until(lambda m: len(col.values("doubled")) >= 3, timeout=30)
        assert all(p["version"] >= 2 for p in col.payloads("doubled"))
        # (what the index said last: the final line's counts are at least
        # those, even if REDUCE is too busy to answer a last request in time)
        counted = col.indexes()[-1]["internal#event"].counts
    finally:
        elapsed, err = stop(proc)
    assert proc.returncode == 130, err  # stopped by Ctrl-C (SIGINT)
    assert elapsed < 5
    # the summary line of the end comes after Ctrl-C too, with the counts of then
    finals = re.findall(r"^metropc: out (\d+) ", err.split("Ctrl-C: stopping", 1)[1], re.M)
    assert finals and int(finals[-1]) >= counted > 0, err
    assert f"{ctx_file}:" in err and "view#nothing" in err  # file:line of the bad edit
    assert "previous one keeps running" in err and "Traceback" not in err
    for child in children:
        assert not running(child)


def test_run_reports_a_broken_context_and_exits(tmp_path):
    ctx_file = tmp_path / "bad.py"
    ctx_file.write_text("@View.Scalar\ndef f(x: 'view#missing'):\n    return x\n")
    proc = subprocess.run([sys.executable, "-m", "metropc.cli.run", str(ctx_file),
                           "--status", "off"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert f"{ctx_file}:1" in proc.stderr and "view#missing" in proc.stderr


def test_run_reports_a_context_raising_keyboard_interrupt_as_its_error(tmp_path):
    # metropc-run blocks SIGINT (its own thread takes Ctrl-C): this one is
    # the context's, refused with its line, not a traceback and exit 130.
    ctx_file = tmp_path / "interrupting.py"
    ctx_file.write_text("x = 1\nraise KeyboardInterrupt\n")
    proc = subprocess.run([sys.executable, "-m", "metropc.cli.run", str(ctx_file),
                           "--status", "off"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert f"{ctx_file}:2: KeyboardInterrupt (raised by the context code" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_run_reports_a_context_that_is_no_text_and_exits(tmp_path):
    ctx_file = tmp_path / "binary.py"
    ctx_file.write_bytes(bytes(range(256)) * 8)
    proc = subprocess.run([sys.executable, "-m", "metropc.cli.run", str(ctx_file),
                           "--status", "off"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert f"{ctx_file}:2: not utf-8 text: byte 0x80 at column 118" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_run_refuses_a_public_output_without_allow_remote(tmp_path):
    ctx_file = tmp_path / "ctx.py"
    ctx_file.write_text(CTX)
    proc = subprocess.run([sys.executable, "-m", "metropc.cli.run", str(ctx_file),
                           "--output", "tcp://0.0.0.0:0"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0 and "--allow-remote" in proc.stderr


def test_run_on_the_example_context_for_a_fixed_duration():
    root = Path(__file__).resolve().parent.parent
    example = root / "contexts" / "sim_example.py"
    if not example.exists():
        pytest.skip("contexts/sim_example.py not present")
    proc = subprocess.run([sys.executable, "-m", "metropc.cli.run", str(example),
                           "--duration", "4", "--status", "lines"],
                          capture_output=True, text=True, timeout=80,
                          cwd=root, env={**os.environ})
    assert proc.returncode == 0, proc.stderr
    assert "output on tcp://127.0.0.1:" in proc.stdout
    assert "metropc: out" in proc.stderr


@pytest.mark.parametrize("how", ["SIGTERM", "double Ctrl-C"])
def test_run_stops_on_sigterm_and_at_once_on_a_second_ctrl_c(tmp_path, how):
    ctx_file = tmp_path / "ctx.py"
    ctx_file.write_text(CTX)
    import glob
    tmp = tmp_path / "tmp"  # its own temporary directory: other runs do not count
    tmp.mkdir()
    proc, addr = start(ctx_file, env={**os.environ, "TMPDIR": str(tmp)})
    children = descendants_of(proc.pid)
    assert len(children) >= 2  # REDUCE and the worker (plus resource tracker)
    t0 = time.monotonic()
    if how == "SIGTERM":
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        assert proc.returncode == 0
    else:
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
        assert proc.returncode in (0, 130)
    assert time.monotonic() - t0 < 5
    proc.reader.join(5)  # (to the end: the resource tracker writes here too)
    err = "".join(proc.err_lines)
    assert "leaked" not in err and "Traceback" not in err, err
    # Stage processes end with their parent, cleanly or not (PR_SET_PDEATHSIG).
    wait_for(lambda: not any(running(c) for c in children), timeout=10)
    # No socket directory left behind.
    assert glob.glob(os.path.join(tmp, "metropc-*")) == []
    if how == "SIGTERM":  # the last line has the tally: out + dropped + lost = fed
        last = [line for line in err.splitlines() if line.startswith("metropc: out")][-1]
        m = re.search(r"out (\d+) .*dropped (\d+), lost (\d+),.*; ended.*; fed (\d+)$", last)
        assert m is not None, last
        out, dropped, lost, fed = map(int, m.groups())
        assert out + dropped + lost == fed or "still in the pipeline" in err, err


def test_status_lines_work_on_a_curve_secured_pipeline(tmp_path):
    from metropc.security import generate_keys

    import zmq
    if not zmq.has("curve"):
        pytest.skip("libzmq without CURVE")
    keys = tmp_path / "keys"
    generate_keys(keys)
    ctx_file = tmp_path / "ctx.py"
    ctx_file.write_text(CTX)
    proc = subprocess.run([sys.executable, "-m", "metropc.cli.run", str(ctx_file),
                           "--pool", "1", "--rate", "50", "--duration", "4",
                           "--status", "lines", "--keys", str(keys)],
                          capture_output=True, text=True, timeout=80)
    assert proc.returncode == 0, proc.stderr
    summaries = [line for line in proc.stderr.splitlines() if line.startswith("metropc: out")]
    assert summaries, proc.stderr
    assert int(summaries[-1].split()[2]) > 0  # events really came out
    # --duration ended the reading, not the (endless) simulated source
    assert "stopped reading the source after" in proc.stderr, proc.stderr
    assert "source finished" not in proc.stderr, proc.stderr


def test_a_failing_view_is_reported_once_with_file_and_line(tmp_path):
    ctx_file = tmp_path / "ctx.py"
    ctx_file.write_text("@View.Scalar\ndef bad(t: 'internal#train_id'):\n    return 1 / 0\n")
    proc = subprocess.run([sys.executable, "-m", "metropc.cli.run", str(ctx_file),
                           "--pool", "1", "--rate", "20", "--duration", "3",
                           "--status", "lines"],
                          capture_output=True, text=True, timeout=80)
    assert proc.returncode == 0, proc.stderr
    # The engine reports a view at most once per 10 s: one failure in 3 s.
    reports = [line for line in proc.stderr.splitlines()
               if "view 'bad' failed on event" in line]
    assert len(reports) == 1, proc.stderr
    assert f"{ctx_file}:3" in reports[0] and "ZeroDivisionError" in reports[0]


def test_status_context_line_follows_a_version_a_stage_refused():
    from metropc.cli.status import ContextState

    state = ContextState("/somewhere/ctx.py")
    state.loaded(1, 3)
    assert "version 1 running (3 views)" in state.line().plain
    state.loaded(2, 4)  # built here, then refused by a stage (two-phase reload)
    state.stage_message("context version 2 refused, the previous one keeps running: "
                        "[reduce] ctx.py:5: ImportError: no module named 'x'")
    line = state.line().plain
    assert "version 1 running (3 views)" in line and "version 1 goes on" in line
    assert "ctx.py:5: ImportError" in line
    state.stage_message("[pool-0] ctx.py:9: view 'v' failed on event 3: KeyError: 'a'")
    assert "version 1 running" in state.line().plain  # other errors change nothing
    state.loaded(3, 4)
    assert state.line().plain == "ctx.py: version 3 running (4 views)"


def test_ctrl_c_stops_at_once_while_an_edit_never_finishes_loading(tmp_path):
    """An edit whose top level never ends does not hold up metropc-run: the
    reload runs beside the main loop, which still stops at Ctrl-C."""
    ctx_file = tmp_path / "ctx.py"
    ctx_file.write_text(CTX)
    proc, addr = start(ctx_file)
    try:
        ctx_file.write_text("import time\nwhile True:\n    time.sleep(0.01)\n" + CTX)
        wait_for(lambda: sum("metropc: out" in line for line in proc.err_lines) >= 2, 30)
        seen = sum("metropc: out" in line for line in proc.err_lines)
        wait_for(lambda: sum("metropc: out" in line for line in proc.err_lines) > seen, 30)
    finally:
        elapsed, err = stop(proc)
    assert proc.returncode == 130 and elapsed < 5, err
    assert "Traceback" not in err


def test_a_context_whose_top_level_never_returns_ends_at_duration_or_ctrl_c(tmp_path):
    """The top level runs in metropc-run's main thread before anything
    starts.  One that never returns is said after 5 s, and the first Ctrl-C
    or the end of --duration ends it with its line; before, it hung
    silently, ignoring both."""
    ctx_file = tmp_path / "loop.py"
    ctx_file.write_text("x = 1\nwhile True:\n    x += 1\n")
    timed = subprocess.run([sys.executable, "-m", "metropc.cli.run", str(ctx_file),
                            "--status", "off", "--duration", "1"],
                           capture_output=True, text=True, timeout=60)
    assert timed.returncode == 1, timed.stderr
    assert "--duration is up while the context's top level still runs" in timed.stderr
    assert re.search(rf"stopped while the top level of {re.escape(str(ctx_file))} ran "
                     r"\(at line [23]\); nothing ran", timed.stderr), timed.stderr

    proc = subprocess.Popen([sys.executable, "-m", "metropc.cli.run", str(ctx_file),
                             "--status", "off"], stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert f"the top level of {ctx_file} has run for 5 s and not returned" in line, line
        proc.send_signal(signal.SIGINT)
        err = line + proc.stderr.read()
        assert proc.wait(timeout=10) == 130, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert "Ctrl-C: stopping" in err and "nothing ran" in err and "Traceback" not in err


def test_the_fd_watch_warns_once_near_the_limit_and_notes_the_way_back():
    from metropc.cli.run_session import FdWatch
    watch = FdWatch(high=0.8, low=0.6)
    assert watch.check(700, 1000) is None
    assert watch.check(800, 1000).startswith("800 of this process's 1000 file descriptors")
    assert watch.check(990, 1000) is None and watch.check(650, 1000) is None  # (said once)
    assert watch.check(599, 1000) == "open file descriptors are back to 599 of 1000"
    assert watch.check(700, 1000) is None
    assert watch.check(801, 1000) is not None  # a second time: said again


def test_terminal_safe_escapes_control_characters_and_cuts_long_text():
    from metropc.cli.logsafe import terminal_safe
    assert terminal_safe("plain µs text\nline two\tend") == "plain µs text\nline two\tend"
    assert terminal_safe("\x1b[2J\rX\x00") == "\\x1b[2J\\rX\\x00"
    assert terminal_safe("y" * 30, limit=10) == "y" * 10 + " ... [20 more characters]"


def test_error_text_from_a_view_cannot_take_over_the_terminal(tmp_path):
    """A view's exception message is data: escape sequences in it are shown
    escaped, and a megabyte of it is cut, not printed as one line."""
    ctx_file = tmp_path / "loud.py"
    ctx_file.write_text("@View.Scalar\ndef loud(t: 'internal#train_id'):\n"
                        "    raise ValueError('\\x1b[2J\\x1b[31mFAKE: all good ' + 'y' * 10**6)\n")
    proc = subprocess.run([sys.executable, "-m", "metropc.cli.run", str(ctx_file),
                           "--status", "off", "--max-events", "3", "--rate", "max"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "view 'loud' failed" in proc.stderr and "\\x1b[2J\\x1b[31mFAKE" in proc.stderr
    assert "\x1b" not in proc.stderr
    assert max(len(line) for line in proc.stderr.splitlines()) < 10_100
    assert "more characters]" in proc.stderr


def test_a_top_level_waiting_inside_c_code_is_quit_at_once_after_5_s(tmp_path):
    """No signal reaches Python code while C code waits (a deadlocked
    library): the stop that --duration (or SIGTERM, or Ctrl-C) asked for
    becomes a quit at once 5 s later, as at a second Ctrl-C."""
    ctx_file = tmp_path / "deadlock.py"
    ctx_file.write_text("import ctypes\nlibc = ctypes.CDLL(None)\n"
                        "m = ctypes.create_string_buffer(64)\n"
                        "libc.pthread_mutex_lock(m)\nlibc.pthread_mutex_lock(m)\n")
    proc = subprocess.run([sys.executable, "-m", "metropc.cli.run", str(ctx_file),
                           "--status", "off", "--duration", "1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "--duration is up while the context's top level still runs" in proc.stderr
    assert "did not stop within 5 s (it waits inside C code?); quitting at once" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_fix_saved_while_an_edit_hangs_is_loaded_at_once(tmp_path):
    """An edit whose top level never returns is said after 5 s; a fixed
    file saved then is loaded at once instead of after the 30 s timeout."""
    ctx_file = tmp_path / "ctx.py"
    ctx_file.write_text(CTX)
    proc, addr = start(ctx_file)
    try:
        ctx_file.write_text("import time\nwhile True:\n    time.sleep(0.01)\n" + CTX)
        wait_for(lambda: any("the top level of the edit of" in line
                             for line in proc.err_lines), 30)
        fixed_at = time.monotonic()
        ctx_file.write_text(CTX + "\n# fixed\n")
        wait_for(lambda: any("loaded (version 2" in line for line in proc.err_lines), 30)
        assert time.monotonic() - fixed_at < 15
    finally:
        elapsed, err = stop(proc)
    assert "a newer edit was saved, which is loaded instead" in err, err
    assert "did not finish within 30 s" not in err, err


def test_an_edit_saved_while_the_pipeline_starts_is_loaded(tmp_path):
    """The file is watched from when it was first read: an edit saved while
    the stages start (after the context loaded, before the watch began) was
    taken for the running context and never loaded."""
    ctx_file = tmp_path / "ctx.py"
    ctx_file.write_text(CTX)
    proc = subprocess.Popen(
        [sys.executable, "-m", "metropc.cli.run", str(ctx_file), "--pool", "1",
         "--rate", "50", "--status", "off"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = []
    reader = threading.Thread(target=lambda: err.extend(iter(proc.stderr.readline, "")),
                              daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("loaded (version 1" in line for line in err), 30)
        ctx_file.write_text(CTX + "\n@View.Scalar\ndef more(t: 'internal#train_id'):\n"
                            "    return t\n")
        wait_for(lambda: any("loaded (version 2," in line for line in err), 30)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
        reader.join(5)


SLOW_CTX = """
import time

@View.Scalar
def slow(t: 'internal#train_id'):
    time.sleep(0.1)
    return t
"""


def test_a_finished_source_s_last_events_get_through_before_the_end(tmp_path):
    """The source is done long before the pool: metropc-run says it waits
    for the events still in the pipeline, none is left unpublished, and the
    final status line counts them all."""
    ctx_file = tmp_path / "ctx.py"
    ctx_file.write_text(SLOW_CTX)
    proc = subprocess.run([sys.executable, "-m", "metropc.cli.run", str(ctx_file),
                           "--rate", "max", "--max-events", "30", "--pool", "1",
                           "--status", "lines", "--drop-policy", "block"],
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    assert "letting the last" in proc.stderr, proc.stderr
    assert "not published" not in proc.stderr, proc.stderr
    # The last line has the counts of the end, not of a second before.
    summaries = [line for line in proc.stderr.splitlines() if line.startswith("metropc: out")]
    assert summaries[-1].startswith("metropc: out 30 "), summaries


def _ctrl_c(proc, timeout=30) -> str:
    """Ctrl-C to `proc` (SIGINT); the rest of its stderr once it has ended
    (killed if it has not within `timeout`)."""
    try:
        proc.send_signal(signal.SIGINT)
        return proc.communicate(timeout=timeout)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_ctrl_c_while_the_last_events_get_through_exits_130(tmp_path):
    """The source is done and metropc-run waits for the last events: a
    Ctrl-C then stops it as at any other moment (exit code 130)."""
    ctx_file = tmp_path / "ctx.py"
    ctx_file.write_text(SLOW_CTX.replace("time.sleep(0.1)", "time.sleep(0.5)"))
    proc = subprocess.Popen([sys.executable, "-m", "metropc.cli.run", str(ctx_file),
                             "--rate", "max", "--max-events", "40", "--pool", "1",
                             "--status", "off", "--drop-policy", "block"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    lines = []
    try:
        for line in proc.stderr:  # (until it says it waits: 20 s of events are left)
            lines.append(line)
            if "letting the last" in line:
                break
    finally:
        err = "".join(lines) + _ctrl_c(proc)  # (also ends it if the wait failed)
    assert "letting the last" in err, err
    assert proc.returncode == 130, err


def test_events_that_do_not_get_through_in_the_end_are_named_and_exit_3(tmp_path):
    """When none of the last events gets through for DRAIN_STALL_TIMEOUT
    (shortened here), metropc-run gives up on them, says how many, and
    exits 3, so that a script can tell that results are missing."""
    ctx_file = tmp_path / "ctx.py"
    ctx_file.write_text(SLOW_CTX.replace("time.sleep(0.1)", "time.sleep(3)"))
    code = ("import sys, metropc.cli.run as run, metropc.cli.run_live as live; "
            "live.DRAIN_STALL_TIMEOUT = 1.0; sys.exit(run.main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, str(ctx_file), "--rate", "max",
                           "--max-events", "4", "--pool", "1", "--status", "off",
                           "--drop-policy", "block"],
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 3, proc.stderr
    assert "giving up on the last events: none got through for 1 s" in proc.stderr
    assert "stopping with 4 event(s) still in the pipeline: their results are not published" \
        in proc.stderr


def test_ctrl_c_lets_the_events_in_flight_through(tmp_path):
    """Ctrl-C stops the source at once, and the events already queued (a
    slow view, the lossless queue full) still get through: the summary at
    the end counts as many out as the source fed, and nothing is named lost."""
    ctx_file = tmp_path / "ctx.py"
    ctx_file.write_text(SLOW_CTX.replace("time.sleep(0.1)", "time.sleep(0.02)"))
    proc, addr = start(ctx_file, "--rate", "max", "--drop-policy", "block")
    col = None
    try:
        from metropc.client import Client
        col = Client(addr)
        col.subscribe("slow")
        col.recv(30)  # (results flow: the queue is full behind them)
        got = 1
        proc.send_signal(signal.SIGINT)
        try:
            while True:
                col.recv(5)
                got += 1
        except TimeoutError:
            pass
    finally:
        if col is not None:
            col.close()
        if proc.poll() is None:
            stop(proc)
        proc.wait(10)
        proc.reader.join(5)
    err = "".join(proc.err_lines)
    assert proc.returncode == 130, err
    assert "still in the pipeline" not in err, err
    assert sum("stopping" in line for line in proc.err_lines) == 1, err
    # Every event the source fed reached the client (its first ones before it
    # subscribed aside): far more than the queue of 16 after the Ctrl-C.
    assert got >= 16, (got, err)


def _slow_run_in_its_own_group(ctx_file, *args, interrupt_wait=None):
    """metropc-run leading a process group of its own (as under a terminal,
    `timeout` or systemd), once a result shows the queue is full behind it;
    `interrupt_wait`: its INTERRUPT_WAIT instead of the default."""
    from metropc.client import Client
    program = ["-m", "metropc.cli.run"]
    if interrupt_wait is not None:
        program = ["-c", "import sys, metropc.cli.run as run, metropc.cli.run_live as live; "
                         f"live.INTERRUPT_WAIT = {interrupt_wait!r}; "
                         "sys.exit(run.main(sys.argv[1:]))"]
    proc = subprocess.Popen([sys.executable, *program, str(ctx_file),
                             "--rate", "max", "--pool", "1", "--status", "off",
                             "--drop-policy", "block", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        line = proc.stdout.readline()
        with Client(line.split("output on ")[1].split()[0], views=["slow"]) as col:
            col.recv(30)
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    return proc


def test_sigterm_to_the_process_group_restarts_no_stage(tmp_path):
    """`timeout`, systemd and `kill -- -PGID` signal the stages too: they end
    at once, none is restarted, and what they held is named, quickly."""
    ctx_file = tmp_path / "ctx.py"
    ctx_file.write_text(SLOW_CTX.replace("time.sleep(0.1)", "time.sleep(0.5)"))
    proc = _slow_run_in_its_own_group(ctx_file)
    try:
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "died" not in err and "restart" not in err and "replacement" not in err, err
    assert "SIGTERM: stopping (a second signal quits at once)" in err, err
    assert "still in the pipeline: their results are not published" in err, err
    assert elapsed < 3, (elapsed, err)  # no INTERRUPT_WAIT for stages that are gone


def test_the_last_line_has_the_counts_of_the_end_after_a_sigterm_to_the_group(tmp_path):
    """`timeout` and systemd signal every process: REDUCE is gone before the
    last index; the last line still counts what was published (it took the
    index of up to a second before)."""
    from metropc.client import Client

    ctx_file = tmp_path / "ctx.py"
    ctx_file.write_text(CTX)
    proc = subprocess.Popen([sys.executable, "-m", "metropc.cli.run", str(ctx_file), "--pool",
                             "1", "--rate", "100", "--status", "lines"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        address = proc.stdout.readline().split("output on ")[1].split()[0]
        with Client(address, views=["train"], timeout=5) as client:
            while client.received < 150:
                client.recv()
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                while True:
                    client.recv(timeout=2)
            except TimeoutError:
                pass
            received, missed = client.received, client.missed
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0 and missed == 0, err
    last = [line for line in err.splitlines() if line.startswith("metropc: out ")][-1]
    out = int(last.split("metropc: out ")[1].split()[0])
    # REDUCE's reports are one 20 ms interval old (so that a crash never
    # counts a result that had not left it): 4 events at 100 Hz, 10 on a
    # loaded machine; the index could be a second old, up to 100 events.
    assert received - 10 <= out <= received, (received, last)


def test_a_second_sigterm_quits_at_once_with_143(tmp_path):
    ctx_file = tmp_path / "ctx.py"
    ctx_file.write_text(SLOW_CTX.replace("time.sleep(0.1)", "time.sleep(2)"))
    proc = _slow_run_in_its_own_group(ctx_file)
    try:
        proc.send_signal(signal.SIGTERM)  # (to metropc-run alone: the stages go on)
        err = ""
        while "SIGTERM: stopping" not in err:  # (two at once would be one signal)
            line = proc.stderr.readline()
            assert line, err
            err += line
        proc.send_signal(signal.SIGTERM)
        err += proc.communicate(timeout=30)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, err
    # (os._exit skips the finalizers: the resource tracker, which has our
    # stderr too, would have warned of "leaked semaphore objects")
    assert "Traceback" not in err and "leaked" not in err, err


def test_ctrl_c_names_the_events_that_could_not_get_through(tmp_path):
    """Events that cannot get through within INTERRUPT_WAIT (shortened here)
    after Ctrl-C are named: how many produced no results."""
    ctx_file = tmp_path / "ctx.py"
    ctx_file.write_text(SLOW_CTX.replace("time.sleep(0.1)", "time.sleep(2)"))
    proc = _slow_run_in_its_own_group(ctx_file, interrupt_wait=0.5)
    err = _ctrl_c(proc)
    assert proc.returncode == 130, err
    n = int(err.split("stopping with ")[1].split()[0])
    assert 16 <= n <= 16 + 8, err  # the queue, and what the worker holds
    assert "their results are not published" in err, err


def test_a_given_up_async_stage_does_not_cut_the_end_of_a_run_short(tmp_path):
    """The ASYNC stage (or one worker of several) given up leaves a pipeline
    that still publishes: the end of the run waits for its last events and
    exits 0, as without it (it gave up at once and exited 3)."""
    ctx_file = tmp_path / "ctx.py"
    ctx_file.write_text("import os, time\n\n@View.Scalar\ndef tid(t: 'internal#train_id'):\n"
                        "    if t == 10099:  # the last train: still in flight at the end\n"
                        "        time.sleep(2)\n"
                        "    return t\n\n@View.Scalar(stage='async')\n"
                        "def crash(t: 'view#tid'):\n    os.abort()\n")
    proc = subprocess.run([sys.executable, "-m", "metropc.cli.run", str(ctx_file), "--pool",
                           "1", "--source", "sim:ntrains=100", "--rate", "20", "--status",
                           "lines"], capture_output=True, text=True, timeout=90)
    assert "stage async died (exit code -6); it died 5 times within 60 s" in proc.stderr
    assert proc.returncode == 0, proc.stderr
    assert "giving up" not in proc.stderr and "still in the pipeline" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("metropc: out 100 ") and ", lost 0," in last, proc.stderr


def test_run_stops_when_reduce_is_given_up(tmp_path):
    """A REDUCE view that crashes its process on every event: REDUCE is
    restarted, given up after 5 deaths within 60 s, and metropc-run stops
    with exit code 3 instead of feeding a pipeline that cannot publish."""
    ctx_file = tmp_path / "ctx.py"
    ctx_file.write_text("import os\n\n@View.Scalar(stage='reduce')\n"
                        "def crash(t: 'internal#train_id'):\n    os.abort()\n")
    proc = subprocess.run([sys.executable, "-m", "metropc.cli.run", str(ctx_file), "--pool",
                           "1", "--rate", "20", "--status", "lines", "--duration", "60"],
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 3, proc.stderr
    assert "not restarted again" in proc.stderr
    assert "REDUCE is not restarted any more: no more results can come; stopping" \
        in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr

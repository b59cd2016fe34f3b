"""``metropc-run`` in a real terminal: a pseudo-terminal, the screen read with pyte.

What the context author sees in the first hour: log lines (a refused edit
with file:line, the "loaded" confirmation) stay on screen above the live
status region, the status region says which version runs and why an edit
was refused, and Ctrl-C at any moment is one line and exit code 130.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
import threading
import time

import pytest

pyte = pytest.importorskip("pyte")

pytestmark = pytest.mark.timeout(120)

COLS, ROWS = 160, 60

CTX = """\
parameters(scale=1.0)

@View.Scalar
def train(t: 'internal#train_id'):
    return t * scale
"""

BROKEN = CTX + """
@View.Scalar
def broken(x: 'view#nothing_here'):
    return x
"""

GOOD = CTX + """
@View.Scalar
def doubled(t: 'internal#train_id'):
    return 2 * t
"""


class Terminal:
    """metropc-run on a pseudo-terminal of COLS x ROWS, its screen kept by pyte."""

    def __init__(self, *args, cols=COLS, rows=ROWS, env=None, runner=("-m", "metropc.cli.run")):
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.screen = pyte.Screen(cols, rows)
        self.stream = pyte.ByteStream(self.screen)
        self.raw = bytearray()
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            [sys.executable, *runner, *map(str, args)],
            stdin=slave, stdout=slave, stderr=slave, close_fds=True,
            start_new_session=True,  # its own session, with this pty as its terminal
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
            env={**os.environ, "TERM": "xterm-256color", "COLUMNS": str(cols),
                 "LINES": str(rows), **(env or {})})
        os.close(slave)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: every process holding the pty is gone
                return
            if not data:
                return
            with self._lock:
                self.raw += data
                self.stream.feed(data)

    def lines(self):
        with self._lock:
            return [line.rstrip() for line in self.screen.display]

    def text(self):
        return "\n".join(self.lines())

    def wait_for(self, predicate, timeout=30.0, what="condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.text()):
                return self.text()
            if self.proc.poll() is not None:
                self._reader.join(2)
                if predicate(self.text()):
                    return self.text()
                break
            time.sleep(0.05)  # polling the screen, not waiting for readiness
        raise AssertionError(f"{what} not on screen within {timeout} s "
                             f"(exit {self.proc.poll()}):\n{self.text()}")

    def ctrl_c(self):
        os.write(self.master, b"\x03")  # the terminal sends SIGINT to the whole group

    def wait(self, timeout=20.0):
        return self.proc.wait(timeout)

    def all_output(self):
        with self._lock:
            return self.raw.decode("utf-8", "replace")

    def close(self):
        if self.proc.poll() is None:
            import psutil
            try:  # (a job of its own: not in our process group)
                jobs = psutil.Process(self.proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                jobs = []
            for process in jobs:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        self._reader.join(5)
        os.close(self.master)


def status_region(lines):
    """The lines from the status summary to the last non-empty line."""
    filled = [i for i, line in enumerate(lines) if line.strip()]
    starts = [i for i, line in enumerate(lines) if line.startswith("metropc: out")]
    assert starts, "\n".join(lines)
    return starts[-1], filled[-1]


def test_log_lines_stay_above_the_status_region_that_tells_the_context_version(tmp_path):
    ctx = tmp_path / "ctx.py"
    ctx.write_text(CTX)
    term = Terminal(ctx, "--pool", "1", "--rate", "20")
    try:
        term.wait_for(lambda t: "metropc: out" in t and "train" in t
                      and "version 1 running" in t, what="the live status")
        # A broken edit: refused with file:line, the old version goes on.
        ctx.write_text(BROKEN)
        term.wait_for(lambda t: "context refused" in t and "was refused" in t,
                      what="the refusal")
        screen = term.text()
        assert f"{ctx}:7" in screen, screen  # the decorator line of the bad view
        # The status region says the running context is the old version, and why.
        first, last = status_region(term.lines())
        region = "\n".join(term.lines()[first:last + 1])
        assert "version 1 goes on" in region and "ctx.py:7" in region, region
        assert "nothing_here" in region
        # Redraws go on (a few seconds of them) and the refusal stays on screen.
        count = int(region.split("metropc: out ")[1].split()[0])
        term.wait_for(lambda t: int(t.split("metropc: out ")[-1].split()[0]) > count + 40,
                      what="more events")
        screen = term.text()
        assert "context refused" in screen and "nothing_here" in screen, screen

        # A good edit: the confirmation appears and stays, the status says version 2.
        ctx.write_text(GOOD)
        term.wait_for(lambda t: "loaded (version 2" in t and "version 2 running" in t
                      and "doubled" in t, what="the reload")
        count = int(term.text().split("metropc: out ")[-1].split()[0])
        term.wait_for(lambda t: int(t.split("metropc: out ")[-1].split()[0]) > count + 40,
                      what="more events")
        lines = term.lines()
        screen = "\n".join(lines)
        assert "context refused" in screen and "loaded (version 2" in screen, screen
        first, last = status_region(lines)
        # Every log line is above the status region, which is at the bottom.
        log_rows = [i for i, line in enumerate(lines)
                    if "context refused" in line or "loaded (version" in line]
        assert log_rows and max(log_rows) < first, screen
        assert "refused" not in "\n".join(lines[first:last + 1]), screen
        term.ctrl_c()
        assert term.wait() == 130
    finally:
        term.close()
    assert "Traceback" not in term.all_output()


@pytest.mark.parametrize("delay", [0.0, 0.3, 1.0])
def test_ctrl_c_while_the_stages_start_is_one_line_and_130(tmp_path, delay):
    ctx = tmp_path / "ctx.py"
    ctx.write_text(CTX)
    term = Terminal(ctx, "--pool", "2")
    try:
        # The first line ("context ... loaded") comes while the stages start
        # (before Python has imported metropc, nothing of ours runs yet).
        term.wait_for(lambda t: "loaded (version 1" in t, timeout=30, what="the first line")
        time.sleep(delay)  # the moment of the Ctrl-C is the test's parameter
        t0 = time.monotonic()
        term.ctrl_c()
        assert term.wait(20) == 130
        elapsed = time.monotonic() - t0
        term._reader.join(5)
    finally:
        term.close()
    out = term.all_output()
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    assert "did not start" not in out, out
    assert out.count("stopping") == 1, out
    assert elapsed < 10, (elapsed, out)
    # Nothing but: the loaded line, the output and control addresses, the keys,
    # the status region (if it was up already) and the one line about stopping.
    expected = ("loaded (version 1", "metropc-run: output on", "metropc-run: control on",
                "metropc-run: keys:", "metropc: ", "ctx.py: version 1", "view ", "train ",
                "metropc-run: Ctrl-C: stopping")
    lines = [line.replace("^C", "") for line in term.lines() if line.strip()]
    assert all(any(e in line for e in expected) for line in lines), lines
    assert len(lines) <= 9, lines


def test_ctrl_c_while_running_is_one_line_and_130(tmp_path):
    ctx = tmp_path / "ctx.py"
    ctx.write_text(CTX)
    term = Terminal(ctx, "--pool", "2", "--rate", "20")
    try:
        term.wait_for(lambda t: "metropc: out" in t and "train" in t, what="the status")
        before = len([line for line in term.lines() if line.strip()])
        term.ctrl_c()
        assert term.wait(20) == 130
        term._reader.join(5)
    finally:
        term.close()
    out = term.all_output()
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    after = [line for line in term.lines() if line.strip()]
    assert sum("stopping" in line for line in after) == 1, after
    assert len(after) == before + 1, after


def test_stopped_and_continued_it_goes_on_running(tmp_path):
    """Stopped and continued (SIGSTOP and SIGCONT, as a debugger or a job
    control does), the pipeline goes on: a stop is no Ctrl-C."""
    ctx = tmp_path / "ctx.py"
    ctx.write_text(CTX)
    term = Terminal(ctx, "--pool", "1", "--rate", "20")
    try:
        term.wait_for(lambda t: "metropc: out" in t and "train" in t, what="the status")
        for _ in range(3):
            os.kill(term.proc.pid, signal.SIGSTOP)
            time.sleep(0.6)  # stopped for longer than the signal thread's wait
            os.kill(term.proc.pid, signal.SIGCONT)
        count = int(term.text().split("metropc: out ")[-1].split()[0])
        term.wait_for(lambda t: int(t.split("metropc: out ")[-1].split()[0]) > count + 20,
                      what="more events after the stops")
        assert term.proc.poll() is None and "stopping" not in term.all_output()
        term.ctrl_c()
        assert term.wait() == 130
    finally:
        term.close()


def test_a_tiny_terminal_gets_plain_lines(tmp_path):
    """In a terminal too small for the live region, log lines stay whole
    lines (the live region's log columns would fold them a few letters wide)."""
    ctx = tmp_path / "ctx.py"
    ctx.write_text(CTX)
    term = Terminal(ctx, "--pool", "1", "--rate", "20", cols=20, rows=5)
    try:
        deadline = time.monotonic() + 30
        while "loaded (version 1" not in term.all_output().replace("\r\n", ""):
            assert time.monotonic() < deadline and term.proc.poll() is None, term.all_output()
            time.sleep(0.05)  # polling the screen
        term.ctrl_c()
        assert term.wait() == 130
    finally:
        term.close()
    out = term.all_output()
    assert "INFO: context" in out and "\x1b[?25l" not in out, out  # plain, no live region


def test_a_context_print_in_a_worker_scrolls_above_the_status(tmp_path):
    ctx = tmp_path / "ctx.py"
    ctx.write_text(CTX + "\n@View.Scalar\ndef talk(t: 'internal#train_id'):\n"
                   "    if t % 20 == 0:\n        print('hello from train', t)\n    return t\n")
    term = Terminal(ctx, "--pool", "1", "--rate", "20")
    try:
        term.wait_for(lambda t: t.count("hello from train") >= 2 and "metropc: out" in t,
                      what="prints from the worker")
        lines = term.lines()
        first, _ = status_region(lines)
        rows = [i for i, line in enumerate(lines) if "hello from train" in line]
        assert max(rows) < first, "\n".join(lines)
        term.ctrl_c()
        assert term.wait() == 130
    finally:
        term.close()


def test_dashboard_requests_do_not_garble_the_status(tmp_path):
    pytest.importorskip("tornado")
    import re
    import urllib.error
    import urllib.request

    ctx = tmp_path / "ctx.py"
    ctx.write_text(CTX)
    term = Terminal(ctx, "--pool", "1", "--rate", "20", "--dashboard", "0")
    try:
        screen = term.wait_for(lambda t: "dashboard on http" in t and "train" in t
                               and "metropc: out" in t, what="the dashboard line")
        url = re.search(r"dashboard on (http://\S+)", screen).group(1)
        for _ in range(5):
            with urllib.request.urlopen(url, timeout=10) as reply:
                assert reply.status == 200
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(url.rstrip("/") + "/no-such-page", timeout=10)
        count = int(term.text().split("metropc: out ")[-1].split()[0])
        term.wait_for(lambda t: int(t.split("metropc: out ")[-1].split()[0]) > count + 20,
                      what="more events")
        lines = term.lines()
        first, last = status_region(lines)
        region = lines[first:last + 1]
        # The region is whole: summary, context line, header, the one view.
        assert len(region) == 4, "\n".join(lines)
        assert region[1].startswith("ctx.py: version 1 running"), region
        assert region[2].split() == ["view", "output", "stage", "count", "rate/s", "errors"]
        assert region[3].split()[0] == "train", region
        # Requests are not logged (debug level), 404s neither: a scanner's
        # would flood the terminal (only server errors are).
        above = "\n".join(lines[:first])
        assert "GET / (" not in above, above
        assert "no-such-page" not in above, above
        term.ctrl_c()
        assert term.wait() == 130
    finally:
        term.close()


@contextlib.contextmanager
def keyed_run(tmp_path, **options):
    """metropc-run on CTX at 20 Hz in a terminal, once it runs and takes
    keys; yields the terminal and its screen then.  Closed at the end."""
    ctx = tmp_path / "ctx.py"
    ctx.write_text(CTX)
    term = Terminal(ctx, "--pool", "1", "--rate", "20", **options)
    try:
        yield term, term.wait_for(lambda t: "keys: r reset, p pause/resume" in t
                                  and "running" in t, what="the keys")
    finally:
        term.close()


def ends_with_ctrl_c(term):
    term.ctrl_c()
    assert term.wait(20) == 130


def test_keys_reset_pause_and_resume_in_the_terminal(tmp_path):
    """r resets every view, p pauses and resumes; the status line says so."""
    with keyed_run(tmp_path) as (term, _):
        os.write(term.master, b"r")
        term.wait_for(lambda t: "reset: every view starts empty" in t, what="the reset")
        os.write(term.master, b"p")
        term.wait_for(lambda t: "PAUSED (p resumes)" in t and "refused while paused" in t,
                      what="the paused state")
        os.write(term.master, b"p")
        term.wait_for(lambda t: "resumed" in t and "running" in t.split("metropc: out")[-1],
                      what="running again")
        ends_with_ctrl_c(term)


def _echoing(term) -> bool:
    """Whether the terminal echoes and edits lines (the pty's settings are
    the same seen from either end)."""
    lflag = termios.tcgetattr(term.master)[3]
    return bool(lflag & termios.ECHO) and bool(lflag & termios.ICANON)


def test_a_second_ctrl_c_gives_the_terminal_back_as_it_was(tmp_path):
    """The keys turn echo and line editing off; the quit-at-once exit of a
    second Ctrl-C turns them on again (a shell then echoes what is typed)."""
    with keyed_run(tmp_path) as (term, _):
        assert not _echoing(term)
        term.ctrl_c()
        term.wait_for(lambda t: "Ctrl-C: stopping" in t, what="the first Ctrl-C")
        ends_with_ctrl_c(term)
        assert _echoing(term)
        term._reader.join(5)
        assert term.all_output().endswith("\x1b[?25h"), repr(term.all_output()[-50:])


def _out_count(text) -> int:
    return int(text.split("metropc: out ")[-1].split()[0])


def test_ctrl_s_does_not_stop_the_output_or_the_pipeline(tmp_path):
    """Ctrl-S (XOFF) stopped the terminal's output, and so every process
    writing to it; with the keys taken it is a byte like any other, and
    the terminal's flow control is back as it was at the end."""
    with keyed_run(tmp_path) as (term, _):
        assert not termios.tcgetattr(term.master)[0] & termios.IXON
        os.write(term.master, b"\x13")  # Ctrl-S
        count = _out_count(term.wait_for(lambda t: "metropc: out " in t, what="the summary"))
        term.wait_for(lambda t: _out_count(t) > count + 20, what="more events after Ctrl-S")
        ends_with_ctrl_c(term)
        assert termios.tcgetattr(term.master)[0] & termios.IXON


def test_function_keys_and_pasted_text_are_not_keys(tmp_path):
    """F1 (ESC O P), F3, Alt-p and a paste holding r, p and q do nothing; a
    single p still pauses."""
    with keyed_run(tmp_path) as (term, _):
        for typed in (b"\x1bOP", b"\x1bOR", b"\x1bp", b"prq pasted text sqr"):
            os.write(term.master, typed)
            time.sleep(0.3)  # (one read each, as a terminal sends them)
        os.write(term.master, b"p")
        term.wait_for(lambda t: "PAUSED (p resumes)" in t, what="the pause")
        out = term.all_output()
        assert out.count("paused: new events") == 1 and "reset:" not in out, out
        assert "step boundary" not in out and term.proc.poll() is None, out
        ends_with_ctrl_c(term)


def test_p_resumes_a_pipeline_a_client_paused(tmp_path):
    """The key follows the pipeline's state, not a flag of its own."""
    import re

    from metropc.controller import Controller

    with keyed_run(tmp_path) as (term, text):
        control = re.search(r"control on (\S+)", text).group(1)
        with Controller(control) as remote:
            remote.pause()
        term.wait_for(lambda t: "PAUSED (p resumes)" in t, what="the remote pause")
        os.write(term.master, b"p")
        term.wait_for(lambda t: "resumed" in t and "running" in t.split("metropc: out")[-1],
                      what="running again after one p")
        ends_with_ctrl_c(term)


#: A shell's part in job control, for metropc-run: it runs it as a job of
#: its own (process group), in front, and waits for it.
JOB_SHELL = """
import os, signal, sys
fcntl = __import__("fcntl"); termios = __import__("termios")
fcntl.ioctl(0, termios.TIOCSCTTY, 0)
signal.signal(signal.SIGTTOU, signal.SIG_IGN)
pid = os.fork()
if pid == 0:
    os.setpgid(0, 0)
    os.execv(sys.executable, [sys.executable, "-m", "metropc.cli.run", *sys.argv[1:]])
os.setpgid(pid, pid)
os.tcsetpgrp(0, pid)
print("job", pid, flush=True)
while True:
    _, status = os.waitpid(pid, os.WUNTRACED)
    if os.WIFSTOPPED(status):
        print("stopped", flush=True)
    else:
        sys.exit(os.waitstatus_to_exitcode(status) & 0xff)
"""


def test_ctrl_z_gives_the_terminal_back_and_fg_takes_keys_again(tmp_path):
    """Ctrl-Z stops the job with echo and line editing back on (for the
    shell); continued in front (fg), it takes keys again."""
    import re

    shell = tmp_path / "shell.py"
    shell.write_text(JOB_SHELL)
    with keyed_run(tmp_path, runner=[str(shell)]) as (term, text):
        job = int(re.search(r"job (\d+)", text).group(1))
        assert not _echoing(term)
        os.write(term.master, b"\x1a")  # Ctrl-Z: SIGTSTP to the foreground job
        term.wait_for(lambda t: "stopped" in t, what="the job stopped")
        assert _echoing(term)
        os.killpg(job, signal.SIGCONT)  # what fg does (the job is still in front)
        wait_until(lambda: not _echoing(term), "keys taken again")
        os.write(term.master, b"p")
        term.wait_for(lambda t: "PAUSED (p resumes)" in t, what="a key after fg")
        ends_with_ctrl_c(term)


def test_a_dumb_terminal_gets_plain_lines(tmp_path):
    """TERM=dumb cannot redraw a region: plain lines, no keys."""
    ctx = tmp_path / "ctx.py"
    ctx.write_text(CTX)
    term = Terminal(ctx, "--pool", "1", "--rate", "20", env={"TERM": "dumb"})
    try:
        term.wait_for(lambda t: "output on" in t, what="the output line")
        term.ctrl_c()
        assert term.wait(20) == 130
        term._reader.join(5)
    finally:
        term.close()
    out = term.all_output()
    assert "INFO: context" in out and "metropc: out" in out, out
    assert "\x1b[?25l" not in out and "keys:" not in out, out


def wait_until(predicate, what, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not {what} within {timeout} s"
        time.sleep(0.02)  # polling a state, not waiting for readiness


def test_closing_the_terminal_stops_it_as_sigterm_does(tmp_path):
    """A hang-up (the terminal window closed, an ssh session dropped) stops
    the pipeline as SIGTERM does: exit code 0, no stage left, its shared
    memory unlinked, instead of every process dying where it stood."""
    from conftest import running

    from metropc.stage.segments import owned_segments

    ctx = tmp_path / "ctx.py"
    ctx.write_text(CTX)
    term = Terminal(ctx, "--pool", "1", "--rate", "20")
    try:
        term.wait_for(lambda t: "metropc: out" in t and "running" in t, what="the status")
        import psutil
        stages = [p for p in psutil.Process(term.proc.pid).children(recursive=True)
                  if "resource_tracker" not in " ".join(p.cmdline())]
        assert stages and owned_segments(term.proc.pid)
        master, term.master = term.master, os.open(os.devnull, os.O_RDONLY)
        os.close(master)  # the hang-up: SIGHUP to the terminal's processes
        assert term.proc.wait(30) == 0
        wait_until(lambda: not any(running(p) for p in stages), "the stages gone")
        assert not owned_segments(term.proc.pid)
    finally:
        term.close()

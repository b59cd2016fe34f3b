"""The other commands refuse bad command-line values at once, as metropc-run
does (tests/test_cli_values.py): one line ``PROG: error: ...`` naming the
value, exit 2 (or 1 where said), no traceback, nothing started.

Each case runs the real command as a subprocess.  Also: malformed websocket
messages to a real dashboard, and a recorder whose metropc-run is killed.
"""

from __future__ import annotations

import asyncio
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
    (["--control", GOOD, "--reduce", GOOD, "--prefetch", "-1"], ["--prefetch", "'-1'"]),
    (["--control", GOOD, "--reduce", GOOD, "--prefetch", "x"], ["--prefetch", "'x'"]),
])
def test_worker_refuses_bad_values(args, fragments):
    proc = cli("metropc.cli.worker", *args)
    assert_one_line_error(proc, "metropc-worker", *fragments)
    assert "joining" not in proc.stderr


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
])
def test_client_refuses_bad_addresses(addr, fragment):
    proc = cli("metropc.cli.client", addr, "--once", "--timeout", "1")
    assert_one_line_error(proc, "metropc-client", repr(addr), fragment)

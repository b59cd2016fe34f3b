"""CURVE keys, refusing unkeyed peers, and POOL workers joining from elsewhere.

Remote workers are real ``metropc-worker`` processes connecting over
``tcp://127.0.0.1``, as they would from another host.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys

import pytest
import zmq

from conftest import end_session, recording_frontend, wait_for
from metropc.client import Client
from metropc.frontend import Context, ProcessRunner
from metropc.security import Keys, generate_keys

pytestmark = pytest.mark.timeout(90)

CTX = """
@View.Scalar
def tid(t: 'internal#train_id'):
    return t
"""


def test_metropc_keys_writes_private_keys(tmp_path):
    keydir = tmp_path / "keys"
    out = subprocess.run([sys.executable, "-m", "metropc.security", str(keydir)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert stat.S_IMODE(os.stat(keydir).st_mode) == 0o700
    for name in ("server", "client"):
        assert stat.S_IMODE(os.stat(keydir / f"{name}.key_secret").st_mode) == 0o600
    keys = Keys.load(keydir)
    assert len(keys.server_public) == 40 and keys.client_secret
    again = subprocess.run([sys.executable, "-m", "metropc.security", str(keydir)],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "--force" in again.stderr


def test_keys_readable_by_others_are_refused(tmp_path):
    generate_keys(tmp_path / "k")
    os.chmod(tmp_path / "k" / "client.key_secret", 0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        Keys.load(tmp_path / "k")


@pytest.fixture
def secured(tmp_path):
    keydir = str(tmp_path / "keys")
    generate_keys(keydir)
    fe = recording_frontend()(
        control_addr="tcp://127.0.0.1:*", reduce_addr="tcp://127.0.0.1:*",
        output_addr="tcp://127.0.0.1:*", num_pool_stages=0, sr_cls=ProcessRunner,
        keys=keydir, queue_size=1000, output_hwm=10000)
    try:
        assert fe.wait_ready(30)
        fe.queue_to_all(b"context", Context(CTX, version=1).to_dict())
        yield fe, keydir
    finally:
        fe.close(timeout=5)


def start_worker(fe, keydir=None, name=None):
    cmd = [sys.executable, "-m", "metropc.cli.worker", "--control", fe.control_addr,
           "--reduce", fe.reduce_addr]
    if keydir:
        cmd += ["--keys", keydir]
    if name:
        cmd += ["--name", name]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def feed_until(fe, client, predicate, start, timeout=30):
    """Send events until `predicate(values)` holds; returns the values seen."""
    values, t = [], start
    import time
    deadline = time.monotonic() + timeout
    while not predicate(values):
        assert time.monotonic() < deadline, f"got only {values[-5:]}"
        fe.queue_to_any(b"event", {"internal#train_id": t})
        t += 1
        try:
            values.append(client.recv(timeout=0.05)[1]["data"])
        except TimeoutError:
            pass
    return values


@contextlib.contextmanager
def joined(fe, keydir, name):
    """A remote worker named `name`, stopped (SIGTERM) at the end if it runs."""
    worker = start_worker(fe, keydir, name=name)
    try:
        yield worker
    finally:
        if worker.poll() is None:
            worker.terminate()
        try:
            worker.wait(10)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(10)


def another_takes_over(fe, client, keydir):
    """A second worker joins and the pipeline goes on, in order."""
    with joined(fe, keydir, "next"):
        more = feed_until(fe, client, lambda v: len(v) >= 20, start=10_000)
    assert more == sorted(more) and more[-1] >= 10_000


def test_remote_worker_joins_and_losing_it_is_counted(secured):
    fe, keydir = secured
    assert fe.control_addr.startswith("tcp://127.0.0.1:")
    assert fe.reduce_addr.startswith("tcp://127.0.0.1:") and not fe.reduce_addr.endswith("*")
    with Client(fe.output_addr, views=["tid"], timeout=20, keys=keydir) as client:
        with joined(fe, keydir, "far-away-1") as worker:
            values = feed_until(fe, client, lambda v: len(v) >= 20, start=0)
            assert values == sorted(values)
            assert "pool-far-away-1" in fe._state.remote
            worker.send_signal(signal.SIGKILL)
            worker.wait(10)
            wait_for(lambda: any("pool-far-away-1 went silent" in e for e in fe.errors),
                     timeout=20)
        another_takes_over(fe, client, keydir)


def test_a_remote_worker_its_operator_stops_says_so(secured, caplog):
    """Ctrl-C in a remote worker's terminal: the frontend hears it leave at
    once (a warning, what it held counted), not a "went silent" error 5 s
    later; the pipeline goes on with the next worker."""
    fe, keydir = secured
    with Client(fe.output_addr, views=["tid"], timeout=20, keys=keydir) as client:
        with joined(fe, keydir, "leaving") as worker:
            feed_until(fe, client, lambda v: len(v) >= 20, start=0)
            worker.send_signal(signal.SIGINT)
            assert worker.wait(10) == 0
            wait_for(lambda: any("remote worker pool-leaving left (stopped by its operator)"
                                 in r.getMessage() for r in caplog.records), timeout=3)
            assert "pool-leaving" not in fe._state.remote
        another_takes_over(fe, client, keydir)
    assert not any("went silent" in e for e in fe.errors), fe.errors
    left, = [r for r in caplog.records if "pool-leaving left" in r.getMessage()]
    assert left.levelname == "WARNING" and "event(s) it held are lost" in left.getMessage()


def test_a_second_remote_worker_of_one_name_is_named_and_what_it_held_counted(secured, caplog):
    """Two metropc-worker --name twin share one ZeroMQ identity: the second
    takes the name's messages over and the first is cut off.  That was
    silent (two "joined" lines); now a warning names both processes, what
    the name held is counted (lost or requeued), and results go on."""
    fe, keydir = secured
    with Client(fe.output_addr, views=["tid"], timeout=20, keys=keydir) as client:
        with joined(fe, keydir, "twin") as first:
            feed_until(fe, client, lambda v: len(v) >= 5, start=0)
            with joined(fe, keydir, "twin") as second:
                wait_for(lambda: any("joined while one of that name runs" in r.getMessage()
                                     for r in caplog.records), timeout=20)
                more = feed_until(fe, client, lambda v: len(v) >= 20, start=1000)
                assert more == sorted(more) and more[-1] >= 1000
    warned = [r for r in caplog.records if "joined while one of that name runs" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelname == "WARNING"
    text = warned[0].getMessage()
    assert f"pid {second.pid}) joined" in text and "(host" in text
    assert f"pid {first.pid})" in text and "give each metropc-worker its own --name" in text
    assert "event(s) it held are lost" in text


def test_peers_without_the_keys_are_refused(secured):
    fe, keydir = secured
    intruder = start_worker(fe, keydir=None, name="intruder")
    zctx = zmq.Context()
    sub = zctx.socket(zmq.SUB)
    sub.linger = 0
    sub.connect(fe.output_addr)
    sub.subscribe(b"")
    try:
        with Client(fe.output_addr, views=["tid"], timeout=20, keys=keydir) as client:
            # The keyed client gets the index; the unkeyed subscriber gets nothing,
            # and the unkeyed worker never joins.
            for _ in range(3):
                fe.queue_to("reduce", b"index")
                client.wait_index(timeout=10)
            assert not sub.poll(500)
            assert "pool-intruder" not in fe._state.remote
            worker = start_worker(fe, keydir, name="friend")
            try:
                values = feed_until(fe, client, lambda v: len(v) >= 5, start=0)
            finally:
                worker.terminate()
                worker.wait(10)
            assert values and not sub.poll(200)
            assert "pool-intruder" not in fe._state.remote
    finally:
        sub.close()
        zctx.term()
        intruder.kill()
        intruder.wait(10)


def test_run_refuses_remote_addresses_without_keys(tmp_path):
    ctx = tmp_path / "ctx.py"
    ctx.write_text(CTX)
    out = subprocess.run([sys.executable, "-m", "metropc.cli.run", str(ctx),
                          "--control", "tcp://0.0.0.0:0", "--allow-remote"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "--keys" in out.stderr


def test_run_prints_a_watch_command_that_works_with_keys(tmp_path):
    """With --keys, the printed 'watch it with' command carries them, and
    running it as printed gets the pipeline's views."""
    import re
    import shlex

    ctx = tmp_path / "ctx.py"
    ctx.write_text(CTX)
    keydir = str(tmp_path / "keys")
    generate_keys(keydir)
    proc = subprocess.Popen([sys.executable, "-m", "metropc.cli.run", str(ctx), "--keys",
                             keydir, "--status", "off", "--duration", "60", "--pool", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    try:
        line = proc.stdout.readline()
        hint = re.search(r"\(watch it with: (metropc-client .*)\)$", line.strip())
        assert hint and f"--keys {keydir}" in hint.group(1), line
        argv = shlex.split(hint.group(1))[1:]
        once = subprocess.run([sys.executable, "-m", "metropc.cli.client", *argv, "--once",
                               "--timeout", "30"], capture_output=True, text=True, timeout=60)
        assert once.returncode == 0 and "view#tid" in once.stdout, once
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        finally:
            end_session(proc)  # (its stages too, if it hung)

"""POOL workers on another host, for real: a network namespace.

``test_security.py`` runs remote workers over ``tcp://127.0.0.1``.  Here the
workers run in their own network namespace, joined to this one by a veth
pair, as a second machine on the beamline network would be: they cannot see
this host's loopback, only the frontend's address on the link.  Needs root
(``ip netns``); skipped otherwise.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import recording_frontend, wait_for
from metropc.client import Client
from metropc.frontend import Context, ProcessRunner
from metropc.security import generate_keys

pytestmark = pytest.mark.timeout(120)

CTX = """
@View.Scalar
def tid(t: 'internal#train_id'):
    return t
"""


def ip(*args, netns=None):
    cmd = ["ip", *(["netns", "exec", netns, "ip"] if netns else []), *args]
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


@pytest.fixture
def other_host():
    """A network namespace with address .2 on a veth link; this host has .1."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 for a network namespace")
    tag = f"{os.getpid() % 100000}"
    ns, here, there = f"mpc{tag}", f"mpa{tag}", f"mpb{tag}"
    net = f"10.213.{os.getpid() % 250}"
    try:
        try:
            ip("netns", "add", ns)
            ip("link", "add", here, "type", "veth", "peer", "name", there)
            ip("link", "set", there, "netns", ns)
            ip("addr", "add", f"{net}.1/24", "dev", here)
            ip("link", "set", here, "up")
            ip("addr", "add", f"{net}.2/24", "dev", there, netns=ns)
            ip("link", "set", there, "up", netns=ns)
            ip("link", "set", "lo", "up", netns=ns)
        except (subprocess.CalledProcessError, OSError) as e:
            err = getattr(e, "stderr", b"") or b""
            pytest.skip(f"cannot set up a network namespace here: {e} {err.decode()[:200]}")
        yield ns, f"{net}.1"
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", here], capture_output=True, timeout=30)


def test_the_namespace_is_another_host(other_host):
    """Its loopback is its own: a server on ours cannot be reached from there."""
    import socket
    ns, address = other_host
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        probe = (f"import socket; s = socket.socket(); s.settimeout(5); "
                 f"print(s.connect_ex(('127.0.0.1', {port})) != 0)")
        out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", probe],
                             capture_output=True, text=True, timeout=30)
        assert out.stdout.strip() == "True", out.stderr


def start_worker_in(ns, fe, keydir, name):
    cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "metropc.cli.worker",
           "--control", fe.control_addr, "--reduce", fe.reduce_addr,
           "--keys", keydir, "--name", name]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_workers_on_another_host_join_and_losing_one_is_counted(other_host, tmp_path):
    ns, address = other_host
    keydir = str(tmp_path / "keys")
    generate_keys(keydir)
    # Everything on the link address: the workers cannot reach our loopback.
    fe = recording_frontend()(
        control_addr=f"tcp://{address}:*", reduce_addr=f"tcp://{address}:*",
        output_addr=f"tcp://{address}:*", num_pool_stages=0, sr_cls=ProcessRunner,
        keys=keydir, queue_size=1000, output_hwm=10000)
    workers = []
    try:
        assert fe.wait_ready(30)
        fe.queue_to_all(b"context", Context(CTX, version=1).to_dict())
        workers = [start_worker_in(ns, fe, keydir, f"far-{i}") for i in range(2)]
        wait_for(lambda: {"pool-far-0", "pool-far-1"} <= set(fe._state.remote), timeout=30)
        with Client(fe.output_addr, views=["tid"], timeout=20, keys=keydir) as client:
            client.wait_index()  # subscribed: nothing published from now on is missed
            for t in range(200):
                fe.queue_to_any(b"event", {"internal#train_id": t})
            values = [client.recv()[1]["data"] for _ in range(200)]
            assert values == list(range(200))  # in order, through both workers

            workers[0].send_signal(signal.SIGKILL)
            workers[0].wait(10)
            wait_for(lambda: any("pool-far-0 went silent" in e for e in fe.errors),
                     timeout=30)
            for t in range(1000, 1100):
                fe.queue_to_any(b"event", {"internal#train_id": t})
            deadline = time.monotonic() + 30
            more = []
            while len(more) < 100 and time.monotonic() < deadline:
                more.append(client.recv()[1]["data"])
            assert more == list(range(1000, 1100))  # the survivor does all
        assert not fe.panics
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait(10)
        fe.close(timeout=5)

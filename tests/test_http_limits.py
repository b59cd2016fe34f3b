"""Limits of the two HTTP servers inside metropc-run (garbage audit F13, F3, F9).

The metrics server (``metropc.metrics``) and the dashboard
(``metropc.dashboard.server``) close idle connections after a timeout,
take a bounded number of connections and close any beyond at once, and
survive running out of file descriptors with one warning and no busy loop;
the dashboard logs malformed websocket messages once, then with a count.

Real servers on free ports (their pipeline address is an ``inproc://`` one
nobody binds: no pipeline is needed to serve), real sockets; timeouts are
shortened to fractions of a second, every wait polls with a deadline, and
the fd-limit tests run the server in a child process with a low
``RLIMIT_NOFILE``, which is always ended.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from metropc.dashboard import limits

REPO = Path(__file__).resolve().parent.parent
NOWHERE = "inproc://nothing-published-here"

pytestmark = pytest.mark.timeout(60)


def wait_for(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(0.02)


def hold(port, n, request=b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n"):
    """`n` connections that sent part of a request and then nothing."""
    held = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(request)
        held.append(s)
    return held


def closed_by_server(s, timeout=10.0) -> bool:
    """True once the server closed `s` (end of file or reset) within `timeout`."""
    s.settimeout(timeout)
    try:
        while s.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


def get(port, path, timeout=10.0) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        r.read()
        return r.status


def try_get(port, path):
    try:
        return get(port, path, timeout=2.0)
    except OSError:
        return None


# -- the pure parts -----------------------------------------------------------------------

def test_log_throttle_logs_the_first_then_a_count_per_interval(caplog):
    now = [0.0]
    throttle = limits.LogThrottle(logging.getLogger("test.throttle"), interval=60,
                                  clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.throttle"):
        assert throttle("refused %s", "a")
        for t in range(1, 30):
            now[0] = t
            assert not throttle("refused %s", "b")
        now[0] = 61
        assert throttle("refused %s", "c")
        now[0] = 200
        assert throttle("refused %s", "d")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3 and throttle.count == 32
    assert messages[0].startswith("refused a (repeats are logged at most once every 60 s")
    assert messages[1] == "refused c (and 29 more times in the last 61 s)"
    assert messages[2] == "refused d"


def test_connection_cap_leaves_most_descriptors_to_the_pipeline(monkeypatch):
    monkeypatch.setattr(limits, "fd_limit", lambda: 20000)
    assert limits.connection_cap(256) == 256
    monkeypatch.setattr(limits, "fd_limit", lambda: 256)
    assert limits.connection_cap(256) == 64
    monkeypatch.setattr(limits, "fd_limit", lambda: 8)
    assert limits.connection_cap(256) == 4 and limits.connection_cap(2) == 2
    monkeypatch.setattr(limits, "fd_limit", lambda: None)
    assert limits.connection_cap(256) == 256
    with pytest.raises(ValueError):
        limits.connection_cap(0)


# -- the metrics server -------------------------------------------------------------------

@pytest.fixture
def metrics_server():
    pytest.importorskip("prometheus_client")
    from metropc.metrics import MetricsServer

    servers = []

    def start(**limits_):
        server = MetricsServer(NOWHERE, port=0, **limits_).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def test_metrics_idle_connections_are_closed_and_their_threads_end(metrics_server):
    before = threading.active_count()
    server = metrics_server(idle_timeout=0.5)
    held = hold(server.port, 20)
    try:
        wait_for(lambda: server._httpd.open_connections == 20, what="20 connections open")
        assert threading.active_count() >= before + 20
        started = time.monotonic()
        assert all(closed_by_server(s) for s in held)
        assert time.monotonic() - started < 5
        wait_for(lambda: threading.active_count() <= before + 2, what="handler threads end")
        wait_for(lambda: server._httpd.open_connections == 0, what="no connection left")
        assert get(server.port, "/metrics") == 200
    finally:
        for s in held:
            s.close()


def test_metrics_a_request_sent_byte_by_byte_is_cut_off(metrics_server):
    server = metrics_server(idle_timeout=0.6)
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        started = time.monotonic()
        with pytest.raises(OSError):  # each byte comes before the read timeout
            for byte in b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n" * 20:
                s.sendall(bytes([byte]))
                time.sleep(0.1)
        assert time.monotonic() - started < 5
    finally:
        s.close()
    assert get(server.port, "/status") == 200


def test_metrics_at_the_cap_a_new_connection_takes_an_idle_one_s_place(metrics_server):
    """At the cap, the oldest connection that has not sent its request is
    closed for a new one: a peer holding connections idle cannot lock out
    a scraper, which sends its request at once (8 of 10 scrapes failed
    during a flood when the new connection was the one refused)."""
    server = metrics_server(idle_timeout=30.0, max_connections=10)
    held = hold(server.port, 10)
    extra = []
    try:
        wait_for(lambda: server._httpd.open_connections == 10, what="10 connections open")
        for _ in range(3):  # a flood goes on between the scrapes
            extra += hold(server.port, 15)
            assert get(server.port, "/metrics", timeout=5.0) == 200  # long before 30 s
        # the oldest held ones were closed for them, and never more than 10 are open
        assert all(closed_by_server(s, timeout=5.0) for s in held)
        assert server._httpd.open_connections <= 10
        assert server._httpd.evicted >= 45
    finally:
        for s in held + extra:
            s.close()


# -- the dashboard ------------------------------------------------------------------------

@pytest.fixture
def dashboard():
    pytest.importorskip("tornado")
    from metropc.dashboard import Dashboard

    dashboards = []

    def start(**options):
        d = Dashboard(NOWHERE, "127.0.0.1", 0, **options).start()
        dashboards.append(d)
        return d

    yield start
    for d in dashboards:
        d.stop()


def connections(d) -> dict:
    """The dashboard's ``connections`` status, read on its own IO loop."""
    got, done = {}, threading.Event()

    def read():
        got.update(d.connection_stats())
        done.set()

    d._loop.call_soon_threadsafe(read)
    assert done.wait(10)
    return got


def test_dashboard_closes_idle_http_connections_but_keeps_websockets(dashboard):
    from ws_client import WsClient

    d = dashboard(idle_timeout=0.5)
    ws = WsClient(f"ws://127.0.0.1:{d.port}/ws")
    held = hold(d.port, 5, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    try:
        assert ws.recv(10)[0]["op"] == "hello"
        started = time.monotonic()
        assert all(closed_by_server(s) for s in held)
        assert time.monotonic() - started < 5
        # a keep-alive connection that got its answer is closed when idle, too
        keep = socket.create_connection(("127.0.0.1", d.port), timeout=10)
        held.append(keep)
        keep.sendall(b"GET /favicon.ico HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert keep.recv(100).startswith(b"HTTP/1.1 204")
        assert closed_by_server(keep)
        # the websocket, open for longer than the timeout by now, still works
        ws.send_raw("not json {")
        header, _ = ws.until(lambda h, a: h.get("op") == "error", timeout=10, ack=False)
        assert header["message"].startswith("not JSON")
        assert connections(d)["open"] == 1
    finally:
        ws.close()
        for s in held:
            s.close()


def test_dashboard_at_the_cap_idle_connections_make_room_and_websockets_stay(dashboard,
                                                                            caplog):
    """At the cap a new connection takes the place of the oldest one that is
    no websocket: a peer holding connections cannot keep a browser out, and
    open pages are never cut.  Only with every slot a websocket is the new
    connection closed at once (logged once, counted)."""
    from ws_client import WsClient

    d = dashboard(idle_timeout=30.0, max_connections=8)
    pages = [WsClient(f"ws://127.0.0.1:{d.port}/ws") for _ in range(2)]
    held, extra = [], []
    try:
        held = hold(d.port, 6, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        wait_for(lambda: connections(d)["open"] == 8, what="8 connections open")
        extra = hold(d.port, 20, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert get(d.port, "/status", timeout=5.0) == 200  # long before the 30 s
        assert all(closed_by_server(s, timeout=5.0) for s in held)
        stats = connections(d)
        assert stats["open"] <= 8 and stats["evicted"] >= 20 and stats["refused"] == 0
        for ws in pages:  # the open pages still answer
            ws.send_raw("not json {")
            ws.until(lambda h, a: h.get("op") == "error", timeout=10, ack=False)
        for s in held + extra:
            s.close()
        pages += [WsClient(f"ws://127.0.0.1:{d.port}/ws") for _ in range(6)]
        wait_for(lambda: connections(d)["open"] == 8, what="8 websockets open")
        with caplog.at_level(logging.WARNING, logger="metropc.dashboard.server"):
            refused = hold(d.port, 3, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            extra += refused
            assert all(closed_by_server(s, timeout=2.0) for s in refused)
        assert connections(d)["refused"] == 3
        assert len([r for r in caplog.records if "closed a connection" in r.getMessage()]) == 1
    finally:
        for s in held + extra:
            s.close()
        for ws in pages:
            ws.close()


def test_dashboard_warns_once_for_many_browsers_sending_garbage(dashboard, caplog):
    from ws_client import WsClient

    d = dashboard()
    clients = []
    try:
        with caplog.at_level(logging.DEBUG, logger="metropc.dashboard.server"):
            for _ in range(20):
                ws = WsClient(f"ws://127.0.0.1:{d.port}/ws")
                clients.append(ws)
                ws.send_raw("not json {")
                ws.until(lambda h, a: h.get("op") == "error", timeout=10, ack=False)
        refused = [r for r in caplog.records if "refused a message" in r.getMessage()]
        warnings = [r for r in refused if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and len(refused) == 20, caplog.text
        assert "127.0.0.1" in warnings[0].getMessage()
        assert "not JSON" in warnings[0].getMessage()
        assert connections(d)["rejected_messages"] == 20
    finally:
        for ws in clients:
            ws.close()


# -- at the file-descriptor limit ---------------------------------------------------------

#: Serves in a child process whose descriptor limit is low; on stdin,
#: "fill" opens files until none is left, "free" closes them, "quit" stops.
CHILD = r"""
import logging, os, resource, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(name)s %(levelname)s: %(message)s")
resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
if sys.argv[1] == "metrics":
    from metropc.metrics import MetricsServer
    server = MetricsServer(sys.argv[2], port=0).start()
else:
    from metropc.dashboard import Dashboard
    server = Dashboard(sys.argv[2], "127.0.0.1", 0).start()
print(server.port, flush=True)
held = []
for line in sys.stdin:
    if line.strip() == "fill":
        try:
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError as e:
            print("filled", len(held), e.errno, flush=True)
    elif line.strip() == "free":
        for fd in held:
            os.close(fd)
        held = []
        print("freed", flush=True)
    else:
        break
server.stop()
print("stopped", flush=True)
"""


def command(proc, line):
    proc.stdin.write(line + "\n")
    proc.stdin.flush()
    return proc.stdout.readline()


@pytest.mark.parametrize("which", ["metrics", "dashboard"])
def test_out_of_file_descriptors_is_one_warning_no_busy_loop(which, tmp_path):
    import psutil

    pytest.importorskip("prometheus_client" if which == "metrics" else "tornado")
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, which, NOWHERE], cwd=REPO,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                text=True)
    pending = []
    try:
        port = int(proc.stdout.readline())
        assert command(proc, "fill").startswith("filled")
        cpu = psutil.Process(proc.pid)
        before = sum(cpu.cpu_times()[:2])
        for _ in range(3):  # each waits in the listen backlog: accept() fails
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"GET /status HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            pending.append(s)
        time.sleep(3)  # what the server does meanwhile is what is tested
        busy = sum(cpu.cpu_times()[:2]) - before
        assert command(proc, "free") == "freed\n"
        for s in pending:  # answered once descriptors are free again
            s.settimeout(10)
            assert s.recv(100).split(b"\r\n")[0].endswith(b" 200 OK")
        assert get(port, "/status") == 200
        assert command(proc, "quit") == "stopped\n"
        assert proc.wait(10) == 0
    finally:
        for s in pending:
            s.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        proc.stdin.close()
        proc.stdout.close()
    text = err_path.read_text()
    assert busy < 1.0, f"{busy:.2f} s of CPU in 3 s at the fd limit: a busy loop"
    assert "Traceback" not in text and "Exception in callback" not in text, text[:3000]
    warnings = [line for line in text.splitlines() if "cannot accept" in line]
    assert len(warnings) == 1, text[:3000]
    assert f"port {port}" in warnings[0] and "256 files" in warnings[0]
    assert len(text.splitlines()) <= 4, text[:3000]

"""The Karabo bridge source against real karabo_bridge servers in-process.

Servers bind only to ipc:// paths in a temporary folder or to 127.0.0.1
with a port chosen by the OS; nothing waits with sleep for readiness.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading

import numpy as np
import pytest

from metropc.error import SourceError
from metropc.sources import open_source

karabo_bridge = pytest.importorskip(
    "karabo_bridge", reason="karabo-bridge not installed (pip install metropc[karabo])")
from karabo_bridge import ServerInThread  # noqa: E402
from karabo_bridge.server import SimServerInThread  # noqa: E402

pytestmark = pytest.mark.timeout(30)

FAST = "SPB_XTD9_XGM/DOOCS/MAIN:output"
SLOW = "SPB_XTD9_XGM/DOOCS/MAIN"


def _threads():
    # pyzmq's process-wide garbage collector for zero-copy sends (started
    # by the servers' first send) lives as long as the process; not ours.
    return {t for t in threading.enumerate()
            if type(t).__name__ != "GarbageCollectorThread"}


@pytest.fixture(autouse=True)
def no_leftover_threads():
    before = _threads()
    yield
    assert _threads() <= before


@pytest.fixture
def endpoint():
    # A short folder of our own: ipc paths are limited to ~100 characters.
    folder = tempfile.mkdtemp(prefix="mpc-", dir="/tmp")
    path = os.path.join(folder, "bridge")
    yield f"ipc://{path}"
    if os.path.exists(path):
        os.unlink(path)
    os.rmdir(folder)


def train(tid):
    data = {FAST: {"data.intensityTD": np.arange(4, dtype=np.float32) * tid,
                   "data.nPulses": 4},
            SLOW: {"pulseEnergy.photonFlux.value": tid / 2,
                   "pulseEnergy.photonFlux.timestamp": 123}}
    meta = {src: {"source": src, "timestamp.tid": tid} for src in data}
    return data, meta


def feed(server, first, n):
    for tid in range(first, first + n):
        server.feed(*train(tid))


class Signal(logging.Handler):
    """Sets `event` when a record containing `text` is logged."""

    def __init__(self, text):
        super().__init__(logging.DEBUG)
        self.text = text
        self.event = threading.Event()

    def emit(self, record):
        if self.text in record.getMessage():
            self.event.set()


@pytest.fixture
def signal():
    handlers = []
    log = logging.getLogger("metropc.sources.bridge")
    old = log.level
    log.setLevel(logging.DEBUG)

    def make(text):
        handler = Signal(text)
        log.addHandler(handler)
        handlers.append(handler)
        return handler.event

    yield make
    for handler in handlers:
        log.removeHandler(handler)
    log.setLevel(old)


def test_trains_become_karabo_paths_without_copies(endpoint):
    with ServerInThread(endpoint, sock="REP", maxlen=3) as server:
        feed(server, 100, 3)
        with open_source(endpoint) as source:
            events = [next(source) for _ in range(3)]
    assert [e["internal#train_id"] for e in events] == [100, 101, 102]
    ev = events[1]
    assert ev["internal#event_id"] == 101 and ev["internal#sequence_id"] == -1
    assert set(ev) == {"internal#train_id", "internal#event_id", "internal#sequence_id",
                       f"karabo#{FAST}[data.intensityTD]", f"karabo#{FAST}[data.nPulses]",
                       f"karabo#{SLOW}.pulseEnergy.photonFlux.value",
                       f"karabo#{SLOW}.pulseEnergy.photonFlux.timestamp"}
    arr = ev[f"karabo#{FAST}[data.intensityTD]"]
    np.testing.assert_array_equal(arr, np.arange(4) * 101)
    # A view on the received frame, not a copy.
    assert not arr.flags.owndata
    assert ev[f"karabo#{SLOW}.pulseEnergy.photonFlux.value"] == 50.5
    assert source._ctx is None  # sockets and context are gone


def test_only_wanted_paths_are_forwarded(endpoint):
    paths = [f"karabo#{FAST}[data.intensityTD]",
             f"{SLOW}.pulseEnergy.photonFlux",  # bare, and without .value
             "karabo#OTHER/DEV/X.prop", "view#something"]
    with ServerInThread(endpoint, sock="REP", maxlen=2) as server:
        feed(server, 7, 2)
        with open_source(endpoint, paths=paths) as source:
            ev = next(source)
    assert set(ev) == {"internal#train_id", "internal#event_id", "internal#sequence_id",
                       f"karabo#{FAST}[data.intensityTD]",
                       f"karabo#{SLOW}.pulseEnergy.photonFlux"}
    assert ev[f"karabo#{SLOW}.pulseEnergy.photonFlux"] == 3.5


def test_set_paths_while_connected(endpoint):
    with ServerInThread(endpoint, sock="REP", maxlen=3) as server:
        feed(server, 1, 3)
        with open_source(endpoint, paths=[f"karabo#{FAST}[data.nPulses]"]) as source:
            first = next(source)
            source.set_paths([f"karabo#{SLOW}.pulseEnergy.photonFlux"])
            second = next(source)
            source.set_paths(None)
            third = next(source)
    assert f"karabo#{FAST}[data.nPulses]" in first and len(first) == 4
    assert second[f"karabo#{SLOW}.pulseEnergy.photonFlux"] == 1.0 and len(second) == 4
    assert len(third) == 7


def test_simulator_agipd_module_over_tcp():
    server = SimServerInThread("tcp://127.0.0.1:0", detector="AGIPDModule",
                               raw=True, datagen="zeros", debug=False)
    server.start()
    try:
        with open_source(server.endpoint, timeout=5) as source:
            events = [next(source) for _ in range(3)]
    finally:
        server.stop()
    tids = [e["internal#train_id"] for e in events]
    assert tids[0] >= 10_000_000_000 and tids == list(range(tids[0], tids[0] + 3))
    image = events[0]["karabo#SPB_DET_AGIPD1M-1/DET/0CH0:xtdf[image.data]"]
    assert image.shape == (128, 512, 64) and image.dtype == np.uint16


def test_pull_socket(endpoint):
    with ServerInThread(endpoint, sock="PUSH", maxlen=3) as server:
        feed(server, 1, 3)
        with open_source(endpoint, bridge_socket="PULL") as source:
            tids = [next(source)["internal#train_id"] for _ in range(3)]
    assert tids == [1, 2, 3]


def test_sub_socket(endpoint):
    # PUB drops trains until the subscription is through, so keep feeding.
    stop = threading.Event()
    with ServerInThread(endpoint, sock="PUB", maxlen=1) as server:
        def feeder():
            tid = 0
            while not stop.is_set() and tid < 100_000:
                try:
                    server.feed(*train(tid), timeout=0.05)
                except Exception:
                    continue
                tid += 1

        thread = threading.Thread(target=feeder)
        thread.start()
        try:
            with open_source(endpoint, bridge_socket="sub") as source:
                a, b = next(source), next(source)
        finally:
            stop.set()
            thread.join(10)
    assert b["internal#train_id"] > a["internal#train_id"]


def test_picks_up_a_restarted_bridge_without_losing_trains(endpoint, caplog, signal):
    server = ServerInThread(endpoint, sock="REP", maxlen=3)
    server.start()
    feed(server, 1, 3)
    silent = signal("no data from Karabo bridge")
    servers = [server]

    def restart():
        servers[0].stop()
        # Only come back once the source has noticed the silence.
        if silent.wait(10):
            servers.append(ServerInThread(endpoint, sock="REP", maxlen=3))
            servers[-1].start()
            feed(servers[-1], 50, 3)

    with open_source(endpoint, timeout=0.2) as source:
        tids = [next(source)["internal#train_id"] for _ in range(3)]
        thread = threading.Thread(target=restart)
        thread.start()
        try:
            tids += [next(source)["internal#train_id"] for _ in range(3)]
        finally:
            thread.join(10)
            servers[-1].stop()
        assert source.reconnects >= 1
    assert tids == [1, 2, 3, 50, 51, 52]
    assert "still waiting" in caplog.text
    assert "sending again" in caplog.text


def test_silent_endpoint_warns_with_a_hint_and_can_give_up(endpoint, caplog):
    with open_source(endpoint, timeout=0.1, give_up=0.5) as source:
        with pytest.raises(SourceError, match=r"no data from Karabo bridge.*giving up"):
            next(source)
    assert "is it a REP socket (this source uses REQ)" in caplog.text


def test_close_from_another_thread_while_waiting(endpoint, signal):
    source = open_source(endpoint, timeout=0.05)
    waiting = signal("no data from Karabo bridge")

    def closer():
        waiting.wait(10)
        source.close()

    thread = threading.Thread(target=closer)
    thread.start()
    assert list(source) == []
    thread.join(10)
    assert source.closed and source._ctx is None


@pytest.mark.parametrize("spec, kwargs, message", [
    ("tcp://127.0.0.1", {}, "no port"),
    ("tcp://no-such-host.invalid:4545", {}, "cannot resolve host"),
    ("tcp://127.0.0.1:4545", {"bridge_socket": "DEALER"}, "REQ, SUB, PULL"),
    ("tcp://127.0.0.1:4545", {"timeout": 0}, "timeout must be positive"),
    ("tcp://127.0.0.1:4545", {"colour": 1}, "unknown option"),
    ("udp://127.0.0.1:4545", {}, "unknown source scheme"),
    # what ZeroMQ would take silently (port 70000 is 4464 to it) or wait on
    ("tcp://127.0.0.1:70000", {}, "out of range"),
    ("tcp://:1", {}, "no host"),
    ("tcp://127.0.0.1:0x10", {}, "not a number"),
    ("ipc:///nonexistent/dir/sock", {}, "no directory /nonexistent/dir"),
])
def test_bad_specs(spec, kwargs, message):
    with pytest.raises(SourceError, match=message):
        open_source(spec, **kwargs)


def test_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "karabo_bridge.serializer", None)
    with pytest.raises(SourceError, match=r"pip install metropc\[karabo\]"):
        open_source("tcp://127.0.0.1:4545")


def test_train_without_a_needed_source_is_explained_once(endpoint, caplog):
    caplog.set_level(logging.WARNING, logger="metropc.sources.bridge")
    paths = [f"karabo#{FAST}[data.intensityTD]", "karabo#ABSENT/DEV/X:output[data.y]"]
    with ServerInThread(endpoint, sock="REP", maxlen=3) as server:
        feed(server, 300, 3)
        with open_source(endpoint, paths=paths) as source:
            events = [next(source) for _ in range(3)]
    assert all(f"karabo#{FAST}[data.intensityTD]" in e for e in events)
    assert not any("karabo#ABSENT/DEV/X:output[data.y]" in e for e in events)
    warnings = [r.getMessage() for r in caplog.records if "ABSENT/DEV/X:output" in r.getMessage()]
    assert len(warnings) == 1 and "train 300" in warnings[0]
    assert "views that need it do not run" in warnings[0]


def test_misspelled_key_of_a_source_that_is_there_is_named_once(endpoint, caplog):
    caplog.set_level(logging.WARNING, logger="metropc.sources.bridge")
    fast_typo = f"karabo#{FAST}[data.intensityDT]"
    slow_typo = f"karabo#{SLOW}.pulseEnergy.photonFlx"
    source_typo = "karabo#SPB_XTD9_XGM/DOOCS/MAINN:output[data.nPulses]"
    paths = [f"karabo#{FAST}[data.nPulses]", fast_typo, slow_typo, source_typo]
    with ServerInThread(endpoint, sock="REP", maxlen=3) as server:
        feed(server, 400, 3)
        with open_source(endpoint, paths=paths) as source:
            events = [next(source) for _ in range(3)]
    assert [e[f"karabo#{FAST}[data.nPulses]"] for e in events] == [4, 4, 4]
    assert not any(p in e for e in events for p in paths[1:])
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 3, said  # once each, not once per train
    fast, = (m for m in said if fast_typo in m)
    assert fast.startswith("train 400 ")
    assert (f"{FAST} sends no key 'data.intensityDT'; did you mean "
            f"'karabo#{FAST}[data.intensityTD]'?; views that need it do not run") in fast
    slow, = (m for m in said if slow_typo in m)
    assert f"did you mean 'karabo#{SLOW}.pulseEnergy.photonFlux'?" in slow
    absent, = (m for m in said if "MAINN" in m)
    assert ("has no data from SPB_XTD9_XGM/DOOCS/MAINN:output, which the context uses; "
            f"did you mean 'karabo#{FAST}[data.nPulses]'?") in absent

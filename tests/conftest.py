"""Shared fixtures: real pipelines on real sockets, with deadlines, no sleeps."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest
import zmq

from metropc.client import decode_protocol


class Collector:
    """A SUB socket on a pipeline output that gathers messages until a predicate holds."""

    def __init__(self, addr, topics=(b"",)):
        self.zctx = zmq.Context()
        self.sub = self.zctx.socket(zmq.SUB)
        self.sub.linger = 0
        self.sub.connect(addr)
        for t in topics:
            self.sub.subscribe(t)
        self.messages = []

    def poll_until(self, predicate, timeout=20.0):
        """Receive until predicate(messages) is true; fail after `timeout` s."""
        deadline = time.monotonic() + timeout
        while not predicate(self.messages):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"condition not met within {timeout} s; got {len(self.messages)} "
                    f"messages: {[m[0] for m in self.messages[-10:]]}")
            if self.sub.poll(int(min(left, 0.2) * 1000) + 1):
                path, data = decode_protocol(self.sub.recv_multipart())
                self.messages.append((path.decode(), data))
        return self.messages

    def wait_connected(self, frontend, timeout=20.0):
        """Block until this subscriber receives (so nothing published is missed).

        PUB/SUB subscriptions take a moment to reach the publisher; ask
        for the index until one arrives.
        """
        deadline = time.monotonic() + timeout
        while not any(p == "index" for p, _ in self.messages):
            if time.monotonic() > deadline:
                raise AssertionError("subscriber never received the index")
            frontend.queue_to("reduce", b"index")
            if self.sub.poll(100):
                path, data = decode_protocol(self.sub.recv_multipart())
                self.messages.append((path.decode(), data))
        return self

    def values(self, view):
        return [d["data"] for p, d in self.messages if p == f"view#{view}"]

    def payloads(self, view):
        return [d for p, d in self.messages if p == f"view#{view}"]

    def indexes(self):
        return [d for p, d in self.messages if p == "index"]

    def close(self):
        self.sub.close(0)
        self.zctx.term()


@pytest.fixture
def collector_factory():
    made = []

    def make(addr, topics=(b"",)):
        c = Collector(addr, topics)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def running(process: psutil.Process) -> bool:
    """Whether `process` runs: not ended, not a zombie.  A process that is
    reaped between two looks (by the pipeline that supervises it) is not
    running either, rather than an error (psutil.NoSuchProcess)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def pid_running(pid: int) -> bool:
    """:func:`running` for a process id."""
    try:
        return running(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return False


def end_session(proc) -> None:
    """Kill `proc` (a Popen started with ``start_new_session=True``) if it
    still runs, and whatever is left in its session (stages, a recorder)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def cmdline(process: psutil.Process) -> str:
    """`process`'s command line, or "" if it is gone meanwhile."""
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def wait_for(predicate, timeout=10.0, interval=0.02):
    """Poll `predicate` until true or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


def recording_frontend():
    """A ThreadedFrontend that keeps every error and panic message it gets."""
    from metropc.frontend import ThreadedFrontend

    class RecordingFrontend(ThreadedFrontend):
        def __init__(self, *args, **kwargs):
            self.errors, self.panics = [], []
            super().__init__(*args, **kwargs)

        def on_pipeline_error(self, msg):
            self.errors.append(msg)

        def on_pipeline_panic(self, msg):
            self.panics.append(msg)

    return RecordingFrontend


@pytest.fixture
def pipeline():
    made = []

    def start(sr_cls=None, num_pool_stages=2, **kwargs):
        from metropc.frontend import ThreadRunner
        sr_cls = sr_cls or ThreadRunner
        kwargs.setdefault("queue_size", 10000)
        kwargs.setdefault("output_hwm", 100000)  # these tests count every result
        fe = recording_frontend()(num_pool_stages=num_pool_stages, sr_cls=sr_cls, **kwargs)
        made.append(fe)
        assert fe.wait_ready(30), "pipeline did not become ready"
        return fe

    yield start
    for fe in made:
        fe.close(timeout=5)
    leftover = [p for p in psutil.Process().children(recursive=True) if running(p)
                # multiprocessing's shared resource tracker lives on by design
                and "resource_tracker" not in cmdline(p)]
    assert not leftover, f"child processes left behind: {leftover}"




#: The unit tier: pure logic, no processes or sockets (``python -m pytest -m unit``
#: runs it in well under a minute); everything else starts real processes.
UNIT_MODULES = frozenset({
    "test_architecture", "test_builtin_average", "test_builtin_contexts",
    "test_builtin_histogram", "test_builtin_misc", "test_config", "test_context",
    "test_contexts_examples", "test_dispatcher", "test_engine", "test_enums",
    "test_errors", "test_event_queue", "test_messages", "test_parameters_checked",
    "test_paths", "test_protocol", "test_protocol_batch", "test_protocol_fuzz",
    "test_protocol_layouts", "test_reduce_parts", "test_reduce_stage", "test_reload",
    "test_inputs", "test_recording_space", "test_roi",
    "test_supervisor", "test_viewgroup",
})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rpartition(".")[2] in UNIT_MODULES:
            item.add_marker(pytest.mark.unit)


def has_ipv6_loopback() -> bool:
    """Whether this host can bind ::1 (IPv6 may be switched off)."""
    import socket
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True

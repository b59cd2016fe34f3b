"""The ASYNC stage with real processes (issue 21): slow views beside the stream.

Uses contexts/async_peak.py: a REDUCE histogram at full rate and an async
"fit" that takes 0.5 s per call on the newest histogram.
"""

from __future__ import annotations

import os
import pathlib
import signal
import threading
import time

import pytest

import metropc
from conftest import wait_for
from metropc.client import Client
from metropc.pipeline import Pipeline

pytestmark = pytest.mark.timeout(120)

CTX = pathlib.Path(__file__).resolve().parents[1] / "contexts" / "async_peak.py"
VIEWS = ["position_histogram", "peak_fit", "fit_entries"]


class Feeder:
    """Events at `rate` per second from a thread, as a live source would."""

    def __init__(self, pipe, rate=50.0):
        self.pipe, self.period, self.sent = pipe, 1.0 / rate, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.is_set():
            self.pipe.send({"internal#train_id": self.sent})
            self.sent += 1
            self.stop.wait(self.period)

    def close(self):
        self.stop.set()
        self.thread.join(5)


def gather(client, seconds):
    """(arrival time, path, payload) of everything for `seconds`."""
    out, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            path, payload = client.recv(timeout=max(0.05, end - time.monotonic()))
        except TimeoutError:
            break
        out.append((time.monotonic(), path, payload))
    return out


def test_slow_async_view_keeps_reduce_at_full_rate_on_fresh_inputs():
    with Pipeline(str(CTX), source=None, drop_policy="oldest") as pipe, \
            Client(pipe.output_addr, views=VIEWS, timeout=30) as client:
        client.wait_index(timeout=30)
        feeder = Feeder(pipe, rate=50)
        try:
            got = gather(client, 6.0)
        finally:
            feeder.close()
        hist = [(t, p["event_id"]) for t, path, p in got if path == "view#position_histogram"]
        fits = [(t, p) for t, path, p in got if path == "view#peak_fit"]
        # REDUCE keeps up with every event: nothing dropped, a histogram per event.
        assert pipe.dropped == 0
        assert len(hist) >= feeder.sent - 5, (len(hist), feeder.sent)
        # About twice a second (0.5 s per call, interval 0.5 s), never queued.
        # (At least 3: the ASYNC stage starts with the pipeline, later on a
        # loaded machine.)
        assert 3 <= len(fits) <= 14, len(fits)
        # Each fit used a histogram at most about one interval old: the newest
        # histogram published before the fit is at most ~1 s (50 events) newer.
        for t, payload in fits[1:]:
            newest = max(e for th, e in hist if th <= t)
            assert newest - payload["event_id"] <= 60, (newest, payload["event_id"])
            assert 49.0 < payload["data"] < 51.0
        entries = [p for _, path, p in got if path == "view#fit_entries"]
        assert entries and all(p["data"] > 0 for p in entries)  # async feeding async
        index = client.wait_index(timeout=10)
        assert index["view#peak_fit"].stage.name == "ASYNC"
        # The fits counted in the ASYNC stage's kernel (a pure counter): one
        # per fit published, perhaps one more that was still on its way.
        assert index["view#peak_fit"].counts <= index["view#fits_done"].counts
        assert index["view#fits_done"].counts <= index["view#peak_fit"].counts + 1


def test_failing_async_view_is_reported_and_the_rest_goes_on(tmp_path):
    ctx = tmp_path / "ctx.py"
    ctx.write_text(CTX.read_text() + '''

@View.Scalar(stage='async', interval=0.2)
def broken(hist: 'view#position_histogram'):
    raise ValueError("no fit today")
''')
    with Pipeline(str(ctx), source=None, parameters={"fit_seconds": 0.05}) as pipe, \
            Client(pipe.output_addr, views=VIEWS, timeout=30) as client:
        client.wait_index(timeout=30)
        feeder = Feeder(pipe, rate=20)
        try:
            wait_for(lambda: any("broken" in e for e in pipe.errors), timeout=30)
            # The other async view goes on.
            wait_for(lambda: any(path == "view#peak_fit" for _, path, _ in
                                 gather(client, 0.5)), timeout=30)
        finally:
            feeder.close()
    error = next(e for e in pipe.errors if "broken" in e)
    assert f"{ctx}:" in error and "no fit today" in error and "[async]" in error, error


def test_reload_replaces_the_async_view_and_a_dead_async_stage_is_replaced(tmp_path):
    ctx = tmp_path / "ctx.py"
    ctx.write_text(CTX.read_text())
    with Pipeline(str(ctx), source=None, parameters={"fit_seconds": 0.01}) as pipe, \
            Client(pipe.output_addr, views=VIEWS, timeout=30) as client:
        client.wait_index(timeout=30)
        feeder = Feeder(pipe, rate=20)
        try:
            wait_for(lambda: any(path == "view#peak_fit" for _, path, _ in
                                 gather(client, 0.5)), timeout=30)
            ctx.write_text(CTX.read_text().replace(
                "return float((counts * np.arange(len(counts))).sum() / counts.sum())",
                "return -1.0"))
            pipe.reload()
            wait_for(lambda: any(path == "view#peak_fit" and p["data"] == -1.0
                                 and p["version"] == 2 for _, path, p in gather(client, 0.5)),
                     timeout=30)
            os.kill(pipe.frontend._runners["async"].pid, signal.SIGKILL)
            wait_for(lambda: pipe.frontend.restarts["async"] == 1, timeout=20)
            wait_for(lambda: any(path == "view#peak_fit" for _, path, _ in
                                 gather(client, 0.5)), timeout=30)
        finally:
            feeder.close()
    assert any("stage async died" in e for e in pipe.errors), pipe.errors


def test_in_process_run_calls_async_views_after_every_event():
    results = list(metropc.run(str(CTX), [{"internal#train_id": i} for i in range(3)],
                               parameters={"fit_seconds": 0.0}))
    assert [r["fit_entries"] for _, r in results] == [1, 2, 3]
    assert [r["peak_fit"] for _, r in results] == [47.0, 47.5, 48.0]

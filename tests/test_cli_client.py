"""``metropc-client`` against real pipelines, read as a user reads it.

The command runs as its own process with its output in a pipe, so every
refresh is a block starting with ``--- HH:MM:SS``; the tests wait (with
deadlines) for blocks that show what a user needs in the first hour: the
latest value of every view, what the client missed, long names that do
not break the table, a pipeline that went away and came back, and
counters whose rate agrees with their count.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq

from metropc.client import IndexEntry, IndexViewEntry, ViewOutput, ViewStage, encode_index
from metropc.pipeline import Pipeline
from metropc.protocol import encode_protocol

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parent.parent
LONG = "KEPLER1/rawData/a_rather_long_view_name_for_the_detector"

CTX = f"""
import numpy as np

@View.Scalar
def scalar(t: 'internal#train_id'):
    return t * 1.5

@View.Vector
def vec(t: 'internal#train_id'):
    return np.arange(3.0) + t

@View.Scalar
def text(t: 'internal#train_id'):
    return "<b>" + "x" * 200 + "</b>"

@View.Scalar(name='{LONG}')
def long(t: 'internal#train_id'):
    return t

@View.Compute
def helper(t: 'internal#train_id'):
    return t
"""


class Watch:
    """``metropc-client`` in a process of its own; its refresh blocks, as they come."""

    def __init__(self, *args):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "metropc.cli.client", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        self.blocks: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        block = []
        for line in self.proc.stdout:
            if line.startswith("--- ") and block:
                with self._changed:
                    self.blocks.append("".join(block))
                    self._changed.notify_all()
                block = []
            block.append(line)
        with self._changed:  # the process ended
            self._changed.notify_all()

    def wait_block(self, predicate, timeout=60.0, after=0) -> str:
        """The first complete block from index `after` on that satisfies `predicate`."""
        deadline = time.monotonic() + timeout
        checked = after
        with self._changed:
            while True:
                for block in self.blocks[checked:]:
                    if predicate(block):
                        return block
                checked = len(self.blocks)
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    last = self.blocks[-1] if self.blocks else "(no block)"
                    raise AssertionError(f"no such block within {timeout} s; last:\n{last}")
                self._changed.wait(left)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=10)


class Feeder:
    """Sends events to a pipeline at about `rate` per second until stopped."""

    def __init__(self, pipe, first, rate=20.0):
        self.pipe, self.next, self.period = pipe, first, 1.0 / rate
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(self.period):
            self.pipe.send({"internal#train_id": self.next})
            self.next += 1

    def stop(self):
        self._stop.set()
        self._thread.join(10)


def latest(block, path):
    """``(event, text)`` of `path` in the LATEST VALUES of `block`, or None."""
    m = re.search(rf"^{re.escape(path)}  event (\d+)  (.*)$", block, re.M)
    return (int(m.group(1)), m.group(2)) if m else None


def test_first_hour_view_of_a_pipeline_that_goes_away_and_comes_back(tmp_path):
    addr = f"ipc://{tmp_path}/output"
    watch = Watch(addr, "--interval", "0.2", "--timeout", "60")
    pipes, feeders = [], []
    try:
        pipes.append(pipe := Pipeline(CTX, source=None, pool=1, output=addr,
                                      ready_timeout=60))
        feeders.append(Feeder(pipe, 1000))

        # Every published view, with its latest value; no options needed.
        block = watch.wait_block(lambda b: all(latest(b, p) for p in (
            "view#scalar", "view#vec", "view#text")) and "…" in b)
        event, value = latest(block, "view#scalar")
        assert event >= 1000 and float(value) == event * 1.5
        event, value = latest(block, "view#vec")
        assert value == f"ndarray float64 (3,)  min {event}  max {event + 2}  mean {event + 1}"
        _, value = latest(block, "view#text")
        assert value.startswith("'<b>xxx") and value.endswith("...") and len(value) == 60
        assert "view#helper" in block            # in the index: COMPUTE ...
        assert not re.search(r"^view#helper ", block.split("LATEST VALUES")[1], re.M)
        assert re.search(r"^results: \d+ received, 0 missed$", block, re.M)
        assert re.search(r"^internal#output_dropped\s+0\s+0\.0/s$", block, re.M)

        # A long name is cut in the middle; the columns stay where they were.
        table = block.split("\n\n")[1].splitlines()
        assert table[0].startswith("VIEW ")
        column = table[0].index("OUTPUT")
        for row in table[1:]:
            assert row[column - 1] == " " and row[column] != " ", row
        long_rows = [r for r in table if "…" in r]
        assert len(long_rows) == 1 and long_rows[0].startswith("view#KEPLER1/")
        assert long_rows[0][:column].rstrip().endswith("detector")
        assert re.search(r"^view#KEPLER1/\S*…\S*detector  event \d+  \d+$", block, re.M)

        # --view narrows; --once prints one snapshot.
        once = subprocess.run([sys.executable, "-m", "metropc.cli.client", addr, "--view",
                               "scalar", "--once", "--timeout", "30"], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
        assert once.returncode == 0, once.stderr
        values = once.stdout.split("LATEST VALUES")[1]
        assert latest(values, "view#scalar") and not latest(values, "view#vec")

        # The pipeline goes away: the display says so ...
        feeders.pop().stop()
        pipes.pop().close()
        seen = len(watch.blocks)
        gone = watch.wait_block(lambda b: "disconnected / no index for" in b, after=seen)
        assert re.search(r"disconnected / no index for \d+ s", gone.splitlines()[1])

        # ... and recovers when it comes back on the same address.
        pipes.append(pipe := Pipeline(CTX, source=None, pool=1, output=addr,
                                      ready_timeout=60))
        feeders.append(Feeder(pipe, 5000))
        seen = len(watch.blocks)
        back = watch.wait_block(lambda b: "(index " in b.splitlines()[1]
                                and (latest(b, "view#scalar") or (0,))[0] >= 5000, after=seen)
        # A new REDUCE starts new sequence numbers: nothing counted as missed.
        assert re.search(r"^results: \d+ received, 0 missed$", back, re.M)
    finally:
        for feeder in feeders:
            feeder.stop()
        for pipe in pipes:
            pipe.close()
        watch.close()


class CountingPublisher:
    """Publishes an index every 0.1 s whose counters grow at known rates.

    ``internal#lost_events`` grows by 50 per second but, as the pipeline
    does for such counters, comes with a rate of 0.0; ``internal#fixed``
    never changes but claims 5.0/s.
    """

    def __init__(self, zctx):
        self.socket = zctx.socket(zmq.PUB)
        port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"tcp://127.0.0.1:{port}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        t0 = time.monotonic()
        try:
            while not self._stop.wait(0.1):
                lost = int(50 * (time.monotonic() - t0))
                self.socket.send_multipart(encode_protocol(b"index", encode_index({
                    "internal#lost_events": IndexEntry(lost, 0.0),
                    "internal#fixed": IndexEntry(7, 5.0),
                    "view#roi": IndexViewEntry(lost, 0.0, ViewOutput.SCALAR,
                                               ViewStage.POOL)})))
        finally:
            self.socket.close(linger=0)

    def stop(self):
        self._stop.set()
        self._thread.join(5)


def test_counters_show_a_rate_that_agrees_with_their_count():
    zctx = zmq.Context()
    publisher = CountingPublisher(zctx)
    watch = Watch(publisher.address, "--view", "roi", "--interval", "0.2", "--timeout", "30")
    try:
        def settled(block):
            # After a few seconds the rate window is full.
            m = re.search(r"^internal#lost_events\s+(\d+)\s+", block, re.M)
            return m is not None and int(m.group(1)) >= 250

        block = watch.wait_block(settled)
        lost = re.search(r"^internal#lost_events\s+\d+\s+([\d.]+)/s$", block, re.M)
        assert 40 <= float(lost.group(1)) <= 60, block
        assert re.search(r"^internal#fixed\s+7\s+0\.0/s$", block, re.M), block
        roi = re.search(r"^view#roi\s+SCALAR\s+POOL\s+\d+\s+([\d.]+)/s", block, re.M)
        assert 40 <= float(roi.group(1)) <= 60, block
    finally:
        watch.close()
        publisher.stop()
        zctx.term()


def test_control_options_reset_pause_and_set_parameters(tmp_path):
    """metropc-client ADDR --reset / --pause / --resume / --set act through the
    pipeline's control endpoint, found from its status."""
    ctx = REPO / "contexts" / "run_lifecycle.py"
    with Pipeline(str(ctx), source=None, pool=1, ready_timeout=60) as pipe:
        def cli(*options):
            return subprocess.run([sys.executable, "-m", "metropc.cli.client",
                                   pipe.output_addr, *options, "--timeout", "30"],
                                  cwd=REPO, capture_output=True, text=True, timeout=60)
        done = cli("--reset", "mean_tid")
        assert done.returncode == 0 and done.stdout.strip().endswith("reset mean_tid"), done
        done = cli("--reset", "nope")
        assert done.returncode == 1 and "refused" in done.stderr and "nope" in done.stderr
        done = cli("--pause")
        assert done.returncode == 0 and "paused" in done.stdout
        once = cli("--once")
        assert "state: STOP" in once.stdout, once.stdout
        assert cli("--resume").returncode == 0
        done = cli("--set", "nope=1")
        assert done.returncode == 1 and "unknown parameter" in done.stderr


ROI_CTX = """
parameters(roi=RectROI(x=1, y=1, width=2, height=2), bins=[0, 1])

@View.Vector
def roi_and_bins(t: 'internal#train_id'):
    return [roi.x, roi.y, roi.width, roi.height, *bins]
"""


def test_set_takes_an_roi_and_a_list_as_text(tmp_path):
    """--set roi=5,6,7,8 and --set bins=[...] reach the views as an ROI and a
    list, as metropc-run --param reads them; a bad ROI is refused in one line."""
    from metropc.client import Client

    ctx = tmp_path / "ctx.py"
    ctx.write_text(ROI_CTX)
    with Pipeline(str(ctx), source=None, pool=1, ready_timeout=60) as pipe:
        def cli(*options):
            return subprocess.run([sys.executable, "-m", "metropc.cli.client",
                                   pipe.output_addr, *options, "--timeout", "30"],
                                  cwd=tmp_path, capture_output=True, text=True, timeout=60)
        done = cli("--set", "roi=5,6,7,8", "--set", "bins=[2, 4, 8]")
        assert done.returncode == 0, done
        done = cli("--set", "roi=5,6")
        assert done.returncode == 1 and "needs 4 numbers" in done.stderr, done
        assert "Traceback" not in done.stderr
        with Client(pipe.output_addr, views=["roi_and_bins"], timeout=30) as client:
            pipe.request_index()
            client.wait_index()
            pipe.send({"internal#train_id": 1})
            _, payload = client.recv()
            assert list(payload["data"]) == [5, 6, 7, 8, 2, 4, 8]
            # a script's Controller sends an ROI object and a list (no pickles)
            from metropc.client import Controller
            from metropc.roi import RectROI
            with Controller(pipe.control_addr, timeout=30) as operator:
                operator.set_parameters(roi=RectROI(1, 2, 3, 4), bins=[9])
            pipe.send({"internal#train_id": 2})
            _, payload = client.recv()
    assert list(payload["data"]) == [1, 2, 3, 4, 9]

"""Observability (issue 18): per-view timing, the ``vstats`` message, the
index entries it feeds, and ``/metrics`` + ``/status`` served over HTTP.

The end-to-end tests run a real multi-process pipeline (``Pipeline`` with
``ProcessRunner`` workers), feed it events themselves, and scrape the real
HTTP server on a free port; every wait polls with a deadline.
"""

from __future__ import annotations

import bisect
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from metropc.client import (Client, IndexEntry, IndexStageEntry, IndexTimingEntry,
                            IndexViewEntry, decode_index, encode_index, slowest_views)
from metropc.enums import ViewOutput, ViewStage
from metropc.engine import Engine
from metropc.core import Context
from metropc.messages import OP_VSTATS, validate
from metropc.error import ProtocolError
from metropc import timing

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

pytestmark = pytest.mark.timeout(120)


# -- pure parts ----------------------------------------------------------------------------

def test_histogram_record_quantile_and_merge():
    record = timing.new_record()
    for _ in range(98):
        timing.add_time(record, 3e-6)     # (2 µs, 5 µs]
    timing.add_time(record, 0.015)        # (10 ms, 20 ms]
    timing.add_time(record, 0.015)
    assert timing.calls(record) == 100
    buckets = record[timing.FIRST:]
    assert 2e-6 < timing.quantile(buckets, 0.5) <= 5e-6
    assert 0.01 < timing.quantile(buckets, 0.995) <= 0.02
    other = timing.new_record()
    timing.add_time(other, 20.0)          # slower than every bound: the last bucket
    other[timing.ERRORS] = 1
    timing.merge(record, other)
    assert timing.calls(record) == 101 and record[timing.ERRORS] == 1
    assert record[-1] == 1 and timing.quantile(record[timing.FIRST:], 1.0) == 10.0
    assert timing.quantile([0] * timing.NBUCKETS, 0.5) == 0.0


def test_engine_times_every_call_where_the_view_runs():
    ctx = Context("""
import time
@View.Scalar
def fast(t: 'internal#train_id'):
    return t

@View.Scalar
def slow(t: 'internal#train_id'):
    time.sleep(0.02)
    return t

@View.Scalar
def broken(t: 'internal#train_id'):
    raise ValueError(t)
""", path="<t>")
    engine = Engine(ctx)
    for t in range(5):
        event = {"internal#train_id": t}
        engine.prepare(event)
        engine.pool(event)
    taken = engine.take_timings()
    assert engine.timings == {}
    assert {n: timing.calls(r) for n, r in taken.items()} == {"fast": 5, "slow": 5,
                                                               "broken": 5}
    assert taken["broken"][timing.ERRORS] == 5 and taken["fast"][timing.ERRORS] == 0
    assert 0.1 <= taken["slow"][timing.SECONDS] < 1.0
    assert taken["fast"][timing.SECONDS] < taken["slow"][timing.SECONDS] / 10


def test_timing_table_adds_up_and_reports_recent_quantiles():
    now = [100.0]
    table = timing.TimingTable(clock=lambda: now[0])
    slow = timing.new_record()
    timing.add_time(slow, 0.03)
    table.add("v", slow)
    first = table.entries()["v"]
    assert first[0] == 1 and 0.02 < first[4] <= 0.05
    now[0] += 11
    fast = timing.new_record()
    for _ in range(10):
        timing.add_time(fast, 1e-5)
    table.add("v", fast)           # a second worker's delta: counts add up
    second = table.entries()["v"]
    assert second[0] == 11 and second[1] == pytest.approx(10 / 11)
    now[0] += 11
    third = table.entries()["v"]   # nothing new for 10 s: all time again
    assert third[0] == 11 and third[4] > 0.02


def test_reduce_adds_up_workers_a_replacement_and_its_own_engine():
    now = [0.0]
    obs = timing.ReduceObserver(clock=lambda: now[0])

    def vstats(stage, pid, calls, busy=0.5, **extra):
        record = timing.new_record()
        for _ in range(calls):
            timing.add_time(record, 1e-4)
        return {"stage": stage, "pid": pid, "events": calls, "busy": busy, "interval": 1.0,
                "view#v": tuple(record), **extra}

    obs.on_vstats(vstats("pool-0", 10, 3))
    obs.on_vstats(vstats("pool-1", 11, 4))
    obs.on_vstats(vstats("pool-0", 12, 5, busy=0.25))  # pool-0 replaced: a new pid
    obs.on_vstats(vstats("pool-1", 11, 0, **{"view#w": (0, 0.1, 1)}))  # another layout
    own = timing.new_record()
    timing.add_time(own, 2e-3)
    obs.events, obs.busy = 1, 0.1
    add = timing.new_record()
    timing.add_time(add, 0.01)
    obs.latency = add
    now[0] = 1.0
    entries = obs.entries({"r": own}, reorder_waiting=2, pid=99)
    assert entries["timing#v"][0] == 12 and "timing#w" not in entries
    assert entries["timing#r"][0] == 1 and 1e-3 < entries["timing#r"][4] <= 2e-3
    assert entries["stage#pool-0"][0] == 8 and entries["stage#pool-0"][2:] == (0.25, 12)
    assert entries["stage#reduce"][2:] == (pytest.approx(0.1), 99)
    assert entries["internal#output_latency"][0] == 1
    assert entries["internal#reorder_waiting"] == (2, 0.0)
    now[0] = 5.0  # silent workers are idle, not busy
    assert obs.entries({}, 0, 99)["stage#pool-1"][2] == 0.0


def test_vstats_schema():
    good = {"stage": "pool-0", "pid": 7, "events": 3, "busy": 0.25, "interval": 1.0,
            "view#a": tuple(timing.new_record())}
    assert validate(OP_VSTATS, good) is good
    for bad in ({**good, "events": -1}, {**good, "view#a": (0, "x", 1)},
                {**good, "view#a": (0, 0.1, -1)}, {k: v for k, v in good.items()
                                                   if k != "stage"}):
        with pytest.raises(ProtocolError, match="vstats"):
            validate(OP_VSTATS, bad)


def test_new_index_entries_round_trip_and_old_decoders_read_counts_and_rate():
    buckets = tuple(range(timing.NBUCKETS))
    entries = {"timing#roi": IndexTimingEntry(12, 3.5, errors=1, p50=1e-4, p99=2e-3,
                                              seconds=0.5, buckets=buckets),
               "stage#pool-0": IndexStageEntry(40, 10.0, busy=0.25, pid=1234),
               "internal#output_latency": IndexTimingEntry(40, 10.0, p50=1e-3,
                                                           buckets=buckets)}
    wire = encode_index(entries)
    assert decode_index(wire) == entries
    # An old decoder takes the first two elements of any non-view path.
    for path, value in wire.items():
        assert type(value[0]) is int and type(value[1]) is float
    assert type(wire["timing#roi"][6]) is bytes  # the buckets: one frame, not 23
    # Short tuples (an older pipeline) decode as plain entries.
    assert decode_index({"timing#roi": (3, 1.0)}) == {"timing#roi": IndexEntry(3, 1.0)}
    # A layout this side does not know (another version) still decodes: the
    # first two elements, as for any path; the rest of the index is intact.
    for odd in ((3, 1.0, 0, 0.0, 0.0, 0.0, b"\0" * 7), (3, 1.0, 0, 0.0, 0.0, 0.0, 1, 2)):
        assert decode_index({"timing#roi": odd}) == {"timing#roi": IndexEntry(3, 1.0)}
    assert decode_index({"stage#x": (3, 1.0, "busy", 1)}) == {"stage#x": IndexEntry(3, 1.0)}
    with pytest.raises(ProtocolError):  # but counts and rate must be there, as always
        decode_index({"timing#roi": ("3", 1.0)})
    assert [n for n, _ in slowest_views(decode_index(wire))] == ["roi"]


# -- a real pipeline, scraped over HTTP ------------------------------------------------------

CTX = """
import time
@View.Scalar
def fast(t: 'internal#train_id'):
    return t * GAIN

@View.Scalar
def slow(t: 'internal#train_id'):
    time.sleep(0.02)
    return t

@View.Scalar(stage='reduce')
def total(t: 'view#fast'):
    return t

parameters(GAIN=1)
"""


def fetch(url, timeout=10.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.headers.get("Content-Type"), r.read().decode()


def scrape(base):
    """{(metric sample name, frozenset(labels)): value} of one /metrics answer."""
    status, kind, text = fetch(base + "/metrics")
    assert status == 200 and kind.startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def view_value(samples, name, view, **labels):
    for (sample, sample_labels), value in samples.items():
        d = dict(sample_labels)
        if sample == name and d.get("view") == view and all(
                d.get(k) == v for k, v in labels.items()):
            return value
    return None


def poll(what, check, timeout=60.0, interval=0.2):
    """Call `what` until `check(result)` holds; the last result, or fail."""
    deadline = time.monotonic() + timeout
    while True:
        result = what()
        if check(result):
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s; last: {result!r}"[:2000])
        time.sleep(interval)


def mean_seconds(samples, view):
    return (view_value(samples, "metropc_view_seconds_sum", view)
            / view_value(samples, "metropc_view_seconds_count", view))


@pytest.fixture
def running(tmp_path):
    from metropc.metrics import MetricsServer
    from metropc.pipeline import Pipeline

    path = tmp_path / "ctx.py"
    path.write_text(CTX)
    pipe = Pipeline(str(path), source=None, pool=2)
    server = None
    try:
        server = MetricsServer(pipe.output_addr, port=0, pipeline=pipe).start()
        yield pipe, f"http://127.0.0.1:{server.port}", path
    finally:
        if server is not None:
            server.stop()
        pipe.close()


def test_metrics_count_every_call_and_show_the_slow_view(running):
    pipe, base, _ = running
    n = 30
    for t in range(n):
        assert pipe.send({"internal#train_id": 1000 + t})

    def counted(samples):
        return all(view_value(samples, "metropc_view_calls_total", v) == n
                   for v in ("fast", "slow", "total"))

    samples = poll(lambda: scrape(base), counted)
    assert view_value(samples, "metropc_view_calls_total", "fast", stage="pool") == n
    assert view_value(samples, "metropc_view_calls_total", "total", stage="reduce") == n
    assert view_value(samples, "metropc_view_errors_total", "slow") == 0
    # Histogram: cumulative buckets, +Inf = count, and the slow view is slowest.
    assert view_value(samples, "metropc_view_seconds_bucket", "slow", le="+Inf") == n
    assert view_value(samples, "metropc_view_seconds_bucket", "slow", le="0.01") == 0
    assert view_value(samples, "metropc_view_seconds_bucket", "slow", le="0.05") == n
    means = {v: mean_seconds(samples, v) for v in ("fast", "slow", "total")}
    assert max(means, key=means.get) == "slow" and means["slow"] >= 0.02
    samples = poll(lambda: scrape(base),
                   lambda s: s.get(("metropc_events_total", frozenset())) == n)
    assert samples[("metropc_event_latency_seconds_count", frozenset())] == n
    assert samples[("metropc_lost_events_total", frozenset())] == 0
    assert samples[("metropc_dropped_events_total", frozenset())] == 0
    workers = [dict(k[1])["stage"] for k in samples if k[0] == "metropc_stage_events_total"]
    assert sorted(workers) == ["pool-0", "pool-1", "reduce"]
    assert sum(v for k, v in samples.items() if k[0] == "metropc_stage_events_total"
               and dict(k[1])["stage"].startswith("pool")) == n
    assert samples[("metropc_stage_up", frozenset({("stage", "pool-0")}))] == 1.0
    assert ("metropc_queue_depth", frozenset({("queue", "frontend")})) in samples
    # The index every client gets carries the same: p50/p99 per view.
    with Client(pipe.output_addr, timeout=10) as c:
        index = poll(lambda: c.wait_index(),
                     lambda i: i["timing#slow"].counts == n, timeout=30)
    assert isinstance(index["timing#slow"], IndexTimingEntry)
    assert 0.01 < index["timing#slow"].p50 <= 0.05
    assert slowest_views(index, 1)[0][0] == "slow"
    assert isinstance(index["stage#pool-0"], IndexStageEntry)


def test_status_follows_a_reload_and_a_worker_replacement(running):
    pipe, base, path = running

    def status():
        code, kind, text = fetch(base + "/status")
        assert code == 200 and kind == "application/json"
        return json.loads(text)

    first = poll(status, lambda s: s["version"] == 1 and s["stages"].get("pool-0", {})
                 .get("pid"))
    assert first["context"] == str(path) and first["state"] in ("READY", "RUN")
    assert set(first["stages"]) >= {"reduce", "pool-0", "pool-1"}
    assert all(s["alive"] and s["restarts"] == 0 for s in first["stages"].values())
    path.write_text(CTX.replace("GAIN=1", "GAIN=2"))
    pipe.reload()
    poll(status, lambda s: s["version"] == 2 and s["loaded_version"] == 2)
    old_pid = first["stages"]["pool-0"]["pid"]
    os.kill(old_pid, signal.SIGKILL)
    after = poll(status, lambda s: s["stages"]["pool-0"]["pid"] not in (None, old_pid)
                 and s["stages"]["pool-0"]["restarts"] == 1
                 and s["stages"]["pool-0"]["alive"])
    assert after["stages"]["pool-1"]["restarts"] == 0
    # The replacement's timing adds to the counts: they never go back.
    for t in range(20):
        assert pipe.send({"internal#train_id": t})
    samples = poll(lambda: scrape(base),
                   lambda s: view_value(s, "metropc_view_calls_total", "fast") == 20)
    assert samples[("metropc_stage_restarts_total", frozenset({("stage", "pool-0")}))] == 1
    assert samples[("metropc_context_version", frozenset())] == 2
    assert poll(status, lambda s: s["counters"]["events"] == 20)["counters"]["lost_events"] == 0


def test_the_dashboard_serves_the_same_metrics_and_status(running):
    pytest.importorskip("tornado")
    from metropc.dashboard import serve

    pipe, _, path = running
    dash = serve(pipe.output_addr, "127.0.0.1", 0, control=pipe)
    try:
        base = f"http://127.0.0.1:{dash.port}"
        for t in range(5):
            assert pipe.send({"internal#train_id": t})
        samples = poll(lambda: scrape(base),
                       lambda s: view_value(s, "metropc_view_calls_total", "slow") == 5)
        assert view_value(samples, "metropc_view_calls_total", "fast") == 5
        status = poll(lambda: json.loads(fetch(base + "/status")[2]),
                      lambda s: s["version"] == 1)
        # The dashboard's own keys stay as they were; the pipeline's are added.
        assert status["control"] is True and status["output_addr"] == pipe.output_addr
        assert "hub" in status and status["context"] == str(path)
        assert status["stages"]["pool-0"]["alive"] is True
    finally:
        dash.stop()


# -- what people read: metropc-client, metropc-run's status --------------------------------

def _index_with_timing():
    record = {"slow": 0.021, "fast": 4e-6, "mid": 0.002}
    entries = {}
    for name, seconds in record.items():
        buckets = [0] * timing.NBUCKETS
        buckets[bisect.bisect_left(timing.BOUNDS, seconds)] = 10
        entries[f"timing#{name}"] = IndexTimingEntry(
            10, 1.0, p50=timing.quantile(buckets, 0.5), p99=timing.quantile(buckets, 0.99),
            seconds=10 * seconds, buckets=buckets)
    entries["stage#pool-0"] = IndexStageEntry(10, 1.0, busy=0.25, pid=99)
    entries["internal#train"] = IndexEntry(10, 1.0)
    return decode_index(encode_index(entries))


def test_metropc_client_and_status_name_the_slowest_views():
    from metropc.cli.client import render
    from metropc.cli.status import StatusDisplay

    index = _index_with_timing()
    text = render("tcp://x:1", index, {})
    line = next(l for l in text.splitlines() if l.startswith("slowest views"))
    assert line.index("slow ") < line.index("mid ") < line.index("fast ")
    assert "ms" in line and "stages busy: pool-0 25%" in text
    assert "timing#slow" not in text  # not listed again as a path
    assert "internal#train" in text
    display = StatusDisplay("tcp://127.0.0.1:1", "train")
    try:
        display.client.index = index
        # 10 calls in the (20 ms, 50 ms] bucket: p99 interpolated inside it.
        assert display.summary().endswith("; slowest view slow (p99 49.7 ms)")
        display.client.index = {"internal#train": IndexEntry(3, 1.0)}
        assert "slowest" not in display.summary()
    finally:
        display.close()


def test_the_status_region_lists_as_many_views_as_half_the_terminal_holds():
    """Many views would fill the screen and leave the log no room: the live
    region keeps to half the terminal, failing views first, and says how
    many more there are."""
    from rich.console import Console

    from metropc.cli.status import StatusDisplay

    index = {f"view#v{i:02d}": IndexViewEntry(i, 1.0, ViewOutput.SCALAR, ViewStage.POOL,
                                              errors=int(i == 37)) for i in range(60)}
    index["internal#train"] = IndexEntry(60, 1.0)
    display = StatusDisplay("tcp://127.0.0.1:1", "train")
    try:
        display.client.index = index
        console = Console(width=100, height=30, record=True, file=open(os.devnull, "w"))
        console.print(display.render())
        assert len(console.export_text(clear=True).splitlines()) == 3 + 60  # every view
        display.height = lambda: 30
        console.print(display.render())
        lines = console.export_text().splitlines()
        assert len(lines) == 15, lines  # half of 30 rows
        rows = [line.split()[0] for line in lines[3:-1]]
        assert rows == sorted(rows) and "v37" in rows and len(rows) == 11
        assert lines[-1] == ("... and 49 more views (metropc-client tcp://127.0.0.1:1 lists "
                             "every one)")
    finally:
        display.close()


def test_status_counts_events_out_across_a_reduce_restart():
    """/status ``counters.events`` is the index's internal#<alias>, which goes
    on across a REDUCE restart like lost_events, not the new REDUCE's own
    count (which starts from 0): events + dropped + lost still add up."""
    import types

    from metropc.metrics import PipelineMetrics

    ctx = Context("@View.Scalar\ndef a(t: 'internal#train_id'):\n    return t\n",
                  event_alias="train")
    index = {"internal#train": IndexEntry(336, 20.0), "internal#lost_events": IndexEntry(1, 0.0),
             "stage#reduce": IndexStageEntry(135, 6.0, busy=0.1, pid=4242)}
    for pipeline, events in ((types.SimpleNamespace(ctx=ctx), 336), (None, 135)):
        metrics = PipelineMetrics("ipc:///nowhere", pipeline=pipeline)
        metrics._index, metrics._index_time = index, time.monotonic()
        counters = metrics.status()["counters"]
        assert (counters["events"], counters["lost_events"]) == (events, 1)


# -- metropc-run --metrics -----------------------------------------------------------------

RUN_CTX = """
@View.Scalar
def train(t: 'internal#train_id'):
    return t
"""


def _run_cli(args, **kwargs):
    return subprocess.run([sys.executable, "-m", "metropc.cli.run", *args],
                          capture_output=True, text=True, timeout=60, **kwargs)


def test_metrics_option_refuses_a_port_in_use_and_a_missing_package(tmp_path):
    import socket

    ctx = tmp_path / "ctx.py"
    ctx.write_text(RUN_CTX)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = _run_cli([str(ctx), "--metrics", str(port)])
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and f"--metrics 127.0.0.1:{port}" in proc.stderr
    assert "already in use" in proc.stderr
    proc = _run_cli([str(ctx), "--metrics", "10.1.2.3:0"])
    assert proc.returncode == 2 and "--allow-remote" in proc.stderr
    # Without prometheus_client: one line naming the extra.
    code = ("import sys; sys.modules['prometheus_client'] = None; "
            "from metropc.cli.run import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, str(ctx), "--metrics", "0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == ("metropc-run: error: --metrics needs prometheus_client: pip "
                           "install 'metropc[metrics]'\n")


def test_metropc_run_serves_metrics_and_status(tmp_path):
    ctx = tmp_path / "ctx.py"
    ctx.write_text(RUN_CTX)
    proc = subprocess.Popen([sys.executable, "-m", "metropc.cli.run", str(ctx), "--pool", "1",
                             "--rate", "50", "--metrics", "0", "--status", "lines",
                             "--duration", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base = None
        deadline = time.monotonic() + 60
        while base is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if "metrics on " in line:
                base = line.split("metrics on ")[1].split()[0].rsplit("/", 1)[0]
        assert base is not None, proc.stderr.read() if proc.poll() is not None else ""
        samples = poll(lambda: scrape(base),
                       lambda s: (view_value(s, "metropc_view_calls_total", "train") or 0) > 20)
        assert view_value(samples, "metropc_view_errors_total", "train") == 0
        status = poll(lambda: json.loads(fetch(base + "/status")[2]),
                      lambda s: s["state"] == "RUN" and s["counters"]["events"] > 0)
        assert status["version"] == 1 and status["context"] == str(ctx)
        assert status["stages"]["pool-0"]["alive"] and status["stages"]["pool-0"]["pid"]
        assert status["slowest_views"][0]["view"] == "train"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == 0


def test_the_dashboard_page_shows_the_slowest_views(running, tmp_path):
    """In headless Chromium: the sidebar's "Slowest views" (static/js/slowest.js)."""
    pytest.importorskip("tornado")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    import shutil

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.skip("Chromium and chromedriver are not installed")
    from selenium.webdriver.chrome.service import Service

    from metropc.dashboard import serve

    pipe, _, _ = running
    dash = serve(pipe.output_addr, "127.0.0.1", 0, control=pipe)
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", f"--user-data-dir={tmp_path / 'chrome'}"):
        opts.add_argument(flag)
    drv = webdriver.Chrome(service=Service(driver), options=opts)
    try:
        for t in range(5):
            assert pipe.send({"internal#train_id": t})
        drv.get(dash.url)
        rows = poll(lambda: drv.execute_script(
            "return [...document.querySelectorAll('#slowest tr')].map(r => r.dataset.view)"),
            lambda r: r and set(r) == {"fast", "slow", "total"}, timeout=60)
        assert rows[0] == "slow"
        text = drv.find_element("css selector", "#slowest tr").text
        assert text.startswith("slow ") and "ms" in text
    finally:
        drv.quit()
        dash.stop()


def test_scrapers_that_go_away_mid_answer_leave_no_traceback(running, capsys):
    """A client that resets its connection right after asking (a killed
    scraper) is no error: no traceback on stderr, and the server goes on."""
    import socket
    import struct

    pipe, base, _ = running
    port = int(base.rsplit(":", 1)[1])
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # Still serving; the events counter comes with the first index (about a
    # second after the start, which these 20 connections may take less than).
    poll(lambda: scrape(base), lambda samples: ("metropc_events_total", frozenset()) in samples)
    assert "Traceback" not in capsys.readouterr().err

"""The whole pipeline on real data sources: a Karabo bridge simulator and an
EXtra-data run directory, as ``metropc-run --source ...`` uses them."""

from __future__ import annotations

import time

import numpy as np
import pytest

from metropc.client import Client
from metropc.pipeline import Pipeline

pytestmark = pytest.mark.timeout(90)

AGIPD = "SPB_DET_AGIPD1M-1/DET/0CH0:xtdf"

BRIDGE_CTX = f"""
@View.Scalar
def train(t: 'internal#train_id'):
    return t

@View.Vector
def module_shape(image: '{AGIPD}[image.data]'):
    return np.array(image.shape)
"""


def test_pipeline_on_a_karabo_bridge_simulator():
    karabo_bridge = pytest.importorskip("karabo_bridge.server",
                                        reason="pip install metropc[karabo]")
    server = karabo_bridge.SimServerInThread("tcp://127.0.0.1:0", detector="AGIPDModule",
                                             raw=True, nsources=1)
    server.start()
    try:
        with Pipeline(BRIDGE_CTX, source=server.endpoint, pool=2) as pipe, \
                Client(pipe.output_addr, views=["train", "module_shape"],
                       timeout=30) as client:
            trains, shapes = [], []
            while len(trains) < 5 or not shapes:
                path, payload = client.recv()
                (trains if path == "view#train" else shapes).append(payload["data"])
            # Only the paths the context uses were read from the bridge.
            assert {str(p) for p in pipe.ctx.get_paths()} == {
                "internal#train_id", f"karabo#{AGIPD}[image.data]"}
    finally:
        server.stop()
    assert trains == sorted(trains) and len(set(trains)) == len(trains)
    assert tuple(shapes[0]) == (128, 512, 64)  # one AGIPD module as the simulator sends it


FILES_CTX = """
@View.Scalar
def train(t: 'internal#train_id'):
    return t

@View.Scalar
def first_pulse(x: 'karabo#SA1_XTD2_XGM/DOOCS/MAIN:output[data.intensityTD]'):
    return float(x[0])

@View.Scalar_GlobalAverage(output_every=1)
def average_position(x: 'karabo#SA1_XTD2_XGM/DOOCS/MAIN.beamPosition.ixPos'):
    return x
"""


def replayed(client):
    """The values of the replay's views, by path, until train 10011's came.

    Trains before the pause may have gone before the client subscribed:
    the caller checks everything from the first train seen."""
    values = {"view#train": [], "view#first_pulse": [], "view#average_position": []}
    while (len(values["view#train"]) < 6 or values["view#train"][-1] != 10011
           or not values["view#first_pulse"] or values["view#first_pulse"][-1] != 11.0):
        path, payload = client.recv()
        values[path].append(payload["data"])
    return values


def test_pipeline_replays_a_run_directory(tmp_path):
    pytest.importorskip("extra_data", reason="pip install metropc[files]")
    import h5py
    from extra_data.tests.mockdata import write_file
    from extra_data.tests.mockdata.xgm import XGM

    xgm = "SA1_XTD2_XGM/DOOCS/MAIN"
    run = tmp_path / "r0001"
    run.mkdir()
    path = run / "RAW-R0001-DA01-S00000.h5"
    write_file(str(path), [XGM(xgm)], ntrains=12, firsttrain=10000, chunksize=12)
    with h5py.File(path, "r+") as f:
        tids = np.arange(10000, 10012)
        f[f"INSTRUMENT/{xgm}:output/data/intensityTD"][:, 0] = tids - 10000
        f[f"CONTROL/{xgm}/beamPosition/ixPos/value"][:] = tids % 2

    with Pipeline(FILES_CTX, source=str(run), rate=20, pool=2, queue_size=100) as pipe:
        # The replay starts with the pipeline: hold it (a replay waits while
        # paused) until the client is subscribed, or, on a loaded machine,
        # all twelve trains could pass before it (a CI run saw that).
        pipe.pause()
        with Client(pipe.output_addr, views=["train", "first_pulse", "average_position"],
                    timeout=30) as client:
            pipe.request_index()
            client.wait_index()
            pipe.resume()
            values = replayed(client)
    trains = values["view#train"]
    first = trains[0]
    assert trains == list(range(first, 10012))
    assert values["view#first_pulse"][-len(trains):] == [float(t - 10000) for t in trains]


SIM_FLUX_CTX = """
@View.Scalar
def flux(x: 'karabo#SIM_XGM/XGM/XGM1.pulseEnergy.photonFlux'):
    return x
"""

# Builds in this process, but not in the stage processes (as a library that
# only the frontend's host has), and reads another path than the old one.
STAGES_REFUSE_CTX = """
import multiprocessing
if multiprocessing.parent_process() is not None:
    raise ImportError("no module named 'only_on_the_frontend_host'")

@View.Scalar
def shutter(s: 'karabo#SIM_SHUTTER/SHUTTER/S1.isOpen'):
    return s
"""


def test_an_edit_the_stages_refuse_leaves_the_running_context_its_data(tmp_path):
    """The reload is two-phase: until the stages took an edit, the source
    reads what the running context needs too; when they refuse it, the
    pipeline goes back to the running context, which goes on with its data."""
    ctx_file = tmp_path / "ctx.py"
    ctx_file.write_text(SIM_FLUX_CTX)
    with Pipeline(str(ctx_file), source="sim", rate=50, pool=1) as pipe, \
            Client(pipe.output_addr, views=["flux"], timeout=30) as client:
        client.recv()
        ctx_file.write_text(STAGES_REFUSE_CTX)
        assert pipe.reload().version == 2  # it builds here
        deadline = time.monotonic() + 30
        while not any("version 2 refused" in e for e in pipe.errors):
            assert time.monotonic() < deadline, pipe.errors
            client.recv()
        assert pipe.ctx.version == 1 and "flux" in pipe.ctx.views
        got = [client.recv()[1]["version"] for _ in range(20)]  # still coming
        assert got == [1] * 20
        ctx_file.write_text(SIM_FLUX_CTX + "\n# edited again\n")
        assert pipe.reload().version == 3
        while client.recv()[1]["version"] != 3:
            pass
        assert pipe.ctx.version == 3


def test_the_index_of_a_reloaded_context_comes_with_its_status(tmp_path):
    """A client that has the index of a reloaded context has the status of
    that context already: it is sent just before the index, not after."""
    ctx_file = tmp_path / "ctx.py"
    ctx_file.write_text(SIM_FLUX_CTX)
    with Pipeline(str(ctx_file), source="sim", rate=50, pool=1) as pipe, \
            Client(pipe.output_addr, views=["flux"], timeout=30) as client:
        client.recv()
        assert client.status["version"] == 1
        ctx_file.write_text(SIM_FLUX_CTX + "\n@View.Scalar\ndef tid(t: 'internal#train_id'):"
                            "\n    return t\n")
        assert pipe.reload().version == 2
        deadline = time.monotonic() + 30
        while "view#tid" not in client.wait_index(timeout=30):
            assert time.monotonic() < deadline, "no index of version 2"
        assert client.status["version"] == 2


def test_a_context_whose_top_level_never_ends_is_refused_in_time(tmp_path, monkeypatch):
    """Top-level code that never ends cannot hang a reload: it is refused
    after RELOAD_TIMEOUT (shortened here), its thread is stopped, and the
    running context goes on."""
    import threading

    import metropc.pipeline
    from metropc.error import ContextError
    monkeypatch.setattr(metropc.pipeline, "RELOAD_TIMEOUT", 1.0)
    ctx_file = tmp_path / "ctx.py"
    ctx_file.write_text(SIM_FLUX_CTX)
    with Pipeline(str(ctx_file), source="sim", rate=50, pool=1) as pipe, \
            Client(pipe.output_addr, views=["flux"], timeout=30) as client:
        client.recv()
        ctx_file.write_text("while True:\n    pass\n" + SIM_FLUX_CTX)
        with pytest.raises(ContextError, match=r"did not finish within 1 s"):
            pipe.reload()
        deadline = time.monotonic() + 10
        while any(t.name == "metropc-context-load" for t in threading.enumerate()):
            assert time.monotonic() < deadline, "the loading thread still runs"
            time.sleep(0.05)
        assert pipe.ctx.version == 1
        assert [client.recv()[1]["version"] for _ in range(10)] == [1] * 10


STEPS_SOURCE = """
import metropc

def steps(paths=None):
    for step in range(3):
        for i in range(4):
            yield {'internal#train_id': 100 * step + i}
        yield metropc.STEP
    yield metropc.Action('nosuch')
    yield metropc.Action('total')
"""

STEPS_CTX = """
import time

@View.Scalar_StepAverage
def step_mean(t: 'internal#train_id'):
    return float(t)

@View.Scalar_Action
def total(t: 'internal#train_id'):
    return t  # the latest train REDUCE has seen

@View.Scalar
def slow(t: 'internal#train_id'):
    if t == 203:  # the last event comes to REDUCE well after the Action was fed
        time.sleep(0.5)
    return t
"""


def test_a_callable_source_ends_steps_and_runs_actions(tmp_path):
    """``metropc.STEP`` and ``metropc.Action(...)`` from a callable source
    pass through to the pipeline (docs/sources.md), in order with the
    events: the Action sees every event before it; an Action naming no
    ACTION view is reported and the feeding goes on."""
    module = tmp_path / "stepsource.py"
    module.write_text(STEPS_SOURCE)
    with Pipeline(STEPS_CTX, source=f"{module}:steps", pool=2, start=False) as pipe:
        with Client(pipe.output_addr, views=["step_mean", "total"], timeout=30) as client:
            pipe.request_index()
            client.wait_index()
            pipe.start()
            got = {"view#step_mean": [], "view#total": []}
            # (results of different views may come in another order: batches)
            while not got["view#total"] or len(got["view#step_mean"]) < 3:
                path, payload = client.recv()
                got[path].append(payload["data"])
        assert pipe.finished.wait(30)
    assert got["view#step_mean"] == [1.5, 101.5, 201.5]
    assert got["view#total"] == [203]  # after train 203, the slow last one
    assert any("no ACTION view named 'nosuch'" in e for e in pipe.errors), pipe.errors

"""The simulated facility (``sim`` source) and the example context on it."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest

from metropc.error import SourceError
from metropc.sources import open_source
from metropc.sources import sim as S
from metropc.sources.sim import SimulatedFacility

pytestmark = pytest.mark.timeout(60)

INTERNAL = {"internal#train_id", "internal#event_id", "internal#sequence_id"}


@pytest.fixture(autouse=True)
def no_leftover_threads():
    before = set(threading.enumerate())
    yield
    assert set(threading.enumerate()) <= before


def take(source, n):
    out = []
    for event in source:
        out.append(event)
        if len(out) == n:
            break
    return out


def test_paths_are_all_provided_and_documented():
    facility = SimulatedFacility(shape=(64, 64), spectrum_points=128)
    event = facility.step()
    assert set(event) == INTERNAL | set(SimulatedFacility.paths())
    assert set(SimulatedFacility.describe()) == set(SimulatedFacility.paths())
    for path in SimulatedFacility.paths():
        assert path.startswith("karabo#SIM_")


def test_internal_ids_count_up_from_first_train():
    with open_source("sim:ntrains=4", rate="max") as source:
        events = list(source)
    assert [e["internal#train_id"] for e in events] == [10000, 10001, 10002, 10003]
    assert all(e["internal#event_id"] == e["internal#train_id"] for e in events)
    assert all(e["internal#sequence_id"] == -1 for e in events)
    assert all("internal#ctx_version" not in e for e in events)
    assert source.closed


def test_same_seed_same_data_other_seed_other_data():
    a, b, c = (SimulatedFacility(seed=s) for s in (7, 7, 8))
    for _ in range(3):
        ea, eb, ec = a.step(), b.step(), c.step()
    assert ea[S.IMAGE].dtype == np.float32 and ea[S.IMAGE].shape == (512, 512)
    np.testing.assert_array_equal(ea[S.IMAGE], eb[S.IMAGE])
    np.testing.assert_array_equal(ea[S.PULSES], eb[S.PULSES])
    np.testing.assert_array_equal(ea[S.SPECTRUM], eb[S.SPECTRUM])
    assert ea[S.TEMPERATURE] == eb[S.TEMPERATURE]
    assert not np.array_equal(ea[S.IMAGE], ec[S.IMAGE])
    assert not np.array_equal(ea[S.PULSES], ec[S.PULSES])


def test_path_filter_keeps_only_wanted_and_does_not_change_values():
    wanted = [S.PULSES, "SIM_MOTOR/MOTOR/SCAN1.actualPosition",  # bare form
              "view#whatever", "internal#train_id"]
    with open_source("sim:ntrains=5", rate="max", paths=wanted, seed=3) as src:
        filtered = list(src)
    with open_source("sim:ntrains=5", rate="max", seed=3) as src:
        full = list(src)
    for f, e in zip(filtered, full, strict=True):
        assert set(f) == INTERNAL | {S.PULSES, S.POSITION}
        np.testing.assert_array_equal(f[S.PULSES], e[S.PULSES])
        assert f[S.POSITION] == e[S.POSITION]


def test_unknown_wanted_path_warns(caplog):
    with open_source("sim:ntrains=1", paths=["karabo#NOPE/X/Y.z"]) as source:
        (event,) = source
    assert set(event) == INTERNAL
    assert "does not provide karabo#NOPE/X/Y.z (" in caplog.text
    assert "did you mean" not in caplog.text


def test_misspelled_path_warns_with_the_closest_also_after_a_reload(caplog):
    caplog.set_level(logging.WARNING, logger="metropc.sources.sim")
    typo = S.IMAGE[:-2] + S.IMAGE[-1] + S.IMAGE[-2]  # two letters swapped
    with open_source("sim:ntrains=2", rate="max", paths=[S.PULSES]) as source:
        assert not caplog.records
        source.set_paths([S.PULSES, typo])
        events = list(source)
    assert len(events) == 2 and all(typo not in e for e in events)
    (record,) = caplog.records
    assert record.getMessage().startswith(
        f"the simulator does not provide {typo}; did you mean '{S.IMAGE}'? (")


def test_arrays_handed_out_are_never_mutated():
    facility = SimulatedFacility(shape=(32, 48), spectrum_points=64, pulses=8)
    first = facility.step()
    kept = {k: np.copy(first[k]) for k in (S.IMAGE, S.SPECTRUM, S.PULSES)}
    for _ in range(20):
        later = facility.step()
    for key, copy in kept.items():
        np.testing.assert_array_equal(first[key], copy)
        assert not np.shares_memory(first[key], later[key])
    # The constant axis is shared, so it must be read-only.
    assert later[S.WAVELENGTHS] is first[S.WAVELENGTHS]
    with pytest.raises(ValueError):
        first[S.WAVELENGTHS][0] = 0


def test_physics_ring_spectrum_scan_shutter():
    facility = SimulatedFacility(seed=1, shape=(128, 128), spectrum_points=512,
                                 pulses=16, scan_every=10)
    cy, cx = facility.center
    y, x = np.indices(facility.shape)
    r = np.hypot(y - cy, x - cx)
    radii, peaks, positions, targets, closed_means, open_flags = [], [], [], [], [], []
    for i in range(1500):
        ev = facility.step()
        open_flags.append(ev[S.SHUTTER_OPEN])
        positions.append(ev[S.POSITION])
        targets.append(ev[S.TARGET])
        img = ev[S.IMAGE]
        if not ev[S.SHUTTER_OPEN]:
            closed_means.append(img.mean())
        elif i % 25 == 0:
            ring = (r > 20)
            radii.append(r[ring][np.argmax(img[ring])])
        if i < 50:
            peaks.append(ev[S.WAVELENGTHS][np.argmax(ev[S.SPECTRUM])])
        assert ev[S.CENTER_Y] == cy and ev[S.CENTER_X] == cx
        assert ev[S.PULSES].shape == (16,) and (ev[S.PULSES] >= 0).all()
    # Ring at 0.3 * 128 = 38.4 px (1% jitter, plus noise on the maximum).
    assert abs(np.median(radii) - 38.4) < 1.5
    # Laser line at 800 nm.
    assert abs(np.mean(peaks) - 800) < 0.5
    # The motor sits 10 trains on each of the 21 scan points from -2 mm.
    assert targets[:10] == [-2.0] * 10 and targets[10] == pytest.approx(-1.8)
    assert len(set(np.round(targets, 6))) == 21
    assert np.max(np.abs(np.array(positions) - targets)) < 0.01
    # The shutter closes now and then; the image is dark then (offset 10).
    assert 0 < open_flags.count(False) < 500
    assert all(abs(m - 10) < 0.1 for m in closed_means)


def test_sample_response_peaks_at_sample_position():
    f = SimulatedFacility(shape=(16, 16))
    assert f.sample_response(0.6) == pytest.approx(1.0)
    assert f.sample_response(-2.0) < 0.25


def test_spec_options_and_errors():
    with open_source("sim:shape=40x30,pulses=5,spectrum_points=100,ntrains=2,"
                     "first_train=5", rate="max") as source:
        events = list(source)
    assert events[0][S.IMAGE].shape == (40, 30)
    assert events[0][S.PULSES].shape == (5,)
    assert events[0][S.SPECTRUM].shape == (100,)
    assert [e["internal#train_id"] for e in events] == [5, 6]
    with pytest.raises(SourceError, match=r"unknown option.*colour"):
        open_source("sim:colour=red")
    with pytest.raises(SourceError, match="NAME=VALUE"):
        open_source("sim:ntrains")
    with pytest.raises(SourceError, match="shape"):
        open_source("sim:shape=4x4")
    with pytest.raises(SourceError, match="pulses"):
        open_source("sim", pulses=0)
    with pytest.raises(SourceError, match="rate"):
        open_source("sim", rate="fast")
    with pytest.raises(SourceError, match="ntrains"):
        open_source("sim", ntrains=-1)


def test_default_rate_is_10_hz_and_rate_paces():
    source = open_source("sim:shape=16x16,ntrains=4")
    assert source.rate == 10.0
    source.close()
    t0 = time.monotonic()
    with open_source("sim:shape=16x16,ntrains=6", rate=50) as source:
        assert len(list(source)) == 6
    assert time.monotonic() - t0 >= 5 / 50 * 0.9


def test_max_rate_gives_hundreds_of_default_size_trains_per_second():
    with open_source("sim:ntrains=150", rate="max") as source:
        t0 = time.perf_counter()
        n = sum(1 for _ in source)
        elapsed = time.perf_counter() - t0
    assert n == 150
    # Measured ~2000/s; a conservative floor for a noisy CI machine.
    assert n / elapsed > 150, f"{n / elapsed:.0f} trains/s"


def test_close_from_another_thread_stops_a_paced_iteration():
    source = open_source("sim:shape=16x16", rate=2)  # endless, 0.5 s apart
    got_one = threading.Event()

    def closer():
        got_one.wait(10)
        source.close()

    thread = threading.Thread(target=closer)
    thread.start()
    t0 = time.monotonic()
    n = 0
    for _ in source:
        n += 1
        got_one.set()
    thread.join(10)
    assert n >= 1 and source.closed
    assert time.monotonic() - t0 < 5


def test_iteration_continues_like_a_file_and_ends_after_close():
    with open_source("sim:shape=16x16,ntrains=5", rate="max") as source:
        first = take(source, 2)
        rest = list(source)
    assert [e["internal#train_id"] for e in first + rest] == list(range(10000, 10005))
    assert list(source) == []


def test_example_context_makes_sense_of_the_simulator():
    pytest.importorskip("metropc.builtin")
    from metropc import run
    from metropc.inprocess import load_context

    ctx = load_context("contexts/sim_example.py")
    paths = ctx.get_paths()
    results = {}
    counts = {}
    with open_source("sim:ntrains=250,scan_every=10", rate="max", seed=2,
                     paths=paths) as source:
        for _, res in run(ctx, source):
            for name, value in res.items():
                results.setdefault(name, []).append(value)
                counts[name] = counts.get(name, 0) + 1
    radii = np.array(results["ring_radius"])
    assert abs(np.median(radii) - 153.6) < 1.0
    profile = results["radial_profile"][-1]
    assert profile.dims == ("radius",)
    # Shutter-gated views skip closed-shutter trains, dark_level only has them.
    assert counts["radial_profile"] + counts.get("dark_level", 0) == 250
    # The scan peaks where the sample scatters most (0.6 mm).
    scan = results["scan_profile"][-1]
    assert float(scan.idxmax()) == pytest.approx(0.6, abs=0.25)
    assert len(results["scan"][-1]) == 2
    spectrum = results["spectrum_avg"][-1]
    assert float(spectrum.idxmax()) == pytest.approx(800, abs=1)
    hist = results["pulse_energy_histogram"][-1]
    assert hist.sum() > 0 and hist.shape == (80,)
    assert results["mean_pulse_energy"][-1] == pytest.approx(1000, rel=0.2)


def test_set_paths_takes_effect_from_the_next_event():
    with open_source("sim:shape=16x16,ntrains=4", rate="max", paths=[S.PULSES]) as src:
        first = next(src)
        src.set_paths([S.TEMPERATURE, S.POSITION])
        rest = list(src)
    assert set(first) == INTERNAL | {S.PULSES}
    assert [set(e) for e in rest] == [INTERNAL | {S.TEMPERATURE, S.POSITION}] * 3


@pytest.mark.parametrize("seed", range(20))
def test_the_shutter_is_open_for_the_first_100_trains(seed):
    # A quick start must not begin with a dark detector (seed 0 used to close
    # the shutter at its 4th train, for about six seconds).
    facility = SimulatedFacility(seed=seed, shape=(16, 16), spectrum_points=16)
    assert all(facility.step([S.SHUTTER_OPEN])[S.SHUTTER_OPEN] for _ in range(100))


def test_the_example_scan_shows_its_peak_within_the_quick_starts_30_s():
    """``metropc-run contexts/sim_example.py --duration 30`` at the default
    10 Hz sees 300 trains: the scan must have passed the peak by then."""
    pytest.importorskip("metropc.builtin")
    from metropc import run
    from metropc.inprocess import load_context

    ctx = load_context("contexts/sim_example.py")
    assert S.SimSource.default_rate == 10.0
    trains = int(30 * S.SimSource.default_rate)
    results = {}
    with open_source(f"sim:ntrains={trains}", rate="max", paths=ctx.get_paths()) as source:
        for _, res in run(ctx, source):
            for name, value in res.items():
                results.setdefault(name, []).append(value)
    profile = results["scan_profile"][-1]
    assert float(profile.position.max()) >= 1.0  # well past the peak
    assert float(profile.idxmax()) == pytest.approx(SimulatedFacility.sample_peak, abs=0.15)
    image = results["detector_image"][-1]
    assert image.dims == ("y", "x") and image.shape == (512, 512)

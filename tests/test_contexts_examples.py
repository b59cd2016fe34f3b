"""Every example in contexts/ runs through ``metropc.run`` on synthetic events,
and its results match values computed here independently with numpy."""

import pathlib

import numpy as np
import pytest
import xarray as xr

import metropc
from metropc.core import Context
from metropc.enums import ViewOutput, ViewStage

CONTEXTS = pathlib.Path(__file__).resolve().parent.parent / "contexts"
COVERED = {"intro.py", "correlator.py", "hed_visar.py", "sim_example.py", "async_peak.py",
           "run_lifecycle.py"}  # run_lifecycle: tests/test_lifecycle.py


def test_every_example_is_covered():
    assert {p.name for p in CONTEXTS.glob("*.py")} == COVERED


@pytest.mark.parametrize("name", sorted(COVERED))
def test_example_loads_and_round_trips(name):
    ctx = Context.from_file(CONTEXTS / name)
    assert ctx.views
    rebuilt = Context.from_dict(ctx.to_dict())
    assert list(rebuilt.views) == list(ctx.views)
    assert rebuilt.parameters.keys() == ctx.parameters.keys()


def path_of(ctx, view, arg):
    """The event key a view's argument reads (keeps tests independent of
    the device names the examples use)."""
    (found,) = [a for a in ctx.views[view].args if a.name == arg]
    return str(found.path)


def run_file(name, events, **kwargs):
    return list(metropc.run(str(CONTEXTS / name), events, **kwargs))


# -- intro.py -------------------------------------------------------------------------

def profile_by_loops(image, cy, cx):
    """Radial profile written the slow, obvious way."""
    sums, counts = {}, {}
    for (y, x), value in np.ndenumerate(image):
        r = int(np.rint(np.hypot(y - cy, x - cx)))
        sums[r] = sums.get(r, 0.0) + value
        counts[r] = counts.get(r, 0) + 1
    radii = sorted(sums)
    return np.array(radii, float), np.array([sums[r] / counts[r] for r in radii])


def test_intro():
    ctx = Context.from_file(CONTEXTS / "intro.py")
    assert ctx.views["normalised"].output is ViewOutput.COMPUTE
    assert ctx.views["upper"].output is ViewOutput.VECTOR
    assert [str(a.path) for a in ctx.views["asymmetry"].args] == ["view#upper", "view#lower"]
    assert ctx.views["asymmetry_avg"].stage is ViewStage.REDUCE
    assert ctx.views["asymmetry_avg"].N == 20
    pixel = ctx.parameters["pixel_size_mm"]

    det = path_of(ctx, "normalised", "image")
    pulses_key = path_of(ctx, "normalised", "pulses")
    cx_key, cy_key = path_of(ctx, "upper", "cx"), path_of(ctx, "upper", "cy")
    rng = np.random.default_rng(7)
    cy, cx = 11.44, 12.69
    events = []
    for t in range(30):
        events.append({"internal#train_id": 100 + t, det: rng.uniform(5, 15, (22, 27)),
                       pulses_key: rng.uniform(800, 1200, 16), cx_key: cx, cy_key: cy})
    out = list(metropc.run(ctx, events))
    assert [eid for eid, _ in out] == list(range(100, 130))

    ratios = []
    for event, (_, res) in zip(events, out):
        norm = event[det] / (event[pulses_key].mean() / 1000)
        np.testing.assert_allclose(res["normalised"], norm)
        rows = int(cy)
        r_up, p_up = profile_by_loops(norm[:rows], cy, cx)
        r_low, p_low = profile_by_loops(norm[rows:], cy - rows, cx)
        for key, r, p in (("upper", r_up, p_up), ("lower", r_low, p_low)):
            assert isinstance(res[key], xr.DataArray) and res[key].dims == ("radius",)
            np.testing.assert_allclose(res[key].radius, r * pixel)
            np.testing.assert_allclose(res[key].values, p)
        common = np.linspace(max(r_up[0], r_low[0]) * pixel, min(r_up[-1], r_low[-1]) * pixel,
                             min(len(r_up), len(r_low)))
        ratio = np.interp(common, r_up * pixel, p_up) / np.interp(common, r_low * pixel, p_low)
        np.testing.assert_allclose(res["asymmetry"].radius, common)
        np.testing.assert_allclose(res["asymmetry"].values, ratio)
        ratios.append(ratio)

    # moving average over the last 20 ratios, output every 10th train
    for i, (_, res) in enumerate(out):
        if (i + 1) % 10:
            assert "asymmetry_avg" not in res
            continue
        window = np.array(ratios[max(0, i + 1 - 20):i + 1])
        np.testing.assert_allclose(np.asarray(res["asymmetry_avg"]), window.mean(axis=0),
                                   rtol=1e-6)


def test_intro_parameter_override():
    ctx = Context.from_file(CONTEXTS / "intro.py")
    det = path_of(ctx, "normalised", "image")
    event = {det: np.ones((6, 6)), path_of(ctx, "normalised", "pulses"): np.full(4, 1000.0),
             path_of(ctx, "upper", "cx"): 3.0, path_of(ctx, "upper", "cy"): 3.0}
    ((_, res),) = run_file("intro.py", [event], parameters={"pixel_size_mm": 1.0})
    np.testing.assert_allclose(res["upper"].radius, [1, 2, 3, 4])
    np.testing.assert_allclose(res["asymmetry"].values, 1.0)


# -- correlator.py ---------------------------------------------------------------------

def test_correlator():
    ctx = Context.from_file(CONTEXTS / "correlator.py", features=["karabo"],
                            event_alias="train")
    assert ctx.views["detector"].output == ViewOutput.IMAGE
    assert ctx.views["position_vs_roi"].output is ViewOutput.MATRIX
    assert ctx.views["position_vs_roi"].stage is ViewStage.REDUCE
    assert ctx.views["_roi"].output is ViewOutput.COMPUTE
    roi_type = type(ctx.parameters["roi"])
    assert ctx.update_parameters({"roi": roi_type(x=2, y=3, width=5, height=4)}) == []

    det = path_of(ctx, "detector", "image")
    xgm_key = path_of(ctx, "xgm", "pulses")
    motor = path_of(ctx, "position_vs_roi", "position")
    shutter = path_of(ctx, "roi_intensity", "is_open")
    assert det.startswith("karabo#") and "[" in det
    rng = np.random.default_rng(3)
    events = []
    for t in range(25):
        pulses = rng.uniform(0, 1500, 12)
        events.append({"internal#train_id": 5000 + t, det: rng.uniform(0, 50, (10, 12)),
                       xgm_key: pulses, motor: round(-1 + 0.1 * t + rng.normal(0, 0.01), 4),
                       shutter: t % 7 != 3})
    out = list(metropc.run(ctx, events))

    points = []
    with_input = 0
    for event, (eid, res) in zip(events, out):
        assert eid == res["train_id"] == event["internal#train_id"]
        pulses = event[xgm_key]
        assert res["xgm"] == pytest.approx(pulses.mean())
        np.testing.assert_array_equal(res["_pulse_energies"], pulses[pulses > 100.0])
        np.testing.assert_array_equal(res["detector"], event[det])
        roi = event[det][3:7, 2:7]
        np.testing.assert_array_equal(res["_roi"], roi)
        if not event[shutter]:
            assert "roi_intensity" not in res and "position_vs_roi" not in res
            continue
        intensity = roi.mean() / (pulses.mean() / 1000)
        assert res["roi_intensity"] == pytest.approx(intensity)
        points.append((event[motor], intensity))
        with_input += 1
        if with_input % 10:
            assert "position_vs_roi" not in res
            continue
        hist = res["position_vs_roi"]
        assert hist.dims == ("y", "x")
        expected = np.zeros(hist.shape)
        xs, ys = hist.x.values, hist.y.values
        for x, y in points:
            ix, iy = np.argmin(abs(xs - x)), np.argmin(abs(ys - y))
            assert abs(xs[ix] - x) <= 0.1 + 1e-9 and abs(ys[iy] - y) <= 0.5 + 1e-9
            expected[iy, ix] += 1
        np.testing.assert_array_equal(hist.values, expected)
        assert hist.values.sum() == len(points)
    assert with_input == 21


# -- hed_visar.py ----------------------------------------------------------------------

CAMERAS = {  # instance: (prefix, rot90, fliplr, downsample, trigger offset)
    "kepler1": ("KEPLER1", 1, False, 2, 0.0),
    "visar1w": ("VISAR_1w", 1, True, 2, 1.25),
    "sop": ("SOP", 1, False, 4, 0.0),
}
SWEEP = {1: 50, 2: 20, 3: 10, 4: 5, 5: 1, 6: 100}


@pytest.fixture
def visar():
    ctx = Context.from_file(CONTEXTS / "hed_visar.py")
    keys = {"ppu": path_of(ctx, "dipoleOpen", "status"),
            "energy": path_of(ctx, "dipoleEnergy", "energy"),
            "delay": path_of(ctx, "dipoleDelay", "delay")}
    for inst, (prefix, *_) in CAMERAS.items():
        keys[inst, "det"] = path_of(ctx, f"{prefix}/rawData", "data")
        keys[inst, "speed"] = path_of(ctx, f"{prefix}/sweepTime", "speed")
        keys[inst, "position"] = path_of(ctx, f"{prefix}/sweepDelay", "position")
    for inst in ("kepler1", "visar1w"):
        prefix = CAMERAS[inst][0]
        keys[inst, "etalon"] = path_of(ctx, f"{prefix}/shotInfo", "etalon")
        keys[inst, "sensitivity"] = path_of(ctx, f"{prefix}/shotInfo", "sensitivity")
    return ctx, keys


def visar_event(keys, train, ppu, rng, with_delay=True):
    event = {"internal#train_id": train, keys["ppu"]: ppu, keys["energy"]: 2.5 + train / 100}
    if with_delay:
        event[keys["delay"]] = 3.0
    for i, inst in enumerate(CAMERAS):
        event[keys[inst, "det"]] = rng.integers(0, 1000, (9, 14)).astype(np.float32)
        event[keys[inst, "speed"]] = float(i + 1)
        event[keys[inst, "position"]] = 10.0 + i
    for inst in ("kepler1", "visar1w"):
        event[keys[inst, "etalon"]] = 12.5
        event[keys[inst, "sensitivity"]] = 0.997
    return event


def test_hed_visar_structure(visar):
    ctx, keys = visar
    ns = ctx.namespace
    assert ctx.parameters["kepler1.rot90"] == 1
    assert ctx.parameters["visar1w.fliplr"] is True     # subclass Parameter
    assert ctx.parameters["sop.downsample"] == 4         # constructor keyword
    assert ctx.parameters["sop.control"] == "SIM_VISAR/CTRL/STREAK_0"  # class default
    assert "sop.arm" not in ctx.parameters
    assert ns["visar1w"].trigger_offset == 1.25
    for prefix, *_ in CAMERAS.values():
        assert ctx.views[f"{prefix}/rawData"].hidden
        assert ctx.views[f"{prefix}/background"].hidden
        assert ctx.views[f"{prefix}/background"].output is ViewOutput.COMPUTE
        assert not ctx.views[f"{prefix}/shot"].hidden
        assert ctx.views[f"{prefix}/shot"].output == ViewOutput.IMAGE
        assert ctx.views[f"{prefix}/shotInfo"].output is ViewOutput.SCALAR
    assert path_of(ctx, "KEPLER1/shot", "data") == "view#KEPLER1/shotData"
    assert path_of(ctx, "SOP/reference", "data") == "view#SOP/referenceData"
    assert keys["kepler1", "det"] == "karabo#SIM_VISAR/CAM/KEPLER_1:output[data.image.pixels]"


def expected_image(raw, rot90, fliplr):
    data = np.rot90(raw, rot90)
    return np.fliplr(data) if fliplr else data


def test_hed_visar_values(visar):
    ctx, keys = visar
    rng = np.random.default_rng(11)
    events = [visar_event(keys, 1, 34, rng), visar_event(keys, 2, 0, rng),
              visar_event(keys, 3, 34, rng, with_delay=False)]
    out = list(metropc.run(ctx, events))
    pixel = ctx.parameters["pixel_size_um"]

    for event, (eid, res) in zip(events, out):
        shot = event[keys["ppu"]] == 34
        assert res.get("dipoleOpen") is (True if shot else None)
        assert res["dipoleEnergy"] == event[keys["energy"]]
        for i, (inst, (prefix, rot90, fliplr, step, offset)) in enumerate(CAMERAS.items()):
            raw = expected_image(event[keys[inst, "det"]], rot90, fliplr)
            np.testing.assert_array_equal(res[f"{prefix}/rawData"], raw)
            background = np.median(np.concatenate([raw[0], raw[-1]]))
            assert res[f"{prefix}/background"] == pytest.approx(background)
            sweep = SWEEP[i + 1]
            assert res[f"{prefix}/sweepTime"] == sweep
            sweep_delay = 10.0 + i - offset
            assert res[f"{prefix}/sweepDelay"] == pytest.approx(sweep_delay)
            delay = event.get(keys["delay"])
            xray = sweep_delay if delay is None else sweep_delay - delay
            assert res[f"{prefix}/xrayDelay"] == pytest.approx(xray)

            kind, other = ("shot", "reference") if shot else ("reference", "shot")
            assert f"{prefix}/{other}" not in res and f"{prefix}/{other}Data" not in res
            image = res[f"{prefix}/{kind}"]
            rows, columns = raw.shape
            np.testing.assert_allclose(image.values, (raw - background)[::step, ::step])
            assert image.dims == ("distance", "time")
            np.testing.assert_allclose(
                image.distance, ((np.arange(rows) - (rows - 1) / 2) * pixel)[::step])
            np.testing.assert_allclose(image.time, (np.arange(columns) * sweep / columns)[::step])
            assert list(image.attrs["vlines"]) == [pytest.approx(xray)]

            if not shot:
                assert f"{prefix}/trainId" not in res and f"{prefix}/shotInfo" not in res
                continue
            assert res[f"{prefix}/trainId"] == eid
            info = res[f"{prefix}/shotInfo"]
            assert isinstance(info, str) and info.startswith("<div")
            assert f"train {eid}" in info and f"{sweep} ns" in info
            if inst == "sop":
                assert "<b>SOP</b>" in info
                assert f"{event[keys['energy']]:.3f} J" in info
            else:
                assert "12.500 mm" in info and "0.997 m/s" in info


def test_hed_visar_runtime_parameters(visar):
    ctx, keys = visar
    rng = np.random.default_rng(5)
    stream = metropc.run(ctx, [visar_event(keys, 1, 34, rng), visar_event(keys, 2, 34, rng)])
    next(stream)
    assert ctx.update_parameters({"kepler1.rot90": 0, "kepler1.downsample": 1,
                                  "ppu_open_status": 1}) == []
    _, res = next(stream)
    assert "dipoleOpen" not in res  # 34 no longer counts as open
    raw = res["KEPLER1/rawData"]
    assert raw.shape == (9, 14)  # not rotated any more
    assert res["KEPLER1/reference"].shape == (9, 14)  # no downsampling


# -- sim_example.py ----------------------------------------------------------------------

def nearest_bin_counts(values, centres, step):
    """Counts per bin, each value to the bin whose centre is within step/2."""
    counts = np.zeros(len(centres))
    for v in values:
        i = int(np.argmin(abs(centres - v)))
        assert abs(centres[i] - v) <= step / 2 + 1e-9
        counts[i] += 1
    return counts


def ring_image(shape, cy, cx, radius, height, rng):
    y, x = np.indices(shape)
    r = np.hypot(y - cy, x - cx)
    return (10 + height * np.exp(-(r - radius) ** 2 / 8) + rng.normal(0, 0.5, shape))


def test_sim_example():
    ctx = Context.from_file(CONTEXTS / "sim_example.py")
    keys = {
        "image": path_of(ctx, "radial_profile", "image"),
        "cx": path_of(ctx, "radial_profile", "cx"),
        "cy": path_of(ctx, "radial_profile", "cy"),
        "shutter": path_of(ctx, "xray_on", "is_open"),
        "pulses": path_of(ctx, "ring_intensity", "pulses"),
        "motor": path_of(ctx, "scan", "position"),
        "spectrum": path_of(ctx, "spectrum_avg", "spectrum"),
        "wavelengths": path_of(ctx, "spectrum_avg", "wavelengths"),
        "temperature": path_of(ctx, "temperature", "kelvin"),
    }
    min_radius = ctx.parameters["min_radius"]
    resolution = ctx.parameters["scan_resolution"]
    rng = np.random.default_rng(2)
    cy, cx = 60.3, 57.8
    wavelengths = np.linspace(760, 840, 50)
    events = []
    for t in range(12):
        events.append({
            "internal#train_id": t,
            keys["image"]: ring_image((120, 116), cy, cx, 47 + t % 3, 40 + t, rng),
            keys["cx"]: cx, keys["cy"]: cy,
            keys["shutter"]: t not in (4, 9),
            keys["pulses"]: rng.uniform(200, 3800, 16),
            keys["motor"]: [0.5, 0.6][t % 2] + rng.normal(0, 0.001),
            keys["spectrum"]: rng.normal(100, 10, 50),
            keys["wavelengths"]: wavelengths,
            keys["temperature"]: 295 + t / 10,
        })
    out = list(metropc.run(ctx, events))

    sums = {}
    for event, (eid, res) in zip(events, out):
        assert res["temperature"] == event[keys["temperature"]]
        image, pulses = event[keys["image"]], event[keys["pulses"]]
        if not event[keys["shutter"]]:
            assert res["xray_on"] is False
            assert res["dark_level"] == pytest.approx(image.mean())
            for name in ("radial_profile", "ring_radius", "ring_intensity", "scan",
                         "scan_profile"):
                assert name not in res
            continue
        assert res["xray_on"] is True and "dark_level" not in res
        # radial profile, the slow way
        sums_r, counts_r = {}, {}
        for (y, x), value in np.ndenumerate(image):
            r = int(np.rint(np.hypot(y - cy, x - cx)))
            sums_r[r] = sums_r.get(r, 0.0) + value
            counts_r[r] = counts_r.get(r, 0) + 1
        size = max(sums_r) + 1
        profile = np.array([sums_r[r] / counts_r[r] if r in sums_r else 0.0
                            for r in range(size)])
        np.testing.assert_allclose(res["radial_profile"].values, profile)
        np.testing.assert_array_equal(res["radial_profile"].radius, np.arange(size))
        # ring radius: centroid of the 7 points around the peak beyond min_radius
        peak = min_radius + int(np.argmax(profile[min_radius:]))
        window = profile[peak - 3:peak + 4]
        radius = np.average(np.arange(peak - 3, peak + 4), weights=window - window.min())
        assert res["ring_radius"] == pytest.approx(radius)
        assert abs(radius - (47 + eid % 3)) < 1
        r = int(round(radius))
        intensity = (profile[r] - profile[min(r + 15, size - 1)]) / (pulses.sum() / 1000)
        assert res["ring_intensity"] == pytest.approx(intensity)
        position = event[keys["motor"]]
        assert res["scan"] == (pytest.approx(position), pytest.approx(intensity))
        step = int(round(position / resolution))
        sums.setdefault(step, []).append(intensity)
        steps = sorted(sums)
        np.testing.assert_allclose(res["scan_profile"].position, np.array(steps) * resolution)
        np.testing.assert_allclose(res["scan_profile"].values,
                                   [np.mean(sums[s]) for s in steps])
    assert sorted(sums) == [10, 12]

    # accumulating builtin views: output on the 10th train with input
    (_, tenth), = [o for o in out if o[0] == 9]
    spectra = np.array([e[keys["spectrum"]] for e in events[:10]])
    np.testing.assert_allclose(tenth["spectrum_avg"].values, spectra.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(tenth["spectrum_avg"].wavelength, wavelengths)
    means = [e[keys["pulses"]].mean() for e in events[:10]]
    assert float(tenth["mean_pulse_energy"]) == pytest.approx(np.mean(means))
    hist = tenth["pulse_energy_histogram"]
    centres = hist[hist.dims[0]].values
    assert len(centres) == 80 and centres[1] - centres[0] == pytest.approx(50)
    everything = np.concatenate([e[keys["pulses"]] for e in events[:10]])
    np.testing.assert_array_equal(hist.values, nearest_bin_counts(everything, centres, 50))
    for eid, res in out:
        if eid != 9:
            assert "spectrum_avg" not in res and "pulse_energy_histogram" not in res

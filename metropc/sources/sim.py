"""A simulated facility: realistic Karabo data without a facility.

It exists so that contexts, the pipeline and clients can be developed and
demonstrated anywhere.  Each train carries data that looks and behaves like
a small European XFEL experiment, with physics tying the devices together
so an analysis has something to find:

- an area detector sees a powder-diffraction ring whose brightness follows
  the X-ray pulse energy and the sample position, and goes dark while the
  shutter is closed;
- an XGM measures the SASE pulse energies (gamma-distributed, upstream of
  the shutter, so they are always there);
- a sample motor steps through a scan; the sample scatters most at 0.6 mm;
- a pump-laser spectrometer sees a jittering Gaussian line;
- a shutter closes now and then, and a sample temperature drifts.

Everything is deterministic for a given seed and configuration.  Speed
matters (``rate='max'`` should give hundreds of trains/s at the default
sizes): the ring is drawn by a lookup from a precomputed radius map, noise
comes from a bank generated once, and every array handed out is freshly
allocated so that consumers may keep it.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from ..error import SourceError
from .base import RUN_PATH, Source, did_you_mean, internal_event

__all__ = ["SimulatedFacility", "SimSource", "open_sim", "PATHS"]

log = logging.getLogger(__name__)

DET = "SIM_DET/CAM/DET1"
SPEC = "SIM_SPEC/SPEC/SPEC1"
XGM = "SIM_XGM/XGM/XGM1"
MOTOR = "SIM_MOTOR/MOTOR/SCAN1"
SHUTTER = "SIM_SHUTTER/SHUTTER/S1"
TEMP = "SIM_ENV/TEMP/SAMPLE"

IMAGE = f"karabo#{DET}:output[data.image.pixels]"
CENTER_X = f"karabo#{DET}.geometry.centerX"
CENTER_Y = f"karabo#{DET}.geometry.centerY"
SPECTRUM = f"karabo#{SPEC}:output[data.spectrum]"
WAVELENGTHS = f"karabo#{SPEC}.wavelengths"
PULSES = f"karabo#{XGM}:output[data.intensityTD]"
FLUX = f"karabo#{XGM}.pulseEnergy.photonFlux"
POSITION = f"karabo#{MOTOR}.actualPosition"
TARGET = f"karabo#{MOTOR}.targetPosition"
SHUTTER_OPEN = f"karabo#{SHUTTER}.isOpen"
TEMPERATURE = f"karabo#{TEMP}.temperature"

#: Every path the simulator provides, with what it means (docs/sources.md
#: repeats this table).
PATHS = {
    IMAGE: "float32 (H, W), default 512x512: detector image in counts; a "
           "powder ring (radius ~0.3*min(H, W) px, jitter 1%) on diffuse "
           "scattering, offset 10 and Gaussian noise sigma 3; ring and "
           "diffuse signal scale with the train's XGM energy and the sample "
           "response to the motor position; dark while the shutter is closed",
    CENTER_X: "float: beam centre column in pixels (0.47*W), constant",
    CENTER_Y: "float: beam centre row in pixels (0.52*H), constant",
    SPECTRUM: "float32 (2048,): pump-laser spectrum in counts; Gaussian "
              "line at 800 nm (jitter 0.5 nm, sigma 6 nm) + offset 20 + noise",
    WAVELENGTHS: "float64 (2048,): the spectrometer's wavelength axis in nm, "
                 "760 to 840, the same read-only array every train",
    PULSES: "float32 (pulses,), default 64: XGM pulse energies in uJ; "
            "gamma-distributed (SASE, 4 modes) around a train mean of "
            "~1000 uJ that jitters 8% and drifts slowly",
    FLUX: "float: XGM slow average pulse energy in uJ (moving average)",
    POSITION: "float: sample motor readback in mm; steps every scan_every "
              "trains (default 10, 1 s at the default 10 Hz) through 21 points from -2 to 2 mm and "
              "starts over; 1 um readback jitter",
    TARGET: "float: sample motor set point in mm (exact scan point)",
    SHUTTER_OPEN: "bool: X-ray shutter; open for the first 100 trains and at "
                  "least 100 trains after each closing, then closes now and then "
                  "(about every 250 trains) for 20 to 60 trains",
    TEMPERATURE: "float: sample temperature in K; 295 with a slow "
                 "0.8 K oscillation and 10 mK noise",
}

class SimulatedFacility:
    """The simulator's state and physics, one train per :meth:`step`.

    Parameters
    ----------
    seed : int
        Random seed; the same seed and configuration give the same trains.
    shape : (int, int) or int
        Detector image shape (rows, columns).
    pulses : int
        Pulses per train in the XGM vector.
    spectrum_points : int
        Points of the spectrometer vector.
    scan_every : int
        Trains per motor scan point; the default 10 takes the scan through
        the sample's peak (0.6 mm) within 15 s at the default 10 Hz.
    first_train : int
        Train id of the first train.
    """

    scan_points = np.linspace(-2.0, 2.0, 21)
    #: Motor position (mm) where the sample scatters most.
    sample_peak = 0.6
    #: Trains the shutter stays open at the start and after each closing.
    min_open = 100

    def __init__(self, seed=0, shape=(512, 512), pulses=64,
                 spectrum_points=2048, scan_every=10, first_train=10000):
        if isinstance(shape, int):
            shape = (shape, shape)
        try:
            shape = tuple(int(n) for n in shape)
        except (TypeError, ValueError):
            raise SourceError(f"sim: shape must be two integers, not {shape!r}") from None
        if len(shape) != 2 or min(shape) < 8:
            raise SourceError(f"sim: shape must be 2-D, at least 8x8: {shape!r}")
        for name, value in (("pulses", pulses), ("spectrum_points", spectrum_points),
                            ("scan_every", scan_every)):
            if not isinstance(value, int) or value < 1:
                raise SourceError(f"sim: {name} must be a positive integer, "
                                  f"not {value!r}")
        self.shape = shape
        self.pulses = pulses
        self.spectrum_points = spectrum_points
        self.scan_every = scan_every
        self.first_train = int(first_train)
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._index = 0
        self._closed_for = 0
        self._open_for = 0
        self._flux = 1000.0
        self._setup_detector()
        self._setup_spectrometer()

    # -- precomputation -----------------------------------------------------

    def _setup_detector(self):
        h, w = self.shape
        self.center = (0.52 * h, 0.47 * w)
        cy, cx = self.center
        self.ring_radius = 0.3 * min(h, w)
        self._ring_width = max(1.5, 0.006 * min(h, w))
        self._bin = 0.25
        y = np.arange(h, dtype=np.float32)[:, None] - np.float32(cy)
        x = np.arange(w, dtype=np.float32)[None, :] - np.float32(cx)
        r = np.sqrt(y * y + x * x)
        nbins = math.ceil(float(r.max()) / self._bin) + 2
        dtype = np.uint16 if nbins < 2**16 else np.uint32
        # The ring is radial, so a 1-D profile per train and a lookup
        # through this map draw the image ~10x faster than evaluating it.
        self._rindex = np.rint(r / self._bin).astype(dtype)
        self._rbins = np.arange(nbins, dtype=np.float64) * self._bin
        self._diffuse = np.exp(-self._rbins / (0.15 * min(h, w)))
        n = h * w
        self._noise_extra = max(4096, n // 4)
        # Shifted windows of one bank give fresh-looking noise at no cost.
        self._noise = (self._rng.standard_normal(n + self._noise_extra,
                                                 dtype=np.float32) * 3.0)

    def _setup_spectrometer(self):
        self.wavelengths = np.linspace(760.0, 840.0, self.spectrum_points)
        self.wavelengths.flags.writeable = False
        self._spec_extra = max(256, self.spectrum_points)
        self._spec_noise = (self._rng.standard_normal(
            self.spectrum_points + self._spec_extra, dtype=np.float32) * 5.0)

    # -- public -------------------------------------------------------------

    @staticmethod
    def paths():
        """Every path (event key) the simulator provides."""
        return list(PATHS)

    @staticmethod
    def describe():
        """``{path: meaning}`` for every path the simulator provides."""
        return dict(PATHS)

    @property
    def train_id(self):
        """The id of the next train :meth:`step` produces."""
        return self.first_train + self._index

    def sample_response(self, position):
        """Relative scattering strength of the sample at `position` (mm)."""
        return 0.2 + 0.8 * math.exp(-(position - self.sample_peak) ** 2 / 0.5)

    def step(self, wanted=None):
        """The next train as an event dict.

        `wanted` is a set of event keys (None = all).  The random draws are
        the same whatever is wanted, so filtering never changes values;
        only the expensive arrays are skipped when nobody wants them.
        """
        rng = self._rng
        i = self._index
        self._index += 1
        g = rng.standard_normal(8)
        u = rng.random(2)
        img_off, spec_off = rng.integers(0, (self._noise_extra, self._spec_extra))

        # Shutter: open at the start and for at least MIN_OPEN trains after
        # each closing (a demo must not begin dark), then a small chance to
        # close (about every 250 trains), and it stays closed a while.
        if self._closed_for > 0:
            self._closed_for -= 1
        elif self._open_for >= self.min_open and u[0] < 1 / (250 - self.min_open):
            self._closed_for = 20 + int(u[1] * 41)
        is_open = self._closed_for == 0
        self._open_for = self._open_for + 1 if is_open else 0

        # XGM: SASE pulses around a jittering, slowly drifting train mean.
        mean = 1000.0 * (1 + 0.08 * g[0]) * (1 + 0.1 * math.sin(2 * math.pi * i / 1800))
        mean = max(mean, 50.0)
        pulses = (rng.gamma(4.0, mean / 4.0, self.pulses)).astype(np.float32)
        self._flux += 0.1 * (float(pulses.mean()) - self._flux)

        # Scan: the motor sits on each point for scan_every trains.
        npts = len(self.scan_points)
        target = float(self.scan_points[(i // self.scan_every) % npts])
        position = target + 0.001 * g[6]

        tid = self.first_train + i
        event = internal_event(tid)

        def want(key):
            return wanted is None or key in wanted

        if want(IMAGE):
            energy = float(pulses.sum()) / (1000.0 * self.pulses)
            scale = energy * self.sample_response(target) if is_open else 0.0
            event[IMAGE] = self._image(scale, g, img_off)
        for key, value in ((CENTER_X, self.center[1]), (CENTER_Y, self.center[0]),
                           (WAVELENGTHS, self.wavelengths), (PULSES, pulses),
                           (FLUX, self._flux), (POSITION, position),
                           (TARGET, target), (SHUTTER_OPEN, is_open),
                           (TEMPERATURE, 295.0 + 0.8 * math.sin(2 * math.pi * i / 6000)
                            + 0.01 * g[5])):
            if want(key):
                event[key] = value
        if want(SPECTRUM):
            event[SPECTRUM] = self._spectrum(g, spec_off)
        return event

    # -- generators ---------------------------------------------------------

    def _image(self, scale, g, offset):
        radius = self.ring_radius * (1 + 0.01 * g[1])
        amp = 200.0 * scale * (1 + 0.05 * g[2])
        profile = 10.0 + 60.0 * scale * self._diffuse
        # Only the bins near the ring need the Gaussian.
        half = 6 * self._ring_width
        lo = max(0, int((radius - half) / self._bin))
        hi = min(len(self._rbins), int((radius + half) / self._bin) + 1)
        d = self._rbins[lo:hi] - radius
        profile[lo:hi] += amp * np.exp(-0.5 * (d / self._ring_width) ** 2)
        image = np.take(profile.astype(np.float32), self._rindex)
        n = image.size
        image += self._noise[offset:offset + n].reshape(self.shape)
        return image

    def _spectrum(self, g, offset):
        centre = 800.0 + 0.5 * g[3]
        amp = 1000.0 * (1 + 0.05 * g[4])
        d = (self.wavelengths - centre) / 6.0
        spec = (20.0 + amp * np.exp(-0.5 * d * d)).astype(np.float32)
        spec += self._spec_noise[offset:offset + self.spectrum_points]
        return spec


class SimSource(Source):
    """:class:`SimulatedFacility` as a paced :class:`Source` (10 Hz default)."""

    default_rate = 10.0
    kind = "sim"

    def __init__(self, *, paths=None, rate=None, seed=0, ntrains=None, run_length=None,
                 **config):
        super().__init__(paths=paths, rate=rate)
        if run_length is not None and (not isinstance(run_length, int) or run_length < 1):
            raise SourceError(f"sim: run_length must be a positive integer, "
                              f"not {run_length!r}")
        #: Trains per simulated run (runs 1, 2, ...); None: no runs.
        self.run_length = run_length
        if ntrains is not None and (not isinstance(ntrains, int) or ntrains < 0):
            raise SourceError(f"sim: ntrains must be a non-negative integer, "
                              f"not {ntrains!r}")
        self.ntrains = ntrains
        try:
            self.facility = SimulatedFacility(seed=seed, **config)
        except TypeError as e:
            raise SourceError(f"sim: {e}") from None
        self._warn_unknown()

    def set_paths(self, paths):
        super().set_paths(paths)
        self._warn_unknown()  # a reloaded context may name new paths

    def _warn_unknown(self):
        """Name each ``karabo#`` path the context wants that the simulator
        does not provide (views reading it never run), with the closest
        one it does."""
        for path in sorted(p for p in self.paths or () if p.startswith("karabo#")
                           and p not in PATHS):
            log.warning("the simulator does not provide %s%s (SimulatedFacility.paths() "
                        "lists what it does); views that need it do not run",
                        path, did_you_mean(path, PATHS))

    def events(self):
        n = 0
        while self.ntrains is None or n < self.ntrains:
            event = self.facility.step(self.paths)
            if self.run_length:
                event[RUN_PATH] = 1 + n // self.run_length
            yield event
            n += 1


def open_sim(target="", *, paths=None, rate=None, seed=0, bridge_socket=None,
             timeout=None, **options):
    """Factory for ``sim`` and ``sim:OPT=V,...`` specs.

    Options (keywords or in the spec): ``shape`` (``512x512``), ``pulses``,
    ``spectrum_points``, ``scan_every``, ``first_train``, ``ntrains``,
    ``rate``, ``seed``.  Options in the spec win over keywords.
    """
    from . import parse_options

    options.update(parse_options(target))
    rate = options.pop("rate", rate)
    seed = options.pop("seed", seed)
    known = {"shape", "pulses", "spectrum_points", "scan_every", "first_train",
             "ntrains", "run_length"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise SourceError(f"unknown option(s) for the sim source: "
                          f"{', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return SimSource(paths=paths, rate=rate, seed=seed, **options)

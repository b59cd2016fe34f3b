"""A tour of metropc on the simulated facility (``--source sim``).

Run it with ``metropc-run contexts/sim_example.py --source sim`` or, in a
notebook::

    from metropc import run
    from metropc.sources import open_source
    with open_source('sim:ntrains=200', rate='max') as events:
        for event_id, results in run('contexts/sim_example.py', events):
            ...

What the simulator does is described in docs/sources.md; what this context
makes of it:

- ``detector_image``: the detector image itself (an image view), with
  the powder ring that everything else is made of;
- ``radial_profile``: the detector image averaged over rings around the
  beam centre (a vector with a ``radius`` coordinate in pixels), and
  ``ring_radius``, the powder ring's radius found in it;
- ``ring_intensity``: the ring's height per mJ of X-ray pulse energy, so
  that SASE fluctuations cancel and only the sample's response is left;
- ``scan`` (one point per train) and ``scan_profile`` (the mean per scan
  point): ``ring_intensity`` against the sample motor position, which
  peaks where the sample scatters most (0.6 mm).  The simulated motor
  holds each of its 21 points (-2 to 2 mm) for 10 trains, so at 10 Hz the
  scan passes the peak after about 15 s and starts over after 21 s;
- ``spectrum_avg``: the pump-laser spectrum, moving average of 20 trains,
  on its wavelength axis;
- ``pulse_energy_histogram``: SASE statistics of the XGM pulse energies;
- ``mean_pulse_energy``: the running average of the pulse energy;
- ``dark_level``: the image mean while the shutter is closed.

Views that need X-rays on the sample return None while the shutter is
closed, so closed-shutter trains leave no trace in them.
"""

import functools

import numpy as np
import xarray as xr

DETECTOR = 'karabo#SIM_DET/CAM/DET1:output[data.image.pixels]'
CENTER_X = 'karabo#SIM_DET/CAM/DET1.geometry.centerX'
CENTER_Y = 'karabo#SIM_DET/CAM/DET1.geometry.centerY'
SPECTRUM = 'karabo#SIM_SPEC/SPEC/SPEC1:output[data.spectrum]'
WAVELENGTHS = 'karabo#SIM_SPEC/SPEC/SPEC1.wavelengths'
XGM_PULSES = 'karabo#SIM_XGM/XGM/XGM1:output[data.intensityTD]'
MOTOR = 'karabo#SIM_MOTOR/MOTOR/SCAN1.actualPosition'
SHUTTER = 'karabo#SIM_SHUTTER/SHUTTER/S1.isOpen'
TEMPERATURE = 'karabo#SIM_ENV/TEMP/SAMPLE.temperature'

# min_radius keeps the diffuse scattering around the beam out of the ring
# search; scan_resolution is the motor step the scan is binned to (mm).
parameters(min_radius=40, scan_resolution=0.05)


@functools.lru_cache(maxsize=4)
def _radius_map(shape, cy, cx):
    """Whole-pixel radius of every pixel and the pixel count per radius.

    Cached: the geometry is the same every train, and this is the most
    expensive part of the profile.
    """
    y, x = np.indices(shape)
    radius = np.rint(np.hypot(y - cy, x - cx)).astype(np.intp).ravel()
    return radius, np.bincount(radius)


@View.Compute
def xray_on(is_open: SHUTTER):
    return bool(is_open)


@View.Image
def detector_image(image: DETECTOR):
    return xr.DataArray(image, dims=['y', 'x'],
                        attrs={'title': 'detector', 'zlabel': 'counts'})


@View.Vector
def radial_profile(image: DETECTOR, cx: CENTER_X, cy: CENTER_Y, on: 'xray_on'):
    if not on:
        return None
    radius, counts = _radius_map(image.shape, float(cy), float(cx))
    sums = np.bincount(radius, weights=image.ravel(), minlength=counts.size)
    profile = sums / np.maximum(counts, 1)
    return xr.DataArray(profile, dims=['radius'],
                        coords={'radius': np.arange(profile.size)},
                        attrs={'xlabel': 'radius (px)', 'ylabel': 'counts'})


@View.Scalar
def ring_radius(profile: 'radial_profile'):
    # The peak, refined by the centroid of the 7 points around it.
    outer = profile.values[min_radius:]
    peak = int(np.argmax(outer)) + min_radius
    window = profile.values[peak - 3:peak + 4]
    weights = window - window.min()
    radii = np.arange(peak - 3, peak + 4)
    return float((radii * weights).sum() / weights.sum())


@View.Scalar
def ring_intensity(profile: 'radial_profile', radius: 'ring_radius',
                   pulses: XGM_PULSES):
    # Ring height above the profile 15 px outside it, per mJ of X-rays.
    r = int(round(radius))
    height = profile.values[r] - profile.values[min(r + 15, profile.size - 1)]
    return float(height / (np.sum(pulses) / 1000))


@View.Points
def scan(position: MOTOR, intensity: 'ring_intensity'):
    return float(position), intensity


# The scan's running mean per motor position.  It accumulates across
# trains, so it runs in the reduce stage, which sees every train in order.
_scan_sums = {}


@View.Vector(stage='reduce')
def scan_profile(position: MOTOR, intensity: 'ring_intensity'):
    step = int(round(position / scan_resolution))
    total, count = _scan_sums.get(step, (0.0, 0))
    _scan_sums[step] = (total + intensity, count + 1)
    steps = sorted(_scan_sums)
    means = [_scan_sums[s][0] / _scan_sums[s][1] for s in steps]
    return xr.DataArray(means, dims=['position'],
                        coords={'position': np.array(steps) * scan_resolution},
                        attrs={'xlabel': 'sample position (mm)',
                               'ylabel': 'ring counts per mJ'})


@View.Vector_MovingAverage(N=20)
def spectrum_avg(spectrum: SPECTRUM, wavelengths: WAVELENGTHS):
    return xr.DataArray(spectrum, dims=['wavelength'],
                        coords={'wavelength': wavelengths},
                        attrs={'xlabel': 'wavelength (nm)'})


@View.Vector_Histogram(bin_min=0, bin_max=4000, bin_count=80)
def pulse_energy_histogram(pulses: XGM_PULSES):
    return pulses


@View.Scalar_GlobalAverage
def mean_pulse_energy(pulses: XGM_PULSES):
    return float(np.mean(pulses))


@View.Scalar
def dark_level(image: DETECTOR, on: 'xray_on'):
    if not on:
        return float(image.mean())


@View.Scalar
def temperature(kelvin: TEMPERATURE):
    return kelvin

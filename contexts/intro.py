"""Introduction example: is the powder ring on the detector isotropic?

The detector sees a powder-diffraction ring.  This context compares the
ring's radial profile in the upper and the lower half of the image:

- ``normalised`` (a hidden COMPUTE intermediate) divides the image by the
  train's mean X-ray pulse energy;
- ``upper`` and ``lower`` are vectors (``xr.DataArray``) with their own
  radius coordinate, in mm;
- ``asymmetry`` interpolates both onto a common radius axis and divides;
- ``asymmetry_avg`` is the moving average over the last 20 trains, from
  the builtin ``MovingAverage`` view.

The paths below are those of metropc's simulated facility (``sim``); point
them at real devices to use the context elsewhere.
"""

import numpy as np
import xarray as xr

DETECTOR = 'karabo#SIM_DET/CAM/DET1:output[data.image.pixels]'
CENTER_X = 'karabo#SIM_DET/CAM/DET1.geometry.centerX'
CENTER_Y = 'karabo#SIM_DET/CAM/DET1.geometry.centerY'
XGM_PULSES = 'karabo#SIM_XGM/XGM/XGM1:output[data.intensityTD]'

parameters(pixel_size_mm=0.2)


def radial_profile(image, cy, cx):
    """Mean of `image` per whole-pixel radius around (cy, cx).

    Returns the radii that occur and the mean at each, so that both halves
    of an image give profiles on their own axes.
    """
    y, x = np.indices(image.shape)
    radius = np.rint(np.hypot(y - cy, x - cx)).astype(int).ravel()
    sums = np.bincount(radius, weights=image.ravel())
    counts = np.bincount(radius)
    present = np.flatnonzero(counts)
    return present, sums[present] / counts[present]


def as_profile(radii, values):
    return xr.DataArray(values, dims=['radius'],
                        coords={'radius': radii * pixel_size_mm},
                        attrs={'xlabel': 'radius (mm)'})


@View.Compute
def normalised(image: DETECTOR, pulses: XGM_PULSES):
    # Detector counts per mJ of X-ray pulse energy.
    return image / (np.mean(pulses) / 1000)


@View.Vector
def upper(image: 'normalised', cx: CENTER_X, cy: CENTER_Y):
    rows = int(cy)
    return as_profile(*radial_profile(image[:rows], cy, cx))


@View.Vector
def lower(image: 'normalised', cx: CENTER_X, cy: CENTER_Y):
    rows = int(cy)
    return as_profile(*radial_profile(image[rows:], cy - rows, cx))


@View.Vector
def asymmetry(up: 'upper', down: 'lower'):
    # Upper over lower half, on the radii both halves cover.
    start = max(up.radius.values[0], down.radius.values[0])
    stop = min(up.radius.values[-1], down.radius.values[-1])
    common = np.linspace(start, stop, min(up.size, down.size))
    ratio = np.interp(common, up.radius, up) / np.interp(common, down.radius, down)
    return as_profile(common / pixel_size_mm, ratio)


@View.Vector_MovingAverage(N=20)
def asymmetry_avg(ratio: 'asymmetry'):
    return ratio

"""Correlator example, in the shape of EXtra-foam's Correlator contexts.

Scalars per train (train id, X-ray pulse energy), a detector image, a
region of interest given as a parameter, and a 2-D histogram correlating
the sample motor position with the ROI intensity.  Views whose names start
with ``_`` are hidden by default in EXtra-foam's view list.

The paths are those of metropc's simulated facility (``sim``).
"""

from dataclasses import dataclass

import numpy as np

DETECTOR = 'karabo#SIM_DET/CAM/DET1:output[data.image.pixels]'
XGM_PULSES = 'karabo#SIM_XGM/XGM/XGM1:output[data.intensityTD]'
MOTOR = 'karabo#SIM_MOTOR/MOTOR/SCAN1.actualPosition'
SHUTTER = 'karabo#SIM_SHUTTER/SHUTTER/S1.isOpen'


@dataclass
class RectROI:
    """A rectangle on an image; a frontend may replace it at run time."""

    x: int = 0
    y: int = 0
    width: int = 100
    height: int = 100

    def of(self, image):
        if image.ndim != 2:
            raise ValueError(f'ROI input must be 2-D, not {image.ndim}-D')
        return image[self.y:self.y + self.height, self.x:self.x + self.width]


# The default ROI sits on the top of the simulator's powder ring (512x512 images).
parameters(roi=RectROI(x=210, y=80, width=64, height=64), min_pulse_energy=100.0)


@View.Scalar
def train_id(tid: 'internal#train_id'):
    return tid


@View.Scalar
def xgm(pulses: XGM_PULSES):
    return float(np.nanmean(pulses))


@View.Vector
def _pulse_energies(pulses: XGM_PULSES):
    return pulses[pulses > min_pulse_energy]


@View.Image
def detector(image: DETECTOR):
    return image


@View.Compute
def _roi(image: 'detector'):
    return roi.of(image)


@View.Scalar
def roi_intensity(image: '_roi', energy: 'xgm', is_open: SHUTTER):
    # Mean ROI counts per mJ, only while X-rays reach the sample.
    if is_open and image.size:
        return float(image.mean()) / (energy / 1000)


@View.Matrix_Histogram(x_step=0.2, y_step=1.0)
def position_vs_roi(position: MOTOR, intensity: 'roi_intensity'):
    return position, intensity

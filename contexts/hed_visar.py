"""Streak cameras and VISAR arms, in the shape of the HED VISAR contexts.

Module-level views watch the drive laser: ``dipoleOpen`` is a trigger that
gives a result only on trains where the laser fires, so everything needing
it runs on shot trains only.  Each camera is an instance of a ViewGroup:

- class-level ``Parameter``s (``rot90``, ``fliplr`` ...) set its defaults,
  subclasses and constructor keywords override them, and a frontend can
  change them at run time as ``'<instance>.<name>'`` (``'kepler1.rot90'``);
- ``prefix`` and the device keywords fill the name and path templates;
- hidden COMPUTE/IMAGE intermediates feed the visible views;
- ``_labelled_image`` is a ViewPrototype made into two views per camera
  (``reference`` and ``shot``) from ``__init__``.

The device names are placeholders in the style of metropc's simulator;
point them at real devices to use the context.
"""

from functools import lru_cache

import numpy as np
import xarray as xr

from metropc.context import View, ViewGroup, ViewPrototype, parameters
from metropc.viewdef import Parameter

DIPOLE_ENERGY = 'SIM_LASER/DIAG/DIPOLE.energy'
DIPOLE_DELAY = 'SIM_LASER/TIMING/DIPOLE.actualPosition'
DIPOLE_PPU = 'SIM_LASER/PPU/DIPOLE.hardwareStatusBitField'

parameters(
    ppu_open_status=34,   # PPU status while the drive laser fires
    pixel_size_um=1.5,    # size of a camera pixel on the target
)


@View.Scalar(name='dipoleEnergy')
def dipole_energy(energy: DIPOLE_ENERGY):
    return energy


@View.Scalar(name='dipoleDelay')
def dipole_delay(delay: DIPOLE_DELAY):
    return delay


@View.Scalar(name='dipoleOpen')
def dipole_open(status: DIPOLE_PPU):
    if int(status) == ppu_open_status:
        return True


class StreakCamera(ViewGroup):
    # Sweep speed setting of the camera -> sweep window in ns.
    SWEEP_WINDOW_NS = {1: 50, 2: 20, 3: 10, 4: 5, 5: 1, 6: 100}

    rot90: Parameter = 1
    fliplr: Parameter = False
    flipud: Parameter = False
    downsample: Parameter = 2

    control: Parameter = 'SIM_VISAR/CTRL/STREAK_0'
    trigger: Parameter = 'SIM_VISAR/TSYS/STREAK_0_TRIG'
    detector: Parameter = 'SIM_VISAR/CAM/STREAK_0:output'

    def __init__(self, *args, prefix='STREAK', trigger_offset=0.0, **kwargs):
        super().__init__(*args, prefix=f'{prefix}/', **kwargs)
        self.trigger_offset = trigger_offset
        self._labelled_image(kind='reference')
        self._labelled_image(kind='shot')

    @property
    def label(self):
        return self.prefix.rstrip('/')

    @lru_cache()
    def time_axis(self, sweep_ns, columns):
        """Time of each column in ns: a linear sweep over the window."""
        return np.linspace(0.0, sweep_ns, columns, endpoint=False)

    @View.Image(name='{prefix}rawData', hidden=True)
    def raw_data(self, data: '{detector}[data.image.pixels]'):
        if self.rot90:
            data = np.rot90(data, self.rot90)
        if self.flipud:
            data = np.flipud(data)
        if self.fliplr:
            data = np.fliplr(data)
        return data

    @View.Compute(name='{prefix}background', hidden=True)
    def background(data: 'view#{prefix}rawData'):
        # Dark level: the median of the first and last row.
        return float(np.median(np.concatenate([data[0], data[-1]])))

    @View.Image(name='{prefix}shotData', hidden=True)
    def shot_data(data: 'view#{prefix}rawData', _: 'view#dipoleOpen'):
        return data

    @View.Image(name='{prefix}referenceData', hidden=True)
    def reference_data(data: 'view#{prefix}rawData', laser: 'view#dipoleOpen' = None):
        if laser is None:
            return data

    @View.Scalar(name='{prefix}trainId')
    def train_id(_: '{prefix}shotData', train_id: 'internal#train_id'):
        return train_id

    @View.Scalar(name='{prefix}sweepTime')
    def sweep_time(self, speed: '{control}.sweepSpeed'):
        return self.SWEEP_WINDOW_NS[int(speed)]

    @View.Scalar(name='{prefix}sweepDelay')
    def sweep_delay(self, position: '{trigger}.actualPosition'):
        return position - self.trigger_offset

    @View.Scalar(name='{prefix}xrayDelay')
    def xray_delay(sweep_delay: '{prefix}sweepDelay',
                   laser_delay: 'view#dipoleDelay' = None):
        if laser_delay is None:
            return sweep_delay
        return sweep_delay - laser_delay

    @View.Scalar(name='{prefix}shotInfo')
    def info(self, train_id: '{prefix}trainId', sweep_time: '{prefix}sweepTime',
             sweep_delay: '{prefix}sweepDelay', energy: 'view#dipoleEnergy' = None):
        energy = 'n/a' if energy is None else f'{energy:.3f} J'
        return (f'<div style="text-align: left"><b>{self.label}</b> '
                f'shot, train {train_id}<br>'
                f'<b>Drive laser energy:</b> {energy}<br>'
                f'<b>Sweep time:</b> {sweep_time} ns<br>'
                f'<b>Sweep delay:</b> {sweep_delay:.3f} ns</div>')

    @ViewPrototype.Image(name='{prefix}{kind}')
    def _labelled_image(self, data: 'view#{prefix}{kind}Data',
                        background: '{prefix}background', sweep_time: '{prefix}sweepTime',
                        xray_delay: '{prefix}xrayDelay' = None):
        step = self.downsample
        rows, columns = data.shape
        distance = (np.arange(rows) - (rows - 1) / 2) * pixel_size_um
        attrs = {}
        if xray_delay is not None:
            attrs['vlines'] = {xray_delay: f'X-rays ({xray_delay:.3f} ns)'}
        return xr.DataArray(
            (data - background)[::step, ::step],
            dims=['distance', 'time'],
            coords={'distance': distance[::step],
                    'time': self.time_axis(sweep_time, columns)[::step]},
            attrs=attrs)


class VISAR(StreakCamera):
    arm: Parameter = 'SIM_VISAR/MDL/ARM_0'

    @View.Scalar(name='{prefix}shotInfo')
    def info(train_id: '{prefix}trainId', sweep_time: '{prefix}sweepTime',
             etalon: '{arm}.etalonThickness', sensitivity: '{arm}.sensitivity'):
        return (f'<div style="text-align: left"><b>VISAR</b> shot, train {train_id}<br>'
                f'<b>Etalon thickness:</b> {etalon:.3f} mm<br>'
                f'<b>Sensitivity:</b> {sensitivity:.3f} m/s<br>'
                f'<b>Sweep time:</b> {sweep_time} ns</div>')


class VISAR_1w(VISAR):
    fliplr: Parameter = True


kepler1 = VISAR(
    prefix='KEPLER1',
    arm='SIM_VISAR/MDL/ARM_1',
    control='SIM_VISAR/CTRL/KEPLER_1',
    trigger='SIM_VISAR/TSYS/KEPLER_1_TRIG',
    detector='SIM_VISAR/CAM/KEPLER_1:output',
)

visar1w = VISAR_1w(
    prefix='VISAR_1w',
    arm='SIM_VISAR/MDL/ARM_3',
    control='SIM_VISAR/CTRL/STREAK_3',
    trigger='SIM_VISAR/TSYS/STREAK_3_TRIG',
    detector='SIM_VISAR/CAM/STREAK_3:output',
    trigger_offset=1.25,
)

sop = StreakCamera(
    prefix='SOP',
    trigger='SIM_VISAR/TSYS/SOP_TRIG',
    detector='SIM_VISAR/CAM/SOP:output',
    downsample=4,
)

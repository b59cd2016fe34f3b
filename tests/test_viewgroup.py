"""ViewGroup and ViewPrototype, in the shapes of the HED VISAR contexts."""

import textwrap

import numpy as np
import pytest

import metropc
from metropc.core import Context
from metropc.enums import ViewOutput
from metropc.error import ContextError, ViewDefError
from metropc.path import ViewPath

GROUP_SRC = """
from functools import lru_cache

from metropc.context import View, ViewGroup, ViewPrototype, parameters
from metropc.viewdef import Parameter

parameters(open_status=34)


@View.Scalar(name='shutterOpen')
def shutter_open(status: 'HED_LAS/PPU/SHUTTER.hardwareStatus'):
    if int(status) == open_status:
        return True


class Streak(ViewGroup):
    SWEEP = {1: 50, 2: 20}

    rot90: Parameter = 1
    fliplr: Parameter = False
    gain: Parameter = 1.0
    control: Parameter = 'HED_STREAK/CTRL/UNIT_0'
    detector: Parameter = 'HED_STREAK/CAM/CAM_0:output'

    def __init__(self, *args, prefix='CAM0', trigger_offset=0.0, **kwargs):
        super().__init__(*args, prefix=f'{prefix}/', **kwargs)
        self.trigger_offset = trigger_offset
        self.calls = 0
        self._labelled(kind='reference')
        self._labelled(kind='shot')

    @lru_cache()
    def axis(self, n, sweep):
        return np.arange(n) * sweep / 10

    @property
    def name(self):
        return self.prefix.rstrip('/')

    @View.Compute(name='{prefix}rawData', hidden=True)
    def raw_data(self, data: '{detector}[data.image.pixels]'):
        self.calls += 1
        data = np.rot90(data, self.rot90) * self.gain
        return np.fliplr(data) if self.fliplr else data

    @View.Image(name='{prefix}shotData', hidden=True)
    def shot_data(data: 'view#{prefix}rawData', _: 'view#shutterOpen'):
        return data

    @View.Image(name='{prefix}referenceData', hidden=True)
    def reference_data(data: '{prefix}rawData', shutter: 'shutterOpen' = None):
        if shutter is None:
            return data

    @View.Scalar(name='{prefix}sweepTime')
    def sweep_time(self, speed: '{control}.sweepSpeed'):
        return self.SWEEP[int(speed)]

    @View.Scalar(name='{prefix}trainId')
    def train_id(_: '{prefix}shotData', tid: 'internal#train_id'):
        return tid

    @View.Scalar(name='{prefix}info')
    def info(self, tid: '{prefix}trainId'):
        return f'<b>{self.name}</b> shot {tid}'

    @ViewPrototype.Vector(name='{prefix}{kind}')
    def _labelled(self, data: 'view#{prefix}{kind}Data', sweep: '{prefix}sweepTime'):
        profile = data.sum(axis=0)
        return xr.DataArray(profile, dims=['time'],
                            coords={'time': self.axis(len(profile), sweep)})


class Visar(Streak):
    arm: Parameter = 'HED_VISAR/MDL/ARM_0'

    @View.Scalar(name='{prefix}info')
    def info(tid: '{prefix}trainId', etalon: '{arm}.etalonThickness'):
        return f'shot {tid} etalon {etalon:.1f}'


class VisarFlipped(Visar):
    fliplr: Parameter = True


kepler1 = Visar(prefix='KEPLER1', arm='HED_VISAR/MDL/ARM_1',
                control='HED_STREAK/CTRL/UNIT_1', detector='HED_STREAK/CAM/CAM_1:output')
visar1w = VisarFlipped(prefix='VISAR_1w', detector='HED_STREAK/CAM/CAM_3:output',
                       rot90=0, ctrl='HED_STREAK/CTRL/TYPO', trigger_offset=2.5)
sop = Streak(prefix='SOP', gain=2.0)
"""

CAM1 = "karabo#HED_STREAK/CAM/CAM_1:output[data.image.pixels]"
CAM3 = "karabo#HED_STREAK/CAM/CAM_3:output[data.image.pixels]"
CAM0 = "karabo#HED_STREAK/CAM/CAM_0:output[data.image.pixels]"
SHUTTER = "karabo#HED_LAS/PPU/SHUTTER.hardwareStatus"
SPEED0 = "karabo#HED_STREAK/CTRL/UNIT_0.sweepSpeed"
SPEED1 = "karabo#HED_STREAK/CTRL/UNIT_1.sweepSpeed"
ETALON1 = "karabo#HED_VISAR/MDL/ARM_1.etalonThickness"

IMAGE = np.arange(12.0).reshape(3, 4)


@pytest.fixture
def ctx():
    return Context(GROUP_SRC, path="visar_ctx.py")


def event(train, shutter=34, **more):
    ev = {"internal#train_id": train, SHUTTER: shutter, CAM1: IMAGE, CAM3: IMAGE,
          CAM0: IMAGE, SPEED0: 2, SPEED1: 1, ETALON1: 20.0}
    ev.update(more)
    return ev


def test_views_per_instance(ctx):
    names = {"rawData", "shotData", "referenceData", "sweepTime", "trainId", "info",
             "reference", "shot"}
    for prefix in ("KEPLER1/", "VISAR_1w/", "SOP/"):
        assert {n for n in ctx.views if n.startswith(prefix)} == {prefix + n for n in names}
    assert len(ctx.views) == 1 + 3 * len(names)
    assert ctx.views["KEPLER1/rawData"].hidden is True
    assert ctx.views["KEPLER1/rawData"].output is ViewOutput.COMPUTE
    assert ctx.views["KEPLER1/shot"].output is ViewOutput.VECTOR
    assert ctx.views["KEPLER1/sweepTime"].hidden is False


def test_templates_fill_names_and_paths(ctx):
    def paths(name):
        return [str(a.path) for a in ctx.views[name].args]

    assert paths("KEPLER1/rawData") == [CAM1]
    assert paths("VISAR_1w/rawData") == [CAM3]
    assert paths("SOP/rawData") == [CAM0]  # class default of the Parameter
    assert paths("KEPLER1/sweepTime") == [SPEED1]
    assert paths("VISAR_1w/sweepTime") == [SPEED0]
    assert paths("KEPLER1/info") == ["view#KEPLER1/trainId", ETALON1]
    assert paths("VISAR_1w/info") == ["view#VISAR_1w/trainId",
                                      "karabo#HED_VISAR/MDL/ARM_0.etalonThickness"]
    assert paths("SOP/info") == ["view#SOP/trainId"]
    assert paths("KEPLER1/shot") == ["view#KEPLER1/shotData", "view#KEPLER1/sweepTime"]
    assert paths("KEPLER1/referenceData") == ["view#KEPLER1/rawData", "view#shutterOpen"]
    assert all(isinstance(ctx.views["KEPLER1/shotData"].args[i].path, ViewPath)
               for i in range(2))


def test_parameters_class_subclass_and_constructor(ctx):
    ns = ctx.namespace
    k1, v1w, sop = ns["kepler1"], ns["visar1w"], ns["sop"]
    assert (k1.rot90, k1.fliplr, k1.gain) == (1, False, 1.0)
    assert (v1w.rot90, v1w.fliplr) == (0, True)  # constructor / subclass override
    assert sop.gain == 2.0
    assert k1.prefix == "KEPLER1/" and k1.name == "KEPLER1"
    assert v1w.trigger_offset == 2.5 and k1.trigger_offset == 0.0
    assert v1w.ctrl == "HED_STREAK/CTRL/TYPO"  # unknown keywords are kept as fields
    assert ctx.parameters["open_status"] == 34
    assert ctx.parameters["kepler1.rot90"] == 1
    assert ctx.parameters["visar1w.fliplr"] is True
    assert ctx.parameters["visar1w.arm"] == "HED_VISAR/MDL/ARM_0"
    assert ctx.parameters["sop.gain"] == 2.0
    assert "sop.arm" not in ctx.parameters
    assert "visar1w.ctrl" not in ctx.parameters  # not a declared Parameter
    assert "visar1w.trigger_offset" not in ctx.parameters


def expected_raw(rot90=1, fliplr=False, gain=1.0):
    data = np.rot90(IMAGE, rot90) * gain
    return np.fliplr(data) if fliplr else data


def test_results(ctx):
    (_, shot), (_, ref) = metropc.run(ctx, [event(1), event(2, shutter=0)])
    np.testing.assert_array_equal(shot["KEPLER1/rawData"], expected_raw())
    np.testing.assert_array_equal(shot["VISAR_1w/rawData"], expected_raw(0, True))
    np.testing.assert_array_equal(shot["SOP/rawData"], expected_raw(gain=2.0))
    assert shot["shutterOpen"] is True
    assert shot["KEPLER1/trainId"] == 1
    assert shot["KEPLER1/sweepTime"] == 50 and shot["SOP/sweepTime"] == 20
    assert shot["KEPLER1/info"] == "shot 1 etalon 20.0"        # subclass override
    assert shot["SOP/info"] == "<b>SOP</b> shot 1"              # base, with self
    assert "VISAR_1w/info" not in shot  # its arm's etalonThickness is not in the event
    profile = expected_raw().sum(axis=0)
    np.testing.assert_array_equal(shot["KEPLER1/shot"].values, profile)
    np.testing.assert_allclose(shot["KEPLER1/shot"].time, np.arange(len(profile)) * 5.0)
    assert "KEPLER1/reference" not in shot and "KEPLER1/referenceData" not in shot
    # a train with the shutter closed: the reference branch runs instead
    assert "shutterOpen" not in ref and "KEPLER1/trainId" not in ref
    np.testing.assert_array_equal(ref["SOP/reference"].values,
                                  expected_raw(gain=2.0).sum(axis=0))
    assert "SOP/shot" not in ref
    assert ctx.namespace["kepler1"].calls == 2  # instance state from a kernel


def test_group_parameters_change_at_runtime(ctx):
    stream = metropc.run(ctx, [event(1), event(2)])
    next(stream)
    assert ctx.update_parameters({"kepler1.fliplr": True, "sop.gain": 0.5}) == []
    assert ctx.namespace["kepler1"].fliplr is True
    assert ctx.parameters["kepler1.fliplr"] is True
    _, res = next(stream)
    np.testing.assert_array_equal(res["KEPLER1/rawData"], expected_raw(fliplr=True))
    np.testing.assert_array_equal(res["SOP/rawData"], expected_raw(gain=0.5))


def test_group_parameters_from_constructor_and_to_dict(ctx):
    other = Context(GROUP_SRC, parameters={"kepler1.rot90": 2, "open_status": 1})
    assert other.namespace["kepler1"].rot90 == 2
    assert other.parameters["kepler1.rot90"] == 2
    ((_, res),) = metropc.run(other, [event(1, shutter=1)])
    np.testing.assert_array_equal(res["KEPLER1/rawData"], expected_raw(rot90=2))
    ctx.update_parameters({"visar1w.rot90": 3})
    rebuilt = Context.from_dict(ctx.to_dict())
    assert rebuilt.namespace["visar1w"].rot90 == 3
    assert rebuilt.parameters == ctx.parameters


def test_prototype_outside_group_and_return_value():
    ctx = Context(textwrap.dedent("""
        gain = 10

        @ViewPrototype.Scalar(name='channel{n}')
        def channel(v: 'karabo#ADC/A/B:out[ch{n}.value]'):
            return v * gain + n   # the call's fields are bare names, as in groups

        made = [channel(n=n) for n in (1, 2)]
    """))
    assert [v.name for v in ctx.namespace["made"]] == ["channel1", "channel2"]
    assert ctx.namespace["made"][0] is ctx.views["channel1"]
    ((_, res),) = metropc.run(ctx, [{"karabo#ADC/A/B:out[ch1.value]": 1,
                                    "karabo#ADC/A/B:out[ch2.value]": 2}])
    assert res == {"channel1": 11, "channel2": 22}


def test_stacked_decorators_make_two_views():
    ctx = Context(textwrap.dedent("""
        class G(ViewGroup):
            @View.Scalar(name='{prefix}a')
            @View.Vector(name='{prefix}b')
            def both(t: 'internal#train_id'):
                return t

        g = G(prefix='x/')
    """))
    assert ctx.views["x/a"].output is ViewOutput.SCALAR
    assert ctx.views["x/b"].output is ViewOutput.VECTOR


def test_postponed_annotations_in_group():
    ctx = Context(textwrap.dedent("""
        from __future__ import annotations

        class G(ViewGroup):
            scale: Parameter = 3

            @View.Scalar(name='{prefix}v')
            def v(self, t: 'internal#train_id'):
                return t * self.scale

        g = G(prefix='p_')
    """))
    assert ctx.parameters == {"g.scale": 3}
    ((_, res),) = metropc.run(ctx, [{"internal#train_id": 2}])
    assert res == {"p_v": 6}


def test_unbound_group_has_views_but_no_parameters():
    ctx = Context(textwrap.dedent("""
        class G(ViewGroup):
            scale: Parameter = 3

            @View.Scalar(name='{prefix}v')
            def v(self, t: 'internal#train_id'):
                return t * self.scale

        groups = [G(prefix=f'g{i}/') for i in range(2)]
    """))
    assert set(ctx.views) == {"g0/v", "g1/v"}
    assert ctx.parameters == {}


def test_group_errors_name_lines():
    with pytest.raises(ViewDefError) as info:
        Context(textwrap.dedent("""
            class G(ViewGroup):
                @View.Scalar(name='{prefix}{missing}')
                def v(t: 'internal#train_id'):
                    return t

            g = G(prefix='a/')
        """), path="ctx.py")
    assert str(info.value).startswith("ctx.py:3: ") and "'missing'" in str(info.value)
    with pytest.raises(ViewDefError, match="path template") as info:
        Context(textwrap.dedent("""
            class G(ViewGroup):
                @View.Scalar(name='{prefix}v')
                def v(t: '{device}.value'):
                    return t

            g = G(prefix='a/')
        """), path="ctx.py")
    assert info.value.lineno == 3
    with pytest.raises(ContextError, match="keyword arguments only"):
        Context("class G(ViewGroup):\n    pass\n\ng = G('x')\n")
    # two instances with the same prefix collide
    with pytest.raises(ViewDefError, match="already defined"):
        Context(textwrap.dedent("""
            class G(ViewGroup):
                @View.Scalar(name='{prefix}v')
                def v(t: 'internal#train_id'):
                    return t

            a = G(prefix='same/')
            b = G(prefix='same/')
        """))


# -- group fields as bare names in kernels (issue 14) --------------------------------------

BARE_SRC = """
from metropc.viewdef import Parameter

parameters(scale=2)


def helper(t):
    return t * 10


class Camera(ViewGroup):
    rot90: Parameter = 1

    def __init__(self, *, prefix='KEPLER1', **kwargs):
        super().__init__(prefix=f'{prefix}/', **kwargs)
        self._proto(kind='shot')

    @View.Scalar(name='{prefix}info')
    def info(self, t: 'internal#train_id'):
        # published contexts compare the bare prefix (HED's VISAR context)
        if prefix == 'KEPLER1/':
            return ('kepler', prefix, rot90, detector, scale, helper(t))
        return ('other', prefix, rot90, detector, scale, helper(t))

    @View.Scalar(name='{prefix}noself')
    def noself(t: 'internal#train_id'):
        return [prefix + str(i) for i in range(2)]  # comprehensions see them too

    @ViewPrototype.Scalar(name='{prefix}{kind}')
    def _proto(self, t: 'internal#train_id'):
        return f'{prefix}{kind}:{rot90}'


kepler1 = Camera(detector='CAM_1')
kepler2 = Camera(prefix='KEPLER2', detector='CAM_2', rot90=-1)
"""


def test_group_fields_are_bare_names_in_kernels_with_each_instance_values():
    ctx = Context(BARE_SRC)
    ((_, out),) = metropc.run(ctx, [{"internal#train_id": 3}])
    assert out["KEPLER1/info"] == ("kepler", "KEPLER1/", 1, "CAM_1", 2, 30)
    assert out["KEPLER2/info"] == ("other", "KEPLER2/", -1, "CAM_2", 2, 30)
    assert out["KEPLER1/noself"] == ["KEPLER1/0", "KEPLER1/1"]
    assert out["KEPLER2/noself"] == ["KEPLER2/0", "KEPLER2/1"]
    assert out["KEPLER1/shot"] == "KEPLER1/shot:1"
    assert out["KEPLER2/shot"] == "KEPLER2/shot:-1"


def test_bare_group_parameters_are_live_after_a_change():
    ctx = Context(BARE_SRC)
    assert ctx.update_parameters({"kepler2.rot90": 3, "scale": 5}) == []
    ((_, out),) = metropc.run(ctx, [{"internal#train_id": 1}])
    assert out["KEPLER1/info"] == ("kepler", "KEPLER1/", 1, "CAM_1", 5, 10)
    assert out["KEPLER2/info"] == ("other", "KEPLER2/", 3, "CAM_2", 5, 10)
    assert out["KEPLER2/shot"] == "KEPLER2/shot:3"
    # the module's own globals are untouched: no 'prefix' leaked there
    assert "prefix" not in ctx.namespace and "rot90" not in ctx.namespace


def test_bare_group_fields_survive_to_dict_in_another_stage():
    ctx = Context(BARE_SRC, parameters={"kepler1.rot90": 2})
    rebuilt = Context.from_dict(ctx.to_dict())
    ((_, out),) = metropc.run(rebuilt, [{"internal#train_id": 1}])
    assert out["KEPLER1/info"][2] == 2 and out["KEPLER2/info"][2] == -1


def test_unknown_bare_name_in_group_kernel_is_a_name_error_with_its_line():
    src = BARE_SRC.replace("return [prefix + str(i)", "return [prefx + str(i)")
    ctx = Context(src, path="bare.py")
    reports = []
    from metropc.engine import Engine, ErrorReporter
    engine = Engine(ctx, ErrorReporter(sink=reports.append))
    engine.process({"internal#train_id": 1})
    assert engine.errors["KEPLER1/noself"] == 1
    line = src.splitlines().index(
        "        return [prefx + str(i) for i in range(2)]  # comprehensions see them too") + 1
    assert any(r.lineno == line and "NameError" in str(r) and "prefx" in str(r)
               for r in reports)

"""Path types, their grammar, and how a context resolves its kernels' paths."""

import operator
import pickle
import re
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest

import metropc
from metropc.core import Context
from metropc.core import Path as MetroPath
from metropc.enums import ContextStage
from metropc.error import PathResolutionError
from metropc.euxfel import KaraboPath
from metropc.path import InternalPath, Path, ViewPath, path_types, split_type


@pytest.fixture
def registry():
    """Restore the global path type registry after a test registers types."""
    saved = dict(Path._types)
    yield
    Path._types.clear()
    Path._types.update(saved)


def make(source, **kwargs):
    return Context(textwrap.dedent(source), **kwargs)


def test_split_type():
    assert split_type("view#roi") == ("view", "roi")
    assert split_type("karabo#A/B/C:out[x.y]") == ("karabo", "A/B/C:out[x.y]")
    assert split_type("A/B/C.x") == (None, "A/B/C.x")
    assert split_type("#nothing") == (None, "#nothing")


def test_builtin_types_registered():
    types = path_types()
    assert types["view"] is ViewPath
    assert types["internal"] is InternalPath
    assert types["karabo"] is KaraboPath
    assert MetroPath is Path  # metropc.core.Path, as EXtra-foam imports it


def test_base_path_accepts_any_full_path():
    p = Path("whatever#some.thing[0]")
    assert str(p) == "whatever#some.thing[0]"
    assert (p.type, p.body) == ("whatever", "some.thing[0]")
    with pytest.raises(ValueError):
        Path("no type here")
    with pytest.raises(ValueError):
        Path("empty#")


def test_view_path():
    p = ViewPath("view#KEPLER1/rawData")
    assert p.view_name == "KEPLER1/rawData"
    assert str(ViewPath("roi")) == "view#roi"  # alias added when missing


@pytest.mark.parametrize("name", ["train_id", "event_id", "sequence_id", "ctx_version",
                                  "pulse_count"])
def test_internal_paths(name):
    p = InternalPath(f"internal#{name}")
    assert p.name == name and str(p) == f"internal#{name}"
    assert p.extract({name: 5}) == 5


@pytest.mark.parametrize("bad", ["internal#train id", "internal#1st", "internal#a.b"])
def test_internal_path_rejects_non_identifiers(bad):
    with pytest.raises(ValueError, match="identifiers"):
        InternalPath(bad)


@pytest.mark.parametrize("text, full, source, key, fast, aggregator", [
    # control (slow) data
    ("karabo#SA1_XTD2_XGM/XGM/DOOCS.pulseEnergy.photonFlux",
     "karabo#SA1_XTD2_XGM/XGM/DOOCS.pulseEnergy.photonFlux",
     "SA1_XTD2_XGM/XGM/DOOCS", "pulseEnergy.photonFlux", False, None),
    ("APP_DIPOLE/MDL/DIPOLE_DIAGNOSTIC.energy2W",
     "karabo#APP_DIPOLE/MDL/DIPOLE_DIAGNOSTIC.energy2W",
     "APP_DIPOLE/MDL/DIPOLE_DIAGNOSTIC", "energy2W", False, None),
    # pipeline (fast) data, bracket form
    ("karabo#HED_CAM/CAM/KEPLER_1:daqOutput[data.image.pixels]",
     "karabo#HED_CAM/CAM/KEPLER_1:daqOutput[data.image.pixels]",
     "HED_CAM/CAM/KEPLER_1:daqOutput", "data.image.pixels", True, None),
    # channel names may contain dots in the bracket form (FastADC)
    ("karabo#MID_EXP_FASTADC/ADC/DESTEST:channel_1.output[data.peaks]",
     "karabo#MID_EXP_FASTADC/ADC/DESTEST:channel_1.output[data.peaks]",
     "MID_EXP_FASTADC/ADC/DESTEST:channel_1.output", "data.peaks", True, None),
    # older dotted form, normalised to brackets
    ("SQS_ILH_LAS/SPEC/SRC:output.data.spectrum",
     "karabo#SQS_ILH_LAS/SPEC/SRC:output[data.spectrum]",
     "SQS_ILH_LAS/SPEC/SRC:output", "data.spectrum", True, None),
    # DAQ aggregator suffix: kept aside, not part of the key
    ("HED_CAM/CAM/KEPLER_1:daqOutput[data.image.pixels]@HED_DAQ_DATA/DA/4:output",
     "karabo#HED_CAM/CAM/KEPLER_1:daqOutput[data.image.pixels]",
     "HED_CAM/CAM/KEPLER_1:daqOutput", "data.image.pixels", True, "HED_DAQ_DATA/DA/4:output"),
])
def test_karabo_grammar(text, full, source, key, fast, aggregator):
    p = KaraboPath(text)
    assert str(p) == full
    assert (p.source, p.key, p.fast, p.aggregator) == (source, key, fast, aggregator)
    assert p.device == source.split(":")[0]
    assert KaraboPath.accepts_bare(split_type(text)[1])
    # extraction from Karabo bridge data: data[source][key]
    assert p.extract({source: {key: 42}}) == 42
    # normalised form parses to itself
    assert str(KaraboPath(full)) == full


@pytest.mark.parametrize("bad", ["DEVICE_ONLY", "A/B/C:channel", "A/B/C:out[]",
                                 "A/B/C:out[a][b]", "A/B/C:out[a b]", "with space.x"])
def test_karabo_rejects(bad):
    assert not KaraboPath.accepts_bare(bad)
    with pytest.raises(ValueError, match="not a Karabo path"):
        KaraboPath(f"karabo#{bad}")


def test_path_identity_and_pickle():
    a = KaraboPath("SQS_ILH_LAS/SPEC/SRC:output.data.spectrum")
    b = KaraboPath("karabo#SQS_ILH_LAS/SPEC/SRC:output[data.spectrum]")
    assert a == b and hash(a) == hash(b)
    assert a == "karabo#SQS_ILH_LAS/SPEC/SRC:output[data.spectrum]"
    assert {a: 1}[b] == 1
    c = pickle.loads(pickle.dumps(a))
    assert type(c) is KaraboPath and c == a and c.source == a.source
    assert repr(a) == "KaraboPath('karabo#SQS_ILH_LAS/SPEC/SRC:output[data.spectrum]')"


# -- a frontend's own path type, as EXtra-foam defines it --------------------------------

def define_foam_path():
    seen = []

    class FoamPath(MetroPath, alias="foam"):
        foam_re = re.compile(r"^foam#(\w+\.?)*\w+$")

        def parse(self, path):
            seen.append(path)  # parse gets the FULL path
            if not self.foam_re.match(path):
                raise ValueError("Malformed extra-foam path")
            return super().parse(path)

        def extract(self, data):
            return operator.attrgetter(self.strip_type(self._full_path))(data)

    return FoamPath, seen


def test_custom_path_type(registry):
    FoamPath, seen = define_foam_path()
    assert path_types()["foam"] is FoamPath
    ctx = make("""
        @View.Image
        def train_image(masked: "foam#image.masked_mean"):
            return masked

        @View.Scalar
        def xgm(data: "foam#pulse.xgm.intensity", tid: "internal#train_id"):
            return data[0]
    """, features=["karabo"])
    assert "foam#image.masked_mean" in seen and "foam#pulse.xgm.intensity" in seen
    foam_paths = [p for p in ctx.get_paths() if isinstance(p, FoamPath)]
    assert [str(p) for p in foam_paths] == ["foam#image.masked_mean",
                                            "foam#pulse.xgm.intensity"]
    # the frontend extracts each path's value from its own data object
    processed = SimpleNamespace(image=SimpleNamespace(masked_mean=np.ones((2, 2))),
                                pulse=SimpleNamespace(xgm=SimpleNamespace(intensity=[7.0])))
    event = {str(p): p.extract(processed) for p in foam_paths}
    event["internal#train_id"] = 1
    ((_, res),) = metropc.run(ctx, [event])
    assert res["xgm"] == 7.0 and res["train_image"].shape == (2, 2)


def test_custom_path_type_errors_name_view_and_line(registry):
    define_foam_path()
    with pytest.raises(PathResolutionError) as info:
        make("""
            x = 1
            @View.Scalar
            def bad(v: "foam#image..mean"):
                return v
        """, path="ctx.py")
    err = info.value
    assert str(err).startswith("ctx.py:3: ") and "Malformed extra-foam path" in str(err)
    assert err.view.name == "bad" and err.view.kernel.__code__.co_firstlineno == 3  # the decorator line


def test_unknown_path_type_in_frontend_is_error():
    src = """
        @View.Scalar
        def a(v: "elsewhere#some.value"):
            return v
    """
    with pytest.raises(PathResolutionError) as info:
        make(src, path="ctx.py")
    assert "unknown path type 'elsewhere#'" in str(info.value)
    assert "karabo" in str(info.value)  # lists the known types
    # other stages take it as an opaque key: the frontend already validated it
    for stage in (ContextStage.POOL, ContextStage.REDUCE):
        ctx = make(src, stage=stage)
        (path,) = ctx.get_paths()
        assert type(path) is Path and str(path) == "elsewhere#some.value"
        ((_, res),) = metropc.run(ctx, [{"elsewhere#some.value": 3}])
        assert res == {"a": 3}


# -- resolution of unprefixed paths ----------------------------------------------------------

def test_unprefixed_view_name_first():
    ctx = make("""
        @View.Compute(name='CAM/A/B.sum')
        def looks_like_karabo(t: 'internal#train_id'):
            return t

        @View.Scalar
        def user(v: 'CAM/A/B.sum', k: 'CAM/A/C.sum'):
            return (v, k)
    """)
    args = ctx.views["user"].args
    assert type(args[0].path) is ViewPath and str(args[0].path) == "view#CAM/A/B.sum"
    assert type(args[1].path) is KaraboPath and str(args[1].path) == "karabo#CAM/A/C.sum"
    ((_, res),) = metropc.run(ctx, [{"internal#train_id": 1, "karabo#CAM/A/C.sum": 2}])
    assert res["user"] == (1, 2)


def test_unprefixed_custom_type_with_accepts_bare(registry):
    class EpicsPath(Path, alias="epics"):
        @classmethod
        def accepts_bare(cls, body):
            return body.startswith("PV:")

    ctx = make("""
        @View.Scalar
        def a(v: 'PV:BEAM:CURRENT'):
            return v
    """)
    (path,) = ctx.get_paths()
    assert type(path) is EpicsPath and str(path) == "epics#PV:BEAM:CURRENT"


def test_unresolvable_unprefixed_path():
    with pytest.raises(PathResolutionError) as info:
        make("""
            @View.Compute
            def input_a(t: 'internal#train_id'):
                return t

            @View.Scalar
            def a(v: 'input_A'):
                return v
        """, path="ctx.py")
    msg = str(info.value)
    assert msg.startswith("ctx.py:6: ")
    assert "'input_A', which is neither a view nor a path of a known type" in msg
    assert "did you mean the view 'input_a'?" in msg


def test_missing_view_reference():
    with pytest.raises(PathResolutionError) as info:
        make("""
            @View.Compute
            def roi(t: 'internal#train_id'):
                return t

            @View.Scalar
            def roi_sum(r: 'view#rio'):
                return r
        """, path="ctx.py")
    assert str(info.value) == ("ctx.py:6: view 'roi_sum' needs 'view#rio' which no view "
                               "provides; did you mean 'view#roi'?")


def test_invalid_typed_path_is_resolution_error():
    with pytest.raises(PathResolutionError, match="not a Karabo path") as info:
        make("@View.Scalar\ndef a(v: 'karabo#JUST_A_DEVICE'):\n    return v\n")
    assert info.value.view.name == "a"

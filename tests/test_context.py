"""The Context and the context language: globals, decorators, keywords,
kernel arguments, parameters, stage rules and transfer between stages."""

import inspect
import textwrap

import numpy as np
import pytest
import xarray as xr

import metropc
from metropc.core import Context, View
from metropc.enums import ContextStage, ViewOutput, ViewStage
from metropc.error import ContextError, PathResolutionError, ViewDefError
from metropc.euxfel import KaraboPath
from metropc.path import InternalPath, Path, ViewPath
from metropc.viewdef import ViewDecorator


def make(source, **kwargs):
    return Context(textwrap.dedent(source), **kwargs)


def run_one(ctx, event):
    ((_, results),) = list(metropc.run(ctx, [event]))
    return results


def tid(n, **more):
    return {"internal#train_id": n, **more}


# -- EXtra-foam style view implementations (importable, so they pickle) -------

class AnnotatedView(View, abstract=True):
    def __init__(self, *args, annotations=None, aspect_unlocked=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.annotations = annotations
        self.aspect_unlocked = aspect_unlocked


class ImageWithROIsView(AnnotatedView, output=ViewOutput.IMAGE):
    def __init__(self, *args, rois=None, **kwargs):
        super().__init__(*args, annotations=rois, **kwargs)
        self.rois = rois


class VectorWithROIsView(AnnotatedView, output=ViewOutput.VECTOR):
    def __init__(self, *args, rois=None, **kwargs):
        super().__init__(*args, annotations=rois, **kwargs)
        self.rois = rois


class ScaledView(View):
    """A user implementation with its own keyword (``factor=``)."""

    def __init__(self, *args, factor=1, **kwargs):
        super().__init__(*args, **kwargs)
        self.factor = factor

    def process(self, data):
        return data * self.factor


class RunningSum(View, stage=ViewStage.REDUCE):
    """A stateful implementation: belongs in REDUCE by its class keyword."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.total = 0

    def process(self, data):
        self.total += data
        return self.total


@pytest.fixture
def symbols(monkeypatch):
    """Register test symbols; monkeypatch restores the global table."""
    table = ViewDecorator.kwargs_symbols

    def register(**entries):
        for name, kwargs in entries.items():
            monkeypatch.setitem(table, name, kwargs)

    return register


# -- constructor and attributes ---------------------------------------------------

def test_constructor_signature():
    sig = inspect.signature(Context)
    params = list(sig.parameters.values())
    assert [p.name for p in params] == [
        "source", "path", "stage", "version", "parameters", "features",
        "event_alias", "event_id_alias", "event_counter_alias"]
    defaults = {p.name: p.default for p in params[1:]}
    assert defaults == {"path": "<ctx>", "stage": ContextStage.FRONTEND, "version": 0,
                        "parameters": None, "features": [], "event_alias": "event",
                        "event_id_alias": None, "event_counter_alias": None}


def test_attributes():
    ctx = make("""
        @View.Scalar
        def scalar(tid: "internal#train_id"):
            return tid

        @View.Image(name='cam')
        def camera(img: 'karabo#SPB_CAM/CAM/ONE:daqOutput[data.image.pixels]'):
            return img
    """, version=7, features=["karabo"], event_alias="train")
    assert ctx.version == 7
    assert ctx.stage is ContextStage.FRONTEND
    assert ctx.path == "<ctx>"
    assert ctx.features == ["karabo"]
    assert ctx.event_alias == "train"
    assert set(ctx.views) == {"scalar", "cam"}
    view = ctx.views["scalar"]
    assert view.name == "scalar"
    assert view.output is ViewOutput.SCALAR
    assert view.stage is ViewStage.POOL
    assert view.kernel.__name__ == "scalar"
    assert view.kernel(tid=3) == 3
    assert ctx.views["cam"].output == ViewOutput.IMAGE
    assert ctx.views["cam"].kernel.__name__ == "camera"
    assert ctx.parameters == {}


def test_empty_context_is_valid():
    ctx = Context("")
    assert ctx.views == {}
    assert ctx.get_paths() == []
    assert list(metropc.run(ctx, [tid(1)])) == [(1, {})]


def test_get_paths_gives_path_objects():
    ctx = make("""
        @View.Scalar
        def a(t: 'internal#train_id', x: 'karabo#DEV/A/B.value'):
            return x

        @View.Scalar
        def b(t: 'internal#train_id', y: 'DEV/A/B:output.data.trace', a: 'a'):
            return y
    """)
    paths = ctx.get_paths()
    assert all(isinstance(p, Path) for p in paths)
    assert [str(p) for p in paths] == [
        "internal#train_id", "karabo#DEV/A/B.value",
        "karabo#DEV/A/B:output[data.trace]", "view#a"]
    assert [type(p) for p in paths] == [InternalPath, KaraboPath, KaraboPath, ViewPath]
    karabo = [p for p in paths if isinstance(p, KaraboPath)]
    assert [p.source for p in karabo] == ["DEV/A/B", "DEV/A/B:output"]


def test_to_dict_from_dict_rebuilds_in_another_stage():
    src = """
        parameters(scale=2, offset=1.5)

        @View.Scalar(name='scaled')
        def f(x: 'karabo#DEV/X/Y.value'):
            return x * scale + offset

        @View.Vector(hidden=True)
        def g(v: 'scaled'):
            return np.full(3, v)
    """
    ctx = make(src, version=3, parameters={"offset": 0.5}, features=["karabo"],
               event_alias="train", event_id_alias="train_id")
    ctx.update_parameters({"scale": 10})
    data = ctx.to_dict()
    assert data["source"] == textwrap.dedent(src)
    rebuilt = Context.from_dict(data, stage=ContextStage.REDUCE)
    assert rebuilt.stage is ContextStage.REDUCE
    assert rebuilt.version == 3
    assert rebuilt.features == ["karabo"]
    assert rebuilt.event_alias == "train"
    assert rebuilt.event_id_alias == "train_id"
    assert rebuilt.parameters == ctx.parameters == {"scale": 10, "offset": 0.5}
    assert list(rebuilt.views) == list(ctx.views)
    for name, view in ctx.views.items():
        other = rebuilt.views[name]
        assert (other.output, other.stage, other.hidden) == (view.output, view.stage, view.hidden)
    assert [str(p) for p in rebuilt.get_paths()] == [str(p) for p in ctx.get_paths()]
    event = {"karabo#DEV/X/Y.value": 2.0}
    assert run_one(rebuilt, dict(event))["scaled"] == run_one(ctx, dict(event))["scaled"] == 20.5
    # default stage of from_dict is POOL
    assert Context.from_dict(data).stage is ContextStage.POOL


def test_to_dict_is_picklable_with_context_defined_parameter_types():
    # Declared values are rebuilt from the source, so an instance of a class
    # defined in the context does not have to travel (it could not be pickled).
    import pickle

    ctx = make("""
        from dataclasses import dataclass

        @dataclass
        class ROI:
            x: int = 0
            width: int = 4

        parameters(roi=ROI(1, 2), n=3)
    """)
    data = pickle.loads(pickle.dumps(ctx.to_dict()))
    assert data["parameters"] == {}
    rebuilt = Context.from_dict(data)
    assert (rebuilt.parameters["roi"].x, rebuilt.parameters["roi"].width) == (1, 2)
    ctx.update_parameters({"n": 5})
    assert Context.from_dict(ctx.to_dict()).parameters["n"] == 5


def test_from_file_names_file_in_errors(tmp_path):
    good = tmp_path / "good.py"
    good.write_text("@View.Scalar\ndef a(t: 'internal#train_id'):\n    return t\n")
    ctx = Context.from_file(good, version=2)
    assert ctx.path == str(good) and ctx.version == 2
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\n\n@View.Scalar\ndef a(t: 'nothing_here'):\n    return t\n")
    with pytest.raises(PathResolutionError) as info:
        Context.from_file(bad)
    assert str(info.value).startswith(f"{bad}:3: ")


# -- injected globals and IDE imports -------------------------------------------------

INJECTED = ["ctx", "View", "ViewGroup", "ViewPrototype", "Parameter", "parameters",
            "require_feature", "require_version", "set_view_docs",
            "increase_view_counts", "np", "xr"]


def test_injected_globals():
    ctx = make(f"""
        seen = {{name: name in globals() for name in {INJECTED!r}}}
        assert ctx.views == {{}}
        assert np.arange(3).sum() == 3
        assert isinstance(xr.DataArray([1]), xr.DataArray)
    """)
    assert ctx.namespace["seen"] == {name: True for name in INJECTED}
    ns = ctx.namespace
    assert ns["ctx"] is ctx
    assert ns["np"] is np and ns["xr"] is xr
    from metropc.viewdef import Parameter, ViewGroup, ViewPrototype
    assert ns["View"] is View and ns["ViewGroup"] is ViewGroup
    assert ns["ViewPrototype"] is ViewPrototype and ns["Parameter"] is Parameter


def test_context_methods_as_globals():
    ctx = make("""
        parameters(a=1)
        require_feature('karabo')
        require_version('0.0.1')
        set_view_docs('group/name', 'A label', 'What it is')
        increase_view_counts('counter', 3)
    """)
    assert ctx.parameters == {"a": 1}
    assert ctx.view_docs == {"group/name": ("A label", "What it is")}
    assert ctx.view_counts["counter"] == 3


def test_imports_for_ides_work_inside_context():
    ctx = make("""
        from metropc.context import ctx, View, ViewGroup, ViewPrototype, parameters
        from metropc.viewdef import Parameter, ViewDecorator

        parameters(factor=3)
        me = ctx

        class Group(ViewGroup):
            offset: Parameter = 1

            @View.Scalar(name='{prefix}value')
            def value(self, t: 'internal#train_id'):
                return t + self.offset

        grp = Group(prefix='g/')

        @View.Scalar
        def counted(t: 'internal#train_id'):
            ctx.increase_view_counts('extra', 2)   # runs after loading
            return t * factor
    """)
    assert ctx.namespace["me"] is ctx
    assert ctx.namespace["ctx"] is ctx  # rebound for kernels running later
    assert ctx.parameters == {"factor": 3, "grp.offset": 1}
    assert run_one(ctx, tid(5)) == {"g/value": 6, "counted": 15}
    assert ctx.view_counts["extra"] == 2


def test_importable_helpers_outside_context_raise():
    from metropc import context as importable
    with pytest.raises(RuntimeError, match="context code"):
        importable.parameters(a=1)
    with pytest.raises(RuntimeError):
        importable.ctx.views  # noqa: B018


def test_require_feature_and_version_errors_name_line():
    with pytest.raises(ContextError) as info:
        make("x = 1\nrequire_feature('karabo', 'foam')\n", path="ctx.py")
    assert str(info.value).startswith("ctx.py:2: ")
    assert "foam" in str(info.value) and "'karabo'" not in str(info.value)
    # a feature the frontend announced is available
    make("require_feature('foam')\n", features=["foam"])
    with pytest.raises(ContextError) as info:
        make("\n\nrequire_version('999.0')\n", path="ctx.py")
    assert str(info.value).startswith("ctx.py:3: ") and "999.0" in str(info.value)
    make(f"require_version({metropc.__version__!r})\n")


def test_context_files_are_read_as_python_reads_source(tmp_path):
    from metropc.core import read_context_file
    latin = tmp_path / "latin.py"
    latin.write_bytes(b"# -*- coding: latin-1 -*-\nlabel = 'caf\xe9'\n")
    assert read_context_file(latin).endswith("label = 'café'\n")
    saved = tmp_path / "saved.py"
    saved.write_bytes(b"x = 1\n\n# caf\xe9\n")
    with pytest.raises(ContextError) as info:
        Context.from_file(saved)
    assert str(info.value) == (f"{saved}:3: not utf-8 text: byte 0xe9 at column 6; "
                               "save the file as UTF-8")


def test_contexts_written_for_the_original_metropc_load():
    """Version 2 continues the original's numbering (docs/contexts.md,
    Versions): its contexts' version checks pass, and scipy, which the
    original ran with, is there for their kernels."""
    ctx = make("""
        require_version('1.4.1')
        from scipy.interpolate import interp1d

        @View.Vector
        def resampled(t: 'internal#train_id'):
            f = interp1d([0.0, 1.0, 2.0], [0.0, 10.0 * t, 40.0])
            return f([0.5, 1.5])
    """)
    np.testing.assert_allclose(run_one(ctx, tid(2))["resampled"], [10.0, 30.0])
    with pytest.raises(ContextError, match=r"requires metropc >= 3\.0"):
        make("require_version('3.0')\n")


def test_set_view_docs_on_real_view():
    ctx = make("""
        @View.Scalar
        def a(t: 'internal#train_id'):
            '''Docstring of a.'''
            return t
        set_view_docs('a', 'Train ID')
    """)
    assert ctx.views["a"].label == "Train ID"
    assert ctx.views["a"].doc == "Docstring of a."


# -- parameters ---------------------------------------------------------------------------

PARAM_SRC = """
    parameters(threshold=10, gain=2.0)

    @View.Scalar
    def above(x: 'karabo#DEV/A/B.value'):
        if x > threshold:
            return x * gain
"""


def test_parameters_become_globals():
    ctx = make(PARAM_SRC)
    assert ctx.parameters == {"threshold": 10, "gain": 2.0}
    assert ctx.namespace["threshold"] == 10
    out = [r.get("above") for _, r in metropc.run(
        ctx, [{"karabo#DEV/A/B.value": v} for v in (5, 11, 20)])]
    assert out == [None, 22.0, 40.0]


def test_constructor_parameters_override_declarations():
    ctx = make(PARAM_SRC, parameters={"threshold": 4})
    assert ctx.parameters == {"threshold": 4, "gain": 2.0}
    assert run_one(ctx, {"karabo#DEV/A/B.value": 5}) == {"above": 10.0}


def test_runtime_update_seen_by_next_event():
    ctx = make(PARAM_SRC)
    events = iter([{"karabo#DEV/A/B.value": 12}, {"karabo#DEV/A/B.value": 12},
                   {"karabo#DEV/A/B.value": 12}])
    stream = metropc.run(ctx, events)
    assert next(stream)[1] == {"above": 24.0}
    assert ctx.update_parameters({"gain": 0.5}) == []
    assert next(stream)[1] == {"above": 6.0}
    assert ctx.update_parameters({"threshold": 100, "nope": 1}) == ["nope"]
    assert ctx.parameters == {"threshold": 100, "gain": 0.5}
    assert next(stream)[1] == {}


def test_run_parameters_keyword():
    # with source text
    out = list(metropc.run(textwrap.dedent(PARAM_SRC), [{"karabo#DEV/A/B.value": 3}],
                           parameters={"threshold": 0}))
    assert out[0][1] == {"above": 6.0}
    # with a Context: applied as a runtime update; unknown names are an error
    ctx = make(PARAM_SRC)
    out = list(metropc.run(ctx, [{"karabo#DEV/A/B.value": 3}], parameters={"gain": 3}))
    assert out[0][1] == {}
    assert ctx.parameters["gain"] == 3
    with pytest.raises(KeyError, match="nope"):
        list(metropc.run(ctx, [], parameters={"nope": 1}))


def test_parameter_values_may_be_objects():
    ctx = make("""
        from dataclasses import dataclass

        @dataclass
        class RectROI:
            x: int = 0
            y: int = 0
            width: int = 2
            height: int = 2

            def of(self, image):
                return image[self.y:self.y + self.height, self.x:self.x + self.width]

        parameters(roi=RectROI(x=1, y=1))

        @View.Scalar
        def roi_sum(image: 'karabo#CAM/A/B:output[data.image]'):
            return float(roi.of(image).sum())
    """)
    image = np.arange(16.0).reshape(4, 4)
    key = "karabo#CAM/A/B:output[data.image]"
    assert run_one(ctx, {key: image})["roi_sum"] == image[1:3, 1:3].sum()
    roi_type = type(ctx.parameters["roi"])
    ctx.update_parameters({"roi": roi_type(x=0, y=0, width=4, height=1)})
    assert run_one(ctx, {key: image})["roi_sum"] == image[0].sum()


# -- decorators --------------------------------------------------------------------------------

@pytest.mark.parametrize("attr, output", [
    ("Compute", ViewOutput.COMPUTE), ("Scalar", ViewOutput.SCALAR),
    ("Vector", ViewOutput.VECTOR), ("Matrix", ViewOutput.MATRIX),
    ("Image", ViewOutput.IMAGE), ("Points", ViewOutput.POINTS),
    ("Scalar_Fast", ViewOutput.SCALAR_FAST), ("Scalar_Slow", ViewOutput.SCALAR_SLOW),
    ("Vector_Line", ViewOutput.VECTOR_LINE),
    ("Vector_Distribution", ViewOutput.VECTOR_DISTRIBUTION),
    ("Points_Binned", ViewOutput.POINTS_BINNED),
    ("Points_Scatter", ViewOutput.POINTS_SCATTER),
])
@pytest.mark.parametrize("called", [False, True])
def test_output_attributes_bare_and_called(attr, output, called):
    deco = f"View.{attr}()" if called else f"View.{attr}"
    ctx = make(f"""
        @{deco}
        def v(t: 'internal#train_id'):
            return t
    """)
    view = ctx.views["v"]
    assert view.output is output
    assert run_one(ctx, tid(4)) == {"v": 4}


def test_decorator_returns_function_unchanged():
    ctx = make("""
        @View.Scalar(name='other')
        def helper(t: 'internal#train_id'):
            return t * 2

        direct = helper(21)
    """)
    assert ctx.namespace["direct"] == 42
    assert ctx.views["other"].kernel is ctx.namespace["helper"]


def test_unknown_output_and_symbol_are_errors():
    with pytest.raises(ContextError) as info:
        make("x = 1\n@View.Plot\ndef a(t: 'internal#train_id'):\n    return t\n", path="ctx.py")
    assert str(info.value).startswith("ctx.py:2: ") and "Plot" in str(info.value)
    with pytest.raises(ContextError) as info:
        make("@View.Scalar_Bogus\ndef a(t: 'internal#train_id'):\n    return t\n", path="ctx.py")
    assert str(info.value).startswith("ctx.py:1: ") and "Bogus" in str(info.value)
    # hints belong to their own generic type only
    with pytest.raises(ContextError, match="Line"):
        make("@View.Scalar_Line\ndef a(t: 'internal#train_id'):\n    return t\n")


def test_kwargs_symbols_registration(symbols):
    symbols(Scaled=dict(view_impl=ScaledView, factor=3))
    ctx = make("""
        @View.Scalar_Scaled
        def a(t: 'internal#train_id'):
            return t

        @View.Vector_Scaled(factor=10)
        def b(t: 'internal#train_id'):
            return np.array([t, t])

        @View.Scalar_Fast_Scaled
        def c(t: 'internal#train_id'):
            return t
    """)
    assert isinstance(ctx.views["a"], ScaledView)
    assert ctx.views["a"].factor == 3 and ctx.views["b"].factor == 10
    assert ctx.views["b"].output is ViewOutput.VECTOR
    assert ctx.views["c"].output is ViewOutput.SCALAR_FAST
    res = run_one(ctx, tid(2))
    assert res["a"] == 6 and res["c"] == 6
    np.testing.assert_array_equal(res["b"], [20, 20])


def test_extra_foam_style_view_classes(symbols):
    # EXtra-foam registers WithROIs for images, then again for vectors; the
    # output named in the attribute still decides the view's output.
    symbols(WithROIs=dict(view_impl=ImageWithROIsView))
    symbols(WithROIs=dict(view_impl=VectorWithROIsView),
            AspectUnlocked=dict(view_impl=ImageWithROIsView, aspect_unlocked=True))
    ctx = make("""
        parameters(jf_roi=(1, 3))

        @View.Image_WithROIs(rois=["jf_roi"])
        def JF(image: "karabo#FXE_DET/CAM/JF:output[data.image.pixels]"):
            return image[jf_roi[0]:jf_roi[1]]

        @View.Image_AspectUnlocked
        def wide(image: "karabo#FXE_DET/CAM/JF:output[data.image.pixels]"):
            return image
    """)
    view = ctx.views["JF"]
    assert isinstance(view, VectorWithROIsView)
    assert view.output == ViewOutput.IMAGE
    assert view.rois == ["jf_roi"] and view.annotations == ["jf_roi"]
    assert view.aspect_unlocked is False
    assert ctx.views["wide"].aspect_unlocked is True
    image = np.ones((5, 5))
    res = run_one(ctx, {"karabo#FXE_DET/CAM/JF:output[data.image.pixels]": image})
    assert res["JF"].shape == (2, 5) and res["wide"].shape == (5, 5)


def test_abstract_and_bad_view_impl_are_errors(symbols):
    symbols(Annotated=dict(view_impl=AnnotatedView))
    with pytest.raises(ViewDefError, match="abstract"):
        make("""
            @View.Image_Annotated
            def a(t: 'internal#train_id'):
                return t
        """)
    with pytest.raises(ViewDefError, match="not a View subclass"):
        make("""
            @View.Image(view_impl=dict)
            def a(t: 'internal#train_id'):
                return t
        """)


def test_custom_view_class_defined_in_context():
    ctx = make("""
        from metropc import ViewOutput
        from metropc.core import View as BaseView

        class Tagged(BaseView, abstract=True):
            def __init__(self, *args, tag=None, **kwargs):
                super().__init__(*args, **kwargs)
                self.tag = tag

        class TaggedImage(Tagged, output=ViewOutput.IMAGE):
            pass

        @View.Image(view_impl=TaggedImage, tag='hello')
        def img(t: 'internal#train_id'):
            return np.zeros((2, 2))
    """)
    assert ctx.views["img"].tag == "hello"
    assert run_one(ctx, tid(1))["img"].shape == (2, 2)


# -- keywords -------------------------------------------------------------------------------

def test_keywords():
    ctx = make("""
        @View.Scalar(name='pretty/name', hidden=True, label='Nice', doc='Long text')
        def ugly(t: 'internal#train_id'):
            '''ignored: doc= wins'''
            return t

        @View.Vector(rank=1)
        def vec(t: 'internal#train_id'):
            '''Kernel docstring.'''
            return np.arange(t)

        @View.Scalar(stage='reduce')
        def late(t: 'internal#train_id'):
            return t

        @View.Scalar(stage=__import__('metropc').ViewStage.REDUCE)
        def late2(t: 'internal#train_id'):
            return t
    """)
    v = ctx.views["pretty/name"]
    assert (v.name, v.hidden, v.label, v.doc) == ("pretty/name", True, "Nice", "Long text")
    assert ctx.views["vec"].rank == 1 and ctx.views["vec"].hidden is False
    assert ctx.views["vec"].doc == "Kernel docstring."
    assert ctx.views["late"].stage is ViewStage.REDUCE
    assert ctx.views["late2"].stage is ViewStage.REDUCE
    res = run_one(ctx, tid(3))
    assert res["pretty/name"] == 3 and res["late"] == 3
    np.testing.assert_array_equal(res["vec"], [0, 1, 2])


def test_unknown_keyword_names_the_line():
    src = "import math\n\n\n@View.Scalar(colour='red')\ndef a(t: 'internal#train_id'):\n    return t\n"
    with pytest.raises(ViewDefError) as info:
        Context(src, path="ctx.py")
    err = info.value
    assert err.lineno == 4 and err.path == "ctx.py"
    assert str(err).startswith("ctx.py:4: ")
    assert "colour" in str(err) and "'a'" in str(err)


def test_bad_stage_keyword():
    with pytest.raises(ViewDefError, match="unknown stage") as info:
        make("\n@View.Scalar(stage='sometimes')\ndef a(t: 'internal#train_id'):\n    return t\n")
    assert info.value.lineno == 2
    with pytest.raises(ViewDefError, match="not implemented"):
        make("@View.Scalar(stage='frontend')\ndef a(t: 'internal#train_id'):\n    return t\n")
    with pytest.raises(ViewDefError, match="async: its inputs are other views' results"):
        make("@View.Scalar(stage='async')\ndef a(t: 'internal#train_id'):\n    return t\n")
    with pytest.raises(ViewDefError, match="only async views can take async results"):
        make("@View.Scalar\ndef a(t: 'internal#train_id'):\n    return t\n"
             "@View.Scalar(stage='async')\ndef b(x: 'view#a'):\n    return x\n"
             "@View.Scalar(stage='reduce')\ndef c(y: 'view#b'):\n    return y\n")


def test_rank_checks_result_dimensions(caplog):
    ctx = make("""
        @View.Matrix(rank=2, name='basler1')
        def camera_view(img: 'karabo#SPB/CAM/BASLER:output[data.image]'):
            return img
    """)
    key = "karabo#SPB/CAM/BASLER:output[data.image]"
    assert run_one(ctx, {key: np.zeros((3, 3))})["basler1"].shape == (3, 3)
    assert run_one(ctx, {key: np.zeros(3)}) == {}
    assert "rank=2" in caplog.text and "1 dimension" in caplog.text


def test_same_function_name_for_several_views():
    ctx = make("""
        @View.Matrix(name='cam1')
        def camera_view(img: 'karabo#SPB/CAM/ONE:output[data.image]'):
            return img

        @View.Matrix(name='cam2')
        def camera_view(img: 'karabo#SPB/CAM/TWO:output[data.image]'):
            return img * 2
    """)
    assert set(ctx.views) == {"cam1", "cam2"}
    res = run_one(ctx, {"karabo#SPB/CAM/ONE:output[data.image]": np.ones((1, 1)),
                        "karabo#SPB/CAM/TWO:output[data.image]": np.ones((1, 1))})
    assert (res["cam1"][0, 0], res["cam2"][0, 0]) == (1, 2)


def test_duplicate_view_name_is_error():
    with pytest.raises(ViewDefError) as info:
        make("""
            @View.Scalar
            def a(t: 'internal#train_id'):
                return t

            @View.Scalar(name='a')
            def b(t: 'internal#train_id'):
                return t
        """, path="ctx.py")
    assert str(info.value).startswith("ctx.py:6: ")
    assert "'a' is already defined (line 2)" in str(info.value)


# -- kernel arguments and triggers ---------------------------------------------------------------

def test_required_input_missing_view_does_not_run():
    ctx = make("""
        @View.Scalar
        def needs_both(a: 'karabo#DEV/A/X.value', b: 'karabo#DEV/B/X.value'):
            return a + b

        @View.Scalar
        def no_inputs():
            return 1
    """)
    assert run_one(ctx, {"karabo#DEV/A/X.value": 1}) == {}
    assert run_one(ctx, {"karabo#DEV/A/X.value": 1, "karabo#DEV/B/X.value": 2}) == {
        "needs_both": 3}


def test_defaults_make_inputs_optional():
    ctx = make("""
        @View.Scalar
        def combined(a: 'karabo#DEV/A/X.value', b: 'karabo#DEV/B/X.value' = None,
                     scale=10):
            return a * scale if b is None else a + b
    """)
    view = ctx.views["combined"]
    assert [(a.name, a.optional) for a in view.args] == [("a", False), ("b", True)]
    assert run_one(ctx, {"karabo#DEV/A/X.value": 1}) == {"combined": 10}
    assert run_one(ctx, {"karabo#DEV/A/X.value": 1, "karabo#DEV/B/X.value": 2}) == {
        "combined": 3}
    assert run_one(ctx, {"karabo#DEV/B/X.value": 2}) == {}


def test_none_means_no_result_and_dependants_do_not_run():
    ctx = make("""
        @View.Scalar(name='gate')
        def gate(status: 'karabo#HUT/PPU/SHUTTER.status'):
            if int(status) == 34:
                return True

        @View.Scalar
        def gated(t: 'internal#train_id', _: 'view#gate'):
            return t

        @View.Scalar
        def ungated(t: 'internal#train_id', g: 'gate' = None):
            return -t if g is None else t
    """)
    out = list(metropc.run(ctx, [tid(1, **{"karabo#HUT/PPU/SHUTTER.status": 34}),
                                 tid(2, **{"karabo#HUT/PPU/SHUTTER.status": 0})]))
    assert out == [(1, {"gate": True, "gated": 1, "ungated": 1}),
                   (2, {"ungated": -2})]


def test_generators_give_list_of_non_none_values():
    ctx = make("""
        @View.Vector
        def pulses(trace: 'karabo#ADC/A/B:ch1.output[data.peaks]'):
            for value in trace:
                yield value if value > 0 else None

        @View.Scalar
        def count(p: 'pulses'):
            return len(p)
    """)
    key = "karabo#ADC/A/B:ch1.output[data.peaks]"
    assert run_one(ctx, {key: [1, -1, 2, 0, 3]}) == {"pulses": [1, 2, 3], "count": 3}
    # nothing yielded (or only None) is no result, and dependants do not run
    assert run_one(ctx, {key: [-1, 0]}) == {}


def test_tuple_results_pass_through():
    ctx = make("""
        @View.Points
        def xy(x: 'karabo#M/O/T.pos', y: 'karabo#D/I/O.value'):
            return x, y
    """)
    assert run_one(ctx, {"karabo#M/O/T.pos": 1.5, "karabo#D/I/O.value": 3}) == {
        "xy": (1.5, 3)}


def test_views_consume_views_by_path_and_bare_name():
    ctx = make("""
        @View.Compute
        def base(t: 'internal#train_id'):
            return t * 10

        @View.Scalar
        def by_path(b: 'view#base'):
            return b + 1

        @View.Scalar
        def by_name(b: 'base', p: 'by_path'):
            return b + p

        @View.Scalar(name='KEPLER1/value')
        def slashed(b: 'base'):
            return b

        @View.Scalar
        def by_slashed_name(v: 'KEPLER1/value'):
            return v
    """)
    assert ctx.views["by_name"].args[0].path == ViewPath("view#base")
    assert run_one(ctx, tid(2)) == {"base": 20, "by_path": 21, "by_name": 41,
                                    "KEPLER1/value": 20, "by_slashed_name": 20}


def test_views_defined_after_use_resolve():
    ctx = make("""
        @View.Scalar
        def later(x: 'first'):
            return x + 1

        @View.Compute
        def first(t: 'internal#train_id'):
            return t
    """)
    assert [v.name for v in ctx.order] == ["first", "later"]
    assert run_one(ctx, tid(1)) == {"first": 1, "later": 2}


def test_bad_kernel_signatures():
    cases = [
        ("def a(*values: 'internal#train_id'):\n    return 1\n", "cannot take \\*values"),
        ("def a(**kw):\n    return 1\n", "cannot take \\*kw"),
        ("def a(t):\n    return 1\n", "no path annotation"),
        ("def a(t: int):\n    return 1\n", "must be path strings"),
    ]
    for body, match in cases:
        with pytest.raises(ViewDefError, match=match) as info:
            Context("x = 1\n@View.Scalar\n" + body, path="ctx.py")
        assert str(info.value).startswith("ctx.py:")


def test_keyword_only_and_postponed_annotations():
    ctx = make("""
        from __future__ import annotations

        @View.Scalar
        def a(*, t: 'internal#train_id', n: 'karabo#D/E/V.n' = 2):
            return t * n
    """)
    assert ctx.views["a"].args[0].spec == "internal#train_id"
    assert run_one(ctx, tid(3)) == {"a": 6}


def test_kernel_returning_dataarray_keeps_coords():
    ctx = make("""
        @View.Vector
        def spectrum(y: 'karabo#SPEC/A/B:output[data.spectrum]'):
            return xr.DataArray(y, dims=['energy'],
                                coords={'energy': np.linspace(7000, 7100, len(y))})
    """)
    res = run_one(ctx, {"karabo#SPEC/A/B:output[data.spectrum]": np.arange(5.0)})
    assert isinstance(res["spectrum"], xr.DataArray)
    np.testing.assert_allclose(res["spectrum"].energy, [7000, 7025, 7050, 7075, 7100])


# -- stage rules -----------------------------------------------------------------------------------

def stages(ctx):
    return {name: view.stage for name, view in ctx.views.items()}


def test_stage_rules(symbols):
    symbols(RunningSum=dict(view_impl=RunningSum))
    ctx = make("""
        @View.Compute
        def raw(t: 'internal#train_id'):
            return t

        @View.Scalar_RunningSum
        def total(r: 'raw'):
            return r

        @View.Scalar
        def after_total(s: 'total'):
            return s * 2

        @View.Scalar
        def after_after(s: 'after_total', r: 'raw'):
            return s + r

        @View.Scalar(stage='reduce')
        def explicit_reduce(r: 'raw'):
            return r

        @View.Scalar
        def after_explicit(x: 'explicit_reduce'):
            return x

        @View.Scalar_Action
        def act(s: 'total'):
            return s

        @View.Scalar
        def after_act(a: 'act'):
            return a

        @View.Scalar(stage='step')
        def at_step(r: 'raw'):
            return r

        @View.Scalar
        def after_step(s: 'at_step'):
            return s
    """)
    assert stages(ctx) == {
        "raw": ViewStage.POOL, "total": ViewStage.REDUCE,
        "after_total": ViewStage.REDUCE, "after_after": ViewStage.REDUCE,
        "explicit_reduce": ViewStage.REDUCE, "after_explicit": ViewStage.REDUCE,
        "act": ViewStage.ACTION, "after_act": ViewStage.ACTION,
        "at_step": ViewStage.STEP, "after_step": ViewStage.STEP,
    }
    assert ctx.views_in(ViewStage.POOL) == [ctx.views["raw"]]
    out = list(metropc.run(ctx, [tid(1), tid(2)]))
    assert out[1][1] == {"raw": 2, "total": 3, "after_total": 6, "after_after": 8,
                         "explicit_reduce": 2, "after_explicit": 2}


def test_stage_conflict_is_error(symbols):
    symbols(RunningSum=dict(view_impl=RunningSum))
    with pytest.raises(ViewDefError) as info:
        make("""
            @View.Scalar_RunningSum
            def total(t: 'internal#train_id'):
                return t

            @View.Scalar(stage='pool')
            def early(s: 'total'):
                return s
        """, path="ctx.py")
    msg = str(info.value)
    assert msg.startswith("ctx.py:6: ")
    assert "stage=pool" in msg and "'total'" in msg and "reduce" in msg
    with pytest.raises(ViewDefError, match="mixes inputs of step and action"):
        make("""
            @View.Scalar_Action
            def act(t: 'internal#train_id'):
                return t

            @View.Scalar(stage='step')
            def stp(t: 'internal#train_id'):
                return t

            @View.Scalar
            def both(a: 'act', s: 'stp'):
                return a
        """)


def test_cycle_is_error():
    with pytest.raises(ViewDefError, match="cycle") as info:
        make("""
            @View.Scalar
            def a(x: 'b'):
                return x

            @View.Scalar
            def b(x: 'a'):
                return x
        """)
    assert "a -> b -> a" in str(info.value) or "b -> a -> b" in str(info.value)
    with pytest.raises(PathResolutionError, match="uses its own result"):
        make("@View.Scalar\ndef a(x: 'view#a'):\n    return x\n")


def test_builtin_symbols_and_stages():
    from metropc import builtin

    ctx = make("""
        @View.Vector_MovingAverage(N=20)
        def avg(v: 'karabo#SPEC/A/B:output[data.y]'):
            return v

        @View.Matrix_Histogram
        def hist(x: 'karabo#M/O/T.x', y: 'karabo#D/I/O.y'):
            return x, y

        @View.Scalar
        def after_avg(a: 'avg'):
            return float(a.mean())

        @View.Scalar_StepAverage
        def per_step(x: 'karabo#M/O/T.x'):
            return x

        @View.Scalar_Action
        def on_request(a: 'avg'):
            return a
    """)
    views = ctx.views
    assert isinstance(views["avg"], builtin.MovingAverageView) and views["avg"].N == 20
    assert views["avg"].output is ViewOutput.VECTOR
    assert isinstance(views["hist"], builtin.MatrixHistogramView)
    assert isinstance(views["per_step"], builtin.StepAverageView)
    assert stages(ctx) == {"avg": ViewStage.REDUCE, "hist": ViewStage.REDUCE,
                           "after_avg": ViewStage.REDUCE, "per_step": ViewStage.STEP,
                           "on_request": ViewStage.ACTION}

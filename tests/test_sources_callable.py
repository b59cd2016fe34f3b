"""Python callables as sources, spec parsing and the source registry."""

from __future__ import annotations

import sys
import textwrap
import threading

import pytest

import metropc
from metropc.error import SourceError
from metropc.sources import (
    _NAMED,
    _SCHEMES,
    Source,
    available_sources,
    open_source,
    parse_options,
    register_source,
)
from metropc.sources.base import normalize_paths, resolve_rate

pytestmark = pytest.mark.timeout(30)

INTERNAL = {"internal#train_id", "internal#event_id", "internal#sequence_id"}


@pytest.fixture(autouse=True)
def no_leftover_threads():
    before = set(threading.enumerate())
    yield
    assert set(threading.enumerate()) <= before


@pytest.fixture
def module_dir(tmp_path, monkeypatch):
    (tmp_path / "mpc_test_events.py").write_text(textwrap.dedent("""
        import metropc

        def numbered(n=3, paths=None):
            global seen_paths
            seen_paths = paths
            for i in range(n):
                yield {'karabo#DEV/A/B:out.data.x': i,  # dotted form
                       'karabo#DEV/A/B.pos': 10 * i}

        def with_ids():
            return [{'internal#train_id': 500, 'v': 1},
                    {'internal#event_id': 900},
                    {},
                    metropc.STEP,
                    {'internal#train_id': 7, 'internal#sequence_id': 2}]

        def broken():
            yield {'a': 1}
            raise RuntimeError('detector library crashed')

        def not_dicts():
            return [1, 2]

        def fails():
            raise OSError('no database')

        EVENTS = [{'x': 1}]
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("mpc_test_events", None)


def test_module_callable_with_options_and_paths(module_dir):
    wanted = ["karabo#DEV/A/B:out[data.x]"]
    with open_source("mpc_test_events:numbered", n=2, paths=wanted) as source:
        events = list(source)
    assert events == [
        {"karabo#DEV/A/B:out[data.x]": 0, "internal#train_id": 0,
         "internal#event_id": 0, "internal#sequence_id": -1},
        {"karabo#DEV/A/B:out[data.x]": 1, "internal#train_id": 1,
         "internal#event_id": 1, "internal#sequence_id": -1}]
    assert sys.modules["mpc_test_events"].seen_paths == wanted


def test_file_callable_all_paths(module_dir):
    spec = f"{module_dir / 'mpc_test_events.py'}:numbered"
    with open_source(spec) as source:
        events = list(source)
    assert len(events) == 3
    assert events[2]["karabo#DEV/A/B.pos"] == 20
    assert events[2]["karabo#DEV/A/B:out[data.x]"] == 2


def test_internal_ids_filled_and_steps_passed(module_dir):
    with open_source("python:mpc_test_events:with_ids") as source:
        items = list(source)
    assert items[3] is metropc.STEP
    events = [i for i in items if i is not metropc.STEP]
    assert [(e["internal#train_id"], e["internal#event_id"]) for e in events] == [
        (500, 500), (900, 900), (901, 901), (7, 7)]
    assert [e["internal#sequence_id"] for e in events] == [-1, -1, -1, 2]
    assert events[0]["v"] == 1


def test_plain_iterable_attribute(module_dir):
    with open_source("mpc_test_events:EVENTS") as source:
        assert list(source) == [{"x": 1, "internal#train_id": 0,
                                 "internal#event_id": 0, "internal#sequence_id": -1}]
    with pytest.raises(SourceError, match="not callable"):
        open_source("mpc_test_events:EVENTS", n=1)


def test_runs_through_metropc_run(module_dir):
    ctx = textwrap.dedent("""
        @View.Scalar
        def doubled(x: 'DEV/A/B:out[data.x]'):
            return 2 * x
        """)
    with open_source("mpc_test_events:numbered", n=3) as source:
        results = [res for _, res in metropc.run(ctx, source)]
    assert [r["doubled"] for r in results] == [0, 2, 4]


@pytest.mark.parametrize("spec, message", [
    ("mpc_test_events:broken", "raised after 1 events: RuntimeError: detector library"),
    ("mpc_test_events:not_dicts", "item 0 is a int, not an event dict"),
])
def test_errors_while_iterating(module_dir, spec, message):
    with open_source(spec) as source, pytest.raises(SourceError, match=message):
        list(source)


@pytest.mark.parametrize("spec, message", [
    ("mpc_test_events:fails", "calling it failed: OSError: no database"),
    ("mpc_test_events:nothing", "has no attribute 'nothing'"),
    ("no_such_module_xyz:f", "cannot import 'no_such_module_xyz'"),
    ("missing/file.py:f", "missing/file.py: no such file"),
])
def test_errors_when_opening(module_dir, spec, message):
    with pytest.raises(SourceError, match=message):
        open_source(spec)


def test_rate_paces_a_callable(module_dir):
    with open_source("mpc_test_events:numbered", n=3) as source:
        assert source.rate is None  # unpaced by default
    with open_source("mpc_test_events:numbered", n=3, rate=100) as source:
        assert source.rate == 100.0


def test_spec_errors():
    with pytest.raises(SourceError, match="not a data source"):
        open_source("what")
    with pytest.raises(SourceError, match="unknown source scheme 'http://'"):
        open_source("http://example.org")


def test_default_spec_is_the_simulator():
    for spec in (None, "", "sim"):
        with open_source(spec, ntrains=1, shape=(8, 8)) as source:
            assert source.kind == "sim"


def test_parse_options():
    assert parse_options("shape=256x128, ntrains=5,rate=2.5,on=yes,name=x,z=none") == {
        "shape": (256, 128), "ntrains": 5, "rate": 2.5, "on": True, "name": "x",
        "z": None}
    assert parse_options("") == {}


def test_rates():
    assert resolve_rate(None, 10) == 10.0
    assert resolve_rate("max", 10) is None
    assert resolve_rate(0, 10) is None
    assert resolve_rate(float("inf"), None) is None
    assert resolve_rate("25", None) == 25.0
    with pytest.raises(SourceError):
        resolve_rate(-1, None)


def test_normalize_paths_accepts_path_objects_and_both_karabo_forms():
    from metropc.euxfel import KaraboPath

    got = normalize_paths([KaraboPath("karabo#D/E/F:out.data.x"), "D/E/F.prop",
                           "internal#train_id", "foam#a.b"])
    assert got == {"karabo#D/E/F:out[data.x]", "karabo#D/E/F.prop",
                   "internal#train_id", "foam#a.b"}


class CountingSource(Source):
    """The documented way to write a source: a generator of events."""

    kind = "counting"

    def __init__(self, n, **kwargs):
        super().__init__(**kwargs)
        self.n = n
        self.released = 0

    def events(self):
        for i in range(self.n):
            yield {"internal#train_id": i, "internal#event_id": i,
                   "internal#sequence_id": -1, "karabo#C/O/UNT.value": i}

    def release(self):
        self.released += 1


def test_register_a_new_source_and_scheme():
    def factory(target, paths=None, rate=None, **common):
        # A scheme's factory gets the whole spec, a name's what follows it.
        return CountingSource(int(target.removeprefix("count://") or 2),
                              paths=paths, rate=rate)

    register_source("counting", factory, schemes=("count",))
    try:
        assert "counting" in available_sources()["names"]
        with pytest.raises(ValueError, match="already registered"):
            register_source("counting", factory)
        with open_source("counting:3") as source:
            assert [e["karabo#C/O/UNT.value"] for e in source] == [0, 1, 2]
        assert source.released == 1
        with open_source("count://4", paths=["internal#train_id"]) as source:
            assert source.paths == {"internal#train_id"}
    finally:
        _NAMED.pop("counting")
        _SCHEMES.pop("count")


def test_factory_must_return_a_source():
    register_source("bad", lambda target, **kw: [1, 2])
    try:
        with pytest.raises(SourceError, match="returned list, not a Source"):
            open_source("bad:")
    finally:
        _NAMED.pop("bad")


def test_close_before_iterating_releases_once():
    source = CountingSource(5)
    source.close()
    source.close()
    assert list(source) == [] and source.released == 1
    with CountingSource(3) as source:
        next(source)
    assert source.released == 1 and source.closed


def test_module_in_the_working_directory(tmp_path, monkeypatch):
    # As under a console script: the working directory is not on sys.path.
    (tmp_path / "mpc_cwd_events.py").write_text("def gen():\n    yield {'a': 1}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path
                                      if p not in ("", str(tmp_path), ".")])
    try:
        with open_source("mpc_cwd_events:gen") as source:
            assert next(source)["a"] == 1
    finally:
        sys.modules.pop("mpc_cwd_events", None)
    assert str(tmp_path) not in sys.path

"""Context code raising BaseExceptions: a failure of the context or view, never of the process.

``sys.exit()`` or ``raise BaseException()`` in a context used to escape
``Context(...)`` (ending metropc-run without a word) and, in a kernel, to
end the POOL worker.  Only KeyboardInterrupt must still get through: it is
the operator's Ctrl-C, meant for the process.
"""

from __future__ import annotations

import logging
import os
import signal
import textwrap
import threading
import time
import traceback

import pytest

import metropc
from metropc.core import Context
from metropc.engine import Engine, ErrorReporter
from metropc.error import ContextError, StopRequested


def load(source, path="faulty_ctx.py"):
    return Context(textwrap.dedent(source), path=path)


# -- at load time -------------------------------------------------------------------------

@pytest.mark.parametrize("source, lineno, message", [
    ("import sys\n\nsys.exit()\n", 3, "SystemExit"),
    ("x = 1\nraise SystemExit(3)\n", 2, "SystemExit: 3"),
    ("raise BaseException()\n", 1, "BaseException"),
    ("raise BaseException('odd')\n", 1, "BaseException: odd"),
    ("def gen():\n    yield 1\n\nraise GeneratorExit('closed')\n", 4, "GeneratorExit: closed"),
])
def test_base_exception_at_top_level_is_a_context_error(source, lineno, message):
    with pytest.raises(ContextError) as info:
        load(source)
    err = info.value
    assert type(err) is ContextError
    assert (err.path, err.lineno) == ("faulty_ctx.py", lineno)
    assert err.message.startswith(message)
    assert str(err).startswith(f"faulty_ctx.py:{lineno}: {message}")
    if "SystemExit" in message:
        assert "must not exit the process" in err.message
    # the original exception is kept as the cause, with its own frames
    assert isinstance(err.__cause__, BaseException)
    assert type(err.__cause__).__name__ == message.split(":")[0]


def test_keyboard_interrupt_at_top_level_still_propagates():
    with pytest.raises(KeyboardInterrupt):
        load("x = 1\nraise KeyboardInterrupt\n")


def in_thread(fn):
    """What `fn()` returned or raised, called in a thread of its own."""
    out = {}

    def call():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out["error"] = e

    thread = threading.Thread(target=call)
    thread.start()
    thread.join(30)
    return out


def test_keyboard_interrupt_that_cannot_be_ctrl_c_is_a_context_error():
    """Where Ctrl-C cannot raise (a thread; SIGINT blocked, as in metropc-run;
    SIGINT ignored, as in a stage), a KeyboardInterrupt is the context's own."""
    source = "x = 1\nraise KeyboardInterrupt\n"
    err = in_thread(lambda: load(source))["error"]
    assert type(err) is ContextError and (err.path, err.lineno) == ("faulty_ctx.py", 2)
    assert str(err) == ("faulty_ctx.py:2: KeyboardInterrupt (raised by the context code, "
                        "not by Ctrl-C)")
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        with pytest.raises(ContextError, match="faulty_ctx.py:2: KeyboardInterrupt"):
            load(source)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    # A stage told to stop (SIGTERM) is never the context's failure.
    stop = in_thread(lambda: load("from metropc.error import StopRequested\n"
                                  "raise StopRequested('signal 15')\n"))
    assert type(stop["error"]) is StopRequested


def test_kernel_keyboard_interrupt_outside_the_main_thread_fails_its_view():
    ctx = Context("@View.Scalar\ndef a(t: 'internal#train_id'):\n    raise KeyboardInterrupt\n"
                  "@View.Scalar\ndef b(t: 'internal#train_id'):\n    return t\n")
    out = in_thread(lambda: list(metropc.run(ctx, [{"internal#train_id": 1}])))
    assert out == {"value": [(1, {"b": 1})]}


@pytest.mark.parametrize("statement, message", [
    ("sys.exit(2)", "SystemExit: 2"),
    ("raise BaseException('in init')", "BaseException: in init"),
])
def test_base_exception_in_a_view_group_init_names_the_line(statement, message):
    src = f"""
        import sys

        class Camera(ViewGroup):
            def __init__(self, **kwargs):
                super().__init__(**kwargs)
                {statement}

            @View.Scalar(name='{{prefix}}frame')
            def frame(self, t: 'internal#train_id'):
                return t

        cam = Camera(prefix='cam/')
    """
    with pytest.raises(ContextError) as info:
        load(src)
    assert info.value.lineno == 7  # the statement inside __init__
    assert info.value.message.startswith(message)


def test_base_exception_in_a_view_impl_constructor_is_a_context_error():
    src = """
        class Strict(View):
            def __init__(self, kernel, **kwargs):
                raise SystemExit('no')

        @View.Scalar(view_impl=Strict)
        def a(t: 'internal#train_id'):
            return t
    """
    with pytest.raises(ContextError) as info:
        load(src)
    assert info.value.lineno == 4
    assert info.value.message.startswith("SystemExit: no")


def test_base_exception_in_a_custom_path_type_is_a_context_error():
    # Path resolution runs context code too (after the source ran).
    from metropc.path import Path

    src = """
        from metropc.path import Path

        class Broken(Path, alias='brokenfaults'):
            def parse(self, path):
                raise SystemExit(5)

        @View.Scalar
        def a(x: 'brokenfaults#anything'):
            return x
    """
    try:
        with pytest.raises(ContextError) as info:
            load(src)
    finally:
        Path._types.pop("brokenfaults", None)  # the registry is global
    assert info.value.lineno == 6
    assert "SystemExit: 5" in info.value.message


# -- while running ------------------------------------------------------------------------

KERNEL_SRC = """
import sys

@View.Scalar
def good(t: 'internal#train_id'):
    return t

@View.Scalar
def exits(t: 'internal#train_id'):
    if t % 2:
        sys.exit(1)
    return t

@View.Scalar
def base(t: 'internal#train_id'):
    raise BaseException('weird')

@View.Vector
def generator_exit(t: 'internal#train_id'):
    yield t
    raise GeneratorExit

@View.Scalar
def after(g: 'good'):
    return g * 10
"""


def test_kernel_base_exceptions_fail_only_their_view(caplog):
    caplog.set_level(logging.ERROR, logger="metropc.engine")
    ctx = Context(KERNEL_SRC, path="kernels.py")
    out = dict(metropc.run(ctx, [{"internal#train_id": i} for i in range(4)]))
    assert out == {0: {"good": 0, "exits": 0, "after": 0},
                   1: {"good": 1, "after": 10},
                   2: {"good": 2, "exits": 2, "after": 20},
                   3: {"good": 3, "after": 30}}
    text = caplog.text
    assert "kernels.py:11: view 'exits' failed on event 1: SystemExit" in text
    assert "kernels.py:16: view 'base' failed on event 0: BaseException: weird" in text
    assert "kernels.py:21: view 'generator_exit' failed on event 0: GeneratorExit" in text


def test_engine_counts_base_exception_failures():
    reports = []
    ctx = Context(KERNEL_SRC, path="kernels.py")
    engine = Engine(ctx, ErrorReporter(window=0.0, sink=reports.append,
                                       clock=iter(range(0, 1000, 10)).__next__))
    for i in range(6):
        engine.process({"internal#train_id": i})
    assert engine.errors == {"exits": 3, "base": 6, "generator_exit": 6}
    assert engine.counts["good"] == engine.counts["after"] == 6
    exits = [r for r in reports if r.view == "exits"]
    assert [(r.path, r.lineno, r.event_id) for r in exits] == [
        ("kernels.py", 11, 1), ("kernels.py", 11, 3), ("kernels.py", 11, 5)]


def test_kernel_keyboard_interrupt_propagates():
    ctx = Context("@View.Scalar\ndef a(t: 'internal#train_id'):\n    raise KeyboardInterrupt\n")
    with pytest.raises(KeyboardInterrupt):
        list(metropc.run(ctx, [{"internal#train_id": 1}]))


def test_step_hook_raising_system_exit_fails_only_that_view():
    src = """
        import sys
        from metropc.enums import ViewStage

        class Quitter(View, stage=ViewStage.STEP):
            def on_step(self):
                sys.exit(0)

        @View.Scalar(view_impl=Quitter)
        def q(t: 'internal#train_id'):
            return t

        @View.Scalar_StepAverage
        def avg(t: 'internal#train_id'):
            return float(t)
    """
    ctx = load(src)
    out = list(metropc.run(ctx, [{"internal#train_id": 1}, {"internal#train_id": 3},
                                 metropc.STEP]))
    assert out[-1] == (metropc.STEP, {"avg": 2.0})


# -- real processes ------------------------------------------------------------------------

PIPELINE_CTX = """
import os
import sys

@View.Scalar
def ok(t: 'internal#train_id'):
    return t

@View.Scalar
def pid(t: 'internal#train_id'):
    return os.getpid()

@View.Scalar
def quits(t: 'internal#train_id'):
    sys.exit(3)

@View.Scalar
def interrupts(t: 'internal#train_id'):
    raise KeyboardInterrupt
"""


@pytest.mark.timeout(90)
def test_pool_view_calling_sys_exit_does_not_stop_the_pipeline(tmp_path):
    from metropc.client import Client
    from metropc.pipeline import Pipeline

    ctx_file = tmp_path / "exiting_ctx.py"
    ctx_file.write_text(PIPELINE_CTX)
    with Pipeline(str(ctx_file), source=None, pool=2, ready_timeout=60) as pipe, \
            Client(pipe.output_addr, views=["ok", "pid"], timeout=5) as client:
        ok, pids = [], set()
        deadline = time.monotonic() + 60
        next_id = 0
        # Keep sending until 40 results of `ok` came after the first ones
        # (the subscription may miss the first few): every one of them
        # follows a `quits` that called sys.exit() in the same worker.
        while len(ok) < 40:
            assert time.monotonic() < deadline, f"only {len(ok)} results of 'ok'"
            for _ in range(10):
                pipe.send({"internal#train_id": next_id})
                next_id += 1
            try:
                while True:
                    path, payload = client.recv(timeout=0.5)
                    if path == "view#ok":
                        ok.append(payload["data"])
                    else:
                        pids.add(payload["data"])
            except TimeoutError:
                pass
        errors = list(pipe.errors)
        restarts = sum(pipe.frontend.restarts.values())
    assert ok == sorted(ok) and len(set(ok)) == len(ok)
    assert len(pids) <= 2 and restarts == 0, (pids, restarts, errors)
    assert not any("died" in e for e in errors), errors
    reports = [e for e in errors if "view 'quits' failed" in e]
    assert reports, errors
    assert f"{ctx_file}:15: view 'quits' failed on event" in reports[0]
    assert "SystemExit: 3" in reports[0]
    reports = [e for e in errors if "view 'interrupts' failed" in e]
    assert reports and "KeyboardInterrupt (raised by the view itself" in reports[0], errors


@pytest.mark.timeout(90)
def test_a_reload_raising_keyboard_interrupt_in_the_stages_is_refused(tmp_path):
    """A stage ignores SIGINT: a KeyboardInterrupt while it builds a context
    is the context's, refused with its line; the stage and the old context
    go on (it used to end the stage)."""
    from metropc.client import Client
    from metropc.pipeline import Pipeline

    ctx_file = tmp_path / "ctx.py"
    ctx_file.write_text(PIPELINE_CTX)
    with Pipeline(str(ctx_file), source=None, pool=2, ready_timeout=60) as pipe, \
            Client(pipe.output_addr, views=["ok"], timeout=5) as client:
        # Built here first (it passes), then in every stage (it raises).
        pipe.load(f"import os\nif os.getpid() != {os.getpid()}:\n    raise KeyboardInterrupt\n",
                  path=str(tmp_path / "edited.py"))
        deadline = time.monotonic() + 60
        while not any("refused" in e for e in pipe.errors):
            assert time.monotonic() < deadline, pipe.errors
            time.sleep(0.05)
        got = []
        for i in range(200):
            pipe.send({"internal#train_id": i})
            try:
                got.append(client.recv(timeout=0.01)[1]["data"])
            except TimeoutError:
                pass
        while len(got) < 150:
            got.append(client.recv()[1]["data"])
        errors = list(pipe.errors)
        restarts = sum(pipe.frontend.restarts.values())
    assert restarts == 0 and not any("died" in e for e in errors), errors
    refusal = next(e for e in errors if "refused" in e)
    assert f"{tmp_path / 'edited.py'}:3: KeyboardInterrupt (raised by the context code" in refusal


def test_load_error_keeps_context_frames_for_frontends():
    # EXtra-foam's editor walks e.__traceback__ for the context's frames.
    src = "x = 1\n\ndef helper():\n    return undefined_name\n\nhelper()\n"
    with pytest.raises(ContextError) as info:
        Context(src)  # path '<ctx>'
    err = info.value
    assert err.lineno == 4
    assert str(err) == "<ctx>:4: NameError: name 'undefined_name' is not defined"
    frames = [(f.filename, f.lineno) for f in traceback.extract_tb(err.__traceback__)]
    assert ("<ctx>", 6) in frames and frames[-1] == ("<ctx>", 4)
    assert err._find_context_frame("<ctx>") == 4

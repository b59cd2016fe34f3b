"""``metropc-run`` refuses bad command-line values at once: one line, exit 2.

Each case runs the real command as a subprocess; none may start a stage
(they all end well before a pipeline could), print a traceback or the
usage block, or talk about stages that did not start.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest
from conftest import has_ipv6_loopback

pytestmark = pytest.mark.timeout(120)

CTX = """\
parameters(threshold=0.5, count=3, label='x', flag=True)

@View.Scalar
def value(t: 'internal#train_id'):
    return t * threshold
"""


def run(*args, timeout=60):
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "metropc.cli.run", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)
    proc.elapsed = time.monotonic() - t0
    return proc


def assert_one_line_error(proc, *fragments):
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("metropc-run: error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in proc.stderr and "did not start" not in proc.stderr
    assert "output on" not in proc.stdout  # nothing started


@pytest.fixture
def ctx_file(tmp_path):
    path = tmp_path / "ctx.py"
    path.write_text(CTX)
    return path


@pytest.mark.parametrize("option, value, fragment", [
    ("--pool", "0", "--pool"),
    ("--pool", "-3", "--pool"),
    ("--pool", "two", "--pool"),
    ("--pool", "1000000000", "at most"),            # (4 per CPU: not a billion processes)
    ("--shm-size", "99999999999999999999999", "more than this machine's memory"),
    ("--queue-size", "0", "--queue-size"),
    ("--event-timeout", "-1", "--event-timeout"),
    ("--event-timeout", "nan", "--event-timeout"),
    ("--duration", "-5", "--duration"),
    ("--duration", "5e-324", "at least 1e-09"),  # positive, but below the minimum
    ("--max-events", "0", "--max-events"),
    ("--rate", "-1", "--rate"),
    ("--rate", "1e-12", "at least 0.001"),   # the pacing overflowed the clock
    ("--seed", "-1", "--seed"),
])
def test_bad_numbers(ctx_file, option, value, fragment):
    assert_one_line_error(run(ctx_file, option, value), fragment, value)


def test_a_context_path_with_a_newline(tmp_path):
    weird = tmp_path / "ctx\n.py"
    weird.write_text(CTX)
    assert_one_line_error(run(weird), "line break")


def test_a_missing_context_file(tmp_path):
    missing = tmp_path / "nope.py"
    assert_one_line_error(run(missing), "no such context file", str(missing))


def test_a_directory_as_context(tmp_path):
    assert_one_line_error(run(tmp_path), "not a file")


@pytest.mark.parametrize("output", ["bar", "tcp://127.0.0.1", "tcp://127.0.0.1:99999",
                                    "tcp://127.0.0.1:port", "udp://127.0.0.1:5",
                                    # ZeroMQ says only "Invalid argument" to these:
                                    "tcp://127.0.0.1;127.0.0.2:5555", "tcp://127.0.0.1:\u0661",
                                    "tcp://h\u00e9:5555", "tcp://[zzz]:5555"])
def test_an_unparsable_output(ctx_file, output):
    assert_one_line_error(run(ctx_file, "--output", output), "--output", output)


def test_an_output_port_in_use(ctx_file):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        addr = f"tcp://127.0.0.1:{port}"
        proc = run(ctx_file, "--output", addr)
    assert_one_line_error(proc, addr, "already in use")
    assert proc.elapsed < 20


@pytest.fixture
def keys(tmp_path):
    from metropc.security import generate_keys
    generate_keys(str(tmp_path / "keys"))
    return str(tmp_path / "keys")


@pytest.mark.parametrize("option", ["--control", "--reduce"])
def test_a_stage_port_in_use(ctx_file, keys, option):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        addr = f"tcp://127.0.0.1:{port}"
        proc = run(ctx_file, option, addr, "--keys", keys)
    assert_one_line_error(proc, option, addr, "already in use")


@pytest.mark.parametrize("option", ["--control", "--reduce"])
def test_a_tcp_stage_address_needs_keys_even_on_loopback(ctx_file, option):
    """Stage sockets carry context code and pickles: on TCP any user of the
    host could send them some, so they need CURVE keys."""
    proc = run(ctx_file, option, "tcp://127.0.0.1:0")
    assert_one_line_error(proc, option, "carry Python code", "--keys")


def test_a_dashboard_port_in_use_before_the_pipeline_starts(ctx_file):
    pytest.importorskip("tornado")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run(ctx_file, "--dashboard", str(port))
    assert_one_line_error(proc, "--dashboard", str(port), "already in use")


def test_unknown_parameter_names_the_declared_ones_with_a_did_you_mean(ctx_file):
    proc = run(ctx_file, "--param", "threshhold=1")
    assert_one_line_error(proc, "threshhold", "did you mean 'threshold'", "count",
                          "label", "flag")


@pytest.mark.parametrize("pair, fragment", [
    ("threshold=lots", "float"),
    ("count=1.5", "int"),
    ("flag=maybe", "bool"),
])
def test_values_are_parsed_as_the_declared_type(ctx_file, pair, fragment):
    proc = run(ctx_file, "--param", pair)
    assert_one_line_error(proc, pair.split("=")[0], fragment, str(ctx_file))


def test_well_typed_parameters_run(ctx_file):
    proc = run(ctx_file, "--param", "threshold=2", "--param", "flag=no",
               "--param", "label=hello", "--param", "count=7", "--duration", "2",
               "--status", "lines", "--pool", "1")
    assert proc.returncode == 0, proc.stderr
    assert "output on" in proc.stdout


def test_every_loopback_address_counts_as_loopback(ctx_file):
    """One rule for every address (output, dashboard, metrics): 127.x,
    localhost and ::1 are this host only; nothing else is without
    --allow-remote."""
    proc = run(ctx_file, "--output", "tcp://127.0.0.2:0", "--duration", "1",
               "--status", "off")
    assert proc.returncode == 0, proc.stderr
    assert "output on tcp://127.0.0.2:" in proc.stdout
    assert_one_line_error(run(ctx_file, "--output", "tcp://10.0.0.1:0"), "--allow-remote")
    if has_ipv6_loopback():
        proc = run(ctx_file, "--output", "tcp://[::1]:0", "--duration", "1",
                   "--status", "off")
        assert proc.returncode == 0, proc.stderr
        assert "output on tcp://[::1]:" in proc.stdout


def test_tcp_stage_addresses_are_printed_with_the_ports_picked(ctx_file, keys):
    """--control/--reduce on port 0: workers of other hosts need the ports
    picked, so metropc-run prints how to join."""
    import re
    proc = run(ctx_file, "--control", "tcp://127.0.0.1:0", "--reduce", "tcp://127.0.0.1:0",
               "--max-events", "3", "--status", "off", "--keys", keys)
    assert proc.returncode == 0, proc.stderr
    m = re.search(r"join with: metropc-worker --control tcp://127\.0\.0\.1:(\d+) "
                  r"--reduce tcp://127\.0\.0\.1:(\d+) --keys ", proc.stdout)
    assert m and all(int(port) > 0 for port in m.groups()), proc.stdout


# -- garbage audit F7, F8, F12: found late, or with a traceback --------------------------

LONG_IPC = "ipc:///tmp/" + "a" * 120  # more than the 107 bytes of a Unix socket path


@pytest.fixture
def short_dir():
    """A directory with a short path (ipc paths must stay below 108 bytes)."""
    path = tempfile.mkdtemp(prefix="mpc-v-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("option", ["--control", "--reduce", "--output"])
@pytest.mark.parametrize("addr, fragment", [
    (LONG_IPC, "more than the 107"),
    ("ipc:///proc/x", "cannot make a socket there"),  # (/proc takes no new files)
])
def test_an_ipc_path_no_socket_can_have(ctx_file, option, addr, fragment):
    """A traceback and exit 1 before (for --control after the private socket
    directory was made, which was left behind)."""
    if addr.startswith("ipc:///proc") and not os.path.isdir("/proc/self"):
        pytest.skip("no /proc")
    proc = run(ctx_file, option, addr, "--duration", "1")
    assert_one_line_error(proc, option, repr(addr), fragment)


def test_an_ipc_path_in_use_or_no_socket_is_refused(ctx_file, short_dir):
    """ZeroMQ removes what is at an ipc path before it binds: another
    pipeline's socket (which then gets nothing) or a file."""
    taken = os.path.join(short_dir, "taken")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(taken)
        listener.listen()
        proc = run(ctx_file, "--output", f"ipc://{taken}", "--duration", "1")
    assert_one_line_error(proc, "--output", "already in use")
    precious = os.path.join(short_dir, "notes.txt")
    with open(precious, "w") as f:
        f.write("keep me")
    proc = run(ctx_file, "--output", f"ipc://{precious}", "--duration", "1")
    assert_one_line_error(proc, "--output", "is not a socket")
    with open(precious) as f:
        assert f.read() == "keep me"


def free_port():
    """A port nothing listens on now (the CLI must refuse before binding it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("first, second, needs", [
    (("--output", "tcp://127.0.0.1:{port}"), ("--control", "tcp://127.0.0.1:{port}"), None),
    (("--output", "tcp://127.0.0.1:{port}"), ("--reduce", "tcp://localhost:{port}"), None),
    (("--output", "tcp://127.0.0.1:{port}"), ("--dashboard", "localhost:{port}"), "tornado"),
    (("--output", "tcp://127.0.0.1:{port}"), ("--metrics", "{port}"), "prometheus_client"),
    (("--dashboard", "{port}"), ("--metrics", "127.0.0.1:{port}"), "prometheus_client"),
])
def test_one_port_for_two_options_is_refused_naming_both(ctx_file, keys, first, second,
                                                        needs):
    """Found only after the stages started before (a stage dying, or a
    server failing with "Address already in use" about its own port)."""
    if needs:
        pytest.importorskip(needs)
    if "--dashboard" in (first[0], second[0]):
        pytest.importorskip("tornado")
    port = free_port()
    args = [arg.format(port=port) for arg in (*first, *second)]
    if any(option in args for option in ("--control", "--reduce")):
        args += ["--keys", keys]
    proc = run(ctx_file, *args, "--duration", "1")
    assert_one_line_error(proc, first[0], second[0], "same address")
    assert proc.elapsed < 20


@pytest.mark.parametrize("spec, fragment", [
    ("nonsense", "not a data source"),
    (":", "not a data source"),
    ("/nonexistent", "no such file or directory"),
    ("files:/nonexistent/r0001", "no such file or directory"),
    ("/nonexistent/src.py:events", "no such file"),
    ("no_such_module_here:events", "no module named 'no_such_module_here'"),
    ("", "empty"),  # (it meant 'sim' before, silently)
    (" ", "empty"),
])
def test_a_bad_source_is_refused_before_the_context_is_loaded(ctx_file, spec, fragment):
    proc = run(ctx_file, "--source", spec, "--duration", "1")
    assert_one_line_error(proc, "--source", fragment)
    assert "loaded" not in proc.stderr


def test_a_source_that_fails_to_open_is_a_usage_error_too(ctx_file):
    """What only opening the source tells (a module without that attribute)
    comes after the context loaded, but is still the --source value's fault:
    one line naming it, exit code 2 (it was a log line and exit 1)."""
    proc = run(ctx_file, "--source", "os:nosuch", "--duration", "1")
    assert proc.returncode == 2, proc.stderr
    assert "metropc-run: error: --source os:nosuch: 'os' has no attribute 'nosuch'" in proc.stderr


@pytest.mark.parametrize("option, value", [
    ("--dashboard", "tcp://127.0.0.1:5\n"),
    ("--metrics", "9100\x1b[2J"),
    ("--keys", "keys\nx"),
    ("--output", "tcp://127.0.0.1:5\n"),
])
def test_values_with_control_characters_are_quoted(ctx_file, option, value):
    """One line, and a terminal escape shown, not acted on."""
    if option == "--metrics":
        pytest.importorskip("prometheus_client")
    proc = run(ctx_file, option, value)
    assert_one_line_error(proc, option, repr(value))
    assert "\x1b" not in proc.stderr


def test_allow_remote_without_keys_is_refused(ctx_file):
    """docs/operations.md, Security: metropc-run refuses --allow-remote
    without --keys (it ran, exit 0, unless an address was also remote)."""
    proc = run(ctx_file, "--allow-remote", "--duration", "1")
    assert_one_line_error(proc, "--allow-remote", "--keys DIR")


def test_allow_remote_for_metrics_alone_needs_no_keys(ctx_file):
    """The documented Prometheus setup: keys secure the ZeroMQ sockets, not
    the read-only metrics server."""
    pytest.importorskip("prometheus_client")
    proc = run(ctx_file, "--allow-remote", "--metrics", "0.0.0.0:0", "--duration", "1",
               "--status", "off", "--pool", "1")
    assert proc.returncode == 0, proc.stderr
    assert "metrics on http://0.0.0.0:" in proc.stdout


def without_file_permission_override():
    """A command prefix that runs without root's right to read any file, or
    None when that cannot be done here."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        return None
    caps = "-dac_override,-dac_read_search"
    prefix = ["setpriv", "--bounding-set", caps, "--inh-caps", caps]
    probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=30)
    return prefix if probe.returncode == 0 else None


def test_an_unreadable_key_directory_says_permission_denied(ctx_file, keys):
    """It said "no server key in DIR; make keys with: metropc-keys DIR",
    which would fail the same way."""
    prefix = without_file_permission_override()
    if prefix is None:
        pytest.skip("cannot drop root's file permission override here")
    os.chmod(keys, 0)
    try:
        proc = subprocess.run([*prefix, sys.executable, "-m", "metropc.cli.run",
                               str(ctx_file), "--keys", keys, "--duration", "1"],
                              capture_output=True, text=True, timeout=60)
    finally:
        os.chmod(keys, 0o700)
    assert_one_line_error(proc, f"--keys {keys}", "Permission denied")
    assert "make keys" not in proc.stderr

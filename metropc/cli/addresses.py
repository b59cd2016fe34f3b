"""Checking the addresses a tool will bind, before anything starts.

Each refusal is a :class:`~metropc.cli.usage.UsageError` naming the option:
an address other hosts could reach without being asked for (and then
without keys), one that is malformed, a port or ipc path already taken or
where no socket can be made, and one address given to two options.  Found
here, each is one line; found by a stage, it was a traceback or a stage
dying after the pipeline had started.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import stat

from ..dashboard.address import is_loopback
from ..endpoints import BIND_HOST, ipc_path_problem
from .usage import UsageError, shown

__all__ = ["check_addresses", "check_ipc_free", "check_port_free", "check_same_address",
           "parse_address"]


def check_addresses(args):
    """Refuse addresses other hosts can reach unless asked, and then with keys."""
    for option, addr in (("--output", args.output), ("--control", args.control),
                         ("--reduce", args.reduce)):
        if not addr or not addr.startswith("tcp://"):
            continue
        if option != "--output" and args.keys is None:
            # Stages exchange context code and pickles: on TCP, every user of
            # this host could send them some (ipc sockets are in a private
            # directory instead).
            raise UsageError(
                f"{option} {addr}: the stage sockets carry Python code, and on TCP "
                "every user of this host can reach them; secure them with --keys DIR "
                "(make keys with metropc-keys DIR), or leave the option out")
        host = addr[len("tcp://"):].rsplit(":", 1)[0]
        if is_loopback(host):  # (one rule for every address: 127.x, localhost, ::1)
            continue
        if not args.allow_remote:
            raise UsageError(
                f"refusing to bind {option} to {host!r}, which is not a "
                "loopback interface; pass --allow-remote (with --keys) to do it on "
                "purpose")
        if args.keys is None:
            raise UsageError(
                f"{option} {addr} is reachable from other hosts, and "
                "context code is Python: secure it with --keys DIR (make keys with "
                "metropc-keys DIR)")


_TCP = re.compile(rf"tcp://(?P<host>{BIND_HOST.pattern}):(?P<port>\*|[0-9]+)", re.ASCII)


def parse_address(option, addr):
    """``(host, port)`` of a ``tcp://`` address (port None for any), or
    ``(None, None)`` for ``ipc://``; UsageError naming the address else."""
    if addr.startswith("ipc://"):
        path = addr[len("ipc://"):]
        directory = os.path.dirname(path) or "."
        if not path or path.endswith("/"):
            raise UsageError(f"{option} {addr!r}: an ipc:// address needs a file name")
        problem = ipc_path_problem(path)
        if problem is not None:
            raise UsageError(f"{option} {addr!r}: {problem}")
        if not path.startswith("@"):  # "@name": Linux abstract namespace, no file
            if not os.path.isdir(directory):
                raise UsageError(f"{option} {addr!r}: no directory {directory!r}")
            if not os.access(directory, os.W_OK | os.X_OK):
                raise UsageError(f"{option} {addr!r}: cannot create a socket file in "
                                 f"{directory!r} (permission denied)")
        return None, None
    m = _TCP.fullmatch(addr)
    if m is None:
        raise UsageError(f"{option} {addr!r} is not an address: use tcp://HOST:PORT "
                         "(port 0 or * picks a free one) or ipc://PATH")
    port = m["port"]
    if port == "*" or int(port) == 0:
        return m["host"], None
    if int(port) > 65535:
        raise UsageError(f"{option} {addr!r}: port {port} is out of range (0-65535)")
    return m["host"], int(port)


def check_port_free(option, addr, host, port):
    """Bind (and release) `host`:`port` now, so that a taken port is one clear
    line before any stage starts.  ZeroMQ binds with SO_REUSEADDR, so we do too.
    An ``ipc://`` `addr` is checked by :func:`check_ipc_free`."""
    if addr.startswith("ipc://"):
        check_ipc_free(option, addr)
        return
    if port is None:
        return
    host = host.strip("[]")
    if host == "*":
        host = "0.0.0.0"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return  # an interface name, say: leave it to ZeroMQ
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(sockaddr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise UsageError(f"{option} {shown(addr)}: port {port} is already in use "
                                 "(another metropc-run?); pick another port, or 0 for "
                                 "a free one") from None
            raise UsageError(f"{option} {shown(addr)}: cannot bind there: "
                             f"{e.strerror or e}") from None


def check_ipc_free(option, addr):
    """Make (and remove) a Unix socket at the path of ``ipc://`` `addr` now:
    a path the system refuses (``/proc/x``, a read-only file system) was a
    traceback of a stage, and one for the control socket left the private
    socket directory behind.  An existing file is never removed here, but
    ZeroMQ would replace it: a socket someone listens on (another
    metropc-run's) and a file that is no socket are refused."""
    path = addr[len("ipc://"):]
    abstract = path.startswith("@")  # Linux's abstract namespace: no file
    name = "\0" + path[1:] if abstract else path
    if not abstract and os.path.lexists(path):
        _check_existing_socket(option, addr, path)
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.bind(name)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise UsageError(f"{option} {addr!r}: already in use (another "
                                 "metropc-run?); pick another name") from None
            raise UsageError(f"{option} {addr!r}: cannot make a socket there: "
                             f"{e.strerror or e}") from None
    if not abstract:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _check_existing_socket(option, addr, path):
    """UsageError if the file at `path` is no socket or one that is listened on."""
    if not stat.S_ISSOCK(os.lstat(path).st_mode):
        raise UsageError(f"{option} {addr!r}: {path!r} exists and is not a socket "
                         "(binding would replace it); pick another path")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
        except PermissionError as e:
            raise UsageError(f"{option} {addr!r}: cannot use the socket there: "
                             f"{e.strerror}") from None
        except OSError:
            return  # left behind by a process that is gone: ZeroMQ replaces it
    raise UsageError(f"{option} {addr!r}: already in use (another metropc-run "
                     "listens there); pick another path")


#: Hosts that mean every interface of their family: they take a port on all.
_WILDCARDS = frozenset({"*", "", "0.0.0.0", "::"})


def _interfaces(host):
    """The addresses `host` binds to: None for every one, else a set."""
    host = host.strip("[]").lower()
    if host in _WILDCARDS:
        return None
    try:
        return {info[4][0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)}
    except (socket.gaierror, UnicodeError):
        return {host}  # (an interface name, say: compared by name)


def _same_place(a, b):
    """Whether two entries of `bound` (check_arguments) would bind one port or path."""
    (_, addr_a, host_a, port_a), (_, addr_b, host_b, port_b) = a, b
    if addr_a.startswith("ipc://") or addr_b.startswith("ipc://"):
        paths = [addr[len("ipc://"):] for addr in (addr_a, addr_b)]
        return all(addr.startswith("ipc://") for addr in (addr_a, addr_b)) and (
            paths[0] == paths[1] or os.path.abspath(paths[0]) == os.path.abspath(paths[1]))
    if port_a is None or port_a != port_b:
        return False
    where_a, where_b = _interfaces(host_a), _interfaces(host_b)
    return where_a is None or where_b is None or bool(where_a & where_b)


def check_same_address(bound):
    """Two options given one port (or ipc path): the second one's socket
    could not bind, and that was found only once the pipeline ran (a stage
    dying, or a server failing with "Address already in use" that did not
    say its own other socket held the port)."""
    for i, later in enumerate(bound):
        for earlier in bound[:i]:
            if _same_place(earlier, later):
                raise UsageError(
                    f"{earlier[0]} {shown(earlier[1])} and {later[0]} {shown(later[1])} "
                    "are the same address; give each its own (port 0 picks a free one)")

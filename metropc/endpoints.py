"""Binding and connecting ZeroMQ sockets to the addresses users give.

ZeroMQ takes an IPv6 address (``tcp://[::1]:5555``, ``tcp://[fe80::1]:*``)
only on a socket with IPv6 switched on, and that is off by default: with it
on, a host name such as ``localhost`` may resolve to its IPv6 address first
and miss a peer that listens on IPv4 only.  So every socket of metropc that
meets an address from outside binds or connects here, and IPv6 is switched
on for bracketed IPv6 addresses alone.  (No import of zmq: the socket is
given.)
"""

from __future__ import annotations

import os
import re
import sys

__all__ = ["bind", "connect", "connect_problem", "connectable", "ipc_path_problem",
           "is_ipv6", "IPC_PATH_MAX"]

#: Longest ipc path (bytes) ZeroMQ takes: a Unix socket address holds the
#: path and its terminating NUL in ``sun_path``, 108 bytes on Linux and 104
#: on the BSDs and macOS.  ZeroMQ refuses a longer one only when the socket
#: binds or connects, with an exception deep inside the stage that made it.
IPC_PATH_MAX = 107 if sys.platform.startswith("linux") else 103

#: A host name or IPv4 address (ASCII: ZeroMQ refuses anything else with a
#: bare "Invalid argument"), and a bracketed IPv6 address with an optional
#: zone (``[fe80::1%eth0]``).
HOST_NAME = r"[A-Za-z0-9_][A-Za-z0-9._-]*"
HOST_IPV6 = r"\[[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*(?:%[A-Za-z0-9_.-]+)?\]"
#: A host to connect to, and one to bind to (``*``: every interface).
CONNECT_HOST = re.compile(rf"(?:{HOST_NAME}|{HOST_IPV6})", re.ASCII)
BIND_HOST = re.compile(rf"(?:\*|{HOST_NAME}|{HOST_IPV6})", re.ASCII)
_USAGE = "use tcp://HOST:PORT, ipc://PATH or inproc://NAME"


def connect_problem(address) -> str | None:
    """Why a client cannot connect to `address`, or None if it can.

    Takes ``tcp://HOST:PORT`` (port 1..65535), ``ipc://PATH`` and
    ``inproc://NAME``.  Checked before connecting because ZeroMQ itself
    fails later with a bare "Invalid argument", or takes port 70000 for
    4464 (modulo 65536) and connects somewhere else without a word.
    """
    if not isinstance(address, str):
        return f"not a string but {type(address).__name__}; {_USAGE}"
    if not address.strip():
        return f"empty; {_USAGE}"
    if any(c.isspace() for c in address):
        return f"contains white space; {_USAGE}"
    for scheme in ("ipc://", "inproc://"):
        if address.startswith(scheme):
            if not address[len(scheme):] or address.endswith("/"):
                return f"{scheme} needs a {'path' if scheme == 'ipc://' else 'name'}"
            if scheme == "ipc://":
                return ipc_path_problem(address[len(scheme):])
            return None
    if not address.startswith("tcp://"):
        return f"not a ZeroMQ address; {_USAGE}"
    rest = address[len("tcp://"):]
    if rest.startswith("[") and "]" in rest:  # [IPv6]:PORT; the host has colons
        close = rest.index("]") + 1
        host, sep, port = rest[:close], rest[close:close + 1], rest[close + 1:]
        if sep != ":" and rest[close:]:
            return f"{rest[close:]!r} after the host; use tcp://[IPv6]:PORT"
    else:
        host, sep, port = rest.rpartition(":")
    if not sep or not port:
        return "no port; use tcp://HOST:PORT"
    if not host:
        return "no host; use tcp://HOST:PORT"
    if not CONNECT_HOST.fullmatch(host):
        return (f"{host!r} is not a host to connect to (a name, an IPv4 address or "
                "[IPv6])")
    if not (port.isascii() and port.isdigit()):
        return f"port {port!r} is not a number"
    if not 1 <= int(port) <= 65535:
        return f"port {port} is out of range (1-65535)"
    return None


def ipc_path_problem(path: str) -> str | None:
    """Why no Unix socket can have `path` (the part after ``ipc://``), or
    None: checked up front because ZeroMQ says so only when binding or
    connecting, as a traceback.  (``@NAME``, Linux's abstract namespace, has
    the same limit.)"""
    try:
        size = len(os.fsencode(path))
    except UnicodeError:  # (a lone surrogate the file system encoding cannot take)
        return "the ipc path cannot be encoded as a file name"
    if size > IPC_PATH_MAX:
        return (f"the ipc path is {size} bytes long, more than the {IPC_PATH_MAX} a "
                "Unix socket takes; use a shorter path (e.g. in /tmp)")
    return None


def connectable(address: str) -> str:
    """`address`, if a client can connect to it; ValueError saying why not
    (:func:`connect_problem`).  What Client and Controller take."""
    problem = connect_problem(address)
    if problem is not None:
        raise ValueError(f"cannot connect to {address!r}: {problem}")
    return address


def is_ipv6(address: str) -> bool:
    """Whether `address` names its host by a bracketed IPv6 address."""
    scheme, sep, rest = address.partition("://")
    return bool(sep) and scheme in ("tcp", "ws", "wss") and rest.startswith("[")


def bind(sock, address: str) -> None:
    """``sock.bind(address)``, with IPv6 switched on for an IPv6 address."""
    if is_ipv6(address):
        sock.ipv6 = True
    sock.bind(address)


def connect(sock, address: str) -> None:
    """``sock.connect(address)``, with IPv6 switched on for an IPv6 address."""
    if is_ipv6(address):
        sock.ipv6 = True
    sock.connect(address)

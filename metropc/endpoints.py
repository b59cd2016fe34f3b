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

__all__ = ["bind", "connect", "is_ipv6"]


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

"""Where the dashboard listens: parsing ``[HOST:]PORT`` and the loopback rule.

Kept apart from the package's ``__init__`` so that the server (and the
command line) import it without importing the package that imports them.
"""

from __future__ import annotations

__all__ = ["DEFAULT_PORT", "check_bind", "is_loopback", "parse_bind"]

#: Port of ``metropc-dashboard`` when none is given.
DEFAULT_PORT = 8050

def parse_bind(text, default_host="127.0.0.1"):
    """``"8050"``, ``"HOST:8050"`` or ``"[::1]:8050"`` -> ``(host, port)``.

    Raises ValueError for anything else (a port outside 0..65535 included).
    """
    text = str(text).strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = default_host, text
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif not host or ":" in host:
        raise ValueError(f"bad address {text!r}: use PORT, HOST:PORT or [IPv6]:PORT")
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"bad port in {text!r}") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"port {number} out of range 0..65535")
    return host, number


def is_loopback(host):
    """True for 127.x.y.z, ``localhost`` and ``::1`` (with or without brackets)."""
    host = str(host).strip("[]").lower()
    return host in ("localhost", "::1") or host.startswith("127.")


def check_bind(host, allow_remote=False):
    """Raise ValueError if `host` is not loopback and `allow_remote` is False."""
    if not is_loopback(host) and not allow_remote:
        raise ValueError(f"refusing to serve the dashboard on {host!r}, which is not a "
                         "loopback interface; pass --allow-remote to do it on purpose")

"""A live web dashboard for every view of a running pipeline.

::

    from metropc.dashboard import serve
    dash = serve(pipeline.output_addr, "127.0.0.1", 8050, control=pipeline)
    print("open", dash.url)
    ...
    dash.stop()

or from a shell, for any pipeline whose output address you know::

    metropc-dashboard tcp://127.0.0.1:5555 --bind 8050

The web part needs the optional ``dashboard`` extra
(``pip install 'metropc[dashboard]'``, which brings Tornado); see
docs/dashboard.md for what the page shows and how it stays fast.
"""

from __future__ import annotations

__all__ = ["DEFAULT_PORT", "Dashboard", "check_bind", "is_loopback", "parse_bind", "serve"]

from .address import DEFAULT_PORT, check_bind, is_loopback, parse_bind

_MISSING = ("the metropc dashboard needs Tornado: pip install 'metropc[dashboard]' "
            "(or pip install tornado)")


def __getattr__(name):
    if name in ("Dashboard", "serve"):
        try:
            from . import server
        except ImportError as e:
            if getattr(e, "name", "") and e.name.split(".")[0] == "tornado":
                raise ImportError(_MISSING) from e
            raise
        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

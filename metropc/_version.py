"""The metropc version, defined once: in pyproject.toml, read from the
installed package's metadata.

It lives in its own module (importing nothing of metropc) so that any module
of the package can read it without importing ``metropc/__init__``, which
imports the engine and the context machinery: reading the version from the
package itself made import cycles (``metropc`` -> ``core`` -> ``metropc``).
"""

from __future__ import annotations

from importlib import metadata

__all__ = ["__version__"]

try:
    __version__: str = metadata.version("metropc")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

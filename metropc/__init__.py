"""metropc: programmable online analysis for large-facility experiments.

The public API most users need is here: the enums, :func:`run` for running a
context in-process, and the step/action markers for it.  Context files get
``View`` and friends as globals; see docs/contexts.md.
"""

from ._version import __version__
from .engine import STEP, Action
from .enums import ContextStage, ViewOutput, ViewStage
from .inprocess import run

__all__ = ["ViewStage", "ContextStage", "ViewOutput", "run", "STEP", "Action",
           "__version__"]

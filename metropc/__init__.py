"""metropc: programmable online analysis for large-facility experiments.

The public API most users need is here: the enums, :func:`run` for running a
context in-process, and the step/action markers for it.  Context files get
``View`` and friends as globals; see docs/contexts.md.
"""

from .enums import ContextStage, ViewOutput, ViewStage

__version__ = "0.1.0"

from .engine import STEP, Action  # noqa: E402
from .inprocess import run  # noqa: E402

__all__ = ["ViewStage", "ContextStage", "ViewOutput", "run", "STEP", "Action",
           "__version__"]

"""The frontend API, as EXtra-foam and scripts import it.

The implementation lives in :mod:`metropc.stage.frontend` (with the stages
it starts); this module keeps the public import path.
"""

from .config import DROP_BLOCK, DROP_NEWEST, DROP_OLDEST, PipelineConfig
from .stage.frontend import (Context, ContextError, ProcessRunner, StageRunner,
                             ThreadedFrontend, ThreadRunner, decode_protocol,
                             encode_protocol)

__all__ = ["ThreadedFrontend", "ProcessRunner", "ThreadRunner", "StageRunner",
           "Context", "ContextError", "encode_protocol", "decode_protocol",
           "DROP_OLDEST", "DROP_NEWEST", "DROP_BLOCK", "PipelineConfig"]

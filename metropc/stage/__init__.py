"""Pipeline stages: POOL workers, REDUCE, and the runners that host them.

``PoolContext`` and ``ReduceContext`` name the stage loops, as the original
metropc documents runners being bound to a stage by such a class.
"""

from .pool import PoolWorker as PoolContext
from .pool import run_pool
from .reduce import ReduceStage as ReduceContext
from .reduce_loop import run_reduce
from .runner import ProcessRunner, StageRunner, ThreadRunner

__all__ = ["StageRunner", "ThreadRunner", "ProcessRunner", "PoolContext",
           "ReduceContext", "run_pool", "run_reduce"]

"""One frozen description of how a pipeline runs, with every default once.

The command line, :class:`~metropc.pipeline.Pipeline` and
:class:`~metropc.frontend.ThreadedFrontend` used to repeat some twenty
keyword arguments each, with their defaults copied at every layer.  Now
each layer takes its keyword arguments (the public APIs keep them) and
builds one :class:`PipelineConfig`, which travels down unchanged; a
default is defined here and nowhere else.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["PipelineConfig", "DROP_OLDEST", "DROP_NEWEST", "DROP_BLOCK", "DROP_POLICIES"]

#: Drop the oldest waiting event when the queue is full (keeps displays current).
DROP_OLDEST = "oldest"
#: Refuse the new event when the queue is full (keeps what already waits).
DROP_NEWEST = "newest"
#: Block the caller of ``queue_to_any`` while the queue is full: nothing is
#: dropped, the source is slowed down instead (as a ZeroMQ PUSH at its
#: high-water mark).  The default for file replays and scripted feeding.
DROP_BLOCK = "block"
DROP_POLICIES = (DROP_OLDEST, DROP_NEWEST, DROP_BLOCK)

#: Default bound of the event queue in bytes (its arrays): 256 MiB.
DEFAULT_QUEUE_BYTES = 256 << 20


@dataclass(frozen=True)
class PipelineConfig:
    """Settings of the frontend and the stages (see ThreadedFrontend for each)."""

    pool: int = 2
    queue_size: int = 16
    queue_bytes: int = DEFAULT_QUEUE_BYTES
    drop_policy: str = DROP_OLDEST
    prefetch: int = 4
    output_hwm: int = 100
    reorder_timeout: float = 10.0
    event_timeout: float | None = 30.0
    stats_interval: float = 1.0
    keys: str | None = None
    shm: bool | None = None
    shm_size: int | None = None
    shm_threshold: int = 64 << 10
    ready_timeout: float = 60.0
    log_level: int | None = None

    def __post_init__(self):
        problems = []
        if type(self.pool) is not int or self.pool < 0:
            # 0: every worker joins from another host (metropc-worker)
            problems.append(f"pool must be a whole number >= 0, not {self.pool!r}")
        if type(self.queue_size) is not int or self.queue_size < 1:
            problems.append(f"queue_size must be a whole number >= 1, not {self.queue_size!r}")
        if type(self.queue_bytes) is not int or self.queue_bytes < 1:
            problems.append(f"queue_bytes must be a whole number >= 1, not {self.queue_bytes!r}")
        if self.drop_policy not in DROP_POLICIES:
            problems.append(f"drop_policy must be one of {', '.join(map(repr, DROP_POLICIES))}"
                            f", not {self.drop_policy!r}")
        if type(self.prefetch) is not int or self.prefetch < 1:
            problems.append(f"prefetch must be a whole number >= 1, not {self.prefetch!r}")
        if type(self.output_hwm) is not int or self.output_hwm < 1:
            problems.append(f"output_hwm must be a whole number >= 1, not {self.output_hwm!r}")
        if self.event_timeout is not None and not self.event_timeout > 0:
            problems.append(f"event_timeout must be positive or None, not {self.event_timeout!r}")
        for name in ("reorder_timeout", "stats_interval", "ready_timeout"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be positive, not {getattr(self, name)!r}")
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def fields(cls) -> frozenset[str]:
        return frozenset(f.name for f in dataclasses.fields(cls))

    def replace(self, **changes) -> PipelineConfig:
        """A copy with `changes` (validated like the original)."""
        return dataclasses.replace(self, **changes)

"""The three enums every layer shares: where a view runs and what it outputs.

They live in their own leaf module so that the protocol, the client and the
context language can all import them without importing each other.
"""

from __future__ import annotations

import enum

__all__ = ["ViewStage", "ContextStage", "ViewOutput"]


class ViewStage(enum.Enum):
    """Where in the pipeline a view's kernel is executed."""

    #: In the frontend before dispatch (not implemented, as in the original).
    FRONTEND = 0
    #: Parallel over events in the worker pool; the default for plain kernels.
    POOL = 1
    #: In the single reduce process, every event in order.
    REDUCE = 2
    #: Beside reduce for long computations over many events (not implemented).
    ASYNC = 3
    #: Virtual stage inside reduce, executed at the end of an operator step.
    STEP = 4
    #: Virtual stage inside reduce, executed when the frontend asks for it.
    ACTION = 5


class ContextStage(enum.Enum):
    """The real stages that hold their own context object."""

    FRONTEND = 0
    POOL = 1
    REDUCE = 2
    ASYNC = 3


class ViewOutput(enum.Enum):
    """What kind of result a view produces, and how clients should show it.

    Generic types have values below 10; a hinted type derived from the
    generic type ``x`` has the value ``10 * x + y``.  A generic type compares
    equal to each of its hinted types, while two different hinted types are
    unequal, so ``ViewOutput.SCALAR == ViewOutput.SCALAR_FAST`` is True but
    ``ViewOutput.SCALAR_FAST == ViewOutput.SCALAR_SLOW`` is False.
    ``IMAGE`` is an alias of ``MATRIX``.
    """

    COMPUTE = 0
    SCALAR = 1
    VECTOR = 2
    MATRIX = 3
    IMAGE = 3
    POINTS = 4

    SCALAR_FAST = 11
    SCALAR_SLOW = 12
    VECTOR_LINE = 21
    VECTOR_DISTRIBUTION = 22
    POINTS_BINNED = 41
    POINTS_SCATTER = 42

    @property
    def generic(self) -> ViewOutput:
        """The generic type this one derives from (itself if generic)."""
        return ViewOutput(self.value // 10) if self.value >= 10 else self

    @property
    def is_hinted(self) -> bool:
        return self.value >= 10

    @property
    def hint(self) -> str | None:
        """The hint word (``'FAST'`` for ``SCALAR_FAST``), None if generic."""
        return self.name.split("_", 1)[1] if self.is_hinted else None

    def __eq__(self, other):
        if not isinstance(other, ViewOutput):
            return NotImplemented
        if self is other:
            return True
        if self.is_hinted and other.is_hinted:
            return False
        return self.generic is other.generic

    def __hash__(self):
        # Equal members must hash alike: hash the generic value.
        return hash(self.generic.value)

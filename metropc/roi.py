"""Regions of interest as context parameters: :class:`RectROI` and :class:`LineROI`.

A context declares one like any parameter::

    parameters(roi=RectROI(x=100, y=80, width=64, height=32))

    @View.Scalar
    def roi_sum(image: DETECTOR):
        return float(image[roi.slice].sum())

and the dashboard lets people draw it on an image panel; the new value then
reaches every stage like any parameter change.  Both types are small frozen
dataclasses, so they pickle, compare and hash by value, and a kernel can
never modify the one it was given by mistake.  Coordinates are in pixels of
the full-resolution image as the kernel sees it: ``x`` is the column, ``y``
the row (numpy's ``image[y, x]``).

Values coming from outside (the dashboard's JSON, ``metropc-run --param``,
``metropc-client --set``) are dicts, sequences or their text; :meth:`RectROI.coerce` and :meth:`LineROI.coerce`
turn them into the type, which is what
:func:`metropc.core.coerce_parameter` uses for a parameter declared with an
ROI.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence

__all__ = ["LineROI", "RectROI"]


def _number(name, value, integral):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, not {value!r}")
    if integral:
        if value != int(value):
            raise ValueError(f"{name} must be a whole number of pixels, not {value!r}")
        return int(value)
    return float(value) if not isinstance(value, numbers.Integral) else int(value)


def _from_text(cls, text: str):
    """What a command line gives (``metropc-client --set roi=...``): ``5,6,7,8``,
    ``(5, 6, 7, 8)``, ``[5, 6, 7, 8]``, ``{"x": 5, ...}`` or ``RectROI(5, 6, 7, 8)``
    (positional numbers only) as a tuple or a dict; other text as it is."""
    body = text.strip()
    if body.startswith(cls.__name__ + "(") and body.endswith(")"):
        body = body[len(cls.__name__) + 1:-1]
    try:
        value = ast.literal_eval(body)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text
    return value if isinstance(value, (tuple, list, Mapping)) else text


def _fields_of(cls, value):
    """`value` (a mapping or a sequence in field order) as ``{field: value}``."""
    names = [f.name for f in dataclasses.fields(cls)]
    if isinstance(value, cls):
        return dataclasses.asdict(value)
    if isinstance(value, str):
        value = _from_text(cls, value)
        if isinstance(value, str):
            raise ValueError(f"{cls.__name__} wants {len(names)} numbers "
                             f"({', '.join(names)}) such as "
                             f"{','.join(str(i + 1) for i in range(len(names)))}, "
                             f"got {value!r}")
    if isinstance(value, Mapping):
        missing = [n for n in names if n not in value]
        extra = [str(k) for k in value if k not in names]
        if missing or extra:
            raise ValueError(f"{cls.__name__} needs exactly the keys {', '.join(names)}"
                             + (f" (missing {', '.join(missing)})" if missing else "")
                             + (f" (unknown {', '.join(extra)})" if extra else ""))
        return {n: value[n] for n in names}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        if len(value) != len(names):
            raise ValueError(f"{cls.__name__} needs {len(names)} numbers "
                             f"({', '.join(names)}), got {len(value)}")
        return dict(zip(names, value))
    raise TypeError(f"got {type(value).__name__}, not a {cls.__name__}, a dict or a sequence")


@dataclasses.dataclass(frozen=True)
class RectROI:
    """A rectangle of whole pixels: columns ``x .. x+width-1``, rows ``y .. y+height-1``.

    ``image[roi.slice]`` is the region; width and height are at least 1 (an
    ROI that selects nothing is almost always a mistake, and would make
    every kernel that sums or averages it fail).
    """

    x: int
    y: int
    width: int
    height: int

    def __post_init__(self):
        # Validated here so that a bad ROI fails where it is made (the
        # context file's line, or the dashboard's reply), not in a kernel.
        for name in ("x", "y", "width", "height"):
            object.__setattr__(self, name, _number(name, getattr(self, name), True))
        if self.width < 1 or self.height < 1:
            raise ValueError(f"width and height must be at least 1, not "
                             f"{self.width} x {self.height}")

    @property
    def slice(self) -> tuple[slice, slice]:
        """``(rows, columns)`` for numpy: ``image[roi.slice]``."""
        return (slice(self.y, self.y + self.height), slice(self.x, self.x + self.width))

    @property
    def xslice(self) -> slice:
        return slice(self.x, self.x + self.width)

    @property
    def yslice(self) -> slice:
        return slice(self.y, self.y + self.height)

    def clip(self, shape) -> RectROI | None:
        """This ROI cut to an image of `shape` ``(rows, cols)``; None if outside."""
        rows, cols = int(shape[-2]), int(shape[-1])
        x0, y0 = max(0, self.x), max(0, self.y)
        x1, y1 = min(cols, self.x + self.width), min(rows, self.y + self.height)
        if x1 <= x0 or y1 <= y0:
            return None
        return RectROI(x0, y0, x1 - x0, y1 - y0)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def coerce(cls, value) -> RectROI:
        """A RectROI from a RectROI, ``{"x", "y", "width", "height"}`` or 4 numbers."""
        if isinstance(value, cls):
            return value
        return cls(**_fields_of(cls, value))


@dataclasses.dataclass(frozen=True)
class LineROI:
    """A line from ``(x0, y0)`` to ``(x1, y1)``, in pixels (x the column, y the row).

    Meant for profiles: :meth:`points` gives the pixel positions along it.
    """

    x0: float
    y0: float
    x1: float
    y1: float

    def __post_init__(self):
        for name in ("x0", "y0", "x1", "y1"):
            object.__setattr__(self, name, _number(name, getattr(self, name), False))

    @property
    def length(self) -> float:
        return math.hypot(self.x1 - self.x0, self.y1 - self.y0)

    def points(self, n=None):
        """``(rows, cols)`` float arrays of `n` points along the line (default:
        one per pixel of length, at least 2), for ``scipy.ndimage.map_coordinates``
        or rounding to indices."""
        import numpy as np

        if n is None:
            n = max(2, int(math.ceil(self.length)) + 1)
        t = np.linspace(0.0, 1.0, int(n))
        return self.y0 + t * (self.y1 - self.y0), self.x0 + t * (self.x1 - self.x0)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def coerce(cls, value) -> LineROI:
        """A LineROI from a LineROI, ``{"x0", "y0", "x1", "y1"}`` or 4 numbers."""
        if isinstance(value, cls):
            return value
        return cls(**_fields_of(cls, value))


#: The ROI types, for isinstance checks (core.coerce_parameter, the dashboard).
ROI_TYPES = (RectROI, LineROI)

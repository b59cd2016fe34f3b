"""One binned coordinate axis: fixed, or growing with the data up to a limit.

The edge rule (the reference contradicts itself; this is the one we keep, see
docs/builtin.md "Bin edges"):

* An axis is a run of uniform bins on an infinite grid of edges
  ``anchor + k * step`` (k an integer).  Bin ``k`` holds every value ``v``
  with ``edge(k) <= v < edge(k + 1)``; its coordinate is its centre.
* The anchor is ``bin_min`` if given, else ``bin_max``, else ``-step / 2``
  (so that a free axis has its centres on the multiples of ``step`` and
  integer data with step 1 land on their own value).
* ``bin_min`` and ``bin_max`` are therefore edges: ``[bin_min, bin_max)`` is
  binned.  With ``bin_min, bin_max, bin_count`` the last edge is exactly
  ``bin_max`` (like :func:`numpy.linspace`); ``bin_max`` itself lies outside.

Binning is vectorised: a floating-point estimate of each value's bin is
corrected against the actual edges (one comparison each side), so the
result obeys the rule above exactly instead of "up to rounding".
"""

from __future__ import annotations

import logging
import math
import numbers

import numpy as np

from ._util import check_int

__all__ = ["BinnedAxis"]

log = logging.getLogger(__name__)

#: Values binned per pass: small enough for the scratch arrays to stay in
#: the L2 cache, large enough for numpy call overhead not to matter.
CHUNK = 1 << 16


def _real(owner, arg, value):
    """`value` as a finite float, or None; errors name the view (`owner`)."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.number)):
        raise TypeError(f"{_prefix(owner)}{arg} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{_prefix(owner)}{arg} must be finite, got {value}")
    return value


def _prefix(owner):
    return f"view '{owner}': " if owner else ""


def _split(need_lo, need_hi, room):
    """Share `room` bins between the two sides of an axis that want to grow.

    Each side gets at least half of the room (the lower side the odd bin)
    when both want more than that; room one side does not need goes to the
    other.  Keeps growth under a limit symmetric instead of favouring a side.
    """
    if need_lo + need_hi <= room:
        return need_lo, need_hi
    give_lo = min(need_lo, max(room - need_hi, (room + 1) // 2))
    return give_lo, min(need_hi, room - give_lo)


class BinnedAxis:
    """Manages one coordinate axis for data binning.

    ``BinnedAxis(bin_step, bin_min, bin_max, bin_count, bin_limit)``: every
    argument is positional and must be given; all but `bin_limit` may be
    None.  The combinations select the mode:

    * none of them, or only `bin_step`: grows in both directions up to
      `bin_limit` bins, `bin_step` 1.0 by default;
    * `bin_min` or `bin_max` (not both) without `bin_count`: fixed at that
      end, grows away from it up to `bin_limit`;
    * exactly two of `bin_count`, `bin_min`, `bin_max`: fixed, `bin_step`
      1.0 by default (with `bin_min` and `bin_max` the count is
      ``ceil((bin_max - bin_min) / bin_step)``);
    * all three: fixed, `bin_step` computed (an explicit one must agree).

    `bin_margin` (keyword) is the number of empty bins added beyond the
    outermost value whenever the axis grows on a side, so that data wobbling
    near the edge do not regrow the buffer on every event.  `owner` names the
    view in error messages.
    """

    def __init__(self, bin_step, bin_min, bin_max, bin_count, bin_limit, *,
                 bin_margin=1, owner=None):
        self.owner = owner
        step = _real(owner, "bin_step", bin_step)
        lo_val = _real(owner, "bin_min", bin_min)
        hi_val = _real(owner, "bin_max", bin_max)
        count = check_int(owner, "bin_count", bin_count, 1, allow_none=True)
        if step is not None and step <= 0:
            raise ValueError(f"{_prefix(owner)}bin_step must be > 0, got {step}")
        if lo_val is not None and hi_val is not None and not lo_val < hi_val:
            raise ValueError(f"{_prefix(owner)}bin_min ({lo_val}) must be smaller than "
                             f"bin_max ({hi_val})")
        self._pinned_upper = None
        self.grow_lower = self.grow_upper = False
        if count is not None and lo_val is not None and hi_val is not None:
            computed = (hi_val - lo_val) / count
            if step is not None and not math.isclose(step, computed, rel_tol=1e-9):
                raise ValueError(f"{_prefix(owner)}bin_step={step} disagrees with "
                                 f"bin_min, bin_max and bin_count (step {computed})")
            self.step, self.anchor, lo, hi = computed, lo_val, 0, count
            self._pinned_upper = hi_val
        elif lo_val is not None and hi_val is not None:
            self.step = step or 1.0
            ratio = (hi_val - lo_val) / self.step
            count = round(ratio)
            if not math.isclose(ratio, count, rel_tol=1e-9):
                count = math.ceil(ratio)
            else:
                self._pinned_upper = hi_val
            self.anchor, lo, hi = lo_val, 0, max(count, 1)
        elif count is not None and lo_val is not None:
            self.step, self.anchor, lo, hi = step or 1.0, lo_val, 0, count
        elif count is not None and hi_val is not None:
            self.step, self.anchor, lo, hi = step or 1.0, hi_val, -count, 0
        elif count is not None:
            raise ValueError(f"{_prefix(owner)}bin_count={count} needs bin_min or "
                             "bin_max to place the bins (or leave it out to let the "
                             "axis grow with the data)")
        elif lo_val is not None:
            self.step, self.anchor, lo, hi = step or 1.0, lo_val, 0, 0
            self.grow_upper = True
        elif hi_val is not None:
            self.step, self.anchor, lo, hi = step or 1.0, hi_val, 0, 0
            self.grow_lower = True
        else:
            self.step = step or 1.0
            self.anchor, lo, hi = -self.step / 2, None, None
            self.grow_lower = self.grow_upper = True
        if self.growing:
            self.limit = check_int(owner, "bin_limit", bin_limit, 1)
            self.margin = check_int(owner, "bin_margin", bin_margin, 0)
        else:
            self.limit, self.margin = None, 0
        self._initial = (lo, hi)
        self._lo, self._hi = lo, hi
        self._scratch = None
        self._refresh()

    def __getstate__(self):
        # Scratch arrays are a cache; copies and pickles need not carry them.
        state = self.__dict__.copy()
        state["_scratch"] = None
        return state

    # -- description ------------------------------------------------------
    @property
    def growing(self):
        """True if the axis may still change with new data."""
        return self.grow_lower or self.grow_upper

    @property
    def count(self):
        """The current number of bins."""
        return 0 if self._lo is None else self._hi - self._lo

    def __len__(self):
        return self.count

    @property
    def edges(self):
        """The ``count + 1`` bin edges (a copy; empty while the axis is)."""
        return self._ext[1:-1].copy() if self.count else np.empty(0)

    @property
    def centres(self):
        """Bin centres: the coordinates of a histogram along this axis."""
        e = self._ext[1:-1]
        return (e[:-1] + e[1:]) / 2

    coords = centres

    def __repr__(self):
        mode = ("growing both ways" if self.grow_lower and self.grow_upper else
                "growing up" if self.grow_upper else
                "growing down" if self.grow_lower else "fixed")
        span = f"[{self._ext[1]:g}, {self._ext[-2]:g})" if self.count else "empty"
        return f"<BinnedAxis {self.count} bins of {self.step:g} {span} {mode}>"

    def _refresh(self):
        """Rebuild the edge table after the range changed.

        ``_ext`` is ``[nan, edge_0, ..., edge_n, nan]``: index ``s`` of it is
        the lower edge of shifted bin ``s`` (0 = underflow, n+1 = overflow)
        and NaN compares False both ways, so the two overflow bins never
        get corrected out of range.
        """
        n = self.count
        ext = np.full(n + 3, np.nan)
        if n:
            ext[1:-1] = self.anchor + np.arange(self._lo, self._hi + 1, dtype=np.float64) * self.step
            if self._pinned_upper is not None:
                ext[-2] = self._pinned_upper
            self._origin = float(ext[1]) - self.step
        else:
            self._origin = 0.0
        self._ext = ext
        self._upper = ext[1:]
        self._inv = 1.0 / self.step

    def reset(self):
        """Back to the range the axis had before any data."""
        self._lo, self._hi = self._initial
        self._refresh()

    # -- binning ------------------------------------------------------------
    def index_of(self, value):
        """Shifted bin of one finite or infinite float: 0 under, n+1 over."""
        n = self.count
        f = (value - self._origin) * self._inv
        s = 0 if f < 0 else n + 1 if f > n + 1 else int(f)
        ext = self._ext
        if value < ext[s]:
            s -= 1
        elif value >= ext[s + 1]:
            s += 1
        return s

    def indices(self, values):
        """Shifted bins (intp, 0 = underflow, n+1 = overflow) of a 1-D array.

        `values` must not contain NaN.  A fresh array; the views use
        :meth:`chunk_indices` to avoid holding one per event.
        """
        out = np.empty(len(values), np.intp)
        for start, s in self.chunk_indices(values):
            out[start:start + len(s)] = s
        return out

    def chunk_indices(self, values, chunk=CHUNK):
        """Yield ``(start, shifted bins)`` for consecutive chunks of `values`.

        The estimate ``(v - origin) / step`` is computed in float64 whatever
        the input dtype, clipped to the two overflow bins, truncated, then
        corrected by one bin where it disagrees with the edge table.  Chunks
        of ~64k values keep every pass inside the CPU cache and the scratch
        memory bounded (the yielded array is reused for the next chunk).
        """
        n = self.count
        size = min(len(values), chunk)
        scratch = self._scratch
        if scratch is None or len(scratch[1]) < size:
            scratch = self._scratch = (np.empty(size), np.empty(size), np.empty(size, np.intp),
                                       np.empty(size, np.bool_))
        v64, f, s, b = scratch
        ext, upper, origin, inv = self._ext, self._upper, self._origin, self._inv
        for start in range(0, len(values), chunk):
            x = values[start:start + chunk]
            m = len(x)
            vv, ff, ss, bb = v64[:m], f[:m], s[:m], b[:m]
            if x.dtype == np.float64:
                vv = x
            else:
                np.copyto(vv, x, casting="unsafe")
            np.subtract(vv, origin, out=ff)
            np.multiply(ff, inv, out=ff)
            np.clip(ff, 0.0, n + 1.0, out=ff)
            np.copyto(ss, ff, casting="unsafe")
            np.take(ext, ss, out=ff, mode="clip")
            np.less(vv, ff, out=bb)
            np.subtract(ss, bb, out=ss)
            np.take(upper, ss, out=ff, mode="clip")
            np.greater_equal(vv, ff, out=bb)
            np.add(ss, bb, out=ss)
            yield start, ss

    def _bin(self, value):
        """Grid index k of a finite value: ``anchor + k*step <= value`` < next."""
        k = math.floor((value - self.anchor) / self.step)
        if value < self.anchor + k * self.step:
            k -= 1
        elif value >= self.anchor + (k + 1) * self.step:
            k += 1
        return k

    # -- growth -------------------------------------------------------------
    def align(self, values):
        """Grow the axis to cover the finite values of `values` (if it grows).

        Returns ``(added_below, added_above)``, the number of bins added at
        each end, which a histogram uses to re-place its counts.
        """
        values = np.asarray(values, dtype=np.float64).ravel()
        values = values[np.isfinite(values)]
        if not values.size:
            return 0, 0
        return self.align_range(float(values.min()), float(values.max()))

    def align_range(self, vmin, vmax):
        """:meth:`align` for data known by their finite minimum and maximum."""
        if not self.growing:
            return 0, 0
        kmin, kmax = self._bin(vmin), self._bin(vmax)
        seeded = self._lo is None
        if seeded:
            # A free axis starts around the middle of its first data, so
            # that a first batch wider than the limit is cut symmetrically.
            self._lo = self._hi = (kmin + kmax) // 2
        lo, hi = self._lo, self._hi
        need_lo = max(0, lo - kmin) if self.grow_lower else 0
        need_hi = max(0, kmax + 1 - hi) if self.grow_upper else 0
        if not (need_lo or need_hi or seeded):
            return 0, 0
        room = self.limit - (hi - lo)
        g_lo, g_hi = _split(need_lo, need_hi, room)
        room -= g_lo + g_hi
        m_lo, m_hi = _split(self.margin if (need_lo or seeded) and self.grow_lower else 0,
                            self.margin if (need_hi or seeded) and self.grow_upper else 0,
                            room)
        if g_lo < need_lo or g_hi < need_hi:
            log.debug("axis of %s reached its limit of %d bins", self.owner, self.limit)
        self._lo, self._hi = lo - g_lo - m_lo, hi + g_hi + m_hi
        self._refresh()
        return g_lo + m_lo, g_hi + m_hi

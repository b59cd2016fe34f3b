"""European XFEL data paths: Karabo devices and their pipeline channels.

Two forms exist, as in Karabo itself and in the Karabo bridge:

- control (slow) data: ``karabo#DEVICE/ID/X.property.path``
- pipeline (fast) data: ``karabo#DEVICE/ID/X:channel[key.path]``; the older
  dotted form ``DEVICE/ID/X:channel.key.path`` is accepted and normalised to
  the bracket form, which is what ``str(path)`` gives and what a frontend
  uses as event-dict key.

A trailing ``@AGGREGATOR:output`` names the DAQ aggregator the data comes
through; it is kept as :attr:`KaraboPath.aggregator` and is not part of the
event key.
"""

from __future__ import annotations

import re

from .path import Path

__all__ = ["KaraboPath"]

_DEV = r"[^\s.:\[\]@#]+"
# In the bracket form the channel may contain dots (FastADC channels are
# named like ``channel_1.output``); in the dotted form the first dot ends it.
_FAST_RE = re.compile(
    rf"^(?P<dev>{_DEV}):(?:(?P<bch>[^\s:\[\]@#]+)\[(?P<key>[^\[\]\s]+)\]"
    r"|(?P<ch>[^\s.:\[\]@#]+)\.(?P<dkey>[^\s\[\]@#]+))"
    r"(?:@(?P<agg>\S+))?$")
_SLOW_RE = re.compile(rf"^(?P<dev>{_DEV})\.(?P<key>[^\s\[\]@#:]+)$")


class KaraboPath(Path, alias="karabo"):
    """A Karabo property or pipeline key, as delivered by a Karabo bridge."""

    def parse(self, path):
        body = self.strip_type(path)
        m = _FAST_RE.match(body)
        if m is not None:
            self.source = f"{m['dev']}:{m['bch'] or m['ch']}"
            self.key = m["key"] or m["dkey"]
            self.fast = True
            self.aggregator = m["agg"]
            return f"karabo#{self.source}[{self.key}]"
        m = _SLOW_RE.match(body)
        if m is not None:
            self.source, self.key = m["dev"], m["key"]
            self.fast = False
            self.aggregator = None
            return f"karabo#{self.source}.{self.key}"
        raise ValueError(
            f"{path!r} is not a Karabo path: use DEVICE.property for control "
            "data or DEVICE:channel[key] for pipeline data")

    @property
    def device(self):
        return self.source.split(":", 1)[0]

    @classmethod
    def accepts_bare(cls, body):
        return bool(_FAST_RE.match(body) or _SLOW_RE.match(body))

    def extract(self, data):
        """The value from Karabo bridge data: ``data[source][key]``."""
        return data[self.source][self.key]

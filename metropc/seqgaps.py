"""Results a subscriber missed, from the gaps in their ``seq`` numbers.

REDUCE numbers each view's results (docs/protocol.md); :class:`SeqGaps`
is how a subscriber that reads them (``metropc.client.Client``, the
recorder) counts what did not reach it.
"""

from __future__ import annotations

import logging
from typing import Any

from .messages import SEQ_BITS, unpack_seq

log = logging.getLogger(__name__)

__all__ = ["SeqGaps"]


class SeqGaps:
    """Results missed, per view path, from the gaps in their ``seq`` numbers.

    REDUCE numbers each view's results (docs/protocol.md); a subscriber
    that sees a number skipped knows how many results it did not get, and
    one it saw already (a copy, while switching to batches) is dropped.
    Used by :class:`Client` and by the recorder.
    """

    def __init__(self):
        self.missed: dict[str, int] = {}
        self.last: dict[str, tuple[int, int]] = {}  # path -> latest (stream, n)

    def count(self, path: str, seq) -> bool:
        """Add the gap between `path`'s previous sequence number and `seq`;
        False if `seq` came before (a copy, while switching to batches)."""
        seq = unpack_seq(seq)
        if seq is None:
            return True  # an older pipeline: no sequence numbers
        last = self.last.get(path)
        if last is None:
            self.last[path] = seq
            return True  # the first result since subscribing: the baseline
        if last[0] != seq[0]:
            # The pipeline's REDUCE restarted: its numbers start at 0, and
            # it numbered what it sent before this client was back.
            log.info("%s: new sequence (the pipeline's REDUCE restarted)", path)
            last = (seq[0], -1)
        gap = (seq[1] - last[1] - 1) % (1 << SEQ_BITS)  # n wraps at 2**32
        if gap >= 1 << (SEQ_BITS - 1):
            return False  # at or before the last one: seen already
        self.last[path] = seq
        if gap > 0:
            self.missed[path] = self.missed.get(path, 0) + gap
            log.debug("%s: missed %d result(s)", path, gap)
        return True

    def caught_up(self, seqs) -> None:
        """Count what a status's ``seqs`` show missed: the last result of
        each view published so far, by ``{path: seq}``.

        A gap is otherwise seen only when a later result arrives, so results
        dropped at the very end of a run would never be counted.  Only
        views with a baseline are counted (a result since subscribing); a
        new stream (REDUCE restarted) counts from its start, as in
        :meth:`count`.
        """
        if type(seqs) is not dict:
            return
        for path, last in self.last.items():
            seq = unpack_seq(seqs.get(path))
            if seq is None:
                continue
            if seq[0] != last[0]:
                last = (seq[0], -1)
            gap = (seq[1] - last[1]) % (1 << SEQ_BITS)
            if 0 < gap < 1 << (SEQ_BITS - 1):
                self.last[path] = seq
                self.missed[path] = self.missed.get(path, 0) + gap
                log.debug("%s: missed %d result(s) at the end", path, gap)

    def count_batch(self, path: str, payloads: list) -> list[tuple[str, Any]]:
        """``(path, payload)`` of a batch's results not seen before, their
        gaps counted as by :meth:`count`; in one step when the batch's
        ``seq`` numbers follow each other in one stream (the usual case)."""
        seqs = [data.get("seq") if type(data) is dict else None for data in payloads]
        first, last = seqs[0], seqs[-1]
        if (type(first) is int and type(last) is int and first >= 0
                and first >> SEQ_BITS == last >> SEQ_BITS
                and seqs == list(range(first, last + 1))):
            if not self.count(path, first):
                return [(path, data) for data, seq in zip(payloads, seqs)
                        if self.count(path, seq)]
            self.last[path] = unpack_seq(last)
            return [(path, data) for data in payloads]
        return [(path, data) for data in payloads
                if type(data) is not dict or self.count(path, data.get("seq"))]

"""The two-phase context reload, on both ends, without any I/O.

A new context must never leave the pipeline half-switched: every stage
builds it first (*prepare*), and it is used only if all of them could
(*commit*); if any stage refuses it, or does not answer in time, every
stage forgets it (*abort*) and the old context goes on.

- :class:`ReloadCoordinator` is the frontend's side: it starts a reload,
  collects the answers and says when and how it ends.
- :class:`StagedContext` is a stage's side, shared by POOL and REDUCE: it
  builds a context from a ``context`` message, keeps a prepared one until
  ``commit`` or ``abort``, and says what to answer.

Any exception from context code while building, BaseException included
(a ``sys.exit()`` at the top level of an edited file), refuses the context
with the file and line; it never ends a stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .common import OP_ABORT, OP_COMMIT, OP_CONTEXT, OP_CTX_FAILED, OP_CTX_READY, build_context

__all__ = ["ReloadCoordinator", "Committed", "Aborted", "StagedContext", "RELOAD_TIMEOUT"]

#: Seconds the stages get to build a new context before it is refused.
RELOAD_TIMEOUT = 30.0


@dataclass(frozen=True)
class Committed:
    """Every stage prepared `version`: commit it where ``ready``, send the
    whole context to the others (replacements started meanwhile)."""

    version: object
    data: dict
    ready: frozenset


@dataclass(frozen=True)
class Aborted:
    """`version` is refused everywhere; `why` says by whom and how."""

    version: object
    why: str


@dataclass
class _Pending:
    data: dict
    version: object
    started: float
    waiting: set
    ready: set = field(default_factory=set)
    failures: list = field(default_factory=list)


class ReloadCoordinator:
    """The frontend's side of the two-phase reload."""

    def __init__(self, timeout: float = RELOAD_TIMEOUT):
        self.timeout = timeout
        self.pending: _Pending | None = None

    @property
    def busy(self) -> bool:
        """A reload is under way: nothing queued after it may move yet."""
        return self.pending is not None

    def begin(self, data: dict, stages, now: float) -> dict:
        """Start preparing context `data` in `stages`; the message to send them."""
        self.pending = _Pending(data, data.get("version"), now, set(stages))
        return {"ctx": data, "prepare": True}

    def on_answer(self, name: str, version, ok: bool, msg: str = ""):
        """A stage prepared `version` (ok) or refused it; the outcome once all answered."""
        p = self.pending
        if p is None or version != p.version or name not in p.waiting:
            return None
        p.waiting.discard(name)
        if ok:
            p.ready.add(name)
        else:
            p.failures.append(f"[{name}] {msg}")
        return self._outcome()

    def stage_gone(self, name: str):
        """`name` died or left: it will not answer (its replacement gets the
        context whole at commit)."""
        p = self.pending
        if p is None or name not in p.waiting:
            return None
        p.waiting.discard(name)
        return self._outcome()

    def tick(self, now: float):
        """Refuse a reload that took longer than the timeout."""
        p = self.pending
        if p is None or now - p.started <= self.timeout:
            return None
        self.pending = None
        return Aborted(p.version, "no answer from " + ", ".join(sorted(p.waiting)))

    def _outcome(self):
        p = self.pending
        if p.waiting:
            return None
        self.pending = None
        if p.failures:
            return Aborted(p.version, "; ".join(p.failures))
        return Committed(p.version, p.data, frozenset(p.ready))


class StagedContext:
    """A stage's side: the prepared context and what to answer.

    Each method returns ``(reply, ctx)``: `reply` an ``(opcode, data)`` to
    send to the frontend or None, `ctx` a context to start using now or None.
    """

    #: The control messages this class handles (see :meth:`handle`).
    OPCODES = frozenset({OP_CONTEXT, OP_COMMIT, OP_ABORT})

    def __init__(self, stage):
        self.stage = stage
        self.prepared = None

    def handle(self, opcode: bytes, data: dict):
        """``(reply, ctx)`` for a ``context``, ``commit`` or ``abort`` message."""
        if opcode == OP_CONTEXT:
            return self.on_context(data)
        if opcode == OP_COMMIT:
            return self.on_commit(data)
        return self.on_abort(data)

    def on_context(self, data: dict):
        ctx_data = data.get("ctx")
        version = ctx_data.get("version") if isinstance(ctx_data, dict) else None
        ctx, error = build_context(data, self.stage)
        if ctx is None:
            return (OP_CTX_FAILED, {"version": version, "msg": error}), None
        if data.get("prepare"):
            self.prepared = ctx
            return (OP_CTX_READY, {"version": version}), None
        return None, ctx

    def on_commit(self, data: dict):
        ctx, self.prepared = self.prepared, None
        if ctx is not None and ctx.version == data.get("version"):
            return None, ctx
        return None, None

    def on_abort(self, data: dict):
        self.prepared = None
        return None, None

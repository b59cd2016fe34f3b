"""The stage vocabulary: opcodes, reserved keys, and what each message holds.

Stages talk in metropc protocol messages (:mod:`metropc.protocol`): an
opcode plus a flat ``{str: value}`` payload.  This module is the one place
that says which opcodes exist, which fields each payload has, of which
types, and which are required; :func:`validate` checks a decoded message
against that, so that a well-framed message with a wrong field type (a
``credit`` whose ``n`` is a string, a ``lost`` whose ``seqs`` is not a list
of ints) is a :class:`~metropc.error.ProtocolError` at the socket, dropped
there, instead of an exception deep in a stage loop.

:func:`metropc.stage.common.recv` and :func:`~metropc.stage.common.recv_messages`
validate every message they return.  ``docs/protocol.md`` ("Stage
messages") describes the same vocabulary for readers.

Related codecs that stay where they are: the index payload (``index``
topic, ``{path: tuple}``) is encoded and decoded by
:func:`metropc.index.encode_index` / :func:`metropc.index.decode_index`
together with the ``IndexEntry`` classes they produce.
"""

from __future__ import annotations

import enum
from typing import Any, Callable, NamedTuple

from .error import ProtocolError

__all__ = [
    "Op", "Field", "Schema", "SCHEMAS", "validate",
    "KEY_META", "KEY_EVENT_ID", "KEY_STEP", "KEY_SHM", "KEY_MARK", "SEQ_PATH",
    "META_EVENT", "META_SKIP", "META_STEP", "META_MARK", "MARK_OPS", "pack_meta",
    "unpack_meta", "SEQ_BITS", "pack_seq", "unpack_seq",
    "VIEW_PREFIX", "view_topic", "view_name",
    "OP_EVENT", "OP_CONTEXT", "OP_COMMIT", "OP_ABORT", "OP_PARAMS", "OP_INDEX",
    "OP_ACTION", "OP_STEP", "OP_STATS", "OP_LOST", "OP_SHM", "OP_STOP", "OP_HELLO",
    "OP_HEARTBEAT", "OP_CREDIT", "OP_ERROR", "OP_BYE", "OP_CTX_READY", "OP_CTX_FAILED",
    "OP_DEBUG", "OP_PROGRESS", "OP_RESET", "OP_RUN", "OP_PAUSE", "OP_RESUME", "OP_ANNOUNCE", "OP_BUSY", "OP_WANT", "OP_INPUTS",
    "OP_ARESULT", "OP_RESULT", "OP_BATCH", "OP_PICKLED_BATCH",
    "OP_VSTATS", "KEY_TIME",
]


class Op(bytes, enum.Enum):
    """Every opcode between the frontend and the stages.

    Members are bytes and compare (and hash) equal to the raw opcode, so
    ``Op.PARAMS == b"params"`` and a dict keyed by members finds raw
    opcodes.  The ``OP_*`` module constants are the plain ``bytes`` values:
    cheaper to pickle inside batches, and what :func:`decode_protocol`
    returns.
    """

    __hash__ = bytes.__hash__

    # Frontend -> stage.
    EVENT = b"event"        # one event (pool)
    CONTEXT = b"context"    # a context to build (all stages)
    COMMIT = b"commit"      # use the prepared context
    ABORT = b"abort"        # forget the prepared context
    PARAMS = b"params"      # {name: value}
    INDEX = b"index"        # publish the index now (reduce)
    ACTION = b"action"      # run an ACTION view (reduce)
    STEP = b"step"          # operator step boundary (sent through a worker)
    STATS = b"stats"        # input statistics (reduce)
    LOST = b"lost"          # events a dead worker held (reduce)
    SHM = b"shm"            # a fresh results segment (pool)
    STOP = b"stop"          # leave the stage loop
    RESET = b"reset"        # clear accumulated state (a mark, through a worker)
    RUN = b"run"            # a run starts or ends (a mark, through a worker)
    ANNOUNCE = b"announce"  # addresses to tell clients, e.g. {"control": addr} (reduce)
    PAUSE = b"pause"        # the operator paused dispatching (a mark)
    RESUME = b"resume"      # ... and resumed it (a mark)

    # Stage -> frontend.
    HELLO = b"hello"
    HEARTBEAT = b"heartbeat"
    CREDIT = b"credit"
    ERROR = b"error"
    CTX_READY = b"ctx_ready"
    CTX_FAILED = b"ctx_failed"
    DEBUG = b"debug"
    PROGRESS = b"progress"  # reduce -> frontend: ordering progress
    BUSY = b"busy"          # async -> frontend: computing since now, or done
    BYE = b"bye"            # a remote worker leaves (its operator stopped it)

    # Reduce <-> async.
    WANT = b"want"          # async -> reduce: ready for the newest inputs
    INPUTS = b"inputs"      # reduce -> async: the newest results async views read
    ARESULT = b"aresult"    # async -> reduce: results of the async views

    # Pool -> reduce.
    RESULT = b"result"
    VSTATS = b"vstats"      # a worker's view timing and load, about once a second

    # Several messages in one (framing, never a message of its own).
    BATCH = b"batch"
    PICKLED_BATCH = b"pbatch"

    def __repr__(self):
        return f"Op.{self.name}"


# Plain-bytes constants (the names metropc.stage.common has always had).
OP_EVENT = Op.EVENT.value
OP_CONTEXT = Op.CONTEXT.value    # {"ctx": Context.to_dict(), "from_seq": int, "prepare": bool}
OP_COMMIT = Op.COMMIT.value      # {"version": int, "from_seq": int}: use the prepared context
OP_ABORT = Op.ABORT.value        # {"version": int}: forget the prepared context
OP_PARAMS = Op.PARAMS.value      # {name: value}
OP_INDEX = Op.INDEX.value        # publish the index now (reduce)
OP_ACTION = Op.ACTION.value      # {"view_name": name, "ordered"?: bool} (reduce; ordered: a mark)
OP_STEP = Op.STEP.value          # operator step boundary (sent through a worker)
OP_STATS = Op.STATS.value        # {path: (count, rate)} input statistics (reduce)
OP_LOST = Op.LOST.value          # {"seqs": [...], "doubtful"?, "grace"?}: a dead worker's (reduce)
OP_SHM = Op.SHM.value            # {"out": segment name}: a fresh results segment (pool)
OP_STOP = Op.STOP.value          # leave the stage loop
OP_RESET = Op.RESET.value        # {"views": [name, ...]} (empty: all); a mark
OP_RUN = Op.RUN.value            # {"kind": "run_start" | "run_end", "run": int | None}; a mark
OP_PAUSE = Op.PAUSE.value        # {}: a mark
OP_ANNOUNCE = Op.ANNOUNCE.value  # {"control": address}: published in the status (reduce)
OP_RESUME = Op.RESUME.value      # {}: a mark
#: Control messages that travel to REDUCE through a worker, as a pseudo-event,
#: so REDUCE applies them exactly between the events queued around them.
MARK_OPS = frozenset({Op.STEP.value, Op.RESET.value, Op.RUN.value, Op.PAUSE.value,
                      Op.RESUME.value})
OP_HELLO = Op.HELLO.value        # {"stage": str, "output_addr": str?, "reduce_addr": str?,
                                 #  "shm": bool?, "host": str?, "pid": int?}
OP_HEARTBEAT = Op.HEARTBEAT.value  # an idle worker is alive (pool)
OP_CREDIT = Op.CREDIT.value      # ready for {"n": int} (default 1) more events (pool);
                                 # "free": int64 serials of input slots it released
OP_ERROR = Op.ERROR.value        # {"msg": str}
OP_CTX_READY = Op.CTX_READY.value    # {"version": int}: prepared, waiting for commit
OP_CTX_FAILED = Op.CTX_FAILED.value  # {"version": int, "msg": str}
OP_DEBUG = Op.DEBUG.value        # {"msg": str}
OP_PROGRESS = Op.PROGRESS.value  # {"next_seq": int, "done_seq": int, "lost": int, ...}
OP_RESULT = Op.RESULT.value      # pool -> reduce: one event's results
OP_BUSY = Op.BUSY.value          # {"busy": bool}: async stage computing (supervised)
OP_BYE = Op.BYE.value            # {}: a remote worker leaves; what it held is lost
OP_WANT = Op.WANT.value          # {"version": int | None}
OP_INPUTS = Op.INPUTS.value      # {"inputs": {view: value}, "event_id", "version", "run"}
OP_ARESULT = Op.ARESULT.value    # {"results": {view: value}, "event_id", "version", "failed"}
OP_VSTATS = Op.VSTATS.value      # pool -> reduce: {"stage", "pid", "events", "busy",
                                 # "interval", "view#<name>": timing record (metropc.timing)}
OP_BATCH = Op.BATCH.value        # framed batch: b"batch", msgpack counts, frames
OP_PICKLED_BATCH = Op.PICKLED_BATCH.value  # one pickle frame of [(opcode, data), ...]

#: Reserved keys in result messages (never valid paths: no '#' type prefix).
KEY_META = "#meta"          # pack_meta(...): a 6-tuple
KEY_EVENT_ID = "#event_id"  # only when the event id does not fit in the meta
#: Marks the pseudo-event that carries an operator step boundary.
KEY_STEP = "#step"
#: A reference to arrays in a shared-memory slot (metropc.stage.shm).
KEY_SHM = "#shm"
#: The pseudo-event (and result) carrying a mark: ``{"kind": str, ...}``.
KEY_MARK = "#mark"

#: In a result: when (``time.time()``) the worker received its event, for
#: the event-to-output latency REDUCE measures.
KEY_TIME = "#t"

#: Event key carrying the frontend's dispatch sequence number.
SEQ_PATH = "internal#seq"
#: The event path of the run number, for sources that know it: the pipeline
#: (and metropc.run) starts a run where it changes (docs/pipeline.md, "Runs").
RUN_PATH = "internal#run"

META_EVENT, META_SKIP, META_STEP, META_MARK = 0, 1, 2, 3

_NONE = type(None)
#: Event ids that travel in the meta tuple itself; any other goes under KEY_EVENT_ID.
EVENT_ID_TYPES = frozenset({int, str, float, _NONE})


#: Bits of a published ``seq`` that count messages; the bits above them are
#: the stream (docs/protocol.md §7).
SEQ_BITS = 32
_SEQ_MASK = (1 << SEQ_BITS) - 1


def pack_seq(stream: int, n: int) -> int:
    """The ``seq`` of the `n`-th message of a topic in output `stream`: one
    int64 (one frame on the wire, where a pair would take three)."""
    return ((stream & 0x7FFFFFFF) << SEQ_BITS) | (n & _SEQ_MASK)


def unpack_seq(value) -> tuple[int, int] | None:
    """``(stream, n)`` of a ``seq`` value, or None if it is not one."""
    if type(value) is int and value >= 0:
        return value >> SEQ_BITS, value & _SEQ_MASK
    return None


def pack_meta(seq, version=None, event_id=None, produced=(), failed=(), kind=0):
    """The bookkeeping of one pool result, as one value.

    Sequence number, context version, event id, the views that produced or
    failed, and `kind` (META_EVENT, META_SKIP or META_STEP) travel together
    as one tuple: inside a pickled batch it costs next to nothing, and in a
    framed message it is one tuple value (docs/protocol.md).  An event id
    that is not a plain int, str or float travels under KEY_EVENT_ID.
    """
    if type(event_id) not in EVENT_ID_TYPES:
        event_id = None
    return (seq, version, event_id, tuple(produced), tuple(failed), kind)


def unpack_meta(meta):
    """Check what :func:`pack_meta` made; ProtocolError for anything malformed.

    Sequence number and kind are ints, the version an int or None, the
    event id an int, str, float or None, and the view lists tuples of str
    (bool never passes as int).
    """
    if type(meta) is not tuple or len(meta) != 6:
        raise ProtocolError(f"result: {KEY_META!r} is not a 6-tuple")
    seq, version, event_id, produced, failed, kind = meta
    # One test for the common case (valid), the details only on failure.
    if (type(seq) is not int or type(kind) is not int
            or (type(version) is not int and version is not None)
            or type(event_id) not in EVENT_ID_TYPES
            or type(produced) is not tuple or type(failed) is not tuple):
        raise ProtocolError(f"result: {KEY_META!r} {_meta_problem(meta)}")
    for name in produced:
        if type(name) is not str:
            raise ProtocolError(f"result: {KEY_META!r} names a view with a non-str")
    for name in failed:
        if type(name) is not str:
            raise ProtocolError(f"result: {KEY_META!r} names a view with a non-str")
    return meta


def _meta_problem(meta):
    seq, version, event_id, produced, failed, kind = meta
    if type(seq) is not int or type(kind) is not int:
        return "without sequence number or kind"
    if type(version) is not int and version is not None:
        return "version is not an int or None"
    if type(event_id) not in EVENT_ID_TYPES:
        return "event id is not an int, str, float or None"
    return "view lists are not tuples"


# -- view topics -----------------------------------------------------------------

#: Prefix of view paths and of their output topics.
VIEW_PREFIX = "view#"
_VIEW_PREFIX_B = VIEW_PREFIX.encode()


def view_topic(name: str) -> bytes:
    """The output topic of view `name`: ``"roi"`` -> ``b"view#roi"``."""
    return (VIEW_PREFIX + name).encode("utf-8")


def view_name(topic) -> str | None:
    """The view a topic (bytes or str) publishes; None if it is no view topic."""
    if isinstance(topic, (bytes, bytearray, memoryview)):
        topic = bytes(topic)
        if not topic.startswith(_VIEW_PREFIX_B):
            return None
        try:
            return topic[len(_VIEW_PREFIX_B):].decode("utf-8")
        except UnicodeDecodeError:
            return None
    if isinstance(topic, str) and topic.startswith(VIEW_PREFIX):
        return topic[len(VIEW_PREFIX):]
    return None


# -- schemas ---------------------------------------------------------------------

class Field(NamedTuple):
    """One payload field: accepted types (exact: bool is no int), required?

    `check` is an extra test of a value of the right type; it returns an
    error text or None.
    """

    types: tuple
    required: bool = False
    check: Callable[[Any], str | None] | None = None


class Schema(NamedTuple):
    """The payload of one opcode.

    `fields` are the named fields; keys not named are allowed (newer
    senders may add some) unless `values` is given, which then applies to
    every key not named (``params``, ``stats``).  `check` tests the whole
    payload after the fields (events, results); returns an error text or
    None.
    """

    fields: dict
    values: Field | None = None
    check: Callable[[dict], str | None] | None = None


def _nonneg(v):
    return None if v >= 0 else "is negative"


def _seconds(v):
    return None if 0 <= v < float("inf") else "is not a finite number of seconds"


def _int_list(v):
    for s in v:
        if type(s) is not int:
            return "holds a non-int"
    return None


def _str_list(v):
    for s in v:
        if type(s) is not str:
            return "holds a non-str"
    return None


def _view_counts(v):
    for entry in v:
        if (type(entry) not in (list, tuple) or len(entry) != 3
                or type(entry[0]) not in (int, type(None)) or type(entry[1]) is not str
                or type(entry[2]) is not int):
            return "holds an entry that is not (version, view name, delta)"
    return None


#: Run numbers are int64 where they are stored (recordings, the index).
#: The largest run number: the runs an operator starts after it (each the
#: next number) still fit in int64, so no message needs pickle for them.
RUN_MAX = 2**62


def run_number_problem(run) -> str | None:
    """Why `run` is no run number (None is: the next one), or None."""
    if run is None:
        return None
    if type(run) is not int:
        return f"is {type(run).__name__}, not an int"
    if not 0 <= run <= RUN_MAX:
        return f"{run} is out of range (0 to 2**62)"
    return None


def _run_kind(v):
    return None if v in ("run_start", "run_end") else "is not 'run_start' or 'run_end'"


def _bytes_list(v):
    for s in v:
        if type(s) is not bytes:
            return "holds a non-bytes"
    return None


def _slot_serials(v):
    return None if len(v) % 8 == 0 else "is not a whole number of int64"


def _ctx_version(v):
    version = v.get("version")
    if version is not None and type(version) is not int:
        return "has a version that is not an int or None"
    return None


def _stat_pair(v):
    if len(v) != 2 or type(v[0]) is not int or type(v[1]) not in (float, int):
        return "is not a (count: int, rate: float) pair"
    return None


def _timing_record(v):
    # (errors, seconds, bucket counts...): metropc.timing's record layout;
    # REDUCE ignores a record whose bucket count is not its own.
    if len(v) < 3 or type(v[1]) not in (float, int) or v[1] < 0:
        return "is not a timing record (errors, seconds, buckets...)"
    for i, n in enumerate(v):
        if i != 1 and (type(n) is not int or n < 0):
            return "is not a timing record (errors, seconds, buckets...)"
    return None


def _event(data):
    seq = data.get(SEQ_PATH)
    if type(seq) is not int and seq is not None:
        return f"field {SEQ_PATH!r} is not an int"
    return None


def _result(data):
    try:
        unpack_meta(data.get(KEY_META))
    except ProtocolError as e:
        return str(e)[len("result: "):]
    return None


_INT = (int,)
_STR = (str,)
_BOOL = (bool,)
_DICT = (dict,)
_INT_OR_NONE = (int, _NONE)
_VERSION = Field(_INT_OR_NONE, True)
_MSG = Field(_STR, True)
_ANY = None  # Field.types None: any value

#: Opcode -> Schema.  BATCH and PICKLED_BATCH are framing, not messages.
SCHEMAS: dict[bytes, Schema] = {
    # frontend -> stage
    OP_EVENT: Schema({}, values=Field(_ANY), check=_event),
    OP_CONTEXT: Schema({"ctx": Field(_DICT, True, _ctx_version),
                        "from_seq": Field(_INT), "prepare": Field(_BOOL),
                        "start_seq": Field(_INT), "counters": Field(_DICT),
                        "skip": Field((list, tuple), False, _int_list),
                        "doubtful": Field((list, tuple), False, _int_list),
                        "grace": Field((int, float)), "run": Field(_INT_OR_NONE),
                        "state": Field(_STR),
                        "subs": Field((list, tuple), False, _bytes_list)}),
    OP_COMMIT: Schema({"version": _VERSION, "from_seq": Field(_INT)}),
    OP_ABORT: Schema({"version": _VERSION}),
    OP_PARAMS: Schema({}, values=Field(_ANY)),
    OP_INDEX: Schema({}),
    OP_ACTION: Schema({"view_name": Field(_STR, True), "ordered": Field(_BOOL)}),
    OP_STEP: Schema({}),
    OP_STATS: Schema({}, values=Field((tuple,), check=_stat_pair)),
    OP_LOST: Schema({"seqs": Field((list, tuple), True, _int_list),
                     "doubtful": Field((list, tuple), False, _int_list),
                     "grace": Field((int, float), check=_seconds)}),
    OP_SHM: Schema({"out": Field((str, _NONE))}),
    OP_STOP: Schema({}),
    OP_RESET: Schema({"views": Field((list, tuple), False, _str_list)}),
    OP_RUN: Schema({"kind": Field(_STR, True, _run_kind),
                    "run": Field(_INT_OR_NONE, check=run_number_problem)}),
    OP_PAUSE: Schema({}),
    OP_ANNOUNCE: Schema({}, values=Field(_STR)),
    OP_RESUME: Schema({}),
    # stage -> frontend
    OP_HELLO: Schema({"stage": Field(_STR, True), "output_addr": Field(_STR),
                      "reduce_addr": Field(_STR), "shm": Field(_BOOL), "host": Field(_STR),
                      "pid": Field(_INT)}),
    OP_HEARTBEAT: Schema({}),
    OP_CREDIT: Schema({"n": Field(_INT, check=_nonneg),
                       "free": Field((bytes,), check=_slot_serials)}),
    OP_ERROR: Schema({"msg": _MSG}),
    OP_CTX_READY: Schema({"version": _VERSION}),
    OP_CTX_FAILED: Schema({"version": _VERSION, "msg": _MSG}),
    OP_DEBUG: Schema({"msg": _MSG}),
    OP_PROGRESS: Schema({"next_seq": Field(_INT, True), "done_seq": Field(_INT),
                         "lost": Field(_INT, True),
                         "stale": Field(_INT, True), "run": Field(_INT_OR_NONE),
                         "state": Field(_STR), "output_dropped": Field(_INT),
                         "events": Field(_INT),
                         "subs": Field((list, tuple), False, _bytes_list)}),
    # pool -> reduce
    OP_RESULT: Schema({}, values=Field(_ANY), check=_result),
    # async <-> reduce, async -> frontend
    OP_BUSY: Schema({"busy": Field(_BOOL, True)}),
    OP_BYE: Schema({}),
    OP_WANT: Schema({"version": Field(_INT_OR_NONE)}),
    OP_INPUTS: Schema({"inputs": Field(_DICT, True), "version": Field(_INT_OR_NONE),
                       "run": Field(_INT_OR_NONE)}),
    OP_ARESULT: Schema({"results": Field(_DICT, True), "version": Field(_INT_OR_NONE),
                        "failed": Field((list, tuple), False, _str_list),
                        "counts": Field((list, tuple), False, _view_counts)}),
    OP_VSTATS: Schema({"stage": Field(_STR, True), "pid": Field(_INT),
                       "events": Field(_INT, True, _nonneg),
                       "busy": Field((float, int), True, _nonneg),
                       "interval": Field((float, int), True, _nonneg),
                       "counts": Field((list, tuple), False, _view_counts)},
                      values=Field((tuple,), check=_timing_record)),
}


def _type_names(types):
    return " or ".join("None" if t is _NONE else t.__name__ for t in types)


def _compile(opcode, schema):
    """A checker for one schema: ``check(data)`` raises ProtocolError."""
    op = opcode.decode()
    fields = tuple((name, f.types, f.required, f.check) for name, f in schema.fields.items())
    values, whole = schema.values, schema.check

    def fail(what):
        raise ProtocolError(f"{op}: {what}")

    def check_field(name, value, types, more):
        if types is not None and type(value) not in types:
            fail(f"field {name!r} is a {type(value).__name__}, not {_type_names(types)}")
        if more is not None:
            why = more(value)
            if why is not None:
                fail(f"field {name!r} {why}")

    def check(data):
        for name, types, required, more in fields:
            value = data.get(name, check)  # `check`: a sentinel no payload holds
            if value is check:
                if required:
                    fail(f"field {name!r} is missing")
                continue
            check_field(name, value, types, more)
        if values is not None:
            for name, value in data.items():
                if type(name) is not str:
                    fail(f"key {name!r} is not a str")
                if name not in schema.fields:
                    check_field(name, value, values.types, values.check)
        if whole is not None:
            why = whole(data)
            if why is not None:
                fail(why)

    if not fields and values is None:
        if whole is None:
            return None  # nothing to check beyond "a dict"

        def check(data):  # noqa: F811 - the hot path (events, results): one call
            why = whole(data)
            if why is not None:
                fail(why)
    return check


_CHECKERS = {opcode: _compile(opcode, schema) for opcode, schema in SCHEMAS.items()}


# The per-event messages get hand-written checkers with the same rules: a
# few type checks.  Decoded frames always have str keys, so the *_DECODED
# table (recv, framed batches) skips that loop; pickled batches do not.

def _event_fast(data):
    seq = data.get(SEQ_PATH)
    if type(seq) is not int and seq is not None:
        raise ProtocolError(f"event: field {SEQ_PATH!r} is not an int")


def _event_full(data):
    seq = data.get(SEQ_PATH)
    if type(seq) is not int and seq is not None:
        raise ProtocolError(f"event: field {SEQ_PATH!r} is not an int")
    for key in data:
        if type(key) is not str:
            raise ProtocolError(f"event: key {key!r} is not a str")


def _result_full(data):
    unpack_meta(data.get(KEY_META))
    for key in data:
        if type(key) is not str:
            raise ProtocolError(f"result: key {key!r} is not a str")


def _result_fast(data):
    unpack_meta(data.get(KEY_META))


_CREDIT_FULL = _CHECKERS[OP_CREDIT]


def _credit(data):
    """``credit``, the commonest control message: usually empty."""
    if data:
        n = data.get("n", 0)
        free = data.get("free", b"")
        if type(n) is not int or n < 0 or type(free) is not bytes or len(free) % 8:
            _CREDIT_FULL(data)  # raises, with the details


_CHECKERS.update({OP_EVENT: _event_full, OP_RESULT: _result_full, OP_CREDIT: _credit})
_CHECKERS_DECODED = {**_CHECKERS, OP_EVENT: _event_fast, OP_RESULT: _result_fast}


def validate(opcode: bytes, data: dict, *, str_keys: bool = True) -> dict:
    """Check one decoded message against its opcode's schema; returns `data`.

    Raises :class:`~metropc.error.ProtocolError` (naming the opcode and the
    field) for an unknown opcode, a payload that is not a dict, a missing
    required field or a field of the wrong type.  Keys a schema does not
    name are allowed.  Cheap for the per-event messages (``event``,
    ``result``, ``credit``): a few type checks.

    `str_keys`: whether to check that every key is a str; callers that got
    `data` from :func:`metropc.protocol.decode_protocol` (which only makes
    str keys) may pass False to skip the per-key loop of events and results.
    """
    try:
        checker = (_CHECKERS if str_keys else _CHECKERS_DECODED)[opcode]
    except (KeyError, TypeError):
        if opcode in (OP_BATCH, OP_PICKLED_BATCH):
            raise ProtocolError(f"{opcode.decode()}: a batch inside a batch") from None
        raise ProtocolError(f"unknown opcode {opcode!r}") from None
    if type(data) is not dict:
        raise ProtocolError(f"{opcode.decode()}: payload is a {type(data).__name__}, "
                            "not a dict")
    if checker is not None:
        checker(data)
    return data

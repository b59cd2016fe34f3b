"""The stage vocabulary (metropc.messages): opcodes, schemas, validation."""

from __future__ import annotations

import pickle

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metropc import messages as m
from metropc.core import Context
from metropc.error import ProtocolError
from metropc.messages import (KEY_META, SCHEMAS, SEQ_PATH, Op, pack_meta, unpack_meta,
                              validate, view_name, view_topic)
from metropc.protocol import decode_protocol, encode_protocol
from metropc.stage import common

# -- Op ------------------------------------------------------------------------


def test_op_members_are_their_raw_bytes():
    assert Op.PARAMS == b"params"
    assert b"params" == Op.PARAMS
    assert Op(b"params") is Op.PARAMS
    assert hash(Op.CREDIT) == hash(b"credit")
    assert {Op.CREDIT: 1}[b"credit"] == 1
    assert {b"credit": 1}[Op.CREDIT] == 1
    assert isinstance(Op.EVENT, bytes)
    assert Op.PROGRESS == b"progress" and Op.RESET == b"reset"
    assert bytes(Op.RESULT) == b"result" and type(bytes(Op.RESULT)) is bytes


def test_op_constants_are_plain_bytes_and_reexported_from_common():
    for op in Op:
        const = getattr(m, f"OP_{op.name}")
        assert type(const) is bytes and const == op
        assert getattr(common, f"OP_{op.name}") is const
    for name in ("KEY_META", "KEY_EVENT_ID", "KEY_STEP", "KEY_SHM", "SEQ_PATH",
                 "META_EVENT", "META_SKIP", "META_STEP", "pack_meta", "unpack_meta"):
        assert getattr(common, name) is getattr(m, name)


def test_every_opcode_but_the_batch_framing_has_a_schema():
    framing = {Op.BATCH, Op.PICKLED_BATCH}
    assert set(SCHEMAS) == {op.value for op in Op} - framing
    for op in framing:
        with pytest.raises(ProtocolError, match="batch"):
            validate(op, {})


def test_an_op_member_survives_encoding_and_validates_like_its_bytes():
    opcode, data = decode_protocol(encode_protocol(Op.PROGRESS, {"next_seq": 3, "lost": 0,
                                                                 "stale": 1}))
    assert opcode == b"progress" and type(opcode) is bytes
    assert validate(Op.PROGRESS, data) is data
    assert validate(opcode, data) is data
    # In a pickled batch a member travels as itself.
    [(op, _)] = pickle.loads(pickle.dumps([(Op.CREDIT, {})]))
    assert op is Op.CREDIT and validate(op, {}) == {}


# -- schemas: good payloads --------------------------------------------------------

def _ctx_dict():
    return Context("@View.Scalar\ndef a(t: 'internal#train_id'): return t\n",
                   version=3).to_dict()


GOOD = [
    (b"event", {}),
    (b"event", {"internal#train_id": 1, SEQ_PATH: 5, "karabo#A.b": np.zeros(3)}),
    (b"event", {SEQ_PATH: 0, "#step": True}),
    (b"event", {SEQ_PATH: None}),
    (b"context", {"ctx": _ctx_dict()}),
    (b"context", {"ctx": _ctx_dict(), "prepare": True}),
    (b"context", {"ctx": _ctx_dict(), "start_seq": 5, "run": 2, "state": "RUN"}),
    (b"context", {"ctx": {"version": 2}, "from_seq": 9, "start_seq": 4, "skip": [5],
                  "doubtful": [6, 7], "grace": 1, "counters": {"lost": 2, "stale": 0}}),
    (b"context", {"ctx": {"version": None}, "from_seq": 7, "start_seq": 3,
                  "counters": {"a": 1}}),
    (b"commit", {"version": 2, "from_seq": 10}),
    (b"commit", {"version": None}),
    (b"abort", {"version": 2}),
    (b"params", {}),
    (b"params", {"scale": 10, "roi": (1, 2), "x": None}),
    (b"index", {}),
    (b"action", {"view_name": "snapshot"}),
    (b"action", {"view_name": "fit", "ordered": True}),
    (b"step", {}),
    (b"stats", {}),
    (b"stats", {"internal#train_id": (3, 1.5), "internal#dropped_events": (0, 0),
                "karabo#A.b": (2**40, -0.0)}),
    (b"lost", {"seqs": []}),
    (b"lost", {"seqs": [1, 2, 3]}),
    (b"lost", {"seqs": (4,)}),
    (b"lost", {"seqs": [5], "doubtful": [3, 4], "grace": 1.0}),
    (b"lost", {"seqs": [], "doubtful": [3], "grace": 1}),
    (b"shm", {"out": "metropc-out-1"}),
    (b"shm", {"out": None}),
    (b"shm", {}),
    (b"stop", {}),
    (b"reset", {}),
    (b"hello", {"stage": "pool-0"}),
    (b"hello", {"stage": "pool-0", "shm": True}),
    (b"hello", {"stage": "pool-w", "host": "daq-3", "pid": 4242}),
    (b"hello", {"stage": "reduce", "output_addr": "tcp://127.0.0.1:5555",
                "reduce_addr": "ipc:///tmp/x"}),
    (b"heartbeat", {}),
    (b"credit", {}),
    (b"credit", {"n": 0}),
    (b"credit", {"n": 2}),
    (b"credit", {"n": 0, "free": np.arange(3, dtype="<i8").tobytes()}),
    (b"credit", {"free": b""}),
    (b"error", {"msg": "[pool-0] boom"}),
    (b"ctx_ready", {"version": 1}),
    (b"ctx_ready", {"version": None}),
    (b"ctx_failed", {"version": 1, "msg": "ctx.py:3: bad"}),
    (b"debug", {"msg": "remote worker joined"}),
    (b"progress", {"next_seq": 10, "lost": 0, "stale": 2}),
    (b"progress", {"next_seq": 10, "done_seq": 12, "lost": 0, "stale": 2, "run": 3,
                   "state": "RUN", "output_dropped": 0, "events": 7, "subs": [b"view#a"]}),
    (b"result", {KEY_META: pack_meta(3)}),
    (b"result", {KEY_META: pack_meta(3, 1, 17, ("a", "b"), ("c",)), "view#a": 1.0,
                 "#event_id": object(), "karabo#A.b": np.ones(2)}),
    (b"result", {KEY_META: pack_meta(4, None, "train-4", kind=m.META_STEP)}),
    (b"result", {KEY_META: pack_meta(4, 2, 1.5, kind=m.META_SKIP)}),
    (b"run", {"kind": "run_start", "run": 7}),
    (b"run", {"kind": "run_end"}),
    (b"pause", {}),
    (b"resume", {}),
    (b"announce", {"control": "tcp://127.0.0.1:5556"}),
    (b"busy", {"busy": True}),
    (b"bye", {}),
    (b"want", {"version": 3}),
    (b"want", {}),
    (b"inputs", {"inputs": {"hist": np.ones(3)}, "event_id": 7, "version": 3, "run": None}),
    (b"inputs", {"inputs": {}, "event_id": None, "version": None, "run": 4}),
    (b"aresult", {"results": {"fit": 1.5}, "event_id": 7, "version": 3, "failed": ["x"]}),
    (b"reset", {"views": ["a", "b"]}),
    (b"vstats", {"stage": "pool-0", "events": 0, "busy": 0, "interval": 1.0}),
    (b"vstats", {"stage": "pool-1", "pid": 4321, "events": 3, "busy": 0.25, "interval": 1,
                 "view#a": (0, 0.5, 1, 0, 2), "view#b": (1, 0, 0, 0, 0)}),
]


@pytest.mark.parametrize("opcode,data", GOOD, ids=[f"{o.decode()}-{i}" for i, (o, _) in
                                                   enumerate(GOOD)])
def test_good_payloads_pass_unchanged(opcode, data):
    assert validate(opcode, data) is data
    assert validate(opcode, data, str_keys=False) is data


def test_every_opcode_has_a_good_example():
    assert {o for o, _ in GOOD} == set(SCHEMAS)


def test_extra_keys_are_allowed_for_newer_senders():
    assert validate(b"credit", {"n": 1, "later": "x"})
    assert validate(b"hello", {"stage": "pool-1", "zone": 3})
    assert validate(b"progress", {"next_seq": 1, "lost": 0, "stale": 0, "rate": 1.0})


# -- schemas: bad payloads ------------------------------------------------------------

BAD = [
    (b"busy", {"busy": 1}, "'busy'"),
    (b"want", {"version": "3"}, "'version'"),
    (b"inputs", {"inputs": [1]}, "'inputs'"),
    (b"aresult", {"results": {}, "failed": [1]}, "'failed'"),
    (b"run", {"kind": "start"}, "'kind'"),
    # the next runs after it must fit in int64 (else every message is pickled)
    (b"run", {"kind": "run_start", "run": 2**62 + 1}, "out of range"),
    (b"reset", {"views": [1]}, "'views'"),
    (b"announce", {"control": 5}, "control"),
    # credit: n int >= 0, free whole int64 bytes
    (b"credit", {"n": "x"}, "'n'"),
    (b"credit", {"n": None}, "'n'"),
    (b"credit", {"n": 1.0}, "'n'"),
    (b"credit", {"n": True}, "'n'"),
    (b"credit", {"n": -1}, "'n'"),
    (b"credit", {"n": np.int64(1)}, "'n'"),
    (b"credit", {"free": "abc"}, "'free'"),
    (b"credit", {"free": b"123"}, "'free'"),
    # context
    (b"context", {}, "'ctx'"),
    (b"context", {"ctx": None}, "'ctx'"),
    (b"context", {"ctx": [1]}, "'ctx'"),
    (b"context", {"ctx": {"version": "2"}}, "'ctx'"),
    (b"context", {"ctx": {"version": [1]}}, "'ctx'"),
    (b"context", {"ctx": {}, "from_seq": "0"}, "'from_seq'"),
    (b"context", {"ctx": {}, "from_seq": False}, "'from_seq'"),
    (b"context", {"ctx": {}, "prepare": 1}, "'prepare'"),
    (b"context", {"ctx": {}, "start_seq": 1.5}, "'start_seq'"),
    (b"context", {"ctx": {}, "counters": [1]}, "'counters'"),
    # commit / abort
    (b"commit", {}, "'version'"),
    (b"commit", {"version": "1"}, "'version'"),
    (b"commit", {"version": 1, "from_seq": None}, "'from_seq'"),
    (b"commit", {"version": True, "from_seq": 1}, "'version'"),
    (b"abort", {"version": [1]}, "'version'"),
    (b"abort", {}, "'version'"),
    # params, action, stats, lost, shm
    (b"params", {1: 2}, "key 1"),
    (b"action", {}, "'view_name'"),
    (b"action", {"view_name": ["x"]}, "'view_name'"),
    (b"action", {"view_name": "fit", "ordered": 1}, "'ordered'"),
    (b"action", {"view_name": None}, "'view_name'"),
    (b"stats", {"a": 1}, "'a'"),
    (b"stats", {"a": (1,)}, "'a'"),
    (b"stats", {"a": (1, 2.0, 3)}, "'a'"),
    (b"stats", {"a": ("1", 2.0)}, "'a'"),
    (b"stats", {"a": (True, 2.0)}, "'a'"),
    (b"stats", {"a": (1, "fast")}, "'a'"),
    (b"stats", {"a": (1, None)}, "'a'"),
    (b"stats", {("a",): (1, 1.0)}, "key"),
    (b"lost", {}, "'seqs'"),
    (b"lost", {"seqs": "a"}, "'seqs'"),
    (b"lost", {"seqs": b"\x01"}, "'seqs'"),
    (b"lost", {"seqs": {1, 2}}, "'seqs'"),
    (b"lost", {"seqs": [1, "2"]}, "'seqs'"),
    (b"lost", {"seqs": [1, True]}, "'seqs'"),
    (b"lost", {"seqs": [1.0]}, "'seqs'"),
    (b"lost", {"seqs": [], "doubtful": ["3"]}, "'doubtful'"),
    (b"lost", {"seqs": [], "doubtful": [3], "grace": "1"}, "'grace'"),
    (b"lost", {"seqs": [], "doubtful": [3], "grace": float("nan")}, "'grace'"),
    (b"lost", {"seqs": [], "doubtful": [3], "grace": -1}, "'grace'"),
    (b"shm", {"out": 5}, "'out'"),
    # hello
    (b"hello", {}, "'stage'"),
    (b"hello", {"stage": 5}, "'stage'"),
    (b"hello", {"stage": "reduce", "output_addr": 5}, "'output_addr'"),
    (b"hello", {"stage": "reduce", "output_addr": None}, "'output_addr'"),
    (b"hello", {"stage": "reduce", "reduce_addr": b"tcp://x"}, "'reduce_addr'"),
    (b"hello", {"stage": "pool-w", "host": 7}, "'host'"),
    (b"hello", {"stage": "pool-w", "pid": "4242"}, "'pid'"),
    (b"hello", {"stage": "pool-0", "shm": 1}, "'shm'"),
    # error, debug, ctx_*
    (b"error", {}, "'msg'"),
    (b"error", {"msg": None}, "'msg'"),
    (b"debug", {"msg": b"x"}, "'msg'"),
    (b"ctx_ready", {"version": [1]}, "'version'"),
    (b"ctx_ready", {}, "'version'"),
    (b"ctx_failed", {"version": 1}, "'msg'"),
    (b"ctx_failed", {"version": 1.0, "msg": "x"}, "'version'"),
    # progress
    (b"progress", {"lost": 0, "stale": 0}, "'next_seq'"),
    (b"progress", {"next_seq": 1, "stale": 0}, "'lost'"),
    (b"progress", {"next_seq": 1, "lost": 0}, "'stale'"),
    (b"progress", {"next_seq": "1", "lost": 0, "stale": 0}, "'next_seq'"),
    (b"progress", {"next_seq": 1, "lost": False, "stale": 0}, "'lost'"),
    (b"progress", {"next_seq": 1, "lost": 0, "stale": 0.0}, "'stale'"),
    # event
    (b"event", {SEQ_PATH: "1"}, SEQ_PATH),
    (b"event", {SEQ_PATH: True}, SEQ_PATH),
    (b"event", {SEQ_PATH: 1.0}, SEQ_PATH),
    # result
    (b"result", {}, KEY_META),
    (b"result", {KEY_META: None}, KEY_META),
    (b"result", {KEY_META: [3, None, None, (), (), 0]}, KEY_META),
    (b"result", {KEY_META: (3, None, None, (), ())}, KEY_META),
    (b"result", {KEY_META: ("3", None, None, (), (), 0)}, KEY_META),
    (b"result", {KEY_META: (True, None, None, (), (), 0)}, KEY_META),
    (b"result", {KEY_META: (3, None, None, (), (), None)}, KEY_META),
    (b"result", {KEY_META: (3, "1", None, (), (), 0)}, KEY_META),
    (b"result", {KEY_META: (3, [1], None, (), (), 0)}, KEY_META),
    (b"result", {KEY_META: (3, None, [1], (), (), 0)}, KEY_META),
    (b"result", {KEY_META: (3, None, None, ["a"], (), 0)}, KEY_META),
    (b"result", {KEY_META: (3, None, None, (), "a", 0)}, KEY_META),
    (b"result", {KEY_META: (3, None, None, (["a"],), (), 0)}, KEY_META),
    (b"result", {KEY_META: (3, None, None, (), (1,), 0)}, KEY_META),
    (b"reset", {"views": "a"}, "views"),
    (b"reset", {"views": ["a", 1]}, "views"),
    (b"run", {"run": 7}, "kind"),
    (b"run", {"kind": "run_begin"}, "kind"),
    (b"announce", {"control": 5556}, "control"),
    (b"vstats", {"events": 0, "busy": 0.0, "interval": 1.0}, "stage"),
    (b"vstats", {"stage": "pool-0", "events": -1, "busy": 0.0, "interval": 1.0}, "events"),
    (b"vstats", {"stage": "pool-0", "events": 1, "busy": "x", "interval": 1.0}, "busy"),
    (b"vstats", {"stage": "pool-0", "events": 1, "busy": 0.0, "interval": 1.0,
                 "view#a": (0, -0.5, 1)}, "view#a"),
    (b"vstats", {"stage": "pool-0", "events": 1, "busy": 0.0, "interval": 1.0,
                 "view#a": (0, 0.5, True)}, "view#a"),
]


@pytest.mark.parametrize("opcode,data,names", BAD,
                         ids=[f"{o.decode()}-{i}" for i, (o, _, _) in enumerate(BAD)])
def test_bad_payloads_raise_protocol_error_naming_opcode_and_field(opcode, data, names):
    for str_keys in (True, False):
        with pytest.raises(ProtocolError) as info:
            validate(opcode, data, str_keys=str_keys)
        text = str(info.value)
        assert text.startswith(opcode.decode() + ":"), text
        assert names in text, text
        assert len(text) < 200


def test_every_opcode_with_fields_has_a_bad_example():
    assert {o for o, _, _ in BAD} >= {o for o, s in SCHEMAS.items() if s.fields or s.check
                                      or s.values}


def test_bool_never_passes_as_int():
    for opcode, schema in SCHEMAS.items():
        for name, field in schema.fields.items():
            if field.types and int in field.types:
                good = next(d for o, d in GOOD if o == opcode and name in d
                            and type(d[name]) is int)
                for b in (True, False):
                    with pytest.raises(ProtocolError, match=repr(name)):
                        validate(opcode, {**good, name: b})


@pytest.mark.parametrize("opcode", sorted(SCHEMAS))
def test_missing_required_fields_are_named(opcode):
    required = [n for n, f in SCHEMAS[opcode].fields.items() if f.required]
    good = next(d for o, d in GOOD if o == opcode and all(n in d for n in required))
    for name in required:
        data = {k: v for k, v in good.items() if k != name}
        with pytest.raises(ProtocolError, match=f"{opcode.decode()}: field {name!r} is missing"):
            validate(opcode, data)


@pytest.mark.parametrize("opcode", [b"", b"bogus", b"EVENT", b"view#roi", "event", None, 5,
                                    [b"event"], bytearray(b"event")])
def test_unknown_opcodes_are_rejected(opcode):
    with pytest.raises(ProtocolError, match="unknown opcode"):
        validate(opcode, {})


@pytest.mark.parametrize("data", [None, [], (), "x", {1}, b"", 0])
def test_a_payload_that_is_no_dict_is_rejected(data):
    for opcode in SCHEMAS:
        with pytest.raises(ProtocolError, match="not a dict"):
            validate(opcode, data)


def test_non_str_keys_of_events_and_results_only_pass_when_the_caller_vouches():
    event = {1: 2, SEQ_PATH: 3}
    result = {KEY_META: pack_meta(1), ("view#a",): 1}
    with pytest.raises(ProtocolError, match="event: key 1"):
        validate(b"event", event)
    with pytest.raises(ProtocolError, match="result: key"):
        validate(b"result", result)
    # decode_protocol only makes str keys: recv() skips that loop.
    assert validate(b"event", event, str_keys=False) is event
    assert validate(b"result", result, str_keys=False) is result


# -- meta, topics --------------------------------------------------------------------

def test_pack_meta_round_trips_and_drops_odd_event_ids():
    meta = pack_meta(7, 2, 12345, ["a"], ["b"], m.META_EVENT)
    assert unpack_meta(meta) == (7, 2, 12345, ("a",), ("b",), 0)
    assert pack_meta(1, event_id=np.int64(3))[2] is None
    assert pack_meta(1, event_id=(1, 2))[2] is None
    assert unpack_meta(pack_meta(1, event_id=True)) == (1, None, None, (), (), 0)


def test_view_topics():
    assert view_topic("roi") == b"view#roi"
    assert view_topic("ä") == "view#ä".encode()
    assert view_name(b"view#roi") == "roi"
    assert view_name("view#roi") == "roi"
    assert view_name(memoryview(b"view#x")) == "x"
    assert view_name(view_topic("a#b")) == "a#b"
    for topic in (b"index", b"view", "index", b"view#\xff", None, 5):
        assert view_name(topic) is None


# -- fuzzing ---------------------------------------------------------------------------

_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5),
                     st.binary(max_size=17))
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.tuples(inner, inner),
    st.tuples(inner, inner, inner, inner, inner, inner),
    st.dictionaries(st.text(max_size=5), inner, max_size=3)), max_leaves=10)
_keys = st.one_of(st.sampled_from(sorted({k for s in SCHEMAS.values() for k in s.fields}
                                         | {KEY_META, SEQ_PATH, "#shm", "x"})),
                  st.text(max_size=8), st.integers(), st.none(), st.binary(max_size=3))
_payloads = st.dictionaries(_keys, _values, max_size=6)
_opcodes = st.one_of(st.sampled_from([op.value for op in Op]), st.binary(max_size=8),
                     st.text(max_size=5), st.none())


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_opcodes, st.one_of(_payloads, _values), st.booleans())
def test_validate_raises_nothing_but_protocol_error(opcode, data, str_keys):
    try:
        out = validate(opcode, data, str_keys=str_keys)
    except ProtocolError:
        return
    assert out is data


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(SCHEMAS)), _payloads)
def test_what_passes_has_the_declared_types(opcode, data):
    """Whatever validate() lets through has every declared field right."""
    try:
        validate(opcode, data)
    except ProtocolError:
        return
    schema = SCHEMAS[opcode]
    for name, field in schema.fields.items():
        if name not in data:
            assert not field.required
            continue
        assert field.types is None or type(data[name]) in field.types
        assert field.check is None or field.check(data[name]) is None
    if schema.values is not None:
        assert all(type(k) is str for k in data)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([b"event", b"result", b"credit"]), _payloads)
def test_hand_written_hot_checkers_agree_with_their_schemas(opcode, data):
    generic = m._compile(opcode, SCHEMAS[opcode])

    def outcome(f):
        try:
            f(data)
        except ProtocolError:
            return False
        return True

    assert outcome(generic) == outcome(lambda d: validate(opcode, d))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=12), min_size=1, max_size=5))
def test_decoded_garbage_frames_give_protocol_errors_only(frames):
    try:
        opcode, data = decode_protocol(frames)
        validate(opcode, data, str_keys=False)
    except ProtocolError:
        pass


# -- recv / recv_messages ----------------------------------------------------------------

@pytest.fixture
def pair():
    zctx = zmq.Context()
    a, b = zctx.socket(zmq.PAIR), zctx.socket(zmq.PAIR)
    a.linger = b.linger = 0
    a.bind("inproc://test-messages")
    b.connect("inproc://test-messages")
    yield a, b
    a.close()
    b.close()
    zctx.term()


def test_recv_rejects_and_counts_a_wrong_field_type(pair):
    a, b = pair
    before = common.rejected
    common.send(a, b"credit", {"n": "x"})
    with pytest.raises(ProtocolError, match="credit: field 'n'"):
        common.recv(b)
    common.send(a, b"nonsense", {})
    with pytest.raises(ProtocolError, match="unknown opcode"):
        common.recv(b)
    a.send_multipart([b"credit"])
    with pytest.raises(ProtocolError):
        common.recv(b)
    assert common.rejected == before + 3
    common.send(a, b"credit", {"n": 2})
    assert common.recv(b) == (b"credit", {"n": 2})
    assert common.rejected == before + 3


def test_recv_with_identity_validates_too():
    zctx = zmq.Context()
    router, dealer = zctx.socket(zmq.ROUTER), zctx.socket(zmq.DEALER)
    try:
        router.linger = dealer.linger = 0
        dealer.identity = b"pool-x"
        router.bind("inproc://test-messages-router")
        dealer.connect("inproc://test-messages-router")
        common.send(dealer, b"hello", {"stage": "pool-x", "output_addr": 5})
        with pytest.raises(ProtocolError, match="output_addr"):
            common.recv(router, identity=True)
        common.send(dealer, b"hello", {"stage": "pool-x"})
        assert common.recv(router, identity=True) == (b"pool-x", b"hello", {"stage": "pool-x"})
    finally:
        router.close()
        dealer.close()
        zctx.term()


def test_a_bad_message_in_a_framed_batch_is_left_out_and_counted(pair, caplog,
                                                                 monkeypatch):
    a, b = pair
    # (a fresh log of what was dropped: it says the first once per process)
    monkeypatch.setattr(common, "_batch_rejects", common.RejectLog(common.log, "this stage"))
    before = common.rejected
    messages = [(b"credit", {"n": 1}), (b"credit", {"n": "x"}), (b"lost", {"seqs": "a"}),
                (b"bogus", {}), (b"lost", {"seqs": [4]})]
    common.send_batch(a, messages, small=False)
    with caplog.at_level("WARNING"):
        out = common.recv_messages(b)
    assert out == [(b"credit", {"n": 1}), (b"lost", {"seqs": [4]})]
    assert common.rejected == before + 3
    logged = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(logged) == 1 and "only counted" in logged[0], logged  # not one per message


def test_a_bad_message_in_a_pickled_batch_is_left_out_and_counted(pair):
    a, b = pair
    before = common.rejected
    good = (b"result", {KEY_META: pack_meta(1), "view#a": 1})
    messages = [good, (b"result", {KEY_META: (1, None)}), (b"result", {KEY_META: pack_meta(2),
                                                                     5: "x"}),
                (b"result", [1]), "garbage", (b"result",), (None, {}), good]
    a.send_multipart([b"pbatch", pickle.dumps(messages)])
    assert common.recv_messages(b) == [good, good]
    assert common.rejected == before + 6


@pytest.mark.parametrize("frames", [
    [b"pbatch", b"not a pickle"],
    [b"pbatch", pickle.dumps({"a": 1})],
    [b"pbatch", pickle.dumps([]), b"extra"],
    [b"batch"],
    [b"batch", b"\xc1"],
    [b"batch", msgpack.packb([2, 2])] + encode_protocol(b"credit", {}),  # lies
    [b"batch", msgpack.packb(["2"])] + encode_protocol(b"credit", {}),
])
def test_a_malformed_batch_raises_protocol_error_and_is_counted(pair, frames):
    a, b = pair
    before = common.rejected
    a.send_multipart(frames)
    with pytest.raises(ProtocolError):
        common.recv_messages(b)
    assert common.rejected == before + 1


def test_one_bad_plain_message_gives_an_empty_list(pair):
    a, b = pair
    common.send(a, b"ctx_ready", {"version": [1]})
    assert common.recv_messages(b) == []
    common.send(a, b"ctx_ready", {"version": 1})
    assert common.recv_messages(b) == [(b"ctx_ready", {"version": 1})]

"""PipelineConfig: one frozen, validated set of settings with every default once."""

from __future__ import annotations

import dataclasses

import pytest

from metropc.config import (DEFAULT_QUEUE_BYTES, DROP_BLOCK, DROP_NEWEST, DROP_OLDEST,
                            DROP_POLICIES, PipelineConfig)


def test_defaults():
    c = PipelineConfig()
    assert dataclasses.asdict(c) == {
        "pool": 2, "queue_size": 16, "queue_bytes": 256 << 20, "drop_policy": "oldest",
        "prefetch": 4, "output_hwm": 100, "reorder_timeout": 10.0, "event_timeout": 30.0,
        "stats_interval": 1.0, "keys": None, "shm": None, "shm_size": None,
        "shm_threshold": 64 << 10, "ready_timeout": 60.0, "log_level": None,
    }
    assert DEFAULT_QUEUE_BYTES == 256 << 20


def test_policies():
    assert (DROP_OLDEST, DROP_NEWEST, DROP_BLOCK) == ("oldest", "newest", "block")
    assert DROP_POLICIES == ("oldest", "newest", "block")
    for policy in DROP_POLICIES:
        assert PipelineConfig(drop_policy=policy).drop_policy == policy


def test_fields():
    assert PipelineConfig.fields() == frozenset({
        "pool", "queue_size", "queue_bytes", "drop_policy", "prefetch", "output_hwm",
        "reorder_timeout", "event_timeout", "stats_interval", "keys", "shm", "shm_size",
        "shm_threshold", "ready_timeout", "log_level"})


def test_frozen():
    c = PipelineConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.pool = 3


def test_equal_and_hashable():
    assert PipelineConfig(pool=3) == PipelineConfig(pool=3)
    assert PipelineConfig(pool=3) != PipelineConfig(pool=4)
    assert len({PipelineConfig(), PipelineConfig()}) == 1


def test_accepted_edge_values():
    c = PipelineConfig(pool=0, queue_size=1, queue_bytes=1, prefetch=1, output_hwm=1,
                       event_timeout=None, reorder_timeout=0.001, stats_interval=1e-3,
                       ready_timeout=0.5)
    assert c.pool == 0 and c.event_timeout is None
    assert PipelineConfig(event_timeout=0.1).event_timeout == 0.1
    assert PipelineConfig(reorder_timeout=5).reorder_timeout == 5


@pytest.mark.parametrize("kwargs, message", [
    ({"pool": -1}, "pool must be a whole number >= 0, not -1"),
    ({"pool": 2.0}, "pool must be a whole number >= 0, not 2.0"),
    ({"pool": True}, "pool must be a whole number >= 0, not True"),
    ({"pool": "2"}, "pool must be a whole number >= 0, not '2'"),
    ({"queue_size": 0}, "queue_size must be a whole number >= 1, not 0"),
    ({"queue_bytes": 0}, "queue_bytes must be a whole number >= 1, not 0"),
    ({"queue_bytes": 1.5e9}, "queue_bytes must be a whole number >= 1, not 1500000000.0"),
    ({"drop_policy": "random"},
     "drop_policy must be one of 'oldest', 'newest', 'block', not 'random'"),
    ({"drop_policy": None}, "drop_policy must be one of 'oldest', 'newest', 'block', not None"),
    ({"prefetch": 0}, "prefetch must be a whole number >= 1, not 0"),
    ({"output_hwm": -5}, "output_hwm must be a whole number >= 1, not -5"),
    ({"event_timeout": 0}, "event_timeout must be positive or None, not 0"),
    ({"event_timeout": -1.0}, "event_timeout must be positive or None, not -1.0"),
    ({"event_timeout": float("nan")}, "event_timeout must be positive or None, not nan"),
    ({"reorder_timeout": 0}, "reorder_timeout must be positive, not 0"),
    ({"stats_interval": -1}, "stats_interval must be positive, not -1"),
    ({"ready_timeout": 0.0}, "ready_timeout must be positive, not 0.0"),
    ({"ready_timeout": float("nan")}, "ready_timeout must be positive, not nan"),
])
def test_validation_messages(kwargs, message):
    with pytest.raises(ValueError) as info:
        PipelineConfig(**kwargs)
    assert str(info.value) == message


def test_every_problem_is_reported_at_once():
    with pytest.raises(ValueError) as info:
        PipelineConfig(pool=-1, drop_policy="x", prefetch=0, stats_interval=0)
    assert str(info.value) == (
        "pool must be a whole number >= 0, not -1; "
        "drop_policy must be one of 'oldest', 'newest', 'block', not 'x'; "
        "prefetch must be a whole number >= 1, not 0; "
        "stats_interval must be positive, not 0")


def test_unknown_setting():
    with pytest.raises(TypeError):
        PipelineConfig(workers=3)


def test_replace():
    base = PipelineConfig(pool=3, keys="a,b")
    c = base.replace(drop_policy=DROP_BLOCK, queue_size=64)
    assert isinstance(c, PipelineConfig)
    assert c.drop_policy == "block" and c.queue_size == 64
    assert c.pool == 3 and c.keys == "a,b"  # the rest is kept
    assert base.drop_policy == "oldest" and base.queue_size == 16  # the original unchanged
    assert base.replace() == base


def test_replace_is_validated():
    base = PipelineConfig()
    with pytest.raises(ValueError, match=r"^prefetch must be a whole number >= 1, not 0$"):
        base.replace(prefetch=0)
    with pytest.raises(TypeError):
        base.replace(nonsense=1)

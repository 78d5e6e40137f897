"""History: the pure replay plan and the in-memory backend."""

from __future__ import annotations

from chat.history import Message, ReplayPlan, plan_replay
from chat.history.memory import MemoryHistory

EPOCH = "e1"

# --------------------------------------------------------------------------- plan_replay


def test_plan_fresh_join_replays_newest() -> None:
    """A join without since replays the newest `replay` messages, complete."""
    plan = plan_replay(None, None, EPOCH, first_id=1, last_id=80, replay=50, recover=500)
    assert plan == ReplayPlan(after=0, newest=50, complete=True)


def test_plan_fresh_join_ignores_client_epoch() -> None:
    """A join without since is fresh whatever epoch the client names."""
    plan = plan_replay(None, "other", EPOCH, first_id=1, last_id=80, replay=50, recover=500)
    assert plan == ReplayPlan(after=0, newest=50, complete=True)


def test_plan_since_within_stored_range() -> None:
    """since within the stored range replays everything after it, complete."""
    plan = plan_replay(10, EPOCH, EPOCH, first_id=5, last_id=80, replay=50, recover=500)
    assert plan == ReplayPlan(after=10, newest=500, complete=True)


def test_plan_since_just_before_first_stored() -> None:
    """since == first_id - 1 misses nothing: complete."""
    plan = plan_replay(4, EPOCH, EPOCH, first_id=5, last_id=80, replay=50, recover=500)
    assert plan == ReplayPlan(after=4, newest=500, complete=True)


def test_plan_since_older_than_retained() -> None:
    """since older than the oldest retained message is incomplete."""
    plan = plan_replay(3, EPOCH, EPOCH, first_id=5, last_id=80, replay=50, recover=500)
    assert plan == ReplayPlan(after=3, newest=500, complete=False)


def test_plan_since_zero_with_trimmed_history() -> None:
    """since 0 when message 1 has been trimmed is incomplete."""
    plan = plan_replay(0, EPOCH, EPOCH, first_id=2, last_id=80, replay=50, recover=500)
    assert plan.complete is False
    assert plan.after == 0


def test_plan_since_zero_with_full_history() -> None:
    """since 0 with every message stored replays them all, complete."""
    plan = plan_replay(0, EPOCH, EPOCH, first_id=1, last_id=80, replay=50, recover=500)
    assert plan == ReplayPlan(after=0, newest=500, complete=True)


def test_plan_recovery_capped_by_recover() -> None:
    """More than `recover` messages after since: the newest `recover`, incomplete."""
    plan = plan_replay(10, EPOCH, EPOCH, first_id=1, last_id=80, replay=50, recover=70)
    assert plan == ReplayPlan(after=10, newest=70, complete=True)
    plan = plan_replay(9, EPOCH, EPOCH, first_id=1, last_id=80, replay=50, recover=70)
    assert plan == ReplayPlan(after=9, newest=70, complete=False)
    plan = plan_replay(3, EPOCH, EPOCH, first_id=5, last_id=80, replay=50, recover=0)
    assert plan == ReplayPlan(after=3, newest=0, complete=False)


def test_plan_epoch_mismatch_is_fresh_and_incomplete() -> None:
    """since with another epoch is a fresh join with complete false."""
    plan = plan_replay(10, "old", EPOCH, first_id=1, last_id=80, replay=50, recover=500)
    assert plan == ReplayPlan(after=0, newest=50, complete=False)


def test_plan_since_without_epoch_recovers() -> None:
    """since without an epoch is taken as the current epoch."""
    plan = plan_replay(10, None, EPOCH, first_id=1, last_id=80, replay=50, recover=500)
    assert plan == ReplayPlan(after=10, newest=500, complete=True)


def test_plan_since_beyond_last_id() -> None:
    """since > last_id cannot come from this history: fresh join, complete false."""
    plan = plan_replay(81, EPOCH, EPOCH, first_id=1, last_id=80, replay=50, recover=500)
    assert plan == ReplayPlan(after=0, newest=50, complete=False)


def test_plan_since_equal_to_last_id() -> None:
    """since == last_id replays nothing, complete."""
    plan = plan_replay(80, EPOCH, EPOCH, first_id=1, last_id=80, replay=50, recover=500)
    assert plan == ReplayPlan(after=80, newest=500, complete=True)


def test_plan_since_equal_to_last_id_with_everything_trimmed() -> None:
    """since == last_id is complete even when nothing is stored any more."""
    plan = plan_replay(80, EPOCH, EPOCH, first_id=81, last_id=80, replay=50, recover=500)
    assert plan == ReplayPlan(after=80, newest=500, complete=True)


def test_plan_empty_room_since_zero() -> None:
    """since 0 in an empty room misses nothing."""
    plan = plan_replay(0, EPOCH, EPOCH, first_id=1, last_id=0, replay=50, recover=500)
    assert plan == ReplayPlan(after=0, newest=500, complete=True)


# --------------------------------------------------------------------------- Message


def test_message_frame() -> None:
    """Message.frame is the `message` frame as an object, in the wire's key order."""
    message = Message("lobby", 1, "Alice", "hi", 1234, "c1")
    assert list(message.frame().items()) == [
        ("type", "message"),
        ("room", "lobby"),
        ("id", 1),
        ("nick", "Alice"),
        ("text", "hi"),
        ("ts", 1234),
        ("cid", "c1"),
    ]


# --------------------------------------------------------------------------- MemoryHistory
# What every backend does is in test_store_contract.py; these are memory's own.


async def test_memory_epoch_differs_per_instance() -> None:
    """A new MemoryHistory (a restart) has a different epoch."""
    first = MemoryHistory(retain=10)
    second = MemoryHistory(retain=10)
    assert first.epoch != second.epoch
    assert isinstance(first.epoch, str) and first.epoch


async def test_memory_lifecycle() -> None:
    """open, check and close work and check answers ok."""
    store = MemoryHistory(retain=10)
    await store.open()
    assert await store.check() == "ok"
    await store.close()

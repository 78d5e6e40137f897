"""History: the pure replay plan and the in-memory backend."""

from __future__ import annotations

import pytest

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


# --------------------------------------------------------------------------- MemoryHistory


async def fill(store: MemoryHistory, room: str, count: int, *, key: str = "alice") -> None:
    for n in range(1, count + 1):
        await store.append(room, key, key, f"m{n}", None, 1000 + n)


def ids(messages: list[Message]) -> list[int]:
    return [m.id for m in messages]


async def test_memory_ids_consecutive_from_one() -> None:
    """Ids in a room are 1, 2, 3, … with no gap."""
    store = MemoryHistory(retain=100)
    got = [await store.append("lobby", "Alice", "alice", f"t{n}", None, n) for n in range(5)]
    assert [m.id for m, _ in got] == [1, 2, 3, 4, 5]
    assert all(new for _, new in got)


async def test_memory_append_returns_stored_message() -> None:
    """append returns the message as stored, with its room, nick, text, ts and cid."""
    store = MemoryHistory(retain=100)
    message, new = await store.append("lobby", "Alice", "alice", "hi", "c1", 1234)
    assert new is True
    assert message == Message("lobby", 1, "Alice", "hi", 1234, "c1")
    assert message.frame() == {
        "type": "message",
        "room": "lobby",
        "id": 1,
        "nick": "Alice",
        "text": "hi",
        "ts": 1234,
        "cid": "c1",
    }


async def test_memory_rooms_have_independent_ids() -> None:
    """Each room counts its own ids from 1."""
    store = MemoryHistory(retain=100)
    await fill(store, "a", 3)
    message, _ = await store.append("b", "bob", "bob", "x", None, 1)
    assert message.id == 1
    message, _ = await store.append("a", "bob", "bob", "x", None, 1)
    assert message.id == 4


async def test_memory_retain_trims_oldest() -> None:
    """Only the newest `retain` messages stay; ids keep counting."""
    store = MemoryHistory(retain=3)
    await fill(store, "lobby", 7)
    page = await store.page("lobby", None, 100)
    assert ids(page.messages) == [5, 6, 7]
    assert page.more is False
    message, _ = await store.append("lobby", "alice", "alice", "m8", None, 8)
    assert message.id == 8


async def test_memory_retain_is_per_room() -> None:
    """Trimming one room does not touch another."""
    store = MemoryHistory(retain=2)
    await fill(store, "a", 2)
    await fill(store, "b", 5)
    assert ids((await store.page("a", None, 100)).messages) == [1, 2]
    assert ids((await store.page("b", None, 100)).messages) == [4, 5]


async def test_memory_cid_dedup_returns_original() -> None:
    """append with an existing (room, key, cid) returns the original and False."""
    store = MemoryHistory(retain=100)
    original, new = await store.append("lobby", "Alice", "alice", "hi", "c1", 100)
    assert new is True
    again, new = await store.append("lobby", "ALICE", "alice", "other text", "c1", 200)
    assert new is False
    assert again == original
    assert (await store.rooms()) == {"lobby": 1}


async def test_memory_cid_dedup_is_per_key() -> None:
    """The same cid from another nick key is a new message."""
    store = MemoryHistory(retain=100)
    first, _ = await store.append("lobby", "alice", "alice", "hi", "c1", 1)
    second, new = await store.append("lobby", "bob", "bob", "hi", "c1", 2)
    assert new is True
    assert (first.id, second.id) == (1, 2)


async def test_memory_cid_dedup_is_per_room() -> None:
    """The same (key, cid) in another room is a new message."""
    store = MemoryHistory(retain=100)
    await store.append("a", "alice", "alice", "hi", "c1", 1)
    message, new = await store.append("b", "alice", "alice", "hi", "c1", 2)
    assert new is True
    assert message.room == "b"


async def test_memory_without_cid_never_dedups() -> None:
    """Messages without a cid are always new, even with equal text."""
    store = MemoryHistory(retain=100)
    _, first_new = await store.append("lobby", "alice", "alice", "hi", None, 1)
    message, new = await store.append("lobby", "alice", "alice", "hi", None, 1)
    assert first_new and new
    assert message.id == 2


async def test_memory_find() -> None:
    """find returns the stored message for (room, key, cid), else None."""
    store = MemoryHistory(retain=100)
    message, _ = await store.append("lobby", "alice", "alice", "hi", "c1", 1)
    assert await store.find("lobby", "alice", "c1") == message
    assert await store.find("lobby", "bob", "c1") is None
    assert await store.find("lobby", "alice", "c2") is None
    assert await store.find("elsewhere", "alice", "c1") is None


async def test_memory_cid_index_forgets_trimmed_messages() -> None:
    """Once a message is trimmed, its cid is forgotten and may be stored again."""
    store = MemoryHistory(retain=2)
    await store.append("lobby", "alice", "alice", "first", "c1", 1)
    await store.append("lobby", "alice", "alice", "second", "c2", 2)
    assert await store.find("lobby", "alice", "c1") is not None
    await store.append("lobby", "alice", "alice", "third", "c3", 3)
    assert await store.find("lobby", "alice", "c1") is None
    assert await store.find("lobby", "alice", "c2") is not None
    message, new = await store.append("lobby", "alice", "alice", "first again", "c1", 4)
    assert new is True
    assert message.id == 4


async def test_memory_replay_fresh_join_newest() -> None:
    """A fresh join replays the newest `replay` messages in ascending order, complete."""
    store = MemoryHistory(retain=100)
    await fill(store, "lobby", 10)
    replay = await store.replay("lobby", None, None, 3, 500)
    assert ids(replay.messages) == [8, 9, 10]
    assert replay.complete is True
    assert replay.epoch == store.epoch
    assert replay.last_id == 10


async def test_memory_replay_fresh_join_fewer_than_replay() -> None:
    """A fresh join in a small room replays all of it."""
    store = MemoryHistory(retain=100)
    await fill(store, "lobby", 2)
    replay = await store.replay("lobby", None, None, 50, 500)
    assert ids(replay.messages) == [1, 2]
    assert replay.complete is True


async def test_memory_replay_unknown_room() -> None:
    """A room with no messages replays nothing, complete, last_id 0."""
    store = MemoryHistory(retain=100)
    replay = await store.replay("empty", None, None, 50, 500)
    assert (replay.messages, replay.complete, replay.last_id) == ([], True, 0)
    replay = await store.replay("empty", 0, store.epoch, 50, 500)
    assert (replay.messages, replay.complete) == ([], True)


async def test_memory_replay_since_returns_all_after() -> None:
    """since replays every stored message after it, beyond the replay count."""
    store = MemoryHistory(retain=100)
    await fill(store, "lobby", 10)
    replay = await store.replay("lobby", 2, store.epoch, 3, 500)
    assert ids(replay.messages) == [3, 4, 5, 6, 7, 8, 9, 10]
    assert replay.complete is True


async def test_memory_replay_since_last_id_is_empty() -> None:
    """since == last_id replays nothing, complete."""
    store = MemoryHistory(retain=100)
    await fill(store, "lobby", 4)
    replay = await store.replay("lobby", 4, store.epoch, 50, 500)
    assert (replay.messages, replay.complete) == ([], True)


async def test_memory_replay_since_older_than_retained() -> None:
    """since older than what is retained replays what is stored, incomplete."""
    store = MemoryHistory(retain=3)
    await fill(store, "lobby", 10)
    replay = await store.replay("lobby", 2, store.epoch, 50, 500)
    assert ids(replay.messages) == [8, 9, 10]
    assert replay.complete is False


async def test_memory_replay_since_at_retention_edge() -> None:
    """since == first retained id - 1 misses nothing."""
    store = MemoryHistory(retain=3)
    await fill(store, "lobby", 10)
    replay = await store.replay("lobby", 7, store.epoch, 50, 500)
    assert ids(replay.messages) == [8, 9, 10]
    assert replay.complete is True


async def test_memory_replay_epoch_mismatch() -> None:
    """since with a foreign epoch is a fresh join with complete false."""
    store = MemoryHistory(retain=100)
    await fill(store, "lobby", 10)
    replay = await store.replay("lobby", 2, "not-" + store.epoch, 3, 500)
    assert ids(replay.messages) == [8, 9, 10]
    assert replay.complete is False
    assert replay.epoch == store.epoch


async def test_memory_replay_since_beyond_last_id() -> None:
    """since > last_id is a fresh join with complete false."""
    store = MemoryHistory(retain=100)
    await fill(store, "lobby", 5)
    replay = await store.replay("lobby", 9, store.epoch, 2, 500)
    assert ids(replay.messages) == [4, 5]
    assert replay.complete is False


async def test_memory_replay_zero_count() -> None:
    """A replay count of 0 sends no messages on a fresh join."""
    store = MemoryHistory(retain=100)
    await fill(store, "lobby", 5)
    replay = await store.replay("lobby", None, None, 0, 500)
    assert (replay.messages, replay.complete) == ([], True)


async def test_memory_page_newest() -> None:
    """A page without before holds the newest `limit`, ascending, more when older exist."""
    store = MemoryHistory(retain=100)
    await fill(store, "lobby", 10)
    page = await store.page("lobby", None, 4)
    assert ids(page.messages) == [7, 8, 9, 10]
    assert page.more is True


async def test_memory_page_before() -> None:
    """before pages back: messages with id < before."""
    store = MemoryHistory(retain=100)
    await fill(store, "lobby", 10)
    page = await store.page("lobby", 7, 3)
    assert ids(page.messages) == [4, 5, 6]
    assert page.more is True


async def test_memory_page_reaching_the_start() -> None:
    """A page that reaches message 1 says there is no more."""
    store = MemoryHistory(retain=100)
    await fill(store, "lobby", 10)
    page = await store.page("lobby", 4, 3)
    assert ids(page.messages) == [1, 2, 3]
    assert page.more is False
    page = await store.page("lobby", 4, 50)
    assert ids(page.messages) == [1, 2, 3]
    assert page.more is False


async def test_memory_page_exact_fit_has_no_more() -> None:
    """A page that holds every stored message has more false."""
    store = MemoryHistory(retain=100)
    await fill(store, "lobby", 5)
    page = await store.page("lobby", None, 5)
    assert ids(page.messages) == [1, 2, 3, 4, 5]
    assert page.more is False


async def test_memory_page_more_only_for_stored_messages() -> None:
    """more is false when the older messages were trimmed."""
    store = MemoryHistory(retain=4)
    await fill(store, "lobby", 10)
    page = await store.page("lobby", None, 4)
    assert ids(page.messages) == [7, 8, 9, 10]
    assert page.more is False
    page = await store.page("lobby", 9, 1)
    assert ids(page.messages) == [8]
    assert page.more is True


@pytest.mark.parametrize("before", [1, 0])
async def test_memory_page_before_first_is_empty(before: int) -> None:
    """Nothing is older than message 1."""
    store = MemoryHistory(retain=100)
    await fill(store, "lobby", 5)
    page = await store.page("lobby", before, 10)
    assert (page.messages, page.more) == ([], False)


async def test_memory_page_before_trimmed_range_is_empty() -> None:
    """before at or below the oldest retained id holds nothing and no more."""
    store = MemoryHistory(retain=3)
    await fill(store, "lobby", 10)
    page = await store.page("lobby", 5, 10)
    assert (page.messages, page.more) == ([], False)


async def test_memory_page_before_beyond_newest() -> None:
    """before past the newest id pages from the newest."""
    store = MemoryHistory(retain=100)
    await fill(store, "lobby", 5)
    page = await store.page("lobby", 1000, 2)
    assert ids(page.messages) == [4, 5]
    assert page.more is True


async def test_memory_page_unknown_room() -> None:
    """A room without messages pages to nothing."""
    store = MemoryHistory(retain=100)
    page = await store.page("nobody", None, 50)
    assert (page.messages, page.more) == ([], False)


async def test_memory_rooms_lists_last_ids() -> None:
    """rooms() maps every room with messages to its newest id, trimmed or not."""
    store = MemoryHistory(retain=2)
    assert await store.rooms() == {}
    await fill(store, "a", 3)
    await fill(store, "b", 1)
    assert await store.rooms() == {"a": 3, "b": 1}


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

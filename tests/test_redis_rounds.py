"""The Redis backend stores the says queued on a node as one script per round.

A real redis-server; stores built by `make_backend` as the app builds them, and nodes as
the real app on a real socket for the feed that carries a round's messages to members.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection as RedisConnection

from chat.app import create_app
from chat.cluster import Cluster
from chat.cluster.redis_link import pack
from chat.history import BackendUnavailable, HistoryStore, NewMessage
from chat.history.redis import ROUND_LIMIT
from chat.keys import METRICS
from chat.metrics import Metrics
from tests.helpers import DEADLINE, Peer, close_backend, make_config, open_backend, within
from tests.redisproc import RedisServer

Opened = tuple[HistoryStore, Metrics]


@pytest.fixture
async def open_store(redis_server: RedisServer) -> AsyncIterator[Callable[[], Awaitable[Opened]]]:
    """Open Redis stores, each under a key prefix of its own; closed at teardown."""
    opened: list[tuple[HistoryStore, Cluster]] = []

    async def make() -> Opened:
        config = make_config({
            "history": {"backend": "redis"},
            "redis": {"url": redis_server.url, "prefix": f"t{uuid.uuid4().hex}"},
        })
        metrics = Metrics()
        store, cluster = await open_backend(config, metrics)
        opened.append((store, cluster))
        return store, metrics

    yield make
    for store, cluster in reversed(opened):
        await close_backend(store, cluster)


def rounds(metrics: Metrics) -> list[float]:
    """(rounds sent, says they carried), from the commit histogram the app exports."""
    samples = {s.name: s.value for m in metrics.commit_messages.collect() for s in m.samples}
    return [samples["chat_history_commit_messages_count"],
            samples["chat_history_commit_messages_sum"]]


def say(room: str, text: str, cid: str | None, key: str = "alice") -> NewMessage:
    return NewMessage(room, key, key, text, cid, 1000)


async def test_says_queued_together_go_in_one_round(open_store: Any) -> None:
    """Says in three rooms, a cid twice and one already stored: one script answers all,
    each room's ids following the queue, a repeated cid answered with its original."""
    store, metrics = await open_store()
    first, _ = await within(store.append(say("a", "before", "c0")))
    plan = [
        say("a", "a1", "c1"), say("b", "b1", "c1"), say("a", "a2", None),
        say("c", "c1", "x"), say("a", "again", "c1"), say("a", "older", "c0"),
        say("b", "b2", "c2", key="bob"), say("c", "c2", "y"),
    ]
    got = await within(asyncio.gather(*(store.append(new) for new in plan)))
    assert rounds(metrics) == [2, 1 + len(plan)]
    assert [(m.room, m.id, m.text, created) for m, created in got] == [
        ("a", 2, "a1", True), ("b", 1, "b1", True), ("a", 3, "a2", True),
        ("c", 1, "c1", True), ("a", 2, "a1", False), ("a", 1, "before", False),
        ("b", 2, "b2", True), ("c", 2, "c2", True),
    ]
    assert got[5][0] == first
    page = await within(store.page("a", None, 10))
    assert [m.text for m in page.messages] == ["before", "a1", "a2"]


async def test_a_long_queue_goes_in_rounds_of_the_limit(open_store: Any) -> None:
    """More says than one script may carry: several rounds, ids still in queue order."""
    store, metrics = await open_store()
    count = ROUND_LIMIT + 44
    got = await within(asyncio.gather(
        *(store.append(say("big", f"m{n}", f"c{n}")) for n in range(count))
    ))
    assert [(m.id, m.text) for m, _ in got] == [(n + 1, f"m{n}") for n in range(count)]
    assert rounds(metrics) == [2, count]


async def test_a_round_redis_refuses_stores_nothing(
    open_store: Any, redis_server: RedisServer
) -> None:
    """Out of memory, Redis refuses the round's script whole: every say of it fails as
    unavailable, no id is taken, and the next round goes on from the same id."""
    store, _ = await open_store()
    await within(store.append(say("r", "one", "c1")))
    admin = aioredis.Redis.from_url(redis_server.url)
    try:
        await admin.config_set("maxmemory-policy", "noeviction")
        await admin.config_set("maxmemory", 1)
        results = await within(asyncio.gather(
            *(store.append(say("r", f"lost{n}", f"l{n}")) for n in range(5)),
            return_exceptions=True,
        ))
        assert all(isinstance(r, BackendUnavailable) for r in results), results
        await admin.config_set("maxmemory", 0)
    finally:
        await admin.aclose()
    message, created = await within(store.append(say("r", "two", "c2")))
    assert (message.id, created) == (2, True)
    page = await within(store.page("r", None, 10))
    assert [m.text for m in page.messages] == ["one", "two"]


async def test_a_round_reaches_the_other_node_whole_and_in_order(
    redis_server: RedisServer, aiohttp_client: Any
) -> None:
    """Many says on node A at once, texts with newlines among them: a member on node B
    gets every message once, in id order, straight from the feed (no gap, no backfill)."""
    def node_config() -> Any:
        return make_config({
            "history": {"backend": "redis"},
            "redis": {"url": redis_server.url, "prefix": f"t{uuid.uuid4().hex}"},
            "heartbeat": {"interval": 1, "timeout": 10},
        })

    config = node_config()
    a = await aiohttp_client(create_app(config))
    b = await aiohttp_client(create_app(config))
    senders = [Peer(await a.ws_connect("/ws", autoping=True)) for _ in range(5)]
    member = Peer(await b.ws_connect("/ws", autoping=True))
    await member.hello("member")
    await member.join("lobby")
    for n, sender in enumerate(senders):
        await sender.hello(f"sender{n}")
        await sender.join("lobby")
    per_sender = 20

    async def send_all(n: int, sender: Peer) -> None:
        for k in range(per_sender):
            await sender.send({"type": "say", "room": "lobby", "text": f"{n}\n{k}",
                               "cid": f"{k}"})
        for _ in range(per_sender):
            await sender.expect("ack", room="lobby")

    await within(asyncio.gather(*(send_all(n, s) for n, s in enumerate(senders))))
    total = per_sender * len(senders)
    seen: list[dict[str, Any]] = []
    while len(seen) < total:
        seen.append(await member.expect("message", room="lobby"))
    assert [m["id"] for m in seen] == list(range(1, total + 1))
    assert sorted(m["text"] for m in seen) == sorted(
        f"{n}\n{k}" for n in range(len(senders)) for k in range(per_sender)
    )
    metrics = b.app[METRICS]
    assert (metrics.redis_gaps._value.get(), metrics.redis_backfilled._value.get()) == (0, 0)
    # A round carried more than one say (else this test would prove nothing about them).
    count, says = rounds(a.app[METRICS])
    assert says > count


def test_pack_writes_what_redis_py_writes() -> None:
    """The lane packs its own commands: byte for byte what redis-py would send."""
    args = (b"EVALSHA", "sha", 3, 0, -7, 2**63 - 1, "", b"", "é{room}", b"a\r\nb\x00",
            b'{"type":"message","room":"\xc3\xa9","id":', "x" * 70_000)
    assert pack(args) == b"".join(RedisConnection().pack_command(*args))


async def test_a_round_cut_off_by_a_timeout_leaves_no_reply_behind(
    open_store: Any, redis_server: RedisServer
) -> None:
    """A round whose reply did not come in time fails, and the rounds' connection does not
    hand its late reply to the next round: each answer is its own say's."""
    store, _ = await open_store()
    await within(store.append(say("a", "one", "c1")))
    redis_server.signal(signal.SIGSTOP)
    try:
        with pytest.raises(BackendUnavailable):
            await within(store.append(say("a", "two", "c2")))
    finally:
        redis_server.signal(signal.SIGCONT)
    # Redis may still run the cut-off script (its bytes were sent): the client would
    # re-send it by cid. Either way the next say is answered with its own id and text.
    message, created = await within(store.append(say("a", "three", "c3")))
    assert created and message.text == "three"
    page = await within(store.page("a", None, 10))
    assert [m.text for m in page.messages if m.id == message.id] == ["three"]
    again, created = await within(store.append(say("a", "three", "c3")))
    assert (again, created) == (message, False)


async def test_a_connection_redis_closed_while_idle_is_replaced_before_a_round(
    open_store: Any, redis_server: RedisServer
) -> None:
    """Redis closes idle clients (its `timeout` setting) or is told to: the next round
    goes out on a new connection instead of failing on the dead one."""
    store, _ = await open_store()
    await within(store.append(say("a", "one", "c1")))
    redis_server.command("CLIENT", "KILL", "TYPE", "normal")
    lane = store._lane  # the rounds' connection, as the event loop sees it
    async with asyncio.timeout(DEADLINE):
        while not await lane.stale():  # noqa: ASYNC110 (state the event loop changes)
            await asyncio.sleep(0.005)
    message, created = await within(store.append(say("a", "two", "c2")))
    assert created and (message.id, message.text) == (2, "two")

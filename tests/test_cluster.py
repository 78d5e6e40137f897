"""Several nodes on one real Redis, in one process: every rule holds across nodes.

Each node is the real app on a real socket (aiohttp_client(create_app(config))); the
nodes share a real `redis-server` started on a free port in the test's directory.
Tests about a node's death run nodes as processes: tests/test_cluster_failures.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from chat.app import create_app
from chat.config import Config
from chat.keys import HUB, METRICS
from tests.helpers import DEADLINE, TIGHT_JOINS, Peer, flood_joins, make_config, merge, until
from tests.redisproc import RedisServer, free_port

Node = TestClient[Any, Any]


def cluster_config(url: str, extra: dict[str, Any] | None = None) -> Config:
    base: dict[str, Any] = {
        "history": {"backend": "redis"},
        "redis": {"url": url, "node_timeout": 1.5},
        # Not about heartbeats: generous, so slow CI never reaps a test's peer.
        "heartbeat": {"interval": 1, "timeout": 10},
        "cleanup": {"interval": 0.2},
    }
    return make_config(merge(base, extra or {}))


MakeNode = Callable[..., Awaitable[Node]]


@pytest.fixture
def make_node(redis_server: RedisServer, aiohttp_client: Any) -> MakeNode:
    # redis_server first: torn down last, after every node has stopped.
    async def make(extra: dict[str, Any] | None = None) -> Node:
        node: Node = await aiohttp_client(create_app(cluster_config(redis_server.url, extra)))
        return node

    return make


async def peer(node: Node, nick: str | None = None, **extra: Any) -> Peer:
    result = Peer(await node.ws_connect("/ws", autoping=True))
    if nick is not None:
        await result.hello(nick, **extra)
    return result


async def say_seen(
    who: Peer, room: str, text: str, cid: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Say, and read until both the ack and the sender's own copy arrived.

    With Redis the sender's `message` may come before its `ack` (the feed and the
    script's reply travel on different connections), so neither may be skipped.
    """
    await who.send({"type": "say", "room": room, "text": text, "cid": cid})
    ack: dict[str, Any] | None = None
    message: dict[str, Any] | None = None
    async with asyncio.timeout(DEADLINE):
        while ack is None or message is None:
            frame = await who.recv()
            if frame["type"] == "ack" and frame["cid"] == cid:
                ack = frame
            elif frame["type"] == "message" and frame["cid"] == cid:
                message = frame
    return ack, message



async def test_message_said_on_one_node_reaches_the_other(make_node: MakeNode) -> None:
    """A say on node A is acked after Redis stored it and delivered to members on B."""
    a, b = await make_node(), await make_node()
    alice, bob = await peer(a, "alice"), await peer(b, "bob")
    await alice.join("lobby")
    joined = await bob.join("lobby")
    assert joined["members"] == ["alice", "bob"]
    await alice.expect("presence", event="join", nick="bob")
    ack, own = await say_seen(bob, "lobby", "hello from b", "c1")
    assert (ack["id"], ack["cid"]) == (1, "c1")
    for message in (own, await alice.expect("message", room="lobby")):
        assert (message["id"], message["nick"], message["text"]) == (1, "bob", "hello from b")
        assert message["ts"] == ack["ts"]


async def test_concurrent_senders_on_two_nodes_give_one_order(make_node: MakeNode) -> None:
    """Senders on both nodes at once: every receiver on both sees 1..N in order, same texts."""
    a, b = await make_node(), await make_node()
    receivers = [await peer(node, f"r{i}{name}") for i, node in enumerate((a, b)) for name in "xy"]
    senders = [await peer(node, f"s{i}") for i, node in enumerate((a, b, a, b))]
    for who in receivers + senders:
        await who.join("race")
    per_sender = 25

    async def send_all(index: int, who: Peer) -> None:
        for n in range(per_sender):
            await who.send({"type": "say", "room": "race", "text": f"{index}:{n}", "cid": f"{n}"})
        for _ in range(per_sender):
            await who.expect("ack", room="race")

    await asyncio.gather(*(send_all(i, s) for i, s in enumerate(senders)))
    total = per_sender * len(senders)
    seen: list[list[tuple[int, str]]] = []
    for who in receivers:
        got = []
        while len(got) < total:
            frame = await who.expect("message", room="race")
            got.append((frame["id"], frame["text"]))
        seen.append(got)
    assert [msg_id for msg_id, _ in seen[0]] == list(range(1, total + 1))
    assert all(other == seen[0] for other in seen[1:])
    for index in range(len(senders)):  # each sender's own messages keep their order
        mine = [text for _, text in seen[0] if text.startswith(f"{index}:")]
        assert mine == [f"{index}:{n}" for n in range(per_sender)]


async def test_cid_resent_on_another_node_gets_the_original_ack(make_node: MakeNode) -> None:
    """A say re-sent with the same cid through another node is acked, not stored again."""
    a, b = await make_node(), await make_node()
    first = await peer(a, "carol")
    await first.join("lobby")
    ack = await first.say("lobby", "once", cid="same")
    await first.ws.close()
    await until(lambda: not a.app[HUB].sessions)
    again = await peer(b, "carol")
    await again.join("lobby")
    repeat = await again.say("lobby", "once", cid="same")
    assert (repeat["id"], repeat["ts"]) == (ack["id"], ack["ts"])
    assert await again.quiet(0.3) == []
    history = await (await b.get("/api/rooms")).json()
    assert history == [{"room": "lobby", "members": 1, "last_id": 1}]


async def test_presence_typing_and_room_list_span_nodes(make_node: MakeNode) -> None:
    """Members, presence join/leave, typing and /api/rooms count every node's sessions."""
    a, b = await make_node(), await make_node()
    alice, bob = await peer(a, "alice"), await peer(b, "bob")
    await alice.join("lobby")
    await bob.join("lobby")
    await alice.expect("presence", event="join", nick="bob")
    await bob.send({"type": "typing", "room": "lobby"})
    assert (await alice.expect("typing"))["nick"] == "bob"
    for node in (a, b):
        rooms = await (await node.get("/api/rooms")).json()
        assert rooms == [{"room": "lobby", "members": 2, "last_id": 0}]
    await bob.send({"type": "leave", "room": "lobby"})
    await bob.expect("left", room="lobby")
    leave = await alice.expect("presence", event="leave")
    assert (leave["nick"], leave["reason"]) == ("bob", "left")
    await bob.ws.close()
    rooms = await (await b.get("/api/rooms")).json()
    assert rooms == [{"room": "lobby", "members": 1, "last_id": 0}]


async def test_connection_end_sends_presence_leave_closed_to_other_node(
    make_node: MakeNode,
) -> None:
    """A connection that ends on node B is a presence leave `closed` on node A."""
    a, b = await make_node(), await make_node()
    alice, bob = await peer(a, "alice"), await peer(b, "bob")
    await alice.join("lobby")
    await bob.join("lobby")
    await bob.ws.close()
    leave = await alice.expect("presence", event="leave")
    assert (leave["nick"], leave["reason"]) == ("bob", "closed")
    again = await peer(a, "BOB")  # the nick is free again, on any node
    assert again.session


async def test_equivalent_nicks_race_on_two_nodes(make_node: MakeNode) -> None:
    """NFKC-equivalent nicks said at once on two nodes: exactly one wins."""
    a, b = await make_node(), await make_node()
    for round_ in range(5):
        one, two = await peer(a), await peer(b)
        # Fullwidth "full" and "FULL": one nick after NFKC and casefold.
        spellings = (f"\uff46\uff55\uff4c\uff4c{round_}", f"FULL{round_}")
        await asyncio.gather(
            one.send({"type": "hello", "nick": spellings[0]}),
            two.send({"type": "hello", "nick": spellings[1]}),
        )
        replies = [await one.recv(), await two.recv()]
        kinds = sorted(reply["type"] for reply in replies)
        assert kinds == ["error", "welcome"], replies
        assert [r["code"] for r in replies if r["type"] == "error"] == ["nick_taken"]
        await one.ws.close()
        await two.ws.close()


async def test_takeover_across_nodes(make_node: MakeNode) -> None:
    """hello on B with A's session closes A's connection with 4002, keeps memberships."""
    a, b = await make_node(), await make_node()
    dave, watcher = await peer(a, "dave"), await peer(b, "erin")
    await dave.join("lobby")
    await watcher.join("lobby")
    await dave.expect("presence", event="join")
    moved = await peer(b)
    welcome = await moved.hello("DAVE", session=dave.session)
    assert (welcome["session"], welcome["nick"], welcome["rooms"]) == (
        dave.session, "dave", ["lobby"]
    )
    assert await dave.closed() == 4002
    joined = await moved.join("lobby", since=0)
    assert joined["members"] == ["dave", "erin"]
    await moved.say("lobby", "still here")
    frames = await watcher.quiet(0.5)
    assert [f["type"] for f in frames] == ["message"], frames  # no presence event
    assert (await (await a.get("/api/rooms")).json())[0]["members"] == 2


async def test_join_handoff_across_nodes_has_no_gap_or_duplicate(make_node: MakeNode) -> None:
    """Joining on B while A says without pause: joined + live hold every id once."""
    a, b = await make_node(), await make_node()
    speaker = await peer(a, "speaker")
    await speaker.join("busy")
    stop = asyncio.Event()

    async def talk() -> int:
        n = 0
        while not stop.is_set():
            n += 1
            await speaker.say("busy", f"m{n}")
        return n

    talking = asyncio.create_task(talk())
    try:
        ids: list[int] = []
        for round_ in range(5):
            listener = await peer(b, f"listener{round_}")
            joined = await listener.join("busy", since=0)
            ids = [m["id"] for m in joined["messages"]]
            while len(ids) < 30 + (ids[0] if ids else 0):
                ids.append((await listener.expect("message", room="busy"))["id"])
            assert ids == list(range(ids[0], ids[0] + len(ids))), ids
            await listener.ws.close()
    finally:
        stop.set()
        await talking


async def test_history_pages_from_the_stream(make_node: MakeNode) -> None:
    """history pages back through the room's stream, with `more` until the oldest."""
    a = await make_node({"history": {"retain": 5}})
    alice = await peer(a, "alice")
    await alice.join("log")
    for n in range(8):
        await alice.say("log", f"t{n}")
    await alice.send({"type": "history", "room": "log", "before": 8, "limit": 2})
    page = await alice.expect("history")
    assert ([m["id"] for m in page["messages"]], page["more"]) == ([6, 7], True)
    await alice.send({"type": "history", "room": "log", "before": 6, "limit": 5})
    page = await alice.expect("history")
    assert ([m["id"] for m in page["messages"]], page["more"]) == ([4, 5], False)
    fresh = await peer(a, "late")
    joined = await fresh.join("log", since=1, epoch=(await alice.join("log"))["epoch"])
    assert [m["id"] for m in joined["messages"]] == [4, 5, 6, 7, 8]
    assert joined["complete"] is False  # 2 and 3 were trimmed


async def test_cid_index_is_trimmed_with_the_stream(
    make_node: MakeNode, redis_server: RedisServer
) -> None:
    """The cid index holds only the retained messages: it cannot grow without bound."""
    a = await make_node({"history": {"retain": 3}})
    alice = await peer(a, "alice")
    await alice.join("trim")
    for n in range(10):
        await alice.say("trim", f"t{n}", cid=f"c{n}")
    assert redis_server.command("HLEN", "chat:{trim}:cids") == 3
    assert redis_server.command("XLEN", "chat:{trim}:log") == 3


async def test_persistence_warning_once(
    aiohttp_client: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis without appendfsync always gets one WARNING naming the setting."""
    with RedisServer(tmp_path / "weak", durable=False) as weak:
        caplog.set_level(logging.WARNING, "chat.redis")
        node = await aiohttp_client(create_app(cluster_config(weak.url)))
        await peer(node, "x")
        warnings = [r for r in caplog.records if "persistence" in r.getMessage()]
        assert len(warnings) == 1
        assert "appendonly no" in warnings[0].getMessage()


async def test_pubsub_killed_nodes_backfill_including_last_message(
    make_node: MakeNode, redis_server: RedisServer
) -> None:
    """CLIENT KILL TYPE pubsub: nodes subscribe again and deliver what they missed."""
    a, b = await make_node(), await make_node()
    alice, bob = await peer(a, "alice"), await peer(b, "bob")
    await alice.join("quiet")
    await bob.join("quiet")
    await alice.say("quiet", "before")
    assert (await bob.expect("message"))["id"] == 1
    # Kill the subscriptions, then say at once: the message may be published while no
    # node listens. It is the last before the room falls silent.
    redis_server.command("CLIENT", "KILL", "TYPE", "pubsub")
    _, own = await say_seen(alice, "quiet", "while nobody listened", "last")
    for message in (own, await bob.expect("message")):
        assert (message["id"], message["text"]) == (2, "while nobody listened")
    for who in (alice, bob):
        assert await who.quiet(0.3) == []


async def test_lost_publish_found_by_position_check(
    make_node: MakeNode, redis_server: RedisServer
) -> None:
    """A message stored without being published (lost) reaches members all the same."""
    a = await make_node()
    alice = await peer(a, "alice")
    joined = await alice.join("gap")
    # What the say script stores, without its PUBLISH: pub/sub lost it.
    frame = '{"type":"message","room":"gap","id":1,"nick":"ghost","text":"lost","ts":1,"cid":null}'
    redis_server.command("HINCRBY", "chat:{gap}:meta", "last", 1)
    redis_server.command("XADD", "chat:{gap}:log", "1-0", "f", frame, "k", "ghost", "c", "")
    message = await alice.expect("message", timeout=DEADLINE)
    assert (message["id"], message["text"]) == (1, "lost")
    assert joined["epoch"]
    assert a.app[METRICS].redis_gaps._value.get() >= 1


async def hello_until_welcome(node: Node, nick: str, **extra: Any) -> tuple[Peer, dict[str, Any]]:
    """Reconnect and say hello until welcomed, as a client does while a node recovers."""
    async with asyncio.timeout(DEADLINE):
        while True:
            again = await peer(node)
            await again.send({"type": "hello", "nick": nick, **extra})
            try:
                reply = await again.expect_any(("welcome", "error"))
            except AssertionError:  # closed: the node was still recovering
                reply = {"type": "closed"}
            if reply["type"] == "welcome":
                again.session = reply["session"]
                return again, reply
            await again.ws.close()
            await asyncio.sleep(0.05)


async def join_retrying(who: Peer, room: str, **extra: Any) -> dict[str, Any]:
    """Join, retrying after `unavailable` as a client does while its node recovers."""
    async with asyncio.timeout(DEADLINE):
        while True:
            await who.send({"type": "join", "room": room, **extra})
            reply = await who.expect_any(("joined", "error"))
            if reply["type"] == "joined":
                return reply
            assert reply["code"] == "unavailable", reply
            await asyncio.sleep(reply["retry_after"] / 10)


async def say_retrying(who: Peer, room: str, text: str, cid: str) -> dict[str, Any]:
    """Say until acked, retrying after `unavailable` with the same cid, as clients do."""
    async with asyncio.timeout(5):
        while True:
            await who.send({"type": "say", "room": room, "text": text, "cid": cid})
            reply = await who.expect_any(("ack", "error"))
            if reply["type"] == "ack":
                return reply
            await asyncio.sleep(reply.get("retry_after", 0.5) / 10)


async def until_ready(node: Node) -> None:
    """Wait (at most the contract's 5 s) until the node's /readyz answers 200."""
    async with asyncio.timeout(5):
        while (await node.get("/readyz")).status != 200:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_redis_down_keeps_connections_and_answers_unavailable(
    make_node: MakeNode, redis_server: RedisServer
) -> None:
    """While Redis is away: pings answered, requests get `unavailable`, nothing closes."""
    a, b = await make_node(), await make_node()
    alice, bob = await peer(a, "alice"), await peer(b, "bob")
    await alice.join("lobby")
    await bob.join("lobby")
    await alice.say("lobby", "one")
    assert (await bob.expect("message"))["id"] == 1
    redis_server.kill()
    await alice.send({"type": "ping", "t": 7})
    assert (await alice.expect("pong"))["t"] == 7
    await alice.send("~h#c~")
    assert (await alice.recv())["type"] == "~h#c~"
    # More than ten in a row: `unavailable` does not count toward closing with 1008.
    for n in range(12):
        await alice.send({"type": "say", "room": "lobby", "text": f"lost? {n}", "cid": f"u{n}"})
        error = await alice.expect("error")
        assert (error["code"], error["ref"]) == ("unavailable", f"u{n}")
        assert error["retry_after"] > 0
    newcomer = await peer(a)
    await newcomer.send({"type": "hello", "nick": "carol"})
    assert (await newcomer.expect("error"))["code"] == "unavailable"
    await alice.send({"type": "typing", "room": "lobby"})  # dropped silently
    for request in ({"type": "join", "room": "x"}, {"type": "leave", "room": "lobby"},
                    {"type": "history", "room": "lobby"}):
        await alice.send(request)
        assert (await alice.expect("error"))["code"] == "unavailable"
    ready = await a.get("/readyz")
    body = await ready.json()
    assert ready.status == 503 and body["status"] == "unavailable"
    assert body["backends"]["history"].startswith("redis unreachable")
    assert (await a.get("/api/rooms")).status == 503
    assert (await a.get("/healthz")).status == 200

    redis_server.start()
    # Within 5 s of Redis answering: ready again, and the open connections go on.
    await until_ready(a)
    reply = await say_retrying(alice, "lobby", "two", "again")
    assert reply["id"] == 2
    message = await bob.expect("message")
    assert (message["id"], message["text"]) == (2, "two")
    assert alice.ws.closed is False and bob.ws.closed is False


async def test_redis_killed_with_appendfsync_always_loses_nothing(
    make_node: MakeNode, redis_server: RedisServer
) -> None:
    """kill -9 of Redis (appendfsync always): acked messages kept, same epoch, ids go on."""
    a, b = await make_node(), await make_node()
    alice, bob = await peer(a, "alice"), await peer(b, "bob")
    joined = await alice.join("durable")
    await bob.join("durable")
    for n in range(1, 6):
        assert (await alice.say("durable", f"m{n}", cid=f"c{n}"))["id"] == n
    redis_server.kill()
    redis_server.start()
    reply = await say_retrying(alice, "durable", "m6", "c6")
    assert reply["id"] == 6
    ids = []
    while len(ids) < 6:
        ids.append((await bob.expect("message", room="durable"))["id"])
    assert ids == [1, 2, 3, 4, 5, 6]
    late = await peer(b, "late")
    again = await late.join("durable", since=0, epoch=joined["epoch"])
    assert again["epoch"] == joined["epoch"]
    assert [m["id"] for m in again["messages"]] == [1, 2, 3, 4, 5, 6]
    assert again["complete"] is True


async def test_redis_without_its_data_closes_with_1011_and_new_epoch(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    """Redis back without the service's data: connections close 1011, rooms get a new epoch."""
    with RedisServer(tmp_path / "r", durable=False) as server:
        node = await aiohttp_client(create_app(cluster_config(server.url)))
        alice = await peer(node, "alice")
        joined = await alice.join("lobby")
        for n in range(3):
            await alice.say("lobby", f"m{n}")
        server.restart()
        assert await alice.closed(timeout=5) == 1011
        again, reply = await hello_until_welcome(node, "alice", session=alice.session)
        assert reply["session"] != alice.session
        rejoined = await again.join("lobby", since=3, epoch=joined["epoch"])
        assert rejoined["epoch"] != joined["epoch"]
        assert rejoined["complete"] is False


async def test_redis_restart_with_weak_persistence_starts_a_new_epoch(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    """A restart with everysec may have lost writes: the room's epoch changes, ids differ."""
    server = RedisServer(tmp_path / "r", durable=True)
    # appendfsync everysec: the data survives this clean restart, but could have lost
    # the newest writes on a crash, so the service must not trust its ids.
    server.args = lambda: [*RedisServer.args(server)[:-6], "--appendonly", "yes",  # type: ignore[method-assign]
                           "--appendfsync", "everysec", "--save", ""]
    with server:
        node = await aiohttp_client(create_app(cluster_config(server.url)))
        alice = await peer(node, "alice")
        joined = await alice.join("lobby")
        await alice.say("lobby", "m1")
        server.command("BGREWRITEAOF")
        await asyncio.sleep(0.3)
        server.stop()
        server.start()
        # The session survived (same data), but the room's history may not have.
        code = await alice.closed(timeout=5)
        assert code == 1011
        again, _ = await hello_until_welcome(node, "bob")
        rejoined = await join_retrying(again, "lobby", since=1, epoch=joined["epoch"])
        assert rejoined["epoch"] != joined["epoch"]


async def test_redis_outage_longer_than_node_timeout_reaps_nobody(
    make_node: MakeNode, redis_server: RedisServer
) -> None:
    """Every lease expires during a long Redis outage; once back, no node is reaped."""
    a, b = await make_node(), await make_node()
    alice, bob = await peer(a, "alice"), await peer(b, "bob")
    await alice.join("lobby")
    await bob.join("lobby")
    await alice.expect("presence", event="join")
    redis_server.kill()
    # The outage outlasts every lease (node_timeout 1.5 s); the TTLs are absolute in
    # the append-only file, so the leases are gone when Redis comes back.
    await alice.quiet(2.5)
    redis_server.start()
    for node in (a, b):
        await until_ready(node)
    # Give the reapers more than node_timeout + cleanup.interval: nobody leaves.
    assert [f for f in await alice.quiet(2.5) if f["type"] == "presence"] == []
    assert [f for f in await bob.quiet(0.1) if f["type"] == "presence"] == []
    await alice.say("lobby", "still together")
    assert (await bob.expect("message"))["text"] == "still together"
    rooms = await (await a.get("/api/rooms")).json()
    assert rooms[0]["members"] == 2


async def test_says_survive_a_flushed_script_cache(
    make_node: MakeNode, redis_server: RedisServer
) -> None:
    """Redis forgot the scripts (SCRIPT FLUSH, or a restart): says are still stored once."""
    a = await make_node()
    alice = await peer(a, "alice")
    await alice.join("lobby")
    await alice.say("lobby", "before", cid="b")
    redis_server.command("SCRIPT", "FLUSH")
    for n in range(3):
        await alice.send({"type": "say", "room": "lobby", "text": f"after {n}", "cid": f"a{n}"})
    acks = [await alice.expect("ack") for _ in range(3)]
    assert sorted(ack["id"] for ack in acks) == [2, 3, 4]
    assert redis_server.command("XLEN", "chat:{lobby}:log") == 4


async def test_concurrent_says_share_a_round_trip(make_node: MakeNode) -> None:
    """Says from many connections at once go to Redis in shared pipelines, in order."""
    a = await make_node()
    talkers = [await peer(a, f"t{n}") for n in range(20)]
    for talker in talkers:
        await talker.join("busy")
    for talker in talkers:
        await talker.send({"type": "say", "room": "busy", "text": "x", "cid": "1"})
    ids = sorted([(await talker.expect("ack"))["id"] for talker in talkers])
    assert ids == list(range(1, 21))
    batches = a.app[METRICS].commit_messages.collect()[0].samples
    count = next(s.value for s in batches if s.name.endswith("_count"))
    assert count < 20  # fewer round trips than says


async def test_recovery_cap_and_room_paging_hold_on_redis(make_node: MakeNode) -> None:
    """history.recover caps a join with since, and /api/rooms pages, on the Redis backend."""
    a = await make_node({"history": {"recover": 3}})
    alice = await peer(a, "alice")
    joined = await alice.join("r0")
    for n in range(6):
        await alice.say("r0", f"m{n}")
    for name in ("r1", "r2", "r3"):
        await alice.join(name)
    late = await peer(a, "late")
    recovered = await late.join("r0", since=1, epoch=joined["epoch"])
    assert [m["id"] for m in recovered["messages"]] == [4, 5, 6]
    assert recovered["complete"] is False
    page = await (await a.get("/api/rooms?limit=2")).json()
    assert [room["room"] for room in page] == ["r0", "r1"]
    rest = await (await a.get("/api/rooms?limit=2&after=r1")).json()
    assert [room["room"] for room in rest] == ["r2", "r3"]
    assert (await a.get("/api/rooms?limit=0")).status == 400


async def test_more_requests_at_once_than_pooled_connections(make_node: MakeNode) -> None:
    """Many history requests at once all get their page (the Redis pool makes them wait)."""
    a = await make_node({"limits": {"max_connections_per_ip": 500}})
    peers = [await peer(a, f"p{n}") for n in range(90)]
    for who in peers:
        await who.join("crowd")
    for who in peers:  # all at once (the test client itself opens at most 100 sockets)
        await who.send({"type": "history", "room": "crowd"})
    replies = [await who.expect_any(("history", "error")) for who in peers]
    assert [reply["type"] for reply in replies] == ["history"] * len(peers)
    assert (await a.get("/readyz")).status == 200


async def readiness(node: Node) -> tuple[int, dict[str, Any]]:
    response = await node.get("/readyz")
    body: dict[str, Any] = await response.json()
    return response.status, body


async def refused_say(who: Peer, room: str, cid: str) -> dict[str, Any]:
    """A say answered `unavailable` (not acknowledged, the connection kept)."""
    await who.send({"type": "say", "room": room, "text": "refused", "cid": cid})
    reply = await who.expect_any(("ack", "error"))
    assert (reply["type"], reply.get("code"), reply.get("ref")) == ("error", "unavailable", cid)
    return reply


async def test_redis_out_of_memory_is_unready_until_it_takes_writes(
    make_node: MakeNode, redis_server: RedisServer
) -> None:
    """maxmemory below what Redis uses (noeviction): says get `unavailable`, /readyz is
    503 naming OOM; maxmemory 0: ready again within the contract's 5 s, says work."""
    a = await make_node()
    alice = await peer(a, "alice")
    await alice.join("lobby")
    await alice.say("lobby", "before")
    assert (await readiness(a))[0] == 200
    redis_server.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
    redis_server.command("CONFIG", "SET", "maxmemory", "1")
    await refused_say(alice, "lobby", "oom")
    status, body = await readiness(a)
    assert (status, body["status"]) == (503, "unavailable"), body
    assert body["backends"]["history"].startswith("redis refuses writes: OOM "), body

    redis_server.command("CONFIG", "SET", "maxmemory", "0")
    await until_ready(a)
    assert (await say_retrying(alice, "lobby", "after", "oom"))["id"] == 2
    assert alice.ws.closed is False


async def test_redis_turned_replica_is_unready_until_primary_again(
    make_node: MakeNode, redis_server: RedisServer
) -> None:
    """REPLICAOF a master that does not answer: Redis keeps its data but refuses writes
    (READONLY): says get `unavailable`, /readyz 503; REPLICAOF NO ONE: ready, nothing lost."""
    a = await make_node()
    alice = await peer(a, "alice")
    await alice.join("lobby")
    for n in range(3):
        await alice.say("lobby", f"kept {n}")
    redis_server.command("REPLICAOF", "127.0.0.1", str(free_port()))
    await refused_say(alice, "lobby", "ro")
    status, body = await readiness(a)
    assert (status, body["status"]) == (503, "unavailable"), body
    assert body["backends"]["history"].startswith("redis refuses writes: READONLY "), body

    redis_server.command("REPLICAOF", "NO", "ONE")
    await until_ready(a)
    assert (await say_retrying(alice, "lobby", "after", "ro"))["id"] == 4
    await alice.send({"type": "history", "room": "lobby"})
    page = await alice.expect("history")
    texts = [m["text"] for m in page["messages"]]
    assert texts == ["kept 0", "kept 1", "kept 2", "after"], page


async def test_join_leave_flood_ends_with_1008_on_redis(make_node: MakeNode) -> None:
    """limits.join_rate holds on the Redis backend: a join/leave flood sent without
    reading gets its burst, then ten rate_limited and close 1008; a member on another
    node saw only the burst's presence frames."""
    a, b = await make_node(TIGHT_JOINS), await make_node()
    flooder, watcher = await peer(a, "alice"), await peer(b, "watcher")
    await watcher.join("lobby")
    await flood_joins(flooder, watcher)
    assert (await readiness(a))[0] == 200

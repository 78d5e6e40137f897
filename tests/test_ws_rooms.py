"""Rooms, messages, recovery, typing and history over a real socket."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chat.app import create_app
from tests.helpers import Connect, Peer, SlowStorage, make_config


async def test_join_answers_joined_and_tells_others(connect: Connect) -> None:
    """join -> joined with epoch, sorted members, no messages; others get presence join."""
    bob = await connect("bob")
    await bob.join("lobby")
    alice = await connect("Alice")
    joined = await alice.join("lobby")
    assert joined["members"] == ["Alice", "bob"]  # sorted by casefolded form
    assert joined["messages"] == [] and joined["complete"] is True
    assert isinstance(joined["epoch"], str) and joined["epoch"]
    presence = await bob.next_is("presence")
    assert presence == {"type": "presence", "room": "lobby", "event": "join", "nick": "Alice"}


async def test_rejoin_is_quiet(connect: Connect) -> None:
    """Joining a room already joined answers joined again with no presence event."""
    bob = await connect("bob")
    await bob.join("lobby")
    alice = await connect("alice")
    await alice.join("lobby")
    await bob.expect("presence")
    again = await alice.join("lobby")
    assert again["members"] == ["alice", "bob"]
    assert await bob.quiet(0.2) == []


async def test_say_acks_and_broadcasts_with_consecutive_ids(connect: Connect) -> None:
    """say -> ack to the sender and message to every member, ids 1, 2, 3 per room."""
    alice = await connect("alice")
    bob = await connect("bob")
    await alice.join("lobby")
    await bob.join("lobby")
    await alice.join("dev")
    for n in range(1, 4):
        await alice.send({"type": "say", "room": "lobby", "text": f"m{n}", "cid": f"c{n}"})
        ack = await alice.next_is("ack", cid=f"c{n}", room="lobby", id=n)
        message = await alice.next_is("message", id=n, text=f"m{n}", nick="alice", cid=f"c{n}")
        assert message["ts"] == ack["ts"]
        assert (await bob.expect("message")) == message
    await alice.send({"type": "say", "room": "dev", "text": "other room"})
    ack = await alice.next_is("ack", cid=None, room="dev", id=1)


async def test_duplicate_cid_is_acked_not_stored(connect: Connect, client: Any) -> None:
    """A say with a stored (room, nick, cid) gets the original ack and is not broadcast."""
    alice = await connect("alice")
    bob = await connect("bob")
    await alice.join("lobby")
    await bob.join("lobby")
    first = await alice.say("lobby", "once", cid="same")
    await bob.expect("message", text="once")
    again = await alice.say("lobby", "once", cid="same")
    assert again == first
    assert await bob.quiet(0.2) == []
    text = await (await client.get("/metrics")).text()
    assert "chat_messages_total 1.0" in text


async def test_members_get_messages_only_after_join(connect: Connect) -> None:
    """A connection receives a room's messages only once it joined on that connection."""
    alice = await connect("alice")
    bob = await connect("bob")
    await alice.join("lobby")
    await alice.say("lobby", "unseen")
    await bob.send({"type": "ping", "t": "x"})
    await bob.next_is("pong", t="x")


async def test_fresh_join_replays_newest(aiohttp_client: Any) -> None:
    """Without since, joined holds the newest `history.replay` messages, complete true."""
    client = await aiohttp_client(create_app(make_config({"history": {"replay": 3}})))
    alice = Peer(await client.ws_connect("/ws"))
    await alice.hello("alice")
    await alice.join("lobby")
    for n in range(5):
        await alice.say("lobby", f"m{n}")
    bob = Peer(await client.ws_connect("/ws"))
    await bob.hello("bob")
    joined = await bob.join("lobby")
    assert [m["id"] for m in joined["messages"]] == [3, 4, 5]
    assert joined["complete"] is True
    assert joined["messages"][0] == {
        "type": "message", "room": "lobby", "id": 3, "nick": "alice", "text": "m2",
        "ts": joined["messages"][0]["ts"], "cid": None,
    }


async def test_since_recovers_everything_after(connect: Connect) -> None:
    """With since and the right epoch, joined holds every stored message with id > since."""
    alice = await connect("alice")
    joined = await alice.join("lobby")
    for n in range(60):
        await alice.say("lobby", f"m{n}")
    again = await alice.join("lobby", since=5, epoch=joined["epoch"])
    assert [m["id"] for m in again["messages"]] == list(range(6, 61))
    assert again["complete"] is True
    up_to_date = await alice.join("lobby", since=60, epoch=joined["epoch"])
    assert up_to_date["messages"] == [] and up_to_date["complete"] is True


async def test_since_past_retention_is_incomplete(aiohttp_client: Any) -> None:
    """When messages after since are no longer stored, complete is false."""
    client = await aiohttp_client(create_app(make_config({"history": {"retain": 5, "replay": 5}})))
    alice = Peer(await client.ws_connect("/ws"))
    await alice.hello("alice")
    joined = await alice.join("lobby")
    for n in range(10):
        await alice.say("lobby", f"m{n}")
    again = await alice.join("lobby", since=2, epoch=joined["epoch"])
    assert [m["id"] for m in again["messages"]] == [6, 7, 8, 9, 10]
    assert again["complete"] is False


async def test_other_epoch_is_a_fresh_join(connect: Connect) -> None:
    """A join whose epoch differs is treated as a join without since, complete false."""
    alice = await connect("alice")
    await alice.join("lobby")
    for n in range(3):
        await alice.say("lobby", f"m{n}")
    again = await alice.join("lobby", since=1, epoch="some-other-epoch")
    assert [m["id"] for m in again["messages"]] == [1, 2, 3]
    assert again["complete"] is False


async def test_live_messages_follow_joined_without_gap(connect: Connect) -> None:
    """Messages said around a join arrive after joined, none twice, none skipped."""
    alice = await connect("alice")
    await alice.join("lobby")
    bob = await connect("bob")

    async def chatter() -> None:
        for n in range(30):
            await alice.send({"type": "say", "room": "lobby", "text": f"m{n}"})

    task = asyncio.create_task(chatter())
    await asyncio.sleep(0)
    await bob.send({"type": "join", "room": "lobby", "since": 0})
    joined = await bob.expect("joined")
    seen = [m["id"] for m in joined["messages"]]
    await task
    while len(seen) < 30:
        seen.append((await bob.expect("message"))["id"])
    assert seen == list(range(1, 31))


async def test_leave(connect: Connect) -> None:
    """leave -> left; others get presence leave reason left; no more messages from it."""
    alice = await connect("alice")
    bob = await connect("bob")
    await alice.join("lobby")
    await bob.join("lobby")
    await alice.expect("presence")
    await bob.send({"type": "leave", "room": "lobby"})
    await bob.next_is("left", room="lobby")
    leave = await alice.next_is("presence", event="leave", nick="bob")
    assert leave["reason"] == "left"
    await alice.say("lobby", "gone?")
    await bob.send({"type": "ping"})
    await bob.next_is("pong")
    await bob.send({"type": "say", "room": "lobby", "text": "x"})
    await bob.next_is("error", code="not_joined", ref="say")


async def test_room_names(connect: Connect) -> None:
    """Room names must match ^[a-z0-9][a-z0-9_-]{0,31}$."""
    alice = await connect("alice")
    for bad in ["Lobby", "-x", "", "a" * 33, "sp ace", "ü"]:
        await alice.send({"type": "join", "room": bad})
        await alice.next_is("error", code="room_invalid", ref="join")
    assert (await alice.join("a" * 32))["room"] == "a" * 32
    await alice.join("0_-x")


async def test_too_many_rooms(aiohttp_client: Any) -> None:
    """A session is in at most limits.max_rooms rooms; re-joins do not count twice."""
    client = await aiohttp_client(create_app(make_config({"limits": {"max_rooms": 2}})))
    alice = Peer(await client.ws_connect("/ws"))
    await alice.hello("alice")
    await alice.join("a")
    await alice.join("b")
    await alice.join("a")
    await alice.send({"type": "join", "room": "c"})
    await alice.next_is("error", code="too_many_rooms", ref="join")
    await alice.send({"type": "leave", "room": "a"})
    await alice.next_is("left")
    await alice.join("c")


async def test_text_rules(aiohttp_client: Any) -> None:
    """text_too_long is checked before text_invalid; blank and control characters refused."""
    client = await aiohttp_client(create_app(make_config({"limits": {"max_text": 10}})))
    alice = Peer(await client.ws_connect("/ws"))
    await alice.hello("alice")
    await alice.join("lobby")
    cases = [
        (" " * 11, "text_too_long"),
        ("x" * 11, "text_too_long"),
        ("   \n\t", "text_invalid"),
        ("", "text_invalid"),
        ("bell\x07", "text_invalid"),
        ("nul\x00", "text_invalid"),
    ]
    for n, (text, code) in enumerate(cases):
        await alice.send({"type": "say", "room": "lobby", "text": text, "cid": f"k{n}"})
        await alice.next_is("error", code=code, ref=f"k{n}")
    ack = await alice.say("lobby", "🙂" * 10)  # code points, not bytes
    assert ack["id"] == 1
    await alice.say("lobby", "a\tb\nc")


async def test_typing_relayed_and_throttled(connect: Connect) -> None:
    """typing reaches the other members only, at most one a second per connection and room."""
    alice = await connect("alice")
    bob = await connect("bob")
    await alice.join("lobby")
    await bob.join("lobby")
    await alice.expect("presence")
    for _ in range(5):
        await bob.send({"type": "typing", "room": "lobby"})
    await alice.next_is("typing", room="lobby", nick="bob")
    assert await alice.quiet(0.3) == []
    await bob.send({"type": "ping", "t": 0})
    await bob.next_is("pong")  # the sender gets nothing for its typing


async def test_history_paging(connect: Connect) -> None:
    """history pages backwards with before/limit; more is true only while older remain."""
    alice = await connect("alice")
    await alice.join("lobby")
    for n in range(120):
        await alice.send({"type": "say", "room": "lobby", "text": f"m{n}"})
    await alice.expect("message", id=120)
    await alice.send({"type": "history", "room": "lobby"})
    page = await alice.expect("history")
    assert [m["id"] for m in page["messages"]] == list(range(71, 121)) and page["more"] is True
    await alice.send({"type": "history", "room": "lobby", "before": 71, "limit": 100})
    page = await alice.next_is("history")
    assert [m["id"] for m in page["messages"]] == list(range(1, 71)) and page["more"] is False
    await alice.send({"type": "history", "room": "lobby", "before": 3, "limit": 2})
    page = await alice.next_is("history", more=False)
    assert [m["id"] for m in page["messages"]] == [1, 2]
    assert page["messages"][0]["type"] == "message" and page["messages"][0]["room"] == "lobby"


@pytest.mark.parametrize("limit", [0, 101, -1, "5", 2.5, True])
async def test_history_limit_range(connect: Connect, limit: object) -> None:
    """history limit outside 1..100 or not an integer is bad_request."""
    alice = await connect("alice")
    await alice.join("lobby")
    await alice.send({"type": "history", "room": "lobby", "limit": limit})
    await alice.next_is("error", code="bad_request", ref="history")


async def test_history_needs_join(connect: Connect) -> None:
    """history, say and typing need the room joined on this connection."""
    alice = await connect("alice")
    for kind in ("history", "say", "typing"):
        await alice.send({"type": kind, "room": "lobby", "text": "x"})
        await alice.next_is("error", code="not_joined", ref=kind)


async def test_leave_of_a_room_not_joined_is_answered_left(connect: Connect) -> None:
    """leave works for any room: a room the session is not in is answered left too."""
    alice = await connect("alice")
    bob = await connect("bob")
    await bob.join("lobby")
    await alice.send({"type": "leave", "room": "lobby"})
    await alice.next_is("left", room="lobby")
    await alice.send({"type": "leave", "room": "nowhere"})
    await alice.next_is("left", room="nowhere")
    await alice.join("lobby")
    # No presence leave for a session that was not a member: the join comes first.
    await bob.next_is("presence", event="join", nick="alice")


async def test_api_rooms(connect: Connect, client: Any) -> None:
    """/api/rooms lists rooms with members or stored messages, with last_id."""
    alice = await connect("alice")
    await alice.join("lobby")
    await alice.join("empty")
    await alice.join("dev")
    await alice.say("dev", "x")
    await alice.send({"type": "leave", "room": "dev"})
    await alice.expect("left")
    rooms = await (await client.get("/api/rooms")).json()
    assert rooms == [
        {"room": "dev", "members": 0, "last_id": 1},
        {"room": "empty", "members": 1, "last_id": 0},
        {"room": "lobby", "members": 1, "last_id": 0},
    ]


async def test_api_rooms_pages(connect: Connect, client: Any) -> None:
    """/api/rooms?after=&limit= pages through rooms in name order, live and stored alike."""
    alice = await connect("alice")
    for room in ("e", "a", "d"):  # live rooms, with members and nothing stored
        await alice.join(room)
    for room in ("b", "c"):  # stored rooms, nobody in them
        await alice.join(room)
        await alice.say(room, "x")
        await alice.send({"type": "leave", "room": room})
        await alice.expect("left")
    pages, after = [], ""
    while True:
        page = await (await client.get("/api/rooms", params={"after": after, "limit": 2})).json()
        if not page:
            break
        pages.append([entry["room"] for entry in page])
        after = page[-1]["room"]
    assert pages == [["a", "b"], ["c", "d"], ["e"]]
    one = await (await client.get("/api/rooms", params={"after": "b", "limit": 1})).json()
    assert one == [{"room": "c", "members": 0, "last_id": 1}]
    assert len(await (await client.get("/api/rooms")).json()) == 5


@pytest.mark.parametrize("limit", ["0", "1001", "-1", "x", "", "1.5", " 5", "+5", "9" * 5000])
async def test_api_rooms_bad_limit_is_400(client: Any, limit: str) -> None:
    """A limit outside 1..1000, or not a plain integer, is 400 with a JSON error."""
    response = await client.get("/api/rooms", params={"limit": limit})
    assert response.status == 400
    assert "limit" in (await response.json())["error"]


async def test_message_committed_after_sender_left_still_broadcast(aiohttp_client: Any) -> None:
    """A say stored after its sender's connection ended still reaches the room: no gap."""
    from chat.keys import HUB

    app = create_app(make_config())
    storage = SlowStorage(app)
    client = await aiohttp_client(app)
    bob = Peer(await client.ws_connect("/ws"))
    await bob.hello("bob")
    await bob.join("lobby")
    alice = Peer(await client.ws_connect("/ws"))
    await alice.hello("alice")
    await alice.join("lobby")
    await alice.send({"type": "say", "room": "lobby", "text": "last words", "cid": "w"})
    await asyncio.wait_for(storage.entered.wait(), 5)
    await alice.ws.close()
    await bob.expect("presence", event="leave", nick="alice")
    assert len(app[HUB].connections) == 1
    storage.release()
    message = await bob.expect("message")
    assert (message["id"], message["text"]) == (1, "last words")

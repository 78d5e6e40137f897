"""hello/welcome, nicks and sessions (takeover, end of session) over a real socket."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from chat.keys import CONFIG, HUB
from tests.helpers import Connect, make_config


async def test_welcome_carries_session_heartbeat_and_limits(connect: Connect, client: Any) -> None:
    """welcome has version, a long random session, the nick, rooms, heartbeat and limits."""
    peer = await connect()
    welcome = await peer.hello("alice")
    config = client.app[CONFIG]
    assert welcome["version"] == 1
    assert welcome["nick"] == "alice"
    assert welcome["rooms"] == []
    assert len(welcome["session"]) >= 22  # >= 128 bits in url-safe base64
    assert welcome["heartbeat"] == {
        "interval": config.heartbeat.interval, "timeout": config.heartbeat.timeout
    }
    rate, join_rate = config.limits.rate, config.limits.join_rate
    assert welcome["limits"] == {
        "text": config.limits.max_text,
        "frame": config.limits.max_frame,
        "rooms": config.limits.max_rooms,
        "rate": {"messages": rate.messages, "per": rate.per, "burst": rate.burst},
        "join_rate": {
            "messages": join_rate.messages, "per": join_rate.per, "burst": join_rate.burst
        },
    }


async def test_sessions_differ(connect: Connect) -> None:
    """Every hello gets its own session secret."""
    one = await connect()
    two = await connect()
    assert (await one.hello("a"))["session"] != (await two.hello("b"))["session"]


@pytest.mark.parametrize("kind", ["join", "leave", "say", "typing", "history", "nope", "HELLO"])
async def test_requests_before_hello_are_refused(connect: Connect, kind: str) -> None:
    """Before hello every type but hello and ping gets hello_required, unknown ones too."""
    peer = await connect()
    await peer.send({"type": kind, "room": "lobby", "text": "x"})
    error = await peer.next_is("error")
    assert (error["code"], error["ref"]) == ("hello_required", kind)


@pytest.mark.parametrize(
    ("frame", "code", "ref"),
    [
        ({"type": "join"}, "hello_required", "join"),  # ill-formed, but not hello or ping
        ({"type": "nope", "cid": "k1"}, "hello_required", "k1"),
        ({"type": "hello", "nick": 5}, "bad_request", "hello"),
        ({"type": 5}, "bad_request", None),
        ("not json", "bad_json", None),
    ],
)
async def test_ill_formed_frames_before_hello(
    connect: Connect, frame: dict[str, Any] | str, code: str, ref: str | None
) -> None:
    """Before hello a frame with a type other than hello or ping is hello_required."""
    peer = await connect()
    await peer.send(frame)
    await peer.next_is("error", code=code, ref=ref)
    await peer.hello("alice")


async def test_ping_and_legacy_heartbeat_before_hello(connect: Connect) -> None:
    """ping and the legacy heartbeat are answered before hello."""
    peer = await connect()
    await peer.send({"type": "ping", "t": {"k": [1, 2]}})
    pong = await peer.next_is("pong", t={"k": [1, 2]})
    assert isinstance(pong["ts"], int)
    await peer.send("~h#c~")
    msg = await peer.recv_raw()
    assert msg.data == "~h#c~"
    await peer.send({"type": "ping"})
    await peer.next_is("pong", t=None)


@pytest.mark.parametrize("nick", ["", "a" * 33, "has space", "emoji🙂", "at@sign", "tab\t"])
async def test_invalid_nicks(connect: Connect, nick: str) -> None:
    """Nicks outside the rules get nick_invalid and the client may try again."""
    peer = await connect()
    await peer.send({"type": "hello", "nick": nick})
    error = await peer.next_is("error", code="nick_invalid")
    assert error["ref"] == "hello"
    assert (await peer.hello("fine"))["nick"] == "fine"


async def test_nick_is_nfkc_normalised(connect: Connect) -> None:
    """welcome carries the NFKC form; letters of any script, digits, _ - . are allowed."""
    peer = await connect()
    assert (await peer.hello("\uff21\uff4c\uff49\uff43\uff45_1.x-ü"))["nick"] == "Alice_1.x-ü"
    other = await connect()
    assert (await other.hello("Иван٣"))["nick"] == "Иван٣"


@pytest.mark.parametrize("second", ["alice", "ALICE", "\uff21lice"])
async def test_nick_taken_case_and_width_insensitive(connect: Connect, second: str) -> None:
    """A nick equal after NFKC and casefold to a connected one gets nick_taken."""
    await connect("Alice")
    peer = await connect()
    await peer.send({"type": "hello", "nick": second})
    await peer.next_is("error", code="nick_taken", ref="hello")


async def test_hello_twice_is_bad_request(connect: Connect) -> None:
    """A second hello on a connection is bad_request."""
    peer = await connect("alice")
    await peer.send({"type": "hello", "nick": "alice"})
    await peer.next_is("error", code="bad_request", ref="hello")


async def test_nick_freed_when_connection_ends(connect: Connect) -> None:
    """When a connection closes its session ends and the nick is free again."""
    first = await connect("alice")
    await first.ws.close()
    again = await connect()
    for _ in range(50):
        await again.send({"type": "hello", "nick": "alice"})
        frame = await again.recv()
        if frame["type"] == "welcome":
            return
        assert frame["code"] == "nick_taken"
    pytest.fail("nick never freed")


async def test_takeover_keeps_rooms_without_presence(connect: Connect) -> None:
    """hello with the session takes it over: old closed 4002, rooms kept, no presence flap."""
    bob = await connect("bob")
    await bob.join("lobby")
    alice = await connect("alice")
    await alice.join("lobby")
    await alice.join("dev")
    await bob.expect("presence", event="join", nick="alice")
    await alice.say("lobby", "before", cid="c0")
    await bob.expect("message", text="before")

    new = await connect()
    welcome = await new.hello("ALICE", session=alice.session)
    assert welcome["session"] == alice.session
    assert welcome["nick"] == "alice"  # the session's spelling
    assert welcome["rooms"] == ["dev", "lobby"]
    assert await alice.closed() == 4002

    # Said while the new connection has not joined: it gets it through `since`.
    await bob.say("lobby", "meanwhile")
    joined = await new.join("lobby", since=1, epoch=(await bob_epoch(bob)))
    assert [m["text"] for m in joined["messages"]] == ["meanwhile"]
    assert joined["complete"] is True
    assert joined["members"] == ["alice", "bob"]
    await new.say("lobby", "after")
    await bob.expect("message", text="after")
    # bob saw no presence event for alice's takeover or re-join.
    assert all(f["type"] != "presence" for f in await bob.quiet(0.3))


async def bob_epoch(peer: Any) -> str:
    await peer.send({"type": "join", "room": "lobby"})
    return str((await peer.expect("joined"))["epoch"])


async def test_takeover_before_join_gets_no_messages(connect: Connect) -> None:
    """After takeover, the new connection receives a room's messages only once it joins."""
    alice = await connect("alice")
    await alice.join("lobby")
    bob = await connect("bob")
    await bob.join("lobby")
    new = await connect()
    await new.hello("alice", session=alice.session)
    await bob.say("lobby", "not yet")
    await new.send({"type": "ping", "t": 1})
    assert (await new.next_is("pong"))["t"] == 1  # and no message before it


async def test_wrong_session_gets_new_session(connect: Connect) -> None:
    """An unknown session, or one whose nick differs, is a plain hello."""
    alice = await connect("alice")
    peer = await connect()
    welcome = await peer.hello("carol", session=alice.session)
    assert welcome["session"] != alice.session
    assert welcome["rooms"] == []
    other = await connect()
    assert (await other.hello("dave", session="nonsense"))["session"] != "nonsense"
    # alice was not disturbed.
    await alice.send({"type": "ping"})
    await alice.next_is("pong")


async def test_session_ends_with_presence_closed(connect: Connect, client: Any) -> None:
    """A connection that ends leaves every room: presence leave with reason closed."""
    bob = await connect("bob")
    await bob.join("lobby")
    alice = await connect("alice")
    await alice.join("lobby")
    await bob.expect("presence", event="join")
    await alice.ws.close()
    leave = await bob.expect("presence", event="leave")
    assert leave == {
        "type": "presence", "room": "lobby", "event": "leave", "nick": "alice", "reason": "closed"
    }
    hub = client.app[HUB]
    assert [s.nick for s in hub.sessions.values()] == ["bob"]


async def test_missing_nick_is_bad_request(connect: Connect) -> None:
    """hello without nick (no token mode) is bad_request."""
    peer = await connect()
    await peer.send({"type": "hello"})
    await peer.next_is("error", code="bad_request", ref="hello")


async def test_metrics_count_connections(aiohttp_client: Any) -> None:
    """chat_connections follows open sockets, including before hello."""
    from chat.app import create_app

    client: TestClient[Any, Any] = await aiohttp_client(create_app(make_config()))
    ws = await client.ws_connect("/ws")
    text = await (await client.get("/metrics")).text()
    assert "chat_connections 1.0" in text
    await ws.close()
    hub = client.app[HUB]
    await hub.wait_empty()
    text = await (await client.get("/metrics")).text()
    assert "chat_connections 0.0" in text

"""Bad input gets an error frame or a close code from the contract, never a crash."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import WSMsgType

from chat.app import create_app
from chat.keys import HUB
from tests.helpers import Client, Connect, Peer, assert_still_serves, make_config


@pytest.mark.parametrize(
    ("raw", "code", "ref"),
    [
        ("not json", "bad_json", None),
        ("{", "bad_json", None),
        ("[" * 5000 + "]" * 5000, "bad_json", None),
        ('{"type": "say", "text": "\\ud800"}', "bad_json", None),
        ("[1, 2]", "bad_request", None),
        ('"hello"', "bad_request", None),
        ("{}", "bad_request", None),
        ('{"type": 5}', "bad_request", None),
        ('{"type": "nope"}', "unknown_type", "nope"),
        ('{"type": "nope", "cid": "k1"}', "unknown_type", "k1"),
        ('{"type": "join"}', "bad_request", "join"),
        ('{"type": "join", "room": 5}', "bad_request", "join"),
        ('{"type": "join", "room": "x", "since": -1}', "bad_request", "join"),
        ('{"type": "join", "room": "x", "since": "1"}', "bad_request", "join"),
        ('{"type": "say", "room": "lobby", "text": 1, "cid": "k2"}', "bad_request", "k2"),
        ('{"type": "say", "room": "lobby", "text": "x", "cid": ""}', "bad_request", "say"),
        ('{"type": "say", "room": "lobby", "text": "x", "cid": 7}', "bad_request", "say"),
        ('{"type": "hello", "nick": 5}', "bad_request", "hello"),
    ],
)
async def test_bad_frames_get_error(
    client: Client, connect: Connect, raw: str, code: str, ref: str | None
) -> None:
    """Malformed frames get the contract's error code and ref, and the server goes on."""
    peer = await connect("alice")
    await peer.join("lobby")
    await peer.send(raw)
    error = await peer.next_is("error", code=code, ref=ref)
    assert isinstance(error["message"], str) and error["message"]
    await peer.say("lobby", "fine")
    await assert_still_serves(client)


async def test_ten_errors_in_a_row_close_1008(client: Client, connect: Connect) -> None:
    """Ten errors in a row close with 1008 after the tenth error frame."""
    peer = await connect("alice")
    for _ in range(10):
        await peer.send("bad")
    for _ in range(10):
        await peer.next_is("error", code="bad_json")
    assert await peer.closed() == 1008
    await assert_still_serves(client)


@pytest.mark.parametrize("reset", ['{"type": "ping"}', "~h#c~", '{"type":"join","room":"a"}'])
async def test_success_resets_error_count(connect: Connect, reset: str) -> None:
    """A request answered without error (ping and legacy heartbeat too) resets the count."""
    peer = await connect("alice")
    for _ in range(9):
        await peer.send("bad")
    await peer.send(reset)
    for _ in range(9):
        await peer.send("bad")
    await peer.send({"type": "ping", "t": "alive"})
    await peer.expect("pong", t="alive")


async def test_dropped_typing_neither_counts_nor_resets(connect: Connect) -> None:
    """A typing dropped by its throttle does not reset the error count."""
    peer = await connect("alice")
    await peer.join("lobby")
    await peer.send({"type": "typing", "room": "lobby"})  # relayed: resets
    for _ in range(5):
        await peer.send("bad")
    await peer.send({"type": "typing", "room": "lobby"})  # dropped: no effect
    for _ in range(5):
        await peer.send("bad")
    for _ in range(10):
        await peer.expect("error")
    assert await peer.closed() == 1008


async def test_binary_frame_closes_1003(client: Client, connect: Connect) -> None:
    """A binary frame closes the connection with 1003."""
    peer = await connect("alice")
    await peer.ws.send_bytes(b"\x00\x01")
    assert await peer.closed() == 1003
    await assert_still_serves(client)


async def test_oversize_frame_closes_1009(aiohttp_client: Any) -> None:
    """An inbound message over limits.max_frame bytes closes with 1009; at the limit is fine."""
    client = await aiohttp_client(create_app(make_config({"limits": {"max_frame": 200}})))
    peer = Peer(await client.ws_connect("/ws"))
    await peer.hello("alice")
    at_limit = '{"type":"ping","t":"' + "x" * (200 - 22) + '"}'
    assert len(at_limit.encode()) == 200
    await peer.send(at_limit)
    await peer.next_is("pong")
    await peer.send('{"type":"ping","t":"' + "x" * 300 + '"}')
    assert await peer.closed() == 1009
    fresh = Peer(await client.ws_connect("/ws"))
    await fresh.hello("fresh")


async def test_invalid_utf8_closes_1007(client: Client, connect: Connect) -> None:
    """A text frame that is not valid UTF-8 closes with 1007."""
    peer = await connect("alice")
    await peer.ws.send_frame(b"\xff\xfe\xfd", WSMsgType.TEXT)
    assert await peer.closed() == 1007
    await assert_still_serves(client)


async def test_rate_limited(aiohttp_client: Any) -> None:
    """Past the token bucket a say gets rate_limited with retry_after; not stored."""
    config = make_config({"limits": {"rate": {"messages": 1, "per": 10, "burst": 2}}})
    client = await aiohttp_client(create_app(config))
    peer = Peer(await client.ws_connect("/ws"))
    await peer.hello("alice")
    await peer.join("lobby")
    await peer.say("lobby", "one", cid="a")
    await peer.say("lobby", "two", cid="b")
    await peer.send({"type": "say", "room": "lobby", "text": "three", "cid": "c"})
    error = await peer.expect("error", code="rate_limited", ref="c")
    assert 0 < error["retry_after"] <= 10
    # A re-sent say that is stored is acknowledged whatever the rate.
    assert (await peer.say("lobby", "one", cid="a"))["id"] == 1
    await peer.send({"type": "history", "room": "lobby"})
    history = await peer.expect("history")
    assert [m["text"] for m in history["messages"]] == ["one", "two"]


async def test_abrupt_disconnect_releases_everything(connect: Connect, client: Any) -> None:
    """A connection dropped without a close frame is released: rooms, nick, gauge."""
    bob = await connect("bob")
    await bob.join("lobby")
    alice = await connect("alice")
    await alice.join("lobby")
    await bob.expect("presence")
    await alice.send('{"type": "say", "room": "lobby", "te')  # half a request is still a frame
    await alice.expect("error")
    alice.ws._response.connection.transport.abort()  # type: ignore[union-attr]
    leave = await bob.expect("presence", event="leave")
    assert leave["reason"] == "closed"
    hub = client.app[HUB]
    assert [c.nick for c in hub.connections] == ["bob"]
    assert set(hub.cluster.nicks) == {"bob"}

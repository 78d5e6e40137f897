"""Abusive clients get the contract's answer, and the server goes on serving everyone else."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import AsyncIterator
from typing import Any, Final

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat.keys import HUB
from chat.protocol import LEGACY_HEARTBEAT
from tests.helpers import (
    DEADLINE,
    TIGHT_JOINS,
    Peer,
    abort,
    app_client,
    assert_still_serves,
    connect,
    flood_joins,
    gauge,
    refused,
    until,
)
from tests.rawws import close_code, handshake, masked_frame

Client = TestClient[Any, Any]

ERROR_CODES: Final = frozenset({
    "bad_json", "bad_request", "unknown_type", "hello_required", "nick_invalid", "nick_taken",
    "unauthorized", "room_invalid", "forbidden_room", "not_joined", "too_many_rooms",
    "text_invalid", "text_too_long", "rate_limited",
})
SERVER_TYPES: Final = frozenset({
    "welcome", "joined", "left", "message", "ack", "presence", "typing", "history", "pong",
    "error",
})
# Every close code of the contract except 1011, which would mean a server bug.
CLOSE_CODES: Final = frozenset({1000, 1001, 1003, 1007, 1008, 1009, 4000, 4001, 4002, 4003})



_fuzzers = itertools.count()


async def error_for(peer: Peer, frame: dict[str, Any] | str) -> dict[str, Any]:
    """The error that answers `frame` (broadcasts still arriving before it are skipped)."""
    await peer.send(frame)
    error = await peer.expect("error")
    assert error["code"] in ERROR_CODES
    assert isinstance(error["message"], str) and error["message"]
    return error


# ---------------------------------------------------------------------- malformed frames


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        pytest.param("not json", "bad_json", id="not-json"),
        pytest.param('{"type": "say", "room": "lobby", "text": "x"', "bad_json", id="truncated"),
        pytest.param("{" * 100_00, "bad_json", id="deep-nesting"),
        pytest.param("NaN", "bad_json", id="nan"),
        pytest.param("null", "bad_request", id="null"),
        pytest.param("[]", "bad_request", id="array"),
        pytest.param("42", "bad_request", id="number"),
        pytest.param('"say"', "bad_request", id="string"),
        pytest.param('{"type": ["say"]}', "bad_request", id="type-list"),
        pytest.param('{"type": null}', "bad_request", id="type-null"),
        pytest.param('{"type": "join", "room": {"a": 1}}', "bad_request", id="room-object"),
        pytest.param('{"type": "say", "room": "lobby", "text": ["x"]}', "bad_request",
                     id="text-list"),
        pytest.param('{"type": "history", "room": "lobby", "limit": 1000}', "bad_request",
                     id="limit-too-big"),
        pytest.param('{"type": "history", "room": "lobby", "limit": true}', "bad_request",
                     id="limit-bool"),
        pytest.param('{"type": "join", "room": "lobby", "since": 1.5}', "bad_request",
                     id="since-float"),
        pytest.param('{"type": "hello", "nick": "x"}', "bad_request", id="hello-twice"),
        pytest.param('{"type": "HELLO"}', "unknown_type", id="type-case"),
        pytest.param('{"type": "admin"}', "unknown_type", id="unknown"),
        pytest.param('{"type": "' + "x" * 10_000 + '"}', "unknown_type", id="long-type"),
    ],
)
async def test_malformed_frames_get_errors(client: Client, raw: str, code: str) -> None:
    """Invalid JSON, non-objects, wrong field types and unknown types get their error codes."""
    peer = await connect(client, "alice")
    await peer.join("lobby")
    error = await error_for(peer, raw)
    assert error["code"] == code, error
    assert len(error["message"]) < 200  # the message does not echo a huge input back
    await peer.say("lobby", "connection still usable")
    await assert_still_serves(client)


@pytest.mark.parametrize("kind", ["ping", "say", "hello"])
async def test_deeply_nested_frame_is_bad_json(client: Client, kind: str) -> None:
    """A frame nested 255 deep (a ping's t 254 deep) gets bad_json, ref null; pings go on."""
    peer = await connect(client, "alice")
    await peer.join("lobby")
    t = "[" * 254 + "]" * 254
    error = await error_for(peer, f'{{"type": "{kind}", "room": "lobby", "t": {t}}}')
    assert (error["code"], error["ref"]) == ("bad_json", None)
    await peer.send({"type": "ping", "t": "still"})
    await peer.next_is("pong", t="still")
    await assert_still_serves(client)


async def test_requests_before_hello(client: Client) -> None:
    """Before hello every request but ping and the legacy heartbeat gets hello_required."""
    peer = await connect(client)
    for kind in ("join", "leave", "say", "typing", "history"):
        error = await error_for(peer, {"type": kind, "room": "lobby", "text": "x"})
        assert (error["code"], error["ref"]) == ("hello_required", kind)
    await peer.send(LEGACY_HEARTBEAT)
    assert (await peer.recv())["type"] == LEGACY_HEARTBEAT
    await peer.hello("alice")
    await assert_still_serves(client)


async def test_binary_frame_closes_1003(client: Client) -> None:
    """A binary frame closes the connection with 1003."""
    peer = await connect(client, "alice")
    await peer.ws.send_bytes(b'{"type": "ping"}')
    assert await peer.closed() == 1003
    await assert_still_serves(client)


async def test_invalid_utf8_closes_1007(client: Client) -> None:
    """A text frame that is not UTF-8 closes the connection with 1007."""
    peer = await connect(client, "alice")
    await peer.ws.send_frame(b'{"type": "ping", "t": "\xff\xfe"}', WSMsgType.TEXT)
    assert await peer.closed() == 1007
    await assert_still_serves(client)


async def test_frame_of_exactly_max_frame_accepted(client: Client) -> None:
    """A frame of exactly limits.max_frame bytes is still read."""
    peer = await connect(client, "alice")
    frame = {"type": "ping", "t": ""}
    frame["t"] = "x" * (16384 - len(json.dumps(frame)))
    assert len(json.dumps(frame)) == 16384
    await peer.send(frame)
    assert (await peer.next_is("pong"))["t"] == frame["t"]


@pytest.mark.parametrize("size", [16385, 1_000_000])
async def test_oversize_frame_closes_1009(client: Client, size: int) -> None:
    """A frame over limits.max_frame closes the connection with 1009."""
    peer = await connect(client, "alice")
    await peer.send("x" * size)
    assert await peer.closed() == 1009
    await assert_still_serves(client)


# ---------------------------------------------------------------------- nicks and texts


@pytest.mark.parametrize(
    "nick",
    ["x" * 10_000, "x" * 33, "", " ", "ali ce", "ali\x00ce", "bob\n", "eve\x1b[31m",
     "zero\u200bwidth", "rtl\u202eevil", "<script>", "a/b", "😀",
     # Hangul fillers are letters (Lo) that show as nothing: Default_Ignorable.
     "\u3164", "\u3164\u3164", "ali\u115fce", "\uffa0bob", "bob\u1160"],
)
async def test_invalid_nicks_refused(client: Client, nick: str) -> None:
    """Huge nicks and nicks with spaces, controls or symbols get nick_invalid; retry works."""
    peer = await connect(client)
    error = await error_for(peer, {"type": "hello", "nick": nick})
    assert (error["code"], error["ref"]) == ("nick_invalid", "hello")
    assert len(json.dumps(error)) < 1000
    await peer.hello("alice")
    await assert_still_serves(client)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("alice", "ALICE"),
        ("alice", "Alice"),
        ("alice", "\uff41\uff4c\uff49\uff43\uff45"),  # fullwidth
        ("\u00c5sa", "A\u030asa"),  # composed and decomposed
        ("\u212bsa", "\u00e5SA"),  # Angstrom sign
        ("stra\u00dfe", "STRASSE"),
        ("\ufb01x", "FIX"),  # the fi ligature
    ],
)
async def test_lookalike_nicks_taken(client: Client, first: str, second: str) -> None:
    """Nicks differing only by case or NFKC form are the same nick: nick_taken."""
    await connect(client, first)
    peer = await connect(client)
    error = await error_for(peer, {"type": "hello", "nick": second})
    assert (error["code"], error["ref"]) == ("nick_taken", "hello")
    await peer.hello("somebody")
    await assert_still_serves(client)


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("x" * 2001, "text_too_long"),
        ("\x00" * 2001, "text_too_long"),  # length is checked before content
        ("", "text_invalid"),
        (" \n\t ", "text_invalid"),
        ("bell\x07", "text_invalid"),
        ("\x1b[2Jclear", "text_invalid"),
        ("nul\x00", "text_invalid"),
        ("cr\r\n", "text_invalid"),
        ("del\x7f", "text_invalid"),
        ("c1\x85", "text_invalid"),
    ],
)
async def test_bad_texts_refused(client: Client, text: str, code: str) -> None:
    """Texts over max_text, blank, or with control characters other than tab and newline."""
    peer = await connect(client, "alice")
    await peer.join("lobby")
    error = await error_for(peer, {"type": "say", "room": "lobby", "text": text, "cid": "k"})
    assert (error["code"], error["ref"]) == (code, "k")
    assert len(json.dumps(error)) < 1000
    ack = await peer.say("lobby", "tab\tand\nnewline are fine")
    await peer.expect("message", id=ack["id"], text="tab\tand\nnewline are fine")
    await assert_still_serves(client)


async def test_text_over_max_frame_closes_1009(client: Client) -> None:
    """A say whose frame is over max_frame closes with 1009, not an error frame."""
    peer = await connect(client, "alice")
    await peer.join("lobby")
    await peer.send({"type": "say", "room": "lobby", "text": "x" * 20_000})
    assert await peer.closed() == 1009
    await assert_still_serves(client)


# ---------------------------------------------------------------------- floods


async def test_say_flood_rate_limited(aiohttp_client: Any) -> None:
    """Past the burst, says get rate_limited with retry_after; after it, saying works again."""
    client = await app_client(
        aiohttp_client, {"limits": {"rate": {"messages": 20, "per": 1, "burst": 3}}}
    )
    peer = await connect(client, "alice")
    await peer.join("lobby")
    hub = client.app[HUB]
    now = hub.clock()
    hub.clock = lambda: now  # no refill while the flood is read
    for n in range(3):
        await peer.say("lobby", f"burst {n}")
    error = await error_for(peer, {"type": "say", "room": "lobby", "text": "one more", "cid": "r"})
    assert (error["code"], error["ref"]) == ("rate_limited", "r")
    retry_after = error["retry_after"]
    assert isinstance(retry_after, int | float) and 0 < retry_after <= 1 / 20 + 1e-9
    hub.clock = lambda: now + retry_after
    ack = await peer.say("lobby", "after waiting", cid="r")
    assert ack["cid"] == "r"
    await assert_still_serves(client)


async def test_say_flood_ends_with_1008(aiohttp_client: Any) -> None:
    """A client that ignores rate_limited is closed with 1008 after ten in a row."""
    client = await app_client(
        aiohttp_client, {"limits": {"rate": {"messages": 1, "per": 60, "burst": 2}}}
    )
    peer = await connect(client, "alice")
    await peer.join("lobby")
    for n in range(30):
        await peer.send({"type": "say", "room": "lobby", "text": f"spam {n}"})
    kinds = []
    while len(kinds) < 12:
        frame = await peer.recv()
        if frame["type"] in ("ack", "error"):
            kinds.append(frame.get("code", frame["type"]))
    assert kinds == ["ack", "ack"] + ["rate_limited"] * 10
    assert await peer.closed() == 1008
    await asyncio.wait_for(client.app[HUB].wait_empty(), DEADLINE)
    rooms = await (await client.get("/api/rooms")).json()
    assert rooms == [{"room": "lobby", "members": 0, "last_id": 2}]
    await assert_still_serves(client)


async def test_join_leave_flood_rate_limited(aiohttp_client: Any) -> None:
    """Past limits.join_rate's burst, join and leave get rate_limited with retry_after."""
    client = await app_client(
        aiohttp_client, {"limits": {"join_rate": {"messages": 2, "per": 1, "burst": 4}}}
    )
    peer = await connect(client, "alice")
    watcher = await connect(client, "watcher")
    await watcher.join("lobby")
    hub = client.app[HUB]
    now = hub.clock()
    hub.clock = lambda: now  # no refill while the flood is read
    for _ in range(2):
        await peer.join("lobby")
        await peer.send({"type": "leave", "room": "lobby"})
        await peer.next_is("left", room="lobby")
    for frame in ({"type": "join", "room": "lobby"}, {"type": "leave", "room": "lobby"}):
        error = await error_for(peer, frame)
        assert (error["code"], error["ref"]) == ("rate_limited", frame["type"])
        assert 0 < error["retry_after"] <= 0.5 + 1e-9
    # The watcher saw two joins and two leaves, and nothing of the refused ones.
    events = [(await watcher.next_is("presence"))["event"] for _ in range(4)]
    assert events == ["join", "leave", "join", "leave"]
    hub.clock = lambda: now + 0.5
    await peer.join("lobby")
    await watcher.next_is("presence", event="join", nick="alice")
    await assert_still_serves(client)


async def test_join_leave_flood_ends_with_1008(aiohttp_client: Any) -> None:
    """The attack as made (join/leave pairs sent without reading the answers): the burst
    is served, then ten rate_limited in a row close the connection with 1008; the other
    members saw only the burst's presence frames."""
    client = await app_client(aiohttp_client, TIGHT_JOINS)
    peer = await connect(client, "alice")
    watcher = await connect(client, "watcher")
    await watcher.join("lobby")
    await flood_joins(peer, watcher)
    # The flooder's session ended outside the room: no presence for it after the burst.
    assert await watcher.quiet(0.2) == []
    await assert_still_serves(client)


async def test_typing_flood_relays_one_per_second(client: Client) -> None:
    """Of a flood of typing, one a second is relayed; the rest are dropped silently."""
    hub = client.app[HUB]
    now = hub.clock()
    hub.clock = lambda: now
    typer = await connect(client, "typer")
    await typer.join("lobby")
    watcher = await connect(client, "watcher")
    await watcher.join("lobby")
    await typer.expect("presence", nick="watcher")
    for _ in range(50):
        await typer.send({"type": "typing", "room": "lobby"})
    await typer.send({"type": "say", "room": "lobby", "text": "done typing"})
    await typer.next_is("ack")  # nothing, no error either, for the dropped ones
    await typer.next_is("message", text="done typing")
    await watcher.next_is("typing", nick="typer")
    await watcher.next_is("message", text="done typing")

    hub.clock = lambda: now + 1.0
    for _ in range(50):
        await typer.send({"type": "typing", "room": "lobby"})
    await typer.say("lobby", "again")
    await watcher.next_is("typing", nick="typer")
    await watcher.next_is("message", text="again")
    await assert_still_serves(client)


async def test_ten_bad_frames_close_1008(client: Client) -> None:
    """Ten errors in a row close with 1008 after the tenth error frame."""
    peer = await connect(client, "alice")
    for n in range(15):
        await peer.send(f"garbage {n}")
    for _ in range(10):
        await peer.next_is("error", code="bad_json")
    assert await peer.closed() == 1008
    await assert_still_serves(client)


async def test_too_many_rooms(aiohttp_client: Any) -> None:
    """Past max_rooms a join gets too_many_rooms; a re-join of a room held still works."""
    client = await app_client(aiohttp_client, {"limits": {"max_rooms": 3}})
    peer = await connect(client, "alice")
    for room in ("a", "b", "c"):
        await peer.join(room)
    error = await error_for(peer, {"type": "join", "room": "d"})
    assert (error["code"], error["ref"]) == ("too_many_rooms", "join")
    await peer.join("a")
    await peer.send({"type": "leave", "room": "b"})
    await peer.next_is("left", room="b")
    await peer.join("d")
    assert sorted(client.app[HUB].cluster.sessions[peer.session or ""].rooms) == ["a", "c", "d"]
    await assert_still_serves(client)


async def test_many_connections_from_one_address(aiohttp_client: Any) -> None:
    """Past max_connections_per_ip the upgrade gets 429; one closing frees a slot."""
    client = await app_client(aiohttp_client, {"limits": {"max_connections_per_ip": 5}})
    peers = [await connect(client, f"user{n}") for n in range(5)]
    for _ in range(3):
        assert await refused(client) == 429
    abort(peers[0].ws)
    await until(lambda: client.app[HUB].per_ip.get("127.0.0.1") == 4)
    await assert_still_serves(client)


# ---------------------------------------------------------------------- abrupt ends


class RawSockets:
    """Plain TCP connections to the app, so a test controls every byte; all closed at teardown."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.writers: list[asyncio.StreamWriter] = []

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(self.client.host, self.client.port)
        self.writers.append(writer)
        return reader, writer

    async def upgrade(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A WebSocket opened by hand."""
        reader, writer = await self.open()
        await handshake(reader, writer, self.client.host, self.client.port)
        return reader, writer

    async def close(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        await asyncio.sleep(0)  # let the transports finish closing


@pytest.fixture
async def raw(client: Client) -> AsyncIterator[RawSockets]:
    sockets = RawSockets(client)
    yield sockets
    await sockets.close()


async def test_fragmented_message_over_max_frame_closes_1009(
    client: Client, raw: RawSockets
) -> None:
    """max_frame bounds a whole message: fragments that add up past it close with 1009."""
    hub = client.app[HUB]
    reader, writer = await raw.upgrade()
    writer.write(masked_frame(b'{"type": "ping", "t": "' + b"x" * 9000, first=0x01))
    writer.write(masked_frame(b"x" * 9000 + b'"}', first=0x80))  # continuation, FIN
    assert await close_code(reader) == 1009
    await asyncio.wait_for(hub.wait_empty(), DEADLINE)
    await assert_still_serves(client)


async def test_fragmented_message_within_max_frame_is_read(
    client: Client, raw: RawSockets
) -> None:
    """A message sent in fragments is read as one."""
    reader, writer = await raw.upgrade()
    writer.write(masked_frame(b'{"type": "ping", ', first=0x01))
    writer.write(masked_frame(b'"t": "in', first=0x00))
    writer.write(masked_frame(b' parts"}', first=0x80))
    head = await asyncio.wait_for(reader.readexactly(2), DEADLINE)
    assert head[0] == 0x81
    frame = json.loads(await reader.readexactly(head[1] & 0x7F))
    assert (frame["type"], frame["t"]) == ("pong", "in parts")


async def test_disconnect_mid_frame_releases_connection(client: Client, raw: RawSockets) -> None:
    """A peer that sends half a frame and vanishes is released; its room hears `closed`."""
    hub = client.app[HUB]
    watcher = await connect(client, "watcher")
    await watcher.join("lobby")
    _, writer = await raw.upgrade()
    for frame in ({"type": "hello", "nick": "halfway"}, {"type": "join", "room": "lobby"}):
        writer.write(masked_frame(json.dumps(frame).encode()))
    await watcher.expect("presence", event="join", nick="halfway")
    half = masked_frame(json.dumps({"type": "say", "room": "lobby",
                                         "text": "y" * 500}).encode())
    writer.write(half[: len(half) // 2])
    await writer.drain()
    writer.transport.abort()
    leave = await watcher.expect("presence", event="leave", nick="halfway")
    assert leave["reason"] == "closed"
    await until(lambda: len(hub.connections) == 1)
    assert "halfway" not in hub.cluster.nicks
    assert await gauge(client) == 1
    await assert_still_serves(client)


async def test_disconnect_mid_handshake_and_mid_header(client: Client, raw: RawSockets) -> None:
    """Half an upgrade request, or half a frame header, leaves nothing behind."""
    hub = client.app[HUB]
    _, writer = await raw.open()
    writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websock")
    await writer.drain()
    writer.transport.abort()
    _, writer = await raw.upgrade()
    writer.write(b"\x81\xfe")  # a frame header cut before its length
    await writer.drain()
    writer.close()
    await asyncio.wait_for(hub.wait_empty(), DEADLINE)
    assert hub.per_ip == {}
    await assert_still_serves(client)


@pytest.mark.parametrize(
    "first",
    [
        pytest.param(0xC1, id="rsv1-without-deflate"),
        pytest.param(0xA1, id="rsv2"),
        pytest.param(0x83, id="reserved-opcode"),
        pytest.param(0x09, id="fragmented-ping"),
        pytest.param(0x80, id="continuation-without-start"),
    ],
)
async def test_websocket_protocol_violation_ends_connection(
    client: Client, raw: RawSockets, first: int
) -> None:
    """A frame that breaks RFC 6455 ends the connection (1002) and frees everything."""
    hub = client.app[HUB]
    reader, writer = await raw.upgrade()
    writer.write(masked_frame(b'{"type": "ping"}', first=first))
    # 1002 is the WebSocket protocol's own code for this; the contract has no row for it.
    assert await close_code(reader) == 1002
    await asyncio.wait_for(hub.wait_empty(), DEADLINE)
    assert hub.per_ip == {}
    await assert_still_serves(client)


# ---------------------------------------------------------------------- property


FIELDS: Final = ("type", "nick", "session", "token", "room", "since", "epoch", "text", "cid",
                 "before", "limit", "t")
TYPES: Final = ("hello", "join", "leave", "say", "typing", "history", "ping")
SCALARS: Final = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.sampled_from(["lobby", "a", "b-2", "alice", "*", "", " ", LEGACY_HEARTBEAT, *TYPES])
)
JSON: Final = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
REQUESTS: Final = st.builds(
    lambda kind, fields: {"type": kind, **fields},
    st.sampled_from(TYPES) | JSON,
    st.dictionaries(st.sampled_from(FIELDS[1:]), JSON, max_size=5),
)
FRAMES: Final = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200).map(lambda raw: raw.decode("utf-8", "replace")),
    JSON.map(json.dumps),
    REQUESTS.map(json.dumps),
    REQUESTS.map(lambda request: json.dumps(request, ensure_ascii=False)),
    st.just(LEGACY_HEARTBEAT),
)
BARRIER: Final = "zz-barrier"  # a `leave` answered in request order marks the end of replies


def check_frame(msg: aiohttp.WSMessage) -> dict[str, Any] | None:
    """A server text frame: the legacy heartbeat or a JSON object of a known type."""
    assert msg.type is WSMsgType.TEXT, msg
    if msg.data == LEGACY_HEARTBEAT:
        return None
    frame = json.loads(msg.data)
    assert isinstance(frame, dict), frame
    assert frame.get("type") in SERVER_TYPES, frame
    if frame["type"] == "error":
        assert frame["code"] in ERROR_CODES, frame
        assert isinstance(frame["message"], str), frame
        assert frame["ref"] is None or isinstance(frame["ref"], str), frame
    return frame


async def feed(client: Client, frames: list[str], nick: str) -> None:
    """Send `frames` after hello on a new socket; every reply must be a contract reply."""
    ws = await client.ws_connect("/ws", autoping=True)
    try:
        await ws.send_str(json.dumps({"type": "hello", "nick": nick}))
        try:
            for text in frames:
                await ws.send_str(text)
            await ws.send_str(json.dumps({"type": "leave", "room": BARRIER}))
        except ConnectionError:
            pass  # the server closed already: its close code is checked below
        async with asyncio.timeout(DEADLINE):
            while True:
                msg = await ws.receive()
                if msg.type is WSMsgType.CLOSE:
                    assert msg.data in CLOSE_CODES, msg
                    return
                if msg.type in (WSMsgType.CLOSED, WSMsgType.CLOSING):
                    assert ws.close_code in CLOSE_CODES, ws.close_code
                    return
                frame = check_frame(msg)
                if frame == {"type": "left", "room": BARRIER}:
                    return
    finally:
        await ws.close()


@pytest.fixture
async def fuzz_client(aiohttp_client: Any) -> Client:
    # A slow example must not look like a dead peer.
    return await app_client(aiohttp_client, {"heartbeat": {"interval": 10, "timeout": 30}})


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(frames=st.lists(FRAMES, min_size=1, max_size=12))
async def test_arbitrary_frames_get_contract_answers(
    fuzz_client: Client, caplog: pytest.LogCaptureFixture, frames: list[str]
) -> None:
    """Whatever text frames arrive, replies are known JSON frames or contract close codes."""
    caplog.set_level(logging.ERROR)
    await feed(fuzz_client, frames, f"fuzz{next(_fuzzers)}")
    await asyncio.wait_for(fuzz_client.app[HUB].wait_empty(), DEADLINE)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR
              and r.name.split(".")[0] in ("chat", "aiohttp")]
    assert not errors, [r.getMessage() for r in errors]
    hub = fuzz_client.app[HUB]
    assert not hub.sessions and not hub.per_ip and not hub.cluster.nicks
    assert not [room for room in hub.rooms.values() if room.members or room.receivers]

"""The reconnecting client: requests, heartbeat, resume, back-off, terminal front end."""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient

from chat.app import create_app
from chat.client import ChatClient, ChatClosed, ChatError, Event
from chat.client.state import (
    RETRYABLE,
    Next,
    Outbox,
    Pacer,
    PendingSay,
    RoomState,
    after_close,
    after_hello_error,
    backoff_delay,
    retry_after,
)
from chat.keys import METRICS
from chat.protocol import Close
from chat.ratelimit import TokenBucket
from tests.helpers import DEADLINE, FAST, Connect, make_config
from tests.serverproc import ServerProcess, server_env, write_config


class TopRandom(random.Random):
    """An rng whose `uniform` always answers the top of the range: predictable delays."""

    def uniform(self, a: float, b: float) -> float:
        return b


# --------------------------------------------------------------------------- helpers


class Bot:
    """A ChatClient with every event it yields recorded, and deadline-bound waits on them."""

    def __init__(self, client: ChatClient) -> None:
        self.client = client
        self.events: list[Event] = []
        self._changed = asyncio.Event()
        self.task = asyncio.create_task(self._record())

    async def _record(self) -> None:
        async for event in self.client.events():
            self.events.append(event)
            self._changed.set()

    async def wait(
        self, pred: Callable[[Event], bool], *, after: int = 0, timeout: float = DEADLINE
    ) -> Event:
        """The first recorded event from index `after` on that matches `pred`."""
        index = after
        async with asyncio.timeout(timeout):
            while True:
                while index < len(self.events):
                    if pred(self.events[index]):
                        return self.events[index]
                    index += 1
                self._changed.clear()
                await self._changed.wait()

    async def status(self, state: str, *, after: int = 0, timeout: float = DEADLINE) -> Event:
        return await self.wait(
            lambda e: e["type"] == "status" and e["state"] == state, after=after, timeout=timeout
        )

    async def message(self, text: str, *, timeout: float = DEADLINE) -> Event:
        return await self.wait(lambda e: e["type"] == "message" and e["text"] == text,
                               timeout=timeout)

    def messages(self, room: str = "lobby") -> list[Event]:
        return [e for e in self.events if e["type"] == "message" and e["room"] == room]

    def texts(self, room: str = "lobby") -> list[str]:
        return [e["text"] for e in self.messages(room)]

    def ids(self, room: str = "lobby") -> list[int]:
        return [e["id"] for e in self.messages(room)]


OpenBot = Callable[..., Awaitable[Bot]]


@pytest.fixture
async def open_bot() -> AsyncIterator[OpenBot]:
    """Connect ChatClients (fast back-off unless told otherwise); all closed at teardown."""
    bots: list[Bot] = []

    async def _open(url: str, nick: str, **kwargs: Any) -> Bot:
        kwargs.setdefault("backoff_base", 0.05)
        kwargs.setdefault("backoff_cap", 0.5)
        kwargs.setdefault("rng", random.Random(7))
        kwargs.setdefault("connect_timeout", DEADLINE)
        bot = Bot(ChatClient(url, nick, **kwargs))
        bots.append(bot)
        await asyncio.wait_for(bot.client.connect(), DEADLINE)
        return bot

    yield _open
    for bot in bots:
        await asyncio.wait_for(bot.client.close(), DEADLINE)
        await asyncio.wait_for(bot.task, DEADLINE)


@pytest.fixture
def ws_url(client: TestClient[Any, Any]) -> str:
    return str(client.make_url("/ws"))


async def joined(bot: Bot, room: str = "lobby") -> Event:
    return await asyncio.wait_for(bot.client.join(room), DEADLINE)


async def said(bot: Bot, text: str, room: str = "lobby") -> Event:
    return await asyncio.wait_for(bot.client.say(room, text), DEADLINE)


class Relay:
    """One proxied connection; `frozen` stops the server's bytes from reaching the client."""

    def __init__(self) -> None:
        self.frozen = False
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: list[asyncio.Task[None]] = []


class Proxy:
    """A TCP relay between client and server that fails the way networks do.

    `freeze()` silences the server on the connections open now (later ones relay
    normally). With `keep_upstream` a client that goes away is not passed on: the
    server keeps a connection whose peer has vanished without a word.
    """

    def __init__(self, host: str, port: int, *, keep_upstream: bool = False) -> None:
        self.target = (host, port)
        self.keep_upstream = keep_upstream
        self.relays: list[Relay] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Proxy:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for relay in self.relays:
            for writer in relay.writers:
                writer.close()
            for task in relay.tasks:
                task.cancel()
            await asyncio.gather(*relay.tasks, return_exceptions=True)
        await self.server.wait_closed()

    def url(self, path: str = "/ws") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def freeze(self) -> None:
        for relay in self.relays:
            relay.frozen = True

    async def _handle(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        relay = Relay()
        self.relays.append(relay)
        relay.writers.append(down_w)
        up_r, up_w = await asyncio.open_connection(*self.target)
        relay.writers.append(up_w)
        relay.tasks += [
            asyncio.create_task(self._pipe(down_r, up_w, relay, close=not self.keep_upstream)),
            asyncio.create_task(self._pipe(up_r, down_w, relay, close=True, downstream=True)),
        ]

    @staticmethod
    async def _pipe(
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        relay: Relay,
        *,
        close: bool,
        downstream: bool = False,
    ) -> None:
        try:
            while data := await src.read(65536):
                if downstream and relay.frozen:
                    continue
                dst.write(data)
                await dst.drain()
        except OSError:
            pass
        finally:
            if close:
                dst.close()


def server_config(tmp_path: Path) -> Path:
    return write_config(tmp_path, FAST)


class FakeConn:
    """One connection to a ScriptedServer: what it received, and a way to answer."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.received: list[Event] = []
        self.ids = 0
        self.bucket: TokenBucket | None = None

    async def send(self, frame: Event) -> None:
        await self.ws.send_json(frame)

    def count(self, kind: str) -> int:
        return sum(1 for f in self.received if f["type"] == kind)


WELCOME: Final[Event] = {
    "type": "welcome", "version": 1, "session": "s-1", "nick": "alice", "rooms": [],
    "heartbeat": {"interval": 10, "timeout": 30},
    "limits": {
        "text": 2000, "frame": 16384, "rooms": 20,
        "rate": {"messages": 100, "per": 1, "burst": 100},
        "join_rate": {"messages": 5, "per": 1.0, "burst": 40},
    },
}


async def answer(conn: FakeConn, frame: Event, welcome: Event = WELCOME) -> None:
    """What a healthy server answers (enough of the contract for these tests)."""
    kind = frame["type"]
    if kind == "hello":
        await conn.send({**welcome, "nick": frame.get("nick", "alice")})
    elif kind == "ping":
        await conn.send({"type": "pong", "t": frame.get("t"), "ts": 0})
    elif kind == "join":
        await conn.send({
            "type": "joined", "room": frame["room"], "epoch": "e1", "members": ["alice"],
            "messages": [], "complete": True,
        })
    elif kind == "leave":
        await conn.send({"type": "left", "room": frame["room"]})
    elif kind == "say":
        conn.ids += 1
        await conn.send({
            "type": "ack", "cid": frame["cid"], "room": frame["room"], "id": conn.ids, "ts": 1,
        })
        await conn.send({
            "type": "message", "room": frame["room"], "id": conn.ids, "nick": "alice",
            "text": frame["text"], "ts": 1, "cid": frame["cid"],
        })
    elif kind == "history":
        await conn.send({"type": "history", "room": frame["room"], "messages": [], "more": False})


Script = Callable[[FakeConn, Event], Awaitable[None]]


async def scripted_server(aiohttp_server: Any, script: Script) -> tuple[str, list[FakeConn]]:
    """A stand-in for the chat server that answers every frame with `script`.

    For what the real server cannot be made to do in a client test: answer
    `unavailable` (its Redis-down path is tested with the server), or send `settings`.
    """
    conns: list[FakeConn] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        conn = FakeConn(ws)
        conns.append(conn)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                frame = json.loads(msg.data)
                conn.received.append(frame)
                await script(conn, frame)
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    server = await aiohttp_server(app)
    return str(server.make_url("/ws")), conns


async def rejoined(bot: Bot, rooms: int, *, after: int) -> None:
    """Wait until `rooms` rooms have been joined again since event `after`."""
    seen = 0

    def last_one(event: Event) -> bool:
        nonlocal seen
        seen += event["type"] == "joined"
        return seen == rooms

    await bot.wait(last_one, after=after)


def unavailable(ref: str | None, retry_after: float) -> Event:
    return {
        "type": "error", "code": "unavailable", "message": "the server cannot reach Redis",
        "ref": ref, "retry_after": retry_after,
    }


# --------------------------------------------------------------------------- pure decisions


def test_backoff_delays_grow_and_stay_within_the_cap() -> None:
    """Back-off windows double from the base up to the cap; each delay falls inside its window."""
    top = [backoff_delay(a, 0.5, 30.0, TopRandom()) for a in range(10)]
    assert top == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]
    rng = random.Random(42)
    delays = [backoff_delay(a, 0.5, 30.0, rng) for a in range(200)]
    for attempt, delay in enumerate(delays):
        assert 0.0 <= delay <= min(30.0, 0.5 * 2**attempt)
    assert delays == [backoff_delay(a, 0.5, 30.0, r) for r in [random.Random(42)]
                      for a in range(200)]
    assert max(delays[:3]) <= 2.0 < max(delays[10:])  # later windows are wider
    assert 0.0 <= backoff_delay(10_000, 0.5, 30.0, rng) <= 30.0  # no float overflow


def test_close_codes_decide_what_comes_next() -> None:
    """1001 reconnects soon, 4002 and 4003 stop, anything else (or a lost socket) backs off."""
    assert after_close(Close.GOING_AWAY) is Next.RECONNECT_SOON
    assert after_close(Close.REPLACED) is Next.STOP
    assert after_close(Close.UNAUTHORIZED) is Next.STOP
    for code in (None, Close.NORMAL, Close.HEARTBEAT_TIMEOUT, Close.POLICY, Close.INTERNAL):
        assert after_close(code) is Next.RECONNECT
    assert after_hello_error("nick_taken", welcomed_before=False) is Next.STOP
    assert after_hello_error("nick_taken", welcomed_before=True) is Next.RECONNECT
    assert after_hello_error("unauthorized", welcomed_before=True) is Next.STOP


def test_room_state_resumes_dedupes_and_resets_on_a_new_epoch() -> None:
    """A room resumes from its highest id, drops ids it holds, and starts over with a new epoch."""
    room = RoomState("lobby")
    assert room.join_frame() == {"type": "join", "room": "lobby"}
    assert room.on_joined({"epoch": "e1", "members": ["a"], "complete": True}) is False
    seen = [room.accept({"id": i}) for i in (1, 2, 2, 1, 3, 5, 4)]
    assert seen == [True, True, False, False, True, True, False]
    assert room.join_frame() == {"type": "join", "room": "lobby", "since": 5, "epoch": "e1"}
    assert room.on_joined({"epoch": "e1", "members": ["a"]}) is False
    assert room.last_id == 5
    assert room.on_joined({"epoch": "e2", "members": ["a"], "complete": False}) is True
    assert (room.epoch, room.last_id, room.complete) == ("e2", 0, False)
    assert room.accept({"id": 1}) is True


def test_outbox_resends_everything_unacknowledged_in_order() -> None:
    """After a lost connection every unacknowledged say is unsent again, oldest first."""
    box = Outbox()
    for cid in "abc":
        box.add(PendingSay("lobby", cid, cid))
    for _ in range(3):
        say = box.next_unsent()
        assert say is not None
        say.sent = True
    assert box.next_unsent() is None
    box.remove("b")
    box.connection_lost()
    assert [s.cid for s in box] == ["a", "c"]
    assert box.next_unsent() is not None and box.next_unsent().cid == "a"  # type: ignore[union-attr]


def test_pacer_follows_the_server_rate_but_never_exceeds_twenty_a_second() -> None:
    """The pacer takes the announced rate and burst, capped at 20 messages a second."""
    pacer = Pacer.for_limits({"rate": {"messages": 5, "per": 1.0, "burst": 2}}, now=0.0)
    pacer.take(0.0)
    pacer.take(0.0)
    assert pacer.delay(0.0) == pytest.approx(0.2)
    assert pacer.delay(0.2) == 0.0
    fast = Pacer.for_limits({"rate": {"messages": 10000, "per": 1, "burst": 10000}}, now=0.0)
    assert (fast.rate, fast.burst) == (20.0, 20.0)


def test_join_pacer_stays_inside_the_announced_join_rate() -> None:
    """Joins are paced a token and a tenth inside join_rate, the contract's default when absent."""
    pacer = Pacer.for_joins({"join_rate": {"messages": 10, "per": 1.0, "burst": 5}}, now=0.0)
    assert (pacer.rate, pacer.burst) == (pytest.approx(9.0), 4.0)
    default = Pacer.for_joins({"rate": {"messages": 5, "per": 1, "burst": 10}}, now=0.0)
    assert (default.rate, default.burst) == (pytest.approx(4.5), 39.0)  # 20 rooms at once
    for _ in range(4):
        assert pacer.delay(0.0) == 0.0
        pacer.take(0.0)
    assert pacer.delay(0.0) == pytest.approx(1 / 9)
    pacer.retune(1.0, 2.0, now=0.0)
    assert pacer.delay(0.0) == pytest.approx(1.0)


def test_retry_after_and_says_held_while_their_room_is_joined() -> None:
    """retry_after defaults to 1 s; a say waits while its room is being joined."""
    assert retry_after({"retry_after": 0.25}) == 0.25
    assert retry_after({"retry_after": True}) == retry_after({}) == 1.0
    assert RETRYABLE == {"rate_limited", "unavailable"}
    box = Outbox()
    box.add(PendingSay("dev", "a", "1"))
    box.add(PendingSay("lobby", "b", "2"))
    assert box.next_unsent(held={"dev"}) is box.next_unsent(held=["dev"]) is not None
    assert box.next_unsent(held={"dev"}).cid == "2"  # type: ignore[union-attr]
    assert box.next_unsent(held={"dev", "lobby"}) is None


# --------------------------------------------------------------------------- in-process server


async def test_say_returns_the_ack_and_the_message_arrives_once(
    ws_url: str, open_bot: OpenBot
) -> None:
    """join answers `joined`; say answers the ack; the message event comes exactly once."""
    alice = await open_bot(ws_url, "alice")
    frame = await joined(alice)
    assert frame["type"] == "joined" and frame["members"] == ["alice"]
    ack = await said(alice, "hello")
    assert ack["type"] == "ack" and ack["id"] == 1 and isinstance(ack["cid"], str)
    message = await alice.message("hello")
    assert (message["id"], message["cid"], message["nick"]) == (1, ack["cid"], "alice")
    again = await asyncio.wait_for(alice.client.say("lobby", "again", cid="c-1"), DEADLINE)
    assert (again["cid"], again["id"]) == ("c-1", 2)
    await asyncio.sleep(0.3)
    assert alice.texts() == ["hello", "again"]
    state = alice.client.rooms["lobby"]
    assert (state.epoch, state.last_id) == (frame["epoch"], 2)
    assert alice.client.session is not None


async def test_two_clients_exchange_messages(ws_url: str, open_bot: OpenBot) -> None:
    """Each client receives what the other says, and sees the other's presence."""
    alice = await open_bot(ws_url, "alice")
    bob = await open_bot(ws_url, "bob")
    await joined(alice)
    await joined(bob)
    await alice.wait(lambda e: e["type"] == "presence" and e["nick"] == "bob")
    assert alice.client.rooms["lobby"].members == {"alice", "bob"}
    await said(bob, "hi alice")
    await said(alice, "hi bob")
    assert (await alice.message("hi alice"))["nick"] == "bob"
    assert (await bob.message("hi bob"))["nick"] == "alice"
    assert alice.texts() == bob.texts() == ["hi alice", "hi bob"]


async def test_client_pings_so_an_idle_connection_survives(
    ws_url: str, open_bot: OpenBot
) -> None:
    """An idle client pings: over several heartbeat timeouts neither side drops it."""
    alice = await open_bot(ws_url, "alice")
    bob = await open_bot(ws_url, "bob")
    await joined(alice)
    await joined(bob)
    session = alice.client.session
    await asyncio.sleep(2.0)  # more than three heartbeat timeouts (0.6 s)
    states = [e["state"] for e in alice.events + bob.events if e["type"] == "status"]
    assert states == ["connected", "connected"]
    assert not [e for e in bob.events if e["type"] == "presence" and e["event"] == "leave"]
    assert alice.client.session == session and alice.client.connected
    assert alice.client.rtt is not None and 0 <= alice.client.rtt < 0.5


async def test_message_said_while_disconnected_is_received_once_after_resume(
    ws_url: str, open_bot: OpenBot
) -> None:
    """What another member said while we were away comes back exactly once on resume."""
    alice = await open_bot(ws_url, "alice", backoff_base=0.3, rng=TopRandom())
    bob = await open_bot(ws_url, "bob")
    await joined(alice)
    await joined(bob)
    await said(bob, "before")
    await alice.message("before")
    mark = len(alice.events)
    alice.client.drop()
    await alice.status("reconnecting", after=mark)  # 0.3 s until it tries again
    assert not alice.client.connected
    await said(bob, "while away")
    await alice.status("connected", after=mark)
    await alice.message("while away")
    await said(bob, "after")
    await alice.message("after")
    await asyncio.sleep(0.2)
    assert alice.texts() == ["before", "while away", "after"]
    assert alice.ids() == [1, 2, 3]


async def test_say_while_disconnected_is_delivered_once_after_reconnect(
    ws_url: str, open_bot: OpenBot
) -> None:
    """A say issued while disconnected is sent after the reconnect, acked and delivered once."""
    alice = await open_bot(ws_url, "alice", backoff_base=0.3, rng=TopRandom())
    bob = await open_bot(ws_url, "bob")
    await joined(alice)
    await joined(bob)
    mark = len(alice.events)
    alice.client.drop()
    await alice.status("reconnecting", after=mark)
    assert not alice.client.connected
    ack = await said(alice, "queued while away")
    assert ack["id"] == 1
    await bob.message("queued while away")
    await alice.message("queued while away")
    await asyncio.sleep(0.2)
    assert bob.texts() == alice.texts() == ["queued while away"]


async def test_tcp_cut_resumes_without_duplicates(ws_url: str, open_bot: OpenBot) -> None:
    """After its TCP is cut the client resumes (same session or a new one) and shows no dup."""
    alice = await open_bot(ws_url, "alice")
    bob = await open_bot(ws_url, "bob")
    await joined(alice)
    await joined(bob)
    await said(bob, "one")
    await alice.message("one")
    first_session = alice.client.session
    mark = len(alice.events)
    alice.client.drop()
    await said(bob, "two")
    connected = await alice.status("connected", after=mark)
    assert connected["resumed"] is (connected["session"] == first_session)
    await said(bob, "three")
    await alice.message("three")
    await said(alice, "back")
    await bob.message("back")
    await asyncio.sleep(0.2)
    assert alice.texts() == ["one", "two", "three", "back"]
    assert alice.ids() == [1, 2, 3, 4]


async def test_takeover_keeps_the_session_when_the_server_has_not_noticed(
    client: TestClient[Any, Any], open_bot: OpenBot
) -> None:
    """A client back before the server noticed it left takes its session over: no presence."""
    assert client.port is not None
    async with Proxy("127.0.0.1", client.port, keep_upstream=True) as proxy:
        alice = await open_bot(proxy.url(), "alice")
        bob = await open_bot(str(client.make_url("/ws")), "bob")
        await joined(alice)
        await joined(bob)
        await alice.wait(lambda e: e["type"] == "presence" and e["nick"] == "bob")
        session = alice.client.session
        mark, bob_mark = len(alice.events), len(bob.events)
        alice.client.drop()  # the proxy keeps the server's side open: it sees nothing
        connected = await alice.status("connected", after=mark)
        assert connected["resumed"] is True and alice.client.session == session
        await said(bob, "still here?")
        await alice.message("still here?")
        await asyncio.sleep(0.8)  # past the heartbeat timeout of the abandoned connection
        assert [e for e in bob.events[bob_mark:] if e["type"] == "presence"] == []
        assert alice.texts() == ["still here?"]


async def test_room_left_while_disconnected_is_left_after_a_takeover(
    client: TestClient[Any, Any], open_bot: OpenBot
) -> None:
    """A taken-over session still holds a room left while away: the client leaves it then."""
    assert client.port is not None
    async with Proxy("127.0.0.1", client.port, keep_upstream=True) as proxy:
        alice = await open_bot(proxy.url(), "alice", backoff_base=0.15, rng=TopRandom())
        bob = await open_bot(str(client.make_url("/ws")), "bob")
        await joined(alice)
        await joined(bob)
        mark = len(alice.events)
        alice.client.drop()
        await alice.status("reconnecting", after=mark)
        await asyncio.wait_for(alice.client.leave("lobby"), DEADLINE)  # returns at once
        connected = await alice.status("connected", after=mark)
        assert connected["resumed"] is True
        left = await bob.wait(lambda e: e["type"] == "presence" and e["event"] == "leave")
        assert (left["nick"], left["reason"]) == ("alice", "left")
        await alice.wait(lambda e: e["type"] == "left", after=mark)


async def test_lost_ack_is_recovered_by_resending_the_same_cid(
    client: TestClient[Any, Any], open_bot: OpenBot
) -> None:
    """A say whose ack was lost is re-sent with its cid: acked once, stored and shown once."""
    assert client.port is not None
    async with Proxy("127.0.0.1", client.port) as proxy:
        alice = await open_bot(proxy.url(), "alice")
        bob = await open_bot(str(client.make_url("/ws")), "bob")
        await joined(alice)
        await joined(bob)
        mark = len(alice.events)
        proxy.freeze()  # the server hears alice, alice hears nothing
        say = asyncio.create_task(alice.client.say("lobby", "did it arrive?"))
        stored = await bob.message("did it arrive?")
        await alice.status("not_responding", after=mark)
        ack = await asyncio.wait_for(say, DEADLINE)
        assert (ack["id"], ack["cid"]) == (stored["id"], stored["cid"])
        await alice.message("did it arrive?")
        await asyncio.sleep(0.3)
        assert alice.texts() == bob.texts() == ["did it arrive?"]


async def test_rate_limited_says_are_retried_after_retry_after(
    aiohttp_client: Any, open_bot: OpenBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Says refused with rate_limited go out again after retry_after, each stored once."""
    config = make_config({"limits": {"rate": {"messages": 4, "per": 1.0, "burst": 2}}})
    server = await aiohttp_client(create_app(config))
    # A client that ignores the announced rate, so that the server has to refuse.
    monkeypatch.setattr(Pacer, "for_limits",
                        classmethod(lambda cls, limits, now: cls(1000.0, 1000.0, now)))
    alice = await open_bot(str(server.make_url("/ws")), "alice")
    await joined(alice)
    texts = [f"m{i}" for i in range(5)]
    acks = await asyncio.wait_for(
        asyncio.gather(*(alice.client.say("lobby", t) for t in texts)), DEADLINE
    )
    assert sorted(a["id"] for a in acks) == [1, 2, 3, 4, 5]
    await alice.wait(lambda e: e["type"] == "message" and e["id"] == 5)
    assert sorted(alice.texts()) == texts and alice.ids() == [1, 2, 3, 4, 5]
    refused = server.app[METRICS].registry.get_sample_value(
        "chat_errors_total", {"code": "rate_limited"}
    )
    assert refused is not None and refused >= 1


async def test_leave_stops_the_room_and_a_reconnect_does_not_rejoin_it(
    ws_url: str, open_bot: OpenBot
) -> None:
    """After leave the room's events stop, and resuming does not join it again."""
    alice = await open_bot(ws_url, "alice")
    bob = await open_bot(ws_url, "bob")
    await joined(alice)
    await joined(bob)
    await asyncio.wait_for(alice.client.leave("lobby"), DEADLINE)
    assert "lobby" not in alice.client.rooms
    left = await bob.wait(lambda e: e["type"] == "presence" and e["event"] == "leave")
    assert (left["nick"], left["reason"]) == ("alice", "left")
    mark, bob_mark = len(alice.events), len(bob.events)
    alice.client.drop()
    await alice.status("connected", after=mark)
    await said(bob, "alice is gone")
    await asyncio.sleep(0.3)
    assert alice.messages() == []
    assert [e for e in bob.events[bob_mark:] if e["type"] == "presence"] == []


async def test_a_newer_connection_of_the_session_makes_the_client_stop(
    ws_url: str, open_bot: OpenBot, connect: Connect
) -> None:
    """Close 4002 (replaced) is final: status closed, and later requests raise ChatClosed."""
    alice = await open_bot(ws_url, "alice")
    await joined(alice)
    pending = asyncio.create_task(alice.client.say("nowhere", "x"))
    other = await connect()
    await other.hello("alice", session=alice.client.session)
    closed = await alice.status("closed")
    assert closed["code"] == Close.REPLACED
    assert [e["state"] for e in alice.events if e["type"] == "status"] == ["connected", "closed"]
    with pytest.raises(ChatError):
        await asyncio.wait_for(pending, DEADLINE)
    with pytest.raises(ChatClosed):
        await alice.client.say("lobby", "x")


async def test_a_taken_nick_fails_connect(ws_url: str, open_bot: OpenBot) -> None:
    """connect raises nick_taken when the nick is in use; the client is then closed."""
    await open_bot(ws_url, "alice")
    second = ChatClient(ws_url, "ALICE")
    with pytest.raises(ChatError) as err:
        await asyncio.wait_for(second.connect(), DEADLINE)
    assert err.value.code == "nick_taken" and second.closed


async def test_join_error_raises_and_forgets_the_room(ws_url: str, open_bot: OpenBot) -> None:
    """A refused join raises ChatError and the room is not kept for resuming."""
    alice = await open_bot(ws_url, "alice")
    with pytest.raises(ChatError) as err:
        await joined(alice, "Not A Room")
    assert err.value.code == "room_invalid"
    assert "Not A Room" not in alice.client.rooms
    await joined(alice)
    page = await asyncio.wait_for(alice.client.history("lobby"), DEADLINE)
    assert page["type"] == "history" and page["messages"] == []


# --------------------------------------------------------------------------- scripted server


async def test_a_say_answered_unavailable_is_kept_and_sent_again_with_its_cid(
    aiohttp_server: Any, open_bot: OpenBot
) -> None:
    """unavailable is no failure: the say goes again with the same cid after retry_after."""
    loop = asyncio.get_running_loop()
    says: list[tuple[float, Event]] = []

    async def script(conn: FakeConn, frame: Event) -> None:
        if frame["type"] == "say":
            says.append((loop.time(), frame))
            if len(says) == 1:
                await conn.send(unavailable(frame["cid"], 0.3))
                return
        await answer(conn, frame)

    url, _ = await scripted_server(aiohttp_server, script)
    alice = await open_bot(url, "alice")
    await joined(alice)
    ack = await asyncio.wait_for(alice.client.say("lobby", "kept", cid="c-1"), DEADLINE)
    assert (ack["cid"], ack["id"]) == ("c-1", 1)
    assert [frame for _, frame in says] == [
        {"type": "say", "room": "lobby", "text": "kept", "cid": "c-1"}
    ] * 2
    assert says[1][0] - says[0][0] >= 0.3 - 0.01
    status = await alice.status("unavailable")
    assert (status["retry_after"], status["ref"]) == (0.3, "c-1")
    await alice.message("kept")
    assert [e for e in alice.events if e["type"] == "error"] == []


async def test_hello_join_and_history_answered_unavailable_are_asked_again(
    aiohttp_server: Any, open_bot: OpenBot
) -> None:
    """Each request refused with unavailable is sent again on the same connection."""
    refused: set[str] = set()

    async def script(conn: FakeConn, frame: Event) -> None:
        kind = frame["type"]
        if kind in ("hello", "join", "history") and kind not in refused:
            refused.add(kind)
            await conn.send(unavailable(kind, 0.1))
            return
        await answer(conn, frame)

    url, conns = await scripted_server(aiohttp_server, script)
    alice = await open_bot(url, "alice")
    assert (await joined(alice))["room"] == "lobby"
    page = await asyncio.wait_for(alice.client.history("lobby"), DEADLINE)
    assert page["type"] == "history"
    assert len(conns) == 1
    assert [conns[0].count(kind) for kind in ("hello", "join", "history")] == [2, 2, 2]
    refs = [e["ref"] for e in alice.events if e["type"] == "status" and e["state"] == "unavailable"]
    assert refs == ["hello", "join", "history"]


async def test_a_join_answered_rate_limited_is_retried_after_retry_after(
    aiohttp_server: Any, open_bot: OpenBot
) -> None:
    """join refused with rate_limited is sent again after retry_after, and join() returns."""
    loop = asyncio.get_running_loop()
    joins: list[float] = []

    async def script(conn: FakeConn, frame: Event) -> None:
        if frame["type"] == "join":
            joins.append(loop.time())
            if len(joins) == 1:
                await conn.send({
                    "type": "error", "code": "rate_limited", "message": "slow down",
                    "ref": "join", "retry_after": 0.2,
                })
                return
        await answer(conn, frame)

    url, _ = await scripted_server(aiohttp_server, script)
    alice = await open_bot(url, "alice")
    assert (await joined(alice))["room"] == "lobby"
    assert len(joins) == 2 and joins[1] - joins[0] >= 0.2 - 0.01
    assert "lobby" in alice.client.rooms


async def test_settings_switch_the_heartbeat_at_once(
    aiohttp_server: Any, open_bot: OpenBot
) -> None:
    """After settings the client pings at the new interval and applies the new timeout."""
    silent = False

    async def script(conn: FakeConn, frame: Event) -> None:
        if not silent:
            await answer(conn, frame)

    url, conns = await scripted_server(aiohttp_server, script)
    alice = await open_bot(url, "alice")  # welcome: a ping every 10 s, dead after 30 s
    await joined(alice)
    pings = conns[0].count("ping")
    settings = {
        "type": "settings", "heartbeat": {"interval": 0.1, "timeout": 0.5},
        "limits": WELCOME["limits"],
    }
    await conns[0].send(settings)
    await alice.wait(lambda e: e["type"] == "settings")
    await asyncio.sleep(0.45)
    assert conns[0].count("ping") - pings >= 3
    silent = True
    loop = asyncio.get_running_loop()
    started = loop.time()
    await alice.status("not_responding", timeout=3)
    assert loop.time() - started < 1.5  # the new 0.5 s, not the old 30 s


async def test_rejoins_after_a_reconnect_stay_within_the_join_rate(
    aiohttp_server: Any, open_bot: OpenBot
) -> None:
    """A session in 20 rooms re-joins them paced by join_rate: the server refuses none."""
    rate = {"messages": 20, "per": 1.0, "burst": 5}
    loop = asyncio.get_running_loop()
    refused: list[str] = []

    async def script(conn: FakeConn, frame: Event) -> None:
        if frame["type"] in ("join", "leave"):
            if conn.bucket is None:
                conn.bucket = TokenBucket.full(rate["messages"], rate["per"], rate["burst"],
                                               loop.time())
            wait = conn.bucket.take(loop.time())
            if wait > 0:
                refused.append(frame["room"])
                await conn.send({
                    "type": "error", "code": "rate_limited", "message": "slow down",
                    "ref": frame["type"], "retry_after": wait,
                })
                return
        await answer(conn, frame, {**WELCOME, "limits": {**WELCOME["limits"], "join_rate": rate}})

    url, conns = await scripted_server(aiohttp_server, script)
    alice = await open_bot(url, "alice")
    rooms = [f"room{i}" for i in range(20)]
    await asyncio.wait_for(asyncio.gather(*(alice.client.join(r) for r in rooms)), DEADLINE)
    mark = len(alice.events)
    alice.client.drop()
    await rejoined(alice, 20, after=mark)
    assert sorted(f["room"] for f in conns[1].received if f["type"] == "join") == sorted(rooms)
    assert refused == []


async def test_a_session_in_twenty_rooms_resumes_them_all(ws_url: str, open_bot: OpenBot) -> None:
    """Against the real server: 20 rooms re-joined after a drop, with no error."""
    alice = await open_bot(ws_url, "alice")
    rooms = [f"room{i}" for i in range(20)]
    await asyncio.wait_for(asyncio.gather(*(alice.client.join(r) for r in rooms)), DEADLINE)
    mark = len(alice.events)
    alice.client.drop()
    await rejoined(alice, 20, after=mark)
    assert [e for e in alice.events if e["type"] == "error"] == []
    ack = await said(alice, "still here", room="room19")
    assert ack["room"] == "room19"


# --------------------------------------------------------------------------- server process


async def test_server_sigstop_shows_not_responding_then_resumes(
    tmp_path: Path, open_bot: OpenBot
) -> None:
    """A frozen server is counted dead after the timeout; once it thaws the client resumes."""
    with ServerProcess("--config", str(server_config(tmp_path))) as server:
        alice = await open_bot(server.ws_url, "alice")
        bob = await open_bot(server.ws_url, "bob")
        await joined(alice)
        await joined(bob)
        await said(bob, "before")
        await alice.message("before")
        mark, bob_mark = len(alice.events), len(bob.events)
        loop = asyncio.get_running_loop()
        stopped_at = loop.time()
        server.send_signal(signal.SIGSTOP)
        try:
            await alice.status("not_responding", after=mark, timeout=3.0)
            await asyncio.sleep(max(0.0, stopped_at + 1.5 - loop.time()))
        finally:
            server.send_signal(signal.SIGCONT)
        await alice.status("connected", after=mark)
        await bob.status("connected", after=bob_mark)
        await joined(alice)  # resolves once the rejoin is answered
        await joined(bob)
        await said(bob, "after")
        await alice.message("after")
        await asyncio.sleep(0.2)
        assert alice.texts() == ["before", "after"]
        assert alice.ids() == [1, 2]


async def test_server_restart_resets_room_state(tmp_path: Path, open_bot: OpenBot) -> None:
    """A restarted memory server has a new epoch: the client reconnects and starts the room over."""
    config = server_config(tmp_path)
    with ServerProcess("--config", str(config)) as first:
        alice = await open_bot(first.ws_url, "alice")
        epoch = (await joined(alice))["epoch"]
        for text in ("one", "two", "three"):
            await said(alice, text)
        await alice.message("three")
        port, url = first.port, first.ws_url
        mark = len(alice.events)
        first.send_signal(signal.SIGTERM)
        assert await first.wait_async(DEADLINE) == 0
    going = await alice.status("reconnecting", after=mark)
    assert going["code"] == Close.GOING_AWAY
    with ServerProcess("--config", str(config), port=port) as second:
        assert second.ws_url == url
        connected = await alice.status("connected", after=mark)
        assert connected["resumed"] is False
        reset = await alice.wait(lambda e: e["type"] == "reset", after=mark)
        assert reset["previous"] == epoch and reset["epoch"] != epoch
        await joined(alice)
        state = alice.client.rooms["lobby"]
        assert (state.epoch, state.last_id) == (reset["epoch"], 0)
        ack = await said(alice, "new start")
        assert ack["id"] == 1
        await alice.message("new start")
        assert alice.texts() == ["one", "two", "three", "new start"]


async def test_terminal_front_end_sends_stdin_lines_and_prints_the_room(
    tmp_path: Path, open_bot: OpenBot
) -> None:
    """`python -m chat.client` says each stdin line, prints the room, and exits 0 at EOF."""
    with ServerProcess("--config", str(server_config(tmp_path))) as server:
        alice = await open_bot(server.ws_url, "alice")
        await joined(alice)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chat.client", "--url", server.ws_url, "--nick", "bob",
            "--room", "lobby",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=server_env(), cwd=tmp_path,
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(b"hello from bob\n")
            await proc.stdin.drain()
            assert (await alice.message("hello from bob"))["nick"] == "bob"
            await said(alice, "hi bob")
            lines: list[str] = []
            async with asyncio.timeout(DEADLINE):
                while not any(line.endswith("] alice: hi bob") for line in lines):
                    lines.append((await proc.stdout.readline()).decode().rstrip("\n"))
            proc.stdin.close()
            out, err = await asyncio.wait_for(proc.communicate(), DEADLINE)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.communicate()
        lines += out.decode().splitlines()
        assert proc.returncode == 0, err.decode()
        assert any(line.endswith("] bob: hello from bob") for line in lines), lines
        assert lines[0].startswith("* connected as bob"), lines


# --------------------------------------------------------------------------- re-join pacing

# Tight enough to matter: a burst of 3 against 20 rooms, so a client that re-joined
# without pacing would be refused at its fourth join; fast enough (20 joins in about
# two seconds at the client's 9 a second) for a test.
TIGHT_JOINS: Final = {"join_rate": {"messages": 10, "per": 1.0, "burst": 3}}


def refusals(bot: Bot, after: int = 0) -> list[Event]:
    """Errors and closes the client showed that pacing should have spared it (a
    rate_limited join is retried quietly: `rate_limited_sent` counts those)."""
    return [e for e in bot.events[after:]
            if e["type"] == "error"
            or (e["type"] == "status" and e.get("code") not in (None, Close.GOING_AWAY))]


async def rate_limited_sent(http: Any, base: str) -> float:
    """chat_errors_total{code="rate_limited"} from the server's /metrics."""
    async with http.get(f"{base}/metrics") as response:
        text = await response.text()
    found = re.search(r'^chat_errors_total\{code="rate_limited"\} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def test_twenty_rooms_resume_within_a_real_join_rate_after_a_cut(
    aiohttp_client: Any, open_bot: OpenBot
) -> None:
    """The real app with a tight limits.join_rate: a session in 20 rooms whose TCP is cut
    joins them all again, none refused (rate_limited) and no close for its own joins."""
    config = make_config({"limits": TIGHT_JOINS, "heartbeat": {"interval": 1, "timeout": 10}})
    client = await aiohttp_client(create_app(config))
    alice = await open_bot(str(client.make_url("/ws")), "alice")
    rooms = [f"room{i}" for i in range(20)]
    await asyncio.wait_for(asyncio.gather(*(alice.client.join(r) for r in rooms)), DEADLINE)
    mark = len(alice.events)
    alice.client.drop()
    await rejoined(alice, 20, after=mark)
    assert sorted(alice.client.rooms) == sorted(rooms)
    assert refusals(alice) == []
    assert await rate_limited_sent(client.session, str(client.make_url(""))) == 0
    assert (await said(alice, "still here", room="room19"))["room"] == "room19"


async def test_twenty_rooms_rejoin_within_a_real_join_rate_after_a_restart(
    tmp_path: Path, open_bot: OpenBot
) -> None:
    """A server process restarted (close 1001, a new session on the new process) with a
    tight limits.join_rate: the client joins its 20 rooms again, none refused."""
    config = write_config(tmp_path, {**FAST, "limits": TIGHT_JOINS,
                                     "heartbeat": {"interval": 1, "timeout": 10}})
    rooms = [f"room{i}" for i in range(20)]
    with ServerProcess("--config", str(config)) as first:
        alice = await open_bot(first.ws_url, "alice")
        await asyncio.wait_for(asyncio.gather(*(alice.client.join(r) for r in rooms)), DEADLINE)
        port = first.port
        mark = len(alice.events)
        first.send_signal(signal.SIGTERM)
        assert await first.wait_async(DEADLINE) == 0
    going = await alice.status("reconnecting", after=mark)
    assert going["code"] == Close.GOING_AWAY
    with ServerProcess("--config", str(config), port=port) as second:
        connected = await alice.status("connected", after=mark)
        assert connected["resumed"] is False
        await rejoined(alice, 20, after=mark)
        assert refusals(alice) == []
        async with aiohttp.ClientSession() as http:
            assert await rate_limited_sent(http, f"http://127.0.0.1:{second.port}") == 0
        assert (await said(alice, "back", room="room19"))["id"] == 1

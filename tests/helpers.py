"""Helpers shared by test modules (test modules never import each other).

Fixtures live in conftest.py; plain functions, classes and constants live here, and
modules import them from here (never from conftest). Hand-made sockets are in
rawws.py; servers, Redis, nginx and Chromium in serverproc.py, redisproc.py,
nginxproc.py and browser.py.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.typedefs import LooseHeaders

from chat.app import create_app, make_backend
from chat.cluster import Cluster
from chat.config import Config, config_from_mapping
from chat.history import HistoryStore, Message, NewMessage
from chat.history.memory import MemoryHistory
from chat.hub import Hub
from chat.keys import CONFIG as CONFIG_KEY
from chat.keys import HISTORY
from chat.metrics import Metrics
from chat.protocol import LEGACY_HEARTBEAT
from chat.server import handler_options

DEADLINE: Final = 5.0  # s: the most any single wait in a test may take

# The longest text a `say` may carry (2000 characters): about 8 KB per message frame.
LONGEST_TEXT: Final = "\U0001f600" * 2000

# Cluster timings of the tests that run several nodes on one Redis: a dead node is
# noticed within NODE_TIMEOUT + CLEANUP (contract section 7).
NODE_TIMEOUT: Final = 1.5  # s: redis.node_timeout
CLEANUP: Final = 0.2  # s: cleanup.interval

T = TypeVar("T")
Client = TestClient[Any, Any]

FAST: Final[dict[str, Any]] = {
    "heartbeat": {"interval": 0.2, "timeout": 0.6},
    "cleanup": {"interval": 0.1},
    "history": {"backend": "memory"},
    "server": {"shutdown_timeout": 2},
    # Tests that are not about rate limits send faster than a person types.
    "limits": {
        "rate": {"messages": 10000, "per": 1, "burst": 10000},
        "join_rate": {"messages": 10000, "per": 1, "burst": 10000},
    },
}


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`base` with `extra` laid over it, nested mappings merged key by key."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def make_config(extra: dict[str, Any] | None = None, *, fast: bool = True) -> Config:
    """A validated config: FAST (unless `fast=False`) with `extra` over it, no env."""
    return config_from_mapping(merge(FAST if fast else {}, extra or {}), "test", env={})


async def within(awaitable: Awaitable[T], timeout: float = DEADLINE) -> T:
    """`awaitable`'s result, or a TimeoutError after `timeout`."""
    return await asyncio.wait_for(awaitable, timeout)


async def until(condition: Callable[[], Any], timeout: float = DEADLINE) -> None:
    """Wait, with a deadline, until `condition()` holds (state the server changes by itself)."""
    # The hub offers an event only for "empty"; other states are polled, bounded.
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


# ------------------------------------------------------------------ the app on a socket


class Peer:
    """A test client's WebSocket with deadline-bound reads."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.session: str | None = None

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.ws.send_str(frame if isinstance(frame, str) else json.dumps(frame))

    async def recv_raw(self, timeout: float = DEADLINE) -> aiohttp.WSMessage:
        return await asyncio.wait_for(self.ws.receive(), timeout)

    async def recv(self, timeout: float = DEADLINE) -> dict[str, Any]:
        """The next text frame as JSON (protocol pings seen with autoping=False skipped)."""
        async with asyncio.timeout(timeout):
            msg = await self.ws.receive()
            while msg.type in (WSMsgType.PING, WSMsgType.PONG):
                msg = await self.ws.receive()
        assert msg.type is WSMsgType.TEXT, f"expected a text frame, got {msg!r}"
        if msg.data == LEGACY_HEARTBEAT:
            return {"type": LEGACY_HEARTBEAT}
        frame: dict[str, Any] = json.loads(msg.data)
        return frame

    async def expect(self, kind: str, timeout: float = DEADLINE, **fields: Any) -> dict[str, Any]:
        """The next frame of `kind` (frames of other kinds before it are skipped)."""
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.recv()
                if frame["type"] == kind and all(frame.get(k) == v for k, v in fields.items()):
                    return frame

    async def expect_any(self, kinds: tuple[str, ...], timeout: float = DEADLINE) -> dict[str, Any]:
        """The next frame whose type is one of `kinds`."""
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.recv()
                if frame["type"] in kinds:
                    return frame

    async def next_is(self, kind: str, **fields: Any) -> dict[str, Any]:
        """The very next frame, asserted to be of `kind` with `fields`."""
        frame = await self.recv()
        assert frame["type"] == kind, frame
        for key, value in fields.items():
            assert frame.get(key) == value, (key, frame)
        return frame

    async def hello(self, nick: str, **extra: Any) -> dict[str, Any]:
        await self.send({"type": "hello", "nick": nick, **extra})
        welcome = await self.next_is("welcome")
        self.session = welcome["session"]
        return welcome

    async def join(self, room: str, **extra: Any) -> dict[str, Any]:
        await self.send({"type": "join", "room": room, **extra})
        return await self.expect("joined", room=room)

    async def say(self, room: str, text: str, cid: str | None = None) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "say", "room": room, "text": text}
        if cid is not None:
            frame["cid"] = cid
        await self.send(frame)
        return await self.expect("ack", room=room)

    async def closed(self, timeout: float = DEADLINE) -> int | None:
        """Read until the server closes; the close code."""
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.ws.receive()
                if msg.type is WSMsgType.CLOSE:
                    # The code the server sent (the client's own reply may fail when
                    # the server dropped TCP right after its close frame).
                    return int(msg.data)
                if msg.type in (WSMsgType.CLOSED, WSMsgType.CLOSING):
                    return self.ws.close_code
                if msg.type is WSMsgType.ERROR:
                    return self.ws.close_code

    async def quiet(self, duration: float) -> list[dict[str, Any]]:
        """Frames received within `duration` (used to assert that nothing arrives)."""
        frames = []
        loop = asyncio.get_running_loop()
        end = loop.time() + duration
        while (left := end - loop.time()) > 0:
            try:
                msg = await asyncio.wait_for(self.ws.receive(), left)
            except TimeoutError:
                break
            if msg.type is WSMsgType.TEXT:
                frames.append(json.loads(msg.data))
            else:
                break
        return frames



Connect = Callable[..., Awaitable[Peer]]


async def app_client(
    aiohttp_client: Any, extra: dict[str, Any] | None = None, *, config: Config | None = None
) -> Client:
    """The real app for `config` (else make_config(extra)) on a test server, with the
    handler options __main__ uses (the header timeout among them)."""
    server = TestServer(create_app(config if config is not None else make_config(extra)))
    # TestServer drops keyword arguments given to its constructor; start_server passes
    # them on to the runner (aiohttp_client then finds the server started).
    await server.start_server(**handler_options(server.app[CONFIG_KEY]))
    client: Client = await aiohttp_client(server)
    return client


async def connect(client: Client, nick: str | None = None, **kwargs: Any) -> Peer:
    """Open a WebSocket to the app; `nick=` also says hello."""
    kwargs.setdefault("autoping", True)
    peer = Peer(await client.ws_connect("/ws", **kwargs))
    if nick is not None:
        await peer.hello(nick)
    return peer


class SlowStorage:
    """Holds every append of an app's memory store until `release()`: storage made slow.

    A held append behaves like a commit in progress: the store has taken the message,
    so it is stored on release even if its caller was cancelled meanwhile.
    """

    def __init__(self, app: web.Application) -> None:
        store = app[HISTORY]
        assert isinstance(store, MemoryHistory)
        self.entered = asyncio.Event()  # an append is waiting
        self._gate = asyncio.Event()
        self._commits: set[asyncio.Task[Any]] = set()
        append = store.append

        async def commit(*args: Any) -> Any:
            await self._gate.wait()
            return await append(*args)

        async def held(*args: Any) -> Any:
            self.entered.set()
            task = asyncio.ensure_future(commit(*args))
            self._commits.add(task)
            task.add_done_callback(self._commits.discard)
            return await asyncio.shield(task)

        store.append = held  # type: ignore[method-assign]
        # Appends now wait: say them so, or the server would handle says where it reads.
        store.instant = False  # type: ignore[misc]

    def release(self) -> None:
        self._gate.set()


def abort(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Drop the client's TCP connection without a close frame, as a crashed peer would."""
    ws._writer.transport.abort()


async def gauge(client: Client, name: str = "chat_connections") -> float:
    """A metric's value as /metrics renders it."""
    response = await client.get("/metrics")
    for line in (await response.text()).splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def refused(client: Client, headers: LooseHeaders | None = None) -> int:
    """The HTTP status of an upgrade the server refuses."""
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        ws = await client.ws_connect("/ws", headers=headers or {})
        await ws.close()
    return caught.value.status


_fresh = itertools.count()


async def assert_still_serves(client: Client) -> None:
    """A fresh client can still say hello, join, talk and get its own message back."""
    fresh = Peer(await client.ws_connect("/ws"))
    await fresh.hello(f"fresh{next(_fresh)}")
    await fresh.join("lobby")
    ack = await fresh.say("lobby", "still here", cid="c1")
    await fresh.expect("message", id=ack["id"], text="still here")
    await fresh.ws.close()


# ------------------------------------------------------------------ stores


# The limit the join-flood tests set: a burst of four joins or leaves, then one a minute.
TIGHT_JOINS: Final = {"limits": {"join_rate": {"messages": 1, "per": 60, "burst": 4}}}


async def flood_joins(flooder: Peer, watcher: Peer) -> None:
    """The join/leave flood as an attacker sent it (pairs sent without reading the
    answers) under TIGHT_JOINS: the burst is served, then ten `rate_limited` in a row close
    the flooder with 1008, and `watcher`, a member of lobby, sees only the burst's presence."""
    for _ in range(50):
        await flooder.send({"type": "join", "room": "lobby"})
        await flooder.send({"type": "leave", "room": "lobby"})
    answers = []
    while len(answers) < 14:
        frame = await flooder.recv()
        answers.append(frame.get("code", frame["type"]))
    assert answers == ["joined", "left"] * 2 + ["rate_limited"] * 10
    assert await flooder.closed() == 1008
    events = [(await watcher.next_is("presence"))["event"] for _ in range(4)]
    assert events == ["join", "leave", "join", "leave"]


async def fill(store: HistoryStore, room: str, count: int, *, key: str = "alice") -> None:
    """Append m1..m<count> to `room`, said by `key`."""
    for n in range(1, count + 1):
        await within(store.append(NewMessage(room, key, key, f"m{n}", None, 1000 + n)))


async def append(
    store: HistoryStore, room: str, text: str, cid: str | None = None, *, key: str = "alice"
) -> tuple[Message, bool]:
    """Append `text` to `room` as `key` (also the shown nick), bounded in time."""
    return await within(store.append(NewMessage(room, key, key, text, cid, 1000)))


async def epoch_of(store: HistoryStore, room: str = "any") -> str:
    """The epoch of `room` (per room: Redis keeps one for each, the others one per store)."""
    return (await within(store.replay(room, None, None, 0, 500))).epoch


def ids(messages: list[Message]) -> list[int]:
    return [m.id for m in messages]


async def open_backend(config: Config, metrics: Metrics) -> tuple[HistoryStore, Cluster]:
    """The history store and cluster `make_backend` builds for `config`, opened and started
    as the app does, with a hub attached (a cluster reports to its node)."""
    store, cluster = make_backend(config, metrics)
    Hub(config, store, metrics, cluster)
    await within(store.open())
    await within(cluster.start())
    return store, cluster


async def close_backend(store: HistoryStore, cluster: Cluster) -> None:
    await within(cluster.stop())
    await within(store.close())

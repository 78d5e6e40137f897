"""Shared fixtures: configs with tiny intervals, the real app on a real socket, WS peers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer

from chat.app import create_app
from chat.config import Config, config_from_mapping
from chat.history.memory import MemoryHistory
from chat.keys import HISTORY
from chat.protocol import LEGACY_HEARTBEAT
from chat.server import handler_options

DEADLINE = 5.0  # s: the most any single wait in a test may take

FAST: dict[str, Any] = {
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
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def make_config(extra: dict[str, Any] | None = None, *, fast: bool = True) -> Config:
    return config_from_mapping(merge(FAST if fast else {}, extra or {}), "test", env={})


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

    def release(self) -> None:
        self._gate.set()


@pytest.fixture
def config() -> Config:
    return make_config()


async def serve(aiohttp_client: Any, config: Config) -> TestClient[Any, Any]:
    """The app for `config` on a test server with the handler options __main__ uses."""
    server = TestServer(create_app(config))
    # TestServer drops keyword arguments given to its constructor; start_server passes
    # them on to the runner (aiohttp_client then finds the server started).
    await server.start_server(**handler_options(config))
    result: TestClient[Any, Any] = await aiohttp_client(server)
    return result


@pytest.fixture
async def client(aiohttp_client: Any, config: Config) -> TestClient[Any, Any]:
    return await serve(aiohttp_client, config)


@pytest.fixture
async def connect(client: TestClient[Any, Any]) -> Connect:
    """Open a WebSocket to the app; `nick=` also says hello."""

    async def _connect(nick: str | None = None, **kwargs: Any) -> Peer:
        kwargs.setdefault("autoping", True)
        peer = Peer(await client.ws_connect("/ws", **kwargs))
        if nick is not None:
            await peer.hello(nick)
        return peer

    return _connect

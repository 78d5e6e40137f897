"""Shared fixtures: configs with tiny intervals, the real app on a real socket, WS peers.

The plain helpers (Peer, make_config, DEADLINE, ...) live in tests/helpers.py; they are
imported here too, so `from tests.conftest import Peer` keeps working.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Final

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from chat.app import create_app
from chat.config import Config
from chat.history.memory import MemoryHistory
from chat.keys import HISTORY
from chat.server import handler_options
from tests.helpers import DEADLINE, FAST, Peer, make_config, merge
from tests.redisproc import RedisServer

__all__ = ["DEADLINE", "FAST", "Peer", "make_config", "merge"]

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
        # Appends now wait: say them so, or the server would handle says where it reads.
        store.instant = False  # type: ignore[misc]

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


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A durable redis-server of the test's own, killed at teardown."""
    with RedisServer(tmp_path / "redis") as server:
        yield server


REPO: Final = Path(__file__).parents[1]


def _databases() -> dict[str, tuple[int, int]]:
    """The checkout's `chat.db*` files: name -> (size, mtime in ns)."""
    found = {}
    for path in REPO.glob("chat.db*"):
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue  # removed meanwhile (a running server's -wal or -shm)
        found[path.name] = (stat.st_size, stat.st_mtime_ns)
    return found


def _server_holds(lock: Path) -> bool:
    """Whether a process holds the flock on `lock` (a server runs on that database).

    Read from /proc/locks, without taking the lock: taking it, even for a moment,
    could turn away a server starting at that moment.
    """
    try:
        inode = lock.stat().st_ino
        held = Path("/proc/locks").read_text()
    except OSError:
        return False
    return any(
        line.split()[1] == "FLOCK" and line.split()[5].endswith(f":{inode}")
        for line in held.splitlines()
        if len(line.split()) > 5
    )


@pytest.fixture(autouse=True, scope="session")
def _checkout_stays_clean() -> Iterator[None]:
    """Fail the run if a test created or wrote a history database in the checkout.

    Every server and store a test starts belongs in a temporary directory. A `chat.db`
    already there is not blamed for existing, and a test that wrote to it (its size or
    mtime changed) is, unless a server held it when the run began: a server running in
    the checkout writes to its own files, and its lock keeps every test out of them.
    """
    before = _databases()
    running = _server_holds(REPO / "chat.db.lock")
    yield
    after = _databases()
    left = sorted(set(after) - set(before))
    assert not left, f"tests left {left} in {REPO}"
    if not running:
        touched = sorted(n for n in set(after) & set(before) if after[n] != before[n])
        assert not touched, f"tests wrote to {touched} in {REPO}"

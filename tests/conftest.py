"""Shared fixtures: configs with tiny intervals, the real app on a real socket, WS peers,
Redis, a two-node deployment behind nginx, an HTTP session.

Plain helpers (Peer, make_config, app_client, SlowStorage, DEADLINE, ...) live in
tests/helpers.py, and modules import them from there, not from here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient

from chat.config import Config
from tests import helpers
from tests.helpers import Connect, Peer, app_client, make_config
from tests.nginxproc import CLUSTER_TIMINGS, Deployment
from tests.redisproc import RedisServer


@pytest.fixture
def config() -> Config:
    return make_config()


@pytest.fixture
async def client(aiohttp_client: Any, config: Config) -> TestClient[Any, Any]:
    """The app for the `config` fixture (override it in a module to change it)."""
    return await app_client(aiohttp_client, config=config)


@pytest.fixture
async def connect(client: TestClient[Any, Any]) -> Connect:
    """Open a WebSocket to `client`'s app; `nick=` also says hello (helpers.connect)."""

    async def _connect(nick: str | None = None, **kwargs: Any) -> Peer:
        return await helpers.connect(client, nick, **kwargs)

    return _connect


# Two Redis fixtures, one design (tests/redisproc.py), two scopes:
# - `redis_server` is the test's own, for tests that stop, restart, flush or fill it
#   (cluster failures, durability): nothing another test did can leak in.
# - `shared_redis` lives for a module, for tests that only read and write keys under
#   a prefix of their own (the store contract, over a hundred short tests): starting a
#   redis-server per test would cost more than the tests themselves.


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A durable redis-server of the test's own, killed at teardown."""
    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the module; every user keeps to a key prefix of its own."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def deployment_config() -> dict[str, Any]:
    """What `deployment` merges over its nodes' configuration; a module may override it."""
    return dict(CLUSTER_TIMINGS)


@pytest.fixture
def deployment(tmp_path: Path, deployment_config: dict[str, Any]) -> Iterator[Deployment]:
    """Redis, two chat nodes on it and nginx in front, stopped at teardown."""
    with Deployment(tmp_path, nodes=2, config=deployment_config) as running:
        yield running


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP session for servers started as processes.

    WebSockets recorded in `session.chat_sockets` (nodes that are killed leave theirs
    open) are closed before the session, so none is left to the garbage collector.
    """
    async with aiohttp.ClientSession() as session:
        yield session
        for ws in getattr(session, "chat_sockets", []):
            await ws.close()


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

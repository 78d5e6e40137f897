"""Nodes as real processes on a real Redis: what happens when one dies, freezes or restarts."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.helpers import CLEANUP, DEADLINE, NODE_TIMEOUT, Peer
from tests.redisproc import RedisServer, free_port
from tests.serverproc import ServerProcess, write_config


def node_config(tmp_path: Path, url: str, name: str) -> Path:
    directory = tmp_path / name
    directory.mkdir(exist_ok=True)
    return write_config(
        directory,
        {
            "history": {"backend": "redis"},
            "redis": {"url": url, "node_timeout": NODE_TIMEOUT},
            "heartbeat": {"interval": 1, "timeout": 10},
            "cleanup": {"interval": CLEANUP},
            "server": {"shutdown_timeout": 2},
        },
    )


def start_node(tmp_path: Path, url: str, name: str) -> ServerProcess:
    config = node_config(tmp_path, url, name)
    node = ServerProcess("--config", str(config), cwd=config.parent)
    node.start()
    return node


async def connect(http: aiohttp.ClientSession, node: ServerProcess, nick: str | None = None,
                  **extra: Any) -> Peer:
    ws = await http.ws_connect(node.ws_url, autoping=True)
    sockets = getattr(http, "chat_sockets", None)
    if sockets is None:
        sockets = []
        http.chat_sockets = sockets  # type: ignore[attr-defined]
    sockets.append(ws)
    peer = Peer(ws)
    if nick is not None:
        await peer.hello(nick, **extra)
    return peer


async def test_killed_node_sessions_end_on_the_others(
    tmp_path: Path, redis_server: RedisServer, http: aiohttp.ClientSession
) -> None:
    """kill -9 of a node: its members leave with reason timeout within the bound, nick freed."""
    a = start_node(tmp_path, redis_server.url, "a")
    b = start_node(tmp_path, redis_server.url, "b")
    try:
        doomed, watcher = await connect(http, a, "doomed"), await connect(http, b, "watcher")
        await doomed.join("lobby")
        await watcher.join("lobby")
        await doomed.expect("presence", event="join")
        a.kill()
        killed_at = time.monotonic()
        leave = await watcher.expect("presence", event="leave", timeout=NODE_TIMEOUT * 4 + 2)
        took = time.monotonic() - killed_at
        assert (leave["nick"], leave["reason"]) == ("doomed", "timeout")
        # Within node_timeout + cleanup.interval, plus the lease's last renewal period.
        assert took <= NODE_TIMEOUT * 1.25 + CLEANUP + 1.0, took
        assert await watcher.quiet(0.5) == []  # announced exactly once
        again = await connect(http, b, "DOOMED")
        assert again.session
    finally:
        a.close()
        b.close()


async def test_frozen_node_fences_itself_on_continue(
    tmp_path: Path, redis_server: RedisServer, http: aiohttp.ClientSession
) -> None:
    """SIGSTOP past node_timeout: the others end its sessions; on SIGCONT it closes with 1011."""
    a = start_node(tmp_path, redis_server.url, "a")
    b = start_node(tmp_path, redis_server.url, "b")
    try:
        frozen, watcher = await connect(http, a, "frozen"), await connect(http, b, "watcher")
        await frozen.join("lobby")
        await watcher.join("lobby")
        await frozen.expect("presence", event="join")
        a.send_signal(signal.SIGSTOP)
        try:
            leave = await watcher.expect("presence", event="leave", timeout=NODE_TIMEOUT * 4 + 2)
            assert (leave["nick"], leave["reason"]) == ("frozen", "timeout")
            taker = await connect(http, b, "frozen")  # the nick is someone else's now
            assert taker.session
        finally:
            a.send_signal(signal.SIGCONT)
        assert await frozen.closed(timeout=DEADLINE) == 1011
        a.wait_stderr("closing its connections with 1011")
        # The node serves again, under its own name in the cluster.
        fresh = await connect(http, a, "fresh")
        await fresh.join("lobby")
        assert (await watcher.expect("presence", event="join"))["nick"] == "fresh"
    finally:
        a.close()
        b.close()


async def test_node_restart_keeps_history(
    tmp_path: Path, redis_server: RedisServer, http: aiohttp.ClientSession
) -> None:
    """A node stopped and started again serves the same history, epoch and next ids."""
    a = start_node(tmp_path, redis_server.url, "a")
    try:
        alice = await connect(http, a, "alice")
        joined = await alice.join("lobby")
        for n in range(3):
            await alice.say("lobby", f"m{n}", cid=f"c{n}")
        await alice.ws.close()
        assert a.stop() == 0
        a.close()
        a = start_node(tmp_path, redis_server.url, "a")
        again = await connect(http, a, "alice")
        rejoined = await again.join("lobby", since=1, epoch=joined["epoch"])
        assert rejoined["epoch"] == joined["epoch"]
        assert [m["text"] for m in rejoined["messages"]] == ["m1", "m2"]
        assert (await again.say("lobby", "m3"))["id"] == 4
    finally:
        a.close()


async def test_node_started_before_redis(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """A node whose Redis is not up yet starts (listening line), unready until Redis answers."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    a = start_node(tmp_path, url, "a")
    try:
        async with http.get(a.url + "/readyz") as response:
            assert response.status == 503
            body = await response.json()
            assert body["status"] == "unavailable"
            assert "redis" in body["backends"]["history"]
        early = await connect(http, a)
        await early.send({"type": "hello", "nick": "early"})
        error = await early.expect("error")
        assert (error["code"], error["retry_after"] > 0) == ("unavailable", True)
        with RedisServer(tmp_path / "late", port=port):
            async with asyncio.timeout(5):
                while True:
                    async with http.get(a.url + "/readyz") as response:
                        if response.status == 200:
                            break
                    await asyncio.sleep(0.05)
            await early.hello("early")
            await early.join("lobby")
            assert (await early.say("lobby", "finally"))["id"] == 1
    finally:
        a.close()


def test_bad_redis_url_is_a_configuration_error(tmp_path: Path) -> None:
    """A redis.url that is not redis://, rediss:// or unix:// exits 2 naming redis.url."""
    from tests.serverproc import run_chat

    config = write_config(tmp_path, {"redis": {"url": "http://127.0.0.1:6379"}})
    result = run_chat("--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"{config}: redis.url: expected a redis://, rediss:// or unix:// URL, "
        "got 'http://127.0.0.1:6379'"
    ]

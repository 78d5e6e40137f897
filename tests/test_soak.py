"""A bounded soak: hundreds of clients that talk and vanish leave nothing behind."""

from __future__ import annotations

import asyncio
import gc
import os
from typing import Any, Final

import aiohttp
from aiohttp.test_utils import TestClient

from chat.app import create_app
from chat.keys import HUB
from tests.helpers import DEADLINE, Peer, abort, gauge, make_config, until

ROUNDS: Final = 4
CLIENTS: Final = 100  # per round, all at once
FD_SLACK: Final = 5
TASK_SLACK: Final = 2


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def visitor(
    http: aiohttp.ClientSession, url: str, nick: str, room: str, steps: int = 3
) -> None:
    """Connect, then hello, join and say as far as `steps`, then drop TCP without a close."""
    peer = Peer(await http.ws_connect(url))
    if steps >= 1:
        await peer.hello(nick)
    if steps >= 2:
        await peer.join(room)
    if steps >= 3:
        ack = await peer.say(room, f"hello from {nick}", cid=nick)
        assert ack["cid"] == nick
    abort(peer.ws)


async def test_connect_talk_vanish_leaves_nothing(aiohttp_client: Any) -> None:
    """After rounds of abrupt disconnects every count, fd and task is back where it started."""
    client: TestClient[Any, Any] = await aiohttp_client(create_app(make_config({
        "limits": {"max_connections_per_ip": 10 * CLIENTS},
        # Vanished peers must be noticed by the TCP close, not by the heartbeat.
        "heartbeat": {"interval": 10, "timeout": 30},
    })))
    hub = client.app[HUB]
    url = str(client.make_url("/ws"))
    # One warm-up visitor, so that lazily created objects (caches, the connector) exist
    # before the baseline is taken.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        await visitor(http, url, "warmup", "warm")
    await asyncio.wait_for(hub.wait_empty(), DEADLINE)
    gc.collect()
    fds_before = open_fds()
    tasks_before = len(asyncio.all_tasks())

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        for round_ in range(ROUNDS):
            await asyncio.wait_for(
                asyncio.gather(*(
                    visitor(http, url, f"r{round_}n{n}", f"room{n % 5}", steps=n % 4)
                    for n in range(CLIENTS)
                )),
                DEADLINE * 2,
            )

    await asyncio.wait_for(hub.wait_empty(), DEADLINE)
    assert await gauge(client) == 0
    assert await gauge(client, "chat_sessions") == 0
    assert not hub.connections
    assert not hub.sessions
    assert not hub.cluster.nicks
    assert not hub.rooms
    assert not hub.per_ip
    assert hub.rate_buckets() == ([], [])
    rooms = await (await client.get("/api/rooms")).json()
    assert sum(room["members"] for room in rooms) == 0
    assert sum(room["last_id"] for room in rooms) == ROUNDS * (CLIENTS // 4) + 1

    # Handler tasks end a moment after the hub lets go of their connection.
    await until(lambda: len(asyncio.all_tasks()) <= tasks_before + TASK_SLACK)
    gc.collect()
    await until(lambda: open_fds() <= fds_before + FD_SLACK)

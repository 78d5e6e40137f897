"""Slow consumers (contract section 3, `limits.send_buffer`): dropped with 4001, never the room."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Final

import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient

from chat.keys import HUB
from chat.protocol import Close, nick_key
from tests.helpers import (
    DEADLINE,
    LONGEST_TEXT,
    Peer,
    app_client,
    gauge,
    make_config,
    merge,
    until,
)

Client = TestClient[Any, Any]

SEND_BUFFER: Final = 50_000
# The longest text allowed: the loopback socket buffers (some MB) fill after a few
# hundred messages.
TEXT: Final = LONGEST_TEXT
BATCH: Final = 4  # says in flight at once: their replies stay well under SEND_BUFFER
FLOOD_DEADLINE: Final = 15.0
RECOVER: Final = 100  # history.recover in the recovery test
BACKLOG: Final = 20  # messages of TEXT: a recovery of them is over three send_buffers


@pytest.fixture
async def client(aiohttp_client: Any) -> Client:
    config = make_config({
        "limits": {"send_buffer": SEND_BUFFER},
        # The stuck client sends nothing: the heartbeat must not be what drops it.
        "heartbeat": {"interval": 10, "timeout": 30},
    })
    return await app_client(aiohttp_client, config=config)


async def collect(
    peer: Peer, room: str, ids: list[int], stop: asyncio.Event,
    leaves: list[tuple[str, str]] | None = None,
) -> None:
    """Read every frame, recording the room's message ids, until `stop` and caught up."""
    while True:
        msg = await peer.ws.receive()
        if msg.type is not WSMsgType.TEXT:
            raise AssertionError(f"reader lost its socket after {len(ids)} messages: {msg!r}")
        frame = json.loads(msg.data)
        if frame["type"] == "message" and frame["room"] == room:
            ids.append(frame["id"])
        if frame["type"] == "presence" and frame["event"] == "leave" and leaves is not None:
            leaves.append((frame["nick"], frame["reason"]))
        if frame["type"] == "pong" and frame["t"] == "done" and stop.is_set():
            return


def say(text: str) -> str:
    """A say frame as UTF-8 JSON (escaped, 4-byte characters would triple its size)."""
    return json.dumps({"type": "say", "room": "flood", "text": text}, ensure_ascii=False)


async def test_stuck_reader_dropped_with_4001_others_get_everything(client: Client) -> None:
    """A client that stops reading is closed with 4001; members that read miss nothing."""
    hub = client.app[HUB]
    reader = Peer(await client.ws_connect("/ws"))
    await reader.hello("reader")
    await reader.join("flood")
    flooder = Peer(await client.ws_connect("/ws"))
    await flooder.hello("flooder")
    await flooder.join("flood")
    # autoping=False and never a receive(): aiohttp stops reading the socket once its
    # small buffer is full, so everything else backs up on the server.
    stuck = Peer(await client.ws_connect("/ws", autoping=False))
    await stuck.send({"type": "hello", "nick": "stuck"})
    await stuck.send({"type": "join", "room": "flood"})
    key = nick_key("stuck")
    cluster = hub.cluster
    await until(
        lambda: key in cluster.nicks and "flood" in cluster.sessions[cluster.nicks[key]].rooms
    )
    stuck_conn = hub.sessions[cluster.nicks[key]].conn
    assert await gauge(client) == 3

    reader_ids: list[int] = []
    flooder_ids: list[int] = []
    leaves: list[tuple[str, str]] = []
    stop = asyncio.Event()
    readers = [
        asyncio.create_task(collect(reader, "flood", reader_ids, stop, leaves)),
        asyncio.create_task(collect(flooder, "flood", flooder_ids, stop)),
    ]
    sent = 0

    async def flood() -> None:
        nonlocal sent
        for _ in range(BATCH):
            await flooder.send(say(TEXT))
        sent += BATCH
        # Pace the flood by what the readers have taken, so only the stuck one lags.
        await until(lambda: min(len(reader_ids), len(flooder_ids)) >= sent
                    or any(task.done() for task in readers))
        for task in readers:
            if task.done():
                task.result()  # a reader that lost its socket fails the test here

    async with asyncio.timeout(FLOOD_DEADLINE):
        while stuck_conn in hub.connections:
            await flood()
    for _ in range(3):  # the room goes on after the drop
        await flood()
    stop.set()
    await reader.send({"type": "ping", "t": "done"})
    await flooder.send({"type": "ping", "t": "done"})
    await asyncio.wait_for(asyncio.gather(*readers), DEADLINE)

    assert stuck_conn.close_code == Close.SLOW_CONSUMER
    assert stuck_conn not in hub.connections
    assert key not in hub.cluster.nicks
    assert await gauge(client) == 2
    assert reader_ids == list(range(1, sent + 1))
    assert flooder_ids == list(range(1, sent + 1))
    assert leaves == [("stuck", "closed")]
    metrics = await (await client.get("/metrics")).text()
    assert 'chat_connections_closed_total{code="4001"} 1.0' in metrics


async def test_one_reply_larger_than_send_buffer_is_delivered(client: Client) -> None:
    """A single frame that finds the queue empty is accepted however large it is."""
    writer = Peer(await client.ws_connect("/ws"))
    await writer.hello("writer")
    await writer.join("big")
    for n in range(100):
        await writer.say("big", f"{n:03d} " + "y" * 1900)
    reader = Peer(await client.ws_connect("/ws"))
    await reader.hello("reader")
    joined = await reader.join("big")
    assert len(json.dumps(joined)) > SEND_BUFFER
    assert [m["id"] for m in joined["messages"]] == list(range(51, 101))
    await reader.send({"type": "history", "room": "big", "limit": 100})
    page = await reader.next_is("history", room="big")
    assert len(json.dumps(page)) > 4 * SEND_BUFFER
    assert [m["id"] for m in page["messages"]] == list(range(1, 101))
    await reader.send({"type": "ping", "t": "alive"})
    await reader.next_is("pong", t="alive")
    assert len(client.app[HUB].connections) == 2


async def test_prompt_reader_sending_a_burst_is_not_slow(client: Client) -> None:
    """A client that reads all the while is not dropped for pipelining its requests."""
    peer = Peer(await client.ws_connect("/ws"))
    await peer.hello("burst")
    await peer.join("burst")
    acks: list[int] = []

    async def read() -> None:
        while len(acks) < 20:
            frame = await peer.recv()
            if frame["type"] == "ack":
                acks.append(frame["id"])

    reading = asyncio.create_task(read())
    # Twenty says of 8 KB, sent at once: their messages and acks to this client alone
    # are six times SEND_BUFFER.
    for _ in range(20):
        await peer.send(json.dumps({"type": "say", "room": "burst", "text": TEXT},
                                   ensure_ascii=False))
    await asyncio.wait_for(reading, DEADLINE)
    assert acks == list(range(1, 21))


def backend_config(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """The `history` (and `redis`) settings for `backend`; Redis is a real redis-server."""
    if backend == "sqlite":
        return {"history": {"backend": "sqlite", "path": str(tmp_path / "chat.db")}}
    server = request.getfixturevalue("redis_server")
    return {"history": {"backend": "redis"}, "redis": {"url": server.url, "node_timeout": 1.5}}


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_recovery_larger_than_send_buffer_during_live_traffic(
    aiohttp_client: Any, tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    """A joined bigger than send_buffer, and the live frames held meanwhile, never cause
    4001: 20 tries on each backend (on Redis the live messages reach the node by pub/sub,
    on their own connection, while the recovery is read from the stream)."""
    config = make_config(merge(backend_config(backend, request, tmp_path), {
        "history": {"recover": RECOVER},
        "limits": {"send_buffer": SEND_BUFFER},
        "heartbeat": {"interval": 10, "timeout": 30},
    }))
    client = await app_client(aiohttp_client, config=config)
    talker = Peer(await client.ws_connect("/ws"))
    await talker.hello("talker")
    joined = await talker.join("busy")
    for _ in range(BACKLOG):
        await talker.send(say(TEXT).replace('"flood"', '"busy"'))
    await talker.expect("message", id=BACKLOG)
    stop = asyncio.Event()

    churner = Peer(await client.ws_connect("/ws"))
    await churner.hello("churner")

    async def talk() -> None:
        """Live traffic: says one in flight at a time, until told to stop. Each is large
        enough that the newest `recover` messages alone exceed SEND_BUFFER, so every
        recovery is over it however many live messages replaced the backlog (on a fast
        backend, hundreds do)."""
        n = 0
        while not stop.is_set():
            n += 1
            await talker.say("busy", f"live {n} " + "x" * (2 * SEND_BUFFER // RECOVER))

    async def churn() -> None:
        """More live traffic: presence events, which carry no id and are always released."""
        while not stop.is_set():
            await churner.join("busy")
            await churner.send({"type": "leave", "room": "busy"})
            await churner.expect("left")

    talking = asyncio.gather(talk(), churn())
    try:
        for attempt in range(20):
            peer = Peer(await client.ws_connect("/ws"))
            await peer.hello(f"reader{attempt}")
            await peer.send({"type": "join", "room": "busy", "since": 0,
                             "epoch": joined["epoch"]})
            frame = await peer.expect_any(("joined", "error"))
            assert frame["type"] == "joined", frame
            assert len(json.dumps(frame)) > SEND_BUFFER
            await peer.send({"type": "ping", "t": attempt})
            await peer.expect("pong", t=attempt)  # still open: not dropped with 4001
            await peer.ws.close()
    finally:
        stop.set()
        await asyncio.wait_for(talking, DEADLINE)
    metrics = await (await client.get("/metrics")).text()
    assert 'code="4001"' not in metrics

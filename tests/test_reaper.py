"""The cleanup coroutine on a real socket with intervals of a fraction of a second."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from chat.app import create_app
from chat.keys import CONFIG, HUB
from tests.helpers import Connect, Peer, SlowStorage, gauge, make_config

# FAST config: heartbeat.interval 0.2, heartbeat.timeout 0.6, cleanup.interval 0.1.
SLACK = 0.5  # s of scheduling slack on a loaded 2-core machine


async def test_silent_peer_closed_4000_in_window(connect: Connect, client: Any) -> None:
    """A peer that sends nothing and ignores protocol pings is closed with 4000 in time."""
    config = client.app[CONFIG]
    loop = asyncio.get_running_loop()
    # Before connecting: the server counts silence from when it admitted the peer, which
    # is before `connect` returns (timed after it, the close could look ~1 ms early).
    started = loop.time()
    peer = await connect(autoping=False)  # never answers protocol pings, never says hello
    pings = 0
    async with asyncio.timeout(5):
        while True:
            msg = await peer.ws.receive()
            if msg.type.name == "PING":
                pings += 1
                continue
            break
    elapsed = loop.time() - started
    assert msg.type.name == "CLOSE" and msg.data == 4000
    assert pings >= 1  # it was probed before being dropped
    timeout, sweep = config.heartbeat.timeout, config.cleanup.interval
    assert timeout <= elapsed <= timeout + sweep + SLACK, elapsed
    text = await (await client.get("/metrics")).text()
    assert "chat_heartbeat_timeouts_total 1.0" in text
    assert not client.app[HUB].connections


async def test_pinging_peer_stays(connect: Connect, client: Any) -> None:
    """A peer that pings every interval stays connected well past the timeout."""
    peer = await connect("alice", autoping=False)
    interval = client.app[CONFIG].heartbeat.interval
    for n in range(12):  # 12 x 0.2 s = 4 x the timeout
        await peer.send({"type": "ping", "t": n})
        await peer.expect("pong", t=n)
        await asyncio.sleep(interval)
    assert len(client.app[HUB].connections) == 1


async def test_legacy_heartbeat_keeps_alive(connect: Connect, client: Any) -> None:
    """The legacy ~h#c~ heartbeat keeps a connection alive and is echoed."""
    peer = await connect(autoping=False)
    interval = client.app[CONFIG].heartbeat.interval
    for _ in range(10):
        await peer.send("~h#c~")
        await peer.next_is("~h#c~")
        await asyncio.sleep(interval)
    assert len(client.app[HUB].connections) == 1


async def test_peer_answering_protocol_pings_stays(connect: Connect, client: Any) -> None:
    """A peer that only answers protocol pings (a throttled background tab) stays."""
    peer = await connect("alice", autoping=True)
    timeout = client.app[CONFIG].heartbeat.timeout
    # Reading lets the client answer pings; nothing arrives but them.
    assert await peer.quiet(timeout * 4) == []
    assert len(client.app[HUB].connections) == 1
    await peer.send({"type": "ping"})
    await peer.expect("pong")


async def test_timeout_releases_session_and_tells_room(connect: Connect, client: Any) -> None:
    """A timed-out member leaves its rooms with reason timeout and frees its nick."""
    bob = await connect("bob")
    await bob.join("lobby")
    ghost = await connect("ghost", autoping=False)
    await ghost.join("lobby")
    await bob.expect("presence", event="join")
    # bob keeps pinging while waiting for the verdict on ghost.
    async with asyncio.timeout(5):
        while True:
            await bob.send({"type": "ping"})
            frame = await bob.expect_any(("pong", "presence"))
            if frame["type"] == "presence":
                break
            await asyncio.sleep(0.1)
    assert frame == {
        "type": "presence", "room": "lobby", "event": "leave", "nick": "ghost", "reason": "timeout"
    }
    again = await connect()
    assert (await again.hello("ghost"))["nick"] == "ghost"


async def test_many_dead_peers_dropped_together(aiohttp_client: Any) -> None:
    """Many peers going silent at once are all dropped in time, and all they held released."""
    # Longer timeout than FAST so that setting up every peer takes less than it.
    config = make_config(
        {
            "heartbeat": {"interval": 1.0, "timeout": 3.0},
            "cleanup": {"interval": 0.2},
            "limits": {"max_connections_per_ip": 1000},
        }
    )
    app = create_app(config)
    client = await aiohttp_client(app)
    hub = app[HUB]
    count = 200
    # The test client's own session caps connections at 100.
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    url = client.make_url("/ws")
    peers = [Peer(await session.ws_connect(url, autoping=False)) for _ in range(count)]
    for n, peer in enumerate(peers):
        await peer.send({"type": "hello", "nick": f"p{n}"})
        await peer.send({"type": "join", "room": "lobby"})
    loop = asyncio.get_running_loop()
    last_frame = loop.time()
    assert len(hub.connections) == count
    await asyncio.wait_for(hub.wait_empty(), config.heartbeat.timeout + 5)
    elapsed = loop.time() - last_frame
    assert elapsed <= config.heartbeat.timeout + config.cleanup.interval + 2 * SLACK, elapsed
    assert not hub.sessions and not hub.rooms and not hub.cluster.nicks
    text = await (await client.get("/metrics")).text()
    assert f"chat_heartbeat_timeouts_total {float(count)}" in text
    assert "chat_connections 0.0" in text
    for peer in peers:
        assert await peer.closed() == 4000
    await session.close()


async def test_pongs_answered_while_another_floods(connect: Connect) -> None:
    """Pongs keep coming at once while another client floods the room."""
    flooder = await connect("flooder")
    await flooder.join("lobby")
    pinger = await connect("pinger")
    await pinger.join("lobby")
    stop = asyncio.Event()

    async def flood() -> int:
        sent = 0
        while not stop.is_set():
            await flooder.send({"type": "say", "room": "lobby", "text": "x" * 200})
            sent += 1
            if sent % 50 == 0:
                await asyncio.sleep(0)
        return sent

    async def drain(peer: Peer) -> None:
        while not stop.is_set():
            await peer.recv()

    flood_task = asyncio.create_task(flood())
    drain_task = asyncio.create_task(drain(flooder))
    try:
        for n in range(10):
            await pinger.send({"type": "ping", "t": n})
            # Room messages may come first; the pong must come within the deadline.
            await pinger.expect("pong", timeout=2.0, t=n)
    finally:
        stop.set()
        sent = await flood_task
        drain_task.cancel()
        await asyncio.gather(drain_task, return_exceptions=True)
    assert sent > 100


async def test_pong_overtakes_slow_storage(aiohttp_client: Any) -> None:
    """A pong is sent while an earlier say still waits on storage; the ack follows."""
    app = create_app(make_config())
    storage = SlowStorage(app)
    client = await aiohttp_client(app)
    peer = Peer(await client.ws_connect("/ws"))
    await peer.hello("alice")
    await peer.join("lobby")
    await peer.send({"type": "say", "room": "lobby", "text": "slow", "cid": "s"})
    await peer.send({"type": "history", "room": "lobby"})
    await peer.send({"type": "ping", "t": "fast"})
    await peer.next_is("pong", t="fast")
    storage.release()
    # The replies that waited keep their request order.
    await peer.next_is("ack", cid="s")
    await peer.next_is("message", cid="s")
    await peer.next_is("history")


async def test_cleanup_sweeps_are_timed_in_metrics(connect: Connect, client: Any) -> None:
    """Each pass of the cleanup coroutine is observed in chat_cleanup_sweep_seconds."""
    await connect("alice")
    await connect("bob")
    before = await gauge(client, "chat_cleanup_sweep_seconds_count")
    interval = client.app[CONFIG].cleanup.interval
    await asyncio.sleep(interval * 5)
    after = await gauge(client, "chat_cleanup_sweep_seconds_count")
    # FAST sweeps every 0.1 s: about five in 0.5 s, at least two however loaded.
    assert after - before >= 2, (before, after)
    assert await gauge(client, "chat_cleanup_sweep_seconds_sum") >= 0.0
    text = await (await client.get("/metrics")).text()
    assert "# TYPE chat_cleanup_sweep_seconds histogram" in text
    assert 'chat_cleanup_sweep_seconds_bucket{le="0.01"}' in text

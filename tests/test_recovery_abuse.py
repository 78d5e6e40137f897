"""Recovering joins that are never read cannot make the server hold unbounded memory.

The attack: a room holds many large messages; clients join it with `since` 0, twice,
never read a byte of the answers, and stay alive by sending protocol pongs. Each
`joined` waits in the server's memory for a reader that never comes. `history.recover`
caps what one `joined` carries, so what each such client holds is bounded.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import aiohttp
import pytest

from tests.helpers import DEADLINE, LONGEST_TEXT, Peer
from tests.rawws import RawWebSocket
from tests.serverproc import ServerProcess, write_config

TEXT: Final = LONGEST_TEXT  # about 8 KB per message frame
STORED: Final = 600  # about 5 MB of messages in the room
RECOVER: Final = 20
ATTACKERS: Final = 6
PER_CONNECTION: Final = 1_000_000  # bytes of RSS one attacker may cost at most


def rss(pid: int) -> int:
    """The process's resident set size in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert match is not None
    return int(match.group(1)) * 1024


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    config = write_config(tmp_path, {
        "history": {"backend": "memory", "recover": RECOVER},
        "heartbeat": {"interval": 0.3, "timeout": 1.0},
        "cleanup": {"interval": 0.1},
        "limits": {"rate": {"messages": 100000, "per": 1, "burst": 100000}},
    })
    with ServerProcess("--config", str(config), "--log-level", "WARNING", cwd=tmp_path) as proc:
        yield proc


async def fill(peer: Peer, count: int) -> str:
    """Store `count` large messages in `big`, pipelined; the room's epoch."""
    joined = await peer.join("big")
    for _ in range(count):
        await peer.ws.send_str(f'{{"type": "say", "room": "big", "text": "{TEXT}"}}')
    await peer.expect("message", id=count, timeout=3 * DEADLINE)
    return str(joined["epoch"])


async def keep_alive(sockets: list[RawWebSocket], every: float) -> None:
    """Protocol pongs, so the heartbeat never drops the attackers."""
    while True:
        for sock in sockets:
            if not sock.writer.transport.is_closing():
                sock.pong()
        await asyncio.sleep(every)


async def marked(observer: Peer, room: str, attackers: int) -> None:
    """Wait until every attacker's join of `room` is handled (its requests before it too)."""
    seen: set[str] = set()
    while len(seen) < attackers:  # separate sockets: in any order
        seen.add((await observer.expect("presence", room=room, event="join"))["nick"])


async def test_unread_recoveries_hold_bounded_memory(server: ServerProcess) -> None:
    """Clients asking twice for a big backlog and never reading cost bounded RSS each."""
    assert server.proc is not None
    pid = server.proc.pid
    async with aiohttp.ClientSession() as http:
        observer = Peer(await http.ws_connect(server.ws_url, autoping=True))
        await observer.hello("observer")
        epoch = await fill(observer, STORED)
        await observer.join("sync")
        await observer.join("sync2")
        baseline = rss(pid)

        attackers = [await RawWebSocket.open(server.host, server.port, rcvbuf=4096)
                     for _ in range(ATTACKERS)]
        pongs = asyncio.create_task(keep_alive(attackers, 0.1))
        try:
            for n, sock in enumerate(attackers):
                sock.send({"type": "hello", "nick": f"attacker{n}"})
                sock.send({"type": "join", "room": "sync"})
            # Their welcomes are sent: a join now finds an empty queue, the worst case.
            await marked(observer, "sync", ATTACKERS)
            for sock in attackers:
                for _ in range(2):
                    sock.send({"type": "join", "room": "big", "since": 0, "epoch": epoch})
                # Handled after both joins (requests are handled in order): a marker.
                sock.send({"type": "join", "room": "sync2"})
            try:
                await marked(observer, "sync2", ATTACKERS)
            except TimeoutError:
                each = (rss(pid) - baseline) / ATTACKERS
                pytest.fail(f"the attackers' joins were never all handled; {each:,.0f} B each")
            held = rss(pid) - baseline
            assert held < ATTACKERS * PER_CONNECTION, f"{held / ATTACKERS:,.0f} B each"
            # They are still there, kept alive by their pongs, and still cost no more.
            await observer.send({"type": "ping", "t": "alive"})
            await observer.expect("pong", t="alive")
            metrics = await (await http.get(server.url + "/metrics")).text()
            assert f"chat_connections {ATTACKERS + 1}.0" in metrics
        finally:
            pongs.cancel()
            await asyncio.gather(pongs, return_exceptions=True)
            for sock in attackers:
                sock.abort()
        gone: set[str] = set()
        while len(gone) < ATTACKERS:  # in whatever order the server notices them go
            gone.add((await observer.expect("presence", room="sync", event="leave"))["nick"])
        assert rss(pid) - baseline < PER_CONNECTION  # released when they go
        await observer.ws.close()


def test_rss_reads_this_process() -> None:
    """rss() reads VmRSS from /proc: a live process has a few MB at least."""
    assert rss(os.getpid()) > 1_000_000



"""Durability with sqlite (contract section 3 Say/Epoch/Recovery, section 5): crashes lose nothing.

A real server process on a real SQLite file is SIGKILLed (no graceful shutdown, no flush)
and started again on the same file and port; what was acknowledged must still be there,
under the same epoch, ids and timestamps, and a re-sent cid must not be stored twice.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest
from aiohttp import WSMsgType

from chat.client import ChatClient
from tests.helpers import DEADLINE
from tests.serverproc import ServerProcess, write_config

SEED: Final = 20240611

BASE: Final[dict[str, Any]] = {
    "server": {"shutdown_timeout": 2},
    "heartbeat": {"interval": 0.2, "timeout": 0.8},
    "cleanup": {"interval": 0.1},
    "limits": {"rate": {"messages": 1000, "per": 1, "burst": 1000}},
}

Frame = dict[str, Any]


def sqlite_config(tmp_path: Path) -> Path:
    """A config with tiny intervals and the sqlite store at `tmp_path / chat.db`."""
    history = {"backend": "sqlite", "path": str(tmp_path / "chat.db")}
    return write_config(tmp_path, {**BASE, "history": history})


class Server:
    """`python -m chat` on one config file, crashed and restarted on the same port."""

    def __init__(self, config: Path, cwd: Path) -> None:
        self.config = config
        self.cwd = cwd
        self.port = 0  # bound by the first start, then kept
        self.starts = 0
        self.proc: ServerProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def start(self) -> None:
        # Startup blocks until the listening line: off the loop, so clients keep running.
        proc = ServerProcess("--config", str(self.config), cwd=self.cwd, port=self.port)
        await asyncio.to_thread(proc.start)
        assert self.port in (0, proc.port)
        self.port = proc.port
        self.proc = proc
        self.starts += 1

    async def crash(self) -> None:
        """SIGKILL: no shutdown, no close of the store, no checkpoint."""
        proc = self.proc
        assert proc is not None
        self.proc = None
        await asyncio.to_thread(proc.kill)
        await asyncio.to_thread(proc.close)

    async def stop(self) -> int:
        """SIGTERM; the exit status."""
        proc = self.proc
        assert proc is not None
        self.proc = None
        code = await asyncio.to_thread(proc.terminate)
        await asyncio.to_thread(proc.close)
        return code

    def close(self) -> None:
        if self.proc is not None:
            self.proc.close()
            self.proc = None


class Tap:
    """A raw WebSocket read in the background, so protocol pings are answered at once."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.frames: asyncio.Queue[Frame | None] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type is WSMsgType.TEXT:
                self.frames.put_nowait(json.loads(msg.data))
        self.frames.put_nowait(None)

    async def send(self, frame: Frame) -> None:
        await self.ws.send_str(json.dumps(frame))

    async def next(self) -> Frame:
        frame = await asyncio.wait_for(self.frames.get(), DEADLINE)
        assert frame is not None, f"connection closed ({self.ws.close_code})"
        return frame

    async def until(self, kind: str, **fields: Any) -> tuple[list[Frame], Frame]:
        """Frames up to the next one of `kind` with `fields`: those skipped, and it."""
        skipped = []
        while True:
            frame = await self.next()
            if frame["type"] == kind and all(frame.get(k) == v for k, v in fields.items()):
                return skipped, frame
            skipped.append(frame)

    async def hello(self, nick: str) -> Frame:
        await self.send({"type": "hello", "nick": nick})
        _, welcome = await self.until("welcome")
        return welcome

    async def join(self, room: str, **extra: Any) -> Frame:
        await self.send({"type": "join", "room": room, **extra})
        _, joined = await self.until("joined", room=room)
        return joined

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.wait_for(self._reader, DEADLINE)


async def tap(http: aiohttp.ClientSession, server: Server, nick: str) -> Tap:
    peer = Tap(await http.ws_connect(server.ws_url))
    await peer.hello(nick)
    return peer


def stored(db: Path) -> dict[str, list[tuple[int, str, str, int, str | None]]]:
    """Each room's stored messages (id, nick, text, ts, cid) in id order, read from the file."""
    rooms: dict[str, list[tuple[int, str, str, int, str | None]]] = defaultdict(list)
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT room, id, nick, text, ts, cid FROM messages ORDER BY room, id"
        ).fetchall()
    for room, msg_id, nick, text, ts, cid in rows:
        rooms[room].append((msg_id, nick, text, ts, cid))
    return dict(rooms)


def stored_epoch(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        (epoch,) = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
    return str(epoch)


# ---------------------------------------------------------------------- restart


async def test_restart_keeps_acknowledged_messages(tmp_path: Path) -> None:
    """SIGKILL after the acks: every acked message, its id, ts, epoch and cid survive."""
    n = 30
    server = Server(sqlite_config(tmp_path), tmp_path)
    try:
        async with asyncio.timeout(30), aiohttp.ClientSession() as http:
            await server.start()
            alice = await tap(http, server, "alice")
            epoch = (await alice.join("lobby"))["epoch"]
            # Pipelined, so several says share a group commit.
            for i in range(1, n + 1):
                await alice.send(
                    {"type": "say", "room": "lobby", "text": f"durable {i}", "cid": f"c{i}"}
                )
            acks = [(await alice.until("ack"))[1] for _ in range(n)]
            assert [a["id"] for a in acks] == list(range(1, n + 1))
            assert [a["cid"] for a in acks] == [f"c{i}" for i in range(1, n + 1)]

            await server.crash()
            await alice.close()
            # The killed server left its lock file (and WAL) behind: start-up must cope.
            assert (tmp_path / "chat.db.lock").exists()
            await server.start()

            reader = await tap(http, server, "reader")
            joined = await reader.join("lobby", since=0)
            assert joined["epoch"] == epoch
            assert joined["complete"] is True
            got = joined["messages"]
            assert [m["id"] for m in got] == list(range(1, n + 1))
            assert [m["text"] for m in got] == [f"durable {i}" for i in range(1, n + 1)]
            assert [m["cid"] for m in got] == [a["cid"] for a in acks]
            assert [m["ts"] for m in got] == [a["ts"] for a in acks]
            assert {m["nick"] for m in got} == {"alice"}

            bob = await tap(http, server, "bob")
            assert (await bob.join("lobby"))["epoch"] == epoch
            again = await tap(http, server, "alice")
            await again.join("lobby")
            await bob.until("presence", event="join", nick="alice")

            await again.send({"type": "say", "room": "lobby", "text": "after", "cid": "new"})
            _, ack = await again.until("ack", cid="new")
            assert ack["id"] == n + 1
            await again.until("message", id=n + 1)
            assert (await bob.next())["id"] == n + 1

            # The same (room, nick, cid) as an acknowledged message from before the crash.
            k = 7
            old = {"type": "say", "room": "lobby", "text": f"durable {k}", "cid": f"c{k}"}
            await again.send(old)
            resent = await again.next()
            assert resent == acks[k - 1], resent
            for peer in (again, bob):
                await peer.send({"type": "ping", "t": "quiet"})
                pong = await peer.next()
                assert (pong["type"], pong["t"]) == ("pong", "quiet"), pong
            # Nothing was broadcast for the re-sent cid: bob's next message is a new one.
            await again.send({"type": "say", "room": "lobby", "text": "sentinel", "cid": "s"})
            frame = await bob.next()
            assert (frame["type"], frame["id"], frame["text"]) == ("message", n + 2, "sentinel")

            await reader.send({"type": "ping", "t": "end"})
            skipped, _ = await reader.until("pong", t="end")
            assert [f["id"] for f in skipped if f["type"] == "message"] == [n + 1, n + 2]
            for peer in (reader, bob, again):
                await peer.close()
            assert await server.stop() == 0
        rows = stored(tmp_path / "chat.db")["lobby"]
        assert [r[0] for r in rows] == list(range(1, n + 3))
        assert [r[2] for r in rows].count(f"durable {k}") == 1
    finally:
        server.close()


# ---------------------------------------------------------------------- chaos

ROOMS: Final = ("alpha", "beta", "gamma")
CLIENTS: Final = 20
KILLS: Final = 3
SEND_GAP: Final = (0.02, 0.05)  # s between one ack and the next say of a client
SETTLE: Final = 10.0  # s for the last acks, then for the last messages, after the chaos


@dataclass(eq=False)
class Member:
    """One ChatClient of the chaos test and everything it saw."""

    client: ChatClient
    rooms: list[str]
    rng: random.Random
    seen: dict[str, list[Frame]] = field(default_factory=lambda: defaultdict(list))
    acks: list[tuple[str, str, Frame]] = field(default_factory=list)  # room, text, ack
    joined: list[Frame] = field(default_factory=list)
    resets: list[Frame] = field(default_factory=list)
    waiting: tuple[str, str] | None = None  # the say awaiting its ack: cid, room

    async def consume(self) -> None:
        async for event in self.client.events():
            kind = event["type"]
            if kind == "message":
                self.seen[event["room"]].append(event)
            elif kind == "joined":
                self.joined.append(event)
            elif kind == "reset":
                self.resets.append(event)

    async def send(self, stop: asyncio.Event) -> None:
        """Say, await the ack, pause, repeat until `stop`; the last say is always acked."""
        seq = 0
        nick = self.client.nick
        while not stop.is_set():
            seq += 1
            room = self.rng.choice(self.rooms)
            text = f"{nick} #{seq}"
            self.waiting = (f"{nick}-{seq}", room)
            ack = await self.client.say(room, text, cid=f"{nick}-{seq}")
            self.waiting = None
            self.acks.append((room, text, ack))
            await asyncio.sleep(self.rng.uniform(*SEND_GAP))


async def chaos(server: Server, members: list[Member], rng: random.Random) -> None:
    """Drop some client connections, SIGKILL the server, restart it: KILLS times."""
    for _ in range(KILLS):
        await asyncio.sleep(rng.uniform(1.0, 2.0))
        for member in rng.sample(members, 3):
            member.client.drop()
        await asyncio.sleep(rng.uniform(0.5, 1.5))
        await server.crash()
        await asyncio.sleep(rng.uniform(0.0, 0.3))
        await server.start()
    await asyncio.sleep(rng.uniform(1.0, 2.0))
    for member in rng.sample(members, 3):
        member.client.drop()
    await asyncio.sleep(1.0)


async def last_ids(http: aiohttp.ClientSession, server: Server) -> dict[str, int]:
    async with http.get(f"{server.url}/api/rooms") as response:
        assert response.status == 200
        return {r["room"]: r["last_id"] for r in await response.json()}


async def settle(
    http: aiohttp.ClientSession,
    server: Server,
    members: list[Member],
    senders: list[asyncio.Task[None]],
) -> None:
    """Wait until every say is acked and every client holds its rooms' newest message."""
    _, pending = await asyncio.wait(senders, timeout=SETTLE)
    if pending:
        waiting = [m.waiting for m, s in zip(members, senders, strict=True) if s in pending]
        pytest.fail(f"says still unacknowledged after {SETTLE}s (cid, room): {waiting}")
    await asyncio.gather(*senders)  # a say that failed fails the test here
    behind: list[tuple[str, str, int, int | None]] = []
    try:
        async with asyncio.timeout(SETTLE):
            while True:
                last = await last_ids(http, server)
                behind = [
                    (m.client.nick, room, m.client.rooms[room].last_id, last.get(room))
                    for m in members
                    for room in m.rooms
                    if m.client.rooms[room].last_id != last.get(room)
                ]
                if not behind:
                    return
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(
            f"clients behind the store after {SETTLE}s (nick, room, held, stored): {behind}"
        )


async def test_chaos_nothing_acknowledged_lost_or_duplicated(tmp_path: Path) -> None:
    """Crashes and dropped connections under load: no acked message lost, none twice."""
    rng = random.Random(SEED)
    server = Server(sqlite_config(tmp_path), tmp_path)
    members: list[Member] = []
    tasks: list[asyncio.Task[Any]] = []
    try:
        async with asyncio.timeout(50), aiohttp.ClientSession() as http:
            await server.start()
            for i in range(CLIENTS):
                client = ChatClient(
                    server.ws_url,
                    f"n{i:02d}",
                    session=http,
                    backoff_base=0.05,
                    backoff_cap=0.5,
                    rng=random.Random(SEED + i),
                    connect_timeout=3.0,
                )
                rooms = rng.sample(ROOMS, rng.choice((1, 2)))
                members.append(Member(client, rooms, random.Random(SEED * 7 + i)))
            for room in ROOMS:
                assert sum(room in m.rooms for m in members) >= 2, room
            tasks += [asyncio.create_task(m.consume()) for m in members]
            await asyncio.gather(*(m.client.connect() for m in members))
            await asyncio.gather(*(m.client.join(r) for m in members for r in m.rooms))

            stop = asyncio.Event()
            senders = [asyncio.create_task(m.send(stop)) for m in members]
            tasks += senders
            await chaos(server, members, rng)
            stop.set()
            await settle(http, server, members, senders)
            # Each client's first say, said again by cid after the crashes: the original ack.
            firsts = [m.acks[0] for m in members]
            resends = [
                asyncio.create_task(m.client.say(room, text, ack["cid"]))
                for m, (room, text, ack) in zip(members, firsts, strict=True)
            ]
            tasks += resends
            _, pending = await asyncio.wait(resends, timeout=DEADLINE)
            unanswered = [
                ack["cid"] for (_, _, ack), t in zip(firsts, resends, strict=True) if t in pending
            ]
            assert not unanswered, f"re-sent cids not acknowledged in {DEADLINE}s: {unanswered}"
            assert [t.result() for t in resends] == [ack for _, _, ack in firsts]
            epoch = members[0].joined[0]["epoch"]

            await asyncio.gather(*(m.client.close() for m in members))
            await asyncio.gather(*tasks)
            assert await server.stop() == 0
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for member in members:
            await member.client.close()
        server.close()

    db = tmp_path / "chat.db"
    store = stored(db)
    assert server.starts == KILLS + 1
    assert stored_epoch(db) == epoch
    assert set(store) == set(ROOMS)
    for room, rows in store.items():
        # Ids 1, 2, 3, ... with no gap, and each text (one per say) stored once.
        assert [r[0] for r in rows] == list(range(1, len(rows) + 1)), room
        texts = [r[2] for r in rows]
        assert len(set(texts)) == len(texts), f"{room}: a say stored twice"
    by_id = {(room, r[0]): r for room, rows in store.items() for r in rows}

    acked = 0
    for m in members:
        assert m.resets == [], m.client.nick
        assert {j["epoch"] for j in m.joined} == {epoch}, m.client.nick
        assert all(j["complete"] for j in m.joined), m.client.nick
        for room, text, ack in m.acks:
            row = by_id.get((room, ack["id"]))
            assert row is not None, (room, text, ack)
            assert (row[1], row[2], row[3], row[4]) == (m.client.nick, text, ack["ts"], ack["cid"])
        acked += len(m.acks)
        for room in m.rooms:
            seen = m.seen[room]
            ids = [f["id"] for f in seen]
            assert ids, (m.client.nick, room)
            last = store[room][-1][0]
            assert ids == list(range(ids[0], last + 1)), (m.client.nick, room)
            for frame in seen:
                row = by_id[(room, frame["id"])]
                assert (frame["nick"], frame["text"], frame["ts"]) == row[1:4], frame
    # Every say was acked before the senders stopped, so the store holds exactly those.
    assert acked == sum(len(rows) for rows in store.values())

"""The Redis history backend: each room's messages in a stream that every node shares.

The says queued on a node go to Redis together, one Lua script per round
(chat.cluster.scripts.SAY): for each say it looks up the cid, takes the room's next id,
appends to the stream trimmed to `history.retain` and records the cid; then it publishes
each room's new messages, atomically: ids are consecutive cluster-wide and publish order
is id order. The ack is sent once Redis has executed the script; delivery to members
happens on every node through the room's feed (chat.cluster.redis_cluster), not here.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from typing import Any, Final

import orjson
from redis.exceptions import NoScriptError

from chat.cluster import scripts
from chat.cluster.redis_link import RedisLink
from chat.history import Message, NewMessage, Page, Replay, Stored, announce, plan_replay

_MAX_ID: Final = 2**64 - 1  # the largest stream id part
# The most says one script stores: Redis runs a script alone, and other nodes' requests
# wait for it; the rest of a longer queue goes in the next round.
ROUND_LIMIT: Final = 256

# A queued say and the future of its (id, original frame or b"").
_Queued = tuple[NewMessage, asyncio.Future[tuple[int, bytes]]]


def _frame_parts(room: str, nick: str, text: str, ts: int, cid: str | None) -> tuple[bytes, bytes]:
    """The `message` frame around its id, byte for byte as `protocol.message_frame` encodes."""
    dumps = orjson.dumps
    head = b'{"type":"message","room":' + dumps(room) + b',"id":'
    tail = (
        b',"nick":' + dumps(nick) + b',"text":' + dumps(text) + b',"ts":' + str(ts).encode()
        + b',"cid":' + dumps(cid) + b"}"
    )
    return head, tail


def _message(frame: bytes) -> Message:
    obj = orjson.loads(frame)
    return Message(obj["room"], obj["id"], obj["nick"], obj["text"], obj["ts"], obj["cid"])


def _entries(entries: list[Any]) -> list[Message]:
    """Messages from XRANGE entries: [(id, {b'f': frame, ...}), ...]."""
    return [_message(fields[b"f"]) for _, fields in entries]


class RedisHistory:
    instant = False
    def __init__(self, link: RedisLink, retain: int, on_commit: Any = None) -> None:
        self.link = link
        self.keys = link.keys
        self._retain = retain
        self._on_commit = on_commit
        self._queue: list[_Queued] = []
        self._rounds: asyncio.Task[None] | None = None
        # The rounds' own connection: one round is in flight at a time.
        self._lane = link.lane()
        # Kept from `open` (see Flusher for why: a getpid() per lookup on Python 3.11).
        self._loop: asyncio.AbstractEventLoop | None = None

    async def open(self) -> None:
        # Nothing to connect: the cluster does, and a node starts even while Redis is away.
        self._loop = asyncio.get_running_loop()

    async def close(self) -> None:
        # After every connection has closed: a round still in flight ends with its reply
        # or its error (within the link's timeout), then the lane's connection goes back.
        if self._rounds is not None:
            await asyncio.wait({self._rounds})
        with contextlib.suppress(Exception):
            await self._lane.close()

    async def check(self) -> str:
        if not self.link.up:
            return self.link.reason
        try:
            await self.link.ping()
        except Exception as err:  # a probe reports, it does not crash
            return str(err)
        return "ok"

    async def append(self, new: NewMessage, stored: Stored | None = None) -> tuple[Message, bool]:
        """Store in the next round (see `_send_rounds`); the answer in id order per room."""
        loop = self._loop or asyncio.get_running_loop()
        future: asyncio.Future[tuple[int, bytes]] = loop.create_future()
        self._queue.append((new, future))
        if self._rounds is None or self._rounds.done():
            self._rounds = loop.create_task(self._send_rounds(), name="redis-says")
        msg_id, original = await future
        if original:
            answer = (_message(original), False)
        else:
            answer = (Message(new.room, msg_id, new.nick, new.text, new.ts, new.cid), True)
        announce(stored, *answer)
        return answer

    async def _send_rounds(self) -> None:
        """Send the says queued meanwhile as one script when the previous round is answered.

        The group commit of the SQLite backend, on Redis: one EVALSHA, one write and one
        read per round, whatever its size; each room's says stay in queue order, so ids
        follow it. A script runs atomically and is refused whole when Redis cannot
        write, so a round is stored entirely or not at all. Nothing is retried: a round
        that fails fails each of its says with `unavailable`, and the clients re-send
        them with their cid.
        """
        while self._queue:
            batch, self._queue = self._queue[:ROUND_LIMIT], self._queue[ROUND_LIMIT:]
            started = time.perf_counter()
            by_room: dict[str, list[_Queued]] = {}
            for queued in batch:
                by_room.setdefault(queued[0].room, []).append(queued)
            ordered = [queued for says in by_room.values() for queued in says]
            try:
                reply = await self._round(by_room)
            except Exception as err:
                for _, future in ordered:
                    if not future.done():
                        future.set_exception(err)
                continue
            if self._on_commit is not None:
                self._on_commit(len(batch), time.perf_counter() - started)
            for n, (_, future) in enumerate(ordered):
                # Not done: its request may have been cancelled; the message is stored
                # all the same.
                if not future.done():
                    future.set_result((int(reply[2 * n]), reply[2 * n + 1]))

    async def _round(self, by_room: dict[str, list[_Queued]]) -> list[Any]:
        """Run the say script for one round; load it first if Redis lost it."""
        keys = self.keys
        names: list[Any] = [keys.generation, keys.rooms]
        args: list[Any] = [self._retain, secrets.token_hex(8), len(by_room)]
        says: list[Any] = []
        for room, queued in by_room.items():
            names += (keys.meta(room), keys.log(room), keys.cids(room))
            args += (keys.room(room), room, len(queued))
            for new, _ in queued:
                head, tail = _frame_parts(room, new.nick, new.text, new.ts, new.cid)
                says += (new.key, new.cid or "", head, tail)
        command = (b"EVALSHA", self.link.say.sha, len(names), *names, *args, *says)
        try:
            reply: list[Any] = await self.link.run(self._lane.call(*command))
        except NoScriptError:
            # The script did not run: safe to send it again once Redis has it.
            await self.link.run(self.link.client.script_load(scripts.SAY))
            reply = await self.link.run(self._lane.call(*command))
        return reply

    async def find(self, room: str, key: str, cid: str) -> Message | None:
        client = self.link.client
        found = await self.link.run(client.hget(self.keys.cids(room), f"{key}\0{cid}"))
        if found is None:
            return None
        msg_id = int(found)
        entries = await self.link.run(
            client.xrange(self.keys.log(room), f"{msg_id}-0", f"{msg_id}-0")
        )
        messages = _entries(entries)
        return messages[0] if messages else None

    async def position(self, room: str) -> tuple[str, int, int]:
        """(epoch, newest id given, oldest id stored) of a room; rotates a stale epoch."""
        keys = self.keys
        epoch, last, first = await self.link.script(
            self.link.position,
            [keys.meta(room), keys.log(room), keys.generation],
            [secrets.token_hex(8)],
        )
        return epoch.decode() if isinstance(epoch, bytes) else str(epoch), int(last), int(first)

    async def frames(self, room: str, after: int, count: int) -> list[tuple[int, bytes]]:
        """(id, frame) of the first `count` stored messages with id > after: a backfill."""
        entries = await self.link.run(
            self.link.client.xrange(self.keys.log(room), f"{after + 1}-0", "+", count=count)
        )
        return [(int(entry_id.split(b"-", 1)[0]), fields[b"f"]) for entry_id, fields in entries]

    async def replay(
        self, room: str, since: int | None, client_epoch: str | None, replay: int, recover: int
    ) -> Replay:
        epoch, last, first = await self.position(room)
        plan = plan_replay(since, client_epoch, epoch, first, last, replay, recover)
        client = self.link.client
        log = self.keys.log(room)
        if plan.newest == 0:
            messages = []
        else:
            entries = await self.link.run(
                client.xrevrange(log, "+", f"{plan.after + 1}-0", count=plan.newest)
            )
            messages = _entries(entries)[::-1]
        # The stream may have grown since `position`: the replay holds what it read.
        newest = max(last, messages[-1].id if messages else 0)
        return Replay(epoch, messages, plan.complete, newest)

    async def page(self, room: str, before: int | None, limit: int) -> Page:
        # Stream ids are unsigned 64-bit: a `before` past them bounds nothing, and Redis
        # refuses the id outright (the protocol sets no upper bound on `before`).
        top = "+" if before is None else f"({min(max(before, 1), _MAX_ID)}-0"
        if before is not None and before <= 1:
            return Page([], False)
        entries = await self.link.run(
            self.link.client.xrevrange(self.keys.log(room), top, "-", count=limit + 1)
        )
        messages = _entries(entries[:limit])[::-1]
        return Page(messages, len(entries) > limit)

    async def rooms(self, after: str | None = None, limit: int | None = None) -> dict[str, int]:
        """Rooms with stored messages and their newest ids, in name order, after `after`."""
        client = self.link.client
        start = f"({after}" if after is not None else "-"
        found = await self.link.run(
            client.zrangebylex(self.keys.rooms, start, "+", start=0, num=limit or -1)
            if limit is not None
            else client.zrangebylex(self.keys.rooms, start, "+")
        )
        names = [name.decode() for name in found]
        lasts = await self.lasts(names)
        return {name: last for name, last in zip(names, lasts, strict=True) if last}

    async def lasts(self, names: list[str]) -> list[int]:
        if not names:
            return []
        async with self.link.client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hget(self.keys.meta(name), "last")
            values = await self.link.run(pipe.execute())
        return [int(value or 0) for value in values]

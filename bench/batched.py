"""`python -m chat` with the Redis says batched: a prototype for bench/nodes.py, not the server.

    PYTHONPATH=. .venv/bin/python bench/batched.py --config FILE [python -m chat's options]

It runs the server unchanged except for `RedisHistory.append`: instead of one `EVALSHA`
per `say` on a pooled connection of its own, the says queued while the event loop was
busy go to Redis as one pipeline (one write, one read), and the next pipeline leaves
when the previous one is answered: the group commit of the SQLite backend, on Redis.
Each script still runs atomically and in order, so ids, the cid look-up and publishing
are as before; a failed pipeline fails every `say` in it with `unavailable`.

bench/nodes.py's `batched` setup (appendfsync always) starts its nodes with this, to
measure what the batching would bring end to end. Nothing here is meant for production:
it does not handle a Redis that lost its script cache (NOSCRIPT), for one.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import time
from typing import Any

from chat.__main__ import main
from chat.cluster import scripts
from chat.history import Message, Stored, announce
from chat.history.redis import RedisHistory, _frame_parts, _message


class Batcher:
    def __init__(self, history: RedisHistory) -> None:
        self.link = history.link
        self.queue: list[tuple[list[Any], asyncio.Future[Any]]] = []
        self.wake = asyncio.Event()
        self.sha: str | None = None
        self.task = asyncio.get_running_loop().create_task(self._serve())

    async def call(self, keys: list[str], args: list[Any]) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.queue.append(([len(keys), *keys, *args], future))
        self.wake.set()
        return await future

    async def _serve(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            batch, self.queue = self.queue, []
            if not batch:
                continue
            try:
                if self.sha is None:
                    self.sha = await self.link.run(self.link.client.script_load(scripts.SAY))
                async with self.link.client.pipeline(transaction=False) as pipe:
                    for command, _ in batch:
                        pipe.execute_command("EVALSHA", self.sha, *command)
                    replies = await self.link.run(pipe.execute(raise_on_error=False))
            except BaseException as err:  # every say of the batch gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(err)
                if not isinstance(err, Exception):
                    raise
                continue
            for (_, future), reply in zip(batch, replies, strict=True):
                if future.done():
                    continue
                if isinstance(reply, Exception):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)


async def append(
    self: RedisHistory,
    room: str,
    nick: str,
    key: str,
    text: str,
    cid: str | None,
    ts: int,
    stored: Stored | None = None,
) -> tuple[Message, bool]:
    """RedisHistory.append, word for word, but for the batched call."""
    batcher = self.__dict__.get("_batcher")
    if batcher is None:
        batcher = self.__dict__["_batcher"] = Batcher(self)
    keys = self.keys
    head, tail = _frame_parts(room, nick, text, ts, cid)
    started = time.perf_counter()
    created, msg_id, _epoch, frame = await batcher.call(
        [keys.meta(room), keys.log(room), keys.cids(room), keys.generation, keys.rooms],
        [key, cid or "", head, tail, self._retain, secrets.token_hex(8), keys.room(room), room],
    )
    if self._on_commit is not None:
        self._on_commit(1, time.perf_counter() - started)
    if created:
        message = Message(room, int(msg_id), nick, text, ts, cid)
    else:
        message = _message(frame)
    answer = (message, bool(created))
    announce(stored, *answer)
    return answer


RedisHistory.append = append  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main())

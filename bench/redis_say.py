"""The cost of one `say` on Redis from one node's side, without WebSockets.

    .venv/bin/python bench/redis_say.py [--callers 25] [--seconds 3] [--repeat 3]
                                        [--fsync always]

Starts a `redis-server` (appendonly yes, `--fsync`) in a temporary directory on a free
port of 127.0.0.1, and in this process `--callers` tasks, each storing a message and
waiting for the answer, in a loop (one in flight per task, as bench/nodes.py's senders on
one node), for `--seconds`, in two ways:

- `append`: the node's own path, `RedisHistory.append` (until main's 6c4be04 one SAY
  script per call through redis-py: a pooled connection per call in flight, one write
  and one read per call; since then itself one pipeline per round trip);
- `batched`: the same SAY script, but the calls queued while the event loop was busy go
  to Redis as one pipeline (one write, one read, one connection) and are answered
  together: the group commit that 6c4be04 brought to the server, kept here as the
  reference the server's path is compared with.

It prints calls per second and the CPU time per call of this process and of
redis-server. This is a diagnosis for docs/benchmarks.md, not a test: `batched` lives
here, not in the server.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import cpu_seconds  # noqa: E402  (bench/ is sys.path[0])
from nodes import Redis  # noqa: E402

from chat.cluster.redis_link import RedisLink  # noqa: E402
from chat.config import RedisConfig  # noqa: E402
from chat.history import NewMessage  # noqa: E402
from chat.history.redis import RedisHistory, _frame_parts  # noqa: E402
from chat.metrics import Metrics  # noqa: E402

ROOMS = 5


class Batcher:
    """SAY scripts queued during one turn of the loop go out as one pipeline."""

    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self.queue: list[tuple[list[Any], asyncio.Future[Any]]] = []
        self.wake = asyncio.Event()
        self.task = asyncio.create_task(self._serve())

    async def say(self, keys: list[str], args: list[Any]) -> Any:
        future = asyncio.get_running_loop().create_future()
        self.queue.append(([self.link.say.sha, len(keys), *keys, *args], future))
        self.wake.set()
        return await future

    async def _serve(self) -> None:
        client = self.link.client
        while True:
            await self.wake.wait()
            self.wake.clear()
            batch, self.queue = self.queue, []
            if not batch:
                continue
            async with client.pipeline(transaction=False) as pipe:
                for command, _ in batch:
                    pipe.execute_command("EVALSHA", *command)
                replies = await pipe.execute()
            for (_, future), reply in zip(batch, replies, strict=True):
                future.set_result(reply)


async def measure(mode: str, url: str, args: argparse.Namespace, pid: int) -> dict[str, float]:
    link = RedisLink(RedisConfig(url=url, prefix=f"b{secrets.token_hex(3)}"), Metrics())
    history = RedisHistory(link, 10_000)
    keys = link.keys
    await link.client.script_load(link.say.script)  # EVALSHA finds it from the start
    batcher = Batcher(link) if mode == "batched" else None

    async def one(n: int, k: int) -> None:
        room = f"room{n % ROOMS}"
        if batcher is None:
            await history.append(NewMessage(room, f"bench{n}", f"bench{n}",
                                            "benchmark text " * 4, f"c{n}-{k}", 0))
            return
        head, tail = _frame_parts(room, f"bench{n}", "benchmark text " * 4, 0, f"c{n}-{k}")
        await batcher.say(
            [keys.meta(room), keys.log(room), keys.cids(room), keys.generation, keys.rooms],
            [f"bench{n}", f"c{n}-{k}", head, tail, 10_000, secrets.token_hex(8),
             keys.room(room), room],
        )

    async def loop(n: int, deadline: float) -> int:
        k = 0
        while time.perf_counter() < deadline:
            await one(n, k)
            k += 1
        return k

    await asyncio.gather(*(loop(n, time.perf_counter() + 0.5) for n in range(args.callers)))
    cpu0, redis0, start = time.process_time(), cpu_seconds(pid), time.perf_counter()
    deadline = start + args.seconds
    done = sum(await asyncio.gather(*(loop(n, deadline) for n in range(args.callers))))
    elapsed = time.perf_counter() - start
    result = {
        "calls/s": done / elapsed,
        "client µs/call": (time.process_time() - cpu0) / done * 1e6,
        "redis µs/call": (cpu_seconds(pid) - redis0) / done * 1e6,
    }
    if batcher is not None:
        batcher.task.cancel()
    await link.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--callers", type=int, default=25)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--fsync", default="always", choices=("always", "everysec"))
    args = parser.parse_args()
    modes = ("append", "batched")
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory() as tmp:
        redis = Redis(Path(tmp), args.fsync)
        redis.start()
        try:
            assert redis.process is not None
            for _ in range(args.repeat):
                for mode in modes:
                    result = asyncio.run(measure(mode, redis.url, args, redis.process.pid))
                    runs[mode].append(result)
                    print(f"  {mode:8} " + "  ".join(f"{k} {v:7.0f}" for k, v in result.items()),
                          flush=True)
        finally:
            redis.stop()
    print(f"{args.callers} callers, appendfsync {args.fsync}, medians of {args.repeat}:")
    for mode in modes:
        print(f"{mode:8} " + "  ".join(
            f"{k} {statistics.median(r[k] for r in runs[mode]):7.0f}" for k in runs[mode][0]))


if __name__ == "__main__":
    main()

"""The cost of one `say` on Redis from one node's side, without WebSockets.

    .venv/bin/python bench/redis_say.py [--callers 25] [--seconds 3] [--repeat 3]
                                        [--fsync always]

Starts a `redis-server` (appendonly yes, `--fsync`) in a temporary directory on a free
port of 127.0.0.1, and in this process `--callers` tasks, each storing a message and
waiting for the answer, in a loop (one in flight per task, as bench/nodes.py's senders on
one node), for `--seconds`, through the node's own path, `RedisHistory.append`: the says
queued while a round is in flight go to Redis as one script when it is answered (until
main's 6c4be04 one SAY script per call, a pooled connection per call in flight; until
the per-round script, one SAY script per say in one pipeline per round).

It prints calls per second and the CPU time per call of this process and of
redis-server. This is a diagnosis for docs/benchmarks.md, not a test.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import cpu_seconds  # noqa: E402  (bench/ is sys.path[0])
from nodes import Redis  # noqa: E402

from chat.cluster.redis_link import RedisLink  # noqa: E402
from chat.config import RedisConfig  # noqa: E402
from chat.history import NewMessage  # noqa: E402
from chat.history.redis import RedisHistory  # noqa: E402
from chat.metrics import Metrics  # noqa: E402

ROOMS = 5


async def measure(url: str, args: argparse.Namespace, pid: int) -> dict[str, float]:
    link = RedisLink(RedisConfig(url=url, prefix=f"b{secrets.token_hex(3)}"), Metrics())
    history = RedisHistory(link, 10_000)
    await link.client.script_load(link.say.script)  # EVALSHA finds it from the start

    async def one(n: int, k: int) -> None:
        room = f"room{n % ROOMS}"
        await history.append(NewMessage(room, f"bench{n}", f"bench{n}",
                                        "benchmark text " * 4, f"c{n}-{k}", 0))

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
    await link.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--callers", type=int, default=25)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--fsync", default="always", choices=("always", "everysec"))
    args = parser.parse_args()
    modes = ("append",)
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory() as tmp:
        redis = Redis(Path(tmp), args.fsync)
        redis.start()
        try:
            assert redis.process is not None
            for _ in range(args.repeat):
                for mode in modes:
                    result = asyncio.run(measure(redis.url, args, redis.process.pid))
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

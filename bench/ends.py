"""Sessions ended at once on a Redis node: how many scripts, how long.

    .venv/bin/python bench/ends.py [--clients 10,40,90,150]

For each count K: a `redis-server` and one node (`history.backend: redis`) in a
temporary directory on free ports of 127.0.0.1; K clients say hello and join one room;
then all K close at once. It prints how long until the room has no members left in Redis,
how many scripts (EVALSHA + EVAL) Redis ran meanwhile (upkeep adds about one a second,
new pool connections one EVAL each), and the node's log lines. Ending K sessions should
take about K scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson
from nodes import Node, Redis  # bench/ is sys.path[0] when run as a script


def scripts(redis: Redis) -> int:
    stats = redis.command("INFO", "commandstats")
    return sum(int(stats.get(name, {}).get("calls", 0))
               for name in ("cmdstat_evalsha", "cmdstat_eval"))


async def storm(count: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        redis = Redis(workdir / "redis", "everysec")
        redis.start()
        node: Node | None = None
        try:
            node = Node("node", {"backend": "redis"}, redis.url, workdir)
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0)
            ) as http:
                sockets = []
                for n in range(count):
                    ws = await http.ws_connect(node.url)
                    await ws.send_str(orjson.dumps({"type": "hello", "nick": f"u{n}"}).decode())
                    await ws.receive(timeout=10)  # welcome
                    await ws.send_str(orjson.dumps({"type": "join", "room": "r"}).decode())
                    for _ in range(count + 10):  # presence of later joins may come first
                        frame = orjson.loads((await ws.receive(timeout=10)).data)
                        if frame["type"] == "joined":
                            break
                    sockets.append(ws)
                await asyncio.sleep(1.5)  # let the node's upkeep settle
                before = scripts(redis)
                start = time.perf_counter()
                await asyncio.gather(*(ws.close() for ws in sockets))
                members = count
                while members and time.perf_counter() - start < 30:
                    await asyncio.sleep(0.01)
                    members = redis.command("HLEN", "bench:{r}:members")
                took = time.perf_counter() - start
                ran = scripts(redis) - before
            print(f"K={count:4d}: {members} members left after {took:.2f} s; "
                  f"{ran} scripts ({ran / count:.1f} per session)", flush=True)
        finally:
            if node is not None:
                node.stop()
                for text in node.log.read_text().splitlines()[:5]:
                    if "persistence is weaker" not in text:
                        print(f"  node: {text[:300]}")
            redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="10,40,90,150")
    args = parser.parse_args()
    for count in (int(text) for text in args.clients.split(",")):
        asyncio.run(storm(count))


if __name__ == "__main__":
    main()

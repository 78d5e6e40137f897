"""Benchmark the CPU one delivery costs: one memory node against two nodes on Redis.

    .venv/bin/pip install uvloop   # if present, it runs the load
    .venv/bin/python bench/fanout.py [--receivers 500] [--messages 1000] [--rate 100]
                                     [--repeat 3] [--drain 10] [--setups memory,cluster]

Setups, each started afresh per run in a temporary directory, on free ports of
127.0.0.1 (the per-connection rate limit and the connection limits lifted):

- `memory`: one `python -m chat` with `history.backend: memory`;
- `cluster`: a `redis-server` (appendonly yes, appendfsync always, as tests/redisproc.py
  runs it) and two nodes with `history.backend: redis` on it.

The servers (nodes and redis-server) run on CPU 0 and this process, the load, on CPU 1
(taskset, as ../shared/bench does), when the machine has two CPUs or more.

`--receivers` clients say hello and join one room; with two nodes, receiver n connects
to node n % 2. One sender, on the (first) node, joins the room too and says `--messages`
messages at `--rate` per second (open loop: the sends follow the clock). Each text
carries its sequence number and send time (same process, perf_counter), so a receiver
reads its latency from the frame. After a short warm-up, the measured window runs from
the first send until every receiver has got every message, or `--drain` s after the last
send. Printed per run:

- deliveries/s: `message` frames the receivers got (the sender's own copy not counted),
  over the window; `lost`: receivers x messages minus that;
- latency p50/p99/max from send to receipt (at most 500 receivers record it);
- CPU µs per delivery: user + system CPU time (/proc) of the nodes, and of
  redis-server, over the window only, divided by the deliveries; `nodes+redis` the sum;
- `srv%`: the servers' CPU over the window, in % of one CPU (near 100: CPU 0 is full,
  the figure is the server's ceiling); `load%`: this process's own; `others`: cores the
  rest of the machine kept busy meanwhile (noise on a shared machine).

Then the median run of each setup and the ratio cluster / memory of the CPU per
delivery (medians, and per interleaved pair). Figures go in docs/benchmarks.md;
nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from common import (  # bench/ is sys.path[0] when run as a script
    ROOT,
    ChatProcess,
    busy_seconds,
    cpu_seconds,
    pinned,
)

sys.path.insert(0, str(ROOT))
from tests.redisproc import RedisServer

SETUPS = ("memory", "cluster")
ROOM = "fanout"
SERVER_CPU = 0
LOAD_CPU = 1
LATENCY_RECORDERS = 500


class Redis(RedisServer):
    def args(self) -> list[str]:
        return pinned(super().args(), SERVER_CPU)


class Node(ChatProcess):
    """`python -m chat` on a free port of 127.0.0.1 (on CPU 0), its stderr in a file."""

    def __init__(self, name: str, workdir: Path, redis_url: str | None) -> None:
        config: dict[str, Any] = {
            "history": {"backend": "memory"} if redis_url is None else {"backend": "redis"},
            # Receivers read nothing until all are connected (5000 take a while): the
            # heartbeat must not drop them meanwhile. Heartbeats are not measured here.
            "heartbeat": {"interval": 600, "timeout": 1200},
            # Neither the rate limit nor the connection limits may throttle the load.
            "limits": {"rate": {"messages": 1_000_000, "per": 1, "burst": 1_000_000},
                       "max_connections": 100_000, "max_connections_per_ip": 100_000},
        }
        if redis_url is not None:
            config["redis"] = {"url": redis_url, "prefix": "fanout"}
        super().__init__(config, workdir, name, label=f"node {name}", host="127.0.0.1",
                         cpu=SERVER_CPU, stop_timeout=15)


class Tally:
    """What the receivers got: counts, and latencies from the recording receivers."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.received = 0
        self.last = 0.0  # perf_counter of the latest delivery
        self.latencies: list[float] = []
        self.done = asyncio.Event()

    def reset(self, expected: int) -> None:
        self.expected = expected
        self.received = 0
        self.latencies = []
        self.done.clear()


async def receive(ws: aiohttp.ClientWebSocketResponse, tally: Tally, record: bool) -> None:
    """Count the room's messages on one receiver (and time them if `record`)."""
    try:
        await count(ws, tally, record)
    except (aiohttp.ClientError, ConnectionError) as err:
        print(f"  a receiver failed: {err!r}", flush=True)  # its messages count as lost


async def count(ws: aiohttp.ClientWebSocketResponse, tally: Tally, record: bool) -> None:
    async for msg in ws:
        if msg.type is not aiohttp.WSMsgType.TEXT:
            continue
        data = msg.data
        if '"type":"message"' not in data:
            continue
        now = time.perf_counter()
        tally.received += 1
        tally.last = now
        if record:
            sent = float(orjson.loads(data)["text"].split()[1])
            tally.latencies.append(now - sent)
        if tally.received >= tally.expected:
            tally.done.set()


async def drain_acks(ws: aiohttp.ClientWebSocketResponse, errors: list[str]) -> None:
    """The sender reads its acks and its own copies; error frames are kept."""
    async for msg in ws:
        if msg.type is aiohttp.WSMsgType.TEXT and '"type":"error"' in msg.data:
            errors.append(msg.data[:200])


async def member(http: aiohttp.ClientSession, url: str, nick: str
                 ) -> aiohttp.ClientWebSocketResponse:
    """A client that said hello and joined the room."""
    ws = await http.ws_connect(url, autoping=True, max_msg_size=0)
    await ws.send_str(orjson.dumps({"type": "hello", "nick": nick}).decode())
    frame = orjson.loads((await ws.receive(timeout=30)).data)
    if frame["type"] != "welcome":
        raise SystemExit(f"{nick}: no welcome but {frame}")
    await ws.send_str(orjson.dumps({"type": "join", "room": ROOM}).decode())
    while True:
        frame = orjson.loads((await ws.receive(timeout=30)).data)
        if frame["type"] == "joined":
            return ws
        if frame["type"] == "error":
            raise SystemExit(f"{nick}: {frame}")


async def gather_limited(factories: list[Callable[[], Coroutine[Any, Any, Any]]],
                         limit: int) -> list[Any]:
    results: list[Any] = [None] * len(factories)
    queue = iter(enumerate(factories))

    async def worker() -> None:
        for n, factory in queue:
            results[n] = await factory()

    await asyncio.gather(*(worker() for _ in range(limit)))
    return results


async def say_at_rate(ws: aiohttp.ClientWebSocketResponse, first: int, count: int,
                      rate: float) -> float:
    """Say `count` messages at `rate`/s (open loop); when the last one was sent."""
    start = time.perf_counter()
    for k in range(count):
        delay = start + k / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        seq = first + k
        await ws.send_str(orjson.dumps(
            {"type": "say", "room": ROOM, "text": f"{seq} {time.perf_counter():.6f}",
             "cid": f"c{seq}"}).decode())
    return time.perf_counter()


async def run(setup: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        redis: Redis | None = None
        nodes: list[Node] = []
        try:
            if setup == "memory":
                nodes.append(Node("memory", workdir, None))
            else:
                redis = Redis(workdir / "redis")
                redis.start()
                nodes += [Node(f"node{n}", workdir, redis.url) for n in range(2)]
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
            ) as http:
                result = await measure(setup, args, http, nodes, redis)
        finally:
            for node in nodes:
                node.stop()
            if redis is not None:
                redis.stop()
            for node in nodes:
                for text in node.log.read_text().splitlines()[:5]:
                    print(f"  {node.log.stem}: {text[:300]}", flush=True)
    print("  " + line(result), flush=True)
    return result


async def measure(setup: str, args: argparse.Namespace, http: aiohttp.ClientSession,
                  nodes: list[Node], redis: Redis | None) -> dict[str, Any]:
    receivers = args.receivers
    stride = max(1, receivers // LATENCY_RECORDERS)
    sender = await member(http, nodes[0].url, "sender")
    sockets = await gather_limited(
        [lambda n=n: member(http, nodes[n % len(nodes)].url, f"r{n}")  # type: ignore[misc]
         for n in range(receivers)], args.concurrency)
    warmup = min(50, args.messages)
    tally = Tally(receivers * warmup)
    errors: list[str] = []
    tasks = [asyncio.create_task(receive(ws, tally, n % stride == 0))
             for n, ws in enumerate(sockets)]
    tasks.append(asyncio.create_task(drain_acks(sender, errors)))
    # Warm-up: the first messages (Redis pools, pub/sub subscriptions, caches).
    await say_at_rate(sender, 0, warmup, args.rate)
    try:
        async with asyncio.timeout(args.drain + 30):
            await tally.done.wait()
    except TimeoutError:
        raise SystemExit(f"warm-up: {tally.received} of {tally.expected} deliveries") from None
    await asyncio.sleep(0.5)
    tally.reset(receivers * args.messages)

    servers = {f"node{n}": node.proc.pid for n, node in enumerate(nodes)}
    if redis is not None and redis.process is not None:
        servers["redis"] = redis.process.pid
    before = {name: cpu_seconds(pid) for name, pid in servers.items()}
    busy_before, load_before = busy_seconds(), time.process_time()
    start = time.perf_counter()
    last_sent = await say_at_rate(sender, warmup, args.messages, args.rate)
    try:
        async with asyncio.timeout(max(0.0, last_sent + args.drain - time.perf_counter())):
            await tally.done.wait()
    except TimeoutError:
        pass
    end = tally.last if tally.done.is_set() else time.perf_counter()
    spent = {name: cpu_seconds(pid) - before[name] for name, pid in servers.items()}
    load = time.process_time() - load_before
    wall = end - start
    others = (busy_seconds() - busy_before - sum(spent.values()) - load) / wall
    received = tally.received
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for ws in [sender, *sockets]:
        ws._writer.transport.abort()  # a close handshake each would only slow the end
    lat = sorted(tally.latencies)
    nodes_cpu = sum(v for k, v in spent.items() if k != "redis")
    redis_cpu = spent.get("redis")
    per = 1e6 / max(1, received)
    return {
        "setup": setup,
        "rate": received / wall,
        "lost": tally.expected - received,
        "p50": pct(lat, 0.50),
        "p99": pct(lat, 0.99),
        "max": lat[-1] * 1000 if lat else float("nan"),
        "nodes": nodes_cpu * per,
        "redis": None if redis_cpu is None else redis_cpu * per,
        "total": (nodes_cpu + (redis_cpu or 0.0)) * per,
        "srv": sum(spent.values()) / wall * 100,
        "load": load / wall * 100,
        "others": max(0.0, others),
        "errors": errors[:3],
    }


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(p * len(values)))] * 1000


HEADER = (f"{'setup':8} {'deliv/s':>8} {'lost':>6} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'max ms':>7}  {'CPU µs/delivery: nodes':>22} {'redis':>6} {'nodes+redis':>11}  "
          f"{'srv%':>5} {'load%':>5} {'others':>6}")


def line(r: dict[str, Any]) -> str:
    redis = "-" if r["redis"] is None else f"{r['redis']:.2f}"
    return (f"{r['setup']:8} {r['rate']:8.0f} {r['lost']:6d} {r['p50']:7.2f} {r['p99']:7.2f} "
            f"{r['max']:7.1f}  {r['nodes']:22.2f} {redis:>6} {r['total']:11.2f}  "
            f"{r['srv']:5.0f} {r['load']:5.0f} {r['others']:6.2f}"
            + "".join(f"  error: {e}" for e in r["errors"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setups", default=",".join(SETUPS))
    parser.add_argument("--receivers", type=int, default=500)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100.0, help="messages per second")
    parser.add_argument("--drain", type=float, default=10.0,
                        help="s to wait after the last send for the last deliveries")
    parser.add_argument("--concurrency", type=int, default=100,
                        help="receivers connecting at once")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per setup, interleaved; the median run is shown")
    args = parser.parse_args()
    setups = args.setups.split(",")
    for setup in setups:
        if setup not in SETUPS:
            parser.error(f"unknown setup {setup!r}; known: {', '.join(SETUPS)}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {LOAD_CPU})
    try:
        import uvloop
    except ImportError:
        runner, loop_name = asyncio.run, "asyncio"
    else:
        runner, loop_name = uvloop.run, "uvloop"
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, {platform.platform()}")
    print(f"{args.receivers} receivers in one room, 1 sender, {args.messages} messages at "
          f"{args.rate:g}/s; servers on CPU {SERVER_CPU}, load ({loop_name}) on CPU "
          f"{LOAD_CPU}")
    print(HEADER, flush=True)
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in setups}
    # Interleaved, so a burst of other load on the machine hits every setup alike.
    for _ in range(args.repeat):
        for setup in setups:
            runs[setup].append(runner(run(setup, args)))
    print(f"median of {args.repeat} interleaved runs (by CPU per delivery, nodes+redis):")
    print(HEADER)
    medians = {s: sorted(runs[s], key=lambda r: r["total"])[len(runs[s]) // 2]
               for s in setups}
    for setup in setups:
        print(line(medians[setup]))
    for setup in setups:
        for key in ("total", "p99"):
            print(f"{setup} {key} per run: "
                  + ", ".join(f"{r[key]:.2f}" for r in runs[setup])
                  + f" (median {statistics.median(r[key] for r in runs[setup]):.2f})")
    if set(SETUPS) <= set(setups):
        a, b = runs["memory"], runs["cluster"]
        for key, name in (("nodes", "nodes only"), ("total", "nodes + redis")):
            ratio = statistics.median(r[key] for r in b) / statistics.median(r[key] for r in a)
            print(f"cluster / memory CPU per delivery, {name}: {ratio:.2f}x (medians); "
                  "per interleaved pair: "
                  + ", ".join(f"{y[key] / x[key]:.2f}x" for x, y in zip(a, b, strict=True)))


if __name__ == "__main__":
    main()

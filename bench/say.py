"""Benchmark acknowledged `say` throughput and ack latency, per history backend.

    .venv/bin/python bench/say.py [--backends memory,sqlite] [--senders 50]
                                  [--seconds 5] [--rate 500] [--rate-seconds 5] [--repeat 3]

For each backend it starts `python -m chat` as a subprocess on a free port (a fresh
SQLite file in a temporary directory), then measures:

1. throughput: `--senders` clients each send `say` and wait for its `ack` in a loop
   (one in flight per client) for `--seconds`; acknowledged messages per second;
2. latency: the same clients share a fixed total rate of `--rate` messages per second
   for `--rate-seconds` (open loop: sends follow the clock, not the acks); p50/p99/max
   of the time from sending a `say` to receiving its `ack`.

With the throughput it prints the CPU time per acknowledged say of the server's event
loop (its main thread), of its other threads (SQLite's database thread) and of the
load generator (this process), read from /proc; how many of the machine's cores were
busy meanwhile; and, for a store that commits in groups (SQLite), its commits from the
server's /metrics: how many says each stored, how long each took, and the share of
the time the database thread spent committing (the rest it waited for work).

It prints one table. Figures go in docs/benchmarks.md; nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from common import (  # bench/ is sys.path[0] when run as a script
    ChatProcess,
    busy_seconds,
    scrape,
    thread_cpu_seconds,
)


class Server(ChatProcess):
    def __init__(self, backend: str, workdir: Path) -> None:
        config = {
            "history": {"backend": backend, "path": str(workdir / "bench.db")},
            # The benchmark measures storage, not the per-connection rate limit.
            "limits": {"rate": {"messages": 1_000_000, "per": 1, "burst": 1_000_000},
                       "max_connections_per_ip": 10_000},
        }
        super().__init__(config, workdir, backend, keep_log=False)


class Sender:
    """One client: says in `room` and resolves each say's future on its ack."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.waiting: dict[str, asyncio.Future[float]] = {}
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            # Only acks matter here; skipping the broadcasts unparsed keeps the load
            # generator's share of the machine (which the server also runs on) small.
            if msg.type is not aiohttp.WSMsgType.TEXT or '"ack"' not in msg.data:
                continue
            frame = orjson.loads(msg.data)
            if frame["type"] == "ack":
                future = self.waiting.pop(frame["cid"], None)
                if future is not None and not future.done():
                    future.set_result(time.perf_counter())

    async def say(self, room: str, cid: str) -> float:
        """Seconds from send to ack."""
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiting[cid] = future
        start = time.perf_counter()
        await self.ws.send_str(
            orjson.dumps({"type": "say", "room": room, "text": "benchmark text " * 4,
                          "cid": cid}).decode()
        )
        return await asyncio.wait_for(future, 30) - start


async def commits(http: aiohttp.ClientSession, server: Server) -> dict[str, float]:
    """The store's commit counters from /metrics: count, says and seconds so far."""
    samples = await scrape(http, server.http)
    return {name: samples.get(f"chat_history_commit_{name}", 0.0)
            for name in ("seconds_count", "messages_sum", "seconds_sum")}


async def connect_all(url: str, count: int, http: aiohttp.ClientSession) -> list[Sender]:
    senders = []
    for n in range(count):
        ws = await http.ws_connect(url, autoping=True)
        await ws.send_str(orjson.dumps({"type": "hello", "nick": f"bench{n}"}).decode())
        await ws.receive()  # welcome
        room = f"room{n % 5}"
        await ws.send_str(orjson.dumps({"type": "join", "room": room}).decode())
        while orjson.loads((await ws.receive()).data)["type"] != "joined":
            pass
        senders.append(Sender(ws))
    return senders


async def throughput(senders: list[Sender], seconds: float) -> float:
    deadline = time.perf_counter() + seconds
    done = 0

    async def loop(n: int, sender: Sender) -> None:
        nonlocal done
        k = 0
        while time.perf_counter() < deadline:
            await sender.say(f"room{n % 5}", f"t{n}-{k}")
            k += 1
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(loop(n, s) for n, s in enumerate(senders)))
    return done / (time.perf_counter() - start)


async def latency(senders: list[Sender], rate: float, seconds: float) -> list[float]:
    total = int(rate * seconds)
    interval = 1.0 / rate
    start = time.perf_counter()
    tasks = []
    for k in range(total):
        delay = start + k * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        n = k % len(senders)
        tasks.append(asyncio.create_task(senders[n].say(f"room{n % 5}", f"l{k}")))
    return sorted(await asyncio.gather(*tasks))


def pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(p * len(values)))] * 1000


async def run(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(backend, Path(tmp))
        try:
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0)
            ) as http:
                senders = await connect_all(server.url, args.senders, http)
                await throughput(senders, 1.0)  # warm up
                pid = server.proc.pid
                before, gen_before = thread_cpu_seconds(pid), time.process_time()
                busy_before, commits_before = busy_seconds(), await commits(http, server)
                started = time.perf_counter()
                rate = await throughput(senders, args.seconds)
                wall = time.perf_counter() - started
                says = rate * wall
                after, gen = thread_cpu_seconds(pid), time.process_time() - gen_before
                busy = (busy_seconds() - busy_before) / wall
                spent = {name: value - commits_before[name]
                         for name, value in (await commits(http, server)).items()}
                lat = await latency(senders, args.rate, args.rate_seconds)
                for sender in senders:
                    await sender.ws.close()
                    sender.reader.cancel()
        finally:
            server.stop()
    return {
        "backend": backend,
        "throughput": rate,
        "p50": pct(lat, 0.50),
        "p99": pct(lat, 0.99),
        "max": lat[-1] * 1000,
        "mean": statistics.fmean(lat) * 1000,
        # CPU µs per acknowledged say in the throughput phase: the server's main thread
        # (the event loop), its other threads (SQLite's database thread), this process.
        "loop": (after["main"] - before["main"]) / says * 1e6,
        "threads": sum(after[name] - before.get(name, 0.0)
                       for name in after if name != "main") / says * 1e6,
        "gen": gen / says * 1e6,
        "busy": busy,
        # Group commits in the throughput phase (none for memory): says each stored, ms
        # each took, and the share of the phase the database thread spent in them.
        "per_commit": spent["messages_sum"] / spent["seconds_count"]
        if spent["seconds_count"] else None,
        "commit_ms": spent["seconds_sum"] / spent["seconds_count"] * 1000
        if spent["seconds_count"] else None,
        "committing": spent["seconds_sum"] / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="memory,sqlite")
    parser.add_argument("--senders", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--rate-seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per backend, interleaved; the median run is shown")
    args = parser.parse_args()
    backends = args.backends.split(",")
    runs: dict[str, list[dict[str, Any]]] = {b: [] for b in backends}
    # Interleaved, so a burst of other load on the machine hits every backend alike.
    for _ in range(args.repeat):
        for backend in backends:
            runs[backend].append(asyncio.run(run(backend, args)))
    results = [
        sorted(runs[b], key=lambda r: r["throughput"])[len(runs[b]) // 2] for b in backends
    ]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, {platform.platform()}")
    print(f"{args.senders} senders, one say in flight each; latency at {args.rate:g}/s; "
          f"median of {args.repeat} interleaved runs")
    print(f"{'backend':8} {'acked say/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
          "  CPU µs/say: loop  other threads  load  busy cores")
    for r in results:
        print(f"{r['backend']:8} {r['throughput']:12.0f} {r['p50']:8.2f} "
              f"{r['p99']:8.2f} {r['max']:8.2f}  {r['loop']:15.0f} {r['threads']:14.0f}"
              f" {r['gen']:5.0f} {r['busy']:11.2f}")
    for r in results:
        if r["per_commit"] is not None:
            print(f"{r['backend']} commits: {r['per_commit']:.1f} says each, "
                  f"{r['commit_ms']:.2f} ms each, committing {r['committing']:.0%} of the time")
    if len(results) == 2:
        first, second = backends
        print(f"{second} / {first} throughput: "
              f"{results[1]['throughput'] / results[0]['throughput']:.0%} (medians)")
        # Each interleaved pair ran back to back, so its ratio shows the spread.
        pairs = [
            b["throughput"] / a["throughput"]
            for a, b in zip(runs[first], runs[second], strict=True)
        ]
        print("per interleaved run: " + ", ".join(f"{ratio:.0%}" for ratio in pairs))
        print(f"{first} runs: " + ", ".join(f"{r['throughput']:.0f}" for r in runs[first]))
        print(f"{second} runs: " + ", ".join(f"{r['throughput']:.0f}" for r in runs[second]))


if __name__ == "__main__":
    main()

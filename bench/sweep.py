"""Benchmark the cleanup coroutine's sweep over many idle connections.

    .venv/bin/python bench/sweep.py [--connections 10000] [--seconds 5] [--repeat 3]
                                    [--concurrency 100] [--micro-peers 10000]

Per run, a fresh `python -m chat` (history.backend memory, the server's default event
loop) is started on a free port of 127.0.0.1 with `cleanup.interval: 0.1`, a heartbeat
of 3600 s / 7200 s (so that no connection is pinged or dropped during the run) and
connection limits above `--connections`. The server is pinned to CPU 0 (taskset) and
this process (the clients) to CPU 1 when there are two CPUs or more.

`--connections` real WebSocket connections are opened, at most `--concurrency` at a
time; each says `hello` and reads its `welcome`, then stays idle. Once all are
connected, `/metrics` is read, again `--seconds` later, and the difference of the two
readings of the `chat_cleanup_sweep_seconds` histogram gives the sweeps made while all
of them were connected: their count, mean (`_sum` / `_count`), the bucket bound under
which the median, p99 and slowest of them fell (the histogram's resolution: 0.5, 1, 2,
3, 5, 7.5, 10, 15, 20, 50 ms...). The run is counted only if `chat_connections` was the
full number at both readings.

Also printed: the cost of the pure decision, `chat.heartbeat.sweep()`, over
`--micro-peers` peers measured in this process with time.perf_counter (no stall to
discount, and with one recent stall), best and median of 50 calls.

Figures go in docs/benchmarks.md; nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from common import ROOT, ChatProcess, busy_seconds, cpu_seconds  # bench/: sys.path[0]

sys.path.insert(0, str(ROOT))
from chat.heartbeat import Stall, sweep

METRIC = "chat_cleanup_sweep_seconds"


def raise_nofile() -> int:
    """Raise this process's soft open-file limit to the hard one; the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


class Server(ChatProcess):
    """`python -m chat` on a free port, tuned so that idle connections stay untouched."""

    def __init__(self, workdir: Path, connections: int) -> None:
        config: dict[str, Any] = {
            "history": {"backend": "memory"},
            # Nobody is quiet for an hour: no ping is sent and nobody is dropped, so a
            # sweep measures the decision over all connections and nothing else.
            "heartbeat": {"interval": 3600, "timeout": 7200},
            "cleanup": {"interval": 0.1},
            "limits": {"max_connections": connections + 1000,
                       "max_connections_per_ip": connections + 1000},
        }
        super().__init__(config, workdir, "sweep", host="127.0.0.1", cpu=0,
                         stop_timeout=30)


@dataclass
class Histogram:
    count: float
    total: float
    buckets: dict[float, float]  # upper bound -> cumulative count

    def minus(self, earlier: Histogram) -> Histogram:
        return Histogram(self.count - earlier.count, self.total - earlier.total,
                         {le: n - earlier.buckets.get(le, 0.0)
                          for le, n in self.buckets.items()})

    def spread(self) -> dict[float, float]:
        """Sweeps per bucket (not cumulative), the empty buckets left out."""
        spread, below = {}, 0.0
        for le in sorted(self.buckets):
            if self.buckets[le] > below:
                spread[le] = self.buckets[le] - below
            below = self.buckets[le]
        return spread

    def bound(self, rank: float) -> float:
        """The smallest bucket bound under which at least `rank` of the sweeps fell."""
        need = rank * self.count
        for le in sorted(self.buckets):
            if self.buckets[le] >= need:
                return le
        return float("inf")


def parse(text: str) -> tuple[Histogram, float]:
    """The sweep histogram and the chat_connections gauge from a /metrics page."""
    buckets: dict[float, float] = {}
    count = total = connections = 0.0
    for line in text.splitlines():
        if line.startswith(f"{METRIC}_bucket"):
            le = re.search(r'le="([^"]+)"', line)
            assert le is not None
            buckets[float(le.group(1))] = float(line.rsplit(" ", 1)[1])
        elif line.startswith(f"{METRIC}_count "):
            count = float(line.split()[1])
        elif line.startswith(f"{METRIC}_sum "):
            total = float(line.split()[1])
        elif line.startswith("chat_connections "):
            connections = float(line.split()[1])
    return Histogram(count, total, buckets), connections


async def scrape(http: aiohttp.ClientSession, base: str) -> tuple[Histogram, float]:
    async with http.get(base + "/metrics") as response:
        return parse(await response.text())


async def open_all(http: aiohttp.ClientSession, url: str, count: int,
                   concurrency: int) -> list[aiohttp.ClientWebSocketResponse]:
    """`count` connections that said hello and got their welcome, `concurrency` at a time."""
    sockets: list[aiohttp.ClientWebSocketResponse] = []
    queue = iter(range(count))

    async def worker() -> None:
        for n in queue:
            for attempt in range(5):
                try:
                    ws = await http.ws_connect(url, autoping=False, max_msg_size=0)
                    break
                except (aiohttp.ClientError, OSError):
                    if attempt == 4:
                        raise
                    await asyncio.sleep(0.2)
            await ws.send_str(orjson.dumps({"type": "hello", "nick": f"idle{n}"}).decode())
            frame = await ws.receive(timeout=30)
            if frame.type is not aiohttp.WSMsgType.TEXT or '"welcome"' not in frame.data:
                raise SystemExit(f"idle{n}: no welcome but {frame.type} {frame.data!r:.200}")
            sockets.append(ws)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sockets


async def run(args: argparse.Namespace) -> dict[str, Any] | None:
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp), args.connections)
        sockets: list[aiohttp.ClientWebSocketResponse] = []
        try:
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=True),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
            ) as http:
                started = time.perf_counter()
                sockets = await open_all(http, server.url, args.connections,
                                         args.concurrency)
                opened = time.perf_counter() - started
                await asyncio.sleep(1.0)  # let the last handshakes settle
                before, at_start = await scrape(http, server.http)
                cpu_before, busy_before = cpu_seconds(server.proc.pid), busy_seconds()
                own_before, wall_before = time.process_time(), time.perf_counter()
                await asyncio.sleep(args.seconds)
                after, at_end = await scrape(http, server.http)
                wall = time.perf_counter() - wall_before
                server_cpu = cpu_seconds(server.proc.pid) - cpu_before
                # Cores other work kept busy meanwhile (the machine may be shared).
                others = (busy_seconds() - busy_before - server_cpu
                          - (time.process_time() - own_before)) / wall
                for ws in sockets:
                    ws._writer.transport.abort()  # a close handshake each would take long
        finally:
            server.stop()
            lines = server.log.read_text().splitlines()
            for text in lines[:5]:
                print(f"  server: {text[:300]}", flush=True)
    # The cleanup coroutine takes a wake-up more than 1 s late for a stall of the process
    # (heartbeat.stall_between) and discounts it from every peer's silence for
    # heartbeat.timeout (here two hours), a slower path of sweep(): such runs are flagged.
    stalls = sum("did not run for" in text for text in lines)
    if at_start != args.connections or at_end != args.connections:
        print(f"  run discarded: chat_connections {at_start:.0f} then {at_end:.0f}, "
              f"not {args.connections}", flush=True)
        return None
    window = after.minus(before)
    result = {
        "sweeps": window.count,
        "mean": window.total / window.count * 1000 if window.count else float("nan"),
        "p50": window.bound(0.50) * 1000,
        "p99": window.bound(0.99) * 1000,
        "max": window.bound(1.0) * 1000,
        "stalls": stalls,
        "server": server_cpu / wall * 100,
        "others": max(0.0, others),
        "opened": opened,
        "buckets": window.spread(),
    }
    print("  " + line(result), flush=True)
    return result


def line(r: dict[str, Any]) -> str:
    return (f"{r['sweeps']:6.0f} sweeps  mean {r['mean']:6.2f} ms  p50 <= {r['p50']:g} ms  "
            f"p99 <= {r['p99']:g} ms  max <= {r['max']:g} ms  ({r['opened']:.1f} s to "
            f"connect; {r['stalls']} stalls logged; server CPU {r['server']:.0f} %, others "
            f"{r['others']:.2f} cores)")


@dataclass(eq=False, slots=True)
class FakePeer:
    last_seen: float


class DictPeer:
    """A peer kept like chat.connection.Connection: many attributes in an instance dict."""

    def __init__(self, last_seen: float) -> None:
        self.ws = self.transport = self.session = None
        self.id, self.remote = "", "127.0.0.1"
        self.opened = self.last_seen = last_seen
        self.rooms: set[str] = set()
        self.pending: dict[str, Any] = {}
        self.typing_at: dict[str, float] = {}
        self.errors_in_row = 0


def micro(peers: int, calls: int = 50) -> None:
    """The pure decision alone, over `peers` peers none of which is quiet or dead."""
    now = 1_000_000.0
    stall = (Stall(now - 5.0, now - 4.0),)
    for kind in (FakePeer, DictPeer):
        # A set, as hub.connections is.
        population = {kind(now - (n % 1000) * 0.001) for n in range(peers)}
        for name, stalls in (("no stall", ()), ("one recent stall", stall)):
            times = []
            for _ in range(calls):
                start = time.perf_counter()
                found = sweep(population, now, 3600.0, 7200.0, stalls)
                times.append(time.perf_counter() - start)
                assert not found.dead and not found.quiet
            print(f"sweep() over {peers} {kind.__name__}s, {name}: best "
                  f"{min(times) * 1000:.2f} ms, median {statistics.median(times) * 1000:.2f} "
                  f"ms ({calls} calls)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="the window between the two readings of /metrics")
    parser.add_argument("--concurrency", type=int, default=100,
                        help="connections being opened at once")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--micro-peers", type=int, default=10_000)
    args = parser.parse_args()
    limit = raise_nofile()
    if limit < args.connections + 100:
        parser.error(f"open-file limit {limit} is too low for {args.connections} "
                     "connections (raise the hard limit: ulimit -Hn)")
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, {platform.platform()}")
    micro(args.micro_peers)
    print(f"{args.connections} idle connections (hello, no room), cleanup.interval 0.1 s; "
          f"sweeps over {args.seconds:g} s with all connected:", flush=True)
    runs = [r for r in (asyncio.run(run(args)) for _ in range(args.repeat)) if r is not None]
    if not runs:
        raise SystemExit("no run kept all its connections")
    summary(runs, f"median of {len(runs)} runs")
    clean = [r for r in runs if not r["stalls"]]
    if clean and len(clean) < len(runs):
        summary(clean, f"median of the {len(clean)} runs without a stall")


def summary(runs: list[dict[str, Any]], title: str) -> None:
    print(f"{title}: mean {statistics.median(r['mean'] for r in runs):.2f} ms, max <= "
          f"{statistics.median(r['max'] for r in runs):g} ms; slowest run's max <= "
          f"{max(r['max'] for r in runs):g} ms; means per run: "
          + ", ".join(f"{r['mean']:.2f}" for r in runs))
    print("  buckets of the median run (ms bound: sweeps): " + ", ".join(
        f"{le * 1000:g}: {n:.0f}"
        for le, n in sorted(runs, key=lambda r: r["mean"])[len(runs) // 2]["buckets"].items()))


if __name__ == "__main__":
    main()

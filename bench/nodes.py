"""Benchmark two chat nodes on one Redis against one SQLite node.

    .venv/bin/python bench/nodes.py [--setups sqlite,always,everysec] [--senders 50]
                                    [--seconds 5] [--rate 500] [--rate-seconds 5]
                                    [--repeat 3] [--quiet 0.25] [--profile DIR]

Also: the nodes' log lines (but for everysec's expected warning) and any `say`
answered with an error (such as `unavailable` when redis-py's pool runs out; see
docs/benchmarks.md) are printed with the run.

Setups, each started afresh per run in a temporary directory, with `python -m chat`
subprocesses on free ports of 127.0.0.1 (the per-connection rate limit lifted):

- `sqlite`: one node, `history.backend: sqlite` (WAL, synchronous=FULL);
- `always`: a `redis-server` with `appendonly yes` + `appendfsync always`, and two
  nodes with `history.backend: redis` on it;
- `everysec`: the same with `appendfsync everysec`.

`--senders` clients join 5 rooms (`room{n % 5}`); with two nodes, sender n connects to
node n % 2, so every room has members on both nodes. Measured, as in bench/say.py:

1. throughput: each sender says and waits for its `ack`, in a loop (one in flight per
   sender), for `--seconds`; acknowledged messages per second, all nodes together;
2. at a fixed total rate of `--rate` say/s for `--rate-seconds` (open loop):
   - ack latency: from sending a `say` to receiving its `ack`;
   - delivery latency: from sending a `say` to a member of the room receiving the
     `message`, on the other node (the cross-node path: Redis pub/sub to node B, then
     node B's fan-out) and on the sender's own node. One sender per room and node
     parses the broadcasts in this phase; every other client skips them unparsed, to
     keep the load generator's share of the two cores small.

Runs of the setups are interleaved; every run is printed, then the median run (by
throughput) of each setup, and the same over the runs during which the rest of the
machine kept fewer than `--quiet` cores busy. Also printed: the CPU time per
acknowledged say of the nodes, redis-server and the load generator (throughput phase),
the cores the rest of the machine kept busy meanwhile (`others`: other people's work on
a shared machine), and Redis's longest stall of the latency phase (its latency monitor).
`--profile DIR` runs `py-spy record` (raw collapsed stacks) on every node during each
phase of each run; it costs CPU, so figures from a profiled run are not the benchmark's.
Figures go in docs/benchmarks.md; nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from common import (  # bench/ is sys.path[0] when run as a script
    ROOT,
    ChatProcess,
    busy_seconds,
    cpu_seconds,
    scrape,
)
from say import Sender, pct

sys.path.insert(0, str(ROOT))
from tests.redisproc import RedisServer

ROOMS = 5
SETUPS = ("sqlite", "always", "everysec")
DEFAULT_SETUPS = "sqlite,always,everysec"


class Redis(RedisServer):
    """tests.redisproc's redis-server, with the append-only file fsynced `fsync`."""

    def __init__(self, directory: Path, fsync: str) -> None:
        super().__init__(directory)
        self.fsync = fsync

    def args(self) -> list[str]:
        args = super().args()
        # Redis's latency monitor records its own stalls (an fsync, a slow command) of
        # 1 ms or more: the stalls of the latency phase are printed with its figures.
        return [*args[: args.index("--appendfsync") + 1], self.fsync,
                *args[args.index("--appendfsync") + 2:], "--latency-monitor-threshold", "1"]

    def stalls(self) -> tuple[float, str]:
        """The longest stall since the last call, in ms, and its event; then reset."""
        events = self.command("LATENCY", "LATEST")
        self.command("LATENCY", "RESET")
        worst = max(events, key=lambda event: int(event[3]), default=None)
        return (0.0, "-") if worst is None else (float(worst[3]), worst[0].decode())


class Node(ChatProcess):
    """`python -m chat` on a free port of 127.0.0.1, with its stderr kept in a file."""

    def __init__(self, name: str, history: dict[str, Any], redis_url: str | None,
                 workdir: Path) -> None:
        config: dict[str, Any] = {
            "history": history,
            # The benchmark measures the backend, not the per-connection rate limit.
            "limits": {"rate": {"messages": 1_000_000, "per": 1, "burst": 1_000_000},
                       "max_connections_per_ip": 10_000},
        }
        if redis_url is not None:
            config["redis"] = {"url": redis_url, "prefix": "bench"}
        super().__init__(config, workdir, name, label=f"node {name}", host="127.0.0.1")


class Probe:
    """Send times by cid, and the delivery latencies the observers record."""

    def __init__(self) -> None:
        self.sent: dict[str, tuple[float, int]] = {}
        self.other: list[float] = []  # received on a node other than the sender's
        self.same: list[float] = []  # received on the sender's own node
        self.errors: Counter[str] = Counter()  # says answered with an error, by code


class SayError(Exception):
    """A say answered with an `error` frame; the argument is its code."""


class Member(Sender):
    """A sender on node `node`; as an observer it also times the room's messages."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, node: int, probe: Probe,
                 observer: bool) -> None:
        self.node = node
        self.probe = probe
        self.observer = observer
        self.watching = False
        super().__init__(ws)

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            data = msg.data
            now = time.perf_counter()
            if '"ack"' in data:
                frame = orjson.loads(data)
                if frame["type"] == "ack":
                    future = self.waiting.pop(frame["cid"], None)
                    if future is not None and not future.done():
                        future.set_result(now)
            elif '"type":"error"' in data:
                # A say answered with an error (`unavailable`, say) is counted, not waited for.
                frame = orjson.loads(data)
                future = self.waiting.pop(frame.get("ref") or "", None)
                if future is not None and not future.done():
                    future.set_exception(SayError(frame["code"]))
                else:
                    print(f"  error frame: {data[:200]}", flush=True)
            elif self.watching and '"type":"message"' in data:
                frame = orjson.loads(data)
                sent = self.probe.sent.get(frame["cid"])
                if sent is not None:
                    start, node = sent
                    (self.probe.same if node == self.node else self.probe.other).append(
                        now - start)


async def connect_all(urls: list[str], count: int, http: aiohttp.ClientSession,
                      probe: Probe) -> list[Member]:
    members = []
    for n in range(count):
        node = n % len(urls)
        ws = await http.ws_connect(urls[node], autoping=True)
        await ws.send_str(orjson.dumps({"type": "hello", "nick": f"bench{n}"}).decode())
        await ws.receive(timeout=10)  # welcome
        await ws.send_str(orjson.dumps({"type": "join", "room": f"room{n % ROOMS}"}).decode())
        for _ in range(100):
            if orjson.loads((await ws.receive(timeout=10)).data)["type"] == "joined":
                break
        else:
            raise SystemExit(f"bench{n}: no joined")
        # Senders 0 .. 2*ROOMS-1 cover every room on both nodes (ROOMS is odd).
        members.append(Member(ws, node, probe, observer=n < ROOMS * len(urls)))
    return members


async def say(member: Member, room: str, cid: str, probe: Probe) -> float | None:
    """Seconds from send to ack; None, counted in `probe.errors`, for no ack."""
    try:
        return await member.say(room, cid)
    except SayError as err:
        probe.errors[err.args[0]] += 1
    except TimeoutError:
        probe.errors["no answer in 30 s"] += 1
    return None


async def throughput(members: list[Member], seconds: float, probe: Probe) -> float:
    deadline = time.perf_counter() + seconds
    done = 0

    async def loop(n: int, member: Member) -> None:
        nonlocal done
        k = 0
        while time.perf_counter() < deadline:
            if await say(member, f"room{n % ROOMS}", f"t{n}-{k}", probe) is not None:
                done += 1
            k += 1

    start = time.perf_counter()
    await asyncio.gather(*(loop(n, m) for n, m in enumerate(members)))
    return done / (time.perf_counter() - start)


async def latency(members: list[Member], probe: Probe, rate: float, seconds: float,
                  nodes: int) -> tuple[list[float], int]:
    """Ack latencies, and how many messages no observer on another node received."""
    for member in members:
        member.watching = member.observer
    total = int(rate * seconds)
    interval = 1.0 / rate

    async def one(member: Member, room: str, cid: str) -> float | None:
        probe.sent[cid] = (time.perf_counter(), member.node)
        return await say(member, room, cid, probe)

    start = time.perf_counter()
    tasks = []
    for k in range(total):
        delay = start + k * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        n = k % len(members)
        tasks.append(asyncio.create_task(one(members[n], f"room{n % ROOMS}", f"l{k}")))
    acks = sorted(ack for ack in await asyncio.gather(*tasks) if ack is not None)
    # Each message has one observer on its sender's node and, with two nodes, one on
    # the other: wait (bounded) for the last deliveries of the acknowledged ones.
    acked = len(acks)
    for _ in range(100):  # 5 s at most
        if len(probe.same) >= acked and (nodes == 1 or len(probe.other) >= acked):
            break
        await asyncio.sleep(0.05)
    for member in members:
        member.watching = False
    missing = max(0, acked - len(probe.other)) if nodes > 1 else 0
    return acks, missing + max(0, acked - len(probe.same))


class Profiler:
    """py-spy on every node for one phase; collapsed stacks in `directory`."""

    def __init__(self, directory: Path | None, label: str, nodes: list[Node]) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        if directory is None:
            return
        pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        directory.mkdir(parents=True, exist_ok=True)
        for n, node in enumerate(nodes):
            self.procs.append(subprocess.Popen(
                [pyspy, "record", "--format", "raw", "--rate", "200", "--nonblocking",
                 "-p", str(node.proc.pid), "-o", str(directory / f"{label}-node{n}.txt")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(2)  # SIGINT: py-spy writes its file and exits
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


async def run(setup: str, index: int, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        redis: Redis | None = None
        nodes: list[Node] = []
        try:
            if setup == "sqlite":
                nodes.append(Node("sqlite", {"backend": "sqlite",
                                             "path": str(workdir / "bench.db")},
                                  None, workdir))
            else:
                redis = Redis(workdir / "redis", setup)
                redis.start()
                for n in range(2):
                    nodes.append(
                        Node(f"node{n}", {"backend": "redis"}, redis.url, workdir)
                    )
            probe = Probe()
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0)
            ) as http:
                members = await connect_all([node.url for node in nodes], args.senders,
                                            http, probe)
                await throughput(members, 1.0, probe)  # warm up (Redis connection pools grow)
                profiler = Profiler(args.profile, f"{setup}{index}-throughput", nodes)
                pids = [node.proc.pid for node in nodes]
                if redis is not None and redis.process is not None:
                    pids.append(redis.process.pid)
                before = [cpu_seconds(pid) for pid in pids]
                gen_before = time.process_time()
                busy_before, wall_before = busy_seconds(), time.perf_counter()
                rate = await throughput(members, args.seconds, probe)
                # Cores busy with other work than this benchmark's (the machine is shared).
                ours = sum(cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True)) \
                    + time.process_time() - gen_before
                wall = time.perf_counter() - wall_before
                others = (busy_seconds() - busy_before - ours) / wall
                # CPU per acknowledged say, in µs: where the two cores went.
                said = rate * args.seconds
                cpu = [
                    (cpu_seconds(pid) - b) / said * 1e6
                    for pid, b in zip(pids, before, strict=True)
                ]
                gen_cpu = (time.process_time() - gen_before) / said * 1e6
                profiler.stop()
                if redis is not None:
                    redis.stalls()  # reset: only the latency phase's stalls count
                profiler = Profiler(args.profile, f"{setup}{index}-latency", nodes)
                acks, missing = await latency(members, probe, args.rate, args.rate_seconds,
                                              len(nodes))
                profiler.stop()
                stall = redis.stalls() if redis is not None else None
                gaps = 0
                for node in nodes:
                    gaps += int((await scrape(http, node.http)).get("chat_redis_gaps_total", 0))
                for member in members:
                    await member.ws.close()
                    member.reader.cancel()
        finally:
            for node in nodes:
                node.stop()
            if redis is not None:
                redis.stop()
            # What the nodes logged, but for the warning everysec is expected to give.
            for node in nodes:
                lines = [text for text in node.log.read_text().splitlines()
                         if text and "persistence is weaker" not in text]
                for text in lines[:5]:
                    print(f"  {node.log.stem}: {text[:300]}", flush=True)
    other = sorted(probe.other)
    same = sorted(probe.same)
    result = {
        "setup": setup,
        "throughput": rate,
        "p50": pct(acks, 0.50),
        "p99": pct(acks, 0.99),
        "max": acks[-1] * 1000,
        "mean": statistics.fmean(acks) * 1000,
        "x50": pct(other, 0.50) if other else None,
        "x99": pct(other, 0.99) if other else None,
        "xmax": other[-1] * 1000 if other else None,
        "s50": pct(same, 0.50),
        "s99": pct(same, 0.99),
        "missing": missing,
        "gaps": gaps,
        "cpu_nodes": sum(cpu[: len(nodes)]),
        "cpu_redis": cpu[len(nodes)] if redis is not None else None,
        "cpu_gen": gen_cpu,
        "stall": stall,
        "errors": dict(probe.errors),
        "others": max(0.0, others),
    }
    print("  " + line(result), flush=True)
    return result


HEADER = (f"{'setup':8} {'acked say/s':>11} {'ack p50':>8} {'ack p99':>8} {'ack max':>8} "
          f"{'B p50':>7} {'B p99':>7} {'B max':>7} {'A p50':>7} {'A p99':>7} {'lost':>4} "
          f"{'gaps':>4}  {'CPU µs/say: nodes':>17} {'redis':>5} {'gen':>4} {'others':>6}  "
          "redis stall")


def line(r: dict[str, Any]) -> str:
    def ms(value: float | None, width: int = 7) -> str:
        return f"{'-':>{width}}" if value is None else f"{value:{width}.2f}"

    redis_cpu = "-" if r["cpu_redis"] is None else f"{r['cpu_redis']:.0f}"
    return (f"{r['setup']:8} {r['throughput']:11.0f} {ms(r['p50'], 8)} {ms(r['p99'], 8)} "
            f"{ms(r['max'], 8)} {ms(r['x50'])} {ms(r['x99'])} {ms(r['xmax'])} "
            f"{ms(r['s50'])} {ms(r['s99'])} {r['missing']:4d} {r['gaps']:4d}  "
            f"{r['cpu_nodes']:17.0f} {redis_cpu:>5} {r['cpu_gen']:4.0f} {r['others']:6.2f}  "
            + ("-" if r["stall"] is None else f"{r['stall'][0]:.0f} ms {r['stall'][1]}")
            + "".join(f"  {code}: {n}" for code, n in r["errors"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setups", default=DEFAULT_SETUPS)
    parser.add_argument("--senders", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--rate-seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per setup, interleaved; the median run is shown")
    parser.add_argument("--quiet", type=float, default=0.25,
                        help="also summarise the runs during which other work kept fewer "
                             "than this many cores busy")
    parser.add_argument("--profile", type=Path, default=None,
                        help="py-spy record every node into this directory")
    args = parser.parse_args()
    setups = args.setups.split(",")
    for setup in setups:
        if setup not in SETUPS:
            parser.error(f"unknown setup {setup!r}; known: {', '.join(SETUPS)}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, {platform.platform()}")
    print(f"{args.senders} senders in {ROOMS} rooms, one say in flight each; latencies at "
          f"{args.rate:g}/s; ms. B: delivered on the other node, A: on the sender's node")
    print(HEADER, flush=True)
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in setups}
    # Interleaved, so a burst of other load on the machine hits every setup alike.
    for index in range(args.repeat):
        for setup in setups:
            runs[setup].append(asyncio.run(run(setup, index, args)))
    summary(runs, setups, f"median of {args.repeat} interleaved runs (by throughput)")
    # The same over the runs the rest of the machine left alone, chosen by a rule fixed
    # in advance (every run is printed above): on a shared machine these are the figures
    # of the code, the ones above include other people's work.
    quiet = {s: [r for r in runs[s] if r["others"] < args.quiet] for s in setups}
    if any(len(quiet[s]) < len(runs[s]) for s in setups) and all(quiet.values()):
        summary(quiet, setups, f"runs with others < {args.quiet:g} cores only "
                f"({', '.join(f'{s} {len(quiet[s])}' for s in setups)})", pairs=False)


def summary(runs: dict[str, list[dict[str, Any]]], setups: list[str], title: str,
            pairs: bool = True) -> None:
    print(f"{title}:")
    print(HEADER)
    medians = {s: sorted(runs[s], key=lambda r: r["throughput"])[len(runs[s]) // 2]
               for s in setups}
    for setup in setups:
        print(line(medians[setup]))
    if "sqlite" in setups:
        for setup in setups:
            if setup == "sqlite":
                continue
            text = (f"{setup} / sqlite throughput: "
                    f"{medians[setup]['throughput'] / medians['sqlite']['throughput']:.0%} "
                    f"(medians)")
            if pairs:
                text += "; per interleaved run: " + ", ".join(
                    f"{b['throughput'] / a['throughput']:.0%}"
                    for a, b in zip(runs["sqlite"], runs[setup], strict=True))
            print(text)
    # The latencies of the median-throughput run are one sample; these are all of them.
    for setup in setups:
        for key, name in (("p99", "ack p99"), ("x99", "B p99")):
            values = [r[key] for r in runs[setup] if r[key] is not None]
            if values:
                print(f"{setup} {name} per run: " + ", ".join(f"{v:.2f}" for v in values)
                      + f" ms (median {statistics.median(values):.2f})")


if __name__ == "__main__":
    main()

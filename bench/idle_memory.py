"""Where the memory of one idle WebSocket connection goes.

    .venv/bin/python bench/idle_memory.py [--connections N] [--loop uvloop|asyncio]
                                          [--top 25] [--warmup 50]

Serves the real app in this process (`create_app`, memory history, heartbeat 10/30 s,
connection limits lifted) with aiohttp's `AppRunner` + `TCPSite` on 127.0.0.1, on the
chosen loop. A client subprocess (aiohttp's client) opens N connections; each sends
`hello` and waits for `welcome`, then they stay open and only ping, every
`heartbeat.interval` (a round under tracemalloc can outlast the 30 s timeout, and an
idle client pings anyway; the client reads what it is sent). The server is measured
while all N are idle, in two rounds with a fresh client each (after `--warmup`
connections have come and gone, so one-time costs such as caches are not counted):

1. no tracing: RSS growth per connection (VmRSS, after `gc.collect()`), object counts by
   type (`gc.get_objects()`, which sees only objects the collector tracks: no str,
   bytes, int or float, and no dict that never held a container), the growth of the
   hub's own containers, and the `sys.getsizeof` of what chat holds for one connection;
2. `tracemalloc.start(25)`: Python allocations per connection by site and by category
   (tracing costs memory of its own, which is why RSS is read in round 1).

tracemalloc sees Python's allocators only: RSS also holds the allocator's overhead
and free lists, and C buffers allocated with malloc. The kernel's socket buffers are
not in RSS at all. Nothing asserts on sizes; the script prints what it finds.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import resource
import subprocess
import sys
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chat.app import create_app  # noqa: E402
from chat.config import Config, config_from_mapping  # noqa: E402
from chat.connection import Connection  # noqa: E402
from chat.hub import Hub  # noqa: E402
from chat.keys import HUB  # noqa: E402
from chat.server import handler_options  # noqa: E402
from chat.ws import Requests  # noqa: E402

# The client: opens N connections (hello, welcome), says "ready", holds them (pinging
# every INTERVAL) until a line arrives on stdin, closes them all and says "closed".
CLIENT = r"""
import asyncio, json, resource, sys, time
import aiohttp

async def main(url, n, prefix, interval):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        socks, readers = [], []
        async def drain(ws):
            async for _ in ws:
                pass
        async def one(i):
            ws = await http.ws_connect(url, autoping=False, max_msg_size=0)
            await ws.send_str(json.dumps({"type": "hello", "nick": f"{prefix}{i}"}))
            msg = json.loads(await ws.receive_str())
            assert msg["type"] == "welcome", msg
            socks.append(ws)
            readers.append(asyncio.create_task(drain(ws)))
        async def ping():
            while True:
                await asyncio.sleep(interval)
                t = int(time.time() * 1000)
                for ws in list(socks):
                    if not ws.closed:
                        await ws.send_str(json.dumps({"type": "ping", "t": t}))
        pinger = asyncio.create_task(ping())
        for start in range(0, n, 100):
            await asyncio.gather(*(one(i) for i in range(start, min(n, start + 100))))
        print("ready", len(socks), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        pinger.cancel()
        await asyncio.gather(*(ws.close() for ws in socks))
        await asyncio.gather(*readers)
    print("closed", flush=True)

asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])))
"""

# Types whose count per connection is always shown, grown or not.
WATCHED = (
    "Task", "Future", "Event", "deque", "dict", "list", "set", "WebSocketResponse",
    "Connection", "Requests", "Session", "TokenBucket",
)


def rss() -> int:
    """This process's resident set size in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def make_config(connections: int) -> Config:
    return config_from_mapping({
        "history": {"backend": "memory"},
        "heartbeat": {"interval": 10, "timeout": 30},
        "limits": {"max_connections": connections * 4 + 1000,
                   "max_connections_per_ip": connections * 4 + 1000},
    }, "bench", env={})


class Client:
    """The client subprocess holding N idle connections."""

    def __init__(self, url: str, connections: int, prefix: str, interval: float) -> None:
        self.url, self.connections, self.prefix = url, connections, prefix
        self.interval = interval
        self.proc: asyncio.subprocess.Process | None = None

    async def open(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CLIENT, self.url, str(self.connections), self.prefix,
            str(self.interval),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        line = await self._line()
        if not line.startswith("ready"):
            raise RuntimeError(f"client: {line!r}")

    async def close(self) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        await self.proc.stdin.drain()
        line = await self._line()
        if line != "closed":
            raise RuntimeError(f"client: {line!r}")
        await self.proc.wait()

    async def _line(self) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        return (await asyncio.wait_for(self.proc.stdout.readline(), 300)).decode().strip()


async def wait_count(hub: Hub[Connection], count: int) -> None:
    """Until the hub holds `count` connections (a closed client's are released)."""
    for _ in range(3000):
        if len(hub.connections) == count:
            return
        await asyncio.sleep(0.01)
    raise RuntimeError(f"hub holds {len(hub.connections)} connections, not {count}")


def settle() -> None:
    for _ in range(3):
        gc.collect()


def type_counts() -> Counter[str]:
    counts: Counter[str] = Counter()
    for obj in gc.get_objects():
        kind = type(obj)
        module = kind.__module__
        name = kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"
        counts[name] += 1
    return counts


def per(value: float, n: int) -> str:
    return f"{value / n:,.1f}"


def table(headers: list[str], rows: Iterable[list[str]], right: Iterable[int] = ()) -> None:
    """A plain-text table: `right` are the indexes of right-aligned columns."""
    rows = list(rows)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    aligned = set(right)

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in aligned else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    print(line(headers))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))


# ------------------------------------------------------------------ sizes of chat's own


def chat_sizes(hub: Hub[Connection], conn: Connection) -> list[tuple[str, int]]:
    """`sys.getsizeof` of what chat keeps for one idle connection (shallow, not shared)."""
    sizes: list[tuple[str, int]] = [
        (f"Connection ({len(Connection.__slots__)} slots)", sys.getsizeof(conn))
    ]
    for name in ("_out", "id", "remote", "opened", "last_seen"):
        value = getattr(conn, name)
        sizes.append((f"  .{name} = {type(value).__name__}"
                      f"{'' if isinstance(value, str | float) else ' (empty)'}",
                      sys.getsizeof(value)))
    seat = conn.seat
    sizes.append((f"  .seat = Seat ({len(seat.__slots__)} slots)", sys.getsizeof(seat)))
    for name in ("rooms", "pending", "typing_at"):
        value = getattr(seat, name)
        sizes.append((f"    .{name} = {type(value).__name__} (empty)", sys.getsizeof(value)))
    requests = next((r for r in gc.get_objects()
                     if type(r) is Requests and r._conn is conn), None)
    if requests is not None:
        sizes.append(("Requests (5 slots)", sys.getsizeof(requests)))
        sizes.append(("  ._backlog = list (empty)", sys.getsizeof(requests._backlog)))
    session = conn.session
    if session is not None:
        sizes.append(("Session (dataclass, slots)", sys.getsizeof(session)))
        for name in ("id", "nick", "key"):
            sizes.append((f"  .{name} = str", sys.getsizeof(getattr(session, name))))
        held = getattr(hub.cluster, "sessions", {}).get(session.id)
        if held is not None:
            sizes.append((f"{type(held).__module__}.{type(held).__name__}",
                           sys.getsizeof(held)))
            sizes.append(("  .rooms = set (empty)", sys.getsizeof(held.rooms)))
    return sizes


def container_growth(
    hub: Hub[Connection], before: dict[str, int]
) -> list[tuple[str, int, int]]:
    """The hub's containers: (name, entries now, bytes grown since `before`)."""
    out = []
    for name, value in hub_containers(hub).items():
        out.append((name, len(value), sys.getsizeof(value) - before[name]))
    return out


def hub_containers(hub: Hub[Connection]) -> dict[str, Any]:
    """The hub's (and a local cluster's) containers that grow with connections."""
    found = {"hub.connections (set)": hub.connections, "hub.sessions (dict)": hub.sessions,
             "hub.per_ip (dict)": hub.per_ip, "hub.rooms (dict)": hub.rooms}
    for name in ("sessions", "nicks", "members"):
        value = getattr(hub.cluster, name, None)
        if isinstance(value, dict):
            found[f"cluster.{name} (dict)"] = value
    return found


# ------------------------------------------------------------------ tracemalloc


def part(filename: str) -> str | None:
    """The part of the program a frame's file belongs to; None for the rest."""
    path = filename.replace("\\", "/")
    chat = str(ROOT / "chat") + "/"
    if path.startswith(chat):
        return "chat/" + path[len(chat):]
    if "/aiohttp/" in path:
        return "aiohttp"
    if "/uvloop/" in path or "/asyncio/" in path:
        return "asyncio/uvloop"
    return None


def category(trace: tracemalloc.Traceback) -> str:
    """Whose allocation: the part of the innermost frame in chat, aiohttp or asyncio.

    Helpers of the standard library (weakref, secrets, a dataclass's generated
    `__init__`) are counted for whoever called them.
    """
    for frame in reversed(trace):  # a Traceback runs from the oldest frame
        found = part(frame.filename)
        if found is not None:
            return found
    return "other: " + short(trace[-1].filename)


def short(path: str) -> str:
    for marker in ("/site-packages/", "/lib/python3.11/", str(ROOT) + "/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def where(frame: tracemalloc.Frame) -> str:
    return f"{short(frame.filename)}:{frame.lineno}"


def caller(trace: tracemalloc.Traceback) -> str:
    """The nearest frame above the allocating one that is in chat or aiohttp: who asked."""
    for frame in list(reversed(trace))[1:]:  # a Traceback runs from the oldest frame
        kind = part(frame.filename)
        if kind is not None and kind != "asyncio/uvloop":
            return where(frame)
    return ""


def report_tracemalloc(
    before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, n: int, top: int
) -> None:
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__),
              tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
              tracemalloc.Filter(False, __file__)]
    before, after = before.filter_traces(ignore), after.filter_traces(ignore)
    diffs = [d for d in after.compare_to(before, "traceback") if d.size_diff]
    total = sum(d.size_diff for d in diffs)
    by_site: Counter[str] = Counter()
    count_by_site: Counter[str] = Counter()
    callers: dict[str, Counter[str]] = {}
    by_category: Counter[str] = Counter()
    for diff in diffs:
        frame = diff.traceback[-1]  # the most recent frame: the allocating line
        site = where(frame)
        by_site[site] += diff.size_diff
        count_by_site[site] += diff.count_diff
        callers.setdefault(site, Counter())[caller(diff.traceback)] += diff.size_diff
        by_category[category(diff.traceback)] += diff.size_diff
    print(f"\ntracemalloc: {total / n:,.0f} B per connection traced "
          f"({total / 1024:,.0f} KiB for {n})")
    print(f"\nTop {top} allocation sites (the allocating line; 'for' is the nearest chat or "
          "aiohttp line above it)")
    rows = []
    for site, size in by_site.most_common(top):
        asked = callers[site].most_common(1)[0][0]
        rows.append([per(size, n), per(count_by_site[site], n), site,
                     asked if asked != site else ""])
    table(["B/conn", "blocks/conn", "site", "for"], rows, right=(0, 1))
    print("\nEvery site whose allocation is counted for chat (see below)")
    rows = []
    chat_sites: Counter[str] = Counter()
    chat_callers: dict[str, str] = {}
    for diff in diffs:
        if category(diff.traceback).startswith("chat/"):
            site = where(diff.traceback[-1])
            chat_sites[site] += diff.size_diff
            chat_callers.setdefault(site, caller(diff.traceback))
    for site, size in chat_sites.most_common():
        if abs(size) / n >= 1:
            asked = chat_callers[site]
            rows.append([per(size, n), site, asked if asked != site else ""])
    table(["B/conn", "site", "for"], rows, right=(0,))
    print("\nBy category (the innermost frame in chat, aiohttp or asyncio/uvloop; under "
          "uvloop, objects its C code makes are found at asyncio/runners.py)")
    groups: Counter[str] = Counter()
    for name, size in by_category.items():
        groups[name.split("/")[0] if name.startswith("chat/") else name] += size
    rows = []
    for name, size in sorted(by_category.items(), key=lambda kv: -kv[1]):
        if name.startswith("chat/") or abs(size) / n >= 1:
            rows.append([per(size, n), f"{size / total:.0%}", name])
    table(["B/conn", "share", "category"], rows, right=(0, 1))
    print("\nTotals: " + ", ".join(f"{name} {per(size, n)} B"
                                   for name, size in groups.most_common()))


# ------------------------------------------------------------------ the run


async def serve(args: argparse.Namespace) -> None:
    n: int = args.connections
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    config = make_config(n)
    app = create_app(config)
    runner = web.AppRunner(app, handle_signals=False, **handler_options(config))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    url = f"http://127.0.0.1:{port}/ws"
    hub: Hub[Connection] = app[HUB]
    interval = config.heartbeat.interval
    loop_name = type(asyncio.get_running_loop()).__module__.split(".")[0]
    print(f"{n} idle connections on {loop_name}, Python {sys.version.split()[0]}, serving {url}")
    try:
        if args.warmup:
            warm = Client(url, args.warmup, "warm", interval)
            await warm.open()
            await warm.close()
            await wait_count(hub, 0)

        # Round 1: RSS, object counts, chat's own sizes; no tracing.
        settle()
        counts_before = type_counts()
        containers_before = {k: sys.getsizeof(v) for k, v in hub_containers(hub).items()}
        settle()
        rss_before = rss()
        client = Client(url, n, "idle", interval)
        await client.open()
        await wait_count(hub, n)
        await asyncio.sleep(0.5)  # the last welcomes are written and their tasks done
        settle()
        rss_after = rss()
        counts_after = type_counts()
        print(f"\nRSS: {rss_before / 2**20:.1f} MiB before, {rss_after / 2**20:.1f} MiB with "
              f"{n} idle: {(rss_after - rss_before) / n / 1024:.2f} KiB "
              f"({(rss_after - rss_before) / n:,.0f} B) per connection")
        report_counts(counts_before, counts_after, n)
        print("\nThe hub's and the cluster's containers (bytes grown / connections; "
              "without the objects they hold)")
        table(["B/conn", "entries", "container"],
              ([per(grown, n), str(entries), name]
               for name, entries, grown in container_growth(hub, containers_before)),
              right=(0, 1))
        conn = next(iter(hub.connections))
        sizes = chat_sizes(hub, conn)
        print("\nchat's own objects of one idle connection (sys.getsizeof, shallow)")
        table(["bytes", "object"], ([str(size), name] for name, size in sizes), right=(0,))
        del conn
        await client.close()
        await wait_count(hub, 0)

        # Round 2: tracemalloc.
        if args.top:
            settle()
            tracemalloc.start(25)
            before = tracemalloc.take_snapshot()
            client = Client(url, n, "traced", interval)
            await client.open()
            await wait_count(hub, n)
            await asyncio.sleep(0.5)
            settle()
            after = tracemalloc.take_snapshot()
            tracemalloc.stop()
            report_tracemalloc(before, after, n, args.top)
            del before, after
            await client.close()
            await wait_count(hub, 0)
    finally:
        await runner.cleanup()


def report_counts(before: Counter[str], after: Counter[str], n: int) -> None:
    print("\nObjects tracked by the garbage collector, per connection "
          "(grown by >= 0.5, and the watched types)")
    rows = []
    for name in sorted(set(before) | set(after), key=lambda k: -(after[k] - before[k])):
        grown = (after[name] - before[name]) / n
        if grown >= 0.5 or name.rsplit(".", 1)[-1] in WATCHED:
            rows.append([f"{grown:.2f}", str(after[name]), name])
    table(["per conn", "total", "type"], rows, right=(0, 1))


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", "-n", type=int, default=2000)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--top", type=int, default=25,
                        help="allocation sites shown (0: no tracemalloc round)")
    parser.add_argument("--warmup", type=int, default=50,
                        help="connections opened and closed before measuring")
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=loop_factory(args.loop)) as runner:
        runner.run(serve(args))


if __name__ == "__main__":
    main()

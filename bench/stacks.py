"""Summarise `py-spy record --format raw` files (collapsed stacks), such as those
bench/nodes.py --profile writes.

    .venv/bin/python bench/stacks.py FILE... [--top 25] [--match TEXT] [--parts]

Prints the share of samples in which each function is on the stack (inclusive) and at
its top (self), over all files given. Functions are named `name (file)` without line
numbers, so one function's lines add up. `--match` keeps only functions whose name
contains TEXT (for example `chat/` or `redis/`). `--parts` instead puts each sample in
the first of PARTS whose words are all in its stack: a node's time by what it does.
(py-spy shows an asyncio task's stack from the task's own step, not from whoever
awaits it, so redis-py's frames are found by their file, not below the hub's.)
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

PARTS = [
    ("pub/sub: reading the room feeds, delivering locally", ["RedisCluster._read"]),
    ("redis-py: socket writes (commands to Redis)", ["redis/", "_SelectorSocketTransport.write"]),
    ("redis-py: reading replies", ["redis/", "read_response"]),
    ("redis-py: pool checkout and release", ["redis/", "ConnectionPool."]),
    ("redis-py: the rest (script call, packing, retry, timeouts)", ["redis/"]),
    ("SQLite: the database thread", ["SqliteHistory._serve"]),
    ("WebSocket: writes to clients (send, the flusher)", ["Connection._write"]),
    ("WebSocket: reading, parsing, handling requests", ["chat/ws.py"]),
    ("sockets: reading (transport callbacks)", ["_read_ready"]),
    ("event loop: waiting in epoll", ["EpollSelector.select"]),
]

FRAME = re.compile(r"^(.*?) \((.*?)(?::\d+)?\)$")


def function(frame: str) -> str:
    match = FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    name, path = match.groups()
    # Keep the package-relative part of the path: site-packages/x/y.py -> x/y.py.
    for marker in ("site-packages/", "lib/python3.11/", "/wt-bench/", "/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})"


def parts(files: list[Path]) -> None:
    found: Counter[str] = Counter()
    total = 0
    for path in files:
        for text in path.read_text().splitlines():
            stack, _, count = text.rpartition(" ")
            if not stack:
                continue
            total += int(count)
            name = next((name for name, words in PARTS if all(w in stack for w in words)),
                        "other: event loop, tasks, timers")
            found[name] += int(count)
    print(f"{total} samples")
    for name, n in found.most_common():
        print(f"{100 * n / total:5.1f} %  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--match", default="")
    parser.add_argument("--parts", action="store_true")
    args = parser.parse_args()
    if args.parts:
        parts(args.files)
        return
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for path in args.files:
        for text in path.read_text().splitlines():
            stack, _, count = text.rpartition(" ")
            if not stack:
                continue
            n = int(count)
            total += n
            frames = [function(frame) for frame in stack.split(";")]
            for name in set(frames):
                inclusive[name] += n
            own[frames[-1]] += n
    print(f"{total} samples")
    for title, counter in (("inclusive", inclusive), ("self", own)):
        print(f"-- {title}")
        shown = 0
        for name, n in counter.most_common():
            if args.match in name:
                print(f"{100 * n / total:5.1f} %  {name}")
                shown += 1
                if shown >= args.top:
                    break


if __name__ == "__main__":
    main()

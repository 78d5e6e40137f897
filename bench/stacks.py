"""Summarise `py-spy record --format raw` files (collapsed stacks), such as those
bench/nodes.py --profile writes.

    .venv/bin/python bench/stacks.py FILE... [--top 25] [--match TEXT]

Prints the share of samples in which each function is on the stack (inclusive) and at
its top (self), over all files given. Functions are named `name (file)` without line
numbers, so one function's lines add up. `--match` keeps only functions whose name
contains TEXT (for example `chat/` or `redis/`).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--match", default="")
    args = parser.parse_args()
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

"""The cost of one `say` on SQLite from the database thread's side, without WebSockets.

    .venv/bin/python bench/sqlite_write.py [--says 40000] [--batches 3,10,50] [--repeat 3]

Opens a fresh file in a temporary directory exactly as the SQLite backend does (WAL,
`synchronous=FULL`, the schema's index and triggers) and stores `--says` messages in
batches of each size of `--batches` through the database thread's own write path
(`_Database.write`: number the batch, one multi-row INSERT that is its own transaction),
on this thread, with nothing else running. Then the same at the bench's usual batch size
with parts taken away, to show where a say's cost lies: the fsync (`synchronous=NORMAL`,
`OFF`), the unique index that finds a re-sent cid, and the triggers that keep each
room's newest id and its retention. Those variants are diagnoses, never how the service
runs.

It prints the CPU time per say of this thread (user and system: the fsync's kernel work
counts) and the wall time per say. Last, the pages one commit of a group of ten writes
to the WAL (each a 4 KiB frame, written to disk again by the next checkpoint), by the
table or index they belong to. bench/say.py measures the whole server; this shows the
part of its "other threads" column that is SQLite's own. Nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import collections
import sqlite3
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from chat.history import NewMessage  # noqa: E402
from chat.history.sqlite import _Database  # noqa: E402

ROOMS = 5
SENDERS = 50  # as bench/say.py: sender n says in room n % 5
VARIANTS: dict[str, Sequence[str]] = {
    "as shipped (FULL)": (),
    "synchronous=NORMAL": ("PRAGMA synchronous = NORMAL",),
    "synchronous=OFF": ("PRAGMA synchronous = OFF",),
    "OFF, no cid index": ("PRAGMA synchronous = OFF", "DROP INDEX messages_cid"),
    "OFF, no triggers": ("PRAGMA synchronous = OFF", "DROP TRIGGER messages_last_id",
                         "DROP TRIGGER temp.messages_retain"),
    "OFF, bare table": ("PRAGMA synchronous = OFF", "DROP INDEX messages_cid",
                        "DROP TRIGGER messages_last_id", "DROP TRIGGER temp.messages_retain"),
}


def batch_of(start: int, count: int) -> list[NewMessage]:
    """`count` says numbered from `start`: say k is sender k % 50's, in room (k % 50) % 5."""
    return [
        NewMessage(f"room{(k % SENDERS) % ROOMS}", f"bench{k % SENDERS}",
                   f"bench{k % SENDERS}", "benchmark text " * 4, f"c{k}", k)
        for k in range(start, start + count)
    ]


def wal_pages(directory: Path, batch: int, warm: int = 30_000,
              commits: int = 200) -> dict[str, float]:
    """WAL frames per commit of `batch` says, by the table or index each page is of.

    After `warm` says, the WAL is emptied, `commits` batches are stored without a
    checkpoint, and each frame's page number is read from the WAL (its header's first
    field) and looked up in SQLite's dbstat table.
    """
    path = directory / "pages.db"
    db = _Database(str(path), 10_000)
    db.open()
    try:
        for start in range(0, warm, batch):
            db.write(batch_of(start, batch))
        db.conn.execute("PRAGMA wal_autocheckpoint = 0")
        db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        for n in range(commits):
            db.write(batch_of(warm + n * batch, batch))
        page_size = db.conn.execute("PRAGMA page_size").fetchone()[0]
        wal = Path(f"{path}-wal").read_bytes()
        owner = {
            page: f"{name} ({kind})"
            for name, page, kind in db.conn.execute("SELECT name, pageno, pagetype FROM dbstat")
        }
    except sqlite3.OperationalError as err:  # no dbstat in this SQLite build
        return {f"(cannot tell: {err})": 0.0}
    finally:
        db.close()
    counts: collections.Counter[str] = collections.Counter()
    # A 32-byte WAL header, then frames: a 24-byte header (page number first), the page.
    for offset in range(32, len(wal) - 24, 24 + page_size):
        (page,) = struct.unpack(">I", wal[offset:offset + 4])
        counts[owner.get(page, "other")] += 1
    return {name: count / commits for name, count in counts.most_common()}


def measure(directory: Path, batch: int, count: int, pragmas: Sequence[str]) -> tuple[float, float]:
    """(CPU µs, wall µs) per say of storing `count` messages `batch` at a time."""
    db = _Database(str(directory / "bench.db"), 10_000)
    db.open()
    try:
        for statement in pragmas:
            db.conn.execute(statement).fetchall()
        # The messages are made before the clock starts: the loop builds them, not SQLite.
        batches = [batch_of(start, min(batch, count - start))
                   for start in range(0, count, batch)]
        cpu, wall = time.thread_time(), time.perf_counter()
        for items in batches:
            db.write(items)
        return ((time.thread_time() - cpu) / count * 1e6,
                (time.perf_counter() - wall) / count * 1e6)
    finally:
        db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--says", type=int, default=40_000)
    parser.add_argument("--batches", default="3,10,50",
                        help="batch sizes of the shipped setup; the variants use 10")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    cases = [("as shipped (FULL)", int(b)) for b in args.batches.split(",")]
    cases += [(name, 10) for name in VARIANTS if name != "as shipped (FULL)"]
    runs: dict[tuple[str, int], list[tuple[float, float]]] = {case: [] for case in cases}
    for _ in range(args.repeat):
        for name, batch in cases:
            with tempfile.TemporaryDirectory() as tmp:
                runs[name, batch].append(measure(Path(tmp), batch, args.says, VARIANTS[name]))
    print(f"{args.says} says per run, {SENDERS} senders' cids in {ROOMS} rooms, "
          f"medians of {args.repeat}")
    print(f"{'setup':22} {'batch':>5} {'CPU µs/say':>11} {'wall µs/say':>12}")
    for (name, batch), results in runs.items():
        cpu = statistics.median(r[0] for r in results)
        wall = statistics.median(r[1] for r in results)
        print(f"{name:22} {batch:5} {cpu:11.1f} {wall:12.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        pages = wal_pages(Path(tmp), 10)
    print(f"WAL frames per commit of 10 says, as shipped: {sum(pages.values()):.1f}")
    for name, frames in pages.items():
        print(f"  {frames:5.1f}  {name}")


if __name__ == "__main__":
    main()

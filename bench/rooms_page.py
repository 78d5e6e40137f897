"""The size and time of `GET /api/rooms` when many rooms have stored messages.

    python bench/rooms_page.py [--src DIR] [--rooms N]

Creates a SQLite history with one message in each of N rooms, starts `python -m chat`
on it (from DIR, default this checkout) and times one `GET /api/rooms`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chat.history import NewMessage  # noqa: E402
from chat.history.sqlite import SqliteHistory  # noqa: E402
from tests.serverproc import ServerProcess, server_env, write_config  # noqa: E402


async def create(path: Path, rooms: int) -> None:
    store = SqliteHistory(str(path), 10)
    await store.open()
    await asyncio.gather(*(store.append(NewMessage(f"room-{n:06d}", "bot", "bot", "x", None, 0))
                           for n in range(rooms)))
    await store.close()


async def fetch(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        started = time.monotonic()
        async with http.get(url + "/api/rooms") as response:
            body = await response.read()
        took = time.monotonic() - started
        print(f"GET /api/rooms: {response.status}, {len(body):,} bytes, "
              f"{body.count(b'room-'):,} rooms, {took * 1000:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default=str(ROOT), help="checkout whose chat/ to run")
    parser.add_argument("--rooms", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "chat.db"
        asyncio.run(create(db, args.rooms))
        config = write_config(Path(tmp), {"history": {"path": str(db)}})
        with ServerProcess("--config", str(config), "--log-level", "WARNING", cwd=tmp,
                           env=server_env(PYTHONPATH=args.src)) as server:
            asyncio.run(fetch(server.url))


if __name__ == "__main__":
    main()

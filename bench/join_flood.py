"""A join/leave flood: how many presence frames one client makes a room member receive.

    python bench/join_flood.py [--src DIR] [--seconds S]

Starts `python -m chat` (from DIR, default this checkout; defaults but the memory
backend), puts an observer in a room, and has one client send join/leave pairs for
that room as fast as the server takes them. Prints the presence frames the observer
received per second, and how the flooder's requests were answered.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.serverproc import ServerProcess, server_env, write_config  # noqa: E402


async def flood(server: ServerProcess, seconds: float) -> None:
    async with aiohttp.ClientSession() as http:
        observer = await http.ws_connect(server.ws_url)
        await observer.send_json({"type": "hello", "nick": "observer"})
        await observer.receive_json()
        await observer.send_json({"type": "join", "room": "lobby"})
        await observer.receive_json()
        flooder = await http.ws_connect(server.ws_url)
        await flooder.send_json({"type": "hello", "nick": "flooder"})
        await flooder.receive_json()
        presence = 0
        answers: Counter[str] = Counter()
        end = time.monotonic() + seconds

        async def observe() -> None:
            nonlocal presence
            async for msg in observer:
                if json.loads(msg.data)["type"] == "presence":
                    presence += 1

        async def read_answers() -> None:
            async for msg in flooder:
                frame = json.loads(msg.data)
                answers[frame.get("code", frame["type"])] += 1

        tasks = [asyncio.create_task(observe()), asyncio.create_task(read_answers())]
        try:
            while time.monotonic() < end:
                for _ in range(50):
                    await flooder.send_str('{"type": "join", "room": "lobby"}')
                    await flooder.send_str('{"type": "leave", "room": "lobby"}')
                await asyncio.sleep(0)
        except ConnectionError:
            pass  # the server closed the flooder
        await asyncio.sleep(0.5)
        for task in tasks:
            task.cancel()
        print(f"observer received {presence / seconds:,.0f} presence frames/s; "
              f"flooder's answers: {dict(answers)}; flooder closed with {flooder.close_code}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default=str(ROOT), help="checkout whose chat/ to run")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = write_config(Path(tmp), {"history": {"backend": "memory"}})
        with ServerProcess("--config", str(config), "--log-level", "WARNING", cwd=tmp,
                           env=server_env(PYTHONPATH=args.src)) as server:
            asyncio.run(flood(server, args.seconds))


if __name__ == "__main__":
    main()

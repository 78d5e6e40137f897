"""A stalled server (SIGSTOP, a paused VM) does not punish its clients (contract section 4)."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from pathlib import Path
from typing import Any, Final

import aiohttp
from aiohttp import WSMsgType

from tests.helpers import DEADLINE
from tests.serverproc import ServerProcess, write_config

FREEZE: Final = 2.0  # s the server is stopped: more than three heartbeat timeouts
CONFIG: Final[dict[str, Any]] = {
    "server": {"shutdown_timeout": 2},
    "heartbeat": {"interval": 0.2, "timeout": 0.6},
    "cleanup": {"interval": 0.1},
    "history": {"backend": "memory"},
}
STALL_LINE: Final = re.compile(r"WARNING chat\.heartbeat: the server did not run for ([\d.]+)s")


class Pinger:
    """A client that pings every heartbeat interval and records pongs and its close."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, progress: asyncio.Event) -> None:
        self.ws = ws
        self.progress = progress  # set at every pong and at the close
        self.pongs: list[float] = []  # monotonic time each pong arrived
        self.closed: int | None = None

    async def run(self, every: float) -> None:
        reader = asyncio.create_task(self._read())
        try:
            n = 0
            while self.closed is None:
                await self.ws.send_json({"type": "ping", "t": n})
                n += 1
                await asyncio.sleep(every)
        except ConnectionError:
            pass
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type is WSMsgType.TEXT and '"pong"' in msg.data:
                self.pongs.append(time.monotonic())
                self.progress.set()
        self.closed = self.ws.close_code if self.ws.close_code is not None else -1
        self.progress.set()


async def wait_for(progress: asyncio.Event, predicate: Any, within: float = DEADLINE) -> None:
    """Wait, re-checking at every `progress`, until `predicate()` holds."""
    async with asyncio.timeout(within):
        while not predicate():
            progress.clear()
            await progress.wait()


async def test_clients_that_pinged_through_sigstop_stay_connected(tmp_path: Path) -> None:
    """SIGSTOP for longer than the timeout, clients pinging throughout: none is closed."""
    config = write_config(tmp_path, CONFIG)
    with ServerProcess("--config", str(config), cwd=tmp_path) as server:
        async with aiohttp.ClientSession() as session:
            progress = asyncio.Event()
            pingers = []
            for n in range(3):
                ws = await session.ws_connect(server.ws_url)  # answers protocol pings
                if n:  # one of them never says hello: the rule covers it too
                    await ws.send_json({"type": "hello", "nick": f"p{n}"})
                pingers.append(Pinger(ws, progress))
            tasks = [asyncio.create_task(p.run(0.2)) for p in pingers]
            try:
                await wait_for(progress, lambda: all(p.pongs for p in pingers))
                server.send_signal(signal.SIGSTOP)
                try:
                    await asyncio.sleep(FREEZE)  # the stall itself, not a wait for an event
                finally:
                    server.send_signal(signal.SIGCONT)
                resumed = time.monotonic()
                await asyncio.to_thread(server.wait_stderr, "the server did not run for", DEADLINE)
                # Three timeouts of running time after the continue: long enough for a
                # wrongly counted stall to have closed them.
                await wait_for(
                    progress,
                    lambda: all(len([t for t in p.pongs if t > resumed]) >= 9 for p in pingers)
                    or any(p.closed is not None for p in pingers)
                )
                assert [p.closed for p in pingers] == [None, None, None], server.stderr_text()
            finally:
                for p in pingers:
                    await p.ws.close()
                await asyncio.gather(*tasks, return_exceptions=True)
        assert await asyncio.to_thread(server.stop) == 0
    stderr = server.stderr_text()
    assert "code=4000" not in stderr, stderr
    stalls = STALL_LINE.findall(stderr)
    assert len(stalls) == 1, stderr
    assert FREEZE - 0.5 <= float(stalls[0]) <= FREEZE + 2.0, stalls

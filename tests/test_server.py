"""The server's own bounds: slow request headers, the open-file limit, failing accepts."""

from __future__ import annotations

import asyncio
import logging
import platform
import time
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from chat import server
from chat.server import ACCEPT_OUT_OF_RESOURCES, AcceptErrorLog, log_due
from tests.helpers import DEADLINE, Peer, app_client, make_config
from tests.serverproc import ServerProcess, write_config

Client = TestClient[Any, Any]

HEADER_TIMEOUT: Final = 0.5
PARTIAL: Final = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"  # headers never finished


@pytest.fixture
async def client(aiohttp_client: Any) -> Client:
    config = make_config({
        "server": {"header_timeout": HEADER_TIMEOUT},
        "heartbeat": {"interval": 10, "timeout": 30},  # only the header timeout may act
    })
    return await app_client(aiohttp_client, config=config)


async def closed_after(reader: asyncio.StreamReader) -> float:
    """Seconds until the server closes the connection (reads and drops what it sends)."""
    started = time.monotonic()
    async with asyncio.timeout(DEADLINE):
        while await reader.read(4096):
            pass
    return time.monotonic() - started


async def test_slow_headers_closed_after_header_timeout(client: Client) -> None:
    """Headers trickled in byte by byte are cut off header_timeout after the connection opens."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    started = time.monotonic()

    async def trickle() -> None:
        for byte in PARTIAL:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.02)

    trickling = asyncio.create_task(trickle())
    try:
        await closed_after(reader)
    finally:
        trickling.cancel()
        writer.close()
    took = time.monotonic() - started
    assert HEADER_TIMEOUT * 0.9 <= took < HEADER_TIMEOUT + 1.0, took


async def test_idle_connection_closed_and_keep_alive_after_response(client: Client) -> None:
    """A connection that sends nothing, or nothing after a response, goes after the timeout."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    assert await closed_after(reader) < HEADER_TIMEOUT + 1.0
    writer.close()
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE)
    assert head.startswith(b"HTTP/1.1 200")
    assert await closed_after(reader) < HEADER_TIMEOUT + 1.0
    writer.close()


async def test_open_websocket_outlives_header_timeout(client: Client) -> None:
    """An open WebSocket is not cut by the header timeout, however quiet it is."""
    peer = Peer(await client.ws_connect("/ws"))
    await peer.hello("alice")
    assert await peer.quiet(HEADER_TIMEOUT * 3) == []  # nothing, and no close either
    await peer.send({"type": "ping", "t": "still"})
    await peer.next_is("pong", t="still")


def test_log_due() -> None:
    """A throttled line is due the first time, then once `every` seconds have passed."""
    assert log_due(None, 5.0, 30.0)
    assert not log_due(5.0, 34.9, 30.0)
    assert log_due(5.0, 35.0, 30.0)


def test_accept_errors_logged_once_per_period(caplog: pytest.LogCaptureFixture) -> None:
    """Failed accepts make one WARNING line per period, no traceback; other errors pass on."""
    now = [100.0]
    passed: list[dict[str, Any]] = []
    handler = AcceptErrorLog(lambda loop, context: passed.append(context), every=30.0,
                             clock=lambda: now[0])
    loop = asyncio.new_event_loop()
    try:
        caplog.set_level(logging.INFO)
        error = OSError(24, "Too many open files")
        for step in range(100):  # asyncio retries every second
            now[0] = 100.0 + step
            handler(loop, {"message": ACCEPT_OUT_OF_RESOURCES, "exception": error})
        handler(loop, {"message": "something else"})
    finally:
        loop.close()
    lines = [r for r in caplog.records if r.name == "chat.server"]
    assert len(lines) == 4  # at 0, 30, 60 and 90 s
    assert all(r.levelno == logging.WARNING and not r.exc_info for r in lines)
    assert "Too many open files" in lines[0].getMessage()
    assert passed == [{"message": "something else"}]


# ---------------------------------------------------------------------- the real attack

SLOW: Final = 120  # slow-header connections kept open at once: twice the open-file limit
NOFILE: Final = 64


async def slow_client(host: str, port: int, lifetimes: list[float], stop: asyncio.Event) -> None:
    """Open a connection, send part of a request's headers, wait to be closed; again."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2)
        except (TimeoutError, OSError):
            continue  # the listen backlog is full: try again
        started = time.monotonic()
        try:
            writer.write(PARTIAL)
            await asyncio.wait_for(reader.read(), DEADLINE)
            lifetimes.append(time.monotonic() - started)
        except (TimeoutError, OSError):
            lifetimes.append(float("inf"))  # not closed by the server within the deadline
        finally:
            writer.close()


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
async def test_slow_headers_under_a_low_open_file_limit(tmp_path: Path, loop: str) -> None:
    """With more slow-header clients than file descriptors, /healthz and WebSockets still work.

    On either event loop: uvloop's own listener would drop every connection that
    arrives while descriptors run out, so the server accepts as asyncio does there.
    """
    config = write_config(tmp_path, {
        "server": {"header_timeout": HEADER_TIMEOUT},
        "history": {"backend": "memory"},
    })
    server = ServerProcess("--config", str(config), "--loop", loop, cwd=tmp_path)
    # Soft and hard limit alike, so the server cannot raise it past NOFILE.
    server.argv = ["prlimit", f"--nofile={NOFILE}:{NOFILE}", *server.argv]
    with server:
        assert f"open-file limit: {NOFILE}" in server.wait_stderr("open-file limit")
        lifetimes: list[float] = []
        stop = asyncio.Event()
        attack = [asyncio.create_task(slow_client(server.host, server.port, lifetimes, stop))
                  for _ in range(SLOW)]
        try:
            timeout = aiohttp.ClientTimeout(total=3 * DEADLINE)
            async with aiohttp.ClientSession(timeout=timeout) as http:
                # Until the attack has filled every descriptor and the server has cut
                # off a first round of slow clients, and a few times more after that.
                rounds = 0
                async with asyncio.timeout(4 * DEADLINE):
                    while rounds < 3 or len(lifetimes) < SLOW:
                        async with http.get(server.url + "/healthz") as response:
                            assert response.status == 200
                        peer = Peer(await http.ws_connect(server.ws_url))
                        await peer.hello(f"alice{rounds}")
                        await peer.ws.close()
                        rounds += 1
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*attack, return_exceptions=True),
                                   2 * DEADLINE)
        errors = server.stderr_text()
    # Every slow connection was closed by the server, soon after it was accepted (the
    # rest of its lifetime it waited in the listen backlog for a descriptor).
    assert max(lifetimes) < DEADLINE
    assert "Traceback" not in errors
    assert f"event loop: {loop}" in errors
    # Descriptors did run out, and that was reported, without a line per failed accept.
    assert 1 <= errors.count("cannot accept connections") <= 2, errors[-2000:]


def test_open_file_limit_raised_to_hard_limit(tmp_path: Path) -> None:
    """At start the server raises its soft open-file limit to the hard one, and says so."""
    config = write_config(tmp_path, {"history": {"backend": "memory"}})
    server = ServerProcess("--config", str(config), cwd=tmp_path)
    server.argv = ["prlimit", f"--nofile={NOFILE}:{2 * NOFILE}", *server.argv]
    with server:
        assert server.proc is not None
        limits = Path(f"/proc/{server.proc.pid}/limits").read_text()
        line = server.wait_stderr("open-file limit")
    assert f"INFO chat.server: open-file limit: {2 * NOFILE} (hard limit {2 * NOFILE})" in line
    assert any(row.startswith("Max open files") and row.split()[3:5] == [str(2 * NOFILE)] * 2
               for row in limits.splitlines())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_tune_malloc_fixes_glibc_thresholds() -> None:
    """On glibc both thresholds are set (mallopt answers 1 for each)."""
    assert server.tune_malloc() is True


def test_tune_gc_freezes_start_up_and_collects_young_objects_less_often() -> None:
    """After tune_gc what start-up made is frozen and the thresholds are the server's."""
    import gc

    before = gc.get_threshold()
    try:
        server.tune_gc()
        assert gc.get_threshold() == server.GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)

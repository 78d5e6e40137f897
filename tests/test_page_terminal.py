"""The terminal client's output (`python -m chat.client`), run against a real `python -m chat`."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Final

import pytest_asyncio

from chat.client.__main__ import connect_failure
from tests.browser import Frame, scripted_page_server, welcome_for
from tests.redisproc import free_port
from tests.serverproc import ServerProcess, server_env, write_config

ROOT: Final = Path(__file__).parents[1]
DEADLINE: Final = 8.0  # s: the most any wait for a line may take
FAST: Final = {
    "heartbeat": {"interval": 0.3, "timeout": 1.0},
    "cleanup": {"interval": 0.1},
    "history": {"backend": "memory"},
    "server": {"shutdown_timeout": 2},
}


class Terminal:
    """One `python -m chat.client` child: its stdout lines as they come, stderr at the end."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.stderr = ""

    async def until(self, done: Callable[[list[str]], bool], within: float = DEADLINE) -> None:
        """Read stdout lines until `done(lines)` holds (fails after `within` seconds)."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(within):
            while not done(self.lines):
                line = await self.proc.stdout.readline()
                if not line:
                    break
                self.lines.append(line.decode().rstrip("\n"))
        assert done(self.lines), self.lines

    async def finish(self, sig: int | None = signal.SIGTERM) -> int:
        """Signal the child (or let it end), collect the rest; its exit code."""
        if sig is not None and self.proc.returncode is None:
            self.proc.send_signal(sig)
        out, err = await asyncio.wait_for(self.proc.communicate(), DEADLINE)
        self.lines += out.decode().splitlines()
        self.stderr = err.decode()
        assert self.proc.returncode is not None
        return self.proc.returncode


StartTerminal = Callable[..., Awaitable[Terminal]]


@pytest_asyncio.fixture
async def terminal() -> AsyncIterator[StartTerminal]:
    """Start `python -m chat.client ARGS`; every child is killed at the end."""
    started: list[Terminal] = []

    async def start(*args: str) -> Terminal:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chat.client", *args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=server_env(), cwd=ROOT,
        )  # fmt: skip
        started.append(Terminal(proc))
        return started[-1]

    yield start
    for term in started:
        if term.proc.returncode is None:
            term.proc.kill()
            await term.proc.communicate()


def count(lines: list[str], text: str) -> int:
    return sum(text in line for line in lines)


def test_connect_failures_are_put_in_words() -> None:
    """aiohttp's connect errors become one short reason, never an empty one."""
    url = "ws://127.0.0.1:9/ws"
    assert connect_failure("cannot connect: ", url) == "no answer from 127.0.0.1:9 (timed out)"
    refused = "cannot connect: Cannot connect to host 127.0.0.1:9 ssl:default [Connect call failed ('127.0.0.1', 9)]"  # noqa: E501
    assert connect_failure(refused, url) == (
        "127.0.0.1:9 refused the connection (is the server running?)"
    )
    unknown = (
        "cannot connect: Cannot connect to host nohost:80 ssl:default [Name or service not known]"
    )
    assert connect_failure(unknown, "ws://nohost/ws") == "unknown host nohost"
    http = "cannot connect: 404, message='Invalid response status', url='ws://127.0.0.1:9/x'"
    assert "answered HTTP 404" in connect_failure(http, url)


async def test_a_server_that_is_not_there_is_reported_once_in_words(
    terminal: StartTerminal,
) -> None:
    """No server: one line with the real reason, not one per attempt, and no log lines."""
    url = f"ws://127.0.0.1:{free_port()}/ws"
    term = await terminal("--url", url, "--nick", "alice")
    await term.until(lambda lines: count(lines, "refused the connection") >= 1)
    await asyncio.sleep(2.5)  # several more attempts fail meanwhile
    assert await term.finish() == 0
    assert count(term.lines, "refused the connection") == 1, term.lines
    assert not any("Cannot connect to host" in line for line in term.lines), term.lines
    assert not any(line.rstrip().endswith("cannot connect:") for line in term.lines)
    assert term.stderr == ""


async def test_a_bad_max_backoff_is_one_line_and_exit_2(terminal: StartTerminal) -> None:
    """`--max-backoff` takes a positive number of seconds; anything else is a usage error."""
    for bad in ("0", "-1", "soon"):
        term = await terminal("--url", "ws://127.0.0.1:1/ws", "--nick", "a", "--max-backoff", bad)
        assert await term.finish(None) == 2
        assert "--max-backoff" in term.stderr and "Traceback" not in term.stderr, term.stderr


async def test_a_taken_nick_is_reported_once_and_exits_1(
    terminal: StartTerminal, tmp_path: Path
) -> None:
    """A taken nick: exactly one line saying so and what to do; exit status 1."""
    write_config(tmp_path, FAST)
    with ServerProcess("--config", str(tmp_path / "config.yaml")) as server:
        alice = await terminal("--url", server.ws_url, "--nick", "alice")
        await alice.until(lambda lines: count(lines, "* connected as alice") == 1)
        again = await terminal("--url", server.ws_url, "--nick", "ALICE")
        assert await again.finish(sig=None) == 1
        assert again.lines == ["! the nick 'ALICE' is in use: choose another with --nick"]
        assert again.stderr == ""
        assert await alice.finish() == 0


async def test_a_restart_is_three_clear_lines_and_logs_only_with_verbose(
    terminal: StartTerminal, tmp_path: Path
) -> None:
    """A restart reads: restarting, refused (once), connected; --verbose adds log records."""
    write_config(tmp_path, FAST)
    config = str(tmp_path / "config.yaml")
    first = ServerProcess("--config", config)
    first.start()
    try:
        # Capped back-off: full jitter after 2 s of refusals could otherwise wait up to
        # 8 s for the next attempt, past the deadline below.
        quiet = await terminal("--url", first.ws_url, "--nick", "alice", "--max-backoff", "1")
        loud = await terminal(
            "--url", first.ws_url, "--nick", "bob", "--verbose", "--max-backoff", "1"
        )
        for term, nick in ((quiet, "alice"), (loud, "bob")):
            await term.until(lambda lines, nick=nick: count(lines, f"* connected as {nick}") == 1)
        first.send_signal(signal.SIGTERM)
        assert await first.wait_async(within=5) == 0
        await asyncio.sleep(2.0)  # down for a while: attempts fail and are not each told
        started = time.monotonic()
        with ServerProcess("--config", config, port=first.port):
            for term in (quiet, loud):
                await term.until(lambda lines: count(lines, "* connected as") == 2)
            assert time.monotonic() - started < DEADLINE
            codes = [await term.finish() for term in (quiet, loud)]
    finally:
        first.close()
    assert codes == [0, 0]
    # The connection's story, without the room's own lines (members, presence, reset).
    told = [line for line in quiet.lines if "connected as" in line or "reconnecting" in line]
    assert told == [
        "* connected as alice (new session)",
        "* the server is restarting; reconnecting",
        f"* 127.0.0.1:{first.port} refused the connection (is the server running?); reconnecting",
        "* connected as alice (new session)",  # a memory server: the session is gone
    ], quiet.lines
    assert count(quiet.lines, "refused the connection") == 1
    assert quiet.stderr == ""
    assert " INFO chat.client: connected as bob" in loud.stderr, loud.stderr


async def test_a_frozen_server_is_one_not_responding_line(
    terminal: StartTerminal, tmp_path: Path
) -> None:
    """SIGSTOP: one "not responding" line (not a second for the reconnect), then back."""
    write_config(tmp_path, FAST)
    with ServerProcess("--config", str(tmp_path / "config.yaml")) as server:
        term = await terminal("--url", server.ws_url, "--nick", "alice")
        await term.until(lambda lines: count(lines, "* connected as alice") == 1)
        server.send_signal(signal.SIGSTOP)
        try:
            # The heartbeat timeout is 1 s: the watchdog gives up soon after.
            await term.until(lambda lines: count(lines, "not responding") >= 1)
        finally:
            server.send_signal(signal.SIGCONT)
        await term.until(lambda lines: count(lines, "* connected as alice") == 2)
        assert await term.finish() == 0
    assert count(term.lines, "not responding") == 1, term.lines
    assert "* the server is not responding; reconnecting" in term.lines
    assert term.stderr == ""


def _joined(room: str, *messages: Frame) -> Frame:
    return {
        "type": "joined", "room": room, "epoch": "e1", "members": ["alice"],
        "messages": list(messages), "complete": True,
    }  # fmt: skip


def _unavailable(ref: str) -> Frame:
    return {
        "type": "error", "code": "unavailable", "message": "the server cannot reach Redis",
        "ref": ref, "retry_after": 0.1,
    }  # fmt: skip


async def test_a_store_outage_is_told_once_until_a_say_is_stored(
    terminal: StartTerminal,
) -> None:
    """`unavailable` answered again and again is one line; after an ack it is news again."""
    refusals = {"first": 3, "second": 2}  # how often each text is answered `unavailable`
    stored: list[str] = []

    async def answer(frame: Frame) -> list[Frame]:
        kind = frame["type"]
        if kind == "hello":
            return [welcome_for(frame["nick"])]
        if kind == "join":
            return [_joined(frame["room"])]
        if kind == "say":
            text = frame["text"]
            if refusals.get(text, 0) > 0:
                refusals[text] -= 1
                return [_unavailable(frame["cid"])]
            stored.append(text)
            return [
                {"type": "ack", "cid": frame["cid"], "room": frame["room"],
                 "id": len(stored), "ts": 1},
                {"type": "message", "room": frame["room"], "id": len(stored), "nick": "alice",
                 "text": text, "ts": 1, "cid": frame["cid"]},
            ]  # fmt: skip
        return []

    async with scripted_page_server(answer) as url:
        term = await terminal("--url", url.replace("http", "ws", 1) + "ws", "--nick", "alice")
        await term.until(lambda lines: count(lines, "* in #lobby") == 1)
        assert term.proc.stdin is not None
        for text in ("first", "second"):
            term.proc.stdin.write(f"{text}\n".encode())
            await term.proc.stdin.drain()
            await term.until(lambda lines, text=text: count(lines, f"alice: {text}") == 1)
        assert await term.finish() == 0
    assert stored == ["first", "second"]
    told = [line for line in term.lines if "unavailable" in line]
    assert told == ["* server unavailable, retrying in 0.1s"] * 2, term.lines
    assert term.stderr == ""


async def test_a_malformed_frame_is_no_error_on_the_terminal(terminal: StartTerminal) -> None:
    """A frame off the contract: nothing on stderr; with --verbose one warning, no traceback."""

    async def answer(frame: Frame) -> list[Frame]:
        if frame["type"] == "hello":
            return [welcome_for(frame["nick"])]
        if frame["type"] == "join":
            unstamped = {"type": "message", "room": "lobby", "id": 1, "nick": "bob", "text": "hi"}
            fine = {**unstamped, "id": 2, "text": "still here", "ts": 1}
            # A second `welcome` without its session, then a message without its time.
            return [_joined(frame["room"]), {"type": "welcome"}, unstamped, fine]
        return []

    async with scripted_page_server(answer) as url:
        ws_url = url.replace("http", "ws", 1) + "ws"
        quiet = await terminal("--url", ws_url, "--nick", "alice")
        loud = await terminal("--url", ws_url, "--nick", "carol", "--verbose")
        for term in (quiet, loud):
            await term.until(lambda lines: count(lines, "bob: still here") == 1)
            assert await term.finish() == 0
            assert count(term.lines, "bob: hi") == 1, term.lines
    assert quiet.stderr == ""
    assert "WARNING chat.client: ignoring a malformed 'welcome' frame" in loud.stderr, loud.stderr
    assert "Traceback" not in loud.stderr

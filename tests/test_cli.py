"""The command line (contract section 1): start-up, configuration, signals, logs, packaging."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest
from aiohttp import WSMsgType

from tests.helpers import DEADLINE
from tests.rawws import masked_frame, raw_ws, read_text_frame
from tests.serverproc import (
    STARTUP_TIMEOUT,
    ServerProcess,
    run_chat,
    server_env,
    tree_files,
    write_config,
)

ROOT: Final = Path(__file__).parents[1]
SHUTDOWN_TIMEOUT: Final = 2.0
SLACK: Final = 1.0  # s allowed beyond server.shutdown_timeout for the process to exit

FAST: Final[dict[str, Any]] = {
    "server": {"shutdown_timeout": SHUTDOWN_TIMEOUT},
    "heartbeat": {"interval": 0.2, "timeout": 0.6},
    "cleanup": {"interval": 0.1},
    "history": {"backend": "memory"},
}

SIGNALS: Final = [
    pytest.param(signal.SIGTERM, id="SIGTERM"),
    pytest.param(signal.SIGINT, id="SIGINT"),
]


def http_get(url: str) -> tuple[int, str, bytes]:
    """Status, content type and body of a GET."""
    with urllib.request.urlopen(url, timeout=DEADLINE) as response:
        return response.status, response.headers.get_content_type(), response.read()


def assert_serves_page_and_assets(server: ServerProcess) -> None:
    status, kind, body = http_get(server.url + "/")
    assert (status, kind) == (200, "text/html")
    assert b"<html" in body.lower()
    static = ROOT / "static"
    files = tree_files(static)
    assert files, f"no files under {static}"
    for rel in files:
        status, _, body = http_get(f"{server.url}/static/{rel.as_posix()}")
        assert status == 200, rel
        assert body == (static / rel).read_bytes(), rel


def one_line(stderr: str) -> str:
    """The single line of `stderr`, asserted to be exactly one line."""
    lines = stderr.splitlines()
    assert len(lines) == 1 and stderr.endswith("\n"), f"expected one line, got {stderr!r}"
    return lines[0]


async def close_code(ws: aiohttp.ClientWebSocketResponse) -> int | None:
    """Read (skipping text frames) until the server closes; the close code."""
    async with asyncio.timeout(DEADLINE):
        while True:
            msg = await ws.receive()
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                return ws.close_code
            assert msg.type is WSMsgType.TEXT, msg


async def next_frame(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    """The next frame, asserted to be of type `kind`."""
    msg = await ws.receive(timeout=DEADLINE)
    assert msg.type is WSMsgType.TEXT, msg
    frame: dict[str, Any] = json.loads(msg.data)
    assert frame["type"] == kind, frame
    return frame


# --- 1, 2: start-up, page and assets


def test_port_zero_prints_one_listening_line_and_serves(tmp_path: Path) -> None:
    """`--port 0` prints exactly one line with the real port; health, page and assets serve."""
    # The shipped config.yaml, read from the cwd as in the README, but in a temporary
    # directory: its relative chat.db must not land in (or collide with) the checkout.
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    with ServerProcess(cwd=tmp_path) as server:
        assert server.host == "127.0.0.1"
        assert server.port > 0
        status, kind, body = http_get(server.url + "/healthz")
        assert (status, kind) == (200, "application/json")
        assert json.loads(body) == {"status": "ok"}
        assert_serves_page_and_assets(server)
        assert server.stop() == 0
    assert server.stdout_lines() == [f"listening on http://127.0.0.1:{server.port}"]


def test_page_and_assets_served_from_another_directory(tmp_path: Path) -> None:
    """Started outside the checkout, the server still finds its templates and static files."""
    with ServerProcess(cwd=tmp_path) as server:
        assert_serves_page_and_assets(server)
        assert server.stop() == 0


# --- 3, 4: graceful shutdown


@pytest.mark.parametrize("sig", SIGNALS)
async def test_signal_closes_websockets_with_1001_and_exits_0(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """SIGTERM/SIGINT: every WebSocket closes with 1001, new ones are refused, exit 0 in time."""
    config = write_config(tmp_path, FAST)
    with ServerProcess("--config", str(config), cwd=tmp_path) as server:
        async with aiohttp.ClientSession() as session:
            a = await session.ws_connect(server.ws_url)
            await a.send_json({"type": "hello", "nick": "a"})
            await next_frame(a, "welcome")
            await a.send_json({"type": "join", "room": "lobby"})
            await next_frame(a, "joined")
            b = await session.ws_connect(server.ws_url)
            await b.send_json({"type": "ping"})
            await next_frame(b, "pong")  # b is registered

            signalled = time.monotonic()
            server.send_signal(sig)
            codes = await asyncio.gather(close_code(a), close_code(b))
            assert codes == [1001, 1001]

            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(DEADLINE)) as fresh:
                try:
                    late = await fresh.ws_connect(server.ws_url)
                except aiohttp.WSServerHandshakeError as err:
                    assert err.status == 503
                except aiohttp.ClientConnectionError:
                    pass  # refused at TCP level
                else:
                    await late.close()
                    pytest.fail("a WebSocket was accepted after the signal")

        budget = SHUTDOWN_TIMEOUT + SLACK - (time.monotonic() - signalled)
        assert await server.wait_async(within=budget) == 0
    assert "Traceback" not in server.stderr_text()


def test_sigterm_exits_in_time_with_a_client_that_never_reads(tmp_path: Path) -> None:
    """A peer that never answers the close frame does not hold up the exit."""
    config = write_config(tmp_path, FAST)
    with ServerProcess("--config", str(config), cwd=tmp_path) as server:
        with raw_ws(server.host, server.port) as sock:
            sock.sendall(masked_frame(json.dumps({"type": "hello", "nick": "mute"}).encode()))
            assert read_text_frame(sock)["type"] == "welcome"
            # From here on the socket is never read again, nor answers the close.
            started = time.monotonic()
            code = server.terminate(signal.SIGTERM, timeout=SHUTDOWN_TIMEOUT + SLACK)
            assert code == 0, server.stderr_text()
            assert time.monotonic() - started <= SHUTDOWN_TIMEOUT + SLACK
    assert "Traceback" not in server.stderr_text()


RACE_ATTEMPTS: Final = 8


def test_sigterm_as_soon_as_listening_exits_0(tmp_path: Path) -> None:
    """A SIGTERM sent the moment the listening line appears still ends in exit status 0."""
    config = write_config(tmp_path, FAST)
    # The window is a race; each attempt loses it most of the time while the bug is there.
    for attempt in range(RACE_ATTEMPTS):
        with ServerProcess("--config", str(config), cwd=tmp_path) as server:
            code = server.terminate(signal.SIGTERM, timeout=SHUTDOWN_TIMEOUT + SLACK)
        assert code == 0, f"attempt {attempt}: exit status {code}; stderr:\n{server.stderr_text()}"


# --- 5: bad configurations

BAD_CONFIGS: Final = [
    # (id, files in cwd, extra args, extra env, the file and key the line must name)
    (
        "unknown-key",
        {"config.yaml": "heartbeat: {timout: 3}\n"},
        [],
        {},
        "config.yaml: heartbeat.timout: unknown key",
    ),
    (
        "unknown-section",
        {"bad.yaml": "heartbeats: {}\n"},
        ["--config", "bad.yaml"],
        {},
        "bad.yaml: heartbeats: ",
    ),
    (
        "wrong-type",
        {"bad.yaml": "server: {port: eighty}\n"},
        ["--config", "bad.yaml"],
        {},
        "bad.yaml: server.port: ",
    ),
    (
        "wrong-type-seconds",
        {"bad.yaml": "heartbeat: {interval: soon}\n"},
        ["--config", "bad.yaml"],
        {},
        "bad.yaml: heartbeat.interval: ",
    ),
    (
        "section-not-mapping",
        {"bad.yaml": "heartbeat: 3\n"},
        ["--config", "bad.yaml"],
        {},
        "bad.yaml: heartbeat: ",
    ),
    (
        "timeout-equals-interval",
        {"bad.yaml": "heartbeat: {interval: 5, timeout: 5}\n"},
        ["--config", "bad.yaml"],
        {},
        "bad.yaml: heartbeat.",
    ),
    (
        "timeout-below-interval",
        {"bad.yaml": "heartbeat: {interval: 0.5, timeout: 0.2}\n"},
        ["--config", "bad.yaml"],
        {},
        "bad.yaml: heartbeat.",
    ),
    (
        "zero-interval",
        {"bad.yaml": "heartbeat: {interval: 0}\n"},
        ["--config", "bad.yaml"],
        {},
        "bad.yaml: heartbeat.interval: ",
    ),
    (
        "negative-cleanup",
        {"bad.yaml": "cleanup: {interval: -1}\n"},
        ["--config", "bad.yaml"],
        {},
        "bad.yaml: cleanup.interval: ",
    ),
    (
        "unreadable-yaml",
        {"bad.yaml": "server: [unclosed\n"},
        ["--config", "bad.yaml"],
        {},
        "bad.yaml: ",
    ),
    (
        "not-utf8",
        {"bad.yaml": b"server: {host: \xff\xfe}\n"},
        ["--config", "bad.yaml"],
        {},
        "bad.yaml: ",
    ),
    ("top-level-list", {"bad.yaml": "- server\n"}, ["--config", "bad.yaml"], {}, "bad.yaml: "),
    ("config-is-a-directory", {}, ["--config", "."], {}, ".: "),
    ("missing-config-file", {}, ["--config", "missing.yaml"], {}, "missing.yaml: "),
    ("missing-env-file", {}, [], {"CHAT_CONFIG": "missing.yaml"}, "missing.yaml: "),
    (
        "missing-env-file-despite-cwd-file",
        {"config.yaml": "{}\n"},
        [],
        {"CHAT_CONFIG": "missing.yaml"},
        "missing.yaml: ",
    ),
    (
        "env-file-bad",
        {"env.yaml": "server: {shutdown_timeout: 0}\n"},
        [],
        {"CHAT_CONFIG": "env.yaml"},
        "env.yaml: server.shutdown_timeout: ",
    ),
]


@pytest.mark.parametrize(
    ("files", "args", "env", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_CONFIGS],
)
def test_bad_configuration_exits_2_with_one_line(
    tmp_path: Path,
    files: dict[str, str | bytes],
    args: list[str],
    env: dict[str, str],
    expected: str,
) -> None:
    """A bad configuration: status 2, one stderr line naming file and key, no traceback."""
    for name, content in files.items():
        data = content.encode() if isinstance(content, str) else content
        (tmp_path / name).write_bytes(data)
    result = run_chat("--port", "0", *args, cwd=tmp_path, env=server_env(**env))
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    line = one_line(result.stderr)
    if expected.endswith(": ") or expected.endswith("."):
        assert line.startswith(expected) and len(line) > len(expected), line
    else:
        assert line == expected


# --- 6: which file is read, and overrides


async def heartbeat_interval(server: ServerProcess) -> float:
    """`welcome.heartbeat.interval`: tells which configuration the server runs with."""
    async with aiohttp.ClientSession() as session, session.ws_connect(server.ws_url) as ws:
        await ws.send_json({"type": "hello", "nick": "probe"})
        welcome = await next_frame(ws, "welcome")
        interval: float = welcome["heartbeat"]["interval"]
        return interval


def marker_config(tmp_path: Path, name: str, interval: float) -> Path:
    return write_config(
        tmp_path, {**FAST, "heartbeat": {"interval": interval, "timeout": interval * 3}}, name
    )


@pytest.mark.parametrize(
    ("cwd_file", "env_file", "cli_file", "expected"),
    [
        pytest.param(True, False, False, 0.3, id="cwd-config.yaml"),
        pytest.param(True, True, False, 0.4, id="CHAT_CONFIG-over-cwd"),
        pytest.param(True, True, True, 0.5, id="--config-over-CHAT_CONFIG"),
        pytest.param(False, False, False, 10, id="built-in-defaults"),
    ],
)
async def test_configuration_file_precedence(
    tmp_path: Path, cwd_file: bool, env_file: bool, cli_file: bool, expected: float
) -> None:
    """--config, else $CHAT_CONFIG, else ./config.yaml, else the built-in defaults."""
    args: list[str] = []
    env: dict[str, str] = {}
    if cwd_file:
        marker_config(tmp_path, "config.yaml", 0.3)
    if env_file:
        marker_config(tmp_path, "env.yaml", 0.4)
        env["CHAT_CONFIG"] = "env.yaml"
    if cli_file:
        args = ["--config", str(marker_config(tmp_path, "cli.yaml", 0.5))]
    with ServerProcess(*args, cwd=tmp_path, env=server_env(**env)) as server:
        assert await heartbeat_interval(server) == expected
        server.send_signal(signal.SIGTERM)
        assert await server.wait_async() == 0


def test_host_and_port_flags_override_the_file(tmp_path: Path) -> None:
    """--host/--port win over server.host/server.port (the file's would fail to bind)."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        busy_port = busy.getsockname()[1]
        # 203.0.113.0/24 is TEST-NET-3: never a local address.
        write_config(tmp_path, {"server": {"host": "203.0.113.1", "port": busy_port}})
        with ServerProcess("--host", "127.0.0.1", cwd=tmp_path) as server:
            assert (server.host, http_get(server.url + "/healthz")[0]) == ("127.0.0.1", 200)
            assert server.port not in (0, busy_port)
            assert server.stop() == 0


def test_port_zero_in_the_file_binds_a_free_port(tmp_path: Path) -> None:
    """`server.port: 0` in the file (no flag) binds a free port and prints it."""
    write_config(tmp_path, {"server": {"port": 0}})
    with ServerProcess(cwd=tmp_path, port=None) as server:
        assert server.port > 0
        assert http_get(server.url + "/healthz")[0] == 200
        assert server.stop() == 0


# --- 7: logging

LOUD: Final = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b")


async def test_debug_log_level_garbage_client_logs_end_once_without_noise(tmp_path: Path) -> None:
    """--log-level DEBUG: garbage and disconnects log one INFO `connection end`, nothing louder."""
    config = write_config(tmp_path, FAST)
    with ServerProcess("--config", str(config), "--log-level", "DEBUG", cwd=tmp_path) as server:
        async with aiohttp.ClientSession() as session:
            a = await session.ws_connect(server.ws_url)
            await a.send_json({"type": "hello", "nick": "a"})
            await next_frame(a, "welcome")
            await a.send_str("not json")
            assert (await next_frame(a, "error"))["code"] == "bad_json"
            await a.close()
            assert a.close_code == 1000

        # b says hello, sends garbage and drops TCP without a close handshake.
        sock = raw_ws(server.host, server.port)
        with sock:
            sock.sendall(masked_frame(json.dumps({"type": "hello", "nick": "b"}).encode()))
            assert read_text_frame(sock)["type"] == "welcome"
            sock.sendall(masked_frame(b"not json"))
            assert read_text_frame(sock)["code"] == "bad_json"

        await asyncio.to_thread(server.wait_stderr, "nick=a", DEADLINE)
        await asyncio.to_thread(server.wait_stderr, "nick=b", DEADLINE)
        assert await asyncio.to_thread(server.terminate) == 0

    stderr = server.stderr_text()
    assert "Traceback" not in stderr
    assert not [line for line in stderr.splitlines() if LOUD.search(line)], stderr
    assert " DEBUG " in stderr, "--log-level DEBUG lets debug records through"
    ends = [line for line in stderr.splitlines() if "connection end" in line]
    a_ends = [line for line in ends if "nick=a " in line]
    b_ends = [line for line in ends if "nick=b " in line]
    assert len(a_ends) == 1 and len(b_ends) == 1, ends
    assert all(" INFO " in line for line in a_ends + b_ends), ends
    assert "code=1000" in a_ends[0], a_ends
    assert "code=" in b_ends[0], b_ends


# --- 8: packaging


def test_wheel_carries_templates_and_static_files(tmp_path: Path) -> None:
    """The wheel built from the checkout holds chat/templates/index.html and chat/static/."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert result.returncode == 0, result.stderr
    wheels = list(tmp_path.glob("*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = wheel.namelist()
    assert "chat/templates/index.html" in names
    static = {name for name in names if name.startswith("chat/static/")}
    assert static, names
    assert static == {f"chat/static/{rel.as_posix()}" for rel in tree_files(ROOT / "static")}


# --- 9: help


def test_help_names_the_installed_program_and_the_token_command() -> None:
    """`chat --help` says `usage: chat` (not `python -m chat`) and shows `chat token`."""
    script = Path(sys.executable).parent / "chat"
    assert script.exists(), f"{script}: the installed `chat` script is missing"
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True,
                          timeout=STARTUP_TIMEOUT, check=False, env=server_env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: chat "), done.stdout
    assert "chat token NICK" in done.stdout, done.stdout
    token = subprocess.run([str(script), "token", "--help"], capture_output=True, text=True,
                           timeout=STARTUP_TIMEOUT, check=False, env=server_env())
    assert token.stdout.startswith("usage: chat token "), token.stdout


def test_help_under_dash_m_names_python_dash_m_chat() -> None:
    """`python -m chat --help` says `usage: python -m chat` and shows the token command."""
    done = run_chat("--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m chat "), done.stdout
    assert "python -m chat token NICK" in done.stdout, done.stdout

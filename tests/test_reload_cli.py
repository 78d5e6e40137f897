"""SIGHUP on a real `python -m chat` (contract section 8): what reloads, what does not."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest
from aiohttp import WSMsgType

from chat.ws import FRAME_CEILING
from tests.helpers import DEADLINE, merge
from tests.serverproc import ServerProcess, write_config

RELOADED: Final = "configuration reloaded from"
NOT_RELOADED: Final = "configuration not reloaded"

BASE: Final[dict[str, Any]] = {
    "server": {"shutdown_timeout": 2},
    "heartbeat": {"interval": 0.2, "timeout": 0.6},
    "cleanup": {"interval": 0.1},
    "history": {"backend": "memory"},
}


def settings(config: dict[str, Any]) -> dict[str, Any]:
    """welcome's heartbeat and limits for `config` over the defaults (as the contract lists)."""
    heartbeat = config.get("heartbeat", {})
    limits = config.get("limits", {})
    rate = {"messages": 5, "per": 1.0, "burst": 10, **limits.get("rate", {})}
    join_rate = {"messages": 5, "per": 1.0, "burst": 40, **limits.get("join_rate", {})}
    return {
        "heartbeat": {"interval": heartbeat["interval"], "timeout": heartbeat["timeout"]},
        "limits": {
            "text": limits.get("max_text", 2000),
            "frame": limits.get("max_frame", 16384),
            "rooms": limits.get("max_rooms", 20),
            "rate": rate,
            "join_rate": join_rate,
        },
    }


class Reloadable:
    """A server started on `tmp_path/config.yaml`, and the means to change and reload it."""

    def __init__(self, tmp_path: Path, config: dict[str, Any], *args: str) -> None:
        self.tmp_path = tmp_path
        self.file = write_config(tmp_path, config)
        self.server = ServerProcess("--config", str(self.file), *args, cwd=tmp_path)

    def __enter__(self) -> Reloadable:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.close()

    async def reload(self, config: dict[str, Any] | str, expect: str = RELOADED) -> str:
        """Write the file (a mapping, or raw text), send SIGHUP, wait for `expect`; stderr."""
        if isinstance(config, str):
            self.file.write_text(config, encoding="utf-8")
        else:
            write_config(self.tmp_path, config)
        seen = self.server.stderr_text().count(expect)
        self.server.send_signal(signal.SIGHUP)
        return await asyncio.to_thread(self.server.wait_stderr, expect, DEADLINE, seen + 1)

    def lines(self, level: str) -> list[str]:
        return [line for line in self.server.stderr_text().splitlines() if f" {level} " in line]


async def next_text(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    """The next text frame (protocol pings and pongs skipped)."""
    async with asyncio.timeout(DEADLINE):
        while True:
            msg = await ws.receive()
            if msg.type is WSMsgType.TEXT:
                frame: dict[str, Any] = json.loads(msg.data)
                return frame
            assert msg.type in (WSMsgType.PING, WSMsgType.PONG), msg


async def hello(ws: aiohttp.ClientWebSocketResponse, nick: str) -> dict[str, Any]:
    await ws.send_json({"type": "hello", "nick": nick})
    welcome = await next_text(ws)
    assert welcome["type"] == "welcome", welcome
    return welcome


async def welcome_of(server: ServerProcess, **headers: str) -> dict[str, Any]:
    """welcome as a new connection gets it now."""
    async with aiohttp.ClientSession() as session, session.ws_connect(
        server.ws_url, headers=headers
    ) as ws:
        return await hello(ws, "probe")


async def test_settings_frame_to_open_connection_and_new_welcome(tmp_path: Path) -> None:
    """A reload changing heartbeat and limits sends settings, and new welcomes carry them."""
    new = merge(BASE, {
        "heartbeat": {"interval": 0.25, "timeout": 0.9},
        "limits": {"max_text": 500, "join_rate": {"burst": 7}},
    })
    with Reloadable(tmp_path, BASE) as srv:
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(srv.server.ws_url)
            assert {k: v for k, v in (await hello(ws, "alice")).items()
                    if k in ("heartbeat", "limits")} == settings(BASE)
            await srv.reload(new)
            assert await next_text(ws) == {"type": "settings", **settings(new)}
            await ws.send_json({"type": "ping"})
            assert (await next_text(ws))["type"] == "pong"  # one settings frame, no more
            await ws.close()
        welcome = await welcome_of(srv.server)
        assert {k: welcome[k] for k in ("heartbeat", "limits")} == settings(new)


async def test_no_settings_before_hello_nor_when_unchanged(tmp_path: Path) -> None:
    """No settings frame to a connection without hello, nor after a reload changing neither."""
    with Reloadable(tmp_path, BASE) as srv:
        async with aiohttp.ClientSession() as session:
            anonymous = await session.ws_connect(srv.server.ws_url)
            await anonymous.send_json({"type": "ping", "t": 1})
            assert (await next_text(anonymous))["type"] == "pong"
            greeted = await session.ws_connect(srv.server.ws_url)
            await hello(greeted, "bob")
            # A key welcome does not carry: no settings frame.
            await srv.reload(merge(BASE, {"limits": {"max_connections": 50}}))
            await greeted.send_json({"type": "ping", "t": 2})
            assert (await next_text(greeted))["type"] == "pong"
            await srv.reload(merge(BASE, {"heartbeat": {"interval": 0.3, "timeout": 0.9}}))
            assert (await next_text(greeted))["type"] == "settings"
            # Frames are sent in order: had a settings frame been queued, it would come first.
            await anonymous.send_json({"type": "ping", "t": 3})
            assert (await next_text(anonymous))["type"] == "pong"
            await anonymous.close()
            await greeted.close()


async def test_shortened_timeout_reaps_a_silent_connection(tmp_path: Path) -> None:
    """Long heartbeat and sweep at start; after the reload a silent peer is closed with 4000."""
    slow = merge(BASE, {"heartbeat": {"interval": 20, "timeout": 60}, "cleanup": {"interval": 30}})
    with Reloadable(tmp_path, slow) as srv:
        async with aiohttp.ClientSession() as session:
            # Never answers protocol pings, never sends again after its hello.
            ghost = await session.ws_connect(srv.server.ws_url, autoping=False)
            await hello(ghost, "ghost")
            await srv.reload(BASE)
            # The 30 s sweep must not be waited out: 4000 within a few of the new timeouts.
            async with asyncio.timeout(DEADLINE):
                while (msg := await ghost.receive()).type is not WSMsgType.CLOSE:
                    assert msg.type in (WSMsgType.PING, WSMsgType.TEXT), msg
            assert msg.data == 4000


@pytest.mark.parametrize(
    ("text", "names"),
    [
        pytest.param("heartbeat: [unclosed\n", "config.yaml: invalid YAML: ", id="broken-yaml"),
        pytest.param(
            "heartbeat: {interval: 0.2, timeout: 0.1}\n",
            "config.yaml: heartbeat.timeout: ",
            id="invalid-value",
        ),
        pytest.param(
            "limits: {rate: {burst: 0}}\n", "config.yaml: limits.rate.burst: ", id="nested-key"
        ),
        pytest.param("heartbeat: {timout: 3}\n", "config.yaml: heartbeat.timout: ", id="unknown"),
    ],
)
async def test_bad_file_logs_one_error_and_keeps_serving(
    tmp_path: Path, text: str, names: str
) -> None:
    """A file that no longer loads: one ERROR naming file and key; old settings still served."""
    with Reloadable(tmp_path, BASE) as srv:
        async with aiohttp.ClientSession() as session:
            alice = await session.ws_connect(srv.server.ws_url)
            await hello(alice, "alice")
            await srv.reload(text, expect=NOT_RELOADED)
            errors = srv.lines("ERROR")
            assert len(errors) == 1, srv.server.stderr_text()
            assert names in errors[0], errors
            # Still serving, with the configuration it had, and alice is left alone.
            welcome = await welcome_of(srv.server)
            assert welcome["heartbeat"] == settings(BASE)["heartbeat"]
            await alice.send_json({"type": "ping"})
            assert (await next_text(alice))["type"] == "pong"
            await alice.close()
        assert srv.server.proc is not None and srv.server.proc.poll() is None
        assert srv.lines("WARNING") == []
        assert await asyncio.to_thread(srv.server.stop) == 0
    assert "Traceback" not in srv.server.stderr_text()


async def test_restart_only_key_warned_once_and_rest_applied(tmp_path: Path) -> None:
    """A changed restart-only key: one WARNING naming it; the other keys still apply."""
    changed = merge(BASE, {
        "history": {"retain": 3},
        "server": {"port": 1},  # --port on the command line wins: no warning for it
        "heartbeat": {"interval": 0.3, "timeout": 0.9},
    })
    with Reloadable(tmp_path, BASE) as srv:
        await srv.reload(changed)
        warnings = srv.lines("WARNING")
        assert len(warnings) == 1, srv.server.stderr_text()
        assert "config.yaml: history.retain: " in warnings[0]
        assert "needs a restart" in warnings[0]
        assert (await welcome_of(srv.server))["heartbeat"] == {"interval": 0.3, "timeout": 0.9}
        assert srv.lines("ERROR") == []


async def test_new_allowed_origins_apply_to_the_next_upgrade(tmp_path: Path) -> None:
    """An origin added by a reload may upgrade at once; one removed is refused at once."""
    app = "https://app.example"
    with Reloadable(tmp_path, BASE) as srv:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await welcome_of(srv.server, Origin=app)
        assert refused.value.status == 403
        await srv.reload(merge(BASE, {"security": {"allowed_origins": [app]}}))
        assert (await welcome_of(srv.server, Origin=app))["type"] == "welcome"
        await srv.reload(BASE)
        with pytest.raises(aiohttp.WSServerHandshakeError) as again:
            await welcome_of(srv.server, Origin=app)
        assert again.value.status == 403


async def test_new_secret_applies_to_the_next_hello(tmp_path: Path) -> None:
    """auth.secret set by a reload: the next hello without a token is refused."""
    with Reloadable(tmp_path, BASE) as srv:
        async with aiohttp.ClientSession() as session:
            before = await session.ws_connect(srv.server.ws_url)
            await hello(before, "early")
            await srv.reload(merge(BASE, {"auth": {"secret": "s" * 32}}))
            late = await session.ws_connect(srv.server.ws_url)
            await late.send_json({"type": "hello", "nick": "late"})
            assert (await next_text(late))["code"] == "unauthorized"
            await before.send_json({"type": "ping"})
            assert (await next_text(before))["type"] == "pong"  # open sessions stay
            await before.close()
            await late.close()


# --- log.format: json


def json_lines(stderr: str) -> list[dict[str, Any]]:
    """Every stderr line parsed, asserted to be a JSON object with the four keys."""
    out = []
    for line in stderr.splitlines():
        obj = json.loads(line)
        assert isinstance(obj, dict), line
        assert {"ts", "level", "logger", "message"} <= obj.keys(), line
        out.append(obj)
    return out


async def test_json_logs_every_line_an_object_with_connection_end_fields(tmp_path: Path) -> None:
    """log.format json: each stderr line is JSON; connection end and access log have fields."""
    with Reloadable(tmp_path, merge(BASE, {"log": {"format": "json"}})) as srv:
        async with aiohttp.ClientSession() as session:
            async with session.get(srv.server.url + "/healthz") as response:
                assert response.status == 200
            ws = await session.ws_connect(srv.server.ws_url)
            await hello(ws, "alice")
            await ws.close()
            await asyncio.to_thread(srv.server.wait_stderr, "connection end", DEADLINE)
        await srv.reload(merge(BASE, {"log": {"format": "json"}, "history": {"retain": 2}}))
        assert await asyncio.to_thread(srv.server.stop) == 0
    lines = json_lines(srv.server.stderr_text())
    (end,) = [obj for obj in lines if obj["message"].startswith("connection end")]
    assert end["level"] == "INFO" and end["logger"] == "chat.ws"
    assert (end["nick"], end["remote"], end["code"]) == ("alice", "127.0.0.1", 1000)
    assert isinstance(end["reason"], str) and isinstance(end["duration"], float)
    access = [obj for obj in lines if obj["logger"] == "aiohttp.access"]
    assert any("GET /healthz" in obj["message"] for obj in access), access
    (warning,) = [obj for obj in lines if obj["level"] == "WARNING"]
    assert "history.retain" in warning["message"]


async def test_sighup_switches_text_logs_to_json(tmp_path: Path) -> None:
    """Reloading log.format from text to json turns every later line into JSON."""
    with Reloadable(tmp_path, BASE) as srv:
        await srv.reload(merge(BASE, {"log": {"format": "json"}}))
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(srv.server.ws_url)
            await hello(ws, "bob")
            await ws.close()
        await asyncio.to_thread(srv.server.wait_stderr, "connection end", DEADLINE)
        assert await asyncio.to_thread(srv.server.stop) == 0
    stderr = srv.server.stderr_text()
    start = stderr.index("{")  # lines logged before the reload stay text
    assert start == 0 or stderr[start - 1] == "\n", stderr
    lines = json_lines(stderr[start:])
    assert lines[0]["message"] == "configuration reloaded from " + str(srv.file)
    assert [obj["nick"] for obj in lines if "nick" in obj] == ["bob"]


async def test_log_level_from_the_command_line_survives_a_reload(tmp_path: Path) -> None:
    """--log-level WARNING still holds after a reload: no INFO lines, the WARNING is there."""
    config = merge(BASE, {"log": {"format": "json"}})
    with Reloadable(tmp_path, config, "--log-level", "WARNING") as srv:
        await srv.reload(merge(config, {"history": {"retain": 2}}), expect="history.retain")
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(srv.server.ws_url)
            await hello(ws, "carol")
            await ws.close()
        assert await asyncio.to_thread(srv.server.stop) == 0
    lines = json_lines(srv.server.stderr_text())
    assert [obj["level"] for obj in lines] == ["WARNING"], lines


async def test_lowered_max_frame_applies_to_an_open_connection(tmp_path: Path) -> None:
    """A reload that lowers limits.max_frame closes an open connection's larger frame 1009."""
    new = merge(BASE, {"limits": {"max_frame": 200}})
    with Reloadable(tmp_path, BASE) as srv:
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(srv.server.ws_url)
            await hello(ws, "alice")
            await srv.reload(new)
            assert (await next_text(ws))["type"] == "settings"
            await ws.send_json({"type": "ping", "t": "x" * 150})  # under 200 bytes
            assert (await next_text(ws))["type"] == "pong"
            await ws.send_json({"type": "ping", "t": "é" * 150})  # 300 bytes of UTF-8
            msg = await asyncio.wait_for(ws.receive(), DEADLINE)
            assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1009)


async def test_raised_max_frame_applies_to_an_open_connection(tmp_path: Path) -> None:
    """A reload that raises limits.max_frame lets an open connection send the larger frame."""
    base = merge(BASE, {"limits": {"max_frame": 200}})
    with Reloadable(tmp_path, base) as srv:
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(srv.server.ws_url)
            await hello(ws, "alice")
            await srv.reload(merge(base, {"limits": {"max_frame": 20000}}))
            settings = await next_text(ws)
            assert (settings["type"], settings["limits"]["frame"]) == ("settings", 20000)
            await ws.send_json({"type": "ping", "t": "x" * 15000})  # over the old 200
            pong = await next_text(ws)
            assert (pong["type"], len(pong["t"])) == ("pong", 15000)


async def test_max_frame_past_an_open_connections_ceiling_is_told_as_its_ceiling(
    tmp_path: Path,
) -> None:
    """A raise past what an open connection's reader takes is told to it as that ceiling."""
    with Reloadable(tmp_path, BASE) as srv:
        async with aiohttp.ClientSession() as session:
            old = await session.ws_connect(srv.server.ws_url)
            await hello(old, "alice")
            await srv.reload(merge(BASE, {"limits": {"max_frame": 200_000}}))
            settings = await next_text(old)
            assert (settings["type"], settings["limits"]["frame"]) == ("settings", FRAME_CEILING)
            new = await session.ws_connect(srv.server.ws_url)
            welcome = await hello(new, "bob")
            assert welcome["limits"]["frame"] == 200_000
            await new.send_json({"type": "ping", "t": "x" * 150_000})
            assert (await next_text(new))["type"] == "pong"

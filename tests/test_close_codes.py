"""How connections end: the close code counted and logged is bounded and is the one sent."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient

from chat import protocol
from chat.app import create_app
from chat.keys import HUB
from tests.helpers import DEADLINE, Peer, abort, make_config
from tests.rawws import RawWebSocket, masked_frame

Client = TestClient[Any, Any]
CLOSED = re.compile(r'^chat_connections_closed_total\{code="([^"]*)"\} (\S+)$', re.MULTILINE)


@pytest.fixture
async def client(aiohttp_client: Any) -> Client:
    config = make_config({"limits": {"max_frame": 200}})
    result: Client = await aiohttp_client(create_app(config))
    return result


async def closes(client: Client) -> dict[str, float]:
    """chat_connections_closed_total by label, once at least one connection has ended."""
    async with asyncio.timeout(DEADLINE):
        while True:
            text = await (await client.get("/metrics")).text()
            found = {code: float(value) for code, value in CLOSED.findall(text)}
            if found:
                return found
            await asyncio.sleep(0.01)


def ends(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The code= field of every 'connection end' line logged."""
    return [m.group(1) for r in caplog.records
            if (m := re.search(r"connection end: .* code=(\S+)", r.getMessage()))]


async def test_oversize_counts_1009(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    """A message over max_frame is counted and logged under 1009, the code the client got."""
    caplog.set_level(logging.INFO)
    peer = Peer(await client.ws_connect("/ws"))
    await peer.send("x" * 300)
    assert await peer.closed() == 1009
    assert await closes(client) == {"1009": 1.0}
    assert ends(caplog) == ["1009"]


async def test_bad_utf8_counts_1007(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    """A text frame that is not UTF-8 is counted and logged under 1007, the code sent."""
    caplog.set_level(logging.INFO)
    peer = Peer(await client.ws_connect("/ws"))
    await peer.ws.send_frame(b"\xff\xfe", WSMsgType.TEXT)
    assert await peer.closed() == 1007
    assert await closes(client) == {"1007": 1.0}
    assert ends(caplog) == ["1007"]


async def test_protocol_violation_counts_1002(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """A frame with a reserved bit set is counted and logged under 1002, not 1006."""
    caplog.set_level(logging.INFO)
    sock = await RawWebSocket.open(client.host, client.port)
    sock.writer.write(masked_frame(b'{"type": "ping"}', first=0xC1))
    try:
        assert await closes(client) == {"1002": 1.0}
        assert ends(caplog) == ["1002"]
    finally:
        sock.abort()


@pytest.mark.parametrize(("code", "label"), [(1000, "1000"), (4999, "other"), (3000, "other"),
                                             (4001, "other"), (1001, "1001")])
async def test_client_chosen_codes_are_bounded(
    client: Client, caplog: pytest.LogCaptureFixture, code: int, label: str
) -> None:
    """A close code the client picks is counted and logged as itself only if the server knows it."""
    caplog.set_level(logging.INFO)
    peer = Peer(await client.ws_connect("/ws"))
    await peer.ws.close(code=code)
    assert await closes(client) == {label: 1.0}
    assert ends(caplog) == [label]


async def test_abrupt_end_counts_1006(client: Client) -> None:
    """A connection dropped without a close frame is counted under 1006, never None."""
    peer = Peer(await client.ws_connect("/ws"))
    await peer.hello("alice")
    abort(peer.ws)
    assert await closes(client) == {"1006": 1.0}


async def test_reader_crash_closes_1011_logged_once(
    client: Client, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in handling what the reader got closes 1011, with one traceback per connection."""
    caplog.set_level(logging.INFO)

    def broken(t: Any, ts: int) -> bytes:
        raise RuntimeError("a bug")  # fault injection: no input makes the real one raise

    monkeypatch.setattr(protocol, "pong_frame", broken)
    peer = Peer(await client.ws_connect("/ws"))
    for n in range(5):
        await peer.send({"type": "ping", "t": n})
    assert await peer.closed() == 1011
    await asyncio.wait_for(client.app[HUB].wait_empty(), DEADLINE)
    assert await closes(client) == {"1011": 1.0}
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1 and tracebacks[0].name.startswith("chat"), tracebacks
    assert ends(caplog) == ["1011"]


async def test_dispatcher_crash_closes_1011_logged_once(
    client: Client, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in handling a request closes 1011, with one traceback per connection."""
    caplog.set_level(logging.INFO)
    hub = client.app[HUB]

    def broken(*args: Any) -> None:
        raise RuntimeError("a bug")  # fault injection

    monkeypatch.setattr(hub, "typing", broken)
    peer = Peer(await client.ws_connect("/ws"))
    await peer.hello("alice")
    await peer.join("lobby")
    for _ in range(5):
        await peer.send({"type": "typing", "room": "lobby"})
    assert await peer.closed() == 1011
    assert await closes(client) == {"1011": 1.0}
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1 and tracebacks[0].name.startswith("chat"), tracebacks

"""Upgrade refusals on a real socket (contract section 2): 403 origin, 429/503 caps, proxies."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from typing import Any

import pytest
from aiohttp.typedefs import LooseHeaders
from multidict import CIMultiDict

from chat.keys import HUB
from tests.helpers import (
    DEADLINE,
    Client,
    Peer,
    abort,
    app_client,
    gauge,
    refused,
    until,
)
from tests.rawws import upgrade_request


async def accepted(client: Client, headers: LooseHeaders | None = None) -> Peer:
    """A WebSocket the server accepted, proven by a ping answered with a pong."""
    peer = Peer(await client.ws_connect("/ws", headers=headers or {}))
    await peer.send({"type": "ping", "t": 1})
    await peer.next_is("pong", t=1)
    return peer


def own(client: Client) -> str:
    return f"http://{client.host}:{client.port}"


# ---------------------------------------------------------------------- origins


@pytest.mark.parametrize(
    "origin", ["http://evil.example", "https://evil.example", "null", "not an origin", ""]
)
async def test_foreign_origin_refused_403(aiohttp_client: Any, origin: str) -> None:
    """Another site's Origin, `null` or a malformed one gets 403 before the upgrade."""
    client = await app_client(aiohttp_client)
    assert await refused(client, {"Origin": origin}) == 403
    assert client.app[HUB].per_ip == {}
    assert not client.app[HUB].connections


async def test_own_origin_with_other_port_or_scheme_refused(aiohttp_client: Any) -> None:
    """The server's host on another port or scheme is another origin."""
    client = await app_client(aiohttp_client)
    assert await refused(client, {"Origin": f"https://{client.host}:{client.port}"}) == 403
    assert await refused(client, {"Origin": f"http://{client.host}:{client.port + 1}"}) == 403


async def test_own_origin_accepted(aiohttp_client: Any) -> None:
    """The page's own origin (scheme and Host of the upgrade) may connect."""
    client = await app_client(aiohttp_client)
    await accepted(client, {"Origin": own(client)})
    await accepted(client, {"Origin": own(client).replace("http", "HTTP", 1)})


async def test_own_origin_from_host_header_with_default_port(aiohttp_client: Any) -> None:
    """Own origin comes from the Host header; port 80 is http's default on either side."""
    client = await app_client(aiohttp_client)
    await accepted(client, {"Host": "Chat.Example:80", "Origin": "http://chat.example"})
    await accepted(client, {"Host": "chat.example", "Origin": "http://CHAT.example:80"})
    assert await refused(client, {"Host": "chat.example", "Origin": "http://evil.example"}) == 403


async def test_listed_origin_accepted(aiohttp_client: Any) -> None:
    """An origin in security.allowed_origins may connect, compared like the own origin."""
    client = await app_client(
        aiohttp_client, {"security": {"allowed_origins": ["https://app.example"]}}
    )
    await accepted(client, {"Origin": "https://APP.example:443"})
    assert await refused(client, {"Origin": "http://app.example"}) == 403


async def test_no_origin_accepted(aiohttp_client: Any) -> None:
    """A client without Origin (not a browser) is not refused for that."""
    client = await app_client(aiohttp_client)
    await accepted(client)


async def test_forwarded_proto_ignored_from_untrusted_peer(aiohttp_client: Any) -> None:
    """X-Forwarded-Proto from a peer that is not a trusted proxy does not change the origin."""
    client = await app_client(aiohttp_client)
    headers = {"Host": "chat.example", "X-Forwarded-For": "203.0.113.9",
               "X-Forwarded-Proto": "https", "Origin": "https://chat.example"}
    assert await refused(client, headers) == 403


async def test_forwarded_proto_from_trusted_proxy_counts(aiohttp_client: Any) -> None:
    """Behind a trusted TLS-terminating proxy the page's https origin is the own origin."""
    client = await app_client(aiohttp_client, {"security": {"trusted_proxies": ["127.0.0.1"]}})
    headers = {"Host": "chat.example", "X-Forwarded-For": "203.0.113.9",
               "X-Forwarded-Proto": "https", "Origin": "https://chat.example"}
    await accepted(client, headers)
    assert await refused(client, {**headers, "Origin": "http://chat.example"}) == 403


async def test_forwarded_proto_from_trusted_proxy_without_forwarded_for(
    aiohttp_client: Any,
) -> None:
    """A trusted proxy's X-Forwarded-Proto counts even without an X-Forwarded-For header."""
    client = await app_client(aiohttp_client, {"security": {"trusted_proxies": ["127.0.0.1"]}})
    headers = {"Host": "chat.example", "X-Forwarded-Proto": "https",
               "Origin": "https://chat.example"}
    await accepted(client, headers)


# ---------------------------------------------------------------------- caps


async def test_per_ip_cap_429_and_slot_freed_on_close(aiohttp_client: Any) -> None:
    """Past max_connections_per_ip the upgrade gets 429; a closed one frees its slot, exactly."""
    client = await app_client(aiohttp_client, {"limits": {"max_connections_per_ip": 3}})
    hub = client.app[HUB]
    peers = [await accepted(client) for _ in range(3)]
    assert hub.per_ip == {"127.0.0.1": 3}
    assert await refused(client) == 429
    assert hub.per_ip == {"127.0.0.1": 3}  # a refusal is not counted

    await peers[0].ws.close()
    await until(lambda: hub.per_ip.get("127.0.0.1") == 2)
    peers[0] = await accepted(client)
    assert await refused(client) == 429

    abort(peers[1].ws)  # abruptly: no close frame, just a dropped TCP connection
    await until(lambda: hub.per_ip.get("127.0.0.1") == 2)
    peers[1] = await accepted(client)
    assert hub.per_ip == {"127.0.0.1": 3}
    assert await refused(client) == 429

    for peer in peers:
        await peer.ws.close()
    await asyncio.wait_for(hub.wait_empty(), DEADLINE)
    assert hub.per_ip == {}
    assert await gauge(client) == 0


async def test_total_cap_503(aiohttp_client: Any) -> None:
    """Past max_connections the upgrade gets 503, whatever the address."""
    client = await app_client(aiohttp_client, {"limits": {"max_connections": 2}})
    hub = client.app[HUB]
    first = await accepted(client)
    await accepted(client)
    assert await refused(client) == 503
    assert len(hub.connections) == 2
    await first.ws.close()
    await until(lambda: len(hub.connections) == 1)
    await accepted(client)


async def test_503_while_shutting_down(aiohttp_client: Any) -> None:
    """Once shutdown starts, open sockets close with 1001 and new upgrades get 503."""
    client = await app_client(aiohttp_client)
    peer = await accepted(client)
    shutdown = asyncio.create_task(client.app.shutdown())
    assert await peer.closed() == 1001
    await asyncio.wait_for(shutdown, DEADLINE)
    assert await refused(client) == 503


async def test_plain_get_of_ws_is_not_counted(aiohttp_client: Any) -> None:
    """A GET /ws that is no WebSocket handshake is answered 4xx and holds no slot."""
    client = await app_client(aiohttp_client, {"limits": {"max_connections_per_ip": 1}})
    response = await client.get("/ws")
    assert 400 <= response.status < 500
    response = await client.get("/ws", headers={"Upgrade": "websocket", "Connection": "Upgrade"})
    assert 400 <= response.status < 500
    assert client.app[HUB].per_ip == {}
    await accepted(client)


# ---------------------------------------------------------------------- proxies


async def test_trusted_proxy_caps_forwarded_address(aiohttp_client: Any) -> None:
    """Behind a trusted proxy each forwarded client address gets its own per-ip cap."""
    client = await app_client(aiohttp_client, {
        "security": {"trusted_proxies": ["127.0.0.1/32"]},
        "limits": {"max_connections_per_ip": 2},
    })
    hub = client.app[HUB]
    one = {"X-Forwarded-For": "203.0.113.9"}
    two = {"X-Forwarded-For": "203.0.113.10"}
    await accepted(client, one)
    await accepted(client, one)
    assert await refused(client, one) == 429
    # A forged entry left of the proxy's own does not buy a fresh cap.
    assert await refused(client, {"X-Forwarded-For": "198.51.100.1, 203.0.113.9"}) == 429
    await accepted(client, two)
    await accepted(client, {"X-Forwarded-For": "198.51.100.1, 203.0.113.10"})
    assert await refused(client, two) == 429
    assert hub.per_ip == {"203.0.113.9": 2, "203.0.113.10": 2}


async def test_forwarded_for_split_over_header_lines(aiohttp_client: Any) -> None:
    """X-Forwarded-For sent as several header lines is one list: the rightmost hop counts."""
    # HAProxy's `option forwardfor`, for one, adds its own line instead of appending.
    client = await app_client(aiohttp_client, {
        "security": {"trusted_proxies": ["127.0.0.1/32"]},
        "limits": {"max_connections_per_ip": 1},
    })
    def lines(forged: str) -> CIMultiDict[str]:
        return CIMultiDict([("X-Forwarded-For", forged), ("X-Forwarded-For", "203.0.113.9")])

    await accepted(client, lines("198.51.100.1"))
    assert await refused(client, lines("198.51.100.2")) == 429
    assert client.app[HUB].per_ip == {"203.0.113.9": 1}


async def test_forwarded_for_ignored_without_trusted_proxies(aiohttp_client: Any) -> None:
    """Without trusted proxies X-Forwarded-For is ignored: the TCP peer is counted."""
    client = await app_client(aiohttp_client, {"limits": {"max_connections_per_ip": 2}})
    await accepted(client, {"X-Forwarded-For": "203.0.113.9"})
    await accepted(client, {"X-Forwarded-For": "203.0.113.10"})
    assert await refused(client, {"X-Forwarded-For": "203.0.113.11"}) == 429
    assert client.app[HUB].per_ip == {"127.0.0.1": 2}


async def test_forwarded_for_ignored_from_untrusted_peer(aiohttp_client: Any) -> None:
    """A peer outside security.trusted_proxies cannot choose its counted address."""
    client = await app_client(aiohttp_client, {
        "security": {"trusted_proxies": ["10.0.0.0/8"]},
        "limits": {"max_connections_per_ip": 1},
    })
    await accepted(client, {"X-Forwarded-For": "203.0.113.9"})
    assert await refused(client, {"X-Forwarded-For": "203.0.113.10"}) == 429
    assert client.app[HUB].per_ip == {"127.0.0.1": 1}


# ---------------------------------------------------------------------- extensions


async def test_permessage_deflate_not_negotiated(aiohttp_client: Any) -> None:
    """A client offering permessage-deflate gets an uncompressed WebSocket."""
    client = await app_client(aiohttp_client)
    ws = await client.ws_connect("/ws", compress=15)
    assert not ws.compress
    peer = Peer(ws)
    await peer.send({"type": "ping", "t": "x" * 1000})
    await peer.next_is("pong", t="x" * 1000)


async def test_error_answers_carry_hardening_headers(client: Any) -> None:
    """404, 405 and a refused upgrade carry nosniff and Referrer-Policy, and no traceback."""
    for method, path, headers in [
        ("GET", "/nope", {}),
        ("POST", "/healthz", {}),
        ("GET", "/ws", {"Origin": "https://evil.example", "Upgrade": "websocket",
                        "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}),
    ]:
        response = await client.request(method, path, headers=headers)
        assert response.status in (403, 404, 405)
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "same-origin"
        assert "Traceback" not in await response.text()


async def test_client_gone_during_upgrade_is_not_logged_as_error(
    aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that resets its socket mid-upgrade is logged at INFO at most, no traceback."""
    caplog.set_level(logging.DEBUG)
    client = await app_client(aiohttp_client)
    hub = client.app[HUB]
    request = upgrade_request(client.host, client.port)
    for _ in range(20):
        _, writer = await asyncio.open_connection(client.host, client.port)
        # Linger 0: closing sends a reset, as a client that gives up does.
        writer.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        writer.write(request)
        writer.transport.abort()
    await accepted(client)
    await until(lambda: len(hub.connections) == 1)

    def gone() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "went away during the upgrade" in r.getMessage()]

    # Proof that the path ran: some resets landed while the 101 was being written.
    await until(gone)
    assert all(r.levelno == logging.INFO for r in gone())
    loud = [r for r in caplog.records if r.levelno > logging.INFO or r.exc_info]
    assert not loud, [(r.name, r.getMessage()) for r in loud]

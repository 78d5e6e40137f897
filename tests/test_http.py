"""The HTTP endpoints other than the WebSocket, on the real app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chat.app import create_app
from chat.keys import HISTORY
from tests.helpers import Connect, make_config


async def test_healthz(client: Any) -> None:
    """/healthz answers 200 {"status": "ok"} while the process serves."""
    response = await client.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}


async def test_readyz_ok_for_each_backend(aiohttp_client: Any, tmp_path: Path) -> None:
    """/readyz is 200 with every backend "ok", for memory and for sqlite."""
    for backend in ("memory", "sqlite"):
        config = make_config({"history": {"backend": backend, "path": str(tmp_path / "r.db")}})
        client = await aiohttp_client(create_app(config))
        response = await client.get("/readyz")
        assert response.status == 200
        assert await response.json() == {"status": "ok", "backends": {"history": "ok"}}
        await client.close()


async def test_readyz_503_names_the_failing_backend(aiohttp_client: Any, tmp_path: Path) -> None:
    """/readyz is 503 "unavailable" with the failing backend's reason when it stops."""
    config = make_config({"history": {"backend": "sqlite", "path": str(tmp_path / "r.db")}})
    app = create_app(config)
    client = await aiohttp_client(app)
    await app[HISTORY].close()
    response = await client.get("/readyz")
    assert response.status == 503
    body = await response.json()
    assert body["status"] == "unavailable"
    assert body["backends"]["history"] not in ("ok", "")


async def test_metrics_exposition(connect: Connect, client: Any) -> None:
    """/metrics is Prometheus text with the contract's three metrics, kept current."""
    alice = await connect("alice")
    await alice.join("lobby")
    await alice.say("lobby", "counted")
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = await response.text()
    assert "# TYPE chat_connections gauge" in text
    assert "chat_connections 1.0" in text
    assert "# TYPE chat_messages_total counter" in text
    assert "chat_messages_total 1.0" in text
    assert "# TYPE chat_heartbeat_timeouts_total counter" in text


async def test_metrics_registry_is_per_app(aiohttp_client: Any) -> None:
    """Two apps in one process keep separate metrics (no global registry)."""
    one = await aiohttp_client(create_app(make_config()))
    two = await aiohttp_client(create_app(make_config()))
    ws = await one.ws_connect("/ws")
    assert "chat_connections 1.0" in await (await one.get("/metrics")).text()
    assert "chat_connections 0.0" in await (await two.get("/metrics")).text()
    await ws.close()


async def test_page_asks_for_a_token_only_in_token_mode(aiohttp_client: Any) -> None:
    """The page says the auth mode; in token mode its sign-in form has a token field."""
    open_page = await (await aiohttp_client(create_app(make_config()))).get("/")
    html = await open_page.text()
    assert 'data-auth="open"' in html and 'id="token"' not in html
    secret = make_config({"auth": {"secret": "s" * 32}})
    token_page = await (await aiohttp_client(create_app(secret))).get("/")
    html = await token_page.text()
    assert 'data-auth="token"' in html and 'id="token"' in html and 'type="password"' in html
    assert "s" * 32 not in html  # the secret never reaches the page


async def test_page_and_static_assets(client: Any) -> None:
    """/ renders the page with its security headers; its assets are served from /static."""
    response = await client.get("/")
    assert response.status == 200
    assert response.content_type == "text/html"
    html = await response.text()
    assert 'data-ws-path="/ws"' in html
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"
    assert "<script>" not in html  # no inline script
    script = await client.get("/static/chat.js")
    assert script.status == 200
    assert "javascript" in script.content_type


async def test_unknown_path_and_method(client: Any) -> None:
    """Unknown paths get 404 and wrong methods 405, plainly."""
    missing = await client.get("/nope")
    assert missing.status == 404
    wrong = await client.post("/api/rooms")
    assert wrong.status == 405
    assert "Traceback" not in await wrong.text()


async def test_api_rooms_empty(client: Any) -> None:
    """/api/rooms is an empty list before anyone joins or speaks."""
    response = await client.get("/api/rooms")
    assert response.status == 200
    assert await response.json() == []

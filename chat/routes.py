"""HTTP endpoints other than the WebSocket: the page, health, readiness, metrics, rooms."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Final

import aiohttp_jinja2
from aiohttp import web

from chat import __version__
from chat.history import BackendUnavailable
from chat.hub import ROOMS_PAGE_MAX
from chat.keys import CONFIG, HISTORY, HUB, METRICS
from chat.metrics import CONTENT_TYPE

logger = logging.getLogger(__name__)

CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def _harden(response: web.StreamResponse) -> None:
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "same-origin")
    if response.content_type == "text/html":
        headers.setdefault("Content-Security-Policy", CSP)
        headers.setdefault("X-Frame-Options", "DENY")


async def security_headers(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """An `on_response_prepare` signal: every answer gets the headers, error answers
    (404, 405, a refused upgrade) included, but the WebSocket's 101.

    A signal rather than a middleware: a middleware's coroutines stay alive for as long
    as a WebSocket is open (two frames per connection), and run on every request.
    """
    if not isinstance(response, web.WebSocketResponse):
        _harden(response)


@aiohttp_jinja2.template("index.html")
async def index(request: web.Request) -> dict[str, Any]:
    config = request.app[CONFIG]
    return {
        "ws_path": "/ws",
        "max_text": config.limits.max_text,
        # In token mode the page asks for a token instead of a nick.
        "auth": "token" if config.auth.secret else "open",
        "static_version": __version__,
    }


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    try:
        history = await request.app[HISTORY].check()
    except Exception as err:  # a readiness probe reports, it does not crash
        logger.warning("history backend check failed: %s", err)
        history = f"error: {err}"
    backends = {"history": history}
    cluster = request.app[HUB].cluster.check()
    if cluster is not None:  # a cluster of other processes: this node's part in it
        backends["cluster"] = cluster
    ok = all(value == "ok" for value in backends.values())
    return web.json_response(
        {"status": "ok" if ok else "unavailable", "backends": backends},
        status=200 if ok else 503,
    )


async def metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def api_rooms(request: web.Request) -> web.Response:
    """One page of rooms: `?limit=` (1 to 1000, default 1000) names after `?after=`."""
    query = request.query
    raw = query.get("limit")
    limit = ROOMS_PAGE_MAX
    if raw is not None:
        # Plain digits only: int() would also take " 5", "+5", "5_0", and a huge one raises.
        plain = raw.isascii() and raw.isdigit() and len(raw) <= len(str(ROOMS_PAGE_MAX))
        limit = int(raw) if plain else 0
        if not 1 <= limit <= ROOMS_PAGE_MAX:
            return web.json_response(
                {"error": f"limit must be an integer from 1 to {ROOMS_PAGE_MAX}"}, status=400
            )
    try:
        rooms = await request.app[HUB].room_list(query.get("after"), limit)
    except BackendUnavailable as err:
        return web.json_response(
            {"error": "unavailable", "message": str(err), "retry_after": err.retry_after},
            status=503,
            headers={"Retry-After": str(max(1, round(err.retry_after)))},
        )
    return web.json_response(rooms)


def setup_routes(app: web.Application, static_dir: Path) -> None:
    app.router.add_get("/", index, name="index")
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/rooms", api_rooms)
    app.router.add_static("/static", static_dir, name="static")

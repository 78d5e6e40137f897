"""`create_app(config)`: the one application factory, used by `__main__` and the tests."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import aiohttp_jinja2
import jinja2
from aiohttp import web

from chat import auth, heartbeat, policy, routes
from chat.cluster import Cluster
from chat.config import Config
from chat.connection import Flusher
from chat.history import BACKENDS, HistoryStore
from chat.hub import Hub
from chat.keys import CONFIG, FLUSHER, HISTORY, HUB, METRICS, PROXIES, RECONFIGURED
from chat.metrics import Metrics
from chat.protocol import Close
from chat.ws import websocket_handler

logger = logging.getLogger(__name__)

_PACKAGE: Final = Path(__file__).resolve().parent


def asset_dir(name: str) -> Path:
    """`templates` or `static`: inside the package when installed, else the checkout's."""
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"{name}/ not found next to {_PACKAGE}")


def make_backend(config: Config, metrics: Metrics) -> tuple[HistoryStore, Cluster]:
    """The history store and the cluster for `history.backend`, from `chat.history.BACKENDS`
    (the configuration was validated against the same names)."""
    return BACKENDS[config.history.backend](config, metrics)


def create_app(config: Config) -> web.Application:
    app = web.Application()
    metrics = Metrics()
    store, cluster = make_backend(config, metrics)
    app[CONFIG] = config
    app[METRICS] = metrics
    app[HISTORY] = store
    app[HUB] = Hub(config, store, metrics, cluster)
    app[FLUSHER] = Flusher()
    app[PROXIES] = policy.networks(config.security.trusted_proxies)
    app[RECONFIGURED] = asyncio.Event()
    if config.auth.secret is not None and auth.weak_secret(config.auth.secret):
        logger.warning("auth.secret is shorter than 32 bytes: tokens are easier to forge")

    aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(asset_dir("templates")),
        autoescape=jinja2.select_autoescape(["html"]),
    )
    app.on_response_prepare.append(routes.security_headers)
    routes.setup_routes(app, asset_dir("static"))
    app.router.add_get("/ws", websocket_handler)

    app.on_startup.append(_bind_flusher)
    app.cleanup_ctx.append(_history_ctx)
    app.cleanup_ctx.append(_cluster_ctx)
    app.cleanup_ctx.append(heartbeat.cleanup_ctx)
    app.on_shutdown.append(_close_connections)
    return app


async def _bind_flusher(app: web.Application) -> None:
    """The flusher schedules its writes on the loop the app runs on."""
    app[FLUSHER].bind(asyncio.get_running_loop())


async def _history_ctx(app: web.Application) -> AsyncIterator[None]:
    store = app[HISTORY]
    await store.open()
    yield
    # Runs after every connection is closed: nothing is acknowledged after this.
    await store.close()


async def _cluster_ctx(app: web.Application) -> AsyncIterator[None]:
    cluster = app[HUB].cluster
    await cluster.start()
    yield
    # After every connection is closed, so that their sessions end cluster-wide.
    await cluster.stop()


async def _close_connections(app: web.Application) -> None:
    """On shutdown: refuse new upgrades, close every WebSocket with 1001, bounded in time."""
    hub = app[HUB]
    hub.shutting_down = True
    conns = list(hub.connections)
    if not conns:
        return
    logger.info("shutting down: closing %d connection(s)", len(conns))
    for conn in conns:
        conn.close(Close.GOING_AWAY, "server shutting down")
    # Give polite closes part of the shutdown budget; peers that do not answer by
    # then are dropped so the process still exits in time.
    try:
        await asyncio.wait_for(hub.wait_empty(), app[CONFIG].server.shutdown_timeout / 2)
    except TimeoutError:
        pass
    for conn in list(hub.connections):
        conn.abort(Close.GOING_AWAY, "server shutting down")

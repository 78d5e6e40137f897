"""Liveness: what is stale is a pure decision; the cleanup coroutine only applies it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from aiohttp import WSMsgType, web

from chat.keys import HUB
from chat.protocol import Close

logger = logging.getLogger(__name__)


class Peer(Protocol):
    @property
    def last_seen(self) -> float: ...


P = TypeVar("P", bound=Peer)


@dataclass(frozen=True, slots=True)
class Sweep(Generic[P]):
    dead: list[P]  # silent for more than `timeout`: close with 4000
    quiet: list[P]  # silent for at least `interval`: send a protocol ping


def sweep(peers: Iterable[P], now: float, interval: float, timeout: float) -> Sweep[P]:
    """Sort peers by how long they have been silent at `now`."""
    dead: list[P] = []
    quiet: list[P] = []
    for peer in peers:
        silent = now - peer.last_seen
        if silent > timeout:
            dead.append(peer)
        elif silent >= interval:
            quiet.append(peer)
    return Sweep(dead, quiet)


def reap(app: web.Application) -> int:
    """One pass of the cleanup coroutine; returns how many connections were closed."""
    hub = app[HUB]
    heartbeat = hub.config.heartbeat
    found = sweep(hub.connections, hub.clock(), heartbeat.interval, heartbeat.timeout)
    for conn in found.dead:
        # Release first, so the presence leave and the freed nick do not wait on a
        # peer that is presumed dead; then drop its socket without waiting for a reply.
        hub.release(conn, "timeout")
        hub.metrics.heartbeat_timeouts.inc()
        conn.abort(Close.HEARTBEAT_TIMEOUT, "heartbeat timeout")
    for conn in found.quiet:
        # Browsers answer protocol pings from the network stack even in a throttled
        # background tab, so a live hidden tab keeps its connection.
        conn.send(b"", WSMsgType.PING)
    return len(found.dead)


async def _cleanup_loop(app: web.Application) -> None:
    hub = app[HUB]
    every = hub.config.cleanup.interval
    while True:
        await asyncio.sleep(every)
        try:
            closed = reap(app)
        except Exception:
            logger.exception("cleanup sweep failed; trying again next interval")
            continue
        if closed:
            logger.info("heartbeat cleanup closed %d connection(s)", closed)


async def cleanup_ctx(app: web.Application) -> AsyncIterator[None]:
    """Run the cleanup coroutine for the life of the app (an `app.cleanup_ctx` entry)."""
    task = asyncio.create_task(_cleanup_loop(app), name="heartbeat-cleanup")
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

"""Liveness: what is stale is a pure decision; the cleanup coroutine only applies it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Generic, Protocol, TypeVar

from aiohttp import WSMsgType, web

from chat.keys import HUB, RECONFIGURED
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


@dataclass(frozen=True, slots=True)
class Stall:
    """A span of clock time during which the server did not run (stopped, VM paused)."""

    start: float
    end: float

    @property
    def length(self) -> float:
        return self.end - self.start


# Lateness below this is load, not a stall: counting it would credit dead peers too.
STALL_FLOOR: Final = 1.0


def stall_between(due: float, woke: float, every: float) -> Stall | None:
    """The stall behind a sleep due at `due` that ended at `woke`, if it was one.

    A sweep later than one more whole `every` (and than STALL_FLOOR) means the process
    did not run meanwhile. The time from the previous sweep to `due` is not counted as
    stalled: it is the sweep period, which the contract's bound already allows for.
    """
    if woke - due > max(every, STALL_FLOOR):
        return Stall(due, woke)
    return None


def recent(stalls: Sequence[Stall], now: float, timeout: float) -> tuple[Stall, ...]:
    """The stalls, oldest first, that may still excuse some peer's silence.

    A peer last seen before a stall ended has been silent, in running time, at least
    the running time since that end; past `timeout` it is dead whatever the stall.
    """
    kept: list[Stall] = []
    running = 0.0
    later = now  # start of the next newer stall, or now
    for stall in reversed(stalls):
        running += later - stall.end
        if running > timeout:
            break
        kept.append(stall)
        later = stall.start
    kept.reverse()
    return tuple(kept)


def silence(last_seen: float, now: float, stalls: Sequence[Stall]) -> float:
    """Seconds since `last_seen` during which the server ran (stalls not counted)."""
    silent = now - last_seen
    for stall in stalls:
        silent -= max(0.0, min(stall.end, now) - max(stall.start, last_seen))
    return silent


def sweep(
    peers: Iterable[P],
    now: float,
    interval: float,
    timeout: float,
    stalls: Sequence[Stall] = (),
) -> Sweep[P]:
    """Sort peers by how long they have been silent at `now`, stalls not counted.

    Frames a client sent while the server was stopped wait in the kernel and are read
    right after it runs again, possibly after this sweep: discounting the stall keeps
    such a client alive whichever runs first.
    """
    dead: list[P] = []
    quiet: list[P] = []
    # A stall only takes time off a silence. So a peer silent for less than `interval`
    # on the clock is neither quiet nor dead (most peers, most sweeps), and one seen
    # since the newest stall ended was silent only while the server ran: both are
    # decided without walking the stalls.
    since = stalls[-1].end if stalls else now
    for peer in peers:
        seen = peer.last_seen
        silent = now - seen
        if silent < interval:
            continue
        if seen < since and stalls:
            silent = silence(seen, now, stalls)
        if silent > timeout:
            dead.append(peer)
        elif silent >= interval:
            quiet.append(peer)
    return Sweep(dead, quiet)


def reap(app: web.Application, stalls: Sequence[Stall] = ()) -> int:
    """One pass of the cleanup coroutine; returns how many connections were closed."""
    hub = app[HUB]
    heartbeat = hub.config.heartbeat
    found = sweep(hub.connections, hub.clock(), heartbeat.interval, heartbeat.timeout, stalls)
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


async def _woken(event: asyncio.Event, within: float) -> bool:
    """Wait up to `within` seconds for `event`; whether it was set."""
    try:
        async with asyncio.timeout(within):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def _cleanup_loop(app: web.Application) -> None:
    hub = app[HUB]
    reconfigured = app[RECONFIGURED]
    stalls: tuple[Stall, ...] = ()
    last = hub.clock()
    while True:
        # Read at every turn: a reload may have changed the interval, and wakes us so
        # that a shorter one does not wait out the old, longer sleep.
        every = hub.config.cleanup.interval
        due = last + every
        wait = due - hub.clock()
        if wait > 0:
            reconfigured.clear()
            if await _woken(reconfigured, wait):
                continue
        now = hub.clock()
        # Only a sleep can be overslept: after a reload that shortened the interval
        # `due` may already be past, which is no stall.
        found = stall_between(due, now, every) if wait > 0 else None
        if found is not None:
            logger.warning(
                "the server did not run for %.1fs (stopped or paused); "
                "that time is not counted against clients' heartbeats",
                found.length,
            )
            stalls = (*stalls, found)
        stalls = recent(stalls, now, hub.config.heartbeat.timeout)
        last = now
        started = time.perf_counter()
        try:
            closed = reap(app, stalls)
        except Exception:
            logger.exception("cleanup sweep failed; trying again next interval")
            continue
        finally:
            hub.metrics.cleanup_sweep_seconds.observe(time.perf_counter() - started)
        if closed:
            logger.info("heartbeat cleanup closed %d connection(s)", closed)


async def cleanup_ctx(app: web.Application) -> AsyncIterator[None]:
    """Run the cleanup coroutine for the life of the app (an `app.cleanup_ctx` entry)."""
    task = asyncio.create_task(_cleanup_loop(app), name="heartbeat-cleanup")
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

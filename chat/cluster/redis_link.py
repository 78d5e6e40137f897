"""One node's link to Redis: the client, error translation, health and restart detection.

Redis errors never reach the hub: every call goes through `RedisLink.run`, which turns a
connection problem into `BackendUnavailable` (the request is answered `unavailable`) and
marks the link down. Nothing is retried automatically: a write whose reply was lost may
have been executed, and only the client knows (by its `cid`) whether to send it again.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.connection import Connection as RedisConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    MaxConnectionsError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from chat.cluster import scripts
from chat.cluster.keys import Keys
from chat.config import RedisConfig
from chat.history import BackendUnavailable
from chat.metrics import Metrics

logger = logging.getLogger("chat.redis")

# Connections one node opens to Redis at most; more requests at once wait for one.
POOL_SIZE: Final = 64
# Seconds a client is told to wait before retrying a request answered `unavailable`.
RETRY_AFTER: Final = 1.0
# Replies that mean "not now" rather than "wrong": Redis is starting or cannot write.
_TRANSIENT: Final = ("LOADING", "BUSY", "MASTERDOWN", "READONLY", "MISCONF", "TRYAGAIN")

_T = TypeVar("_T")



def durable(appendonly: str | None, appendfsync: str | None) -> bool:
    """Nothing acknowledged is lost only with `appendonly yes` and `appendfsync always`."""
    return appendonly == "yes" and appendfsync == "always"


def weakness(appendonly: str | None, appendfsync: str | None) -> str:
    """The setting to name in the warning about weak persistence."""
    if appendonly != "yes":
        return f"appendonly {appendonly or 'unknown'}"
    return f"appendfsync {appendfsync or 'unknown'}"


class RedisLink:
    def __init__(
        self,
        config: RedisConfig,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.keys = Keys(config.prefix)
        self.metrics = metrics
        self.clock = clock
        # A command that takes longer than this counts as Redis not answering; it must
        # stay well below node_timeout so that a stuck Redis is noticed in time to renew.
        self.timeout = max(0.2, min(2.0, config.node_timeout / 4))
        # Any: redis-py's replies are typed as unions of every reply shape; the code that
        # reads them knows the shape of its own commands.
        # A bounded pool that makes a request wait its turn: the default pool refuses
        # the 101st concurrent command ("Too many connections") instead.
        pool = aioredis.BlockingConnectionPool.from_url(
            config.url,
            max_connections=POOL_SIZE,
            timeout=self.timeout,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 0),
            redis_connect_func=self._on_connect,
        )
        self.client: Any = aioredis.Redis.from_pool(pool)  # closes the pool with it
        self.up = False
        self.reason = "not connected yet"
        self.run_id: str | None = None
        # Loop time since when this node has reached Redis without a break (None: not
        # now). The reaper ends other nodes only after node_timeout of it: after an
        # outage every node must have had that long to renew its lease.
        self.healthy_since: float | None = None
        self._warned = False
        self._on_restart: list[Callable[[], None]] = []
        self.say = self.client.register_script(scripts.SAY)
        self.position = self.client.register_script(scripts.POSITION)
        self.hello = self.client.register_script(scripts.HELLO)
        self.end = self.client.register_script(scripts.END)
        self.reap = self.client.register_script(scripts.REAP)
        self.renew = self.client.register_script(scripts.RENEW)
        self.register = self.client.register_script(scripts.REGISTER)
        self.enter = self.client.register_script(scripts.ENTER)
        self.exit = self.client.register_script(scripts.EXIT)

    def on_restart(self, callback: Callable[[], None]) -> None:
        """Call `callback` when Redis turns out to be another process than before."""
        self._on_restart.append(callback)

    async def close(self) -> None:
        await self.client.aclose()

    # ------------------------------------------------------------ calls

    async def run(self, call: Awaitable[_T]) -> _T:
        """Await one Redis call; connection trouble becomes `BackendUnavailable`."""
        try:
            return await call
        except (RedisConnectionError, RedisTimeoutError, OSError) as err:
            if _pool_exhausted(err):
                # This node is busy, Redis is not away: `unavailable`, the link stays up.
                raise BackendUnavailable("the server is busy; retry", RETRY_AFTER) from None
            raise self.failed(err) from None
        except ResponseError as err:
            if _transient(err):
                raise self.failed(err) from None
            raise

    def reply(self, reply: Any) -> Any:
        """One reply of a pipeline run with raise_on_error=False: an error reply becomes
        the exception to raise for its command (`BackendUnavailable` when transient)."""
        if isinstance(reply, ResponseError) and _transient(reply):
            return self.failed(reply)
        if isinstance(reply, RedisConnectionError | RedisTimeoutError):
            return self.failed(reply)
        return reply

    def failed(self, err: BaseException) -> BackendUnavailable:
        """Mark the link down; the error to raise to the request that found out."""
        reason = _describe(err)
        # A reply means Redis is there but will not write (full, a replica, loading):
        # the operator's fix is on Redis's side, not the network's.
        state = "refuses writes" if isinstance(err, ResponseError) else "unreachable"
        if self.up:
            logger.warning("redis %s at %s: %s", state, self.config.url, reason)
        self.up = False
        self.reason = f"redis {state}: {reason}"
        self.healthy_since = None
        self.metrics.redis_up.set(0)
        return BackendUnavailable("the server cannot reach its database; retry", RETRY_AFTER)

    def reached(self) -> bool:
        """Note a successful round trip; True when it ends an outage."""
        if self.up:
            return False
        self.up = True
        self.reason = "ok"
        self.healthy_since = self.clock()
        self.metrics.redis_up.set(1)
        self.metrics.redis_reconnects.inc()
        logger.info("redis reachable at %s", self.config.url)
        return True

    def stalled(self) -> None:
        """This process did not run for a while: it cannot vouch for what it missed."""
        if self.healthy_since is not None:
            self.healthy_since = self.clock()

    def lane(self) -> Lane:
        """A connection of this link's pool for one caller's commands, one at a time."""
        return Lane(self.client.connection_pool)

    async def ping(self) -> None:
        await self.run(self.client.ping())

    async def script(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        return await self.run(script(keys=keys, args=args))

    # ------------------------------------------------------------ connect hook

    async def _on_connect(self, conn: RedisConnection) -> None:
        """Runs on every new connection before it carries anything (redis-py's hook).

        It reads which Redis process this is and how durable it is, and moves the
        service's generation on after a restart that may have lost writes, before any
        command of ours reaches the restarted process.
        """
        try:
            await self._identify(conn)
        except BaseException:
            # redis-py disconnects after a RedisError from this hook only: a socket
            # error, a timeout or a cancellation would leave the half-made connection's
            # socket open until the garbage collector found it.
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)
            raise

    async def _identify(self, conn: RedisConnection) -> None:
        await conn.on_connect()
        info = await _command(conn, "INFO", "server")
        run_id = _info_field(info, "run_id")
        appendonly = appendfsync = None
        try:
            config = await _command(conn, "CONFIG", "GET", "append*")
            if not isinstance(config, dict):  # RESP2 gives a flat list
                config = dict(zip(config[::2], config[1::2], strict=False))
            pairs = {_text(name): _text(value) for name, value in config.items()}
            appendonly = pairs.get("appendonly")
            appendfsync = pairs.get("appendfsync")
        except ResponseError:
            pass  # CONFIG may be disabled (managed Redis): assume the weaker case
        weak = not durable(appendonly, appendfsync)
        if weak and not self._warned:
            self._warned = True
            logger.warning(
                "redis persistence is weaker than appendonly yes + appendfsync always "
                "(%s): acknowledged messages can be lost if Redis stops, and rooms then "
                "start a new epoch",
                weakness(appendonly, appendfsync),
            )
        keys = self.keys
        await _command(
            conn, "EVAL", scripts.BOOT, 2, keys.boot, keys.generation, run_id or "",
            "1" if weak else "0",
        )
        if run_id is not None and run_id != self.run_id:
            restarted = self.run_id is not None
            self.run_id = run_id
            if restarted:
                logger.warning("redis restarted (run_id %s)", run_id)
                if self.healthy_since is not None:
                    self.healthy_since = self.clock()
                for callback in self._on_restart:
                    callback()


class Lane:
    """One pooled connection kept for a caller that sends one command at a time.

    The rounds of says are the hot path of a cluster: through the client, each paid a pool
    checkout and release (an async lock each), the retry wrapper and redis-py's general
    argument packing, together about a third of a node's store path per round. A lane
    takes its connection once and packs its few argument types itself; redis-py still
    connects (running the link's connect hook), times out and disconnects after an error,
    so the next call starts on a fresh connection. Errors go through `RedisLink.run` as
    any other call's.
    """

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._conn: RedisConnection | None = None
        self._busy = False

    async def call(self, *args: bytes | str | int) -> Any:
        """Send one command and read its reply; a reply that is an error is raised."""
        if self._busy:
            raise RuntimeError("a lane carries one command at a time")
        self._busy = True
        try:
            conn = self._conn
            if conn is None:
                conn = self._conn = await self._pool.get_connection()
            elif await self.stale():
                # As the pool checks each connection it hands out: one that Redis closed
                # while it sat idle (its `timeout` setting, a restart, CLIENT KILL) is
                # replaced before it carries a round, not found dead by the round.
                await conn.disconnect()
            # redis-py disconnects after a failed write or read (a timeout, a reset, a
            # cancellation), so a reply never arrives for the wrong command; an error reply
            # leaves the connection usable.
            await conn.send_packed_command(pack(args), check_health=False)
            return await conn.read_response()
        finally:
            self._busy = False

    async def stale(self) -> bool:
        """Whether the kept connection is open but cannot carry a command as it is: Redis
        closed it, or it holds bytes nobody asked for. (No system call: redis-py looks at
        what the event loop has already read.)"""
        conn = self._conn
        if conn is None or not conn.is_connected:
            return False
        try:
            return bool(await conn.can_read())
        except (RedisConnectionError, OSError):
            return True

    async def close(self) -> None:
        """Give the connection back to the pool (closed with the client)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._pool.release(conn)


def pack(args: Sequence[bytes | str | int]) -> bytes:
    """One command in RESP, as redis-py's `pack_command` writes these argument types."""
    parts = [b"*%d\r\n" % len(args)]
    add = parts.append
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, int):
            arg = b"%d" % arg
        add(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


def _pool_exhausted(err: BaseException) -> bool:
    # The blocking pool raises a plain ConnectionError when none came free in time.
    return isinstance(err, MaxConnectionsError) or str(err) == "No connection available."


def _transient(err: ResponseError) -> bool:
    # redis-py strips the code off OOM and READONLY and raises a subclass instead.
    return isinstance(err, OutOfMemoryError | ReadOnlyError) or str(err).startswith(_TRANSIENT)


async def _command(conn: RedisConnection, *args: Any) -> Any:
    await conn.send_command(*args)
    reply = await conn.read_response()
    if isinstance(reply, ResponseError):
        raise reply
    return reply


def _info_field(info: Any, name: str) -> str | None:
    if isinstance(info, dict):
        value = info.get(name)
        return None if value is None else str(value)
    text = info.decode() if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _describe(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    # redis-py drops the error code from these two; the reason should name it.
    if isinstance(err, OutOfMemoryError):
        text = f"OOM {text}"
    elif isinstance(err, ReadOnlyError):
        text = f"READONLY {text}"
    return text.splitlines()[0][:200]


__all__ = ["RETRY_AFTER", "Lane", "RedisError", "RedisLink", "durable", "pack", "weakness"]

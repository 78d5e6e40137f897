"""Many nodes on one Redis: sessions, nicks, membership, and each room's ordered feed.

Per room, a node follows the room's pub/sub channel and keeps the last id it delivered
(`_Feed`). Pub/sub is at-most-once, so a node also reads missing ids from the room's
stream: on a gap, after any reconnect of its subscription, when its own probe does not
come back, and at a periodic position check (which finds the last message before a room
fell silent). What the feed does with each message is `chat.cluster.feed.step`.

Liveness is a lease per node, renewed well before `redis.node_timeout`. Every node's
sessions are listed under it; when a lease runs out, another node ends those sessions in
one script (exactly once), and the node that lost them closes its connections with 1011
when it reaches Redis again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from chat import protocol
from chat.cluster import Claim, Claimed, Entered, Node
from chat.cluster.feed import Step, behind, step
from chat.cluster.redis_link import RETRY_AFTER, RedisLink
from chat.config import Config
from chat.history import BackendUnavailable, Message
from chat.history.redis import RedisHistory
from chat.metrics import Metrics
from chat.protocol import ErrorCode

logger = logging.getLogger("chat.redis")

BACKFILL_BATCH: Final = 500  # stream entries read per round trip when filling a gap
END_BATCH: Final = 200  # sessions ended per round trip
RECONNECT_MIN: Final = 0.05  # s: first wait before re-subscribing after a broken link
RECONNECT_MAX: Final = 1.0  # s: the back-off's cap, well inside the contract's 5 s


@dataclass(eq=False, slots=True)
class _Feed:
    room: str
    channel: bytes
    epoch: str | None = None  # None until positioned
    last: int = 0  # the newest id delivered on this node
    ready: asyncio.Future[None] | None = None
    syncing: bool = False
    idle: bool = False  # no receiver on this node: unsubscribe at the next tick
    suspect: int | None = None  # the stream's newest id when a check found the feed behind
    backlog: list[tuple[str, int, bytes]] = field(default_factory=list)


# A retry that catches nothing: for the pub/sub connection, see RedisCluster._listen.
_NO_RECONNECT: Final = Retry(NoBackoff(), 0, supported_errors=())

class RedisCluster:
    instant = False
    def __init__(
        self,
        config: Config,
        link: RedisLink,
        store: RedisHistory,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config  # the hub swaps it on reload; only reloadable keys are read
        self.link = link
        self.keys = link.keys
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.node_id = secrets.token_hex(8)
        self.feeds: dict[str, _Feed] = {}
        self._channels: dict[bytes, _Feed] = {}
        self._node_channel = self.keys.node_channel(self.node_id).encode()
        self._confirm: dict[bytes, asyncio.Future[None]] = {}
        self._pubsub: Any = None
        self._listening = asyncio.Event()  # set while the subscription is up
        self._registered = False
        self._ends: dict[str, tuple[str, str]] = {}  # session -> (conn, reason) to end
        self._flusher: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._syncs: set[asyncio.Future[Any]] = set()
        self._probe_sent: float | None = None
        self._probe_token = ""
        self._node: Node | None = None
        self._resync = asyncio.Event()
        link.on_restart(self._resync.set)

    @property
    def node(self) -> Node:
        assert self._node is not None, "attach() the hub first"
        return self._node

    @property
    def _ttl(self) -> float:
        return self.config.redis.node_timeout

    def attach(self, node: Node) -> None:
        self._node = node

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start following Redis; a node that cannot reach it starts all the same."""
        with contextlib.suppress(BackendUnavailable):
            await self.link.ping()
            self.link.reached()
            await self._register()
        self._tasks = [
            asyncio.create_task(self._listen(), name="redis-listen"),
            asyncio.create_task(self._lease_loop(), name="redis-lease"),
            asyncio.create_task(self._maintain(), name="redis-maintain"),
        ]

    async def stop(self) -> None:
        flusher = self._flusher
        if flusher is not None:
            # Let a flush in progress finish: its sessions are ended exactly once.
            with contextlib.suppress(TimeoutError, BackendUnavailable):
                await asyncio.wait_for(asyncio.shield(flusher), self.link.timeout * 2)
        background = [*self._tasks, *self._syncs]
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        # The connections are closed by now: end their sessions while Redis answers,
        # then give up the lease so that the others need not wait for it to run out.
        with contextlib.suppress(TimeoutError, BackendUnavailable):
            await asyncio.wait_for(self._flush_ends(), self.link.timeout * 2)
        if self._registered and not self._ends:
            with contextlib.suppress(BackendUnavailable, TimeoutError):
                client = self.link.client
                await asyncio.wait_for(
                    self.link.run(client.delete(self.keys.lease(self.node_id))),
                    self.link.timeout,
                )
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pubsub.aclose(), self.link.timeout)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.link.close(), self.link.timeout)

    def check(self) -> str | None:
        if not self.link.up:
            return self.link.reason
        if not self._listening.is_set():
            return "redis subscription not established"
        return "ok"

    # ------------------------------------------------------------ sessions

    async def hello(self, claim: Claim) -> Claimed | ErrorCode:
        if not self._registered:  # started while Redis was away: not fenced, only new
            await self._register()
        keys = self.keys
        asked = claim.session or ""
        reply = await self.link.script(
            self.link.hello,
            [
                keys.session(asked or "-"),
                keys.nick(claim.key),
                keys.session(claim.new_session),
                keys.node_sessions(self.node_id),
                keys.session_rooms(asked or "-"),
                keys.nodes,
            ],
            [asked, claim.nick, claim.key, self.node_id, claim.conn, claim.new_session,
             keys.prefix],
        )
        kind = _str(reply[0])
        if kind == "fenced":
            await self._fence()
            raise BackendUnavailable("this server lost its sessions; reconnect", RETRY_AFTER)
        if kind == ErrorCode.NICK_TAKEN:
            return ErrorCode.NICK_TAKEN
        rooms = sorted(_str(room) for room in reply[3])
        return Claimed(_str(reply[1]), _str(reply[2]), rooms, taken_over=kind == "takeover")

    def end_session(self, session: str, conn: str, reason: str) -> None:
        self._ends[session] = (conn, reason)
        self._kick_ends()

    def _kick_ends(self) -> None:
        if self._ends and (self._flusher is None or self._flusher.done()):
            self._flusher = asyncio.create_task(self._flush_ends(), name="redis-end-sessions")
            self._flusher.add_done_callback(self._done)

    async def _flush_ends(self) -> None:
        """End the pending sessions, a pipeline of scripts at a time (many die at once
        when a network drops: one round trip per session would trail far behind)."""
        while self._ends:
            batch = list(self._ends.items())[:END_BATCH]
            async with self.link.client.pipeline(transaction=False) as pipe:
                for session, (conn, reason) in batch:
                    await self.link.end(
                        keys=[self.keys.session(session)],
                        args=[session, self.node_id, conn, reason, self.keys.prefix],
                        client=pipe,
                    )
                await self.link.run(pipe.execute())
            for session, pending in batch:
                if self._ends.get(session) == pending:
                    del self._ends[session]

    async def enter(
        self, session: str, room: str, nick: str, max_rooms: int
    ) -> Entered | ErrorCode:
        keys = self.keys
        reply = await self.link.script(
            self.link.enter,
            [keys.session(session), keys.session_rooms(session), keys.members(room), keys.rooms],
            [session, room, nick, max_rooms, self.node_id, keys.room(room),
             protocol.presence_frame(room, "join", nick)],
        )
        if isinstance(reply[0], bytes):
            code = reply[0].decode()
            if code == "gone":
                raise BackendUnavailable("this session moved or ended; reconnect", RETRY_AFTER)
            return ErrorCode(code)  # the script's `too_many_rooms`
        return Entered(bool(reply[0]), [_str(nick) for nick in reply[1]])

    async def exit(self, session: str, room: str, nick: str) -> None:
        keys = self.keys
        await self.link.script(
            self.link.exit,
            [keys.session_rooms(session), keys.members(room)],
            [session, room, keys.room(room), protocol.presence_frame(room, "leave", nick, "left")],
        )

    async def typing(self, room: str, session: str, data: bytes) -> None:
        envelope = b"T " + session.encode() + b" " + data
        await self.link.run(self.link.client.publish(self.keys.room(room), envelope))

    def publish(self, message: Message, data: bytes) -> None:
        pass  # the say script published it, atomically with storing it

    async def rooms(self, after: str | None, limit: int) -> list[dict[str, Any]]:
        client = self.link.client
        found: list[dict[str, Any]] = []
        start = f"({after}" if after is not None else "-"
        while len(found) < limit:
            names = [
                name.decode()
                for name in await self.link.run(
                    client.zrangebylex(self.keys.rooms, start, "+", start=0, num=limit)
                )
            ]
            if not names:
                break
            async with client.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.hlen(self.keys.members(name))
                    pipe.hget(self.keys.meta(name), "last")
                counts = await self.link.run(pipe.execute())
            for index, name in enumerate(names):
                members, last = int(counts[2 * index]), int(counts[2 * index + 1] or 0)
                if members or last:
                    found.append({"room": name, "members": members, "last_id": last})
            start = f"({names[-1]}"
        return found[:limit]

    # ------------------------------------------------------------ feeds

    async def watch(self, room: str) -> None:
        for _ in range(3):  # a feed dropped while it opened (a fence) is opened again
            feed = self.feeds.get(room)
            if feed is None:
                channel = self.keys.room(room).encode()
                feed = _Feed(room, channel)
                feed.ready = asyncio.get_running_loop().create_future()
                self.feeds[room] = feed
                self._channels[channel] = feed
                self._spawn(self._open(feed))
            feed.idle = False
            assert feed.ready is not None
            await asyncio.shield(feed.ready)
            if self.feeds.get(room) is feed:
                return
        raise BackendUnavailable("the server is recovering its link to the database; retry")

    def unwatch(self, room: str) -> None:
        feed = self.feeds.get(room)
        if feed is not None:
            feed.idle = True

    async def _open(self, feed: _Feed) -> None:
        """Subscribe, then read the room's position: every later id arrives on the feed."""
        ready = feed.ready
        assert ready is not None
        try:
            if not self._listening.is_set() and self.link.up:
                # The subscription is being set up again: worth a short wait.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._listening.wait(), self.link.timeout * 4)
            if not self._listening.is_set() or self._pubsub is None:
                raise BackendUnavailable("the server cannot reach its database; retry")
            await self._subscribe(self._pubsub, [feed.channel])
            epoch, last, _first = await self.store.position(feed.room)
            feed.epoch, feed.last = epoch, last
            self._drain_backlog(feed)
        except BaseException as err:
            self._drop_feed(feed)
            if not ready.done():
                ready.set_exception(
                    err if isinstance(err, BackendUnavailable)
                    else BackendUnavailable("the server cannot reach its database; retry")
                )
                # Retrieved here: a join that gave up may never await it.
                ready.exception()
            if not isinstance(err, BackendUnavailable | Exception):
                raise
            return
        if not ready.done():
            ready.set_result(None)

    def _drop_feed(self, feed: _Feed) -> None:
        if self.feeds.get(feed.room) is feed:
            del self.feeds[feed.room]
        if self._channels.get(feed.channel) is feed:
            del self._channels[feed.channel]

    async def _subscribe(self, pubsub: Any, channels: list[bytes]) -> None:
        loop = asyncio.get_running_loop()
        waits = []
        for channel in channels:
            future = self._confirm.get(channel)
            if future is None or future.done():
                future = self._confirm[channel] = loop.create_future()
            waits.append(future)
        await pubsub.subscribe(*channels)
        try:
            await asyncio.wait_for(asyncio.gather(*waits), self.link.timeout * 4)
        except TimeoutError:
            raise BackendUnavailable("no answer to SUBSCRIBE") from None

    def _on_room(self, feed: _Feed, data: bytes) -> None:
        kind = data[:2]
        if kind == b"N ":
            # A round's new messages of the room, with consecutive ids from `first`.
            _, epoch_bytes, first, frames = data.split(b" ", 3)
            epoch = epoch_bytes.decode()
            for msg_id, frame in enumerate(frames.split(b"\n"), int(first)):
                self._on_message(feed, epoch, msg_id, frame)
        elif kind == b"M ":
            # One message, as nodes before the per-round script published it: a node
            # of this version still follows them during a rolling upgrade.
            _, epoch_bytes, msg_id_bytes, frame = data.split(b" ", 3)
            self._on_message(feed, epoch_bytes.decode(), int(msg_id_bytes), frame)
        elif kind in (b"P ", b"T "):
            _, session, frame = data.split(b" ", 2)
            self.node.deliver(feed.room, frame, exclude=session.decode())

    def _on_message(self, feed: _Feed, epoch: str, msg_id: int, frame: bytes) -> None:
        if feed.epoch is None or feed.syncing:
            feed.backlog.append((epoch, msg_id, frame))
            return
        match step(feed.epoch, feed.last, epoch, msg_id):
            case Step.DELIVER:
                feed.last = msg_id
                self.node.deliver(feed.room, frame, msg_id)
            case Step.DROP:
                pass
            case Step.GAP:
                self.metrics.redis_gaps.inc()
                feed.backlog.append((epoch, msg_id, frame))
                self._catch_up(feed)
            case Step.RESTART:
                self._restart(feed, epoch, msg_id)

    def _restart(self, feed: _Feed, epoch: str, last: int) -> None:
        """The room's history started over: its receivers here must join again."""
        logger.warning("room %s: history started over (epoch %s)", feed.room, epoch)
        feed.epoch, feed.last = epoch, last
        feed.backlog.clear()
        self.node.lost("the room's history started over; join again", feed.room)

    def _drain_backlog(self, feed: _Feed) -> None:
        backlog, feed.backlog = feed.backlog, []
        for epoch, msg_id, frame in sorted(backlog, key=lambda item: item[1]):
            self._on_message(feed, epoch, msg_id, frame)

    def _catch_up(self, feed: _Feed) -> None:
        if not feed.syncing:
            feed.syncing = True
            self._spawn(self._backfill(feed))

    async def _backfill(self, feed: _Feed) -> None:
        """Deliver from the stream everything after the feed's last id, then the backlog."""
        try:
            while True:
                frames = await self.store.frames(feed.room, feed.last, BACKFILL_BATCH)
                for msg_id, frame in frames:
                    if msg_id > feed.last:
                        feed.last = msg_id
                        self.node.deliver(feed.room, frame, msg_id)
                        self.metrics.redis_backfilled.inc()
                if len(frames) < BACKFILL_BATCH:
                    break
        except BackendUnavailable:
            return  # the position check tries again once Redis answers
        finally:
            feed.syncing = False
        self._drain_backlog(feed)

    async def _check_positions(self, *, after_break: bool = False) -> None:
        """Compare every feed with its room's stream; fill what pub/sub lost.

        A feed behind its stream may only have its next messages still on the way, so
        a routine check fills it when it is still behind that mark at the next check;
        after a break of the subscription it fills at once.
        """
        feeds = [feed for feed in self.feeds.values() if feed.epoch is not None]
        if not feeds:
            return
        keys = self.keys
        async with self.link.client.pipeline(transaction=False) as pipe:
            for feed in feeds:
                await self.link.position(
                    keys=[keys.meta(feed.room), keys.log(feed.room), keys.generation],
                    args=[secrets.token_hex(8)],
                    client=pipe,
                )
            replies = await self.link.run(pipe.execute())
        for feed, (epoch, last, _first) in zip(feeds, replies, strict=True):
            epoch = _str(epoch)
            if feed.epoch is None or feed.syncing or self.feeds.get(feed.room) is not feed:
                continue
            if epoch != feed.epoch:
                self._restart(feed, epoch, int(last))
            elif not behind(feed.last, int(last)):
                feed.suspect = None
            elif after_break or (feed.suspect is not None and behind(feed.last, feed.suspect)):
                feed.suspect = None
                self.metrics.redis_gaps.inc()
                self._catch_up(feed)
            else:
                feed.suspect = int(last)

    # ------------------------------------------------------------ the subscription

    async def _listen(self) -> None:
        """Hold the pub/sub connection; after every break, subscribe again and resync."""
        wait = RECONNECT_MIN
        while True:
            pubsub = self.link.client.pubsub()
            try:
                self._pubsub = pubsub
                channels = [self._node_channel, *(feed.channel for feed in self.feeds.values())]
                # Connected first: a reader that starts before pubsub.connection is set dies
                # at once (RuntimeError), and SUBSCRIBE's confirmation is then never read.
                await self.link.run(pubsub.connect())
                # redis-py reconnects a pub/sub connection whose command or read failed,
                # from inside that command, even with no retries: with our reader and a
                # SUBSCRIBE both on it, two reconnects race and one socket is lost.
                # Here nothing is caught, so a break ends this subscription and this
                # loop makes a new one.
                connection = pubsub.connection
                kept = connection.retry
                connection.retry = _NO_RECONNECT
                reader = asyncio.create_task(self._read(pubsub), name="redis-pubsub-read")
                try:
                    await self._subscribe(pubsub, channels)
                    self.link.reached()
                    self._probe_sent = None
                    self._listening.set()
                    wait = RECONNECT_MIN
                    # Whatever was published while no subscription listened is in the
                    # streams: the position check finds it (or the next one does).
                    with contextlib.suppress(BackendUnavailable):
                        await self._check_positions(after_break=True)
                    await reader
                finally:
                    reader.cancel()
                    await asyncio.gather(reader, return_exceptions=True)
                    connection.retry = kept  # the connection goes back to the pool
            except (BackendUnavailable, RedisError, OSError) as err:
                # The subscription alone may break (CLIENT KILL TYPE pubsub): that is no
                # outage of Redis, so the link is left as it is. Said once per break,
                # not at every attempt while Redis is away.
                if self._listening.is_set():
                    logger.info("redis subscription lost (%s); subscribing again", err)
            except Exception:
                logger.exception("redis subscription failed; subscribing again")
            finally:
                self._listening.clear()
                self._pubsub = None
                for future in self._confirm.values():
                    if not future.done():
                        future.cancel()
                self._confirm.clear()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), self.link.timeout)
            _stop_if_cancelled()
            await asyncio.sleep(wait * (0.5 + random.random() / 2))
            wait = min(RECONNECT_MAX, wait * 2)

    async def _read(self, pubsub: Any) -> None:
        while True:
            message = await pubsub.get_message(timeout=None)
            if message is None:
                continue
            kind = message["type"]
            channel = message["channel"]
            if kind == b"message" or kind == "message":
                feed = self._channels.get(channel)
                if feed is not None:
                    self._on_room(feed, message["data"])
                elif channel == self._node_channel:
                    self._on_node(message["data"])
            elif kind in (b"subscribe", "subscribe"):
                future = self._confirm.pop(channel, None)
                if future is not None and not future.done():
                    future.set_result(None)

    def _on_node(self, data: bytes) -> None:
        kind = data[:2]
        if kind == b"R ":
            _, session, conn = data.split(b" ", 2)
            self.node.replaced(session.decode(), conn.decode())
        elif kind == b"Q ":
            if data[2:].decode() == self._probe_token:
                self._probe_sent = None

    # ------------------------------------------------------------ leases and upkeep

    async def _register(self) -> None:
        await self.link.script(
            self.link.register,
            [self.keys.nodes, self.keys.lease(self.node_id)],
            [self.node_id, int(self._ttl * 1000)],
        )
        self._registered = True

    async def _renew(self) -> None:
        if not self._registered:
            await self._register()
            return
        alive = await self.link.script(
            self.link.renew,
            [self.keys.nodes, self.keys.lease(self.node_id)],
            [self.node_id, int(self._ttl * 1000)],
        )
        if not alive:
            await self._fence()

    async def _fence(self) -> None:
        """The other nodes ended this node's sessions: close them all, start over."""
        logger.warning(
            "this node's sessions are gone from redis (the other nodes ended them after it "
            "was paused or cut off for more than redis.node_timeout, or redis lost its "
            "data): closing its connections with 1011"
        )
        self._ends.clear()
        self.node.lost("this server lost its sessions; reconnect")
        # No receiver is left, and the rooms' positions may belong to a history that is
        # gone: follow every room afresh when it is joined again.
        for feed in list(self.feeds.values()):
            self._drop_feed(feed)
            if self._pubsub is not None and self._listening.is_set():
                self._spawn(self._unsubscribe(self._pubsub, feed.channel))
        await self._register()

    async def _lease_loop(self) -> None:
        """Renew the lease, alone in its task so that no slow work delays it."""
        while True:
            await asyncio.sleep(self._ttl / 4)
            try:
                await self._renew()
                if self.link.reached():
                    self._resync.set()
            except BackendUnavailable:
                pass
            except Exception:
                logger.exception("renewing this node's lease failed; trying again")
            _stop_if_cancelled()

    async def _maintain(self) -> None:
        """Probe, check positions, finish pending session ends, reap dead nodes."""
        last_tick = self.clock()
        last_reap = last_tick
        while True:
            period = min(1.0, self._ttl / 4, self.config.cleanup.interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._resync.wait(), period)
            self._resync.clear()
            now = self.clock()
            if now - last_tick > period + self._ttl / 4:
                # This process did not run: it cannot tell whether the others renewed.
                self.link.stalled()
            last_tick = now
            try:
                if not self.link.up:
                    # A write, not a ping: a Redis that answers but cannot store (full
                    # under noeviction, read-only) is no more usable than a silent one.
                    await self._renew()
                    self.link.reached()
                self._kick_ends()
                self._probe()
                await self._check_positions()
                if now - last_reap >= self.config.cleanup.interval:
                    last_reap = now
                    await self._reap(now)
                self._idle_feeds()
            except BackendUnavailable:
                pass
            except Exception:
                logger.exception("redis upkeep failed; trying again")
            _stop_if_cancelled()

    def _probe(self) -> None:
        """Publish to ourselves: a subscription that died silently never hears it back."""
        now = self.clock()
        if self._probe_sent is not None and now - self._probe_sent > max(2.0, self._ttl / 4):
            logger.warning("redis subscription stopped answering; subscribing again")
            self.metrics.redis_gaps.inc()
            self._probe_sent = None
            if self._pubsub is not None:
                self._spawn(self._drop_subscription(self._pubsub))
            return
        if self._probe_sent is None and self._listening.is_set():
            self._probe_sent = now
            self._probe_token = secrets.token_hex(4)
            self._spawn(self._publish_probe(b"Q " + self._probe_token.encode()))

    async def _drop_subscription(self, pubsub: Any) -> None:
        """Close a subscription that stopped answering; the listener makes a new one."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(pubsub.aclose(), self.link.timeout)

    async def _publish_probe(self, data: bytes) -> None:
        with contextlib.suppress(BackendUnavailable):
            await self.link.run(self.link.client.publish(self._node_channel, data))

    async def _reap(self, now: float) -> None:
        healthy = self.link.healthy_since
        if healthy is None or now - healthy < self._ttl:
            return  # every node must have had node_timeout to renew since Redis returned
        dead = await self.link.script(
            self.link.reap, [self.keys.nodes], [self.keys.prefix, self.node_id]
        )
        for node in dead:
            self.metrics.redis_nodes_reaped.inc()
            logger.warning(
                "node %s stopped renewing its lease: its sessions were ended", _str(node)
            )

    def _idle_feeds(self) -> None:
        for feed in [feed for feed in self.feeds.values() if feed.idle and not feed.syncing]:
            self._drop_feed(feed)
            if self._pubsub is not None and self._listening.is_set():
                self._spawn(self._unsubscribe(self._pubsub, feed.channel))

    async def _unsubscribe(self, pubsub: Any, channel: bytes) -> None:
        if channel in self._channels:
            return  # watched again meanwhile
        with contextlib.suppress(BackendUnavailable):
            await self.link.run(pubsub.unsubscribe(channel))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._syncs.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._syncs.discard(task)
        if task.cancelled():
            return
        err = task.exception()
        if err is not None and not isinstance(err, BackendUnavailable):
            logger.error("redis background task failed", exc_info=err)


def _stop_if_cancelled() -> None:
    """Leave a retry loop that was asked to stop.

    A library may turn the cancellation of a read into an error of its own, which the
    loop would take for a Redis problem and retry for ever: stopping would then hang.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

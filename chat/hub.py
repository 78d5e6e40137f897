"""This node's connections and the fan-out to them; cluster-wide decisions go to a `Cluster`.

Membership belongs to the session (it survives a takeover) and lives in the cluster;
delivery belongs to the connection (a room's frames reach a connection once it has joined
on it) and lives here. Every method that changes local state does so without awaiting in
the middle, except where a comment says how the await is made safe.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Generic, Protocol, TypeVar

from chat import auth, protocol
from chat.cluster import Claim, Cluster
from chat.config import Config
from chat.history import HistoryStore, Message, NewMessage
from chat.metrics import Metrics
from chat.protocol import Close, ErrorCode, Invalid
from chat.ratelimit import TokenBucket
from chat.settings import settings_fields

logger = logging.getLogger(__name__)

TYPING_EVERY: Final = 1.0  # s: at most one relayed `typing` per connection and room
ROOMS_PAGE_MAX: Final = 1000  # rooms in one page of /api/rooms (and its default)


class Dropped:
    """A request answered by silence (a throttled `typing`): neither an error nor a success."""


DROPPED: Final = Dropped()

Outcome = Invalid | Dropped | None

ROOM_INVALID: Final = Invalid(
    ErrorCode.ROOM_INVALID, "a room name is 1 to 32 of a-z, 0-9, '_', '-'", None
)


class Seat:
    """The hub's bookkeeping for one connection, all of it: made by `Hub.register`,
    read and written by the hub only, dropped with the connection.

    The receiver carries it as one attribute (`Receiver.seat`) rather than the hub
    keeping a dict by connection: fan-out reads it once per receiver, and an attribute
    costs less there than a lookup.
    """

    __slots__ = ("join_bucket", "pending", "rooms", "say_bucket", "typing_at")

    def __init__(self) -> None:
        self.rooms: set[str] = set()  # rooms whose frames reach the connection
        # Rooms whose `joined` is being prepared: the live frames held meanwhile, tagged
        # with their message id (None for frames without one), so that the replay and
        # the live stream meet without a gap or a duplicate.
        self.pending: dict[str, list[tuple[int | None, bytes]]] = {}
        self.typing_at: dict[str, float] = {}  # clock time of the last relayed `typing`
        self.say_bucket: TokenBucket | None = None  # limits.rate, made by the first say
        self.join_bucket: TokenBucket | None = None  # limits.join_rate: join and leave


class Receiver(Protocol):
    """What the hub uses of a connection (chat.connection.Connection is the real one):
    what the socket side owns, plus the hub's own `seat`.

    The hub never awaits a receiver: `send` only queues, `abort` only starts the end.
    Tests drive the hub with a fake that records frames.
    """

    id: str  # set by Hub.register; unique on this node
    seat: Seat  # set by Hub.register; the hub's, never touched by the receiver
    remote: str  # the client's address, for the per-address cap
    session: Session | None
    frame_ceiling: int  # the largest message it can be sent (what `welcome` tells)

    @property
    def closing(self) -> bool: ...

    def send(self, data: bytes, *, exempt: bool = False) -> None: ...

    def abort(self, code: int, reason: str) -> None: ...


# The receiver type of one hub: Connection in the server, a fake in tests.
R = TypeVar("R", bound=Receiver)


@dataclass(eq=False, slots=True)
class Session:
    """A session held by a connection of this node."""

    id: str
    nick: str  # normalised, in the spelling of the hello that created it
    key: str  # what nicks are compared by
    conn: Receiver
    allowed: frozenset[str] | None = None  # rooms a token permits; None: all


@dataclass(eq=False, slots=True)
class Room:
    """This node's receivers of one room, each with its floor: the highest id its
    `joined` held. The node's feed may still deliver ids at or below it; they are skipped.
    """

    name: str
    receivers: dict[Receiver, int] = field(default_factory=dict)


# Requests that read or write history; the others need the cluster only (or nothing).
_STORE_REQUESTS: Final = (protocol.Join, protocol.Say, protocol.HistoryRequest)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Hub(Generic[R]):
    def __init__(
        self,
        config: Config,
        store: HistoryStore,
        metrics: Metrics,
        cluster: Cluster,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cluster = cluster
        self.config = config
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.connections: set[R] = set()
        self.sessions: dict[str, Session] = {}  # the sessions held on this node
        self.rooms: dict[str, Room] = {}  # rooms with a receiver on this node
        self.per_ip: dict[str, int] = {}  # open WebSocket connections by client address
        self.shutting_down = False
        self._ids = itertools.count(1)
        self._empty = asyncio.Event()
        self._empty.set()
        # Read when /metrics is scraped, not kept up to date on every connect and close.
        metrics.connections.set_function(lambda: len(self.connections))
        metrics.sessions.set_function(lambda: len(self.sessions))
        cluster.attach(self)

    @property
    def config(self) -> Config:
        return self._config

    @config.setter
    def config(self, config: Config) -> None:
        """Swap the configuration (a reload); the cluster reads the same one."""
        self._config = config
        self.cluster.config = config

    # ------------------------------------------------------------ lifecycle

    def refusal(self, address: str) -> int | None:
        """The HTTP status that refuses another upgrade from `address`, or None."""
        limits = self.config.limits
        if self.shutting_down or len(self.connections) >= limits.max_connections:
            return 503
        if self.per_ip.get(address, 0) >= limits.max_connections_per_ip:
            return 429
        return None

    def register(self, conn: R) -> None:
        """Count a connection from the moment it is admitted (before the upgrade completes)."""
        conn.id = str(next(self._ids))
        conn.seat = Seat()
        self.per_ip[conn.remote] = self.per_ip.get(conn.remote, 0) + 1
        self.connections.add(conn)
        self._empty.clear()

    def release(self, conn: R, reason: str = "closed") -> bool:
        """Forget a connection and everything it held; idempotent. True the first time."""
        if conn not in self.connections:
            return False
        self.connections.remove(conn)
        left = self.per_ip[conn.remote] - 1
        if left:
            self.per_ip[conn.remote] = left
        else:
            del self.per_ip[conn.remote]
        if not self.connections:
            self._empty.set()
        self._drop_delivery(conn)
        session = conn.session
        # After a takeover the session belongs to the newer connection and lives on.
        if session is not None and self.sessions.get(session.id) is session:
            if session.conn is conn:
                self._forget_session(session)
                self.cluster.end_session(session.id, conn.id, reason)
        return True

    async def wait_empty(self) -> None:
        await self._empty.wait()

    def _forget_session(self, session: Session) -> None:
        del self.sessions[session.id]

    def _drop_delivery(self, conn: Receiver) -> None:
        seat = conn.seat
        for name in seat.rooms:
            room = self.rooms.get(name)
            if room is not None:
                room.receivers.pop(conn, None)
                self._forget_if_empty(room)
        seat.rooms.clear()
        seat.pending.clear()

    def rate_buckets(self) -> tuple[list[TokenBucket], list[TokenBucket]]:
        """The say and the join buckets handed out so far (a reload retunes them)."""
        seats = [conn.seat for conn in self.connections]
        return (
            [seat.say_bucket for seat in seats if seat.say_bucket is not None],
            [seat.join_bucket for seat in seats if seat.join_bucket is not None],
        )

    def _forget_if_empty(self, room: Room) -> None:
        if not room.receivers and self.rooms.get(room.name) is room:
            del self.rooms[room.name]
            self.cluster.unwatch(room.name)

    # ------------------------------------------------------------ delivery (chat.cluster.Node)

    def deliver(
        self, room: str, data: bytes, msg_id: int | None = None, exclude: str | None = None
    ) -> None:
        """Hand the same encoded bytes to every receiver; never awaits a client.

        A receiver whose `joined` for the room is being prepared gets the frame held
        (see `join`). This is the fan-out loop: per receiver it costs a send and a few
        attribute reads, no lookup and no other call while nothing is held.
        """
        local = self.rooms.get(room)
        if local is None:
            return
        if msg_id is not None:
            for conn, floor in local.receivers.items():
                if msg_id > floor:
                    pending = conn.seat.pending
                    if pending and (held := pending.get(room)) is not None:
                        held.append((msg_id, data))
                    else:
                        conn.send(data)
            return
        for conn in local.receivers:
            session = conn.session
            if exclude is None or session is None or session.id != exclude:
                pending = conn.seat.pending
                if pending and (held := pending.get(room)) is not None:
                    held.append((None, data))
                else:
                    conn.send(data)

    def replaced(self, session: str, conn: str) -> None:
        held = self.sessions.get(session)
        if held is not None and held.conn.id == conn:
            self._forget_session(held)
            self._replace(held.conn)

    def lost(self, reason: str, room: str | None = None) -> None:
        if room is None:
            conns: list[Receiver] = list(self.connections)
            # The cluster ended these sessions already; forget them without ending again.
            for session in list(self.sessions.values()):
                self._forget_session(session)
        else:
            local = self.rooms.get(room)
            conns = [] if local is None else list(local.receivers)
        for conn in conns:
            self._drop_delivery(conn)
            conn.abort(Close.INTERNAL, reason)

    def _replace(self, old: Receiver) -> None:
        # The old connection stops receiving at once; its release later leaves the
        # session alone because this node no longer holds it for that connection.
        self._drop_delivery(old)
        old.abort(Close.REPLACED, "replaced by a newer connection")

    # ------------------------------------------------------------ requests

    def immediate(self, request: object) -> bool:
        """Whether handling `request` never waits: the backends it needs are instant.

        Such a request is handled where it was read, without a hop to a dispatcher task;
        the others wait their turn there, so a slow store never holds up reading.
        """
        if isinstance(request, _STORE_REQUESTS):
            return self.store.instant and self.cluster.instant
        return self.cluster.instant

    async def hello(self, conn: R, event: protocol.Hello) -> Outcome:
        if conn.session is not None:
            return Invalid(
                ErrorCode.BAD_REQUEST, "hello was already accepted on this connection", None
            )
        allowed: frozenset[str] | None = None
        secret = self.config.auth.secret
        if secret is not None:
            try:
                grant = auth.verify(event.token, event.nick, secret, time.time())
            except auth.Unauthorized as err:
                return Invalid(ErrorCode.UNAUTHORIZED, str(err), None)
            nick: str | None = grant.nick
            allowed = grant.rooms
        elif event.nick is None:
            return Invalid(ErrorCode.BAD_REQUEST, "'nick' is required", None)
        else:
            nick = protocol.normalize_nick(event.nick)
        if nick is None:
            return Invalid(
                ErrorCode.NICK_INVALID,
                "a nick is 1 to 32 letters, digits, '_', '-' or '.'",
                None,
            )
        key = protocol.nick_key(nick)
        claim = Claim(event.session, nick, key, conn.id, secrets.token_urlsafe(24))
        claimed = await self.cluster.hello(claim)
        if isinstance(claimed, ErrorCode):
            return Invalid(claimed, f"the nick {nick!r} is in use", None)
        if conn.closing:
            # Gone while the cluster answered: give the session back at once.
            self.cluster.end_session(claimed.session, conn.id, "closed")
            return None
        if claimed.taken_over:
            old = self.sessions.get(claimed.session)
            if old is not None:
                self._forget_session(old)
                self._replace(old.conn)
            logger.info("session of %s taken over by %s", claimed.nick, conn.remote)
        session = Session(claimed.session, claimed.nick, key, conn, allowed)
        self.sessions[session.id] = session
        conn.session = session
        fields = settings_fields(self.config, conn.frame_ceiling)
        conn.send(protocol.welcome_frame(session.id, session.nick, claimed.rooms, fields))
        return None

    async def join(self, conn: R, event: protocol.Join) -> Outcome:
        session = conn.session
        assert session is not None
        if (limited := self._join_limited(conn)) is not None:
            return limited
        name = event.room
        if not protocol.valid_room(name):
            return ROOM_INVALID
        if session.allowed is not None and name not in session.allowed:
            return Invalid(ErrorCode.FORBIDDEN_ROOM, f"your token does not allow {name!r}", None)
        # The node follows the room before this connection registers, so every message
        # after the replay below reaches it through the feed.
        await self.cluster.watch(name)
        entered = await self.cluster.enter(
            session.id, name, session.nick, self.config.limits.max_rooms
        )
        if isinstance(entered, ErrorCode):
            self._unwatch_if_unused(name)
            return Invalid(
                entered,
                f"a session may be in {self.config.limits.max_rooms} rooms",
                None,
            )
        if conn.closing or self.sessions.get(session.id) is not session:
            self._unwatch_if_unused(name)
            return None
        room = self._room(name)
        seat = conn.seat
        # Register for delivery before reading the replay: messages stored meanwhile are
        # held back, then released after `joined` minus those the replay already holds.
        seat.pending[name] = []
        seat.rooms.add(name)
        room.receivers[conn] = 0
        try:
            history = self.config.history
            replay = await self.store.replay(
                name, event.since, event.epoch, history.replay, history.recover
            )
        except BaseException:
            held = seat.pending.pop(name, None)
            if held is not None:  # still registered: undo it, the client may retry
                seat.rooms.discard(name)
                room.receivers.pop(conn, None)
                self._forget_if_empty(room)
            raise
        held = seat.pending.pop(name, [])
        if conn.closing or name not in seat.rooms:
            return None
        room.receivers[conn] = replay.last_id
        conn.send(protocol.joined_frame(
            name,
            replay.epoch,
            entered.members,
            [message.frame() for message in replay.messages],
            replay.complete,
        ), exempt=True)
        for msg_id, data in held:
            if msg_id is None or msg_id > replay.last_id:
                conn.send(data, exempt=True)
        return None

    def _unwatch_if_unused(self, name: str) -> None:
        if name not in self.rooms:
            self.cluster.unwatch(name)

    async def leave(self, conn: R, event: protocol.Leave) -> Outcome:
        session = conn.session
        assert session is not None
        if (limited := self._join_limited(conn)) is not None:
            return limited
        name = event.room
        if not protocol.valid_room(name):
            return ROOM_INVALID
        await self.cluster.exit(session.id, name, session.nick)
        seat = conn.seat
        seat.rooms.discard(name)
        seat.pending.pop(name, None)
        seat.typing_at.pop(name, None)
        room = self.rooms.get(name)
        if room is not None:
            room.receivers.pop(conn, None)
            self._forget_if_empty(room)
        conn.send(protocol.left_frame(name))
        return None

    def _joined_room(self, conn: Receiver, name: str) -> Room | Invalid:
        if not protocol.valid_room(name):
            return ROOM_INVALID
        room = self.rooms.get(name)
        if room is None or name not in conn.seat.rooms:
            return Invalid(ErrorCode.NOT_JOINED, f"join {name!r} first", None)
        return room

    async def say(self, conn: R, event: protocol.Say) -> Outcome:
        session = conn.session
        assert session is not None
        room = self._joined_room(conn, event.room)
        if isinstance(room, Invalid):
            return room
        problem = protocol.text_problem(event.text, self.config.limits.max_text)
        if problem is not None:
            return problem
        bucket = self._bucket(conn)
        retry_after = bucket.take(self.clock())
        if retry_after > 0:
            # A re-sent say is answered with the original's ack, whatever the rate. The
            # store is asked only here: in the common case `append` itself finds the
            # original, which saves a trip to the store per message.
            if event.cid is not None:
                original = await self.store.find(room.name, session.key, event.cid)
                if original is not None:
                    conn.send(_ack(original))
                    return None
            return Invalid(
                ErrorCode.RATE_LIMITED,
                "too many messages; slow down",
                None,
                retry_after=retry_after,
            )
        # The ack and the publication happen in `stored`, which the store calls the
        # moment the message is durable, in id order (so members receive messages in id
        # order), and even if this connection ends meanwhile: a stored message must reach
        # the room, or members would see a gap.
        def stored(message: Message, created: bool) -> None:
            if not created:
                bucket.refund()  # a duplicate is not rate limited
            conn.send(_ack(message))
            if created:
                self.metrics.messages.inc()
                self.cluster.publish(message, message.encoded())

        new = NewMessage(room.name, session.nick, session.key, event.text, event.cid, now_ms())
        await self.store.append(new, stored)
        return None

    def _bucket(self, conn: R) -> TokenBucket:
        seat = conn.seat
        bucket = seat.say_bucket
        if bucket is None:
            rate = self.config.limits.rate
            bucket = seat.say_bucket = TokenBucket.full(
                rate.messages, rate.per, rate.burst, self.clock()
            )
        return bucket

    def _join_limited(self, conn: R) -> Invalid | None:
        """Spend a token of the connection's `join`/`leave` bucket (limits.join_rate)."""
        now = self.clock()
        seat = conn.seat
        bucket = seat.join_bucket
        if bucket is None:
            rate = self.config.limits.join_rate
            bucket = seat.join_bucket = TokenBucket.full(
                rate.messages, rate.per, rate.burst, now
            )
        retry_after = bucket.take(now)
        if retry_after > 0:
            return Invalid(ErrorCode.RATE_LIMITED, "too many joins and leaves; slow down", None,
                           retry_after=retry_after)
        return None

    async def typing(self, conn: R, event: protocol.Typing) -> Outcome:
        session = conn.session
        assert session is not None
        room = self._joined_room(conn, event.room)
        if isinstance(room, Invalid):
            return room
        now = self.clock()
        typing_at = conn.seat.typing_at
        last = typing_at.get(room.name)
        if last is not None and now - last < TYPING_EVERY:
            return DROPPED
        typing_at[room.name] = now
        frame = protocol.typing_frame(room.name, session.nick)
        await self.cluster.typing(room.name, session.id, frame)
        return None

    async def history(self, conn: R, event: protocol.HistoryRequest) -> Outcome:
        room = self._joined_room(conn, event.room)
        if isinstance(room, Invalid):
            return room
        page = await self.store.page(room.name, event.before, event.limit)
        conn.send(protocol.history_frame(
            room.name, [message.frame() for message in page.messages], page.more
        ))
        return None

    def _room(self, name: str) -> Room:
        room = self.rooms.get(name)
        if room is None:
            room = self.rooms[name] = Room(name)
        return room

    # ------------------------------------------------------------ views

    async def room_list(
        self, after: str | None = None, limit: int = ROOMS_PAGE_MAX
    ) -> list[dict[str, Any]]:
        """One page of /api/rooms: at most `limit` rooms whose names sort after `after`."""
        return await self.cluster.rooms(after, limit)


def _ack(message: Message) -> bytes:
    return protocol.ack_frame(message.cid, message.room, message.id, message.ts)

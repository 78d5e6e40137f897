"""Connections, sessions and rooms, and the fan-out between them.

Membership belongs to the session (it survives a takeover); delivery belongs to the
connection (a room's messages reach a connection once it has joined on it). Every
method here that changes state does so without awaiting in the middle, except where a
comment says how the await is made safe.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from chat import auth, protocol
from chat.config import Config
from chat.connection import Connection
from chat.history import HistoryStore, Message
from chat.metrics import Metrics
from chat.protocol import Close, Invalid
from chat.ratelimit import TokenBucket

logger = logging.getLogger(__name__)

TYPING_EVERY: Final = 1.0  # s: at most one relayed `typing` per connection and room
ROOMS_PAGE_MAX: Final = 1000  # rooms in one page of /api/rooms (and its default)


class Dropped:
    """A request answered by silence (a throttled `typing`): neither an error nor a success."""


DROPPED: Final = Dropped()

Outcome = Invalid | Dropped | None

ROOM_INVALID: Final = Invalid("room_invalid", "a room name is 1 to 32 of a-z, 0-9, '_', '-'", None)


@dataclass(eq=False, slots=True)
class Session:
    id: str
    nick: str  # normalised, in the spelling of the hello that created it
    key: str  # what nicks are compared by
    conn: Connection
    rooms: set[str] = field(default_factory=set)
    allowed: frozenset[str] | None = None  # rooms a token permits; None: all


@dataclass(eq=False, slots=True)
class Room:
    name: str
    members: set[Session] = field(default_factory=set)
    receivers: set[Connection] = field(default_factory=set)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Hub:
    def __init__(
        self,
        config: Config,
        store: HistoryStore,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.connections: set[Connection] = set()
        self.sessions: dict[str, Session] = {}
        self.nicks: dict[str, Session] = {}
        self.rooms: dict[str, Room] = {}
        self.buckets: dict[Connection, TokenBucket] = {}
        self.join_buckets: dict[Connection, TokenBucket] = {}  # `join` and `leave`
        self.per_ip: dict[str, int] = {}  # open WebSocket connections by client address
        self.shutting_down = False
        self._empty = asyncio.Event()
        self._empty.set()

    # ------------------------------------------------------------ lifecycle

    def refusal(self, address: str) -> int | None:
        """The HTTP status that refuses another upgrade from `address`, or None."""
        limits = self.config.limits
        if self.shutting_down or len(self.connections) >= limits.max_connections:
            return 503
        if self.per_ip.get(address, 0) >= limits.max_connections_per_ip:
            return 429
        return None

    def register(self, conn: Connection) -> None:
        """Count a connection from the moment it is admitted (before the upgrade completes)."""
        self.per_ip[conn.remote] = self.per_ip.get(conn.remote, 0) + 1
        self.connections.add(conn)
        self._empty.clear()
        self.metrics.connections.inc()

    def release(self, conn: Connection, reason: str = "closed") -> bool:
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
        self.buckets.pop(conn, None)
        self.join_buckets.pop(conn, None)
        self.metrics.connections.dec()
        self._drop_delivery(conn)
        session = conn.session
        # After a takeover the session belongs to the newer connection and lives on.
        if session is not None and session.conn is conn:
            self._end_session(session, reason)
        return True

    async def wait_empty(self) -> None:
        await self._empty.wait()

    def _drop_delivery(self, conn: Connection) -> None:
        for name in conn.rooms:
            room = self.rooms.get(name)
            if room is not None:
                room.receivers.discard(conn)
                self._forget_if_empty(room)
        conn.rooms.clear()
        conn.pending.clear()

    def _end_session(self, session: Session, reason: str) -> None:
        del self.sessions[session.id]
        if self.nicks.get(session.key) is session:
            del self.nicks[session.key]
        self.metrics.sessions.dec()
        for name in sorted(session.rooms):
            room = self.rooms.get(name)
            if room is None:
                continue
            room.members.discard(session)
            self._presence(room, "leave", session, reason)
            self._forget_if_empty(room)
        session.rooms.clear()

    def _forget_if_empty(self, room: Room) -> None:
        if not room.members and not room.receivers:
            self.rooms.pop(room.name, None)

    def _room(self, name: str) -> Room:
        room = self.rooms.get(name)
        if room is None:
            room = self.rooms[name] = Room(name)
        return room

    # ------------------------------------------------------------ fan-out

    def broadcast(
        self, room: Room, data: bytes, msg_id: int | None = None, exclude: Session | None = None
    ) -> None:
        """Hand the same encoded bytes to every receiver; never awaits a client."""
        for conn in room.receivers:
            if exclude is None or conn.session is not exclude:
                conn.send_room(room.name, data, msg_id)

    def _presence(self, room: Room, event: str, session: Session, reason: str | None) -> None:
        frame: dict[str, Any] = {
            "type": "presence", "room": room.name, "event": event, "nick": session.nick
        }
        if reason is not None:
            frame["reason"] = reason
        self.broadcast(room, protocol.encode(frame), exclude=session)

    # ------------------------------------------------------------ requests

    def hello(self, conn: Connection, event: protocol.Hello) -> Outcome:
        if conn.session is not None:
            return Invalid("bad_request", "hello was already accepted on this connection", None)
        allowed: frozenset[str] | None = None
        secret = self.config.auth.secret
        if secret is not None:
            try:
                grant = auth.verify(event.token, event.nick, secret, time.time())
            except auth.Unauthorized as err:
                return Invalid("unauthorized", str(err), None)
            nick: str | None = grant.nick
            allowed = grant.rooms
        elif event.nick is None:
            return Invalid("bad_request", "'nick' is required", None)
        else:
            nick = protocol.normalize_nick(event.nick)
        if nick is None:
            return Invalid(
                "nick_invalid",
                "a nick is 1 to 32 letters, digits, '_', '-' or '.'",
                None,
            )
        key = protocol.nick_key(nick)
        session = self.sessions.get(event.session) if event.session else None
        if session is not None and session.key == key:
            self._take_over(session, conn)
            if secret is not None:
                session.allowed = allowed  # the newest token's grant
        else:
            if key in self.nicks:
                return Invalid("nick_taken", f"the nick {nick!r} is in use", None)
            session = Session(secrets.token_urlsafe(24), nick, key, conn, allowed=allowed)
            self.sessions[session.id] = session
            self.nicks[key] = session
            self.metrics.sessions.inc()
        conn.session = session
        limits = self.config.limits
        rate = limits.rate
        conn.send(protocol.encode({
            "type": "welcome",
            "version": protocol.VERSION,
            "session": session.id,
            "nick": session.nick,
            "rooms": sorted(session.rooms),
            "heartbeat": {
                "interval": self.config.heartbeat.interval,
                "timeout": self.config.heartbeat.timeout,
            },
            "limits": {
                "text": limits.max_text,
                "frame": limits.max_frame,
                "rooms": limits.max_rooms,
                "rate": {"messages": rate.messages, "per": rate.per, "burst": rate.burst},
                "join_rate": {
                    "messages": limits.join_rate.messages,
                    "per": limits.join_rate.per,
                    "burst": limits.join_rate.burst,
                },
            },
        }))
        return None

    def _take_over(self, session: Session, conn: Connection) -> None:
        old = session.conn
        session.conn = conn
        # The old connection stops receiving at once; its release later leaves the
        # session alone because the session no longer points at it.
        self._drop_delivery(old)
        old.abort(Close.REPLACED, "replaced by a newer connection")
        logger.info("session of %s taken over by %s", session.nick, conn.remote)

    async def join(self, conn: Connection, event: protocol.Join) -> Outcome:
        session = conn.session
        assert session is not None
        if (limited := self._join_limited(conn)) is not None:
            return limited
        name = event.room
        if not protocol.valid_room(name):
            return ROOM_INVALID
        if session.allowed is not None and name not in session.allowed:
            return Invalid("forbidden_room", f"your token does not allow {name!r}", None)
        new_member = name not in session.rooms
        if new_member and len(session.rooms) >= self.config.limits.max_rooms:
            return Invalid(
                "too_many_rooms", f"a session may be in {self.config.limits.max_rooms} rooms", None
            )
        room = self._room(name)
        if new_member:
            self._presence(room, "join", session, None)
            session.rooms.add(name)
            room.members.add(session)
        # Register for delivery before reading the replay: messages stored meanwhile are
        # held back, then released after `joined` minus those the replay already holds.
        conn.pending[name] = []
        conn.rooms.add(name)
        room.receivers.add(conn)
        try:
            history = self.config.history
            replay = await self.store.replay(
                name, event.since, event.epoch, history.replay, history.recover
            )
        finally:
            held = conn.pending.pop(name, [])
        if conn.closing or name not in conn.rooms:
            return None
        members = protocol.sort_nicks([member.nick for member in room.members])
        conn.send(protocol.encode({
            "type": "joined",
            "room": name,
            "epoch": replay.epoch,
            "members": members,
            "messages": [message.frame() for message in replay.messages],
            "complete": replay.complete,
        }), exempt=True)
        for msg_id, data in held:
            if msg_id is None or msg_id > replay.last_id:
                conn.send(data, exempt=True)
        return None

    def leave(self, conn: Connection, event: protocol.Leave) -> Outcome:
        session = conn.session
        assert session is not None
        if (limited := self._join_limited(conn)) is not None:
            return limited
        name = event.room
        if not protocol.valid_room(name):
            return ROOM_INVALID
        room = self.rooms.get(name)
        conn.rooms.discard(name)
        conn.pending.pop(name, None)
        conn.typing_at.pop(name, None)
        if room is not None:
            room.receivers.discard(conn)
            if session in room.members:
                room.members.discard(session)
                self._presence(room, "leave", session, "left")
            self._forget_if_empty(room)
        session.rooms.discard(name)
        conn.send(protocol.encode({"type": "left", "room": name}))
        return None

    def _joined_room(self, conn: Connection, name: str) -> Room | Invalid:
        if not protocol.valid_room(name):
            return ROOM_INVALID
        room = self.rooms.get(name)
        if room is None or name not in conn.rooms:
            return Invalid("not_joined", f"join {name!r} first", None)
        return room

    async def say(self, conn: Connection, event: protocol.Say) -> Outcome:
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
                "rate_limited", "too many messages; slow down", None, retry_after=retry_after
            )
        # The ack and the broadcast happen in `stored`, which the store calls the moment
        # the message is durable, in id order (so members receive messages in id order),
        # and even if this connection ends meanwhile: a stored message must reach the
        # room, or members would see a gap.
        def stored(message: Message, created: bool) -> None:
            if not created:
                bucket.refund()  # a duplicate is not rate limited
            conn.send(_ack(message))
            if created:
                self.metrics.messages.inc()
                members = self.rooms.get(message.room)  # gone if everyone left meanwhile
                if members is not None:
                    self.broadcast(members, protocol.encode(message.frame()), message.id)

        await self.store.append(
            room.name, session.nick, session.key, event.text, event.cid, now_ms(), stored
        )
        return None

    def _bucket(self, conn: Connection) -> TokenBucket:
        bucket = self.buckets.get(conn)
        if bucket is None:
            rate = self.config.limits.rate
            bucket = self.buckets[conn] = TokenBucket.full(
                rate.messages, rate.per, rate.burst, self.clock()
            )
        return bucket

    def _join_limited(self, conn: Connection) -> Invalid | None:
        """Spend a token of the connection's `join`/`leave` bucket (limits.join_rate)."""
        now = self.clock()
        bucket = self.join_buckets.get(conn)
        if bucket is None:
            rate = self.config.limits.join_rate
            bucket = self.join_buckets[conn] = TokenBucket.full(
                rate.messages, rate.per, rate.burst, now
            )
        retry_after = bucket.take(now)
        if retry_after > 0:
            return Invalid("rate_limited", "too many joins and leaves; slow down", None,
                           retry_after=retry_after)
        return None

    def typing(self, conn: Connection, event: protocol.Typing) -> Outcome:
        session = conn.session
        assert session is not None
        room = self._joined_room(conn, event.room)
        if isinstance(room, Invalid):
            return room
        now = self.clock()
        last = conn.typing_at.get(room.name)
        if last is not None and now - last < TYPING_EVERY:
            return DROPPED
        conn.typing_at[room.name] = now
        frame = protocol.encode({"type": "typing", "room": room.name, "nick": session.nick})
        self.broadcast(room, frame, exclude=session)
        return None

    async def history(self, conn: Connection, event: protocol.HistoryRequest) -> Outcome:
        room = self._joined_room(conn, event.room)
        if isinstance(room, Invalid):
            return room
        page = await self.store.page(room.name, event.before, event.limit)
        conn.send(protocol.encode({
            "type": "history",
            "room": room.name,
            "messages": [message.frame() for message in page.messages],
            "more": page.more,
        }))
        return None

    # ------------------------------------------------------------ views

    async def room_list(
        self, after: str | None = None, limit: int = ROOMS_PAGE_MAX
    ) -> list[dict[str, Any]]:
        """One page of /api/rooms: at most `limit` rooms whose names sort after `after`."""
        stored = await self.store.rooms(after, limit)
        live = [name for name, room in self.rooms.items()
                if room.members and (after is None or name > after)]
        # The first `limit` of the union are among the first `limit` of each part.
        names = sorted(set(stored).union(live))[:limit]
        return [
            {
                "room": name,
                "members": len(self.rooms[name].members) if name in self.rooms else 0,
                "last_id": stored.get(name, 0),
            }
            for name in names
        ]


def _ack(message: Message) -> bytes:
    return protocol.encode({
        "type": "ack", "cid": message.cid, "room": message.room, "id": message.id, "ts": message.ts
    })

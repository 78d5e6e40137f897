"""The cluster of one node: sessions, nicks and membership in this process.

Used with the memory and SQLite backends. Its coroutines never suspend, so each one is
atomic with respect to every other request, as the hub's bookkeeping once was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chat import protocol
from chat.cluster import Claim, Claimed, Entered, Node
from chat.config import Config
from chat.history import HistoryStore, Message
from chat.protocol import ErrorCode


@dataclass(eq=False, slots=True)
class _Session:
    nick: str
    key: str
    conn: str  # the connection that holds it
    rooms: set[str] = field(default_factory=set)


class LocalCluster:
    instant = True  # nothing here awaits: it is all this process's memory
    def __init__(self, store: HistoryStore, config: Config | None = None) -> None:
        self.store = store
        self.config = config or Config()
        self.sessions: dict[str, _Session] = {}
        self.nicks: dict[str, str] = {}  # nick key -> session id
        self.members: dict[str, dict[str, str]] = {}  # room -> session id -> nick
        self._node: Node | None = None

    @property
    def node(self) -> Node:
        assert self._node is not None, "attach() the hub first"
        return self._node

    def attach(self, node: Node) -> None:
        self._node = node

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def check(self) -> str | None:
        return None

    async def hello(self, claim: Claim) -> Claimed | ErrorCode:
        held = self.sessions.get(claim.session) if claim.session else None
        if claim.session and held is not None and held.key == claim.key:
            held.conn = claim.conn
            return Claimed(claim.session, held.nick, sorted(held.rooms), taken_over=True)
        if claim.key in self.nicks:
            return ErrorCode.NICK_TAKEN
        self.sessions[claim.new_session] = _Session(claim.nick, claim.key, claim.conn)
        self.nicks[claim.key] = claim.new_session
        return Claimed(claim.new_session, claim.nick, [], taken_over=False)

    def end_session(self, session: str, conn: str, reason: str) -> None:
        held = self.sessions.get(session)
        # After a takeover the session belongs to the newer connection and lives on.
        if held is None or held.conn != conn:
            return
        del self.sessions[session]
        if self.nicks.get(held.key) == session:
            del self.nicks[held.key]
        for room in sorted(held.rooms):
            self._drop_member(room, session)
            self.node.deliver(
                room, protocol.presence_frame(room, "leave", held.nick, reason), exclude=session
            )
        held.rooms.clear()

    async def enter(
        self, session: str, room: str, nick: str, max_rooms: int
    ) -> Entered | ErrorCode:
        held = self.sessions[session]
        new_member = room not in held.rooms
        if new_member:
            if len(held.rooms) >= max_rooms:
                return ErrorCode.TOO_MANY_ROOMS
            self.node.deliver(room, protocol.presence_frame(room, "join", nick), exclude=session)
            held.rooms.add(room)
            self.members.setdefault(room, {})[session] = nick
        return Entered(new_member, list(self.members[room].values()))

    async def exit(self, session: str, room: str, nick: str) -> None:
        held = self.sessions.get(session)
        if held is None or room not in held.rooms:
            return
        held.rooms.discard(room)
        self._drop_member(room, session)
        self.node.deliver(
            room, protocol.presence_frame(room, "leave", nick, "left"), exclude=session
        )

    def _drop_member(self, room: str, session: str) -> None:
        members = self.members.get(room)
        if members is not None:
            members.pop(session, None)
            if not members:
                del self.members[room]

    async def typing(self, room: str, session: str, data: bytes) -> None:
        self.node.deliver(room, data, exclude=session)

    def publish(self, message: Message, data: bytes) -> None:
        # The store calls back in id order, so delivering at once keeps that order.
        self.node.deliver(message.room, data, message.id)

    async def watch(self, room: str) -> None:
        pass

    def unwatch(self, room: str) -> None:
        pass

    async def rooms(self, after: str | None, limit: int) -> list[dict[str, Any]]:
        stored = await self.store.rooms(after, limit)
        live = [name for name in self.members if after is None or name > after]
        # The first `limit` of the union are among the first `limit` of each part.
        names = sorted(set(stored).union(live))[:limit]
        return [
            {
                "room": name,
                "members": len(self.members.get(name, ())),
                "last_id": stored.get(name, 0),
            }
            for name in names
        ]

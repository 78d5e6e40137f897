"""The seam between deciding and delivering: what every node of the service must agree on.

The hub (one per node) owns the connections of its own process and delivers frames to
them. Everything that more than one process must agree on goes through a `Cluster`:
sessions and nicks (the directory), rooms' membership, and publishing room events to
every node (the broker). `LocalCluster` keeps all of it in this process (one node: the
memory and SQLite backends); `chat.redis.RedisCluster` keeps it in Redis, for any number
of nodes.

Delivery comes back to the hub through the small `Node` protocol, whichever node the
event started on. A cluster method that raises `BackendUnavailable` changed nothing that
the caller has to undo; the request is answered `unavailable`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from chat.config import Config
from chat.history import Message
from chat.protocol import ErrorCode


@dataclass(frozen=True, slots=True)
class Claim:
    """A `hello` asking for a session: a takeover of `session` if it matches, else a new one."""

    session: str | None  # the session the client asks to take over, if any
    nick: str  # normalised
    key: str  # what nicks are compared by
    conn: str  # the id of the connection that sent the hello
    new_session: str  # the id a new session gets


@dataclass(frozen=True, slots=True)
class Claimed:
    session: str
    nick: str  # the session's own spelling
    rooms: list[str]  # the session's rooms, sorted (empty for a new session)
    taken_over: bool  # True when an existing session moved to this connection


@dataclass(frozen=True, slots=True)
class Entered:
    new_member: bool  # False for a re-join: no presence event was sent
    members: list[str]  # every member's nick, on every node


class Node(Protocol):
    """What a cluster may ask of the hub of this process."""

    def deliver(
        self, room: str, data: bytes, msg_id: int | None = None, exclude: str | None = None
    ) -> None:
        """Hand a room frame to this node's receivers of `room` (all but session `exclude`)."""

    def replaced(self, session: str, conn: str) -> None:
        """Session `session` moved to another node: close connection `conn` with 4002."""

    def lost(self, reason: str, room: str | None = None) -> None:
        """Close with 1011 the connections whose state the cluster no longer holds.

        `room` None: every connection (the node was fenced, or the backend lost its data);
        else the receivers of that room (its history started over under a new epoch).
        """


class Cluster(Protocol):
    config: Config  # the hub keeps it current across reloads
    # True when no method ever waits (this process alone): requests that only need the
    # cluster are then handled by the connection's reader, without a dispatcher task.
    instant: bool

    def attach(self, node: Node) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def check(self) -> str | None:
        """'ok' while this node takes part in the cluster, else a short reason; None
        when the cluster is this process alone."""

    async def hello(self, claim: Claim) -> Claimed | ErrorCode:
        """The session a hello gets, or the error code (`ErrorCode.NICK_TAKEN`) it gets instead."""

    def end_session(self, session: str, conn: str, reason: str) -> None:
        """End `session` if connection `conn` still holds it: leave its rooms, free its nick.

        Returns at once; a backend that needs I/O finishes (and retries) in the background.
        """

    async def enter(
        self, session: str, room: str, nick: str, max_rooms: int
    ) -> Entered | ErrorCode:
        """Make the session a member of `room` (presence join to the others if new), or
        return the error code (`ErrorCode.TOO_MANY_ROOMS`)."""

    async def exit(self, session: str, room: str, nick: str) -> None:
        """End the session's membership of `room` (presence leave `left` if it was one)."""

    async def typing(self, room: str, session: str, data: bytes) -> None: ...

    def publish(self, message: Message, data: bytes) -> None:
        """A message was stored: deliver it on every node, in id order."""

    async def watch(self, room: str) -> None:
        """Receive `room`'s events on this node from now on (before its first receiver)."""

    def unwatch(self, room: str) -> None:
        """This node has no receiver of `room` left."""

    async def rooms(self, after: str | None, limit: int) -> list[dict[str, Any]]:
        """Rooms with members or stored messages, sorted, after `after`, at most `limit`."""

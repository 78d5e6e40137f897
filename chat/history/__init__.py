"""Message history: one store interface, one module per backend.

The hub only ever talks to `HistoryStore`; which backend sits behind it is a line of
configuration. The pure decisions (what a join replays, what a page holds) are here so
every backend answers them the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol

from chat import protocol

if TYPE_CHECKING:
    from chat.cluster import Cluster
    from chat.config import Config
    from chat.metrics import Metrics

logger = logging.getLogger(__name__)


class HistoryOpenError(Exception):
    """A history store cannot be opened; ``str(err)`` is one line: where, and why.

    `where` is what the operator names in the configuration (a file, a URL); a backend
    whose store is a file says "history database" (`what`), the others "history store".
    """

    what: ClassVar[str] = "history store"

    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        self.reason = reason
        super().__init__(f"{where}: cannot open {self.what}: {reason}")


class BackendUnavailable(Exception):
    """A backend that other nodes share (Redis) does not answer; ``str(err)`` says why.

    Requests that need it are answered `unavailable` with `retry_after`; nothing was
    changed that the caller must undo, except where the raiser says so.
    """

    def __init__(self, reason: str, retry_after: float = 1.0) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Message:
    room: str
    id: int
    nick: str
    text: str
    ts: int
    cid: str | None

    def frame(self) -> dict[str, Any]:
        """The `message` frame as an object (the item of `joined` and `history`)."""
        return protocol.message_fields(self.room, self.id, self.nick, self.text, self.ts, self.cid)

    def encoded(self) -> bytes:
        """The `message` frame exactly as broadcast."""
        return protocol.message_frame(self.room, self.id, self.nick, self.text, self.ts, self.cid)


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message to store: what `HistoryStore.append` takes. The store gives it its id."""

    room: str
    nick: str  # as shown
    key: str  # the nick's comparison form: a cid is unique per (room, key)
    text: str
    cid: str | None
    ts: int  # ms since the epoch


@dataclass(frozen=True, slots=True)
class Replay:
    """What a `joined` carries: the room's epoch, the messages, and whether nothing is missing."""

    epoch: str
    messages: list[Message]
    complete: bool
    last_id: int  # the newest id stored when the replay was read


@dataclass(frozen=True, slots=True)
class Page:
    messages: list[Message]
    more: bool


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    after: int  # replay messages with id > after ...
    newest: int  # ... keeping only the newest this many
    complete: bool


def plan_replay(
    since: int | None,
    client_epoch: str | None,
    epoch: str,
    first_id: int,
    last_id: int,
    replay: int,
    recover: int,
) -> ReplayPlan:
    """Decide what a join replays.

    `first_id` is the oldest id still stored (last_id + 1 when none is), `last_id` the
    newest id ever assigned in this epoch (0 when none). A fresh join gets the newest
    `replay` messages, a recovery at most the newest `recover` of those after `since`.
    """
    recovering = since is not None and (client_epoch is None or client_epoch == epoch)
    if not recovering or since is None or since > last_id:
        # A fresh join, or a recovery point from another history: newest `replay`.
        return ReplayPlan(after=0, newest=replay, complete=since is None)
    # Incomplete when messages since+1 .. first_id-1 were trimmed by retention, or when
    # more than `recover` came after `since` (the cap keeps one join's reply bounded:
    # the client pages back with `history`).
    complete = since + 1 >= first_id and last_id - since <= recover
    return ReplayPlan(after=since, newest=recover, complete=complete)


# Called with (message, created) the moment an append is durable; see HistoryStore.append.
Stored = Callable[[Message, bool], None]


def announce(stored: Stored | None, message: Message, created: bool) -> None:
    """Call `stored` for a durable append; what it raises is logged, not passed on.

    The message is stored whatever the callback does, and the store goes on answering
    the appends after it.
    """
    if stored is None:
        return
    try:
        stored(message, created)
    except Exception:
        logger.exception("after storing message %d in %r", message.id, message.room)


class HistoryStore(Protocol):
    """Where messages live; ids are per room, consecutive from 1."""

    # True when no method ever waits (memory): requests that need the store are then
    # handled by the connection's reader, without a dispatcher task.
    instant: bool

    async def open(self) -> None: ...

    async def close(self) -> None:
        """Flush and release; after this nothing is lost that was acknowledged."""

    async def check(self) -> str:
        """'ok' when the backend answers, else a short reason."""

    async def append(self, new: NewMessage, stored: Stored | None = None) -> tuple[Message, bool]:
        """Store a message, or return the stored one with the same (room, key, cid).

        The bool is True when the message is new. Returns once the message is durable.

        `stored`, when given, is called on the event loop with the same answer as soon
        as the message is durable, before `append` returns, in id order across appends,
        and even if the caller was cancelled once the store had taken the message. It is
        where to act that must not wait for the caller's task to be resumed, or must
        happen although the caller is gone: the hub acks and broadcasts there. An
        exception it raises is logged; the message stays stored.
        """

    async def find(self, room: str, key: str, cid: str) -> Message | None: ...

    async def replay(
        self, room: str, since: int | None, client_epoch: str | None, replay: int, recover: int
    ) -> Replay:
        """What a `joined` carries: `replay` newest, or at most `recover` after `since`."""

    async def page(self, room: str, before: int | None, limit: int) -> Page: ...

    async def rooms(self, after: str | None = None, limit: int | None = None) -> dict[str, int]:
        """Rooms with stored messages and their newest ids, in name order.

        Only names that sort after `after` (when given), and at most `limit` of them.
        """


# ---------------------------------------------------------------- the backends

Backend = Callable[["Config", "Metrics"], tuple[HistoryStore, "Cluster"]]


def _memory(config: Config, metrics: Metrics) -> tuple[HistoryStore, Cluster]:
    from chat.cluster.local import LocalCluster
    from chat.history.memory import MemoryHistory

    store = MemoryHistory(config.history.retain)
    return store, LocalCluster(store)


def _sqlite(config: Config, metrics: Metrics) -> tuple[HistoryStore, Cluster]:
    from chat.cluster.local import LocalCluster
    from chat.history.sqlite import SqliteHistory

    store = SqliteHistory(
        config.history.path, config.history.retain, on_commit=metrics.observe_commit
    )
    return store, LocalCluster(store)


def _redis(config: Config, metrics: Metrics) -> tuple[HistoryStore, Cluster]:
    from chat.cluster.redis_cluster import RedisCluster
    from chat.cluster.redis_link import RedisLink
    from chat.history.redis import RedisHistory

    link = RedisLink(config.redis, metrics)
    store = RedisHistory(link, config.history.retain, on_commit=metrics.observe_commit)
    return store, RedisCluster(config, link, store, metrics)


# The one registry of backends: `history.backend` is validated against its names
# (chat.config) and `chat.app.make_backend` builds from it. The builders import their
# modules when called: those import chat.config, which imports this registry.
BACKENDS: Final[Mapping[str, Backend]] = {
    "memory": _memory,
    "sqlite": _sqlite,
    "redis": _redis,
}

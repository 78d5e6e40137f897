"""Where the Redis backend keeps things: every key and channel name, in one place.

Every key and channel of a room carries the room as a hash tag (`{room}`), so that a
room's script touches one slot and the layout can later move to Redis Cluster. The
session and node keys are global; the scripts that end sessions touch several rooms and
are the part that would need splitting there (docs/cluster.md).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str

    # ------------------------------------------------------------ one room
    def room(self, room: str) -> str:
        """The room's pub/sub channel; its keys start with it."""
        return f"{self.prefix}:{{{room}}}"

    def meta(self, room: str) -> str:
        """Hash: `epoch`, `gen` (the generation the epoch belongs to), `last` (newest id)."""
        return f"{self.room(room)}:meta"

    def log(self, room: str) -> str:
        """Stream of the retained messages; entry id `<message id>-0`, fields f, k, c."""
        return f"{self.room(room)}:log"

    def cids(self, room: str) -> str:
        """Hash: `<nick key>\\0<cid>` -> message id, for the retained messages only."""
        return f"{self.room(room)}:cids"

    def members(self, room: str) -> str:
        """Hash: session id -> nick, for every member on every node."""
        return f"{self.room(room)}:members"

    # ------------------------------------------------------------ the whole service
    @property
    def rooms(self) -> str:
        """Sorted set (all scores 0, ordered by name) of rooms that had members or messages."""
        return f"{self.prefix}:rooms"

    @property
    def generation(self) -> str:
        """Bumped when Redis restarted with persistence that may have lost writes."""
        return f"{self.prefix}:gen"

    @property
    def boot(self) -> str:
        """The run_id of the Redis process the generation was last checked against."""
        return f"{self.prefix}:boot"

    @property
    def nodes(self) -> str:
        """Set of the registered nodes; a node missing from it was ended by the others."""
        return f"{self.prefix}:nodes"

    def lease(self, node: str) -> str:
        """Exists while the node renews it (TTL `redis.node_timeout`)."""
        return f"{self.prefix}:node:{node}"

    def node_sessions(self, node: str) -> str:
        return f"{self.prefix}:node:{node}:sessions"

    def node_channel(self, node: str) -> str:
        """Messages to one node: takeovers (`R`), and its own probes (`Q`)."""
        return f"{self.prefix}:node:{node}:ch"

    def session(self, session: str) -> str:
        """Hash: nick, key, node, conn."""
        return f"{self.prefix}:session:{session}"

    def session_rooms(self, session: str) -> str:
        return f"{self.prefix}:session:{session}:rooms"

    def nick(self, key: str) -> str:
        """String: the session id holding the nick."""
        return f"{self.prefix}:nick:{key}"

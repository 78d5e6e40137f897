"""The client's decisions, sans I/O: back-off, what a close means, room recovery, the outbox.

Nothing here touches a socket, an event loop or a clock: time comes in as an argument,
so every rule is tested with plain synchronous tests. `chat.client` applies them.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from chat.protocol import MAX_CID, Close, ErrorCode

# 2 ** 60 * any sane base is past any sane cap; bounding the exponent keeps the float finite.
_MAX_EXPONENT: Final = 60
# Re-sends after a reconnect are paced to at most this many a second, whatever the server allows.
MAX_SEND_RATE: Final = 20.0
# The contract's `limits.join_rate` default (5 a second, bursts of 40) as (rate, burst):
# what a server that does not announce one allows.
DEFAULT_JOIN_RATE: Final = (5.0, 40.0)
# Refusals that mean "not now": the request is kept and asked again after `retry_after`.
RETRYABLE: Final = frozenset({ErrorCode.RATE_LIMITED, ErrorCode.UNAVAILABLE})


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Seconds to wait before reconnect `attempt` (0 first): full jitter, capped.

    Full jitter spreads a crowd of clients that lost the same server over the whole
    window instead of bringing them back in synchronised waves.
    """
    return rng.uniform(0.0, min(cap, base * 2 ** min(attempt, _MAX_EXPONENT)))


class Next(enum.Enum):
    """What the client does once a connection is over."""

    RECONNECT = "reconnect"  # after the back-off delay
    RECONNECT_SOON = "reconnect_soon"  # after a short random delay (server restarting)
    STOP = "stop"  # do not come back: surface the reason


def after_close(code: int | None) -> Next:
    """What a close code from the server asks of the client (None: the connection was lost)."""
    if code == Close.GOING_AWAY:
        return Next.RECONNECT_SOON
    # 4002: a newer connection holds our session; fighting it would make two clients
    # take the session from each other forever. 4003: no retry makes a token valid.
    if code in (Close.REPLACED, Close.UNAUTHORIZED):
        return Next.STOP
    return Next.RECONNECT


# Refusals of `hello` that the same hello would get again.
_HELLO_FATAL: Final = frozenset({
    ErrorCode.NICK_TAKEN, ErrorCode.NICK_INVALID, ErrorCode.UNAUTHORIZED, ErrorCode.BAD_REQUEST
})


def after_hello_error(code: str, welcomed_before: bool) -> Next:
    """What an `error` answering `hello` asks of the client."""
    if code == ErrorCode.NICK_TAKEN and welcomed_before:
        # Our old connection may still hold the nick until the server times it out.
        return Next.RECONNECT
    if code in _HELLO_FATAL:
        return Next.STOP
    return Next.RECONNECT


def valid_cid(cid: str) -> bool:
    return 1 <= len(cid) <= MAX_CID


def retry_after(frame: dict[str, Any]) -> float:
    """Seconds an `error` asks the client to wait before asking again (1 if it does not say)."""
    value = frame.get("retry_after")
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return 1.0


@dataclass(slots=True)
class RoomState:
    """What the client holds of one room: enough to resume it after a reconnect."""

    name: str
    epoch: str | None = None  # None until the first `joined`
    last_id: int = 0  # highest message id held in this epoch (0: none)
    complete: bool = True  # False when the last `joined` said messages were missed
    members: set[str] = field(default_factory=set)

    def join_frame(self) -> dict[str, Any]:
        """The `join` that resumes this room from what is held."""
        frame: dict[str, Any] = {"type": "join", "room": self.name}
        if self.epoch is not None:
            frame["since"] = self.last_id
            frame["epoch"] = self.epoch
        return frame

    def on_joined(self, frame: dict[str, Any]) -> bool:
        """Take a `joined`; True when the room's history started over (a new epoch)."""
        epoch = str(frame["epoch"])
        reset = self.epoch is not None and epoch != self.epoch
        if reset or self.epoch is None:
            # Ids restart with the epoch: what we held says nothing about the new history.
            self.epoch = epoch
            self.last_id = 0
        self.complete = bool(frame.get("complete", True))
        self.members = set(frame.get("members", ()))
        return reset

    def accept(self, message: dict[str, Any]) -> bool:
        """True when `message` is new here; it then becomes the highest id held.

        Ids are consecutive per room and every connection receives them in order, so
        anything at or below the highest id held has been shown already (a replay
        overlapping the live stream, or a re-join).
        """
        msg_id = message.get("id")
        if not isinstance(msg_id, int) or msg_id <= self.last_id:
            return False
        self.last_id = msg_id
        return True

    def on_presence(self, frame: dict[str, Any]) -> None:
        nick = frame.get("nick")
        if not isinstance(nick, str):
            return
        if frame.get("event") == "join":
            self.members.add(nick)
        else:
            self.members.discard(nick)


@dataclass(slots=True)
class PendingSay:
    room: str
    text: str
    cid: str
    sent: bool = False  # sent on the current connection (its ack may still come)

    def frame(self) -> dict[str, Any]:
        return {"type": "say", "room": self.room, "text": self.text, "cid": self.cid}


class Outbox:
    """Every `say` not yet acknowledged, in the order the application said them."""

    def __init__(self) -> None:
        self._says: dict[str, PendingSay] = {}

    def __len__(self) -> int:
        return len(self._says)

    def __iter__(self) -> Iterator[PendingSay]:
        return iter(list(self._says.values()))

    def __contains__(self, cid: object) -> bool:
        return cid in self._says

    def add(self, say: PendingSay) -> None:
        self._says.setdefault(say.cid, say)

    def remove(self, cid: str) -> PendingSay | None:
        """Forget a say (acknowledged, refused or withdrawn)."""
        return self._says.pop(cid, None)

    def next_unsent(self, held: Collection[str] = ()) -> PendingSay | None:
        """The oldest say not sent on the current connection, except in the `held` rooms.

        A room is held while it is being (re-)joined: a say that reached the server
        before the room's `join` would be refused with `not_joined`.
        """
        return next(
            (say for say in self._says.values() if not say.sent and say.room not in held), None
        )

    def unsend(self, cid: str) -> None:
        """Send this one again (it was rate limited)."""
        say = self._says.get(cid)
        if say is not None:
            say.sent = False

    def connection_lost(self) -> None:
        """Every unacknowledged say goes out again, with its cid, on the next connection.

        The server answers a repeated (room, nick, cid) with the original's ack without
        storing it again, so re-sending one whose ack was merely lost is harmless.
        """
        for say in self._says.values():
            say.sent = False


class Pacer:
    """A token bucket the client keeps so its says stay within the server's rate."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = max(1.0, burst)
        self.tokens = self.burst
        self.at = now

    @classmethod
    def for_limits(cls, limits: Any, now: float) -> Pacer:
        """From `welcome.limits.rate`, never faster than MAX_SEND_RATE."""
        rate, burst = MAX_SEND_RATE, MAX_SEND_RATE
        server = read_rate(limits, "rate")
        if server is not None:
            rate, burst = min(rate, server[0]), min(burst, server[1])
        return cls(max(rate, 0.1), burst, now)

    @classmethod
    def for_joins(cls, limits: Any, now: float) -> Pacer:
        """Inside `welcome.limits.join_rate` (or the contract's default when absent).

        One token less and a tenth slower than the server's bucket, so that joins bunched
        up on the way still arrive within it: a session re-joining its rooms after a
        reconnect is never refused for them.
        """
        rate, burst = read_rate(limits, "join_rate") or DEFAULT_JOIN_RATE
        return cls(max(rate * 0.9, 0.1), max(1.0, burst - 1), now)

    def retune(self, rate: float, burst: float, now: float) -> None:
        """New limits (a `settings` frame): what was spent stays spent."""
        self._refill(now)
        self.rate = max(rate, 0.1)
        self.burst = max(1.0, burst)
        self.tokens = min(self.tokens, self.burst)

    def _refill(self, now: float) -> None:
        if now > self.at:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
            self.at = now

    def delay(self, now: float) -> float:
        """Seconds until a say may go out (0: now)."""
        self._refill(now)
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate

    def take(self, now: float) -> None:
        self._refill(now)
        self.tokens -= 1


def read_rate(limits: Any, key: str) -> tuple[float, float] | None:
    """(messages a second, burst) of `limits[key]`, None when it is absent or malformed."""
    try:
        server = limits[key]
        rate = float(server["messages"]) / float(server["per"])
        burst = float(server["burst"])
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    return (rate, burst) if rate > 0 and burst >= 1 else None

"""Token mode: HS256 JWTs whose `sub` is the nick and whose `rooms` limit joins."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

import jwt
from jwt.warnings import InsecureKeyLengthWarning

from chat import protocol

ALGORITHM: Final = "HS256"
LEEWAY: Final = 30  # s of clock skew allowed on `exp`


@dataclass(frozen=True, slots=True)
class Grant:
    nick: str  # normalised `sub`
    rooms: frozenset[str] | None  # None: every room


class Unauthorized(Exception):
    """The token is missing, invalid, expired, or names another nick."""


def verify(token: str | None, nick: str | None, secret: str, now: float) -> Grant:
    """What a hello's token allows; raises Unauthorized with a human reason."""
    if token is None:
        raise Unauthorized("a token is required")
    try:
        with _short_keys_allowed():
            claims: dict[str, Any] = jwt.decode(
                token,
                secret,
                algorithms=[ALGORITHM],
                # `exp` is checked below against the time passed in, so the decision
                # is testable.
                options={"require": ["sub"], "verify_exp": False, "verify_iat": False},
            )
    except jwt.InvalidTokenError as err:
        raise Unauthorized(f"invalid token: {err}") from None
    exp = claims.get("exp")
    # NaN and Infinity are not JSON, but a lenient parser lets them through.
    valid_exp = isinstance(exp, int | float) and math.isfinite(exp)
    if exp is not None and (not valid_exp or exp + LEEWAY < now):
        raise Unauthorized("the token has expired")
    sub = claims.get("sub")
    granted = protocol.normalize_nick(sub) if isinstance(sub, str) else None
    if granted is None:
        raise Unauthorized("the token's sub is not a valid nick")
    if nick is not None and protocol.nick_key(nick) != protocol.nick_key(granted):
        raise Unauthorized("the nick does not match the token")
    return Grant(granted, _rooms(claims.get("rooms", None)))


def _rooms(value: Any) -> frozenset[str] | None:
    if value is None or value == ["*"]:
        return None
    if not isinstance(value, list) or not all(
        isinstance(room, str) and protocol.valid_room(room) for room in value
    ):
        raise Unauthorized("the token's rooms claim must be a list of room names or [\"*\"]")
    return frozenset(value)


def issue(nick: str, secret: str, now: float, ttl: float, rooms: list[str] | None = None) -> str:
    """A token for `nick`, valid `ttl` seconds from `now`."""
    claims: dict[str, Any] = {"sub": nick, "iat": int(now), "exp": int(now + ttl)}
    if rooms is not None:
        claims["rooms"] = rooms
    with _short_keys_allowed():
        return jwt.encode(claims, secret, algorithm=ALGORITHM)


def weak_secret(secret: str) -> bool:
    """RFC 7518 asks for at least 256 bits of key for HS256."""
    return len(secret.encode()) < 32


@contextmanager
def _short_keys_allowed() -> Iterator[None]:
    # The operator is warned once at start (see `weak_secret`), not on every hello.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        yield

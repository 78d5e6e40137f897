"""The wire protocol, sans I/O: client text frames to typed events, server events to bytes.

Nothing here touches a socket or an event loop, so every rule can be tested with plain
synchronous tests. Semantic rules that need no server state (nick, room and text
validity) live here too; rules that need state (membership, uniqueness) live in the hub.
"""

from __future__ import annotations

import re
import struct
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any, Final

import orjson

from chat.ignorable import default_ignorable

VERSION: Final = 1
LEGACY_HEARTBEAT: Final = "~h#c~"
LEGACY_HEARTBEAT_BYTES: Final = LEGACY_HEARTBEAT.encode()

MAX_NICK: Final = 32
MAX_CID: Final = 64
HISTORY_DEFAULT_LIMIT: Final = 50
HISTORY_MAX_LIMIT: Final = 100
# Levels of arrays and objects a frame may nest (the frame object itself is level 1).
# Deeper values could not even be echoed: orjson refuses to encode past 254 levels.
MAX_DEPTH: Final = 32

ROOM_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_NICK_EXTRA: Final = frozenset("_-.")
_TEXT_ALLOWED_CC: Final = frozenset("\t\n")
# Unicode's Cc category is fixed at U+0000-U+001F and U+007F-U+009F; one regex search
# finds those outside _TEXT_ALLOWED_CC at C speed (this runs on every say).
_TEXT_CONTROL: Final = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class Close(IntEnum):
    """The close codes a client may get from the server (docs/protocol.md, "Close codes")."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002  # sent by aiohttp itself when the client breaks WebSocket framing
    UNSUPPORTED = 1003
    INVALID_DATA = 1007
    POLICY = 1008
    TOO_BIG = 1009
    INTERNAL = 1011
    HEARTBEAT_TIMEOUT = 4000
    SLOW_CONSUMER = 4001
    REPLACED = 4002
    UNAUTHORIZED = 4003


class ErrorCode(StrEnum):
    """The `code` of an `error` frame (docs/protocol.md, "Error codes"), in the doc's order."""

    BAD_JSON = "bad_json"
    BAD_REQUEST = "bad_request"
    UNKNOWN_TYPE = "unknown_type"
    HELLO_REQUIRED = "hello_required"
    NICK_INVALID = "nick_invalid"
    NICK_TAKEN = "nick_taken"
    UNAUTHORIZED = "unauthorized"
    ROOM_INVALID = "room_invalid"
    FORBIDDEN_ROOM = "forbidden_room"
    NOT_JOINED = "not_joined"
    TOO_MANY_ROOMS = "too_many_rooms"
    TEXT_TOO_LONG = "text_too_long"
    TEXT_INVALID = "text_invalid"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Hello:
    nick: str | None
    session: str | None
    token: str | None


@dataclass(frozen=True, slots=True)
class Join:
    room: str
    since: int | None
    epoch: str | None


@dataclass(frozen=True, slots=True)
class Leave:
    room: str


@dataclass(frozen=True, slots=True)
class Say:
    room: str
    text: str
    cid: str | None


@dataclass(frozen=True, slots=True)
class Typing:
    room: str


@dataclass(frozen=True, slots=True)
class HistoryRequest:
    room: str
    before: int | None
    limit: int


@dataclass(frozen=True, slots=True)
class Ping:
    t: Any


@dataclass(frozen=True, slots=True)
class LegacyPing:
    pass


@dataclass(frozen=True, slots=True)
class Invalid:
    """A frame that gets an `error` reply instead of an effect."""

    code: ErrorCode
    message: str
    ref: str | None
    retry_after: float | None = None
    kind: str | None = None  # the frame's `type`, when it had a string one


ClientEvent = Hello | Join | Leave | Say | Typing | HistoryRequest | Ping | LegacyPing


# --------------------------------------------------------------------------- parsing


class _BadField(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _str(obj: dict[str, Any], key: str, *, optional: bool = False) -> str | None:
    value = obj.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise _BadField(f"'{key}' must be a string")
    return value


def _int(obj: dict[str, Any], key: str, *, low: int, high: int | None = None) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    # bool is an int in Python but not in JSON.
    if not isinstance(value, int) or isinstance(value, bool):
        raise _BadField(f"'{key}' must be an integer")
    if value < low or (high is not None and value > high):
        bounds = f"{low} to {high}" if high is not None else f">= {low}"
        raise _BadField(f"'{key}' must be {bounds}")
    return value


def _valid_cid(value: Any) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= MAX_CID


def _ref(obj: Any) -> str | None:
    if not isinstance(obj, dict):
        return None
    cid = obj.get("cid")
    if _valid_cid(cid):
        return str(cid)
    kind = obj.get("type")
    return kind if isinstance(kind, str) else None


def _build(kind: str, obj: dict[str, Any]) -> ClientEvent:
    if kind == "ping":
        return Ping(obj.get("t"))
    if kind == "hello":
        return Hello(
            _str(obj, "nick", optional=True),
            _str(obj, "session", optional=True),
            _str(obj, "token", optional=True),
        )
    room = _str(obj, "room")
    assert room is not None
    if kind == "join":
        return Join(room, _int(obj, "since", low=0), _str(obj, "epoch", optional=True))
    if kind == "leave":
        return Leave(room)
    if kind == "say":
        text = _str(obj, "text")
        assert text is not None
        cid = obj.get("cid")
        if cid is not None and not _valid_cid(cid):
            raise _BadField(f"'cid' must be a string of 1 to {MAX_CID} characters")
        return Say(room, text, cid)
    if kind == "typing":
        return Typing(room)
    if kind == "history":
        limit = _int(obj, "limit", low=1, high=HISTORY_MAX_LIMIT)
        before = _int(obj, "before", low=0)
        return HistoryRequest(room, before, HISTORY_DEFAULT_LIMIT if limit is None else limit)
    raise AssertionError(kind)


_KINDS: Final = frozenset({"hello", "join", "leave", "say", "typing", "history", "ping"})


def _deeper_than(obj: Any, limit: int) -> bool:
    """Whether `obj` nests arrays and objects more than `limit` levels (itself level 1)."""
    if not isinstance(obj, dict | list):
        return False
    level = [obj]
    for _ in range(limit):
        # The containers one level further down; walked breadth first, without recursion.
        level = [
            child
            for node in level
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, dict | list)
        ]
        if not level:
            return False
    return True


def parse(text: str) -> ClientEvent | Invalid:
    """Turn one inbound text frame into an event, or into the error it deserves."""
    if text == LEGACY_HEARTBEAT:
        return LegacyPing()
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        # orjson also refuses lone surrogates and nesting past its recursion limit.
        return Invalid(ErrorCode.BAD_JSON, "frame is not valid JSON", None)
    # Nesting takes an opening bracket and two characters per level, and a frame with no
    # `[` and no `{` but its own has none: these tests, at C speed and inline (this runs
    # on every frame), spare the walk for ordinary frames.
    if (
        len(text) > 2 * MAX_DEPTH
        and ("[" in text or "{" in text[1:])
        and text.count("[") + text.count("{") > MAX_DEPTH
        and _deeper_than(obj, MAX_DEPTH)
    ):
        return Invalid(ErrorCode.BAD_JSON, f"frame is nested deeper than {MAX_DEPTH} levels", None)
    if not isinstance(obj, dict):
        return Invalid(ErrorCode.BAD_REQUEST, "frame must be a JSON object", None)
    kind = obj.get("type")
    if not isinstance(kind, str):
        return Invalid(ErrorCode.BAD_REQUEST, "'type' must be a string", _ref(obj))
    if kind not in _KINDS:
        return Invalid(ErrorCode.UNKNOWN_TYPE, f"unknown type {kind[:40]!r}", _ref(obj), kind=kind)
    try:
        return _build(kind, obj)
    except _BadField as err:
        return Invalid(ErrorCode.BAD_REQUEST, err.message, _ref(obj), kind=kind)


# --------------------------------------------------------------------------- rules


def normalize_nick(raw: str) -> str | None:
    """The nick's normal form (NFKC), or None when it breaks the nick rules."""
    nick = unicodedata.normalize("NFKC", raw)
    if not 1 <= len(nick) <= MAX_NICK:
        return None
    for ch in nick:
        if ch in _NICK_EXTRA:
            continue
        # Some letters show as nothing (the Hangul fillers are Lo): such a nick would
        # look like another one.
        if unicodedata.category(ch)[0] not in "LN" or default_ignorable(ch):
            return None
    return nick


def nick_key(nick: str) -> str:
    """What nicks are compared by: NFKC then casefold (casefold can leave NFKC, so redo it)."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", nick).casefold())


def valid_room(name: str) -> bool:
    return ROOM_RE.fullmatch(name) is not None


def text_problem(text: str, max_text: int) -> Invalid | None:
    """Why a message text is refused, or None; length is checked before content."""
    if len(text) > max_text:
        return Invalid(ErrorCode.TEXT_TOO_LONG, f"text is longer than {max_text} characters", None)
    if not text or text.isspace():
        return Invalid(ErrorCode.TEXT_INVALID, "text is empty or only white space", None)
    if _TEXT_CONTROL.search(text) is not None:
        return Invalid(ErrorCode.TEXT_INVALID, "text contains control characters", None)
    return None


# --------------------------------------------------------------------------- encoding
#
# Every frame the server sends is built by one function below, so the wire format lives
# in this module alone. Key order is part of it: chat.history.redis splices `message`
# frames byte for byte (`_frame_parts`), and tests compare bytes.


def encode(frame: Mapping[str, Any]) -> bytes:
    return orjson.dumps(frame)


def error_frame(
    code: ErrorCode, message: str, ref: str | None, retry_after: float | None = None
) -> bytes:
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message, "ref": ref}
    if retry_after is not None:
        frame["retry_after"] = retry_after
    return orjson.dumps(frame)


def pong_frame(t: Any, ts: int) -> bytes:
    """A pong echoing `t`; never raises, so a heartbeat is always answered."""
    try:
        return orjson.dumps({"type": "pong", "t": t, "ts": ts})
    except orjson.JSONEncodeError:
        # `parse` bounds nesting, so only a value that did not come from it gets here.
        return orjson.dumps({"type": "pong", "t": None, "ts": ts})


def welcome_frame(
    session: str, nick: str, rooms: Sequence[str], settings: Mapping[str, Any]
) -> bytes:
    """`welcome`; `settings` are the fields a `settings` frame would carry."""
    return orjson.dumps({
        "type": "welcome",
        "version": VERSION,
        "session": session,
        "nick": nick,
        "rooms": rooms,
        **settings,
    })


def settings_frame(settings: Mapping[str, Any]) -> bytes:
    return orjson.dumps({"type": "settings", **settings})


def message_fields(
    room: str, msg_id: int, nick: str, text: str, ts: int, cid: str | None
) -> dict[str, Any]:
    """A `message` frame as an object: sent alone, and the item of `joined` and `history`."""
    return {
        "type": "message",
        "room": room,
        "id": msg_id,
        "nick": nick,
        "text": text,
        "ts": ts,
        "cid": cid,
    }


def message_frame(
    room: str, msg_id: int, nick: str, text: str, ts: int, cid: str | None
) -> bytes:
    return orjson.dumps(message_fields(room, msg_id, nick, text, ts, cid))


def joined_frame(
    room: str,
    epoch: str,
    members: list[str],
    messages: Sequence[Mapping[str, Any]],
    complete: bool,
) -> bytes:
    """`joined`; `messages` are `message_fields` objects, oldest first."""
    return orjson.dumps({
        "type": "joined",
        "room": room,
        "epoch": epoch,
        "members": sort_nicks(members),
        "messages": messages,
        "complete": complete,
    })


def history_frame(room: str, messages: Sequence[Mapping[str, Any]], more: bool) -> bytes:
    return orjson.dumps({"type": "history", "room": room, "messages": messages, "more": more})


def left_frame(room: str) -> bytes:
    return orjson.dumps({"type": "left", "room": room})


def ack_frame(cid: str | None, room: str, msg_id: int, ts: int) -> bytes:
    return orjson.dumps({"type": "ack", "cid": cid, "room": room, "id": msg_id, "ts": ts})


def typing_frame(room: str, nick: str) -> bytes:
    return orjson.dumps({"type": "typing", "room": room, "nick": nick})


def presence_frame(room: str, event: str, nick: str, reason: str | None = None) -> bytes:
    frame: dict[str, Any] = {"type": "presence", "room": room, "event": event, "nick": nick}
    if reason is not None:
        frame["reason"] = reason
    return orjson.dumps(frame)


def close_frame(code: int, reason: str) -> bytes:
    """A complete unmasked server close frame, for closing without the WebSocket layer."""
    # A close payload is at most 125 bytes; cut the reason on a character boundary.
    payload = struct.pack("!H", code) + reason.encode()[:123].decode(errors="ignore").encode()
    return bytes((0x88, len(payload))) + payload


def sort_nicks(nicks: list[str]) -> list[str]:
    return sorted(nicks, key=lambda n: (nick_key(n), n))

"""The sans-I/O protocol: parsing client frames, the nick/room/text rules, encoding."""

from __future__ import annotations

import json
import sys
import unicodedata
from pathlib import Path
from typing import Any, Final

import orjson
import pytest

from chat import protocol
from chat.history import Message
from chat.history.redis import _frame_parts
from chat.protocol import (
    Close,
    ErrorCode,
    Hello,
    HistoryRequest,
    Invalid,
    Join,
    Leave,
    LegacyPing,
    Ping,
    Say,
    Typing,
    close_frame,
    encode,
    error_frame,
    nick_key,
    normalize_nick,
    parse,
    pong_frame,
    sort_nicks,
    text_problem,
    valid_room,
)


def frame(**fields: Any) -> str:
    return json.dumps(fields)


def invalid(text: str) -> Invalid:
    result = parse(text)
    assert isinstance(result, Invalid), result
    return result


# --------------------------------------------------------------------------- parse: events


def test_parse_hello_with_all_fields() -> None:
    """A full `hello` becomes a Hello event carrying nick, session and token."""
    assert parse(frame(type="hello", nick="alice", session="s", token="t")) == Hello(
        "alice", "s", "t"
    )


def test_parse_hello_optional_fields_absent() -> None:
    """A `hello` without session or token leaves them None."""
    assert parse(frame(type="hello", nick="alice")) == Hello("alice", None, None)


def test_parse_join_with_since_and_epoch() -> None:
    """A `join` carries room, since and epoch."""
    assert parse(frame(type="join", room="lobby", since=7, epoch="e1")) == Join("lobby", 7, "e1")


def test_parse_join_since_zero_is_allowed() -> None:
    """`since` 0 is the lowest valid recovery point."""
    assert parse(frame(type="join", room="lobby", since=0)) == Join("lobby", 0, None)


def test_parse_join_without_since() -> None:
    """A plain `join` has no since and no epoch."""
    assert parse(frame(type="join", room="lobby")) == Join("lobby", None, None)


def test_parse_leave() -> None:
    """A `leave` names its room."""
    assert parse(frame(type="leave", room="lobby")) == Leave("lobby")


def test_parse_say_with_cid() -> None:
    """A `say` carries room, text and cid."""
    assert parse(frame(type="say", room="lobby", text="hi", cid="c1")) == Say("lobby", "hi", "c1")


def test_parse_say_without_cid() -> None:
    """A `say` without cid has cid None."""
    assert parse(frame(type="say", room="lobby", text="hi")) == Say("lobby", "hi", None)


def test_parse_say_cid_of_64_code_points() -> None:
    """A cid of exactly 64 code points (even non-ASCII) is valid."""
    cid = "é" * 64
    assert parse(frame(type="say", room="lobby", text="hi", cid=cid)) == Say("lobby", "hi", cid)


def test_parse_typing() -> None:
    """A `typing` names its room."""
    assert parse(frame(type="typing", room="lobby")) == Typing("lobby")


def test_parse_history_default_limit() -> None:
    """A `history` without limit asks for 50, newest first page (before None)."""
    assert parse(frame(type="history", room="lobby")) == HistoryRequest("lobby", None, 50)


@pytest.mark.parametrize("limit", [1, 100])
def test_parse_history_limit_bounds_accepted(limit: int) -> None:
    """`limit` 1 and 100 are the inclusive bounds."""
    assert parse(frame(type="history", room="r", limit=limit, before=9)) == HistoryRequest(
        "r", 9, limit
    )


def test_parse_ping_with_t() -> None:
    """A `ping` keeps its `t`, whatever JSON value it is."""
    assert parse(frame(type="ping", t={"a": [1, 2]})) == Ping({"a": [1, 2]})


def test_parse_ping_without_t() -> None:
    """A `ping` without `t` has t None (echoed as null)."""
    assert parse(frame(type="ping")) == Ping(None)


def test_parse_ping_needs_no_other_fields() -> None:
    """A `ping` with extra fields is still a ping."""
    assert parse(frame(type="ping", t=1, room=5)) == Ping(1)


def test_parse_legacy_heartbeat() -> None:
    """The exact text `~h#c~` is the legacy heartbeat."""
    assert parse("~h#c~") == LegacyPing()


@pytest.mark.parametrize("text", [" ~h#c~", "~h#c~\n", "~H#C~", "~h#c", '"~h#c~"'])
def test_parse_legacy_heartbeat_must_be_exact(text: str) -> None:
    """Anything other than exactly `~h#c~` is not the legacy heartbeat."""
    assert not isinstance(parse(text), LegacyPing)


# --------------------------------------------------------------------------- parse: bad_json


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "{",
        '{"type": "ping"',
        "{'type': 'ping'}",
        '{"type": "ping", "t": NaN}',
        '{"type": "ping"} extra',
    ],
)
def test_parse_not_json_is_bad_json(text: str) -> None:
    """Text that is not JSON gets bad_json with a null ref."""
    assert invalid(text).code == "bad_json"
    assert invalid(text).ref is None


def test_parse_deeply_nested_is_bad_json() -> None:
    """JSON nested too deeply is bad_json, not a crash."""
    depth = 100_000
    assert invalid("[" * depth + "]" * depth).code == "bad_json"
    nested_object = '{"type": "ping", "t": ' + '{"a": ' * depth + "1" + "}" * depth + "}"
    assert invalid(nested_object).code == "bad_json"


@pytest.mark.parametrize("escape", ["\\ud800", "\\udc00", "\\ud800x", "\\udfff\\ud800"])
def test_parse_lone_surrogate_escape_is_bad_json(escape: str) -> None:
    """A lone surrogate escape such as \\ud800 is bad_json."""
    text = '{"type": "say", "room": "a", "text": "' + escape + '"}'
    assert invalid(text).code == "bad_json"


def test_parse_surrogate_pair_escape_is_fine() -> None:
    """A proper surrogate pair escape decodes to its astral character."""
    text = '{"type": "say", "room": "a", "text": "\\ud83d\\ude00"}'
    assert parse(text) == Say("a", "\U0001f600", None)


# --------------------------------------------------------------------------- parse: bad_request


@pytest.mark.parametrize("text", ["[]", '[{"type": "ping"}]', "1", '"ping"', "null", "true"])
def test_parse_non_object_is_bad_request(text: str) -> None:
    """Valid JSON that is not an object gets bad_request with a null ref."""
    err = invalid(text)
    assert (err.code, err.ref) == ("bad_request", None)


@pytest.mark.parametrize("kind", [None, 1, True, ["ping"], {"t": "ping"}])
def test_parse_non_string_type_is_bad_request(kind: Any) -> None:
    """A `type` that is not a string gets bad_request with a null ref."""
    err = invalid(json.dumps({"type": kind}))
    assert (err.code, err.ref) == ("bad_request", None)


def test_parse_missing_type_is_bad_request() -> None:
    """An object without `type` gets bad_request."""
    err = invalid("{}")
    assert (err.code, err.ref) == ("bad_request", None)


@pytest.mark.parametrize(
    "fields",
    [
        {"type": "hello", "nick": 1},
        {"type": "hello", "nick": "a", "session": 5},
        {"type": "hello", "nick": "a", "token": ["x"]},
        {"type": "join"},
        {"type": "join", "room": 1},
        {"type": "join", "room": "a", "since": "1"},
        {"type": "join", "room": "a", "since": 1.0},
        {"type": "join", "room": "a", "since": 1.5},
        {"type": "join", "room": "a", "since": True},
        {"type": "join", "room": "a", "since": False},
        {"type": "join", "room": "a", "epoch": 3},
        {"type": "leave"},
        {"type": "leave", "room": None},
        {"type": "say", "room": "a"},
        {"type": "say", "text": "hi"},
        {"type": "say", "room": "a", "text": 5},
        {"type": "say", "room": "a", "text": None},
        {"type": "typing", "room": ["a"]},
        {"type": "history"},
        {"type": "history", "room": "a", "before": "3"},
        {"type": "history", "room": "a", "before": -1},
        {"type": "history", "room": "a", "before": True},
        {"type": "history", "room": "a", "limit": "10"},
        {"type": "history", "room": "a", "limit": True},
        {"type": "history", "room": "a", "limit": 10.0},
    ],
)
def test_parse_ill_typed_field_is_bad_request(fields: dict[str, Any]) -> None:
    """A missing or ill-typed field gets bad_request, ref the type."""
    err = invalid(json.dumps(fields))
    assert (err.code, err.ref) == ("bad_request", fields["type"])


@pytest.mark.parametrize("limit", [0, 101, -1, 10**6])
def test_parse_history_limit_out_of_range(limit: int) -> None:
    """`limit` outside 1..100 gets bad_request."""
    err = invalid(frame(type="history", room="a", limit=limit))
    assert (err.code, err.ref) == ("bad_request", "history")


@pytest.mark.parametrize("since", [-1, -(10**6)])
def test_parse_negative_since(since: int) -> None:
    """A negative `since` gets bad_request."""
    err = invalid(frame(type="join", room="a", since=since))
    assert (err.code, err.ref) == ("bad_request", "join")


def test_parse_bool_is_not_an_int() -> None:
    """JSON true is not an integer even though Python's bool is an int."""
    assert invalid(frame(type="history", room="a", limit=True)).code == "bad_request"
    assert invalid(frame(type="join", room="a", since=False)).code == "bad_request"


@pytest.mark.parametrize("cid", ["", "x" * 65, 5, True, ["c"], {"c": 1}])
def test_parse_bad_cid_is_bad_request(cid: Any) -> None:
    """A cid that is empty, over 64 code points or not a string gets bad_request."""
    err = invalid(frame(type="say", room="a", text="hi", cid=cid))
    # The cid is not valid, so the ref falls back to the type.
    assert (err.code, err.ref) == ("bad_request", "say")


def test_parse_null_cid_is_no_cid() -> None:
    """An explicit null cid means no cid."""
    assert parse(frame(type="say", room="a", text="hi", cid=None)) == Say("a", "hi", None)


# --------------------------------------------------------------------------- parse: unknown_type


@pytest.mark.parametrize("kind", ["", "PING", "Hello", "welcome", "error", "nope"])
def test_parse_unknown_type(kind: str) -> None:
    """A string type that is not a client request gets unknown_type, ref the type."""
    err = invalid(frame(type=kind))
    assert (err.code, err.ref) == ("unknown_type", kind)


# --------------------------------------------------------------------------- parse: ref


def test_ref_is_valid_cid_first() -> None:
    """The ref is the request's cid when it has a valid one."""
    err = invalid(frame(type="say", room=1, text="hi", cid="c-1"))
    assert (err.code, err.ref) == ("bad_request", "c-1")


def test_ref_is_cid_on_unknown_type() -> None:
    """A valid cid is the ref even for an unknown type."""
    assert invalid(frame(type="shout", cid="c-2")).ref == "c-2"


def test_ref_is_cid_even_when_type_is_not_a_string() -> None:
    """A valid cid is the ref even when the type is ill-typed."""
    err = invalid(frame(type=3, cid="c-3"))
    assert (err.code, err.ref) == ("bad_request", "c-3")


def test_ref_falls_back_to_type_for_invalid_cid() -> None:
    """An invalid cid is not echoed; the string type is the ref."""
    assert invalid(frame(type="shout", cid="")).ref == "shout"
    assert invalid(frame(type="shout", cid="x" * 65)).ref == "shout"


def test_ref_is_null_without_cid_or_string_type() -> None:
    """Without a valid cid or a string type the ref is null."""
    assert invalid(frame(type=None, cid=7)).ref is None


# --------------------------------------------------------------------------- nicks


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("alice", "alice"),
        ("Alice_B-c.d", "Alice_B-c.d"),
        ("\uff21\uff22\uff23", "ABC"),
        ("ﬁsh", "fish"),
        ("x" * 32, "x" * 32),
        ("a", "a"),
        ("Ωμέγα", "Ωμέγα"),
        ("日本語", "日本語"),
        ("Привет", "Привет"),
        ("٣٤", "٣٤"),
        ("_", "_"),
        ("...", "..."),
        ("①", "1"),
    ],
)
def test_normalize_nick_accepts(raw: str, expected: str) -> None:
    """Letters and digits of any script, '_', '-', '.' are accepted, in NFKC form."""
    assert normalize_nick(raw) == expected


def test_normalize_nick_composes_decomposed_letters() -> None:
    """A decomposed letter (e + combining acute) is composed by NFKC and accepted."""
    assert normalize_nick("Re\u0301my") == "Rémy"


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "x" * 33,
        "ﬁ" * 17,  # 17 characters, 34 after NFKC
        "al ice",
        " alice",
        "alice\n",
        "ali@ce",
        "alice😀",
        "😀",
        "a/b",
        "a+b",
        "a\u200bb",
        "a\u0000",
        "a\tb",
        "　",  # ideographic space, NFKC turns it into a plain space
    ],
)
def test_normalize_nick_refuses(raw: str) -> None:
    """Empty, too long after NFKC, spaces, emoji, '@' and other symbols are refused."""
    assert normalize_nick(raw) is None


def test_normalize_nick_length_counts_after_nfkc() -> None:
    """Length is checked after NFKC: 16 'ﬁ' ligatures are 32 characters and fit."""
    assert normalize_nick("ﬁ" * 16) == "fi" * 16


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Alice", "ALICE"),
        ("alice", "\uff21\uff2c\uff29\uff23\uff25"),
        ("\uff21\uff2c\uff29\uff23\uff25", "ALICE"),
        ("straße", "STRASSE"),
        ("ß", "SS"),
        ("ﬁ", "FI"),
        ("Σίσυφος", "ΣΊΣΥΦΟΣ"),
    ],
)
def test_nick_key_is_case_insensitive(a: str, b: str) -> None:
    """Nicks compare equal after NFKC and casefold."""
    assert nick_key(a) == nick_key(b)


def test_nick_key_keeps_distinct_nicks_apart() -> None:
    """Nicks that differ in letters have different keys."""
    assert nick_key("alice") != nick_key("alicf")
    assert nick_key("alice") != nick_key("alice.")


def test_sort_nicks_by_casefolded_form() -> None:
    """Nicks sort by their casefolded form, not by code point."""
    assert sort_nicks(["bob", "Carol", "alice", "Bea"]) == ["alice", "Bea", "bob", "Carol"]


def test_sort_nicks_is_deterministic_for_equal_keys() -> None:
    """Nicks with the same key still sort in one fixed order."""
    assert sort_nicks(["b", "B"]) == sort_nicks(["B", "b"])


def test_sort_nicks_empty() -> None:
    """No members sort to an empty list."""
    assert sort_nicks([]) == []


# --------------------------------------------------------------------------- rooms


@pytest.mark.parametrize("name", ["a", "0", "lobby", "a-b_c", "9lives", "a" * 32, "a-", "a_"])
def test_valid_room_accepts(name: str) -> None:
    """Names matching ^[a-z0-9][a-z0-9_-]{0,31}$ are valid; 32 characters fit."""
    assert valid_room(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "a" * 33,
        "Lobby",
        "LOBBY",
        "-lobby",
        "_lobby",
        "lob by",
        "lobby\n",
        "lobby.",
        "lobby/x",
        "café",
        "\uff4c\uff4f\uff42\uff42\uff59",
        "\u0661",
    ],
)
def test_valid_room_refuses(name: str) -> None:
    """Uppercase, a leading '-' or '_', 33 characters, spaces and non-ASCII are invalid."""
    assert not valid_room(name)


# --------------------------------------------------------------------------- text


def test_text_plain_is_fine() -> None:
    """An ordinary text has no problem."""
    assert text_problem("hello, world", 2000) is None


def test_text_tab_and_newline_allowed() -> None:
    """Tab and newline are the allowed control characters."""
    assert text_problem("line one\n\tline two", 2000) is None


def test_text_control_characters_are_exactly_category_cc() -> None:
    """Every code point is refused as a control character exactly when it is Cc."""
    refused = {
        cp for cp in range(sys.maxunicode + 1)
        if (problem := text_problem("a" + chr(cp), 2000)) is not None
        and problem.message == "text contains control characters"
    }
    want = {
        cp for cp in range(sys.maxunicode + 1)
        if unicodedata.category(chr(cp)) == "Cc" and chr(cp) not in "\t\n"
    }
    assert refused == want


def test_text_length_is_code_points() -> None:
    """2000 emoji (8000 UTF-8 bytes) are 2000 code points and fit."""
    assert text_problem("😀" * 2000, 2000) is None


def test_text_exactly_max_is_fine() -> None:
    """A text of exactly max_text code points fits."""
    assert text_problem("x" * 2000, 2000) is None


def test_text_one_over_max_is_too_long() -> None:
    """max_text + 1 code points is text_too_long."""
    problem = text_problem("😀" * 2001, 2000)
    assert problem is not None
    assert problem.code == "text_too_long"


def test_text_too_long_checked_before_invalid() -> None:
    """A too-long text that is also only white space is text_too_long."""
    problem = text_problem(" " * 2001, 2000)
    assert problem is not None
    assert problem.code == "text_too_long"


def test_text_too_long_checked_before_control_chars() -> None:
    """A too-long text with control characters is text_too_long."""
    problem = text_problem("\x00" * 11, 10)
    assert problem is not None
    assert problem.code == "text_too_long"


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "\n",
        "\t\n ",
        "\u3000",
        "\u00a0\u2003",
        "a\x00b",
        "a\rb",
        "bell\x07",
        "esc\x1b[31m",
        "del\x7f",
        "c1\x85",
        "c1\x9f",
    ],
)
def test_text_invalid(text: str) -> None:
    """Empty, white-space-only and control characters other than tab/newline are text_invalid."""
    problem = text_problem(text, 2000)
    assert problem is not None
    assert problem.code == "text_invalid"


@pytest.mark.parametrize("text", ["a\u200bb", "\u200b", "x\u00ad", "\u202eabc"])
def test_text_format_characters_are_not_control(text: str) -> None:
    """Format characters (category Cf) are not control characters (Cc)."""
    assert text_problem(text, 2000) is None


# --------------------------------------------------------------------------- encoding


def test_encode_is_compact_json_bytes() -> None:
    """encode gives UTF-8 JSON bytes that decode to the same object."""
    data = {"type": "message", "text": "héllo 😀", "id": 1, "cid": None}
    out = encode(data)
    assert isinstance(out, bytes)
    assert json.loads(out) == data
    assert "héllo 😀".encode() in out


def test_error_frame_without_retry_after() -> None:
    """An error frame has type, code, message and ref, and no retry_after unless given."""
    out = json.loads(error_frame("bad_json", "frame is not valid JSON", None))
    assert out == {
        "type": "error",
        "code": "bad_json",
        "message": "frame is not valid JSON",
        "ref": None,
    }


def test_error_frame_with_retry_after() -> None:
    """retry_after appears when given (rate_limited), even when it is 0."""
    out = json.loads(error_frame("rate_limited", "slow down", "c1", retry_after=0.25))
    assert out["retry_after"] == 0.25
    assert out["ref"] == "c1"
    assert json.loads(error_frame("rate_limited", "m", None, 0.0))["retry_after"] == 0.0


def test_pong_frame_echoes_t() -> None:
    """A pong echoes `t` as sent and carries the server ts."""
    out = json.loads(pong_frame({"n": [1, "x"]}, 1_700_000_000_123))
    assert out == {"type": "pong", "t": {"n": [1, "x"]}, "ts": 1_700_000_000_123}


def test_pong_frame_never_raises() -> None:
    """A `t` orjson cannot encode (nested 300 deep) gets a pong with t null, not an error."""
    deep: list[Any] = []
    for _ in range(300):
        deep = [deep]
    assert json.loads(pong_frame(deep, 5)) == {"type": "pong", "t": None, "ts": 5}


def nested(depth: int, kind: str = "ping") -> str:
    """A frame of `kind` whose own object plus `t` nest `depth` levels in all."""
    inner = "[" * (depth - 1) + "]" * (depth - 1)
    return f'{{"type": "{kind}", "room": "lobby", "text": "x", "t": {inner or "1"}}}'


@pytest.mark.parametrize("kind", ["ping", "say", "hello", "nope"])
def test_parse_depth_limit(kind: str) -> None:
    """Nesting deeper than 32 levels (the frame itself is level 1) is bad_json, any type."""
    if kind != "nope":
        assert not isinstance(parse(nested(protocol.MAX_DEPTH, kind)), Invalid)
    for depth in (protocol.MAX_DEPTH + 1, 255):
        error = invalid(nested(depth, kind))
        assert (error.code, error.ref) == ("bad_json", None)
    mixed = '{"type": "ping", "t": ' + '{"a": [' * 16 + "]}" * 16 + "}"  # 33 levels
    assert invalid(mixed).code == "bad_json"
    assert invalid("[" * 40 + "]" * 40).code == "bad_json"


def test_parse_brackets_in_strings_are_not_depth() -> None:
    """Brackets inside strings do not count as nesting."""
    text = frame(type="say", room="lobby", text="[{" * 500)
    assert parse(text) == Say("lobby", "[{" * 500, None)
    wide = '{"type": "ping", "t": [' + ", ".join(["[[1]]"] * 50) + "]}"
    assert isinstance(parse(wide), Ping)


def test_pong_frame_null_t() -> None:
    """A pong for a ping without `t` has t null."""
    assert json.loads(pong_frame(None, 5)) == {"type": "pong", "t": None, "ts": 5}


def test_pong_frame_round_trips_parsed_ping() -> None:
    """The t of a parsed ping comes back unchanged in the pong."""
    ping = parse('{"type": "ping", "t": [1.5, "x", {"k": null}]}')
    assert isinstance(ping, Ping)
    assert orjson.loads(pong_frame(ping.t, 1))["t"] == [1.5, "x", {"k": None}]


def decode_close(data: bytes) -> tuple[int, str]:
    """Decode an unmasked server close frame by hand; (code, reason)."""
    assert data[0] == 0x88  # FIN + opcode 8 (close)
    length = data[1]
    assert length & 0x80 == 0  # a server frame is not masked
    assert length <= 125  # control frames carry at most 125 bytes
    payload = data[2:]
    assert len(payload) == length
    code = int.from_bytes(payload[:2], "big")
    return code, payload[2:].decode("utf-8")


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (4000, "heartbeat timeout"),
        (4001, "slow consumer"),
        (4002, "replaced by a newer connection"),
        (1001, "server shutting down"),
        (1000, ""),
    ],
)
def test_close_frame_layout(code: int, reason: str) -> None:
    """A close frame is 0x88, the length, the big-endian code, then the reason."""
    data = close_frame(code, reason)
    assert decode_close(data) == (code, reason)
    assert data[2:4] == bytes((code >> 8, code & 0xFF))


def test_close_frame_long_reason_is_truncated_to_fit() -> None:
    """A long reason is cut so the control frame payload stays within 125 bytes."""
    data = close_frame(4000, "x" * 500)
    code, reason = decode_close(data)
    assert code == 4000
    assert reason == "x" * 123
    assert len(data) == 2 + 125


def test_close_frame_truncation_keeps_reason_valid_utf8() -> None:
    """A long non-ASCII reason is cut on a character boundary, so it stays valid UTF-8."""
    data = close_frame(4000, "é" * 100)  # 200 bytes; byte 123 is mid-character
    code, reason = decode_close(data)
    assert code == 4000
    assert reason == "é" * 61


def test_close_codes_of_the_contract() -> None:
    """Close carries the contract's codes, as plain ints on the wire."""
    assert [int(code) for code in Close] == [
        1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011, 4000, 4001, 4002, 4003
    ]
    assert (Close.REPLACED, Close.UNAUTHORIZED) == (4002, 4003)
    assert orjson.dumps({"code": Close.NORMAL}) == b'{"code":1000}'
    assert f"{Close.SLOW_CONSUMER}" == "4001"


# --- the wire format: every server frame from one builder, bytes unchanged

MESSAGE_ARGS: Final = ("lobby", 7, "Zoë", 'say "hi"\n\u2028 🙂', 1_700_000_000_123, "c-1")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(
            error_frame(ErrorCode.RATE_LIMITED, "slow down", "c1", 0.5),
            b'{"type":"error","code":"rate_limited","message":"slow down","ref":"c1",'
            b'"retry_after":0.5}',
            id="error",
        ),
        pytest.param(pong_frame(1, 2), b'{"type":"pong","t":1,"ts":2}', id="pong"),
        pytest.param(
            protocol.welcome_frame("s1", "ann", ["a"], {"heartbeat": {"interval": 10}}),
            b'{"type":"welcome","version":1,"session":"s1","nick":"ann","rooms":["a"],'
            b'"heartbeat":{"interval":10}}',
            id="welcome",
        ),
        pytest.param(
            protocol.settings_frame({"heartbeat": {"interval": 1}}),
            b'{"type":"settings","heartbeat":{"interval":1}}',
            id="settings",
        ),
        pytest.param(
            protocol.message_frame("r", 1, "n", "t", 5, None),
            b'{"type":"message","room":"r","id":1,"nick":"n","text":"t","ts":5,"cid":null}',
            id="message",
        ),
        pytest.param(
            protocol.joined_frame("r", "e", ["b", "A"], [protocol.message_fields(
                "r", 1, "n", "t", 5, "c")], True),
            b'{"type":"joined","room":"r","epoch":"e","members":["A","b"],"messages":['
            b'{"type":"message","room":"r","id":1,"nick":"n","text":"t","ts":5,"cid":"c"}],'
            b'"complete":true}',
            id="joined",
        ),
        pytest.param(
            protocol.history_frame("r", [], False),
            b'{"type":"history","room":"r","messages":[],"more":false}',
            id="history",
        ),
        pytest.param(protocol.left_frame("r"), b'{"type":"left","room":"r"}', id="left"),
        pytest.param(
            protocol.ack_frame("c", "r", 3, 9),
            b'{"type":"ack","cid":"c","room":"r","id":3,"ts":9}',
            id="ack",
        ),
        pytest.param(
            protocol.typing_frame("r", "n"), b'{"type":"typing","room":"r","nick":"n"}',
            id="typing",
        ),
        pytest.param(
            protocol.presence_frame("r", "leave", "n", "timeout"),
            b'{"type":"presence","room":"r","event":"leave","nick":"n","reason":"timeout"}',
            id="presence",
        ),
    ],
)
def test_frame_bytes(data: bytes, expected: bytes) -> None:
    """Each builder's bytes, key order included, are exactly the contract's."""
    assert data == expected


@pytest.mark.parametrize("cid", ["c-1", None])
def test_redis_frame_parts_splice_to_the_protocol_bytes(cid: str | None) -> None:
    """The Redis store's spliced `message` frame equals protocol.message_frame byte for byte."""
    room, msg_id, nick, text, ts, _ = MESSAGE_ARGS
    head, tail = _frame_parts(room, nick, text, ts, cid)
    spliced = head + str(msg_id).encode() + tail
    assert spliced == protocol.message_frame(room, msg_id, nick, text, ts, cid)
    message = Message(room, msg_id, nick, text, ts, cid)
    assert spliced == message.encoded() == orjson.dumps(message.frame())


def _doc_table(heading: str) -> list[str]:
    """The first column of the table under `## heading` in docs/protocol.md."""
    text = (Path(__file__).parents[1] / "docs" / "protocol.md").read_text(encoding="utf-8")
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    return [row.split("|")[1].strip().strip("`") for row in rows[1:]]  # past the header


def test_protocol_doc_lists_the_error_codes() -> None:
    """docs/protocol.md's error code table is ErrorCode, in the same order."""
    assert _doc_table("Error codes") == [code.value for code in ErrorCode]


def test_protocol_doc_lists_the_close_codes() -> None:
    """docs/protocol.md's close code table is Close, in the same order."""
    assert _doc_table("Close codes") == [str(int(code)) for code in Close]

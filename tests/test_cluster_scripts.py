"""The one frame built outside chat/protocol.py: the presence leave the Lua scripts publish.

`END` and `REAP` end sessions inside Redis, where `protocol.presence_frame` cannot run,
so `_END_SESSION` splices the frame together. That is safe only because nicks, room
names and reasons need no JSON escaping; these tests run the scripts on a real
redis-server and hold the bytes they publish to `presence_frame`'s, byte for byte.
"""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Iterator

import pytest
import redis

from chat import protocol
from chat.cluster import scripts
from chat.cluster.keys import Keys
from tests.helpers import DEADLINE
from tests.redisproc import RedisServer

ROOMS = ["a", "lobby", "room_2-x", "z" * 32]
REASONS = ["closed", "timeout", "left"]

# Every kind of character a nick may hold: each letter and number category (checked
# below), and the three punctuation marks; non-ASCII ones go out as raw UTF-8.
NICKS = [
    "Alice",  # Lu, Ll
    "ᾈbc",  # Lt (stays itself under NFKC)
    "ーx",  # Lm
    "中文",  # Lo
    "x٣9",  # Nd, ASCII and not
    "ᛮx",  # Nl
    "x༳",  # No
    "a_b-c.d",  # the punctuation a nick allows
    "straße.ZOË",
    "N" * protocol.MAX_NICK,
]


def test_the_nicks_cover_every_allowed_character_class() -> None:
    assert all(protocol.normalize_nick(nick) == nick for nick in NICKS)
    classes = {unicodedata.category(ch) for nick in NICKS for ch in nick if ch.isalnum()}
    assert classes >= {"Lu", "Ll", "Lt", "Lm", "Lo", "Nd", "Nl", "No"}
    assert all(protocol.valid_room(room) for room in ROOMS)


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_server.url) as client:
        yield client


def session(client: redis.Redis, keys: Keys, sid: str, nick: str, node: str) -> None:
    """A session held by connection "c1" on `node`, a member of every room of ROOMS."""
    client.hset(keys.session(sid), mapping={
        "nick": nick, "key": protocol.nick_key(nick), "node": node, "conn": "c1",
    })
    client.sadd(keys.session_rooms(sid), *ROOMS)
    client.sadd(keys.node_sessions(node), sid)


def published(pubsub: redis.client.PubSub, count: int) -> list[bytes]:
    """The next `count` messages published to the subscribed channels, in order."""
    got: list[bytes] = []
    deadline = time.monotonic() + DEADLINE
    while len(got) < count and time.monotonic() < deadline:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message is not None:
            got.append(message["data"])
    return got


def expected(sid: str, nick: str, reason: str) -> list[bytes]:
    return [
        b"P " + sid.encode() + b" " + protocol.presence_frame(room, "leave", nick, reason)
        for room in sorted(ROOMS)
    ]


@pytest.mark.parametrize("nick", NICKS)
def test_end_publishes_presence_frame_bytes(client: redis.Redis, nick: str) -> None:
    """END's presence leave equals presence_frame's bytes, for every nick and reason."""
    keys = Keys("t")
    with client.pubsub() as pubsub:
        pubsub.subscribe(*(keys.room(room) for room in ROOMS))
        for n, reason in enumerate(REASONS):
            sid = f"s{n}"
            session(client, keys, sid, nick, "n1")
            ended = client.eval(
                scripts.END, 1, keys.session(sid), sid, "n1", "c1", reason, keys.prefix
            )
            assert ended == 1
            assert published(pubsub, len(ROOMS)) == expected(sid, nick, reason)


def test_reap_publishes_presence_frame_bytes(client: redis.Redis) -> None:
    """REAP ends a dead node's sessions with the same bytes, reason `timeout`."""
    keys = Keys("t")
    client.sadd(keys.nodes, "dead", "me")
    for n, nick in enumerate(NICKS):
        session(client, keys, f"s{n:02}", nick, "dead")  # no lease: the node is dead
    with client.pubsub() as pubsub:
        pubsub.subscribe(*(keys.room(room) for room in ROOMS))
        assert client.eval(scripts.REAP, 1, keys.nodes, keys.prefix, "me") == [b"dead"]
        got = published(pubsub, len(NICKS) * len(ROOMS))
    want = [
        frame for n, nick in enumerate(NICKS) for frame in expected(f"s{n:02}", nick, "timeout")
    ]
    assert sorted(got) == sorted(want)

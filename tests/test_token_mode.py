"""Token mode end to end (contract sections 1 and 6): hello with a JWT, rooms, the token command."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Final

import aiohttp
import jwt
import pytest
from aiohttp.test_utils import TestClient

from chat.app import create_app
from chat.auth import issue
from chat.config import config_from_mapping
from chat.keys import HUB
from tests.helpers import DEADLINE, FAST, Peer, make_config, merge
from tests.serverproc import ServerProcess, run_chat, server_env, write_config

SECRET: Final = "token-mode-test-secret-0123456789abcdef"
ENV_SECRET: Final = "environment-test-secret-0123456789abcdef"
Client = TestClient[Any, Any]


def token(sub: str, secret: str = SECRET, **claims: Any) -> str:
    return jwt.encode({"sub": sub, **claims}, secret, algorithm="HS256")


@pytest.fixture
async def client(aiohttp_client: Any) -> Client:
    result: Client = await aiohttp_client(create_app(make_config({"auth": {"secret": SECRET}})))
    return result


async def open_peer(client: Client) -> Peer:
    return Peer(await client.ws_connect("/ws"))


async def hello(client: Client, **fields: Any) -> tuple[Peer, dict[str, Any]]:
    """A new socket that says hello with `fields`; the socket and the first reply."""
    peer = await open_peer(client)
    await peer.send({"type": "hello", **fields})
    return peer, await peer.recv()


async def assert_unauthorized(client: Client, **fields: Any) -> None:
    peer, reply = await hello(client, **fields)
    assert reply["type"] == "error", reply
    assert reply["code"] == "unauthorized"
    assert reply["ref"] == "hello"
    assert await peer.closed() == 4003


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"nick": "alice"}, id="no-token"),
        pytest.param({"nick": "alice", "token": None}, id="null-token"),
        pytest.param({"nick": "alice", "token": "garbage"}, id="garbage"),
        pytest.param({"nick": "alice", "token": token("alice", "x" * 40)}, id="other-secret"),
        pytest.param({"nick": "alice", "token": token("alice", exp=int(time.time()) - 120)},
                     id="expired"),
        pytest.param({"token": token("alice", exp=int(time.time()) - 120)}, id="expired-no-nick"),
        pytest.param({"nick": "bob", "token": token("alice")}, id="other-nick"),
        pytest.param({"token": token("not a nick")}, id="bad-sub"),
        pytest.param({"token": token("alice", rooms="lobby")}, id="bad-rooms"),
    ],
)
async def test_missing_or_bad_token_unauthorized_4003(client: Client, fields: Any) -> None:
    """Without a valid token for the nick, hello gets `unauthorized` and close 4003."""
    await assert_unauthorized(client, **fields)
    assert not client.app[HUB].cluster.nicks
    await asyncio.wait_for(client.app[HUB].wait_empty(), DEADLINE)


async def test_token_within_leeway_accepted(client: Client) -> None:
    """A token expired less than 30 s ago is still accepted (clock skew)."""
    _, reply = await hello(client, nick="alice", token=token("alice", exp=int(time.time()) - 10))
    assert reply["type"] == "welcome", reply


async def test_nick_omitted_takes_sub(client: Client) -> None:
    """hello without nick gets the token's sub as its nick."""
    _, reply = await hello(client, token=token("Alice"))
    assert reply["type"] == "welcome", reply
    assert reply["nick"] == "Alice"


async def test_nick_compared_as_nicks(client: Client) -> None:
    """hello.nick may differ from sub in case and NFKC form only."""
    _, reply = await hello(client, nick="ALICE", token=token("alice"))
    assert reply["type"] == "welcome", reply
    assert reply["nick"] == "alice"


async def test_token_nick_still_unique(client: Client) -> None:
    """Two valid tokens for the same nick: the second hello gets nick_taken."""
    await hello(client, token=token("alice"))
    peer, reply = await hello(client, token=token("alice"))
    assert reply["type"] == "error" and reply["code"] == "nick_taken", reply
    await peer.send({"type": "ping", "t": 1})
    await peer.next_is("pong", t=1)


async def test_session_takeover_needs_token(client: Client) -> None:
    """In token mode a session id alone does not take a session over."""
    owner, welcome = await hello(client, token=token("alice"))
    await assert_unauthorized(client, nick="alice", session=welcome["session"])
    await owner.send({"type": "ping", "t": 2})
    await owner.next_is("pong", t=2)
    _, again = await hello(client, session=welcome["session"], token=token("alice"))
    assert again["type"] == "welcome" and again["session"] == welcome["session"]
    assert await owner.closed() == 4002


async def test_rooms_claim_limits_joins(client: Client) -> None:
    """A join outside the token's rooms gets forbidden_room; the connection stays open."""
    peer, reply = await hello(client, token=token("alice", rooms=["a", "b"]))
    assert reply["type"] == "welcome"
    await peer.send({"type": "join", "room": "c", "cid": "j1"})
    error = await peer.next_is("error", code="forbidden_room")
    assert error["ref"] == "join"
    await peer.join("a")
    await peer.join("b")
    await peer.send({"type": "join", "room": "lobby"})
    await peer.next_is("error", code="forbidden_room")
    await peer.say("a", "still open")


async def test_star_rooms_allow_all(client: Client) -> None:
    """rooms ["*"] allows every room."""
    peer, reply = await hello(client, token=token("alice", rooms=["*"]))
    assert reply["type"] == "welcome"
    for room in ("a", "lobby", "zz-9"):
        await peer.join(room)


async def test_absent_rooms_allow_all(client: Client) -> None:
    """No rooms claim allows every room."""
    peer, _ = await hello(client, token=token("alice"))
    await peer.join("anything")


async def test_env_secret_wins_over_file(aiohttp_client: Any) -> None:
    """CHAT_AUTH_SECRET replaces auth.secret: only tokens signed with it are accepted."""
    config = config_from_mapping(
        merge(FAST, {"auth": {"secret": SECRET}}), "test", env={"CHAT_AUTH_SECRET": ENV_SECRET}
    )
    assert config.auth.secret == ENV_SECRET
    client: Client = await aiohttp_client(create_app(config))
    await assert_unauthorized(client, token=token("alice", SECRET))
    _, reply = await hello(client, token=token("alice", ENV_SECRET))
    assert reply["type"] == "welcome", reply


async def test_env_secret_alone_turns_token_mode_on(aiohttp_client: Any) -> None:
    """CHAT_AUTH_SECRET without auth.secret in the file still requires tokens."""
    config = config_from_mapping(FAST, "test", env={"CHAT_AUTH_SECRET": ENV_SECRET})
    client: Client = await aiohttp_client(create_app(config))
    await assert_unauthorized(client, nick="alice")


def test_weak_secret_warned_at_start(caplog: pytest.LogCaptureFixture) -> None:
    """A secret shorter than 32 bytes is warned about when the app is created."""
    caplog.set_level(logging.WARNING, logger="chat")
    create_app(make_config({"auth": {"secret": "short"}}))
    assert any("32 bytes" in r.getMessage() for r in caplog.records), caplog.records
    caplog.clear()
    create_app(make_config({"auth": {"secret": SECRET}}))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# ---------------------------------------------------------------------- the token command


def decode(text: str, secret: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(text, secret, algorithms=["HS256"])
    return claims


def test_token_command_signs_with_file_secret(tmp_path: Path) -> None:
    """`token NICK --rooms a,b --ttl 60` prints one token with sub, rooms and exp≈now+60."""
    path = write_config(tmp_path, {"auth": {"secret": SECRET}})
    before = time.time()
    done = run_chat("token", "alice", "--config", str(path), "--rooms", "a,b", "--ttl", "60",
                    cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout
    claims = decode(lines[0], SECRET)
    assert claims["sub"] == "alice"
    assert claims["rooms"] == ["a", "b"]
    assert before + 60 - 2 <= claims["exp"] <= time.time() + 60 + 1


def test_token_command_defaults(tmp_path: Path) -> None:
    """Without --rooms there is no rooms claim; without --ttl the token lasts 86400 s."""
    path = write_config(tmp_path, {"auth": {"secret": SECRET}})
    done = run_chat("token", "alice", "--config", str(path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    claims = decode(done.stdout.strip(), SECRET)
    assert "rooms" not in claims
    assert abs(claims["exp"] - (time.time() + 86400)) < 5


def test_token_command_prefers_env_secret(tmp_path: Path) -> None:
    """With CHAT_AUTH_SECRET set the command signs with it, not with the file's secret."""
    path = write_config(tmp_path, {"auth": {"secret": SECRET}})
    done = run_chat("token", "alice", "--config", str(path), cwd=tmp_path,
                    env=server_env(CHAT_AUTH_SECRET=ENV_SECRET))
    assert done.returncode == 0, done.stderr
    assert decode(done.stdout.strip(), ENV_SECRET)["sub"] == "alice"
    with pytest.raises(jwt.InvalidSignatureError):
        decode(done.stdout.strip(), SECRET)


def test_token_command_finds_file_through_chat_config(tmp_path: Path) -> None:
    """Without --config the command reads the file CHAT_CONFIG names."""
    path = write_config(tmp_path, {"auth": {"secret": SECRET}}, name="elsewhere.yaml")
    done = run_chat("token", "alice", cwd=tmp_path, env=server_env(CHAT_CONFIG=str(path)))
    assert done.returncode == 0, done.stderr
    assert decode(done.stdout.strip(), SECRET)["sub"] == "alice"


def test_token_command_without_secret_exits_2(tmp_path: Path) -> None:
    """No secret anywhere: exit 2 and one line on stderr naming auth.secret."""
    done = run_chat("token", "alice", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "auth.secret" in lines[0]
    assert "Traceback" not in done.stderr


async def test_token_from_command_works_against_live_server(tmp_path: Path) -> None:
    """A token printed by the command opens a session on a server using the same file."""
    path = write_config(tmp_path, merge(FAST, {"auth": {"secret": SECRET}}))
    done = run_chat("token", "alice", "--config", str(path), "--rooms", "lobby", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    printed = done.stdout.strip()
    with ServerProcess("--config", str(path), cwd=tmp_path) as server:
        async with aiohttp.ClientSession() as http:
            peer = Peer(await http.ws_connect(server.ws_url))
            await peer.send({"type": "hello", "token": printed})
            welcome = await peer.next_is("welcome")
            assert welcome["nick"] == "alice"
            await peer.join("lobby")
            await peer.send({"type": "join", "room": "other"})
            await peer.next_is("error", code="forbidden_room")
            await peer.send({"type": "hello", "nick": "alice"})
            await peer.next_is("error", code="bad_request")

            other = Peer(await http.ws_connect(server.ws_url))
            await other.send({"type": "hello", "nick": "bob",
                              "token": issue("bob", "y" * 40, time.time(), 60)})
            await other.next_is("error", code="unauthorized")
            assert await other.closed() == 4003
            await peer.ws.close()

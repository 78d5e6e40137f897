"""Reloading the configuration: the pure plan, and applying it to a running app."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from chat import reload
from chat.app import create_app
from chat.config import Config, ConfigError
from chat.keys import CONFIG, HUB, PROXIES
from chat.reload import plan
from chat.settings import settings_fields
from tests.helpers import Peer, make_config


def test_plan_same_configuration_changes_nothing() -> None:
    """Reloading an unchanged file: nothing needs a restart, no settings frame."""
    config = make_config()
    result = plan(config, make_config())
    assert result == reload.Plan(config, (), False)


def test_plan_reloadable_keys_apply() -> None:
    """heartbeat, cleanup, replay, recover, limits, security, auth and log all apply."""
    old = make_config()
    new = make_config({
        "heartbeat": {"interval": 1, "timeout": 3},
        "cleanup": {"interval": 0.5},
        "history": {"replay": 7, "recover": 9},
        "limits": {"max_connections": 3, "send_buffer": 100},
        "security": {"allowed_origins": ["https://a.example"], "trusted_proxies": ["10.0.0.1"]},
        "auth": {"secret": "s" * 32},
        "log": {"format": "json"},
    })
    result = plan(old, new)
    assert result.config == new
    assert result.needs_restart == ()
    assert result.settings_changed


def test_plan_restart_only_keys_are_named_and_kept() -> None:
    """server.*, history.backend/path/retain and redis.* are listed and keep the old value."""
    old = make_config({"history": {"backend": "sqlite", "path": "a.db"}})
    new = make_config({
        "server": {"port": 9999, "header_timeout": 3, "loop": "asyncio"},
        "history": {"backend": "memory", "path": "b.db", "retain": 5, "replay": 2},
        "redis": {"url": "redis://elsewhere:6379/1", "prefix": "x"},
        "heartbeat": {"interval": 1, "timeout": 3},
    })
    result = plan(old, new)
    assert result.needs_restart == (
        "server.port", "server.header_timeout", "server.loop",
        "history.backend", "history.path", "history.retain",
        "redis.url", "redis.prefix",
    )
    assert result.config.server == old.server
    assert result.config.redis == old.redis
    assert result.config.history == dataclasses.replace(old.history, replay=2)
    assert result.config.heartbeat == new.heartbeat  # the rest of the file applies


@pytest.mark.parametrize(
    ("extra", "changed"),
    [
        ({"heartbeat": {"interval": 0.3, "timeout": 0.9}}, True),
        ({"limits": {"max_text": 10}}, True),
        ({"limits": {"join_rate": {"burst": 3}}}, True),
        ({"limits": {"max_connections": 5}}, False),  # not told to clients
        ({"limits": {"send_buffer": 5000}}, False),
        ({"cleanup": {"interval": 0.2}}, False),
        ({"auth": {"secret": "x" * 32}}, False),
    ],
)
def test_plan_settings_changed_only_for_welcome_fields(
    extra: dict[str, Any], changed: bool
) -> None:
    """A settings frame is due only when welcome's heartbeat or limits would differ."""
    assert plan(make_config(), make_config(extra)).settings_changed is changed


def test_settings_fields_match_the_configuration() -> None:
    """settings_fields says what the contract's welcome says, join_rate included."""
    fields = settings_fields(Config())
    assert fields == {
        "heartbeat": {"interval": 10.0, "timeout": 30.0},
        "limits": {
            "text": 2000, "frame": 16384, "rooms": 20,
            "rate": {"messages": 5, "per": 1.0, "burst": 10},
            "join_rate": {"messages": 5, "per": 1.0, "burst": 40},
        },
    }


async def test_apply_reaches_open_connections(aiohttp_client: Any) -> None:
    """apply swaps the config, retunes buckets and send buffers, and sends settings."""
    app = create_app(make_config({"limits": {"rate": {"messages": 5, "per": 1, "burst": 10}}}))
    client = await aiohttp_client(app)
    hub = app[HUB]
    talker = Peer(await client.ws_connect("/ws"))
    await talker.hello("talker")
    await talker.join("lobby")
    await talker.say("lobby", "hi")  # creates its bucket
    mute = Peer(await client.ws_connect("/ws"))  # never says hello
    await mute.send({"type": "ping"})
    await mute.next_is("pong")
    new = make_config({
        "limits": {"rate": {"messages": 1, "per": 2, "burst": 2}, "send_buffer": 4096},
        "security": {"trusted_proxies": ["10.1.0.0/16"]},
    })
    reload.apply(app, plan(app[CONFIG], new))
    assert hub.config == new and app[CONFIG] is hub.config
    assert [str(n) for n in app[PROXIES]] == ["10.1.0.0/16"]
    (bucket,), _ = hub.rate_buckets()
    assert (bucket.rate, bucket.burst) == (0.5, 2) and bucket.tokens <= 2
    assert {conn._send_buffer for conn in hub.connections} == {4096}
    settings = await talker.expect("settings")
    assert settings == {"type": "settings", **settings_fields(new)}
    assert await mute.quiet(0.3) == []  # nothing before hello


async def test_reload_with_a_bad_file_keeps_the_running_configuration(
    aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A load that fails logs one ERROR with its message and changes nothing."""
    app = create_app(make_config())
    await aiohttp_client(app)
    before = app[CONFIG]

    def broken() -> Config:
        raise ConfigError("config.yaml", "must be > 0, got 0", "heartbeat.interval")

    assert reload.reload(app, broken) is False
    assert app[CONFIG] is before and app[HUB].config is before
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert [r.getMessage().endswith("config.yaml: heartbeat.interval: must be > 0, got 0")
            for r in errors] == [True]


async def test_shorter_cleanup_interval_does_not_wait_out_the_old_sleep(
    aiohttp_client: Any,
) -> None:
    """After a reload from a 60 s to a 0.1 s sweep, a silent peer is reaped within a second."""
    app = create_app(make_config({
        "cleanup": {"interval": 60}, "heartbeat": {"interval": 0.1, "timeout": 0.3}
    }))
    client = await aiohttp_client(app)
    ghost = Peer(await client.ws_connect("/ws", autoping=False))
    await ghost.send({"type": "ping"})
    await ghost.next_is("pong")
    reload.apply(app, plan(app[CONFIG], make_config({
        "cleanup": {"interval": 0.1}, "heartbeat": {"interval": 0.1, "timeout": 0.3}
    })))
    assert await ghost.closed(timeout=2.0) == 4000
    await asyncio.wait_for(app[HUB].wait_empty(), 1.0)

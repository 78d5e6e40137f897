"""Reloading the configuration on SIGHUP (contract section 8).

`plan` decides, purely, what of a new configuration applies and what needs a
restart; `apply` makes a plan take effect on a running app, open connections
included; `reload` reads the file again and does both, logging what happened.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from chat import auth, logs, policy, protocol
from chat.config import Config, ConfigError, RateConfig
from chat.keys import CONFIG, HUB, PROXIES, RECONFIGURED
from chat.ratelimit import TokenBucket
from chat.settings import settings_fields

logger = logging.getLogger(__name__)

# What a running server cannot change: the socket it listens on, the shutdown budget
# and header timeout given to aiohttp at start, the store it opened. A section name
# stands for every key in it.
RESTART_ONLY: Final = ("server", "history.backend", "history.path", "history.retain", "redis")


@dataclass(frozen=True, slots=True)
class Plan:
    config: Config  # the new configuration with every restart-only key kept as it was
    needs_restart: tuple[str, ...]  # restart-only keys whose value changed, as key paths
    settings_changed: bool  # welcome's heartbeat or limits differ: send `settings`


def _leaves(config: Config, path: str) -> Iterable[tuple[str, Any]]:
    """(key path, value) for `path` itself or, for a section, each of its keys."""
    value: Any = config
    for name in path.split("."):
        value = getattr(value, name)
    if dataclasses.is_dataclass(value):
        for item in dataclasses.fields(value):
            yield f"{path}.{item.name}", getattr(value, item.name)
    else:
        yield path, value


def _keep(new: Config, old: Config, path: str) -> Config:
    """`new` with the value at `path` taken from `old`."""
    section, _, name = path.partition(".")
    if not name:
        return dataclasses.replace(new, **{section: getattr(old, section)})
    kept = getattr(getattr(old, section), name)
    part = dataclasses.replace(getattr(new, section), **{name: kept})
    return dataclasses.replace(new, **{section: part})


def plan(old: Config, new: Config) -> Plan:
    """What to apply of `new` over the running `old`; pure."""
    changed: list[str] = []
    config = new
    for path in RESTART_ONLY:
        before = dict(_leaves(old, path))
        changed += [key for key, value in _leaves(new, path) if before[key] != value]
        config = _keep(config, old, path)
    return Plan(config, tuple(changed), settings_fields(old) != settings_fields(config))


def retune(buckets: Iterable[TokenBucket], rate: RateConfig, now: float) -> None:
    """Give rate buckets already handed out the new parameters."""
    for bucket in buckets:
        bucket.retune(rate.messages, rate.per, rate.burst, now)


def apply(app: web.Application, new: Plan) -> None:
    """Make `new` take effect at once, for open connections too."""
    hub = app[HUB]
    old = hub.config
    config = new.config
    # Requests read the configuration when they need it (hub.config, app[CONFIG]),
    # so swapping the objects is the whole change for most keys.
    hub.config = config
    with warnings.catch_warnings():
        # aiohttp freezes the app's state after start-up against accidental changes;
        # the configuration is the one item meant to change while it runs.
        warnings.filterwarnings(
            "ignore", "Changing state of started or joined application", DeprecationWarning
        )
        app[CONFIG] = config
        if config.security.trusted_proxies != old.security.trusted_proxies:
            app[PROXIES] = policy.networks(config.security.trusted_proxies)
    logs.use_format(config.log.format)
    if config.limits != old.limits:
        say_buckets, join_buckets = hub.rate_buckets()
        retune(say_buckets, config.limits.rate, hub.clock())
        retune(join_buckets, config.limits.join_rate, hub.clock())
        for conn in hub.connections:
            conn.set_send_buffer(config.limits.send_buffer)
    if new.settings_changed:
        # One frame per frame ceiling (nearly always one for all): each connection is
        # told the largest message it may really send.
        frames: dict[int, bytes] = {}
        for conn in hub.connections:
            if conn.session is not None:  # nothing before hello
                ceiling = conn.frame_ceiling
                frame = frames.get(ceiling)
                if frame is None:
                    frame = frames[ceiling] = protocol.settings_frame(
                        settings_fields(config, ceiling)
                    )
                conn.send(frame)
    # The cleanup coroutine takes the new intervals now, not after its current sleep.
    app[RECONFIGURED].set()


def reload(app: web.Application, load: Callable[[], Config]) -> bool:
    """Read the configuration again and apply it; False (logged) if it does not load."""
    old = app[HUB].config
    try:
        new = load()
    except ConfigError as err:
        logger.error("configuration not reloaded, keeping the running one: %s", err)
        return False
    found = plan(old, new)
    apply(app, found)  # first, so that what follows is logged in the new log.format
    source = new.source or "defaults"
    for key in found.needs_restart:
        logger.warning("%s: %s: changed, but needs a restart; keeping the running value",
                       source, key)
    secret = found.config.auth.secret
    if secret is not None and secret != old.auth.secret and auth.weak_secret(secret):
        logger.warning("auth.secret is shorter than 32 bytes: tokens are easier to forge")
    logger.info("configuration reloaded from %s", source)
    return True

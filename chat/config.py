"""The configuration: a YAML file read into frozen, typed dataclasses.

Every problem raises `ConfigError`, whose message is one line naming the file and,
where there is one, the key path: ``config.yaml: heartbeat.timout: unknown key``.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

import yaml
from yaml.reader import ReaderError

from chat.history import BACKENDS

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_FILENAME",
    "SECRET_ENV",
    "AuthConfig",
    "CleanupConfig",
    "Config",
    "ConfigError",
    "HeartbeatConfig",
    "HistoryConfig",
    "LimitsConfig",
    "LogConfig",
    "RateConfig",
    "RedisConfig",
    "SecurityConfig",
    "ServerConfig",
    "config_from_mapping",
    "config_loader",
    "load_config",
    "resolve_config_path",
]

CONFIG_ENV: Final = "CHAT_CONFIG"
SECRET_ENV: Final = "CHAT_AUTH_SECRET"
DEFAULT_FILENAME: Final = "config.yaml"
LOG_FORMATS: Final = ("text", "json")
EVENT_LOOPS: Final = ("uvloop", "asyncio")
REDIS_SCHEMES: Final = ("redis", "rediss", "unix")

_REPR_LIMIT: Final = 60


class ConfigError(Exception):
    """A bad configuration; ``str(err)`` is one line naming the source and key path."""

    def __init__(self, source: str, problem: str, key: str | None = None) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        where = f"{source}: {key}" if key is not None else source
        super().__init__(_one_line(f"{where}: {problem}"))


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Where the server listens and how long shutdown may take."""

    host: str = "127.0.0.1"
    port: int = 8080
    shutdown_timeout: float = 5.0
    header_timeout: float = 10.0  # s a client may take to send a request's headers
    loop: str = "uvloop"  # the event loop; asyncio's if uvloop cannot be imported


@dataclass(frozen=True, slots=True)
class HeartbeatConfig:
    """Seconds between client pings, and of silence before a peer counts as dead."""

    interval: float = 10.0
    timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class CleanupConfig:
    """Seconds between sweeps of the cleanup coroutine."""

    interval: float = 5.0


@dataclass(frozen=True, slots=True)
class HistoryConfig:
    """Which history store to use and how much of each room it keeps and replays."""

    backend: str = "sqlite"
    path: str = "chat.db"
    retain: int = 10000
    replay: int = 50
    recover: int = 500  # most messages sent with `joined` on a join with `since`


@dataclass(frozen=True, slots=True)
class RateConfig:
    """Token bucket for `say`: `messages` per `per` seconds, up to `burst` at once."""

    messages: float = 5
    per: float = 1.0
    burst: int = 10


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Sizes and counts one client or the whole server may not exceed."""

    max_text: int = 2000
    max_frame: int = 16384
    max_rooms: int = 20
    rate: RateConfig = field(default_factory=RateConfig)
    join_rate: RateConfig = field(default_factory=lambda: RateConfig(5, 1.0, 40))
    max_connections: int = 10000
    max_connections_per_ip: int = 100
    send_buffer: int = 1048576


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """Origins allowed besides the server's own; proxies whose X-Forwarded-For is believed."""

    allowed_origins: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()  # IP addresses or networks (CIDR)


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """The token secret; None means no token is required."""

    secret: str | None = None


@dataclass(frozen=True, slots=True)
class LogConfig:
    """How log lines are written: `text` for people, `json` for log pipelines."""

    format: str = "text"


@dataclass(frozen=True, slots=True)
class RedisConfig:
    """The Redis that nodes share with `history.backend: redis`."""

    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "chat"  # every key and channel name starts with this
    node_timeout: float = 15.0  # s: a node silent this long counts as dead


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration; `source` is the file it came from (None: defaults)."""

    server: ServerConfig = field(default_factory=ServerConfig)
    heartbeat: HeartbeatConfig = field(default_factory=HeartbeatConfig)
    cleanup: CleanupConfig = field(default_factory=CleanupConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    log: LogConfig = field(default_factory=LogConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    # Two configurations with the same settings are equal wherever they came from.
    source: str | None = field(default=None, compare=False)


def resolve_config_path(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> Path | None:
    """The file to read: `path`, else $CHAT_CONFIG, else ./config.yaml if present, else None."""
    found = _resolve(path, env, cwd)
    return None if found is None else found[0]


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> Config:
    """Read and validate the configuration file found by `resolve_config_path`."""
    if env is None:
        env = os.environ
    return _load(_resolve(path, env, cwd), env)


def config_loader(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> Callable[[], Config]:
    """Find the file now, as `load_config` does; the function returned reads it at each call.

    A reload (SIGHUP) reads the file the server started with, or the built-in
    defaults if it started without one, whatever would be found now; a file gone
    since is an error, not a silent fall back to the defaults.
    """
    found = _resolve(path, env, cwd)

    def load() -> Config:
        return _load(found, os.environ if env is None else env)

    return load


def _load(found: tuple[Path, str] | None, env: Mapping[str, str]) -> Config:
    if found is None:
        return _apply_env(Config(), env)
    file, source = found
    try:
        raw = file.read_bytes()
    except OSError as err:
        raise ConfigError(source, f"cannot read: {err.strerror or err}") from None
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(source, f"invalid YAML: {_yaml_reason(err)}") from None
    except (ValueError, RecursionError) as err:
        # PyYAML lets these through, e.g. for an integer beyond Python's digit limit.
        raise ConfigError(source, f"invalid YAML: {err}") from None
    return config_from_mapping(data, source, env)


def config_from_mapping(
    data: Mapping[str, Any] | None,
    source: str = "<config>",
    env: Mapping[str, str] | None = None,
) -> Config:
    """Validate parsed YAML; `source` names the file in errors and is kept on the result."""
    if env is None:
        env = os.environ
    if data is None:
        return _apply_env(Config(source=source), env)
    if not isinstance(data, Mapping):
        raise ConfigError(source, "top level must be a mapping")
    try:
        config = _build(Config, data, "", _CONFIG_FIELDS)
        _check_together(config)
    except _Invalid as err:
        raise ConfigError(source, err.problem, err.key) from None
    return _apply_env(replace(config, source=source), env)


def _resolve(
    path: str | os.PathLike[str] | None,
    env: Mapping[str, str] | None,
    cwd: str | os.PathLike[str] | None,
) -> tuple[Path, str] | None:
    """The file to open and the name to show for it in errors."""
    if env is None:
        env = os.environ
    base = Path(cwd) if cwd is not None else Path()
    if path is not None:
        return _existing(base / path, str(path), required=True)
    named = env.get(CONFIG_ENV)
    if named:
        return _existing(base / named, named, required=True)
    return _existing(base / DEFAULT_FILENAME, DEFAULT_FILENAME, required=False)


def _existing(file: Path, source: str, *, required: bool) -> tuple[Path, str] | None:
    try:
        file.stat()
    except (FileNotFoundError, NotADirectoryError):
        if required:
            raise ConfigError(source, "file not found") from None
        return None
    except OSError as err:
        raise ConfigError(source, f"cannot read: {err.strerror or err}") from None
    except ValueError as err:  # e.g. an embedded NUL byte
        raise ConfigError(source, f"cannot read: {err}") from None
    return file, source


def _yaml_reason(err: yaml.YAMLError) -> str:
    if isinstance(err, yaml.MarkedYAMLError) and err.problem:
        mark = err.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        return f"{err.problem}{where}"
    if isinstance(err, ReaderError):
        return f"{str(err).splitlines()[0]} (byte {err.position})"
    return str(err)


def _apply_env(config: Config, env: Mapping[str, str]) -> Config:
    secret = env.get(SECRET_ENV)
    if secret:
        return replace(config, auth=AuthConfig(secret=secret))
    return config


def _check_together(config: Config) -> None:
    heartbeat = config.heartbeat
    if heartbeat.timeout <= heartbeat.interval:
        raise _Invalid("heartbeat.timeout", "must be greater than heartbeat.interval")
    # history.replay > history.retain is allowed: at most `retain` messages exist to replay.


# --- field checks: each takes the raw value and its key path, returns the typed value


class _Invalid(Exception):
    def __init__(self, key: str, problem: str) -> None:
        super().__init__(key, problem)
        self.key = key
        self.problem = problem


_Check = Callable[[Any, str], Any]
_T = TypeVar("_T")


def _build(cls: Callable[..., _T], data: Any, key: str, checks: Mapping[str, _Check]) -> _T:
    """`cls` from a mapping of its fields; null means every default."""
    if data is None:
        return cls()
    if not isinstance(data, Mapping):
        raise _Invalid(key, "must be a mapping")
    prefix = f"{key}." if key else ""
    for name in data:
        if name not in checks:
            raise _Invalid(f"{prefix}{name}", "unknown key")
    return cls(**{name: checks[name](value, f"{prefix}{name}") for name, value in data.items()})


def _section(cls: Callable[..., _T], checks: Mapping[str, _Check]) -> _Check:
    def check(value: Any, key: str) -> _T:
        return _build(cls, value, key, checks)

    return check


def _seconds(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(key, f"expected a number of seconds, got {_show(value)}")
    return _positive(value, key)


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(key, f"expected a number, got {_show(value)}")
    _positive(value, key)
    return value


def _positive(value: int | float, key: str) -> float:
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds):
        raise _Invalid(key, f"must be finite, got {_show(value)}")
    if seconds <= 0:
        raise _Invalid(key, f"must be > 0, got {_show(value)}")
    return seconds


def _integer(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(key, f"expected an integer, got {_show(value)}")
    return value


def _at_least(minimum: int) -> _Check:
    def check(value: Any, key: str) -> int:
        number = _integer(value, key)
        if number < minimum:
            raise _Invalid(key, f"must be >= {minimum}, got {_show(number)}")
        return number

    return check


def _port(value: Any, key: str) -> int:
    number = _integer(value, key)
    if not 0 <= number <= 65535:
        raise _Invalid(key, f"must be between 0 and 65535, got {_show(number)}")
    return number


def _text(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise _Invalid(key, f"expected a string, got {_show(value)}")
    if not value.strip():
        raise _Invalid(key, "must not be empty")
    return value


def _backend(value: Any, key: str) -> str:
    if value not in BACKENDS:
        raise _Invalid(key, f"must be one of {', '.join(BACKENDS)}")
    return str(value)


def _log_format(value: Any, key: str) -> str:
    if value not in LOG_FORMATS:
        raise _Invalid(key, f"must be one of {', '.join(LOG_FORMATS)}, got {_show(value)}")
    return str(value)


def _event_loop(value: Any, key: str) -> str:
    if value not in EVENT_LOOPS:
        raise _Invalid(key, f"must be one of {', '.join(EVENT_LOOPS)}, got {_show(value)}")
    return str(value)


def _redis_url(value: Any, key: str) -> str:
    url = _text(value, key)
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a port outside 0..65535
    except ValueError:
        parts = None
    if parts is None or parts.scheme.lower() not in REDIS_SCHEMES or not (
        parts.netloc if parts.scheme.lower() != "unix" else parts.path
    ):
        raise _Invalid(
            key,
            f"expected a redis://, rediss:// or unix:// URL, got {_show(value)}",
        )
    return url


def _prefix(value: Any, key: str) -> str:
    text = _text(value, key)
    if any(c.isspace() or c in "{}" for c in text):
        raise _Invalid(key, f"must not contain white space or braces, got {_show(value)}")
    return text


def _secret(value: Any, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Invalid(key, f"expected a string or null, got {_show(value)}")
    if not value:
        raise _Invalid(key, "must not be empty (use null for no secret)")
    return value


def _origins(value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise _Invalid(key, f"expected a list of origins, got {_show(value)}")
    for index, origin in enumerate(value):
        if not _is_origin(origin):
            raise _Invalid(
                f"{key}[{index}]",
                f"expected an origin like https://example.com, got {_show(origin)}",
            )
    return tuple(value)


def _networks(value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise _Invalid(key, f"expected a list of IP addresses or networks, got {_show(value)}")
    for index, item in enumerate(value):
        try:
            ipaddress.ip_network(item, strict=False)
        except (TypeError, ValueError):
            raise _Invalid(
                f"{key}[{index}]",
                f"expected an IP address or network like 10.0.0.0/8, got {_show(item)}",
            ) from None
    return tuple(value)


def _is_origin(value: Any) -> bool:
    """scheme://host[:port] with scheme http or https, and nothing else."""
    if not isinstance(value, str) or any(c.isspace() for c in value):
        return False
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises ValueError for a port outside 0..65535
    except ValueError:
        return False
    return (
        parts.scheme.lower() in ("http", "https")
        and bool(parts.hostname)
        and "@" not in parts.netloc
        and not parts.netloc.endswith(":")
        and not (parts.path or parts.query or parts.fragment)
        and "?" not in value
        and "#" not in value
    )


def _show(value: Any) -> str:
    """repr of a bad value, cut short so that messages stay one readable line."""
    try:
        text = repr(value)
    except ValueError:  # an int too long to print
        text = f"<{type(value).__name__}>"
    if len(text) > _REPR_LIMIT:
        text = text[: _REPR_LIMIT - 3] + "..."
    return text


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _join_rate(**fields: Any) -> RateConfig:
    """limits.join_rate has defaults of its own (a burst that covers re-joining 20 rooms)."""
    return replace(RateConfig(5, 1.0, 40), **fields)


_RATE_FIELDS: Final[Mapping[str, _Check]] = {
    "messages": _number,
    "per": _seconds,
    "burst": _at_least(1),
}

_CONFIG_FIELDS: Final[Mapping[str, _Check]] = {
    "server": _section(
        ServerConfig,
        {
            "host": _text,
            "port": _port,
            "shutdown_timeout": _seconds,
            "header_timeout": _seconds,
            "loop": _event_loop,
        },
    ),
    "heartbeat": _section(HeartbeatConfig, {"interval": _seconds, "timeout": _seconds}),
    "cleanup": _section(CleanupConfig, {"interval": _seconds}),
    "history": _section(
        HistoryConfig,
        {
            "backend": _backend,
            "path": _text,
            "retain": _at_least(1),
            "replay": _at_least(0),
            "recover": _at_least(0),
        },
    ),
    "limits": _section(
        LimitsConfig,
        {
            "max_text": _at_least(1),
            "max_frame": _at_least(1),
            "max_rooms": _at_least(1),
            "rate": _section(RateConfig, _RATE_FIELDS),
            "join_rate": _section(_join_rate, _RATE_FIELDS),
            "max_connections": _at_least(1),
            "max_connections_per_ip": _at_least(1),
            "send_buffer": _at_least(1),
        },
    ),
    "security": _section(
        SecurityConfig, {"allowed_origins": _origins, "trusted_proxies": _networks}
    ),
    "auth": _section(AuthConfig, {"secret": _secret}),
    "log": _section(LogConfig, {"format": _log_format}),
    "redis": _section(
        RedisConfig, {"url": _redis_url, "prefix": _prefix, "node_timeout": _seconds}
    ),
}

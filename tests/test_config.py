import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from chat.config import (
    AuthConfig,
    Config,
    ConfigError,
    HeartbeatConfig,
    HistoryConfig,
    LimitsConfig,
    RateConfig,
    SecurityConfig,
    ServerConfig,
    config_from_mapping,
    config_loader,
    load_config,
    resolve_config_path,
)

SHIPPED = Path(__file__).parents[1] / "config.yaml"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the developer's own CHAT_* variables out of every test."""
    monkeypatch.delenv("CHAT_CONFIG", raising=False)
    monkeypatch.delenv("CHAT_AUTH_SECRET", raising=False)


def from_mapping(data: Any) -> Config:
    return config_from_mapping(data, "test.yaml", env={})


def error_of(data: Any) -> str:
    with pytest.raises(ConfigError) as info:
        from_mapping(data)
    message = str(info.value)
    assert "\n" not in message
    return message


def write(directory: Path, text: str, name: str = "config.yaml") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


# --- defaults and the shipped file


def test_defaults() -> None:
    """Config() carries the documented defaults."""
    config = Config()
    assert config.server == ServerConfig(host="127.0.0.1", port=8080, shutdown_timeout=5.0)
    assert config.heartbeat == HeartbeatConfig(interval=10.0, timeout=30.0)
    assert config.cleanup.interval == 5.0
    assert config.history == HistoryConfig(
        backend="sqlite", path="chat.db", retain=10000, replay=50
    )
    assert config.limits == LimitsConfig(
        max_text=2000,
        max_frame=16384,
        max_rooms=20,
        rate=RateConfig(messages=5, per=1.0, burst=10),
        max_connections=10000,
        max_connections_per_ip=100,
        send_buffer=1048576,
    )
    assert config.security == SecurityConfig(allowed_origins=())
    assert config.auth == AuthConfig(secret=None)
    assert config.source is None


def test_shipped_config_equals_defaults() -> None:
    """The repository's config.yaml loads to exactly the built-in defaults."""
    config = load_config(SHIPPED, env={})
    assert config == Config()
    assert dataclasses.replace(config, source=None) == Config()
    assert config.source == str(SHIPPED)
    assert isinstance(config.heartbeat.interval, float)
    assert isinstance(config.server.shutdown_timeout, float)


def test_shipped_config_lists_every_key() -> None:
    """The shipped config.yaml names every key, so it documents the whole contract."""
    import yaml

    data = yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))

    def keys(value: Any, prefix: str = "") -> set[str]:
        if dataclasses.is_dataclass(value):
            out: set[str] = set()
            for f in dataclasses.fields(value):
                if f.name != "source":
                    out |= keys(getattr(value, f.name), f"{prefix}{f.name}.")
            return out
        if isinstance(value, dict):
            out = set()
            for name, item in value.items():
                out |= keys(item, f"{prefix}{name}.")
            return out
        return {prefix.rstrip(".")}

    assert keys(data) == keys(Config())


def test_empty_mapping_and_none_give_defaults() -> None:
    """An empty mapping or None (an empty file) means every default."""
    assert from_mapping({}) == Config()
    assert from_mapping(None) == Config()
    assert from_mapping({}).source == "test.yaml"


def test_null_sections_mean_defaults() -> None:
    """A section written with no value (YAML null) takes its defaults."""
    sections = ["server", "heartbeat", "cleanup", "history", "limits", "security", "auth"]
    assert from_mapping(dict.fromkeys(sections)) == Config()
    assert from_mapping({"limits": {"rate": None}}) == Config()


def test_values_are_read() -> None:
    """Given values replace the defaults, seconds stored as float, origins as a tuple."""
    config = from_mapping(
        {
            "server": {"host": "0.0.0.0", "port": 9000, "shutdown_timeout": 2},
            "heartbeat": {"interval": 0.05, "timeout": 0.2},
            "cleanup": {"interval": 0.01},
            "history": {"backend": "sqlite", "path": "x.db", "retain": 5, "replay": 5},
            "limits": {
                "max_text": 10,
                "max_frame": 100,
                "max_rooms": 1,
                "rate": {"messages": 0.5, "per": 2, "burst": 1},
                "max_connections": 2,
                "max_connections_per_ip": 1,
                "send_buffer": 64,
            },
            "security": {"allowed_origins": ["https://example.com", "http://localhost:8080"]},
            "auth": {"secret": "s3cret"},
        }
    )
    assert config.server == ServerConfig("0.0.0.0", 9000, 2.0)
    assert isinstance(config.server.shutdown_timeout, float)
    assert config.heartbeat == HeartbeatConfig(0.05, 0.2)
    assert config.cleanup.interval == 0.01
    assert config.history == HistoryConfig("sqlite", "x.db", 5, 5)
    assert config.limits.rate == RateConfig(0.5, 2.0, 1)
    assert isinstance(config.limits.rate.per, float)
    assert config.limits.send_buffer == 64
    assert config.security.allowed_origins == ("https://example.com", "http://localhost:8080")
    assert config.auth.secret == "s3cret"


def test_port_zero_is_accepted() -> None:
    """Port 0 is valid: it asks for a free port."""
    assert from_mapping({"server": {"port": 0}}).server.port == 0


def test_config_is_frozen() -> None:
    """Assigning to any part of a Config raises."""
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.server = ServerConfig()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.heartbeat.interval = 1.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.limits.rate.burst = 1  # type: ignore[misc]
    hash(config)


# --- unknown keys and shapes


def test_unknown_nested_key_names_file_and_path(tmp_path: Path) -> None:
    """A misspelt key is reported as '<file>: <key.path>: unknown key'."""
    write(tmp_path, "heartbeat:\n  interval: 10\n  timout: 30\n")
    with pytest.raises(ConfigError) as info:
        load_config(env={}, cwd=tmp_path)
    assert str(info.value) == "config.yaml: heartbeat.timout: unknown key"
    assert info.value.source == "config.yaml"
    assert info.value.key == "heartbeat.timout"
    assert info.value.problem == "unknown key"


def test_unknown_key_in_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """./config.yaml is found from the working directory and named as config.yaml."""
    write(tmp_path, "heartbeat:\n  timout: 30\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"^config\.yaml: heartbeat\.timout: unknown key$"):
        load_config(env={})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"heartbeats": {}}, "test.yaml: heartbeats: unknown key"),
        ({"limits": {"rate": {"burts": 3}}}, "test.yaml: limits.rate.burts: unknown key"),
        ({"auth": {"token": "x"}}, "test.yaml: auth.token: unknown key"),
        ({"source": "x"}, "test.yaml: source: unknown key"),
        ({"server": [1, 2]}, "test.yaml: server: must be a mapping"),
        ({"heartbeat": 10}, "test.yaml: heartbeat: must be a mapping"),
        ({"limits": {"rate": 5}}, "test.yaml: limits.rate: must be a mapping"),
        ({"security": "https://example.com"}, "test.yaml: security: must be a mapping"),
    ],
)
def test_unknown_keys_and_non_mappings(data: dict[str, Any], message: str) -> None:
    """Unknown keys at any level and non-mapping sections name their key path."""
    assert error_of(data) == message


@pytest.mark.parametrize("data", [[1, 2], "text", 5])
def test_top_level_must_be_a_mapping(data: Any) -> None:
    """A document that is not a mapping is refused without a key path."""
    assert error_of(data) == "test.yaml: top level must be a mapping"


def test_top_level_list_in_file(tmp_path: Path) -> None:
    """A YAML file whose document is a list is refused as a whole."""
    path = write(tmp_path, "- 1\n- 2\n", "list.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value) == f"{path}: top level must be a mapping"


# --- types and ranges


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"heartbeat": {"interval": "abc"}},
            "heartbeat.interval: expected a number of seconds, got 'abc'",
        ),
        (
            {"heartbeat": {"interval": True}},
            "heartbeat.interval: expected a number of seconds, got True",
        ),
        (
            {"server": {"shutdown_timeout": None}},
            "server.shutdown_timeout: expected a number of seconds, got None",
        ),
        ({"server": {"port": 1.5}}, "server.port: expected an integer, got 1.5"),
        ({"server": {"port": "8080"}}, "server.port: expected an integer, got '8080'"),
        ({"server": {"port": True}}, "server.port: expected an integer, got True"),
        ({"server": {"port": 8080.0}}, "server.port: expected an integer, got 8080.0"),
        ({"history": {"retain": False}}, "history.retain: expected an integer, got False"),
        ({"limits": {"rate": {"burst": 2.5}}}, "limits.rate.burst: expected an integer, got 2.5"),
        ({"limits": {"rate": {"messages": True}}}, "limits.rate.messages: expected a number"),
        ({"limits": {"rate": {"messages": "5"}}}, "limits.rate.messages: expected a number"),
        ({"limits": {"send_buffer": "1MB"}}, "limits.send_buffer: expected an integer"),
        ({"server": {"host": 127}}, "server.host: expected a string, got 127"),
        ({"server": {"host": ""}}, "server.host: must not be empty"),
        ({"history": {"path": None}}, "history.path: expected a string, got None"),
        ({"history": {"path": ""}}, "history.path: must not be empty"),
        (
            {"history": {"backend": "mysql"}},
            "history.backend: must be one of memory, sqlite, redis",
        ),
        ({"history": {"backend": None}}, "history.backend: must be one of memory, sqlite"),
        ({"auth": {"secret": ""}}, "auth.secret: must not be empty"),
        ({"auth": {"secret": 12345}}, "auth.secret: expected a string or null, got 12345"),
        (
            {"security": {"allowed_origins": "https://example.com"}},
            "security.allowed_origins: expected a list of origins",
        ),
        (
            {"security": {"allowed_origins": None}},
            "security.allowed_origins: expected a list of origins, got None",
        ),
    ],
)
def test_wrong_types(data: dict[str, Any], message: str) -> None:
    """A value of the wrong type names the key, what was expected and what was found."""
    assert error_of(data).startswith(f"test.yaml: {message}")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("server.shutdown_timeout", 0),
        ("heartbeat.interval", 0),
        ("heartbeat.interval", -1),
        ("heartbeat.timeout", -0.5),
        ("cleanup.interval", 0.0),
        ("limits.rate.per", 0),
        ("limits.rate.messages", 0),
        ("limits.rate.messages", -2.5),
    ],
)
def test_non_positive_numbers(key: str, value: float) -> None:
    """Intervals, timeouts and rates must be greater than zero."""
    assert error_of(nested(key, value)) == f"test.yaml: {key}: must be > 0, got {value!r}"


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), 10**400])
def test_non_finite_seconds(value: float) -> None:
    """Seconds must be finite numbers."""
    assert "cleanup.interval: must be finite" in error_of({"cleanup": {"interval": value}})


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("server.port", -1, "must be between 0 and 65535, got -1"),
        ("server.port", 65536, "must be between 0 and 65535, got 65536"),
        ("history.retain", 0, "must be >= 1, got 0"),
        ("history.replay", -1, "must be >= 0, got -1"),
        ("limits.max_text", 0, "must be >= 1, got 0"),
        ("limits.max_frame", 0, "must be >= 1, got 0"),
        ("limits.max_rooms", 0, "must be >= 1, got 0"),
        ("limits.max_connections", -5, "must be >= 1, got -5"),
        ("limits.max_connections_per_ip", 0, "must be >= 1, got 0"),
        ("limits.send_buffer", 0, "must be >= 1, got 0"),
        ("limits.rate.burst", 0, "must be >= 1, got 0"),
    ],
)
def test_counts_out_of_range(key: str, value: int, problem: str) -> None:
    """Counts outside their range name the key, the bound and the value."""
    assert error_of(nested(key, value)) == f"test.yaml: {key}: {problem}"


def test_replay_zero_is_accepted() -> None:
    """history.replay may be 0: a fresh join then gets no messages."""
    assert from_mapping({"history": {"replay": 0}}).history.replay == 0


@pytest.mark.parametrize(("interval", "timeout"), [(10, 10), (10, 5), (0.5, 0.25)])
def test_timeout_must_exceed_interval(interval: float, timeout: float) -> None:
    """heartbeat.timeout <= heartbeat.interval is refused."""
    message = error_of({"heartbeat": {"interval": interval, "timeout": timeout}})
    assert message == "test.yaml: heartbeat.timeout: must be greater than heartbeat.interval"


def test_timeout_checked_against_default_interval() -> None:
    """A timeout alone is compared with the default interval."""
    message = error_of({"heartbeat": {"timeout": 5}})
    assert message == "test.yaml: heartbeat.timeout: must be greater than heartbeat.interval"


def test_replay_may_exceed_retain() -> None:
    """history.retain alone, below the default replay, is a valid configuration."""
    config = config_from_mapping({"history": {"retain": 3}}, "test.yaml", {})
    assert (config.history.retain, config.history.replay) == (3, 50)


def test_new_contract_keys_have_their_defaults() -> None:
    """The keys the contract added (recover, join_rate, header_timeout, log, redis)."""
    config = config_from_mapping({}, "test.yaml", {})
    assert config.history.recover == 500
    assert config.server.header_timeout == 10
    rate = config.limits.join_rate
    assert (rate.messages, rate.per, rate.burst) == (5, 1.0, 40)
    assert config.log.format == "text"
    assert config.redis.url == "redis://127.0.0.1:6379/0"
    assert config.redis.prefix == "chat"
    assert config.redis.node_timeout == 15


def test_join_rate_keeps_its_own_defaults() -> None:
    """Setting one field of limits.join_rate keeps the others at join_rate's defaults."""
    config = config_from_mapping({"limits": {"join_rate": {"per": 2}}}, "test.yaml", {})
    rate = config.limits.join_rate
    assert (rate.messages, rate.per, rate.burst) == (5, 2.0, 40)


@pytest.mark.parametrize(
    "url",
    ["http://localhost:6379", "localhost:6379", "", "redis://", "unix://", 5],
)
def test_bad_redis_url_is_named(url: object) -> None:
    """A redis.url that is not a redis://, rediss:// or unix:// URL names redis.url."""
    message = error_of({"redis": {"url": url}})
    assert message.startswith("test.yaml: redis.url: ")


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "rediss://h:6380", "unix:///tmp/redis.sock"]
)
def test_good_redis_urls(url: str) -> None:
    """Each of the three URL schemes is accepted."""
    assert config_from_mapping({"redis": {"url": url}}, "test.yaml", {}).redis.url == url


def test_bad_log_format_is_named() -> None:
    """log.format is text or json."""
    assert error_of({"log": {"format": "xml"}}).startswith("test.yaml: log.format: must be one of")


def test_server_loop_defaults_to_uvloop_and_takes_asyncio() -> None:
    """server.loop is uvloop unless the file says asyncio."""
    assert config_from_mapping({}, "test.yaml", {}).server.loop == "uvloop"
    config = config_from_mapping({"server": {"loop": "asyncio"}}, "test.yaml", {})
    assert config.server.loop == "asyncio"


@pytest.mark.parametrize("value", ["tokio", "", "UVLOOP", None, 1, ["uvloop"]])
def test_bad_server_loop_is_named(value: object) -> None:
    """server.loop is uvloop or asyncio, nothing else."""
    assert error_of({"server": {"loop": value}}).startswith(
        "test.yaml: server.loop: must be one of uvloop, asyncio, got "
    )


def test_long_bad_values_are_cut_short() -> None:
    """The repr of a bad value is truncated so the message stays short."""
    message = error_of({"heartbeat": {"interval": "x" * 500}})
    assert len(message) < 140
    assert message.endswith("...")


def test_multiline_bad_value_stays_one_line() -> None:
    """A bad value with line breaks still gives a one-line message."""
    message = error_of({"server": {"port": "80\n80"}})
    assert message == r"test.yaml: server.port: expected an integer, got '80\n80'"


@pytest.mark.parametrize(
    "origin",
    [
        "https://example.com",
        "http://localhost:8080",
        "http://127.0.0.1",
        "https://[::1]:8443",
        "HTTPS://Example.COM",
    ],
)
def test_good_origins(origin: str) -> None:
    """Origins with scheme http(s), a host and an optional port are kept as written."""
    config = from_mapping({"security": {"allowed_origins": [origin]}})
    assert config.security.allowed_origins == (origin,)


@pytest.mark.parametrize(
    "origin",
    [
        "example.com",
        "ftp://example.com",
        "https://",
        "https://example.com/",
        "https://example.com/chat",
        "https://example.com?x=1",
        "https://example.com#top",
        "https://user@example.com",
        "https://example.com:",
        "https://example.com:99999",
        "https://example.com:http",
        " https://example.com",
        "null",
        "*",
        "",
        42,
        None,
    ],
)
def test_bad_origins(origin: Any) -> None:
    """Anything but scheme://host[:port] is refused, naming the list index."""
    message = error_of({"security": {"allowed_origins": ["https://ok.example", origin]}})
    assert message.startswith(
        "test.yaml: security.allowed_origins[1]: expected an origin like https://example.com, got "
    )


# --- files and resolution


@pytest.mark.parametrize(
    "text",
    [
        "heartbeat: [1\n",
        "a: b: c\n",
        "server:\n  host: x\n port: 1\n",
        "x: !!python/object:os.system 1",
    ],
)
def test_bad_yaml_is_one_line(tmp_path: Path, text: str) -> None:
    """Unparseable YAML gives one line naming the file and 'invalid YAML'."""
    path = write(tmp_path, text, "bad.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert message.startswith(f"{path}: invalid YAML: ")
    assert "\n" not in message


def test_bad_yaml_names_the_line(tmp_path: Path) -> None:
    """A YAML syntax error reports the line it was found on."""
    path = write(tmp_path, "server:\n  host: a: b\n", "bad.yaml")
    with pytest.raises(ConfigError, match=r"invalid YAML: .*line 2"):
        load_config(path, env={})


def test_undecodable_file(tmp_path: Path) -> None:
    """Bytes that are not text are reported as invalid YAML, on one line."""
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"server:\n  host: \x00\xff\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value).startswith(f"{path}: invalid YAML: ")
    assert "\n" not in str(info.value)


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    """An empty or comment-only file means every default."""
    path = write(tmp_path, "# nothing here\n", "empty.yaml")
    config = load_config(path, env={})
    assert config == Config()
    assert config.source == str(path)


def test_missing_explicit_file(tmp_path: Path) -> None:
    """A path given explicitly that does not exist is an error."""
    write(tmp_path, "")  # a config.yaml in cwd must not be used instead
    with pytest.raises(ConfigError) as info:
        load_config("nope.yaml", env={}, cwd=tmp_path)
    assert str(info.value) == "nope.yaml: file not found"


def test_explicit_directory_cannot_be_read(tmp_path: Path) -> None:
    """A path naming a directory is reported as unreadable."""
    with pytest.raises(ConfigError, match=rf"^{tmp_path}: cannot read: "):
        load_config(tmp_path, env={})


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path: Path) -> None:
    """A file without read permission is reported as unreadable."""
    path = write(tmp_path, "server: {}\n", "secret.yaml")
    path.chmod(0)
    with pytest.raises(ConfigError, match=r": cannot read: Permission denied$"):
        load_config(path, env={})


def test_read_error_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An OSError while reading becomes 'cannot read' with its reason, whoever runs the test."""
    path = write(tmp_path, "server: {}\n", "locked.yaml")

    def refuse(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value) == f"{path}: cannot read: Permission denied"


def test_explicit_path_wins(tmp_path: Path) -> None:
    """An explicit path is read in preference to CHAT_CONFIG and ./config.yaml."""
    write(tmp_path, "server: {port: 1}\n")
    write(tmp_path, "server: {port: 2}\n", "env.yaml")
    explicit = write(tmp_path, "server: {port: 3}\n", "explicit.yaml")
    env = {"CHAT_CONFIG": str(tmp_path / "env.yaml")}
    assert load_config(explicit, env=env, cwd=tmp_path).server.port == 3
    assert resolve_config_path(explicit, env=env, cwd=tmp_path) == explicit


def test_chat_config_resolution(tmp_path: Path) -> None:
    """CHAT_CONFIG names the file when no path is given, before ./config.yaml."""
    write(tmp_path, "server: {port: 1}\n")
    named = write(tmp_path, "server: {port: 2}\n", "env.yaml")
    env = {"CHAT_CONFIG": str(named)}
    config = load_config(env=env, cwd=tmp_path)
    assert config.server.port == 2
    assert config.source == str(named)
    assert resolve_config_path(env=env, cwd=tmp_path) == named


def test_chat_config_from_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an env argument the process environment is used."""
    named = write(tmp_path, "server: {port: 7}\n", "env.yaml")
    monkeypatch.setenv("CHAT_CONFIG", str(named))
    assert load_config().server.port == 7


def test_missing_chat_config_file(tmp_path: Path) -> None:
    """A file named by CHAT_CONFIG that does not exist is an error."""
    with pytest.raises(ConfigError) as info:
        load_config(env={"CHAT_CONFIG": "gone.yaml"}, cwd=tmp_path)
    assert str(info.value) == "gone.yaml: file not found"


def test_empty_chat_config_is_ignored(tmp_path: Path) -> None:
    """An empty CHAT_CONFIG counts as unset."""
    write(tmp_path, "server: {port: 4}\n")
    assert load_config(env={"CHAT_CONFIG": ""}, cwd=tmp_path).server.port == 4


def test_cwd_config_resolution(tmp_path: Path) -> None:
    """Without a path or CHAT_CONFIG, <cwd>/config.yaml is read."""
    write(tmp_path, "server: {port: 5}\n")
    config = load_config(env={}, cwd=tmp_path)
    assert config.server.port == 5
    assert config.source == "config.yaml"
    assert resolve_config_path(env={}, cwd=tmp_path) == tmp_path / "config.yaml"


def test_defaults_when_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a path, CHAT_CONFIG or ./config.yaml the built-in defaults apply."""
    assert resolve_config_path(env={}, cwd=tmp_path) is None
    config = load_config(env={}, cwd=tmp_path)
    assert config == Config()
    assert config.source is None
    monkeypatch.chdir(tmp_path)
    assert load_config().source is None


# --- CHAT_AUTH_SECRET


def test_env_secret_overrides_file(tmp_path: Path) -> None:
    """A non-empty CHAT_AUTH_SECRET replaces auth.secret from the file."""
    path = write(tmp_path, "auth: {secret: from-file}\n", "auth.yaml")
    assert load_config(path, env={}).auth.secret == "from-file"
    assert load_config(path, env={"CHAT_AUTH_SECRET": "from-env"}).auth.secret == "from-env"
    assert load_config(path, env={"CHAT_AUTH_SECRET": ""}).auth.secret == "from-file"


def test_env_secret_applies_to_defaults(tmp_path: Path) -> None:
    """CHAT_AUTH_SECRET sets the secret even when no file is read."""
    config = load_config(env={"CHAT_AUTH_SECRET": "s"}, cwd=tmp_path)
    assert config.auth.secret == "s"


def test_env_secret_in_config_from_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    """config_from_mapping honours CHAT_AUTH_SECRET from env, or os.environ by default."""
    data = {"auth": {"secret": "file"}}
    assert config_from_mapping(data, env={"CHAT_AUTH_SECRET": "given"}).auth.secret == "given"
    assert config_from_mapping(data).auth.secret == "file"
    monkeypatch.setenv("CHAT_AUTH_SECRET", "process")
    assert config_from_mapping(data).auth.secret == "process"
    assert config_from_mapping(None).auth.secret == "process"


def test_env_secret_does_not_hide_file_errors() -> None:
    """A bad auth section is still an error when CHAT_AUTH_SECRET is set."""
    with pytest.raises(ConfigError, match=r"auth\.secret: must not be empty"):
        config_from_mapping({"auth": {"secret": ""}}, env={"CHAT_AUTH_SECRET": "x"})


def nested(key: str, value: Any) -> dict[str, Any]:
    """{'a': {'b': value}} from 'a.b'."""
    *parents, last = key.split(".")
    data: dict[str, Any] = {last: value}
    for name in reversed(parents):
        data = {name: data}
    return data


def test_config_loader_reads_the_same_file_again(tmp_path: Path) -> None:
    """config_loader finds the file once; each call reads its current contents."""
    (tmp_path / "config.yaml").write_text("heartbeat: {interval: 1, timeout: 3}\n")
    load = config_loader(env={}, cwd=tmp_path)
    assert load().heartbeat.interval == 1
    (tmp_path / "config.yaml").write_text("heartbeat: {interval: 2, timeout: 6}\n")
    assert load().heartbeat.interval == 2
    (tmp_path / "config.yaml").unlink()
    with pytest.raises(ConfigError, match=r"^config\.yaml: cannot read: "):
        load()


def test_config_loader_started_on_defaults_stays_on_defaults(tmp_path: Path) -> None:
    """Started without a file, a config.yaml that appears later is not read."""
    load = config_loader(env={"CHAT_AUTH_SECRET": "s" * 32}, cwd=tmp_path)
    (tmp_path / "config.yaml").write_text("heartbeat: {interval: 2, timeout: 6}\n")
    config = load()
    assert config.heartbeat == Config().heartbeat
    assert config.auth.secret == "s" * 32  # the environment still wins

"""server.loop and --loop on a real `python -m chat`: uvloop by default, asyncio on request."""

from __future__ import annotations

import asyncio
import signal
from importlib import metadata
from pathlib import Path
from typing import Any, Final

import pytest

from tests.helpers import DEADLINE
from tests.serverproc import ServerProcess, run_chat, server_env, write_config

BASE: Final[dict[str, Any]] = {
    "server": {"shutdown_timeout": 2},
    "history": {"backend": "memory"},
}
EVENT_LOOP: Final = "INFO chat: event loop: "
UVLOOP: Final = f"{EVENT_LOOP}uvloop {metadata.version('uvloop')}"
ASYNCIO: Final = f"{EVENT_LOOP}asyncio"
RESTART: Final = "changed, but needs a restart; keeping the running value"


def with_loop(loop: object) -> dict[str, Any]:
    """BASE, with `server.loop: loop` unless None."""
    if loop is None:
        return BASE
    return {**BASE, "server": {**BASE["server"], "loop": loop}}


def loop_lines(server: ServerProcess) -> list[str]:
    """The `event loop:` lines logged so far (waits for the first)."""
    server.wait_stderr(EVENT_LOOP)
    return [line for line in server.stderr_text().splitlines() if EVENT_LOOP in line]


@pytest.mark.parametrize(
    ("in_file", "flag", "expected"),
    [
        pytest.param(None, None, UVLOOP, id="default"),
        pytest.param("uvloop", None, UVLOOP, id="file-uvloop"),
        pytest.param("asyncio", None, ASYNCIO, id="file-asyncio"),
        pytest.param(None, "asyncio", ASYNCIO, id="flag-asyncio"),
        pytest.param("asyncio", "uvloop", UVLOOP, id="flag-over-file"),
        pytest.param("uvloop", "asyncio", ASYNCIO, id="flag-over-file-asyncio"),
    ],
)
def test_loop_in_use_logged_once_at_start(
    tmp_path: Path, in_file: str | None, flag: str | None, expected: str
) -> None:
    """One INFO line names the loop: server.loop, overridden by --loop; uvloop by default."""
    config = write_config(tmp_path, with_loop(in_file))
    args = ["--config", str(config)] + ([] if flag is None else ["--loop", flag])
    with ServerProcess(*args, cwd=tmp_path) as server:
        lines = loop_lines(server)
        assert server.stop() == 0
    assert len(lines) == 1 and lines[0].endswith(expected), lines
    assert "WARNING" not in server.stderr_text()


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_reload_and_shutdown_signals_on_either_loop(
    tmp_path: Path, loop: str, sig: signal.Signals
) -> None:
    """On both loops SIGHUP reloads and SIGTERM/SIGINT shut down with status 0."""
    config = write_config(tmp_path, BASE)
    with ServerProcess("--config", str(config), "--loop", loop, cwd=tmp_path) as server:
        server.send_signal(signal.SIGHUP)
        await asyncio.to_thread(server.wait_stderr, "configuration reloaded from", DEADLINE)
        server.send_signal(sig)
        assert await server.wait_async() == 0
    stderr = server.stderr_text()
    assert "signal received: shutting down" in stderr
    assert "Traceback" not in stderr and "WARNING" not in stderr, stderr


def test_uvloop_that_cannot_be_imported_warns_and_runs_on_asyncio(tmp_path: Path) -> None:
    """uvloop chosen but not importable (as on PyPy or Windows): one WARNING, then asyncio."""
    broken = tmp_path / "broken"
    (broken / "uvloop").mkdir(parents=True)
    (broken / "uvloop" / "__init__.py").write_text(
        'raise ImportError("no uvloop here")\n', encoding="utf-8"
    )
    config = write_config(tmp_path, BASE)
    env = server_env(PYTHONPATH=str(broken))
    with ServerProcess("--config", str(config), cwd=tmp_path, env=env) as server:
        lines = loop_lines(server)
        assert server.stop() == 0
    assert len(lines) == 1 and lines[0].endswith(ASYNCIO), lines
    warnings = [line for line in server.stderr_text().splitlines() if " WARNING " in line]
    assert len(warnings) == 1, server.stderr_text()
    assert warnings[0].endswith(
        "server.loop is uvloop, but it cannot be imported (no uvloop here); running on asyncio"
    )


@pytest.mark.parametrize("value", ["tokio", "", 3])
def test_bad_server_loop_exits_2_with_one_line(tmp_path: Path, value: object) -> None:
    """A bad server.loop: status 2, one stderr line naming file, key and choices."""
    write_config(tmp_path, with_loop(value))
    result = run_chat("--port", "0", cwd=tmp_path)
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr == (
        f"config.yaml: server.loop: must be one of uvloop, asyncio, got {value!r}\n"
    )


def test_bad_loop_flag_is_a_usage_error() -> None:
    """--loop takes uvloop or asyncio; anything else is argparse's status 2, no traceback."""
    result = run_chat("--port", "0", "--loop", "tokio")
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert "argument --loop: invalid choice: 'tokio'" in result.stderr


@pytest.mark.parametrize(
    ("start", "flag", "reload", "warned"),
    [
        pytest.param("uvloop", None, "asyncio", True, id="uvloop-to-asyncio"),
        pytest.param("asyncio", None, "uvloop", True, id="asyncio-to-uvloop"),
        pytest.param("asyncio", "asyncio", "uvloop", False, id="flag-wins"),
    ],
)
async def test_reloading_server_loop_needs_a_restart(
    tmp_path: Path, start: str, flag: str | None, reload: str, warned: bool
) -> None:
    """A changed server.loop on SIGHUP: one WARNING naming it; the loop stays; the rest applies.

    With --loop on the command line the flag still wins after a reload: no warning.
    """
    config = write_config(tmp_path, with_loop(start))
    args = ["--config", str(config)] + ([] if flag is None else ["--loop", flag])
    running = UVLOOP if (flag or start) == "uvloop" else ASYNCIO
    with ServerProcess(*args, cwd=tmp_path) as server:
        assert loop_lines(server)[0].endswith(running)
        write_config(tmp_path, {**with_loop(reload), "log": {"format": "json"}})
        server.send_signal(signal.SIGHUP)
        # log.format is a reload key: the reload line itself comes as JSON.
        await asyncio.to_thread(server.wait_stderr, '"configuration reloaded from', DEADLINE)
        server.send_signal(signal.SIGTERM)
        assert await server.wait_async() == 0
    stderr = server.stderr_text()
    restart = [line for line in stderr.splitlines() if RESTART in line]
    if warned:
        assert len(restart) == 1, stderr
        assert '"level":"WARNING"' in restart[0]
        assert f"config.yaml: server.loop: {RESTART}" in restart[0]
    else:
        assert restart == [], stderr
    assert len([line for line in stderr.splitlines() if "event loop: " in line]) == 1, stderr
    assert "Traceback" not in stderr

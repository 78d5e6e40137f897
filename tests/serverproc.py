"""Run `python -m chat` as a child process for command-line and browser tests.

`ServerProcess` starts the server on a free port, waits (bounded) for the line
`listening on http://HOST:PORT` and always kills the child on exit. Both pipes are
drained by background threads, so a chatty server never blocks on a full pipe and
its output stays available to the test.
"""

from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final

import pytest
import yaml

STARTUP_TIMEOUT: Final = 10.0  # s for the listening line to appear
EXIT_TIMEOUT: Final = 10.0  # s a signalled server may take to exit, unless told otherwise
LISTENING: Final = re.compile(r"^listening on (http://(\S+):(\d+))$")
SCRUBBED_ENV: Final = ("CHAT_CONFIG", "CHAT_AUTH_SECRET")


def server_env(**extra: str) -> dict[str, str]:
    """os.environ without the chat variables, unbuffered, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def write_config(tmp_path: Path, mapping: Mapping[str, Any], name: str = "config.yaml") -> Path:
    """Write `mapping` as YAML to `tmp_path / name`; the file's path."""
    path = tmp_path / name
    path.write_text(yaml.safe_dump(dict(mapping), sort_keys=False), encoding="utf-8")
    return path


def run_chat(
    *args: str,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = STARTUP_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run `python -m chat ARGS` to completion (for commands that must exit by themselves).

    Without `cwd` it runs in a fresh temporary directory: never in the checkout, where a
    relative `chat.db` would be left behind or collide with a server running there.
    """
    with tempfile.TemporaryDirectory(prefix="chat-test-") as scratch:
        return subprocess.run(
            [sys.executable, "-m", "chat", *args],
            cwd=scratch if cwd is None else cwd,
            env=dict(env) if env is not None else server_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


class ServerProcess:
    """`python -m chat --port 0 ARGS` in a child process, ready once it listens.

    ``port=None`` leaves out `--port` (the file decides). Usable from async tests:
    only startup and `wait` block, and `wait_async` polls instead.
    """

    def __init__(
        self,
        *args: str,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        port: int | None = 0,
        startup_timeout: float = STARTUP_TIMEOUT,
    ) -> None:
        port_args = [] if port is None else ["--port", str(port)]
        self.argv = [sys.executable, "-m", "chat", *port_args, *args]
        # Without `cwd` the child runs in a temporary directory of its own, removed by
        # `close`: a relative `chat.db` must never land in the checkout, nor collide with
        # the lock of a server someone runs there.
        self.cwd = cwd
        self._scratch: tempfile.TemporaryDirectory[str] | None = None
        self.env = dict(env) if env is not None else server_env()
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.host = ""
        self.port = 0
        self._stdout_lines: list[str] = []
        self._stdout_queue: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        self._stderr_changed = threading.Condition()
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Start the child and wait until it prints its listening line."""
        cwd = self.cwd
        if cwd is None:
            if self._scratch is None:
                self._scratch = tempfile.TemporaryDirectory(prefix="chat-test-")
            cwd = self._scratch.name
        self.proc = subprocess.Popen(
            self.argv,
            cwd=cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._drain(self.proc.stdout, self._on_stdout, self._on_stdout_eof, "stdout")
        self._drain(self.proc.stderr, self._on_stderr, lambda: None, "stderr")
        try:
            self._await_listening()
        except BaseException:
            self.close()
            raise

    def _await_listening(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._stdout_queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:  # stdout closed: the child is exiting
                code = self.wait(timeout=EXIT_TIMEOUT)
                pytest.fail(
                    f"server exited with {code} before listening; stderr:\n{self.stderr_text()}"
                )
            match = LISTENING.match(line)
            if match:
                self.url, self.host, port = match.groups()
                self.port = int(port)
                return
        self.kill()
        pytest.fail(
            f"no listening line within {self.startup_timeout}s; stdout: "
            f"{self._stdout_lines!r}; stderr:\n{self.stderr_text()}"
        )

    def close(self) -> None:
        """Kill the child if it still runs, and release its pipes and threads."""
        proc = self.proc
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=EXIT_TIMEOUT)
            for thread in self._threads:
                thread.join(timeout=EXIT_TIMEOUT)
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None

    # ------------------------------------------------------------------ signals and exit

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1) + "/ws"

    def _running(self) -> subprocess.Popen[str]:
        assert self.proc is not None, "server not started"
        return self.proc

    def send_signal(self, sig: int = signal.SIGTERM) -> None:
        self._running().send_signal(sig)

    def wait(self, timeout: float = EXIT_TIMEOUT) -> int:
        """The exit status; fails the test (after killing the child) past `timeout`."""
        proc = self._running()
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=EXIT_TIMEOUT)
            pytest.fail(f"server still running after {timeout}s; stderr:\n{self.stderr_text()}")

    async def wait_async(self, within: float = EXIT_TIMEOUT, poll: float = 0.02) -> int:
        """`wait` for async tests: polls without blocking the event loop."""
        proc = self._running()
        deadline = time.monotonic() + within
        while (code := proc.poll()) is None:
            if time.monotonic() >= deadline:
                return self.wait(timeout=0)
            await asyncio.sleep(poll)
        return code

    def terminate(self, sig: int = signal.SIGTERM, timeout: float = EXIT_TIMEOUT) -> int:
        """Send `sig` and wait for the exit status."""
        self.send_signal(sig)
        return self.wait(timeout)

    def stop(self) -> int:
        """Stop with SIGTERM; the exit status."""
        return self.terminate()

    def kill(self) -> None:
        proc = self._running()
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=EXIT_TIMEOUT)

    # ------------------------------------------------------------------ output

    def stdout_lines(self) -> list[str]:
        """Lines printed to stdout so far, without line ends."""
        return list(self._stdout_lines)

    def stderr_text(self) -> str:
        with self._stderr_changed:
            return "".join(self._stderr)

    def wait_stderr(self, text: str, timeout: float = STARTUP_TIMEOUT, count: int = 1) -> str:
        """Block until `text` appears `count` times on stderr; all of stderr so far.

        Fails past `timeout`.
        """
        deadline = time.monotonic() + timeout
        with self._stderr_changed:
            while (seen := "".join(self._stderr)).count(text) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"{text!r} not on stderr within {timeout}s; stderr:\n{seen}")
                self._stderr_changed.wait(left)
            return seen

    def _drain(self, pipe: IO[str], on_line: Any, on_eof: Any, name: str) -> None:
        def run() -> None:
            for line in pipe:
                on_line(line)
            on_eof()

        thread = threading.Thread(target=run, name=f"chat-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _on_stdout(self, line: str) -> None:
        stripped = line.rstrip("\r\n")
        self._stdout_lines.append(stripped)
        self._stdout_queue.put(stripped)

    def _on_stdout_eof(self) -> None:
        self._stdout_queue.put(None)

    def _on_stderr(self, line: str) -> None:
        with self._stderr_changed:
            self._stderr.append(line)
            self._stderr_changed.notify_all()


def tree_files(root: Path) -> list[Path]:
    """Regular files under `root`, sorted, relative to it."""
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())

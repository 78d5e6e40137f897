"""A real `nginx` in front of chat nodes for the tests: its own port, its own directory.

nginx runs in the foreground as one process (`daemon off; master_process off;`) under
the current user, with its configuration, pid file, logs and temporary files all in a
directory of the test, and listens on a free 127.0.0.1 port. It balances HTTP and
WebSocket over the given nodes the way docs/cluster.md tells operators to. A missing
binary fails the test (CI installs nginx), it is not a reason to skip.

`Deployment` is the whole of docs/cluster.md in a test's directory: a durable
`redis-server`, chat nodes as processes on it, and nginx in front of them.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import aiohttp
import pytest

from tests.helpers import CLEANUP, NODE_TIMEOUT, Peer, merge
from tests.redisproc import RedisServer, free_port
from tests.serverproc import ServerProcess, write_config

START_TIMEOUT: Final = 10.0  # s for nginx to accept connections
WAIT: Final = 10.0  # s: the most any one wait of a client of a Deployment may take
STOP_TIMEOUT: Final = 10.0

# `{...}` are filled in by `render`; nginx's own braces are doubled.
CONF: Final = """\
# Written by tests/nginxproc.py; the same shape as the example in docs/cluster.md.
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
worker_processes 1;

events {{
    worker_connections 1024;
}}

http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;

    # A WebSocket upgrade is passed on as one; any other request closes its upstream
    # connection when done.
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}

    upstream chat {{
{servers}
    }}

    server {{
        listen 127.0.0.1:{port};
{redirect}
        location {prefix} {{
            proxy_pass http://chat{strip};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            # $http_host keeps the port: the node's own origin must be the page's.
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            # A dead node refuses at once or not at all: try the next one quickly.
            proxy_connect_timeout {connect_timeout}ms;
            proxy_next_upstream error timeout;
            # Longer than heartbeat.timeout: only the chat's own heartbeat ends an idle
            # WebSocket, never the proxy.
            proxy_read_timeout {idle_timeout}ms;
            proxy_send_timeout {idle_timeout}ms;
        }}
    }}
}}
"""


def render(
    directory: Path,
    port: int,
    upstreams: Sequence[int],
    *,
    idle_timeout: float = 60,
    connect_timeout: float = 0.5,
    prefix: str = "/",
) -> str:
    """nginx.conf for `port`, balancing over 127.0.0.1:`upstreams`, files in `directory`.

    A `prefix` other than "/" (e.g. "/chat/") serves the app under it as
    docs/client-page.md shows: the prefix stripped on the way in, and the prefix
    without its slash redirected to it.
    """
    assert prefix.startswith("/") and prefix.endswith("/"), prefix
    servers = "\n".join(
        f"        server 127.0.0.1:{upstream} max_fails=1 fail_timeout=2s;"
        for upstream in upstreams
    )
    prefixed = prefix != "/"
    redirect = f"        location = {prefix[:-1]} {{ return 301 {prefix}; }}\n" if prefixed else ""
    return CONF.format(
        dir=directory,
        port=port,
        servers=servers,
        prefix=prefix,
        redirect=redirect,
        strip="/" if prefixed else "",  # proxy_pass with a URI replaces the prefix by it
        idle_timeout=round(idle_timeout * 1000),
        connect_timeout=round(connect_timeout * 1000),
    )


class Nginx:
    """`nginx` on 127.0.0.1:`port` in front of the nodes on `upstreams`, files in `directory`.

    `idle_timeout` (s) is its read and send timeout: keep it above the chat's
    `heartbeat.timeout`.
    """

    def __init__(
        self,
        directory: Path,
        upstreams: Sequence[int],
        *,
        idle_timeout: float = 60,
        port: int | None = None,
        prefix: str = "/",
    ) -> None:
        binary = shutil.which("nginx") or next(
            (path for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(path).exists()),
            None,
        )
        assert binary is not None, "nginx is not installed (apt-get install nginx)"
        self.binary = binary
        self.directory = directory
        self.port = port or free_port()
        self.upstreams = list(upstreams)
        self.idle_timeout = idle_timeout
        self.prefix = prefix
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def config_path(self) -> Path:
        return self.directory / "nginx.conf"

    def __enter__(self) -> Nginx:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def args(self) -> list[str]:
        return [
            self.binary,
            "-p", str(self.directory),
            "-c", str(self.config_path),
            "-e", str(self.directory / "error.log"),  # nginx >= 1.19.5: not /var/log at start
            "-g", "daemon off; master_process off;",
        ]

    def start(self) -> None:
        (self.directory / "tmp").mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            render(
                self.directory, self.port, self.upstreams, idle_timeout=self.idle_timeout,
                prefix=self.prefix,
            ),
            encoding="utf-8",
        )
        check = subprocess.run(
            [*self.args()[:-2], "-t", "-q"], capture_output=True, text=True, check=False
        )
        assert check.returncode == 0, f"nginx -t failed:\n{check.stderr}"
        self.process = subprocess.Popen(
            self.args(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"nginx did not start on port {self.port}:\n{self.error_log()}"
                )
            time.sleep(0.02)

    def error_log(self) -> str:
        path = self.directory / "error.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def access_log(self) -> str:
        path = self.directory / "access.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def stop(self) -> None:
        """SIGQUIT would wait for open WebSockets to end: a test's nginx is killed."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)  # harmless if it was not stopped
            process.kill()
        process.wait(STOP_TIMEOUT)


# The timings of the tests' deployments: a dead node is noticed within a couple of
# seconds, and a dead client within two.
CLUSTER_TIMINGS: Final[Mapping[str, Any]] = {
    "redis": {"node_timeout": NODE_TIMEOUT},
    "cleanup": {"interval": CLEANUP},
    "heartbeat": {"interval": 0.5, "timeout": 2},
    "server": {"shutdown_timeout": 2},
}


class Deployment:
    """What an operator runs: a durable Redis, `nodes` chat processes on it, nginx in front.

    Each node is `python -m chat --config node<i>/config.yaml` started in its own
    directory under `directory`; `config` is merged over the cluster settings below.
    Stopped in reverse order: nginx, the nodes, Redis.
    """

    def __init__(
        self, directory: Path, nodes: int = 2, config: Mapping[str, Any] | None = None
    ) -> None:
        self.directory = directory
        self.count = nodes
        self.extra = dict(config or {})
        self.redis = RedisServer(directory / "redis", durable=True)
        self.nodes: list[ServerProcess] = []
        self.nginx: Nginx | None = None

    def node_config(self) -> dict[str, Any]:
        base: dict[str, Any] = {
            "history": {"backend": "redis"},
            "redis": {"url": self.redis.url},
            "security": {"trusted_proxies": ["127.0.0.1"]},
        }
        return merge(base, self.extra)

    @property
    def proxy(self) -> Nginx:
        assert self.nginx is not None, "not started"
        return self.nginx

    def __enter__(self) -> Deployment:
        try:
            self.redis.start()
            for index in range(1, self.count + 1):
                cwd = self.directory / f"node{index}"
                cwd.mkdir(parents=True, exist_ok=True)
                config = write_config(cwd, self.node_config())
                node = ServerProcess("--config", str(config), cwd=cwd)
                self.nodes.append(node)
                node.start()
            idle = 4 * float(self.node_config().get("heartbeat", {}).get("timeout", 30))
            self.nginx = Nginx(
                self.directory / "nginx", [node.port for node in self.nodes], idle_timeout=idle
            )
            self.nginx.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()
        for node in self.nodes:
            node.close()
        self.redis.kill()

    async def connections(self, http: aiohttp.ClientSession) -> list[int]:
        """Each node's `chat_connections` gauge, read from the node itself (-1: not running)."""
        counts = []
        for node in self.nodes:
            if node.proc is None or node.proc.poll() is not None:
                counts.append(-1)
                continue
            async with http.get(node.url + "/metrics") as response:
                text = await response.text()
            match = re.search(r"^chat_connections (\S+)$", text, re.MULTILINE)
            assert match is not None, "chat_connections is missing from /metrics"
            counts.append(int(float(match.group(1))))
        return counts


# ---------------------------------------------------------------- clients of a Deployment


class Seen:
    """Frames or events arriving in the background, and bounded waits on them."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()

    async def add(self, item: dict[str, Any]) -> None:
        async with self._changed:
            self.items.append(item)
            self._changed.notify_all()

    def of(self, kind: str, **fields: Any) -> list[dict[str, Any]]:
        return [
            item for item in self.items
            if item["type"] == kind and all(item.get(k) == v for k, v in fields.items())
        ]

    async def wait(self, kind: str, timeout: float = WAIT, **fields: Any) -> dict[str, Any]:
        """The first item of `kind` with `fields`, waiting for it at most `timeout`."""
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: self.of(kind, **fields))
        except TimeoutError:
            pytest.fail(f"no {kind} {fields} within {timeout}s; seen: {self.items}")
        return self.of(kind, **fields)[0]


class Reader(Seen):
    """Every frame a Peer receives, read in the background."""

    def __init__(self, peer: Peer) -> None:
        super().__init__()
        self.peer = peer
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while not self.peer.ws.closed:
            try:
                await self.add(await self.peer.recv(timeout=3600))
            except AssertionError:
                return  # not a text frame: the connection is closing

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.peer.ws.close()


async def poll(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Ask `check` (an HTTP probe) every 10 ms until it says yes; fail after WAIT."""
    try:
        async with asyncio.timeout(WAIT):
            while True:
                if await check():
                    return
                await asyncio.sleep(0.01)
    except TimeoutError:
        pytest.fail(f"not within {WAIT}s: {what}")


async def landed(deployment: Deployment, http: aiohttp.ClientSession, before: list[int]) -> int:
    """The index of the node that gained a connection since `before`."""
    gained: list[int] = []

    async def one_gained() -> bool:
        now = await deployment.connections(http)
        gained[:] = [i for i, (b, n) in enumerate(zip(before, now, strict=True)) if n > b]
        return len(gained) == 1

    await poll(one_gained, "a node with one more connection")
    return gained[0]


async def open_on(
    deployment: Deployment, http: aiohttp.ClientSession, node: int, nick: str
) -> Reader:
    """A Peer that landed on node `node` through nginx and said hello as `nick`."""
    for _ in range(10):
        before = await deployment.connections(http)
        peer = Peer(await http.ws_connect(deployment.proxy.ws_url, autoping=True))
        if await landed(deployment, http, before) == node:
            await peer.hello(nick)
            return Reader(peer)
        await peer.ws.close()

        async def released(before: list[int] = before) -> bool:
            return await deployment.connections(http) == before

        await poll(released, "the connection on the wrong node released")
    pytest.fail(f"nginx never sent a connection to node {node}")

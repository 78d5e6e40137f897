"""What the HTTP server itself bounds: slow request headers, open files, accept errors.

The application (`app.py`) knows nothing of sockets; these settings belong to the
process that serves it, so `__main__` applies them, and tests pass `handler_options`
to their test server.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import gc
import logging
import resource
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from chat.config import Config

logger = logging.getLogger(__name__)

# asyncio's message when accept() fails for want of file descriptors or memory. It then
# stops accepting for a second and tries again, logging a traceback each time.
ACCEPT_OUT_OF_RESOURCES: Final = "socket.accept() out of system resource"
ACCEPT_LOG_EVERY: Final = 30.0  # s between two log lines about failing accepts
ACCEPT_RETRY: Final = 1.0  # s without accepting after accept() ran out of resources
# accept() errors that mean "out of descriptors or memory", as asyncio counts them.
_OUT_OF_RESOURCES: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_NR_OPEN: Final = Path("/proc/sys/fs/nr_open")  # Linux: the most a process may open


def handler_options(config: Config) -> dict[str, Any]:
    """Keyword arguments for aiohttp's request handlers (`AppRunner`, test servers).

    server.header_timeout is aiohttp's keep-alive timeout: since aiohttp 3.14.4 the
    handler arms it when a connection opens and again after each response, and when it
    fires closes the connection if no request's headers have been completed since
    (however slowly their bytes trickle in). A request being handled, an open WebSocket
    included, is never cut by it. That is the contract's header timeout, and an idle
    keep-alive connection goes after the same time, as the contract allows.
    """
    return {"keepalive_timeout": config.server.header_timeout}


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (or the system's most); the new soft."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        # An unlimited hard limit still cannot be a soft limit past fs.nr_open.
        try:
            target = int(_NR_OPEN.read_text())
        except (OSError, ValueError):
            target = soft
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as err:
            logger.warning("cannot raise the open-file limit from %d to %d: %s",
                           soft, target, err)
            target = soft
    else:
        target = soft
    logger.info("open-file limit: %d (hard limit %s)", target,
                "unlimited" if hard == resource.RLIM_INFINITY else hard)
    return target


def log_due(last: float | None, now: float, every: float) -> bool:
    """Whether a throttled log line may be written now, the previous one at `last`."""
    return last is None or now - last >= every


class AcceptErrorLog:
    """An event-loop exception handler that turns asyncio's traceback per failed accept
    into one WARNING line at most every `every` seconds; other errors go on as before."""

    def __init__(
        self,
        previous: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None,
        every: float = ACCEPT_LOG_EVERY,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._previous = previous
        self._every = every
        self._clock = clock
        self._last: float | None = None
        self._since_last = 0  # failures not logged since the last line

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != ACCEPT_OUT_OF_RESOURCES:
            if self._previous is not None:
                self._previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        self._since_last += 1
        now = self._clock() if self._clock is not None else loop.time()
        if not log_due(self._last, now, self._every):
            return
        logger.warning(
            "cannot accept connections: %s (%d time(s) since the last report; "
            "asyncio retries every second)", context.get("exception"), self._since_last,
        )
        self._last = now
        self._since_last = 0


# Young collections every this many net container allocations (CPython's default: 700),
# the middle generation every 20 of those, and the oldest every 100 of the middle's.
GC_THRESHOLDS: Final = (10_000, 20, 100)


def tune_gc() -> None:
    """Set the cyclic garbage collector for a server; once, after start-up, before serving.

    CPython's defaults suit short programs. A server holds hundreds of thousands of
    long-lived objects (every open connection has dozens), and during a connection
    storm it collected every 700 allocations and often walked everything it held:
    about a tenth of the CPU of accepting connections, and pauses of 0.15-0.3 s with
    10,000 connections open. What start-up made is never garbage: `freeze` moves it
    out of the collector's sight. Nearly everything else is freed by reference
    counting, so collecting less often only lets the rare cycle live a little longer.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


# glibc's mallopt parameters (malloc.h) and the values the server fixes them at.
_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3
MMAP_THRESHOLD: Final = 1 << 20  # bytes: smaller blocks come from the heap
TRIM_THRESHOLD: Final = 4 << 20  # bytes: free space kept at the heap's top


def tune_malloc() -> bool:
    """Fix glibc malloc's thresholds; once, at start. False where there is no glibc.

    asyncio reads a socket into a new 256 KiB buffer and then shrinks it to what
    arrived. Left to itself, glibc moves the size above which it maps a block and the
    free space at the top of the heap it hands back as the process runs, and depending
    on the heap's layout at start each such read either grew and trimmed the heap top
    or mapped and unmapped its buffer: system calls and fresh zeroed pages per read.
    Measured with 2000 idle connections pinging (asyncio loop): 70-80 us of CPU per
    ping against 45-50 us, decided by something as unrelated as which modules were
    imported at start. Fixed thresholds keep those buffers in the heap whatever its
    layout, for at most TRIM_THRESHOLD of free memory kept. uvloop reads into a buffer
    of its own and is not affected.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl, macOS): nothing to tune
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    # Setting the mmap threshold also turns off glibc's moving of both thresholds.
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


def prepare_process(loop: asyncio.AbstractEventLoop) -> None:
    """Raise the open-file limit and quiet failing accepts; once, before serving."""
    raise_open_file_limit()
    loop.set_exception_handler(AcceptErrorLog(loop.get_exception_handler()))


class AcceptSite(web.BaseSite):
    """A TCP site that accepts connections as asyncio's own loop does, on any loop.

    For uvloop. Its listener (libuv's) meets accept() failing for want of file
    descriptors by accepting and at once closing every pending connection, and
    logs nothing: a health check arriving then is dropped. This site instead does
    what asyncio does: it stops accepting for `ACCEPT_RETRY` seconds, leaving new
    connections in the kernel's listen backlog, and reports the failure to the
    loop's exception handler with asyncio's message (see `AcceptErrorLog`).
    Accepted sockets are handed to the loop with `connect_accepted_socket`.
    """

    __slots__ = ("_host", "_port")

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, *, backlog: int = 128
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        sockets = await _listening_sockets(loop, self._host, self._port, self._backlog)
        self._server = _Listener(loop, server, sockets, self._backlog)


async def _listening_sockets(
    loop: asyncio.AbstractEventLoop, host: str, port: int, backlog: int
) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for every address of `host`, as
    `loop.create_server` makes them (SO_REUSEADDR; IPv6 sockets IPv6 only)."""
    infos = await loop.getaddrinfo(host, port, family=socket.AF_UNSPEC,
                                   type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class _Listener(asyncio.AbstractServer):
    """The accept loop of `AcceptSite`: what aiohttp's runner sees as the site's server."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        factory: Callable[[], asyncio.Protocol],
        sockets: list[socket.socket],
        backlog: int,
    ) -> None:
        self._loop = loop
        self._factory = factory
        self.sockets = sockets
        self._backlog = backlog
        self._resume: dict[int, asyncio.TimerHandle] = {}
        self._pending: set[asyncio.Task[Any]] = set()
        self._serving = True
        for sock in sockets:
            loop.add_reader(sock.fileno(), self._accept, sock)

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(self._backlog):
            try:
                conn, _ = sock.accept()
                conn.setblocking(False)
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    raise
                self._loop.call_exception_handler(
                    {"message": ACCEPT_OUT_OF_RESOURCES, "exception": exc, "socket": sock}
                )
                self._loop.remove_reader(sock.fileno())
                self._resume[sock.fileno()] = self._loop.call_later(
                    ACCEPT_RETRY, self._start_reading, sock
                )
                return
            task = self._loop.create_task(self._loop.connect_accepted_socket(self._factory, conn))
            self._pending.add(task)
            task.add_done_callback(self._connected)

    def _start_reading(self, sock: socket.socket) -> None:
        self._resume.pop(sock.fileno(), None)
        if self._serving:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def _connected(self, task: asyncio.Task[Any]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # The peer went away before its transport was made: nothing to serve.
            logger.debug("accepted connection lost at once: %r", exc)

    def close(self) -> None:
        if not self._serving:
            return
        self._serving = False
        for handle in self._resume.values():
            handle.cancel()
        self._resume.clear()
        for sock in self.sockets:
            self._loop.remove_reader(sock.fileno())
            sock.close()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        return None  # serving from the start

    async def serve_forever(self) -> None:
        raise NotImplementedError("AcceptSite serves until the runner is cleaned up")

    async def wait_closed(self) -> None:
        return None

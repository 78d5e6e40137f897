"""What the HTTP server itself bounds: slow request headers, open files, accept errors.

The application (`app.py`) knows nothing of sockets; these settings belong to the
process that serves it, so `__main__` applies them, and tests pass `handler_options`
to their test server.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from chat.config import Config

logger = logging.getLogger(__name__)

# asyncio's message when accept() fails for want of file descriptors or memory. It then
# stops accepting for a second and tries again, logging a traceback each time.
ACCEPT_OUT_OF_RESOURCES: Final = "socket.accept() out of system resource"
ACCEPT_LOG_EVERY: Final = 30.0  # s between two log lines about failing accepts
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


def prepare_process(loop: asyncio.AbstractEventLoop) -> None:
    """Raise the open-file limit and quiet failing accepts; once, before serving."""
    raise_open_file_limit()
    loop.set_exception_handler(AcceptErrorLog(loop.get_exception_handler()))

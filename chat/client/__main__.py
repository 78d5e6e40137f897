"""Terminal front end: `python -m chat.client --url WS_URL --nick NICK --room ROOM`.

Prints the room's messages as `[HH:MM:SS] nick: text`, presence and connection status
as `* ...` lines and errors as `! ...` lines, one line per event; sends each line read
from standard input. End of input waits (bounded) for the acks of what was sent, then
exits 0. A connection that keeps failing for the same reason is reported once, not at
every attempt; log records stay off the terminal unless `--verbose` (or `--log-level`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import re
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Sequence
from typing import Final, TypeVar
from urllib.parse import urlsplit

from chat.client import ChatClient, ChatError, Event
from chat.protocol import Close, ErrorCode

ACK_WAIT: Final = 10.0  # s to wait at end of input for says still unacknowledged
EXIT_CLOSED: Final = 1  # the server closed the session for good

T = TypeVar("T")


def _positive(text: str) -> float:
    """A positive number of seconds (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0: {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m chat.client", description="Chat in one room from the terminal."
    )
    parser.add_argument("--url", default="ws://127.0.0.1:8080/ws", help="WebSocket URL "
                        "(default ws://127.0.0.1:8080/ws)")
    parser.add_argument("--nick", required=True, help="your nick")
    parser.add_argument("--room", default="lobby", help="room to join (default lobby)")
    parser.add_argument("--token", help="token for a server in token mode")
    parser.add_argument("--max-backoff", type=_positive, default=30.0, metavar="SECONDS",
                        help="longest wait between reconnect attempts (default 30)")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="log what the client does (INFO records) on standard error")
    # Without --verbose only ERROR records (a bug) reach the terminal: every warning the
    # client logs (server not responding, a refused connection) is told as a `*` line
    # already, and a log line in the middle of the conversation is noise.
    parser.add_argument("--log-level", default=None,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper,
                        help="logging threshold on standard error "
                             "(default ERROR, INFO with --verbose)")
    return parser


# aiohttp's words for a failed connect: "Cannot connect to host H:P ssl:default [why]".
_OS_REASON: Final = re.compile(r"\[(?P<why>[^\]]*)\]\s*$")
_HTTP_STATUS: Final = re.compile(r"^(?P<status>\d{3}), message=")


def connect_failure(reason: str, url: str) -> str:
    """The clear words for the client's `cannot connect: ...` reason (aiohttp's text)."""
    detail = reason.removeprefix("cannot connect:").strip()
    where = urlsplit(url).netloc or url
    if not detail or detail == "TimeoutError":
        return f"no answer from {where} (timed out)"
    if status := _HTTP_STATUS.match(detail):
        return (f"{where} answered HTTP {status['status']} instead of a WebSocket upgrade "
                "(check --url)")
    if why := _OS_REASON.search(detail):
        text = why["why"]
        if text.startswith("Connect call failed") or "refused" in text.lower():
            return f"{where} refused the connection (is the server running?)"
        if "not known" in text or "resolution" in text or "nodename" in text:
            return f"unknown host {urlsplit(url).hostname or where}"
        return f"cannot reach {where}: {text[:1].lower()}{text[1:]}"
    return f"cannot reach {where}: {detail}"


NOT_RESPONDING: Final = "the server is not responding"

# The client's own reason for a connection its watchdog ended (chat.client `_watch`):
# the `not_responding` status before it has said so already, in the same words.
_WATCHDOG_REASON: Final = "server not responding"


def _end_reason(reason: str, code: object, url: str) -> str:
    """Why a connection ended, in words."""
    if reason.startswith("cannot connect"):
        return connect_failure(reason, url)
    if reason == _WATCHDOG_REASON:
        return NOT_RESPONDING
    if code == Close.GOING_AWAY:
        return "the server is restarting"
    if code == Close.HEARTBEAT_TIMEOUT:
        return "the server timed the connection out"
    if code == Close.SLOW_CONSUMER:
        return "the server dropped a connection that read too slowly"
    return reason


_HELLO_REFUSED: Final = re.compile(r"^hello refused: (?P<code>[a-z_]+): (?P<message>.*)$")
_HELLO_ADVICE: Final[dict[str, str]] = {
    ErrorCode.NICK_TAKEN: "choose another with --nick",
    ErrorCode.NICK_INVALID: "use 1 to 32 letters, digits, '_', '-' or '.'",
    ErrorCode.UNAUTHORIZED: "check --token",
}


def refusal(code: str, message: str) -> str:
    """The one line for a sign-in the server refused for good."""
    advice = _HELLO_ADVICE.get(code)
    return f"! {message}" + (f": {advice}" if advice else "")


class Printer:
    """Turns the client's events into terminal lines, one per event that matters.

    It remembers what it last said about the connection, so that a reconnect loop
    failing the same way (the server down for minutes) is one line, not one per
    attempt, and the next line is the one that says it is back. The same holds for a
    server that cannot reach its store: said once, again only after it recovered (an
    ack) or the connection was replaced.
    """

    def __init__(self, room: str, url: str) -> None:
        self.room = room
        self.url = url
        self.trouble: str | None = None  # what was last said about a broken connection
        self.unavailable = False  # "server unavailable" said, and no ack since

    def acked(self) -> None:
        """A say was stored: the store is reachable again."""
        self.unavailable = False

    def line(self, event: Event) -> str | None:
        """The line printed for an event, or None when it is not shown."""
        if event.get("type") != "status":
            return render(event, self.room)
        state = event.get("state")
        if state == "connected":
            self.trouble = None
            self.unavailable = False
            how = "session resumed" if event.get("resumed") else "new session"
            return f"* connected as {event.get('nick')} ({how})"
        if state == "unavailable":
            if self.unavailable:
                return None  # the same trouble, retried: said already
            self.unavailable = True
            return f"* server unavailable, retrying in {event.get('retry_after', 0):g}s"
        if state == "not_responding":
            self.trouble = NOT_RESPONDING
            return f"* {self.trouble}; reconnecting"
        if state == "reconnecting":
            self.unavailable = False
            why = _end_reason(str(event.get("reason", "")), event.get("code"), self.url)
            if self.trouble is not None and (why == self.trouble or why == "connection lost"):
                return None  # said already; the next line is the one that says it is back
            self.trouble = why
            return f"* {why}; reconnecting"
        if state == "closed":
            # A refused hello ends the run with the one line main() prints for it.
            reason = str(event.get("reason", ""))
            if _HELLO_REFUSED.match(reason):
                return None
            return f"* closed: {reason}"
        return render(event, self.room)


def render(event: Event, room: str) -> str | None:
    """The line printed for an event, or None when it is not shown."""
    kind = event.get("type")
    if kind == "message" and event.get("room") == room:
        # Read with care: a message off the contract must not end the terminal.
        ts = event.get("ts")
        stamp = ts / 1000 if isinstance(ts, int | float) and not isinstance(ts, bool) else None
        clock = time.strftime("%H:%M:%S", time.localtime(stamp))
        return f"[{clock}] {event.get('nick', '?')}: {event.get('text', '')}"
    if kind == "presence" and event.get("room") == room:
        if event.get("event") == "join":
            return f"* {event['nick']} joined"
        return f"* {event['nick']} left ({event.get('reason', 'left')})"
    if kind == "joined" and event.get("room") == room:
        members = ", ".join(event.get("members", ()))
        gap = "" if event.get("complete", True) else " (some messages were missed)"
        return f"* in #{room}: {members}{gap}"
    if kind == "reset" and event.get("room") == room:
        return f"* the history of #{room} started over"
    if kind == "error":
        return f"! {event.get('code')}: {event.get('message')}"
    if kind == "status":
        state = event.get("state")
        if state == "connected":
            how = "session resumed" if event.get("resumed") else "new session"
            return f"* connected as {event.get('nick')} ({how})"
        if state == "not_responding":
            return "* the server is not responding"
        if state == "unavailable":
            return f"* server unavailable, retrying in {event.get('retry_after', 0):g}s"
        if state == "reconnecting":
            return f"* reconnecting in {event.get('delay', 0):.1f}s ({event.get('reason')})"
        if state == "closed":
            return f"* closed: {event.get('reason')}"
    return None


def _out(line: str) -> None:
    print(line, flush=True)


async def _show(client: ChatClient, printer: Printer) -> None:
    async for event in client.events():
        line = printer.line(event)
        if line is not None:
            _out(line)


def _read_stdin(loop: asyncio.AbstractEventLoop, lines: asyncio.Queue[str | None]) -> None:
    """Feed stdin lines to the loop from a daemon thread (works for ttys, pipes and files).

    A daemon thread: a read blocked on a terminal never holds up the exit.
    """

    def put(item: str | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: we are exiting
            loop.call_soon_threadsafe(lines.put_nowait, item)

    for line in sys.stdin:
        put(line)
    put(None)


async def _say(client: ChatClient, printer: Printer, room: str, text: str) -> None:
    try:
        await client.say(room, text)
    except ChatError as err:
        _out(f"! not sent: {err}")
    else:
        printer.acked()


async def _unless(stop: asyncio.Event, work: Awaitable[T]) -> T | None:
    """The result of `work`, or None (`work` cancelled) once `stop` is set."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return None
    return task.result()


async def run(args: argparse.Namespace) -> int:
    """Chat until end of input (0), a signal (0) or the server ending the session (1)."""
    loop = asyncio.get_running_loop()
    client = ChatClient(args.url, args.nick, token=args.token, backoff_cap=args.max_backoff)
    # Set by a signal, or when the event stream ends: the client closed for good.
    stop = asyncio.Event()
    signalled: list[int] = []

    def on_signal(sig: int) -> None:
        signalled.append(sig)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)

    def ended() -> int:
        # Stopping the connect on a signal closes the client too: that is not the
        # server ending the session.
        return EXIT_CLOSED if client.closed and not signalled else 0

    printer = Printer(args.room, args.url)
    shown = asyncio.create_task(_show(client, printer), name="show")
    shown.add_done_callback(lambda _: stop.set())
    says: set[asyncio.Task[None]] = set()
    try:
        try:
            if await _unless(stop, client.connect()) is None:
                return ended()
            if await _unless(stop, client.join(args.room)) is None:
                return ended()
        except ChatError as err:
            # Once, in words: the `closed` status for it is not printed (Printer).
            refused = _HELLO_REFUSED.match(err.message)
            _out(refusal(refused["code"], refused["message"]) if refused else f"! {err}")
            return EXIT_CLOSED
        lines: asyncio.Queue[str | None] = asyncio.Queue()
        threading.Thread(target=_read_stdin, args=(loop, lines), daemon=True).start()
        while (line := await _unless(stop, lines.get())) is not None:
            text = line.rstrip("\r\n")
            if text.strip():
                task = asyncio.create_task(_say(client, printer, args.room, text))
                says.add(task)
                task.add_done_callback(says.discard)
        if stop.is_set():
            return ended()
        # End of input: what was typed should still reach the room.
        if says:
            await _unless(stop, asyncio.wait(set(says), timeout=ACK_WAIT))
        return 0
    finally:
        await client.close()
        await asyncio.wait_for(asyncio.gather(shown, return_exceptions=True), ACK_WAIT)
        for task in says:
            task.cancel()
        await asyncio.gather(*says, return_exceptions=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level or ("INFO" if args.verbose else "ERROR"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())

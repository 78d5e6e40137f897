"""Terminal front end: `python -m chat.client --url WS_URL --nick NICK --room ROOM`.

Prints the room's messages as `[HH:MM:SS] nick: text`, presence and connection status
as `* ...` lines and errors as `! ...` lines; sends each line read from standard input.
End of input waits (bounded) for the acks of what was sent, then exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Sequence
from typing import Final, TypeVar

from chat.client import ChatClient, ChatError, Event

ACK_WAIT: Final = 10.0  # s to wait at end of input for says still unacknowledged
EXIT_CLOSED: Final = 1  # the server closed the session for good

T = TypeVar("T")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m chat.client", description="Chat in one room from the terminal."
    )
    parser.add_argument("--url", default="ws://127.0.0.1:8080/ws", help="WebSocket URL "
                        "(default ws://127.0.0.1:8080/ws)")
    parser.add_argument("--nick", required=True, help="your nick")
    parser.add_argument("--room", default="lobby", help="room to join (default lobby)")
    parser.add_argument("--token", help="token for a server in token mode")
    parser.add_argument("--log-level", default="WARNING",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper,
                        help="logging threshold on standard error (default WARNING)")
    return parser


def render(event: Event, room: str) -> str | None:
    """The line printed for an event, or None when it is not shown."""
    kind = event.get("type")
    if kind == "message" and event.get("room") == room:
        clock = time.strftime("%H:%M:%S", time.localtime(event["ts"] / 1000))
        return f"[{clock}] {event['nick']}: {event['text']}"
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


async def _show(client: ChatClient, room: str) -> None:
    async for event in client.events():
        line = render(event, room)
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


async def _say(client: ChatClient, room: str, text: str) -> None:
    try:
        await client.say(room, text)
    except ChatError as err:
        _out(f"! not sent: {err}")


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
    client = ChatClient(args.url, args.nick, token=args.token)
    # Set by a signal, or when the event stream ends: the client closed for good.
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    shown = asyncio.create_task(_show(client, args.room), name="show")
    shown.add_done_callback(lambda _: stop.set())
    says: set[asyncio.Task[None]] = set()
    try:
        try:
            if await _unless(stop, client.connect()) is None:
                return EXIT_CLOSED if client.closed else 0
            if await _unless(stop, client.join(args.room)) is None:
                return EXIT_CLOSED if client.closed else 0
        except ChatError as err:
            _out(f"! {err}")
            return EXIT_CLOSED
        lines: asyncio.Queue[str | None] = asyncio.Queue()
        threading.Thread(target=_read_stdin, args=(loop, lines), daemon=True).start()
        while (line := await _unless(stop, lines.get())) is not None:
            text = line.rstrip("\r\n")
            if text.strip():
                task = asyncio.create_task(_say(client, args.room, text))
                says.add(task)
                task.add_done_callback(says.discard)
        if stop.is_set():
            return EXIT_CLOSED if client.closed else 0
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
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())

"""One WebSocket connection: its liveness, its outbound frames and how they reach the socket.

Broadcast never waits on a client: senders hand encoded bytes to `send`, which frames
them. The first frame a connection gets in an event-loop iteration is written at once
(a pong never waits); the frames that follow it in the same iteration wait in the
connection's outbox, and at the end of the iteration the `Flusher` hands each outbox
to its transport in one write. A burst (many messages, or a message, an ack and a
pong) costs two system calls instead of one per frame.

Nothing runs per connection while it is idle. A task exists only while there is
something to wait for: the transport is above its high-water mark (the client reads
slower than we write), or a polite close waits for the client's close frame. A client
that cannot keep up only fills its own outbox, bounded by `send_buffer`.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import TYPE_CHECKING, Final

from aiohttp import WSMsgType, web
from aiohttp.abc import AbstractStreamWriter

from chat import protocol
from chat.protocol import Close

if TYPE_CHECKING:
    from aiohttp.web_protocol import RequestHandler

    from chat.hub import Seat, Session

logger = logging.getLogger(__name__)

# How long a polite close waits for the peer's close frame before dropping the socket.
CLOSE_TIMEOUT: Final = 2.0

_SHORT: Final = struct.Struct("!BB").pack
_MEDIUM: Final = struct.Struct("!BBH").pack
_LONG: Final = struct.Struct("!BBQ").pack


def frame_header(size: int, opcode: int = WSMsgType.TEXT) -> bytes:
    """The header of an unmasked, unfragmented, uncompressed frame (RFC 6455 §5.2).

    A server frame is never masked and the contract rules out compression, so this is
    all there is to framing; written here so that frames can be handed to the transport
    together, which aiohttp's one-frame-per-await `send_frame` cannot do.
    """
    first = 0x80 | opcode  # FIN and the opcode
    if size < 126:
        return _SHORT(first, size)
    if size < 65536:
        return _MEDIUM(first, 126, size)
    return _LONG(first, 127, size)


def wake(waiter: asyncio.Future[None] | None) -> None:
    """Resolve a waiter that may be absent, or already done (its waiting task cancelled)."""
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


class Flusher:
    """Writes, once per event-loop iteration, the outbox of every connection that was
    written to in that iteration.

    One callback per iteration for all connections with something to send, instead of
    one per connection: the cost of fan-out stays one `append` per receiver until the
    write itself. The callback runs at the start of the next iteration, so a frame waits
    no longer than the rest of the work already due in this one.
    """

    __slots__ = ("_dirty", "_loop", "_scheduled")

    def __init__(self) -> None:
        self._dirty: list[Connection] = []
        self._scheduled = False
        # The app's loop, told at its startup (`bind`). On Python 3.11 every
        # asyncio.get_running_loop(), and so every asyncio.create_task, is a getpid()
        # system call; `add` runs once per busy iteration, so the loop is kept (as the
        # stores and each connection's request queue keep theirs). Unbound (a Flusher on
        # its own), it is looked up each time.
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def add(self, conn: Connection) -> None:
        self._dirty.append(conn)
        if not self._scheduled:
            self._scheduled = True
            (self._loop or asyncio.get_running_loop()).call_soon(self._run)

    def _run(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            try:
                conn.flush()
            except Exception:
                # One connection's bug must not keep the others' frames back.
                logger.exception("cannot write to the connection from %s", conn.remote)
                conn.abort(Close.INTERNAL, "unexpected server error")


class Connection:
    """State of one accepted WebSocket: what the socket side owns; the hub's own state
    for it is `seat`. Owned by the hub, fed by the handler."""

    __slots__ = (
        "_dirty",
        "_done",
        "_drained",
        "_exempt_bytes",
        "_flusher",
        "_out",
        "_protocol",
        "_queued_bytes",
        "_send_buffer",
        "_stream",
        "_task",
        "close_code",
        "close_reason",
        "errors_in_row",
        "frame_ceiling",
        "id",
        "last_seen",
        "opened",
        "remote",
        "seat",
        "session",
        "transport",
        "ws",
    )

    # The hub's bookkeeping for this connection (rooms, held frames, typing times, rate
    # buckets): set by Hub.register, read and written by the hub only.
    seat: Seat

    def __init__(
        self,
        ws: web.WebSocketResponse,
        request: web.BaseRequest,
        flusher: Flusher,
        remote: str,
        now: float,
        send_buffer: int,
        frame_ceiling: int,
    ) -> None:
        self.ws = ws
        self.id = ""  # given by the hub when it admits the connection; unique on this node
        self.transport: asyncio.Transport | None = request.transport
        self.remote = remote
        self.opened = now
        self.last_seen = now  # loop time of the last frame of any kind from the peer
        self.session: Session | None = None
        self.errors_in_row = 0
        # The largest message aiohttp reads on this connection: `limits.max_frame` may be
        # raised by a reload up to it (and lowered to anything), see chat.ws.
        self.frame_ceiling = frame_ceiling
        self.close_code: int | None = None
        self.close_reason = ""
        self._flusher = flusher
        self._protocol: RequestHandler = request.protocol
        self._stream: AbstractStreamWriter = request.writer
        self._send_buffer = send_buffer
        # Frame headers and payloads not yet handed to the transport, in order.
        self._out: list[bytes] = []
        self._queued_bytes = 0  # payload bytes in _out: what replies_taken waits on
        self._exempt_bytes = 0  # the part the slow-consumer limit does not count
        self._dirty = False  # queued with the flusher for this iteration
        # Runs only while the transport is full or a polite close is under way.
        self._task: asyncio.Task[None] | None = None
        self._drained: asyncio.Future[None] | None = None  # replies_taken's wait
        # Set once the close frame is under way (polite close started, or abort): from
        # then on nothing more is written and no task is started.
        self._done = False

    @property
    def closing(self) -> bool:
        return self.close_code is not None

    @property
    def nick(self) -> str | None:
        return None if self.session is None else self.session.nick

    def set_send_buffer(self, send_buffer: int) -> None:
        """Take a new `limits.send_buffer` (a reload); frames already queued stay queued."""
        self._send_buffer = send_buffer

    # ----------------------------------------------------------------- sending

    def send(
        self, data: bytes, opcode: WSMsgType = WSMsgType.TEXT, *, exempt: bool = False
    ) -> None:
        """Queue one frame; never blocks. A client too far behind is dropped with 4001.

        `exempt` frames (a `joined` and the live frames held while it was prepared) are
        neither checked against `send_buffer` nor counted by it: the client asked for
        them at once, so they never make it a slow consumer by themselves. The
        dispatcher still waits for them to drain before the next request
        (`replies_taken`), which bounds them to one join's worth.
        """
        if self.close_code is not None:
            return
        size = len(data)
        if not self._dirty:
            # The first frame of this loop iteration: it goes out at once (a pong must
            # not wait), and the flusher takes whatever follows it in this iteration.
            self._dirty = True
            self._flusher.add(self)
            if self._task is None and not self._protocol.writing_paused:
                self._write(frame_header(size, opcode) + data)
                return
        queued = self._queued_bytes
        if queued:
            counted = queued - self._exempt_bytes
            # A frame that finds nothing counted queued is always accepted, so one large
            # reply never trips the limit by itself.
            if not exempt and counted and counted + size > self._send_buffer:
                self.abort(Close.SLOW_CONSUMER, "slow consumer")
                return
        self._out.append(frame_header(size, opcode))
        self._out.append(data)
        self._queued_bytes = queued + size
        if exempt:
            self._exempt_bytes += size

    @property
    def replies_pending(self) -> bool:
        """More than half of `send_buffer` waits to be sent: `replies_taken` would wait."""
        return self._queued_bytes > self._send_buffer // 2

    async def replies_taken(self) -> None:
        """Wait while more than half of `send_buffer` waits to be sent.

        The dispatcher calls this between requests: a client that pipelines many
        requests is then slowed to the pace at which it takes the replies (its requests
        wait in TCP), instead of being dropped as a slow consumer for its own replies.
        """
        if self.replies_pending and self.close_code is None:
            drained = self._drained
            if drained is None or drained.done():  # done: a cancelled earlier wait
                drained = self._drained = asyncio.get_running_loop().create_future()
            await drained

    def flush(self) -> None:
        """Hand the outbox to the transport, or leave it to the task that waits for room.

        Called by the flusher at the end of the iteration in which frames were queued.
        Everything queued goes in one write while the transport is below its high-water
        mark; above it, nothing goes until the client has read enough.
        """
        self._dirty = False
        if self._task is not None or self._done:
            return  # waiting for room (that task writes what follows), or closed
        if self._out:
            if self._protocol.writing_paused:
                self._task = asyncio.create_task(self._write_when_room())
                return
            self._write_out()
        if self.close_code is not None:
            self._done = True
            self._task = asyncio.create_task(self._close_politely())

    def _write_out(self) -> None:
        out = self._out
        self._out = []
        self._queued_bytes = self._exempt_bytes = 0
        self._set_drained()
        self._write(b"".join(out))

    def _write(self, data: bytes) -> None:
        transport = self.transport
        # Never after a close frame (aiohttp sends one itself when the peer closes or
        # breaks the protocol), and never into a transport that is going away: the
        # reader sees the end and releases the connection.
        if transport is None or transport.is_closing() or self.ws.closed:
            return
        transport.write(data)

    def _set_drained(self) -> None:
        wake(self._drained)
        self._drained = None

    async def _write_when_room(self) -> None:
        try:
            while self._out:
                await self._stream.drain()  # returns once the transport is below its low mark
                if self._done:
                    return
                self._write_out()
        except ConnectionError:
            return  # the peer is gone; the reader sees it too and releases the connection
        finally:
            self._task = None
        if self.close_code is not None and not self._done:
            self._done = True
            self._task = asyncio.current_task()
            await self._close_politely()

    async def _close_politely(self) -> None:
        code = self.close_code or Close.NORMAL
        try:
            await self.ws.close(code=code, message=self.close_reason.encode()[:123])
        except ConnectionError:
            pass  # the peer is gone; the reader sees it too

    # ----------------------------------------------------------------- closing

    def close(self, code: int, reason: str) -> None:
        """Close politely after the frames already queued (e.g. the tenth error)."""
        if self.close_code is not None:
            return
        self.close_code = code
        self.close_reason = reason
        self._set_drained()
        if not self._dirty:
            self._dirty = True
            self._flusher.add(self)

    def abort(self, code: int, reason: str) -> None:
        """Close now: send the close frame if the socket takes it and drop TCP at once.

        Used when the peer is presumed dead (heartbeat timeout), stuck (slow consumer)
        or replaced: waiting for its close reply could take forever.
        """
        self.close_code = code
        self.close_reason = reason
        self._done = True
        self._out = []
        self._queued_bytes = self._exempt_bytes = 0
        self._set_drained()
        task = self._task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(protocol.close_frame(code, reason))
        if transport.get_write_buffer_size():
            # The peer is not reading: nothing more will reach it.
            transport.abort()
        else:
            transport.close()

    async def finish(self) -> None:
        """Wait (bounded) for a polite close in progress, then make sure no task is left."""
        if self.close_code is not None and self._task is None and not self._done:
            self.flush()  # a close asked for in this very iteration: start it now
        task = self._task
        if task is None or task.done():
            return
        if self.close_code is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), CLOSE_TIMEOUT + 1)
            except (TimeoutError, ConnectionError):
                pass
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

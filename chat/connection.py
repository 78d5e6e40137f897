"""One WebSocket connection: its liveness, its outbound queue and the writer that drains it.

Broadcast never waits on a client: senders hand encoded bytes to `send`, which only
appends to this connection's queue; a writer task per connection does the awaiting.
A client that cannot keep up only fills its own queue (bounded by `send_buffer`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Final

from aiohttp import WSMsgType, web

from chat import protocol
from chat.protocol import Close

if TYPE_CHECKING:
    from chat.hub import Session

logger = logging.getLogger(__name__)

# How long a polite close waits for the peer's close frame before dropping the socket.
CLOSE_TIMEOUT: Final = 2.0


class Connection:
    """State of one accepted WebSocket; owned by the hub, fed by the handler."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport | None,
        remote: str,
        now: float,
        send_buffer: int,
    ) -> None:
        self.ws = ws
        self.id = ""  # given by the hub when it admits the connection; unique on this node
        self.transport = transport
        self.remote = remote
        self.opened = now
        self.last_seen = now  # loop time of the last frame of any kind from the peer
        self.session: Session | None = None
        # Rooms joined on this connection: it receives their messages.
        self.rooms: set[str] = set()
        # Rooms whose `joined` is being prepared: live frames wait here, tagged with the
        # message id (None for frames without one), so the replay and the live stream
        # meet without a gap or a duplicate.
        self.pending: dict[str, list[tuple[int | None, bytes]]] = {}
        self.errors_in_row = 0
        self.typing_at: dict[str, float] = {}
        self.close_code: int | None = None
        self.close_reason = ""
        self._send_buffer = send_buffer
        self._queue: deque[tuple[bytes, WSMsgType, bool]] = deque()  # (data, opcode, exempt)
        self._queued_bytes = 0  # every queued frame: what replies_taken waits on
        self._exempt_bytes = 0  # the part the slow-consumer limit does not count
        self._wakeup = asyncio.Event()
        self._drained = asyncio.Event()  # set whenever the queue is empty
        self._drained.set()
        self._writer: asyncio.Task[None] | None = None

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
        if self.closing:
            return
        size = len(data)
        counted = self._queued_bytes - self._exempt_bytes
        # A frame that finds nothing counted queued is always accepted, so one large
        # reply never trips the limit by itself.
        if not exempt and counted and counted + size > self._send_buffer:
            self.abort(Close.SLOW_CONSUMER, "slow consumer")
            return
        self._queue.append((data, opcode, exempt))
        self._queued_bytes += size
        if exempt:
            self._exempt_bytes += size
        self._drained.clear()
        self._wakeup.set()

    def send_room(self, room: str, data: bytes, msg_id: int | None = None) -> None:
        """Deliver a room frame, holding it back while that room's `joined` is prepared."""
        held = self.pending.get(room)
        if held is not None:
            held.append((msg_id, data))
        else:
            self.send(data)

    async def replies_taken(self) -> None:
        """Wait while more than half of `send_buffer` waits to be sent.

        The dispatcher calls this between requests: a client that pipelines many
        requests is then slowed to the pace at which it takes the replies (its requests
        wait in TCP), instead of being dropped as a slow consumer for its own replies.
        """
        if self._queued_bytes > self._send_buffer // 2 and not self.closing:
            await self._drained.wait()

    def start_writer(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name=f"ws-writer {self.remote}")

    async def _write_loop(self) -> None:
        ws = self.ws
        try:
            while True:
                while not self._queue:
                    self._drained.set()
                    if self.closing:
                        await ws.close(code=self.close_code or Close.NORMAL,
                                       message=self.close_reason.encode()[:123])
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                data, opcode, exempt = self._queue.popleft()
                self._queued_bytes -= len(data)
                if exempt:
                    self._exempt_bytes -= len(data)
                await ws.send_frame(data, opcode)
        except ConnectionError:
            # The peer is gone; the reader sees it too and releases the connection.
            return

    # ----------------------------------------------------------------- closing

    def close(self, code: int, reason: str) -> None:
        """Close politely after the frames already queued (e.g. the tenth error)."""
        if self.closing:
            return
        self.close_code = code
        self.close_reason = reason
        self._wakeup.set()

    def abort(self, code: int, reason: str) -> None:
        """Close now: send the close frame if the socket takes it and drop TCP at once.

        Used when the peer is presumed dead (heartbeat timeout), stuck (slow consumer)
        or replaced: waiting for its close reply could take forever.
        """
        self.close_code = code
        self.close_reason = reason
        self._queue.clear()
        self._queued_bytes = self._exempt_bytes = 0
        self._drained.set()
        if self._writer is not None:
            self._writer.cancel()
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
        """Wait (bounded) for a polite close in progress, then make sure the writer is gone."""
        writer = self._writer
        if writer is None or writer.done():
            return
        if self.closing:
            self._wakeup.set()
            try:
                await asyncio.wait_for(asyncio.shield(writer), CLOSE_TIMEOUT + 1)
            except TimeoutError:
                pass
            except ConnectionError:
                pass
        if not writer.done():
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)

"""A WebSocket client written by hand, for attacks the aiohttp client will not make.

It can keep its socket's receive buffer tiny and never read past the handshake, while
still sending frames (protocol pongs included) so that it looks alive to the server.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
from typing import Any, Final

PONG: Final = 0x8A  # FIN + pong
TEXT: Final = 0x81  # FIN + text


def masked_frame(payload: bytes, first: int = TEXT) -> bytes:
    """A client frame, masked as the protocol requires."""
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    if len(payload) < 126:
        header = struct.pack("!BB", first, 0x80 | len(payload))
    else:
        header = struct.pack("!BBH", first, 0x80 | 126, len(payload))
    return header + mask + body


class RawWebSocket:
    """One hand-made WebSocket: `send` frames, never read after the handshake."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer

    @classmethod
    async def open(
        cls, host: str, port: int, *, rcvbuf: int | None = None, timeout: float = 5.0
    ) -> RawWebSocket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Before connect, so the advertised window stays small too.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (host, port)),
                               timeout)
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"upgrade refused: {head[:40]!r}")
        return cls(writer)

    def send(self, frame: dict[str, Any]) -> None:
        self.writer.write(masked_frame(json.dumps(frame).encode()))

    def pong(self) -> None:
        """An unsolicited protocol pong: liveness for the server, no reply expected."""
        self.writer.write(masked_frame(b"", PONG))

    def abort(self) -> None:
        self.writer.transport.abort()

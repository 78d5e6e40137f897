"""A WebSocket client written by hand, for attacks the aiohttp client will not make.

The pieces (the upgrade request, masked client frames, reading unmasked server frames)
serve asyncio streams and blocking sockets alike. `RawWebSocket` can keep its socket's
receive buffer tiny and never read past the handshake, while still sending frames
(protocol pongs included) so that it looks alive to the server.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
from typing import Any, Final

from tests.helpers import DEADLINE

PONG: Final = 0x8A  # FIN + pong
TEXT: Final = 0x81  # FIN + text
CLOSE: Final = 0x8  # the close opcode


def upgrade_request(host: str, port: int, key: str | None = None) -> bytes:
    """The client's upgrade of /ws (RFC 6455 section 4.1), with a random key unless given."""
    key = key or base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


async def handshake(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    host: str,
    port: int,
    timeout: float = DEADLINE,
) -> None:
    """Upgrade an open stream to a WebSocket; nothing after the 101's headers is read."""
    writer.write(upgrade_request(host, port))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(f"upgrade refused: {head[:40]!r}")


def _extended(length: int) -> int:
    """How many bytes of extended payload length follow a second byte of `length`."""
    return {126: 2, 127: 8}.get(length, 0)


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The next server frame (unmasked) from a stream: its first byte and payload."""
    async with asyncio.timeout(DEADLINE):
        first, second = await reader.readexactly(2)
        length = second & 0x7F
        if extended := _extended(length):
            length = int.from_bytes(await reader.readexactly(extended))
        return first, await reader.readexactly(length)


async def close_code(reader: asyncio.StreamReader) -> int:
    """The code of the close frame the server sends next (frames before it are skipped)."""
    while True:
        first, payload = await read_frame(reader)
        if first & 0x0F == CLOSE:
            code: int = struct.unpack("!H", payload[:2])[0]
            return code


def raw_ws(host: str, port: int) -> socket.socket:
    """A blocking socket that has completed the upgrade of /ws and read nothing else."""
    sock = socket.create_connection((host, port), timeout=DEADLINE)
    sock.sendall(upgrade_request(host, port))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)  # byte by byte: nothing after the headers is consumed
        assert chunk, f"connection closed during the handshake: {head!r}"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101 "), head
    return sock


def read_text_frame(sock: socket.socket) -> dict[str, Any]:
    """One unfragmented server text frame from a blocking socket, parsed."""

    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            assert chunk, "connection closed"
            data += chunk
        return data

    first, second = exactly(2)
    assert first == TEXT, hex(first)
    length = second & 0x7F
    if extended := _extended(length):
        length = int.from_bytes(exactly(extended))
    frame: dict[str, Any] = json.loads(exactly(length))
    return frame


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
        await handshake(reader, writer, host, port, timeout)
        return cls(writer)

    def send(self, frame: dict[str, Any]) -> None:
        self.writer.write(masked_frame(json.dumps(frame).encode()))

    def pong(self) -> None:
        """An unsolicited protocol pong: liveness for the server, no reply expected."""
        self.writer.write(masked_frame(b"", PONG))

    def abort(self) -> None:
        self.writer.transport.abort()

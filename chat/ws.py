"""The one WebSocket handler: check the upgrade, register, read, dispatch, release.

An idle connection costs one task: the handler task, which reads frames, stamps
liveness and answers heartbeats at once. Requests go to a dispatcher task that exists
only while there are requests to handle: it takes them one at a time, in the order
received, so replies keep that order even when one waits on storage. Frames out go
through the connection's outbox (see `connection.py`), written once per loop iteration.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from aiohttp import WebSocketError, WSMessage, WSMsgType, web

from chat import protocol
from chat.connection import CLOSE_TIMEOUT, Connection, wake
from chat.history import BackendUnavailable
from chat.hub import DROPPED, Hub, Outcome, now_ms
from chat.keys import FLUSHER, HUB, PROXIES
from chat.metrics import close_label
from chat.policy import client_address, origin_allowed, own_origin, trusted_peer
from chat.protocol import Close, ErrorCode, Invalid

logger = logging.getLogger(__name__)

MAX_ERRORS_IN_ROW: Final = 10
# aiohttp fixes the largest message it reads when the connection opens, and we check
# `limits.max_frame` ourselves on every message, so a reload applies to open
# connections too. Reading up to this much (or max_frame, if larger) leaves room for a
# reload to raise the limit; it bounds what a hostile client can make us buffer before
# the check, to about what the transport's own read buffer may hold anyway.
FRAME_CEILING: Final = 65536
# Requests read but not yet handled; past this the reader stops reading, which pushes
# back on the client through TCP instead of growing memory.
REQUEST_BACKLOG: Final = 64

# The reader tells the dispatcher that a heartbeat was answered (it resets the count
# of errors in a row, in request order).
_HEARTBEAT: Final = object()

_KIND: Final = {
    protocol.Hello: "hello",
    protocol.Join: "join",
    protocol.Leave: "leave",
    protocol.Say: "say",
    protocol.Typing: "typing",
    protocol.HistoryRequest: "history",
}

Request = protocol.ClientEvent | Invalid | object


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB]
    config = hub.config
    peer = request.remote or "?"
    proxies = request.app[PROXIES]
    via_proxy = trusted_peer(peer, proxies)
    # Every X-Forwarded-For line counts: proxies may append a line of their own.
    forwarded = ",".join(request.headers.getall("X-Forwarded-For", ())) if via_proxy else None
    address = client_address(peer, forwarded, proxies)
    # The upgrade policy is decided before the WebSocket is accepted, with a status.
    origin = request.headers.get("Origin")
    if origin is not None and not origin_allowed(
        origin, own_origin(_scheme(request, via_proxy), request.host),
        config.security.allowed_origins,
    ):
        logger.info("refused upgrade from %s: origin %r", address, origin)
        raise web.HTTPForbidden(text="origin not allowed\n")
    status = hub.refusal(address)
    if status == 503:
        raise web.HTTPServiceUnavailable(text="server busy or shutting down\n")
    if status == 429:
        raise web.HTTPTooManyRequests(text="too many connections from your address\n")
    limits = config.limits
    ceiling = max(limits.max_frame, FRAME_CEILING)
    ws = web.WebSocketResponse(
        autoping=False,  # protocol pongs must reach us: they count as liveness
        compress=False,  # the contract: no permessage-deflate
        # aiohttp refuses a message whose size reaches max_msg_size: it reads up to
        # the ceiling, and `_read` holds each message to the max_frame of the moment.
        max_msg_size=ceiling + 1,
        timeout=CLOSE_TIMEOUT,
    )
    conn = Connection(
        ws, request, request.app[FLUSHER], address, hub.clock(), limits.send_buffer, ceiling
    )
    # Counted before the upgrade's await, so concurrent upgrades cannot overshoot a cap.
    hub.register(conn)
    try:
        await ws.prepare(request)
    except ConnectionError:
        # The client gave up during the upgrade: nothing went wrong on our side. Drop the
        # socket so aiohttp's own reply fails quietly too (it logs that at DEBUG).
        hub.release(conn)
        logger.info("client %s went away during the upgrade", address)
        if request.transport is not None:
            request.transport.abort()
        return web.Response()
    except BaseException:
        hub.release(conn)
        raise
    requests = Requests(hub, conn)
    try:
        await _read(hub, conn, ws, requests)
    finally:
        hub.release(conn, "timeout" if conn.close_code == Close.HEARTBEAT_TIMEOUT else "closed")
        try:
            await requests.stop()
            await conn.finish()
        finally:
            # Also when this task is cancelled meanwhile (aiohttp cancels handlers whose
            # client went away, with handler_cancellation, and at shutdown).
            _log_end(hub, conn, ws)
    return ws


def _scheme(request: web.Request, via_proxy: bool) -> str:
    """The scheme the client used; a trusted proxy may say it terminated TLS."""
    if via_proxy:
        forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        if forwarded in ("http", "https"):
            return forwarded
    return request.scheme


async def _read(
    hub: Hub[Connection],
    conn: Connection,
    ws: web.WebSocketResponse,
    requests: Requests,
) -> None:
    clock = hub.clock
    receive = ws.receive  # not `async for`: its __anext__ is one coroutine more per frame
    while True:
        msg = await receive()
        if msg.type in _END:
            return
        conn.last_seen = clock()
        if conn.close_code is not None:
            continue  # drain until the close handshake ends the loop
        try:
            if msg.type is not WSMsgType.TEXT:
                if not _receive_other(hub, conn, ws, msg):
                    return
                continue
            event = _parse(hub, conn, msg.data, requests)
            # What was read is not kept alive while the connection waits for the next
            # frame: on an idle connection that would be its last frame, for ever.
            msg = None  # type: ignore[assignment]
            if event is None:
                continue
            if requests.idle and hub.immediate(event):
                await _dispatch(hub, conn, event)  # never waits: no need for the task
            elif requests.put(event):
                await requests.room()  # full: stop reading until the dispatcher catches up
            event = None
        except Exception:
            # A bug, not the client's doing: after this the connection only drains, so
            # however many frames follow, this logs once.
            _crash(conn, "reading a frame")


# What aiohttp's `receive` returns once the WebSocket is over.
_END: Final = frozenset({WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED})


def _parse(
    hub: Hub[Connection], conn: Connection, text: str, requests: Requests
) -> Request | None:
    """Answer a heartbeat or refuse an oversized frame at once; else the request to handle."""
    if _over(text, hub.config.limits.max_frame):
        # The limit of the moment, not the one the connection opened with.
        conn.close(Close.TOO_BIG, "message too big")
        return None
    event = protocol.parse(text)
    if type(event) is protocol.Ping:
        # Answered here, ahead of requests still waiting on storage.
        conn.send(protocol.pong_frame(event.t, now_ms()))
        requests.heartbeat()
        return None
    if type(event) is protocol.LegacyPing:
        conn.send(protocol.LEGACY_HEARTBEAT_BYTES)
        requests.heartbeat()
        return None
    return event


def _over(text: str, max_frame: int) -> bool:
    """More than `max_frame` bytes of UTF-8; encodes only a text that might be."""
    return len(text) > max_frame or (len(text) * 4 > max_frame and len(text.encode()) > max_frame)


def _receive_other(
    hub: Hub[Connection], conn: Connection, ws: web.WebSocketResponse, msg: WSMessage
) -> bool:
    """Act on one inbound message that is not text; False once the WebSocket has failed."""
    kind = msg.type
    if kind is WSMsgType.BINARY and len(msg.data) > hub.config.limits.max_frame:
        conn.close(Close.TOO_BIG, "message too big")
    elif kind is WSMsgType.PING:
        conn.send(msg.data, WSMsgType.PONG)
    elif kind is WSMsgType.PONG:
        pass  # liveness is all a pong carries
    elif kind is WSMsgType.BINARY:
        conn.close(Close.UNSUPPORTED, "binary frames are not accepted")
    elif kind is WSMsgType.ERROR:
        # aiohttp has already sent the close frame: 1009 too big, 1007 bad UTF-8, 1002
        # protocol error. Record that code: ws.close_code may since say 1006 (the peer
        # did not answer the close), which is not what the client was told.
        error = msg.data
        conn.close_code = error.code if isinstance(error, WebSocketError) else ws.close_code
        conn.close_reason = str(error or ws.exception() or "")
        return False
    return True


def _crash(conn: Connection, doing: str) -> None:
    """An unexpected error on one connection: log it once and close that connection with 1011."""
    if conn.close_code == Close.INTERNAL:
        return  # the reader and the dispatcher both failed: one traceback is enough
    logger.exception("unexpected error %s on the connection from %s", doing, conn.remote)
    conn.close(Close.INTERNAL, "unexpected server error")


class Requests:
    """One connection's requests not yet handled, and the task that handles them.

    The task runs only while there are requests: it takes them one at a time, in the
    order received, and ends when none is left. The reader waits (and so stops reading,
    which pushes back on the client through TCP) while REQUEST_BACKLOG are waiting.
    """

    __slots__ = ("_backlog", "_conn", "_hub", "_loop", "_room", "_task")

    def __init__(self, hub: Hub[Connection], conn: Connection) -> None:
        self._hub = hub
        self._conn = conn
        # Looked up once per connection (see Flusher), not by asyncio.create_task for
        # every say that waits for its store.
        self._loop = asyncio.get_running_loop()
        # A list, not a deque: it holds at most REQUEST_BACKLOG, and an empty list is a
        # tenth of an empty deque's size on every idle connection.
        self._backlog: list[Request] = []
        self._task: asyncio.Task[None] | None = None
        self._room: asyncio.Future[None] | None = None  # the reader's wait for room

    @property
    def idle(self) -> bool:
        """Nothing waits to be handled, and the client takes its replies."""
        return self._task is None and not self._conn.replies_pending

    def heartbeat(self) -> None:
        """A heartbeat was answered: it resets the errors in a row, in request order."""
        if self._task is None:
            self._conn.errors_in_row = 0  # nothing is ahead of it
        else:
            self._backlog.append(_HEARTBEAT)

    def put(self, request: Request) -> bool:
        """Queue a request; True when the backlog is full and the reader should wait."""
        self._backlog.append(request)
        if self._task is None:
            self._task = self._loop.create_task(self._run(), name="ws-dispatch")
        return len(self._backlog) >= REQUEST_BACKLOG

    async def room(self) -> None:
        """Wait until the backlog has room again (or the dispatcher has stopped)."""
        if len(self._backlog) < REQUEST_BACKLOG or self._task is None:
            return
        self._room = self._loop.create_future()
        await self._room

    async def stop(self) -> None:
        task = self._task
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _wake_reader(self) -> None:
        wake(self._room)
        self._room = None

    async def _run(self) -> None:
        hub, conn, backlog = self._hub, self._conn, self._backlog
        try:
            while backlog and not conn.closing:
                await conn.replies_taken()
                request = backlog.pop(0)
                if len(backlog) < REQUEST_BACKLOG:
                    self._wake_reader()
                if request is _HEARTBEAT:
                    conn.errors_in_row = 0
                    continue
                await _dispatch(hub, conn, request)
        finally:
            self._task = None
            if conn.closing:
                backlog.clear()  # after a close nothing more is answered
            self._wake_reader()


async def _dispatch(hub: Hub[Connection], conn: Connection, request: Request) -> None:
    """Handle one request and answer it (an error frame, or the hub's own reply)."""
    try:
        outcome = await _handle(hub, conn, request)
    except BackendUnavailable as err:
        # Not the client's fault: neither counts toward nor resets the errors in a row.
        unavailable = Invalid(
            ErrorCode.UNAVAILABLE, str(err), None, retry_after=err.retry_after
        )
        _send_error(hub, conn, unavailable, request, counts=False)
        return
    except Exception:
        _crash(conn, "handling a request")
        return
    if outcome is DROPPED:
        return
    if isinstance(outcome, Invalid):
        _send_error(hub, conn, outcome, request)
    else:
        conn.errors_in_row = 0


async def _handle(hub: Hub[Connection], conn: Connection, request: Request) -> Outcome:
    if conn.session is None and not isinstance(request, protocol.Hello):
        # Before hello every type but hello and ping gets hello_required, unknown and
        # ill-formed ones included; a frame with no string type keeps its own error.
        if not isinstance(request, Invalid):
            return Invalid(ErrorCode.HELLO_REQUIRED, "say hello first", None)
        if request.kind not in (None, "hello", "ping"):
            return Invalid(ErrorCode.HELLO_REQUIRED, "say hello first", request.ref)
    if isinstance(request, Invalid):
        return request
    match request:
        case protocol.Hello():
            return await hub.hello(conn, request)
        case protocol.Join():
            return await hub.join(conn, request)
        case protocol.Leave():
            return await hub.leave(conn, request)
        case protocol.Say():
            return await hub.say(conn, request)
        case protocol.Typing():
            try:
                return await hub.typing(conn, request)
            except BackendUnavailable:
                return DROPPED  # a typing notice is not worth an error
        case protocol.HistoryRequest():
            return await hub.history(conn, request)
    raise AssertionError(f"unhandled request {request!r}")


def _send_error(
    hub: Hub[Connection], conn: Connection, error: Invalid, request: Request, counts: bool = True
) -> None:
    ref = error.ref
    if ref is None and not isinstance(request, Invalid):
        cid = getattr(request, "cid", None)
        ref = cid if cid is not None else _KIND.get(type(request))
    conn.send(protocol.error_frame(error.code, error.message, ref, error.retry_after))
    hub.metrics.errors.labels(error.code).inc()
    if error.code is ErrorCode.UNAUTHORIZED:
        conn.close(Close.UNAUTHORIZED, "unauthorized")
        return
    if not counts:
        return
    conn.errors_in_row += 1
    if conn.errors_in_row >= MAX_ERRORS_IN_ROW:
        conn.close(Close.POLICY, "too many errors in a row")


def _log_end(hub: Hub[Connection], conn: Connection, ws: web.WebSocketResponse) -> None:
    by_client = conn.close_code is None  # else the server chose the code
    code = ws.close_code if by_client else conn.close_code
    reason = conn.close_reason or ("closed by peer" if code is not None else "connection lost")
    # Bounded: a client may close with any code, and both end up in metrics and logs.
    label = close_label(code, by_client=by_client)
    hub.metrics.closes.labels(label).inc()
    duration = hub.clock() - conn.opened
    logger.info(
        "connection end: nick=%s remote=%s code=%s reason=%s duration=%.1fs",
        conn.nick or "-", conn.remote, label, reason, duration,
        # Fields of their own in JSON logs (the code a number where it is one).
        extra={"nick": conn.nick, "remote": conn.remote,
               "code": int(label) if label.isdigit() else label, "reason": reason,
               "duration": round(duration, 3)},
    )

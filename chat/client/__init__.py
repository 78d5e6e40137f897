"""A reconnecting client for the chat service (contract sections 3 to 5).

`ChatClient` keeps one WebSocket open at a time and replaces it when it fails: it
sends the heartbeat, counts a silent server dead, reconnects with back-off and full
jitter, resumes its session and rooms, and re-sends every `say` not yet acknowledged
with its cid. The decisions live in `chat.client.state` (sans I/O); this module only
applies them.

Each connection is served by five tasks: a reader (every frame stamps liveness), a
writer draining one outbound queue (so frames leave in the order they were queued and
no caller ever waits on the socket), a watchdog (pings and the silence deadline), a
pacer for says (within the server's rate) and one for requests (joins and leaves
within the server's join rate, history requests in line behind them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Any, Final

import aiohttp
import orjson
from aiohttp import WSMsgType

from chat.client.state import (
    RETRYABLE,
    Next,
    Outbox,
    Pacer,
    PendingSay,
    RoomState,
    after_close,
    after_hello_error,
    backoff_delay,
    read_rate,
    retry_after,
    valid_cid,
)
from chat.protocol import ErrorCode

__all__ = ["ChatClient", "ChatClosed", "ChatError", "Event", "RoomState", "backoff_delay"]

logger = logging.getLogger(__name__)

Event = dict[str, Any]

# s for the upgrade and the `welcome`, before the server has told its heartbeat values
CONNECT_TIMEOUT: Final = 10.0
CLOSE_TIMEOUT: Final = 1.0  # s a polite close may take before the socket is dropped
_REQUESTS: Final = ("join", "leave", "history")
_PACED: Final = ("join", "leave")  # what `limits.join_rate` counts
# s (interval, timeout) until `welcome` tells the real ones
_DEFAULT_HEARTBEAT: Final = (10.0, 30.0)


class ChatError(Exception):
    """The server refused a request (`code` is the contract's error code)."""

    def __init__(self, code: str, message: str, frame: Event | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.frame = frame


class ChatClosed(ChatError):
    """The client is closed (by the application, or for good by the server)."""

    def __init__(self, message: str = "the client is closed") -> None:
        super().__init__("closed", message)


@dataclass(frozen=True, slots=True)
class _End:
    """How a connection ended and what comes next."""

    next: Next
    reason: str
    code: int | None = None  # close code, when the server sent one
    error: str | None = None  # error code, when an `error` ended it


@dataclass(slots=True)
class _Request:
    """A join, leave or history request waiting for its reply (replies come in order)."""

    kind: str
    room: str
    frame: Event
    future: asyncio.Future[Event] | None = None


@dataclass(eq=False, slots=True)
class _Link:
    """One WebSocket connection and what is in flight on it."""

    ws: aiohttp.ClientWebSocketResponse
    last_seen: float
    outbound: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)
    fifo: dict[str, deque[_Request]] = field(
        default_factory=lambda: {kind: deque() for kind in _REQUESTS}
    )
    welcomed: asyncio.Event = field(default_factory=asyncio.Event)
    welcome: Event | None = None
    hello: Event | None = None
    hello_retry: asyncio.TimerHandle | None = None  # hello answered `unavailable`
    heartbeat: tuple[float, float] = _DEFAULT_HEARTBEAT  # (interval, timeout), s
    heartbeat_changed: asyncio.Event = field(default_factory=asyncio.Event)
    pacer: Pacer | None = None
    hold_until: float = 0.0  # no say before this loop time (rate_limited, unavailable)
    join_pacer: Pacer | None = None
    # Requests not sent yet, in order: joins and leaves wait for the join pacer, and
    # history requests wait behind the joins of their rooms.
    queued: deque[_Request] = field(default_factory=deque)
    queued_changed: asyncio.Event = field(default_factory=asyncio.Event)
    requests_hold_until: float = 0.0  # no request before this loop time
    joined: set[str] = field(default_factory=set)  # rooms answered `joined` on this link
    close_code: int | None = None
    end: _End | None = None  # set when this side decided to end the connection
    abort: bool = False  # drop the socket without a close handshake

    def send(self, frame: Event) -> None:
        self.outbound.put_nowait(orjson.dumps(frame))


_CLOSED: Final[Event] = {"type": "__end__"}


class ChatClient:
    """A chat session that survives disconnects.

    `session` is an aiohttp session to connect with (one is created and closed here
    when absent); `token` is sent with `hello` (token mode). Reconnect delays are
    ``rng.uniform(0, min(backoff_cap, backoff_base * 2 ** attempt))``.
    """

    def __init__(
        self,
        url: str,
        nick: str,
        *,
        session: aiohttp.ClientSession | None = None,
        token: str | None = None,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        rng: random.Random | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.url = url
        self.nick = nick
        self.token = token
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.connect_timeout = connect_timeout
        self._rng = rng if rng is not None else random.Random()
        self._http = session
        self._own_http = session is None
        self._session_id: str | None = None
        self._rtt: float | None = None
        self._rooms: dict[str, RoomState] = {}
        self._join_waiters: dict[str, list[asyncio.Future[Event]]] = {}
        self._outbox = Outbox()
        self._says: dict[str, asyncio.Future[Event]] = {}
        self._outbox_changed = asyncio.Event()
        self._history: list[_Request] = []  # unanswered, re-sent after a reconnect
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._link: _Link | None = None
        self._runner: asyncio.Task[None] | None = None
        self._first: asyncio.Future[Event] | None = None
        self._welcomed_once = False
        self._closing = False
        self._finished = False

    # ------------------------------------------------------------------ public view

    @property
    def session(self) -> str | None:
        """The chat session id from the last `welcome` (None before the first)."""
        return self._session_id

    @property
    def rooms(self) -> Mapping[str, RoomState]:
        """Rooms joined (or being joined): epoch, highest message id held, members."""
        return MappingProxyType(self._rooms)

    @property
    def rtt(self) -> float | None:
        """Round-trip time of the last ping, in seconds."""
        return self._rtt

    @property
    def connected(self) -> bool:
        return self._link is not None

    @property
    def closed(self) -> bool:
        return self._finished

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> ChatClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> Event:
        """Connect and say hello; the first `welcome`. Retries with back-off until then.

        Raises ChatError when the server refuses for good (nick taken or invalid,
        unauthorized); cancelling it closes the client.
        """
        if self._runner is not None:
            raise RuntimeError("connect() was already called")
        if self._http is None:
            self._http = aiohttp.ClientSession()
        self._first = asyncio.get_running_loop().create_future()
        self._runner = asyncio.create_task(self._run(), name=f"chat-client {self.nick}")
        try:
            return await asyncio.shield(self._first)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close politely and stop reconnecting; unacknowledged says fail with ChatClosed."""
        self._closing = True
        link = self._link
        runner = self._runner
        if link is not None and link.end is None:
            link.end = _End(Next.STOP, "closed by the client")
            with contextlib.suppress(TimeoutError, aiohttp.ClientError, ConnectionError):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await link.ws.close()
        if runner is not None and not runner.done():
            # After a polite close the runner ends by itself; anywhere else (back-off,
            # connecting) it is cancelled.
            await asyncio.wait({runner}, timeout=0 if link is None else CLOSE_TIMEOUT)
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        self._finish(_End(Next.STOP, "closed by the client"))
        if self._own_http and self._http is not None:
            await self._http.close()

    def drop(self) -> None:
        """Drop the connection at once, as a network failure would; the client resumes."""
        link = self._link
        if link is not None and link.end is None:
            link.end = _End(Next.RECONNECT, "dropped by the client")
            _abort(link.ws)

    async def events(self) -> AsyncIterator[Event]:
        """Every event for the application, until (and including) the `closed` status.

        Events are buffered from construction until read; use one consumer.
        """
        while True:
            event = await self._events.get()
            if event is _CLOSED:
                self._events.put_nowait(_CLOSED)  # later iterators end too
                return
            yield event

    # ------------------------------------------------------------------ requests

    async def join(self, room: str) -> Event:
        """Join `room` (kept across reconnects); the `joined` frame."""
        self._check_open()
        state = self._rooms.setdefault(room, RoomState(room))
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._join_waiters.setdefault(room, []).append(future)
        link = self._live_link()
        if link is not None and not any(
            r.kind == "join" and r.room == room for r in (*link.fifo["join"], *link.queued)
        ):
            self._send_request(link, _Request("join", room, state.join_frame()))
        return await future

    async def leave(self, room: str) -> None:
        """Leave `room`; its events stop at once."""
        self._check_open()
        self._rooms.pop(room, None)
        for waiter in self._join_waiters.pop(room, []):
            _fail(waiter, ChatError("left", f"left {room!r} before it was joined"))
        link = self._live_link()
        if link is None:
            # The next `welcome` lists the session's rooms; those not wanted are left then.
            return
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._send_request(link, _Request("leave", room, {"type": "leave", "room": room}, future))
        await future

    async def say(self, room: str, text: str, cid: str | None = None) -> Event:
        """Say `text` in `room`; the `ack` once stored, on whichever connection it comes.

        Cancelling withdraws the say if it has not been sent yet.
        """
        self._check_open()
        cid = uuid.uuid4().hex if cid is None else cid
        if not valid_cid(cid):
            raise ValueError("cid must be 1 to 64 characters")
        future = self._says.get(cid)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            future.add_done_callback(self._say_done)
            self._says[cid] = future
            self._outbox.add(PendingSay(room, text, cid))
            self._outbox_changed.set()
        return await future

    def typing(self, room: str) -> None:
        """Tell the room we are typing (dropped when disconnected)."""
        link = self._live_link()
        if link is not None:
            link.send({"type": "typing", "room": room})

    async def history(self, room: str, before: int | None = None, limit: int = 50) -> Event:
        """A page of older messages: the `history` frame (asked again after a reconnect)."""
        self._check_open()
        frame: Event = {"type": "history", "room": room, "limit": limit}
        if before is not None:
            frame["before"] = before
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        request = _Request("history", room, frame, future)
        self._history.append(request)
        link = self._live_link()
        if link is not None:
            self._send_request(link, request)
        try:
            return await future
        finally:
            if request in self._history:
                self._history.remove(request)

    # ------------------------------------------------------------------ connection loop

    async def _run(self) -> None:
        attempt = 0
        while True:
            end, welcomed = await self._attempt()
            if self._closing:
                return
            if end.next is Next.STOP:
                self._finish(end)
                return
            if welcomed:
                attempt = 0
            if end.next is Next.RECONNECT_SOON:
                delay = self._rng.uniform(0.0, self.backoff_base)
            else:
                delay = backoff_delay(attempt, self.backoff_base, self.backoff_cap, self._rng)
            attempt += 1
            logger.info("reconnecting in %.2fs (%s)", delay, end.reason)
            self._emit({
                "type": "status", "state": "reconnecting", "attempt": attempt,
                "delay": delay, "reason": end.reason, "code": end.code,
            })
            await asyncio.sleep(delay)

    async def _attempt(self) -> tuple[_End, bool]:
        """One connection, from the upgrade until it is over; whether it was welcomed."""
        assert self._http is not None
        try:
            async with asyncio.timeout(self.connect_timeout):
                ws = await self._http.ws_connect(
                    self.url,
                    autoping=True,
                    heartbeat=None,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT),
                )
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            return _End(Next.RECONNECT, f"cannot connect: {err or type(err).__name__}"), False
        link = _Link(ws, asyncio.get_running_loop().time())
        hello: Event = {"type": "hello", "nick": self.nick}
        if self._session_id is not None:
            hello["session"] = self._session_id
        if self.token is not None:
            hello["token"] = self.token
        link.hello = hello
        link.send(hello)
        tasks = [
            asyncio.create_task(self._read(link), name="chat-client-read"),
            asyncio.create_task(self._write(link), name="chat-client-write"),
            asyncio.create_task(self._watch(link), name="chat-client-watch"),
            asyncio.create_task(self._pace(link), name="chat-client-pace"),
            asyncio.create_task(self._pace_requests(link), name="chat-client-requests"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and (failure := task.exception()) is not None:
                    logger.error("connection task failed", exc_info=failure)
        finally:
            if self._link is link:
                self._link = None
            if link.hello_retry is not None:
                link.hello_retry.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await _release(link)
            self._connection_lost(link)
        welcomed = link.welcome is not None
        if link.end is not None:
            return link.end, welcomed
        code = link.close_code
        reason = f"closed by the server ({code})" if code is not None else "connection lost"
        return _End(after_close(code), reason, code), welcomed

    async def _read(self, link: _Link) -> None:
        ws = link.ws
        loop = asyncio.get_running_loop()
        while True:
            msg = await ws.receive()
            link.last_seen = loop.time()
            if msg.type is WSMsgType.TEXT:
                try:
                    frame = orjson.loads(msg.data)
                except orjson.JSONDecodeError:
                    logger.warning("ignoring a frame that is not JSON: %.80r", msg.data)
                    continue
                if not isinstance(frame, dict):
                    continue
                try:
                    self._on_frame(link, frame)
                except (KeyError, TypeError, ValueError) as err:
                    # A frame off the contract is the server's bug, not ours: a warning
                    # without traceback (the terminal shows it only with --verbose); the
                    # next frame may be fine.
                    logger.warning(
                        "ignoring a malformed %.40r frame (%s: %s)",
                        frame.get("type"), type(err).__name__, err,
                    )
                if link.end is not None:
                    return
            elif msg.type is WSMsgType.CLOSE:
                link.close_code = int(msg.data)
                return
            elif msg.type in (WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return

    async def _write(self, link: _Link) -> None:
        try:
            while True:
                data = await link.outbound.get()
                await link.ws.send_frame(data, WSMsgType.TEXT)
        except (ConnectionError, aiohttp.ClientError):
            return  # the reader sees the end too; it knows how it ended

    async def _watch(self, link: _Link) -> None:
        """Ping every `heartbeat.interval`; end the link after `heartbeat.timeout` of silence."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                await link.welcomed.wait()
        except TimeoutError:
            link.end = _End(Next.RECONNECT, "no welcome from the server")
            link.abort = True
            return
        last_ping = loop.time()
        while True:
            # Read every round: a `settings` frame may have changed them (and woken us).
            interval, timeout = link.heartbeat
            now = loop.time()
            silent = now - link.last_seen
            if silent >= timeout:
                logger.warning("server not responding for %.1fs: dropping the connection", silent)
                self._emit({"type": "status", "state": "not_responding", "silent": silent})
                link.end = _End(Next.RECONNECT, "server not responding")
                link.abort = True
                return
            if now >= last_ping + interval:
                link.send({"type": "ping", "t": now})
                last_ping = now
            sleep = min(last_ping + interval, link.last_seen + timeout) - now
            link.heartbeat_changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(sleep):
                    await link.heartbeat_changed.wait()

    async def _pace(self, link: _Link) -> None:
        """Send unacknowledged says in order, within the rate the server announced."""
        loop = asyncio.get_running_loop()
        await link.welcomed.wait()
        assert link.pacer is not None
        while True:
            held = [name for name in self._rooms if name not in link.joined]
            say = self._outbox.next_unsent(held)
            if say is None:
                self._outbox_changed.clear()
                await self._outbox_changed.wait()
                continue
            now = loop.time()
            wait = max(link.hold_until - now, link.pacer.delay(now))
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            link.pacer.take(now)
            say.sent = True
            link.send(say.frame())

    async def _pace_requests(self, link: _Link) -> None:
        """Send queued requests in order; joins and leaves within `limits.join_rate`."""
        loop = asyncio.get_running_loop()
        await link.welcomed.wait()
        assert link.join_pacer is not None
        while True:
            if not link.queued:
                link.queued_changed.clear()
                await link.queued_changed.wait()
                continue
            request = link.queued[0]
            now = loop.time()
            paced = request.kind in _PACED
            wait = max(link.requests_hold_until - now, link.join_pacer.delay(now) if paced else 0.0)
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            link.queued.popleft()
            if request.kind == "join":
                state = self._rooms.get(request.room)
                if state is None:
                    continue  # left before its turn came; its waiters were told
                request.frame = state.join_frame()
            if paced:
                link.join_pacer.take(now)
            link.fifo[request.kind].append(request)
            link.send(request.frame)

    # ------------------------------------------------------------------ frames

    def _on_frame(self, link: _Link, frame: Event) -> None:
        kind = frame.get("type")
        if kind == "message":
            self._on_message(frame)
        elif kind == "ack":
            self._on_ack(frame)
        elif kind == "pong":
            t = frame.get("t")
            if isinstance(t, int | float):
                self._rtt = asyncio.get_running_loop().time() - t
        elif kind == "presence":
            state = self._rooms.get(str(frame.get("room")))
            if state is not None:
                state.on_presence(frame)
                self._emit(frame)
        elif kind == "typing":
            if frame.get("room") in self._rooms:
                self._emit(frame)
        elif kind == "joined":
            self._on_joined(link, frame)
        elif kind == "left":
            self._on_left(link, frame)
        elif kind == "history":
            request = self._pop(link, "history")
            if request is not None and request.future is not None:
                _resolve(request.future, frame)
        elif kind == "error":
            self._on_error(link, frame)
        elif kind == "welcome":
            self._on_welcome(link, frame)
        elif kind == "settings":
            self._on_settings(link, frame)
        else:
            self._emit(frame)

    def _on_welcome(self, link: _Link, frame: Event) -> None:
        loop = asyncio.get_running_loop()
        session = str(frame["session"])
        resumed = session == self._session_id
        self._session_id = session
        self.nick = str(frame.get("nick", self.nick))
        self._welcomed_once = True
        link.welcome = frame
        if link.hello_retry is not None:
            link.hello_retry.cancel()
        link.pacer = Pacer.for_limits(frame.get("limits"), loop.time())
        link.join_pacer = Pacer.for_joins(frame.get("limits"), loop.time())
        link.heartbeat = _read_heartbeat(frame.get("heartbeat")) or _DEFAULT_HEARTBEAT
        self._link = link
        logger.info("connected as %s (%s session)", self.nick, "resumed" if resumed else "new")
        self._emit({
            "type": "status", "state": "connected", "session": session, "nick": self.nick,
            "resumed": resumed,
        })
        # A taken-over session keeps its rooms; leave those the application left meanwhile.
        for room in frame.get("rooms", ()):
            if room not in self._rooms:
                self._send_request(link, _Request("leave", room, {"type": "leave", "room": room}))
        for state in self._rooms.values():
            self._send_request(link, _Request("join", state.name, state.join_frame()))
        # History needs the room joined on this connection: these go after the joins.
        for request in self._history:
            self._send_request(link, request)
        link.welcomed.set()
        self._outbox_changed.set()
        if self._first is not None and not self._first.done():
            self._first.set_result(frame)

    def _on_settings(self, link: _Link, frame: Event) -> None:
        """New heartbeat and limits after the server reloaded its configuration: use them now."""
        heartbeat = _read_heartbeat(frame.get("heartbeat"))
        if heartbeat is not None and heartbeat != link.heartbeat:
            link.heartbeat = heartbeat
            link.heartbeat_changed.set()  # the watchdog re-plans its ping and deadline
        limits = frame.get("limits")
        now = asyncio.get_running_loop().time()
        if link.pacer is not None and read_rate(limits, "rate") is not None:
            fresh = Pacer.for_limits(limits, now)
            link.pacer.retune(fresh.rate, fresh.burst, now)
        if link.join_pacer is not None and read_rate(limits, "join_rate") is not None:
            fresh = Pacer.for_joins(limits, now)
            link.join_pacer.retune(fresh.rate, fresh.burst, now)
        self._emit(frame)

    def _on_joined(self, link: _Link, frame: Event) -> None:
        room = str(frame.get("room"))
        self._pop(link, "join")
        state = self._rooms.get(room)
        if state is None:
            return  # left while the join was on its way
        link.joined.add(room)
        self._outbox_changed.set()  # says held for this room may go now
        previous = state.epoch
        if state.on_joined(frame):
            self._emit({"type": "reset", "room": room, "epoch": state.epoch, "previous": previous})
        # The messages follow as `message` events, each once.
        self._emit({k: v for k, v in frame.items() if k != "messages"})
        for message in frame.get("messages", ()):
            if isinstance(message, dict):
                self._on_message(message)
        for waiter in self._join_waiters.pop(room, []):
            _resolve(waiter, frame)

    def _on_left(self, link: _Link, frame: Event) -> None:
        request = self._pop(link, "leave")
        if request is not None and request.future is not None:
            _resolve(request.future, frame)
        self._emit(frame)

    def _on_message(self, frame: Event) -> None:
        state = self._rooms.get(str(frame.get("room")))
        if state is not None and state.epoch is not None and state.accept(frame):
            self._emit(frame)

    def _on_ack(self, frame: Event) -> None:
        cid = frame.get("cid")
        if not isinstance(cid, str):
            return
        self._outbox.remove(cid)
        future = self._says.pop(cid, None)
        if future is not None:
            _resolve(future, frame)

    def _on_error(self, link: _Link, frame: Event) -> None:
        ref = frame.get("ref")
        code = str(frame.get("code"))
        message = str(frame.get("message", ""))
        loop = asyncio.get_running_loop()
        wait = retry_after(frame)
        if code == ErrorCode.UNAVAILABLE:
            # The server cannot reach its store: whatever was refused is asked again.
            self._emit({"type": "status", "state": "unavailable", "retry_after": wait, "ref": ref})
        if link.welcome is None and ref == "hello":
            if code == ErrorCode.UNAVAILABLE:
                link.hello_retry = loop.call_later(wait, self._resend_hello, link)
                return
            nxt = after_hello_error(code, self._welcomed_once)
            link.end = _End(nxt, f"hello refused: {code}: {message}", error=code)
            if nxt is Next.STOP:
                link.abort = code == ErrorCode.UNAUTHORIZED  # the server closes with 4003 anyway
            return
        if isinstance(ref, str) and ref in self._says:
            if code in RETRYABLE:
                # Kept with its cid, and every say held until then, so the order holds.
                link.hold_until = max(link.hold_until, loop.time() + wait)
                self._outbox.unsend(ref)
                self._outbox_changed.set()
                return
            self._outbox.remove(ref)
            _fail(self._says.pop(ref), ChatError(code, message, frame))
            return
        if ref in _REQUESTS:
            request = self._pop(link, str(ref))
            if request is not None:
                if code in RETRYABLE and self._still_wanted(request):
                    link.queued.appendleft(request)
                    link.requests_hold_until = max(link.requests_hold_until, loop.time() + wait)
                    link.queued_changed.set()
                    return
                self._request_failed(request, ChatError(code, message, frame))
                return
        if code != ErrorCode.UNAVAILABLE:  # already told as a status
            self._emit(frame)

    def _resend_hello(self, link: _Link) -> None:
        link.hello_retry = None
        if link.end is None and link.welcome is None and link.hello is not None:
            link.send(link.hello)

    def _still_wanted(self, request: _Request) -> bool:
        """Whether a request refused for now is still worth asking again."""
        if request.kind == "join":
            return request.room in self._rooms
        if request.kind == "leave":
            return request.room not in self._rooms
        return request in self._history

    def _request_failed(self, request: _Request, error: ChatError) -> None:
        if request.kind == "join":
            # The room cannot be joined (invalid, forbidden, too many): stop wanting it.
            self._rooms.pop(request.room, None)
            self._outbox_changed.set()  # says held for it go, and are refused
            waiters = self._join_waiters.pop(request.room, [])
            for waiter in waiters:
                _fail(waiter, error)
            if not waiters:
                assert error.frame is not None
                self._emit(error.frame)
        elif request.future is not None:
            _fail(request.future, error)
        elif error.frame is not None:
            self._emit(error.frame)

    # ------------------------------------------------------------------ bookkeeping

    def _send_request(self, link: _Link, request: _Request) -> None:
        link.queued.append(request)
        link.queued_changed.set()

    def _pop(self, link: _Link, kind: str) -> _Request | None:
        fifo = link.fifo[kind]
        if not fifo:
            logger.warning("a %s reply that no request of ours asked for", kind)
            return None
        return fifo.popleft()

    def _live_link(self) -> _Link | None:
        link = self._link
        return link if link is not None and link.end is None else None

    def _connection_lost(self, link: _Link) -> None:
        self._outbox.connection_lost()
        # A leave in flight needs no answer: a session that ended left every room, and
        # a taken-over one is told to leave again after `welcome`.
        for request in (*link.fifo["leave"], *link.queued):
            if request.kind == "leave" and request.future is not None:
                _resolve(request.future, {"type": "left", "room": request.room})
        # Joins and history requests go out again on the next connection.

    def _say_done(self, future: asyncio.Future[Event]) -> None:
        if future.cancelled():
            # Withdrawn by the application: an unsent say is never sent; one already
            # sent may still be stored, and its ack then finds nobody waiting.
            for cid, pending in list(self._says.items()):
                if pending is future:
                    del self._says[cid]
                    self._outbox.remove(cid)

    def _check_open(self) -> None:
        if self._finished or self._closing:
            raise ChatClosed()
        if self._runner is None:
            raise RuntimeError("call connect() first")

    def _emit(self, event: Event) -> None:
        if not self._finished:
            self._events.put_nowait(event)

    def _finish(self, end: _End) -> None:
        """Closed for good: fail everything still waiting and end the event stream."""
        if self._finished:
            return
        self._closing = True
        logger.info("client closed: %s", end.reason)
        self._emit({
            "type": "status", "state": "closed", "reason": end.reason, "code": end.code,
            "error": end.error,
        })
        self._finished = True
        self._events.put_nowait(_CLOSED)
        closed = ChatClosed(end.reason)
        if self._first is not None:
            _fail(self._first, ChatError(end.error, end.reason) if end.error else closed)
        for future in self._says.values():
            _fail(future, closed)
        self._says.clear()
        for waiters in self._join_waiters.values():
            for waiter in waiters:
                _fail(waiter, closed)
        self._join_waiters.clear()
        for request in self._history:
            if request.future is not None:
                _fail(request.future, closed)


def _read_heartbeat(value: Any) -> tuple[float, float] | None:
    """(interval, timeout) of a `welcome` or `settings` heartbeat, None when unusable."""
    if not isinstance(value, dict):
        return None
    interval, timeout = value.get("interval"), value.get("timeout")
    if (
        isinstance(interval, int | float) and isinstance(timeout, int | float)
        and not isinstance(interval, bool) and not isinstance(timeout, bool)
        and interval > 0 and timeout > 0
    ):
        return float(interval), float(timeout)
    return None


def _resolve(future: asyncio.Future[Event], frame: Event) -> None:
    if not future.done():
        future.set_result(frame)


def _fail(future: asyncio.Future[Event], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
        # Nobody may be awaiting it any more (a withdrawn request); that is no error.
        future.add_done_callback(lambda f: f.exception())


def _abort(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Drop the TCP connection at once: a dead peer never answers a close handshake."""
    # aiohttp has no public abort for a client WebSocket; reach for the transport.
    response = getattr(ws, "_response", None)
    connection = getattr(response, "connection", None)
    transport = getattr(connection, "transport", None)
    if transport is not None:
        transport.abort()


async def _release(link: _Link) -> None:
    """Close the link's socket: politely unless it is presumed dead, always bounded."""
    if link.abort:
        _abort(link.ws)
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await link.ws.close()
    except (TimeoutError, aiohttp.ClientError, ConnectionError):
        _abort(link.ws)

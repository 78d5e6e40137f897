"""The hub without a socket: Hub + LocalCluster + MemoryHistory driving fake receivers.

Every frame a receiver gets is recorded in order, so each test reads like a transcript.
The clock is injected, and a store whose replay waits for the test shows the join
hand-off (messages stored while a replay is read) step by step.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from chat import protocol
from chat.cluster.local import LocalCluster
from chat.history import Replay
from chat.history.memory import MemoryHistory
from chat.hub import DROPPED, TYPING_EVERY, Dropped, Hub, Seat, Session
from chat.metrics import Metrics
from chat.protocol import Close, ErrorCode, Invalid
from tests.helpers import make_config, within


class FakeReceiver:
    """A connection that records what the hub sends it, as parsed frames.

    Like chat.connection.Connection it owns only the socket side; the hub's bookkeeping
    for it is `seat`, which `Hub.register` sets.
    """

    seat: Seat

    def __init__(self, remote: str = "10.0.0.1") -> None:
        self.id = ""
        self.remote = remote
        self.session: Session | None = None
        self.frame_ceiling = 1 << 20
        self.frames: list[dict[str, Any]] = []
        self.exempt: list[bool] = []  # per frame: sent exempt from the send buffer
        self.ended: tuple[int, str] | None = None  # (code, reason) of abort or close

    @property
    def closing(self) -> bool:
        return self.ended is not None

    def send(self, data: bytes, opcode: Any = None, *, exempt: bool = False) -> None:
        if self.closing:
            return  # as Connection.send: nothing is queued once the end has begun
        self.frames.append(orjson.loads(data))
        self.exempt.append(exempt)

    def abort(self, code: int, reason: str) -> None:
        if self.ended is None:
            self.ended = (code, reason)

    def close(self, code: int, reason: str) -> None:
        self.abort(code, reason)

    def kinds(self) -> list[str]:
        return [frame["type"] for frame in self.frames]

    def take(self) -> list[dict[str, Any]]:
        """The frames received since the last take."""
        frames, self.frames = self.frames, []
        self.exempt = []
        return frames


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class GatedReplayStore(MemoryHistory):
    """A memory store whose next replay, once armed, waits until the test opens the gate."""

    def __init__(self, retain: int) -> None:
        super().__init__(retain)
        self.armed = False
        self.reading = asyncio.Event()  # a gated replay has started
        self.gate = asyncio.Event()

    async def replay(
        self, room: str, since: int | None, client_epoch: str | None, replay: int, recover: int
    ) -> Replay:
        if self.armed:
            self.armed = False
            # Read first, then wait: what is stored meanwhile is newer than the replay.
            answer = await super().replay(room, since, client_epoch, replay, recover)
            self.reading.set()
            await self.gate.wait()
            return answer
        return await super().replay(room, since, client_epoch, replay, recover)


Made = tuple[Hub[FakeReceiver], GatedReplayStore, Clock]


def make_hub(extra: dict[str, Any] | None = None) -> Made:
    config = make_config(extra)
    store = GatedReplayStore(config.history.retain)
    clock = Clock()
    hub: Hub[FakeReceiver] = Hub(config, store, Metrics(), LocalCluster(store, config), clock)
    return hub, store, clock


async def connect(hub: Hub[FakeReceiver], nick: str, session: str | None = None) -> FakeReceiver:
    """A registered receiver whose hello was welcomed (its frames taken)."""
    conn = FakeReceiver()
    hub.register(conn)
    assert await within(hub.hello(conn, protocol.Hello(nick, session, None))) is None
    assert conn.kinds() == ["welcome"]
    conn.take()
    return conn


async def joined(hub: Hub[FakeReceiver], conn: FakeReceiver, room: str) -> dict[str, Any]:
    assert await within(hub.join(conn, protocol.Join(room, None, None))) is None
    frames = [f for f in conn.take() if f["type"] == "joined"]
    assert len(frames) == 1
    return frames[0]


async def say(
    hub: Hub[FakeReceiver], conn: FakeReceiver, room: str, text: str, cid: str | None = None
) -> Invalid | None:
    outcome = await within(hub.say(conn, protocol.Say(room, text, cid)))
    assert not isinstance(outcome, Dropped)
    return outcome


# ------------------------------------------------------------------ sessions


async def test_hello_welcomes_with_a_session_and_settings() -> None:
    """hello answers `welcome` with the session, the normalised nick and the settings."""
    hub, _, _ = make_hub()
    conn = FakeReceiver()
    hub.register(conn)
    assert await hub.hello(conn, protocol.Hello("\uff3aoë", None, None)) is None
    (welcome,) = conn.frames
    assert welcome["type"] == "welcome" and welcome["version"] == protocol.VERSION
    assert (welcome["nick"], welcome["rooms"]) == ("Zoë", [])
    assert welcome["heartbeat"] == {"interval": 0.2, "timeout": 0.6}
    assert conn.session is not None and hub.sessions[welcome["session"]] is conn.session


async def test_nick_taken_and_second_hello_refused() -> None:
    """A held nick (compared casefolded) is nick_taken; a second hello is bad_request."""
    hub, _, _ = make_hub()
    alice = await connect(hub, "alice")
    other = FakeReceiver()
    hub.register(other)
    refused = await hub.hello(other, protocol.Hello("ALICE", None, None))
    assert isinstance(refused, Invalid) and refused.code is ErrorCode.NICK_TAKEN
    again = await hub.hello(alice, protocol.Hello("alice", None, None))
    assert isinstance(again, Invalid) and again.code is ErrorCode.BAD_REQUEST


async def test_release_ends_the_session_and_frees_the_nick() -> None:
    """Releasing a connection tells its rooms `leave` with the reason and frees its nick."""
    hub, _, _ = make_hub()
    alice, bob = await connect(hub, "alice"), await connect(hub, "bob")
    await joined(hub, alice, "lobby")
    await joined(hub, bob, "lobby")
    alice.take()
    assert hub.release(bob, "timeout") is True
    assert hub.release(bob, "timeout") is False  # idempotent
    assert alice.take() == [
        {"type": "presence", "room": "lobby", "event": "leave", "nick": "bob", "reason": "timeout"}
    ]
    assert hub.per_ip == {"10.0.0.1": 1} and bob not in hub.connections
    await connect(hub, "bob")  # the nick is free again


async def test_takeover_closes_the_old_receiver_with_4002() -> None:
    """hello with a held session moves it to the new receiver; the old one gets 4002."""
    hub, _, _ = make_hub()
    old = await connect(hub, "alice")
    await joined(hub, old, "lobby")
    assert old.session is not None
    session = old.session.id
    bob = await connect(hub, "bob")
    await joined(hub, bob, "lobby")
    new = FakeReceiver()
    hub.register(new)
    assert await hub.hello(new, protocol.Hello("alice", session, None)) is None
    (welcome,) = new.take()
    assert (welcome["session"], welcome["rooms"]) == (session, ["lobby"])
    assert old.ended == (Close.REPLACED, "replaced by a newer connection")
    assert old.seat.rooms == set() and new.session is hub.sessions[session]
    # The old receiver's release leaves the session alone: no `leave` for alice.
    bob.take()
    hub.release(old)
    assert bob.take() == []
    assert session in hub.sessions


# ------------------------------------------------------------------ rooms and presence


async def test_join_announces_presence_and_lists_members() -> None:
    """A join sends `joined` with the sorted members; the others get presence `join`."""
    hub, _, _ = make_hub()
    bob, alice = await connect(hub, "bob"), await connect(hub, "Alice")
    await joined(hub, bob, "lobby")
    frame = await joined(hub, alice, "lobby")
    assert frame["members"] == ["Alice", "bob"] and frame["complete"] is True
    assert bob.take() == [{"type": "presence", "room": "lobby", "event": "join", "nick": "Alice"}]
    assert await hub.leave(alice, protocol.Leave("lobby")) is None
    assert alice.take() == [{"type": "left", "room": "lobby"}]
    assert bob.take() == [
        {"type": "presence", "room": "lobby", "event": "leave", "nick": "Alice", "reason": "left"}
    ]
    assert "lobby" not in alice.seat.rooms


async def test_join_refusals() -> None:
    """A bad room name is room_invalid; say in a room not joined is not_joined."""
    hub, _, _ = make_hub({"limits": {"max_rooms": 1}})
    alice = await connect(hub, "alice")
    bad = await hub.join(alice, protocol.Join("Bad Room", None, None))
    assert isinstance(bad, Invalid) and bad.code is ErrorCode.ROOM_INVALID
    await joined(hub, alice, "a")
    full = await hub.join(alice, protocol.Join("b", None, None))
    assert isinstance(full, Invalid) and full.code is ErrorCode.TOO_MANY_ROOMS
    outside = await hub.say(alice, protocol.Say("b", "hi", None))
    assert isinstance(outside, Invalid) and outside.code is ErrorCode.NOT_JOINED
    assert "b" not in hub.rooms  # a refused join leaves no delivery behind


async def test_join_hand_off_holds_messages_stored_during_the_replay() -> None:
    """Messages stored while a replay is read reach the joiner after `joined`, once each."""
    hub, store, _ = make_hub()
    alice, bob = await connect(hub, "alice"), await connect(hub, "bob")
    await joined(hub, alice, "lobby")
    await say(hub, alice, "lobby", "before", "c0")
    store.armed = True
    join = asyncio.ensure_future(hub.join(bob, protocol.Join("lobby", None, None)))
    await within(store.reading.wait())
    # The replay has been read (it holds "before"); these are stored after it.
    await say(hub, alice, "lobby", "during 1", "c1")
    await say(hub, alice, "lobby", "during 2", "c2")
    assert bob.frames == []  # held back: `joined` must come first
    store.gate.set()
    assert await within(join) is None
    frames = bob.take()
    assert [f["type"] for f in frames] == ["joined", "message", "message"]
    assert [m["text"] for m in frames[0]["messages"]] == ["before"]
    assert [f["id"] for f in frames[1:]] == [2, 3]
    # Live delivery goes on from there, once.
    await say(hub, alice, "lobby", "after", "c3")
    assert [(f["type"], f["id"]) for f in bob.take()] == [("message", 4)]


async def test_join_hand_off_drops_what_the_replay_already_holds() -> None:
    """A held live frame whose id the replay already holds is not sent a second time."""
    hub, store, _ = make_hub()
    alice, bob = await connect(hub, "alice"), await connect(hub, "bob")
    await joined(hub, alice, "lobby")
    await say(hub, alice, "lobby", "one", "c1")
    store.armed = True
    join = asyncio.ensure_future(hub.join(bob, protocol.Join("lobby", None, None)))
    await within(store.reading.wait())
    # A feed (Redis) may deliver message 1 late, after the replay that holds it was read.
    late = protocol.message_frame("lobby", 1, "alice", "one", 0, "c1")
    hub.deliver("lobby", late, 1)
    await say(hub, alice, "lobby", "two", "c2")
    store.gate.set()
    await within(join)
    frames = bob.take()
    assert [(f["type"], f.get("id")) for f in frames] == [("joined", None), ("message", 2)]
    assert [m["id"] for m in frames[0]["messages"]] == [1]


async def test_joined_and_held_frames_are_exempt_from_the_send_buffer() -> None:
    """`joined` and the frames released with it are sent exempt; live ones later are not."""
    hub, store, _ = make_hub()
    alice, bob = await connect(hub, "alice"), await connect(hub, "bob")
    await joined(hub, alice, "lobby")
    store.armed = True
    join = asyncio.ensure_future(hub.join(bob, protocol.Join("lobby", None, None)))
    await within(store.reading.wait())
    await say(hub, alice, "lobby", "held", "c1")
    store.gate.set()
    await within(join)
    await say(hub, alice, "lobby", "live", "c2")
    assert bob.kinds() == ["joined", "message", "message"]
    assert bob.exempt == [True, True, False]


# ------------------------------------------------------------------ say


async def test_say_acks_then_broadcasts_to_every_member() -> None:
    """say acks the sender, then every member (the sender too) gets the message."""
    hub, _, _ = make_hub()
    alice, bob = await connect(hub, "alice"), await connect(hub, "bob")
    await joined(hub, alice, "lobby")
    await joined(hub, bob, "lobby")
    alice.take()
    assert await say(hub, alice, "lobby", "hi", "c1") is None
    ack, message = alice.take()
    assert (ack["type"], ack["cid"], ack["id"]) == ("ack", "c1", 1)
    assert message == {**message, "type": "message", "id": 1, "nick": "alice", "text": "hi"}
    assert bob.take() == [message]


async def test_say_with_a_repeated_cid_is_acked_once_stored_once() -> None:
    """A repeated cid gets the original's ack and is neither stored nor broadcast again."""
    hub, store, _ = make_hub()
    alice, bob = await connect(hub, "alice"), await connect(hub, "bob")
    await joined(hub, alice, "lobby")
    await joined(hub, bob, "lobby")
    alice.take()
    await say(hub, alice, "lobby", "hi", "c1")
    first_ack = alice.take()[0]
    bob.take()
    await say(hub, alice, "lobby", "hi again", "c1")
    assert alice.take() == [first_ack]
    assert bob.take() == []
    assert await store.rooms() == {"lobby": 1}


async def test_say_rate_limited_but_a_repeat_still_acked() -> None:
    """Past the burst a say is rate_limited; a re-sent cid is still answered with its ack."""
    hub, _, clock = make_hub({"limits": {"rate": {"messages": 1, "per": 1, "burst": 1}}})
    alice = await connect(hub, "alice")
    await joined(hub, alice, "lobby")
    await say(hub, alice, "lobby", "one", "c1")
    ack = alice.take()[0]
    limited = await say(hub, alice, "lobby", "two", "c2")
    assert isinstance(limited, Invalid) and limited.code is ErrorCode.RATE_LIMITED
    assert limited.retry_after == pytest.approx(1.0)
    assert await say(hub, alice, "lobby", "one", "c1") is None
    assert alice.take() == [ack]
    clock.now += 1.0  # the bucket refills with the injected clock
    assert await say(hub, alice, "lobby", "two", "c2") is None


async def test_say_refuses_bad_text() -> None:
    """Empty or over-long text is refused before the store is asked."""
    hub, store, _ = make_hub({"limits": {"max_text": 5}})
    alice = await connect(hub, "alice")
    await joined(hub, alice, "lobby")
    empty = await say(hub, alice, "lobby", "  ")
    long = await say(hub, alice, "lobby", "123456")
    assert isinstance(empty, Invalid) and empty.code is ErrorCode.TEXT_INVALID
    assert isinstance(long, Invalid) and long.code is ErrorCode.TEXT_TOO_LONG
    assert await store.rooms() == {}


# ------------------------------------------------------------------ typing


async def test_typing_is_relayed_to_the_others_at_most_once_a_second() -> None:
    """typing reaches the other members; within TYPING_EVERY a repeat is dropped."""
    hub, _, clock = make_hub()
    alice, bob = await connect(hub, "alice"), await connect(hub, "bob")
    await joined(hub, alice, "lobby")
    await joined(hub, bob, "lobby")
    alice.take()
    assert await hub.typing(alice, protocol.Typing("lobby")) is None
    assert bob.take() == [{"type": "typing", "room": "lobby", "nick": "alice"}]
    assert alice.take() == []  # not echoed to the typist
    clock.now += TYPING_EVERY / 2
    assert await hub.typing(alice, protocol.Typing("lobby")) is DROPPED
    assert bob.take() == []
    clock.now += TYPING_EVERY / 2
    assert await hub.typing(alice, protocol.Typing("lobby")) is None
    assert bob.kinds() == ["typing"]


# ------------------------------------------------------------------ history and loss


async def test_history_pages_back() -> None:
    """history answers a page of older messages with `more`."""
    hub, _, _ = make_hub()
    alice = await connect(hub, "alice")
    await joined(hub, alice, "lobby")
    for n in range(3):
        await say(hub, alice, "lobby", f"m{n}")
    alice.take()
    assert await hub.history(alice, protocol.HistoryRequest("lobby", 3, 1)) is None
    (page,) = alice.take()
    assert (page["type"], [m["id"] for m in page["messages"]], page["more"]) == (
        "history", [2], True
    )


async def test_lost_room_aborts_its_receivers_with_1011() -> None:
    """When the cluster loses a room, its receivers end with 1011 and the others stay."""
    hub, _, _ = make_hub()
    alice, bob = await connect(hub, "alice"), await connect(hub, "bob")
    await joined(hub, alice, "lobby")
    await joined(hub, bob, "den")
    hub.lost("room feed lost", "lobby")
    assert alice.ended == (Close.INTERNAL, "room feed lost")
    assert bob.ended is None and alice.seat.rooms == set()


async def test_seat_holds_the_bookkeeping_and_goes_with_the_connection() -> None:
    """Rooms, typing times and both rate buckets live on the seat; release drops them."""
    hub, _, _ = make_hub()
    alice = await connect(hub, "alice")
    await joined(hub, alice, "lobby")
    await say(hub, alice, "lobby", "hi")
    assert await hub.typing(alice, protocol.Typing("lobby")) is None
    seat = alice.seat
    assert (seat.rooms, list(seat.typing_at), seat.pending) == ({"lobby"}, ["lobby"], {})
    assert hub.rate_buckets() == ([seat.say_bucket], [seat.join_bucket])
    assert hub.release(alice)
    assert seat.rooms == set() and hub.rate_buckets() == ([], []) and not hub.rooms

"""History: what only the SQLite backend does (files, restarts, batching, migrations).

What every backend does is in test_store_contract.py.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from chat.app import create_app
from chat.history import HistoryOpenError, HistoryStore, Message, NewMessage
from chat.history import sqlite as sqlite_backend
from chat.history.sqlite import MIGRATIONS, SqliteHistory
from tests.helpers import DEADLINE, Peer, append, epoch_of, fill, ids, make_config, within

OpenSqlite = Callable[..., Awaitable[SqliteHistory]]


@pytest.fixture
async def opened() -> AsyncIterator[list[HistoryStore]]:
    """Stores a test opened; closed at teardown."""
    stores: list[HistoryStore] = []
    yield stores
    for store in reversed(stores):
        await within(store.close())


@pytest.fixture
def sqlite_store(tmp_path: Path, opened: list[HistoryStore]) -> OpenSqlite:
    """Open a SqliteHistory on `name` in tmp_path (default chat.db)."""

    async def make(retain: int = 100, name: str = "chat.db") -> SqliteHistory:
        store = SqliteHistory(str(tmp_path / name), retain)
        await within(store.open())
        opened.append(store)
        return store

    return make




async def reopen(store: SqliteHistory, retain: int | None = None) -> SqliteHistory:
    """Close a store and open a new one on its file (a server restart)."""
    await within(store.close())
    again = SqliteHistory(store.path, store.retain if retain is None else retain)
    await within(again.open())
    return again


# --------------------------------------------------------------------------- restarts


async def test_ids_continue_after_reopen(sqlite_store: OpenSqlite) -> None:
    """After close and reopen, a room's ids continue where they stopped."""
    store = await sqlite_store()
    await fill(store, "lobby", 3)
    store = await reopen(store)
    try:
        assert (await append(store, "lobby", "after"))[0].id == 4
        assert ids((await within(store.page("lobby", None, 10))).messages) == [1, 2, 3, 4]
        assert await within(store.rooms()) == {"lobby": 4}
    finally:
        await within(store.close())


async def test_dedup_survives_reopen(sqlite_store: OpenSqlite) -> None:
    """A cid stored before a restart is found, and not stored again, after it."""
    store = await sqlite_store()
    original, _ = await append(store, "lobby", "hi", "c1")
    store = await reopen(store)
    try:
        assert await within(store.find("lobby", "alice", "c1")) == original
        assert await append(store, "lobby", "again", "c1") == (original, False)
        assert await within(store.rooms()) == {"lobby": 1}
    finally:
        await within(store.close())


async def test_epoch_stable_across_reopen_and_new_per_file(sqlite_store: OpenSqlite) -> None:
    """The epoch belongs to the file: equal after reopen, different for another file."""
    store = await sqlite_store()
    epoch = store.epoch
    assert epoch and await epoch_of(store) == epoch
    other = await sqlite_store(name="other.db")
    assert other.epoch != epoch
    store = await reopen(store)
    try:
        assert store.epoch == epoch
        assert await epoch_of(store) == epoch
    finally:
        await within(store.close())


async def test_recovery_across_reopen_is_complete(sqlite_store: OpenSqlite) -> None:
    """A client's (epoch, since) from before a restart recovers exactly what followed."""
    store = await sqlite_store()
    await fill(store, "lobby", 3)
    epoch = store.epoch
    store = await reopen(store)
    try:
        await fill(store, "lobby", 2)
        got = await within(store.replay("lobby", 2, epoch, 50, 500))
        assert (ids(got.messages), got.complete, got.last_id) == ([3, 4, 5], True, 5)
    finally:
        await within(store.close())


async def test_retention_across_reopen(sqlite_store: OpenSqlite) -> None:
    """Retention keeps holding after a restart, also with a smaller retain."""
    store = await sqlite_store(retain=3)
    await fill(store, "lobby", 5)
    store = await reopen(store)
    try:
        await fill(store, "lobby", 1)
        assert ids((await within(store.page("lobby", None, 10))).messages) == [4, 5, 6]
    finally:
        store = await reopen(store, retain=2)
    try:
        assert (await append(store, "lobby", "m7"))[0].id == 7
        assert ids((await within(store.page("lobby", None, 10))).messages) == [6, 7]
    finally:
        await within(store.close())


async def test_ids_continue_when_retention_left_nothing(sqlite_store: OpenSqlite) -> None:
    """ids continue from the rooms table even when no message of the room is stored."""
    store = await sqlite_store()
    await fill(store, "lobby", 3)
    await within(store.close())
    with sqlite3.connect(store.path) as db:
        db.execute("DELETE FROM messages")
    db.close()
    store = SqliteHistory(store.path, 100)
    await within(store.open())
    try:
        replay = await within(store.replay("lobby", 1, store.epoch, 50, 500))
        assert (replay.messages, replay.complete, replay.last_id) == ([], False, 3)
        assert (await append(store, "lobby", "next"))[0].id == 4
    finally:
        await within(store.close())


CRASH_SCRIPT = """
import asyncio, os, sys
from chat.history import NewMessage
from chat.history.sqlite import SqliteHistory

async def main():
    store = SqliteHistory(sys.argv[1], 100)
    await store.open()
    for n in range(3):
        await store.append(NewMessage("lobby", "alice", "alice", f"m{n}", f"c{n}", n))
    os._exit(0)  # no close: what was acknowledged must already be in the file

asyncio.run(main())
"""


async def test_acknowledged_messages_survive_process_crash(tmp_path: Path) -> None:
    """Messages acknowledged by a process that then dies without closing are stored."""
    path = str(tmp_path / "chat.db")
    await within(asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", CRASH_SCRIPT, path], check=True, timeout=DEADLINE
    ))
    store = SqliteHistory(path, 100)
    await within(store.open())
    try:
        page = await within(store.page("lobby", None, 10))
        assert [m.text for m in page.messages] == ["m0", "m1", "m2"]
        assert (await append(store, "lobby", "next"))[0].id == 4
    finally:
        await within(store.close())


# --------------------------------------------------------------------------- group commit


async def test_group_commit_orders_and_batches(sqlite_store: OpenSqlite) -> None:
    """200 appends at once get ids 1..200, return in id order, in far fewer commits."""
    store = await sqlite_store(retain=1000)
    order: list[int] = []

    async def say(n: int) -> None:
        message, new = await store.append(
            NewMessage("lobby", "alice", "alice", f"m{n}", f"c{n}", n)
        )
        assert new
        order.append(message.id)

    await within(asyncio.gather(*(say(n) for n in range(200))))
    assert order == list(range(1, 201))
    assert store.commits <= 10
    assert ids((await within(store.page("lobby", None, 100))).messages) == list(range(101, 201))


async def test_large_batch_with_repeats_across_rooms(sqlite_store: OpenSqlite) -> None:
    """A batch larger than one statement, with re-sent cids inside it and from the file."""
    store = await sqlite_store(retain=5000)
    await append(store, "a", "stored before", cid="old")
    says = []
    for n in range(1300):
        room = "ab"[n % 2]
        says.append(store.append(NewMessage(room, "alice", "alice", f"m{n}", f"c{n // 3}", n)))
    says.append(store.append(NewMessage("a", "alice", "alice", "again", "old", 0)))
    results = await within(asyncio.gather(*says))
    new = [m for m, created in results if created]
    # c{k} is said 3 times (n = 3k, 3k+1, 3k+2): once per room it lands in first.
    by_room = {room: sorted(m.id for m in new if m.room == room) for room in "ab"}
    assert by_room["a"] == list(range(2, 2 + len(by_room["a"])))
    assert by_room["b"] == list(range(1, 1 + len(by_room["b"])))
    for message, created in results:
        if not created:
            assert message.cid is not None
    assert results[-1][0].text == "stored before" and results[-1][1] is False
    stored = await within(store.rooms())
    assert stored == {"a": len(by_room["a"]) + 1, "b": len(by_room["b"])}


class HeldWrites:
    """Holds the database thread inside its next write until `release()`."""

    def __init__(self, store: SqliteHistory) -> None:
        self._entered = threading.Event()
        self._gate = threading.Event()
        write = store._db.write

        def held(batch: Any) -> Any:
            self._entered.set()
            if not self._gate.wait(DEADLINE):
                raise RuntimeError("the test never released the write")
            return write(batch)

        store._db.write = held  # type: ignore[method-assign]

    async def entered(self) -> None:
        """Wait until the thread is inside a write (its batch is taken)."""
        assert await asyncio.to_thread(self._entered.wait, DEADLINE)

    def release(self) -> None:
        self._gate.set()


async def queued(store: SqliteHistory, appends: int) -> None:
    """Wait until `appends` appends wait in the queue for the next round."""
    async def wait() -> None:
        # The queue has no event to wait on; `within` bounds the polling.
        while len(store._appends) < appends:  # noqa: ASYNC110
            await asyncio.sleep(0)

    await within(wait())


async def test_appends_during_a_commit_join_the_next_batch(sqlite_store: OpenSqlite) -> None:
    """Appends made while a batch commits are stored by the next commit, in order."""
    store = await sqlite_store()
    held = HeldWrites(store)
    first = asyncio.ensure_future(store.append(
        NewMessage("lobby", "alice", "alice", "one", None, 1)
    ))
    await held.entered()
    later = [
        asyncio.ensure_future(store.append(NewMessage("lobby", "alice", "alice", f"m{n}", None, n)))
        for n in range(5)
    ]
    await queued(store, 5)
    held.release()
    results = await within(asyncio.gather(first, *later))
    assert [m.id for m, _ in results] == [1, 2, 3, 4, 5, 6]
    assert store.commits == 2


async def test_append_of_a_gone_sender_is_not_stored(sqlite_store: OpenSqlite) -> None:
    """An append cancelled before its batch is taken stores nothing and uses no id."""
    store = await sqlite_store()
    held = HeldWrites(store)
    first = asyncio.ensure_future(store.append(
        NewMessage("lobby", "alice", "alice", "first", None, 1)
    ))
    await held.entered()
    calls: list[Message] = []
    gone = asyncio.ensure_future(
        store.append(
            NewMessage("lobby", "alice", "alice", "gone", "c1", 1), lambda m, _: calls.append(m)
        )
    )
    await queued(store, 1)
    gone.cancel()
    held.release()
    assert (await within(first))[0].id == 1
    message, _ = await append(store, "lobby", "kept")
    assert gone.cancelled()
    assert message.id == 2
    assert await within(store.find("lobby", "alice", "c1")) is None
    assert calls == []


async def test_taken_append_is_stored_and_announced_though_its_caller_is_gone(
    sqlite_store: OpenSqlite,
) -> None:
    """Once the thread has taken a message it is stored, and `stored` runs for it."""
    store = await sqlite_store()
    held = HeldWrites(store)
    announced = asyncio.Event()
    calls: list[tuple[int, bool]] = []

    def stored(message: Message, created: bool) -> None:
        calls.append((message.id, created))
        announced.set()

    caller = asyncio.ensure_future(
        store.append(NewMessage("lobby", "alice", "alice", "last words", "c1", 1), stored)
    )
    await held.entered()
    caller.cancel()
    held.release()
    await within(announced.wait())
    assert calls == [(1, True)]
    assert caller.cancelled()
    found = await within(store.find("lobby", "alice", "c1"))
    assert found is not None and found.text == "last words"


async def test_many_appenders_are_all_answered(sqlite_store: OpenSqlite) -> None:
    """Appends queued while the thread takes its batch are never lost between rounds."""
    # A short switch interval makes the loop and the database thread interleave at many
    # more points; an append once went into a list the thread had already taken and
    # waited forever.
    store = await sqlite_store(retain=10_000)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        async def sender(n: int) -> list[int]:
            got = []
            for k in range(60):
                message, new = await store.append(
                    NewMessage(f"r{n % 4}", f"n{n}", f"n{n}", "text", f"c{k}", k)
                )
                assert new
                got.append(message.id)
                for _ in range(n % 3):
                    await asyncio.sleep(0)
            return got

        results = await within(asyncio.gather(*(sender(n) for n in range(40))))
    finally:
        sys.setswitchinterval(interval)
    for room in range(4):
        said = sorted(i for n, got in enumerate(results) if n % 4 == room for i in got)
        assert said == list(range(1, 601))
    assert store.commits < 2400


async def test_repeat_of_a_stored_cid_among_new_messages(sqlite_store: OpenSqlite) -> None:
    """A batch holding a re-sent cid stores the rest with consecutive ids, all at once."""
    store = await sqlite_store()
    original, _ = await append(store, "lobby", "first", "c1")
    held = HeldWrites(store)
    blocker = asyncio.ensure_future(store.append(
        NewMessage("other", "alice", "alice", "x", None, 1)
    ))
    await held.entered()
    batch = [
        asyncio.ensure_future(store.append(NewMessage("lobby", "alice", "alice", "a", "c2", 2))),
        asyncio.ensure_future(store.append(
            NewMessage("lobby", "alice", "alice", "first", "c1", 3)
        )),
        asyncio.ensure_future(store.append(NewMessage("lobby", "alice", "alice", "b", None, 4))),
    ]
    await queued(store, 3)
    held.release()
    await within(blocker)
    results = await within(asyncio.gather(*batch))
    assert [(m.id, new) for m, new in results] == [(2, True), (1, False), (3, True)]
    assert results[1][0] == original
    assert await within(store.rooms()) == {"lobby": 3, "other": 1}


async def test_failed_commit_fails_the_batch(sqlite_store: OpenSqlite) -> None:
    """When a batch cannot be stored every append in it fails, and ids do not skip."""
    store = await sqlite_store()
    await append(store, "lobby", "before")
    await within(store.close())
    with sqlite3.connect(store.path) as db:
        db.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON messages WHEN NEW.text = 'boom'"
            " BEGIN SELECT RAISE(ABORT, 'boom refused'); END"
        )
    db.close()
    store = SqliteHistory(store.path, 100)
    await within(store.open())
    try:
        held = HeldWrites(store)
        blocker = asyncio.ensure_future(store.append(
            NewMessage("third", "alice", "alice", "x", None, 0)
        ))
        await held.entered()
        calls: list[Message] = []
        batch = [
            asyncio.ensure_future(store.append(
                NewMessage(room, "alice", "alice", text, cid, 1), lambda m, _: calls.append(m)
            ))
            for room, text, cid in [("lobby", "fine", "c1"), ("lobby", "boom", "c2"),
                                    ("other", "fine", "c3")]
        ]
        await queued(store, 3)
        held.release()
        assert (await within(blocker))[0].id == 1
        results = await within(asyncio.gather(*batch, return_exceptions=True))
        assert all(isinstance(r, sqlite3.IntegrityError) for r in results), results
        assert calls == []  # nothing stored, nothing announced
        assert await within(store.find("lobby", "alice", "c1")) is None
        assert await within(store.check()) == "ok"
        message, new = await append(store, "lobby", "after", "c1")
        assert (message.id, new) == (2, True)
        assert (await append(store, "other", "after"))[0].id == 1
        assert await within(store.rooms()) == {"lobby": 2, "other": 1, "third": 1}
    finally:
        await within(store.close())


async def test_close_stores_what_is_queued(sqlite_store: OpenSqlite) -> None:
    """close() waits for queued appends to be stored and acknowledged."""
    store = await sqlite_store()
    pending = [
        asyncio.ensure_future(store.append(NewMessage("lobby", "alice", "alice", f"m{n}", None, n)))
        for n in range(20)
    ]
    await asyncio.sleep(0)
    await within(store.close())
    assert all(task.done() and not task.cancelled() for task in pending)
    assert [task.result()[0].id for task in pending] == list(range(1, 21))
    with pytest.raises(RuntimeError):
        await within(store.append(NewMessage("lobby", "alice", "alice", "late", None, 1)))
    assert await within(store.check()) == "not open"
    store = await reopen(store)
    try:
        assert await within(store.rooms()) == {"lobby": 20}
    finally:
        await within(store.close())


# --------------------------------------------------------------------------- opening


async def open_error(path: Path) -> HistoryOpenError:
    store = SqliteHistory(str(path), 100)
    with pytest.raises(HistoryOpenError) as info:
        await within(store.open())
    assert await within(store.check()) == "not open"
    return info.value


async def test_open_garbage_file(tmp_path: Path) -> None:
    """A file that is not a database is refused with one line naming it."""
    path = tmp_path / "chat.db"
    path.write_bytes(b"this is certainly not an sqlite database\n" * 200)
    err = await open_error(path)
    assert str(err) == f"{path}: cannot open history database: file is not a database"
    assert path.read_bytes().startswith(b"this is certainly not")  # left untouched


def damage_page(path: Path, page: int, page_size: int = 4096) -> None:
    """Overwrite one page of a database file (page 0 holds the header) with junk."""
    data = bytearray(path.read_bytes())
    assert len(data) >= (page + 1) * page_size
    data[page * page_size : (page + 1) * page_size] = bytes(range(256)) * (page_size // 256)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("page", [1, 2, 3, 4, 8, 16, 17])
async def test_open_damaged_file(sqlite_store: OpenSqlite, page: int) -> None:
    """A store file with a damaged page is refused at open as malformed."""
    store = await sqlite_store()
    for n in range(300):
        await append(store, f"room{n % 3}", "x" * 200, f"c{n}")
    await within(store.close())
    path = Path(store.path)
    damage_page(path, page)
    err = await open_error(path)
    assert str(err).startswith(f"{path}: cannot open history database: ")
    assert "malformed" in str(err)


async def test_open_missing_directory(tmp_path: Path) -> None:
    """A path in a directory that does not exist is refused, naming the path."""
    path = tmp_path / "missing" / "chat.db"
    err = await open_error(path)
    assert str(err).startswith(f"{path}: cannot open history database: directory ")
    assert "does not exist" in str(err)
    assert not path.parent.exists()


async def test_open_directory(tmp_path: Path) -> None:
    """A path that is a directory is refused."""
    err = await open_error(tmp_path)
    assert str(err) == f"{tmp_path}: cannot open history database: is a directory"


async def test_open_locked_by_another_writer(tmp_path: Path) -> None:
    """A file held by another connection's exclusive transaction is refused fast."""
    path = tmp_path / "chat.db"
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("CREATE TABLE other (x)")
        holder.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        err = await open_error(path)
        assert time.monotonic() - started < 5
        assert str(err).startswith(f"{path}: cannot open history database: database is locked")
    finally:
        holder.close()


async def test_open_refused_while_another_store_holds_the_file(sqlite_store: OpenSqlite) -> None:
    """A second server on the same file is refused: it would hand out the same ids."""
    store = await sqlite_store()
    await append(store, "lobby", "hi")
    err = await open_error(Path(store.path))
    assert "database is locked" in str(err)
    assert (await append(store, "lobby", "still mine"))[0].id == 2


async def test_open_newer_schema(tmp_path: Path) -> None:
    """A file written by a newer schema version is refused, not downgraded."""
    path = tmp_path / "chat.db"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.close()
    err = await open_error(path)
    assert "newer" in str(err)


async def test_migration_upgrades_empty_file(tmp_path: Path) -> None:
    """A database at user_version 0 with no tables gets the schema, WAL and an epoch."""
    path = tmp_path / "chat.db"
    sqlite3.connect(path).close()
    store = SqliteHistory(str(path), 100)
    await within(store.open())
    try:
        assert store.epoch
        assert (await append(store, "lobby", "hi"))[0].id == 1
    finally:
        await within(store.close())
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
    db.close()
    assert {"meta", "rooms", "messages", "messages_cid"} <= tables


async def test_version_1_file_is_upgraded(tmp_path: Path) -> None:
    """A file made by the first schema keeps its history and ids after the upgrade."""
    path = tmp_path / "chat.db"
    with sqlite3.connect(path) as db:
        for statement in MIGRATIONS[0]:
            db.execute(statement)
        db.execute("PRAGMA user_version = 1")
        db.execute(
            "INSERT INTO messages (room, id, nick, key, text, ts, cid)"
            " VALUES ('lobby', 7, 'alice', 'alice', 'old', 1, 'c7')"
        )
        db.execute("INSERT INTO rooms (room, last_id) VALUES ('lobby', 7)")
    db.close()
    store = SqliteHistory(str(path), 100)
    await within(store.open())
    try:
        assert (await append(store, "lobby", "old", "c7"))[0].id == 7  # still deduplicated
        assert (await append(store, "lobby", "new"))[0].id == 8
        assert (await append(store, "fresh", "new"))[0].id == 1
    finally:
        await within(store.close())
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
        # The trigger keeps rooms.last_id, so the next open continues the ids.
        assert dict(db.execute("SELECT room, last_id FROM rooms")) == {"lobby": 8, "fresh": 1}
    db.close()


async def test_later_migration_upgrades_existing_file(
    sqlite_store: OpenSqlite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A migration added later runs once on an existing file and keeps its data."""
    store = await sqlite_store()
    await append(store, "lobby", "hi")
    epoch = store.epoch
    await within(store.close())
    monkeypatch.setattr(
        sqlite_backend, "MIGRATIONS",
        [*MIGRATIONS, ("CREATE TABLE extra (x)", "INSERT INTO extra VALUES (1)")],
    )
    store = await reopen(store)
    store = await reopen(store)  # a second open has nothing left to apply
    try:
        assert store.epoch == epoch
        assert (await append(store, "lobby", "again"))[0].id == 2
    finally:
        await within(store.close())
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS) + 1,)
        assert db.execute("SELECT x FROM extra").fetchall() == [(1,)]
    db.close()


async def test_failed_migration_leaves_file_unchanged(
    sqlite_store: OpenSqlite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A migration that fails applies none of its statements and keeps the version."""
    store = await sqlite_store()
    await within(store.close())
    monkeypatch.setattr(
        sqlite_backend, "MIGRATIONS",
        [*MIGRATIONS, ("CREATE TABLE extra (x)", "THIS IS NOT SQL")],
    )
    err = await open_error(Path(store.path))
    assert "syntax error" in str(err)
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
        assert db.execute("SELECT name FROM sqlite_master WHERE name = 'extra'").fetchone() is None
    db.close()


# --------------------------------------------------------------------------- through the app


async def test_commits_are_measured_in_metrics(aiohttp_client: Any, tmp_path: Path) -> None:
    """/metrics shows how long SQLite commits take and how many messages each stores."""
    config = make_config({"history": {"backend": "sqlite", "path": str(tmp_path / "chat.db")}})
    client: TestClient[Any, Any] = await aiohttp_client(create_app(config))
    alice = Peer(await client.ws_connect("/ws"))
    await alice.hello("alice")
    await alice.join("lobby")
    await alice.say("lobby", "one", cid="c1")
    await alice.say("lobby", "two", cid="c2")
    await alice.say("lobby", "one, re-sent", cid="c1")  # a commit with nothing new
    text = await (await client.get("/metrics")).text()
    assert "chat_history_commit_seconds_count 3.0" in text
    assert 'chat_history_commit_messages_bucket{le="1.0"} 3.0' in text
    assert "chat_history_commit_messages_sum 3.0" in text


async def test_app_history_survives_restart(aiohttp_client: Any, tmp_path: Path) -> None:
    """Through the app: history, ids and cid dedup outlive a server restart."""
    config = make_config({"history": {"backend": "sqlite", "path": str(tmp_path / "chat.db")}})

    first: TestClient[Any, Any] = await aiohttp_client(create_app(config))
    alice = Peer(await first.ws_connect("/ws"))
    await alice.hello("alice")
    joined = await alice.join("lobby")
    epoch = joined["epoch"]
    assert (await alice.say("lobby", "one", cid="c1"))["id"] == 1
    assert (await alice.say("lobby", "two", cid="c2"))["id"] == 2
    await alice.ws.close()
    await first.close()  # shuts the app down: the store is closed

    second: TestClient[Any, Any] = await aiohttp_client(create_app(config))
    bob = Peer(await second.ws_connect("/ws"))
    await bob.hello("bob")
    fresh = await bob.join("lobby")
    assert fresh["epoch"] == epoch
    assert [(m["id"], m["text"]) for m in fresh["messages"]] == [(1, "one"), (2, "two")]
    alice = Peer(await second.ws_connect("/ws"))
    await alice.hello("alice")
    recovered = await alice.join("lobby", since=1, epoch=epoch)
    assert ([m["id"] for m in recovered["messages"]], recovered["complete"]) == ([2], True)
    await bob.expect("presence", event="join", nick="alice")

    ack = await alice.say("lobby", "one, re-sent", cid="c1")
    assert (ack["id"], ack["cid"]) == (1, "c1")
    assert await bob.quiet(0.3) == []
    ack = await alice.say("lobby", "three", cid="c3")
    assert ack["id"] == 3
    message = await bob.expect("message", room="lobby")
    assert (message["id"], message["text"], message["cid"]) == (3, "three", "c3")

    resp = await asyncio.wait_for(second.get("/api/rooms"), DEADLINE)
    assert next(r for r in await resp.json() if r["room"] == "lobby")["last_id"] == 3
    resp = await asyncio.wait_for(second.get("/readyz"), DEADLINE)
    assert (await resp.json())["backends"]["history"] == "ok"
    await alice.ws.close()
    await bob.ws.close()



async def test_live_database_can_be_backed_up(sqlite_store: OpenSqlite, tmp_path: Path) -> None:
    """SQLite's online backup copies the file while the server holds it open."""
    store = await sqlite_store()
    await fill(store, "lobby", 5)
    copy = tmp_path / "copy.db"
    source = sqlite3.connect(store.path)
    target = sqlite3.connect(copy)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()
    await fill(store, "lobby", 1)  # the live store goes on writing
    check = sqlite3.connect(copy)
    try:
        rows = check.execute("SELECT id FROM messages WHERE room = 'lobby' ORDER BY id")
        assert [row[0] for row in rows] == [1, 2, 3, 4, 5]
    finally:
        check.close()

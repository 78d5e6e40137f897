"""The SQLite history backend: one file that keeps every room's history across restarts.

Every statement runs on one dedicated thread that owns the only connection, so the event
loop never blocks on the disk, and each trip to that thread is one function: a read never
sees a write half done, and a batch of appends is one transaction.

Appends are group-committed: `append` queues the message and waits; a single worker task
takes everything queued, and in one trip numbers it, stores it in one transaction, commits,
then runs the reads queued with it. Back on the loop it answers the appends in id order
(the hub broadcasts right after each answer, so that is the order members receive), then
the reads. Whatever arrives meanwhile goes into the next round.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import logging
import os
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar, cast

from chat.history import HistoryOpenError, Message, Page, Replay, plan_replay

logger = logging.getLogger(__name__)

# Each migration takes the file from version i (its index) to i + 1; the version lives in
# PRAGMA user_version. They run in order inside one transaction, so an upgrade either
# completes or leaves the file as it was. Append new steps; never edit old ones.
MIGRATIONS: Final[list[tuple[str, ...]]] = [
    (
        # The epoch names this file's history; it is created with the file and never
        # changes, so clients recover across restarts.
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
        "INSERT INTO meta (key, value) VALUES ('epoch', lower(hex(randomblob(16))))",
        # The newest id ever given in each room, kept even when retention has deleted
        # every message, so ids never start over.
        "CREATE TABLE rooms (room TEXT PRIMARY KEY, last_id INTEGER NOT NULL) WITHOUT ROWID",
        # Clustered by (room, id): replay, paging and retention are range scans of one room.
        """CREATE TABLE messages (
            room TEXT NOT NULL,
            id INTEGER NOT NULL,
            nick TEXT NOT NULL,
            key TEXT NOT NULL,
            text TEXT NOT NULL,
            ts INTEGER NOT NULL,
            cid TEXT,
            PRIMARY KEY (room, id)
        ) WITHOUT ROWID""",
        # A re-sent say is found by (room, key, cid), and can never be stored twice.
        "CREATE UNIQUE INDEX messages_cid ON messages (room, key, cid) WHERE cid IS NOT NULL",
    ),
]

# Durability: WAL with synchronous=FULL fsyncs the log at every commit, so an
# acknowledged message survives a process crash and a power loss (as far as the disk
# honours fsync). NORMAL would skip that fsync: still safe against a process crash, but
# the last commits could vanish on power loss after their ack was sent. Group commit pays
# one fsync per batch, not per message, which is what makes FULL affordable.
SYNCHRONOUS: Final = "FULL"
# Opening takes the write lock; another process holding the file makes it fail this fast.
OPEN_BUSY_TIMEOUT: Final = 1.0  # s
BUSY_TIMEOUT_MS: Final = 5000
CHECK_TIMEOUT: Final = 2.0  # s a readiness check waits for the database thread
_MAX_ID: Final = 2**63 - 1  # SQLite's largest integer: a `before` past it bounds nothing

_COLUMNS: Final = "room, id, nick, text, ts, cid"
# Rows per multi-row statement: 7 variables each stays far below SQLite's limit (32766).
_ROWS_PER_STATEMENT: Final = 500

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class _Append:
    room: str
    nick: str
    key: str
    text: str
    cid: str | None
    ts: int


@dataclass(frozen=True, slots=True)
class _Failed:
    """A read that raised, carried back from the database thread."""

    error: Exception


_QueuedAppend = tuple[_Append, asyncio.Future[tuple[Message, bool]]]
_QueuedRead = tuple[Callable[[], Any], asyncio.Future[Any]]


def _message(row: Sequence[Any]) -> Message:
    room, msg_id, nick, text, ts, cid = row
    return Message(room, msg_id, nick, text, ts, cid)


class _Database:
    """The connection and the id cache; every method runs on the database thread."""

    def __init__(self, path: str, retain: int) -> None:
        self.path = path
        self.retain = retain
        self.epoch = ""
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        # room -> newest id committed; loaded from `rooms` the first time a room is written.
        # Only this process writes the file (it holds the lock), so the cache stays true.
        self._last_ids: dict[str, int] = {}

    @property
    def conn(self) -> sqlite3.Connection:
        assert self._conn is not None, "database not open"
        return self._conn

    def open(self) -> None:
        self._last_ids.clear()
        file = Path(self.path)
        if not file.parent.is_dir():
            raise HistoryOpenError(self.path, f"directory {str(file.parent)!r} does not exist")
        if file.is_dir():
            raise HistoryOpenError(self.path, "is a directory")
        self._lock()
        try:
            conn = sqlite3.connect(self.path, timeout=OPEN_BUSY_TIMEOUT, isolation_level=None)
        except (sqlite3.Error, ValueError) as err:
            self._unlock()
            raise HistoryOpenError(self.path, _reason(err)) from None
        try:
            self._prepare(conn)
        except (sqlite3.Error, ValueError) as err:
            conn.close()
            self._unlock()
            raise HistoryOpenError(self.path, _reason(err)) from None
        except HistoryOpenError:
            conn.close()
            self._unlock()
            raise
        self._conn = conn

    def _lock(self) -> None:
        # A second server on the same file would keep its own id cache and hand out the
        # same ids, so it is refused at open. The lock is a separate file rather than
        # SQLite's EXCLUSIVE locking mode so that other readers (`sqlite3 chat.db
        # ".backup copy.db"`) can still copy the live database.
        lock_path = f"{self.path}.lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            reason = f"cannot create {lock_path}: {err.strerror}"
            raise HistoryOpenError(self.path, reason) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise HistoryOpenError(
                self.path, f"database is locked by another server ({lock_path})"
            ) from None
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def _prepare(self, conn: sqlite3.Connection) -> None:
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if str(mode).lower() != "wal":
            raise HistoryOpenError(self.path, f"cannot use WAL journal mode (got {mode})")
        conn.execute(f"PRAGMA synchronous = {SYNCHRONOUS}")
        # Taking the write lock here makes a file held by another writer fail fast.
        conn.execute("BEGIN IMMEDIATE")
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version > len(MIGRATIONS):
                raise HistoryOpenError(
                    self.path,
                    f"schema version {version} is newer than this program's "
                    f"({len(MIGRATIONS)})",
                )
            for step in MIGRATIONS[version:]:
                for statement in step:
                    conn.execute(statement)
            if version != len(MIGRATIONS):
                conn.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
            row = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
            if row is None:
                raise HistoryOpenError(self.path, "no epoch in the meta table")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        # Reads every page once (about 0.3 s per 170 MB warm): a damaged file is refused
        # at start, not discovered by the first sender whose batch touches the bad page.
        problems = [str(problem) for (problem,) in conn.execute("PRAGMA quick_check(3)")]
        if problems != ["ok"]:
            raise HistoryOpenError(
                self.path, "database disk image is malformed: " + "; ".join(problems)
            )
        self.epoch = str(row[0])
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()  # the last connection checkpoints the WAL into the file
            self._conn = None
        self._unlock()

    def check(self) -> None:
        self.conn.execute("SELECT 1").fetchone()

    def round(
        self, batch: Sequence[_Append], reads: Sequence[Callable[[], Any]]
    ) -> tuple[list[tuple[Message, bool]] | Exception, list[Any]]:
        """Store `batch` (or the error that stopped it), then run `reads` (or their errors)."""
        written: list[tuple[Message, bool]] | Exception = []
        if batch:
            try:
                written = self.write(batch)
            except Exception as err:
                written = err
        read: list[Any] = []
        for fn in reads:
            try:
                read.append(fn())
            except Exception as err:
                read.append(_Failed(err))
        return written, read

    # ----------------------------------------------------------------- writes

    def write(self, batch: Sequence[_Append]) -> list[tuple[Message, bool]]:
        """Store a batch in one transaction; one answer per item, in order.

        Raises (and stores nothing, and leaves the id cache as it was) if any part fails.
        """
        conn = self.conn
        last_ids: dict[str, int] = {}  # this batch's new newest ids, kept only on commit
        results: list[tuple[Message, bool]] = []
        rows: list[tuple[str, int, str, str, str, int, str | None]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            # A handful of statements per batch, not several per message: each statement
            # hands the GIL back and forth with the event loop, and that handover, not
            # SQLite, is what costs under load.
            seen = self._originals(batch)  # re-sent says already in the file
            for item in batch:
                dedup = None if item.cid is None else (item.room, item.key, item.cid)
                if dedup is not None and (original := seen.get(dedup)) is not None:
                    results.append((original, False))  # in the file, or earlier in the batch
                    continue
                last = last_ids.get(item.room)
                msg_id = last_ids[item.room] = (
                    self._last_id(item.room) if last is None else last
                ) + 1
                message = Message(item.room, msg_id, item.nick, item.text, item.ts, item.cid)
                if dedup is not None:
                    seen[dedup] = message
                rows.append(
                    (item.room, msg_id, item.nick, item.key, item.text, item.ts, item.cid)
                )
                results.append((message, True))
            for chunk in _chunks(rows, _ROWS_PER_STATEMENT):
                conn.execute(
                    "INSERT INTO messages (room, id, nick, key, text, ts, cid) VALUES "
                    + ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * len(chunk)),
                    [value for row in chunk for value in row],
                )
            # Retention: a primary-key range per room written, no scan of the table.
            # Trimming once per batch keeps the same newest `retain` as trimming per row.
            for room, last in last_ids.items():
                if last > self.retain:
                    conn.execute(
                        "DELETE FROM messages WHERE room = ? AND id <= ?",
                        (room, last - self.retain),
                    )
            if last_ids:
                conn.execute(
                    "INSERT INTO rooms (room, last_id) VALUES "
                    + ", ".join(["(?, ?)"] * len(last_ids))
                    + " ON CONFLICT (room) DO UPDATE SET last_id = excluded.last_id",
                    [value for pair in last_ids.items() for value in pair],
                )
            conn.execute("COMMIT")
        except BaseException:
            # SQLite has already rolled back after some errors (disk full, I/O).
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    logger.exception("rollback failed on %s", self.path)
            raise
        self._last_ids.update(last_ids)
        return results

    def _originals(self, batch: Sequence[_Append]) -> dict[tuple[str, str, str], Message]:
        """Stored messages whose (room, key, cid) a say of the batch repeats: one query."""
        wanted = sorted({(i.room, i.key, i.cid) for i in batch if i.cid is not None})
        found: dict[tuple[str, str, str], Message] = {}
        for chunk in _chunks(wanted, _ROWS_PER_STATEMENT):
            values = ", ".join(["(?, ?, ?)"] * len(chunk))
            for row in self.conn.execute(
                f"SELECT m.room, m.id, m.nick, m.text, m.ts, m.cid, m.key"
                f" FROM (VALUES {values}) AS w JOIN messages AS m"
                f" ON m.room = w.column1 AND m.key = w.column2 AND m.cid = w.column3",
                [part for key in chunk for part in key],
            ):
                found[(row[0], row[6], row[5])] = _message(row[:6])
        return found

    def _last_id(self, room: str) -> int:
        last = self._last_ids.get(room)
        if last is None:
            row = self.conn.execute("SELECT last_id FROM rooms WHERE room = ?", (room,)).fetchone()
            # Read before this batch touched the room: a committed value, safe to cache.
            last = self._last_ids[room] = 0 if row is None else int(row[0])
        return last

    # ----------------------------------------------------------------- reads

    def _find(self, room: str, key: str, cid: str) -> Message | None:
        row = self.conn.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE room = ? AND key = ? AND cid = ?",
            (room, key, cid),
        ).fetchone()
        return None if row is None else _message(row)

    def find(self, room: str, key: str, cid: str) -> Message | None:
        return self._find(room, key, cid)

    def replay(self, room: str, since: int | None, client_epoch: str | None, count: int) -> Replay:
        conn = self.conn
        row = conn.execute("SELECT last_id FROM rooms WHERE room = ?", (room,)).fetchone()
        last_id = 0 if row is None else int(row[0])
        (first,) = conn.execute("SELECT MIN(id) FROM messages WHERE room = ?", (room,)).fetchone()
        first_id = last_id + 1 if first is None else int(first)
        plan = plan_replay(since, client_epoch, self.epoch, first_id, last_id, count)
        if plan.newest is None:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE room = ? AND id > ? ORDER BY id",
                (room, plan.after),
            ).fetchall()
        else:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE room = ? AND id > ?"
                " ORDER BY id DESC LIMIT ?",
                (room, plan.after, plan.newest),
            ).fetchall()
            rows.reverse()
        return Replay(self.epoch, [_message(r) for r in rows], plan.complete, last_id)

    def page(self, room: str, before: int | None, limit: int) -> Page:
        bound = _MAX_ID if before is None else min(before, _MAX_ID)
        # One row more than asked says whether older messages are still stored.
        rows = self.conn.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE room = ? AND id < ?"
            " ORDER BY id DESC LIMIT ?",
            (room, bound, limit + 1),
        ).fetchall()
        more = len(rows) > limit
        kept = rows[:limit]
        kept.reverse()
        return Page([_message(r) for r in kept], more)

    def rooms(self) -> dict[str, int]:
        rows = self.conn.execute("SELECT room, last_id FROM rooms WHERE last_id > 0").fetchall()
        return {str(room): int(last_id) for room, last_id in rows}


def _chunks(items: Sequence[_T], size: int) -> list[Sequence[_T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _reason(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    if text == "database is locked":
        text += " (is another server using it?)"
    return text


class SqliteHistory:
    """A `HistoryStore` in one SQLite file: acknowledged messages survive restarts."""

    def __init__(self, path: str, retain: int) -> None:
        self.path = path
        self.retain = retain
        self.epoch = ""  # known once open
        self.commits = 0  # batches committed (for tests and the benchmark)
        self._db = _Database(path, retain)
        self._executor: ThreadPoolExecutor | None = None
        self._appends: list[_QueuedAppend] = []
        self._reads: list[_QueuedRead] = []
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._closing = False

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        if self._executor is None:
            raise RuntimeError(f"{self.path}: history store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _ensure_open(self) -> None:
        if self._worker is None or self._worker.done() or self._closing:
            raise RuntimeError(f"{self.path}: history store is not open")

    async def open(self) -> None:
        """Open or create the file, upgrade its schema; raises `HistoryOpenError`."""
        if self._executor is not None:
            raise RuntimeError(f"{self.path}: history store already open")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chat-sqlite")
        try:
            await self._run(self._db.open)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise
        self.epoch = self._db.epoch
        self._closing = False
        self._worker = asyncio.create_task(self._work(), name="sqlite-history")

    async def close(self) -> None:
        """Store everything already queued, then close the file."""
        if self._executor is None:
            return
        self._closing = True
        self._wakeup.set()
        try:
            if self._worker is not None:
                await self._worker
        finally:
            self._worker = None
            try:
                await self._run(self._db.close)
            finally:
                self._executor.shutdown(wait=False)
                self._executor = None

    async def check(self) -> str:
        if self._executor is None or self._closing:
            return "not open"
        if self._worker is None or self._worker.done():
            return "stopped"
        try:
            await asyncio.wait_for(self._run(self._db.check), CHECK_TIMEOUT)
        except TimeoutError:
            return f"no answer within {CHECK_TIMEOUT:g} s"
        except sqlite3.Error as err:
            return str(err) or type(err).__name__
        return "ok"

    async def append(
        self, room: str, nick: str, key: str, text: str, cid: str | None, ts: int
    ) -> tuple[Message, bool]:
        self._ensure_open()
        future: asyncio.Future[tuple[Message, bool]] = asyncio.get_running_loop().create_future()
        self._appends.append((_Append(room, nick, key, text, cid, ts), future))
        self._wakeup.set()
        return await future

    async def _read(self, fn: Callable[..., _T], *args: Any) -> _T:
        self._ensure_open()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._reads.append((functools.partial(fn, *args), future))
        self._wakeup.set()
        return cast(_T, await future)

    async def find(self, room: str, key: str, cid: str) -> Message | None:
        return await self._read(self._db.find, room, key, cid)

    async def replay(
        self, room: str, since: int | None, client_epoch: str | None, replay: int
    ) -> Replay:
        return await self._read(self._db.replay, room, since, client_epoch, replay)

    async def page(self, room: str, before: int | None, limit: int) -> Page:
        return await self._read(self._db.page, room, before, limit)

    async def rooms(self) -> dict[str, int]:
        return await self._read(self._db.rooms)

    # ----------------------------------------------------------------- the worker

    # Reads go through the same rounds as writes, for this invariant: a reader never sees
    # a message before its sender has been answered. The hub broadcasts as `append`
    # returns, and a join keeps the live messages that arrive while its replay is read
    # only when their id is above the replay's last_id; a replay that saw a message whose
    # broadcast came later still would deliver it twice. A round answers its appends
    # before its reads, and futures wake their waiters in the order they were answered.

    async def _work(self) -> None:
        try:
            while True:
                if not self._appends and not self._reads:
                    if self._closing:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                # A sender that is gone (its connection closed) gets no ack and no
                # broadcast: storing its message would leave a gap the room never sees.
                appends = [(item, f) for item, f in self._appends if not f.done()]
                reads = [(fn, f) for fn, f in self._reads if not f.done()]
                self._appends, self._reads = [], []
                await self._round(appends, reads)
        finally:
            # Reached with work queued only when torn down: nobody may wait forever.
            stopped = RuntimeError(f"{self.path}: history store stopped")
            _fail(self._appends, stopped)
            _fail(self._reads, stopped)
            self._appends, self._reads = [], []

    async def _round(self, appends: list[_QueuedAppend], reads: list[_QueuedRead]) -> None:
        """One trip to the database thread: the appends in one transaction, then the reads."""
        try:
            written, read = await self._run(
                self._db.round, [item for item, _ in appends], [fn for fn, _ in reads]
            )
        except BaseException as err:
            # Torn down mid-round, or the thread is gone: the batch may or may not be
            # stored; its senders get no ack and re-send by cid.
            failure = err if isinstance(err, Exception) else RuntimeError(
                f"{self.path}: history store stopped"
            )
            _fail(appends, failure)
            _fail(reads, failure)
            raise
        if isinstance(written, Exception):
            # Nothing of the batch is stored; every sender hears of it (the hub closes
            # those connections with 1011 and their clients re-send by cid).
            logger.error("storing %d message(s) in %s failed: %s", len(appends), self.path, written)
            _fail(appends, written)
        elif appends:
            self.commits += 1
            # In id order: each sender resumes, acks and broadcasts in this order.
            for (_, future), result in zip(appends, written, strict=True):
                if not future.done():
                    future.set_result(result)
        for (_, future), outcome in zip(reads, read, strict=True):
            if future.done():
                continue
            if isinstance(outcome, _Failed):
                future.set_exception(outcome.error)
            else:
                future.set_result(outcome)


def _fail(queued: Sequence[tuple[Any, asyncio.Future[Any]]], err: Exception) -> None:
    for _, future in queued:
        if not future.done():
            future.set_exception(err)

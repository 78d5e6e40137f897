"""The SQLite history backend: one file that keeps every room's history across restarts.

Every statement runs on one dedicated thread that owns the only connection, so the event
loop never blocks on the disk, and each trip to that thread is one function: a read never
sees a write half done, and a batch of appends is one transaction.

Appends are group-committed: `append` queues the message and waits; the database thread
takes everything queued, and in one round numbers it, stores it in one transaction,
commits, then runs the reads queued with it. Back on the loop the appends are answered in
id order (the hub acks and broadcasts in each answer's `stored` callback, so that is the
order members receive), then the reads. Whatever arrives meanwhile goes into the next
round, which the thread starts at once.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar, cast

from chat.history import (
    HistoryOpenError,
    Message,
    NewMessage,
    Page,
    Replay,
    Stored,
    announce,
    plan_replay,
)

logger = logging.getLogger(__name__)


class DatabaseOpenError(HistoryOpenError):
    """The database file cannot be used; ``str(err)`` is one line naming the file."""

    what = "history database"

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
    (
        # rooms.last_id follows every insert within the inserting statement, so a batch
        # is stored by one statement (see `_Database.write`).
        """CREATE TRIGGER messages_last_id AFTER INSERT ON messages BEGIN
            INSERT INTO rooms (room, last_id) VALUES (NEW.room, NEW.id)
            ON CONFLICT (room) DO UPDATE SET last_id = max(last_id, excluded.last_id);
        END""",
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
# Readiness writes a committed probe at most this often while commits work (each is an
# fsync); while they fail it probes on every check, which costs nothing on the disk.
PROBE_INTERVAL: Final = 1.0  # s
# Bytes the database's file system must have free for /readyz to say commits will work.
# A probe alone cannot tell: it may commit into WAL space allocated before the disk
# filled. The next commit needs room for one say at the largest frame the server reads
# (64 KiB of text, stored as a row plus overflow pages), its index and `rooms` pages and
# a 24-byte header per 4 KiB WAL frame: under 100 KiB; four frames' worth leaves room for
# a small group commit and the -shm file's growth, and is nothing on a real disk.
FREE_FLOOR: Final = 256 * 1024
_MAX_ID: Final = 2**63 - 1  # SQLite's largest integer: a `before` past it bounds nothing

_COLUMNS: Final = "room, id, nick, text, ts, cid"
# Rows per multi-row statement: 7 variables each stays far below SQLite's limit (32766).
_ROWS_PER_STATEMENT: Final = 500

_T = TypeVar("_T")
_ROW_VALUES: Final = 7  # values per messages row: room, id, nick, key, text, ts, cid


@dataclass(frozen=True, slots=True)
class _Failed:
    """A read that raised, carried back from the database thread."""

    error: Exception


_QueuedAppend = tuple[NewMessage, asyncio.Future[tuple[Message, bool]], Stored | None]
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
            raise DatabaseOpenError(self.path, f"directory {str(file.parent)!r} does not exist")
        if file.is_dir():
            raise DatabaseOpenError(self.path, "is a directory")
        self._lock()
        try:
            conn = sqlite3.connect(self.path, timeout=OPEN_BUSY_TIMEOUT, isolation_level=None)
        except (sqlite3.Error, ValueError) as err:
            self._unlock()
            raise DatabaseOpenError(self.path, _reason(err)) from None
        try:
            self._prepare(conn)
        except (sqlite3.Error, ValueError) as err:
            conn.close()
            self._unlock()
            raise DatabaseOpenError(self.path, _reason(err)) from None
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
            raise DatabaseOpenError(self.path, reason) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise DatabaseOpenError(
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
            raise DatabaseOpenError(self.path, f"cannot use WAL journal mode (got {mode})")
        conn.execute(f"PRAGMA synchronous = {SYNCHRONOUS}")
        # Taking the write lock here makes a file held by another writer fail fast.
        conn.execute("BEGIN IMMEDIATE")
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version > len(MIGRATIONS):
                raise DatabaseOpenError(
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
                raise DatabaseOpenError(self.path, "no epoch in the meta table")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        # Reads every page once (about 0.3 s per 170 MB warm): a damaged file is refused
        # at start, not discovered by the first sender whose batch touches the bad page.
        problems = [str(problem) for (problem,) in conn.execute("PRAGMA quick_check(3)")]
        if problems != ["ok"]:
            raise DatabaseOpenError(
                self.path, "database disk image is malformed: " + "; ".join(problems)
            )
        self.epoch = str(row[0])
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # Retention: each insert trims its room to the newest `retain` by a primary-key
        # range (no scan of the table). A TEMP trigger lives with this connection only,
        # so `retain` comes from the current config, not from whoever made the file.
        retain = int(self.retain)
        conn.execute(
            f"""CREATE TEMP TRIGGER messages_retain AFTER INSERT ON main.messages
            WHEN NEW.id > {retain} BEGIN
                DELETE FROM messages WHERE room = NEW.room AND id <= NEW.id - {retain};
            END"""
        )

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()  # the last connection checkpoints the WAL into the file
            self._conn = None
        self._unlock()

    def check(self, probe: bool) -> str | None:
        """Why a commit cannot work now (None: it can); `probe` commits a tiny write
        rather than only reading. Raises `sqlite3.Error` when SQLite refuses."""
        lacking = _room_lacking(self.path, os.geteuid() == 0)
        if lacking is not None:
            return lacking
        if probe:
            self.probe()
        else:
            self.conn.execute("SELECT 1").fetchone()
        return None

    def probe(self) -> None:
        """A tiny write, committed: whether the file takes commits again."""
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES ('probe', ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(time.time()),),
        )

    def round(
        self, batch: Sequence[NewMessage], reads: Sequence[Callable[[], Any]]
    ) -> tuple[list[tuple[Message, bool]] | Exception, float, list[Any]]:
        """Store `batch` (or the error that stopped it), then run `reads` (or their errors).

        Also returns the seconds storing the batch took.
        """
        written: list[tuple[Message, bool]] | Exception = []
        started = time.perf_counter()
        if batch:
            try:
                written = self.write(batch)
            except Exception as err:
                written = err
        took = time.perf_counter() - started
        read: list[Any] = []
        for fn in reads:
            try:
                read.append(fn())
            except Exception as err:
                read.append(_Failed(err))
        return written, took, read

    # ----------------------------------------------------------------- writes

    def write(self, batch: Sequence[NewMessage]) -> list[tuple[Message, bool]]:
        """Store a batch atomically; one answer per item, in order.

        Raises (and stores nothing, and leaves the id cache as it was) if any part fails.
        """
        # Every statement releases the GIL while SQLite works and must win it back from
        # the busy event loop afterwards; under load that handover, not SQLite, is most
        # of a round's time. So the common case is one statement: re-sent says are rare,
        # so the batch is first numbered as if it had none and stored by a single INSERT
        # that is its own transaction (triggers keep rooms.last_id and retention). If a
        # cid was already stored, the unique index refuses that statement whole, and the
        # batch is stored again the careful way, with the originals looked up first.
        if len(batch) <= _ROWS_PER_STATEMENT:
            values, results, last_ids = self._number(batch, {})
            try:
                self._insert(values)
            except sqlite3.IntegrityError:
                pass  # a repeated cid, or a real constraint failure the next try reports
            else:
                self._last_ids.update(last_ids)
                return results
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            values, results, last_ids = self._number(batch, self._originals(batch))
            for chunk in _chunks(values, _ROWS_PER_STATEMENT * _ROW_VALUES):
                self._insert(chunk)
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

    def _number(
        self, batch: Sequence[NewMessage], originals: dict[tuple[str, str, str], Message]
    ) -> tuple[list[Any], list[tuple[Message, bool]], dict[str, int]]:
        """Give each new message of `batch` the next id of its room.

        `originals` are stored messages that says of the batch repeat; a repeat within
        the batch gets the message its first copy made. Returns the rows to insert (their
        values one after another, in column order: what the INSERT binds), the answers in
        batch order, and each room's newest id once they are stored.
        """
        # Runs on the database thread holding the GIL, which the busy event loop is
        # waiting for: one flat list of values (no tuple per row, no flattening after).
        seen = dict(originals) if originals else None
        last_ids: dict[str, int] = {}
        results: list[tuple[Message, bool]] = []
        values: list[Any] = []
        add = values.extend
        for item in batch:
            room = item.room
            cid = item.cid
            dedup = None if cid is None else (room, item.key, cid)
            if seen is not None and dedup is not None and (original := seen.get(dedup)) is not None:
                results.append((original, False))
                continue
            last = last_ids.get(room)
            msg_id = last_ids[room] = (self._last_id(room) if last is None else last) + 1
            message = Message(room, msg_id, item.nick, item.text, item.ts, cid)
            if dedup is not None:
                if seen is None:
                    seen = {}
                seen[dedup] = message
            add((room, msg_id, item.nick, item.key, item.text, item.ts, cid))
            results.append((message, True))
        return values, results, last_ids

    def _insert(self, values: Sequence[Any]) -> None:
        if values:
            self.conn.execute(_insert_sql(len(values) // _ROW_VALUES), values)

    def _originals(self, batch: Sequence[NewMessage]) -> dict[tuple[str, str, str], Message]:
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

    def replay(
        self, room: str, since: int | None, client_epoch: str | None, count: int, recover: int
    ) -> Replay:
        conn = self.conn
        row = conn.execute("SELECT last_id FROM rooms WHERE room = ?", (room,)).fetchone()
        last_id = 0 if row is None else int(row[0])
        (first,) = conn.execute("SELECT MIN(id) FROM messages WHERE room = ?", (room,)).fetchone()
        first_id = last_id + 1 if first is None else int(first)
        plan = plan_replay(since, client_epoch, self.epoch, first_id, last_id, count, recover)
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

    def rooms(self, after: str | None, limit: int | None) -> dict[str, int]:
        # A range of the primary key: a page costs the same however many rooms exist.
        # Both sides compare names by code point (SQLite's BINARY collation of UTF-8).
        rows = self.conn.execute(
            "SELECT room, last_id FROM rooms WHERE room > ? AND last_id > 0 ORDER BY room"
            " LIMIT ?",
            ("" if after is None else after, -1 if limit is None else limit),
        ).fetchall()
        return {str(room): int(last_id) for room, last_id in rows}


@functools.lru_cache(maxsize=_ROWS_PER_STATEMENT)
def _insert_sql(rows: int) -> str:
    """The INSERT of `rows` rows (built once per size; SQLite's statement cache keys on it)."""
    return "INSERT INTO messages (room, id, nick, key, text, ts, cid) VALUES " + ", ".join(
        ["(?, ?, ?, ?, ?, ?, ?)"] * rows
    )


def _chunks(items: Sequence[_T], size: int) -> list[Sequence[_T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _room_lacking(path: str, root: bool) -> str | None:
    """Why the file system holding `path` cannot take a commit, or None: read-only, or
    fewer than FREE_FLOOR bytes free (for root counting the blocks reserved for root,
    which ext4 lets it write)."""
    try:
        fs = os.statvfs(Path(path).parent)
    except OSError as err:
        return f"cannot stat the database's file system: {err.strerror}"
    if fs.f_flag & os.ST_RDONLY:
        return "read-only file system"
    free = (fs.f_bfree if root else fs.f_bavail) * fs.f_frsize
    if free < FREE_FLOOR:
        return f"disk full: {free} bytes free, commits need {FREE_FLOOR}"
    return None


def probe_due(now: float, last_ok: float | None, failing: bool) -> bool:
    """Whether a readiness check commits a probe: always while commits fail (so the
    first check after the cause is gone finds out), else once per PROBE_INTERVAL."""
    return failing or last_ok is None or now - last_ok >= PROBE_INTERVAL


def _reason(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    if text == "database is locked":
        text += " (is another server using it?)"
    return text


class SqliteHistory:
    """A `HistoryStore` in one SQLite file: acknowledged messages survive restarts."""

    instant = False  # every write and read goes through the database thread

    def __init__(
        self,
        path: str,
        retain: int,
        on_commit: Callable[[int, float], None] | None = None,
    ) -> None:
        self.path = path
        self.retain = retain
        self.epoch = ""  # known once open
        self.commits = 0  # batches committed (for tests and the benchmark)
        # Why the last commit failed, until one succeeds again: readiness reports it.
        self._write_error: str | None = None
        # Readiness probes: when one last committed (monotonic), and whether the last failed.
        self._probed_at: float | None = None
        self._probe_failed = False
        # Told (messages, seconds) of every commit, on the loop: the app's metrics.
        self._on_commit = on_commit
        self._db = _Database(path, retain)
        # Guards the two queues, `_idle` and `_closing`. The loop holds it only to queue one
        # item, the database thread only to take both queues whole, so neither waits long.
        self._lock = threading.Lock()
        self._appends: list[_QueuedAppend] = []
        self._reads: list[_QueuedRead] = []
        self._closing = False
        # The thread waits on the bell only when it found nothing to do (`_idle`), and the
        # loop rings it only then: one wake-up per idle spell, not one per message.
        self._bell: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._idle = False
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Future[None] | None = None  # done once the thread has ended
        # The loop the thread answers on, kept from `open` (see Flusher: a lookup per say
        # would be a getpid() each on Python 3.11).
        self._loop: asyncio.AbstractEventLoop | None = None

    async def open(self) -> None:
        """Open or create the file, upgrade its schema; raises `HistoryOpenError`."""
        if self._thread is not None:
            raise RuntimeError(f"{self.path}: history store already open")
        loop = asyncio.get_running_loop()
        opened: asyncio.Future[None] = loop.create_future()
        self._loop = loop
        self._stopped = loop.create_future()
        self._closing = False
        # A daemon: if the process exits without close(), the thread dies like a crash
        # would kill it, which the file survives (an ack is only sent after commit).
        self._thread = threading.Thread(
            target=self._serve, args=(loop, opened), name="chat-sqlite", daemon=True
        )
        self._thread.start()
        try:
            await opened
        except BaseException:
            # Refused, or cancelled while opening: the thread closes whatever it opened.
            self._stop()
            self._thread = None
            raise
        self.epoch = self._db.epoch

    async def close(self) -> None:
        """Store everything already queued, then close the file."""
        if self._thread is None or self._stopped is None:
            return
        self._stop()
        await asyncio.shield(self._stopped)
        self._thread = None

    def _stop(self) -> None:
        with self._lock:
            self._closing = True
        self._bell.put(None)

    async def check(self) -> str:
        if self._thread is None:
            return "not open"
        if not self._thread.is_alive():
            return "stopped"
        if self._closing:
            return "closing"
        # Reading works on a full disk or a read-only file, so the check looks at the file
        # system's free space and flags, and commits a probe now and then: a file system
        # turned read-only (ext4 after an error) shows no flag, only failing writes.
        failed = self._write_error
        now = time.monotonic()
        probe = probe_due(now, self._probed_at, failed is not None or self._probe_failed)
        try:
            lacking = await asyncio.wait_for(self._read(self._db.check, probe), CHECK_TIMEOUT)
        except TimeoutError:
            return f"no answer within {CHECK_TIMEOUT:g} s"
        except sqlite3.Error as err:
            reason = str(err) or type(err).__name__
            if not probe:
                return reason
            self._probe_failed = True
            return f"cannot commit: {reason}"
        except RuntimeError:  # closed or stopped meanwhile
            return "stopped"
        if lacking is not None:
            return lacking
        if probe:
            self._probed_at, self._probe_failed = now, False
            if failed is not None and self._write_error == failed:
                self._write_error = None  # the probe committed: so will the next batch
        return "ok"

    def _future(self) -> asyncio.Future[Any]:
        loop = self._loop
        if loop is None:
            raise RuntimeError(f"{self.path}: history store is not open")
        return loop.create_future()

    def _queue(self, append: _QueuedAppend | None, read: _QueuedRead | None) -> None:
        with self._lock:
            # Checked under the lock the thread takes its last work with: nothing can be
            # queued after the thread has ended and wait forever.
            if self._thread is None or self._closing:
                raise RuntimeError(f"{self.path}: history store is not open")
            # The lists are looked up under the lock too: the thread swaps them for empty
            # ones, and an item added to a list it has already taken would be lost.
            if append is not None:
                self._appends.append(append)
            if read is not None:
                self._reads.append(read)
            ring, self._idle = self._idle, False
        if ring:
            self._bell.put(None)

    async def append(self, new: NewMessage, stored: Stored | None = None) -> tuple[Message, bool]:
        future: asyncio.Future[tuple[Message, bool]] = self._future()
        self._queue((new, future, stored), None)
        return await future

    async def _read(self, fn: Callable[..., _T], *args: Any) -> _T:
        future: asyncio.Future[Any] = self._future()
        self._queue(None, (functools.partial(fn, *args), future))
        return cast(_T, await future)

    async def find(self, room: str, key: str, cid: str) -> Message | None:
        return await self._read(self._db.find, room, key, cid)

    async def replay(
        self, room: str, since: int | None, client_epoch: str | None, replay: int, recover: int
    ) -> Replay:
        return await self._read(self._db.replay, room, since, client_epoch, replay, recover)

    async def page(self, room: str, before: int | None, limit: int) -> Page:
        return await self._read(self._db.page, room, before, limit)

    async def rooms(self, after: str | None = None, limit: int | None = None) -> dict[str, int]:
        return await self._read(self._db.rooms, after, limit)

    # ----------------------------------------------------------------- the database thread

    # The thread drives the rounds itself: as soon as one commits it takes whatever was
    # queued meanwhile, without waiting for the event loop to hand it the next batch. On a
    # busy loop that hand-over waited behind every other ready callback, and with one
    # message in flight per sender that wait, not SQLite, was most of an ack's latency.
    #
    # Answers go back with call_soon_threadsafe, which keeps them in round order.
    # Reads go through the same rounds as writes, for this invariant: a reader never sees
    # a message before it has been broadcast. The hub broadcasts in `stored`, and a join
    # keeps the live messages that arrive while its replay is read only when their id is
    # above the replay's last_id; a replay that saw a message whose broadcast came later
    # still would deliver it twice. A read sees only rounds committed before its own, whose
    # answers reach the loop first, and `_answer` calls a round's `stored` callbacks before
    # it answers that round's reads.

    def _serve(self, loop: asyncio.AbstractEventLoop, opened: asyncio.Future[None]) -> None:
        try:
            self._db.open()
        except BaseException as err:
            _post(loop, _settle, opened, err)
            self._end(loop)
            return
        _post(loop, _settle, opened, None)
        try:
            while True:
                with self._lock:
                    appends, self._appends = self._appends, []
                    reads, self._reads = self._reads, []
                    if not appends and not reads:
                        if self._closing:
                            return  # everything queued before close() is stored
                        self._idle = True
                if not appends and not reads:
                    self._bell.get()  # rung by the next `_queue`, or by close()
                    continue
                # A sender that is gone (its connection closed) gets no ack and no
                # broadcast: storing its message would leave a gap the room never sees.
                # (Reading a future's state from this thread is safe; only the loop
                # changes it.)
                batch: list[NewMessage] = []
                taken: list[_QueuedAppend] = []
                for queued in appends:
                    if not queued[1].done():
                        taken.append(queued)
                        batch.append(queued[0])
                appends = taken
                if reads:
                    reads = [(fn, f) for fn, f in reads if not f.done()]
                written, took, read = self._db.round(batch, [fn for fn, _ in reads])
                _post(loop, self._answer, appends, written, took, reads, read)
        except BaseException:
            logger.exception("the history thread for %s failed", self.path)
        finally:
            self._end(loop)

    def _end(self, loop: asyncio.AbstractEventLoop) -> None:
        """Last steps of the thread: refuse new work, fail what is left, close the file."""
        with self._lock:
            self._closing = True
            left: list[tuple[Any, ...]] = [*self._appends, *self._reads]
            self._appends, self._reads = [], []
        if left:
            _post(loop, _fail, left, RuntimeError(f"{self.path}: history store stopped"))
        try:
            self._db.close()
        except Exception:
            logger.exception("closing %s failed", self.path)
        if self._stopped is not None:
            _post(loop, _settle, self._stopped, None)

    def _answer(
        self,
        appends: list[_QueuedAppend],
        written: list[tuple[Message, bool]] | Exception,
        took: float,
        reads: list[_QueuedRead],
        read: list[Any],
    ) -> None:
        """On the loop: hand out one round's results."""
        if isinstance(written, Exception):
            # Nothing of the batch is stored; every sender hears of it (the hub closes
            # those connections with 1011 and their clients re-send by cid).
            logger.error("storing %d message(s) in %s failed: %s", len(appends), self.path, written)
            self._write_error = str(written) or type(written).__name__
            _fail(appends, written)
        elif appends:
            self._write_error = None
            self.commits += 1
            if self._on_commit is not None:
                self._on_commit(len(appends), took)
            # In id order. A message taken by the thread is stored whether or not its
            # sender is still waiting, so `stored` runs for every one.
            for (_, future, stored), result in zip(appends, written, strict=True):
                if stored is not None:
                    announce(stored, *result)
                if not future.done():
                    future.set_result(result)
        for (_, future), outcome in zip(reads, read, strict=True):
            if future.done():
                continue
            if isinstance(outcome, _Failed):
                future.set_exception(outcome.error)
            else:
                future.set_result(outcome)


def _post(loop: asyncio.AbstractEventLoop, fn: Callable[..., object], *args: Any) -> None:
    """From the database thread: run `fn` on the loop, unless the loop is gone."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        pass  # the loop is closed: nobody is left waiting


def _settle(future: asyncio.Future[None], err: BaseException | None) -> None:
    if future.done():
        return
    if err is None:
        future.set_result(None)
    else:
        future.set_exception(err)


def _fail(queued: Sequence[tuple[Any, ...]], err: Exception) -> None:
    """Fail queued appends or reads: each is a tuple whose second item is its future."""
    for entry in queued:
        future: asyncio.Future[Any] = entry[1]
        if not future.done():
            future.set_exception(err)

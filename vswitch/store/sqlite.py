"""The embedded store: one SQLite file, no daemon.

Durability comes from SQLite itself: WAL mode with ``synchronous=FULL`` makes every SQL transaction
durable once COMMIT returns, and each ``Txn`` is exactly one SQL transaction, so a crash (or kill -9)
leaves it either wholly applied or not at all.

Tables:
    kv(key, value, create_rev, mod_rev)   current state
    log(rev, key, kind, value)            every change of the last ``history`` revisions, for watch
    meta(revision, compacted)             the store revision, and the last revision dropped from log

Keys are stored as UTF-8 BLOBs so that SQLite orders them bytewise, as etcd does.

All SQL runs on one dedicated thread with one connection: sqlite3 objects belong to the thread that
made them, and one writer at a time is what SQLite allows anyway. Several processes may open the same
file: revisions are allocated inside the write transaction (BEGIN IMMEDIATE), and watchers poll the log
so they see other processes' commits too (commits through this object wake them at once).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
from typing import AsyncIterator, Callable, TypeVar

from . import Compacted, Conflict, Event, Record, Store, StoreError, Txn, Unavailable, check_key, check_txn, prefix_end

T = TypeVar("T")

HISTORY = 10_000  # revisions of change history kept for watch
POLL_INTERVAL = 0.5  # seconds between a watcher's looks at the log for other processes' commits
BUSY_TIMEOUT_MS = 5_000  # how long to wait for another process's write lock before Unavailable

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key BLOB PRIMARY KEY, value BLOB NOT NULL, create_rev INTEGER NOT NULL, mod_rev INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log (rev INTEGER NOT NULL, key BLOB NOT NULL, kind TEXT NOT NULL, value BLOB);
CREATE INDEX IF NOT EXISTS log_rev ON log (rev);
CREATE TABLE IF NOT EXISTS meta (
    one INTEGER PRIMARY KEY CHECK (one = 1), revision INTEGER NOT NULL, compacted INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta VALUES (1, 0, 0);
"""


class SqliteStore(Store):
    """A store in the SQLite file at ``path``, keeping ``history`` revisions of changes for watches."""

    def __init__(self, path: str, history: int = HISTORY):
        self.path = path
        self.history = history
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._changed = asyncio.Condition()  # notified after each commit through this object
        self._committed = 0  # the newest revision committed through this object
        # Opened here, synchronously, so that a bad path fails where the store is opened, not at first use.
        try:
            self._executor.submit(self._wrap, self._open).result()
        except BaseException:
            self._executor.shutdown()
            raise

    # -- the interface

    async def get(self, key: str) -> Record | None:
        check_key(key)
        return await self._run(self._get, key.encode())

    async def range(self, prefix: str) -> list[Record]:
        return await self._run(self._range, prefix.encode())

    async def commit(self, txn: Txn) -> int:
        check_txn(txn)
        revision = await self._run(self._commit, txn)
        async with self._changed:
            self._committed = max(self._committed, revision)
            self._changed.notify_all()
        return revision

    async def revision(self) -> int:
        return await self._run(lambda: self._meta()[0])

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[Event]:
        wanted = prefix.encode()
        next_rev = max(start_revision, 1)
        while True:
            events, head, compacted = await self._run(self._read_log, wanted, next_rev)
            if next_rev <= compacted:
                raise Compacted(f"{self.path}: history up to revision {compacted} is gone "
                                f"(kept: the last {self.history} revisions); asked from {next_rev}")
            for event in events:
                yield event
            next_rev = max(next_rev, head + 1)
            async with self._changed:
                if self._committed < next_rev and not self._closed:
                    try:
                        async with asyncio.timeout(POLL_INTERVAL):  # another process may commit meanwhile
                            await self._changed.wait()
                    except TimeoutError:
                        pass
            if self._closed:
                return

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        async with self._changed:  # ends the watches
            self._changed.notify_all()
        # Queued behind any SQL already submitted, so that finishes first.
        await asyncio.get_running_loop().run_in_executor(self._executor, self._conn.close)
        self._executor.shutdown(wait=False)

    # -- on the loop

    async def _run(self, fn: Callable[..., T], *args) -> T:
        if self._closed:
            raise StoreError(f"{self.path}: the store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._wrap, fn, *args)

    # -- on the SQL thread

    def _wrap(self, fn: Callable[..., T], *args) -> T:
        try:
            return fn(*args)
        except sqlite3.OperationalError as e:  # locked past the busy timeout, unopenable, disk full: not now
            raise Unavailable(f"{self.path}: {e}") from None
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: {e}") from None

    def _open(self) -> None:
        # Autocommit mode: transactions are the explicit BEGIN ... COMMIT below, nothing implicit.
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":  # e.g. a file system without shared memory: say so rather than run slower
                raise StoreError(f"{self.path}: cannot use write-ahead logging (journal mode stays {mode})")
            conn.execute("PRAGMA synchronous = FULL")  # in WAL mode, NORMAL could lose the last commits
            conn.executescript(f"BEGIN IMMEDIATE; {SCHEMA} COMMIT;")
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _meta(self) -> tuple[int, int]:
        return self._conn.execute("SELECT revision, compacted FROM meta").fetchone()

    def _get(self, key: bytes) -> Record | None:
        row = self._conn.execute("SELECT key, value, create_rev, mod_rev FROM kv WHERE key = ?", (key,)).fetchone()
        return _record(row) if row else None

    def _range(self, prefix: bytes) -> list[Record]:
        where, params = _within(prefix)
        rows = self._conn.execute(f"SELECT key, value, create_rev, mod_rev FROM kv WHERE {where} ORDER BY key", params)
        return [_record(row) for row in rows]

    def _commit(self, txn: Txn) -> int:
        db = self._conn
        db.execute("BEGIN IMMEDIATE")  # take the write lock now: the compares must hold until COMMIT
        try:
            for key, expected in txn.compares:
                row = db.execute("SELECT mod_rev FROM kv WHERE key = ?", (key.encode(),)).fetchone()
                actual = row[0] if row else 0
                if actual != expected:
                    found = f"mod_revision {actual}" if row else "no such key"
                    raise Conflict(f"{key}: expected {'no such key' if expected == 0 else f'mod_revision {expected}'}"
                                   f", found {found}")
            revision, compacted = self._meta()
            rev = revision + 1
            changes = []  # (key, kind, value) in the order the log and watchers will see them
            for key, value in txn.puts.items():
                k = key.encode()
                db.execute("INSERT INTO kv VALUES (?, ?, ?, ?) ON CONFLICT (key) DO UPDATE "
                           "SET value = excluded.value, mod_rev = excluded.mod_rev", (k, value, rev, rev))
                changes.append((k, "put", value))
            for key in dict.fromkeys(txn.deletes):
                k = key.encode()
                if db.execute("DELETE FROM kv WHERE key = ?", (k,)).rowcount:
                    changes.append((k, "delete", None))
            if changes:
                db.executemany("INSERT INTO log VALUES (?, ?, ?, ?)", [(rev, k, kind, v) for k, kind, v in changes])
                revision = rev
                if revision - self.history > compacted:
                    compacted = revision - self.history
                    db.execute("DELETE FROM log WHERE rev <= ?", (compacted,))
                db.execute("UPDATE meta SET revision = ?, compacted = ?", (revision, compacted))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # SQLite rolls back by itself after some errors (e.g. disk full)
                db.execute("ROLLBACK")
            raise
        return revision

    def _read_log(self, prefix: bytes, start: int) -> tuple[list[Event], int, int]:
        """Events under ``prefix`` from revision ``start`` on, the head revision, the compaction point."""
        db = self._conn
        db.execute("BEGIN")  # one snapshot, so that the three agree
        try:
            revision, compacted = self._meta()
            where, params = _within(prefix)
            rows = db.execute(f"SELECT rev, key, kind, value FROM log WHERE rev >= ? AND {where} "
                              "ORDER BY rev, rowid", (start, *params))
            events = [Event(kind, key.decode(), value, rev) for rev, key, kind, value in rows]
        finally:
            db.execute("COMMIT")
        return events, revision, compacted


def _within(prefix: bytes) -> tuple[str, tuple]:
    """A WHERE condition, and its parameters, for the keys that start with ``prefix``."""
    end = prefix_end(prefix)
    if end is None:
        return "key >= ?", (prefix,)
    return "key >= ? AND key < ?", (prefix, end)


def _record(row) -> Record:
    key, value, create_rev, mod_rev = row
    return Record(key.decode(), value, create_rev, mod_rev)

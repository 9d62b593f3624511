"""The embedded datastore: a revisioned key-value space in one SQLite file.

Safe for several processes: WAL journal, every write in ``BEGIN IMMEDIATE``.
Tables: ``kv`` (current values), ``log`` (one row per change; its rowid is
the revision), ``leases``. Expired leases are swept by whichever process
writes or watches next, so keys vanish with a delete event even when their
owner died. A keep-alive writes only to a side file, ``.<name>.leases``
(table ``renewed``, attached as ``alive``): watches wake on commits to the
store's own files, and a node's heartbeat renewed every second must not wake
every watch of every agent (a 12-node lab idled at 3.6x the CPU when it did).
A lease expires at the later of its ``leases.expires`` and its renewal.
Watches read the log when a process commits (inotify wakes them;
without it they poll every ``poll`` seconds); the log keeps the
newest ``history`` revisions, older ones are compacted.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from flatnet.errors import CompactedError, StoreError
from flatnet.store.base import KV, Event
from flatnet.store.changes import FileChanges

__all__ = ["SqliteStore"]

log = logging.getLogger("flatnet.store")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL,
    create_rev INTEGER NOT NULL, mod_rev INTEGER NOT NULL, lease INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS log (rev INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL,
    value TEXT NOT NULL, type TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS leases (id INTEGER PRIMARY KEY AUTOINCREMENT, ttl REAL NOT NULL,
    expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS kv_lease ON kv(lease);
CREATE TABLE IF NOT EXISTS alive.renewed (id INTEGER PRIMARY KEY, expires REAL NOT NULL);
"""
# when each lease expires: the later of its grant's and its last renewal's time
_EXPIRES = (
    "SELECT l.id, MAX(l.expires, COALESCE(r.expires, 0)) AS due "
    "FROM leases l LEFT JOIN alive.renewed r ON r.id = l.id"
)


def _end(prefix: str) -> str:
    return prefix + "\U0010ffff"


class SqliteStore:
    def __init__(self, path: str | Path, poll: float = 0.02, history: int = 100_000) -> None:
        self.path = str(path)
        self.poll = poll
        self.history = history
        self._lock = threading.RLock()
        self._changes: FileChanges | None = None
        self._changes_tried = False
        self._db = self._connect()
        with self._lock, self._db:
            self._db.executescript(_SCHEMA)

    @property
    def leases_path(self) -> str:
        """The side file of lease renewals (its name does not start with the
        store's, so committing to it wakes no watch)."""
        d, name = os.path.split(os.path.abspath(self.path))
        return os.path.join(d, f".{name}.leases")

    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(
                self.path, timeout=30, isolation_level=None, check_same_thread=False
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("ATTACH DATABASE ? AS alive", (self.leases_path,))
            db.execute("PRAGMA alive.journal_mode=WAL")
            db.execute("PRAGMA alive.synchronous=NORMAL")
        except sqlite3.Error as e:
            raise StoreError(f"cannot open SQLite store '{self.path}': {e}") from e
        return db

    # -- transactions -------------------------------------------------------
    def _write(self, fn, store: bool = True):  # type: ignore[no-untyped-def]
        """``fn(db)`` in one transaction; ``store=False``: one that writes only
        the side file of renewals (no sweep, no lock on the store's own files)."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE" if store else "BEGIN")
                try:
                    if store:
                        self._sweep(time.time())
                    out = fn(self._db)
                    self._db.execute("COMMIT")
                    return out
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as e:
                raise StoreError(f"SQLite store '{self.path}': {e}") from e

    def _log(self, db: sqlite3.Connection, key: str, value: str, kind: str) -> int:
        cur = db.execute("INSERT INTO log(key, value, type) VALUES (?,?,?)", (key, value, kind))
        rev = int(cur.lastrowid or 0)
        if rev % 1000 == 0 and rev > self.history:
            floor = rev - self.history
            db.execute("DELETE FROM log WHERE rev <= ?", (floor,))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('compacted', ?)", (floor,))
        return rev

    def _set(self, db: sqlite3.Connection, key: str, value: str, lease: int) -> int:
        rev = self._log(db, key, value, "put")
        db.execute(
            "INSERT INTO kv VALUES (?,?,?,?,?) ON CONFLICT(key) DO UPDATE SET "
            "value=excluded.value, mod_rev=excluded.mod_rev, lease=excluded.lease",
            (key, value, rev, rev, lease),
        )
        return rev

    def _remove(self, db: sqlite3.Connection, key: str) -> int:
        db.execute("DELETE FROM kv WHERE key=?", (key,))
        return self._log(db, key, "", "delete")

    def _sweep(self, now: float) -> None:
        db = self._db
        for (lid,) in db.execute(f"SELECT id FROM ({_EXPIRES}) WHERE due < ?", (now,)).fetchall():
            self._drop_lease(db, lid)

    def _drop_lease(self, db: sqlite3.Connection, lid: int) -> None:
        keys = db.execute("SELECT key FROM kv WHERE lease=? ORDER BY key", (lid,)).fetchall()
        for (key,) in keys:
            self._remove(db, key)
        db.execute("DELETE FROM leases WHERE id=?", (lid,))
        db.execute("DELETE FROM alive.renewed WHERE id=?", (lid,))

    @staticmethod
    def _kv(row: tuple) -> KV:
        return KV(row[0], row[1], row[2], row[3], row[4])

    def _check_lease(self, db: sqlite3.Connection, lease: int) -> None:
        if lease and not db.execute("SELECT 1 FROM leases WHERE id=?", (lease,)).fetchone():
            raise StoreError(f"lease {lease} not found (expired or revoked)")

    # -- reads --------------------------------------------------------------
    def _read(self, sql: str, args: tuple) -> list[tuple]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as e:
                raise StoreError(f"SQLite store '{self.path}': {e}") from e

    def get(self, key: str) -> KV | None:
        self._expire_due()
        rows = self._read("SELECT * FROM kv WHERE key=?", (key,))
        return self._kv(rows[0]) if rows else None

    def range(self, prefix: str) -> list[KV]:
        self._expire_due()
        rows = self._read(
            "SELECT * FROM kv WHERE key >= ? AND key < ? ORDER BY key", (prefix, _end(prefix))
        )
        return [self._kv(r) for r in rows]

    def revision(self) -> int:
        rows = self._read("SELECT seq FROM sqlite_sequence WHERE name='log'", ())
        return int(rows[0][0]) if rows else 0

    def _expire_due(self) -> None:
        due = self._read(f"SELECT 1 FROM ({_EXPIRES}) WHERE due < ? LIMIT 1", (time.time(),))
        if due:
            self._write(lambda db: None)

    # -- writes -------------------------------------------------------------
    def put(self, key: str, value: str, lease: int = 0) -> int:
        def fn(db: sqlite3.Connection) -> int:
            self._check_lease(db, lease)
            return self._set(db, key, value, lease)

        return int(self._write(fn))

    def create(self, key: str, value: str, lease: int = 0) -> bool:
        return self.cas(key, value, 0, lease)

    def cas(self, key: str, value: str, revision: int, lease: int = 0) -> bool:
        def fn(db: sqlite3.Connection) -> bool:
            row = db.execute("SELECT mod_rev FROM kv WHERE key=?", (key,)).fetchone()
            if (row[0] if row else 0) != revision:
                return False
            self._check_lease(db, lease)
            self._set(db, key, value, lease)
            return True

        return bool(self._write(fn))

    def delete(self, key: str, revision: int | None = None) -> bool:
        def fn(db: sqlite3.Connection) -> bool:
            row = db.execute("SELECT mod_rev FROM kv WHERE key=?", (key,)).fetchone()
            if not row or (revision is not None and row[0] != revision):
                return False
            self._remove(db, key)
            return True

        return bool(self._write(fn))

    # -- leases -------------------------------------------------------------
    def grant(self, ttl: float) -> int:
        def fn(db: sqlite3.Connection) -> int:
            cur = db.execute(
                "INSERT INTO leases(ttl, expires) VALUES (?, ?)", (ttl, time.time() + ttl)
            )
            return int(cur.lastrowid or 0)

        return int(self._write(fn))

    def keepalive(self, lease: int) -> bool:
        """Renew in the side file only: no commit to the store's own files."""
        now = time.time()

        def fn(db: sqlite3.Connection) -> bool:
            row = db.execute(
                f"SELECT due, l.ttl FROM ({_EXPIRES}) e JOIN leases l ON l.id = e.id WHERE e.id=?",
                (lease,),
            ).fetchone()
            if row is None or row[0] < now:
                return False  # gone, or due: the next write or watch sweeps it
            db.execute("INSERT OR REPLACE INTO alive.renewed VALUES (?, ?)", (lease, now + row[1]))
            return True

        return bool(self._write(fn, store=False))

    def revoke(self, lease: int) -> None:
        self._write(lambda db: self._drop_lease(db, lease))

    # -- watch --------------------------------------------------------------
    def watch(self, prefix: str, from_revision: int) -> SqliteWatch:
        return SqliteWatch(self, prefix, from_revision)

    def _events_after(self, db: sqlite3.Connection, prefix: str, last: int) -> list[Event]:
        row = db.execute("SELECT v FROM meta WHERE k='compacted'").fetchone()
        if row and last < row[0]:
            raise CompactedError(f"revision {last + 1} was compacted (oldest kept {row[0] + 1})")
        rows = db.execute(
            "SELECT rev, key, value, type FROM log WHERE rev > ? AND key >= ? AND key < ? "
            "ORDER BY rev LIMIT 1000",
            (last, prefix, _end(prefix)),
        ).fetchall()
        return [Event(r[3], r[1], r[2], r[0]) for r in rows]

    def _file_changes(self) -> FileChanges | None:
        """The process's one inotify reader for this store, made on first use;
        None where inotify is not available (the watches then poll)."""
        with self._lock:
            if not self._changes_tried:
                self._changes_tried = True
                try:
                    self._changes = FileChanges(self.path)
                except OSError as e:
                    log.warning("no inotify on %s (%s): watches poll", self.path, e)
            return self._changes

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if self._changes is not None:
                self._changes.close()
                self._changes = None


class SqliteWatch:
    """Reads the change log from its own connection; a thread feeds a queue.

    While the store is busy the thread reads the log every ``poll`` seconds,
    as plain polling would; ``HOT`` seconds after the last event it goes to
    sleep until a process commits (inotify on the database's files,
    :class:`~flatnet.store.changes.FileChanges`, one per store object however
    many watches it has), a lease falls due, or ``IDLE`` seconds pass. Waking
    every watcher on every commit instead, as a first version did, doubled a
    20-node lab's start-up (a pod change makes 20 proxies publish a status).
    Reading right after a wake-up may come before the commit is visible (SQLite
    updates its shared index after writing): a wake-up that brought nothing is
    read ``RECHECKS`` more times, ``poll`` apart, then the watch sleeps again.
    (It used to turn busy for ``HOT`` seconds: a commit no watch cares about,
    such as a heartbeat's lease keep-alive every second per node, then kept
    every watch of every agent polling 50 times a second.)
    Without inotify it polls every ``poll``.
    """

    IDLE = 1.0
    HOT = 0.5
    RECHECKS = 1  # reads after a wake-up that brought nothing, ``poll`` apart

    def __init__(self, store: SqliteStore, prefix: str, from_revision: int) -> None:
        self._store, self._prefix = store, prefix
        self._last = max(from_revision, 1) - 1
        self._q: queue.Queue[Event | BaseException] = queue.Queue()
        self._stop = threading.Event()
        self._changes = store._file_changes()
        self._thread = threading.Thread(target=self._run, daemon=True, name="sqlite-watch")
        self._thread.start()

    def _run(self) -> None:
        db = sqlite3.connect(self._store.path, timeout=30, check_same_thread=False)
        db.execute("ATTACH DATABASE ? AS alive", (self._store.leases_path,))
        hot_until = 0.0
        rechecks = 0
        ch = self._changes
        try:
            while not self._stop.is_set():
                seen = ch.generation if ch is not None else 0  # before reading: no lost wake-up
                due = db.execute(f"SELECT MIN(due) FROM ({_EXPIRES})").fetchone()[0]
                if due is not None and due < time.time():
                    self._store._expire_due()
                    continue
                events = self._store._events_after(db, self._prefix, self._last)
                for ev in events:
                    self._q.put(ev)
                    self._last = ev.revision
                if events:
                    hot_until = time.monotonic() + self.HOT
                    continue
                if ch is None or ch.closed or time.monotonic() < hot_until or rechecks:
                    rechecks = max(rechecks - 1, 0)
                    self._stop.wait(self._store.poll)
                    continue
                wait = self.IDLE if due is None else min(self.IDLE, due - time.time() + 0.005)
                if ch.wait(seen, wait, self._stop) != seen:
                    rechecks = self.RECHECKS
                    # every watcher of every process wakes together: spread the reads
                    self._stop.wait(random.uniform(0, self._store.poll))
        except BaseException as e:  # handed to the consumer
            self._q.put(e)
        finally:
            db.close()

    def next_event(self, timeout: float | None = None) -> Event | None:
        try:
            item = self._q.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        if self._changes is not None:
            self._changes.poke()
        self._thread.join(timeout=2)

    def __iter__(self) -> Iterator[Event]:
        while True:
            ev = self.next_event()
            if ev is not None:
                yield ev

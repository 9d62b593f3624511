"""Wake-ups when a file changes (Linux inotify through libc), so that watches of
the SQLite store sleep until a process writes instead of polling.

Every commit writes the store's ``-wal`` file (or the database file itself when
WAL is not in use), which raises ``IN_MODIFY`` on the directory that holds it.
One inotify instance and one reader thread serve every watch of a store in a
process (inotify instances are a per-user limit, 128 by default): the reader
counts changes in ``generation``; a waiter notes the generation before it
reads the store and sleeps until it moves, so no commit slips between the
read and the sleep. The write comes a moment before the commit is visible to
readers (SQLite updates its shared-memory index after the frames are
written), so a waiter that found nothing right after a wake-up should look
again shortly; see :class:`flatnet.store.sqlite.SqliteWatch`.
"""

from __future__ import annotations

import ctypes
import os
import select
import struct
import threading
import time

__all__ = ["FileChanges"]

_IN_MODIFY, _IN_CLOSE_WRITE, _IN_MOVED_TO, _IN_CREATE = 0x2, 0x8, 0x80, 0x100
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name
_libc = ctypes.CDLL(None, use_errno=True)


class FileChanges:
    """Changes to the files in ``path``'s directory whose names start with
    ``path``'s name (``store.db``, ``store.db-wal``, ``store.db-shm``...)."""

    BATCH = 0.01  # seconds between two reads of the inotify queue

    def __init__(self, path: str) -> None:
        self._prefix = os.fsencode(os.path.basename(path))
        fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        mask = _IN_MODIFY | _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_CREATE
        directory = os.fsencode(os.path.dirname(os.path.abspath(path)))
        if _libc.inotify_add_watch(fd, directory, mask) < 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, f"inotify_add_watch {os.fsdecode(directory)}")
        self._fd = fd
        self._stop_r, self._stop_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._cond = threading.Condition()
        self.generation = 0
        self.closed = False
        self._thread = threading.Thread(target=self._run, name="store-changes", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            ready, _, _ = select.select([self._fd, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            if self._drain():
                with self._cond:
                    self.generation += 1
                    self._cond.notify_all()
            # a commit raises several events and a busy store hundreds a
            # second: take them in batches, not a thread wake-up each
            time.sleep(self.BATCH)

    def _drain(self) -> bool:
        changed = False
        while True:
            try:
                buf = os.read(self._fd, 65536)
            except BlockingIOError:
                return changed
            off = 0
            while off < len(buf):
                n = _EVENT.unpack_from(buf, off)[3]
                name = buf[off + _EVENT.size : off + _EVENT.size + n].rstrip(b"\0")
                changed = changed or name.startswith(self._prefix)
                off += _EVENT.size + n

    def wait(self, seen: int, timeout: float, stop: threading.Event) -> int:
        """Sleep until the generation differs from ``seen``, ``stop`` is set
        (then call :meth:`poke`), this is closed, or ``timeout`` s pass.
        Returns the generation."""
        with self._cond:
            self._cond.wait_for(
                lambda: self.generation != seen or stop.is_set() or self.closed,
                max(0.0, timeout),
            )
            return self.generation

    def poke(self) -> None:
        """Wake every waiter so it can look at its ``stop`` event."""
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
        os.write(self._stop_w, b"x")
        self._thread.join()
        for fd in (self._fd, self._stop_r, self._stop_w):
            os.close(fd)

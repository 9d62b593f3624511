"""Wake-ups when a file changes (Linux inotify through libc), so that watches of
the SQLite store sleep until another process writes instead of polling.

Every commit writes the store's ``-wal`` file (or the database file itself when
WAL is not in use), which raises ``IN_MODIFY`` on the directory that holds it.
The write comes a moment before the commit becomes visible to readers (SQLite
updates its shared-memory index after the frames are written), so a waiter
that found nothing right after a wake-up should look again shortly; see
:class:`flatnet.store.sqlite.SqliteWatch`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import struct

__all__ = ["FileChanges"]

_IN_MODIFY, _IN_CLOSE_WRITE, _IN_MOVED_TO, _IN_CREATE = 0x2, 0x8, 0x80, 0x100
_IN_NONBLOCK, _IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name
_libc = ctypes.CDLL(None, use_errno=True)


class FileChanges:
    """Changes to the files in ``path``'s directory whose names start with
    ``path``'s name (``store.db``, ``store.db-wal``, ``store.db-shm``...)."""

    def __init__(self, path: str) -> None:
        self._prefix = os.fsencode(os.path.basename(path))
        fd = _libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self._fd = fd
        mask = _IN_MODIFY | _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_CREATE
        directory = os.fsencode(os.path.dirname(os.path.abspath(path)))
        if _libc.inotify_add_watch(fd, directory, mask) < 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, f"inotify_add_watch {os.fsdecode(directory)}")
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def wait(self, timeout: float) -> bool:
        """Block until a matching file changes, :meth:`interrupt` is called, or
        ``timeout`` seconds pass. True when a file changed."""
        ready, _, _ = select.select([self._fd, self._wake_r], [], [], max(0.0, timeout))
        if self._wake_r in ready:
            return False
        return self._fd in ready and self._drain()

    def _drain(self) -> bool:
        changed = False
        while True:
            try:
                buf = os.read(self._fd, 65536)
            except BlockingIOError:
                return changed
            off = 0
            while off < len(buf):
                _, _, _, n = _EVENT.unpack_from(buf, off)
                name = buf[off + _EVENT.size : off + _EVENT.size + n].rstrip(b"\0")
                changed = changed or name.startswith(self._prefix)
                off += _EVENT.size + n

    def interrupt(self) -> None:
        """Make the current :meth:`wait`, and every one after it, return at once
        (for stopping the waiter)."""
        with contextlib.suppress(BlockingIOError):  # a wake-up is already pending
            os.write(self._wake_w, b"x")

    def close(self) -> None:
        for fd in (self._fd, self._wake_r, self._wake_w):
            os.close(fd)

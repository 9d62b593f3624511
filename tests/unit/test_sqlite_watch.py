"""The SQLite store's watch sleeps until a commit (inotify), not a poll loop."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from flatnet.store.sqlite import SqliteStore, SqliteWatch


def counting(st: SqliteStore) -> list[int]:
    """Count the watch thread's reads of the change log."""
    calls = [0]
    real = st._events_after

    def wrapped(*a: Any) -> Any:
        calls[0] += 1
        return real(*a)

    st._events_after = wrapped  # type: ignore[method-assign]
    return calls


def next_of(w: SqliteWatch, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (ev := w.next_event(timeout=0.2)) is not None:
            return ev
    return None


def test_idle_watch_reads_log_rarely_and_wakes_on_another_process_commit(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    st = SqliteStore(db)
    calls = counting(st)
    w = st.watch("/k/", st.revision() + 1)
    try:
        time.sleep(1.5)
        idle_calls = calls[0]
        # 20 ms polling would read the log ~75 times in 1.5 s
        assert idle_calls <= 5, f"{idle_calls} log reads while idle"
        code = (
            "import sys; from flatnet.store import open_store; "
            "open_store(sys.argv[1]).put('/k/a', 'v')"
        )
        subprocess.run([sys.executable, "-c", code, f"sqlite://{db}"], check=True)
        ev = next_of(w)
        assert ev is not None and (ev.type, ev.key, ev.value) == ("put", "/k/a", "v")
    finally:
        w.close()
        st.close()


def test_lease_expiry_wakes_an_idle_watch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SqliteWatch, "IDLE", 30.0)  # only the lease's due time can wake it
    st = SqliteStore(tmp_path / "store.db")
    lease = st.grant(0.3)
    st.put("/k/leased", "x", lease=lease)
    w = st.watch("/k/", st.revision() + 1)
    try:
        ev = next_of(w)
        assert ev is not None and (ev.type, ev.key) == ("delete", "/k/leased")
    finally:
        w.close()
        st.close()


def test_keepalives_wake_no_watch_and_a_renewed_lease_lives_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A heartbeat renews its lease every second on every node: that must not
    wake every watch of every agent (renewals go to a side file)."""
    monkeypatch.setattr(SqliteWatch, "IDLE", 30.0)
    st = SqliteStore(tmp_path / "store.db")
    other = SqliteStore(tmp_path / "store.db")  # another process's view
    lease = st.grant(0.6)
    st.put("/k/beat", "x", lease=lease)
    calls = counting(st)
    w = st.watch("/k/", st.revision() + 1)
    try:
        time.sleep(0.2)
        before = calls[0]
        for _ in range(6):  # 1.2 s of renewals: past the TTL of 0.6 s
            assert other.keepalive(lease)
            time.sleep(0.2)
        # a few wake-ups at the lease's due times; a wake per renewal would read ~30 times
        assert calls[0] - before <= 5, f"{calls[0] - before} log reads for keep-alives"
        assert st.get("/k/beat") is not None  # renewed: alive past its first TTL
        ev = next_of(w, timeout=3)  # renewals stop: it expires, with a delete event
        assert ev is not None and (ev.type, ev.key) == ("delete", "/k/beat")
        assert not other.keepalive(lease)
    finally:
        w.close()
        other.close()
        st.close()


def test_close_interrupts_the_wait(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SqliteWatch, "IDLE", 30.0)
    st = SqliteStore(tmp_path / "store.db")
    w = st.watch("/k/", 1)
    time.sleep(0.3)  # the thread is now asleep in the wait
    w.close()
    assert not w._thread.is_alive()
    st.close()


def inotify_fds() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the fd listdir itself used is gone
            n += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify"
    return n


def test_watches_of_one_store_share_one_inotify_instance(tmp_path: Path) -> None:
    before = inotify_fds()
    st = SqliteStore(tmp_path / "store.db")
    watches = [st.watch(f"/k{i}/", 1) for i in range(5)]
    try:
        assert inotify_fds() == before + 1
        st.put("/k3/a", "v")
        ev = next_of(watches[3])
        assert ev is not None and ev.key == "/k3/a"
    finally:
        for w in watches:
            w.close()
        st.close()
    assert inotify_fds() == before

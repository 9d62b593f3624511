"""follow(): list-then-watch loop over a real SQLite store."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from flatnet.store import Event, open_store
from flatnet.store.follow import follow


class Counting:
    """Wraps a watch and counts next_event calls: a loop that spins shows up
    as thousands of calls instead of a handful."""

    def __init__(self, watch: Any) -> None:
        self.watch, self.calls = watch, 0

    def next_event(self, timeout: float | None = None) -> Event | None:
        self.calls += 1
        return self.watch.next_event(timeout=timeout)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.watch.close()


def run_follow(tmp_path: Path, idle: bool, every: float, seconds: float) -> tuple[int, int, int]:
    st = open_store(f"sqlite://{tmp_path / 'store.db'}")
    watches: list[Counting] = []
    real_watch = st.watch
    st.watch = lambda p, r: watches.append(Counting(real_watch(p, r))) or watches[-1]  # type: ignore[method-assign]
    seen: list[Event] = []
    idles: list[float] = []
    stop = threading.Event()
    t = threading.Thread(
        target=follow,
        args=(st, ("/a/",), stop, lambda kvs, rev: None, seen.extend),
        kwargs={"idle": (lambda: idles.append(time.monotonic())) if idle else None, "every": every},
    )
    t.start()
    try:
        time.sleep(seconds / 2)
        st.put("/a/x", "1")
        time.sleep(seconds / 2)
    finally:
        stop.set()
        t.join(timeout=5)
        st.close()
    assert not t.is_alive()
    assert [e.key for e in seen] == ["/a/x"]
    return sum(w.calls for w in watches), len(idles), len(watches)


def test_follow_without_idle_does_not_spin_once_every_has_passed(tmp_path: Path) -> None:
    # `every` long past, no idle callback: the loop must still block in the watch
    calls, _, nwatch = run_follow(tmp_path, idle=False, every=0.05, seconds=2.0)
    assert nwatch == 1
    assert calls < 20, f"{calls} next_event calls in 2 s: the follow loop spins"


def test_follow_idle_runs_every_period_without_spinning(tmp_path: Path) -> None:
    calls, idles, _ = run_follow(tmp_path, idle=True, every=0.2, seconds=2.0)
    assert 4 <= idles <= 12, idles
    assert calls < 40, f"{calls} next_event calls in 2 s: the follow loop spins"

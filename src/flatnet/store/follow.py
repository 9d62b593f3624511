"""List-then-watch, the informer pattern: a consumer sees every key under some
prefixes once (``listed``) and then every change in batches (``changed``),
never missing one: the watch starts at the listing's revision + 1. Events that
arrive together are handed over together; ``idle`` runs after ``every``
seconds without any. A compacted history or a store outage leads to a fresh
listing; meanwhile the consumer keeps what it had."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from flatnet.errors import CompactedError
from flatnet.store.base import KV, Event, Store

__all__ = ["follow"]


def follow(
    store: Store,
    prefixes: tuple[str, ...],
    stop: threading.Event,
    listed: Callable[[list[KV], int], None],
    changed: Callable[[list[Event]], None],
    idle: Callable[[], None] | None = None,
    every: float = 60.0,
    log: logging.Logger | None = None,
) -> None:
    log = log or logging.getLogger("flatnet.follow")
    root = os.path.commonprefix(list(prefixes))
    while not stop.is_set():
        try:
            rev = store.revision()
            listed([kv for p in prefixes for kv in store.range(p)], rev)
            watch = store.watch(root, rev + 1)
            try:
                last = time.monotonic()
                while not stop.is_set():
                    # Wake at least every 0.5 s to notice `stop`; with an `idle`
                    # callback, also when it falls due. Never a zero timeout:
                    # with no callback to reset `last`, that spun a core.
                    wait = 0.5
                    if idle is not None:
                        if (due := every - (time.monotonic() - last)) <= 0:
                            idle()
                            last, due = time.monotonic(), every
                        wait = min(wait, due)
                    ev = watch.next_event(timeout=wait)
                    if ev is None:
                        continue
                    batch = [ev]
                    while (more := watch.next_event(timeout=0)) is not None:
                        batch.append(more)
                    mine = [e for e in batch if e.key.startswith(prefixes)]
                    if mine:
                        changed(mine)
                        last = time.monotonic()
            finally:
                watch.close()
        except CompactedError:
            log.warning("watch history compacted; listing again")
        except Exception as e:  # the store is away: keep what we have, retry
            log.warning("watch failed (%s); retrying", e)
            stop.wait(1.0)

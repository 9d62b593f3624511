"""The node's heartbeat: the Ready condition, independent of the subnet lease.

The subnet lease lives a day (a node that reboots must get its subnet back);
whether the agent is alive is another question, answered in seconds. The
agent writes ``heartbeats/<node>`` once, under a TTL lease of ``ttl`` seconds
that it keeps alive every ``interval``; if the agent dies (or hangs), the
lease runs out and the store deletes the key: the node is NotReady for
``flatnet get nodes``, and its proxy no longer counts for ``get services``.
A keepalive writes no key, so no watcher sees an event for it. A stopped
agent revokes the lease at once.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from flatnet import keys
from flatnet.model import Heartbeat
from flatnet.store import Store

__all__ = ["HeartbeatKeeper", "heartbeats"]

log = logging.getLogger("flatnet.agent.heartbeat")


def heartbeats(store: Store) -> dict[str, Heartbeat]:
    """The nodes whose agents are alive (Ready), with their heartbeats."""
    return {keys.last(kv.key): Heartbeat.from_json(kv.value) for kv in store.range(keys.HEARTBEATS)}


class HeartbeatKeeper:
    def __init__(
        self,
        store: Store,
        node: str,
        interval: float = 1.0,
        ttl: float = 3.0,
        nets: tuple[str, ...] = (),
    ) -> None:
        self.store, self.node, self.interval, self.ttl = store, node, interval, ttl
        self.nets = list(nets)  # published: whose ARP a LoadBalancer address can reach
        self.since = time.time()
        self.lease = 0

    def beat(self) -> None:
        """Publish the heartbeat under a new TTL lease."""
        self.lease = self.store.grant(self.ttl)
        hb = Heartbeat(self.node, self.since, self.ttl, os.getpid(), self.nets)
        self.store.put(keys.heartbeat(self.node), hb.to_json(), lease=self.lease)

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            try:
                if not self.lease or not self.store.keepalive(self.lease):
                    log.warning("heartbeat lease had expired; beating again")
                    self.beat()
            except Exception as e:  # keep trying: the store may be back soon
                log.warning("heartbeat failed: %s", e)
                self.lease = 0

    def stop(self) -> None:
        """Say at once that this agent is gone (NotReady)."""
        if self.lease:
            try:
                self.store.revoke(self.lease)
            except Exception as e:
                log.warning("heartbeat revoke failed: %s", e)

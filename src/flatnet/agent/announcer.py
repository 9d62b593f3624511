"""How it works — the LoadBalancer announcer: MetalLB's speaker, inside the agent.

One thread follows ``services/``, ``pods/`` (ready endpoints), ``heartbeats/``
(which nodes are alive) and ``ippools/``. On every change it computes this
node's part (:func:`flatnet.lb.announce.plan`) and hands it on:

- BGP addresses to the bgp backend, which adds a ``<ip>/32 blackhole`` to
  BIRD's ``flatnet_vips`` (exported only to external peers, never installed
  in the kernel); without the bgp backend they are reported, not announced;
- L2 addresses to the ARP responder (:mod:`flatnet.kernel.arp`) on the
  underlay device, which sends gratuitous ARP for each new one.

It publishes ``/flatnet/lb/<node>`` (under the node's TTL lease): what this
node announces, and how — ``flatnet get services -o wide`` shows it.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable

from flatnet import keys
from flatnet.lb.announce import Announcement, plan
from flatnet.model import AddressPool, Heartbeat
from flatnet.store import Store
from flatnet.store.follow import follow
from flatnet.view import ClusterView, ViewFollower

__all__ = ["Announcer"]

log = logging.getLogger("flatnet.agent.announcer")


class Announcer(ViewFollower):
    def __init__(
        self,
        store: Store,
        node: str,
        backend: str,
        l2: Callable[[frozenset[str]], None],
        bgp: Callable[[frozenset[str]], None] | None,
        status_lease: int = 0,
    ) -> None:
        self.store, self.node, self.backend = store, node, backend
        self.l2, self.bgp = l2, bgp
        self.status_lease = status_lease
        self.view = ClusterView()
        self.alive: set[str] = set()
        self.nets: dict[str, list[str]] = {}  # each live node's underlay networks
        self.pools: dict[str, AddressPool] = {}
        self.now = Announcement()
        self._published: Announcement | None = None

    def rebind(self, status_lease: int) -> None:
        self.status_lease = status_lease
        self._published = None

    def _take(self, key: str, value: str | None) -> None:
        if key.startswith(keys.HEARTBEATS):
            node = keys.last(key)
            if value is None:
                self.alive.discard(node)
                self.nets.pop(node, None)
            else:
                self.alive.add(node)
                self.nets[node] = Heartbeat.from_json(value).nets
        elif key.startswith(keys.POOLS):
            if value is None:
                self.pools.pop(keys.last(key), None)
            else:
                self.pools[keys.last(key)] = AddressPool.from_json(value)

    def _reset(self) -> None:
        self.alive, self.nets, self.pools = set(), {}, {}

    def sync(self) -> None:
        lbs = [
            (svc, [e for es in self.view.endpoints(svc).values() for e in es])
            for svc in self.view.services.values()
            if svc.ingress_ip
        ]
        want = plan(self.node, lbs, self.alive, self.pools, self.backend, self.nets)
        if want.bgp != self.now.bgp:
            if self.bgp is not None:
                self.bgp(want.bgp)
                log.info("BGP: announcing %s", ", ".join(sorted(want.bgp)) or "nothing")
            elif want.bgp:
                log.warning(
                    "addresses %s want BGP, but this node's backend is %s (no BGP speaker)",
                    ", ".join(sorted(want.bgp)), self.backend,
                )  # fmt: skip
        if want.l2 != self.now.l2:
            self.l2(want.l2)
            log.info("L2: answering ARP for %s", ", ".join(sorted(want.l2)) or "nothing")
        self.now = want
        self._publish()

    def _publish(self) -> None:
        if self.now == self._published:
            return
        spoken = sorted(self.now.bgp) if self.bgp is not None else []
        body = json.dumps({"node": self.node, "bgp": spoken, "l2": sorted(self.now.l2)})
        try:
            self.store.put(keys.lb_status(self.node), body, lease=self.status_lease)
            self._published = self.now
        except Exception as e:
            log.warning("cannot publish what this node announces: %s", e)

    def run(self, stop: threading.Event) -> None:
        follow(
            self.store,
            (keys.SERVICES, keys.PODS, keys.HEARTBEATS, keys.POOLS),
            stop,
            self.listed,
            self.changed,
            self.sync,
            30.0,
            log,
        )

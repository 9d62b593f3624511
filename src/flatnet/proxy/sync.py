"""The node's service proxy: Services and pods in the store → the node's nftables.

One thread follows ``services/`` and ``pods/`` (list, then watch). The first
listing, and every ``resync`` seconds after, writes the whole table in one
transaction (this repairs drift). Each batch of events recomputes only the
services it touches — a changed service, or the services whose selector
matches a changed pod's old or new labels — and applies the difference of
their fragments in one transaction. Then, for every UDP endpoint that went
away, conntrack entries still pointing at it are deleted (otherwise a client
keeps sending to the dead endpoint: kube-proxy #48370).

It publishes ``/flatnet/proxy/<node>``: the store revision programmed and the
counts, so ``flatnet get services`` can tell what every node has programmed.
"""

from __future__ import annotations

import logging
import threading
import time

from flatnet import keys
from flatnet.errors import KernelError
from flatnet.kernel.api import ConntrackTable, Firewall
from flatnet.model import ProxyStatus
from flatnet.proxy import render
from flatnet.proxy.desired import Fragment, fragment, hairpin
from flatnet.store import KV, Event, Store
from flatnet.store.follow import follow
from flatnet.view import ClusterView

__all__ = ["ServiceProxy"]

log = logging.getLogger("flatnet.agent.proxy")
HAIRPIN = "~hairpin"  # the fragment holding this node's pods for hairpin NAT


class ServiceProxy:
    def __init__(
        self,
        store: Store,
        nft: Firewall,
        conntrack: ConntrackTable,
        node: str,
        pod_cidr: str,
        status_lease: int = 0,
        resync: float = 300.0,
    ) -> None:
        self.store, self.nft, self.conntrack = store, nft, conntrack
        self.node, self.pod_cidr = node, pod_cidr
        self.status_lease = status_lease
        self.resync = resync
        self.cluster = ClusterView()
        self.frags: dict[str, Fragment] = {}
        self.revision = 0
        self.last_sync: dict[str, float] = {}

    def rebind(self, status_lease: int) -> None:
        """The node's TTL lease was re-granted: the status goes under it from
        the next sync on."""
        self.status_lease = status_lease

    # -- pure-ish computation ------------------------------------------------
    def _fragment(self, key: str) -> Fragment:
        if key == HAIRPIN:
            return hairpin(self.cluster.pods.pods.values(), self.node)
        svc = self.cluster.services.get(key)
        if svc is None:
            return Fragment()
        return fragment(svc, self.cluster.endpoints(svc), self.node, self.pod_cidr)

    # -- kernel ----------------------------------------------------------------
    def full_sync(self) -> None:
        t0 = time.monotonic()
        self.frags = {k: self._fragment(k) for k in (*self.cluster.services, HAIRPIN)}
        self.nft.apply(render.full(self.frags.values()), what=f"table ip {render.TABLE}")
        self.last_sync = {"full": time.monotonic() - t0}
        log.info(
            "proxy: full sync of %d services in %.3fs",
            len(self.cluster.services),
            self.last_sync["full"],
        )
        self._publish()

    def listed(self, kvs: list[KV], rev: int) -> None:
        self.cluster = ClusterView(kvs)
        self.revision = rev
        self.full_sync()

    def changed(self, events: list[Event]) -> None:
        t0 = time.monotonic()
        touched: set[str] = set()
        for ev in events:
            keys, old, new = self.cluster.apply(ev)
            touched |= keys
            if self.node in (old.node if old else "", new.node if new else ""):
                touched.add(HAIRPIN)
            self.revision = max(self.revision, ev.revision)
        pairs = []
        for key in touched:
            new_frag = self._fragment(key)
            old_frag = self.frags.get(key, Fragment())
            pairs.append((old_frag, new_frag))
            if key in self.cluster.services or key == HAIRPIN:
                self.frags[key] = new_frag
            else:
                self.frags.pop(key, None)
        script = render.diff(pairs)
        if script:
            self.nft.apply(script, what=f"service changes in table ip {render.TABLE}")
            self._flush_udp(set().union(*(o.udp - n.udp for o, n in pairs)))
        self.last_sync = {"partial": time.monotonic() - t0}
        self._publish()

    def _flush_udp(self, gone: set[tuple[str, int, str]]) -> None:
        """Delete the UDP conntrack entries of endpoints that went: each
        (service IP, or "" for a node port; port; endpoint) in one dump."""
        if not gone:
            return
        try:
            n = self.conntrack.delete_udp(gone)
        except KernelError as e:
            log.warning("conntrack flush of %d endpoint(s) failed: %s", len(gone), e)
            return
        if n:
            log.info("flushed %d UDP conntrack entries of %s", n, sorted(gone))

    def _publish(self) -> None:
        status = ProxyStatus(
            self.node,
            self.revision,
            len(self.cluster.services),
            sum(len(f.chains) for f in self.frags.values()),
            self.last_sync,
        )
        try:
            self.store.put(keys.proxy_status(self.node), status.to_json(), lease=self.status_lease)
        except Exception as e:  # the table is programmed; the status can wait
            log.warning("cannot publish proxy status: %s", e)

    def run(self, stop: threading.Event) -> None:
        follow(
            self.store,
            (keys.SERVICES, keys.PODS),
            stop,
            self.listed,
            self.changed,
            self.full_sync,
            self.resync,
            log,
        )

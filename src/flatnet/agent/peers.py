"""How it works — the peer watcher: every other node's lease, programmed into the kernel.

One thread. It lists the subnet leases (``/flatnet/subnets/``) at revision R,
programs them, then watches from R+1: each event (a node appeared, changed
its lease, or its lease was deleted or expired) updates the map and the
kernel converges at once — events that arrive together are applied together.
With no event for ``resync`` seconds it converges anyway, which repairs
objects removed by hand. If the watch's history was compacted it lists
again; if the store is unreachable it keeps the kernel as it is (the data
plane lives there) and retries. (That loop is :func:`flatnet.store.follow.follow`,
shared with the service proxy and the DNS server.)

After every convergence it publishes ``/flatnet/status/<node>`` when it
changed: which peers are programmed and which the backend refused, and why
(``flatnet get nodes -o wide`` shows it). A backend with a daemon of its own
(bgp: BIRD) is also asked what it holds every half second
(:meth:`PeerWatcher.refresh`, from the agent): each session's state, and the
peers whose routes it has not installed yet, which count as pending.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from flatnet import keys
from flatnet.backends import Backend, Context
from flatnet.kernel.api import RouteTable
from flatnet.kernel.objects import Desired
from flatnet.model import Lease, PeerStatus
from flatnet.store import KV, Event, Store
from flatnet.store.follow import follow

__all__ = ["PeerWatcher"]

log = logging.getLogger("flatnet.agent.peers")


class PeerWatcher:
    def __init__(
        self,
        store: Store,
        backend: Backend,
        ctx: Context,
        routes: RouteTable,
        status_lease: int = 0,
        resync: float = 10.0,
        on_peers: Callable[[list[tuple[str, str]]], None] | None = None,
    ) -> None:
        """``routes`` is the node's route table (the kernel's, or a fake);
        ``on_peers`` is told (underlay IP, subnet) of the programmed peers
        after every sync (the fast path's VXLAN peers)."""
        self.store, self.backend, self.ctx, self.routes = store, backend, ctx, routes
        self.devices = backend.devices(ctx)
        self.on_peers = on_peers
        self.status_lease = status_lease
        self.resync = resync
        self.leases: dict[str, Lease] = {}
        self._status: PeerStatus | None = None
        self._want: Desired | None = None
        self._lock = threading.Lock()  # sync (peers thread) and refresh (agent)

    def rebind(self, status_lease: int) -> None:
        """The node's TTL lease was re-granted: the status key went with the old
        one, so publish it again (under the new lease) at the next sync."""
        self.status_lease = status_lease
        self._status = None

    # -- state --------------------------------------------------------------
    def peers(self) -> list[Lease]:
        return sorted(
            (lease for lease in self.leases.values() if lease.node != self.ctx.lease.node),
            key=lambda lease: lease.node,
        )

    def _apply(self, ev: Event) -> None:
        if ev.type == "delete":
            self.leases.pop(ev.key, None)
        else:
            self.leases[ev.key] = Lease.from_json(ev.value)

    def sync(self) -> None:
        """Converge the kernel to the current peers (idempotent)."""
        with self._lock:
            peers = self.peers()
            want = self._want = self.backend.desired(self.ctx, peers)
            changes = self.routes.converge(want, self.devices)
            self.backend.program(want)
            kept = [p for p in peers if p.node not in set(want.refused) | want.pending]
            if self.on_peers is not None:
                self.on_peers([(p.underlay_ip, p.subnet) for p in kept])
            if changes:
                log.info(
                    "peers converged: +%d -%d objects; programmed %s",
                    changes.added,
                    changes.removed,
                    ", ".join(p.node for p in kept) or "none",
                )
            before = self._status.refused if self._status is not None else {}
            for node, why in want.refused.items():
                if before.get(node) != why:
                    log.warning("%s", why)
            self._publish(peers, want)

    def refresh(self) -> None:
        """Ask the backend's daemon what it holds; publish the status if it changed."""
        with self._lock:
            if self._want is not None:
                self._publish(self.peers(), self._want)

    def _publish(self, peers: list[Lease], want: Desired) -> None:
        seen = self.backend.observe(self.ctx, peers)
        pending = set(want.pending) | (set(seen.unrouted) - set(want.refused))
        programmed = [p.node for p in peers if p.node not in set(want.refused) | pending]
        me = self.ctx.lease.node
        status = PeerStatus(
            me,
            self.backend.name,
            programmed,
            sorted(pending),
            dict(want.refused),
            dict(seen.sessions),
            seen.problem,
        )
        if status != self._status:
            if seen.problem and (self._status is None or self._status.problem != seen.problem):
                log.warning("%s", seen.problem)
            self._status = status
            self.store.put(keys.peer_status(me), status.to_json(), lease=self.status_lease)

    # -- the loop -----------------------------------------------------------
    def listed(self, kvs: list[KV], rev: int) -> None:
        self.leases = {kv.key: Lease.from_json(kv.value) for kv in kvs}
        self.sync()

    def changed(self, events: list[Event]) -> None:
        for ev in events:
            self._apply(ev)
        self.sync()

    def run(self, stop: threading.Event) -> None:
        follow(
            self.store,
            (keys.SUBNETS,),
            stop,
            self.listed,
            self.changed,
            self.sync,  # with no event for `resync` s: repairs what was removed by hand
            self.resync,
            log,
        )

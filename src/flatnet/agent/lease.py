"""The node's hold on its subnet: claimed once, kept alive, re-claimed if lost.

:meth:`LeaseKeeper.claim` grants a TTL lease in the store and claims (or
re-claims) the node subnet under it, publishing what peers need in the same
write. :meth:`LeaseKeeper.run` renews the TTL lease every third of its TTL;
when the store says it expired (the agent was away longer than the TTL, or the
store lost it), it grants a new one, claims the subnet again and tells every
subscriber the new TTL lease ID, so the keys they publish under it (peer
status, proxy status) come back. Subscribers are told; nobody pokes them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from flatnet.ipam import lease_subnet
from flatnet.model import Lease, NetworkConfig
from flatnet.store import Store

__all__ = ["LeaseKeeper"]

log = logging.getLogger("flatnet.agent.lease")


class LeaseKeeper:
    def __init__(
        self,
        store: Store,
        config: NetworkConfig,
        node: str,
        underlay_ip: str,
        lease_data: Callable[[str], dict[str, object]],
    ) -> None:
        """``lease_data`` maps the subnet to what the backend publishes for peers."""
        self.store, self.config, self.node = store, config, node
        self.underlay_ip = underlay_ip
        self.lease_data = lease_data
        self.ttl_lease = 0  # the store's TTL lease ID (0: none yet)
        self.lease: Lease | None = None
        self._subscribers: list[Callable[[int], None]] = []

    def subscribe(self, on_new_lease: Callable[[int], None]) -> None:
        """``on_new_lease(ttl_lease_id)`` after every re-claim."""
        self._subscribers.append(on_new_lease)

    def claim(self) -> Lease:
        self.ttl_lease = self.store.grant(self.config.lease_ttl)
        self.lease = lease_subnet(
            self.store, self.config, self.node, self.underlay_ip, self.ttl_lease, self.lease_data
        )
        return self.lease

    def renew(self) -> bool:
        """Keep the TTL lease alive; re-claim and tell the subscribers when it
        had expired. Returns whether a re-claim happened."""
        if self.store.keepalive(self.ttl_lease):
            return False
        log.warning("subnet lease expired; re-claiming")
        self.claim()
        for tell in self._subscribers:
            tell(self.ttl_lease)
        return True

    def run(self, stop: threading.Event) -> None:
        period = max(1.0, self.config.lease_ttl / 3)
        while not stop.wait(period):
            try:
                self.renew()
            except Exception as e:  # keep trying: the store may be back soon
                log.warning("lease keep-alive failed: %s", e)

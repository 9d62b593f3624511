"""Address management: node subnets from the pod CIDR, pod IPs from the node subnet.

Both are claims in the store made with create-if-absent, so two nodes (or two
processes on one node) never hold the same subnet or IP:

* ``lease_subnet`` — a node keeps the subnet it held before (its live lease, or
  the one its node record remembers, if nobody took it meanwhile); otherwise it
  claims the first free subnet. Never one another node holds.
* ``PodIPAM.allocate`` — idempotent per (container ID, ifname); hands out
  addresses round-robin after the last one given (like host-local, so a
  just-freed IP is not reused at once); ``.0``, the gateway ``.1`` and the
  broadcast address are reserved.
* ``release`` and ``gc(valid)`` free allocations; ``gc`` keeps only the
  attachments the runtime still knows (CNI GC's ``valid-attachments``).
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Callable, Iterable

from flatnet import keys
from flatnet.errors import StoreError, SubnetExhausted
from flatnet.model import Allocation, Lease, NetworkConfig, NodeRecord
from flatnet.store import KV, Store

__all__ = ["PodIPAM", "find_lease", "lease_subnet", "load_config", "save_config"]


def save_config(store: Store, cfg: NetworkConfig) -> NetworkConfig:
    """Store the cluster config unless one exists; return the one in force."""
    if store.create(keys.CONFIG, cfg.to_json()):
        return cfg
    return load_config(store)


def load_config(store: Store) -> NetworkConfig:
    kv = store.get(keys.CONFIG)
    if kv is None:
        raise StoreError(f"no cluster network config at {keys.CONFIG}")
    return NetworkConfig.from_json(kv.value)


def find_lease(store: Store, node: str) -> tuple[Lease, KV] | None:
    for kv in store.range(keys.SUBNETS):
        lease = Lease.from_json(kv.value)
        if lease.node == node:
            return lease, kv
    return None


def _candidates(cfg: NetworkConfig, node: str, store: Store) -> Iterable[ipaddress.IPv4Network]:
    rec = store.get(keys.node(node))
    remembered = NodeRecord.from_json(rec.value).pod_subnet if rec is not None else None
    if remembered:
        yield ipaddress.IPv4Network(remembered)
    yield from cfg.pod_network.subnets(new_prefix=cfg.node_subnet_length)


def lease_subnet(
    store: Store,
    cfg: NetworkConfig,
    node: str,
    underlay_ip: str,
    ttl_lease: int,
    backend_data: dict | Callable[[str], dict] | None = None,
) -> Lease:
    """Claim (or re-claim) this node's subnet, attached to ``ttl_lease``.
    ``backend_data`` may be a function of the subnet, so the lease is published
    once, already carrying what peers need."""
    data = backend_data if callable(backend_data) else (lambda _: backend_data or {})
    held = find_lease(store, node)
    if held is not None:
        old, kv = held
        lease = Lease(old.subnet, node, underlay_ip, cfg.backend, data(old.subnet))
        if store.cas(kv.key, lease.to_json(), kv.mod_revision, lease=ttl_lease):
            return _remember(store, lease)
    taken = {keys.subnet_of(kv.key) for kv in store.range(keys.SUBNETS)}
    for net in _candidates(cfg, node, store):
        if net in taken or not net.subnet_of(cfg.pod_network):
            continue
        lease = Lease(str(net), node, underlay_ip, cfg.backend, data(str(net)))
        if store.create(keys.subnet(net), lease.to_json(), lease=ttl_lease):
            return _remember(store, lease)
        taken.add(net)
    raise SubnetExhausted(
        f"no free /{cfg.node_subnet_length} subnet left in pod CIDR "
        f"{cfg.pod_cidr} for node '{node}'"
    )


def _remember(store: Store, lease: Lease) -> Lease:
    rec = NodeRecord(lease.node, lease.underlay_ip, lease.subnet)
    store.put(keys.node(lease.node), rec.to_json())
    return lease


class PodIPAM:
    """Pod addresses of one node subnet. Thread-safe; safe across processes."""

    def __init__(self, store: Store, subnet: str, node: str) -> None:
        self.store = store
        self.subnet = ipaddress.IPv4Network(subnet)
        self.node = node
        self.gateway = self.subnet.network_address + 1
        self.prefix = keys.ipam_prefix(self.subnet)
        self._lock = threading.Lock()
        self._last = int(self.gateway)

    def allocations(self) -> list[Allocation]:
        return [Allocation.from_json(kv.value) for kv in self.store.range(self.prefix)]

    def find(self, container_id: str, ifname: str) -> Allocation | None:
        for a in self.allocations():
            if a.container_id == container_id and a.ifname == ifname:
                return a
        return None

    def allocate(
        self, container_id: str, ifname: str, pod: str = "", netns: str = ""
    ) -> Allocation:
        with self._lock:
            held = self.allocations()  # one read serves both questions
            for a in held:
                if a.container_id == container_id and a.ifname == ifname:
                    return a
            used = {ipaddress.IPv4Address(a.ip) for a in held}
            first, last = int(self.gateway) + 1, int(self.subnet.broadcast_address) - 1
            span = last - first + 1
            for step in range(1, span + 1):
                ip = ipaddress.IPv4Address(first + (self._last - first + step) % span)
                if ip in used:
                    continue
                alloc = Allocation(
                    str(ip), container_id, ifname, self.node, pod, time.time(), netns
                )
                if self.store.create(self.prefix + str(ip), alloc.to_json()):
                    self._last = int(ip)
                    return alloc
            raise SubnetExhausted(
                f"subnet {self.subnet} of node '{self.node}' has no free "
                f"pod IP ({span} addresses in use)"
            )

    def release(self, container_id: str, ifname: str) -> Allocation | None:
        """Free the IP of (container, ifname); None when it held none (idempotent)."""
        for kv in self.store.range(self.prefix):
            a = Allocation.from_json(kv.value)
            if a.container_id == container_id and a.ifname == ifname:
                self.store.delete(kv.key, revision=kv.mod_revision)
                return a
        return None

    def gc(self, valid: set[tuple[str, str]], older_than: float = 0.0) -> list[Allocation]:
        """Free allocations whose (container, ifname) is not in ``valid``."""
        freed = []
        now = time.time()
        for kv in self.store.range(self.prefix):
            a = Allocation.from_json(kv.value)
            if (a.container_id, a.ifname) in valid or now - a.created < older_than:
                continue
            if self.store.delete(kv.key, revision=kv.mod_revision):
                freed.append(a)
        return freed

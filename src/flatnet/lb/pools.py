"""LoadBalancer address pools in the store, and the choice of a service's address.

A pool (``kind: IPAddressPool``, MetalLB's shape) lives at ``ippools/<name>``;
an address a service holds is claimed at ``lbips/<ip>`` (create-if-absent,
like cluster IPs), so two services never get one address. The choice
(:func:`choose`) is pure: an address asked for (``spec.loadBalancerIP``) must
lie in a pool and be free; otherwise the lowest free address of the first
pool (by name) that assigns automatically. A ``loadBalancerClass`` other than
flatnet's leaves the service to another implementation: no address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from flatnet import keys
from flatnet.errors import ConfigError
from flatnet.model import AddressPool, NetworkConfig, Service
from flatnet.store import Store

__all__ = ["CLASS", "apply", "choose", "delete", "load_all"]

CLASS = "flatnet.io/lb"  # the loadBalancerClass flatnet serves (and the default, unset)


def load_all(store: Store) -> dict[str, AddressPool]:
    return {keys.last(kv.key): AddressPool.from_json(kv.value) for kv in store.range(keys.POOLS)}


def _spans(p: AddressPool) -> list[tuple[str, ipaddress.IPv4Network]]:
    """Each entry as written, with the networks it covers."""
    out: list[tuple[str, ipaddress.IPv4Network]] = []
    for entry in p.addresses:
        if "-" not in entry:
            out.append((entry, ipaddress.IPv4Network(entry)))
            continue
        lo, hi = (ipaddress.IPv4Address(x.strip()) for x in entry.split("-", 1))
        out += [(entry, n) for n in ipaddress.summarize_address_range(lo, hi)]
    return out


def check(cfg: NetworkConfig, pools: Iterable[AddressPool], have: Iterable[AddressPool]) -> None:
    """Refuse a pool that overlaps the pod or service range, or another pool."""
    others = {p.name: p for p in have}
    for p in pools:
        for entry, net in _spans(p):
            for what, cidr in (("podCIDR", cfg.pod_cidr), ("serviceCIDR", cfg.service_cidr)):
                if net.overlaps(ipaddress.IPv4Network(cidr)):
                    raise ConfigError(
                        f"ipaddresspool {p.name}: spec.addresses: {entry} overlaps the "
                        f"cluster's {what} {cidr}"
                    )
            for o in others.values():
                if o.name != p.name and any(net.overlaps(n) for _, n in _spans(o)):
                    raise ConfigError(
                        f"ipaddresspool {p.name}: spec.addresses: {entry} overlaps pool {o.name}"
                    )
        others[p.name] = p


def apply(
    store: Store, cfg: NetworkConfig, pools: list[AddressPool]
) -> list[tuple[AddressPool, str]]:
    """Each pool with kubectl's verdict: created, configured or unchanged (not
    written again, so the announcers see no event)."""
    have = load_all(store)
    check(cfg, pools, have.values())
    out = []
    for p in pools:
        old = have.get(p.name)
        if old != p:
            store.put(keys.pool(p.name), p.to_json())
        out.append((p, "created" if old is None else "unchanged" if old == p else "configured"))
    return out


def delete(store: Store, names: Iterable[str]) -> list[str]:
    """Delete pools by name; refused while a service holds one of its addresses."""
    held = {keys.last(kv.key): kv.value for kv in store.range(keys.LB_IPS)}
    gone = []
    for name in names:
        kv = store.get(keys.pool(name))
        if kv is None:
            continue
        pool = AddressPool.from_json(kv.value)
        users = sorted(owner for ip, owner in held.items() if pool.holds(ip))
        if users:
            raise ConfigError(
                f"ipaddresspool {name}: in use by service(s) {', '.join(users)}; delete or "
                "change them first"
            )
        store.delete(kv.key)
        gone.append(name)
    return gone


def choose(
    svc: Service, old: Service | None, pools: dict[str, AddressPool], held: dict[str, str]
) -> tuple[str, str]:
    """(address, pool) for ``svc`` (("", "") when it gets none), given ``held``
    (address -> the service holding it). Errors name the service and the pools."""
    me, where = f"{svc.namespace}/{svc.name}", f"service {svc.namespace}/{svc.name}"
    if svc.type != "LoadBalancer" or svc.load_balancer_class not in ("", CLASS):
        return "", ""
    want = svc.load_balancer_ip
    kept = old is not None and old.ingress_ip and want in ("", old.ingress_ip)
    if kept and old is not None and old.pool in pools and pools[old.pool].holds(old.ingress_ip):
        return old.ingress_ip, old.pool
    if want:
        owner = held.get(want, me)
        if owner != me:
            raise ConfigError(
                f"{where}: spec.loadBalancerIP: {want} is already in use by service {owner}"
            )
        for p in sorted(pools.values(), key=lambda p: p.name):
            if p.holds(want):
                return want, p.name
        names = ", ".join(f"{p.name} ({', '.join(p.addresses)})" for p in pools.values())
        raise ConfigError(
            f"{where}: spec.loadBalancerIP: {want} is in no address pool "
            f"({names or 'there are none: apply a kind: IPAddressPool'})"
        )
    auto = [p for p in sorted(pools.values(), key=lambda p: p.name) if p.auto_assign]
    if not auto:
        raise ConfigError(
            f"{where}: no address pool assigns addresses automatically "
            f"({', '.join(pools) or 'there are none: apply a kind: IPAddressPool'})"
        )
    for p in auto:
        for lo, hi in p.ranges():
            for v in range(lo, hi + 1):
                ip = str(ipaddress.IPv4Address(v))
                if ip not in held:
                    return ip, p.name
    used = ", ".join(f"{p.name} ({p.size()} of {p.size()} in use)" for p in auto)
    raise ConfigError(f"{where}: no free address left in pool(s) {used}")

"""Services in the store: apply and delete, with cluster IPs, node ports and
LoadBalancer addresses (:mod:`flatnet.lb.pools`) claimed.

A cluster IP is claimed with create-if-absent at ``serviceips/<ip>`` and a node
port at ``nodeports/<proto>/<port>``, so two services never share one, even
when two ``apply`` run at once. ``apply`` checks every service of the file
against the store before it writes anything, and gives back any claim it made
if a later write fails: a bad file leaves nothing applied.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import replace

from flatnet import keys
from flatnet.errors import ConfigError
from flatnet.lb import pools
from flatnet.model import AddressPool, NetworkConfig, Service, ServicePort
from flatnet.store import Store

__all__ = [
    "DNS_SERVICE",
    "NODE_PORTS",
    "apply",
    "delete",
    "dns_ip",
    "load_all",
    "plan",
]

NODE_PORTS = range(30000, 32768)
DNS_SERVICE = ("kube-system", "kube-dns")


def dns_ip(cfg: NetworkConfig) -> str:
    """The cluster DNS VIP: the 10th address of the service CIDR (as kubeadm)."""
    return str(ipaddress.IPv4Network(cfg.service_cidr).network_address + 10)


def load_all(store: Store) -> dict[str, Service]:
    return {kv.key: Service.from_json(kv.value) for kv in store.range(keys.SERVICES)}


def _ip_key(ip: str) -> str:
    return keys.service_ip(ip)


def _port_key(p: ServicePort) -> str:
    return keys.node_port(p.protocol, p.node_port)


def _owner(svc: Service) -> str:
    return f"{svc.namespace}/{svc.name}"


def _plan(
    cfg: NetworkConfig,
    svc: Service,
    old: Service | None,
    held: dict[str, str],
    addr_pools: dict[str, AddressPool],
) -> Service:
    """``svc`` with its cluster IP and node ports chosen, checked against ``held``
    (claim key -> owner: the store's claims and this apply's plans so far), which
    gets the new choices."""
    me, where = _owner(svc), f"service {_owner(svc)}"
    cidr = ipaddress.IPv4Network(cfg.service_cidr)
    ip = svc.cluster_ip
    if svc.type != "ExternalName" and ip != "None":
        if old is not None and old.cluster_ip not in ("", "None"):
            if ip and ip != old.cluster_ip:
                raise ConfigError(
                    f"{where}: spec.clusterIP: cannot change {old.cluster_ip} to {ip} "
                    "(the field is immutable; delete the service first)"
                )
            ip = old.cluster_ip
        elif ip:
            if ipaddress.IPv4Address(ip) not in cidr or ip in (
                str(cidr.network_address),
                str(cidr.broadcast_address),
            ):
                raise ConfigError(
                    f"{where}: spec.clusterIP: {ip} is not a usable address of the "
                    f"service CIDR {cidr}"
                )
            owner = held.get(_ip_key(ip), me)
            if owner != me:
                raise ConfigError(
                    f"{where}: spec.clusterIP: {ip} is already allocated to service {owner}"
                )
        else:
            ip = _free_ip(cidr, held)
            if not ip:
                raise ConfigError(f"{where}: no free cluster IP left in {cidr}")
        held[_ip_key(ip)] = me
    old_ports = {(p.port, p.protocol): p.node_port for p in (old.ports if old else ())}
    ports: list[ServicePort] = []
    for i, p in enumerate(svc.ports):
        if svc.has_node_ports:
            np = p.node_port or old_ports.get((p.port, p.protocol), 0)
            if np:
                owner = held.get(_port_key(replace(p, node_port=np)), me)
                if owner != me:
                    raise ConfigError(
                        f"{where}: spec.ports[{i}].nodePort: {np}/{p.protocol} is already "
                        f"allocated to service {owner}"
                    )
            else:
                free = (n for n in NODE_PORTS if _port_key(replace(p, node_port=n)) not in held)
                np = next(free, 0)
                if not np:
                    raise ConfigError(f"{where}: spec.ports[{i}].nodePort: no free node port")
            p = replace(p, node_port=np)
            held[_port_key(p)] = me
        ports.append(p)
    lb_held = {k.removeprefix(keys.LB_IPS): v for k, v in held.items() if k.startswith(keys.LB_IPS)}
    lb_ip, pool = pools.choose(svc, old, addr_pools, lb_held)
    if lb_ip:
        held[keys.lb_ip(lb_ip)] = me
    return replace(svc, cluster_ip=ip, ports=tuple(ports), ingress_ip=lb_ip, pool=pool)


def _free_ip(cidr: ipaddress.IPv4Network, held: dict[str, str]) -> str:
    base = int(cidr.network_address)
    for off in range(11, cidr.num_addresses - 1):  # .1-.10: kubernetes, kube-dns...
        ip = str(ipaddress.IPv4Address(base + off))
        if _ip_key(ip) not in held:
            return ip
    return ""


def plan(
    store: Store,
    cfg: NetworkConfig,
    services: Iterable[Service],
    new_pools: Iterable[AddressPool] = (),
) -> list[Service]:
    """The services as ``apply`` would store them (addresses and ports chosen),
    writing nothing: every mistake is found here. ``new_pools``: address pools
    the same apply writes first."""
    return _plans(store, cfg, list(services), new_pools)[0]


def _plans(
    store: Store, cfg: NetworkConfig, services: list[Service], new_pools: Iterable[AddressPool]
) -> tuple[list[Service], dict[str, Service], dict[str, str]]:
    seen: set[str] = set()
    for s in services:
        if s.key in seen:
            raise ConfigError(f"service {_owner(s)} is given twice")
        seen.add(s.key)
    current = load_all(store)
    held = {
        kv.key: kv.value
        for p in (keys.SERVICE_IPS, keys.NODE_PORTS, keys.LB_IPS)
        for kv in store.range(p)
    }
    planning = dict(held)
    for s in services:  # requested addresses first: a free pick must not take them
        if s.cluster_ip not in ("", "None"):
            planning.setdefault(_ip_key(s.cluster_ip), _owner(s))
        if s.load_balancer_ip:
            planning.setdefault(keys.lb_ip(s.load_balancer_ip), _owner(s))
    addr_pools = pools.load_all(store) | {p.name: p for p in new_pools}
    plans = [_plan(cfg, s, current.get(s.key), planning, addr_pools) for s in services]
    return plans, current, held


def apply(
    store: Store,
    cfg: NetworkConfig,
    services: Iterable[Service],
    new_pools: Iterable[AddressPool] = (),
) -> list[Service]:
    """Create or update services; all or nothing. Returns them as stored."""
    # every service is checked before anything is written
    plans, current, held = _plans(store, cfg, list(services), new_pools)
    claimed: list[str] = []
    try:
        for new in plans:
            if current.get(new.key) == new:
                continue  # unchanged: no write, so no event for the proxies
            _claim(store, new, current.get(new.key), held, claimed)
            store.put(new.key, new.to_json())
    except BaseException:
        for key in claimed:
            store.delete(key)
        raise
    return plans


def _claim(
    store: Store, svc: Service, old: Service | None, held: dict[str, str], claimed: list[str]
) -> None:
    """Claim what ``svc`` holds that the store (``held``) does not give it yet."""
    claims = [_ip_key(svc.cluster_ip)] if svc.cluster_ip not in ("", "None") else []
    claims += [_port_key(p) for p in svc.ports if p.node_port]
    claims += [keys.lb_ip(svc.ingress_ip)] if svc.ingress_ip else []
    for k in claims:
        if held.get(k) == _owner(svc):
            continue
        if not store.create(k, _owner(svc)):
            raise ConfigError(
                f"service {_owner(svc)}: {k.removeprefix(keys.PREFIX)} was taken meanwhile; "
                "apply again"
            )
        claimed.append(k)
    if old is not None:  # node ports and the address the new version gave up
        gave_up = {_port_key(p) for p in old.ports if p.node_port}
        gave_up |= {keys.lb_ip(old.ingress_ip)} if old.ingress_ip else set()
        for k in gave_up - set(claims):
            store.delete(k)


def delete(store: Store, names: Iterable[tuple[str, str]]) -> list[str]:
    """Delete services by (namespace, name); returns the ones that existed."""
    gone = []
    for ns, name in names:
        key = keys.service(ns, name)
        kv = store.get(key)
        if kv is None:
            continue
        svc = Service.from_json(kv.value)
        store.delete(key)
        if svc.cluster_ip not in ("", "None"):
            store.delete(_ip_key(svc.cluster_ip))
        for p in svc.ports:
            if p.node_port:
                store.delete(_port_key(p))
        if svc.ingress_ip:
            store.delete(keys.lb_ip(svc.ingress_ip))
        gone.append(f"{ns}/{name}")
    return gone

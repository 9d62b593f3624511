"""Who announces which LoadBalancer address (pure), MetalLB's rules.

- A service is announced only while it has a ready endpoint; with
  ``externalTrafficPolicy: Local`` only nodes holding one are eligible (they
  keep the client's IP), with ``Cluster`` every live node (Ready: its agent's
  heartbeat is alive).
- **BGP**: every eligible node announces the /32 to its external peers; the
  router spreads flows over them (ECMP).
- **L2**: one node per address answers ARP for it: among the eligible nodes,
  the one with the smallest ``sha256("<node>#<ip>")`` — every node computes
  the same winner from the same store, so there is no election; when the
  winner dies its heartbeat lapses and the next in that order takes over.
  Only nodes with the address on one of their underlay networks (their
  heartbeat says which) are candidates: on a routed underlay an address on
  no segment has none, and nobody claims to announce it.

The pool's ``advertisement`` decides the mode; unset, BGP where the nodes run
the bgp backend, else L2.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from flatnet.model import AddressPool, Service
from flatnet.view import Endpoint

__all__ = ["Announcement", "l2_order", "mode", "plan"]


@dataclass(frozen=True)
class Announcement:
    """One node's part: the addresses it announces by BGP and those it answers ARP for."""

    bgp: frozenset[str] = frozenset()
    l2: frozenset[str] = frozenset()


def mode(pool: AddressPool | None, backend: str) -> str:
    if pool is not None and pool.advertisement:
        return pool.advertisement
    return "BGP" if backend == "bgp" else "L2"


def l2_order(ip: str, nodes: Iterable[str]) -> list[str]:
    """Nodes in the order they would take ``ip`` over: the first answers ARP."""
    return sorted(nodes, key=lambda n: (hashlib.sha256(f"{n}#{ip}".encode()).hexdigest(), n))


def on_link(ip: str, nodes: Iterable[str], nets: Mapping[str, Sequence[str]]) -> list[str]:
    """Those of ``nodes`` with ``ip`` on one of their networks (or none known)."""
    addr = ipaddress.IPv4Address(ip)
    return [
        n
        for n in nodes
        if not nets.get(n) or any(addr in ipaddress.IPv4Network(c, strict=False) for c in nets[n])
    ]


def eligible(svc: Service, eps: Iterable[Endpoint], alive: set[str]) -> set[str]:
    eps = list(eps)
    if not eps:
        return set()
    if svc.external_local:
        return {e.node for e in eps} & alive
    return set(alive)


def plan(
    me: str,
    services: Iterable[tuple[Service, list[Endpoint]]],
    alive: set[str],
    pools: dict[str, AddressPool],
    backend: str,
    nets: Mapping[str, Sequence[str]] | None = None,
) -> Announcement:
    """What node ``me`` announces, given each LoadBalancer service with its
    ready endpoints (all ports together), the live nodes and the pools. In
    L2 mode only nodes with the address on one of their underlay networks
    (``nets``; a node that published none counts as on-link) can answer ARP:
    anywhere else no one would ask them."""
    bgp, l2 = set(), set()
    for svc, eps in services:
        if not svc.ingress_ip:
            continue
        nodes = eligible(svc, eps, alive)
        if me not in nodes:
            continue
        if mode(pools.get(svc.pool), backend) == "BGP":
            bgp.add(svc.ingress_ip)
        elif l2_order(svc.ingress_ip, on_link(svc.ingress_ip, nodes, nets or {}))[:1] == [me]:
            l2.add(svc.ingress_ip)
    return Announcement(frozenset(bgp), frozenset(l2))

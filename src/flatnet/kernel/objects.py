"""Kernel objects as plain values: what a backend wants, what the kernel holds.

A leaf module (it imports nothing of flatnet): backends build these, the
kernel package programs them, fakes record them, tests compare them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "RTPROT_FLATNET",
    "BgpSession",
    "Changes",
    "Desired",
    "Fdb",
    "Neigh",
    "Route",
    "VxlanTunnel",
]

RTPROT_FLATNET = 66  # the route protocol number marking routes flatnet owns


@dataclass(frozen=True)
class Route:
    dst: str  # CIDR
    gateway: str
    dev: str
    onlink: bool = False


@dataclass(frozen=True)
class Neigh:
    ip: str
    mac: str
    dev: str


@dataclass(frozen=True)
class Fdb:
    mac: str
    dst: str  # the peer's underlay IP
    dev: str


@dataclass(frozen=True)
class BgpSession:
    """A BGP session a node's BIRD holds: to another node (``mesh``; on a
    reflector, to a ``rr-client``) or to a router outside the cluster
    (``external``)."""

    name: str  # the peer node's name, or the external peer's
    ip: str
    asn: int
    kind: str = "mesh"  # mesh | rr-client | external


@dataclass(frozen=True)
class Desired:
    """What a backend wants for a set of peers: the routes, neighbours and FDB
    entries to hold; for a userspace tunnel, where each peer subnet is sent
    (``forward``: subnet -> (underlay IP, UDP port)); for a routing daemon,
    the BGP sessions it holds (``bgp``); and the peers it did not
    program (refused: why; pending: not published enough yet)."""

    routes: frozenset[Route] = frozenset()
    neigh: frozenset[Neigh] = frozenset()
    fdb: frozenset[Fdb] = frozenset()
    refused: dict[str, str] = field(default_factory=dict)  # node -> why
    pending: frozenset[str] = frozenset()  # nodes that have not published enough yet
    forward: dict[str, tuple[str, int]] = field(default_factory=dict)
    bgp: frozenset[BgpSession] = frozenset()  # sessions for a routing daemon (bgp)


@dataclass(frozen=True)
class Changes:
    """How many objects one convergence added (or replaced) and removed."""

    added: int = 0
    removed: int = 0

    def __bool__(self) -> bool:
        return bool(self.added or self.removed)


@dataclass(frozen=True)
class VxlanTunnel:
    """A VXLAN tunnel a backend offers (the fast path encapsulates and
    decapsulates for it): VNI, UDP port, the VXLAN device, the underlay
    device and this node's underlay IP."""

    vni: int
    port: int
    dev: str
    underlay: str
    local_ip: str

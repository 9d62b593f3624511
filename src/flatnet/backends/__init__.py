"""Node-to-node forwarding, pluggable like flannel's backends.

A backend answers one question: *which kernel objects does this set of peers
imply on this node?* The agent's peer watcher (:mod:`flatnet.agent.peers`)
calls :meth:`Backend.sync` with every peer's lease whenever the set changes
and periodically; :mod:`flatnet.kernel.routes` converges the node's kernel to
the :class:`Desired` state — adding what is missing, replacing what differs,
deleting what flatnet owns but no longer wants, touching nothing else.

Contract, in call order (all run in the agent; ``ctx.ns`` names the node's
namespace, None on a real host):

0. ``lease_data(subnet, options)`` — pure: what peers need to reach this node
   (published in the lease as ``backend_data``, in the same write as the
   subnet claim, so peers see a new node once, complete). A ``port`` in it
   is the UDP port the backend's tunnel uses, cluster-wide; the agent exempts
   that traffic from conntrack (:mod:`flatnet.agent.node`).
1. ``setup(ctx)`` — once at start, idempotent: create the backend's devices;
   returns the same data as ``lease_data``.
2. ``pod_mtu(ctx)`` — the MTU pods and the bridge get (underlay MTU minus the
   encapsulation overhead).
3. ``desired(ctx, peers)`` — pure: the routes / neighbours / FDB entries for
   those peers, plus a reason for every peer it refuses; then, once the
   kernel holds them, ``program(want)`` hands the backend's own data plane
   its part (udp's forwarding table; a no-op for the kernel's backends).
4. ``devices(ctx)`` — the devices whose neighbour and FDB entries it owns;
   ``tunnel(ctx)`` — the VXLAN tunnel it offers (the fast path encapsulates
   for it), or None.
5. ``stop()`` — the agent stops: let go of what the process holds (the kernel
   objects stay, so traffic goes on).
6. ``teardown(ctx)`` — remove the backend's devices (switching backends).
7. ``observe(ctx, peers)`` — what the backend's own daemon holds now, asked
   every half second (bgp: each BGP session's state, the peers whose routes
   BIRD has not installed yet); empty for the kernel's backends.

Modules register themselves with :func:`register`; :func:`get` builds one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from flatnet.errors import ConfigError
from flatnet.kernel.objects import RTPROT_FLATNET, Desired, Fdb, Neigh, Route, VxlanTunnel
from flatnet.model import Lease

__all__ = [
    "RTPROT_FLATNET",
    "Backend",
    "Context",
    "Desired",
    "Fdb",
    "Neigh",
    "NoDevices",
    "Observed",
    "Route",
    "get",
    "names",
    "register",
]


@dataclass(frozen=True)
class Context:
    """What a backend knows about its own node."""

    ns: str | None
    lease: Lease  # this node's own lease (subnet, underlay IP)
    underlay_dev: str
    underlay_mtu: int
    underlay_nets: tuple[str, ...]  # the CIDRs directly connected on the underlay device
    options: dict[str, Any] = field(default_factory=dict)
    state_dir: str = "/run/flatnet"  # where a backend keeps its daemon's files
    pod_cidr: str = "10.244.0.0/16"

    def on_link(self, ip: str) -> bool:
        """Is ``ip`` on this node's L2 segment (reachable without a router)?"""
        a = ipaddress.IPv4Address(ip)
        return any(a in ipaddress.IPv4Network(n, strict=False) for n in self.underlay_nets)


@dataclass(frozen=True)
class Observed:
    """What a backend's daemon holds now: per peer the session state, the peers
    not routed yet, and a problem with the daemon itself ("" when none)."""

    sessions: dict[str, str] = field(default_factory=dict)
    unrouted: frozenset[str] = frozenset()
    problem: str = ""


class Backend(Protocol):
    name: str

    def lease_data(self, subnet: str, options: dict[str, object]) -> dict[str, object]: ...

    def setup(self, ctx: Context) -> dict[str, object]: ...

    def pod_mtu(self, ctx: Context) -> int: ...

    def desired(self, ctx: Context, peers: list[Lease]) -> Desired: ...

    def program(self, want: Desired) -> None: ...

    def devices(self, ctx: Context) -> tuple[str, ...]: ...

    def tunnel(self, ctx: Context) -> VxlanTunnel | None: ...

    def stop(self) -> None: ...

    def teardown(self, ctx: Context) -> None: ...

    def observe(self, ctx: Context, peers: list[Lease]) -> Observed: ...


class NoDevices:
    """For backends that make no devices of their own: the no-op parts."""

    def lease_data(self, subnet: str, options: dict[str, object]) -> dict[str, object]:
        return {}

    def setup(self, ctx: Context) -> dict[str, object]:
        return {}

    def pod_mtu(self, ctx: Context) -> int:
        return ctx.underlay_mtu

    def devices(self, ctx: Context) -> tuple[str, ...]:
        return ()

    def tunnel(self, ctx: Context) -> VxlanTunnel | None:
        return None

    def program(self, want: Desired) -> None:
        return None

    def stop(self) -> None:
        return None

    def teardown(self, ctx: Context) -> None:
        return None

    def observe(self, ctx: Context, peers: list[Lease]) -> Observed:
        return Observed()


_REGISTRY: dict[str, Callable[[], Backend]] = {}


def register(name: str) -> Callable[[Callable[[], Backend]], Callable[[], Backend]]:
    def deco(factory: Callable[[], Backend]) -> Callable[[], Backend]:
        _REGISTRY[name] = factory
        return factory

    return deco


def _load() -> None:
    from flatnet.backends import bgp, hostgw, none, udp, vxlan  # noqa: F401  (they register)


def names() -> list[str]:
    _load()
    return sorted(_REGISTRY)


def get(name: str) -> Backend:
    _load()
    if name not in _REGISTRY:
        raise ConfigError(f"backend '{name}' is not one of {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]()

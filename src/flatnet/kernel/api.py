"""The seams between flatnet's control logic and the kernel: small Protocols.

Each has a real implementation in this package and a fake in
:mod:`flatnet.kernel.fake` that records what it was asked, so the agent's
parts (peer watcher, service proxy, pod network's fast-path bookkeeping) are
unit-tested without root. Contracts, for real and fake alike:

- every method may be called from any thread;
- the namespace is fixed when the object is made (``ns``; None: the
  calling process's own) — no method switches a caller's thread;
- deleting what is already gone is success.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from flatnet.kernel.conntrack import Flow
from flatnet.kernel.objects import Changes, Desired

__all__ = ["ConntrackTable", "FastPathMaps", "Firewall", "PodLinks", "RouteTable"]


class RouteTable(Protocol):
    """Routes, neighbours and FDB entries flatnet owns in one namespace
    (real: :class:`flatnet.kernel.routes.Routes`)."""

    def converge(self, want: Desired, devices: tuple[str, ...] = ()) -> Changes:
        """Hold exactly ``want``'s routes (protocol 66) and, on ``devices``, its
        permanent neighbours and FDB entries; touch nothing else."""
        ...


class Firewall(Protocol):
    """One nftables context (real: :class:`flatnet.kernel.nft.Nft`)."""

    ns: str | None

    def apply(self, script: str, what: str = "nftables change") -> str:
        """Run ``script`` as one atomic transaction; KernelError naming ``what``."""
        ...

    def list_json(self, what: str) -> list[dict[str, Any]]: ...


class ConntrackTable(Protocol):
    """The conntrack table of one namespace (real: :class:`flatnet.kernel.conntrack.Conntrack`)."""

    def delete_udp(self, targets: Iterable[tuple[str, int, str]]) -> int:
        """Delete the UDP entries each ``(dst, dport, reply_src)`` names (dst ""
        any address); returns how many went."""
        ...

    def delete_where(self, doomed: Callable[[Flow], bool]) -> int:
        """Delete every entry ``doomed`` says; returns how many went."""
        ...


class FastPathMaps(Protocol):
    """The fast path's maps once it is installed (real:
    :class:`flatnet.fastpath.loader.FastPath`)."""

    def add(self, ip: str, veth: str) -> None:
        """A new pod: its host veth gets the program, its IP an entry."""
        ...

    def delete(self, ip: str) -> None:
        """A pod gone: its entry goes."""
        ...

    def set_peers(self, peers: list[tuple[str, str]]) -> None:
        """The programmed peers as (underlay IP, pod subnet)."""
        ...

    def close(self) -> None: ...


class PodLinks(Protocol):
    """The kernel side of bridge-mode pod attachments in one node namespace
    (real: :class:`flatnet.kernel.veths.NodeVeths`). Refusals of ``add_veth``
    raise :class:`~flatnet.errors.SyscallError` with the kernel's errno."""

    def index(self, name: str) -> int | None: ...

    def add_veth(
        self, host: str, mac: str, master: int, mtu: int, peer: str, peer_mac: str, pod_ns: str
    ) -> None: ...

    def configure(self, pod_ns: str, ifname: str, ip: str, plen: int, gateway: str) -> None: ...

    def unconfigure(self, pod_ns: str, ifname: str, ip: str, plen: int) -> bool:
        """False when ``pod_ns`` cannot be entered."""
        ...

    def delete(self, name: str) -> bool: ...

    def mtus(self, prefix: str) -> dict[str, int]:
        """name -> MTU of the links named ``prefix``..., in one round trip."""
        ...

    def set_mtu(self, name: str, mtu: int) -> bool:
        """Set a host veth's MTU; False when it is gone."""
        ...

    def set_pod_mtu(self, pod_ns: str, ifname: str, mtu: int) -> bool:
        """Set the MTU of ``ifname`` in ``pod_ns``; False when that cannot be entered."""
        ...

    def doom(self, names: set[str], group: int) -> bool:
        """Down and into ``group`` (destroyed later by :meth:`reap`)."""
        ...

    def reap(self, group: int) -> None: ...

    def veths(self, prefix: str) -> dict[str, int]:
        """name -> link group, of the veths named ``prefix``..."""
        ...

    def problem(
        self, host: str, bridge: str, pod_ns: str, ifname: str, cidr: str, gateway: str
    ) -> str | None: ...

    def close(self) -> None: ...

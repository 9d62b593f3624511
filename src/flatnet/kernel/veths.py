"""The kernel side of bridge-mode pod attachments in one node namespace.

:class:`NodeVeths` is the real :class:`~flatnet.kernel.api.PodLinks`: one
hand-encoded rtnetlink socket in the node namespace (:mod:`flatnet.kernel.rtnl`,
the CNI hot path) for the host side, and a short-lived one inside the pod's
namespace for the pod side. :mod:`flatnet.agent.pods` decides; this does.
"""

from __future__ import annotations

import os
import socket

from flatnet.errors import KernelError, NamespaceNotFound
from flatnet.kernel import links, netns
from flatnet.kernel.rtnl import Rtnl, RtnlError

__all__ = ["NodeVeths"]


class NodeVeths:
    """Pod veths of the node namespace ``node_ns``. Thread-safe."""

    def __init__(self, node_ns: str | None) -> None:
        self.node_ns = node_ns
        self.rtnl = Rtnl(netns.socket_in(node_ns, socket.AF_NETLINK, socket.SOCK_RAW))

    def close(self) -> None:
        self.rtnl.close()

    def index(self, name: str) -> int | None:
        return self.rtnl.index(name)

    def add_veth(
        self, host: str, mac: str, master: int, mtu: int, peer: str, peer_mac: str, pod_ns: str
    ) -> None:
        """One request: ``host`` on bridge ``master``, up; ``peer`` born in ``pod_ns``.
        A refusal raises :class:`~flatnet.kernel.rtnl.RtnlError` with the kernel's errno."""
        fd = os.open(pod_ns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.rtnl.add_veth(host, mac, master, mtu, peer, peer_mac, fd)
        finally:
            os.close(fd)

    def configure(self, pod_ns: str, ifname: str, ip: str, plen: int, gateway: str) -> None:
        """``ifname`` in ``pod_ns`` up, holding ``ip/plen``, default route via ``gateway``."""

        def configure() -> None:
            with Rtnl() as r:
                idx = r.index(ifname)
                if idx is None:
                    raise KernelError(f"interface '{ifname}' vanished from '{pod_ns}'")
                r.up_with_default(idx, ip, plen, gateway)

        try:
            netns.run_in(pod_ns, configure)
        except RtnlError as e:
            raise KernelError(
                f"failed to configure '{ifname}' with {ip}/{plen} in '{pod_ns}': {e.strerror}"
            ) from e

    def unconfigure(self, pod_ns: str, ifname: str, ip: str, plen: int) -> bool:
        """``ifname`` in ``pod_ns`` down and without ``ip``; False when the
        namespace cannot be entered (empty, or its path already gone)."""

        def clear() -> None:
            with Rtnl() as r:
                idx = r.index(ifname)
                if idx is not None:
                    r.down_without_address(idx, ip, plen)

        if not pod_ns:
            return False
        try:
            netns.run_in(pod_ns, clear)
        except NamespaceNotFound:
            return False
        except RtnlError as e:
            raise KernelError(
                f"failed to take {ip}/{plen} off '{ifname}' in '{pod_ns}': {e.strerror}"
            ) from e
        return True

    def mtus(self, prefix: str) -> dict[str, int]:
        return links.mtus(self.node_ns, prefix)

    def set_mtu(self, name: str, mtu: int) -> bool:
        return links.set_mtu(self.node_ns, name, mtu)

    def set_pod_mtu(self, pod_ns: str, ifname: str, mtu: int) -> bool:
        if not pod_ns or not netns.exists(pod_ns):
            return False
        try:
            return links.set_mtu(pod_ns, ifname, mtu)
        except NamespaceNotFound:
            return False

    def delete(self, name: str) -> bool:
        return self.rtnl.delete(name)

    def doom(self, names: set[str], group: int) -> bool:
        """These links down and into ``group``; whether any was there."""
        return any([self.rtnl.set_link(n, up=False, group=group) for n in names])

    def reap(self, group: int) -> None:
        """Destroy every link in ``group`` (one kernel operation)."""
        self.rtnl.delete_group(group)

    def veths(self, prefix: str) -> dict[str, int]:
        """Veths whose name starts with ``prefix``: name -> link group."""
        return links.links_of_kind(self.node_ns, "veth", prefix)

    def problem(
        self, host: str, bridge: str, pod_ns: str, ifname: str, cidr: str, gateway: str
    ) -> str | None:
        return links.attachment_problem(self.node_ns, host, bridge, pod_ns, ifname, cidr, gateway)

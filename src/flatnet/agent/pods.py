"""How it works — a pod's attachment in bridge mode.

ADD, in this order (each step undone if a later one fails, so a failed ADD
leaves no veth, address or IP allocation):

1. an IP from the node subnet, keyed by (container ID, ifname);
2. a veth pair made in one netlink call: host end ``fl<hash>`` in the node
   namespace, peer ``<ifname>`` created directly inside the pod's namespace;
3. host end: enslaved to the bridge, MTU, up;
4. pod end (via a netlink socket opened in the pod namespace): the address,
   MTU, up, and a default route via the gateway ``.1``.

Per pod: 1 veth pair, 1 address, 1 route in the pod, 1 store key. DEL is
idempotent: it frees the IP and deletes the host veth if either still exists;
a gone namespace is success.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from flatnet.errors import CNIError, KernelError, NamespaceNotFound
from flatnet.ipam import PodIPAM
from flatnet.kernel import links, netns

__all__ = ["Attachment", "PodNetwork"]


@dataclass(frozen=True)
class Attachment:
    container_id: str
    ifname: str
    netns: str
    address: str  # CIDR
    gateway: str
    host_veth: str
    host_mac: str
    pod_mac: str
    mtu: int


class PodNetwork:
    """Bridge-mode pod plumbing for one node. Thread-safe (a socket per call)."""

    def __init__(self, node_ns: str | None, bridge: str, ipam: PodIPAM, mtu: int) -> None:
        self.node_ns, self.bridge, self.ipam, self.mtu = node_ns, bridge, ipam, mtu
        self.plen = ipam.subnet.prefixlen

    @contextlib.contextmanager
    def _node(self) -> Iterator[IPRoute]:
        """A netlink socket in the node namespace for one request (pyroute2's sync
        IPRoute belongs to the thread that made it, so requests cannot share one)."""
        with netns.iproute(self.node_ns) as ipr:
            yield ipr

    def add(self, cid: str, pod_ns: str, ifname: str, pod: str = "") -> Attachment:
        if not os.path.exists(pod_ns):
            raise CNIError(4, f"CNI_NETNS '{pod_ns}' does not exist")
        host = links.host_veth_name(cid, ifname)
        with contextlib.ExitStack() as undo:
            alloc = self.ipam.allocate(cid, ifname, pod)
            undo.callback(self.ipam.release, cid, ifname)
            with self._node() as ipr:
                host_mac = self._make_veth(ipr, host, pod_ns, ifname)
                undo.callback(self._drop_veth, host)
            pod_mac = self._configure_pod(pod_ns, ifname, alloc.ip)
            undo.pop_all()
        return Attachment(
            cid,
            ifname,
            pod_ns,
            f"{alloc.ip}/{self.plen}",
            str(self.ipam.gateway),
            host,
            host_mac,
            pod_mac,
            self.mtu,
        )

    def _make_veth(self, ipr, host: str, pod_ns: str, ifname: str) -> str:  # type: ignore[no-untyped-def]
        fd = os.open(pod_ns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            ipr.link(
                "add",
                ifname=host,
                kind="veth",
                mtu=self.mtu,
                peer={"ifname": ifname, "net_ns_fd": fd, "mtu": self.mtu},
            )
        except NetlinkError as e:
            what = "exists already" if e.code == errno.EEXIST else str(e)
            raise KernelError(
                f"failed to create veth '{host}' <-> '{ifname}' in '{pod_ns}': {what}"
            ) from e
        finally:
            os.close(fd)
        try:
            br = ipr.link_lookup(ifname=self.bridge)
            if not br:
                raise KernelError(f"bridge '{self.bridge}' is missing; is the agent set up?")
            idx = ipr.link_lookup(ifname=host)[0]
            ipr.link("set", index=idx, master=br[0], state="up")
            return str(ipr.get_links(idx)[0].get("IFLA_ADDRESS"))
        except NetlinkError as e:
            raise KernelError(
                f"failed to attach veth '{host}' to bridge '{self.bridge}': {e}"
            ) from e

    def _drop_veth(self, host: str) -> None:
        with self._node() as ipr:
            links.delete_link(ipr, host)

    def _configure_pod(self, pod_ns: str, ifname: str, ip: str) -> str:
        try:
            with netns.iproute(pod_ns) as ipr:
                idx = ipr.link_lookup(ifname=ifname)[0]
                ipr.addr("add", index=idx, address=ip, prefixlen=self.plen)
                ipr.link("set", index=idx, state="up")
                ipr.route("add", dst="0.0.0.0/0", gateway=str(self.ipam.gateway), oif=idx)
                return str(ipr.get_links(idx)[0].get("IFLA_ADDRESS"))
        except NetlinkError as e:
            raise KernelError(f"failed to configure '{ifname}' with {ip} in '{pod_ns}': {e}") from e

    def delete(self, cid: str, ifname: str) -> None:
        self.ipam.release(cid, ifname)
        self._drop_veth(links.host_veth_name(cid, ifname))

    def check(self, cid: str, pod_ns: str, ifname: str) -> None:
        alloc = self.ipam.find(cid, ifname)
        if alloc is None:
            raise CNIError(3, f"container '{cid}' interface '{ifname}' has no IP allocation")
        host = links.host_veth_name(cid, ifname)
        with self._node() as ipr:
            link = links.get_link(ipr, host)
            br = ipr.link_lookup(ifname=self.bridge)
            if link is None or not br or link.get("IFLA_MASTER") != br[0]:
                raise CNIError(100, f"host veth '{host}' is missing or not on '{self.bridge}'")
        try:
            with netns.iproute(pod_ns) as ipr:
                link = links.get_link(ipr, ifname)
                if link is None:
                    raise CNIError(100, f"interface '{ifname}' is missing in '{pod_ns}'")
                if (alloc.ip, self.plen) not in links.link_addrs(ipr, link["index"]):
                    raise CNIError(100, f"'{ifname}' in '{pod_ns}' lacks {alloc.ip}/{self.plen}")
                gws = {r.get("RTA_GATEWAY") for r in ipr.get_default_routes(family=2)}
                if str(self.ipam.gateway) not in gws:
                    raise CNIError(100, f"no default route via {self.ipam.gateway} in '{pod_ns}'")
        except NamespaceNotFound as e:
            raise CNIError(4, f"CNI_NETNS '{pod_ns}' does not exist") from e

    def host_veths(self) -> set[str]:
        """Names of the flatnet host veths on this node."""
        with self._node() as ipr:
            return {
                n
                for link in ipr.get_links()
                if (n := link.get("IFLA_IFNAME", "")).startswith("fl")
                and link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "veth"
            }

    def gc(self, valid: set[tuple[str, str]], older_than: float = 0.0) -> int:
        """Free IPs and host veths of attachments not in ``valid``; returns IPs freed."""
        keep = {links.host_veth_name(c, i) for c, i in valid}
        freed = self.ipam.gc(valid, older_than)
        stale = {links.host_veth_name(a.container_id, a.ifname) for a in freed}
        if not older_than:
            stale |= self.host_veths() - keep
        with self._node() as ipr:
            for name in stale - keep:
                links.delete_link(ipr, name)
        return len(freed)

    def orphans(self, grace: float) -> list[str]:
        """Reclaim IPs whose host veth vanished (the pod's namespace was deleted
        without a DEL), if allocated longer than ``grace`` seconds ago."""
        present = self.host_veths()
        valid = {
            (a.container_id, a.ifname)
            for a in self.ipam.allocations()
            if links.host_veth_name(a.container_id, a.ifname) in present
        }
        return [a.ip for a in self.ipam.gc(valid, older_than=grace)]

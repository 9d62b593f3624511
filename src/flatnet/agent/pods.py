"""How it works — a pod's attachment in bridge mode.

ADD, in this order (each step undone if a later one fails, so a failed ADD
leaves no veth, address or IP allocation):

1. an IP from the node subnet, keyed by (container ID, ifname); the policy
   table admits the pod with it (isolated from its first packet);
2. the pod's identity (host veth, MAC, IP) enters the node's anti-spoofing
   table (:mod:`flatnet.policy.guard`): from its first frame it can send only
   as itself; one rtnetlink request in the node namespace makes the veth pair: host end
   ``fl<hash>`` already on the bridge and up, peer ``<ifname>`` born inside
   the pod's namespace; MACs are chosen here (pod: ``0a:58:<ip>``, so a
   reused IP keeps its MAC and no neighbour cache goes stale);
3. one write in the pod namespace: link up, the address, a default route via
   the gateway ``.1``.

Per pod: 1 veth pair, 1 address, 1 route in the pod, 1 store key.

DEL first takes the pod's side off the network: in the pod's namespace, one
write takes ``<ifname>`` down (the kernel drops its routes) and its address
off, so from the moment DEL returns the pod shows no address and no route,
and the IP it had cannot be in two namespaces at once. Where that namespace
cannot be entered (an empty ``CNI_NETNS``, a path already unmounted while the
namespace may live on), the veth pair is destroyed right away instead (~16
ms: the pod side goes with it). Only then is the IP freed; the host end goes
down into the link group :data:`DOOMED` (0.1 ms). A reaper
thread destroys the whole group with one ``RTM_DELLINK`` ``reap_delay``
seconds later. Destroying veths costs RCU grace periods under the kernel's
RTNL lock (~16 ms here) whether it is one pair or a hundred, and every other
link change on the node waits for it; batching pays that once per batch
instead of once per pod. An ADD that meets a doomed link of the same name
reaps at once. DEL is idempotent; a gone namespace is success.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

from flatnet.errors import CNIError, Code, KernelError, NamespaceNotFound, SyscallError
from flatnet.ipam import PodIPAM
from flatnet.kernel import links
from flatnet.kernel.api import FastPathMaps, PodLinks
from flatnet.model import Allocation
from flatnet.policy.guard import Guard, PodIdentity

DOOMED = 0x666C6E74  # link group of host veths waiting to be destroyed ("flnt")

__all__ = ["DOOMED", "Attachment", "PodNetwork", "attached"]


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
    """Bridge-mode pod plumbing for one node. Thread-safe."""

    def __init__(
        self,
        kernel: PodLinks,
        bridge: str,
        ipam: PodIPAM,
        mtu: int,
        reap_delay: float = 0.5,
        fast: FastPathMaps | None = None,
        admit: Callable[[str, str], None] | None = None,
        guard: Guard | None = None,
    ) -> None:
        """``kernel``: the node's pod links (:class:`flatnet.kernel.veths.NodeVeths`,
        or a fake); ``fast``: the fast path's maps, when it runs (pods enter and
        leave them); ``admit(pod, ip)``: called once the pod has its IP and
        before it has an interface (the policy table takes it in); ``guard``:
        the node's anti-spoofing table (each pod enters it before its veth exists)."""
        self.kernel, self.bridge, self.ipam, self.mtu = kernel, bridge, ipam, mtu
        self.reap_delay = reap_delay
        self.plen = ipam.subnet.prefixlen
        self._bridge_index = 0
        self._doomed = threading.Event()
        self._stopping = threading.Event()
        self._reaper: threading.Thread | None = None
        self.fast = fast
        self.admit = admit
        self.guard = guard

    def close(self) -> None:
        self.stop_reaper()
        self.kernel.close()
        if self.fast is not None:
            self.fast.close()

    def add(self, cid: str, pod_ns: str, ifname: str, pod: str = "") -> Attachment:
        if not os.path.exists(pod_ns):
            raise CNIError(Code.INVALID_ENVIRONMENT, f"CNI_NETNS '{pod_ns}' does not exist")
        host = links.host_veth_name(cid, ifname)
        with contextlib.ExitStack() as undo:
            alloc = self.ipam.allocate(cid, ifname, pod, pod_ns)
            undo.callback(self.ipam.release, cid, ifname)
            if self.admit is not None:
                self.admit(pod, alloc.ip)
            host_mac, pod_mac = _random_mac(), links.ip_mac(alloc.ip)
            if self.guard is not None:
                self.guard.add(PodIdentity(host, pod_mac, alloc.ip, pod))
                undo.callback(self.guard.remove, host)
            self._make_veth(host, host_mac, pod_ns, ifname, pod_mac)
            undo.callback(self.kernel.delete, host)
            gw = str(self.ipam.gateway)
            self.kernel.configure(pod_ns, ifname, alloc.ip, self.plen, gw)
            if self.fast is not None:
                self.fast.add(alloc.ip, host)
                undo.callback(self._unmap, [alloc.ip])
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

    def _master(self, fresh: bool = False) -> int:
        if fresh or not self._bridge_index:
            idx = self.kernel.index(self.bridge)
            if idx is None:
                raise KernelError(f"bridge '{self.bridge}' is missing; is the agent set up?")
            self._bridge_index = idx
        return self._bridge_index

    def _make_veth(self, host: str, mac: str, pod_ns: str, ifname: str, pod_mac: str) -> None:
        for attempt in range(3):
            try:
                master = self._master(fresh=attempt > 0)
                self.kernel.add_veth(host, mac, master, self.mtu, ifname, pod_mac, pod_ns)
                return
            except SyscallError as e:
                if e.errno == errno.EEXIST and attempt == 0:
                    self.reap()  # a doomed link of the same name, from a recent DEL
                    continue
                if e.errno == errno.ENODEV and attempt < 2:
                    continue  # the bridge was re-made: look its index up again
                what = "exists already" if e.errno == errno.EEXIST else e.strerror
                raise KernelError(
                    f"failed to create veth '{host}' <-> '{ifname}' in '{pod_ns}' "
                    f"on bridge '{self.bridge}': {what}"
                ) from e

    def delete(self, cid: str, ifname: str, pod_ns: str = "") -> None:
        """CNI DEL: the pod's side off the network, then its IP freed (see the
        module doc); idempotent."""
        alloc = self.ipam.find(cid, ifname)
        host = links.host_veth_name(cid, ifname)
        if alloc is not None and not self.kernel.unconfigure(pod_ns, ifname, alloc.ip, self.plen):
            self.kernel.delete(host)  # the pod side goes with it, now
        self.ipam.release(cid, ifname)
        self._unmap([alloc.ip] if alloc is not None else [])
        self._doom({host})
        if self.guard is not None:
            self.guard.remove(host)

    # -- destroying doomed host veths ----------------------------------------
    def _doom(self, names: set[str]) -> None:
        """Take these host veths down into :data:`DOOMED` (their pods lose carrier
        now) and have them destroyed in the reaper's next batch."""
        if self.kernel.doom(names, DOOMED):
            self._doomed.set()
            if self._reaper is None:
                self.reap()  # no reaper thread running: destroy them now

    def reap(self) -> None:
        """Destroy every doomed host veth now (one kernel operation)."""
        self.kernel.reap(DOOMED)

    def start_reaper(self) -> None:
        self.reap()  # left over from before a restart
        self._stopping.clear()
        self._reaper = threading.Thread(target=self._reap_loop, name="veth-reaper", daemon=True)
        self._reaper.start()

    def stop_reaper(self) -> None:
        t, self._reaper = self._reaper, None
        if t is not None:
            self._stopping.set()
            self._doomed.set()
            t.join()
        self.reap()

    def _reap_loop(self) -> None:
        while not self._stopping.is_set():
            self._doomed.wait()
            self._stopping.wait(self.reap_delay)  # gather a batch
            self._doomed.clear()
            with contextlib.suppress(OSError):  # retried on the next DEL, stop and start
                self.reap()

    def check(self, cid: str, pod_ns: str, ifname: str) -> None:
        alloc = self.ipam.find(cid, ifname)
        if alloc is None:
            raise CNIError(
                Code.UNKNOWN_CONTAINER,
                f"container '{cid}' interface '{ifname}' has no IP allocation",
            )
        host = links.host_veth_name(cid, ifname)
        cidr, gw = f"{alloc.ip}/{self.plen}", str(self.ipam.gateway)
        try:
            bad = self.kernel.problem(host, self.bridge, pod_ns, ifname, cidr, gw)
        except NamespaceNotFound as e:
            raise CNIError(Code.INVALID_ENVIRONMENT, f"CNI_NETNS '{pod_ns}' does not exist") from e
        if bad is not None:
            raise CNIError(Code.ATTACHMENT_BROKEN, bad)

    def host_veths(self) -> set[str]:
        """Names of the flatnet host veths on this node (not counting doomed ones)."""
        return host_veths(self.kernel)

    def gc(self, valid: set[tuple[str, str]], older_than: float = 0.0) -> int:
        """Free IPs and host veths of attachments not in ``valid``; returns IPs freed."""
        keep = {links.host_veth_name(c, i) for c, i in valid}
        freed = self.ipam.gc(valid, older_than)
        stale = {links.host_veth_name(a.container_id, a.ifname) for a in freed}
        if not older_than:
            stale |= self.host_veths() - keep
        self._doom(stale - keep)
        self._unmap([a.ip for a in freed])
        return len(freed)

    def _unmap(self, ips: list[str]) -> None:
        """Freed IPs leave the fast path's map (their veths take its program along)."""
        if self.fast is not None:
            for ip in ips:
                self.fast.delete(ip)

    def attached(self) -> list[Allocation]:
        """The allocations whose host veth is on this node now."""
        return attached(self.kernel, self.ipam)

    def set_mtu(self, mtu: int) -> tuple[list[str], list[str]]:
        """Give every attached pod the node's pod MTU (after a backend change:
        1450 under vxlan, 1500 under host-gw), both ends of its veth, the smaller
        side first so no packet is ever bigger than the far end takes. Returns
        (pods changed, pods whose namespace is unknown or gone: recreate them)."""
        changed, stuck = [], []
        have = self.kernel.mtus("fl")  # one dump, not a round trip per pod
        for a in self.attached():
            host = links.host_veth_name(a.container_id, a.ifname)
            old = have.get(host)
            if old is None or old == mtu:
                continue
            who = a.pod or a.container_id[:12]
            if mtu < old and not self.kernel.set_pod_mtu(a.netns, a.ifname, mtu):
                stuck.append(who)
                continue
            self.kernel.set_mtu(host, mtu)
            if mtu > old and not self.kernel.set_pod_mtu(a.netns, a.ifname, mtu):
                stuck.append(who)
                continue
            changed.append(who)
        return changed, stuck

    def orphans(self, grace: float) -> list[str]:
        """Reclaim IPs whose host veth vanished (the pod's namespace was deleted
        without a DEL), if allocated longer than ``grace`` seconds ago."""
        valid = {(a.container_id, a.ifname) for a in self.attached()}
        freed = [a.ip for a in self.ipam.gc(valid, older_than=grace)]
        self._unmap(freed)
        return freed


def host_veths(kernel: PodLinks) -> set[str]:
    """Names of the flatnet host veths on the node (not counting doomed ones)."""
    return {name for name, group in kernel.veths("fl").items() if group != DOOMED}


def attached(kernel: PodLinks, ipam: PodIPAM) -> list[Allocation]:
    """The allocations whose host veth is on the node now."""
    present = host_veths(kernel)
    return [
        a for a in ipam.allocations() if links.host_veth_name(a.container_id, a.ifname) in present
    ]


def _random_mac() -> str:
    """A random locally administered unicast MAC (what the kernel would pick)."""
    b = bytearray(os.urandom(6))
    b[0] = (b[0] & 0xFE) | 0x02
    return ":".join(f"{x:02x}" for x in b)

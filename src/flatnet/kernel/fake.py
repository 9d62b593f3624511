"""Fakes of the kernel seams (:mod:`flatnet.kernel.api`) for unit tests of pure
logic: each keeps in memory what the kernel would hold and records every call.
Behaviour users rely on is proven against the real kernel in tests/privileged
and tests/lab; these only let the control logic be tested without root."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from flatnet.errors import KernelError, SyscallError
from flatnet.kernel.conntrack import Flow
from flatnet.kernel.objects import Changes, Desired, Fdb, Neigh, Route

__all__ = [
    "FakeConntrack",
    "FakeFastPath",
    "FakeFirewall",
    "FakePodLinks",
    "FakeRoutes",
    "FakeVeth",
]

T = TypeVar("T", Neigh, Fdb)


@dataclass
class FakeRoutes:
    """A namespace's flatnet-owned routes, neighbours and FDB entries."""

    routes: set[Route] = field(default_factory=set)
    neigh: set[Neigh] = field(default_factory=set)
    fdb: set[Fdb] = field(default_factory=set)
    calls: int = 0
    fail: bool = False  # the next converge raises, as a netlink refusal would

    def converge(self, want: Desired, devices: tuple[str, ...] = ()) -> Changes:
        self.calls += 1
        if self.fail:
            self.fail = False
            raise KernelError("failed to program peer routes in 'fake': device missing")
        mine = set(devices)
        self.neigh, (added, removed) = _on_devices(self.neigh, want.neigh, mine)
        self.fdb, (more, fewer) = _on_devices(self.fdb, want.fdb, mine)
        added, removed = added + more, removed + fewer
        have_r = {r.dst: r for r in self.routes}
        want_r = {r.dst: r for r in want.routes}
        added += sum(1 for dst, r in want_r.items() if have_r.get(dst) != r)
        removed += sum(1 for dst in have_r if dst not in want_r)
        self.routes = set(want.routes)
        return Changes(added, removed)


def _on_devices(have: set[T], want: frozenset[T], mine: set[str]) -> tuple[set[T], tuple[int, int]]:
    """Entries on our devices become ``want``'s; others stay. (new set, (added, removed))"""
    on = {x for x in have if x.dev in mine}
    new = {x for x in want if x.dev in mine}
    return (have - on) | new, (len(new - on), len(on - new))


@dataclass
class FakeFirewall:
    """Records the scripts applied; ``fail`` makes the next apply raise."""

    ns: str | None = None
    scripts: list[str] = field(default_factory=list)
    fail: str = ""

    def apply(self, script: str, what: str = "nftables change") -> str:
        if self.fail:
            msg, self.fail = self.fail, ""
            raise KernelError(f"failed to apply {what}: {msg}")
        self.scripts.append(script)
        return ""

    def list_json(self, what: str) -> list[dict[str, Any]]:
        return []


@dataclass
class FakeConntrack:
    """UDP flows as (dst, dport, reply_src); records each deletion asked for."""

    flows: list[tuple[str, int, str]] = field(default_factory=list)
    deleted: list[tuple[str, int, str]] = field(default_factory=list)

    def delete_udp(self, targets: Iterable[tuple[str, int, str]]) -> int:
        asked = list(targets)
        self.deleted += asked
        gone = [
            f for f in self.flows for dst, port, src in asked
            if f[1:] == (port, src) and (not dst or f[0] == dst)
        ]  # fmt: skip
        self.flows = [f for f in self.flows if f not in gone]
        return len(gone)

    def delete_where(self, doomed: Callable[[Flow], bool]) -> int:
        gone = [f for f in self.flows if doomed(Flow(17, "", f[0], 0, f[1], f[2], f[1]))]
        self.flows = [f for f in self.flows if f not in gone]
        return len(gone)


@dataclass
class FakeFastPath:
    """The fast path's maps: pod IP -> host veth; VXLAN peers (underlay IP -> subnet)."""

    pods: dict[str, str] = field(default_factory=dict)
    peers: dict[str, str] = field(default_factory=dict)
    closed: bool = False

    def add(self, ip: str, veth: str) -> None:
        self.pods[ip] = veth

    def delete(self, ip: str) -> None:
        self.pods.pop(ip, None)

    def set_peers(self, peers: list[tuple[str, str]]) -> None:
        self.peers = dict(peers)

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeVeth:
    host: str
    mac: str
    master: int
    peer: str
    peer_mac: str
    pod_ns: str
    group: int = 0
    up: bool = True
    address: str = ""  # the pod side's, once configured ("ip/plen")
    gateway: str = ""
    mtu: int = 1500
    pod_mtu: int = 1500


@dataclass
class FakePodLinks:
    """A node namespace's pod veths. ``gone`` holds pod namespaces that cannot be
    entered; ``refuse`` maps a veth name to the errno its next add fails with.
    ``log`` records every call in order."""

    bridges: dict[str, int] = field(default_factory=lambda: {"fl0": 7})
    veths_: dict[str, FakeVeth] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)
    refuse: dict[str, int] = field(default_factory=dict)
    log: list[tuple[str, ...]] = field(default_factory=list)

    def index(self, name: str) -> int | None:
        return self.bridges.get(name)

    def add_veth(
        self, host: str, mac: str, master: int, mtu: int, peer: str, peer_mac: str, pod_ns: str
    ) -> None:
        self.log.append(("add_veth", host))
        if host in self.refuse:
            code = self.refuse.pop(host)
            raise SyscallError(code, os.strerror(code))
        if host in self.veths_:
            raise SyscallError(errno.EEXIST, os.strerror(errno.EEXIST))
        self.veths_[host] = FakeVeth(
            host, mac, master, peer, peer_mac, pod_ns, mtu=mtu, pod_mtu=mtu
        )

    def _peer(self, pod_ns: str, ifname: str) -> FakeVeth | None:
        return next(
            (v for v in self.veths_.values() if v.pod_ns == pod_ns and v.peer == ifname), None
        )

    def configure(self, pod_ns: str, ifname: str, ip: str, plen: int, gateway: str) -> None:
        self.log.append(("configure", pod_ns, ifname))
        v = self._peer(pod_ns, ifname)
        if v is None:
            raise KernelError(f"interface '{ifname}' vanished from '{pod_ns}'")
        v.address, v.gateway = f"{ip}/{plen}", gateway

    def unconfigure(self, pod_ns: str, ifname: str, ip: str, plen: int) -> bool:
        self.log.append(("unconfigure", pod_ns, ifname))
        if not pod_ns or pod_ns in self.gone:
            return False
        v = self._peer(pod_ns, ifname)
        if v is not None:
            v.address, v.gateway = "", ""
        return True

    def mtus(self, prefix: str) -> dict[str, int]:
        return {n: v.mtu for n, v in self.veths_.items() if n.startswith(prefix)}

    def set_mtu(self, name: str, mtu: int) -> bool:
        self.log.append(("set_mtu", name, str(mtu)))
        v = self.veths_.get(name)
        if v is not None:
            v.mtu = mtu
        return v is not None

    def set_pod_mtu(self, pod_ns: str, ifname: str, mtu: int) -> bool:
        self.log.append(("set_pod_mtu", pod_ns, ifname, str(mtu)))
        v = self._peer(pod_ns, ifname)
        if not pod_ns or pod_ns in self.gone or v is None:
            return False
        v.pod_mtu = mtu
        return True

    def delete(self, name: str) -> bool:
        self.log.append(("delete", name))
        return self.veths_.pop(name, None) is not None

    def doom(self, names: set[str], group: int) -> bool:
        self.log.append(("doom", *sorted(names)))
        hit = [self.veths_[n] for n in names if n in self.veths_]
        for v in hit:
            v.up, v.group = False, group
        return bool(hit)

    def reap(self, group: int) -> None:
        self.log.append(("reap",))
        self.veths_ = {n: v for n, v in self.veths_.items() if v.group != group}

    def veths(self, prefix: str) -> dict[str, int]:
        return {n: v.group for n, v in self.veths_.items() if n.startswith(prefix)}

    def problem(
        self, host: str, bridge: str, pod_ns: str, ifname: str, cidr: str, gateway: str
    ) -> str | None:
        v = self.veths_.get(host)
        if v is None or v.master != self.bridges.get(bridge):
            return f"host veth '{host}' is missing or not on '{bridge}'"
        if v.address != cidr:
            return f"'{ifname}' in '{pod_ns}' lacks {cidr}"
        return None

    def close(self) -> None:
        self.log.append(("close",))

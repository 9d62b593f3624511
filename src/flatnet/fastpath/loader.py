"""How it works — loading the fast path: install, attach, swap, status, remove.

:meth:`FastPath.install`, at agent start: read the kfunc IDs and ``nf_conn``'s
``status`` offset from the kernel's BTF; create the pods map (pod IP -> host
veth ifindex, as many entries as the node subnet has addresses) and, with a
VXLAN tunnel, the peers and VTEPs maps; assemble the program
(:mod:`flatnet.fastpath.program`) and load it; in the node's namespace fill
the map, attach to the underlay device, the tunnel device and every pod's host
veth (tcx ingress), and only then detach every older program named
:data:`NAME` — so no packet meets an empty map or no program. A failure
undoes its own attachments and leaves the old program serving. Then, per pod,
:meth:`FastPath.add` (attach, one map entry) and :meth:`FastPath.delete`
(the entry; the attachment goes with the veth); per peer change,
:meth:`FastPath.set_peers`. :func:`status` reads what the kernel holds;
:func:`remove` detaches every program named :data:`NAME`. Kernel objects per
node: one program, one to three maps; per pod one attachment and one entry.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from flatnet.errors import KernelError
from flatnet.fastpath.program import Tunnel, program
from flatnet.kernel import bpf, netns
from flatnet.kernel.objects import VxlanTunnel

__all__ = ["NAME", "FastPath", "Status", "remove", "status"]

log = logging.getLogger("flatnet.fastpath")

NAME = "flatnet_fast"
PODS_MAP, PEERS_MAP, VTEPS_MAP = "flatnet_pods", "flatnet_peers", "flatnet_vteps"
PEERS_MAX = 4096  # nodes whose VXLAN packets may be decapsulated
_KFUNCS = ("bpf_skb_ct_lookup", "bpf_ct_release")
_STATUS = ("nf_conn", "status")


def _ours(ifindex: int) -> list[tuple[int, int, list[int]]]:
    """(fd, ID, map IDs) of each fast-path program on ``ifindex``'s tcx
    ingress (this netns); the caller closes the fds."""
    found = []
    try:
        ids = bpf.tcx_programs(ifindex)
    except OSError:
        return []
    for pid in ids:
        try:
            fd = bpf.prog_fd(pid)
        except OSError:
            continue  # unloaded meanwhile
        _, name, maps = bpf.prog_info(fd)
        if name == NAME:
            found.append((fd, pid, maps))
        else:
            bpf.close(fd)
    return found


def _detach_all(keep: int | None = None) -> int:
    """Detach every fast-path program but the one with fd ``keep`` from every
    device of this netns; returns how many attachments were removed."""
    keep_id = None if keep is None else bpf.prog_info(keep)[0]
    n = 0
    for idx, _ in socket.if_nameindex():
        for fd, pid, _ in _ours(idx):
            try:
                if pid != keep_id:
                    bpf.tcx_detach(idx, fd)
                    n += 1
            except OSError:
                pass  # the device went away meanwhile
            finally:
                bpf.close(fd)
    return n


def _map_entries(fd: int, value_size: int = 4) -> dict[str, int]:
    """An IPv4-keyed map as {IP: value}."""
    out = {}
    for key in bpf.map_keys(fd, 4):
        val = bpf.map_lookup(fd, key, value_size)
        if val is not None:
            out[socket.inet_ntoa(key)] = int.from_bytes(val, "little")
    return out


def _read_map(map_id: int) -> tuple[str, dict[str, int]]:
    """A fast-path map by ID: its name and its entries."""
    fd = bpf.map_fd(map_id)
    try:
        name = bpf.map_name(fd)
        return name, _map_entries(fd, 1 if name == PEERS_MAP else 4)
    finally:
        bpf.close(fd)


@dataclass(frozen=True)
class Status:
    """What the kernel holds in a namespace: device → IDs of the fast-path
    programs on its ingress; and, from the first program found, its pods map
    (pod IP → host veth ifindex) and its VXLAN peers (underlay IPs)."""

    devices: dict[str, list[int]] = field(default_factory=dict)
    pods: dict[str, int] = field(default_factory=dict)
    peers: list[str] = field(default_factory=list)


def status(ns: str | None) -> Status:
    def read() -> Status:
        devices: dict[str, list[int]] = {}
        maps: dict[str, dict[str, int]] = {}
        for idx, name in socket.if_nameindex():
            for fd, pid, map_ids in _ours(idx):
                bpf.close(fd)
                devices.setdefault(name, []).append(pid)
                if not maps:  # the maps of the first program found
                    maps = dict(map(_read_map, map_ids))
        return Status(devices, maps.get(PODS_MAP, {}), sorted(maps.get(PEERS_MAP, {})))

    return netns.run_in(ns, read)


def remove(ns: str | None) -> int:
    """Take the fast path off every device of namespace ``ns``."""
    return netns.run_in(ns, _detach_all)


class FastPath:
    """The node's fast path: ``install`` once at agent start, then ``add`` and
    ``delete`` as pods come and go. Thread-safe."""

    def __init__(
        self,
        ns: str | None,
        pod_cidr: str,
        gateway_mac: str,
        capacity: int = 256,
        tunnel: VxlanTunnel | None = None,
    ) -> None:
        """``capacity``: the most pods the node can hold (its subnet's size);
        ``tunnel``: the VXLAN tunnel the node's backend offers, if any."""
        self.ns, self.pod_cidr, self.gateway_mac = ns, pod_cidr, gateway_mac
        self.capacity, self.tunnel = capacity, tunnel
        self.peers_fd = self.vteps_fd = -1
        self._peers: dict[str, str] = {}  # VTEP address -> underlay IP
        self._lock = threading.Lock()
        self.map_fd = -1
        self.prog_fd = -1

    def install(self, devices: Iterable[str], pods: Iterable[tuple[str, str]]) -> None:
        """Load a fresh program and map, fill the map with ``pods`` ((IP, host
        veth) pairs), attach to ``devices`` and the pods' veths, then detach any
        older fast-path program in the namespace."""
        kfuncs, offsets = bpf.btf_lookup(_KFUNCS, [_STATUS])
        self.map_fd = bpf.map_create(4, 4, self.capacity, PODS_MAP)
        tunnel = None
        if (t := self.tunnel) is not None:
            self.peers_fd = bpf.map_create(4, 1, PEERS_MAX, PEERS_MAP)
            self.vteps_fd = bpf.map_create(4, 4, PEERS_MAX, VTEPS_MAP)
            dev_idx, under_idx = netns.run_in(
                self.ns, lambda: (socket.if_nametoindex(t.dev), socket.if_nametoindex(t.underlay))
            )
            tunnel = Tunnel(
                t.vni, t.port, dev_idx, under_idx, t.local_ip, self.peers_fd, self.vteps_fd
            )
        code = program(
            self.pod_cidr, self.gateway_mac, self.map_fd, kfuncs, offsets[_STATUS], tunnel
        )
        self.prog_fd = bpf.prog_load(code, NAME)
        pods = list(pods)

        def attach() -> None:
            netns.sysctl(None, "net.netfilter.nf_conntrack_tcp_be_liberal", "1")
            done: list[int] = []
            try:
                for ip, veth in pods:  # the map first: no packet meets it empty
                    self._remember(ip, veth)
                for dev in [*devices, *(veth for _, veth in pods)]:
                    done.append(self._attach(dev))
            except BaseException:  # nothing half-made: the old program keeps serving
                for idx in done:
                    with contextlib.suppress(OSError):
                        bpf.tcx_detach(idx, self.prog_fd)
                self.close()
                raise
            old = _detach_all(keep=self.prog_fd)
            if old:
                log.info("fast path: replaced %d attachment(s) of an earlier agent", old)

        netns.run_in(self.ns, attach)

    def _attach(self, dev: str) -> int:
        try:
            idx = socket.if_nametoindex(dev)
            bpf.tcx_attach(idx, self.prog_fd)
        except OSError as e:
            raise KernelError(f"fast path: cannot attach to '{dev}': {e.strerror}") from e
        return idx

    def _remember(self, ip: str, veth: str) -> None:
        idx = socket.if_nametoindex(veth)
        bpf.map_update(self.map_fd, socket.inet_aton(ip), struct.pack("<I", idx))

    def add(self, ip: str, veth: str) -> None:
        """A new pod: its veth gets the program, its IP an entry."""

        def both() -> None:
            self._attach(veth)
            self._remember(ip, veth)

        with self._lock:
            netns.run_in(self.ns, both)

    def set_peers(self, peers: list[tuple[str, str]]) -> None:
        """The programmed peers as (underlay IP, pod subnet): VXLAN is accepted
        from those underlay IPs, and sent to the VTEP ``<subnet>.0`` at its
        underlay IP."""
        if self.peers_fd < 0:
            return
        want = {str(ipaddress.IPv4Network(subnet).network_address): ip for ip, subnet in peers}
        with self._lock:
            for vtep, ip in want.items():
                if self._peers.get(vtep) != ip:
                    bpf.map_update(self.peers_fd, socket.inet_aton(ip), b"\x01")
                    bpf.map_update(self.vteps_fd, socket.inet_aton(vtep), socket.inet_aton(ip))
            for vtep, ip in self._peers.items():
                if vtep not in want:
                    bpf.map_delete(self.vteps_fd, socket.inet_aton(vtep))
                if ip not in want.values():
                    bpf.map_delete(self.peers_fd, socket.inet_aton(ip))
            self._peers = want

    def delete(self, ip: str) -> None:
        """A pod gone: its entry goes (its veth's attachment goes with the veth)."""
        with self._lock:
            bpf.map_delete(self.map_fd, socket.inet_aton(ip))

    def close(self) -> None:
        """Close our fds; the kernel keeps program and map while attached."""
        for fd in (self.prog_fd, self.map_fd, self.peers_fd, self.vteps_fd):
            if fd >= 0:
                bpf.close(fd)
        self.prog_fd = self.map_fd = self.peers_fd = self.vteps_fd = -1

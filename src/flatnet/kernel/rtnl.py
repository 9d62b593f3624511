"""The CNI hot path's few rtnetlink requests, encoded by hand.

pyroute2 (used everywhere else) drives an asyncio loop per call in its sync
API and costs ~0.5–1 ms of Python per request and ~1.3 ms per socket; a pod
ADD needs five requests in two namespaces. This module speaks the same
NETLINK_ROUTE protocol with ``struct`` only, so a request costs what the
kernel costs (bench/cni_latency.py shows the difference).

Requests it knows: create a veth pair already enslaved, addressed by MAC, up,
with its peer placed and up in the pod's namespace (one message); look up a
link's index; add an IPv4 address; add a default route; take a link down and
its address off; set a link's flags and group; delete a link by name or a
whole link group (one RCU grace period for the lot, see
:mod:`flatnet.agent.pods`).

The message header and attribute encoding (:data:`NLMSGHDR`, :func:`nla`)
serve every netlink family; :mod:`flatnet.lab.delay` uses them too.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
from collections.abc import Iterable, Iterator

from flatnet.errors import SyscallError

__all__ = ["NLMSGHDR", "Rtnl", "RtnlError", "attrs", "mac_bytes", "nla"]

NETLINK_ROUTE = 0
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_NEWROUTE = 20, 21, 24
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
IFF_UP = 0x1
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER = 1, 3, 4, 10
IFLA_LINKINFO, IFLA_NET_NS_FD, IFLA_GROUP = 18, 28, 27
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA, IFLA_BRPORT_MODE = 4, 5, 4
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_GATEWAY, RTA_OIF = 5, 4
RT_TABLE_MAIN, RTPROT_BOOT, RTN_UNICAST = 254, 3, 1
NLA_F_NESTED = 0x8000

_IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change
NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid


class RtnlError(SyscallError):
    """A NETLINK_ROUTE request the kernel refused; ``errno`` is the kernel's."""


def mac_bytes(mac: str) -> bytes:
    return bytes(int(b, 16) for b in mac.split(":"))


def attrs(data: bytes, off: int = 0, end: int | None = None) -> Iterator[tuple[int, bytes]]:
    """The (type, payload) of each netlink attribute in ``data[off:end]``."""
    end = len(data) if end is None else end
    while off + 4 <= end:
        n, kind = struct.unpack_from("=HH", data, off)
        if n < 4:
            return
        yield kind & 0x3FFF, data[off + 4 : off + n]
        off += (n + 3) & ~3


def nla(kind: int, data: bytes) -> bytes:
    """One netlink attribute: header, payload, padding to 4 bytes."""
    n = 4 + len(data)
    return struct.pack("=HH", n, kind) + data + b"\0" * (-n & 3)


def _nest(kind: int, *attrs: bytes) -> bytes:
    return nla(kind | NLA_F_NESTED, b"".join(attrs))


def _u32(kind: int, v: int) -> bytes:
    return nla(kind, struct.pack("=I", v))


def _str(kind: int, s: str) -> bytes:
    return nla(kind, s.encode() + b"\0")


def _ifinfo(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return _IFINFO.pack(socket.AF_UNSPEC, 0, index, flags, change)


class Rtnl:
    """One NETLINK_ROUTE socket. Made in the caller's namespace, or in ``ns``
    through :func:`flatnet.kernel.netns.socket_in`. Thread-safe (a lock per
    socket; the kernel serialises these requests on RTNL anyway)."""

    def __init__(self, sock: socket.socket | None = None) -> None:
        self.sock = sock or socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self._seq = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- transport ----------------------------------------------------------
    def _request(self, msgs: Iterable[tuple[int, int, bytes]]) -> list[bytes]:
        """Send ``(type, flags, body)`` messages in one write; wait for every ack.
        Returns the non-ack replies. Raises for the first refused message."""
        with self._lock:
            out, seqs = [], []
            for kind, flags, body in msgs:
                self._seq += 1
                seqs.append(self._seq)
                out.append(
                    NLMSGHDR.pack(
                        16 + len(body), kind, flags | NLM_F_REQUEST | NLM_F_ACK, self._seq, 0
                    )
                    + body
                )
            self.sock.send(b"".join(out))
            pending, replies = set(seqs), []
            first_err: tuple[int, int] | None = None
            while pending:
                data = self.sock.recv(65536)
                off = 0
                while off + 16 <= len(data):
                    n, kind, _, seq, _ = NLMSGHDR.unpack_from(data, off)
                    if kind == NLMSG_ERROR:
                        (code,) = struct.unpack_from("=i", data, off + 16)
                        pending.discard(seq)
                        if code and (first_err is None or seq < first_err[0]):
                            first_err = (seq, -code)
                    elif kind != NLMSG_DONE:
                        replies.append(data[off : off + n])
                    off += (n + 3) & ~3
            if first_err is not None:
                raise RtnlError(first_err[1], os.strerror(first_err[1]))
            return replies

    # -- requests -----------------------------------------------------------
    def index(self, name: str) -> int | None:
        """The ifindex of link ``name``, or None when there is none."""
        try:
            replies = self._request([(RTM_GETLINK, 0, _ifinfo() + _str(IFLA_IFNAME, name))])
        except RtnlError as e:
            if e.errno == errno.ENODEV:
                return None
            raise
        for r in replies:
            _, _, index, _, _ = _IFINFO.unpack_from(r, 16)
            return int(index)
        return None

    def add_veth(
        self,
        name: str,
        mac: str,
        master: int,
        mtu: int,
        peer: str,
        peer_mac: str,
        peer_ns_fd: int,
    ) -> None:
        """Create veth ``name`` (up, on bridge ``master``, in hairpin mode) with its
        peer ``peer`` born in the namespace of ``peer_ns_fd``, in one write. (The
        peer cannot be brought up from here: the kernel refuses with ENOTCONN.)

        Hairpin mode lets the bridge send a frame back out of the port it came
        in on: a pod reaching itself through a service VIP is DNATed back to its
        own port (kubelet's hairpinMode; the reference bridge plugin's too)."""
        peer_info = (
            _ifinfo()
            + _str(IFLA_IFNAME, peer)
            + _u32(IFLA_NET_NS_FD, peer_ns_fd)
            + _u32(IFLA_MTU, mtu)
            + nla(IFLA_ADDRESS, mac_bytes(peer_mac))
        )
        body = (
            _ifinfo(flags=IFF_UP, change=IFF_UP)
            + _str(IFLA_IFNAME, name)
            + _u32(IFLA_MTU, mtu)
            + nla(IFLA_ADDRESS, mac_bytes(mac))
            + _u32(IFLA_MASTER, master)
            + _nest(
                IFLA_LINKINFO,
                _str(IFLA_INFO_KIND, "veth"),
                _nest(IFLA_INFO_DATA, nla(VETH_INFO_PEER, peer_info)),
            )
        )
        hairpin = _str(IFLA_IFNAME, name) + _nest(
            IFLA_LINKINFO,
            _str(IFLA_INFO_SLAVE_KIND, "bridge"),
            _nest(IFLA_INFO_SLAVE_DATA, nla(IFLA_BRPORT_MODE, b"\x01")),
        )
        self._request(
            [(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body), (RTM_NEWLINK, 0, _ifinfo() + hairpin)]
        )

    def up_with_default(self, index: int, ip: str, plen: int, gateway: str) -> None:
        """Link ``index`` up, address ``ip/plen`` on it and a default route via
        ``gateway`` out of it: three messages in one write, handled in order."""
        up = _ifinfo(index, IFF_UP, IFF_UP)
        addr = socket.inet_aton(ip)
        ifa = struct.pack("=BBBBi", socket.AF_INET, plen, 0, 0, index)
        ifa += nla(IFA_LOCAL, addr) + nla(IFA_ADDRESS, addr)
        rt = struct.pack(
            "=BBBBBBBBI", socket.AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, 0, RTN_UNICAST, 0
        )
        rt += nla(RTA_GATEWAY, socket.inet_aton(gateway)) + _u32(RTA_OIF, index)
        excl = NLM_F_CREATE | NLM_F_EXCL
        self._request([(RTM_NEWLINK, 0, up), (RTM_NEWADDR, excl, ifa), (RTM_NEWROUTE, excl, rt)])

    def down_without_address(self, index: int, ip: str, plen: int) -> None:
        """Link ``index`` down (the kernel drops every route out of it) and
        ``ip/plen`` off it, in one write; an address already gone is fine."""
        down = _ifinfo(index, 0, IFF_UP)
        addr = socket.inet_aton(ip)
        ifa = struct.pack("=BBBBi", socket.AF_INET, plen, 0, 0, index)
        ifa += nla(IFA_LOCAL, addr) + nla(IFA_ADDRESS, addr)
        try:
            self._request([(RTM_NEWLINK, 0, down), (RTM_DELADDR, 0, ifa)])
        except RtnlError as e:
            if e.errno != errno.EADDRNOTAVAIL:
                raise

    def set_link(self, name: str, up: bool, group: int | None = None) -> bool:
        """Set ``name`` up or down (and its link group); False when it is gone."""
        body = _ifinfo(flags=IFF_UP if up else 0, change=IFF_UP) + _str(IFLA_IFNAME, name)
        if group is not None:
            body += _u32(IFLA_GROUP, group)
        try:
            self._request([(RTM_NEWLINK, 0, body)])
            return True
        except RtnlError as e:
            if e.errno == errno.ENODEV:
                return False
            raise

    def delete(self, name: str) -> bool:
        """Delete link ``name``; False when it was already gone."""
        try:
            self._request([(RTM_DELLINK, 0, _ifinfo() + _str(IFLA_IFNAME, name))])
            return True
        except RtnlError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return False
            raise

    def delete_group(self, group: int) -> None:
        """Delete every link in ``group`` in one kernel operation."""
        try:
            self._request([(RTM_DELLINK, 0, _ifinfo() + _u32(IFLA_GROUP, group))])
        except RtnlError as e:
            if e.errno not in (errno.ENODEV, errno.ENOENT):
                raise

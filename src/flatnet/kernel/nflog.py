"""Packets nftables logs to an NFLOG group, read over nfnetlink_log (what
``ulogd`` does, no process): one socket bound to the group in one namespace,
each message parsed into the rule's prefix, the time and the packet's IPv4
addresses, protocol and ports.

The policy table logs the first packet of each denied connection attempt
there (``log group 66``, rate-limited in the rule), so the agent can say who
was denied by what (:mod:`flatnet.policy.denials`).
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass

from flatnet.errors import KernelError
from flatnet.kernel import netns
from flatnet.kernel.conntrack import NETLINK_NETFILTER
from flatnet.kernel.rtnl import NLMSGHDR, attrs, nla

__all__ = ["GROUP", "Logged", "NflogReader"]

GROUP = 66
NFNL_SUBSYS_ULOG = 4
MSG_PACKET, MSG_CONFIG = (NFNL_SUBSYS_ULOG << 8) | 0, (NFNL_SUBSYS_ULOG << 8) | 1
NFULA_CFG_CMD, NFULA_CFG_MODE = 1, 2
CMD_BIND, CMD_PF_BIND = 1, 3
COPY_PACKET = 2
NFULA_TIMESTAMP, NFULA_PAYLOAD, NFULA_PREFIX = 3, 9, 10
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR = 2


@dataclass(frozen=True)
class Logged:
    """One logged packet: the rule's prefix, when, and its IPv4 header's
    addresses, protocol and ports (0 where the protocol has none)."""

    prefix: str
    time: float
    src: str
    dst: str
    proto: int
    sport: int
    dport: int


def _parse(msg: bytes) -> Logged | None:
    prefix, stamp, payload = "", 0.0, b""
    for kind, val in attrs(msg, 16 + 4):
        if kind == NFULA_PREFIX:
            prefix = val.rstrip(b"\0").decode(errors="replace")
        elif kind == NFULA_TIMESTAMP:
            sec, usec = struct.unpack(">QQ", val[:16])
            stamp = sec + usec / 1e6
        elif kind == NFULA_PAYLOAD:
            payload = val
    if len(payload) < 20 or payload[0] >> 4 != 4:
        return None
    ihl = (payload[0] & 0x0F) * 4
    proto = payload[9]
    sport = dport = 0
    if (
        proto in (socket.IPPROTO_TCP, socket.IPPROTO_UDP, socket.IPPROTO_SCTP)
        and len(payload) >= ihl + 4
    ):
        sport, dport = struct.unpack(">HH", payload[ihl : ihl + 4])
    return Logged(
        prefix,
        stamp or time.time(),
        socket.inet_ntoa(payload[12:16]),
        socket.inet_ntoa(payload[16:20]),
        proto,
        sport,
        dport,
    )


class NflogReader:
    """Bound to one NFLOG group in one namespace; :meth:`read` waits for the
    next batch of logged packets."""

    def __init__(self, ns: str | None, group: int = GROUP) -> None:
        self.ns, self.group = ns, group
        try:
            self.sock = netns.socket_in(ns, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
            self.sock.bind((0, 0))
            self._config(socket.AF_INET, nla(NFULA_CFG_CMD, struct.pack("B", CMD_PF_BIND)), 0)
            self._config(socket.AF_UNSPEC, nla(NFULA_CFG_CMD, struct.pack("B", CMD_BIND)), group)
            mode = struct.pack(">IB", 128, COPY_PACKET) + b"\0"  # the headers are enough
            self._config(socket.AF_UNSPEC, nla(NFULA_CFG_MODE, mode), group)
        except OSError as e:
            raise KernelError(f"cannot read NFLOG group {group} in '{ns}': {e}") from e

    def _config(self, family: int, attr: bytes, group: int) -> None:
        body = struct.pack("=BBH", family, 0, socket.htons(group)) + attr
        self.sock.send(
            NLMSGHDR.pack(16 + len(body), MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, 0, 0) + body
        )
        data = self.sock.recv(4096)
        _, kind, _, _, _ = NLMSGHDR.unpack_from(data)
        if kind == NLMSG_ERROR:
            code = -struct.unpack_from("=i", data, 16)[0]
            if code:
                raise OSError(code, f"NFLOG config refused (errno {code})")

    def read(self, timeout: float = 0.5) -> list[Logged]:
        """The packets logged since the last read (waits up to ``timeout``)."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 16)
        except TimeoutError:
            return []
        out = []
        off = 0
        while off + 16 <= len(data):
            n, kind, _, _, _ = NLMSGHDR.unpack_from(data, off)
            if n < 16:
                break
            if kind == MSG_PACKET and (got := _parse(data[off : off + n])) is not None:
                out.append(got)
            off += (n + 3) & ~3
        return out

    def close(self) -> None:
        self.sock.close()

"""Deleting conntrack entries over ctnetlink (what ``conntrack -D`` does, no process).

One request dumps the namespace's IPv4 entries (``IPCTNL_MSG_CT_GET`` with
``NLM_F_DUMP``); the entries that match are deleted, each by its
original tuple as the dump gave it (``IPCTNL_MSG_CT_DELETE``), all acked before
it returns. An entry gone
meanwhile (ENOENT) is success. The service proxy uses it to drop UDP flows
still pointing at endpoints that went away (kube-proxy #48370), one dump for
all the endpoints a change removed; the policy table, to cut the established
flows a policy change no longer allows.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from flatnet.errors import KernelError
from flatnet.kernel import netns
from flatnet.kernel.rtnl import NLA_F_NESTED, NLMSGHDR, attrs, nla

__all__ = ["Conntrack", "Flow"]

NETLINK_NETFILTER = 12
CT_GET, CT_DELETE = (1 << 8) | 1, (1 << 8) | 2  # NFNL_SUBSYS_CTNETLINK << 8 | msg
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY = 1, 2
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST = 1, 2
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
_NFGEN = struct.pack("=BBH", socket.AF_INET, 0, 0)  # family, NFNETLINK_V0, res_id


@dataclass(frozen=True)
class Flow:
    """One entry: protocol number, original tuple, and the reply's source
    address and port (after DNAT: the endpoint it was sent to)."""

    proto: int
    src: str
    dst: str
    sport: int
    dport: int
    reply_src: str
    reply_sport: int = 0


def _tuple(raw: bytes) -> tuple[int, str, str, int, int]:
    proto, src, dst, sport, dport = 0, "", "", 0, 0
    for kind, val in attrs(raw):
        if kind == CTA_TUPLE_IP:
            for k, v in attrs(val):
                if k == CTA_IP_V4_SRC:
                    src = socket.inet_ntoa(v[:4])
                elif k == CTA_IP_V4_DST:
                    dst = socket.inet_ntoa(v[:4])
        elif kind == CTA_TUPLE_PROTO:
            for k, v in attrs(val):
                if k == CTA_PROTO_NUM:
                    proto = v[0]
                elif k == CTA_PROTO_SRC_PORT:
                    sport = struct.unpack(">H", v[:2])[0]
                elif k == CTA_PROTO_DST_PORT:
                    dport = struct.unpack(">H", v[:2])[0]
    return proto, src, dst, sport, dport


def _entry(msg: bytes) -> tuple[Flow, bytes] | None:
    """A dumped message as a Flow and its raw original-tuple attribute."""
    orig = reply = b""
    for kind, val in attrs(msg, 16 + len(_NFGEN)):
        if kind == CTA_TUPLE_ORIG:
            orig = val
        elif kind == CTA_TUPLE_REPLY:
            reply = val
    if not orig:
        return None
    proto, src, dst, sport, dport = _tuple(orig)
    _, rsrc, _, rsport, _ = _tuple(reply)
    return Flow(proto, src, dst, sport, dport, rsrc, rsport), orig


class Conntrack:
    """The conntrack table of one namespace. Thread-safe."""

    def __init__(self, ns: str | None = None) -> None:
        self.ns = ns
        self._lock = threading.Lock()
        self._seq = 0

    def _socket(self) -> socket.socket:
        sock = netns.socket_in(self.ns, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        sock.bind((0, 0))
        return sock

    def _send(self, sock: socket.socket, kind: int, flags: int, body: bytes) -> int:
        self._seq += 1
        sock.send(NLMSGHDR.pack(16 + len(body), kind, flags | NLM_F_REQUEST, self._seq, 0) + body)
        return self._seq

    def _replies(self, sock: socket.socket, pending: set[int]) -> Iterator[bytes]:
        """Messages until every sequence in ``pending`` is done or acked;
        errors other than ENOENT raise."""
        while pending:
            data = sock.recv(1 << 16)
            off = 0
            while off + 16 <= len(data):
                n, kind, _, seq, _ = NLMSGHDR.unpack_from(data, off)
                if kind in (NLMSG_DONE, NLMSG_ERROR):
                    pending.discard(seq)
                    code = (
                        -struct.unpack_from("=i", data, off + 16)[0] if kind == NLMSG_ERROR else 0
                    )
                    if code and code != errno.ENOENT:
                        raise OSError(code, os.strerror(code))
                else:
                    yield data[off : off + n]
                off += (n + 3) & ~3

    def flows(self) -> list[Flow]:
        """Every IPv4 entry of the namespace."""
        return [f for f, _ in self._dump()]

    def _dump(self) -> list[tuple[Flow, bytes]]:
        with self._lock:
            sock = self._socket()
            try:
                seq = self._send(sock, CT_GET, NLM_F_DUMP, _NFGEN)
                return [e for m in self._replies(sock, {seq}) if (e := _entry(m))]
            except OSError as e:
                raise KernelError(f"failed to read conntrack in '{self.ns}': {e}") from e
            finally:
                sock.close()

    def delete_udp(self, targets: Iterable[tuple[str, int, str]]) -> int:
        """Delete the UDP entries each ``(dst, dport, reply_src)`` names: to port
        ``dport`` (at ``dst``, or any address when "") whose replies come from
        ``reply_src`` (the endpoint they were DNATed to). One dump serves them
        all. Returns how many were deleted."""
        exact = set(targets)
        anywhere = {(port, src) for dst, port, src in exact if not dst}
        if not exact:
            return 0
        return self.delete_where(
            lambda f: (
                f.proto == socket.IPPROTO_UDP
                and ((f.dst, f.dport, f.reply_src) in exact or (f.dport, f.reply_src) in anywhere)
            )
        )

    def delete_where(self, doomed: Callable[[Flow], bool]) -> int:
        """Delete every entry ``doomed`` says (one dump); returns how many."""
        gone = [raw for f, raw in self._dump() if doomed(f)]
        if not gone:
            return 0
        with self._lock:
            sock = self._socket()
            try:
                seqs = {
                    self._send(
                        sock, CT_DELETE, NLM_F_ACK, _NFGEN + nla(CTA_TUPLE_ORIG | NLA_F_NESTED, raw)
                    )
                    for raw in gone
                }
                for _ in self._replies(sock, seqs):
                    pass
            except OSError as e:
                raise KernelError(f"failed to delete conntrack entries in '{self.ns}': {e}") from e
            finally:
                sock.close()
        return len(gone)

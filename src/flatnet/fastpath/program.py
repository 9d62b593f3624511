"""How it works — the fast path's program, assembled from named stages (pure).

Each stage below emits the instructions for one step of the package doc
(:mod:`flatnet.fastpath`), in the order the program runs them::

    routed_here (1) ─┬─ host frame ── decap (0, vxlan) ── into_pod (4a)
                     └─ gateway MAC ─ own_source (1b)
                                     plain: flow (2, 3) ─ local_pod ── into_pod (4a)
                                                         └─ fib (4b) ─ encap (4c, vxlan)
                                                                     └─ neigh ─ exit
    anything that fails a check: pass (TCX_PASS, on to the stack)

A stage reads the packet through ``r2`` (reloaded by :meth:`Program.packet`
with a bounds check), keeps the skb in ``r6`` across helper calls, and jumps
to the labels ``pass``, ``plain``, ``fib``, ``neigh`` or ``drop``. Packet
words are loaded little-endian, so constants are compared in that byte order.
The stack frame: fp-4 map keys, fp-64..-8 struct bpf_fib_lookup, fp-96..-72
struct bpf_ct_opts + bpf_sock_tuple (then bpf_redir_neigh at fp-88), fp-160
the 50 bytes of an outer VXLAN header being built.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

from flatnet.kernel.bpf import Asm, Reg

__all__ = ["Tunnel", "program"]

IPS_ASSURED, IPS_SRC_NAT, IPS_DST_NAT = 0x04, 0x10, 0x20
# helpers
MAP_LOOKUP, STORE_BYTES, CSUM_DIFF, GET_HASH_RECALC = 1, 9, 28, 34
ADJUST_ROOM, FIB_LOOKUP, REDIRECT_NEIGH, REDIRECT_PEER = 50, 69, 152, 155
ADJ_ROOM_MAC, ADJ_ROOM_FIXED_GSO = 1, 1
ENCAP_IPV4, ENCAP_UDP, ENCAP_ETH = 2, 16, 64  # BPF_F_ADJ_ROOM_ENCAP_*
FIB_SUCCESS, FIB_NO_NEIGH = 0, 7  # BPF_FIB_LKUP_RET_*
# struct __sk_buff offsets
SKB_LEN, SKB_PKT_TYPE, SKB_IFINDEX, SKB_DATA, SKB_DATA_END = 0, 4, 40, 76, 80
R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = range(11)
INNER = 14 + 20 + 8 + 8  # a VXLAN packet's inner frame, after outer IP, UDP and VXLAN
HDR = -160  # where the outer headers are built on the stack


def _le32(b: bytes) -> int:
    return int(struct.unpack("<i", b)[0])


@dataclass(frozen=True)
class Tunnel:
    """This node's VXLAN tunnel as the program needs it: the VNI and UDP port,
    the ifindex of the VXLAN device and of the underlay device, the node's own
    underlay IP, and the fds of the peers map (underlay IP -> 1: who may send
    VXLAN here) and the VTEPs map (a peer's VTEP address, ``<subnet>.0`` ->
    its underlay IP: where to send)."""

    vni: int
    port: int
    dev_ifindex: int
    underlay_ifindex: int
    local_ip: str
    peers_fd: int
    vteps_fd: int


class Program:
    """One program being assembled; each method is one stage."""

    def __init__(
        self, pod_cidr: str, gateway_mac: str, map_fd: int, kfuncs: dict[str, int], status: int
    ) -> None:
        net = ipaddress.IPv4Network(pod_cidr)
        self.mask, self.prefix = _le32(net.netmask.packed), _le32(net.network_address.packed)
        gw = bytes.fromhex(gateway_mac.replace(":", ""))
        self.gw_lo, self.gw_hi = _le32(gw[:4]), int.from_bytes(gw[4:], "little")
        self.map_fd, self.kfuncs, self.status = map_fd, kfuncs, status
        self.a = Asm()

    def packet(self, need: int, short: str = "pass") -> None:
        """r2 = data, with ``need`` bytes there (else to ``short``)."""
        a = self.a
        a.ld(4, R2, R6, SKB_DATA)
        a.ld(4, R3, R6, SKB_DATA_END)
        a.alu(R4, "=", Reg(R2))
        a.alu(R4, "+", need)
        a.jmp(">", R4, Reg(R3), short)

    def routed_here(self) -> None:
        """1. IPv4, and routed to this node: a frame to this device (on to
        "host"), or a pod's frame to the gateway MAC (on to "plain")."""
        a = self.a
        self.packet(14 + 20 + 20)
        a.ld(2, R5, R2, 12)
        a.jmp("!=", R5, 0x0008, "pass")  # EtherType IPv4
        a.ld(4, R5, R6, SKB_PKT_TYPE)
        a.jmp("==", R5, 0, "host")
        a.ld(4, R5, R2, 0)
        a.jmp("!=", R5, self.gw_lo, "pass", w=True)
        a.ld(2, R5, R2, 4)
        a.jmp("!=", R5, self.gw_hi, "pass")
        self.own_source()
        a.goto("plain")
        a.label("host")

    def own_source(self) -> None:
        """1b. a pod's frame comes from its own IP: the map's entry for the
        source is the veth it came in on (a forged or unknown source takes the
        stack, where the guard table drops it)."""
        a = self.a
        self.lookup(self.map_fd, 14 + 12)
        a.jmp("==", R0, 0, "pass")
        a.ld(4, R5, R0, 0)
        a.ld(4, R4, R6, SKB_IFINDEX)
        a.jmp("!=", R5, Reg(R4), "pass")

    def header_ok(self, ip: int) -> None:
        """2. for the IPv4 header at ``ip``: no options, not a fragment, TTL > 1,
        both addresses in the pod CIDR, TCP without SYN/FIN/RST or UDP. Leaves
        r7 = the L4 protocol."""
        a = self.a
        a.ld(1, R5, R2, ip)
        a.jmp("!=", R5, 0x45, "pass")
        a.ld(2, R5, R2, ip + 6)
        a.jmp("&", R5, 0xFF3F, "pass")  # MF or a fragment offset
        a.ld(1, R5, R2, ip + 8)
        a.jmp("<=", R5, 1, "pass")
        for off in (12, 16):
            a.ld(4, R5, R2, ip + off)
            a.alu(R5, "&", self.mask, w=True)
            a.jmp("!=", R5, self.prefix, "pass", w=True)
        a.ld(1, R7, R2, ip + 9)  # r7: the L4 protocol
        tcp_ok = f"l4_{ip}"
        a.jmp("==", R7, socket.IPPROTO_UDP, tcp_ok)
        a.jmp("!=", R7, socket.IPPROTO_TCP, "pass")
        a.ld(1, R5, R2, ip + 20 + 13)
        a.jmp("&", R5, 0x07, "pass")  # FIN, SYN, RST
        a.label(tcp_ok)

    def established(self, ip: int) -> None:
        """3. conntrack holds the flow of the header at ``ip``, ASSURED and not
        NATed (struct bpf_sock_tuple at fp-80, struct bpf_ct_opts at fp-96)."""
        a = self.a
        for off in (-96, -88, -80, -72):
            a.st(8, R10, off, 0)
        for off, at in ((12, -80), (16, -76), (20, -72)):  # saddr, daddr, both ports
            a.ld(4, R5, R2, ip + off)
            a.st(4, R10, at, Reg(R5))
        a.st(4, R10, -96, -1)  # netns_id: BPF_F_CURRENT_NETNS
        a.st(1, R10, -88, Reg(R7))  # l4proto
        a.alu(R1, "=", Reg(R6))
        a.alu(R2, "=", Reg(R10))
        a.alu(R2, "+", -80)
        a.alu(R3, "=", 12)
        a.alu(R4, "=", Reg(R10))
        a.alu(R4, "+", -96)
        a.alu(R5, "=", 16)
        a.kcall(self.kfuncs["bpf_skb_ct_lookup"])
        a.jmp("==", R0, 0, "pass")
        a.ld(8, R8, R0, self.status)
        a.alu(R1, "=", Reg(R0))
        a.kcall(self.kfuncs["bpf_ct_release"])
        a.alu(R8, "&", IPS_ASSURED | IPS_SRC_NAT | IPS_DST_NAT)
        a.jmp("!=", R8, IPS_ASSURED, "pass")

    def flow(self, ip: int) -> None:
        """2. and 3.: fall to "pass" unless this is an established, un-NATed
        TCP/UDP flow between pods."""
        self.header_ok(ip)
        self.established(ip)

    def lookup(self, map_fd: int, key_at: int) -> None:
        """r0 = the map entry for the 4 packet bytes at ``key_at`` (or NULL)."""
        a = self.a
        a.ld(4, R5, R2, key_at)
        a.st(4, R10, -4, Reg(R5))
        a.ld_map_fd(R1, map_fd)
        a.alu(R2, "=", Reg(R10))
        a.alu(R2, "+", -4)
        a.call(MAP_LOOKUP)

    def local_pod(self, ip: int, miss: str) -> None:
        """r9 = the host veth of the pod the IPv4 header at ``ip`` is for."""
        self.lookup(self.map_fd, ip + 16)
        self.a.jmp("==", R0, 0, miss)
        self.a.ld(4, R9, R0, 0)

    def into_pod(self) -> None:
        """4a. TTL - 1, MACs gateway -> pod (0a:58:<its IP>), into its namespace."""
        a = self.a
        self.packet(14 + 20)
        self.ttl()
        a.st(2, R2, 0, 0x580A)
        a.ld(4, R5, R2, 30)
        a.st(4, R2, 2, Reg(R5))
        a.st(4, R2, 6, self.gw_lo)
        a.st(2, R2, 10, self.gw_hi)
        a.alu(R1, "=", Reg(R9))
        a.alu(R2, "=", 0)
        a.call(REDIRECT_PEER)
        a.exit()

    def decap(self, t: Tunnel) -> None:
        """0. This node's VXLAN from a programmed peer, for a pod of this node:
        outer IP, UDP, VXLAN and inner Ethernet go (MAC mode, the segment size
        kept: it is already the inner TCP's), then into the pod."""
        a = self.a
        self.packet(INNER + 14 + 20 + 20, short="plain")
        a.ld(1, R5, R2, 14)
        a.jmp("!=", R5, 0x45, "plain")
        a.ld(1, R5, R2, 23)
        a.jmp("!=", R5, socket.IPPROTO_UDP, "plain")
        a.ld(2, R5, R2, 36)
        a.jmp("!=", R5, socket.htons(t.port), "plain")
        a.ld(4, R5, R2, 42)  # flags (I), 3 reserved bytes
        a.jmp("!=", R5, 0x08, "pass", w=True)
        a.ld(4, R5, R2, 46)  # VNI, 1 reserved byte
        a.jmp("!=", R5, _le32(struct.pack(">I", t.vni << 8)), "pass", w=True)
        a.ld(2, R5, R2, INNER + 12)
        a.jmp("!=", R5, 0x0008, "pass")
        self.lookup(t.peers_fd, 26)  # from a peer the agent has programmed
        a.jmp("==", R0, 0, "pass")
        self.packet(INNER + 14 + 20 + 20)
        self.flow(INNER + 14)
        self.packet(INNER + 14 + 20)
        self.local_pod(INNER + 14, "pass")
        a.alu(R1, "=", Reg(R6))
        a.alu(R2, "=", -INNER)
        a.alu(R3, "=", ADJ_ROOM_MAC)
        a.alu(R4, "=", ADJ_ROOM_FIXED_GSO)
        a.call(ADJUST_ROOM)
        a.jmp("!=", R0, 0, "pass")
        self.into_pod()

    def fib(self) -> None:
        """4b. Elsewhere: ask the FIB (struct bpf_fib_lookup at fp-64); on to
        "out" with r0 = its verdict, or "pass" when it names no route out."""
        a = self.a
        a.label("fib")
        self.packet(14 + 20)
        for off in range(-64, 0, 8):
            a.st(8, R10, off, 0)
        a.st(1, R10, -64, socket.AF_INET)
        a.st(1, R10, -63, Reg(R7))
        a.ld(4, R5, R6, SKB_IFINDEX)
        a.st(4, R10, -56, Reg(R5))
        a.ld(1, R5, R2, 15)
        a.st(1, R10, -52, Reg(R5))  # tos
        a.ld(4, R5, R2, 26)
        a.st(4, R10, -48, Reg(R5))
        a.ld(4, R5, R2, 30)
        a.st(4, R10, -32, Reg(R5))
        a.alu(R1, "=", Reg(R6))
        a.alu(R2, "=", Reg(R10))
        a.alu(R2, "+", -64)
        a.alu(R3, "=", 64)
        a.alu(R4, "=", 0)
        a.call(FIB_LOOKUP)
        a.jmp("==", R0, FIB_SUCCESS, "out")
        a.jmp("!=", R0, FIB_NO_NEIGH, "pass")
        a.label("out")

    def neigh(self) -> None:
        """TTL - 1, out of the device the FIB named, to its next hop, through
        the neighbour layer (struct bpf_redir_neigh at fp-88)."""
        a = self.a
        a.label("neigh")
        self.packet(14 + 20)
        self.ttl()
        a.st(4, R10, -88, socket.AF_INET)
        a.ld(4, R5, R10, -32)
        a.st(4, R10, -84, Reg(R5))
        a.ld(4, R1, R10, -56)
        a.alu(R2, "=", Reg(R10))
        a.alu(R2, "+", -88)
        a.alu(R3, "=", 20)
        a.alu(R4, "=", 0)
        a.call(REDIRECT_NEIGH)
        a.exit()

    def passing(self) -> None:
        self.a.label("pass")
        self.a.alu(R0, "=", 0)  # TCX_PASS: on to the stack
        self.a.exit()

    def encap(self, t: Tunnel) -> None:
        """4c. Routed into the VXLAN device: encapsulate here, as the device
        would, and send it out of the underlay device through the neighbour
        layer (the kernel routes the outer header, so a routed underlay works
        too). r0 holds the FIB's verdict."""
        a = self.a
        a.ld(4, R5, R10, -56)
        a.jmp("!=", R5, t.dev_ifindex, "neigh")
        a.jmp("!=", R0, FIB_SUCCESS, "pass")  # the VTEP's neighbour is permanent
        a.ld_map_fd(R1, t.vteps_fd)
        a.alu(R2, "=", Reg(R10))
        a.alu(R2, "+", -32)  # the key: the FIB's next hop, the peer's VTEP address
        a.call(MAP_LOOKUP)
        a.jmp("==", R0, 0, "neigh")  # not (yet) in the map: through the device
        a.ld(4, R8, R0, 0)  # r8: the peer's underlay IP
        a.alu(R1, "=", Reg(R6))
        a.call(GET_HASH_RECALC)
        a.alu(R9, "=", Reg(R0))  # r9: the flow's hash
        self.outer_headers(t)
        self.outer_checksum()
        self.push_outer(t)

    def outer_headers(self, t: Tunnel) -> None:
        """The 50 bytes at fp-160: outer IP (DF, TTL 64), UDP from a flow-hash
        port (no checksum, as the device sends), VXLAN, inner Ethernet with the
        MACs the FIB gave (r8: the peer's underlay IP, r9: the flow hash)."""
        a = self.a
        for off in range(HDR, HDR + 56, 8):
            a.st(8, R10, off, 0)
        a.st(1, R10, HDR, 0x45)
        a.ld(4, R5, R6, SKB_LEN)
        a.alu(R5, "+", 50 - 14)
        a.be16(R5)
        a.st(2, R10, HDR + 2, Reg(R5))  # total length
        a.st(2, R10, HDR + 6, 0x0040)  # DF
        a.st(1, R10, HDR + 8, 64)
        a.st(1, R10, HDR + 9, socket.IPPROTO_UDP)
        a.st(4, R10, HDR + 12, _le32(ipaddress.IPv4Address(t.local_ip).packed))
        a.st(4, R10, HDR + 16, Reg(R8))
        a.alu(R9, "&", 0x3FFF, w=True)
        a.alu(R9, "|", 0xC000, w=True)
        a.be16(R9)
        a.st(2, R10, HDR + 20, Reg(R9))  # source port 49152-65535
        a.st(2, R10, HDR + 22, socket.htons(t.port))
        a.ld(4, R5, R6, SKB_LEN)
        a.alu(R5, "+", 50 - 14 - 20)
        a.be16(R5)
        a.st(2, R10, HDR + 24, Reg(R5))  # UDP length; checksum 0, as the device sends
        a.st(4, R10, HDR + 28, 0x08)  # VXLAN flags: VNI present
        a.st(4, R10, HDR + 32, _le32(struct.pack(">I", t.vni << 8)))
        for k in range(0, 6, 2):  # inner MACs: the FIB's dmac (fp-6), smac (fp-12)
            a.ld(2, R5, R10, -6 + k)
            a.st(2, R10, HDR + 36 + k, Reg(R5))
            a.ld(2, R5, R10, -12 + k)
            a.st(2, R10, HDR + 42 + k, Reg(R5))
        a.st(2, R10, HDR + 48, 0x0008)

    def outer_checksum(self) -> None:
        """The outer IP header's sum (bpf_csum_diff), folded and inverted."""
        a = self.a
        a.alu(R1, "=", 0)
        a.alu(R2, "=", 0)
        a.alu(R3, "=", Reg(R10))
        a.alu(R3, "+", HDR)
        a.alu(R4, "=", 20)
        a.alu(R5, "=", 0)
        a.call(CSUM_DIFF)
        for _ in range(2):
            a.alu(R5, "=", Reg(R0))
            a.alu(R5, ">>", 16)
            a.alu(R0, "&", 0xFFFF)
            a.alu(R0, "+", Reg(R5))
        a.alu(R0, "^", 0xFFFF)
        a.st(2, R10, HDR + 10, Reg(R0))

    def push_outer(self, t: Tunnel) -> None:
        """Room after the MAC header, marked as a UDP tunnel for GSO; the 50
        bytes written there; out of the underlay device."""
        a = self.a
        a.alu(R1, "=", Reg(R6))
        a.alu(R2, "=", 50)
        a.alu(R3, "=", ADJ_ROOM_MAC)
        a.ld_imm64(R4, ADJ_ROOM_FIXED_GSO | ENCAP_IPV4 | ENCAP_UDP | ENCAP_ETH | (14 << 56))
        a.call(ADJUST_ROOM)
        a.jmp("!=", R0, 0, "pass")  # nothing changed yet
        a.alu(R1, "=", Reg(R6))
        a.alu(R2, "=", 14)
        a.alu(R3, "=", Reg(R10))
        a.alu(R3, "+", HDR)
        a.alu(R4, "=", 50)
        a.alu(R5, "=", 0)
        a.call(STORE_BYTES)
        a.jmp("!=", R0, 0, "drop")  # grown but not written: not a packet to send
        self.packet(14 + 50 + 20, short="drop")
        self.ttl(14 + 50)
        a.alu(R1, "=", t.underlay_ifindex)
        a.alu(R2, "=", 0)
        a.alu(R3, "=", 0)
        a.alu(R4, "=", 0)
        a.call(REDIRECT_NEIGH)
        a.exit()
        a.label("drop")
        a.alu(R0, "=", 2)  # TCX_DROP
        a.exit()

    def ttl(self, ip: int = 14) -> None:
        """TTL − 1 with the checksum patched as ip_decrease_ttl() does (r2 =
        data, the IPv4 header at ``ip``)."""
        a = self.a
        a.ld(1, R5, R2, ip + 8)
        a.alu(R5, "-", 1)
        a.st(1, R2, ip + 8, Reg(R5))
        done = f"ttl{len(a.insns)}"
        a.ld(2, R5, R2, ip + 10)
        a.alu(R5, "+", 1)  # htons(0x0100) as read little-endian
        a.jmp("<", R5, 0xFFFF, done)
        a.alu(R5, "+", 1)
        a.label(done)
        a.st(2, R2, ip + 10, Reg(R5))


def program(
    pod_cidr: str,
    gateway_mac: str,
    map_fd: int,
    kfuncs: dict[str, int],
    status: int,
    tunnel: Tunnel | None = None,
) -> bytes:
    """The fast path's instructions, stage by stage; with ``tunnel``, this
    node's VXLAN packets from a peer for a local pod are decapsulated here and
    packets routed into the VXLAN device are encapsulated here."""
    p = Program(pod_cidr, gateway_mac, map_fd, kfuncs, status)
    p.a.alu(R6, "=", Reg(R1))  # r6: the skb, kept across calls
    p.routed_here()
    if tunnel is not None:
        p.decap(tunnel)
    p.a.label("plain")
    p.packet(14 + 20 + 20)
    p.flow(14)
    p.packet(14 + 20)
    p.local_pod(14, "fib")
    p.into_pod()
    p.fib()
    if tunnel is not None:
        p.encap(tunnel)
    p.neigh()
    p.passing()
    return p.a.code()

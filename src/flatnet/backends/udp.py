"""How it works — udp: encapsulation in userspace, over a TUN device (flannel's udp).

Objects on each node, made once by ``setup``: a persistent TUN device
``flatnet-tun`` (so it and its routes survive an agent restart) with offloads
on — ``IFF_VNET_HDR`` + ``TUNSETOFFLOAD`` (checksum, TSO4/6) — so the kernel
hands over whole 64 KB TCP super-packets instead of 1.4 KB ones; a UDP socket
on ``<underlay IP>:8285`` (``port`` option) with large buffers. Per peer: one
route ``<peer subnet> dev flatnet-tun proto 66`` and one entry in the
forwarding table (peer subnet -> peer underlay IP).

Two threads move the packets, one syscall per packet each way:
TUN -> look up the destination's subnet -> ``sendto`` the peer; socket ->
``recvfrom_into`` a reused buffer -> write to the TUN. On the wire a packet
is the bare IP packet (flannel's format) when it needs no offload work, else
the 10-byte virtio-net header followed by the packet (the receiver tells them
apart by the first nibble: 4 is IPv4; the IP header's length frames it).

A 64 KB super-packet leaves as one ``sendto`` with UDP GSO (``UDP_SEGMENT``
= underlay MTU − 28): the kernel cuts it into MTU-sized datagrams only where a
device needs it — across veths and bridges it stays one buffer — and the
receiving socket has UDP GRO on, so it reads the pieces back as one buffer.
Python pays per 64 KB, not per 1.4 KB. A receive that holds several messages
is split by their IP lengths; one that holds part of a message (a NIC
segmented it and nothing re-coalesced) is dropped and counted — set option
``gso: false`` there to let the kernel fragment and reassemble instead. A
TSO super-packet is whole MSS-sized segments (45 x 1448 B at most), so with
its headers it stays under UDP's 65507-byte limit.
Datagrams from addresses that are not peers are dropped.

MTU: underlay − 28 (outer IP + UDP) − 10 (the virtio-net header), so a packet
that carries the header still fits one underlay frame. Unlike the kernel
backends this data plane lives in the agent: while the agent restarts, the
device stays and packets wait in TCP's retransmissions.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import select
import socket
import threading

from flatnet.backends import Context, Desired, Observed, Route, register
from flatnet.errors import KernelError
from flatnet.kernel import links, netns, tun
from flatnet.kernel.tun import VNET_HDR
from flatnet.model import Lease

__all__ = ["Udp"]

log = logging.getLogger("flatnet.backends.udp")
DEV = "flatnet-tun"
OVERHEAD = 28 + 10
IP_MTU_DISCOVER, IP_PMTUDISC_DONT = 10, 0  # <linux/in.h>
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33  # <asm-generic/socket.h>
SOL_UDP, UDP_SEGMENT, UDP_GRO = 17, 103, 104  # <linux/udp.h>
PLAIN = bytes(VNET_HDR)  # no offload work: flags 0, GSO none
BUF = 1 << 22


@register("udp")
class Udp:
    name = "udp"

    def __init__(self) -> None:
        self.tun = -1
        self.sock: socket.socket | None = None
        self.table: dict[int, tuple[str, int]] = {}  # subnet as int -> (underlay IP, port)
        self.sources: set[str] = set()
        self.mask = 0
        self.partial = 0  # receives that held part of a message (dropped)
        self._threads: list[threading.Thread] = []
        self._wake = (-1, -1)  # a pipe: written by stop() to end both loops

    def pod_mtu(self, ctx: Context) -> int:
        return ctx.underlay_mtu - OVERHEAD

    def devices(self, ctx: Context) -> tuple[str, ...]:
        return ()

    def tunnel(self, ctx: Context) -> None:
        return None  # its tunnel is the agent's own loop, not the kernel's

    def lease_data(self, subnet: str, options: dict[str, object]) -> dict[str, object]:
        return {"port": int(str(options.get("port", 8285)))}

    def setup(self, ctx: Context) -> dict[str, object]:
        port = int(str(ctx.options.get("port", 8285)))
        self.mask = int(ipaddress.IPv4Network(ctx.lease.subnet).netmask)
        try:
            self.tun = tun.open_tun(ctx.ns, DEV)
            self.sock = netns.socket_in(ctx.ns, socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, BUF)
            self.sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, BUF)
            # let the kernel fragment a 64 KB datagram over the underlay (gso: false)
            self.sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
            if ctx.options.get("gso", True):
                self.sock.setsockopt(SOL_UDP, UDP_SEGMENT, ctx.underlay_mtu - 28)
                self.sock.setsockopt(SOL_UDP, UDP_GRO, 1)
            self.sock.bind((ctx.lease.underlay_ip, port))
            self._wake = os.pipe()
        except OSError as e:
            self.stop()
            raise KernelError(
                f"failed to set up udp backend (TUN '{DEV}', port {port}): {e}"
            ) from e
        vtep = str(ipaddress.IPv4Network(ctx.lease.subnet).network_address)
        links.up_with_address(ctx.ns, DEV, vtep, 32, self.pod_mtu(ctx))
        for fn, name in ((self._tun_to_udp, "udp-tx"), (self._udp_to_tun, "udp-rx")):
            t = threading.Thread(target=fn, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self.lease_data(ctx.lease.subnet, ctx.options)

    def desired(self, ctx: Context, peers: list[Lease]) -> Desired:
        routes, refused, forward = set(), {}, {}
        for p in peers:
            if p.backend != self.name:
                refused[p.node] = f"udp: peer '{p.node}' runs backend '{p.backend}'"
                continue
            forward[p.subnet] = (p.underlay_ip, int(p.backend_data.get("port", 8285)))
            routes.add(Route(p.subnet, "", DEV))
        return Desired(routes=frozenset(routes), refused=refused, forward=forward)

    def program(self, want: Desired) -> None:
        """The loops' forwarding table follows the peers (a dict swap is atomic
        for them): subnet -> where to send, and who may send to us."""
        self.table = {
            int(ipaddress.IPv4Network(net).network_address): to for net, to in want.forward.items()
        }
        self.sources = {ip for ip, _ in want.forward.values()}

    def teardown(self, ctx: Context) -> None:
        self.stop()
        links.delete(ctx.ns, DEV)

    def observe(self, ctx: Context, peers: list[Lease]) -> Observed:
        return Observed()

    def stop(self) -> None:
        """Stop both loops, then close the TUN fd and the socket (the persistent
        device stays, with its routes)."""
        if self._wake[1] >= 0:
            os.write(self._wake[1], b"x")
        for t in self._threads:
            t.join(timeout=5)
        self._threads = []
        tun, self.tun = self.tun, -1
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        for fd in (tun, *self._wake):
            if fd >= 0:
                os.close(fd)
        self._wake = (-1, -1)

    def _poller(self, fd: int) -> select.poll:
        p = select.poll()
        p.register(fd, select.POLLIN)
        p.register(self._wake[0], select.POLLIN)
        return p

    # -- the data plane -----------------------------------------------------
    def _tun_to_udp(self) -> None:
        tun, sock, mask = self.tun, self.sock, self.mask
        assert sock is not None
        buf = bytearray(65536 + VNET_HDR)
        view = memoryview(buf)
        readv, send = os.readv, sock.sendto
        poller, wake = self._poller(tun), self._wake[0]
        while True:
            try:
                n = readv(tun, [buf])
                if n < VNET_HDR + 20:
                    continue
                peer = self.table.get(int.from_bytes(buf[26:30], "big") & mask)
                if peer is not None:
                    send(view[VNET_HDR:n] if buf[0] == buf[1] == 0 else view[:n], peer)
            except BlockingIOError:  # nothing queued: sleep until a packet or stop()
                if any(fd == wake for fd, _ in poller.poll()):
                    return
            except OSError as e:
                log.debug("udp send: %s", e)  # e.g. no route to a peer: drop

    def _udp_to_tun(self) -> None:
        tun, sock = self.tun, self.sock
        assert sock is not None
        buf = bytearray(65536 + VNET_HDR)
        view = memoryview(buf)
        recv, write, writev = sock.recvfrom_into, os.write, os.writev
        poller, wake = self._poller(sock.fileno()), self._wake[0]
        while True:
            try:
                n, (src, _) = recv(view, 0, socket.MSG_DONTWAIT)  # sends still block
                if src not in self.sources:
                    continue
                off = 0
                while off + 20 <= n:  # one or more messages, framed by the IP length
                    bare = buf[off] >> 4 == 4
                    ip = off if bare else off + VNET_HDR
                    end = ip + int.from_bytes(buf[ip + 2 : ip + 4], "big")
                    if end > n or end <= ip:
                        self.partial += 1  # part of a message: drop (TCP resends)
                        if self.partial % 1000 == 1:
                            log.warning("udp: %d partial receives dropped", self.partial)
                        break
                    if bare:
                        writev(tun, [PLAIN, view[off:end]])
                    else:
                        write(tun, view[off:end])
                    off = end
            except BlockingIOError:
                if any(fd == wake for fd, _ in poller.poll()):
                    return
            except OSError as e:
                log.debug("udp receive: %s", e)

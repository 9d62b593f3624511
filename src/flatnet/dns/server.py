"""How it works — the cluster DNS server: ``flatnet dns``.

Threads: one UDP loop, a TCP server (a thread per connection), a follower of
``services/`` and ``pods/`` in the store (list, then watch) that rebuilds the
records on every batch of changes, and a small pool forwarding other names to
the upstream resolver (raw bytes, over the transport the client used).

The UDP hot path does not parse with dnslib: for a plain query (one question,
no EDNS) the question's wire bytes are the key of a cache of packed answers, so
a hit costs a dict lookup and a two-byte ID splice. The cache is dropped
whenever the records change. Answers too big for the client's UDP payload
(512 bytes, or its EDNS size) go out truncated (TC set, question kept) and the
client retries over TCP.

In a cluster it runs as a pod behind the ``kube-dns`` service's VIP, like CoreDNS.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import struct
import threading
from concurrent.futures import ThreadPoolExecutor

from dnslib import QTYPE, RCODE, DNSError, DNSRecord

from flatnet import keys
from flatnet.dns.records import Records, build
from flatnet.store import KV, Event, Store
from flatnet.store.follow import follow
from flatnet.view import ClusterView

__all__ = ["DNSServer"]

log = logging.getLogger("flatnet.dns")
_HEADER = struct.Struct("!HHHHHH")


class DNSServer:
    def __init__(
        self,
        store: Store,
        listen: tuple[str, int] = ("0.0.0.0", 53),
        upstream: tuple[str, int] | None = None,
        domain: str = "cluster.local",
        ttl: int = 30,
    ) -> None:
        self.store, self.listen, self.upstream = store, listen, upstream
        self.domain, self.ttl = domain, ttl
        self.cluster = ClusterView()
        self.records = Records(domain, ttl)
        self.cache: dict[bytes, bytes] = {}
        self.ready = threading.Event()
        self.stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="dns-forward")

    # -- records ------------------------------------------------------------
    def _rebuild(self) -> None:
        c = self.cluster
        self.records = build(c.services.values(), c.pods, self.domain, self.ttl)
        self.cache = {}

    def listed(self, kvs: list[KV], rev: int) -> None:
        self.cluster = ClusterView(kvs)
        self._rebuild()
        self.ready.set()

    def changed(self, events: list[Event]) -> None:
        for ev in events:
            self.cluster.apply(ev)
        self._rebuild()

    # -- answering ----------------------------------------------------------
    def answer(self, data: bytes, limit: int | None) -> bytes | None:
        """The reply to one query (``limit``: UDP payload size; None for TCP), or
        None when it must be forwarded."""
        try:
            q = DNSRecord.parse(data)
        except (DNSError, struct.error, IndexError):
            return None if len(data) < 12 else self._error(data, RCODE.FORMERR)
        if not q.questions:
            return self._error(data, RCODE.FORMERR)
        qname, qtype = str(q.q.qname), q.q.qtype
        if not self.records.owns(qname):
            return None
        found = self.records.lookup(qname, qtype)
        r = q.reply(ra=1, aa=1)
        r.header.rcode = found.rcode
        for rr in found.answer:
            r.add_answer(rr)
        if found.answer and found.answer[-1].rtype == QTYPE.CNAME and qtype != QTYPE.CNAME:
            for rr in self._chase(str(found.answer[-1].rdata), qtype):
                r.add_answer(rr)
        for rr in found.authority:
            r.add_auth(rr)
        for rr in found.additional:
            r.add_ar(rr)
        edns = next((ar for ar in q.ar if ar.rtype == QTYPE.OPT), None)
        if edns is not None:
            r.add_ar(edns)  # echo the OPT record (payload size)
        out = bytes(r.pack())
        if limit is not None:
            size = max(512, min(edns.rclass, 4096)) if edns is not None else 512
            if len(out) > size:
                r.rr, r.auth, r.ar = [], [], []
                r.header.tc = 1
                out = bytes(r.pack())
        return out

    def _error(self, data: bytes, rcode: int) -> bytes:
        ident, flags = struct.unpack("!HH", data[:4])
        return _HEADER.pack(ident, 0x8000 | (flags & 0x7900) | rcode, 0, 0, 0, 0)

    def _cache_key(self, data: bytes) -> bytes | None:
        """The cacheable part of a plain query: flags (minus ID) + question."""
        if len(data) < 17:
            return None
        _, flags, qd, an, ns, ar = _HEADER.unpack_from(data)
        if qd != 1 or an or ns or ar or flags & 0x7800:  # one question, opcode QUERY
            return None
        return data[2:]

    def handle_udp(self, data: bytes) -> bytes | None:
        key = self._cache_key(data)
        if key is not None:
            hit = self.cache.get(key)
            if hit is not None:
                return data[:2] + hit
        out = self.answer(data, 512)
        if out is not None and key is not None:
            self.cache[key] = out[2:]
        return out

    def _chase(self, target: str, qtype: int) -> list[object]:
        """The upstream's answer for an ExternalName's target (what CoreDNS adds
        after the CNAME, so stub resolvers need not chase it)."""
        if self.records.owns(target) or self.upstream is None:
            return []
        q = DNSRecord.question(target, QTYPE[qtype])
        try:
            return list(DNSRecord.parse(self.forward(bytes(q.pack()), tcp=False)).rr)
        except (DNSError, struct.error):
            return []

    # -- forwarding ---------------------------------------------------------
    def forward(self, data: bytes, tcp: bool) -> bytes:
        if self.upstream is None:
            return self._error(data, RCODE.SERVFAIL)
        try:
            if tcp:
                with socket.create_connection(self.upstream, timeout=3) as s:
                    s.sendall(struct.pack("!H", len(data)) + data)
                    return _read_tcp(s) or self._error(data, RCODE.SERVFAIL)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(3)
                s.sendto(data, self.upstream)
                while True:
                    reply, _ = s.recvfrom(65535)
                    if reply[:2] == data[:2]:
                        return reply
        except OSError as e:
            log.warning("upstream %s:%d failed: %s", *self.upstream, e)
            return self._error(data, RCODE.SERVFAIL)

    # -- serving ------------------------------------------------------------
    def serve(self) -> None:
        """Serve until ``stop`` is set (UDP in this thread)."""
        threading.Thread(
            target=follow,
            args=(
                self.store,
                (keys.SERVICES, keys.PODS),
                self.stop,
                self.listed,
                self.changed,
            ),
            kwargs={"log": log},
            name="dns-follow",
            daemon=True,
        ).start()
        self.ready.wait()
        server = self

        class Conn(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                s: socket.socket = self.request
                s.settimeout(10)
                while (data := _read_tcp(s)) is not None:
                    out = server.answer(data, None)
                    if out is None:
                        out = server.forward(data, tcp=True)
                    s.sendall(struct.pack("!H", len(out)) + out)

        class TCP(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        tcp = TCP(self.listen, Conn)
        threading.Thread(target=tcp.serve_forever, name="dns-tcp", daemon=True).start()
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        udp.bind(self.listen)
        udp.settimeout(0.5)
        log.info("cluster DNS for %s on %s:%d (udp+tcp)", self.domain, *self.listen)
        try:
            while not self.stop.is_set():
                try:
                    data, peer = udp.recvfrom(65535)
                except TimeoutError:
                    continue
                out = self.handle_udp(data)
                if out is None:
                    self._pool.submit(self._forward_udp, udp, data, peer)
                else:
                    udp.sendto(out, peer)
        finally:
            tcp.shutdown()
            tcp.server_close()
            udp.close()

    def _forward_udp(self, udp: socket.socket, data: bytes, peer: tuple[str, int]) -> None:
        udp.sendto(self.forward(data, tcp=False), peer)


def _read_tcp(s: socket.socket) -> bytes | None:
    head = _read_n(s, 2)
    if head is None:
        return None
    return _read_n(s, struct.unpack("!H", head)[0])


def _read_n(s: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        try:
            chunk = s.recv(n - len(buf))
        except OSError:
            return None
        if not chunk:
            return None
        buf += chunk
    return buf

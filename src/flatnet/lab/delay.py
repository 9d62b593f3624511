"""A delay line for lab links where the kernel has no netem qdisc.

How it works: one rule, ``iptables -t mangle -A POSTROUTING -o <dev> -j
NFQUEUE --queue-num 0 --queue-bypass``, hands every packet leaving the link
to netfilter queue 0 of the node's namespace. This process is bound to that
queue (raw ``NETLINK_NETFILTER``, no library): it asks for metadata only (the
payload stays in the kernel) and for GSO packets whole, notes when each packet
arrived, and releases packets in arrival order once ``delay`` (± a uniform
``jitter``) has passed — with one batch verdict (``NFQNL_MSG_VERDICT_BATCH``:
accept every id up to N) per wake-up, not one message per packet. Jitter
never reorders: a packet leaves no earlier than the one before it.

The queue fails open (``NFQA_CFG_F_FAIL_OPEN``): when the socket's buffer is
full a packet passes undelayed rather than being dropped, and if this process
dies the rule's ``--queue-bypass`` lets traffic through. The nftables
``queue`` statement would do, but this kernel lacks ``nft_queue``; the
xtables target runs through ``nft_compat``.
"""

from __future__ import annotations

import argparse
import collections
import random
import select
import socket
import struct
import time

from flatnet.kernel.rtnl import NLM_F_ACK, NLM_F_REQUEST, NLMSG_ERROR, NLMSGHDR, nla

__all__ = ["DelayLine", "parse_duration", "rule"]

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_CONFIG, NFQNL_MSG_VERDICT_BATCH = 0, 2, 3
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN, NFQA_CFG_MASK, NFQA_CFG_FLAGS = 1, 2, 3, 4, 5
NFQNL_CFG_CMD_BIND, NFQNL_COPY_META = 1, 1
NFQA_CFG_F_FAIL_OPEN, NFQA_CFG_F_GSO = 0x1, 0x4
NF_ACCEPT = 1
SOL_NETLINK, NETLINK_NO_ENOBUFS = 270, 5


def parse_duration(text: str) -> float:
    """``10ms`` / ``250us`` / ``1.5s`` -> seconds."""
    for unit, scale in (("us", 1e-6), ("ms", 1e-3), ("s", 1.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    raise ValueError(f"'{text}' is not a duration like 10ms")


def rule(dev: str, queue: int = 0) -> list[str]:
    """The iptables arguments that send ``dev``'s egress through ``queue``."""
    return ["-t", "mangle", "-A", "POSTROUTING", "-o", dev, "-j", "NFQUEUE",
            "--queue-num", str(queue), "--queue-bypass"]  # fmt: skip


class DelayLine:
    def __init__(self, delay: float, jitter: float = 0.0, queue: int = 0) -> None:
        self.delay, self.jitter, self.queue = delay, jitter, queue
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.bind((0, 0))
        self.sock.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE, 16 MiB
        self.sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
        self._seq = 0
        self._early: list[int] = []  # packets queued before the bind was acknowledged
        flags = struct.pack(">I", NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_GSO)
        self._config(  # one message: bind, metadata only, a long queue, GSO whole
            nla(NFQA_CFG_CMD, struct.pack(">BxH", NFQNL_CFG_CMD_BIND, 0))
            + nla(NFQA_CFG_PARAMS, struct.pack(">IB", 0, NFQNL_COPY_META))
            + nla(NFQA_CFG_QUEUE_MAXLEN, struct.pack(">I", 65536))
            + nla(NFQA_CFG_MASK, flags)
            + nla(NFQA_CFG_FLAGS, flags)
        )

    def _send(self, kind: int, body: bytes, flags: int = 0) -> None:
        self._seq += 1
        nfgen = struct.pack(">BBH", socket.AF_UNSPEC, 0, self.queue)
        msg = nfgen + body
        head = NLMSGHDR.pack(16 + len(msg), (NFNL_SUBSYS_QUEUE << 8) | kind,
                         NLM_F_REQUEST | flags, self._seq, 0)  # fmt: skip
        self.sock.send(head + msg)

    def _config(self, attrs: bytes) -> None:
        self._send(NFQNL_MSG_CONFIG, attrs, NLM_F_ACK)
        while True:
            data = self.sock.recv(65536)
            _, kind, _, seq, _ = NLMSGHDR.unpack_from(data)
            if kind == NLMSG_ERROR and seq == self._seq:
                (code,) = struct.unpack_from("=i", data, 16)
                if code:
                    raise OSError(-code, f"netfilter queue {self.queue}: configuration refused")
                return
            self._early += self._ids(data)

    def _ids(self, data: bytes) -> list[int]:
        """Packet ids in one receive (one or more netlink messages)."""
        ids, off = [], 0
        while off + 16 <= len(data):
            n, kind, _, _, _ = NLMSGHDR.unpack_from(data, off)
            if kind & 0xFF == NFQNL_MSG_PACKET and kind >> 8 == NFNL_SUBSYS_QUEUE:
                a = off + 20  # past nlmsghdr and nfgenmsg
                while a + 4 <= off + n:
                    alen, atype = struct.unpack_from("=HH", data, a)
                    if atype & 0x7FFF == NFQA_PACKET_HDR:
                        ids.append(struct.unpack_from(">I", data, a + 4)[0])
                        break
                    a += (alen + 3) & ~3
            off += (n + 3) & ~3
        return ids

    def run(self) -> None:
        held: collections.deque[tuple[float, int]] = collections.deque()  # (due, id)
        now = time.monotonic()
        held.extend((now + self.delay, pid) for pid in self._early)
        last_due = now + self.delay if self._early else 0.0
        while True:
            wait = max(0.0, held[0][0] - time.monotonic()) if held else None
            if select.select([self.sock], [], [], wait)[0]:
                now = time.monotonic()
                for _ in range(64):  # drain what is there, then release
                    try:
                        data = self.sock.recv(65536, socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        break
                    for pid in self._ids(data):
                        d = self.delay + random.uniform(-self.jitter, self.jitter)
                        last_due = max(last_due, now + max(0.0, d))
                        held.append((last_due, pid))
            now, release = time.monotonic(), None
            while held and held[0][0] <= now:
                release = held.popleft()[1]
            if release is not None:
                verdict = nla(NFQA_VERDICT_HDR, struct.pack(">II", NF_ACCEPT, release))
                self._send(NFQNL_MSG_VERDICT_BATCH, verdict)


def main() -> None:
    ap = argparse.ArgumentParser(description="Delay packets of netfilter queue N.")
    ap.add_argument("--delay", required=True)
    ap.add_argument("--jitter", default="0ms")
    ap.add_argument("--queue", type=int, default=0)
    a = ap.parse_args()
    DelayLine(parse_duration(a.delay), parse_duration(a.jitter), a.queue).run()


if __name__ == "__main__":
    main()

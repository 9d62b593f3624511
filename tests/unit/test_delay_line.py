"""The lab's delay line: its pure parts. Its kernel side (packets held in a
netfilter queue, round trips longer by the delay) is proven in
tests/lab/test_multinode.py::test_underlay_impairments."""

from __future__ import annotations

import struct

import pytest

from flatnet.kernel.rtnl import nla
from flatnet.lab import delay


def _packet_msg(pid: int, seq: int) -> bytes:
    """A netlink message as the kernel sends it for one queued packet: nfgenmsg,
    then an attribute before NFQA_PACKET_HDR (order is not fixed)."""
    mark = nla(3, struct.pack(">I", 7))  # NFQA_MARK
    hdr = nla(delay.NFQA_PACKET_HDR, struct.pack(">IHB", pid, 0x0800, 4))
    body = struct.pack(">BBH", 0, 0, 0) + mark + hdr
    kind = (delay.NFNL_SUBSYS_QUEUE << 8) | delay.NFQNL_MSG_PACKET
    return struct.pack("=IHHII", 16 + len(body), kind, 0, seq, 0) + body


def test_durations() -> None:
    assert delay.parse_duration("10ms") == pytest.approx(0.010)
    assert delay.parse_duration("250us") == pytest.approx(0.00025)
    assert delay.parse_duration("1.5s") == pytest.approx(1.5)
    with pytest.raises(ValueError, match="'10m' is not a duration"):
        delay.parse_duration("10m")


def test_packet_ids_from_one_or_several_messages() -> None:
    dl = delay.DelayLine.__new__(delay.DelayLine)  # parsing needs no socket
    one = _packet_msg(41, 1)
    assert dl._ids(one) == [41]
    assert dl._ids(one + _packet_msg(42, 2) + _packet_msg(43, 3)) == [41, 42, 43]
    error = struct.pack("=IHHII", 20, 2, 0, 9, 0) + struct.pack("=i", 0)  # an ack
    assert dl._ids(error + _packet_msg(44, 4)) == [44]


def test_rule_sends_only_the_link_through_the_queue() -> None:
    assert delay.rule("eth0") == [
        "-t", "mangle", "-A", "POSTROUTING", "-o", "eth0",
        "-j", "NFQUEUE", "--queue-num", "0", "--queue-bypass",
    ]  # fmt: skip

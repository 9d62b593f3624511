"""The kernel package's own parts, each against the real kernel in a fresh namespace."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator

import pytest

from flatnet.errors import KernelError, NamespaceNotFound
from flatnet.kernel import links, netns, tun, underlay
from flatnet.kernel.conntrack import Conntrack
from flatnet.kernel.nft import Nft

pytestmark = pytest.mark.privileged


@pytest.fixture
def ns(uniq: str) -> Iterator[str]:
    name = f"fl-{uniq}-k"
    netns.create(name)
    try:
        yield name
    finally:
        netns.delete(name)


def ip(ns: str, *argv: str) -> str:
    return subprocess.run(["ip", "-n", ns, *argv], capture_output=True, text=True).stdout


def udp_flows(ns: str, n: int, port: int) -> None:
    """``n`` UDP flows to 127.0.0.1:port from distinct source ports, tracked."""
    ip(ns, "link", "set", "lo", "up")
    Nft(ns).apply(
        "table ip t {\n chain o {\n  type filter hook output priority 0;\n"
        "  ct state new accept\n }\n}\n"
    )

    def send() -> None:
        srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        srv.bind(("127.0.0.1", port))
        for _ in range(n):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
                c.sendto(b"x", ("127.0.0.1", port))
        srv.close()

    netns.run_in(ns, send)


def test_conntrack_deletes_udp_entries_over_netlink_and_keeps_the_rest(ns: str) -> None:
    udp_flows(ns, 3, 5353)
    udp_flows(ns, 1, 5454)
    ct = Conntrack(ns)
    mine = [f for f in ct.flows() if f.proto == socket.IPPROTO_UDP]
    assert sorted(f.dport for f in mine) == [5353, 5353, 5353, 5454]
    assert {f.reply_src for f in mine} == {"127.0.0.1"}
    assert ct.delete_udp([("", 5353, "127.0.0.2")]) == 0  # another endpoint: nothing
    assert ct.delete_udp([("127.0.0.9", 5353, "127.0.0.1")]) == 0  # another address
    assert ct.delete_udp([("", 5353, "127.0.0.1"), ("", 9, "127.0.0.1")]) == 3
    assert [f.dport for f in ct.flows() if f.proto == socket.IPPROTO_UDP] == [5454]
    assert ct.delete_udp([("", 5353, "127.0.0.1")]) == 0  # idempotent


def test_links_by_namespace(ns: str, uniq: str) -> None:
    peer = f"fl-{uniq}-k2"
    netns.create(peer)
    try:
        links.bridge(ns, "br0")
        links.plug(ns, "p0", "br0", peer, "eth0")
        links.add_address(peer, "eth0", "192.168.77.2", 24, {"10.1.0.0/16": "192.168.77.1"})
        assert links.first_address(peer, "eth0") == "192.168.77.2"
        assert "10.1.0.0/16 via 192.168.77.1 dev eth0" in ip(peer, "route")
        assert "master br0" in ip(ns, "link", "show", "p0")
        links.ensure_bridge(ns, "fl0", "10.9.0.1/24", 1400)
        links.ensure_bridge(ns, "fl0", "10.9.0.1/24", 1400)  # idempotent: one address
        assert ip(ns, "-4", "addr", "show", "fl0").count("inet ") == 1
        assert links.links_of_kind(ns, "bridge") == {"br0": 0, "fl0": 0}
        with pytest.raises(KernelError, match="device 'nope' is missing"):
            links.add_route(ns, "10.2.0.0/16", "192.168.77.9", "nope")
        with pytest.raises(NamespaceNotFound):
            links.first_address(f"fl-{uniq}-gone", "eth0")
        u = underlay.device(peer, "192.168.77.2")
        assert (u.dev, u.mtu, u.nets) == ("eth0", 1500, ("192.168.77.0/24",))
        assert links.delete(ns, "fl0") and not links.delete(ns, "fl0")
    finally:
        netns.delete(peer)


def test_vxlan_device_is_made_again_when_its_settings_differ(ns: str) -> None:
    links.bridge(ns, "ul0")
    links.add_address(ns, "ul0", "192.168.78.1", 24)
    links.ensure_vxlan(ns, "flatnet.1", 1, "192.168.78.1", "ul0", 8472)
    first = ip(ns, "-d", "link", "show", "flatnet.1")
    assert "vxlan id 1 local 192.168.78.1 dev ul0" in first and "nolearning" in first
    links.ensure_vxlan(ns, "flatnet.1", 1, "192.168.78.1", "ul0", 8472)
    assert ip(ns, "-d", "link", "show", "flatnet.1") == first  # kept as it was
    links.ensure_vxlan(ns, "flatnet.1", 1, "192.168.78.1", "ul0", 4789)
    assert "dstport 4789" in ip(ns, "-d", "link", "show", "flatnet.1")


def test_tun_is_persistent_with_vnet_headers(ns: str) -> None:
    import os

    fd = tun.open_tun(ns, "flatnet-tun")
    os.close(fd)
    out = ip(ns, "-d", "link", "show", "flatnet-tun")
    assert "tun" in out and "vnet_hdr" in out  # the device outlives the fd
    os.close(tun.open_tun(ns, "flatnet-tun"))  # and is re-attached


def test_nflog_reads_what_a_rule_logs_with_its_prefix(ns: str) -> None:
    from flatnet.kernel.nflog import GROUP, NflogReader

    ip(ns, "link", "set", "lo", "up")
    Nft(ns).apply(
        "table ip t {\n chain o {\n  type filter hook output priority 0;\n"
        f'  udp dport 9 log prefix "ingress x/a" group {GROUP}\n }}\n}}\n'
    )
    reader = NflogReader(ns)
    try:

        def send() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", 4321))
                s.sendto(b"x", ("127.0.0.1", 9))

        netns.run_in(ns, send)
        got = reader.read(timeout=2)
        assert len(got) == 1
        (g,) = got
        assert (g.prefix, g.src, g.dst, g.proto, g.sport, g.dport) == (
            "ingress x/a", "127.0.0.1", "127.0.0.1", socket.IPPROTO_UDP, 4321, 9,
        )  # fmt: skip
        assert abs(g.time - __import__("time").time()) < 5
    finally:
        reader.close()

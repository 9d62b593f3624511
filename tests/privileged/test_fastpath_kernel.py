"""The fast path's kernel side in one namespace: install, replace, roll back, remove."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from flatnet import fastpath
from flatnet.errors import KernelError
from flatnet.fastpath import FastPath
from flatnet.kernel import netns
from flatnet.kernel.objects import VxlanTunnel

pytestmark = pytest.mark.privileged


@pytest.fixture
def ns(uniq: str) -> Iterator[str]:
    name = f"fl-{uniq}-fp"
    netns.create(name)
    try:
        subprocess.run(
            ["ip", "-n", name, "link", "add", "d0", "type", "veth", "peer", "name", "d1"],
            check=True,
        )
        yield name
    finally:
        netns.delete(name)


def test_install_replace_remove(ns: str) -> None:
    first = FastPath(ns, "10.244.0.0/16", "0a:58:0a:f4:00:01")
    first.install(["d0", "d1"], [])
    devices = fastpath.status(ns).devices
    assert set(devices) == {"d0", "d1"} and fastpath.status(ns).pods == {}
    (old,) = {ids[0] for ids in devices.values()}
    # a second agent's install: its own program everywhere, the old one gone
    second = FastPath(ns, "10.244.0.0/16", "0a:58:0a:f4:00:01")
    second.install(["d0", "d1"], [])
    devices = fastpath.status(ns).devices
    assert set(devices) == {"d0", "d1"} and all(len(ids) == 1 for ids in devices.values())
    assert old not in {ids[0] for ids in devices.values()}
    first.close()
    second.close()
    # the kernel keeps it without any fd of ours; sysctl set for conntrack
    assert set(fastpath.status(ns).devices) == {"d0", "d1"}
    liberal = subprocess.run(
        ["ip", "netns", "exec", ns, "sysctl", "-n", "net.netfilter.nf_conntrack_tcp_be_liberal"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert liberal == "1"
    assert fastpath.remove(ns) == 2
    assert fastpath.status(ns) == fastpath.Status()


def test_failed_install_leaves_nothing(ns: str) -> None:
    fp = FastPath(ns, "10.244.0.0/16", "0a:58:0a:f4:00:01")
    with pytest.raises(KernelError, match="'nosuch'"):
        fp.install(["d0", "nosuch", "d1"], [])
    assert fastpath.status(ns) == fastpath.Status()
    # with a program already there, a failed install leaves that one serving
    good = FastPath(ns, "10.244.0.0/16", "0a:58:0a:f4:00:01")
    good.install(["d0"], [])
    before = fastpath.status(ns)
    with pytest.raises(KernelError, match="'nosuch'"):
        FastPath(ns, "10.244.0.0/16", "0a:58:0a:f4:00:01").install(["d0", "nosuch"], [])
    assert fastpath.status(ns) == before
    good.close()


def test_maps_follow_pods_and_peers(ns: str) -> None:
    vxlan = VxlanTunnel(1, 8472, "d0", "d1", "192.168.50.11")  # d0: the VXLAN device, d1: underlay
    fp = FastPath(ns, "10.244.0.0/16", "0a:58:0a:f4:00:01", capacity=256, tunnel=vxlan)
    fp.install(["d0"], [])
    fp.add("10.244.0.7", "d1")  # d1 plays a pod's host veth: attached, and in the map
    d1 = int(
        subprocess.run(
            ["ip", "netns", "exec", ns, "cat", "/sys/class/net/d1/ifindex"],
            capture_output=True,
            text=True,
        ).stdout
    )
    fp.set_peers([("192.168.50.12", "10.244.1.0/24"), ("192.168.50.13", "10.244.2.0/24")])
    s = fastpath.status(ns)
    assert set(s.devices) == {"d0", "d1"}
    assert s.pods == {"10.244.0.7": d1}
    assert s.peers == ["192.168.50.12", "192.168.50.13"]
    fp.set_peers([("192.168.50.13", "10.244.2.0/24")])
    fp.delete("10.244.0.7")
    s = fastpath.status(ns)
    assert s.pods == {} and s.peers == ["192.168.50.13"]
    fp.close()
    assert fastpath.remove(ns) == 2

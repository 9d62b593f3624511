"""PodNetwork (CNI ADD/DEL/CHECK/GC decisions) on the fake pod links: what it
asks the kernel for, in what order, and what it leaves behind when a step
fails. The same code against the real kernel: tests/privileged/test_cni_plugin.py."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path

import pytest

from flatnet.agent.pods import DOOMED, PodNetwork
from flatnet.errors import CNIError, KernelError
from flatnet.ipam import PodIPAM
from flatnet.kernel.fake import FakeFastPath, FakePodLinks
from flatnet.kernel.links import host_veth_name
from flatnet.store.sqlite import SqliteStore


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[PodNetwork, FakePodLinks, FakeFastPath, Path]]:
    store = SqliteStore(str(tmp_path / "store.db"))
    kernel, fast = FakePodLinks(), FakeFastPath()
    net = PodNetwork(kernel, "fl0", PodIPAM(store, "10.244.0.0/24", "n1"), 1450, 0.5, fast)
    pods = tmp_path / "netns"
    pods.mkdir()
    yield net, kernel, fast, pods
    net.close()
    store.close()


def pod_ns(d: Path, name: str) -> str:
    (d / name).touch()  # a path that exists, as a bind-mounted namespace does
    return str(d / name)


def test_add_allocates_plumbs_and_maps_the_pod(parts: tuple) -> None:  # type: ignore[type-arg]
    net, kernel, fast, d = parts
    att = net.add("c1", pod_ns(d, "a"), "eth0", "default/a")
    host = host_veth_name("c1", "eth0")
    v = kernel.veths_[host]
    assert (att.address, att.gateway, att.host_veth, att.mtu) == (
        "10.244.0.2/24", "10.244.0.1", host, 1450,
    )  # fmt: skip
    assert v.master == 7 and v.peer == "eth0" and v.peer_mac == "0a:58:0a:f4:00:02"
    assert (v.address, v.gateway) == ("10.244.0.2/24", "10.244.0.1")
    assert fast.pods == {"10.244.0.2": host}


def test_a_failed_add_leaves_no_veth_no_ip_and_no_map_entry(parts: tuple) -> None:  # type: ignore[type-arg]
    net, kernel, fast, d = parts

    def vanish(pod_ns: str, ifname: str, ip: str, plen: int, gateway: str) -> None:
        raise KernelError(f"interface '{ifname}' vanished from '{pod_ns}'")

    kernel.configure = vanish  # type: ignore[method-assign]
    with pytest.raises(KernelError, match="vanished"):
        net.add("c1", pod_ns(d, "a"), "eth0")
    assert kernel.veths_ == {} and net.ipam.allocations() == [] and fast.pods == {}
    with pytest.raises(CNIError, match="does not exist") as e:
        net.add("c2", str(d / "nowhere"), "eth0")
    assert e.value.cni_code == 4 and net.ipam.allocations() == []


def test_add_reaps_a_doomed_namesake_then_retries_and_follows_a_remade_bridge(
    parts: tuple,  # type: ignore[type-arg]
) -> None:
    net, kernel, _, d = parts
    host = host_veth_name("c1", "eth0")
    kernel.refuse[host] = errno.EEXIST  # a doomed veth of the same name, not reaped yet
    net.add("c1", pod_ns(d, "a"), "eth0")
    assert [x[0] for x in kernel.log[:3]] == ["add_veth", "reap", "add_veth"]
    host2 = host_veth_name("c2", "eth0")
    kernel.bridges["fl0"] = 9  # the bridge was made again: a new index
    kernel.refuse[host2] = errno.ENODEV
    net.add("c2", pod_ns(d, "b"), "eth0")
    assert kernel.veths_[host2].master == 9
    kernel.refuse[host_veth_name("c3", "eth0")] = errno.EPERM  # anything else: an error
    with pytest.raises(KernelError, match="failed to create veth .* on bridge 'fl0'"):
        net.add("c3", pod_ns(d, "c"), "eth0")
    assert [a.container_id for a in net.ipam.allocations()] == ["c1", "c2"]


def test_del_takes_the_pod_off_before_the_ip_is_freed(parts: tuple) -> None:  # type: ignore[type-arg]
    net, kernel, fast, d = parts
    ns = pod_ns(d, "a")
    net.add("c1", ns, "eth0")
    host = host_veth_name("c1", "eth0")
    net.start_reaper()  # batches: the veth waits, down, in the doomed group
    net.reap_delay = 60
    kernel.log.clear()
    net.delete("c1", "eth0", ns)
    v = kernel.veths_[host]
    assert kernel.log[0] == ("unconfigure", ns, "eth0") and v.address == ""
    assert (v.up, v.group) == (False, DOOMED) and net.ipam.allocations() == [] and fast.pods == {}
    net.delete("c1", "eth0", ns)  # idempotent
    net.stop_reaper()
    assert kernel.veths_ == {}


def test_del_without_a_namespace_destroys_the_veth_at_once(parts: tuple) -> None:  # type: ignore[type-arg]
    net, kernel, _, d = parts
    net.add("c1", pod_ns(d, "a"), "eth0")
    kernel.log.clear()
    net.delete("c1", "eth0", "")
    assert kernel.log[:2] == [("unconfigure", "", "eth0"), ("delete", host_veth_name("c1", "eth0"))]
    assert kernel.veths_ == {} and net.ipam.allocations() == []


def test_check_names_what_is_wrong(parts: tuple) -> None:  # type: ignore[type-arg]
    net, kernel, _, d = parts
    ns = pod_ns(d, "a")
    net.add("c1", ns, "eth0")
    net.check("c1", ns, "eth0")
    kernel.veths_[host_veth_name("c1", "eth0")].address = ""
    with pytest.raises(CNIError, match="lacks 10.244.0.2/24") as e:
        net.check("c1", ns, "eth0")
    assert e.value.cni_code == 100
    with pytest.raises(CNIError, match="has no IP allocation") as e:
        net.check("c9", ns, "eth0")
    assert e.value.cni_code == 3


def test_gc_and_orphans_free_only_what_is_not_in_use(parts: tuple) -> None:  # type: ignore[type-arg]
    net, kernel, fast, d = parts
    for c in ("c1", "c2", "c3"):
        net.add(c, pod_ns(d, c), "eth0")
    assert net.gc({("c1", "eth0"), ("c2", "eth0")}) == 1
    assert sorted(a.container_id for a in net.ipam.allocations()) == ["c1", "c2"]
    assert host_veth_name("c3", "eth0") not in kernel.veths_ and len(fast.pods) == 2
    del kernel.veths_[host_veth_name("c2", "eth0")]  # its namespace went without a DEL
    assert net.orphans(grace=3600) == []  # too young to be reclaimed
    assert net.orphans(grace=0) == ["10.244.0.3"]
    assert list(fast.pods) == ["10.244.0.2"]


def test_a_new_pod_mtu_reaches_both_ends_smaller_side_first(parts: tuple) -> None:  # type: ignore[type-arg]
    net, kernel, _, d = parts
    net.add("c1", pod_ns(d, "a"), "eth0", "default/a")
    net.add("c2", pod_ns(d, "b"), "eth0", "default/b")
    a, b = host_veth_name("c1", "eth0"), host_veth_name("c2", "eth0")
    kernel.gone.add(str(d / "b"))  # b's namespace cannot be entered: it must be recreated
    kernel.log.clear()
    assert net.set_mtu(1500) == (["default/a"], ["default/b"])
    # raising: the host end first, so the pod never sends more than it accepts
    assert kernel.log[:2] == [("set_mtu", a, "1500"), ("set_pod_mtu", str(d / "a"), "eth0", "1500")]
    assert (kernel.veths_[a].mtu, kernel.veths_[a].pod_mtu) == (1500, 1500)
    kernel.log.clear()
    assert net.set_mtu(1450) == (["default/a"], ["default/b"])
    # lowering: the pod end first; b is left alone at its old MTU
    assert kernel.log[:2] == [("set_pod_mtu", str(d / "a"), "eth0", "1450"), ("set_mtu", a, "1450")]
    assert (kernel.veths_[b].mtu, kernel.veths_[b].pod_mtu) == (1500, 1450)
    assert net.set_mtu(1450) == ([], ["default/b"])  # nothing left to change for a

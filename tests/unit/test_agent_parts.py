"""The agent's parts on the kernel fakes: what each programs for a given store
history (no root; the same parts run against the real kernel in tests/privileged
and tests/lab)."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import pytest

from flatnet import backends, keys
from flatnet.agent.cni import CNIHandler
from flatnet.agent.lease import LeaseKeeper
from flatnet.agent.peers import PeerWatcher
from flatnet.agent.pods import Attachment
from flatnet.backends import Context
from flatnet.cni import protocol
from flatnet.errors import KernelError
from flatnet.kernel.fake import FakeConntrack, FakeFastPath, FakeFirewall, FakeRoutes
from flatnet.kernel.objects import Fdb, Neigh, Route
from flatnet.model import (
    Lease,
    NetworkConfig,
    PeerStatus,
    PodRecord,
    ProxyStatus,
    Service,
    ServicePort,
)
from flatnet.proxy.sync import ServiceProxy
from flatnet.store import KV, Event
from flatnet.store.sqlite import SqliteStore

ME = Lease("10.244.0.0/24", "node1", "192.168.50.11", "vxlan", {"vtepMAC": "0a:58:0a:f4:00:00"})


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    s = SqliteStore(str(tmp_path / "store.db"))
    yield s  # type: ignore[misc]
    s.close()


def peer(n: int, ip: str, backend: str = "vxlan") -> Lease:
    mac = f"0a:58:0a:f4:0{n}:00"
    return Lease(f"10.244.{n}.0/24", f"node{n + 1}", ip, backend, {"vtepMAC": mac})


def kv(lease: Lease, rev: int = 1) -> KV:
    return KV(keys.subnet(lease.subnet), lease.to_json(), rev, rev)


def watcher(store: SqliteStore, backend: str = "vxlan") -> tuple[PeerWatcher, FakeRoutes, list]:
    ctx = Context(None, ME, "eth0", 1500, ("192.168.50.0/24",))
    routes, told = FakeRoutes(), []
    lease = store.grant(60)  # the node's TTL lease: its status goes with it
    w = PeerWatcher(store, backends.get(backend), ctx, routes, lease, 10.0, told.append)
    return w, routes, told


def status(store: SqliteStore) -> PeerStatus:
    got = store.get(keys.peer_status("node1"))
    assert got is not None
    return PeerStatus.from_json(got.value)


def test_peer_watcher_programs_each_peer_and_forgets_a_leaver(store: SqliteStore) -> None:
    w, routes, told = watcher(store)
    p1, p2 = peer(1, "192.168.50.12"), peer(2, "192.168.51.13")
    w.listed([kv(ME), kv(p1), kv(p2)], 1)
    assert routes.routes == {
        Route("10.244.1.0/24", "10.244.1.0", "flatnet.1", onlink=True),
        Route("10.244.2.0/24", "10.244.2.0", "flatnet.1", onlink=True),
    }
    assert routes.fdb == {
        Fdb("0a:58:0a:f4:01:00", "192.168.50.12", "flatnet.1"),
        Fdb("0a:58:0a:f4:02:00", "192.168.51.13", "flatnet.1"),
    }
    assert Neigh("10.244.1.0", "0a:58:0a:f4:01:00", "flatnet.1") in routes.neigh
    assert status(store).programmed == ["node2", "node3"]
    assert told[-1] == [("192.168.50.12", "10.244.1.0/24"), ("192.168.51.13", "10.244.2.0/24")]
    w.changed([Event("delete", keys.subnet(p2.subnet), "", 2)])
    assert {r.dst for r in routes.routes} == {"10.244.1.0/24"} and len(routes.fdb) == 1
    assert status(store).programmed == ["node2"] and told[-1] == [told[-1][0]]


def test_peer_watcher_reports_refused_and_pending_peers(store: SqliteStore) -> None:
    w, routes, _ = watcher(store, "host-gw")
    far = peer(2, "192.168.51.13", "host-gw")
    w.listed([kv(ME), kv(peer(1, "192.168.50.12", "host-gw")), kv(far)], 1)
    assert {r.dst for r in routes.routes} == {"10.244.1.0/24"}  # never a black hole
    s = status(store)
    assert s.programmed == ["node2"] and "not on this node's L2 segment" in s.refused["node3"]
    v, _, _ = watcher(store)
    v.listed([kv(ME), kv(replace(peer(1, "192.168.50.12"), backend_data={}))], 1)
    assert status(store).pending == ["node2"] and status(store).programmed == []


def test_peer_watcher_resync_restores_what_was_removed_by_hand(store: SqliteStore) -> None:
    w, routes, _ = watcher(store)
    w.listed([kv(ME), kv(peer(1, "192.168.50.12"))], 1)
    routes.routes.clear()
    w.sync()  # what the loop does after `resync` seconds without events
    assert {r.dst for r in routes.routes} == {"10.244.1.0/24"}
    writes = store.revision()
    w.sync()
    assert store.revision() == writes  # nothing changed: the status is not written again
    routes.fail = True
    with pytest.raises(KernelError):  # the loop logs it and tries again
        w.sync()


def test_peer_watcher_republishes_its_status_under_a_new_lease(store: SqliteStore) -> None:
    w, _, _ = watcher(store)
    w.listed([kv(ME), kv(peer(1, "192.168.50.12"))], 1)
    before, new = store.revision(), store.grant(60)
    w.rebind(new)
    w.sync()
    assert store.revision() == before + 1 and w.status_lease == new


def udp_service() -> tuple[Service, PodRecord]:
    svc = Service(
        "dns",
        "default",
        type="NodePort",
        cluster_ip="10.96.0.53",
        selector={"app": "dns"},
        ports=(ServicePort(53, "UDP", "dns", 53, 30053),),
    )
    pod = PodRecord("d1", "default", "n2", "10.244.1.5", labels={"app": "dns"}, phase="Running")
    return svc, replace(pod, ready=True)


def test_proxy_flushes_udp_conntrack_of_a_gone_endpoint_only(store: SqliteStore) -> None:
    svc, pod = udp_service()
    nft, ct = FakeFirewall(), FakeConntrack()
    ct.flows = [("10.96.0.53", 53, "10.244.1.5"), ("10.96.0.53", 53, "10.244.9.9")]
    proxy = ServiceProxy(store, nft, ct, "n1", "10.244.0.0/16")
    proxy.listed([KV(svc.key, svc.to_json(), 1, 1), KV(pod.key, pod.to_json(), 1, 1)], 1)
    assert ct.deleted == [] and "10.244.1.5" in nft.scripts[-1]
    proxy.changed([Event("delete", pod.key, "", 2)])
    assert sorted(ct.deleted) == [("", 30053, "10.244.1.5"), ("10.96.0.53", 53, "10.244.1.5")]
    assert ct.flows == [("10.96.0.53", 53, "10.244.9.9")]  # another endpoint's flow stays
    got = store.get(keys.proxy_status("n1"))
    assert got is not None and ProxyStatus.from_json(got.value).revision == 2


def test_proxy_keeps_serving_when_a_flush_fails(store: SqliteStore) -> None:
    class Broken(FakeConntrack):
        def delete_udp(self, targets: Iterable[tuple[str, int, str]]) -> int:
            raise KernelError("failed to delete conntrack entries in 'n1': EPERM")

    svc, pod = udp_service()
    nft = FakeFirewall()
    proxy = ServiceProxy(store, nft, Broken(), "n1", "10.244.0.0/16")
    proxy.listed([KV(svc.key, svc.to_json(), 1, 1), KV(pod.key, pod.to_json(), 1, 1)], 1)
    proxy.changed([Event("delete", pod.key, "", 2)])  # logged, not raised
    assert "10.244.1.5" not in nft.scripts[-1].split("delete")[0]
    nft.fail = "Error: Could not process rule"
    back = replace(pod, name="d2", ip="10.244.1.6")
    with pytest.raises(KernelError, match="service changes in table ip flatnet-proxy"):
        proxy.changed([Event("put", back.key, back.to_json(), 3)])


def test_lease_keeper_reclaims_the_same_subnet_and_tells_subscribers(store: SqliteStore) -> None:
    cfg = NetworkConfig(lease_ttl=60)
    keeper = LeaseKeeper(store, cfg, "node1", "192.168.50.11", lambda s: {"port": 8472})
    told: list[int] = []
    keeper.subscribe(told.append)
    lease = keeper.claim()
    assert lease.subnet == "10.244.0.0/24" and lease.backend_data == {"port": 8472}
    first = keeper.ttl_lease
    assert keeper.renew() is False and told == []
    store.revoke(first)  # the store lost it: the subnet key went with it
    assert store.get(keys.subnet(lease.subnet)) is None
    assert keeper.renew() is True
    assert keeper.lease is not None and keeper.lease.subnet == lease.subnet  # remembered
    assert told == [keeper.ttl_lease] and keeper.ttl_lease != first
    assert store.get(keys.subnet(lease.subnet)) is not None


class _Pods:
    """Stands in for PodNetwork: returns a fixed attachment, records calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def add(self, cid: str, netns: str, ifname: str, pod: str = "") -> Attachment:
        self.calls.append(("add", cid))
        return Attachment(
            cid, ifname, netns, "10.244.0.5/24", "10.244.0.1", "flx", "m1", "m2", 1450
        )

    def delete(self, cid: str, ifname: str, pod_ns: str = "") -> None:
        self.calls.append(("del", cid, pod_ns))


def cni(handler: CNIHandler, cmd: str, conf: dict) -> tuple[int, dict]:  # type: ignore[type-arg]
    import json

    env = {"CNI_COMMAND": cmd, "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}  # fmt: skip
    code, out = protocol.handle(handler, env, json.dumps(conf))
    return code, json.loads(out) if out else {}


def test_cni_handler_waits_for_ready_checks_the_config_and_merges_prev_result() -> None:
    ready, pods = threading.Event(), _Pods()
    h = CNIHandler(NetworkConfig(), pods, ready)  # type: ignore[arg-type]
    conf = {"cniVersion": "1.1.0", "name": "flatnet", "type": "flatnet"}
    code, out = cni(h, "ADD", conf)
    assert code == 1 and out["code"] == 11 and pods.calls == []  # starting: try again later
    assert cni(h, "STATUS", conf)[1]["code"] == 50
    ready.set()
    assert cni(h, "STATUS", conf)[0] == 0
    code, out = cni(h, "ADD", dict(conf, podCIDR="10.1.0.0/16"))
    assert out["code"] == 7 and "differs from the cluster's 10.244.0.0/16" in out["msg"]
    prev = {"interfaces": [{"name": "lo"}], "ips": [], "dns": {"nameservers": ["10.96.0.10"]}}
    code, out = cni(h, "ADD", dict(conf, prevResult=prev))
    assert code == 0 and [i["name"] for i in out["interfaces"]] == ["lo", "flx", "eth0"]
    assert out["ips"] == [{"address": "10.244.0.5/24", "gateway": "10.244.0.1", "interface": 2}]
    assert out["dns"] == {"nameservers": ["10.96.0.10"]}
    assert cni(h, "DEL", conf)[0] == 0 and pods.calls[-1] == ("del", "c1", "/run/netns/x")


def test_fake_fast_path_follows_the_protocol() -> None:
    fast = FakeFastPath()
    fast.add("10.244.0.5", "flx")
    fast.set_peers([("192.168.50.12", "10.244.1.0/24")])
    fast.delete("10.244.0.5")
    fast.delete("10.244.0.5")  # gone already: fine
    assert fast.pods == {} and fast.peers == {"192.168.50.12": "10.244.1.0/24"}

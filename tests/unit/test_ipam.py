from __future__ import annotations

import ipaddress
import threading
from pathlib import Path

import pytest

from flatnet.errors import ConfigError, SubnetExhausted
from flatnet.ipam import PodIPAM, find_lease, lease_subnet, save_config
from flatnet.model import NetworkConfig
from flatnet.store import Store, open_store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return open_store(str(tmp_path / "s.db"))


def test_config_defaults_and_errors() -> None:
    cfg = NetworkConfig()
    assert (cfg.pod_cidr, cfg.node_subnet_length, cfg.service_cidr) == (
        "10.244.0.0/16",
        24,
        "10.96.0.0/12",
    )
    with pytest.raises(ConfigError, match="podCIDR: '10.244.0.0/33'"):
        NetworkConfig(pod_cidr="10.244.0.0/33")
    with pytest.raises(ConfigError, match="nodeSubnetLength"):
        NetworkConfig(node_subnet_length=8)
    with pytest.raises(ConfigError, match="backend: 'ipip'"):
        NetworkConfig(backend="ipip")


def test_nodes_get_distinct_subnets_and_keep_them(store: Store) -> None:
    cfg = save_config(store, NetworkConfig())
    a = lease_subnet(store, cfg, "a", "192.168.1.1", store.grant(60))
    b = lease_subnet(store, cfg, "b", "192.168.1.2", store.grant(60))
    assert a.subnet != b.subnet
    again = lease_subnet(store, cfg, "a", "192.168.1.1", store.grant(60))
    assert again.subnet == a.subnet


def test_returning_node_gets_old_subnet_only_if_free(store: Store) -> None:
    cfg = save_config(store, NetworkConfig(pod_cidr="10.9.0.0/22"))
    la = store.grant(60)
    a = lease_subnet(store, cfg, "a", "1.1.1.1", la)
    store.revoke(la)  # a's lease expires
    assert find_lease(store, "a") is None
    a2 = lease_subnet(store, cfg, "a", "1.1.1.1", store.grant(60))
    assert a2.subnet == a.subnet  # still free: it comes back
    lb = store.grant(60)
    store.revoke(store.get("/flatnet/subnets/" + a.subnet.replace("/", "-")).lease)  # type: ignore[union-attr]
    b = lease_subnet(store, cfg, "b", "1.1.1.2", lb)  # b takes a's old subnet meanwhile
    assert b.subnet == a.subnet
    a3 = lease_subnet(store, cfg, "a", "1.1.1.1", store.grant(60))
    assert a3.subnet != b.subnet


def test_subnet_exhausted_names_cidr(store: Store) -> None:
    cfg = save_config(store, NetworkConfig(pod_cidr="10.9.0.0/23"))
    lease_subnet(store, cfg, "a", "1", store.grant(60))
    lease_subnet(store, cfg, "b", "2", store.grant(60))
    with pytest.raises(SubnetExhausted, match="10.9.0.0/23.*'c'"):
        lease_subnet(store, cfg, "c", "3", store.grant(60))


def test_pod_ips_idempotent_round_robin_release(store: Store) -> None:
    ipam = PodIPAM(store, "10.244.5.0/24", "n1")
    a = ipam.allocate("c1", "eth0")
    assert a.ip == "10.244.5.2"
    assert ipam.allocate("c1", "eth0") == a
    b = ipam.allocate("c2", "eth0")
    assert b.ip == "10.244.5.3"
    assert ipam.release("c1", "eth0") == a
    assert ipam.release("c1", "eth0") is None
    c = ipam.allocate("c3", "eth0")
    assert c.ip == "10.244.5.4"  # not the just-freed .2


def test_hundred_concurrent_allocations_distinct(store: Store) -> None:
    ipams = [PodIPAM(store, "10.244.7.0/24", "n1") for _ in range(4)]  # 4 "processes"
    got: list[str] = []
    lock = threading.Lock()

    def add(i: int) -> None:
        ip = ipams[i % 4].allocate(f"c{i}", "eth0").ip
        with lock:
            got.append(ip)

    ts = [threading.Thread(target=add, args=(i,)) for i in range(100)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(set(got)) == 100
    net = ipaddress.IPv4Network("10.244.7.0/24")
    assert all(
        ipaddress.IPv4Address(ip) in net and not ip.endswith((".0", ".1", ".255")) for ip in got
    )


def test_exhausted_pod_subnet_and_gc(store: Store) -> None:
    ipam = PodIPAM(store, "10.244.8.0/29", "n1")  # .2 .. .6 usable
    for i in range(5):
        ipam.allocate(f"c{i}", "eth0")
    with pytest.raises(SubnetExhausted, match="10.244.8.0/29"):
        ipam.allocate("c9", "eth0")
    freed = ipam.gc({("c0", "eth0"), ("c1", "eth0")})
    assert sorted(a.container_id for a in freed) == ["c2", "c3", "c4"]
    assert {a.container_id for a in ipam.allocations()} == {"c0", "c1"}

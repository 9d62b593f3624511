"""The backends' pure part: which kernel objects a set of peers implies."""

from __future__ import annotations

import pytest

from flatnet import backends
from flatnet.backends import Context, Fdb, Neigh, Route
from flatnet.errors import ConfigError
from flatnet.lab.topo import parse
from flatnet.model import Lease, NetworkConfig

ME = Lease("10.244.0.0/24", "node1", "192.168.50.11", "vxlan", {"vtepMAC": "0a:58:0a:f4:00:00"})


def ctx(**options: object) -> Context:
    return Context(None, ME, "eth0", 1500, ("192.168.50.0/24",), dict(options))


def peer(n: int, ip: str, backend: str = "vxlan", **data: object) -> Lease:
    return Lease(f"10.244.{n}.0/24", f"node{n + 1}", ip, backend, dict(data))


def test_registry_knows_every_backend_and_rejects_others() -> None:
    assert backends.names() == ["bgp", "host-gw", "none", "udp", "vxlan"]
    with pytest.raises(ConfigError, match="backend 'ospf' is not one of"):
        backends.get("ospf")


def test_host_gw_routes_on_link_peers_and_refuses_the_rest_by_name() -> None:
    near, far = peer(1, "192.168.50.12", "host-gw"), peer(2, "192.168.51.11", "host-gw")
    want = backends.get("host-gw").desired(ctx(), [near, far])
    assert want.routes == {Route("10.244.1.0/24", "192.168.50.12", "eth0")}
    assert set(want.refused) == {"node3"}
    assert "192.168.51.11" in want.refused["node3"] and "L2" in want.refused["node3"]
    assert backends.get("host-gw").pod_mtu(ctx()) == 1500


def test_vxlan_recipe_per_peer() -> None:
    p = peer(1, "192.168.51.12", vtepMAC="0a:58:0a:f4:01:00")
    vx = backends.get("vxlan")
    want = vx.desired(ctx(), [p])
    assert want.neigh == {Neigh("10.244.1.0", "0a:58:0a:f4:01:00", "flatnet.1")}
    assert want.fdb == {Fdb("0a:58:0a:f4:01:00", "192.168.51.12", "flatnet.1")}
    assert want.routes == {Route("10.244.1.0/24", "10.244.1.0", "flatnet.1", onlink=True)}
    assert vx.pod_mtu(ctx()) == 1450 and vx.devices(ctx(vni=7)) == ("flatnet.7",)


def test_vxlan_direct_routing_pending_and_foreign_peers() -> None:
    near = peer(1, "192.168.50.12", vtepMAC="0a:58:0a:f4:01:00")
    far = peer(2, "192.168.51.13", vtepMAC="0a:58:0a:f4:02:00")
    fresh = peer(3, "192.168.51.14")  # leased, no VTEP published yet
    other = peer(4, "192.168.51.15", backend="host-gw")
    want = backends.get("vxlan").desired(ctx(directRouting=True), [near, far, fresh, other])
    assert Route("10.244.1.0/24", "192.168.50.12", "eth0") in want.routes  # plain, same L2
    assert Route("10.244.2.0/24", "10.244.2.0", "flatnet.1", onlink=True) in want.routes
    assert len(want.routes) == 2 and want.pending == {"node4"}
    assert set(want.refused) == {"node5"}
    # without directRouting an on-link peer is encapsulated like any other
    plain = backends.get("vxlan").desired(ctx(), [near])
    assert plain.routes == {Route("10.244.1.0/24", "10.244.1.0", "flatnet.1", onlink=True)}


def test_udp_routes_into_the_tun_and_keeps_a_forwarding_table() -> None:
    udp = backends.get("udp")
    want = udp.desired(ctx(), [peer(1, "192.168.50.12", "udp", port=9000)])
    assert want.routes == {Route("10.244.1.0/24", "", "flatnet-tun")}
    assert want.forward == {"10.244.1.0/24": ("192.168.50.12", 9000)}
    assert udp.table == {}  # type: ignore[attr-defined]  # desired() is pure
    udp.program(want)
    assert list(udp.table.values()) == [("192.168.50.12", 9000)]  # type: ignore[attr-defined]
    assert udp.sources == {"192.168.50.12"}  # type: ignore[attr-defined]
    assert udp.pod_mtu(ctx()) == 1462


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"vnix": 1}, "backendOptions.vnix: not an option of backend 'vxlan'"),
        ({"port": "8472"}, "backendOptions.port: '8472' is not a int"),
    ],
)
def test_backend_options_are_checked(options: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError) as e:
        NetworkConfig(backend="vxlan", backend_options=options)
    assert words in str(e.value)


def test_routed_lab_splits_nodes_over_two_segments() -> None:
    t = parse(
        "kind: Lab\nname: r\nunderlay: routed\nnodes: [a, b, c]\nnetem: {delay: 5ms, loss: 1%}\n"
    )
    assert t.segments() == ["192.168.50.0/24", "192.168.51.0/24"]
    assert [t.node_ip(n) for n in "abc"] == ["192.168.50.11", "192.168.50.12", "192.168.51.11"]
    assert t.router_ip(1) == "192.168.51.1" and t.netem == (("delay", "5ms"), ("loss", "1%"))


def test_lab_file_netem_mistake_names_the_line() -> None:
    with pytest.raises(ConfigError) as e:
        parse("kind: Lab\nname: r\nnodes: [a]\nnetem: {delay: fast}\n", "x.yaml")
    assert "x.yaml:4" in str(e.value) and "netem.delay" in str(e.value)


def test_tunnel_notrack_script() -> None:
    """The notrack table names this node's own address and the tunnel port in
    both directions; a backend without a tunnel gets the table removed."""
    from flatnet.agent.node import tunnel_script

    s = tunnel_script("192.168.50.11", 8472)
    assert "type filter hook prerouting priority raw" in s
    assert "ip daddr 192.168.50.11 udp dport 8472 notrack" in s
    assert "type filter hook output priority raw" in s
    assert "ip saddr 192.168.50.11 udp dport 8472 notrack" in s
    assert s.startswith("table ip flatnet-tunnel\ndelete table ip flatnet-tunnel\n")
    gone = tunnel_script("192.168.50.11", None)
    assert gone == "table ip flatnet-tunnel\ndelete table ip flatnet-tunnel\n"

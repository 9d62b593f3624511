"""The bgp backend's choices, BIRD's configs (parsed by the real bird -p),
LoadBalancer pools, and who announces what (pure logic; no namespaces)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from flatnet import services
from flatnet.backends import Context
from flatnet.backends.bgp import Bgp
from flatnet.bgp.conf import Speaker, node, router
from flatnet.errors import ConfigError, LabFileError
from flatnet.kernel.arp import arp_frame, parse_request
from flatnet.kernel.objects import BgpSession
from flatnet.lab.topo import parse, router_peering
from flatnet.lb import pools
from flatnet.lb.announce import l2_order, plan
from flatnet.model import AddressPool, Lease, NetworkConfig, Service, ServicePort
from flatnet.store.sqlite import SqliteStore
from flatnet.view import Endpoint

ME = Lease("10.244.0.0/24", "node1", "192.168.50.11", "bgp", {})


def ctx(**options: object) -> Context:
    return Context(None, ME, "eth0", 1500, ("192.168.50.0/24",), dict(options))


def peer(n: int, ip: str, backend: str = "bgp") -> Lease:
    return Lease(f"10.244.{n}.0/24", f"node{n + 1}", ip, backend, {})


PEERS = [peer(1, "192.168.50.12"), peer(2, "192.168.50.13"), peer(3, "192.168.51.11")]


# -- who peers with whom --------------------------------------------------------
def test_full_mesh_peers_with_every_node_of_its_segment_and_refuses_the_far_one() -> None:
    want = Bgp().desired(ctx(), PEERS)
    assert want.bgp == {
        BgpSession("node2", "192.168.50.12", 64512, "mesh"),
        BgpSession("node3", "192.168.50.13", 64512, "mesh"),
    }
    assert set(want.refused) == {"node4"}
    assert "across a router" in want.refused["node4"] and "peers" in want.refused["node4"]
    assert not want.routes  # BIRD installs the routes, never the agent


def test_a_router_peer_and_an_as_per_segment_reach_the_far_node() -> None:
    opts = {
        "peers": [{"address": "192.168.50.1", "asNumber": 64500, "name": "router"}],
        "nodeASNumbers": {"node4": 64513},
    }
    want = Bgp().desired(ctx(**opts), PEERS)
    assert BgpSession("router", "192.168.50.1", 64500, "external") in want.bgp
    assert not want.refused


def test_peers_limited_to_their_nodes() -> None:
    opts = {"peers": [{"address": "192.168.50.1", "asNumber": 64500, "nodes": ["node2"]}]}
    assert not any(s.kind == "external" for s in Bgp().desired(ctx(**opts), PEERS).bgp)


def test_route_reflectors_turn_the_mesh_off() -> None:
    client = Bgp().desired(ctx(routeReflectors=["node2"]), PEERS[:2]).bgp
    assert client == {BgpSession("node2", "192.168.50.12", 64512, "mesh")}
    me_rr = Bgp().desired(ctx(routeReflectors=["node1", "node2"]), PEERS[:2]).bgp
    assert me_rr == {
        BgpSession("node2", "192.168.50.12", 64512, "mesh"),
        BgpSession("node3", "192.168.50.13", 64512, "rr-client"),
    }


def test_cross_subnet_encapsulates_only_across_the_router() -> None:
    far = Lease("10.244.3.0/24", "node4", "192.168.51.11", "bgp", {"vtepMAC": "0a:58:0a:f4:03:00"})
    want = Bgp().desired(ctx(crossSubnet=True), [*PEERS[:2], far])
    assert {s.name for s in want.bgp} == {"node2", "node3"}
    assert {r.dst for r in want.routes} == {"10.244.3.0/24"}
    assert {f.dst for f in want.fdb} == {"192.168.51.11"}


def test_peers_of_another_backend_are_refused() -> None:
    want = Bgp().desired(ctx(), [peer(1, "192.168.50.12", "vxlan")])
    assert "runs backend 'vxlan'" in want.refused["node2"]


@pytest.mark.parametrize(
    ("opts", "words"),
    [
        ({"asNumber": 0}, "asNumber: 0 is not an AS number"),
        ({"peers": [{"address": "10.0.0.300", "asNumber": 1}]}, "peers[0].address"),
        ({"peers": [{"address": "10.0.0.1"}]}, "peers[0].asNumber"),
        ({"peers": [{"address": "10.0.0.1", "asNumber": 1, "as": 2}]}, "takes address"),
        ({"nodeASNumbers": {"node2": -1}}, "nodeASNumbers.node2"),
        ({"bfd": "yes"}, "bfd: 'yes' is not a bool"),
    ],
)
def test_bad_bgp_options_name_the_field(opts: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
        NetworkConfig(backend="bgp", backend_options=opts)


# -- BIRD's configs ---------------------------------------------------------------
def _bird_parses(tmp_path: Path, text: str) -> None:
    bird = shutil.which("bird") or "/usr/sbin/bird"
    if not Path(bird).exists():
        pytest.skip("bird2 is not installed (make deps)")
    conf = tmp_path / "bird.conf"
    conf.write_text(text)
    r = subprocess.run([bird, "-p", "-c", str(conf)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr + text


def test_node_config_is_valid_bird_and_says_what_it_should(tmp_path: Path) -> None:
    sessions = frozenset(
        [
            BgpSession("node2", "192.168.50.12", 64512, "rr-client"),
            BgpSession("router", "192.168.50.1", 64500, "external"),
        ]
    )
    sp = Speaker("192.168.50.11", 64512, "10.244.0.0/24", "10.244.0.0/16", sessions,
                 frozenset({"172.30.0.1"}), reflector=True)  # fmt: skip
    text = node(sp)
    _bird_parses(tmp_path, text)
    assert "route 10.244.0.0/24 blackhole;" in text
    assert "route 172.30.0.1/32 blackhole;" in text
    assert "protocol bgp node_node2" in text and "rr client;" in text
    assert "protocol bgp peer_192_168_50_1" in text and "bfd on;" in text
    assert "export where source = RTS_BGP" in text  # only learned routes reach the kernel


def test_router_config_is_valid_bird(tmp_path: Path) -> None:
    text = router(
        {"192.168.50.0/24": "192.168.50.1", "192.168.51.0/24": "192.168.51.1"},
        64500,
        [("node1", "192.168.50.11", 64512), ("node3", "192.168.51.11", 64513)],
    )
    _bird_parses(tmp_path, text)
    assert "local 192.168.51.1 as 64500;" in text and "merge paths on" in text


def test_the_routed_lab_peers_with_its_router_and_gives_segment_b_its_own_as() -> None:
    t = parse("kind: Lab\nname: r\nnetwork: {backend: bgp}\nunderlay: routed\n"
              "nodes: [a, b, c, d]\n")  # fmt: skip
    o = t.network.backend_options
    assert o["nodeASNumbers"] == {"c": 64513, "d": 64513}
    assert [(p["address"], p["nodes"]) for p in o["peers"]] == [
        ("192.168.50.1", ["a", "b"]),
        ("192.168.51.1", ["c", "d"]),
    ]


def test_router_peering_keeps_what_the_options_set() -> None:
    members, routers = [["a"], ["b"]], ["192.168.50.1", "192.168.51.1"]
    mine = [{"address": "192.168.50.9", "asNumber": 65000}]
    o = router_peering({"peers": mine, "asNumber": 64600}, members, routers, 64500)
    assert o["peers"] == mine and o["nodeASNumbers"] == {"b": 64601}
    o = router_peering({"crossSubnet": True}, members, routers, 64700)
    assert "nodeASNumbers" not in o and {p["asNumber"] for p in o["peers"]} == {64700}
    assert router_peering({}, [["a", "b"], []], routers, 64500)["peers"] == [
        {"name": "router", "address": "192.168.50.1", "asNumber": 64500, "nodes": ["a", "b"]}
    ]


# -- pools and addresses ------------------------------------------------------------
CFG = NetworkConfig()


def lb(name: str, **kw: object) -> Service:
    return Service(name, "default", "LoadBalancer", ports=(ServicePort(80),), **kw)  # type: ignore[arg-type]


def test_addresses_come_from_the_pools_and_are_claimed(tmp_path: Path) -> None:
    s = SqliteStore(str(tmp_path / "s.db"))
    pools.apply(s, CFG, [AddressPool("p", ("172.30.0.0/30",))])
    a, b = services.apply(s, CFG, [lb("a"), lb("b", load_balancer_ip="172.30.0.1")])
    assert (a.ingress_ip, b.ingress_ip) == ("172.30.0.2", "172.30.0.1")  # .0/.3 skipped
    assert a.ports[0].node_port >= 30000  # a LoadBalancer is also a NodePort
    with pytest.raises(
        ConfigError, match=r"service default/c: no free address left in pool\(s\) p"
    ):
        services.apply(s, CFG, [lb("c")])
    assert s.get("/flatnet/services/default/c") is None
    with pytest.raises(ConfigError, match="172.30.0.1 is already in use by service default/b"):
        services.apply(s, CFG, [lb("d", load_balancer_ip="172.30.0.1")])
    with pytest.raises(ConfigError, match="10.1.1.1 is in no address pool"):
        services.apply(s, CFG, [lb("e", load_balancer_ip="10.1.1.1")])
    assert services.delete(s, [("default", "a")]) == ["default/a"]
    assert services.apply(s, CFG, [lb("c")])[0].ingress_ip == "172.30.0.2"  # given back
    with pytest.raises(ConfigError, match="in use by service"):
        pools.delete(s, ["p"])
    other = lb("x", load_balancer_class="example.com/other")
    assert services.apply(s, CFG, [other])[0].ingress_ip == ""


def test_a_pool_may_not_overlap_the_cluster_or_another_pool(tmp_path: Path) -> None:
    s = SqliteStore(str(tmp_path / "s.db"))
    with pytest.raises(ConfigError, match="overlaps the cluster's podCIDR"):
        pools.apply(s, CFG, [AddressPool("p", ("10.244.9.0/24",))])
    pools.apply(s, CFG, [AddressPool("p", ("172.30.0.0/24",))])
    with pytest.raises(ConfigError, match="overlaps pool p"):
        pools.apply(s, CFG, [AddressPool("q", ("172.30.0.10-172.30.1.5",))])


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("addresses: [172.30.0.1/24]", "has host bits set"),
        ("addresses: [172.30.0.9-172.30.0.1]", "ends before it starts"),
        ("addresses: []", "at least 1 item"),
        ("addresses: [x], advertisement: L3", "advertisement"),
    ],
)
def test_a_bad_pool_names_its_line_and_field(spec: str, words: str) -> None:
    text = (
        "kind: Lab\nname: p\nnodes: [a]\n---\napiVersion: flatnet.io/v1alpha1\n"
        f"kind: IPAddressPool\nmetadata: {{name: p}}\nspec: {{{spec}}}\n"
    )
    with pytest.raises(LabFileError, match=words) as e:
        parse(text, "lab.yaml")
    assert "lab.yaml:" in str(e.value)


# -- who announces ------------------------------------------------------------------
def ep(node: str) -> Endpoint:
    return Endpoint("10.244.0.5", 8080, node, "default/p")


def test_l2_one_node_answers_and_the_next_takes_over() -> None:
    svc = lb("a", ingress_ip="192.168.50.200", pool="lan")
    pool = {"lan": AddressPool("lan", ("192.168.50.200-192.168.50.220",), True, "L2")}
    alive = {"node1", "node2", "node3"}
    owners = [n for n in alive if plan(n, [(svc, [ep("node1")])], alive, pool, "vxlan").l2]
    assert owners == [l2_order("192.168.50.200", alive)[0]]  # exactly one
    first = owners[0]
    rest = alive - {first}
    after = [n for n in rest if plan(n, [(svc, [ep("node1")])], rest, pool, "vxlan").l2]
    assert after == [l2_order("192.168.50.200", alive)[1]]


def test_l2_only_nodes_with_the_address_on_link_answer() -> None:
    pool = {"p": AddressPool("p", ("172.30.0.0/24", "192.168.51.200/32"), True, "L2")}
    alive = {"node1", "node2", "node3"}
    nets = {"node1": ["192.168.50.0/24"], "node2": ["192.168.50.0/24"],
            "node3": ["192.168.51.0/24"]}  # fmt: skip
    off = lb("a", ingress_ip="172.30.0.1", pool="p")  # on no segment: no one answers
    assert not [n for n in alive if plan(n, [(off, [ep("node1")])], alive, pool, "vxlan", nets).l2]
    on_b = lb("b", ingress_ip="192.168.51.200", pool="p")  # segment B: node3 only
    owners = [n for n in alive if plan(n, [(on_b, [ep("node1")])], alive, pool, "vxlan", nets).l2]
    assert owners == ["node3"]


def test_local_policy_only_nodes_with_an_endpoint_and_none_without_endpoints() -> None:
    svc = lb("a", ingress_ip="172.30.0.1", pool="p", external_local=True)
    pool = {"p": AddressPool("p", ("172.30.0.0/24",))}
    alive = {"node1", "node2"}
    assert plan("node1", [(svc, [ep("node1")])], alive, pool, "bgp").bgp == {"172.30.0.1"}
    assert not plan("node2", [(svc, [ep("node1")])], alive, pool, "bgp").bgp
    assert not plan("node1", [(svc, [])], alive, pool, "bgp").bgp


def test_arp_request_and_reply_frames() -> None:
    mac, other = bytes.fromhex("0a5800000001"), bytes.fromhex("0a5800000002")
    req = arp_frame(1, other, b"\xff" * 6, other, "192.168.50.254", b"\0" * 6, "192.168.50.200")
    assert parse_request(req) == (other, "192.168.50.254", "192.168.50.200")
    assert parse_request(arp_frame(2, mac, other, mac, "1.1.1.1", other, "2.2.2.2")) is None


def test_a_lab_file_pool_is_checked_before_anything_is_built() -> None:
    pool = "---\napiVersion: flatnet.io/v1alpha1\nkind: IPAddressPool\nmetadata: {{name: {}}}\nspec: {{addresses: [{}]}}\n"  # noqa: E501
    head = "kind: Lab\nname: p\nnodes: [a]\n"
    with pytest.raises(
        LabFileError, match=r"lab.yaml:5: .*10.244.1.0/24 overlaps the cluster's podCIDR"
    ):  # noqa: E501
        parse(head + pool.format("p", "10.244.1.0/24"), "lab.yaml")
    with pytest.raises(LabFileError, match=r"lab.yaml:10: ipaddresspool q: .* overlaps pool p"):
        parse(
            head + pool.format("p", "172.30.0.0/24") + pool.format("q", "172.30.0.9-172.30.0.20"),
            "lab.yaml",
        )  # noqa: E501


def test_an_adopted_bird_is_not_configured_before_the_sessions_are_known(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The announcer's thread starts before the peer watcher's: announcing the
    LoadBalancer addresses first re-rendered an adopted BIRD with no sessions,
    which dropped them all (an agent restart flapped every route; CI caught it)."""
    from flatnet.kernel import bird

    configured: list[str] = []
    monkeypatch.setattr(bird.Bird, "ensure", lambda self, text, reconfigure=True: "adopted")
    monkeypatch.setattr(bird.Bird, "configure", lambda self, text: configured.append(text))
    b = Bgp()
    lease = Lease("10.244.0.0/24", "node1", "192.168.50.11", "bgp")
    b.setup(Context(None, lease, "eth0", 1500, ("192.168.50.0/24",), {}, str(tmp_path)))
    b.announce(frozenset({"172.30.0.1"}))
    assert configured == []
    peer = BgpSession("node2", "192.168.50.12", 64512)
    from flatnet.backends import Desired

    b.program(Desired(bgp=frozenset({peer})))
    assert len(configured) == 1
    assert "neighbor 192.168.50.12" in configured[0] and "172.30.0.1/32" in configured[0]

"""Service manifests, cluster IP / node port claims, the proxy's nftables fragments
and diffs, and DNS answers (pure logic; the kernel side is in tests/lab)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from dnslib import QTYPE, DNSRecord

from flatnet import services
from flatnet.dns.records import build
from flatnet.dns.server import DNSServer
from flatnet.errors import ConfigError, LabFileError
from flatnet.manifest import docs, objects
from flatnet.model import NetworkConfig, PodRecord, ServicePort
from flatnet.proxy import render
from flatnet.proxy.desired import fragment
from flatnet.store import KV
from flatnet.store.sqlite import SqliteStore
from flatnet.view import PodIndex, endpoints

CFG = NetworkConfig()
SVC = """\
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
"""


def parse(text: str) -> list:  # type: ignore[type-arg]
    return objects(docs(text, "f.yaml"), "f.yaml", None).services


@pytest.mark.parametrize(
    "bad,line,words",
    [
        (SVC.replace("kind: Service", "kind: Deployment"), 1, "kind 'Deployment'"),
        (SVC.replace("port: 80,", "port: 70000,"), 7, "spec.ports[0].port"),
        (SVC.replace("targetPort: http", "targetPort: 0"), 7, "spec.ports[0].targetPort"),
        (SVC.replace("{app: web}", "[app, web]"), 5, "spec.selector"),
        (SVC.replace("{app: web}", "{app: 3}"), 5, "spec.selector.app"),
        (SVC.replace("selector:", "type: LoadBalancers\n  selector:"), 5, "spec.type"),
        (SVC.replace("selector:", "loadBalancerIP: 10.1.1.1\n  selector:"), 5, "spec"),
        (SVC + "  clusterIP: 10.96.0.300\n", 8, "spec.clusterIP"),
        (SVC.replace("name: web}", "name: Web}"), 3, "metadata.name"),
    ],
)
def test_bad_manifests_name_the_field(bad: str, line: int, words: str) -> None:
    with pytest.raises(LabFileError) as e:
        parse(bad)
    assert e.value.line == line, str(e.value)
    assert words in str(e.value)


def test_two_unnamed_ports_are_refused() -> None:
    two = SVC.replace("- {name: http, port: 80, targetPort: http}", "- {port: 80}\n  - {port: 81}")
    with pytest.raises(LabFileError, match=r"ports\[0\].name: required"):
        parse(two)


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    return SqliteStore(str(tmp_path / "s.db"))


def stored(store: SqliteStore) -> list[str]:
    return [kv.key for kv in store.range("/flatnet/") if "/services/" in kv.key or "ips/" in kv.key]


def test_cluster_ips_and_node_ports_are_claimed_once(store: SqliteStore) -> None:
    a, b = parse(SVC + "---\n" + SVC.replace("name: web}", "name: web2}"))
    done = services.apply(store, CFG, [a, b])
    assert [s.cluster_ip for s in done] == ["10.96.0.11", "10.96.0.12"]
    # re-applying keeps the IP; asking for another one is refused (immutable)
    assert services.apply(store, CFG, [a])[0].cluster_ip == "10.96.0.11"
    with pytest.raises(ConfigError, match="immutable"):
        services.apply(store, CFG, parse(SVC + "  clusterIP: 10.96.0.99\n"))
    np = parse(
        SVC.replace("name: web}", "name: np}").replace("selector:", "type: NodePort\n  selector:")
    )
    assert services.apply(store, CFG, np)[0].ports[0].node_port == 30000


@pytest.mark.parametrize(
    "extra,words",
    [
        ("  clusterIP: 10.1.0.5\n", "not a usable address of the service CIDR 10.96.0.0/12"),
        ("  clusterIP: 10.96.0.11\n", "10.96.0.11 is already allocated to service default/first"),
    ],
)
def test_bad_cluster_ip_applies_nothing(store: SqliteStore, extra: str, words: str) -> None:
    services.apply(store, CFG, parse(SVC.replace("name: web}", "name: first}")))
    before = stored(store)
    ok = SVC.replace("name: web}", "name: okay}")
    with pytest.raises(ConfigError, match=words):
        services.apply(store, CFG, parse(ok + "---\n" + SVC + extra))
    assert stored(store) == before  # not even the good service of the file


def test_node_port_taken_is_refused(store: SqliteStore) -> None:
    np = SVC.replace("selector:", "type: NodePort\n  selector:").replace(
        "targetPort: http}", "targetPort: http, nodePort: 30080}"
    )
    services.apply(store, CFG, parse(np))
    with pytest.raises(ConfigError, match="30080/TCP is already allocated to service default/web"):
        services.apply(store, CFG, parse(np.replace("name: web}", "name: other}")))
    assert services.delete(store, [("default", "web")]) == ["default/web"]
    assert stored(store) == []
    services.apply(store, CFG, parse(np.replace("name: web}", "name: other}")))


def pod(name: str, ip: str, node: str, ready: bool = True) -> PodRecord:
    return PodRecord(
        name, "default", node, ip, labels={"app": "web"}, phase="Running", ready=ready,
        ports={"http": [8080, "TCP"]},
    )  # fmt: skip


def index(*pods: PodRecord) -> PodIndex:
    idx = PodIndex()
    for p in pods:
        idx.put(f"/flatnet/pods/{p.namespace}/{p.name}", p)
    return idx


def test_endpoints_follow_labels_readiness_and_named_ports() -> None:
    svc = replace(parse(SVC)[0], cluster_ip="10.96.0.11")
    idx = index(
        pod("a", "10.244.0.2", "n1"),
        pod("b", "10.244.1.2", "n2"),
        pod("c", "10.244.1.3", "n2", ready=False),  # not ready: no endpoint
    )
    idx.put("/flatnet/pods/default/d", PodRecord("d", "default", "n2", "10.244.1.4",
            labels={"app": "web"}, phase="Running", ready=True))  # no port named http  # fmt: skip
    eps = endpoints(svc, idx.select("default", {"app": "web"}))
    assert [(e.ip, e.port) for e in eps[svc.ports[0]]] == [
        ("10.244.0.2", 8080),
        ("10.244.1.2", 8080),
    ]
    f = fragment(svc, eps, "n1", "10.244.0.0/16")
    assert f.elements == {("service-ips", "10.96.0.11 . tcp . 80"): "goto svc-default/web/tcp/80"}
    assert f.chains["svc-default/web/tcp/80"][-2:] == (
        "numgen random mod 2 == 0 meta l4proto tcp dnat to 10.244.0.2:8080",
        "meta l4proto tcp dnat to 10.244.1.2:8080",
    )
    assert list(f.chains) == ["svc-default/web/tcp/80"]  # no chain per endpoint
    sticky = fragment(replace(svc, session_affinity="ClientIP"), eps, "n1", "10.244.0.0/16")
    assert sticky.chains["ep-default/web/tcp/80__10.244.0.2/8080"] == (
        "update @aff-default/web/tcp/80__10.244.0.2/8080 { ip saddr }",
        "meta l4proto tcp dnat to 10.244.0.2:8080",
    )
    assert sticky.sets == {
        "aff-default/web/tcp/80__10.244.0.2/8080": 10800,
        "aff-default/web/tcp/80__10.244.1.2/8080": 10800,
    }
    # no endpoints: rejected, not black-holed
    empty = fragment(svc, endpoints(svc, []), "n1", "10.244.0.0/16")
    assert empty.chains == {}
    assert empty.elements == {
        ("no-endpoint-services", "10.96.0.11 . tcp . 80"): "goto reject-chain"
    }
    # the diff from empty to two endpoints: chains, then the dispatch element swap
    script = render.diff([(empty, f)])
    lines = script.splitlines()
    assert lines.index("add chain ip flatnet-proxy svc-default/web/tcp/80") < lines.index(
        "add element ip flatnet-proxy service-ips "
        "{ 10.96.0.11 . tcp . 80 : goto svc-default/web/tcp/80 }"
    )
    assert "delete element ip flatnet-proxy no-endpoint-services { 10.96.0.11 . tcp . 80 }" in lines
    back = render.diff([(f, empty)]).splitlines()
    assert back[-1] == "delete chain ip flatnet-proxy svc-default/web/tcp/80"
    assert render.diff([(f, f)]) == ""


def test_dns_answers_and_truncation() -> None:
    (svc,) = parse(SVC.replace("ports:", "clusterIP: None\n  ports:"))
    idx = index(*[pod(f"p{i}", f"10.244.{i // 200}.{i % 200 + 2}", "n1") for i in range(60)])
    recs = build([svc], idx)
    a = recs.lookup("web.default.svc.cluster.local.", QTYPE.A)
    assert len(a.answer) == 60 and a.rcode == 0
    assert recs.lookup("nope.default.svc.cluster.local", QTYPE.A).rcode == 3
    assert recs.lookup("default.svc.cluster.local", QTYPE.A).rcode == 0  # a parent: NODATA
    assert len(recs.lookup("_http._tcp.web.default.svc.cluster.local", QTYPE.SRV).answer) == 60
    srv = DNSServer.__new__(DNSServer)
    srv.records, srv.cache = recs, {}
    q = bytes(DNSRecord.question("web.default.svc.cluster.local").pack())
    udp = DNSRecord.parse(srv.handle_udp(q))
    assert (
        udp.header.tc == 1 and not udp.rr and str(udp.q.qname) == "web.default.svc.cluster.local."
    )
    tcp = DNSRecord.parse(srv.answer(q, None))
    assert tcp.header.tc == 0 and len(tcp.rr) == 60
    small = bytes(DNSRecord.question("WEB.default.svc.cluster.local", "TXT").pack())
    assert DNSRecord.parse(srv.handle_udp(small)).header.rcode == 0
    assert srv.handle_udp(bytes(DNSRecord.question("example.org").pack())) is None  # forwarded


def test_proxy_touches_only_what_a_change_concerns(store: SqliteStore) -> None:
    from flatnet.kernel.fake import FakeConntrack, FakeFirewall
    from flatnet.proxy.sync import ServiceProxy
    from flatnet.store import Event

    nft = FakeFirewall()  # records the scripts (the kernel side is in tests/lab)
    proxy = ServiceProxy(store, nft, FakeConntrack(), "n1", "10.244.0.0/16")
    web = replace(
        parse(SVC)[0], cluster_ip="10.96.0.11", ports=(ServicePort(80, target_port=8080),)
    )
    other = replace(web, name="other", selector={"app": "other"}, cluster_ip="10.96.0.12")
    a = pod("a", "10.244.0.2", "n1")
    proxy.listed(
        [KV(s.key, s.to_json(), 1, 1) for s in (web, other)] + [KV(a.key, a.to_json(), 1, 1)], 1
    )
    assert "delete table ip flatnet-proxy" in nft.scripts[-1]
    assert "10.244.0.2 . 10.244.0.2" in nft.scripts[-1]  # the local pod, for hairpin NAT
    b = pod("b", "10.244.1.2", "n2")
    proxy.changed([Event("put", b.key, b.to_json(), 2)])
    script = nft.scripts[-1]
    assert "flush chain ip flatnet-proxy svc-default/web/tcp/80" in script
    assert "other" not in script and "hairpin" not in script  # b is n2's pod
    proxy.changed([Event("delete", web.key, "", 3)])
    assert (
        "delete element ip flatnet-proxy service-ips { 10.96.0.11 . tcp . 80 }" in nft.scripts[-1]
    )
    assert "delete chain ip flatnet-proxy svc-default/web/tcp/80" in nft.scripts[-1]
    n = len(nft.scripts)
    c = replace(pod("c", "10.244.1.3", "n2"), labels={"app": "nothing"})
    proxy.changed([Event("put", c.key, c.to_json(), 4)])
    assert len(nft.scripts) == n  # a pod no service selects, on another node: no transaction
    status = json.loads(store.get("/flatnet/proxy/n1").value)  # type: ignore[union-attr]
    assert status["revision"] == 4 and status["services"] == 1

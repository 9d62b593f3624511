"""The compiler against the oracle: for every translated upstream case, on
pods spread over three nodes, what each node's compiled allow-lists let
through is what the API says — every pair, ports 80/81 (and one no pod
serves), TCP, UDP and SCTP. And the disjoint form nftables needs covers
exactly the same space."""

from __future__ import annotations

import ipaddress
import random
from dataclasses import replace

import pytest
from policy_cases import CASES, np, render

from flatnet.manifest import docs
from flatnet.model import Namespace, PodRecord
from flatnet.policy.compile import EVERYWHERE, compile_node, disjoint, span
from flatnet.policy.files import split
from flatnet.policy.model import ClusterNetworkPolicy, NetworkPolicy
from flatnet.policy.verdict import Endpoint, decide

NODES = ("n1", "n2", "n3")
PORTS = {f"serve-{p}-{proto.lower()}": [p, proto] for p in (80, 81) for proto in ("TCP", "UDP")}


def model() -> tuple[dict[str, PodRecord], dict[str, dict[str, str]]]:
    pods = {}
    for i, (ns, pod) in enumerate((ns, pod) for ns in "xyz" for pod in "abc"):
        pods[f"{ns}/{pod}"] = PodRecord(
            pod, ns, NODES[i % 3], f"10.244.{i % 3}.{10 + i}",
            labels={"pod": pod}, ports=dict(PORTS),
        )  # fmt: skip
    # x/b serves 81 under another name on another number, as named-port cases need
    pods["x/b"] = replace(pods["x/b"], ports={**PORTS, "serve-81-tcp": [8081, "TCP"]})
    ns_labels = {n: Namespace.of(n, {"ns": n}).labels for n in "xyz"}
    ns_labels["y"]["ns2"] = "updated"
    return pods, ns_labels


def load(text: str) -> list[NetworkPolicy]:
    """The case's NetworkPolicies (see :func:`load_all` for both kinds)."""
    return load_all(text)[0]


def load_all(text: str) -> tuple[list[NetworkPolicy], list[ClusterNetworkPolicy]]:
    _, pols = split(docs(text, "case.yaml"), "case.yaml", None)
    return pols.namespaced, pols.cluster


def kernel_allows(compiled: dict, src: PodRecord, dst: PodRecord, port: int, proto: str) -> bool:
    """What the tables of the two pods' nodes let through (a node only holds its own pods)."""
    eg = compiled[src.node].get(f"{src.namespace}/{src.name}")
    ing = compiled[dst.node].get(f"{dst.namespace}/{dst.name}")
    ok_out = eg is None or eg.egress is None or eg.egress.allows(dst.ip, proto, port)
    ok_in = ing is None or ing.ingress is None or ing.ingress.allows(src.ip, proto, port)
    return ok_out and ok_in


@pytest.mark.parametrize("case", sorted(CASES))
def test_compiled_tables_agree_with_the_api_on_every_pair(case: str) -> None:
    pods, ns_labels = model()
    policies, cnps = load_all(render(CASES[case], {k: p.ip for k, p in pods.items()}))
    compiled = {n: compile_node(policies, pods.values(), ns_labels, n, cnps) for n in NODES}
    wrong = []
    for src in pods.values():
        for dst in pods.values():
            if src is dst:
                continue
            for port in (80, 81, 8081, 9000):
                for proto in ("TCP", "UDP", "SCTP"):
                    want = decide(policies, ns_labels, Endpoint(src.ip, src),
                                  Endpoint(dst.ip, dst), port, proto, cnps).allowed  # fmt: skip
                    got = kernel_allows(compiled, src, dst, port, proto)
                    if got != want:
                        wrong.append(f"{src.namespace}/{src.name}->{dst.namespace}/{dst.name} "
                                     f"{proto}/{port}: want {want}")  # fmt: skip
    assert not wrong, wrong[:5]


def test_only_isolated_pods_of_the_node_are_compiled() -> None:
    pods, ns_labels = model()
    policies = load(CASES["should support a 'default-deny-ingress' policy"])
    got = compile_node(policies, pods.values(), ns_labels, "n1")
    # n1 holds pods 0, 3, 6: x/a, y/a, z/a; only x/a is in x
    assert list(got) == ["x/a"]
    assert got["x/a"].egress is None
    assert got["x/a"].ingress is not None and got["x/a"].ingress.isolating == ("x/deny-ingress",)
    assert got["x/a"].ingress.any == () and got["x/a"].ingress.ports == ()


def test_host_network_pods_are_neither_subjects_nor_peers() -> None:
    pods, ns_labels = model()
    pods["x/a"] = replace(pods["x/a"], mode="host")
    policies = load(CASES["should support a 'default-deny-all' policy"])
    assert "x/a" not in compile_node(policies, pods.values(), ns_labels, "n1")
    allow = load(np("same-ns", "x", "podSelector: {}\ningress:\n- from: [{podSelector: {}}]"))
    got = compile_node(allow, pods.values(), ns_labels, "n2")["x/b"].ingress
    assert got is not None and got.allows(pods["x/c"].ip, "TCP", 80)  # a peer
    a = int(ipaddress.IPv4Address(pods["x/a"].ip))
    assert not any(lo <= a <= hi for lo, hi in got.any)


def test_disjoint_covers_the_same_space_without_overlaps() -> None:
    rnd = random.Random(7)
    cidrs = ("10.0.0.0/8", "10.244.0.0/16", "10.244.1.5/32", "10.244.1.0/24", "192.168.0.0/24")
    nets = [span(n) for n in cidrs]
    for _ in range(200):
        ranges = []
        for _ in range(rnd.randint(1, 6)):
            lo = rnd.choice((0, 53, 79, 80, 81, 443, 1000))
            ranges.append(
                (rnd.choice(nets), rnd.choice(("tcp", "udp")), lo, lo + rnd.choice((0, 1, 5, 100)))
            )
        out = disjoint(ranges)
        for i, (n1, p1, lo1, hi1) in enumerate(out):
            for n2, p2, lo2, hi2 in out[i + 1 :]:
                overlap = n1[0] <= n2[1] and n2[0] <= n1[1]
                assert not (p1 == p2 and overlap and lo1 <= hi2 and lo2 <= hi1)
        for ip in ("10.1.2.3", "10.244.1.5", "10.244.1.9", "10.244.2.1", "192.168.0.9", "8.8.8.8"):
            a = ipaddress.IPv4Address(ip)
            for proto in ("tcp", "udp"):
                for port in (0, 52, 53, 58, 79, 80, 81, 82, 86, 180, 443, 1000, 1100, 9000):
                    want = any(
                        p == proto and lo <= port <= hi and a in n for n, p, lo, hi in ranges
                    )
                    got = any(p == proto and lo <= port <= hi and a in n for n, p, lo, hi in out)
                    assert got == want, (ranges, ip, proto, port)


def test_a_rule_without_peers_is_everywhere_and_excepts_cut_holes() -> None:
    pods, ns_labels = model()
    text = CASES["should enforce except clause while egress access to server in CIDR block"]
    (pol,) = load(render(text, {k: p.ip for k, p in pods.items()}))
    got = compile_node([pol], pods.values(), ns_labels, "n1")["x/a"].egress
    assert got is not None
    assert not got.allows(pods["x/b"].ip, "TCP", 80) and got.allows(pods["x/c"].ip, "TCP", 80)
    assert len(got.any) == 2 and all(hi - lo + 1 < 2**28 for lo, hi in got.any)  # /4 minus a /32
    (everyone,) = load(CASES["should allow egress access on one named port"])
    got = compile_node([everyone], pods.values(), ns_labels, "n1")["x/a"].egress
    assert got is not None and EVERYWHERE not in got.any  # named: only pods that name it
    assert got.allows(pods["y/c"].ip, "TCP", 80) and not got.allows("8.8.8.8", "TCP", 80)

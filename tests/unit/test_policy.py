"""NetworkPolicy v1: manifests checked as the API server checks them, and the
semantics as a pure oracle, on the upstream e2e model (namespaces x, y, z ×
pods a, b, c, serving 80 and 81 on TCP and UDP) — our translation of the
cases of kubernetes test/e2e/network/netpol that the oracle can decide."""

from __future__ import annotations

import pytest

from flatnet.errors import ManifestErrors
from flatnet.manifest import docs
from flatnet.model import Namespace, PodRecord
from flatnet.policy.cluster_manifest import cluster_network_policy
from flatnet.policy.manifest import network_policy
from flatnet.policy.verdict import Endpoint, decide

NAMESPACES = {n: Namespace.of(n, {"ns": n}).labels for n in "xyz"}
PORTS = {f"serve-{p}-{proto.lower()}": [p, proto] for p in (80, 81) for proto in ("TCP", "UDP")}
PODS = {
    f"{ns}/{pod}": PodRecord(
        pod,
        ns,
        "n1",
        f"10.244.{'xyz'.index(ns)}.{'abc'.index(pod) + 2}",
        labels={"pod": pod},
        ports=dict(PORTS),
    )  # fmt: skip
    for ns in "xyz"
    for pod in "abc"
}


def policy(text: str) -> object:
    ((node, data),) = docs(text, "p.yaml")
    return network_policy(data, node, "p.yaml")


def np(spec: str, ns: str = "x", name: str = "p") -> object:
    head = (
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
        f"metadata: {{name: {name}, namespace: {ns}}}\n"
    )
    return policy(head + "spec:\n" + "\n".join("  " + ln for ln in spec.strip().splitlines()))


def truth(
    policies: list[object],
    port: int = 80,
    protocol: str = "TCP",
    cluster: list[object] = (),  # type: ignore[assignment]
) -> dict[str, str]:
    """The upstream reachability table: for each source, a row of . (allowed)
    and X (blocked) over the 9 destinations, loopback cells left out."""
    out = {}
    for s, src in PODS.items():
        row = ""
        for d, dst in PODS.items():
            if s == d:
                row += "-"
                continue
            v = decide(policies, NAMESPACES, Endpoint(src.ip, src), Endpoint(dst.ip, dst), port,
                       protocol, cluster)  # type: ignore[arg-type]  # fmt: skip
            row += "." if v.allowed else "X"
        out[s] = row
    return out


ALL = "-........"  # as a row of x/a: every destination reached


def test_no_policy_everything_reaches_everything() -> None:
    t = truth([])
    assert all(row.replace("-", "") == "........" for row in t.values())


def test_deny_all_ingress_isolates_the_namespace() -> None:
    t = truth([np("podSelector: {}\ningress: []")])  # upstream: "default-deny-ingress"
    assert t == {
        "x/a": "-XX......", "x/b": "X-X......", "x/c": "XX-......",
        "y/a": "XXX-.....", "y/b": "XXX.-....", "y/c": "XXX..-...",
        "z/a": "XXX...-..", "z/b": "XXX....-.", "z/c": "XXX.....-",
    }  # fmt: skip


def test_allow_from_the_same_namespace_only() -> None:
    t = truth([np("podSelector: {}\ningress: [{from: [{podSelector: {}}]}]")])
    assert t["x/a"] == "-........"
    assert t["y/a"][:3] == "XXX" and t["z/c"][:3] == "XXX"


def test_namespace_and_pod_selector_in_one_peer_is_and_in_two_peers_is_or() -> None:
    both = np("""
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - {namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}
""")
    either = np("""
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - namespaceSelector: {matchLabels: {ns: y}}
  - podSelector: {matchLabels: {pod: b}}
""")
    into_xa = {s: t[0] for s, t in truth([both]).items()}
    assert [s for s, v in into_xa.items() if v == "."] == ["y/b"]
    into_xa = {s: t[0] for s, t in truth([either]).items()}
    assert sorted(s for s, v in into_xa.items() if v == ".") == ["x/b", "y/a", "y/b", "y/c"]


def test_match_expressions() -> None:
    p = np("""
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [y]}]}
    podSelector: {matchExpressions: [{key: pod, operator: Exists}]}
""")
    into_xa = {s: t[0] for s, t in truth([p]).items()}
    assert sorted(s for s, v in into_xa.items() if v == ".") == ["x/b", "x/c", "z/a", "z/b", "z/c"]
    gone = np("""
podSelector: {matchExpressions: [{key: pod, operator: DoesNotExist}]}
ingress: []
""")
    assert truth([gone]) == truth([])  # it selects no pod: nobody is isolated


def test_egress_ip_block_with_an_except_of_one_pod() -> None:
    p = np("""
podSelector: {matchLabels: {pod: a}}
policyTypes: [Egress]
egress: [{to: [{ipBlock: {cidr: 10.244.0.0/16, except: [10.244.1.3/32]}}]}]
""")
    t = truth([p])
    assert t["x/a"] == "-...X...."  # y/b is the except; the rest of the /16 allowed
    assert t["x/b"] == ".-......."  # x/b is not selected


def test_named_ports_are_resolved_on_each_destination_pod() -> None:
    p = np("""
podSelector: {}
ingress: [{ports: [{port: web}]}]
""")
    pods = dict(PODS)
    PODS["x/a"] = PodRecord("a", "x", "n1", "10.244.0.2", labels={"pod": "a"},
                            ports={"web": [80, "TCP"]})  # fmt: skip
    PODS["x/b"] = PodRecord("b", "x", "n1", "10.244.0.3", labels={"pod": "b"},
                            ports={"web": [81, "TCP"]})  # fmt: skip
    try:
        on80, on81 = truth([p], 80), truth([p], 81)
        assert on80["y/a"][:3] == ".XX" and on81["y/a"][:3] == "X.X"  # one rule, two numbers
    finally:
        PODS.clear()
        PODS.update(pods)


def test_port_ranges_and_protocols() -> None:
    p = np("""
podSelector: {}
ingress: [{ports: [{port: 80, endPort: 81}, {protocol: UDP}]}]
""")
    assert truth([p], 81, "TCP")["y/a"][:3] == "..."
    assert truth([p], 82, "TCP")["y/a"][:3] == "XXX"
    assert truth([p], 5353, "UDP")["y/a"][:3] == "..."  # protocol only: any port of it
    assert truth([p], 81, "SCTP")["y/a"][:3] == "XXX"


def test_policy_types_default_and_empty_versus_missing() -> None:
    # egress rules only, no policyTypes: Ingress AND Egress, and ingress is empty: all in denied
    p = np("podSelector: {matchLabels: {pod: a}}\negress: [{}]")
    assert p.policy_types == ("Ingress", "Egress")  # type: ignore[attr-defined]
    t = truth([p])
    assert t["x/a"] == ALL and t["x/b"][0] == "X"
    # one empty rule allows everything; an empty list allows nothing
    assert truth([np("podSelector: {}\ningress: [{}]")]) == truth([])
    assert truth([np("podSelector: {}\npolicyTypes: [Egress]")])["x/a"] == "-XXXXXXXX"


def test_the_union_of_policies_and_what_decides() -> None:
    deny = np("podSelector: {}\ningress: []", name="deny")
    from_y = np("podSelector: {}\ningress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]",
                name="from-y")  # fmt: skip
    src, dst = PODS["y/b"], PODS["x/a"]
    v = decide([deny, from_y], NAMESPACES, Endpoint(src.ip, src), Endpoint(dst.ip, dst), 80)  # type: ignore[list-item]
    assert v.allowed and v.ingress.isolating == ("x/deny", "x/from-y")
    assert v.ingress.allowed_by == ("x/from-y ingress[0]",) and v.egress.isolating == ()
    src = PODS["z/b"]
    v = decide([deny, from_y], NAMESPACES, Endpoint(src.ip, src), Endpoint(dst.ip, dst), 80)  # type: ignore[list-item]
    assert not v.allowed and v.ingress.allowed_by == ()


def test_host_network_pods_and_outside_addresses_are_not_subject() -> None:
    deny = np("podSelector: {}\npolicyTypes: [Ingress, Egress]")
    host = PodRecord("h", "x", "n1", "192.168.50.11", mode="host", labels={"pod": "a"})
    dst = PODS["x/b"]
    # a host-network pod is not isolated itself, and is not matched as a pod peer
    v = decide([deny], NAMESPACES, Endpoint(dst.ip, dst), Endpoint(host.ip, host), 80)  # type: ignore[list-item]
    assert v.ingress.isolating == () and not v.egress.allowed
    outside = decide([deny], NAMESPACES, Endpoint("192.168.50.254"), Endpoint(dst.ip, dst), 80)  # type: ignore[list-item]
    assert not outside.allowed and outside.egress.isolating == ()


BAD = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector:
    matchExpressions:
    - {key: pod, operator: Exists}
  ingress:
  - from: [{ipBlock: {cidr: 10.244.0.0/16, except: [10.244.1.0/24]}}]
    ports: [{port: 80}]
"""


@pytest.mark.parametrize(
    ("old", "new", "line", "words"),
    [
        ("cidr: 10.244.0.0/16", "cidr: 10.244.0.0/33", 9, "'10.244.0.0/33' is not an IPv4 CIDR"),
        ("[10.244.1.0/24]", "[10.245.0.0/24]", 9, "except[0]: 10.245.0.0/24 is not inside cidr"),
        ("{port: 80}", "{port: web, endPort: 90}", 10, "endPort: needs a numeric port"),
        ("{port: 80}", "{port: 80, endPort: 70}", 10, "endPort: 70 must be within 80..65535"),
        ("{port: 80}", "{protocol: ICMP}", 10, "spec.ingress[0].ports[0].protocol: Input"),
        ("operator: Exists}", "operator: Has}", 7, "Input should be 'In', 'NotIn', 'Exists'"),
        ("Exists}", "Exists, values: [a]}", 7, "values: must be empty for operator Exists"),
        ("{ipBlock:", "{podSelector: {}, ipBlock:", 9, "ipBlock: cannot be combined"),
        ("  podSelector:", "  podSelecter:", 5, "spec.podSelecter: unknown field (did you mean"),
    ],
)
def test_bad_manifests_name_file_line_and_field(old: str, new: str, line: int, words: str) -> None:
    assert policy(BAD) is not None  # the base is good
    with pytest.raises(ManifestErrors) as e:
        policy(BAD.replace(old, new, 1))
    assert f"p.yaml:{line}: " in str(e.value) and words in str(e.value), str(e.value)


# -- ClusterNetworkPolicy: the tiers' order, hand-checked ------------------------
def cnp(spec: str, name: str = "c") -> object:
    head = "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\n"
    body = "\n".join("  " + ln for ln in spec.strip().splitlines())
    ((node, data),) = docs(f"{head}metadata: {{name: {name}}}\nspec:\n{body}\n", "c.yaml")
    return cluster_network_policy(data, node, "c.yaml")


X, Y, Z = ("{matchLabels: {kubernetes.io/metadata.name: NS}}".replace("NS", n) for n in "xyz")


def test_an_admin_deny_beats_a_networkpolicy_allow() -> None:
    allow = np("podSelector: {}\ningress:\n- {}")
    deny = cnp(f"tier: Admin\npriority: 1\nsubject: {{namespaces: {X}}}\n"
               f"ingress: [{{action: Deny, from: [{{namespaces: {Y}}}]}}]")  # fmt: skip
    t = truth([allow], cluster=[deny])
    assert (t["y/a"], t["z/a"], t["x/b"]) == ("XXX-.....", "......-..", ".-.......")
    v = decide([allow], NAMESPACES, Endpoint(PODS["y/a"].ip, PODS["y/a"]),
               Endpoint(PODS["x/a"].ip, PODS["x/a"]), 80, "TCP", [deny])  # type: ignore[list-item]  # fmt: skip
    assert v.ingress.decided_by == "admin" and v.ingress.admin == ("Deny", "cnp/c ingress[0]")


def test_an_admin_accept_beats_a_networkpolicy_deny_on_its_port_only() -> None:
    deny_all = np("podSelector: {}\npolicyTypes: [Ingress, Egress]")
    accept = cnp(f"tier: Admin\npriority: 1\nsubject: {{namespaces: {X}}}\n"
                 f"ingress: [{{action: Accept, from: [{{namespaces: {Y}}}],"
                 " match: [{tcp: [{port: {number: 80}}]}]}]")  # fmt: skip
    t80, t81 = truth([deny_all], 80, cluster=[accept]), truth([deny_all], 81, cluster=[accept])
    assert (t80["y/a"], t80["z/a"], t80["x/a"]) == ("...-.....", "XXX...-..", "-XXXXXXXX")
    assert t81["y/a"] == "XXX-....."


def test_pass_defers_to_the_networkpolicies_and_skips_later_admin_rules() -> None:
    only_z = np(
        "podSelector: {matchLabels: {pod: a}}\n"
        f"ingress: [{{from: [{{namespaceSelector: {Z}}}]}}]"
    )
    admin = cnp(f"tier: Admin\npriority: 5\nsubject: {{namespaces: {X}}}\ningress:\n"
                f"- {{action: Pass, from: [{{namespaces: {Y}}}]}}\n"
                "- {action: Deny, from: [{namespaces: {}}]}")  # fmt: skip
    t = truth([only_z], cluster=[admin])
    # y: passed to x/a's NetworkPolicy (only z: denied), to x/b, x/c (none: allowed);
    # z and x: denied by the second rule, though x/a's policy would let z in
    assert (t["y/a"], t["z/a"], t["x/a"]) == ("X..-.....", "XXX...-..", "-XX......")


def test_the_lower_priority_number_goes_first() -> None:
    sub = "subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {pod: a}}}}"
    accept = cnp(f"tier: Admin\npriority: 5\n{sub}\n"
                 f"ingress: [{{action: Accept, from: [{{namespaces: {Y}}}]}}]",
                 "accept")  # fmt: skip
    deny = cnp(f"tier: Admin\npriority: 6\n{sub}\n"
               "ingress: [{action: Deny, from: [{namespaces: {}}]}]", "deny")  # fmt: skip
    t = truth([], cluster=[deny, accept])
    assert (t["x/b"], t["y/b"]) == ("X-.X..X..", "....-....")
    swapped = cnp(f"tier: Admin\npriority: 4\n{sub}\n"
                  "ingress: [{action: Deny, from: [{namespaces: {}}]}]", "deny")  # fmt: skip
    assert truth([], cluster=[swapped, accept])["y/b"] == "X..X-.X.."


def test_the_baseline_tier_decides_only_where_nothing_else_did() -> None:
    a_from_y = np(
        "podSelector: {matchLabels: {pod: a}}\n"
        f"ingress: [{{from: [{{namespaceSelector: {Y}}}]}}]"
    )
    baseline = cnp(f"tier: Baseline\npriority: 1\nsubject: {{namespaces: {X}}}\n"
                   "ingress: [{action: Deny, from: [{namespaces: {}}]}]")  # fmt: skip
    t = truth([a_from_y], cluster=[baseline])
    assert (t["y/a"], t["z/a"], t["x/a"], t["x/b"]) == (
        ".XX-.....",
        "XXX...-..",
        "-XX......",
        "X-X......",
    )


CNP = """\
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: c}
spec:
  tier: Admin
  priority: 10
  subject:
    namespaces: {}
  ingress:
  - {action: Deny, from: [{namespaces: {}}], match: [{tcp: [{port: {number: 80}}]}]}
  egress:
  - action: Accept
    to: [{networks: [10.0.0.0/8]}]
"""


@pytest.mark.parametrize(
    ("old", "new", "line", "words"),
    [
        ("tier: Admin", "tier: Cluster", 5, "spec.tier: Input should be 'Admin' or 'Baseline'"),
        (
            "priority: 10",
            "priority: 1001",
            6,
            "spec.priority: Input should be less than or equal to 1000",
        ),
        (
            "    namespaces: {}",
            "    namespaces: {}\n    pods: {namespaceSelector: {}, podSelector: {}}",
            8,
            "subject needs exactly one of namespaces, pods (has 2)",
        ),
        (
            "[{namespaces: {}}], match",
            "[{}], match",
            10,
            "a peer needs exactly one of namespaces, pods",
        ),
        (
            "[{namespaces: {}}], match",
            "[{nodes: {}}], match",
            10,
            "nodes: is not supported by flatnet",
        ),
        (
            "[{namespaces: {}}], match",
            "[{networks: [10.0.0.0/8]}], match",
            10,
            "networks: only egress rules have networks peers",
        ),
        ("{number: 80}", "{portRange: {start: 90, end: 80}}", 10, "end: 80 is below start 90"),
        ("[10.0.0.0/8]", "[10.0.0/33]", 13, "networks[0]: '10.0.0/33' is not an IPv4 CIDR"),
        (
            "action: Accept",
            "action: Allow",
            12,
            "action: Input should be 'Accept', 'Deny' or 'Pass'",
        ),
        (
            "to: [{networks: [10.0.0.0/8]}]",
            "to: [{networks: [10.0.0.0/8]}]\n    match: [{namedPort: http}]",
            12,
            "a namedPort cannot go with networks peers",
        ),
        (
            "metadata: {name: c}",
            "metadata: {name: c, namespace: x}",
            3,
            "namespace: a ClusterNetworkPolicy is cluster-wide",
        ),
    ],
)
def test_bad_cluster_policies_name_file_line_and_field(
    old: str, new: str, line: int, words: str
) -> None:
    ((node, data),) = docs(CNP, "c.yaml")
    assert cluster_network_policy(data, node, "c.yaml") is not None  # the base is good
    ((node, data),) = docs(CNP.replace(old, new, 1), "c.yaml")
    with pytest.raises(ManifestErrors) as e:
        cluster_network_policy(data, node, "c.yaml")
    assert f"c.yaml:{line}: " in str(e.value) and words in str(e.value), str(e.value)

# ruff: noqa: E501  (the upstream tests' names, verbatim)
"""Our translation of the upstream NetworkPolicy e2e cases
(kubernetes test/e2e/network/netpol/network_policy.go) on the x/y/z model:
each case is the policies' YAML as a user writes it, under the upstream
test's name. What each case must allow is not written here: the oracle
(:func:`flatnet.policy.verdict.decide`, itself checked against hand-written
truth tables in tests/unit/test_policy.py) says, and the compiler (unit) and
the kernel (lab) must agree with it cell by cell."""

from __future__ import annotations

HEAD = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"


def np(name: str, ns: str, spec: str) -> str:
    body = "\n".join("  " + ln for ln in spec.strip().splitlines())
    return f"{HEAD}metadata: {{name: {name}, namespace: {ns}}}\nspec:\n{body}\n"


def docs(*parts: str) -> str:
    return "---\n".join(parts)


CASES: dict[str, str] = {
    "should support a 'default-deny-ingress' policy": np(
        "deny-ingress", "x", "podSelector: {}\ningress: []"
    ),
    "should support a 'default-deny-all' policy": np(
        "deny-all", "x", "podSelector: {}\npolicyTypes: [Ingress, Egress]"
    ),
    "should enforce policy to allow traffic from pods within server namespace based on PodSelector": np(
        "x-a-allows-x-b",
        "x",
        "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - podSelector: {matchLabels: {pod: b}}",
    ),
    "should enforce policy to allow ingress traffic for a target": docs(
        np("deny-all", "x", "podSelector: {}\ningress: []"),
        np(
            "allow-all-to-a",
            "x",
            "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - {podSelector: {}, namespaceSelector: {}}",
        ),
    ),
    "should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector": np(
        "allow-client-a-via-ns-selector",
        "x",
        "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n"
        "  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}",
    ),
    "should enforce policy based on PodSelector with MatchExpressions": np(
        "x-a-allows-x-b",
        "x",
        "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - podSelector:\n"
        "      matchExpressions: [{key: pod, operator: In, values: [b]}]",
    ),
    "should enforce policy based on NamespaceSelector with MatchExpressions using default ns label": np(
        "allow-client-a-via-ns-selector-for-immutable-ns-label",
        "x",
        "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - namespaceSelector:\n"
        "      matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [y]}]",
    ),
    "should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed": docs(
        np(
            "deny-client-a-via-except-cidr-egress-rule",
            "x",
            "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]\negress:\n- to:\n"
            "  - ipBlock: {cidr: '{y/b}/24', except: ['{y/b}/32']}",
        ),
        np(
            "allow-client-a-via-cidr-egress-rule",
            "x",
            "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]\negress:\n- to:\n"
            "  - ipBlock: {cidr: '{y/b}/32'}",
        ),
    ),
    "should enforce policy based on NamespaceSelector with MatchExpressions": np(
        "allow-ns-y-match-selector",
        "x",
        "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - namespaceSelector:\n"
        "      matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [y]}]",
    ),
    "should enforce policy based on PodSelector or NamespaceSelector": np(
        "allow-ns-y-match-selector",
        "x",
        "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - namespaceSelector:\n"
        "      matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]\n"
        "  - podSelector: {matchLabels: {pod: b}}",
    ),
    "should enforce policy based on PodSelector and NamespaceSelector": np(
        "allow-ns-y-podselector-and-nsselector",
        "x",
        "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - namespaceSelector:\n"
        "      matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]\n"
        "    podSelector: {matchLabels: {pod: b}}",
    ),
    "should enforce policy based on Multiple PodSelectors and NamespaceSelectors": np(
        "allow-ns-y-z-pod-b-c",
        "x",
        "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - namespaceSelector:\n"
        "      matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]\n"
        "    podSelector:\n      matchExpressions: [{key: pod, operator: In, values: [b, c]}]",
    ),
    "should enforce policy based on any PodSelectors": np(
        "allow-pod-b-c",
        "x",
        "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n"
        "  - podSelector: {matchLabels: {pod: b}}\n  - podSelector: {matchLabels: {pod: c}}",
    ),
    "should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector": np(
        "allow-ns-y-pod-a-via-namespace-pod-selector",
        "x",
        "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n"
        "  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}\n"
        "    podSelector: {matchLabels: {pod: a}}",
    ),
    "should enforce policy based on Ports": np(
        "allow-ingress-on-port-81-ns-x",
        "x",
        "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n"
        "  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}\n"
        "  ports: [{port: 81, protocol: TCP}]",
    ),
    "should enforce multiple, stacked policies with overlapping podSelectors": docs(
        np(
            "allow-client-a-via-ns-selector-80",
            "x",
            "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n"
            "  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}\n"
            "  ports: [{port: 80, protocol: TCP}]",
        ),
        np(
            "allow-client-a-via-ns-selector-81",
            "x",
            "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n"
            "  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}\n"
            "  ports: [{port: 81, protocol: TCP}]",
        ),
    ),
    "should support allow-all policy": np("allow-all", "x", "podSelector: {}\ningress:\n- {}"),
    "should allow ingress access on one named port": np(
        "allow-all",
        "x",
        "podSelector: {}\ningress:\n- ports: [{port: serve-81-tcp}]",
    ),
    "should allow ingress access from namespace on one named port": np(
        "allow-client-a-via-ns-selector-80",
        "x",
        "podSelector: {}\ningress:\n- from:\n"
        "  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}\n"
        "  ports: [{port: serve-80-tcp}]",
    ),
    "should allow egress access on one named port": np(
        "allow-egress",
        "x",
        "podSelector: {}\negress:\n- ports: [{port: serve-80-tcp}]",
    ),
    "should enforce updated policy": np(  # the second half: the policy as updated
        "allow-client-a-via-ns-selector",
        "x",
        "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n"
        "  - podSelector: {}\n    namespaceSelector: {}\n  ports: [{port: serve-81-tcp}]",
    ),
    "should allow ingress access from updated namespace": np(
        "allow-client-a-via-ns-selector",
        "x",
        "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n"
        "  - namespaceSelector: {matchLabels: {ns2: updated}}",
    ),
    "should allow ingress access from updated pod": np(
        "allow-client-a-via-pod-selector",
        "x",
        "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n"
        "  - podSelector: {matchLabels: {pod: b, pod2: updated}}\n"
        "    namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}",
    ),
    "should deny ingress from pods on other namespaces": np(
        "deny-empty-policy",
        "x",
        "podSelector: {}\ningress:\n- from:\n  - podSelector: {}",
    ),
    "should deny ingress access to updated pod": np(
        "deny-ingress-via-label-selector",
        "x",
        "podSelector: {matchLabels: {target: isolated}}\npolicyTypes: [Ingress]",
    ),
    "should deny egress from pods based on PodSelector": np(
        "deny-egress-pod-a", "x", "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]"
    ),
    "should deny egress from all pods in a namespace": np(
        "deny-egress-ns-x", "x", "podSelector: {}\npolicyTypes: [Egress]"
    ),
    "should work with Ingress, Egress specified together": np(
        "allow-client-a-via-pod-selector",
        "x",
        "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Ingress, Egress]\n"
        "ingress:\n- from:\n  - podSelector: {matchLabels: {pod: b}}\n"
        "egress:\n- ports: [{port: 80, protocol: TCP}, {port: 80, protocol: UDP}]\n"
        "  to:\n  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}",
    ),
    "should support denying of egress traffic on the client side (even if the server explicitly allows this traffic)": docs(
        np(
            "allow-to-ns-y-z-pod-a",
            "x",
            "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]\negress:\n- to:\n"
            "  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}\n"
            "    podSelector: {matchLabels: {pod: a}}",
        ),
        np(
            "allow-from-xa-on-ya-match-selector",
            "y",
            "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n"
            "  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}\n"
            "    podSelector: {matchLabels: {pod: a}}",
        ),
        np(
            "allow-from-xa-on-yb-match-selector",
            "y",
            "podSelector: {matchLabels: {pod: b}}\ningress:\n- from:\n"
            "  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}\n"
            "    podSelector: {matchLabels: {pod: a}}",
        ),
    ),
    "should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector and NamespaceSelector": np(
        "allow-to-ns-y-pod-a",
        "x",
        "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]\negress:\n- to:\n"
        "  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}\n"
        "    podSelector: {matchLabels: {pod: a}}",
    ),
    "should enforce ingress policy allowing any port traffic to a server on a specific protocol": np(
        "allow-ingress-by-proto",
        "x",
        "podSelector: {matchLabels: {pod: a}}\ningress:\n- ports: [{protocol: TCP}]",
    ),
    "should enforce multiple ingress policies with ingress allow-all policy taking precedence": docs(
        np(
            "allow-ingress-port-80",
            "x",
            "podSelector: {matchLabels: {pod: a}}\ningress:\n- ports: [{port: 80}]",
        ),
        np("allow-all-ingress", "x", "podSelector: {matchLabels: {pod: a}}\ningress:\n- {}"),
    ),
    "should enforce multiple egress policies with egress allow-all policy taking precedence": docs(
        np(
            "allow-egress-port-80",
            "x",
            "podSelector: {matchLabels: {pod: a}}\negress:\n- ports: [{port: 80}]",
        ),
        np("allow-all-egress", "x", "podSelector: {matchLabels: {pod: a}}\negress:\n- {}"),
    ),
    "should stop enforcing policies after they are deleted": np(  # before the delete
        "deny-all", "x", "podSelector: {}\npolicyTypes: [Ingress, Egress]"
    ),
    "should allow egress access to server in CIDR block": np(  # the /32 of y/b: see IP_CASES
        "allow-client-a-via-cidr-egress-rule",
        "x",
        "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]\negress:\n- to:\n"
        "  - ipBlock: {cidr: '{y/b}/32'}",
    ),
    "should enforce except clause while egress access to server in CIDR block": np(
        "deny-client-a-via-except-cidr-egress-rule",
        "x",
        "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]\negress:\n- to:\n"
        "  - ipBlock: {cidr: '{x/b}/4', except: ['{x/b}/32']}",
    ),
    "should enforce policies to check ingress and egress policies can be controlled independently based on PodSelector": docs(
        np(
            "allow-egress-to-b",
            "x",
            "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]\negress:\n- to:\n"
            "  - podSelector: {matchLabels: {pod: b}}",
        ),
        np(
            "deny-ingress-to-b", "x", "podSelector: {matchLabels: {pod: b}}\npolicyTypes: [Ingress]"
        ),
    ),
    "should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin doesn't support SCTP": np(
        "allow-only-sctp-ingress-on-port-80",
        "x",
        "podSelector: {matchLabels: {pod: a}}\ningress:\n- ports: [{port: 80, protocol: SCTP}]",
    ),
    "should properly isolate pods that are selected by a policy allowing SCTP, even if the plugin doesn't support SCTP": np(
        "allow-only-sctp-ingress-on-port-80",
        "x",
        "podSelector: {matchLabels: {pod: a}}\ningress:\n- ports: [{port: 80, protocol: SCTP}]",
    ),
    "should not allow access by TCP when a policy specifies only UDP": np(
        "allow-only-udp-ingress-on-port-81",
        "x",
        "podSelector: {matchLabels: {pod: a}}\ningress:\n- ports: [{port: 81, protocol: UDP}]",
    ),
    "should enforce policy to allow traffic based on NamespaceSelector with MatchLabels using default ns label": np(
        "allow-client-a-via-ns-selector-for-immutable-ns-label",
        "x",
        "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n"
        "  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}",
    ),
    "should enforce policy to allow ingress traffic from pods in all namespaces": np(
        "allow-from-another-ns",
        "x",
        "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - namespaceSelector: {}",
    ),
    "should support egress port ranges (endPort)": np(
        "allow-egress-80-81",
        "x",
        "podSelector: {}\npolicyTypes: [Egress]\negress:\n- ports: [{port: 80, endPort: 81, protocol: TCP}]",
    ),
}


def render(text: str, ips: dict[str, str]) -> str:
    """A case's YAML with ``{ns/pod}`` replaced by that pod's IP (the CIDR cases)."""
    for ref, ip in ips.items():
        text = text.replace("{" + ref + "}", ip)
    return text


def cnp(name: str, spec: str) -> str:
    body = "\n".join("  " + ln for ln in spec.strip().splitlines())
    return (
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\n"
        f"metadata: {{name: {name}}}\nspec:\n{body}\n"
    )


NS = "{matchLabels: {kubernetes.io/metadata.name: NAME}}"

# ClusterNetworkPolicy (network-policy-api v1alpha2): the tiers' order, by our
# own cases (the upstream conformance suite is Go against a live cluster).
CASES.update(
    {
        "cnp: an Admin Deny beats a NetworkPolicy allow": docs(
            np("allow-all", "x", "podSelector: {}\ningress:\n- {}"),
            cnp(
                "deny-y-to-x",
                f"tier: Admin\npriority: 10\nsubject:\n  namespaces: {NS.replace('NAME', 'x')}\n"
                f"ingress:\n- action: Deny\n  from:\n  - namespaces: {NS.replace('NAME', 'y')}",
            ),
        ),
        "cnp: an Admin Accept beats a NetworkPolicy deny": docs(
            np("deny-all", "x", "podSelector: {}\npolicyTypes: [Ingress, Egress]"),
            cnp(
                "accept-y-to-x-80",
                f"tier: Admin\npriority: 10\nsubject:\n  namespaces: {NS.replace('NAME', 'x')}\n"
                f"ingress:\n- action: Accept\n  from:\n  - namespaces: {NS.replace('NAME', 'y')}\n"
                "  match:\n  - tcp: [{port: {number: 80}}]",
            ),
        ),
        "cnp: Pass defers to the NetworkPolicies, later Admin rules do not apply": docs(
            np(
                "only-from-z",
                "x",
                "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n"
                f"  - namespaceSelector: {NS.replace('NAME', 'z')}",
            ),
            cnp(
                "pass-y",
                f"tier: Admin\npriority: 5\nsubject:\n  namespaces: {NS.replace('NAME', 'x')}\n"
                f"ingress:\n- action: Pass\n  from:\n  - namespaces: {NS.replace('NAME', 'y')}\n"
                "- action: Deny\n  from:\n  - namespaces: {}",
            ),
        ),
        "cnp: the lower priority number goes first": docs(
            cnp(
                "accept-y",
                f"tier: Admin\npriority: 5\nsubject:\n  pods:\n    namespaceSelector: {{}}\n"
                "    podSelector: {matchLabels: {pod: a}}\n"
                f"ingress:\n- action: Accept\n  from:\n  - namespaces: {NS.replace('NAME', 'y')}",
            ),
            cnp(
                "deny-all-to-a",
                "tier: Admin\npriority: 6\nsubject:\n  pods:\n    namespaceSelector: {}\n"
                "    podSelector: {matchLabels: {pod: a}}\n"
                "ingress:\n- action: Deny\n  from:\n  - namespaces: {}",
            ),
        ),
        "cnp: the Baseline tier decides only where no NetworkPolicy does": docs(
            np(
                "a-from-y",
                "x",
                "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n"
                f"  - namespaceSelector: {NS.replace('NAME', 'y')}",
            ),
            cnp(
                "baseline-deny-x",
                f"tier: Baseline\npriority: 10\nsubject:\n  namespaces: {NS.replace('NAME', 'x')}\n"
                "ingress:\n- action: Deny\n  from:\n  - namespaces: {}",
            ),
        ),
        "cnp: Baseline Accept before Baseline Deny, egress by networks and ports": docs(
            cnp(
                "z-egress",
                "tier: Baseline\npriority: 1\nsubject:\n  namespaces: "
                f"{NS.replace('NAME', 'z')}\negress:\n"
                "- name: dns-and-81\n  action: Accept\n  to:\n  - networks: [10.244.0.0/16]\n"
                "  match:\n  - udp: [{port: {portRange: {start: 81, end: 81}}}]\n"
                "- action: Deny\n  to:\n  - networks: [0.0.0.0/0]",
            ),
        ),
        "cnp: a named port, on each destination pod": docs(
            cnp(
                "deny-81-tcp-to-x",
                f"tier: Admin\npriority: 1\nsubject:\n  namespaces: {NS.replace('NAME', 'x')}\n"
                "ingress:\n- action: Deny\n  from:\n  - namespaces: {}\n  match:\n  - namedPort: serve-81-tcp",
            ),
        ),
    }
)

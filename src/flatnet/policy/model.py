"""NetworkPolicy as plain frozen data, with the selector semantics of the API.

Empty and missing differ, as in the API: ``Rule.peers`` / ``Rule.ports``
empty means "all"; ``NetworkPolicy.ingress`` / ``egress`` empty with the
direction in ``policy_types`` means "isolated, nothing allowed".
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "ClusterNetworkPolicy",
    "ClusterPeer",
    "ClusterRule",
    "IPBlock",
    "LabelSelector",
    "NetworkPolicy",
    "Peer",
    "PolicyPort",
    "Requirement",
    "Rule",
]


@dataclass(frozen=True)
class Requirement:
    """One ``matchExpressions`` entry: key, operator (In, NotIn, Exists,
    DoesNotExist) and values."""

    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        has = self.key in labels
        if self.operator == "In":
            return has and labels[self.key] in self.values
        if self.operator == "NotIn":
            return not has or labels[self.key] not in self.values
        if self.operator == "Exists":
            return has
        return not has  # DoesNotExist


@dataclass(frozen=True)
class LabelSelector:
    """``matchLabels`` AND every ``matchExpressions`` entry; empty selects all."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            r.matches(labels) for r in self.match_expressions
        )

    @property
    def everything(self) -> bool:
        return not self.match_labels and not self.match_expressions


@dataclass(frozen=True)
class IPBlock:
    cidr: str
    except_: tuple[str, ...] = ()

    def contains(self, ip: str) -> bool:
        a = ipaddress.ip_address(ip)
        if a not in ipaddress.ip_network(self.cidr, strict=False):
            return False
        return not any(a in ipaddress.ip_network(x, strict=False) for x in self.except_)


@dataclass(frozen=True)
class Peer:
    """One ``from``/``to`` entry: an ``ipBlock``, or pod and/or namespace
    selectors (both given: AND). ``pod_selector`` alone means the policy's own
    namespace; ``namespace_selector`` alone, every pod of those namespaces."""

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None


@dataclass(frozen=True)
class PolicyPort:
    """``protocol`` (TCP, UDP, SCTP), ``port`` (a number, a container port's
    name, or None: every port), ``end_port`` (a range from a numeric port)."""

    protocol: str = "TCP"
    port: int | str | None = None
    end_port: int | None = None


@dataclass(frozen=True)
class Rule:
    """One ``ingress``/``egress`` entry: ``peers`` (from/to) AND ``ports``;
    an empty tuple matches everything."""

    peers: tuple[Peer, ...] = ()
    ports: tuple[PolicyPort, ...] = ()


@dataclass(frozen=True)
class NetworkPolicy:
    name: str
    namespace: str
    pod_selector: LabelSelector = field(default_factory=LabelSelector)
    policy_types: tuple[str, ...] = ("Ingress",)  # already defaulted as the API does
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> NetworkPolicy:
        d = json.loads(text)
        return cls(
            d["name"],
            d["namespace"],
            _selector(d["pod_selector"]),
            tuple(d["policy_types"]),
            tuple(_rule(r) for r in d["ingress"]),
            tuple(_rule(r) for r in d["egress"]),
        )


def _selector(d: dict[str, Any]) -> LabelSelector:
    return LabelSelector(
        tuple((k, v) for k, v in d["match_labels"]),
        tuple(
            Requirement(r["key"], r["operator"], tuple(r["values"])) for r in d["match_expressions"]
        ),
    )


def _rule(d: dict[str, Any]) -> Rule:
    peers = tuple(
        Peer(
            _selector(p["pod_selector"]) if p["pod_selector"] is not None else None,
            _selector(p["namespace_selector"]) if p["namespace_selector"] is not None else None,
            IPBlock(p["ip_block"]["cidr"], tuple(p["ip_block"]["except_"]))
            if p["ip_block"] is not None
            else None,
        )
        for p in d["peers"]
    )
    ports = tuple(PolicyPort(p["protocol"], p["port"], p["end_port"]) for p in d["ports"])
    return Rule(peers, ports)


# -- ClusterNetworkPolicy (policy.networking.k8s.io/v1alpha2) -----------------


@dataclass(frozen=True)
class ClusterPeer:
    """One ``from``/``to`` entry of a ClusterNetworkPolicy rule: exactly one of
    ``namespaces`` (every pod of them), ``pods`` (namespace selector AND pod
    selector) or ``networks`` (CIDRs; egress only)."""

    namespaces: LabelSelector | None = None
    pods: tuple[LabelSelector, LabelSelector] | None = None  # (namespaces, pods)
    networks: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClusterRule:
    """One rule: ``action`` (Accept, Deny, Pass) for traffic from/to any of
    ``peers`` that also matches one of ``ports`` (none: all traffic). A port's
    protocol "" with a name: a container port of that name, any protocol."""

    action: str
    peers: tuple[ClusterPeer, ...]
    ports: tuple[PolicyPort, ...] = ()
    name: str = ""


@dataclass(frozen=True)
class ClusterNetworkPolicy:
    """``tier`` Admin (before NetworkPolicy) or Baseline (after it);
    ``priority`` 0-1000, lower first; ``subject`` the pods it applies to
    (namespace selector, and pod selector or None for every pod of them)."""

    name: str
    tier: str
    priority: int
    subject: tuple[LabelSelector, LabelSelector | None]
    ingress: tuple[ClusterRule, ...] = ()
    egress: tuple[ClusterRule, ...] = ()

    @property
    def ref(self) -> str:
        return f"cnp/{self.name}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> ClusterNetworkPolicy:
        d = json.loads(text)
        ns_sel, pod_sel = d["subject"]
        return cls(
            d["name"],
            d["tier"],
            d["priority"],
            (_selector(ns_sel), _selector(pod_sel) if pod_sel is not None else None),
            tuple(_cluster_rule(r) for r in d["ingress"]),
            tuple(_cluster_rule(r) for r in d["egress"]),
        )


def _cluster_rule(d: dict[str, Any]) -> ClusterRule:
    peers = tuple(
        ClusterPeer(
            _selector(p["namespaces"]) if p["namespaces"] is not None else None,
            (_selector(p["pods"][0]), _selector(p["pods"][1])) if p["pods"] is not None else None,
            tuple(p["networks"]),
        )
        for p in d["peers"]
    )
    ports = tuple(PolicyPort(p["protocol"], p["port"], p["end_port"]) for p in d["ports"])
    return ClusterRule(d["action"], peers, ports, d["name"])

"""NetworkPolicy as plain frozen data, with the selector semantics of the API.

Empty and missing differ, as in the API: ``Rule.peers`` / ``Rule.ports``
empty means "all"; ``NetworkPolicy.ingress`` / ``egress`` empty with the
direction in ``policy_types`` means "isolated, nothing allowed".
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

__all__ = ["IPBlock", "LabelSelector", "NetworkPolicy", "Peer", "PolicyPort", "Requirement", "Rule"]


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
        if a not in ipaddress.ip_network(self.cidr):
            return False
        return not any(a in ipaddress.ip_network(x) for x in self.except_)


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

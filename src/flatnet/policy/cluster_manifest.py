"""``policy.networking.k8s.io/v1alpha2`` ClusterNetworkPolicy manifests, checked
as the upstream CRD checks them (kubernetes-sigs/network-policy-api), every
mistake as ``FILE:LINE: field: problem``: a tier other than Admin or
Baseline, a priority outside 0..1000, a subject or peer that is not exactly one
of its kinds, more than 25 rules or peers, a CIDR that is not one, a port range
backwards, a named port beside ``networks`` peers.

What flatnet leaves out, refused by name rather than ignored: ``nodes`` and
``domainNames`` peers (experimental in the API) and ``icmp`` matches."""

from __future__ import annotations

import ipaddress
from typing import Any, ClassVar, Literal

import yaml
from pydantic import ConfigDict, Field, StrictInt, StrictStr, model_validator

from flatnet.manifest import Known, Meta, check
from flatnet.policy.manifest import Selector, selector
from flatnet.policy.model import (
    ClusterNetworkPolicy,
    ClusterPeer,
    ClusterRule,
    LabelSelector,
    PolicyPort,
)

__all__ = ["cluster_network_policy"]

UNSUPPORTED = "is not supported by flatnet (experimental in the API)"


def _one(model: Known, fields: tuple[str, ...], what: str) -> None:
    given = [f for f in fields if getattr(model, f) is not None]
    if len(given) != 1:
        raise ValueError(f"{what} needs exactly one of {', '.join(fields)} (has {len(given)})")


class _NamespacedPod(Known):
    namespaceSelector: Selector  # noqa: N815
    podSelector: Selector  # noqa: N815


class _Subject(Known):
    namespaces: Selector | None = None
    pods: _NamespacedPod | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> _Subject:
        _one(self, ("namespaces", "pods"), "subject")
        return self


class _Peer(Known):
    namespaces: Selector | None = None
    pods: _NamespacedPod | None = None
    networks: list[StrictStr] | None = Field(default=None, min_length=1, max_length=25)
    nodes: Any = None
    domainNames: Any = None  # noqa: N815
    _kinds: ClassVar[tuple[str, ...]] = ("namespaces", "pods", "networks")

    @model_validator(mode="after")
    def _exactly_one(self) -> _Peer:
        for f in ("nodes", "domainNames"):
            if getattr(self, f) is not None:
                raise ValueError(f"{f}: {UNSUPPORTED}")
        if self.networks is not None and "networks" not in self._kinds:
            raise ValueError("networks: only egress rules have networks peers")
        _one(self, self._kinds, "a peer")
        for i, n in enumerate(self.networks or ()):
            try:
                ipaddress.IPv4Network(n, strict=False)
            except ValueError:
                raise ValueError(f"networks[{i}]: '{n}' is not an IPv4 CIDR") from None
        return self


class _IngressPeer(_Peer):
    _kinds: ClassVar[tuple[str, ...]] = ("namespaces", "pods")


class _Range(Known):
    start: StrictInt = Field(ge=1, le=65535)
    end: StrictInt = Field(ge=1, le=65535)

    @model_validator(mode="after")
    def _ordered(self) -> _Range:
        if self.end < self.start:
            raise ValueError(f"end: {self.end} is below start {self.start}")
        return self


class _Port(Known):
    number: StrictInt | None = Field(default=None, ge=1, le=65535)
    portRange: _Range | None = None  # noqa: N815

    @model_validator(mode="after")
    def _exactly_one(self) -> _Port:
        _one(self, ("number", "portRange"), "port")
        return self


class _ProtocolMatch(Known):
    port: _Port | None = None  # missing: every port of the protocol


class _Match(Known):
    tcp: list[_ProtocolMatch] | None = None
    udp: list[_ProtocolMatch] | None = None
    namedPort: StrictStr | None = None  # noqa: N815
    icmp: Any = None

    @model_validator(mode="after")
    def _exactly_one(self) -> _Match:
        if self.icmp is not None:
            raise ValueError(f"icmp: {UNSUPPORTED}")
        _one(self, ("tcp", "udp", "namedPort"), "a match")
        return self


class _Rule(Known):
    name: StrictStr = Field(default="", max_length=100)
    action: Literal["Accept", "Deny", "Pass"]
    match: list[_Match] = Field(default=[], max_length=25)


class _IngressRule(_Rule):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: list[_IngressPeer] = Field(alias="from", min_length=1, max_length=25)


class _EgressRule(_Rule):
    to: list[_Peer] = Field(min_length=1, max_length=25)

    @model_validator(mode="after")
    def _named_ports_need_pods(self) -> _EgressRule:
        if any(p.networks for p in self.to) and any(m.namedPort for m in self.match):
            raise ValueError("match: a namedPort cannot go with networks peers (no named ports)")
        return self


class _Spec(Known):
    tier: Literal["Admin", "Baseline"]
    priority: StrictInt = Field(ge=0, le=1000)
    subject: _Subject
    ingress: list[_IngressRule] = Field(default=[], max_length=25)
    egress: list[_EgressRule] = Field(default=[], max_length=25)


class _ClusterMeta(Meta):
    @model_validator(mode="before")
    @classmethod
    def _no_namespace(cls, data: Any) -> Any:
        if isinstance(data, dict) and "namespace" in data:
            raise ValueError("namespace: a ClusterNetworkPolicy is cluster-wide, it has none")
        return data


class _ClusterNetworkPolicy(Known):
    apiVersion: Literal["policy.networking.k8s.io/v1alpha2"]  # noqa: N815
    kind: Literal["ClusterNetworkPolicy"]
    metadata: _ClusterMeta
    spec: _Spec
    _ignored: ClassVar[tuple[str, ...]] = ("status",)


def _sel(s: Selector) -> LabelSelector:
    out = selector(s)
    assert out is not None
    return out


def _peer(p: _Peer) -> ClusterPeer:
    if p.namespaces is not None:
        return ClusterPeer(namespaces=_sel(p.namespaces))
    if p.pods is not None:
        return ClusterPeer(pods=(_sel(p.pods.namespaceSelector), _sel(p.pods.podSelector)))
    return ClusterPeer(networks=tuple(p.networks or ()))


def _ports(match: list[_Match]) -> tuple[PolicyPort, ...]:
    out = []
    for m in match:
        if m.namedPort is not None:
            out.append(PolicyPort("", m.namedPort))
            continue
        proto, entries = ("TCP", m.tcp) if m.tcp is not None else ("UDP", m.udp or [])
        for e in entries:
            if e.port is None:
                out.append(PolicyPort(proto))
            elif e.port.number is not None:
                out.append(PolicyPort(proto, e.port.number))
            else:
                r = e.port.portRange
                assert r is not None
                out.append(PolicyPort(proto, r.start, r.end))
    return tuple(out)


def cluster_network_policy(data: Any, node: yaml.Node, path: str) -> ClusterNetworkPolicy:
    m: _ClusterNetworkPolicy = check(_ClusterNetworkPolicy, data, node, path)
    s = m.spec
    subject: tuple[LabelSelector, LabelSelector | None]
    if s.subject.namespaces is not None:
        subject = (_sel(s.subject.namespaces), None)
    else:
        assert s.subject.pods is not None
        subject = (_sel(s.subject.pods.namespaceSelector), _sel(s.subject.pods.podSelector))
    return ClusterNetworkPolicy(
        m.metadata.name,
        s.tier,
        s.priority,
        subject,
        tuple(
            ClusterRule(r.action, tuple(_peer(p) for p in r.from_), _ports(r.match), r.name)
            for r in s.ingress
        ),
        tuple(
            ClusterRule(r.action, tuple(_peer(p) for p in r.to), _ports(r.match), r.name)
            for r in s.egress
        ),
    )

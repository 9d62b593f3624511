"""``networking.k8s.io/v1`` NetworkPolicy manifests as users write them, checked
as the API server checks them, every mistake as ``FILE:LINE: field: problem``:
a CIDR that is not one, an ``except`` outside its ``cidr``, ``endPort``
without a numeric ``port`` or below it, a protocol other than TCP, UDP or
SCTP, a selector operator that does not exist (or values where it takes
none), an ``ipBlock`` given with selectors. ``policyTypes`` is defaulted as
the API does: Ingress, plus Egress when there are egress rules."""

from __future__ import annotations

import ipaddress
from typing import Any, ClassVar, Literal

import yaml
from pydantic import ConfigDict, Field, StrictInt, StrictStr, field_validator, model_validator

from flatnet.manifest import Known, Meta, check, port_or_name
from flatnet.policy.model import (
    IPBlock,
    LabelSelector,
    NetworkPolicy,
    Peer,
    PolicyPort,
    Requirement,
    Rule,
)

__all__ = ["Selector", "network_policy", "selector"]


class _Requirement(Known):
    key: StrictStr
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[StrictStr] = []

    @model_validator(mode="after")
    def _values(self) -> _Requirement:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"values: required for operator {self.operator}")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"values: must be empty for operator {self.operator}")
        return self


class Selector(Known):
    matchLabels: dict[StrictStr, StrictStr] = {}  # noqa: N815
    matchExpressions: list[_Requirement] = []  # noqa: N815


def _net(v: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(v, strict=False)
    except ValueError:
        raise ValueError(f"'{v}' is not an IPv4 CIDR") from None


class _IPBlock(Known):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    cidr: StrictStr
    except_: list[StrictStr] = Field(default=[], alias="except")

    @model_validator(mode="after")
    def _inside(self) -> _IPBlock:
        outer = _net(self.cidr)
        for i, x in enumerate(self.except_):
            inner = _net(x)
            if not inner.subnet_of(outer):
                raise ValueError(f"except[{i}]: {x} is not inside cidr {self.cidr}")
        return self


class _Peer(Known):
    podSelector: Selector | None = None  # noqa: N815
    namespaceSelector: Selector | None = None  # noqa: N815
    ipBlock: _IPBlock | None = None  # noqa: N815

    @model_validator(mode="after")
    def _one_kind(self) -> _Peer:
        selectors = self.podSelector is not None or self.namespaceSelector is not None
        if self.ipBlock is not None and selectors:
            raise ValueError("ipBlock: cannot be combined with podSelector or namespaceSelector")
        if self.ipBlock is None and not selectors:
            raise ValueError("a peer needs podSelector, namespaceSelector or ipBlock")
        return self


class _Port(Known):
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    port: StrictInt | StrictStr | None = None
    endPort: StrictInt | None = None  # noqa: N815

    _port = field_validator("port")(lambda v: port_or_name(v))

    @model_validator(mode="after")
    def _range(self) -> _Port:
        if self.endPort is None:
            return self
        if not isinstance(self.port, int):
            raise ValueError("endPort: needs a numeric port")
        if not self.port <= self.endPort <= 65535:
            raise ValueError(f"endPort: {self.endPort} must be within {self.port}..65535")
        return self


class _Ingress(Known):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: list[_Peer] = Field(default=[], alias="from")
    ports: list[_Port] = []


class _Egress(Known):
    to: list[_Peer] = []
    ports: list[_Port] = []


class _Spec(Known):
    podSelector: Selector  # noqa: N815
    policyTypes: list[Literal["Ingress", "Egress"]] | None = None  # noqa: N815
    ingress: list[_Ingress] | None = None
    egress: list[_Egress] | None = None


class _NetworkPolicy(Known):
    apiVersion: Literal["networking.k8s.io/v1"]  # noqa: N815
    kind: Literal["NetworkPolicy"]
    metadata: Meta
    spec: _Spec
    _ignored: ClassVar[tuple[str, ...]] = ("status",)


def selector(s: Selector | None) -> LabelSelector | None:
    if s is None:
        return None
    return LabelSelector(
        tuple(sorted(s.matchLabels.items())),
        tuple(Requirement(r.key, r.operator, tuple(r.values)) for r in s.matchExpressions),
    )


def _peers(peers: list[_Peer]) -> tuple[Peer, ...]:
    return tuple(
        Peer(
            selector(p.podSelector),
            selector(p.namespaceSelector),
            IPBlock(p.ipBlock.cidr, tuple(p.ipBlock.except_)) if p.ipBlock else None,
        )
        for p in peers
    )


def _ports(ports: list[_Port]) -> tuple[PolicyPort, ...]:
    return tuple(PolicyPort(p.protocol, p.port, p.endPort) for p in ports)


def network_policy(data: Any, node: yaml.Node, path: str) -> NetworkPolicy:
    """A NetworkPolicy document as flatnet keeps it (``policyTypes`` defaulted)."""
    m: _NetworkPolicy = check(_NetworkPolicy, data, node, path)
    s = m.spec
    types: list[str] = list(s.policyTypes or [])
    if not types:  # missing or empty: defaulted, as the API server does
        types = ["Ingress", "Egress"] if s.egress else ["Ingress"]
    pods = selector(s.podSelector)
    assert pods is not None
    return NetworkPolicy(
        m.metadata.name,
        m.metadata.namespace,
        pods,
        tuple(dict.fromkeys(types)),
        tuple(Rule(_peers(r.from_), _ports(r.ports)) for r in s.ingress or ()),
        tuple(Rule(_peers(r.to), _ports(r.ports)) for r in s.egress or ()),
    )

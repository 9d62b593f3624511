"""A lab file, read into plain frozen data (the description; building it is lab.py).

A lab file is a ``kind: Lab`` document followed by ordinary Kubernetes ``Pod``
``Namespace``, ``Pod`` and ``Service`` manifests. Every mistake is reported as
``FILE:LINE: what is wrong``, all of them at once.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from flatnet import manifest
from flatnet.errors import ConfigError, LabFileError
from flatnet.ingress.model import Ingress, IngressClass
from flatnet.lb import pools as lb_pools
from flatnet.manifest import Pod
from flatnet.model import AddressPool, Namespace, NetworkConfig, Service
from flatnet.namespaces import SYSTEM
from flatnet.policy.files import AnyPolicy, split

__all__ = ["LabTopo", "load", "parse"]

_LABEL = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class _Network(_Strict):
    podCIDR: str = "10.244.0.0/16"  # noqa: N815
    nodeSubnetLength: int = 24  # noqa: N815
    serviceCIDR: str = "10.96.0.0/12"  # noqa: N815
    backend: str = "vxlan"
    backendOptions: dict[str, Any] = {}  # noqa: N815
    mtu: int = 1500
    leaseTTL: float = Field(default=86400.0, gt=2)  # noqa: N815
    fastPath: bool = True  # noqa: N815


class _Netem(_Strict):
    """Impairments on every node's underlay link (egress): each hop pays them once.
    Rate is a tbf qdisc, loss an nftables rule, delay/jitter a delay line on a
    netfilter queue (:mod:`flatnet.lab.delay`; this kernel has no netem)."""

    delay: str = Field(default="", pattern=r"^$|^\d+(\.\d+)?(us|ms|s)$")
    jitter: str = Field(default="", pattern=r"^$|^\d+(\.\d+)?(us|ms|s)$")
    loss: str = Field(default="", pattern=r"^$|^\d+(\.\d+)?%$")
    rate: str = Field(default="", pattern=r"^$|^\d+(\.\d+)?(bit|kbit|mbit|gbit)$")

    def args(self) -> tuple[tuple[str, str], ...]:
        return tuple((k, v) for k, v in self.model_dump().items() if v)


class _Lab(_Strict):
    kind: Literal["Lab"]
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,11}$")
    network: _Network = _Network()
    datastore: Literal["sqlite", "etcd"] = "sqlite"
    underlay: Literal["l2", "routed"] = "l2"
    underlayCIDR: str = "192.168.50.0/24"  # noqa: N815
    netem: _Netem = _Netem()
    agentResync: float = Field(default=10.0, gt=0)  # noqa: N815
    nodes: list[str] = Field(min_length=1, max_length=60)
    external: bool = False
    dns: bool = True
    routerAS: int = Field(default=64500, ge=1, le=4294967295)  # noqa: N815

    @field_validator("nodes")
    @classmethod
    def _nodes(cls, v: list[str]) -> list[str]:
        for i, n in enumerate(v):
            if not re.match(_LABEL, n) or len(n) > 20:
                raise ValueError(f"node name '{n}' (item {i}) is not a DNS label of ≤20 chars")
        if len(set(v)) != len(v):
            raise ValueError("node names must be unique")
        return v


@dataclass(frozen=True)
class LabTopo:
    """The lab as data. Underlay ``l2``: every node on one switch in
    ``underlay_cidr``. ``routed``: the first half of the nodes (rounded up) on
    segment A = ``underlay_cidr``, the rest on segment B = the next block of the
    same size, joined by a router namespace holding ``.1`` on both."""

    name: str
    network: NetworkConfig
    datastore: str
    underlay: str
    underlay_cidr: str
    nodes: tuple[str, ...]
    external: bool
    pods: tuple[Pod, ...] = field(default=())
    path: str = ""
    netem: tuple[tuple[str, str], ...] = ()  # (delay|jitter|loss|rate, value)
    agent_resync: float = 10.0
    services: tuple[Service, ...] = ()
    dns: bool = True
    namespaces: tuple[Namespace, ...] = ()
    policies: tuple[AnyPolicy, ...] = ()
    router_as: int = 64500
    pools: tuple[AddressPool, ...] = ()
    ingresses: tuple[Ingress, ...] = ()
    ingress_classes: tuple[IngressClass, ...] = ()

    def segments(self) -> list[str]:
        a = ipaddress.IPv4Network(self.underlay_cidr)
        if self.underlay != "routed":
            return [str(a)]
        b = ipaddress.IPv4Network(f"{a.broadcast_address + 1}/{a.prefixlen}")
        return [str(a), str(b)]

    def segment_of(self, node: str) -> int:
        if self.underlay != "routed":
            return 0
        return 0 if self.nodes.index(node) < (len(self.nodes) + 1) // 2 else 1

    def node_ip(self, node: str) -> str:
        seg = self.segment_of(node)
        net = ipaddress.IPv4Network(self.segments()[seg])
        first = [n for n in self.nodes if self.segment_of(n) == seg]
        return str(net.network_address + 11 + first.index(node))

    def router_ip(self, seg: int) -> str:
        return str(ipaddress.IPv4Network(self.segments()[seg]).network_address + 1)

    @property
    def external_ip(self) -> str:
        return str(ipaddress.IPv4Network(self.underlay_cidr).broadcast_address - 1)

    @property
    def store_ip(self) -> str:
        return str(ipaddress.IPv4Network(self.underlay_cidr).network_address + 2)


def _underlay_problem(lab: _Lab, net: NetworkConfig) -> str:
    """What is wrong with the underlay's addresses ("" when nothing): its
    segments may not overlap the pod or service ranges (a pod CIDR inside the
    underlay cuts nodes off each other), and must hold every node's address
    (``.11`` on) below the external host's (the last but one)."""
    first = ipaddress.IPv4Network(lab.underlayCIDR, strict=False)
    segs = [first]
    if lab.underlay == "routed":
        segs.append(ipaddress.IPv4Network(f"{first.broadcast_address + 1}/{first.prefixlen}"))
    for seg in segs:
        for what, cidr in (("podCIDR", net.pod_cidr), ("serviceCIDR", net.service_cidr)):
            if seg.overlaps(ipaddress.IPv4Network(cidr)):
                return (
                    f"underlayCIDR: segment {seg} overlaps network.{what} {cidr}: nodes and "
                    f"{'pods' if what == 'podCIDR' else 'services'} would share addresses"
                )
    per_segment = -(-len(lab.nodes) // len(segs))
    if 11 + per_segment > seg.num_addresses - 2:
        return (
            f"underlayCIDR: /{seg.prefixlen} segments hold {max(0, seg.num_addresses - 13)} "
            f"node(s) each (from .11), the lab puts {per_segment} on one"
        )
    return ""


def parse(text: str, path: str = "<lab>") -> LabTopo:
    docs = manifest.docs(text, path)
    if not docs or not isinstance(docs[0][1], dict) or docs[0][1].get("kind") != "Lab":
        raise LabFileError(path, 1, "the first document must be 'kind: Lab'")
    lab = manifest.check(_Lab, docs[0][1], docs[0][0], path)
    try:
        net = NetworkConfig(
            pod_cidr=lab.network.podCIDR,
            node_subnet_length=lab.network.nodeSubnetLength,
            service_cidr=lab.network.serviceCIDR,
            backend=lab.network.backend,
            mtu=lab.network.mtu,
            lease_ttl=lab.network.leaseTTL,
            backend_options=dict(lab.network.backendOptions),
            fast_path=lab.network.fastPath,
        )
        ipaddress.IPv4Network(lab.underlayCIDR)
    except (ConfigError, ValueError) as e:
        raise LabFileError(path, manifest.line_of(docs[0][0], ("network",)), str(e)) from None
    problem = _underlay_problem(lab, net)
    if problem:
        where = ("underlayCIDR",) if "underlayCIDR" in docs[0][1] else ("network",)
        raise LabFileError(path, manifest.line_of(docs[0][0], where), problem)
    m, policies = split(docs[1:], path, lab.nodes)
    pods, services = m.pods, m.services
    m.require_namespaces(set(SYSTEM), path)
    policies.require_namespaces({*SYSTEM, *(n.name for n in m.namespaces)}, path)
    _check_pods(pods, path, [d for d in docs[1:] if d[1].get("kind") == "Pod"])
    for i, pool in enumerate(m.pools):  # against the cluster's ranges and the pools before it
        try:
            lb_pools.check(net, [pool], m.pools[:i])
        except ConfigError as e:
            raise LabFileError(path, m.line("IPAddressPool", "", pool.name), str(e)) from None
    topo = LabTopo(
        lab.name,
        net,
        lab.datastore,
        lab.underlay,
        lab.underlayCIDR,
        tuple(lab.nodes),
        lab.external,
        tuple(pods),
        path,
        lab.netem.args(),
        lab.agentResync,
        tuple(services),
        lab.dns,
        tuple(m.namespaces),
        tuple(p for _, p in policies),
        lab.routerAS,
        tuple(m.pools),
        tuple(m.ingresses),
        tuple(m.ingress_classes),
    )
    if net.backend == "bgp" and lab.underlay == "routed":
        members = [[n for n in topo.nodes if topo.segment_of(n) == seg] for seg in (0, 1)]
        routers = [topo.router_ip(seg) for seg in (0, 1)]
        opts = router_peering(net.backend_options, members, routers, topo.router_as)
        topo = replace(topo, network=replace(net, backend_options=opts))
    return topo


def router_peering(
    options: dict[str, Any], members: list[list[str]], routers: list[str], router_as: int
) -> dict[str, Any]:
    """bgp on a routed underlay (``members[i]``: the nodes of segment i, whose
    router is ``routers[i]``): every node peers with its segment's router
    (unless the options name their own ``peers``), and segment B gets an AS
    of its own (unless they set ``nodeASNumbers`` or ``crossSubnet``): the
    router passes each segment's blocks to the other — Calico's AS-per-rack
    model."""
    opts = dict(options)
    if "peers" not in opts:
        opts["peers"] = [
            {"name": "router", "address": routers[seg], "asNumber": router_as, "nodes": nodes}
            for seg, nodes in enumerate(members)
            if nodes
        ]
    if "nodeASNumbers" not in opts and not opts.get("crossSubnet"):
        base = int(opts.get("asNumber", 64512))
        opts["nodeASNumbers"] = {n: base + 1 for n in members[1]}
    return opts


def _check_pods(pods: list[Pod], path: str, docs: list[tuple[yaml.Node, Any]]) -> None:
    by_name = {(p.namespace, p.name): p for p in pods}
    for i, p in enumerate(pods):
        line = docs[i][0].start_mark.line + 1
        other = by_name.get((p.namespace, p.shares_with or ""))
        if p.shares_with is not None:
            if other is None or other.shares_with is not None or other.mode == "none":
                raise LabFileError(
                    path,
                    line,
                    f"pod '{p.name}': network mode "
                    f"'{p.mode}' needs an earlier-listed pod with its own "
                    "network (bridge or host)",
                )
            if pods.index(other) > i or other.node != p.node:
                raise LabFileError(
                    path,
                    line,
                    f"pod '{p.name}': '{other.name}' must be "
                    f"listed before it and run on the same node",
                )


def load(path: str | Path) -> LabTopo:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise LabFileError(str(path), None, f"cannot read lab file: {e.strerror}") from e
    return parse(text, str(path))

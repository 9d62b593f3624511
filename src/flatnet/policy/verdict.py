"""The NetworkPolicy v1 semantics as a pure oracle: may this connection be
opened, and which policies and rules say so.

A connection from ``src`` to ``dst`` on (port, protocol) is judged twice, as
the API defines it: egress on the source pod, ingress on the destination pod.
Each side is open unless some policy of the pod's own namespace selects the
pod with that direction in its ``policyTypes``; then the connection must match
a rule of one of those policies (the union): every rule is its peers (any one
of them; none listed: anyone) AND its ports (any one; none listed: every
port). A peer's pod selector applies in the policy's own namespace unless a
namespace selector is given with it (then both must hold); an ``ipBlock``
judges the other side's IP. A named port is looked up on the destination pod,
so one rule can mean different numbers on different pods. Pods on the host's
network and addresses that are not pods are never isolated. What the oracle
does not decide: replies (allowed connections' replies always pass) and
traffic from a pod's own node (always allowed) — the data plane's rules.

ClusterNetworkPolicies (policy.networking.k8s.io/v1alpha2) wrap that in
tiers, per direction: the first matching rule of the Admin tier (policies by
priority, rules in order) decides if it Accepts or Denies; Pass, or no match,
goes on to the NetworkPolicies, which decide for a pod they select; for any
other pod the Baseline tier's first matching rule decides the same way; and
where nothing decided, the connection is allowed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from flatnet.model import PodRecord
from flatnet.policy.model import (
    ClusterNetworkPolicy,
    ClusterPeer,
    LabelSelector,
    NetworkPolicy,
    Peer,
    PolicyPort,
    Rule,
)

__all__ = ["Decision", "Endpoint", "Side", "decide", "ordered", "selects"]


@dataclass(frozen=True)
class Endpoint:
    """One end of a connection: an IP, and the pod that holds it (None: a
    node or an address outside the cluster)."""

    ip: str
    pod: PodRecord | None = None


@dataclass(frozen=True)
class Side:
    """One direction's verdict, tier by tier: ``admin`` the first Admin-tier
    ClusterNetworkPolicy rule that matches (action, ``cnp/name ingress[0]``),
    ``isolating`` the NetworkPolicies that select the pod for it (none: not
    isolated), ``allowed_by`` their rules that let it through (``ns/name
    ingress[0]``), ``baseline`` the first matching Baseline-tier rule."""

    isolating: tuple[str, ...] = ()
    allowed_by: tuple[str, ...] = ()
    admin: tuple[str, str] | None = None
    baseline: tuple[str, str] | None = None

    @property
    def decided_by(self) -> str:
        """The tier that decides: admin, networkpolicy, baseline or default."""
        if self.admin is not None and self.admin[0] != "Pass":
            return "admin"
        if self.isolating:
            return "networkpolicy"
        if self.baseline is not None and self.baseline[0] != "Pass":
            return "baseline"
        return "default"

    @property
    def allowed(self) -> bool:
        tier = self.decided_by
        if tier == "admin":
            return self.admin is not None and self.admin[0] == "Accept"
        if tier == "networkpolicy":
            return bool(self.allowed_by)
        if tier == "baseline":
            return self.baseline is not None and self.baseline[0] == "Accept"
        return True


@dataclass(frozen=True)
class Decision:
    egress: Side  # of the source pod
    ingress: Side  # of the destination pod

    @property
    def allowed(self) -> bool:
        return self.egress.allowed and self.ingress.allowed


def _subject(ep: Endpoint) -> PodRecord | None:
    """The pod policy applies to, if any (host-network pods are not subject)."""
    return ep.pod if ep.pod is not None and ep.pod.mode != "host" else None


def _peer_matches(
    peer: Peer, policy_ns: str, other: Endpoint, ns_labels: Mapping[str, dict[str, str]]
) -> bool:
    if peer.ip_block is not None:
        return peer.ip_block.contains(other.ip)
    pod = _subject(other)
    if pod is None:
        return False
    if peer.namespace_selector is None:
        ns_ok = pod.namespace == policy_ns
    else:
        ns_ok = peer.namespace_selector.matches(ns_labels.get(pod.namespace, {}))
    return ns_ok and (peer.pod_selector is None or peer.pod_selector.matches(pod.labels))


def _port_matches(p: PolicyPort, port: int, protocol: str, dst: PodRecord | None) -> bool:
    if p.protocol and p.protocol != protocol:  # "" (a ClusterNetworkPolicy's named port): any
        return False
    if p.port is None:
        return True
    if isinstance(p.port, str):  # a container port's name, on the destination pod
        named = dst.ports.get(p.port) if dst is not None else None
        return named is not None and int(named[0]) == port and named[1] == protocol
    if p.end_port is not None:
        return p.port <= port <= p.end_port
    return p.port == port


def _rule_matches(
    rule: Rule,
    policy_ns: str,
    other: Endpoint,
    port: int,
    protocol: str,
    dst: PodRecord | None,
    ns_labels: Mapping[str, dict[str, str]],
) -> bool:
    peers_ok = not rule.peers or any(
        _peer_matches(p, policy_ns, other, ns_labels) for p in rule.peers
    )
    ports_ok = not rule.ports or any(_port_matches(p, port, protocol, dst) for p in rule.ports)
    return peers_ok and ports_ok


def selects(
    cnp: ClusterNetworkPolicy, pod: PodRecord, ns_labels: Mapping[str, dict[str, str]]
) -> bool:
    """Is ``pod`` (not on the host's network) a subject of ``cnp``?"""
    ns_sel, pod_sel = cnp.subject
    return ns_sel.matches(ns_labels.get(pod.namespace, {})) and (
        pod_sel is None or pod_sel.matches(pod.labels)
    )


def _cluster_peer_matches(
    peer: ClusterPeer, other: Endpoint, ns_labels: Mapping[str, dict[str, str]]
) -> bool:
    if peer.networks:
        a = ipaddress.IPv4Address(other.ip)
        return any(a in ipaddress.IPv4Network(n, strict=False) for n in peer.networks)
    pod = _subject(other)
    if pod is None:
        return False
    sel: tuple[LabelSelector, LabelSelector | None] = (
        (peer.namespaces, None) if peer.namespaces is not None else peer.pods  # type: ignore[assignment]
    )
    return sel[0].matches(ns_labels.get(pod.namespace, {})) and (
        sel[1] is None or sel[1].matches(pod.labels)
    )


def ordered(cluster: Iterable[ClusterNetworkPolicy], tier: str) -> list[ClusterNetworkPolicy]:
    """A tier's policies in evaluation order: lower priority first, then by
    name (the API leaves ties to the implementation; flatnet's is stable)."""
    return sorted((c for c in cluster if c.tier == tier), key=lambda c: (c.priority, c.name))


def _tier(
    tier: str,
    direction: str,
    pod: PodRecord,
    other: Endpoint,
    port: int,
    protocol: str,
    dst: PodRecord | None,
    cluster: Iterable[ClusterNetworkPolicy],
    ns_labels: Mapping[str, dict[str, str]],
) -> tuple[str, str] | None:
    for cnp in ordered(cluster, tier):
        if not selects(cnp, pod, ns_labels):
            continue
        rules = cnp.ingress if direction == "Ingress" else cnp.egress
        for i, r in enumerate(rules):
            if any(_cluster_peer_matches(p, other, ns_labels) for p in r.peers) and (
                not r.ports or any(_port_matches(pp, port, protocol, dst) for pp in r.ports)
            ):
                label = f" ({r.name})" if r.name else ""
                return r.action, f"{cnp.ref} {direction.lower()}[{i}]{label}"
    return None


def _side(
    direction: str,
    pod: PodRecord | None,
    other: Endpoint,
    port: int,
    protocol: str,
    dst: PodRecord | None,
    policies: Iterable[NetworkPolicy],
    ns_labels: Mapping[str, dict[str, str]],
    cluster: Iterable[ClusterNetworkPolicy] = (),
) -> Side:
    if pod is None:
        return Side()
    cluster = list(cluster)
    tiers = {
        t: _tier(t, direction, pod, other, port, protocol, dst, cluster, ns_labels)
        for t in ("Admin", "Baseline")
    }
    isolating = [
        p
        for p in policies
        if p.namespace == pod.namespace
        and direction in p.policy_types
        and p.pod_selector.matches(pod.labels)
    ]
    allowed_by = [
        f"{p.ref} {direction.lower()}[{i}]"
        for p in isolating
        for i, rule in enumerate(p.ingress if direction == "Ingress" else p.egress)
        if _rule_matches(rule, p.namespace, other, port, protocol, dst, ns_labels)
    ]
    return Side(
        tuple(p.ref for p in isolating), tuple(allowed_by), tiers["Admin"], tiers["Baseline"]
    )


def decide(
    policies: Iterable[NetworkPolicy],
    ns_labels: Mapping[str, dict[str, str]],
    src: Endpoint,
    dst: Endpoint,
    port: int,
    protocol: str = "TCP",
    cluster: Iterable[ClusterNetworkPolicy] = (),
) -> Decision:
    """May ``src`` open a connection to ``dst`` on ``port``/``protocol``?
    ``ns_labels``: each namespace's labels (with ``kubernetes.io/metadata.name``);
    ``cluster``: the ClusterNetworkPolicies (Admin tier before, Baseline
    tier after the NetworkPolicies)."""
    pols, cnps = list(policies), list(cluster)
    to = _subject(dst)
    egress = _side("Egress", _subject(src), dst, port, protocol, to, pols, ns_labels, cnps)
    ingress = _side("Ingress", to, src, port, protocol, to, pols, ns_labels, cnps)
    return Decision(egress, ingress)

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
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from flatnet.model import PodRecord
from flatnet.policy.model import NetworkPolicy, Peer, PolicyPort, Rule

__all__ = ["Decision", "Endpoint", "Side", "decide"]


@dataclass(frozen=True)
class Endpoint:
    """One end of a connection: an IP, and the pod that holds it (None: a
    node or an address outside the cluster)."""

    ip: str
    pod: PodRecord | None = None


@dataclass(frozen=True)
class Side:
    """One direction's verdict: ``isolating`` the policies that select the pod
    for it (none: not isolated), ``allowed_by`` the rules that let it through
    (``ns/name ingress[0]``)."""

    isolating: tuple[str, ...] = ()
    allowed_by: tuple[str, ...] = ()

    @property
    def allowed(self) -> bool:
        return not self.isolating or bool(self.allowed_by)


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
    if p.protocol != protocol:
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


def _side(
    direction: str,
    pod: PodRecord | None,
    other: Endpoint,
    port: int,
    protocol: str,
    dst: PodRecord | None,
    policies: Iterable[NetworkPolicy],
    ns_labels: Mapping[str, dict[str, str]],
) -> Side:
    if pod is None:
        return Side()
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
    return Side(tuple(p.ref for p in isolating), tuple(allowed_by))


def decide(
    policies: Iterable[NetworkPolicy],
    ns_labels: Mapping[str, dict[str, str]],
    src: Endpoint,
    dst: Endpoint,
    port: int,
    protocol: str = "TCP",
) -> Decision:
    """May ``src`` open a connection to ``dst`` on ``port``/``protocol``?
    ``ns_labels``: each namespace's labels (with ``kubernetes.io/metadata.name``)."""
    pols = list(policies)
    to = _subject(dst)
    egress = _side("Egress", _subject(src), dst, port, protocol, to, pols, ns_labels)
    ingress = _side("Ingress", to, src, port, protocol, to, pols, ns_labels)
    return Decision(egress, ingress)

"""How it works — NetworkPolicy compiled for one node (pure: data in, data out).

The kernel needs, for each pod on this node that some policy isolates, and
for each direction it is isolated in, the other side it may talk to as two
lists the table looks up in one step each:

- ``any``: networks allowed on every protocol and port (rules without ``ports``);
- ``ports``: (network, protocol, first port, last port) tuples (rules with ``ports``).

They hold the union of every rule of every policy that selects the pod for
that direction. A peer's pod and namespace selectors become the addresses of
the pods they select now; an ``ipBlock`` its CIDR minus its ``except``
blocks; a rule without ``from``/``to``, everything. A named port is resolved on the
destination pod: for ingress, the pod itself; for egress, each pod the rule's
peers hold that names that port — so one rule can mean different numbers on
different pods, and never matches an address that is not a pod's.

Addresses are integer spans (first, last), written to nftables as ranges:
merging thousands of pod IPs that way costs milliseconds, where CIDR
arithmetic (``ipaddress.collapse_addresses``) cost seconds. The tuples are
made disjoint (nftables refuses overlapping elements in a concatenated
interval set): the port axis is cut at every range's ends, each piece gets the
merged union of its spans, and neighbouring pieces with the same spans merge
again — which also keeps the lists short.

ClusterNetworkPolicies add ordered rules around that union, per direction:
the Admin tier's rules that apply to the pod (policies by priority, rules in
order), each with its action and the traffic it matches in the same two
forms; then the NetworkPolicy union; then the Baseline tier's rules (only for
a pod no NetworkPolicy isolates: otherwise they can never decide).

Pods the same policies select (the replicas of a deployment) get the same
lists, computed once per compile. A pod that no policy applies to in a
direction has None there: no map entry, nothing on its packets' path. Pods
on the host's network are never subjects; pods sharing another pod's network
(``container:``) are judged as that pod.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import cast

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
from flatnet.policy.verdict import ordered, selects

__all__ = [
    "EVERYWHERE",
    "Allow",
    "PodPolicy",
    "TierRule",
    "compile_node",
    "disjoint",
    "merge",
    "span",
]

Net = tuple[int, int]  # addresses first..last, as integers (a CIDR or any range)
PortRange = tuple[Net, str, int, int]  # addresses, protocol ("tcp"), first, last port
Group = tuple[tuple[Net, ...], str, int, int]  # many addresses on one port range
EVERYWHERE: Net = (0, 2**32 - 1)


def span(cidr: str) -> Net:
    """A CIDR (host bits allowed, as the API allows them) or one address."""
    n = ipaddress.IPv4Network(cidr, strict=False)
    return int(n.network_address), int(n.broadcast_address)


def merge(nets: Iterable[Net]) -> tuple[Net, ...]:
    """The same addresses as few, sorted, disjoint spans (neighbours joined)."""
    out: list[Net] = []
    for lo, hi in sorted(nets):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return tuple(out)


def _ip(ip: str) -> int:
    return int.from_bytes(socket.inet_aton(ip), "big")


def _in(
    ip: str, proto: str, port: int, any_: tuple[Net, ...], ports: tuple[PortRange, ...]
) -> bool:
    a = _ip(ip)
    return any(n[0] <= a <= n[1] for n in any_) or any(
        p == proto and lo <= port <= hi and n[0] <= a <= n[1] for n, p, lo, hi in ports
    )


@dataclass(frozen=True)
class TierRule:
    """One ClusterNetworkPolicy rule for one pod: its action (Accept, Deny,
    Pass), its name (``cnp/name ingress[0]``), and the traffic it matches in
    the same two forms as :class:`Allow`."""

    action: str
    name: str
    any: tuple[Net, ...] = ()
    ports: tuple[PortRange, ...] = ()


@dataclass(frozen=True)
class Allow:
    """One direction of one pod: the Admin-tier rules that apply to it (in
    order), the NetworkPolicies that isolate it and whom they let it talk to
    (``any``: on every protocol and port; ``ports``: per range), then the
    Baseline-tier rules."""

    isolating: tuple[str, ...]
    any: tuple[Net, ...] = ()
    ports: tuple[PortRange, ...] = ()
    admin: tuple[TierRule, ...] = ()
    baseline: tuple[TierRule, ...] = ()

    def allows(self, ip: str, protocol: str, port: int) -> bool:
        """Would the table let a new connection to/from ``ip`` on
        ``protocol``/``port`` through?"""
        proto = protocol.lower()
        for r in self.admin:
            if _in(ip, proto, port, r.any, r.ports):
                if r.action != "Pass":
                    return r.action == "Accept"
                break
        if self.isolating:
            return _in(ip, proto, port, self.any, self.ports)
        for r in self.baseline:
            if _in(ip, proto, port, r.any, r.ports):
                return r.action != "Deny"
        return True


@dataclass(frozen=True)
class PodPolicy:
    """What the table holds for one pod of this node: None where it is not
    isolated."""

    ref: str  # namespace/name
    ip: str
    ingress: Allow | None = None
    egress: Allow | None = None


@dataclass
class Memo:
    """What one compile can hand the next: each peer's addresses, and each
    signature's lists (the policies that select a pod → its :class:`Allow`).
    Valid while the pods and namespaces stay as they were: a pod or namespace
    change :meth:`clear` s it; a policy change :meth:`forget` s only the lists
    that policy went into."""

    peers: dict[tuple[str, Peer], tuple[Net, ...]] = field(default_factory=dict)
    allows: dict[tuple[object, ...], Allow] = field(default_factory=dict)

    def clear(self) -> None:
        self.peers.clear()
        self.allows.clear()

    def forget(self, names: set[str]) -> None:
        """Drop the lists built from these policies (``ns/name``, or a
        ClusterNetworkPolicy's name)."""

        def built_from(
            key: tuple[object, ...],
        ) -> bool:  # (direction, refs, admin, baseline, ports)
            return any(names.intersection(cast(tuple[str, ...], key[i])) for i in (1, 2, 3))

        self.allows = {k: v for k, v in self.allows.items() if not built_from(k)}


class _Cluster:
    """The pods peers can name, and each peer's networks (memoised)."""

    def __init__(
        self,
        pods: Iterable[PodRecord],
        ns_labels: Mapping[str, dict[str, str]],
        memo: dict[tuple[str, Peer], tuple[Net, ...]],
    ):
        self.pods = [p for p in pods if p.ip and p.mode != "host"]
        self.ns_labels = ns_labels
        self.by_ns: dict[str, list[PodRecord]] = {}
        for p in self.pods:
            self.by_ns.setdefault(p.namespace, []).append(p)
        self._memo = memo

    def in_namespaces(self, ns_sel: LabelSelector) -> list[PodRecord]:
        """The pods of every namespace ``ns_sel`` selects."""
        return [
            p
            for ns, pods in self.by_ns.items()
            if ns_sel.matches(self.ns_labels.get(ns, {}))
            for p in pods
        ]

    def nets(self, policy_ns: str, peer: Peer) -> tuple[Net, ...]:
        # a peer with a namespace selector (or a CIDR) means the same in any policy
        key = (policy_ns if peer.namespace_selector is None and peer.ip_block is None else "", peer)
        if key not in self._memo:
            self._memo[key] = self._resolve(policy_ns, peer)
        return self._memo[key]

    def _resolve(self, policy_ns: str, peer: Peer) -> tuple[Net, ...]:
        if peer.ip_block is not None:
            nets = [span(peer.ip_block.cidr)]
            for x in peer.ip_block.except_:
                hole = span(x)
                nets = [piece for n in nets for piece in _minus(n, hole)]
            return merge(nets)
        if peer.namespace_selector is None:
            candidates = self.by_ns.get(policy_ns, [])
        else:
            candidates = self.in_namespaces(peer.namespace_selector)
        ips = [
            (a, a)
            for p in candidates
            if peer.pod_selector is None or peer.pod_selector.matches(p.labels)
            for a in (_ip(p.ip),)
        ]
        return merge(ips)

    def cluster_nets(self, peer: ClusterPeer) -> tuple[Net, ...]:
        if peer.networks:
            return merge(span(n) for n in peer.networks)
        ns_sel, pod_sel = (peer.namespaces, None) if peer.namespaces is not None else peer.pods  # type: ignore[misc]
        ips = [
            (a, a)
            for p in self.in_namespaces(ns_sel)
            if pod_sel is None or pod_sel.matches(p.labels)
            for a in (_ip(p.ip),)
        ]
        return merge(ips)


def _minus(net: Net, hole: Net) -> list[Net]:
    """``net`` without ``hole``: nothing, itself, or one or two spans."""
    (lo, hi), (hlo, hhi) = net, hole
    if hhi < lo or hlo > hi:
        return [net]
    return [s for s in ((lo, hlo - 1), (hhi + 1, hi)) if s[0] <= s[1]]


def _rule_nets(cluster: _Cluster, policy_ns: str, rule: Rule) -> tuple[Net, ...]:
    if not rule.peers:
        return (EVERYWHERE,)
    return tuple(n for peer in rule.peers for n in cluster.nets(policy_ns, peer))


def _add_rule(
    cluster: _Cluster,
    policy_ns: str,
    rule: Rule,
    pod: PodRecord,
    direction: str,
    any_: list[Net],
    ports: list[Group],
) -> None:
    _add(cluster, _rule_nets(cluster, policy_ns, rule), rule.ports, pod, direction, any_, ports)


def _add(
    cluster: _Cluster,
    nets: tuple[Net, ...],
    rule_ports: tuple[PolicyPort, ...],
    pod: PodRecord,
    direction: str,
    any_: list[Net],
    ports: list[Group],
) -> None:
    """Traffic to/from ``nets`` on ``rule_ports`` (none: everything), into the
    two forms. A named port of protocol "" takes the container port's own."""
    if not rule_ports:
        any_ += nets
        return
    for pp in rule_ports:
        proto = pp.protocol.lower()
        if pp.port is None:
            ports.append((nets, proto, 0, 65535))
        elif isinstance(pp.port, int):
            last = pp.end_port if pp.end_port is not None else pp.port
            ports.append((nets, proto, pp.port, last))
        elif direction == "Ingress":  # a name: this pod's own container port
            named = pod.ports.get(pp.port)
            if named is not None and str(named[1]).upper() == (
                pp.protocol or str(named[1]).upper()
            ):
                p = str(named[1]).lower()
                ports.append((nets, p, int(named[0]), int(named[0])))
        else:  # a name on each destination pod the peers hold
            for other in cluster.pods:
                named = other.ports.get(pp.port)
                if named is None or str(named[1]).upper() != (pp.protocol or str(named[1]).upper()):
                    continue
                a = _ip(other.ip)
                if any(n[0] <= a <= n[1] for n in nets):
                    p = str(named[1]).lower()
                    ports.append((((a, a),), p, int(named[0]), int(named[0])))


def _tier(
    cluster: _Cluster, pod: PodRecord, direction: str, cnps: list[ClusterNetworkPolicy]
) -> tuple[TierRule, ...]:
    """The rules of ``cnps`` (which select ``pod``), in evaluation order."""
    out = []
    for cnp in cnps:
        for i, r in enumerate(cnp.ingress if direction == "Ingress" else cnp.egress):
            nets = merge(n for p in r.peers for n in cluster.cluster_nets(p))
            any_: list[Net] = []
            ports: list[Group] = []
            _add(cluster, nets, r.ports, pod, direction, any_, ports)
            label = f" ({r.name})" if r.name else ""
            out.append(TierRule(
                r.action, f"{cnp.ref} {direction.lower()}[{i}]{label}",
                merge(any_), _disjoint(ports),
            ))  # fmt: skip
    return tuple(out)


def _allow(
    cluster: _Cluster,
    pod: PodRecord,
    direction: str,
    policies: dict[str, list[NetworkPolicy]],
    tiers: dict[str, list[ClusterNetworkPolicy]],
    cache: dict[tuple[object, ...], Allow],
) -> Allow | None:
    isolating = [
        p
        for p in policies.get(pod.namespace, ())
        if direction in p.policy_types and p.pod_selector.matches(pod.labels)
    ]
    admin = [c for c in tiers["Admin"] if selects(c, pod, cluster.ns_labels)]
    baseline = (
        [c for c in tiers["Baseline"] if selects(c, pod, cluster.ns_labels)]
        if not isolating
        else []
    )
    if not isolating and not admin and not baseline:
        return None
    # pods the same policies select get the same lists (replicas of one
    # deployment: computed once); an ingress rule's named port reads the pod's own
    key = (
        direction,
        tuple(p.ref for p in isolating),
        tuple(c.name for c in admin),
        tuple(c.name for c in baseline),
        tuple(sorted((k, tuple(v)) for k, v in pod.ports.items()))
        if direction == "Ingress"
        else (),
    )
    if (hit := cache.get(key)) is not None:
        return hit
    any_: list[Net] = []
    ports: list[Group] = []
    for p in isolating:
        for rule in p.ingress if direction == "Ingress" else p.egress:
            _add_rule(cluster, p.namespace, rule, pod, direction, any_, ports)
    cache[key] = Allow(
        tuple(sorted(p.ref for p in isolating)),
        merge(any_),
        _disjoint(ports),
        _tier(cluster, pod, direction, admin),
        _tier(cluster, pod, direction, baseline),
    )
    return cache[key]


def disjoint(ranges: Iterable[PortRange]) -> tuple[PortRange, ...]:
    """The same (network, protocol, port) space as ``ranges``, as tuples that
    do not overlap, sorted."""
    return _disjoint(((n,), proto, lo, hi) for n, proto, lo, hi in ranges)


def _disjoint(groups: Iterable[Group]) -> tuple[PortRange, ...]:
    """:func:`disjoint` of groups of addresses. Port ranges are few and
    addresses many: the addresses are merged once per distinct range, then per
    piece of the port axis."""
    by_range: dict[tuple[str, int, int], list[Net]] = {}
    for nets, proto, lo, hi in groups:
        by_range.setdefault((proto, lo, hi), []).extend(nets)
    out: list[PortRange] = []
    for proto in sorted({p for p, _, _ in by_range}):
        mine = {(lo, hi): merge(nets) for (p, lo, hi), nets in by_range.items() if p == proto}
        cuts = sorted({lo for lo, _ in mine} | {hi + 1 for _, hi in mine})
        pieces: list[tuple[int, int, tuple[Net, ...]]] = []
        for a, b in zip(cuts, cuts[1:], strict=False):
            covering = [nets for (lo, hi), nets in mine.items() if lo <= a <= hi]
            if not covering:
                continue
            nets = covering[0] if len(covering) == 1 else merge(n for c in covering for n in c)
            if pieces and pieces[-1][1] == a - 1 and pieces[-1][2] == nets:
                pieces[-1] = (pieces[-1][0], b - 1, nets)
            else:
                pieces.append((a, b - 1, nets))
        out += [(n, proto, lo, hi) for lo, hi, nets in pieces for n in nets]
    return tuple(out)


def compile_node(
    policies: Iterable[NetworkPolicy],
    pods: Iterable[PodRecord],
    ns_labels: Mapping[str, dict[str, str]],
    node: str,
    cluster_policies: Iterable[ClusterNetworkPolicy] = (),
    only: set[str] | None = None,
    memo: Memo | None = None,
) -> dict[str, PodPolicy]:
    """Each pod of ``node`` some policy applies to (by ``namespace/name``) and
    what its table entries hold. ``pods``: every pod of the cluster (peers are
    anywhere); ``ns_labels``: each namespace's labels; ``only``: just these
    pods of the node (``namespace/name``); ``memo``: what earlier compiles
    found, kept valid by the caller (:class:`Memo`)."""
    pods = list(pods)
    pols: dict[str, list[NetworkPolicy]] = {}
    for pol in policies:
        pols.setdefault(pol.namespace, []).append(pol)
    cnps = list(cluster_policies)
    tiers = {t: ordered(cnps, t) for t in ("Admin", "Baseline")}
    memo = memo if memo is not None else Memo()
    cluster = _Cluster(pods, ns_labels, memo.peers)
    cache = memo.allows
    out: dict[str, PodPolicy] = {}
    for pod in pods:
        if pod.node != node or not pod.ip or pod.mode != "bridge":
            continue
        if only is not None and f"{pod.namespace}/{pod.name}" not in only:
            continue
        ingress = _allow(cluster, pod, "Ingress", pols, tiers, cache)
        egress = _allow(cluster, pod, "Egress", pols, tiers, cache)
        if ingress is not None or egress is not None:
            ref = f"{pod.namespace}/{pod.name}"
            out[ref] = PodPolicy(ref, pod.ip, ingress, egress)
    return out

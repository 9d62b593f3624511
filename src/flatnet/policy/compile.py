"""How it works — NetworkPolicy compiled for one node (pure: data in, data out).

The kernel needs, for each pod on this node that some policy isolates, and
for each direction it is isolated in, the other side it may talk to as two
lists the table looks up in one step each:

- ``any``: networks allowed on every protocol and port (rules without ``ports``);
- ``ports``: (network, protocol, first port, last port) tuples (rules with ``ports``).

They hold the union of every rule of every policy that selects the pod for
that direction. A peer's pod and namespace selectors become the /32s of the
pods they select now; an ``ipBlock`` its CIDR minus its ``except`` blocks; a
rule without ``from``/``to``, 0.0.0.0/0. A named port is resolved on the
destination pod: for ingress, the pod itself; for egress, each pod the rule's
peers hold that names that port — so one rule can mean different numbers on
different pods, and never matches an address that is not a pod's.

The tuples are made disjoint (nftables refuses overlapping elements in a
concatenated interval set): the port axis is cut at every range's ends, each
piece gets the collapsed union of its networks, and neighbouring pieces with
the same networks merge again — which also keeps the lists short.

A pod that no policy isolates in a direction has None there: no map entry,
nothing on its packets' path. Pods on the host's network are never subjects;
pods sharing another pod's network (``container:``) are judged as that pod.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from flatnet.model import PodRecord
from flatnet.policy.model import NetworkPolicy, Peer, Rule

__all__ = ["Allow", "PodPolicy", "compile_node", "disjoint"]

Net = ipaddress.IPv4Network
PortRange = tuple[Net, str, int, int]  # network, protocol ("tcp"), first, last port
EVERYWHERE = ipaddress.IPv4Network("0.0.0.0/0")


@dataclass(frozen=True)
class Allow:
    """One direction of one pod: the policies that isolate it, and whom it may
    talk to (``any``: on every protocol and port; ``ports``: per range)."""

    isolating: tuple[str, ...]
    any: tuple[Net, ...] = ()
    ports: tuple[PortRange, ...] = ()

    def allows(self, ip: str, protocol: str, port: int) -> bool:
        """Would the table let a new connection to/from ``ip`` on
        ``protocol``/``port`` through?"""
        a = ipaddress.IPv4Address(ip)
        proto = protocol.lower()
        return any(a in n for n in self.any) or any(
            p == proto and lo <= port <= hi and a in n for n, p, lo, hi in self.ports
        )


@dataclass(frozen=True)
class PodPolicy:
    """What the table holds for one pod of this node: None where it is not
    isolated."""

    ref: str  # namespace/name
    ip: str
    ingress: Allow | None = None
    egress: Allow | None = None


class _Cluster:
    """The pods peers can name, and each peer's networks (memoised for one
    compile)."""

    def __init__(self, pods: Iterable[PodRecord], ns_labels: Mapping[str, dict[str, str]]):
        self.pods = [p for p in pods if p.ip and p.mode != "host"]
        self.ns_labels = ns_labels
        self._memo: dict[tuple[str, Peer], tuple[Net, ...]] = {}

    def nets(self, policy_ns: str, peer: Peer) -> tuple[Net, ...]:
        key = (policy_ns, peer)
        if key not in self._memo:
            self._memo[key] = self._resolve(policy_ns, peer)
        return self._memo[key]

    def _resolve(self, policy_ns: str, peer: Peer) -> tuple[Net, ...]:
        if peer.ip_block is not None:
            nets = [ipaddress.IPv4Network(peer.ip_block.cidr, strict=False)]
            for x in peer.ip_block.except_:
                hole = ipaddress.IPv4Network(x, strict=False)
                nets = [piece for n in nets for piece in _minus(n, hole)]
            return tuple(ipaddress.collapse_addresses(nets))
        ips = []
        for p in self.pods:
            if peer.namespace_selector is None:
                ns_ok = p.namespace == policy_ns
            else:
                ns_ok = peer.namespace_selector.matches(self.ns_labels.get(p.namespace, {}))
            if ns_ok and (peer.pod_selector is None or peer.pod_selector.matches(p.labels)):
                ips.append(ipaddress.IPv4Network(p.ip))
        return tuple(ipaddress.collapse_addresses(ips))


def _minus(net: Net, hole: Net) -> list[Net]:
    if not net.overlaps(hole):
        return [net]
    if hole.supernet_of(net):
        return []
    return list(net.address_exclude(hole))


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
    ports: list[PortRange],
) -> None:
    nets = _rule_nets(cluster, policy_ns, rule)
    if not rule.ports:
        any_ += nets
        return
    for pp in rule.ports:
        proto = pp.protocol.lower()
        if pp.port is None:
            ports += [(n, proto, 0, 65535) for n in nets]
        elif isinstance(pp.port, int):
            last = pp.end_port if pp.end_port is not None else pp.port
            ports += [(n, proto, pp.port, last) for n in nets]
        elif direction == "Ingress":  # a name: this pod's own container port
            named = pod.ports.get(pp.port)
            if named is not None and str(named[1]).upper() == pp.protocol:
                ports += [(n, proto, int(named[0]), int(named[0])) for n in nets]
        else:  # a name on each destination pod the peers hold
            for other in cluster.pods:
                named = other.ports.get(pp.port)
                if named is None or str(named[1]).upper() != pp.protocol:
                    continue
                ip = ipaddress.IPv4Address(other.ip)
                if any(ip in n for n in nets):
                    ports.append((Net(other.ip), proto, int(named[0]), int(named[0])))


def _allow(
    cluster: _Cluster, pod: PodRecord, direction: str, policies: list[NetworkPolicy]
) -> Allow | None:
    isolating = [
        p
        for p in policies
        if p.namespace == pod.namespace
        and direction in p.policy_types
        and p.pod_selector.matches(pod.labels)
    ]
    if not isolating:
        return None
    any_: list[Net] = []
    ports: list[PortRange] = []
    for p in isolating:
        for rule in p.ingress if direction == "Ingress" else p.egress:
            _add_rule(cluster, p.namespace, rule, pod, direction, any_, ports)
    return Allow(
        tuple(sorted(p.ref for p in isolating)),
        tuple(ipaddress.collapse_addresses(any_)),
        disjoint(ports),
    )


def disjoint(ranges: Iterable[PortRange]) -> tuple[PortRange, ...]:
    """The same (network, protocol, port) space as ``ranges``, as tuples that
    do not overlap, sorted."""
    by_proto: dict[str, list[tuple[Net, int, int]]] = {}
    for n, proto, lo, hi in ranges:
        by_proto.setdefault(proto, []).append((n, lo, hi))
    out: list[PortRange] = []
    for proto in sorted(by_proto):
        items = by_proto[proto]
        cuts = sorted({lo for _, lo, _ in items} | {hi + 1 for _, _, hi in items})
        pieces: list[tuple[int, int, tuple[Net, ...]]] = []
        for a, b in zip(cuts, cuts[1:], strict=False):
            nets = tuple(ipaddress.collapse_addresses(n for n, lo, hi in items if lo <= a <= hi))
            if not nets:
                continue
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
) -> dict[str, PodPolicy]:
    """Each isolated pod of ``node`` (by ``namespace/name``) and what its
    table entries hold. ``pods``: every pod of the cluster (peers are
    anywhere); ``ns_labels``: each namespace's labels."""
    pods = list(pods)
    pols = list(policies)
    cluster = _Cluster(pods, ns_labels)
    out: dict[str, PodPolicy] = {}
    for pod in pods:
        if pod.node != node or not pod.ip or pod.mode != "bridge":
            continue
        ingress = _allow(cluster, pod, "Ingress", pols)
        egress = _allow(cluster, pod, "Egress", pols)
        if ingress is not None or egress is not None:
            ref = f"{pod.namespace}/{pod.name}"
            out[ref] = PodPolicy(ref, pod.ip, ingress, egress)
    return out

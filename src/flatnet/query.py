"""What ``flatnet get`` shows, read from the store as typed rows (no rendering).

Each function takes an open store and returns rows whose ``to_dict()`` is the
JSON object ``-o json`` prints for it (the same keys kubectl users see:
``underlayIP``, ``clusterIP``...). :mod:`flatnet.cli` only parses and renders.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from flatnet import keys
from flatnet.agent.heartbeat import heartbeats
from flatnet.model import (
    Lease,
    NodeRecord,
    PeerStatus,
    PodRecord,
    ProxyStatus,
    Service,
    ServicePort,
)
from flatnet.namespaces import load_all
from flatnet.policy.model import ClusterNetworkPolicy, LabelSelector, NetworkPolicy
from flatnet.policy.verdict import selects
from flatnet.store import Store
from flatnet.view import ClusterView

__all__ = [
    "ClusterPolicyRow",
    "NamespaceRow",
    "NodeRow",
    "PodRow",
    "PolicyRow",
    "ServiceRow",
    "cluster_policies",
    "namespaces",
    "network_policies",
    "nodes",
    "pod_records",
    "pods",
    "port_text",
    "selector_text",
    "services",
]


@dataclass(frozen=True)
class PodRow:
    """A pod as ``get pods`` shows it: READY (containers ready / all), STATUS
    (kubectl's: the phase, or CrashLoopBackOff, Error, Completed), RESTARTS."""

    name: str
    namespace: str
    node: str
    ip: str
    netns: str
    mode: str
    labels: dict[str, str]
    phase: str
    status: str
    ready: str  # "1/1"
    restarts: int
    created: float
    message: str

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class NodeRow:
    """A node and what its peer watcher reports; ``ready``: its agent's
    heartbeat is alive (:mod:`flatnet.agent.heartbeat`), ``since``: when that
    agent started."""

    name: str
    underlay_ip: str
    pod_subnet: str
    backend: str = ""
    peers: list[str] = field(default_factory=list)  # programmed
    refused: dict[str, str] = field(default_factory=dict)  # peer -> why
    ready: bool = False
    since: float = 0.0
    pending: list[str] = field(default_factory=list)  # not routed yet
    sessions: dict[str, str] = field(default_factory=dict)  # bgp: peer -> BIRD's state
    problem: str = ""

    @property
    def status(self) -> str:
        return "Ready" if self.ready else "NotReady"

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "status": self.status,
            "podSubnet": self.pod_subnet,
            "underlayIP": self.underlay_ip,
            "backend": self.backend,
            "peers": self.peers,
            "refused": self.refused,
            "pending": self.pending,
            "sessions": self.sessions,
            "problem": self.problem,
            "ready": self.ready,
            "agentSince": self.since,
        }


@dataclass(frozen=True)
class ServiceRow:
    """A service with its ready endpoints and the nodes whose proxies have
    programmed its latest version and are Ready (``proxies``: how many nodes'
    proxies publish at all)."""

    namespace: str
    name: str
    type: str
    cluster_ip: str
    external_name: str
    ports: list[dict[str, object]]  # as kubectl shows spec.ports: numbers as numbers
    selector: dict[str, str]
    session_affinity: str
    endpoints: list[str]
    endpoint_pods: list[str]
    programmed_on: list[str]
    proxies: int
    external_ip: str = ""  # a LoadBalancer's address ("" while it has none)
    pool: str = ""
    external_local: bool = False
    announced_by: list[str] = field(default_factory=list)  # "node (BGP|L2)"

    def to_dict(self) -> dict[str, object]:
        lb = [{"ip": self.external_ip}] if self.external_ip else []
        shown = self.external_ip or ("<pending>" if self.type == "LoadBalancer" else "<none>")
        return {
            "namespace": self.namespace,
            "name": self.name,
            "type": self.type,
            "clusterIP": self.cluster_ip,
            "externalIP": shown,
            "pool": self.pool,
            "externalTrafficPolicy": "Local" if self.external_local else "Cluster",
            "status": {"loadBalancer": {"ingress": lb}},
            "announcedBy": self.announced_by,
            "externalName": self.external_name,
            "ports": self.ports,
            "selector": self.selector,
            "sessionAffinity": self.session_affinity,
            "endpoints": self.endpoints,
            "endpointPods": self.endpoint_pods,
            "programmedOn": self.programmed_on,
        }


def pod_records(store: Store) -> list[PodRecord]:
    return [PodRecord.from_json(kv.value) for kv in store.range(keys.PODS)]


def pods(store: Store) -> list[PodRow]:
    out = []
    for p in pod_records(store):
        ready = f"{p.running if p.ready else 0}/{p.containers}"
        out.append(
            PodRow(
                p.name,
                p.namespace,
                p.node,
                p.ip,
                p.netns,
                p.mode,
                p.labels,
                p.phase,
                p.status,
                ready,
                p.restarts,
                p.created,
                p.message,
            )  # fmt: skip
        )
    return out


@dataclass(frozen=True)
class NamespaceRow:
    name: str
    labels: dict[str, str]
    created: float

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "status": "Active", "labels": self.labels,
                "created": self.created}  # fmt: skip


def namespaces(store: Store) -> list[NamespaceRow]:
    return [NamespaceRow(n.name, n.labels, n.created) for n in load_all(store).values()]


def nodes(store: Store) -> list[NodeRow]:
    status = {keys.last(kv.key): PeerStatus.from_json(kv.value) for kv in store.range(keys.STATUS)}
    alive = heartbeats(store)
    out = []
    for kv in store.range(keys.NODES):
        rec = NodeRecord.from_json(kv.value)
        st = status.get(rec.name) or PeerStatus(rec.name, "")
        hb = alive.get(rec.name)
        out.append(
            NodeRow(
                rec.name,
                rec.underlay_ip,
                rec.pod_subnet,
                st.backend,
                st.programmed,
                st.refused,
                hb is not None,
                hb.since if hb is not None else 0.0,
                st.pending,
                st.sessions,
                st.problem,
            )  # fmt: skip
        )
    return out


def _port(p: ServicePort) -> dict[str, object]:
    """One port as kubectl's ``spec.ports[]``: name, port, protocol, targetPort
    (a number or a container port's name), nodePort (when it has one)."""
    out: dict[str, object] = {"name": p.name, "port": p.port, "protocol": p.protocol}
    out["targetPort"] = p.target_port or p.port
    if p.node_port:
        out["nodePort"] = p.node_port
    return out


def port_text(p: dict[str, object]) -> str:
    """``name:port[:nodePort]/PROTO``, as the table lists a port."""
    named = f"{p['name']}:" if p["name"] else ""
    node = f":{p['nodePort']}" if "nodePort" in p else ""
    return f"{named}{p['port']}{node}/{p['protocol']}"


def services(store: Store) -> list[ServiceRow]:
    kvs = store.range(keys.SERVICES)
    view = ClusterView(kvs + store.range(keys.PODS))
    alive = heartbeats(store)  # a NotReady node's proxy counts as not programmed
    proxies = [ProxyStatus.from_json(kv.value) for kv in store.range(keys.PROXY)]
    speaks: dict[str, list[str]] = {}  # address -> "node (how)", from each node's announcer
    for kv in store.range(keys.LB):
        said = json.loads(kv.value)
        for how in ("bgp", "l2"):
            for ip in said.get(how, []):
                speaks.setdefault(ip, []).append(f"{said['node']} ({how.upper()})")
    out = []
    for kv in kvs:
        svc = view.services[kv.key]
        eps = [e for es in view.endpoints(svc).values() for e in es]
        out.append(
            ServiceRow(
                svc.namespace,
                svc.name,
                svc.type,
                svc.cluster_ip or "-",
                svc.external_name,
                [_port(p) for p in svc.ports],
                svc.selector,
                svc.session_affinity,
                sorted({f"{e.ip}:{e.port}" for e in eps}),
                sorted({e.pod for e in eps}),
                sorted(
                    p.node for p in proxies if p.revision >= kv.mod_revision and p.node in alive
                ),
                len(proxies),
                svc.ingress_ip,
                svc.pool,
                svc.external_local,
                sorted(speaks.get(svc.ingress_ip, [])) if svc.ingress_ip else [],
            )
        )
    return out


def selector_text(sel: LabelSelector) -> str:
    """kubectl's way of writing a selector: ``a=b,c in (d,e),!f``; ``<none>``
    selects every pod."""
    parts = [f"{k}={v}" for k, v in sel.match_labels]
    for r in sel.match_expressions:
        if r.operator in ("In", "NotIn"):
            parts.append(f"{r.key} {r.operator.lower()} ({','.join(r.values)})")
        else:
            parts.append(r.key if r.operator == "Exists" else f"!{r.key}")
    return ",".join(parts) or "<none>"


@dataclass(frozen=True)
class PolicyRow:
    policy: NetworkPolicy
    pods: list[str]  # the pods it selects (namespace/name)
    programmed_on: list[str]  # Ready nodes whose policy table reflects it
    nodes: int  # nodes with a policy table

    def to_dict(self) -> dict[str, object]:
        p = self.policy
        return {
            "namespace": p.namespace,
            "name": p.name,
            "podSelector": selector_text(p.pod_selector),
            "policyTypes": list(p.policy_types),
            "ingressRules": len(p.ingress),
            "egressRules": len(p.egress),
            "pods": self.pods,
            "programmedOn": self.programmed_on,
            "tables": self.nodes,
        }


def _policy_tables(store: Store) -> tuple[int, Callable[[int], list[str]]]:
    """How many nodes have a policy table, and which Ready ones have
    programmed a given store revision."""
    alive = heartbeats(store)
    tables = {
        keys.last(kv.key): json.loads(kv.value)["revision"] for kv in store.range(keys.POLICY)
    }
    return len(tables), lambda rev: sorted(
        n for n, seen in tables.items() if seen >= rev and n in alive
    )


def network_policies(store: Store) -> list[PolicyRow]:
    pods = [p for p in pod_records(store) if p.mode != "host"]
    n, programmed = _policy_tables(store)
    out = []
    for kv in store.range(keys.NETWORK_POLICIES):
        pol = NetworkPolicy.from_json(kv.value)
        selected = sorted(
            f"{p.namespace}/{p.name}"
            for p in pods
            if p.namespace == pol.namespace and pol.pod_selector.matches(p.labels)
        )
        out.append(PolicyRow(pol, selected, programmed(kv.mod_revision), n))
    return out


@dataclass(frozen=True)
class ClusterPolicyRow:
    policy: ClusterNetworkPolicy
    pods: list[str]  # its subjects (namespace/name)
    programmed_on: list[str]
    nodes: int

    def to_dict(self) -> dict[str, object]:
        p = self.policy
        ns_sel, pod_sel = p.subject
        subject = f"namespaces {selector_text(ns_sel)}" + (
            f", pods {selector_text(pod_sel)}" if pod_sel is not None else ""
        )
        return {
            "name": p.name,
            "tier": p.tier,
            "priority": p.priority,
            "subject": subject,
            "ingressRules": len(p.ingress),
            "egressRules": len(p.egress),
            "pods": self.pods,
            "programmedOn": self.programmed_on,
            "tables": self.nodes,
        }


def cluster_policies(store: Store) -> list[ClusterPolicyRow]:
    pods = [p for p in pod_records(store) if p.mode != "host"]
    ns_labels = {n: ns.labels for n, ns in load_all(store).items()}
    n, programmed = _policy_tables(store)
    out = []
    for kv in store.range(keys.CLUSTER_POLICIES):
        pol = ClusterNetworkPolicy.from_json(kv.value)
        subjects = sorted(f"{p.namespace}/{p.name}" for p in pods if selects(pol, p, ns_labels))
        out.append(ClusterPolicyRow(pol, subjects, programmed(kv.mod_revision), n))
    return sorted(out, key=lambda r: (r.policy.tier != "Admin", r.policy.priority, r.policy.name))


def address_pools(store: Store) -> list[dict[str, object]]:
    """The LoadBalancer address pools, each with the addresses services hold."""
    from flatnet.lb import pools

    held = {keys.last(kv.key): kv.value for kv in store.range(keys.LB_IPS)}
    out: list[dict[str, object]] = []
    for p in pools.load_all(store).values():
        used = sorted(f"{ip} {owner}" for ip, owner in held.items() if p.holds(ip))
        out.append({
            "name": p.name,
            "addresses": list(p.addresses),
            "autoAssign": p.auto_assign,
            "advertisement": p.advertisement or "auto",
            "inUse": f"{len(used)}/{p.size()}",
            "holders": used,
        })  # fmt: skip
    return out


INGRESS_SERVICE = ("kube-system", "flatnet-ingress")  # what exposes the controller


def ingresses(store: Store) -> list[dict[str, object]]:
    """The Ingresses, each with its address (the controller's Service's
    external IP, else its node ports), its hosts and ports, and what the
    controller reports: conflicts that touch it, reloads."""
    from flatnet.ingress import objects

    status = store.get(keys.INGRESS_STATUS)
    said = json.loads(status.value) if status is not None else {}
    kv = store.get(keys.service(*INGRESS_SERVICE))
    svc = Service.from_json(kv.value) if kv is not None else None
    address = svc.ingress_ip if svc is not None else ""
    if svc is not None and not address and svc.ports and svc.ports[0].node_port:
        # NodePort, externalTrafficPolicy Local: the nodes of the controller's pods
        pods = [PodRecord.from_json(kv.value) for kv in store.range(keys.PODS + "kube-system/")]
        nodes = {p.node for p in pods if selects_pod(svc, p)}
        leases = [Lease.from_json(kv.value) for kv in store.range(keys.SUBNETS)]
        ips = sorted(lease.underlay_ip for lease in leases if lease.node in nodes)
        address = ", ".join(f"{ip}:{svc.ports[0].node_port}" for ip in ips)
    out: list[dict[str, object]] = []
    for i in objects.load_all(store).values():
        conflicts = [c for c in said.get("conflicts", []) if c.startswith(f"ingress {i.ref}:")]
        served = not i.class_name or i.class_name == said.get("class")  # else: another's
        out.append({
            "name": i.name,
            "namespace": i.namespace,
            "class": i.class_name or "<none>",
            "hosts": sorted({r.host or "*" for r in i.rules}) or ["*"],
            "address": address if served else "",
            "ports": "80, 443" if i.tls else "80",
            "created": i.created,
            "conflicts": conflicts,
            "reloads": said.get("reloads", 0),
            "lastReload": said.get("lastReload", 0.0),
            "status": {"loadBalancer": {"ingress": [{"ip": svc.ingress_ip}]
                                        if svc is not None and svc.ingress_ip else []}},
        })  # fmt: skip
    return out


def selects_pod(svc: Service, p: PodRecord) -> bool:
    return p.namespace == svc.namespace and all(
        p.labels.get(k) == v for k, v in svc.selector.items()
    )


def ingress_classes(store: Store) -> list[dict[str, object]]:
    from flatnet.ingress import objects

    return [
        {"name": c.name, "controller": c.controller, "default": c.default}
        for c in objects.load_classes(store).values()
    ]

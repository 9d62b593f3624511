"""Frozen data shared by the control plane and the data plane: what the store
holds, one record type per kind of key (the key layout is :mod:`flatnet.keys`)."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Self

from flatnet import keys
from flatnet.errors import ConfigError

__all__ = [
    "Allocation",
    "Camel",
    "Heartbeat",
    "AddressPool",
    "Lease",
    "Namespace",
    "NetworkConfig",
    "NodeRecord",
    "PeerStatus",
    "PolicyStatus",
    "PodRecord",
    "ProxyStatus",
    "Service",
    "ServicePort",
]

BACKENDS = ("host-gw", "vxlan", "udp", "bgp", "none")
BACKEND_OPTIONS: dict[str, dict[str, type]] = {
    "vxlan": {"vni": int, "port": int, "directRouting": bool, "txChecksumOffload": bool},
    "udp": {"port": int, "gso": bool},
    "bgp": {
        "asNumber": int,
        "nodeASNumbers": dict,
        "routeReflectors": list,
        "peers": list,
        "bfd": bool,
        "crossSubnet": bool,
        "vni": int,
        "port": int,
    },
}


def _asn(v: object, what: str) -> None:
    if type(v) is not int or not 1 <= v <= 4294967295:
        raise ConfigError(f"{what}: {v!r} is not an AS number (1..4294967295)")


def _check_bgp(o: dict[str, Any]) -> None:
    """The bgp backend's options, field by field (Calico's BGPConfiguration,
    Node.spec.bgp and BGPPeer, folded into one place)."""
    w = "network.backendOptions"
    if "asNumber" in o:
        _asn(o["asNumber"], f"{w}.asNumber")
    for node, asn in (o.get("nodeASNumbers") or {}).items():
        _asn(asn, f"{w}.nodeASNumbers.{node}")
    for i, n in enumerate(o.get("routeReflectors") or []):
        if not isinstance(n, str):
            raise ConfigError(f"{w}.routeReflectors[{i}]: {n!r} is not a node name")
    for i, p in enumerate(o.get("peers") or []):
        where = f"{w}.peers[{i}]"
        if not isinstance(p, dict) or set(p) - {"address", "asNumber", "nodes", "name"}:
            raise ConfigError(f"{where}: takes address, asNumber, nodes (optional), name")
        try:
            ipaddress.IPv4Address(p.get("address"))
        except ValueError:
            raise ConfigError(
                f"{where}.address: {p.get('address')!r} is not an IPv4 address"
            ) from None
        _asn(p.get("asNumber"), f"{where}.asNumber")
        if "nodes" in p and not isinstance(p["nodes"], list):
            raise ConfigError(f"{where}.nodes: must be a list of node names")


def _net(value: str, what: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(value, strict=True)
    except ValueError as e:
        raise ConfigError(f"{what}: '{value}' is not a valid IPv4 network CIDR ({e})") from e


class _Json:
    """JSON round-trip for the frozen dataclasses kept in the store."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)  # type: ignore[call-overload]

    @classmethod
    def from_json(cls, text: str) -> Self:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class NetworkConfig(_Json):
    """The cluster network: pod CIDR, node subnet size, service CIDR, backend (and its
    options, e.g. vxlan's ``vni``, ``port``, ``directRouting``), the largest MTU pods
    may get (the backend lowers it by its overhead), the node lease TTL, and whether
    the eBPF fast path runs (:mod:`flatnet.fastpath`)."""

    pod_cidr: str = "10.244.0.0/16"
    node_subnet_length: int = 24
    service_cidr: str = "10.96.0.0/12"
    backend: str = "vxlan"
    mtu: int = 1500
    lease_ttl: float = 86400.0
    backend_options: dict[str, Any] = field(default_factory=dict)
    fast_path: bool = True  # established pod->pod flows skip the node's stack (flatnet.fastpath)

    def __post_init__(self) -> None:
        pod = _net(self.pod_cidr, "network.podCIDR")
        svc = _net(self.service_cidr, "network.serviceCIDR")
        if pod.overlaps(svc):
            raise ConfigError(
                f"network.serviceCIDR: {svc} overlaps network.podCIDR {pod}: a pod could be "
                "given a service's cluster IP; choose ranges that do not overlap"
            )
        if not pod.prefixlen < self.node_subnet_length <= 30:
            raise ConfigError(
                f"network.nodeSubnetLength: {self.node_subnet_length} must be longer than "
                f"the pod CIDR's /{pod.prefixlen} and at most 30"
            )
        if self.backend not in BACKENDS:
            raise ConfigError(
                f"network.backend: '{self.backend}' is not one of {', '.join(BACKENDS)}"
            )
        known = BACKEND_OPTIONS.get(self.backend, {})
        for k, v in self.backend_options.items():
            if k not in known:
                raise ConfigError(
                    f"network.backendOptions.{k}: not an option of backend '{self.backend}' "
                    f"(known: {', '.join(known) or 'none'})"
                )
            if type(v) is not known[k]:
                raise ConfigError(f"network.backendOptions.{k}: {v!r} is not a {known[k].__name__}")
        if self.backend == "bgp":
            _check_bgp(self.backend_options)
        if not 576 <= self.mtu <= 65535:
            raise ConfigError(f"network.mtu: {self.mtu} is out of range 576..65535")

    @property
    def pod_network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.pod_cidr)


@dataclass(frozen=True)
class Lease(_Json):
    """A node's hold on a pod subnet, with what its peers need to reach it."""

    subnet: str
    node: str
    underlay_ip: str
    backend: str = ""
    backend_data: dict[str, Any] = field(default_factory=dict)


class Camel:
    """A dataclass kept as JSON with the camelCase names users see (``flatnet
    get -o json``, the lab's state file); ``_wire`` maps the Python names that
    differ to theirs."""

    _wire: dict[str, str] = {}  # python name -> JSON name, where they differ

    def to_dict(self) -> dict[str, Any]:
        return {self._wire.get(k, k): v for k, v in asdict(self).items()}  # type: ignore[call-overload]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        back = {v: k for k, v in cls._wire.items()}
        return cls(**{back.get(k, k): v for k, v in d.items()})

    @classmethod
    def from_json(cls, text: str) -> Self:
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class NodeRecord(Camel):
    """A node as the cluster knows it (``nodes/<node>``): kept after its lease
    expires, so a returning node asks for the subnet it had first."""

    _wire = {"underlay_ip": "underlayIP", "pod_subnet": "podSubnet"}
    name: str
    underlay_ip: str
    pod_subnet: str


@dataclass(frozen=True)
class PeerStatus(Camel):
    """What a node's peer watcher has programmed (``status/<node>``, tied to
    the node's TTL lease): peers programmed, pending, and refused with why."""

    node: str
    backend: str
    programmed: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    sessions: dict[str, str] = field(default_factory=dict)  # bgp: peer -> session state
    problem: str = ""  # the backend's daemon is in trouble (bgp: BIRD)


@dataclass(frozen=True)
class Heartbeat(Camel):
    """A node's agent is alive (``heartbeats/<node>``): written once when it
    starts, under a TTL lease of a few seconds that it keeps alive; when the
    agent dies the lease runs out and the key vanishes: the node is NotReady."""

    node: str
    since: float  # when this agent started (epoch seconds)
    ttl: float  # the lease's TTL: NotReady at most this long after the agent died
    pid: int = 0
    nets: list[str] = field(default_factory=list)  # its underlay networks (L2 reach)


@dataclass(frozen=True)
class ProxyStatus(Camel):
    """What a node's service proxy has programmed (``proxy/<node>``): the store
    revision it reflects, the counts, and how long the last sync took."""

    _wire = {"last_sync": "lastSyncSeconds"}
    node: str
    revision: int = 0
    services: int = 0
    chains: int = 0
    last_sync: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PolicyStatus(Camel):
    """What a node's policy table holds (``policy/<node>``): the store revision
    it reflects, the policies that select pods of this node, how many of its
    pods are isolated, and how long the last sync took."""

    _wire = {"last_sync": "lastSyncSeconds"}
    node: str
    revision: int = 0
    policies: list[str] = field(default_factory=list)  # namespace/name
    isolated: int = 0
    last_sync: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Allocation(_Json):
    """One pod IP, owned by (container ID, interface name) on a node."""

    ip: str
    container_id: str
    ifname: str
    node: str
    pod: str = ""
    created: float = 0.0
    netns: str = ""  # the pod's namespace as CNI ADD named it (to re-MTU it later)


NAME_LABEL = "kubernetes.io/metadata.name"  # every namespace carries its name as a label


@dataclass(frozen=True)
class Namespace(Camel):
    """A v1 Namespace (``namespaces/<name>``): its labels always include
    ``kubernetes.io/metadata.name: <name>``, as the API server sets it."""

    name: str
    labels: dict[str, str] = field(default_factory=dict)
    created: float = 0.0

    @classmethod
    def of(cls, name: str, labels: dict[str, str] | None = None, created: float = 0.0) -> Namespace:
        return cls(name, {**(labels or {}), NAME_LABEL: name}, created)

    @property
    def key(self) -> str:
        return keys.namespace(self.name)


@dataclass(frozen=True)
class PodRecord(_Json):
    """A pod as the API server holds it. ``phase`` is Kubernetes' (Pending,
    Running, Succeeded, Failed; and Terminating while it is deleted), ``ready``
    its Ready condition; ``reason`` what kubectl's STATUS column says instead
    of the phase (CrashLoopBackOff, Error, Completed), ``message`` why."""

    name: str
    namespace: str
    node: str
    ip: str = ""
    netns: str = ""
    mode: str = "bridge"
    labels: dict[str, str] = field(default_factory=dict)
    container_id: str = ""
    phase: str = "Pending"
    ready: bool = False
    ports: dict[str, list[Any]] = field(default_factory=dict)  # name -> [port, protocol]
    restarts: int = 0
    reason: str = ""
    message: str = ""
    created: float = 0.0  # epoch seconds
    containers: int = 1
    running: int = 0  # containers running now

    @property
    def status(self) -> str:
        """kubectl's STATUS column."""
        return self.reason or self.phase

    @property
    def serving(self) -> bool:
        """Counted as a ready endpoint of the services that select it."""
        return self.ready and bool(self.ip) and self.phase == "Running"

    @property
    def key(self) -> str:
        return keys.pod(self.namespace, self.name)


@dataclass(frozen=True)
class ServicePort:
    port: int
    protocol: str = "TCP"  # TCP | UDP
    name: str = ""
    target_port: int | str = 0  # a number, or a container port's name
    node_port: int = 0


@dataclass(frozen=True)
class Service:
    """A Kubernetes v1 Service, as flatnet keeps it. ``cluster_ip`` is "None" for
    a headless service and "" for ExternalName. A LoadBalancer's address
    (``status.loadBalancer.ingress[0].ip``) is ``ingress_ip``, from pool
    ``pool``; ``load_balancer_ip`` is what ``spec.loadBalancerIP`` asked for."""

    name: str
    namespace: str
    type: str = "ClusterIP"  # ClusterIP | NodePort | LoadBalancer | ExternalName
    cluster_ip: str = ""
    selector: dict[str, str] = field(default_factory=dict)
    ports: tuple[ServicePort, ...] = ()
    session_affinity: str = "None"  # None | ClientIP
    affinity_timeout: int = 10800
    internal_local: bool = False
    external_local: bool = False
    external_name: str = ""
    load_balancer_ip: str = ""
    load_balancer_class: str = ""
    ingress_ip: str = ""
    pool: str = ""

    @property
    def key(self) -> str:
        return keys.service(self.namespace, self.name)

    @property
    def has_node_ports(self) -> bool:
        return self.type in ("NodePort", "LoadBalancer")

    @property
    def headless(self) -> bool:
        return self.cluster_ip == "None"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Service:
        d = json.loads(text)
        d["ports"] = tuple(ServicePort(**p) for p in d.get("ports", ()))
        return cls(**d)


@dataclass(frozen=True)
class AddressPool(_Json):
    """Addresses for LoadBalancer services (MetalLB's ``IPAddressPool``):
    CIDRs or ``first-last`` ranges; ``auto_assign`` false: only services that
    ask for an address of it get one; ``advertisement``: how the address is
    made reachable — ``BGP`` (announced to the nodes' external BGP peers),
    ``L2`` (one node answers ARP for it) or "" (BGP with the bgp backend, else L2)."""

    name: str
    addresses: tuple[str, ...]
    auto_assign: bool = True
    advertisement: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "addresses", tuple(self.addresses))

    def ranges(self) -> list[tuple[int, int]]:
        """Each entry as (first, last) integers; a CIDR of /30 or wider leaves
        out its network and broadcast addresses (MetalLB's avoidBuggyIPs)."""
        out = []
        for a in self.addresses:
            if "-" in a:
                lo, hi = (int(ipaddress.IPv4Address(x.strip())) for x in a.split("-", 1))
            else:
                n = ipaddress.IPv4Network(a)
                lo, hi = int(n.network_address), int(n.broadcast_address)
                if n.prefixlen <= 30:
                    lo, hi = lo + 1, hi - 1
            out.append((lo, hi))
        return out

    def holds(self, ip: str) -> bool:
        v = int(ipaddress.IPv4Address(ip))
        return any(lo <= v <= hi for lo, hi in self.ranges())

    def size(self) -> int:
        return sum(hi - lo + 1 for lo, hi in self.ranges())

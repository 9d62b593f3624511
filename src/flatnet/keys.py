"""The store's key layout, in one place: every prefix and every key builder.

All keys live under ``/flatnet/``::

    config                         the cluster's NetworkConfig (JSON)
    subnets/10.244.3.0-24          a node's subnet lease (Lease), tied to a TTL lease
    nodes/<node>                   the node's record (NodeRecord)
    ipam/10.244.3.0-24/10.244.3.7  one pod IP allocation (Allocation)
    namespaces/<name>              a Namespace (Namespace) with its labels
    pods/<namespace>/<name>        a pod as the API server would hold it (PodRecord)
    services/<namespace>/<name>    a Service (Service)
    networkpolicies/<ns>/<name>    a NetworkPolicy (flatnet.policy.model.NetworkPolicy)
    clusternetworkpolicies/<name>  a ClusterNetworkPolicy (flatnet.policy.model)
    serviceips/10.96.0.10          the claim of a cluster IP by one service
    nodeports/tcp/30080            the claim of a node port by one service
    ippools/<name>                 a LoadBalancer address pool (AddressPool)
    lbips/172.30.0.5               the claim of a LoadBalancer address by one service
    lb/<node>                      the LoadBalancer addresses the node announces (BGP, L2)
    status/<node>                  what the node's peer watcher programmed (PeerStatus)
    proxy/<node>                   what the node's service proxy programmed (ProxyStatus)
    policy/<node>                  what the node's policy table programmed (PolicyStatus)
    heartbeats/<node>              the agent is alive (Heartbeat), tied to a TTL lease of seconds

The prefixes end in ``/`` so a range over one never meets another's keys.
"""

from __future__ import annotations

import ipaddress

__all__ = [
    "CLUSTER_POLICIES",
    "CONFIG",
    "HEARTBEATS",
    "INGRESSES",
    "INGRESS_CLASSES",
    "INGRESS_STATUS",
    "LB",
    "LB_IPS",
    "POOLS",
    "IPAM",
    "NODES",
    "NAMESPACES",
    "NETWORK_POLICIES",
    "NODE_PORTS",
    "POLICY",
    "PODS",
    "PREFIX",
    "PROXY",
    "SERVICES",
    "SERVICE_IPS",
    "STATUS",
    "SUBNETS",
    "cluster_policy",
    "lb_ip",
    "lb_status",
    "pool",
    "heartbeat",
    "ipam_prefix",
    "last",
    "namespace",
    "node",
    "ingress",
    "ingress_class",
    "network_policy",
    "node_port",
    "peer_status",
    "pod",
    "policy_status",
    "proxy_status",
    "service",
    "service_ip",
    "subnet",
    "subnet_of",
]

PREFIX = "/flatnet/"
CONFIG = PREFIX + "config"
SUBNETS = PREFIX + "subnets/"
NODES = PREFIX + "nodes/"
IPAM = PREFIX + "ipam/"
NAMESPACES = PREFIX + "namespaces/"
PODS = PREFIX + "pods/"
SERVICES = PREFIX + "services/"
SERVICE_IPS = PREFIX + "serviceips/"
NODE_PORTS = PREFIX + "nodeports/"
STATUS = PREFIX + "status/"
PROXY = PREFIX + "proxy/"
NETWORK_POLICIES = PREFIX + "networkpolicies/"
CLUSTER_POLICIES = PREFIX + "clusternetworkpolicies/"
POLICY = PREFIX + "policy/"
HEARTBEATS = PREFIX + "heartbeats/"
POOLS = PREFIX + "ippools/"
LB_IPS = PREFIX + "lbips/"
LB = PREFIX + "lb/"
INGRESSES = PREFIX + "ingresses/"
INGRESS_CLASSES = PREFIX + "ingressclasses/"
INGRESS_STATUS = PREFIX + "ingress/status"  # the ingress controller's report


def _net_part(net: ipaddress.IPv4Network | str) -> str:
    n = ipaddress.IPv4Network(net)
    return f"{n.network_address}-{n.prefixlen}"


def subnet(net: ipaddress.IPv4Network | str) -> str:
    return SUBNETS + _net_part(net)


def subnet_of(key: str) -> ipaddress.IPv4Network:
    """The subnet a ``subnets/`` (or ``ipam/<subnet>/``) key names."""
    addr, plen = key.removeprefix(SUBNETS).removeprefix(IPAM).split("/")[0].split("-")
    return ipaddress.IPv4Network(f"{addr}/{plen}")


def node(name: str) -> str:
    return NODES + name


def ipam_prefix(net: ipaddress.IPv4Network | str) -> str:
    return f"{IPAM}{_net_part(net)}/"


def namespace(name: str) -> str:
    return NAMESPACES + name


def pod(namespace: str, name: str) -> str:
    return f"{PODS}{namespace}/{name}"


def service(namespace: str, name: str) -> str:
    return f"{SERVICES}{namespace}/{name}"


def network_policy(namespace: str, name: str) -> str:
    return f"{NETWORK_POLICIES}{namespace}/{name}"


def cluster_policy(name: str) -> str:
    return CLUSTER_POLICIES + name


def service_ip(ip: str) -> str:
    return SERVICE_IPS + ip


def pool(name: str) -> str:
    return POOLS + name


def lb_ip(ip: str) -> str:
    return LB_IPS + ip


def ingress(namespace: str, name: str) -> str:
    return f"{INGRESSES}{namespace}/{name}"


def ingress_class(name: str) -> str:
    return INGRESS_CLASSES + name


def lb_status(node_name: str) -> str:
    return LB + node_name


def node_port(protocol: str, port: int) -> str:
    return f"{NODE_PORTS}{protocol.lower()}/{port}"


def peer_status(node_name: str) -> str:
    return STATUS + node_name


def proxy_status(node_name: str) -> str:
    return PROXY + node_name


def policy_status(node_name: str) -> str:
    return POLICY + node_name


def heartbeat(node_name: str) -> str:
    return HEARTBEATS + node_name


def last(key: str) -> str:
    """The key's last element (a node's name under ``status/``, ``proxy/``...)."""
    return key.rsplit("/", 1)[1]

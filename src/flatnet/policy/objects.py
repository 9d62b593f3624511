"""Policies in the store, as the API server keeps them: NetworkPolicies
(``networkpolicies/<namespace>/<name>``) and ClusterNetworkPolicies
(``clusternetworkpolicies/<name>``): applied (created, configured, unchanged),
deleted, listed. Each node's agent follows them (:mod:`flatnet.policy.sync`)."""

from __future__ import annotations

from collections.abc import Iterable

from flatnet import keys
from flatnet.policy.model import ClusterNetworkPolicy, NetworkPolicy
from flatnet.store import Store

__all__ = ["apply", "delete", "key", "load_all", "load_cluster"]


def key(p: NetworkPolicy | ClusterNetworkPolicy) -> str:
    if isinstance(p, ClusterNetworkPolicy):
        return keys.cluster_policy(p.name)
    return keys.network_policy(p.namespace, p.name)


def load_all(store: Store) -> dict[str, NetworkPolicy]:
    """Every NetworkPolicy, by ``namespace/name``."""
    out = {}
    for kv in store.range(keys.NETWORK_POLICIES):
        p = NetworkPolicy.from_json(kv.value)
        out[p.ref] = p
    return out


def load_cluster(store: Store) -> dict[str, ClusterNetworkPolicy]:
    """Every ClusterNetworkPolicy, by name."""
    out = {}
    for kv in store.range(keys.CLUSTER_POLICIES):
        p = ClusterNetworkPolicy.from_json(kv.value)
        out[p.name] = p
    return out


def apply(
    store: Store, wanted: Iterable[NetworkPolicy | ClusterNetworkPolicy]
) -> list[tuple[NetworkPolicy | ClusterNetworkPolicy, str]]:
    """Each policy with kubectl's verdict: created, configured or unchanged."""
    out: list[tuple[NetworkPolicy | ClusterNetworkPolicy, str]] = []
    for p in wanted:
        kv = store.get(key(p))
        old = None if kv is None else type(p).from_json(kv.value)
        if old == p:
            out.append((p, "unchanged"))
            continue
        store.put(key(p), p.to_json())
        out.append((p, "created" if old is None else "configured"))
    return out


def delete(
    store: Store, wanted: Iterable[NetworkPolicy | ClusterNetworkPolicy]
) -> list[NetworkPolicy | ClusterNetworkPolicy]:
    """Delete these policies (by kind, namespace and name); returns those that
    were there."""
    return [p for p in wanted if store.delete(key(p))]

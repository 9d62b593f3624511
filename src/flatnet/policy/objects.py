"""NetworkPolicies in the store (``networkpolicies/<namespace>/<name>``), as the
API server keeps them: applied (created, configured, unchanged), deleted,
listed. Each node's agent follows them (:mod:`flatnet.policy.sync`)."""

from __future__ import annotations

from collections.abc import Iterable

from flatnet import keys
from flatnet.policy.model import NetworkPolicy
from flatnet.store import Store

__all__ = ["apply", "delete", "key", "load_all"]


def key(p: NetworkPolicy) -> str:
    return keys.network_policy(p.namespace, p.name)


def load_all(store: Store) -> dict[str, NetworkPolicy]:
    """Every policy, by ``namespace/name``."""
    out = {}
    for kv in store.range(keys.NETWORK_POLICIES):
        p = NetworkPolicy.from_json(kv.value)
        out[p.ref] = p
    return out


def apply(store: Store, wanted: Iterable[NetworkPolicy]) -> list[tuple[NetworkPolicy, str]]:
    """Each policy with kubectl's verdict: created, configured or unchanged."""
    have = load_all(store)
    out = []
    for p in wanted:
        old = have.get(p.ref)
        if old == p:
            out.append((p, "unchanged"))
            continue
        store.put(key(p), p.to_json())
        out.append((p, "created" if old is None else "configured"))
    return out


def delete(store: Store, refs: Iterable[tuple[str, str]]) -> list[str]:
    """Delete (namespace, name) policies; returns the ``namespace/name`` of those
    that were there."""
    return [f"{ns}/{name}" for ns, name in refs if store.delete(keys.network_policy(ns, name))]

"""Namespaces as the API server keeps them: ``default`` and ``kube-system``
always there, others created by a ``kind: Namespace`` document; an object in
a namespace that does not exist is refused, as kubectl's ``namespaces "x"
not found``; a namespace is deleted only once it is empty (flatnet does not
cascade: it says what is still inside)."""

from __future__ import annotations

import time
from collections.abc import Iterable

from flatnet import keys
from flatnet.errors import ConfigError
from flatnet.model import Namespace
from flatnet.store import Store

__all__ = ["SYSTEM", "apply", "delete", "ensure", "load_all"]

SYSTEM = ("default", "kube-system")


def load_all(store: Store) -> dict[str, Namespace]:
    return {keys.last(kv.key): Namespace.from_json(kv.value) for kv in store.range(keys.NAMESPACES)}


def ensure(store: Store) -> None:
    """``default`` and ``kube-system``, as every cluster has them."""
    for name in SYSTEM:
        store.create(keys.namespace(name), Namespace.of(name, created=time.time()).to_json())


def apply(store: Store, wanted: Iterable[Namespace]) -> list[tuple[Namespace, str]]:
    """Create or relabel; returns each with kubectl's verdict (created,
    configured, unchanged)."""
    have = load_all(store)
    out = []
    for ns in wanted:
        old = have.get(ns.name)
        if old is None:
            new = Namespace.of(ns.name, ns.labels, time.time())
            verdict = "created"
        elif old.labels == ns.labels:
            out.append((old, "unchanged"))
            continue
        else:
            new = Namespace.of(ns.name, ns.labels, old.created)
            verdict = "configured"
        store.put(new.key, new.to_json())
        out.append((new, verdict))
    return out


def delete(store: Store, names: Iterable[str]) -> list[str]:
    """Delete empty namespaces; returns those deleted (the others were not
    there). A system namespace or one that still holds objects is refused."""
    gone = []
    for name in names:
        if name in SYSTEM:
            raise ConfigError(f"namespace '{name}' cannot be deleted: every cluster has it")
        inside = [
            f"{kind}/{keys.last(kv.key)}"
            for kind, prefix in (
                ("pod", keys.PODS),
                ("service", keys.SERVICES),
                ("networkpolicy", keys.NETWORK_POLICIES),
            )
            for kv in store.range(f"{prefix}{name}/")
        ]
        if inside:
            raise ConfigError(
                f"namespace '{name}' still holds {', '.join(inside)}: delete them first"
            )
        if store.delete(keys.namespace(name)):
            gone.append(name)
    return gone

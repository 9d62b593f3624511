"""Ingresses and IngressClasses in the store, as the API server keeps them
(``ingresses/<namespace>/<name>``, ``ingressclasses/<name>``): applied
(created, configured, unchanged — an Ingress keeps its creation time, which
decides conflicts), deleted, listed. The controller follows them."""

from __future__ import annotations

import time
from collections.abc import Iterable

from flatnet import keys
from flatnet.ingress.model import Ingress, IngressClass
from flatnet.store import Store

__all__ = ["apply", "apply_classes", "delete", "load_all", "load_classes"]


def load_all(store: Store) -> dict[str, Ingress]:
    """Every Ingress, by ``namespace/name``."""
    out = {}
    for kv in store.range(keys.INGRESSES):
        i = Ingress.from_json(kv.value)
        out[i.ref] = i
    return out


def load_classes(store: Store) -> dict[str, IngressClass]:
    return {
        c.name: c
        for c in (IngressClass.from_json(kv.value) for kv in store.range(keys.INGRESS_CLASSES))
    }


def apply(store: Store, wanted: Iterable[Ingress]) -> list[tuple[Ingress, str]]:
    """Each Ingress with kubectl's verdict: created, configured or unchanged."""
    out = []
    for i in wanted:
        k = keys.ingress(i.namespace, i.name)
        kv = store.get(k)
        old = None if kv is None else Ingress.from_json(kv.value)
        new = i.with_created(old.created if old is not None else time.time())
        if old == new:
            out.append((new, "unchanged"))
            continue
        store.put(k, new.to_json())
        out.append((new, "created" if old is None else "configured"))
    return out


def apply_classes(store: Store, wanted: Iterable[IngressClass]) -> list[tuple[IngressClass, str]]:
    out = []
    for c in wanted:
        kv = store.get(keys.ingress_class(c.name))
        old = None if kv is None else IngressClass.from_json(kv.value)
        if old == c:
            out.append((c, "unchanged"))
            continue
        store.put(keys.ingress_class(c.name), c.to_json())
        out.append((c, "created" if old is None else "configured"))
    return out


def delete(
    store: Store, ingresses: Iterable[Ingress], classes: Iterable[IngressClass] = ()
) -> list[str]:
    """Delete these (by namespace and name); returns the refs of those that were there."""
    gone = [i.ref for i in ingresses if store.delete(keys.ingress(i.namespace, i.name))]
    return gone + [c.name for c in classes if store.delete(keys.ingress_class(c.name))]

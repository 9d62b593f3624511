"""The cluster's services and pods as the store holds them, kept current from a
listing and then from watch events: the one view the service proxy, the DNS
server and ``flatnet get services`` read (pure: data in, data out).

Pods are indexed by (namespace, label, value), so a selector is answered by
intersecting small sets, and a pod event looks only at the services of its
own namespace. Endpoints are the ready pods a service selects, per port, with
a named ``targetPort`` resolved on each pod's container ports.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from flatnet import keys
from flatnet.model import PodRecord, Service, ServicePort
from flatnet.store.base import KV, Event

__all__ = ["ClusterView", "Endpoint", "PodIndex", "ViewFollower", "endpoints"]


@dataclass(frozen=True)
class Endpoint:
    ip: str
    port: int
    node: str
    pod: str  # namespace/name


class PodIndex:
    """Pods by key, and by (namespace, label, value) for selector lookups."""

    def __init__(self) -> None:
        self.pods: dict[str, PodRecord] = {}
        self._by_label: dict[tuple[str, str, str], set[str]] = {}

    def put(self, key: str, pod: PodRecord) -> PodRecord | None:
        old = self.remove(key)
        self.pods[key] = pod
        for k, v in pod.labels.items():
            self._by_label.setdefault((pod.namespace, k, v), set()).add(key)
        return old

    def remove(self, key: str) -> PodRecord | None:
        old = self.pods.pop(key, None)
        if old is not None:
            for k, v in old.labels.items():
                keys = self._by_label.get((old.namespace, k, v))
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del self._by_label[(old.namespace, k, v)]
        return old

    def select(self, namespace: str, selector: dict[str, str]) -> list[PodRecord]:
        if not selector:
            return []
        sets = [self._by_label.get((namespace, k, v), set()) for k, v in selector.items()]
        keys = set.intersection(*sorted(sets, key=len))
        return [self.pods[k] for k in sorted(keys)]


class ClusterView:
    """Services and pods as the store holds them (``services/`` and ``pods/``),
    kept current from a listing and then from watch events."""

    SERVICES = keys.SERVICES
    PODS = keys.PODS

    def __init__(self, kvs: Iterable[KV] = ()) -> None:
        self.services: dict[str, Service] = {}
        self.by_ns: dict[str, set[str]] = {}  # namespace -> service keys
        self.pods = PodIndex()
        for kv in kvs:
            self._put(kv.key, kv.value)

    def _put(self, key: str, value: str | None) -> PodRecord | None:
        """Store (or with None remove) one object; returns the pod it replaced."""
        if key.startswith(self.SERVICES):
            old_svc = self.services.pop(key, None)
            if old_svc is not None:
                self.by_ns[old_svc.namespace].discard(key)
            if value is not None:
                svc = Service.from_json(value)
                self.services[key] = svc
                self.by_ns.setdefault(svc.namespace, set()).add(key)
            return None
        if value is None:
            return self.pods.remove(key)
        return self.pods.put(key, PodRecord.from_json(value))

    def apply(self, ev: Event) -> tuple[set[str], PodRecord | None, PodRecord | None]:
        """Take one event; returns the service keys it concerns and, for a pod,
        its old and new record."""
        old = self._put(ev.key, ev.value if ev.type == "put" else None)
        if ev.key.startswith(self.SERVICES):
            return {ev.key}, None, None
        new = self.pods.pods.get(ev.key)
        return self.selecting(old) | self.selecting(new), old, new

    def selecting(self, pod: PodRecord | None) -> set[str]:
        """The services whose selector matches ``pod``."""
        if pod is None:
            return set()
        return {
            key
            for key in self.by_ns.get(pod.namespace, ())
            if (sel := self.services[key].selector) and sel.items() <= pod.labels.items()
        }

    def endpoints(self, svc: Service) -> dict[ServicePort, list[Endpoint]]:
        return endpoints(svc, self.pods.select(svc.namespace, svc.selector))


def _target(p: ServicePort, pod: PodRecord) -> int:
    if isinstance(p.target_port, int):
        return p.target_port
    named = pod.ports.get(p.target_port)
    if named is None or named[1] != p.protocol:
        return 0  # the pod has no such port: not an endpoint of this port
    return int(named[0])


def endpoints(svc: Service, pods: Iterable[PodRecord]) -> dict[ServicePort, list[Endpoint]]:
    """Ready endpoints per service port (pods without a named target port skipped)."""
    ready = [p for p in pods if p.serving and p.mode in ("bridge", "host")]
    out: dict[ServicePort, list[Endpoint]] = {}
    for sp in svc.ports:
        eps = []
        for pod in ready:
            port = _target(sp, pod)
            if port:
                eps.append(Endpoint(pod.ip, port, pod.node, f"{pod.namespace}/{pod.name}"))
        out[sp] = sorted(eps, key=lambda e: (e.ip, e.port))
    return out


class ViewFollower:
    """What a follower of the store (:func:`flatnet.store.follow.follow`) that
    needs services and pods shares: ``listed`` and ``changed`` keep
    ``self.view`` current, hand every other key to ``_take`` (``None``: it was
    deleted; ``_reset`` clears what ``_take`` fills before a new listing) and
    call ``sync`` after each batch."""

    view: ClusterView

    def _reset(self) -> None:
        raise NotImplementedError

    def _take(self, key: str, value: str | None) -> None:
        raise NotImplementedError

    def sync(self) -> None:
        raise NotImplementedError

    def listed(self, kvs: list[KV], rev: int) -> None:
        self._reset()
        for kv in kvs:
            if not kv.key.startswith((keys.SERVICES, keys.PODS)):
                self._take(kv.key, kv.value)
        self.view = ClusterView(kv for kv in kvs if kv.key.startswith((keys.SERVICES, keys.PODS)))
        self.sync()

    def changed(self, events: list[Event]) -> None:
        for ev in events:
            if ev.key.startswith((keys.SERVICES, keys.PODS)):
                self.view.apply(ev)
            else:
                self._take(ev.key, ev.value if ev.type == "put" else None)
        self.sync()

"""What the controller wants HAProxy to hold, from the store's objects (pure).

``select``: the Ingresses of this controller's class — those that name it,
and those that name none when it is the default IngressClass. ``desired``:
their routing table (:mod:`flatnet.ingress.routes`) as HAProxy's maps, one
backend per Service port a route names, each with the ready endpoints of
that port (by number or name; a missing Service or port: no servers, so
HAProxy answers 503) and its slot count, which only grows (fewer endpoints
never cost a reload). ``Desired.structure`` is what needs a reload when it
changes; everything else is set at runtime.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from flatnet import keys
from flatnet.ingress.haproxy import NOT_FOUND, Backend, backend_name, maps, slots_for
from flatnet.ingress.model import Backend as IngressBackend
from flatnet.ingress.model import Ingress, IngressClass
from flatnet.ingress.routes import Target, table
from flatnet.view import ClusterView

__all__ = ["Desired", "desired", "numbered", "select", "servers"]


@dataclass(frozen=True)
class Desired:
    backends: tuple[Backend, ...]
    default: str
    maps: dict[str, list[tuple[str, str]]]
    conflicts: tuple[str, ...]

    @property
    def structure(self) -> tuple[tuple[tuple[str, int], ...], str]:
        return tuple((b.name, b.slots) for b in self.backends), self.default


def select(
    ingresses: Iterable[Ingress], classes: Iterable[IngressClass], mine: str
) -> list[Ingress]:
    default = any(c.name == mine and c.default for c in classes)
    return [i for i in ingresses if i.class_name == mine or (not i.class_name and default)]


def servers(view: ClusterView, t: Target) -> list[tuple[str, int]]:
    """The ready endpoints of the target's Service port, in a stable order."""
    svc = view.services.get(keys.service(t.namespace, t.service))
    if svc is None:
        return []
    for port, eps in view.endpoints(svc).items():
        if port.port == t.port or (port.name and port.name == t.port):
            return sorted({(e.ip, e.port) for e in eps})
    return []


def numbered(ing: Ingress, view: ClusterView) -> Ingress:
    """``ing`` with each backend's port named by number where its Service
    says which (``http`` and ``80`` of one Service are one HAProxy backend)."""

    def num(b: IngressBackend) -> IngressBackend:
        svc = view.services.get(keys.service(ing.namespace, b.service))
        if isinstance(b.port, str) and svc is not None:
            for p in svc.ports:
                if p.name == b.port:
                    return IngressBackend(b.service, p.port)
        return b

    rules = tuple(
        replace(r, paths=tuple(replace(p, backend=num(p.backend)) for p in r.paths))
        for r in ing.rules
    )
    default = num(ing.default_backend) if ing.default_backend else None
    return replace(ing, rules=rules, default_backend=default)


def desired(
    ingresses: Iterable[Ingress], view: ClusterView, slots_now: dict[str, int] | None = None
) -> Desired:
    t = table(numbered(i, view) for i in ingresses)
    now = slots_now or {}
    backends: dict[str, Backend] = {}
    for target in sorted(t.targets, key=backend_name):
        name = backend_name(target)
        got = tuple(servers(view, target))
        backends[name] = Backend(name, max(now.get(name, 0), slots_for(len(got))), got)
    default = backend_name(t.default) if t.default is not None else NOT_FOUND
    return Desired(tuple(backends.values()), default, maps(t), tuple(t.conflicts))

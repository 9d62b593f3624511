"""The routing table a set of Ingresses implies, and its reference matcher.

Keys are what HAProxy looks up (:mod:`flatnet.ingress.haproxy`), so the
matcher here and the proxy agree by construction:

- ``exact``: ``host@path`` (a string match);
- ``prefix``: ``host@`` + the path without trailing slashes + ``/``, looked up
  with ``host@`` + the request's path + ``/`` as the longest key it begins
  with — which is
  Prefix's whole-element rule (``/aaa/bbb`` matches ``/aaa/bbb/ccc`` and
  ``/aaa/bbb/``, not ``/aaa/bbbxyz``; ``/`` matches everything);
- the host part is the request's host (lower case, no port) if some rule
  names it, else ``*.`` and its parent if a wildcard rule does (one label),
  else "" (the rules without a host: keys ``@path``). A host that has rules but no path that
  matches goes to the default backend, not to the host-less rules.

Precedence: Exact before Prefix (an Exact match is never shorter than a
Prefix match of the same request), longest prefix first. Two Ingresses
claiming one key, or both a default backend: the oldest wins (creation time,
then namespace/name, as ingress-nginx), and the other is reported.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from flatnet.ingress.model import Backend, Ingress

__all__ = ["Table", "Target", "host_key", "match", "table"]


@dataclass(frozen=True)
class Target:
    """A Service port of a namespace, and the Ingress that routes to it."""

    namespace: str
    service: str
    port: int | str
    ingress: str  # namespace/name


@dataclass
class Table:
    exact: dict[str, Target] = field(default_factory=dict)
    prefix: dict[str, Target] = field(default_factory=dict)
    hosts: set[str] = field(default_factory=set)  # hosts (and *.wildcards) with rules
    default: Target | None = None
    conflicts: list[str] = field(default_factory=list)

    @property
    def targets(self) -> set[Target]:
        out = {*self.exact.values(), *self.prefix.values()}
        return out | ({self.default} if self.default else set())


def table(ingresses: Iterable[Ingress]) -> Table:
    """The routes of ``ingresses`` (all of one class), oldest first."""
    t = Table()
    for ing in sorted(ingresses, key=lambda i: (i.created, i.namespace, i.name)):
        if ing.default_backend is not None:
            if t.default is None:
                t.default = _target(ing, ing.default_backend)
            else:
                t.conflicts.append(
                    f"ingress {ing.ref}: defaultBackend ignored: {t.default.ingress}'s is older"
                )
        for rule in ing.rules:
            if rule.host:
                t.hosts.add(rule.host)
            for p in rule.paths:
                routes, key = (
                    (t.exact, f"{rule.host}@{p.path}")
                    if p.type == "Exact"
                    else (t.prefix, f"{rule.host}@{p.path.rstrip('/')}/")
                )
                held = routes.get(key)
                if held is None:
                    routes[key] = _target(ing, p.backend)
                elif held.ingress != ing.ref or held != _target(ing, p.backend):
                    t.conflicts.append(
                        f"ingress {ing.ref}: host '{rule.host or '*'}' path {p.path} "
                        f"({p.type}) ignored: {held.ingress} routes it (older)"
                    )
    return t


def host_key(t: Table, host: str) -> str:
    """The host part of a request's keys (see the module's docstring)."""
    h = host.split(":", 1)[0].lower().rstrip(".")
    if h in t.hosts:
        return h
    parent = h.split(".", 1)
    if len(parent) == 2 and f"*.{parent[1]}" in t.hosts:
        return f"*.{parent[1]}"
    return ""


def match(t: Table, host: str, path: str) -> Target | None:
    """Where a request goes (None: nowhere, a 404)."""
    h = host_key(t, host)
    if (hit := t.exact.get(f"{h}@{path}")) is not None:
        return hit
    key = f"{h}@{path}/"
    best = max((k for k in t.prefix if key.startswith(k)), key=len, default=None)
    return t.prefix[best] if best is not None else t.default


def _target(ing: Ingress, b: Backend) -> Target:
    return Target(ing.namespace, b.service, b.port, ing.ref)

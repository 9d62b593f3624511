"""Ingress (``networking.k8s.io/v1``) as plain frozen data.

A rule's ``host`` is "" (every host), a name, or ``*.`` and a name (exactly
one more label); a path's ``type`` is ``Exact``, ``Prefix`` (whole path
elements; a trailing slash is ignored) or ``ImplementationSpecific`` (its
meaning is the controller's: flatnet's is Prefix's). A backend names a
Service of the Ingress's namespace and one of its ports, by number or by name.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Backend", "HTTPPath", "Ingress", "IngressClass", "Rule", "TLS"]


@dataclass(frozen=True)
class Backend:
    service: str
    port: int | str  # number, or the Service port's name


@dataclass(frozen=True)
class HTTPPath:
    path: str
    type: str  # Exact | Prefix | ImplementationSpecific
    backend: Backend


@dataclass(frozen=True)
class Rule:
    host: str  # "": every host
    paths: tuple[HTTPPath, ...] = ()


@dataclass(frozen=True)
class TLS:
    hosts: tuple[str, ...]
    secret: str  # a kubernetes.io/tls Secret of the Ingress's namespace


@dataclass(frozen=True)
class Ingress:
    name: str
    namespace: str = "default"
    class_name: str = ""  # "": the default IngressClass's
    rules: tuple[Rule, ...] = ()
    default_backend: Backend | None = None
    tls: tuple[TLS, ...] = ()
    created: float = 0.0  # conflicts: the oldest wins (ingress-nginx)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Ingress:
        d = json.loads(text)
        return cls(
            name=d["name"],
            namespace=d["namespace"],
            class_name=d["class_name"],
            rules=tuple(Rule(r["host"], tuple(_path(p) for p in r["paths"])) for r in d["rules"]),
            default_backend=_backend(d["default_backend"]),
            tls=tuple(TLS(tuple(t["hosts"]), t["secret"]) for t in d["tls"]),
            created=d["created"],
        )

    def with_created(self, created: float) -> Ingress:
        return Ingress(**{**_fields(self), "created": created})


@dataclass(frozen=True)
class IngressClass:
    """Which controller an Ingress class belongs to; ``default``: the class of
    Ingresses that name none (``ingressclass.kubernetes.io/is-default-class``)."""

    name: str
    controller: str
    default: bool = False
    created: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> IngressClass:
        return cls(**json.loads(text))


def _fields(o: Any) -> dict[str, Any]:
    return {k: getattr(o, k) for k in o.__dataclass_fields__}


def _backend(d: dict[str, Any] | None) -> Backend | None:
    return None if d is None else Backend(d["service"], d["port"])


def _path(d: dict[str, Any]) -> HTTPPath:
    b = _backend(d["backend"])
    assert b is not None
    return HTTPPath(d["path"], d["type"], b)

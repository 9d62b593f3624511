"""Ingress and IngressClass documents (``networking.k8s.io/v1``), checked as
the API server checks them; every mistake is ``FILE:LINE: field: problem``.

Refused by name rather than ignored: ``resource`` backends (flatnet routes
only to Services), an Ingress with neither rules nor a default backend.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, ClassVar, Literal

import yaml
from pydantic import Field, StrictInt, StrictStr, field_validator, model_validator

from flatnet.ingress.model import TLS, Backend, HTTPPath, Ingress, IngressClass, Rule
from flatnet.manifest import Known, Meta, check

__all__ = ["CONTROLLER", "DEFAULT_CLASS", "ingress", "ingress_class"]

CONTROLLER = "flatnet.io/haproxy"  # what flatnet's IngressClass names as its controller
DEFAULT_CLASS = "ingressclass.kubernetes.io/is-default-class"
_LEGACY_CLASS = "kubernetes.io/ingress.class"
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_HOST = re.compile(rf"^(\*\.)?{_DNS_LABEL}(\.{_DNS_LABEL})*$")


def _host(v: str) -> str:
    if not v:
        return v
    try:
        ipaddress.ip_address(v)
    except ValueError:
        pass
    else:
        raise ValueError(f"'{v}' is an IP address; a host must be a DNS name")
    if ":" in v:
        raise ValueError(f"'{v}': a host has no port")
    if not _HOST.match(v) or len(v) > 253:
        raise ValueError(
            f"'{v}' is not a lower-case DNS name (a wildcard is '*.' and a name, as *.example.com)"
        )
    return v


class _Port(Known):
    number: StrictInt | None = Field(default=None, ge=1, le=65535)
    name: StrictStr | None = None

    @model_validator(mode="after")
    def _one(self) -> _Port:
        if (self.number is None) == (self.name is None):
            raise ValueError("give exactly one of 'number' and 'name'")
        return self


class _ServiceBackend(Known):
    name: StrictStr = Field(min_length=1)
    port: _Port


class _Backend(Known):
    service: _ServiceBackend | None = None
    resource: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _service_only(self) -> _Backend:
        if self.resource is not None:
            raise ValueError("'resource' backends are not supported (only 'service')")
        if self.service is None:
            raise ValueError("a backend needs 'service' (name and port)")
        return self

    def model(self) -> Backend:
        assert self.service is not None
        p = self.service.port
        return Backend(self.service.name, p.number if p.number is not None else p.name or "")


class _Path(Known):
    path: StrictStr = "/"
    pathType: Literal["Exact", "Prefix", "ImplementationSpecific"]  # noqa: N815
    backend: _Backend

    @model_validator(mode="after")
    def _absolute(self) -> _Path:
        if not self.path.startswith("/"):
            raise ValueError(f"path '{self.path}' must begin with '/'")
        if self.pathType != "ImplementationSpecific" and re.search(r"//|/\.\.?(/|$)", self.path):
            raise ValueError(f"path '{self.path}' has an empty, '.' or '..' element")
        return self


class _HTTP(Known):
    paths: list[_Path] = Field(min_length=1)


class _Rule(Known):
    host: StrictStr = ""
    http: _HTTP | None = None

    _check_host = field_validator("host")(lambda v: _host(v))


class _TLS(Known):
    hosts: list[StrictStr] = []
    secretName: StrictStr = ""  # noqa: N815

    _check_hosts = field_validator("hosts")(lambda v: [_host(h) for h in v])


class _Spec(Known):
    ingressClassName: StrictStr | None = None  # noqa: N815
    defaultBackend: _Backend | None = None  # noqa: N815
    rules: list[_Rule] = []
    tls: list[_TLS] = []

    @model_validator(mode="after")
    def _something(self) -> _Spec:
        if self.defaultBackend is None and not self.rules:
            raise ValueError("give 'rules' or a 'defaultBackend' (or both)")
        return self


class _Ingress(Known):
    apiVersion: Literal["networking.k8s.io/v1"]  # noqa: N815
    kind: Literal["Ingress"]
    metadata: Meta
    spec: _Spec
    _ignored: ClassVar[tuple[str, ...]] = ("status",)


def ingress(data: Any, node: yaml.Node, path: str) -> Ingress:
    m: _Ingress = check(_Ingress, data, node, path)
    s = m.spec
    cls = s.ingressClassName or m.metadata.annotations.get(_LEGACY_CLASS, "")
    return Ingress(
        name=m.metadata.name,
        namespace=m.metadata.namespace,
        class_name=cls,
        rules=tuple(
            Rule(
                r.host,
                tuple(HTTPPath(p.path, p.pathType, p.backend.model()) for p in r.http.paths)
                if r.http
                else (),
            )
            for r in s.rules
        ),
        default_backend=s.defaultBackend.model() if s.defaultBackend else None,
        tls=tuple(TLS(tuple(t.hosts), t.secretName) for t in s.tls),
    )


class _ClassSpec(Known):
    controller: StrictStr = Field(min_length=1)
    parameters: dict[str, Any] | None = None


class _ClassMeta(Meta):
    namespace: str = ""  # cluster-wide


class _IngressClass(Known):
    apiVersion: Literal["networking.k8s.io/v1"]  # noqa: N815
    kind: Literal["IngressClass"]
    metadata: _ClassMeta
    spec: _ClassSpec

    @field_validator("metadata")
    @classmethod
    def _cluster_wide(cls, v: _ClassMeta) -> _ClassMeta:
        if v.namespace:
            raise ValueError("namespace: an IngressClass is cluster-wide; remove it")
        return v


def ingress_class(data: Any, node: yaml.Node, path: str) -> IngressClass:
    m: _IngressClass = check(_IngressClass, data, node, path)
    flag = m.metadata.annotations.get(DEFAULT_CLASS, "false")
    return IngressClass(m.metadata.name, m.spec.controller, flag == "true")

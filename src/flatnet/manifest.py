"""Kubernetes manifests as users write them: YAML documents checked with line numbers.

``docs(text, path)`` splits a file into (YAML node, data) pairs; ``check`` validates
one against a pydantic model and reports each mistake as ``FILE:LINE:
field.path: what is wrong`` — an unknown field too, with the known field it
most looks like (Kubernetes fields flatnet does not use, such as ``image``,
are accepted and ignored); ``service(...)`` turns a ``v1 Service`` into
:class:`~flatnet.model.Service` (everything that can be checked without the
store: the cluster IP range and conflicts are checked when it is applied);
``objects(...)`` reads a file's Namespaces, Pods and Services (what ``flatnet
apply`` and a lab file hold) into a :class:`Manifest`, reporting every
mistake of the file at once (:class:`~flatnet.errors.ManifestErrors`).
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import types
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from flatnet.errors import LabFileError, ManifestErrors
from flatnet.model import AddressPool, Namespace, Service, ServicePort

if TYPE_CHECKING:
    from flatnet.ingress.model import Ingress, IngressClass

__all__ = [
    "AGNHOST_PORT",
    "KINDS",
    "Known",
    "MODE_ANNOTATION",
    "Manifest",
    "Meta",
    "PORT_NAME",
    "Pod",
    "check",
    "docs",
    "line_of",
    "objects",
    "pod_ref",
    "ref_name",
    "port_or_name",
    "service",
]

_LABEL = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"
_SVC_NAME = r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$"  # DNS-1035 label
PORT_NAME = r"^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$"  # IANA service name, <= 15


def docs(text: str, path: str) -> list[tuple[yaml.Node, Any]]:
    loader = yaml.SafeLoader(text)
    out: list[tuple[yaml.Node, Any]] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            assert node is not None
            out.append((node, loader.construct_document(node)))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise LabFileError(
            path, mark.line + 1 if mark else None, f"not valid YAML: {getattr(e, 'problem', e)}"
        ) from None
    finally:
        loader.dispose()
    return [(n, d) for n, d in out if d is not None]


def line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the YAML node at path ``loc`` (as deep as it exists)."""
    best = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == part), None)
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            node = node.value[part]
        else:
            break
        if node is None:
            break
        best = node.start_mark.line + 1
    return best


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else ("." if out else "") + str(p)
    return out or "document"


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that holds the field at ``loc`` (list indexes skipped)."""
    for part in loc:
        if isinstance(part, int):
            continue
        f = next((f for n, f in model.model_fields.items() if part in (n, f.alias)), None)
        if f is None:
            return None
        sub = _inner_model(f.annotation)
        if sub is None:
            return None
        model = sub
    return model


def _inner_model(ann: Any) -> type[BaseModel] | None:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    if isinstance(ann, types.UnionType) or typing.get_origin(ann) is not None:
        for a in typing.get_args(ann):
            if (m := _inner_model(a)) is not None:
                return m
    return None


def _message(model: type[BaseModel], err: Any, loc: tuple[Any, ...]) -> str:
    if err["type"] != "extra_forbidden":
        return str(err["msg"]).removeprefix("Value error, ")
    holder = _model_at(model, loc[:-1])
    known = [f.alias or n for n, f in holder.model_fields.items()] if holder else []
    known += list(getattr(holder, "_ignored", ()))
    near = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
    return "unknown field" + (f" (did you mean '{near[0]}'?)" if near else "")


def _problems(
    e: ValidationError, model: type[BaseModel], node: yaml.Node, path: str
) -> list[LabFileError]:
    """Every mistake pydantic found in one document, as ``FILE:LINE: field: problem``."""
    out = []
    for err in e.errors():
        loc = tuple(
            p for p in err["loc"] if not str(p).startswith("function-") and p not in ("int", "str")
        )
        line = line_of(node, loc)
        out.append(LabFileError(path, line, f"{_dotted(loc)}: {_message(model, err, loc)}"))
    return out


def check(model: type[BaseModel], data: Any, node: yaml.Node, path: str) -> Any:
    """The document as ``model``; its mistakes, all of them, raised together."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ManifestErrors(_problems(e, model, node, path)) from None


class Known(BaseModel):
    """Unknown fields are mistakes; the Kubernetes fields flatnet has no use
    for (``_ignored``) are accepted and dropped."""

    model_config = ConfigDict(extra="forbid")
    _ignored: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _drop_ignored(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if k not in cls._ignored}
        return data


class Meta(Known):
    name: str = Field(pattern=_SVC_NAME, max_length=63)
    namespace: str = Field(default="default", pattern=_LABEL, max_length=63)
    labels: dict[StrictStr, StrictStr] = {}
    annotations: dict[StrictStr, StrictStr] = {}
    _ignored: ClassVar[tuple[str, ...]] = (  # accepted, not used
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "generation",
        "generateName",
        "ownerReferences",
        "finalizers",
        "managedFields",
    )


def port_or_name(v: int | str | None) -> int | str | None:
    """A port as Kubernetes takes it: a number 1..65535 or a container port's name."""
    if isinstance(v, int) and not 1 <= v <= 65535:
        raise ValueError(f"{v} is out of range 1..65535")
    if isinstance(v, str) and not (re.match(PORT_NAME, v) and re.search("[a-z]", v)):
        raise ValueError(f"'{v}' is neither a port number nor a container port name")
    return v


class _Port(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(default="", pattern=r"^$|" + PORT_NAME)
    protocol: Literal["TCP", "UDP"] = "TCP"
    port: StrictInt = Field(ge=1, le=65535)
    targetPort: StrictInt | StrictStr | None = None  # noqa: N815
    nodePort: StrictInt | None = Field(default=None, ge=30000, le=32767)  # noqa: N815
    appProtocol: str | None = None  # noqa: N815

    _target = field_validator("targetPort")(lambda v: port_or_name(v))


class _ClientIP(BaseModel):
    timeoutSeconds: StrictInt = Field(default=10800, ge=1, le=86400)  # noqa: N815


class _AffinityConfig(BaseModel):
    clientIP: _ClientIP = _ClientIP()  # noqa: N815


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"] = "ClusterIP"
    clusterIP: StrictStr | None = None  # noqa: N815
    loadBalancerIP: StrictStr | None = None  # noqa: N815
    loadBalancerClass: StrictStr | None = None  # noqa: N815
    allocateLoadBalancerNodePorts: bool | None = None  # noqa: N815
    clusterIPs: list[StrictStr] | None = None  # noqa: N815
    selector: dict[StrictStr, StrictStr] | None = None
    ports: list[_Port] = []
    sessionAffinity: Literal["None", "ClientIP"] = "None"  # noqa: N815
    sessionAffinityConfig: _AffinityConfig = _AffinityConfig()  # noqa: N815
    internalTrafficPolicy: Literal["Cluster", "Local"] = "Cluster"  # noqa: N815
    externalTrafficPolicy: Literal["Cluster", "Local"] | None = None  # noqa: N815
    externalName: str | None = Field(default=None, pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]*)$")  # noqa: N815
    ipFamilies: list[Literal["IPv4"]] | None = None  # noqa: N815
    ipFamilyPolicy: Literal["SingleStack"] | None = None  # noqa: N815

    @field_validator("clusterIP")
    @classmethod
    def _ip(cls, v: str | None) -> str | None:
        if v in (None, "", "None"):
            return v
        try:
            ipaddress.IPv4Address(v)
        except ValueError:
            raise ValueError(f"'{v}' is not an IPv4 address or None") from None
        return v

    @field_validator("loadBalancerIP")
    @classmethod
    def _lb_ip(cls, v: str | None) -> str | None:
        if v:
            try:
                ipaddress.IPv4Address(v)
            except ValueError:
                raise ValueError(f"'{v}' is not an IPv4 address") from None
        return v

    @model_validator(mode="after")
    def _whole(self) -> _Spec:
        if self.type == "ExternalName":
            if not self.externalName:
                raise ValueError("externalName: required for type ExternalName")
            if self.clusterIP not in (None, "", "None"):
                raise ValueError("clusterIP: must be empty for type ExternalName")
            return self
        if not self.ports and self.clusterIP != "None":
            raise ValueError("ports: a service needs at least one port")
        names = [p.name for p in self.ports]
        if len(self.ports) > 1 and "" in names:
            raise ValueError(f"ports[{names.index('')}].name: required when there are several")
        for i, p in enumerate(self.ports):
            if names.count(p.name) > 1 and p.name:
                raise ValueError(f"ports[{i}].name: '{p.name}' is used twice")
            if [(q.port, q.protocol) for q in self.ports].count((p.port, p.protocol)) > 1:
                raise ValueError(f"ports[{i}].port: {p.port}/{p.protocol} is used twice")
            if p.nodePort is not None and self.type not in ("NodePort", "LoadBalancer"):
                raise ValueError(f"ports[{i}].nodePort: only for type NodePort or LoadBalancer")
        if self.type in ("NodePort", "LoadBalancer") and self.clusterIP == "None":
            raise ValueError(f"clusterIP: a {self.type} service cannot be headless")
        if self.externalTrafficPolicy == "Local" and self.type not in ("NodePort", "LoadBalancer"):
            raise ValueError(
                "externalTrafficPolicy: Local is only for type NodePort or LoadBalancer"
            )
        if self.type != "LoadBalancer":
            for f in ("loadBalancerIP", "loadBalancerClass"):
                if getattr(self, f):
                    raise ValueError(f"{f}: only for type LoadBalancer")
        return self


class _Service(BaseModel):
    model_config = ConfigDict(extra="forbid")
    apiVersion: Literal["v1"]  # noqa: N815
    kind: Literal["Service"]
    metadata: Meta
    spec: _Spec
    status: dict[str, Any] | None = None


def service(data: Any, node: yaml.Node, path: str) -> Service:
    m: _Service = check(_Service, data, node, path)
    s = m.spec
    ports = tuple(
        ServicePort(
            port=p.port,
            protocol=p.protocol,
            name=p.name,
            target_port=p.targetPort if p.targetPort is not None else p.port,
            node_port=p.nodePort or 0,
        )
        for p in s.ports
    )
    return Service(
        name=m.metadata.name,
        namespace=m.metadata.namespace,
        type=s.type,
        cluster_ip="" if s.type == "ExternalName" else (s.clusterIP or ""),
        selector=dict(s.selector or {}),
        ports=ports,
        session_affinity=s.sessionAffinity,
        affinity_timeout=s.sessionAffinityConfig.clientIP.timeoutSeconds,
        internal_local=s.internalTrafficPolicy == "Local",
        external_local=s.externalTrafficPolicy == "Local",
        external_name=s.externalName or "",
        load_balancer_ip=s.loadBalancerIP or "",
        load_balancer_class=s.loadBalancerClass or "",
    )


def _pool_entry(v: str) -> str:
    """A pool entry: a CIDR, or a range ``first-last`` of IPv4 addresses."""
    try:
        if "-" in v:
            lo, hi = (ipaddress.IPv4Address(x.strip()) for x in v.split("-", 1))
            if lo > hi:
                raise ValueError(f"'{v}': the range ends before it starts")
            return f"{lo}-{hi}"
        return str(ipaddress.IPv4Network(v, strict=True))
    except ValueError as e:
        raise ValueError(f"'{v}' is neither a CIDR nor a range first-last ({e})") from None


class _PoolSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    addresses: list[StrictStr] = Field(min_length=1)
    autoAssign: bool = True  # noqa: N815
    advertisement: Literal["BGP", "L2"] | None = None

    _entries = field_validator("addresses")(lambda v: [_pool_entry(x) for x in v])


class _Pool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    apiVersion: Literal["flatnet.io/v1alpha1"]  # noqa: N815
    kind: Literal["IPAddressPool"]
    metadata: Meta
    spec: _PoolSpec


def pool(data: Any, node: yaml.Node, path: str) -> AddressPool:
    m: _Pool = check(_Pool, data, node, path)  # cluster-wide: a namespace is ignored
    return AddressPool(
        m.metadata.name, tuple(m.spec.addresses), m.spec.autoAssign, m.spec.advertisement or ""
    )


MODE_ANNOTATION = "flatnet.io/network-mode"


class _PodMeta(Meta):
    name: str = Field(pattern=r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$", max_length=40)


class _ContainerPort(Known):
    name: str = Field(default="", pattern=r"^$|^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")
    containerPort: int = Field(ge=1, le=65535)  # noqa: N815
    protocol: Literal["TCP", "UDP"] = "TCP"
    _ignored: ClassVar[tuple[str, ...]] = (  # accepted, not used
        "hostPort",
        "hostIP",
    )


class _TCPSocket(Known):
    port: StrictInt | StrictStr
    _ignored: ClassVar[tuple[str, ...]] = (  # accepted, not used
        "host",
    )


class _Probe(Known):
    tcpSocket: _TCPSocket  # noqa: N815
    _ignored: ClassVar[tuple[str, ...]] = (  # accepted, not used
        "initialDelaySeconds",
        "periodSeconds",
        "timeoutSeconds",
        "successThreshold",
        "failureThreshold",
    )


class _Container(Known):
    name: str
    ports: list[_ContainerPort] = []
    command: list[str] | None = None
    args: list[str] | None = None
    readinessProbe: _Probe | None = None  # noqa: N815
    _ignored: ClassVar[tuple[str, ...]] = (  # accepted, not used
        "image",
        "imagePullPolicy",
        "env",
        "envFrom",
        "resources",
        "volumeMounts",
        "workingDir",
        "securityContext",
        "livenessProbe",
        "startupProbe",
        "lifecycle",
        "stdin",
        "tty",
        "terminationMessagePath",
        "terminationMessagePolicy",
    )


class _PodSpec(Known):
    nodeName: str  # noqa: N815
    containers: list[_Container] = Field(min_length=1)
    hostNetwork: bool = False  # noqa: N815
    restartPolicy: Literal["Always", "OnFailure", "Never"] = "Always"  # noqa: N815

    @model_validator(mode="after")
    def _probe_ports(self) -> _PodSpec:
        named = {p.name for c in self.containers for p in c.ports if p.name}
        for i, c in enumerate(self.containers):
            port = c.readinessProbe.tcpSocket.port if c.readinessProbe else None
            if isinstance(port, str) and port not in named:
                raise ValueError(
                    f"containers[{i}].readinessProbe.tcpSocket.port: no container port "
                    f"named '{port}'"
                )
            if isinstance(port, int) and not 1 <= port <= 65535:
                raise ValueError(
                    f"containers[{i}].readinessProbe.tcpSocket.port: {port} is out of "
                    "range 1..65535"
                )
        return self

    _ignored: ClassVar[tuple[str, ...]] = (  # accepted, not used
        "volumes",
        "initContainers",
        "serviceAccountName",
        "serviceAccount",
        "automountServiceAccountToken",
        "dnsPolicy",
        "dnsConfig",
        "hostname",
        "subdomain",
        "nodeSelector",
        "affinity",
        "tolerations",
        "terminationGracePeriodSeconds",
        "securityContext",
        "imagePullSecrets",
        "priorityClassName",
        "schedulerName",
        "enableServiceLinks",
        "shareProcessNamespace",
        "hostPID",
        "hostIPC",
    )


class _Pod(Known):
    apiVersion: Literal["v1"]  # noqa: N815
    kind: Literal["Pod"]
    metadata: _PodMeta
    spec: _PodSpec
    _ignored: ClassVar[tuple[str, ...]] = (  # accepted, not used
        "status",
    )


class _NamespaceMeta(Meta):
    name: str = Field(pattern=_LABEL, max_length=63)
    _ignored: ClassVar[tuple[str, ...]] = (*Meta._ignored, "namespace")  # in no namespace


class _Namespace(Known):
    apiVersion: Literal["v1"]  # noqa: N815
    kind: Literal["Namespace"]
    metadata: _NamespaceMeta
    _ignored: ClassVar[tuple[str, ...]] = (  # accepted, not used
        "spec",
        "status",
    )


@dataclass(frozen=True)
class Pod:
    """A v1 Pod as flatnet reads it: where it runs, its labels, its network
    mode, what each container runs, its named container ports."""

    name: str
    namespace: str
    node: str
    labels: dict[str, str]
    mode: str  # bridge | host | none | container:<pod>
    commands: tuple[tuple[str, ...], ...]  # one per container; () runs agnhost netexec
    ports: dict[str, list[Any]] = field(default_factory=dict)  # named container ports
    probe: int = 0  # the TCP port whose answer makes the pod ready (0: running is ready)
    restart_policy: str = "Always"  # Always | OnFailure | Never, as spec.restartPolicy

    @property
    def shares_with(self) -> str | None:
        """The pod (of the same namespace) whose network this one shares."""
        return self.mode.split(":", 1)[1] if self.mode.startswith("container:") else None

    @property
    def ref(self) -> str:
        """How a lab names it: NAME in ``default``, NAMESPACE/NAME elsewhere."""
        return pod_ref(self.namespace, self.name)


def pod_ref(namespace: str, name: str) -> str:
    """A pod as users type it: NAME in ``default``, NAMESPACE/NAME elsewhere."""
    return name if namespace == "default" else f"{namespace}/{name}"


def ref_name(ref: str) -> str:
    """The pod's name in a :func:`pod_ref`."""
    return ref.rsplit("/", 1)[-1]


def _mode(p: _Pod) -> str:
    mode = p.metadata.annotations.get(MODE_ANNOTATION, "host" if p.spec.hostNetwork else "bridge")
    if mode in ("bridge", "host", "none") or re.match(r"^container:[a-z0-9.-]+$", mode):
        return mode
    raise ValueError(
        f"annotation {MODE_ANNOTATION}: '{mode}' is not bridge, host, none or container:<pod>"
    )


AGNHOST_PORT = 8080  # what a container without a command serves (agnhost netexec)


def _probe(p: _Pod) -> int:
    """The TCP port a readiness check connects to, as a kubelet would with a
    tcpSocket probe: an explicit ``readinessProbe``, else the first TCP
    container port (named or not), else agnhost's 8080 for a container with no
    command; 0: no port, the pod is ready when its containers run."""
    named = {cp.name: cp.containerPort for c in p.spec.containers for cp in c.ports if cp.name}
    for c in p.spec.containers:
        if c.readinessProbe is not None:
            port = c.readinessProbe.tcpSocket.port
            return named[port] if isinstance(port, str) else port
    for c in p.spec.containers:
        for cp in c.ports:
            if cp.protocol == "TCP":
                return cp.containerPort
    if any(not (c.command or c.args) for c in p.spec.containers):
        return AGNHOST_PORT
    return 0


@dataclass(frozen=True)
class Manifest:
    """What a file holds, each object with the line it starts on."""

    namespaces: list[Namespace] = field(default_factory=list)
    pods: list[Pod] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)
    pools: list[AddressPool] = field(default_factory=list)
    ingresses: list[Ingress] = field(default_factory=list)
    ingress_classes: list[IngressClass] = field(default_factory=list)
    lines: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (kind, ns, name)

    def line(self, kind: str, namespace: str, name: str) -> int | None:
        return self.lines.get((kind, namespace, name))

    def require_namespaces(self, have: set[str], path: str) -> None:
        """Every Pod's and Service's namespace is in ``have`` or in the file
        (kubectl: namespaces "x" not found); all that are not, named at once."""
        have = have | {n.name for n in self.namespaces}
        errors = [
            LabFileError(
                path,
                self.line(kind, o.namespace, o.name),
                f"{kind.lower()} '{o.name}': metadata.namespace: namespace '{o.namespace}' "
                "not found (create it, or add a kind: Namespace document)",
            )
            for kind, objs in (
                ("Pod", self.pods),
                ("Service", self.services),
                ("Ingress", self.ingresses),
            )
            for o in objs
            if o.namespace not in have
        ]
        if errors:
            raise ManifestErrors(errors)


KINDS = (
    "Namespace",
    "Pod",
    "Service",
    "IPAddressPool",
    "Ingress",
    "IngressClass",
    "NetworkPolicy",
    "ClusterNetworkPolicy",
)  # policies: flatnet.policy.files


def objects(
    docs: list[tuple[yaml.Node, Any]], path: str, nodes: list[str] | tuple[str, ...] | None
) -> Manifest:
    """The Namespace, Pod, Service, IPAddressPool, Ingress and IngressClass
    documents of a file (anything else is an error); every mistake of the file
    is reported at once."""
    from flatnet.ingress.manifest import ingress, ingress_class  # it builds on this module

    out = Manifest()
    errors: list[LabFileError] = []
    for node, data in docs:
        line = node.start_mark.line + 1
        kind = data.get("kind") if isinstance(data, dict) else type(data).__name__
        try:
            if kind == "Service":
                obj: Any = service(data, node, path)
                out.services.append(obj)
            elif kind == "Namespace":
                m = check(_Namespace, data, node, path)
                obj = Namespace.of(m.metadata.name, dict(m.metadata.labels))
                out.namespaces.append(obj)
            elif kind == "Pod":
                obj = _pod(data, node, path, nodes)
                out.pods.append(obj)
            elif kind == "IPAddressPool":
                obj = pool(data, node, path)
                out.pools.append(obj)
            elif kind == "Ingress":
                obj = ingress(data, node, path)
                out.ingresses.append(obj)
            elif kind == "IngressClass":
                obj = ingress_class(data, node, path)
                out.ingress_classes.append(obj)
            else:
                raise LabFileError(
                    path, line, f"kind '{kind}' is not supported here ({', '.join(KINDS)})"
                )
        except ManifestErrors as e:
            errors.extend(e.errors)
            continue
        except LabFileError as e:
            errors.append(e)
            continue
        ident = (kind, getattr(obj, "namespace", ""), obj.name)
        if ident in out.lines:
            what = f"{kind.lower()} '{obj.name}'" + (
                f" in namespace '{ident[1]}'" if ident[1] else ""
            )
            errors.append(
                LabFileError(
                    path, line, f"{what} is defined twice (first on line {out.lines[ident]})"
                )
            )
        out.lines[ident] = line
    if errors:
        raise ManifestErrors(sorted(errors, key=lambda e: e.line or 0))
    return out


def _pod(data: Any, node: yaml.Node, path: str, nodes: list[str] | tuple[str, ...] | None) -> Pod:
    p = check(_Pod, data, node, path)
    if nodes is not None and p.spec.nodeName not in nodes:
        raise LabFileError(
            path,
            line_of(node, ("spec", "nodeName")),
            f"spec.nodeName: '{p.spec.nodeName}' is not one of the lab's "
            f"nodes ({', '.join(nodes or ())})",
        )
    try:
        mode = _mode(p)
    except ValueError as e:
        raise LabFileError(path, line_of(node, ("metadata", "annotations")), str(e)) from None
    cmds = tuple(tuple((c.command or []) + (c.args or [])) for c in p.spec.containers)
    return Pod(
        p.metadata.name,
        p.metadata.namespace,
        p.spec.nodeName,
        dict(p.metadata.labels),
        mode,
        cmds,
        {
            cp.name: [cp.containerPort, cp.protocol]
            for c in p.spec.containers
            for cp in c.ports
            if cp.name
        },
        _probe(p),
        p.spec.restartPolicy,
    )

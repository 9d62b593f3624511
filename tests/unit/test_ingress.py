"""Ingress v1: documents checked as the API server does, and the routing
table's semantics — the path-matching table of the Kubernetes docs, hosts and
wildcards, the default backend, conflicts (oldest wins)."""

from __future__ import annotations

import pytest

from flatnet.errors import ManifestErrors
from flatnet.ingress.desired import desired, select
from flatnet.ingress.manifest import ingress, ingress_class
from flatnet.ingress.model import Backend, HTTPPath, Ingress, IngressClass, Rule
from flatnet.ingress.routes import match, table
from flatnet.manifest import docs
from flatnet.model import PodRecord, Service, ServicePort
from flatnet.store.base import KV
from flatnet.view import ClusterView


def ing(name: str, *paths: tuple[str, str, str], host: str = "", created: float = 0.0) -> Ingress:
    rule = Rule(host, tuple(HTTPPath(p, t, Backend(svc, 80)) for p, t, svc in paths))
    return Ingress(name, rules=(rule,), created=created)


# the table of https://kubernetes.io/docs/concepts/services-networking/ingress/#examples
K8S_EXAMPLES = [
    ([("/", "Prefix")], "/anything", True),
    ([("/foo", "Exact")], "/foo", True),
    ([("/foo", "Exact")], "/bar", False),
    ([("/foo", "Exact")], "/foo/", False),
    ([("/foo/", "Exact")], "/foo", False),
    ([("/foo", "Prefix")], "/foo", True),
    ([("/foo", "Prefix")], "/foo/", True),
    ([("/foo/", "Prefix")], "/foo", True),
    ([("/foo/", "Prefix")], "/foo/", True),
    ([("/aaa/bb", "Prefix")], "/aaa/bbb", False),
    ([("/aaa/bbb", "Prefix")], "/aaa/bbb", True),
    ([("/aaa/bbb/", "Prefix")], "/aaa/bbb", True),
    ([("/aaa/bbb", "Prefix")], "/aaa/bbb/", True),
    ([("/aaa/bbb", "Prefix")], "/aaa/bbb/ccc", True),
    ([("/aaa/bbb", "Prefix")], "/aaa/bbbxyz", False),
    ([("/", "Prefix"), ("/aaa", "Prefix")], "/aaa/ccc", True),
    ([("/", "Prefix"), ("/aaa", "Prefix"), ("/aaa/bbb", "Prefix")], "/aaa/bbb", True),
    ([("/", "Prefix"), ("/aaa", "Prefix"), ("/aaa/bbb", "Prefix")], "/ccc", True),
    ([("/aaa", "Prefix")], "/ccc", False),
    ([("/foo", "Prefix"), ("/foo", "Exact")], "/foo", True),
]


@pytest.mark.parametrize(("paths", "request_path", "matches"), K8S_EXAMPLES)
def test_the_kubernetes_path_matching_table(
    paths: list[tuple[str, str]], request_path: str, matches: bool
) -> None:
    i = ing("x", *[(p, t, f"{t}:{p}") for p, t in paths])
    hit = match(table([i]), "h", request_path)
    assert (hit is not None) == matches
    if hit is not None:  # and the one that matched is the longest, Exact first
        want = max(
            ((p, t) for p, t in paths if _matches(p, t, request_path)),
            key=lambda pt: (len(pt[0].rstrip("/")), pt[1] == "Exact"),
        )
        assert hit.service == f"{want[1]}:{want[0]}"


def _matches(p: str, t: str, req: str) -> bool:
    if t == "Exact":
        return p == req
    base = p.rstrip("/")
    return req == base or req.startswith(base + "/") or base == ""


def test_hosts_wildcards_and_the_default_backend() -> None:
    a = ing("a", ("/", "Prefix", "any-host"))
    b = ing("b", ("/", "Prefix", "foo-exact"), ("/x", "Exact", "foo-x"), host="foo.com")
    c = ing("c", ("/app", "Prefix", "wild"), host="*.foo.com")
    d = Ingress("d", default_backend=Backend("fallback", "http"))
    t = table([a, b, c, d])
    assert match(t, "foo.com", "/y").service == "foo-exact"  # type: ignore[union-attr]
    assert match(t, "FOO.com:8080", "/x").service == "foo-x"  # type: ignore[union-attr]
    assert match(t, "bar.foo.com", "/app/1").service == "wild"  # type: ignore[union-attr]
    # one label only; and a host with rules but no matching path: the default backend
    assert match(t, "baz.bar.foo.com", "/app").service == "any-host"  # type: ignore[union-attr]
    assert match(t, "bar.foo.com", "/other").service == "fallback"  # type: ignore[union-attr]
    assert match(t, "other.org", "/z").service == "any-host"  # type: ignore[union-attr]
    assert match(table([b]), "other.org", "/z") is None  # nothing: a 404


def test_conflicts_the_oldest_wins_and_the_other_is_reported() -> None:
    old = ing("old", ("/api", "Prefix", "v1"), host="a.com", created=1.0)
    new = ing("new", ("/api/", "Prefix", "v2"), ("/web", "Prefix", "web"), host="a.com",
              created=2.0)  # fmt: skip
    t = table([new, old])
    assert match(t, "a.com", "/api/x").service == "v1"  # type: ignore[union-attr]
    assert match(t, "a.com", "/web").service == "web"  # type: ignore[union-attr]
    assert t.conflicts == [
        "ingress default/new: host 'a.com' path /api/ (Prefix) ignored: default/old routes it "
        "(older)"
    ]


DOC = """\
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web, namespace: shop}
spec:
  ingressClassName: flatnet
  defaultBackend: {service: {name: fallback, port: {name: http}}}
  tls: [{hosts: [shop.example], secretName: shop-tls}]
  rules:
  - host: shop.example
    http:
      paths:
      - {path: /cart, pathType: Prefix, backend: {service: {name: cart, port: {number: 8080}}}}
"""


def one(text: str) -> Ingress:
    (node, data), *_ = docs(text, "f.yaml")
    return ingress(data, node, "f.yaml")


def test_a_good_ingress_reads_and_round_trips() -> None:
    i = one(DOC)
    assert i.ref == "shop/web" and i.class_name == "flatnet"
    assert i.default_backend == Backend("fallback", "http")
    assert i.rules[0].paths[0] == HTTPPath("/cart", "Prefix", Backend("cart", 8080))
    assert Ingress.from_json(i.with_created(5.0).to_json()) == i.with_created(5.0)


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ("- host: shop.example", "- host: Shop.Example", "f.yaml:9: spec.rules[0].host: 'Shop"),
        ("- host: shop.example", "- host: 10.0.0.1", "is an IP address"),
        ("- host: shop.example", "- host: a.*.example", "is not a lower-case DNS name"),
        ("- host: shop.example", "- host: 'shop.example:80'", "a host has no port"),
        ("pathType: Prefix", "pathType: Regex",
         "f.yaml:12: spec.rules[0].http.paths[0].pathType: Input should be"),
        ("path: /cart", "path: cart", "path 'cart' must begin with '/'"),
        ("port: {number: 8080}", "port: {number: 8080, name: http}", "exactly one of"),
        ("port: {number: 8080}", "port: {number: 70000}", "less than or equal to 65535"),
        ("{service: {name: cart,", "{resource: {kind: X}, service: {name: cart,",
         "'resource' backends are not supported"),
        ("ingressClassName: flatnet", "ingressClass: flatnet",
         "spec.ingressClass: unknown field (did you mean 'ingressClassName'?)"),
    ],
)  # fmt: skip
def test_bad_ingresses_name_the_line_and_field(old: str, new: str, problem: str) -> None:
    assert old in DOC
    with pytest.raises(ManifestErrors) as e:
        one(DOC.replace(old, new))
    assert problem in str(e.value)


def test_an_ingress_needs_rules_or_a_default_backend() -> None:
    text = "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: x}\nspec: {}\n"
    with pytest.raises(ManifestErrors, match="give 'rules' or a 'defaultBackend'"):
        one(text)


def test_ingress_class_default_annotation() -> None:
    text = (
        "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata:\n  name: flatnet\n"
        "  annotations: {ingressclass.kubernetes.io/is-default-class: 'true'}\n"
        "spec: {controller: flatnet.io/haproxy}\n"
    )
    (node, data), *_ = docs(text, "c.yaml")
    c = ingress_class(data, node, "c.yaml")
    assert c.default and c.controller == "flatnet.io/haproxy"


# -- what the controller wants --------------------------------------------------------
def _kvs() -> list[KV]:
    from flatnet import keys

    svc = Service("cart", "default", cluster_ip="10.96.0.20", selector={"app": "cart"},
                  ports=(ServicePort(80, "TCP", "http", 8080),))  # fmt: skip
    pods = [PodRecord(f"cart-{i}", "default", "n1", ip=f"10.244.0.{i + 2}",
                      labels={"app": "cart"}, phase="Running", ready=True)
            for i in range(10)]  # fmt: skip
    out = [KV(keys.service("default", "cart"), svc.to_json(), 1, 1)]
    return out + [KV(keys.pod(p.namespace, p.name), p.to_json(), 1, 1) for p in pods]


def test_select_by_class_and_the_default_class() -> None:
    named, unnamed = Ingress("a", class_name="flatnet"), Ingress("b")
    other = Ingress("c", class_name="nginx")
    fl = IngressClass("flatnet", "flatnet.io/haproxy")
    assert select([named, unnamed, other], [fl], "flatnet") == [named]
    default = IngressClass("flatnet", "flatnet.io/haproxy", default=True)
    assert select([named, unnamed, other], [default], "flatnet") == [named, unnamed]


def test_desired_backends_by_port_number_or_name_and_slots_only_grow() -> None:
    view = ClusterView(_kvs())
    by_name = Ingress("a", rules=(Rule("", (HTTPPath("/a", "Prefix", Backend("cart", "http")),)),))
    missing = Ingress("b", rules=(Rule("", (HTTPPath("/b", "Prefix", Backend("gone", 80)),)),))
    want = desired([by_name, missing], view)
    backends = {b.name: b for b in want.backends}
    assert backends["be_default_cart_80"].servers == tuple(
        sorted((f"10.244.0.{i + 2}", 8080) for i in range(10))
    )
    assert backends["be_default_cart_80"].slots == 16  # 10 endpoints: 8 doubled
    assert backends["be_default_gone_80"].servers == ()  # HAProxy answers 503
    # a port by name and the same by number: one backend
    both = Ingress("c", rules=(Rule("x", (HTTPPath("/", "Prefix", Backend("cart", 80)),)),))
    assert len(desired([by_name, both], view).backends) == 1
    assert want.default == "be_404"
    # fewer endpoints later: the same slots, so no reload
    fewer = ClusterView(_kvs()[:3])
    again = desired([by_name, missing], fewer, {"be_default_cart_80": 16})
    assert again.structure == want.structure
    assert len({b.name: b for b in again.backends}["be_default_cart_80"].servers) == 2

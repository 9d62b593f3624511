"""Connectivity checks on a running lab: who reaches whom, and with which source IP.

Each probe runs inside the client's namespace (a fresh thread that enters it):
one ping where it applies, and a TCP request to the server's agnhost
``/clientip``, so the result shows the source address the server saw — the
proof that no NAT happened inside the cluster. The kinds, each with what
passing means:

- ``pod→pod``: answered, ping too, the server saw the client pod's own IP;
- ``pod→external``: answered, ping too (masqueraded: the cluster is left);
- ``node→pod``: from each node's own namespace: answered, ping too, the
  server saw one of that node's addresses (no NAT);
- ``pod→service``: the service's name resolved by the pod's own resolver
  (``getent`` under the pod's resolv.conf: the cluster DNS) to its cluster
  IP, then answered there, and the server saw the client pod's IP — or, when
  the client is itself an endpoint and the proxy sent it to itself, its
  node's address (hairpin traffic is masqueraded, as kube-proxy does);
- ``external→nodeport``: every node's NodePort answers the external host.
"""

from __future__ import annotations

import subprocess
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from flatnet import keys
from flatnet.kernel import links, netns
from flatnet.lab.state import LabState
from flatnet.manifest import pod_ref
from flatnet.model import Service, ServicePort
from flatnet.store import Store
from flatnet.view import ClusterView

__all__ = ["KINDS", "Probe", "endpoints", "http_probe", "matrix", "ping", "resolve", "skipped"]

KINDS = ("pod→pod", "pod→external", "node→pod", "pod→service", "external→nodeport")
TEST_PORT = 8080  # what a lab test pod (agnhost netexec) serves


@dataclass(frozen=True)
class Probe:
    client: str
    server: str
    target: str
    ok: bool  # the request was answered
    seen_ip: str  # the source IP the server saw ("" when it failed)
    detail: str = ""
    icmp: bool = False  # one ping answered (True where no ping applies)
    kind: str = "pod→pod"
    passed: bool = False  # what this kind of probe must show, shown


def http_probe(ns: str, url: str, timeout: float = 2.0) -> str:
    """GET ``url`` from inside ``ns``; returns the body (raises OSError on failure)."""

    def get() -> str:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return str(r.read().decode())

    return netns.run_in(netns.path_of(ns), get)


def ping(ns: str, ip: str, timeout: float = 1.0) -> bool:
    r = subprocess.run(
        ["ip", "netns", "exec", ns, "ping", "-c", "1", "-W", str(timeout), ip], capture_output=True
    )
    return r.returncode == 0


def resolve(ns: str, name: str) -> str:
    """``name`` as the pod's own resolver answers it (its /etc/netns resolv.conf:
    the cluster DNS), "" when it does not."""
    r = subprocess.run(
        ["ip", "netns", "exec", ns, "getent", "ahostsv4", name], capture_output=True, text=True
    )
    return r.stdout.split()[0] if r.returncode == 0 and r.stdout else ""


def endpoints(st: LabState) -> dict[str, tuple[str, str]]:
    """name -> (namespace, ip) of everything that runs a test server and has an IP
    (the user's pods: system pods like kube-dns run no test server)."""
    out = {
        n: (p.ns, p.ip)
        for n, p in st.pods.items()
        if p.ip and p.mode == "bridge" and p.namespace != "kube-system" and not any(p.commands)
    }
    if st.external:
        ext_ip = _first_ip(st.external)
        out["external"] = (st.external, ext_ip)
    return out


def skipped(st: LabState) -> dict[str, str]:
    """The pods :func:`matrix` does not probe, and why."""
    eps = endpoints(st)
    out = {}
    for n, p in st.pods.items():
        if n in eps:
            continue
        if p.namespace == "kube-system":
            out[n] = "a system pod: runs no test server"
        elif p.mode == "host":
            out[n] = "hostNetwork: its node's own network"
        elif p.mode == "none":
            out[n] = "network mode none: no network to probe"
        elif p.mode.startswith("container:"):
            out[n] = f"shares {p.mode.split(':', 1)[1]}'s network (probed as that pod)"
        elif any(p.commands):
            out[n] = "runs its own command, not the test server"
        else:
            out[n] = "no IP"
    return out


def _first_ip(ns: str) -> str:
    return links.first_address(ns, "eth0")


def _http(kind: str, client: str, ns: str, server: str, target: str, ip: str = "") -> Probe:
    """One request to ``target``'s /clientip (and a ping of ``ip``, if given)."""
    icmp = ping(ns.rsplit("/", 1)[-1], ip) if ip else True
    try:
        seen = http_probe(ns, f"http://{target}/clientip").rsplit(":", 1)[0]
        return Probe(client, server, target, True, seen, icmp=icmp, kind=kind)
    except OSError as e:
        return Probe(client, server, target, False, "", str(e), icmp, kind)


def matrix(st: LabState, store: Store | None = None) -> list[Probe]:
    """Every probe of the lab (see the module); with ``store``, services too."""
    eps = endpoints(st)
    pods = [n for n in eps if n != "external"]
    own = {n: eps[n][1] for n in eps}
    jobs = []
    for c in pods:
        for s in eps:
            if s != c:
                kind = "pod→external" if s == "external" else "pod→pod"
                jobs.append((kind, c, eps[c][0], s, f"{eps[s][1]}:{TEST_PORT}", eps[s][1]))
    node_ips = {n: links.addresses(info.ns) for n, info in st.nodes.items()}
    for n, info in st.nodes.items():
        for s in pods:
            jobs.append(("node→pod", n, info.ns, s, f"{own[s]}:{TEST_PORT}", own[s]))
    services = _services(store, set(pods)) if store is not None else []
    jobs += _nodeports(st, [(svc, port, refs) for svc, port, refs in services])
    with ThreadPoolExecutor(max_workers=8) as ex:
        out = list(ex.map(lambda j: _http(*j), jobs))
        out += list(
            ex.map(lambda j: _service(*j), [(eps, c, *s[:2]) for c in pods for s in services])
        )
    node_of = {n: p.node for n, p in st.pods.items()}
    hairpin = {
        f"{svc.namespace}/{svc.name}": {c: node_ips[node_of[c]] for c in refs}
        for svc, _, refs in services
    }

    def passed(r: Probe) -> bool:
        if r.kind == "pod→pod":
            return r.ok and r.icmp and r.seen_ip == own[r.client]
        if r.kind == "node→pod":
            return r.ok and r.icmp and r.seen_ip in node_ips[r.client]
        if r.kind == "pod→service":
            itself = hairpin[r.server].get(r.client, [])
            return r.ok and (r.seen_ip == own[r.client] or r.seen_ip in itself)
        return r.ok and r.icmp

    return [Probe(**{**r.__dict__, "passed": passed(r)}) for r in out]


def _services(store: Store, test_pods: set[str]) -> list[tuple[Service, ServicePort, set[str]]]:
    """The services a probe can expect an answer from: a TCP port whose every
    endpoint is a test server on its port; with that port and those pods."""
    view = ClusterView(store.range(keys.SERVICES) + store.range(keys.PODS))
    out = []
    for svc in view.services.values():
        if svc.headless or svc.type == "ExternalName" or not svc.cluster_ip:
            continue
        for port, eps in view.endpoints(svc).items():
            refs = {pod_ref(*e.pod.split("/", 1)) for e in eps}
            if port.protocol != "TCP" or not eps or not refs <= test_pods:
                continue
            if all(e.port == TEST_PORT for e in eps):
                out.append((svc, port, refs))
                break
    return out


def _service(eps: dict[str, tuple[str, str]], client: str, svc: Service, sp: ServicePort) -> Probe:
    name = f"{svc.name}.{svc.namespace}.svc.cluster.local"
    port = sp.port
    ns = eps[client][0]
    ip = resolve(ns, name)
    if ip != svc.cluster_ip:
        why = f"{name} resolved to {ip or 'nothing'}, not {svc.cluster_ip}"
        return Probe(client, f"{svc.namespace}/{svc.name}", f"{name}:{port}", False, "", why,
                     True, "pod→service")  # fmt: skip
    r = _http("pod→service", client, ns, f"{svc.namespace}/{svc.name}", f"{ip}:{port}")
    return Probe(**{**r.__dict__, "target": f"{name}:{port}"})


def _nodeports(
    st: LabState, services: list[tuple[Service, ServicePort, set[str]]]
) -> list[tuple[str, str, str, str, str, str]]:
    """The external host's probes of each probed port's NodePort, on every node
    — with ``externalTrafficPolicy: Local``, on the nodes holding an endpoint
    only (the others drop it, by design) — and of its LoadBalancer address
    (no ping: a NodePort is a TCP port)."""
    if not st.external:
        return []
    jobs = []
    for svc, p, refs in services:
        if not p.node_port:
            continue
        holders = {st.pods[r].node for r in refs if r in st.pods}
        for node, info in st.nodes.items():
            if svc.external_local and node not in holders:
                continue
            jobs.append(("external→nodeport", "external", st.external,
                         f"{svc.namespace}/{svc.name} via {node}",
                         f"{info.underlay_ip}:{p.node_port}", ""))  # fmt: skip
        if svc.ingress_ip:
            jobs.append(("external→nodeport", "external", st.external,
                         f"{svc.namespace}/{svc.name} LoadBalancer",
                         f"{svc.ingress_ip}:{p.port}", ""))  # fmt: skip
    return jobs

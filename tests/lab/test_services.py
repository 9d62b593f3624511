"""Services and cluster DNS on a 3-node lab, once per backend: what users check.

ClusterIP spreads connections over every endpoint and the server sees the
client pod's own IP; ClientIP affinity pins a client; NodePort answers from the
external host (policy Local keeps the client's IP); a service with no ready
endpoints refuses at once; a pod reaches itself through its service; cluster
DNS answers A/SRV/PTR/CNAME/TXT and forwards the rest; endpoints follow pods
as they come and go without a failed request; stale UDP conntrack entries go.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lab.test_lab import flatnet, lab_namespaces, run

from flatnet.lab.state import LABS_DIR

pytestmark = pytest.mark.lab
PY = sys.executable

LAB = """\
kind: Lab
name: NAME
network: {backend: BACKEND}
agentResync: 1
nodes: [node1, node2, node3]
external: true
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec: {nodeName: node1, containers: [{name: main}]}
"""
WEB = """\
---
apiVersion: v1
kind: Pod
metadata: {name: web-I, labels: LABELS}
spec:
  nodeName: nodeI
  containers:
  - name: main
    command: [PY, -m, flatnet.agnhost, netexec, --http-port, "8080", --udp-port, "8081"]
    ports:
    - {name: http, containerPort: 8080}
    - {name: echo, containerPort: 8081, protocol: UDP}
"""
for _i in "123":
    _labels = "{app: web, role: solo}" if _i == "1" else "{app: web}"
    LAB += WEB.replace("I", _i).replace("LABELS", _labels).replace("PY", PY)


SERVICES = """\
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: echo, port: 53, protocol: UDP, targetPort: echo}
---
apiVersion: v1
kind: Service
metadata: {name: sticky}
spec:
  selector: {app: web}
  sessionAffinity: ClientIP
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-np}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 80, targetPort: http, nodePort: 30080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-local}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  internalTrafficPolicy: Local
  selector: {app: web}
  ports: [{port: 80, targetPort: http, nodePort: 30081}]
---
apiVersion: v1
kind: Service
metadata: {name: solo}
spec:
  selector: {role: solo}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: nothing}
spec:
  clusterIP: 10.96.0.200
  selector: {app: nothing}
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: web-headless}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: outside}
spec: {type: ExternalName, externalName: external.flatnet.test}
"""

# many HTTP GETs from inside a pod: prints {"hosts": {...}, "seen": [...], "failed": n}
GETS = """
import json, sys, time, urllib.request
url, n, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
hosts, seen, failed = {}, set(), 0
for _ in range(n):
    try:
        with urllib.request.urlopen(url + "/hostname", timeout=2) as r:
            h = r.read().decode()
        with urllib.request.urlopen(url + "/clientip", timeout=2) as r:
            seen.add(r.read().decode().rsplit(":", 1)[0])
        hosts[h] = hosts.get(h, 0) + 1
    except OSError as e:
        failed += 1
        print("fail", e, file=sys.stderr)
    time.sleep(pause)
print(json.dumps({"hosts": hosts, "seen": sorted(seen), "failed": failed}))
"""


@pytest.fixture(scope="module", params=["host-gw", "vxlan", "udp", "vxlan+etcd"])
def lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The lab with its services; on etcd the Services sit in the lab file itself
    (such labs failed to come up: the wait named a revision no proxy reports)."""
    import uuid

    name = "s" + uuid.uuid4().hex[:6]
    d = tmp_path_factory.mktemp(name)
    backend, _, etcd = request.param.partition("+")
    text = LAB.replace("NAME", name).replace("BACKEND", backend)
    if etcd:
        text = (
            text.replace("agentResync: 1", "agentResync: 1\ndatastore: etcd") + "---\n" + SERVICES
        )
    (d / "lab.yaml").write_text(text)
    (d / "svc.yaml").write_text(SERVICES)
    try:
        up = flatnet("lab", "up", str(d / "lab.yaml"))
        assert "fork_posix" not in up.stdout + up.stderr  # no gRPC chatter for the user
        if not etcd:
            flatnet("apply", "-f", str(d / "svc.yaml"), "--lab", name)
        wait_programmed(name)
        yield name
    finally:
        flatnet("lab", "down", name, check=False)
        assert lab_namespaces(name) == []
        assert not (LABS_DIR / name).exists()


def services(name: str) -> dict[str, dict]:  # type: ignore[type-arg]
    items = json.loads(flatnet("get", "services", "-A", "--lab", name, "-o", "json").stdout)[
        "items"
    ]
    return {s["name"]: s for s in items}


def wait_programmed(name: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        svcs = services(name)
        if all(len(s["programmedOn"]) == 3 for s in svcs.values()):
            return
        assert time.monotonic() < deadline, svcs
        time.sleep(0.1)


def pod_ips(name: str) -> dict[str, str]:
    items = json.loads(flatnet("get", "pods", "-A", "--lab", name, "-o", "json").stdout)["items"]
    return {p["name"]: p["ip"] for p in items}


def gets(name: str, pod: str, url: str, n: int, pause: float = 0.0) -> dict:  # type: ignore[type-arg]
    r = run(name, pod, PY, "-c", GETS, url, str(n), str(pause))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def web_pod(name: str, node: str) -> str:
    """A Pod manifest like web-N's: label app=web, agnhost with port 'http'."""
    return (
        f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: web}}}}\n"
        f"spec:\n  nodeName: {node}\n  containers:\n  - name: main\n"
        "    ports: [{name: http, containerPort: 8080}]\n"
    )


def dig(name: str, *args: str, pod: str = "client") -> str:
    r = run(name, pod, "dig", "+short", "+tries=1", "+time=2", *args)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.strip()


def test_clusterip_spreads_over_every_endpoint_and_keeps_the_client_ip(lab: str) -> None:
    svc = services(lab)["web"]
    ips = pod_ips(lab)
    assert sorted(svc["endpoints"]) == sorted(
        [f"{ips[f'web-{i}']}:8080" for i in (1, 2, 3)]
        + [f"{ips[f'web-{i}']}:8081" for i in (1, 2, 3)]
    )
    got = gets(lab, "client", f"http://{svc['clusterIP']}", 200)
    assert got["failed"] == 0
    assert set(got["hosts"]) == {"web-1", "web-2", "web-3"}, got
    assert min(got["hosts"].values()) >= 20, got  # 1/3 each; 20 is far below
    assert got["seen"] == [ips["client"]]  # pod → service → pod: no NAT
    # by name, through cluster DNS and the search path
    assert gets(lab, "client", "http://web", 3)["failed"] == 0


def test_affinity_pins_a_client(lab: str) -> None:
    got = gets(lab, "client", "http://sticky", 30)
    assert got["failed"] == 0 and len(got["hosts"]) == 1, got
    got2 = gets(lab, "web-2", "http://sticky.default.svc.cluster.local", 20)
    assert len(got2["hosts"]) == 1, got2


def test_nodeport_from_the_external_host(lab: str) -> None:
    nodes = {n: f"192.168.50.{11 + i}" for i, n in enumerate(("node1", "node2", "node3"))}
    for node, ip in nodes.items():
        got = gets(lab, "external", f"http://{ip}:30080", 12)
        assert got["failed"] == 0 and len(got["hosts"]) >= 2, (node, got)
        # policy Local: only this node's endpoint, and the client IP is kept
        local = gets(lab, "external", f"http://{ip}:30081", 5)
        assert local["hosts"] == {f"web-{node[-1]}": 5}, local
        assert local["seen"] == ["192.168.50.254"], local
    # internalTrafficPolicy Local: a pod reaches only its own node's endpoint
    ip = services(lab)["web-local"]["clusterIP"]
    assert gets(lab, "client", f"http://{ip}", 10)["hosts"] == {"web-1": 10}


def test_no_ready_endpoints_is_refused_at_once(lab: str) -> None:
    code = (
        "import socket, time, sys\n"
        "t = time.monotonic()\n"
        "try:\n"
        "    socket.create_connection(('10.96.0.200', 80), timeout=5)\n"
        "    print('connected')\n"
        "except ConnectionRefusedError:\n"
        "    print('refused', time.monotonic() - t)\n"
    )
    for pod in ("client", "web-3", "node2"):
        out = run(lab, pod, PY, "-c", code).stdout.split()
        assert out[0] == "refused" and float(out[1]) < 0.5, (pod, out)


def test_a_pod_reaches_itself_through_its_service(lab: str) -> None:
    got = gets(lab, "web-1", "http://solo", 5)
    assert got["hosts"] == {"web-1": 5}, got  # hairpin: masqueraded, so it works


def test_cluster_dns(lab: str) -> None:
    svcs, ips = services(lab), pod_ips(lab)
    assert dig(lab, "web.default.svc.cluster.local") == svcs["web"]["clusterIP"]
    assert dig(lab, "kube-dns.kube-system.svc.cluster.local") == "10.96.0.10"
    web = {ips[f"web-{i}"] for i in (1, 2, 3)}
    assert set(dig(lab, "web-headless.default.svc.cluster.local").split()) == web
    srv = dig(lab, "SRV", "_http._tcp.web-headless.default.svc.cluster.local").splitlines()
    assert sorted(line.split()[2] for line in srv) == ["8080"] * 3
    targets = {line.split()[3] for line in srv}
    assert targets == {
        f"{ip.replace('.', '-')}.web-headless.default.svc.cluster.local." for ip in web
    }
    assert dig(lab, "SRV", "_http._tcp.web.default.svc.cluster.local") == (
        "0 100 80 web.default.svc.cluster.local."
    )
    assert dig(lab, "-x", svcs["web"]["clusterIP"]) == "web.default.svc.cluster.local."
    assert dig(lab, "outside.default.svc.cluster.local").splitlines() == [
        "external.flatnet.test.",
        "192.168.50.254",
    ]
    assert dig(lab, "TXT", "dns-version.cluster.local") == '"1.1.0"'
    dashed = ips["web-2"].replace(".", "-")
    assert dig(lab, f"{dashed}.default.pod.cluster.local") == ips["web-2"]
    assert dig(lab, f"{dashed}.other.pod.cluster.local") == ""
    assert dig(lab, "+tcp", "web.default.svc.cluster.local") == svcs["web"]["clusterIP"]
    nx = run(lab, "client", "dig", "+tries=1", "nope.default.svc.cluster.local")
    assert "status: NXDOMAIN" in nx.stdout
    # other names go to the upstream resolver (dnsmasq on the external host)
    assert dig(lab, "external.flatnet.test") == "192.168.50.254"
    # the glibc resolver with the pod's resolv.conf (search path, ndots:5)
    got = run(lab, "web-3", "getent", "hosts", "web")
    assert got.stdout.split()[:2] == [svcs["web"]["clusterIP"], "web.default.svc.cluster.local"]


def test_kernel_holds_one_table_with_dispatch_maps(lab: str) -> None:
    svcs = services(lab)
    for node in ("node1", "node2", "node3"):
        r = run(lab, node, "nft", "-j", "list", "map", "ip", "flatnet-proxy", "service-ips")
        elems = json.loads(r.stdout)["nftables"][1]["map"]["elem"]
        vips = sorted(e[0]["concat"][0] for e in elems)
        want = sorted(
            s["clusterIP"]
            for s in svcs.values()
            for p in s["ports"]
            if s["clusterIP"] not in ("None", "-", "10.96.0.200")
        )
        assert vips == want, (node, vips, want)
        tables = run(lab, node, "nft", "list", "tables").stdout.split("\n")
        assert "table ip flatnet-proxy" in tables


def test_endpoints_follow_pods_without_failed_requests(lab: str, tmp_path: Path) -> None:
    """Scale the endpoints of `web` up and down under a continuous request loop."""
    loop = subprocess.Popen(
        [
            PY,
            "-m",
            "flatnet",
            "lab",
            "exec",
            "--lab",
            lab,
            "client",
            "--",
            PY,
            "-c",
            GETS,
            "http://web",
            "400",
            "0.01",
        ],  # fmt: skip
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)
        f = tmp_path / "web4.yaml"
        f.write_text(web_pod("web-4", "node2"))
        flatnet("apply", "-f", str(f), "--lab", lab)
        ip4 = pod_ips(lab)["web-4"]
        assert f"{ip4}:8080" in services(lab)["web"]["endpoints"]
        ip2 = pod_ips(lab)["web-2"]
        t0 = time.monotonic()
        f2 = tmp_path / "web2.yaml"
        f2.write_text(web_pod("web-2", "node2"))
        flatnet("delete", "-f", str(f2), "--lab", lab)
        assert time.monotonic() - t0 < 5
        eps = services(lab)["web"]["endpoints"]
        assert not any(e.startswith(ip2 + ":") for e in eps)
        assert ip2 not in dig(lab, "web-headless.default.svc.cluster.local").split()
        out, err = loop.communicate(timeout=60)
    finally:
        loop.kill()
    got = json.loads(out)
    assert got["failed"] == 0, err
    assert "web-4" in got["hosts"], got


def test_pod_removed_from_endpoints_and_dns_within_a_second(lab: str, tmp_path: Path) -> None:
    f = tmp_path / "gone.yaml"
    f.write_text(web_pod("gone", "node3"))
    flatnet("apply", "-f", str(f), "--lab", lab)
    ip = pod_ips(lab)["gone"]
    deadline = time.monotonic() + 2
    while ip not in dig(lab, "web-headless.default.svc.cluster.local").split():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # a pod that dies without notice: its record goes (as the API server would)
    from flatnet.lab.state import LabState
    from flatnet.store import open_store

    st = LabState.load(lab)
    store = open_store(st.store_url)
    try:
        t0 = time.monotonic()
        store.delete("/flatnet/pods/default/gone")
        while any(e.startswith(ip + ":") for e in services(lab)["web"]["endpoints"]) or (
            ip in dig(lab, "web-headless.default.svc.cluster.local").split()
        ):
            assert time.monotonic() - t0 < 1.0
            time.sleep(0.05)
        # every node's proxy has dropped it from the kernel too
        for node in ("node1", "node2", "node3"):
            assert ip not in run(lab, node, "nft", "list", "table", "ip", "flatnet-proxy").stdout
    finally:
        store.close()
    flatnet("delete", "-f", str(f), "--lab", lab)


def test_udp_conntrack_is_flushed_when_an_endpoint_goes(lab: str, tmp_path: Path) -> None:
    """One client socket (fixed source port) keeps talking to the UDP service; when
    its endpoint is deleted it reaches another one, not a black hole."""
    f = tmp_path / "u.yaml"
    f.write_text(
        f"apiVersion: v1\nkind: Pod\nmetadata: {{name: udp-a, labels: {{app: udp}}}}\n"
        f"spec:\n  nodeName: node2\n  containers:\n  - name: main\n"
        f"    command: [{PY}, -m, flatnet.agnhost, netexec, --http-port, '8080',\n"
        "              --udp-port, '8081']\n"
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: udp}\n"
        "spec: {selector: {app: udp}, ports: [{port: 53, protocol: UDP, targetPort: 8081}]}\n"
    )
    f2 = tmp_path / "u2.yaml"
    f2.write_text(f.read_text().split("---")[0].replace("udp-a", "udp-b").replace("node2", "node3"))
    flatnet("apply", "-f", str(f), "--lab", lab)
    vip = services(lab)["udp"]["clusterIP"]
    code = (
        "import socket, sys, time\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.3)\n"
        "s.bind(('0.0.0.0', 40053)); seen = []\n"
        "for i in range(int(sys.argv[1])):\n"
        f"    s.sendto(b'x', ('{vip}', 53))\n"
        "    try: seen.append(s.recvfrom(100)[1][0])\n"
        "    except TimeoutError: seen.append('timeout')\n"
        "    time.sleep(0.05)\n"
        "print(' '.join(seen))\n"
    )
    assert set(run(lab, "client", PY, "-c", code, "3").stdout.split()) == {vip}
    flatnet("apply", "-f", str(f2), "--lab", lab)
    loop = subprocess.Popen(
        [PY, "-m", "flatnet", "lab", "exec", "--lab", lab, "client", "--", PY, "-c", code, "60"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)
        a = tmp_path / "a.yaml"
        a.write_text(f.read_text().split("---")[0])
        flatnet("delete", "-f", str(a), "--lab", lab)
        out, _ = loop.communicate(timeout=60)
    finally:
        loop.kill()
    answers = out.split()
    assert answers[-10:] == [vip] * 10, answers  # still answered, by udp-b
    flatnet("delete", "-f", str(f2), "--lab", lab)
    flatnet("delete", "-f", str(f), "--lab", lab, "--ignore-not-found")  # udp-a went above


def test_agent_start_repairs_drift(lab: str) -> None:
    """A full sync on start: an element removed by hand is back, a stray chain
    in the proxy's table is gone, and nothing is doubled."""
    vip = services(lab)["web"]["clusterIP"]
    elem = ["{", vip, ".", "tcp", ".", "80", "}"]
    assert run(lab, "node2", "nft", "delete", "element", "ip", "flatnet-proxy", "service-ips",
               *elem).returncode == 0  # fmt: skip
    assert run(lab, "node2", "nft", "add", "chain", "ip", "flatnet-proxy", "stray").returncode == 0
    assert gets(lab, "node2", f"http://{vip}", 1)["failed"] == 1  # the drift hurts
    flatnet("lab", "restart-agent", "node2", "--lab", lab)
    wait_programmed(lab)
    deadline = time.monotonic() + 5
    while run(lab, "node2", "nft", "get", "element", "ip", "flatnet-proxy", "service-ips",
              *elem).returncode != 0:  # fmt: skip
        assert time.monotonic() < deadline
        time.sleep(0.1)
    table = run(lab, "node2", "nft", "list", "table", "ip", "flatnet-proxy").stdout
    assert "stray" not in table
    assert table.count("chain svc-default/web/tcp/80 {") == 1
    assert gets(lab, "node2", f"http://{vip}", 5)["failed"] == 0


def test_a_bad_manifest_applies_nothing(lab: str, tmp_path: Path) -> None:
    before = services(lab)
    good = "apiVersion: v1\nkind: Service\nmetadata: {name: fine}\nspec: {ports: [{port: 80}]}\n"
    for bad, words in (
        ("apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 0}]}\n",
         "bad.yaml:9: spec.ports[0].port: Input should be greater than or equal to 1"),
        ("apiVersion: v1\nkind: Service\nmetadata: {name: x}\n"
         f"spec: {{clusterIP: {before['web']['clusterIP']}, ports: [{{port: 80}}]}}\n",
         f"spec.clusterIP: {before['web']['clusterIP']} is already allocated to service"),
        ("apiVersion: v1\nkind: Secret\nmetadata: {name: x}\n", "kind 'Secret' is not supported"),
    ):  # fmt: skip
        f = tmp_path / "bad.yaml"
        f.write_text(good + "---\n" + bad)
        r = flatnet("apply", "-f", str(f), "--lab", lab, check=False)
        assert r.returncode == 1 and words in r.stderr, r.stderr
    assert services(lab).keys() == before.keys()

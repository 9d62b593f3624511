"""The bgp backend and LoadBalancer Services on real labs: BIRD in every node,
the router's BIRD, what the wire carries, faults, and the external host
reaching LoadBalancer addresses by BGP (ECMP) and by L2 (ARP, failover)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from lab.test_lab import flatnet, lab_namespaces, run
from lab.test_multinode import nodes

from flatnet.kernel import netns
from flatnet.lab.state import LABS_DIR, LabState

pytestmark = pytest.mark.lab
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@contextmanager
def up_example(example: str, name: str, tmp: Path, **replace: str) -> Iterator[str]:
    """A lab from an example file, renamed (and with ``replace``'s edits)."""
    text = (EXAMPLES / example).read_text()
    text = text.replace(f"name: {example.removesuffix('.yaml')}\n", f"name: {name}\n", 1)
    for a, b in replace.items():
        text = text.replace(a, b)
    with _up_text(text, name, tmp) as up:
        yield up


def services(name: str) -> dict[str, dict]:  # type: ignore[type-arg]
    items = json.loads(flatnet("get", "svc", "--lab", name, "-o", "json").stdout)["items"]
    return {s["name"]: s for s in items}


def routes(ns: str, proto: int = 12) -> dict[str, list[str]]:
    """dst -> next hops, for the routes of one protocol in ``ns``."""
    out: dict[str, list[str]] = {}
    with netns.netlink(ns, "list routes") as ipr:
        for r in ipr.get_routes(family=2, table=254):
            if r["proto"] != proto:
                continue
            dst = f"{r.get('RTA_DST')}/{r['dst_len']}"
            hops = [h.get_attr("RTA_GATEWAY") for h in r.get_attr("RTA_MULTIPATH") or []]
            out[dst] = hops or [r.get_attr("RTA_GATEWAY")]
    return out


def wait_for(what: str, fn: object, timeout: float = 10.0) -> float:
    t0 = time.monotonic()
    while not fn():  # type: ignore[operator]
        assert time.monotonic() - t0 < timeout, f"{what}: not after {timeout}s"
        time.sleep(0.02)
    return time.monotonic() - t0


def curl(name: str, url: str) -> str:
    r = run(name, "external", "curl", "-s", "-m", "2", url)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


class Sniffer:
    """IPv4 frames seen on ``dev`` in ``ns`` (a raw socket made there)."""

    def __init__(self, ns: str, dev: str) -> None:
        self.sock = netns.socket_in(netns.path_of(ns), socket.AF_PACKET, socket.SOCK_RAW,
                                    socket.htons(0x0800))  # fmt: skip
        self.sock.bind((dev, 0x0800))
        self.sock.settimeout(0.2)
        self.frames: list[bytes] = []
        self.stop = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.frames.append(self.sock.recv(2048))
            except TimeoutError:
                continue

    def close(self) -> list[tuple[str, str, int, int]]:
        """(src, dst, IP protocol, destination port) of each frame seen."""
        self.stop.set()
        self.t.join()
        self.sock.close()
        out = []
        for f in self.frames:
            if len(f) < 38:
                continue
            l4 = 14 + (f[14] & 0x0F) * 4
            dport = int.from_bytes(f[l4 + 2 : l4 + 4]) if f[23] in (6, 17) else 0
            out.append((socket.inet_ntoa(f[26:30]), socket.inet_ntoa(f[30:34]), f[23], dport))
        return out


@pytest.fixture
def routed(uniq: str, tmp_path: Path) -> Iterator[str]:
    with up_example("bgp-routed.yaml", uniq, tmp_path) as name:
        yield name


def test_bgp_on_a_routed_underlay(routed: str) -> None:
    name = routed
    st = LabState.load(name)
    # lab up returned once the router had its ECMP route to each LoadBalancer address
    svcs = services(name)
    web = svcs["web"]["externalIP"]
    assert len(routes(st.router).get(f"{web}/32", [])) == 4
    # every probe of the model passes, across the router, without NAT
    r = flatnet("lab", "check", "--lab", name, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    ns = nodes(name)
    for n in ns.values():  # every session up, every peer routed
        assert n["sessions"] and set(n["sessions"].values()) == {"Established"}, n
        assert len(n["peers"]) == 3 and not n["refused"]
    # the kernel: BIRD's routes (12) to every other block, none of flatnet's (66), no tunnel
    node1 = st.nodes["node1"].ns
    learned = routes(node1)
    blocks = {n["podSubnet"] for n in ns.values()} - {ns["node1"]["podSubnet"]}
    assert blocks <= set(learned)
    assert learned[ns["node3"]["podSubnet"]] == ["192.168.50.1"]  # via the router
    assert learned[ns["node2"]["podSubnet"]] == ["192.168.50.12"]  # straight to its peer
    assert routes(node1, 66) == {}
    assert "flatnet.1" not in run(name, "node1", "ip", "-o", "link").stdout
    # on the wire between router and segment B: pod IPs, no encapsulation
    pods = {p["name"]: p for p in json.loads(
        flatnet("get", "pods", "--lab", name, "-o", "json").stdout)["items"]}  # fmt: skip
    sniff = Sniffer(st.router, "eth1")
    seen_ip = curl_from_pod(name, "client", pods["web-1"]["ip"])
    frames = sniff.close()
    assert seen_ip == pods["client"]["ip"]  # the server sees the client pod's own IP
    assert (pods["client"]["ip"], pods["web-1"]["ip"], 6, 8080) in frames
    assert not [f for f in frames if f[2] == 17 and f[3] in (8472, 4789)]  # no VXLAN

    # LoadBalancer by BGP: an ECMP route at the router over the nodes with a say
    svcs = services(name)
    web, local = svcs["web"]["externalIP"], svcs["web-local"]["externalIP"]
    assert svcs["web"]["status"]["loadBalancer"]["ingress"] == [{"ip": web}]
    at_router = lambda: routes(st.router)  # noqa: E731
    wait_for("ECMP over 4 nodes", lambda: len(at_router().get(f"{web}/32", [])) == 4)
    with_eps = {st.nodes[pods[p]["node"]].underlay_ip for p in ("web-1", "web-2")}
    wait_for(
        "Local: only nodes with an endpoint",
        lambda: set(at_router().get(f"{local}/32", [])) == with_eps,
    )
    assert curl(name, f"http://{web}/hostname") in ("web-1", "web-2")
    assert curl(name, f"http://{local}/clientip").split(":")[0] == st_external_ip(name)
    # BIRD killed on node4: its routes leave the router within 1 s (BFD), and the
    # agent starts BIRD again (recovery), which brings them back
    node4_block = ns["node4"]["podSubnet"]
    pid = int((LABS_DIR / name / "nodes" / "node4" / "bird" / "bird.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    gone = wait_for("node4's block withdrawn", lambda: node4_block not in at_router(), 5)
    assert gone < 1.0
    wait_for("node4's block back", lambda: node4_block in at_router(), 10)
    # an agent restart flaps nothing: node2 keeps node1's block all along
    node2 = st.nodes["node2"].ns
    missing: list[float] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if ns["node1"]["podSubnet"] not in routes(node2):
                missing.append(time.monotonic())
            time.sleep(0.02)

    w = threading.Thread(target=watch)
    w.start()
    _restart_agent(name, "node1")
    time.sleep(1.5)
    stop.set()
    w.join()
    assert missing == []
    # silent failure: node3's link goes down; the router drops it within 1 s (BFD)
    node3_block = ns["node3"]["podSubnet"]
    run(name, "node3", "ip", "link", "set", "eth0", "down")
    assert wait_for("node3 silent: withdrawn", lambda: node3_block not in at_router(), 5) < 1.0
    run(name, "node3", "ip", "link", "set", "eth0", "up")
    wait_for("node3 back", lambda: node3_block in at_router(), 15)


def st_external_ip(name: str) -> str:
    return (
        run(name, "external", "ip", "-4", "-o", "addr", "show", "eth0")
        .stdout.split()[3]
        .split("/")[0]
    )


def curl_from_pod(name: str, pod: str, ip: str) -> str:
    r = run(name, pod, "curl", "-s", "-m", "2", f"http://{ip}:8080/clientip")
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().rsplit(":", 1)[0]


def _restart_agent(name: str, node: str) -> None:
    from flatnet.lab.lab import Lab

    Lab.load(name).restart_agent(node)


RR_AND_CROSS = """\
kind: Lab
name: {name}
network: {{backend: {backend}, backendOptions: {options}}}
underlay: {underlay}
nodes: [node1, node2, node3, node4]
external: true
---
apiVersion: v1
kind: Pod
metadata: {{name: a}}
spec: {{nodeName: node1, containers: [{{name: main}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: b}}
spec: {{nodeName: node4, containers: [{{name: main}}]}}
"""


@contextmanager
def _up_text(text: str, name: str, tmp: Path) -> Iterator[str]:
    """``flatnet lab up`` of ``text``; always down after, and nothing left."""
    f = tmp / "lab.yaml"
    f.write_text(text)
    try:
        flatnet("lab", "up", str(f))
        yield name
    finally:
        flatnet("lab", "down", name, check=False)
        assert lab_namespaces(name) == []
        assert not (LABS_DIR / name).exists()


def test_route_reflector_topology(uniq: str, tmp_path: Path) -> None:
    text = RR_AND_CROSS.format(
        name=uniq, backend="bgp", options="{routeReflectors: [node1]}", underlay="l2"
    )
    with _up_text(text, uniq, tmp_path) as name:
        ns = nodes(name)
        assert set(ns["node1"]["sessions"]) == {"node2", "node3", "node4"}
        for n in ("node2", "node3", "node4"):  # clients: the reflector only
            assert set(ns[n]["sessions"]) == {"node1"}
            assert len(ns[n]["peers"]) == 3
        st = LabState.load(name)
        # reflected routes keep the originator's next hop: straight to node4
        assert routes(st.nodes["node2"].ns)[ns["node4"]["podSubnet"]] == ["192.168.50.14"]
        assert flatnet("lab", "check", "--lab", name, check=False).returncode == 0


def test_cross_subnet_encapsulates_only_across_the_router(uniq: str, tmp_path: Path) -> None:
    text = RR_AND_CROSS.format(
        name=uniq, backend="bgp", options="{crossSubnet: true}", underlay="routed"
    )
    with _up_text(text, uniq, tmp_path) as name:
        ns = nodes(name)
        st = LabState.load(name)
        node1 = st.nodes["node1"].ns
        assert set(routes(node1)) == {ns["node2"]["podSubnet"]}  # BGP within the segment
        assert set(routes(node1, 66)) == {ns[n]["podSubnet"] for n in ("node3", "node4")}
        sniff = Sniffer(st.router, "eth1")
        assert flatnet("lab", "check", "--lab", name, check=False).returncode == 0
        frames = sniff.close()
        assert [f for f in frames if f[2] == 17 and f[3] == 8472]  # VXLAN across the router
        assert not [f for f in frames if f[0].startswith("10.244.") and f[2] == 6]


def test_loadbalancer_l2_failover_with_traffic_running(uniq: str, tmp_path: Path) -> None:
    with up_example("lb-l2.yaml", uniq, tmp_path) as name:
        st = LabState.load(name)
        svcs = services(name)
        vip = svcs["web"]["externalIP"]
        assert vip == "192.168.50.200"
        wait_for("one node answers", lambda: len(services(name)["web"]["announcedBy"]) == 1)
        owner = services(name)["web"]["announcedBy"][0].split()[0]
        assert curl(name, f"http://{vip}/hostname") in ("web-1", "web-2")
        local = svcs["web-local"]["externalIP"]
        assert curl(name, f"http://{local}/clientip").split(":")[0] == "192.168.50.254"
        # the endpoints live elsewhere (a dead node's pods stay endpoints until
        # Kubernetes evicts them: that is not what this measures)
        from flatnet.lab.lab import Lab

        the = Lab.load(name)
        for pod, info in list(the.st.pods.items()):
            if info.node == owner and pod.startswith("web"):
                store = the.store()
                the.delete_pod(pod, store)
                store.close()
        left = 1 if owner != "node3" else 2
        wait_for("endpoints elsewhere", lambda: len(services(name)["web"]["endpoints"]) == left)
        # the owner dies (agent killed, link down); traffic goes on through another
        ok: list[tuple[float, bool]] = []
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                began = time.monotonic()
                r = run(name, "external", "curl", "-s", "-m", "0.5", f"http://{vip}/hostname")
                ok.append((began, r.returncode == 0))

        pid = next(p.pid for p in st.processes if p.what == f"agent:{owner}")
        t = threading.Thread(target=load)
        t.start()
        time.sleep(0.5)
        died = time.monotonic()
        os.killpg(pid, signal.SIGKILL)
        run(name, owner, "ip", "link", "set", "eth0", "down")
        t0 = time.monotonic()  # requests begun from here on cannot reach the dead node
        wait_for("another node answers", lambda: [
            s for s in services(name)["web"]["announcedBy"] if not s.startswith(owner)
        ], 5)  # fmt: skip
        time.sleep(1.0)
        stop.set()
        t.join()
        back = [ts for ts, good in ok if good and ts > t0]
        assert back, ok
        later = [good for ts, good in ok if ts > back[0]]
        assert all(later), (owner, [(round(ts - died, 2), g) for ts, g in ok])
        assert back[0] - died < 2.5  # target 2 s; measured in bench/bgp.py


def test_bad_pool_input_names_service_and_pool(uniq: str, tmp_path: Path) -> None:
    with up_example("lb-l2.yaml", uniq, tmp_path, **{
        "192.168.50.200-192.168.50.220": "192.168.50.200-192.168.50.201"}) as name:  # fmt: skip
        f = tmp_path / "more.yaml"
        f.write_text(
            "apiVersion: v1\nkind: Service\nmetadata: {name: third}\nspec:\n"
            "  type: LoadBalancer\n  selector: {app: web}\n  ports: [{port: 80}]\n"
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: fresh}\n"
        )
        r = flatnet("apply", "-f", str(f), "--lab", name, check=False)
        assert r.returncode != 0
        assert "service default/third: no free address left in pool(s) lan" in r.stderr
        assert "third" not in services(name)
        assert "fresh" not in flatnet("get", "ns", "--lab", name).stdout  # nothing applied
        f.write_text(
            "apiVersion: v1\nkind: Service\nmetadata: {name: third}\nspec:\n"
            "  type: LoadBalancer\n  loadBalancerIP: 10.9.9.9\n  ports: [{port: 80}]\n"
        )
        r = flatnet("apply", "-f", str(f), "--lab", name, check=False)
        assert "spec.loadBalancerIP: 10.9.9.9 is in no address pool (lan" in r.stderr


def birds(name: str) -> list[str]:
    """The BIRD processes of this lab (by their config path), as ``ps`` lists them."""
    out = run_host("ps", "-eo", "args").stdout.splitlines()
    return [a for a in out if a.startswith("/usr/sbin/bird ") and f"/labs/{name}/" in a]


def run_host(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=True)


def test_set_backend_to_and_from_bgp_on_a_routed_lab(uniq: str, tmp_path: Path) -> None:
    text = RR_AND_CROSS.format(name=uniq, backend="vxlan", options="{}", underlay="routed")
    with _up_text(text, uniq, tmp_path) as name:
        st = LabState.load(name)
        assert birds(name) == []
        # a typo changes nothing
        r = flatnet("lab", "set-backend", "--lab", name, "bgpp", check=False)
        assert r.returncode != 0 and "'bgpp' is not one of" in r.stderr, r.stderr
        assert {n["backend"] for n in nodes(name).values()} == {"vxlan"}
        # to bgp: the router runs BIRD and peers with every node, as lab up does
        flatnet("lab", "set-backend", "--lab", name, "bgp")
        assert len(birds(name)) == 5  # 4 nodes and the router
        ns = nodes(name)
        for n in ns.values():
            assert n["backend"] == "bgp" and "router" in n["sessions"], n
            assert set(n["sessions"].values()) == {"Established"}, n
        blocks = {n["podSubnet"] for n in ns.values()}
        wait_for("every block at the router", lambda: set(routes(st.router)) == blocks)
        assert routes(st.nodes["node1"].ns)[ns["node4"]["podSubnet"]] == ["192.168.50.1"]
        assert "flatnet.1" not in run(name, "node1", "ip", "-o", "link").stdout
        assert flatnet("lab", "check", "--lab", name, check=False).returncode == 0
        # and back: no BIRD, none of its routes anywhere, the tunnel again
        flatnet("lab", "set-backend", "--lab", name, "vxlan")
        assert birds(name) == []
        for ns_name in (st.router, *(n.ns for n in st.nodes.values())):
            assert routes(ns_name) == {}, ns_name
        assert "flatnet.1" in run(name, "node1", "ip", "-o", "link").stdout
        assert flatnet("lab", "check", "--lab", name, check=False).returncode == 0

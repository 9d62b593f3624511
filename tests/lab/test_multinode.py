"""The Kubernetes network model across nodes, once per backend, on real labs.

Every pod reaches every pod (same node and cross node) by ICMP and TCP, the
server sees the client pod's own IP, pods reach the external host, every node
reaches every pod; the kernel holds exactly the objects the backend's recipe
says; faults (a killed agent, a route removed by hand, a node that stops
renewing) heal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from lab.test_lab import flatnet, lab_namespaces, pods, run

from flatnet.lab.state import LABS_DIR, LabState

pytestmark = pytest.mark.lab

BACKENDS = ["host-gw", "vxlan", "udp"]

LAB = """\
kind: Lab
name: {name}
network: {{backend: {backend}, leaseTTL: {ttl}}}
datastore: {datastore}
underlay: {underlay}
agentResync: 1
nodes: [node1, node2, node3]
external: true
"""
POD = """\
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec: {{nodeName: {node}, containers: [{{name: main}}]}}
"""


def lab_file(tmp: Path, name: str, backend: str, **kw: object) -> Path:
    text = LAB.format(
        name=name,
        backend=backend,
        datastore=kw.get("datastore", "sqlite"),
        underlay=kw.get("underlay", "l2"),
        ttl=kw.get("ttl", 86400),
    )
    for node in ("node1", "node2", "node3"):
        for i in (1, 2):
            text += POD.format(name=f"{node[-1]}p{i}", node=node)
    f = tmp / "lab.yaml"
    f.write_text(text)
    return f


def up(f: Path, name: str) -> Iterator[str]:
    try:
        flatnet("lab", "up", str(f))
        yield name
    finally:
        flatnet("lab", "down", name, check=False)
        assert lab_namespaces(name) == []
        assert not (LABS_DIR / name).exists()


def nodes(name: str) -> dict[str, dict]:  # type: ignore[type-arg]
    items = json.loads(flatnet("get", "nodes", "--lab", name, "-o", "json").stdout)["items"]
    return {n["name"]: n for n in items}


def ip_json(ns: str, *args: str) -> list[dict]:  # type: ignore[type-arg]
    out = subprocess.run(["ip", "-n", ns, "-j", *args], capture_output=True, text=True)
    return list(json.loads(out.stdout or "[]"))


def owned_routes(ns: str) -> list[dict]:  # type: ignore[type-arg]
    return [r for r in ip_json(ns, "route") if str(r.get("protocol")) == "66"]


def conntrack(ns: str, *args: str) -> list[str]:
    """The conntrack entries in ``ns`` that match ``args``, one line each."""
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "conntrack", "-L", *args], capture_output=True, text=True
    ).stdout
    return [line for line in out.splitlines() if line.strip()]


def in_pod(pod: dict, *cmd: str, **kw: object) -> subprocess.Popen[str]:  # type: ignore[type-arg]
    """Start ``cmd`` inside a pod's namespace (as listed by ``get pods``)."""
    ns = pod["netns"].rsplit("/", 1)[1]
    return subprocess.Popen(["ip", "netns", "exec", ns, *cmd], text=True, **kw)  # type: ignore[call-overload, no-any-return]


def lacks(ns: str, dst: str) -> bool:
    return dst not in {r["dst"] for r in owned_routes(ns)}


def wait_for(cond: object, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not cond():  # type: ignore[operator]
        assert time.monotonic() - t0 < timeout, f"{what} not within {timeout}s"
        time.sleep(0.05)
    return time.monotonic() - t0


@pytest.fixture(params=BACKENDS)
def cluster(request: pytest.FixtureRequest, uniq: str, tmp_path: Path) -> Iterator[str]:
    yield from up(lab_file(tmp_path, uniq, request.param, ttl=4), uniq)


def test_flat_network_across_nodes(cluster: str) -> None:
    st = LabState.load(cluster)
    ps = pods(cluster)
    ns_of = {n: info.ns for n, info in st.nodes.items()}
    backend = next(iter(nodes(cluster).values()))["backend"]
    # the probe matrix: every pod -> every pod and external, ICMP + TCP, source IP seen
    check = flatnet("lab", "check", "--lab", cluster)
    assert "54/54 probes passed" in check.stdout, check.stdout
    assert "node→pod           18/18 passed" in check.stdout  # every node reaches every pod
    assert "cross node" in check.stdout and "FAIL" not in check.stdout
    for name, p in ps.items():
        # the pod's own IP, from inside it, is what get pods reports
        own = run(cluster, name, "ip", "-4", "-o", "addr", "show", "eth0").stdout.split()[3]
        assert own.split("/")[0] == p["ip"]
        # every node reaches every pod, with its own address (no NAT)
        for node in ns_of:
            assert run(cluster, node, "ping", "-c1", "-W1", p["ip"]).returncode == 0
    seen = run(
        cluster,
        "1p1",
        sys.executable,
        "-m",
        "flatnet.agnhost",
        "get",
        f"http://{ps['3p2']['ip']}:8080/clientip",
    )
    assert seen.stdout.startswith(ps["1p1"]["ip"] + ":")
    # the kernel holds exactly the recipe's objects: one route per peer (proto 66),
    # and for vxlan one permanent neighbour and one FDB entry per peer
    info = nodes(cluster)
    for node, ns in ns_of.items():
        peers = {n: i for n, i in info.items() if n != node}
        routes = {r["dst"]: r for r in owned_routes(ns)}
        assert set(routes) == {p["podSubnet"] for p in peers.values()}
        assert sorted(info[node]["peers"]) == sorted(peers) and info[node]["refused"] == {}
        if backend == "host-gw":
            assert {r["gateway"] for r in routes.values()} == {
                p["underlayIP"] for p in peers.values()
            }
        elif backend == "udp":
            assert all(r["dev"] == "flatnet-tun" for r in routes.values())
            assert ip_json(ns, "link", "show", "fl0")[0]["mtu"] == 1462  # 1500 - 28 - 10
        else:
            assert all(r["dev"] == "flatnet.1" and "onlink" in r["flags"] for r in routes.values())
            neigh = ip_json(ns, "neigh", "show", "dev", "flatnet.1")
            fdb = json.loads(
                subprocess.run(
                    ["ip", "netns", "exec", ns, "bridge", "-j", "fdb", "show", "dev", "flatnet.1"],
                    capture_output=True,
                    text=True,
                ).stdout
            )
            assert len(neigh) == 2 and all("PERMANENT" in n["state"] for n in neigh)
            assert {f["dst"] for f in fdb} == {p["underlayIP"] for p in peers.values()}
            mtu = ip_json(ns, "link", "show", "fl0")[0]["mtu"]
            assert mtu == 1450  # underlay 1500 - 50
        # tunnel packets are not tracked (the matrix above sent plenty of them);
        # the pods' own flows still are, so services and masquerade keep working
        tunnel = subprocess.run(
            ["ip", "netns", "exec", ns, "nft", "list", "table", "ip", "flatnet-tunnel"],
            capture_output=True,
            text=True,
        )
        port = {"vxlan": 8472, "udp": 8285}.get(backend)
        tracked = conntrack(ns, "-p", "udp", "--dport", str(port or 8472))
        if port is None:
            assert tunnel.returncode != 0, tunnel.stdout  # host-gw: no table
        else:
            me = info[node]["underlayIP"]
            assert f"ip daddr {me} udp dport {port} notrack" in tunnel.stdout
            assert f"ip saddr {me} udp dport {port} notrack" in tunnel.stdout
            assert tracked == [], tracked
        assert any("dport=8080" in e for e in conntrack(ns, "-p", "tcp")), node


def _agent_pid(st: LabState, node: str) -> int:
    return next(p.pid for p in st.processes if p.what == f"agent:{node}")


def test_faults_heal(cluster: str) -> None:
    st = LabState.load(cluster)
    backend = next(iter(nodes(cluster).values()))["backend"]
    ns1 = st.nodes["node1"].ns
    ps = pods(cluster)
    target = ps["3p1"]["ip"]
    # 1. a peer's route removed by hand comes back within the resync period (1 s)
    subnet3 = nodes(cluster)["node3"]["podSubnet"]
    subprocess.run(["ip", "-n", ns1, "route", "del", subnet3], check=True)
    took = wait_for(lambda: subnet3 in {r["dst"] for r in owned_routes(ns1)}, 5, "route restored")
    assert took < 3
    # 2. a stale route flatnet owns (a node long gone) is swept; one it does not own stays
    subprocess.run(
        ["ip", "-n", ns1, "route", "add", "10.244.200.0/24", "via", "192.168.50.99", "proto", "66"],
        check=True,
    )
    subprocess.run(
        ["ip", "-n", ns1, "route", "add", "10.99.0.0/24", "via", "192.168.50.99"], check=True
    )
    wait_for(
        lambda: "10.244.200.0/24" not in {r["dst"] for r in owned_routes(ns1)}, 5, "stale swept"
    )
    assert any(r["dst"] == "10.99.0.0/24" for r in ip_json(ns1, "route"))
    # 3. agent killed with SIGKILL during a transfer: traffic goes on (the data plane
    #    lives in the kernel); after a restart nothing is duplicated
    server = in_pod(ps["3p1"], "iperf3", "-s", "-1", stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        client = in_pod(ps["1p1"], "iperf3", "-c", target, "-t", "3", "-J", stdout=subprocess.PIPE)
        time.sleep(1)
        pid = _agent_pid(st, "node1")
        os.kill(pid, signal.SIGKILL)
        if backend == "udp":  # its data plane is the agent: TCP resends until it is back
            flatnet("lab", "restart-agent", "--lab", cluster, "node1")
        out, _ = client.communicate(timeout=30)
        assert client.returncode == 0, out
        assert json.loads(out)["end"]["sum_received"]["bytes"] > 0
    finally:
        server.kill()
        server.wait()
    before = sorted(r["dst"] for r in owned_routes(ns1))
    flatnet("lab", "restart-agent", "--lab", cluster, "node1")
    time.sleep(1.5)
    assert sorted(r["dst"] for r in owned_routes(ns1)) == before
    assert run(cluster, "1p1", "ping", "-c1", "-W1", target).returncode == 0
    # 4. a node that stops renewing its lease is removed by its peers after the TTL
    st = LabState.load(cluster)
    pid3 = _agent_pid(st, "node3")
    os.kill(pid3, signal.SIGSTOP)
    try:
        took = wait_for(
            lambda: subnet3 not in {r["dst"] for r in owned_routes(ns1)}, 15, "dead peer removed"
        )
        assert took < 10  # TTL 4 s + the store's sweep
    finally:
        os.kill(pid3, signal.SIGCONT)
    # it comes back (re-claims its old subnet, still free) and is programmed again
    wait_for(lambda: subnet3 in {r["dst"] for r in owned_routes(ns1)}, 15, "peer back")
    assert nodes(cluster)["node3"]["podSubnet"] == subnet3
    # its status went with the expired lease; the agent publishes it again
    wait_for(lambda: sorted(nodes(cluster)["node3"]["peers"]) == ["node1", "node2"], 5, "status")
    assert run(cluster, "1p1", "ping", "-c1", "-W1", target).returncode == 0


def test_routed_underlay_host_gw_needs_l2(uniq: str, tmp_path: Path) -> None:
    """The seed lesson in one lab: host-gw refuses the peers behind the router
    (naming them), overlays connect everything."""
    for lab in up(lab_file(tmp_path, uniq, "host-gw", underlay="routed"), uniq):
        info = nodes(lab)
        assert info["node3"]["underlayIP"].startswith("192.168.51.")
        assert set(info["node1"]["refused"]) == {"node3"}
        assert "not on this node's L2 segment" in info["node1"]["refused"]["node3"]
        assert set(info["node3"]["refused"]) == {"node1", "node2"}
        assert owned_routes(LabState.load(lab).nodes["node3"].ns) == []  # no black hole
        check = flatnet("lab", "check", "--lab", lab, check=False)
        assert check.returncode == 1
        ps = pods(lab)
        assert run(lab, "1p1", "ping", "-c1", "-W1", ps["2p1"]["ip"]).returncode == 0
        assert run(lab, "1p1", "ping", "-c1", "-W1", ps["3p1"]["ip"]).returncode != 0

        def mtu(pod: str, lab: str = lab) -> str:
            return run(lab, pod, "cat", "/sys/class/net/eth0/mtu").stdout.strip()

        assert {mtu(p) for p in ps} == {"1500"}
        r = flatnet("lab", "set-backend", "--lab", lab, "vxlan")
        assert "agents restarted" in r.stderr  # progress is shown
        # the pods that exist get the overlay's MTU: full-size packets fit the tunnel
        assert "pod MTU: 1450 (" in r.stdout and "1500" not in r.stdout, r.stdout
        assert {mtu(p) for p in ps} == {"1450"}
        big = ("ping", "-c1", "-W1", "-M", "do", "-s", "1422", ps["3p1"]["ip"])  # 1450 bytes
        assert run(lab, "1p1", *big).returncode == 0
        check = flatnet("lab", "check", "--lab", lab)
        assert "54/54 probes passed" in check.stdout


@pytest.mark.etcd
def test_etcd_on_the_underlay_and_its_outage(uniq: str, tmp_path: Path) -> None:
    """Agents reach etcd over the lab network, as on real hosts; etcd down for
    20 s interrupts no traffic, and afterwards the agents' watches carry on."""
    for lab in up(lab_file(tmp_path, uniq, "vxlan", datastore="etcd", underlay="routed"), uniq):
        st = LabState.load(lab)
        assert "etcd://192.168.50.2:2379" in st.nodes["node3"].agent_argv
        check = flatnet("lab", "check", "--lab", lab)
        assert "54/54 probes passed" in check.stdout
        ps = pods(lab)
        pinger = in_pod(
            ps["1p1"],
            "ping",
            "-q",
            "-i",
            "0.2",
            "-c",
            "125",
            ps["3p1"]["ip"],
            stdout=subprocess.PIPE,
        )
        flatnet("lab", "restart-etcd", "--lab", lab, "--down", "20")
        out, _ = pinger.communicate(timeout=60)
        assert " 0% packet loss" in out, out  # the data plane never noticed
        # the watches resumed: a lease deleted now is seen by every peer
        from flatnet.store import open_store

        store = open_store(st.store_url)
        try:
            subnet3 = nodes(lab)["node3"]["podSubnet"]
            key = next(
                kv.key for kv in store.range("/flatnet/subnets/") if subnet3.split("/")[0] in kv.key
            )
            store.delete(key)
        finally:
            store.close()
        for n in ("node1", "node2"):
            ns = st.nodes[n].ns
            wait_for(partial(lacks, ns, subnet3), 10, f"{n} removing node3 after the outage")


def rtt_ms(ping_out: str) -> tuple[float, float, float]:
    """min, avg, max from ping's summary line."""
    lo, avg, hi = ping_out.split("=")[-1].split("/")[:3]
    return float(lo), float(avg), float(hi)


def ping_q(lab: str, pod: str, ip: str, count: int, every: str) -> str:
    """ping's summary, ``count`` pings ``every`` seconds apart from ``pod``."""
    return run(lab, pod, "ping", "-q", "-c", str(count), "-i", every, ip).stdout


def test_underlay_impairments(uniq: str, tmp_path: Path) -> None:
    """Impairments from the lab file on every node's underlay link: delay and
    jitter (a delay line on a netfilter queue; this kernel has no netem) add to
    cross-node round trips and leave same-node ones alone, TCP still flows, and
    the delay processes go with the lab; a rate cap (tbf) slows cross-node TCP,
    loss (nftables) drops cross-node pings; same-node traffic is untouched."""
    f = lab_file(tmp_path, uniq, "vxlan")
    base = f.read_text()
    delayed = "agentResync: 1\nnetem: {delay: 10ms, jitter: 2ms}\n"
    f.write_text(base.replace("agentResync: 1\n", delayed))
    for lab in up(f, uniq):
        ps = pods(lab)
        far, near = (ping_q(lab, "1p1", ps[p]["ip"], 20, "0.05") for p in ("2p1", "1p2"))
        lo, avg, hi = rtt_ms(far)
        # a round trip leaves two nodes: 2 x (10 ms +- 2 ms), never reordered
        assert lo >= 16 and 18 <= avg <= 30 and hi - lo > 0.5, far
        assert rtt_ms(near)[1] < 5, near
        got = run(lab, "1p1", sys.executable, "-m", "flatnet.agnhost", "get",
                  f"http://{ps['3p2']['ip']}:8080/hostname")  # fmt: skip
        assert got.returncode == 0 and "3p2" in got.stdout, got
        lines = [p for p in LabState.load(lab).processes if p.what.startswith("delay:")]
        assert sorted(p.what for p in lines) == ["delay:node1", "delay:node2", "delay:node3"]
    for p in lines:  # gone with the lab
        cmdline = Path(f"/proc/{p.pid}/cmdline")
        assert not cmdline.exists() or b"flatnet.lab.delay" not in cmdline.read_bytes()
    impaired = "agentResync: 1\nnetem: {rate: 200mbit, loss: 30%}\n"
    f.write_text(base.replace("agentResync: 1\n", impaired))
    for lab in up(f, uniq):
        ps = pods(lab)
        lost, kept = (ping_q(lab, "1p1", ps[p]["ip"], 60, "0.01") for p in ("2p1", "1p2"))
        assert " 0% packet loss" in kept and " 0% packet loss" not in lost, (lost, kept)
        srv = in_pod(ps["2p1"], "iperf3", "-s", "-1", stdout=subprocess.DEVNULL)
        try:
            time.sleep(0.4)
            out = run(lab, "1p1", "iperf3", "-c", ps["2p1"]["ip"], "-t", "2", "-J").stdout
        finally:
            srv.kill()
            srv.wait()
        assert json.loads(out)["end"]["sum_received"]["bits_per_second"] < 200e6

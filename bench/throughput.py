"""Pod->pod across nodes, per backend, against node->node over the same underlay.

One 2-node lab (one pod per node); for each backend (switched on the running
lab with ``flatnet lab set-backend``), in the same run, ``REPEAT`` rounds
(default 5) of a pair: the node->node baseline and the pod->pod path, in
alternating order (whichever runs second in a pair measured lower here, so a
fixed order biased every ratio):
  * single-stream TCP throughput with iperf3 (``SECONDS_EACH`` s, default 3),
    client pinned to CPU 0 and server to CPU 1 (``iperf3 -A 0,1``) so every
    run has the same placement,
  * round-trip latency: ping (100 × 2 ms apart) and a TCP request/response rate
    (1-byte ping-pong on one connection, 2 s).
The ratio printed is the median of the per-round ratios (each pod run against
the baseline run next to it), which cancels the slow drifts of a shared
machine; the Gbit/s columns are medians of the runs.

TCP's congestion control matters on a path that a CPU, not a wire, limits:
``CC`` (comma-separated, default ``default`` = the namespace's own, bbr on
these machines) picks iperf3's ``-C`` per run; ``CC=default,cubic`` measures
both. With bbr the baseline is held near 9-10 Gbit/s by bbr's pacing; with
cubic it runs to what the CPU gives (14-17 Gbit/s here), so cubic's ratios
are the CPU cost of each path relative to node->node.
Each backend runs with the eBPF fast path (flatnet/fastpath/, on by
default) and again without it (``STACK=0`` skips that), so its gain is
measured in the same run.
For vxlan and udp a second path, node -> node through the tunnel device alone
(to the peer's ``<subnet>.0``), separates the tunnel's cost from the pods'
veth and bridge. A third table measures the kernel's VXLAN device with no
flatnet at all (two namespaces on one veth, the device over it, no nftables):
the ceiling for any vxlan path here, so the vxlan ratio can be read as
"flatnet's cost" and "the kernel's cost".

The lab's underlay is veth, which has no line rate: every path runs as fast as
the sending CPU can push it, so the ratios are CPU costs. A real NIC has a line
rate, and flannel's and Calico's figures are measured on one; ``WIRE`` (default
``4gbit``, "" skips it) runs the same pairs again in a second lab whose node
links carry that rate (the lab's ``netem: {rate}``, a tbf qdisc), which is
that regime. Both tables are printed; neither replaces the other.
A routed lab (``ROUTED``, default ``bgp``; "" skips it) puts the two nodes on
two segments joined by the lab's router: the baseline is node -> node across
the router, and bgp's pods talk across it without encapsulation.
Targets (issues 3, 15): host-gw >= 0.95, vxlan >= 0.9, udp >= 0.3, bgp >= 0.95
of node->node over the same path.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import SRC, flatnet, pct  # noqa: E402,F401

from flatnet.lab.state import LabState  # noqa: E402

SECONDS = int(os.environ.get("SECONDS_EACH", "3"))
REPEAT = int(os.environ.get("REPEAT", "5"))  # rounds of (baseline, pod) pairs
CCS = os.environ.get("CC", "default").split(",")
PIN = ["-A", "0,1"] if (os.cpu_count() or 1) >= 2 else []
BACKENDS = os.environ.get("BACKENDS", "host-gw,vxlan,udp,bgp").split(",")
ROUTED = [b for b in os.environ.get("ROUTED", "bgp").split(",") if b]  # backends across a router
WIRE = os.environ.get("WIRE", "4gbit")  # a second lab whose links have this rate; "" skips it
STACK = os.environ.get("STACK", "1") == "1"  # also each backend with the fast path off

LAB = """\
kind: Lab
name: {name}
network: {{backend: {backend}}}
nodes: [node1, node2]
---
apiVersion: v1
kind: Pod
metadata: {{name: a}}
spec: {{nodeName: node1, containers: [{{name: s, command: [sleep, infinity]}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: b}}
spec: {{nodeName: node2, containers: [{{name: s, command: [sleep, infinity]}}]}}
"""

RR = r"""
import socket, sys, time
mode, host = sys.argv[1], sys.argv[2]
if mode == "server":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, 5202)); s.listen(1); c, _ = s.accept()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while (b := c.recv(1)):
        c.sendall(b)
else:
    c = socket.create_connection((host, 5202))
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    n, end = 0, time.monotonic() + 2
    while time.monotonic() < end:
        c.sendall(b"x"); c.recv(1); n += 1
    print(n / 2)
"""


def in_ns(ns: str, *cmd: str, **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen(["ip", "netns", "exec", ns, *cmd], text=True, **kw)  # type: ignore[call-overload, no-any-return]


def iperf(server_ns: str, client_ns: str, ip: str, cc: str) -> float:
    srv = in_ns(server_ns, "iperf3", "-s", "-1", stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.4)
        extra = [*PIN, *([] if cc == "default" else ["-C", cc])]
        argv = ["iperf3", "-c", ip, "-t", str(SECONDS), "-J", *extra]
        cli = in_ns(client_ns, *argv, stdout=subprocess.PIPE)
        out, _ = cli.communicate(timeout=SECONDS + 30)
        return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        srv.kill()
        srv.wait()


def ping_ms(client_ns: str, ip: str) -> float:
    out = subprocess.run(
        ["ip", "netns", "exec", client_ns, "ping", "-q", "-c", "100", "-i", "0.002", ip],
        capture_output=True,
        text=True,
    ).stdout
    m = re.search(r"= [\d.]+/([\d.]+)/", out)
    return float(m.group(1)) if m else float("nan")


def rr_per_s(server_ns: str, client_ns: str, ip: str) -> float:
    srv = in_ns(server_ns, sys.executable, "-c", RR, "server", ip)
    try:
        time.sleep(0.4)
        cli = in_ns(client_ns, sys.executable, "-c", RR, "client", ip, stdout=subprocess.PIPE)
        out, _ = cli.communicate(timeout=30)
        return float(out.strip())
    finally:
        srv.kill()
        srv.wait()


Run = tuple[float, float, float]  # Gbit/s, ping ms, TCP RR/s


def measure(server_ns: str, client_ns: str, ip: str, cc: str, latency: bool) -> Run:
    gbps = iperf(server_ns, client_ns, ip, cc)
    if not latency:
        return (gbps, float("nan"), float("nan"))
    return (gbps, ping_ms(client_ns, ip), rr_per_s(server_ns, client_ns, ip))


Path3 = tuple[str, str, str]  # server namespace, client namespace, server IP


def pair(base: Path3, path: Path3, cc: str, rnd: int, latency: bool) -> tuple[Run, Run]:
    """One round: the baseline and the path, the order flipped every round."""
    if rnd % 2:
        p = measure(*path, cc, latency)
        return measure(*base, cc, latency), p
    b = measure(*base, cc, latency)
    return b, measure(*path, cc, latency)


def med(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]  # runs without latency hold nan there
    return statistics.median(xs) if xs else float("nan")


Results = dict[str, dict[str, list[tuple[Run, Run]]]]  # [cc][path] = [(baseline, path)]


def rounds(results: Results, base: Path3, paths: dict[str, Path3], timed: set[str]) -> None:
    """``REPEAT`` paired rounds of every path, for each congestion control in
    ``results``; latency too for the paths in ``timed``, with the first one."""
    first = next(iter(results))
    for rnd in range(REPEAT):
        for cc in results:
            for label, path in paths.items():
                lat = cc == first and label in timed
                results[cc].setdefault(label, []).append(pair(base, path, cc, rnd, lat))


def run_lab(
    wire: str, ccs: list[str], latency: bool, backends: list[str] = BACKENDS, routed: bool = False
) -> Results:
    """One 2-node lab (``wire``: a rate on every node's link, "" for none;
    ``routed``: the nodes on two segments, a router between); every backend
    in turn, ``REPEAT`` paired rounds per path."""
    name = "tp" + uuid.uuid4().hex[:6]
    f = Path(tempfile.mkdtemp(prefix="flatnet-bench-")) / "lab.yaml"
    text = LAB.format(name=name, backend=backends[0])
    if wire:
        text = text.replace("nodes:", f"netem: {{rate: {wire}}}\nnodes:", 1)
    if routed:
        text = text.replace("nodes:", "underlay: routed\nnodes:", 1)
    f.write_text(text)
    flatnet("lab", "up", str(f))
    results: Results = {cc: {} for cc in ccs}
    try:
        st = LabState.load(name)
        n1, n2 = st.nodes["node1"], st.nodes["node2"]
        base = (n2.ns, n1.ns, n2.underlay_ip)
        for i, backend in enumerate(backends):
            if i:
                flatnet("lab", "set-backend", "--lab", name, "--fast-path", backend)
            st = LabState.load(name)
            b_ip = st.pods["b"].ip
            pod_path = f"pod -> pod, {backend}"
            paths = {pod_path: (st.pods["b"].ns, st.pods["a"].ns, b_ip)}
            if backend in ("vxlan", "udp"):
                # node2's tunnel device holds <its subnet>.0 (SubnetLen 24 in LAB):
                # node -> node through the tunnel alone, without the pods' veth and bridge
                dev_ip = str(ipaddress.ip_network(f"{b_ip}/24", strict=False).network_address)
                paths[f"node -> node, {backend} dev"] = (n2.ns, n1.ns, dev_ip)
            rounds(results, base, paths, {pod_path} if latency else set())
            if STACK:  # the same pods with the fast path off: the node's stack forwards
                flatnet("lab", "set-backend", "--lab", name, "--no-fast-path", backend)
                stack = {f"pod -> pod, {backend}, no fast path": paths[pod_path]}
                rounds(results, base, stack, set(stack) if latency else set())
    finally:
        flatnet("lab", "down", name)
    return results


BARE = """\
ip -n {a} link add eth0 type veth peer name eth0 netns {b}
ip -n {a} addr add 192.168.77.1/24 dev eth0
ip -n {b} addr add 192.168.77.2/24 dev eth0
ip -n {a} link add vx type vxlan id 1 local 192.168.77.1 dev eth0 dstport 8472 nolearning
ip -n {b} link add vx type vxlan id 1 local 192.168.77.2 dev eth0 dstport 8472 nolearning
ip -n {a} link set vx address 02:00:00:00:00:01
ip -n {b} link set vx address 02:00:00:00:00:02
ip -n {a} addr add 10.9.0.1/24 dev vx
ip -n {b} addr add 10.9.0.2/24 dev vx
ip -n {a} neigh add 10.9.0.2 lladdr 02:00:00:00:00:02 dev vx nud permanent
ip -n {b} neigh add 10.9.0.1 lladdr 02:00:00:00:00:01 dev vx nud permanent
bridge -n {a} fdb append 02:00:00:00:00:02 dev vx dst 192.168.77.2
bridge -n {b} fdb append 02:00:00:00:00:01 dev vx dst 192.168.77.1
"""


def run_bare(ccs: list[str]) -> Results:
    """The kernel's VXLAN device alone: two namespaces on one veth, a VXLAN
    device over it (the recipe flannel uses), no flatnet, no bridge, no
    nftables. Its ratio is the ceiling for any vxlan path on this machine."""
    tag = uuid.uuid4().hex[:6]
    a, b = f"fl-tpk{tag}-a", f"fl-tpk{tag}-b"
    results: Results = {cc: {} for cc in ccs}
    made: list[str] = []
    try:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            made.append(ns)
        for line in BARE.format(a=a, b=b).splitlines():
            subprocess.run(line.split(), check=True)
        for ns in (a, b):
            for dev in ("lo", "eth0", "vx"):
                subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
        paths = {"bare kernel vxlan": (b, a, "10.9.0.2")}
        rounds(results, (b, a, "192.168.77.2"), paths, set(paths))
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], check=False)
    return results


def report(title: str, results: Results) -> None:
    for cc, paths in results.items():
        label = "namespace default (bbr here)" if cc == "default" else cc
        print(f"\n{title}; congestion control: {label}; ratio = median of the per-round ratios")
        print(
            f"{'path':<36}{'Gbit/s':>8}{'baseline':>9}{'ratio':>7}{'ping ms':>9}"
            f"{'TCP RR/s':>10}{'ratio':>7}  per-round ratios"
        )
        for path, runs in paths.items():
            spread = sorted(p[0] / b[0] for b, p in runs)
            print(
                f"{path:<36}{med([p[0] for _, p in runs]):8.2f}"
                f"{med([b[0] for b, _ in runs]):9.2f}{med(spread):7.2f}"
                f"{med([p[1] for _, p in runs]):9.3f}{med([p[2] for _, p in runs]):10.0f}"
                f"{med([p[2] / b[2] for b, p in runs]):7.2f}  {spread[0]:.2f}..{spread[-1]:.2f}"
            )
        all_base = [b for runs in paths.values() for b, _ in runs]
        print(
            f"(baseline node -> node, all rounds: {med([b[0] for b in all_base]):.2f} Gbit/s, "
            f"ping {med([b[1] for b in all_base]):.3f} ms, "
            f"TCP RR {med([b[2] for b in all_base]):.0f}/s)"
        )


def main() -> None:
    print(
        f"single-stream TCP and round trips across two lab nodes: {REPEAT} rounds of "
        f"{SECONDS} s iperf3 per path, each paired with a node->node run, order alternating"
    )
    report("underlay: veth, no wire (the CPU is the limit)", run_lab("", CCS, latency=True))
    if ROUTED:
        report(
            "underlay: routed, nodes on two segments (baseline: node -> node across the router)",
            run_lab("", CCS[:1], latency=True, backends=ROUTED, routed=True),
        )
    report(
        "no flatnet: two namespaces on one veth (baseline) and a VXLAN device over it",
        run_bare(CCS),
    )
    if WIRE:
        report(
            f"underlay: a {WIRE} wire (tbf on each node's link, as a NIC's line rate)",
            run_lab(WIRE, CCS[:1], latency=False),
        )


if __name__ == "__main__":
    main()

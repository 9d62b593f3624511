"""Pod->pod across nodes, per backend, against node->node over the same underlay.

One 2-node lab (one pod per node); for each backend (switched on the running
lab with ``flatnet lab set-backend``), in the same run, ``REPEAT`` times
alternating with the node->node baseline (medians reported):
  * single-stream TCP throughput with iperf3 (``SECONDS_EACH`` s, default 3),
  * round-trip latency: ping (100 × 2 ms apart) and a TCP request/response rate
    (1-byte ping-pong on one connection, 2 s),
next to the same figures node->node (the baseline). Prints Gbit/s and ratios.
Targets (issue 3): host-gw >= 0.95, vxlan >= 0.9, udp >= 0.3 of node->node.
"""

from __future__ import annotations

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
REPEAT = int(os.environ.get("REPEAT", "3"))  # interleaved with the baseline; medians
BACKENDS = os.environ.get("BACKENDS", "host-gw,vxlan,udp").split(",")

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


def iperf(server_ns: str, client_ns: str, ip: str) -> float:
    srv = in_ns(server_ns, "iperf3", "-s", "-1", stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.4)
        cli = in_ns(client_ns, "iperf3", "-c", ip, "-t", str(SECONDS), "-J", stdout=subprocess.PIPE)
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


def measure(server_ns: str, client_ns: str, ip: str) -> tuple[float, float, float]:
    return (
        iperf(server_ns, client_ns, ip),
        ping_ms(client_ns, ip),
        rr_per_s(server_ns, client_ns, ip),
    )


def median3(xs: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    return (
        statistics.median(x[0] for x in xs),
        statistics.median(x[1] for x in xs),
        statistics.median(x[2] for x in xs),
    )


def main() -> None:
    name = "tp" + uuid.uuid4().hex[:6]
    f = Path(tempfile.mkdtemp(prefix="flatnet-bench-")) / "lab.yaml"
    f.write_text(LAB.format(name=name, backend=BACKENDS[0]))
    flatnet("lab", "up", str(f))
    rows = []
    try:
        st = LabState.load(name)
        n1, n2 = st.nodes["node1"], st.nodes["node2"]
        base_runs: list[tuple[float, float, float]] = []
        for i, backend in enumerate(BACKENDS):
            if i:
                flatnet("lab", "set-backend", "--lab", name, backend)
            st = LabState.load(name)
            a, b = st.pods["a"], st.pods["b"]
            runs = []
            for _ in range(REPEAT):  # baseline and pod path alternate: same conditions
                base_runs.append(measure(n2["ns"], n1["ns"], n2["underlayIP"]))
                runs.append(measure(b["ns"], a["ns"], b["ip"]))
            rows.append((f"pod -> pod, {backend}", *median3(runs)))
        base = median3(base_runs)
        rows.insert(0, ("node -> node (baseline)", *base))
    finally:
        flatnet("lab", "down", name)
    print(
        f"single-stream TCP and round trips across two lab nodes "
        f"(medians of {REPEAT} x {SECONDS} s iperf3, interleaved with the baseline)"
    )
    print(f"{'path':<28}{'Gbit/s':>8}{'ratio':>7}{'ping ms':>9}{'TCP RR/s':>10}{'ratio':>7}")
    for label, gbps, rtt, rr in rows:
        print(f"{label:<28}{gbps:8.2f}{gbps / base[0]:7.2f}{rtt:9.3f}{rr:10.0f}{rr / base[2]:7.2f}")


if __name__ == "__main__":
    main()

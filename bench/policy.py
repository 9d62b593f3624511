"""NetworkPolicy at scale: POLICIES (default 1,000) policies over PODS (default
5,000) pods, on a 2-node lab (node1 holds the server, node2 the client; fast
path on); the bulk pods are records on other nodes, plus LOCAL of them on
node1 so its table has work to do.

Prints, in one run:
* node1's full sync at agent start (in the agent, and from agent start until
  the policy table reports the store's revision);
* from the store write until node1's table has it, p50/p99 over TRIES: a
  policy added, a policy changed, a pod's label changed (a peer appears in
  or leaves many allow-lists);
* pod→pod (node2 → node1) TCP connect latency p50/p99 and single-stream
  throughput (iperf3) with 0 and with POLICIES policies selecting the server
  (all of them allowing the client), alternating ROUNDS times; the ratios
  (targets: connect ≤ 1.1, throughput ≥ 0.95). Fast path on; with
  FAST_PATH=0 the same lab without it;
* node1's agent RSS before the bulk and at that scale.

The anchor: Calico's iptables data plane took tens of seconds to minutes to
program 500–1,500 pods per node (projectcalico/calico#7085).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from _common import pct

from flatnet import keys
from flatnet.kernel import netns
from flatnet.lab import topo
from flatnet.lab.lab import Lab
from flatnet.lab.state import LabState
from flatnet.model import Namespace, PodRecord
from flatnet.policy.model import LabelSelector, NetworkPolicy, Peer, PolicyPort, Rule
from flatnet.store import Store, open_store

POLICIES = int(os.environ.get("POLICIES", "1000"))
PODS = int(os.environ.get("PODS", "5000"))
LOCAL = int(os.environ.get("LOCAL", "100"))
TRIES = int(os.environ.get("TRIES", "20"))
ROUNDS = int(os.environ.get("ROUNDS", "4"))
CONNECTS = int(os.environ.get("CONNECTS", "500"))
SECONDS = int(os.environ.get("SECONDS_EACH", "3"))
FAST = os.environ.get("FAST_PATH", "1") != "0"
NAMESPACES = 50
CONNECT_PORT = 5202  # connects; iperf3 takes 5201

LAB = """\
kind: Lab
name: {name}
network: {{backend: vxlan, fastPath: {fast}}}
nodes: [node1, node2]
dns: false
---
apiVersion: v1
kind: Pod
metadata: {{name: server, labels: {{app: server}}}}
spec:
  nodeName: node1
  containers:
  - {{name: s, command: [sleep, infinity]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, labels: {{app: client}}}}
spec: {{nodeName: node2, containers: [{{name: c, command: [sleep, infinity]}}]}}
"""


def sel(**labels: str) -> LabelSelector:
    return LabelSelector(tuple(sorted(labels.items())))


def bulk_pod(i: int, local_base: str) -> PodRecord:
    ns = f"b{i % NAMESPACES}"
    if i < LOCAL:  # on node1, in its subnet above the real pods
        ip, node = f"{local_base}.{100 + i % 150}", "node1"
    else:
        ip, node = f"10.{200 + i // 65536}.{i // 256 % 256}.{i % 256}", "elsewhere"
    return PodRecord(
        f"p{i}", ns, node, ip, labels={"app": f"a{i % 10}", "role": f"r{i % 7}"},
        phase="Running", ready=True, ports={"http": [8080, "TCP"]},
    )  # fmt: skip


def bulk_policy(k: int) -> NetworkPolicy:
    """Ingress to app a<k%10> in namespace b<k%50> from roles of the team's
    namespaces on a few ports, and from a CIDR; every tenth also egress."""
    rules = (
        Rule(
            (Peer(sel(role=f"r{k % 7}"), sel(team=f"t{k % 5}")), Peer(sel(role=f"r{(k + 1) % 7}"))),
            (PolicyPort("TCP", 80), PolicyPort("TCP", "http"), PolicyPort("UDP", 5000, 5100)),
        ),
        Rule((Peer(ip_block=None, pod_selector=None, namespace_selector=sel(team="ops")),)),
    )
    egress = (Rule((Peer(sel(role="db")),), (PolicyPort("TCP", 5432),)),) if k % 10 == 0 else ()
    types = ("Ingress", "Egress") if egress else ("Ingress",)
    return NetworkPolicy(
        f"np{k}", f"b{k % NAMESPACES}", sel(app=f"a{k % 10}"), types, rules, egress
    )


def server_policy(k: int) -> NetworkPolicy:
    """One of POLICIES policies that select the server (when it carries
    ``bench: on``) and allow the client, each on its own port list."""
    ports = (PolicyPort("TCP", 5201), PolicyPort("TCP", 5202), PolicyPort("TCP", 10000 + k))
    rule = Rule((Peer(sel(app="client")),), ports)
    return NetworkPolicy(f"srv{k}", "default", sel(bench="on"), ("Ingress",), (rule,))


def rss(st: LabState, node: str = "node1") -> float:
    pid = next(p.pid for p in st.processes if p.what == f"agent:{node}")
    for ln in Path(f"/proc/{pid}/status").read_text().splitlines():
        if ln.startswith("VmRSS:"):
            return int(ln.split()[1]) / 1024
    return 0.0


def programmed(store: Store, rev: int, node: str = "node1", timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kv = store.get(keys.policy_status(node))
        if kv is not None and json.loads(kv.value)["revision"] >= rev:
            return dict(json.loads(kv.value))
        time.sleep(0.002)
    raise SystemExit(f"{node}'s policy table did not reach revision {rev} in {timeout}s")


def put_all(store: Store, items: list[tuple[str, str]]) -> int:
    return max(store.put(k, v) for k, v in items)


def relabel(store: Store, key: str, **labels: str) -> int:
    kv = store.get(key)
    assert kv is not None
    rec = PodRecord.from_json(kv.value)
    new = {k: v for k, v in rec.labels.items() if k not in labels} | {
        k: v for k, v in labels.items() if v
    }
    return store.put(key, PodRecord(**{**rec.__dict__, "labels": new}).to_json())


def programming(st: LabState, store: Store) -> None:
    local_base = st.pods["server"].ip.rsplit(".", 1)[0]
    st_kill = Lab(st)
    st.kill("agent:node1", exact=True)
    t0 = time.monotonic()
    spaces = [Namespace.of(f"b{i}", {"team": f"t{i % 5}"}) for i in range(NAMESPACES)]
    items = [(n.key, n.to_json()) for n in spaces]
    items += [(p.key, p.to_json()) for p in (bulk_pod(i, local_base) for i in range(PODS))]
    items += [
        (keys.network_policy(p.namespace, p.name), p.to_json())
        for p in (bulk_policy(k) for k in range(POLICIES))
    ]
    rev = put_all(store, items)
    print(f"wrote {POLICIES} policies, {PODS} pods, {NAMESPACES} namespaces in "
          f"{time.monotonic() - t0:.1f} s")  # fmt: skip
    t0 = time.monotonic()
    st_kill.restart_agent("node1")
    status = programmed(store, rev)
    print(
        f"full sync at agent start: {status['lastSyncSeconds']['full']:.2f} s in the agent, "
        f"{time.monotonic() - t0:.2f} s from agent start until programmed "
        f"({status['isolated']} isolated pods on node1, {len(status['policies'])} policies "
        f"select them); Calico iptables: tens of s to minutes at 500-1,500 pods/node"
    )
    adds, changes, labels = [], [], []
    for k in range(TRIES):
        p = bulk_policy(POLICIES + k)
        t = time.monotonic()
        programmed(store, store.put(keys.network_policy(p.namespace, p.name), p.to_json()))
        adds.append(time.monotonic() - t)
        changed = NetworkPolicy(**{**p.__dict__, "ingress": p.ingress[:1]})
        t = time.monotonic()
        programmed(store, store.put(keys.network_policy(p.namespace, p.name), changed.to_json()))
        changes.append(time.monotonic() - t)
        peer = bulk_pod(LOCAL + k, local_base)  # elsewhere: a peer of many node1 pods
        t = time.monotonic()
        programmed(store, relabel(store, peer.key, role=f"r{(k + 3) % 7}"))
        labels.append(time.monotonic() - t)
    for what, xs in (
        ("policy add", adds),
        ("policy change", changes),
        ("pod label change", labels),
    ):
        print(f"{what:>16} -> programmed on node1: p50 {pct(xs, 50) * 1000:.1f} ms, "
              f"p99 {pct(xs, 99) * 1000:.1f} ms ({TRIES} tries)")  # fmt: skip


def connects(client_ns: str, ip: str, n: int) -> list[float]:
    def run() -> list[float]:
        out = []
        for _ in range(n):
            s = socket.socket()
            t = time.perf_counter()
            s.connect((ip, CONNECT_PORT))
            out.append((time.perf_counter() - t) * 1000)
            s.close()
        return out

    return netns.run_in(netns.path_of(client_ns), run)


def iperf(server_ns: str, client_ns: str, ip: str) -> float:
    srv = subprocess.Popen(["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1"],
                           stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        time.sleep(0.4)
        out = subprocess.run(
            ["ip", "netns", "exec", client_ns, "iperf3", "-c", ip, "-t", str(SECONDS), "-J",
             "-A", "0,1"], capture_output=True, text=True, timeout=SECONDS + 30,
        ).stdout  # fmt: skip
        return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        srv.kill()
        srv.wait()


def datapath(st: LabState, store: Store) -> None:
    server, client = st.pods["server"], st.pods["client"]
    for k in range(POLICIES):
        p = server_policy(k)
        store.put(keys.network_policy(p.namespace, p.name), p.to_json())
    srv = netns.socket_in(netns.path_of(server.ns), socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((server.ip, CONNECT_PORT))
    srv.listen(4096)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                c, _ = srv.accept()
                c.close()
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    got: dict[str, list[float]] = {"0": [], "N": []}
    p50: dict[str, list[float]] = {"0": [], "N": []}
    gbps: dict[str, list[float]] = {"0": [], "N": []}
    try:
        for _ in range(ROUNDS):
            for label, on in (("0", ""), ("N", "on")):
                programmed(store, relabel(store, keys.pod("default", "server"), bench=on))
                connects(client.ns, server.ip, 100)
                xs = connects(client.ns, server.ip, CONNECTS)
                got[label] += xs
                p50[label].append(pct(xs, 50))
        stop.set()
        srv.shutdown(socket.SHUT_RDWR)
        srv.close()
        for _ in range(ROUNDS):
            for label, on in (("0", ""), ("N", "on")):
                programmed(store, relabel(store, keys.pod("default", "server"), bench=on))
                gbps[label].append(iperf(server.ns, client.ns, server.ip))
    finally:
        stop.set()
        srv.close()
    mode = "fast path on" if FAST else "fast path off"
    for label, name in (("0", "0 policies"), ("N", f"{POLICIES} policies")):
        xs = got[label]
        print(f"pod->pod connect, {name:>14} selecting the server ({mode}): p50 "
              f"{pct(xs, 50):.3f} ms p99 {pct(xs, 99):.3f} ms; throughput "
              f"{' '.join(f'{g:.2f}' for g in gbps[label])} Gbit/s")  # fmt: skip
    ratios = sorted(b / a for a, b in zip(p50["0"], p50["N"], strict=True))
    tput = sorted(b / a for a, b in zip(gbps["0"], gbps["N"], strict=True))
    print(
        f"ratio {POLICIES} / 0 policies: connect p50 median {pct(ratios, 50):.2f} (rounds "
        f"{' '.join(f'{r:.2f}' for r in ratios)}; target <= 1.1), p99 pooled "
        f"{pct(got['N'], 99) / pct(got['0'], 99):.2f}; throughput median {pct(tput, 50):.2f} "
        f"(rounds {' '.join(f'{r:.2f}' for r in tput)}; target >= 0.95)"
    )


def main() -> None:
    name = "bp" + uuid.uuid4().hex[:6]
    d = Path(f"/tmp/flatnet-bench-{name}")
    d.mkdir()
    (d / "lab.yaml").write_text(LAB.format(name=name, fast="true" if FAST else "false"))
    st = Lab.build(topo.load(d / "lab.yaml"), lambda *a: None).st
    store = open_store(st.store_url)
    try:
        time.sleep(1)
        before = rss(st)
        programming(st, store)
        time.sleep(2)
        print(f"node1 agent RSS: {before:.1f} MiB before, {rss(st):.1f} MiB with {POLICIES} "
              f"policies over {PODS} pods")  # fmt: skip
        datapath(st, store)
    finally:
        store.close()
        st.destroy()
        for f in d.iterdir():
            f.unlink()
        d.rmdir()


if __name__ == "__main__":
    main()

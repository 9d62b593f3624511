"""Services at scale: one lab node, SERVICES (default 10,000) services × 2 endpoints.

Prints, in one run:
* the agent's full sync of the whole table (start-up) and its wall time from
  agent start until programmed;
* adding 1 service, and changing 1 endpoint, with all of them present: from the
  store write until the node's proxy reports it programmed (watch + compute +
  one nftables transaction), p50 over TRIES;
* TCP connection set-up through a ClusterIP (p50/p99 of CONNECTS connects from a
  pod) with 10 services and with SERVICES services, and the ratio (target ≤ 1.1);
* the agent's RSS with 10 and with SERVICES services.

The endpoints of the bulk services are pod records with made-up IPs (nothing
answers there; only the probe service's two endpoints are real pods).
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path

from _common import pct

from flatnet.lab import cluster, topo
from flatnet.lab.state import LabState
from flatnet.model import PodRecord, Service, ServicePort
from flatnet.proxy.sync import PROXY_PREFIX
from flatnet.store import open_store

SERVICES = int(os.environ.get("SERVICES", "10000"))
CONNECTS = int(os.environ.get("CONNECTS", "2000"))
TRIES = int(os.environ.get("TRIES", "10"))

LAB = """\
kind: Lab
name: {name}
nodes: [node1]
dns: false
---
apiVersion: v1
kind: Pod
metadata: {{name: web-1, labels: {{app: web}}}}
spec: {{nodeName: node1, containers: [{{name: m}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: web-2, labels: {{app: web}}}}
spec: {{nodeName: node1, containers: [{{name: m}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec: {{nodeName: node1, containers: [{{name: m}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: probe}}
spec: {{selector: {{app: web}}, ports: [{{port: 80, targetPort: 8080}}]}}
"""

CONNECT = """
import socket, sys, time, json
vip, n = sys.argv[1], int(sys.argv[2])
out = []
for _ in range(n):
    t = time.perf_counter()
    s = socket.create_connection((vip, 80), timeout=2)
    out.append((time.perf_counter() - t) * 1000)
    s.close()
print(json.dumps(out))
"""


def connects(st: LabState, vip: str) -> list[float]:
    import subprocess

    from flatnet.kernel import netns

    r = subprocess.run(
        [sys.executable, "-c", CONNECT, vip, str(CONNECTS)],
        capture_output=True,
        text=True,
        preexec_fn=netns.preexec(st.pods["client"]["ns"]),
        check=True,
    )
    return list(json.loads(r.stdout))


def rss(st: LabState) -> float:
    pid = next(p["pid"] for p in st.processes if p["what"] == "agent:node1")
    for ln in Path(f"/proc/{pid}/status").read_text().splitlines():
        if ln.startswith("VmRSS:"):
            return int(ln.split()[1]) / 1024
    return 0.0


def programmed(store, rev: int, timeout: float = 120) -> dict:  # type: ignore[no-untyped-def,type-arg]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kv = store.get(PROXY_PREFIX + "node1")
        if kv is not None and json.loads(kv.value)["revision"] >= rev:
            return dict(json.loads(kv.value))
        time.sleep(0.002)
    raise SystemExit(f"proxy did not reach revision {rev} in {timeout}s")


def bulk(i: int) -> tuple[Service, list[PodRecord]]:
    ip = f"10.{100 + i // 65536}.{i // 256 % 256}.{i % 256}"
    svc = Service(
        f"s{i}",
        "bulk",
        cluster_ip=f"10.{96 + (i + 1000) // 65536}.{(i + 1000) // 256 % 256}.{(i + 1000) % 256}",
        selector={"svc": f"s{i}"},
        ports=(ServicePort(80, target_port=8080),),
    )
    pods = [
        PodRecord(
            f"s{i}-{k}",
            "bulk",
            "elsewhere",
            ip if k == 0 else ip.replace("10.", "11.", 1),
            labels={"svc": f"s{i}"},
            phase="Running",
            ready=True,
        )  # fmt: skip
        for k in range(2)
    ]
    return svc, pods


def main() -> None:
    name = "b" + uuid.uuid4().hex[:6]
    d = Path(f"/tmp/flatnet-bench-{name}")
    d.mkdir()
    (d / "lab.yaml").write_text(LAB.format(name=name))
    st = cluster.build(topo.load(d / "lab.yaml"), lambda *a: None)
    store = open_store(st.store_url)
    try:
        vip = next(
            Service.from_json(kv.value).cluster_ip
            for kv in store.range("/flatnet/services/default/probe")
        )
        connects(st, vip)  # warm up
        small = connects(st, vip)
        rss_small = rss(st)
        # the bulk goes in with the agent stopped: its start is the full sync
        st.kill("agent:node1", exact=True)
        t0 = time.monotonic()
        for i in range(SERVICES):
            svc, pods = bulk(i)
            for p in pods:
                store.put(p.key, p.to_json())
            store.put(svc.key, svc.to_json())
        print(f"wrote {SERVICES} services + {2 * SERVICES} pods in {time.monotonic() - t0:.1f} s")
        rev = store.revision()
        t0 = time.monotonic()
        cluster.restart_agent(st, "node1")
        status = programmed(store, rev)
        wall = time.monotonic() - t0
        full = status["lastSyncSeconds"]["full"]
        print(
            f"full sync, {SERVICES} services x 2 endpoints: {full:.2f} s in the agent "
            f"({wall:.2f} s from agent start until programmed)"
        )
        adds, changes, add_in, change_in = [], [], [], []
        for k in range(TRIES):
            svc, pods = bulk(SERVICES + k)
            for p in pods:
                store.put(p.key, p.to_json())
            programmed(store, store.revision())
            t = time.monotonic()
            rev = store.put(svc.key, svc.to_json())
            s = programmed(store, rev)
            adds.append(time.monotonic() - t)
            add_in.append(s["lastSyncSeconds"].get("partial", 0.0))
            p = pods[0]
            moved = PodRecord(**{**p.__dict__, "ready": False})
            t = time.monotonic()
            rev = store.put(p.key, moved.to_json())
            s = programmed(store, rev)
            changes.append(time.monotonic() - t)
            change_in.append(s["lastSyncSeconds"].get("partial", 0.0))
        print(
            f"add 1 service at {SERVICES}: p50 {pct(adds, 50) * 1000:.1f} ms store→programmed "
            f"({pct(add_in, 50) * 1000:.1f} ms in the agent; kube-proxy: ~141 ms)"
        )
        print(
            f"change 1 endpoint at {SERVICES}: p50 {pct(changes, 50) * 1000:.1f} ms "
            f"store→programmed ({pct(change_in, 50) * 1000:.1f} ms in the agent)"
        )
        connects(st, vip)
        large = connects(st, vip)
        rss_large = rss(st)
        for label, xs in (("10 services", small), (f"{SERVICES} services", large)):
            print(
                f"connect via ClusterIP, {label:>15}: "
                f"p50 {pct(xs, 50):.3f} ms  p99 {pct(xs, 99):.3f} ms"
            )
        print(
            f"ratio {SERVICES} / 10 services: p50 {pct(large, 50) / pct(small, 50):.2f}  "
            f"p99 {pct(large, 99) / pct(small, 99):.2f} (target <= 1.1)"
        )
        print(
            f"agent RSS: {rss_small:.1f} MiB with 10 services, {rss_large:.1f} MiB with {SERVICES}"
        )
    finally:
        store.close()
        st.destroy()
        for f in d.iterdir():
            f.unlink()
        d.rmdir()


if __name__ == "__main__":
    main()

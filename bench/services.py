"""Services at scale: one lab node, SERVICES (default 10,000) services × 2 endpoints.

Prints, in one run:
* the agent's full sync of the whole table (start-up) and its wall time from
  agent start until programmed;
* adding 1 service, and changing 1 endpoint, with all of them present: from the
  store write until the node's proxy reports it programmed (watch + compute +
  one nftables transaction), p50 over TRIES;
* TCP connection set-up through a ClusterIP with 10 services and with SERVICES
  services in the table — flatnet's own rendering, loaded into a router namespace
  between a client and a server namespace (the path of a pod reaching a service) —
  alternating ROUNDS times, each round CONNECTS connects; p50/p99 and the ratio
  (target ≤ 1.1). This part is isolated from the lab's agent and store on
  purpose: on 2 shared cores their background work drowns a 10 µs effect;
* the agent's RSS with 10 and with SERVICES services.

The endpoints of the bulk services are pod records with made-up IPs (nothing
answers there; only the probe service's two endpoints are real pods).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

from _common import pct

from flatnet import keys
from flatnet.lab import topo
from flatnet.lab.lab import Lab
from flatnet.lab.state import LabState
from flatnet.model import PodRecord, Service, ServicePort
from flatnet.store import open_store

SERVICES = int(os.environ.get("SERVICES", "10000"))
CONNECTS = int(os.environ.get("CONNECTS", "1000"))
TRIES = int(os.environ.get("TRIES", "10"))
ROUNDS = int(os.environ.get("ROUNDS", "5"))

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
kind: Service
metadata: {{name: probe}}
spec: {{selector: {{app: web}}, ports: [{{port: 80, targetPort: 8080}}]}}
"""


def datapath(uniq: str) -> None:
    """Connect latency through a ClusterIP: client ns -> router ns (the proxy
    table) -> server ns, with 10 and with SERVICES services, alternating."""
    import socket
    import threading

    from flatnet.kernel import netns
    from flatnet.kernel.nft import Nft
    from flatnet.proxy import render
    from flatnet.proxy.desired import fragment
    from flatnet.view import endpoints

    names = {k: f"fl-{uniq}-dp-{k}" for k in ("c", "r", "s")}
    for ns in names.values():
        netns.create(ns)
    try:
        nets = {"c": ("10.244.0.2", "10.244.0.1"), "s": ("10.244.1.2", "10.244.1.1")}
        for side, (ip, gw) in nets.items():
            fd = os.open(netns.path_of(names[side]), os.O_RDONLY)
            with netns.iproute(netns.path_of(names["r"])) as ipr:
                ipr.link("add", ifname=f"to-{side}", kind="veth",
                         peer={"ifname": "eth0", "net_ns_fd": fd})  # fmt: skip
                i = ipr.link_lookup(ifname=f"to-{side}")[0]
                ipr.addr("add", index=i, address=gw, prefixlen=24)
                ipr.link("set", index=i, state="up")
            os.close(fd)
            with netns.iproute(netns.path_of(names[side])) as ipr:
                i = ipr.link_lookup(ifname="eth0")[0]
                ipr.addr("add", index=i, address=ip, prefixlen=24)
                ipr.link("set", index=i, state="up")
                ipr.route("add", dst="0.0.0.0/0", gateway=gw)
        netns.sysctl(names["r"], "net.ipv4.ip_forward", "1")
        srv = netns.socket_in(netns.path_of(names["s"]), socket.AF_INET, socket.SOCK_STREAM)
        srv.bind(("10.244.1.2", 8080))
        srv.listen(4096)

        def accept() -> None:
            while True:
                c, _ = srv.accept()
                c.close()

        threading.Thread(target=accept, daemon=True).start()
        probe = Service("probe", "default", cluster_ip="10.96.0.11", selector={"app": "web"},
                        ports=(ServicePort(80, target_port=8080),))  # fmt: skip
        web = [PodRecord("web", "default", "s", "10.244.1.2", labels={"app": "web"},
                         phase="Running", ready=True)]  # fmt: skip
        frags = [fragment(probe, endpoints(probe, web), "r", "10.244.0.0/16")]
        for i in range(SERVICES):
            svc, pods = bulk(i)
            frags.append(fragment(svc, endpoints(svc, pods), "r", "10.244.0.0/16"))
        nft = Nft(names["r"])

        def measure(n: int) -> list[float]:
            def run() -> list[float]:
                out = []
                for _ in range(n):
                    s = socket.socket()
                    t = time.perf_counter()
                    s.connect(("10.96.0.11", 80))
                    out.append((time.perf_counter() - t) * 1000)
                    s.close()
                return out

            return netns.run_in(netns.path_of(names["c"]), run)

        got: dict[str, list[float]] = {"small": [], "large": []}
        p50s: dict[str, list[float]] = {"small": [], "large": []}
        for _ in range(ROUNDS):
            for label, table in (("small", frags[:11]), ("large", frags)):
                nft.apply(render.full(table))
                measure(200)
                xs = measure(CONNECTS)
                got[label] += xs
                p50s[label].append(pct(xs, 50))
        small, large = got["small"], got["large"]
        for label, xs in (("10 services", small), (f"{SERVICES} services", large)):
            print(
                f"connect via ClusterIP, {label:>15}: p50 {pct(xs, 50):.3f} ms  "
                f"p99 {pct(xs, 99):.3f} ms ({ROUNDS} rounds x {CONNECTS}, alternating)"
            )
        ratios = sorted(b / a for a, b in zip(p50s["small"], p50s["large"], strict=True))
        print(
            f"ratio {SERVICES} / 10 services: median of the per-round p50 ratios "
            f"{pct(ratios, 50):.2f} (target <= 1.1; rounds: "
            f"{' '.join(f'{r:.2f}' for r in ratios)}); pooled p50 "
            f"{pct(large, 50) / pct(small, 50):.2f}, p99 {pct(large, 99) / pct(small, 99):.2f}"
        )
    finally:
        for ns in names.values():
            netns.delete(ns)


def cpu(st: LabState) -> float:
    """The agent's CPU seconds so far."""
    pid = next(p.pid for p in st.processes if p.what == "agent:node1")
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settle(st: LabState, timeout: float = 60) -> float:
    """Wait until the agent is idle (< 2% of a core over a second): connects are
    timed against the data plane, not against the agent finishing its work."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        before = cpu(st)
        time.sleep(1)
        if cpu(st) - before < 0.02:
            break
    return time.monotonic() - t0


def rss(st: LabState) -> float:
    pid = next(p.pid for p in st.processes if p.what == "agent:node1")
    for ln in Path(f"/proc/{pid}/status").read_text().splitlines():
        if ln.startswith("VmRSS:"):
            return int(ln.split()[1]) / 1024
    return 0.0


def programmed(store, rev: int, timeout: float = 120) -> dict:  # type: ignore[no-untyped-def,type-arg]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kv = store.get(keys.proxy_status("node1"))
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
    st = Lab.build(topo.load(d / "lab.yaml"), lambda *a: None).st
    store = open_store(st.store_url)
    try:
        settle(st)
        rss_small = rss(st)
        # the bulk goes in with the agent stopped: its start is the full sync
        st.kill("agent:node1", exact=True)
        t0 = time.monotonic()
        for i in range(SERVICES):
            svc, pods = bulk(i)
            for obj in (*pods, svc):
                store.put(obj.key, obj.to_json())
        print(f"wrote {SERVICES} services + {2 * SERVICES} pods in {time.monotonic() - t0:.1f} s")
        rev = store.revision()
        t0 = time.monotonic()
        Lab(st).restart_agent("node1")
        status = programmed(store, rev)
        print(
            f"full sync, {SERVICES} services x 2 endpoints: "
            f"{status['lastSyncSeconds']['full']:.2f} s in the agent "
            f"({time.monotonic() - t0:.2f} s from agent start until programmed)"
        )
        adds, changes, add_in, change_in = [], [], [], []
        for k in range(TRIES):
            svc, pods = bulk(SERVICES + k)
            # the revision of the last pod written: the proxy's own status writes
            # come after it and are no event it sees, so store.revision() could
            # name a revision it never reports
            programmed(store, max(store.put(p.key, p.to_json()) for p in pods))
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
        settle(st)
        rss_large = rss(st)
        print(f"agent RSS: {rss_small:.1f} MiB with 1 service, {rss_large:.1f} MiB with {SERVICES}")
        datapath(name)
    finally:
        store.close()
        st.destroy()
        for f in d.iterdir():
            f.unlink()
        d.rmdir()


if __name__ == "__main__":
    main()

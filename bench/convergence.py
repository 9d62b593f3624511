"""Convergence and scale of the peer watcher, on real labs.

Convergence (``NODES`` nodes, default 10, vxlan, SQLite; ``TRIES`` = 20):
  * join: the last node's agent is started; time until every other node has its
    route in the kernel — from the agent's start (includes Python start-up and
    the agent's own set-up) and from the moment its lease appears in the store
    (the watch-driven part);
  * leave: the last node's lease is deleted; time until every other node has
    removed its route.
Scale (``SCALE_NODES`` x ``SCALE_PODS``, default 20 x 10; ``SCALE=0`` skips):
  time for ``flatnet lab up`` to have everything connected, agent RSS per node.
Prints p50/p99. Target (issue 3): p99 <= 1 s for join and leave.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import SRC, flatnet, pct  # noqa: E402,F401

from flatnet import keys  # noqa: E402
from flatnet.kernel import netns  # noqa: E402
from flatnet.lab.procs import spawn  # noqa: E402
from flatnet.lab.state import LabState  # noqa: E402
from flatnet.model import Lease  # noqa: E402
from flatnet.store import open_store  # noqa: E402

NODES = int(os.environ.get("NODES", "10"))
TRIES = int(os.environ.get("TRIES", "20"))
SCALE = os.environ.get("SCALE", "1") != "0"
SCALE_NODES = int(os.environ.get("SCALE_NODES", "20"))
SCALE_PODS = int(os.environ.get("SCALE_PODS", "10"))


def lab_text(name: str, nodes: int, pods_per_node: int) -> str:
    names = [f"n{i}" for i in range(1, nodes + 1)]
    text = f"kind: Lab\nname: {name}\nnetwork: {{backend: vxlan}}\nnodes: [{', '.join(names)}]\n"
    for n in names:
        for j in range(pods_per_node):
            text += (
                f"---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {n}-p{j}}}\n"
                f"spec: {{nodeName: {n}, containers: [{{name: s, command: [sleep, infinity]}}]}}\n"
            )
    return text


def has_route(ipr: object, dst: str) -> bool:
    net, plen = dst.split("/")
    return any(
        r.get("RTA_DST") == net and r["dst_len"] == int(plen)
        for r in ipr.get_routes(family=2)  # type: ignore[attr-defined]
    )


def convergence() -> None:
    name = "cv" + uuid.uuid4().hex[:6]
    f = Path(tempfile.mkdtemp(prefix="flatnet-bench-")) / "lab.yaml"
    f.write_text(lab_text(name, NODES, 0))
    flatnet("lab", "up", str(f))
    try:
        st = LabState.load(name)
        store = open_store(st.store_url)
        last = f"n{NODES}"
        others = [n for n in st.nodes if n != last]
        iprs = {n: netns.iproute(st.nodes[n].ns) for n in others}
        lease_kv = next(
            kv for kv in store.range(keys.SUBNETS) if Lease.from_json(kv.value).node == last
        )
        subnet = Lease.from_json(lease_kv.value).subnet
        join, join_from_lease, leave = [], [], []
        for _ in range(TRIES):
            st.kill(f"agent:{last}", exact=True)
            lease_kv = next(
                kv for kv in store.range(keys.SUBNETS) if Lease.from_json(kv.value).node == last
            )
            t0 = time.perf_counter()
            store.delete(lease_kv.key)
            while any(has_route(i, subnet) for i in iprs.values()):
                time.sleep(0.002)
            leave.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            info = st.nodes[last]
            pid = spawn(info.ns, info.agent_argv, st.dir / "nodes" / last / "agent.log")
            st.add_process(pid, f"agent:{last}")
            lease_seen = 0.0
            pending = set(others)
            while pending:
                if not lease_seen and any(
                    Lease.from_json(kv.value).node == last for kv in store.range(keys.SUBNETS)
                ):
                    lease_seen = time.perf_counter()
                pending = {n for n in pending if not has_route(iprs[n], subnet)}
                time.sleep(0.002)
            done = time.perf_counter()
            join.append(done - t0)
            join_from_lease.append(done - (lease_seen or done))
        for i in iprs.values():
            i.close()
        store.close()
    finally:
        flatnet("lab", "down", name)
    print(f"convergence on a {NODES}-node vxlan lab, {TRIES} tries (seconds)")
    print(f"{'event':<52}{'p50':>8}{'p99':>8}")
    for label, xs in (
        ("join: agent start -> programmed on every peer", join),
        ("join: lease in the store -> programmed on every peer", join_from_lease),
        ("leave: lease deleted -> removed from every peer", leave),
    ):
        print(f"{label:<52}{statistics.median(xs):8.3f}{pct(xs, 99):8.3f}")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def scale() -> None:
    name = "sc" + uuid.uuid4().hex[:6]
    f = Path(tempfile.mkdtemp(prefix="flatnet-bench-")) / "lab.yaml"
    f.write_text(lab_text(name, SCALE_NODES, SCALE_PODS))
    t0 = time.perf_counter()
    flatnet("lab", "up", str(f))
    took = time.perf_counter() - t0
    try:
        st = LabState.load(name)
        rss = [rss_mib(p.pid) for p in st.processes if p.what.startswith("agent:")]
        # connected: the first pod reaches a pod on the last node
        a, b = st.pods["n1-p0"], st.pods[f"n{SCALE_NODES}-p{SCALE_PODS - 1}"]
        ok = (
            subprocess.run(
                ["ip", "netns", "exec", a.ns, "ping", "-c1", "-W1", b.ip],
                capture_output=True,
            ).returncode
            == 0
        )
    finally:
        flatnet("lab", "down", name)
    print(
        f"scale: {SCALE_NODES} nodes x {SCALE_PODS} pods up and programmed in {took:.1f} s "
        f"(cross-node ping {'ok' if ok else 'FAILED'}); agent RSS p50 "
        f"{statistics.median(rss):.1f} MiB, max {max(rss):.1f} MiB"
    )


if __name__ == "__main__":
    convergence()
    if SCALE:
        scale()

"""Convergence and scale of the peer watcher and of BGP, on real labs.

Convergence, for each backend in ``BACKENDS`` (default host-gw, vxlan, bgp) on
a lab of ``NODES`` nodes (default 10, SQLite), ``TRIES`` cycles (default 20).
Each cycle does this to the last node and times how long until every other
node's kernel agrees (its route to the node's block gone, or there):
  * leave: the node's lease is deleted (the node is removed from the cluster);
  * join: its agent is started (from the agent's start: Python start-up, the
    agent's set-up, for bgp BIRD's start and the sessions; and from the moment
    its lease is in the store: the watch-driven part);
  * bgp only — a host-gw/vxlan agent's death or a silent node leaves its routes
    in place (its lease lives ``leaseTTL``, 24 h, as flannel's): BIRD stopped
    cleanly (the agent brings it back: "back"); agent and BIRD SIGKILLed
    together (then the agent started again: "restart"); a silent failure (the
    node's link down: BFD, 100 ms x 3).
Scale (``SCALE_NODES`` x ``SCALE_PODS``, default 20 x 10; ``SCALE=0`` skips):
  time for ``flatnet lab up`` to have everything connected, agent RSS per node.
Prints p50/p99. Targets (issues 3 and 15): p99 <= 1 s for join and leave, and
for a silent failure's removal under bgp.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import SRC, bfd_up, flatnet, pct  # noqa: E402,F401

from flatnet import keys  # noqa: E402
from flatnet.kernel import netns  # noqa: E402
from flatnet.kernel.bird import Bird  # noqa: E402
from flatnet.lab.procs import spawn  # noqa: E402
from flatnet.lab.state import LabState  # noqa: E402
from flatnet.model import Lease  # noqa: E402
from flatnet.store import open_store  # noqa: E402

NODES = int(os.environ.get("NODES", "10"))
TRIES = int(os.environ.get("TRIES", "20"))
BACKENDS = os.environ.get("BACKENDS", "host-gw,vxlan,bgp").split(",")
SCALE = os.environ.get("SCALE", "1") != "0"
SCALE_NODES = int(os.environ.get("SCALE_NODES", "20"))
SCALE_PODS = int(os.environ.get("SCALE_PODS", "10"))


def lab_text(name: str, nodes: int, pods_per_node: int, backend: str = "vxlan") -> str:
    names = [f"n{i}" for i in range(1, nodes + 1)]
    text = (
        f"kind: Lab\nname: {name}\nnetwork: {{backend: {backend}}}\nnodes: [{', '.join(names)}]\n"
    )
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
        for r in ipr.get_routes(family=2, table=254)  # type: ignore[attr-defined]
    )


def until(cond: Callable[[], bool], timeout: float = 20.0) -> float:
    """Seconds until ``cond()`` holds (polled every 5 ms); fails after ``timeout``."""
    t0 = time.perf_counter()
    while not cond():
        if time.perf_counter() - t0 > timeout:
            raise SystemExit(f"no convergence within {timeout} s")
        time.sleep(0.005)
    return time.perf_counter() - t0


class Victim:
    """The last node of a lab, and the other nodes' view of its block."""

    def __init__(self, name: str) -> None:
        self.st = LabState.load(name)
        self.store = open_store(self.st.store_url)
        self.node = f"n{NODES}"
        self.info = self.st.nodes[self.node]
        others = [n for n in self.st.nodes if n != self.node]
        self.birds = [(self.st.nodes[n].ns, self.st.dir / "nodes" / n / "bird") for n in others]
        self.iprs = [netns.iproute(self.st.nodes[n].ns) for n in others]
        self.bird = Bird(self.info.ns, self.st.dir / "nodes" / self.node / "bird")

    def lease(self) -> tuple[str, Lease] | None:
        for kv in self.store.range(keys.SUBNETS):
            lease = Lease.from_json(kv.value)
            if lease.node == self.node:
                return kv.key, lease
        return None

    def routed(self, subnet: str, present: bool) -> Callable[[], bool]:
        return lambda: all(has_route(i, subnet) == present for i in self.iprs)

    def bfd_everywhere(self) -> bool:
        return all(bfd_up(ns, d, self.info.underlay_ip) for ns, d in self.birds)

    def agent_pid(self) -> int:
        return next(p.pid for p in self.st.processes if p.what == f"agent:{self.node}")

    def start_agent(self) -> None:
        log = self.st.dir / "nodes" / self.node / "agent.log"
        self.st.add_process(spawn(self.info.ns, self.info.agent_argv, log), f"agent:{self.node}")

    def link(self, state: str) -> None:
        subprocess.run(["ip", "-n", self.info.ns, "link", "set", "eth0", state], check=True)

    def close(self) -> None:
        for i in self.iprs:
            i.close()
        self.store.close()


def convergence(backend: str) -> dict[str, list[float]]:
    name = "cv" + uuid.uuid4().hex[:6]
    f = Path(tempfile.mkdtemp(prefix="flatnet-bench-")) / "lab.yaml"
    f.write_text(lab_text(name, NODES, 0, backend))
    flatnet("lab", "up", str(f))
    times: dict[str, list[float]] = {k: [] for k in EVENTS if backend == "bgp" or k in PEER_EVENTS}
    v = Victim(name)
    try:
        held = v.lease()
        assert held is not None
        subnet = held[1].subnet
        until(v.routed(subnet, True))
        for _ in range(TRIES):
            # leave: the node is removed from the cluster (agent stopped first)
            v.st.kill(f"agent:{v.node}", exact=True)
            key = v.lease()
            assert key is not None
            t0 = time.perf_counter()
            v.store.delete(key[0])
            until(v.routed(subnet, False))
            times["leave"].append(time.perf_counter() - t0)
            v.bird.stop()  # bgp: its BIRD outlived the agent; a node that left has none
            # join
            t0 = time.perf_counter()
            v.start_agent()
            lease_seen = 0.0
            while not (held := v.lease()):
                time.sleep(0.002)
            lease_seen = time.perf_counter()
            subnet = held[1].subnet
            until(v.routed(subnet, True))
            done = time.perf_counter()
            times["join"].append(done - t0)
            times["join (from the lease)"].append(done - lease_seen)
            if backend != "bgp":
                continue
            # BIRD stopped cleanly: the peers withdraw at once; the agent restarts it
            pid = v.bird.pid()
            assert pid is not None
            t0 = time.perf_counter()
            os.kill(pid, signal.SIGTERM)
            until(v.routed(subnet, False))
            times["BIRD stopped"].append(time.perf_counter() - t0)
            times["  ... back (the agent restarts it)"].append(
                until(v.routed(subnet, True)) + times["BIRD stopped"][-1]
            )
            # agent and BIRD SIGKILLed together, then the agent started again
            pid = v.bird.pid()
            assert pid is not None
            t0 = time.perf_counter()
            os.killpg(v.agent_pid(), signal.SIGKILL)
            os.kill(pid, signal.SIGKILL)
            until(v.routed(subnet, False))
            times["agent+BIRD SIGKILL"].append(time.perf_counter() - t0)
            v.st.kill(f"agent:{v.node}", exact=True)  # reaps it, forgets it
            t0 = time.perf_counter()
            v.start_agent()
            times["  ... restart (agent start -> back)"].append(until(v.routed(subnet, True)))
            # silent failure: the link goes down, nothing says goodbye (once every
            # peer's BFD session is up again: before, only the hold timer notices)
            until(v.bfd_everywhere)
            t0 = time.perf_counter()
            v.link("down")
            until(v.routed(subnet, False))
            times["silent failure (link down, BFD)"].append(time.perf_counter() - t0)
            v.link("up")
            until(v.routed(subnet, True))
    finally:
        v.close()
        flatnet("lab", "down", name)
    return times


PEER_EVENTS = ("leave", "join", "join (from the lease)")
EVENTS = (
    *PEER_EVENTS,
    "BIRD stopped",
    "  ... back (the agent restarts it)",
    "agent+BIRD SIGKILL",
    "  ... restart (agent start -> back)",
    "silent failure (link down, BFD)",
)


def report(results: dict[str, dict[str, list[float]]]) -> None:
    print(f"convergence on {NODES}-node labs, {TRIES} tries: time until every other node's")
    print("kernel agrees (removed / programmed), milliseconds, p50 / p99 per backend")
    print(f"{'event':<38}" + "".join(f"{b:>16}" for b in results))
    for ev in EVENTS:
        cells = []
        for b in results:
            xs = results[b].get(ev)
            cells.append(
                f"{pct(xs, 50) * 1000:7.0f} /{pct(xs, 99) * 1000:6.0f}" if xs else f"{'-':>14}"
            )
        print(f"{ev:<38}" + "".join(f"{c:>16}" for c in cells))
    print("(-: host-gw and vxlan keep a dead or silent node's routes while its lease lives)")


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
    report({b: convergence(b) for b in BACKENDS})
    if SCALE:
        scale()

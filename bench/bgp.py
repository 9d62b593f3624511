"""The bgp backend and LoadBalancer announcements, on real labs (REFERENCE §10).

On an l2 lab of ``NODES`` nodes (bgp, BFD on), ``TRIES`` times each:
  * kill: one node's BIRD is SIGKILLed; time until every other node has
    dropped its block (the agent then restarts BIRD; time until it is back);
  * silent: one node's link goes down; time until every other node dropped it;
and on the lb-l2 example, L2 failover: the announcing node's agent is killed
and its link cut; time until the external host's requests succeed again.
Plus BIRD's RSS per node and the agent's cost of rendering and reconfiguring
BIRD with 100 sessions. Prints p50/p99 (targets: removal ≤ 1 s, failover ≤ 2 s).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import flatnet, pct  # noqa: E402

from flatnet.bgp.conf import Speaker, node  # noqa: E402
from flatnet.kernel.bird import Bird  # noqa: E402
from flatnet.kernel.objects import BgpSession  # noqa: E402
from flatnet.kernel.routes import routes_of_proto  # noqa: E402
from flatnet.lab.state import LABS_DIR, LabState  # noqa: E402

NODES = int(os.environ.get("NODES", "6"))
TRIES = int(os.environ.get("TRIES", "10"))
ROOT = Path(__file__).resolve().parents[1]


def down(name: str) -> None:
    subprocess.run([sys.executable, "-m", "flatnet", "lab", "down", name], capture_output=True)


def until(fn: object, timeout: float = 15.0) -> float:
    t0 = time.monotonic()
    while not fn():  # type: ignore[operator]
        if time.monotonic() - t0 > timeout:
            return float("inf")
        time.sleep(0.005)
    return time.monotonic() - t0


def show(what: str, xs: list[float]) -> None:
    p50, p99 = pct(xs, 50) * 1000, pct(xs, 99) * 1000
    print(f"  {what:44s} p50 {p50:7.0f} ms   p99 {p99:7.0f} ms  (n={len(xs)})")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def removal(name: str) -> None:
    st = LabState.load(name)
    names = sorted(st.nodes)
    victim, others = names[-1], names[:-1]
    block = next(
        ln.split()[0] for ln in subprocess.run(
            ["ip", "-n", st.nodes[others[0]].ns, "route"], capture_output=True, text=True
        ).stdout.splitlines() if f"via {st.nodes[victim].underlay_ip}" in ln
    )  # fmt: skip

    def everywhere(present: bool) -> bool:
        return all((block in routes_of_proto(st.nodes[o].ns, 12)) == present for o in others)

    kill, back, silent = [], [], []
    pidfile = LABS_DIR / name / "nodes" / victim / "bird" / "bird.pid"
    for _ in range(TRIES):
        until(lambda: everywhere(True), 20)
        os.kill(int(pidfile.read_text()), signal.SIGKILL)
        kill.append(until(lambda: everywhere(False)))
        back.append(until(lambda: everywhere(True), 20) + kill[-1])
        time.sleep(0.5)
    for _ in range(TRIES):
        until(lambda: everywhere(True), 20)
        subprocess.run(["ip", "-n", st.nodes[victim].ns, "link", "set", "eth0", "down"], check=True)
        silent.append(until(lambda: everywhere(False)))
        subprocess.run(["ip", "-n", st.nodes[victim].ns, "link", "set", "eth0", "up"], check=True)
    show("BIRD SIGKILL -> block gone at every peer", kill)
    show("  ... and back (agent restarts BIRD, -R)", back)
    show("silent failure (link down) -> gone (BFD)", silent)
    rss = [
        rss_mib(int((LABS_DIR / name / "nodes" / n / "bird" / "bird.pid").read_text()))
        for n in names
    ]
    print(f"  BIRD RSS per node: {min(rss):.1f}-{max(rss):.1f} MiB ({len(rss)} nodes)")


def l2_failover(tmp: Path) -> None:
    times = []
    for i in range(TRIES):
        name = "b" + uuid.uuid4().hex[:6]
        f = tmp / f"lb{i}.yaml"
        f.write_text(
            (ROOT / "examples" / "lb-l2.yaml")
            .read_text()
            .replace("name: lb-l2\n", f"name: {name}\n")
        )
        flatnet("lab", "up", str(f))
        try:
            st = LabState.load(name)
            owner = ""
            while not owner:
                items = json.loads(flatnet("get", "svc", "--lab", name, "-o", "json"))["items"]
                said = next(s["announcedBy"] for s in items if s["name"] == "web")
                owner = said[0].split()[0] if said else ""
            pid = next(p.pid for p in st.processes if p.what == f"agent:{owner}")
            os.killpg(pid, signal.SIGKILL)
            subprocess.run(
                ["ip", "-n", st.nodes[owner].ns, "link", "set", "eth0", "down"], check=True
            )
            url = "http://192.168.50.200/hostname"
            argv = ["ip", "netns", "exec", st.external, "curl", "-s", "-m", "0.3", url]
            times.append(
                until(lambda a=argv: subprocess.run(a, capture_output=True).returncode == 0, 10)
            )
        finally:
            down(name)
    show("L2 failover: owner dies -> external served", times)


def reconfigure(tmp: Path) -> None:
    sessions = frozenset(
        BgpSession(f"n{i}", f"10.1.{i // 250}.{i % 250 + 2}", 64512) for i in range(100)
    )
    sp = Speaker("10.1.0.1", 64512, "10.244.0.0/24", "10.244.0.0/16", sessions)
    t0 = time.perf_counter()
    for _ in range(100):
        text = node(sp)
    render = (time.perf_counter() - t0) / 100
    ns = "flb-" + uuid.uuid4().hex[:6]
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        b = Bird(ns, tmp / "bird")
        b.ensure(text)
        costs = []
        for i in range(20):
            more = frozenset(sessions | {BgpSession("x", f"10.2.0.{i + 2}", 64512)})
            t = node(Speaker("10.1.0.1", 64512, "10.244.0.0/24", "10.244.0.0/16", more))
            t1 = time.perf_counter()
            b.configure(t)
            costs.append(time.perf_counter() - t1)
        print(f"  100 sessions: render {render * 1000:.2f} ms, configure p50 "
              f"{pct(costs, 50) * 1000:.1f} ms p99 {pct(costs, 99) * 1000:.1f} ms, "
              f"BIRD RSS {rss_mib(b.pid() or 0):.1f} MiB")  # fmt: skip
        b.stop()
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def main() -> None:
    print(f"bgp backend and LoadBalancer (NODES={NODES}, TRIES={TRIES})")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        reconfigure(tmp)
        name = "b" + uuid.uuid4().hex[:6]
        nodes = ", ".join(f"n{i}" for i in range(1, NODES + 1))
        f = tmp / "lab.yaml"
        f.write_text(f"kind: Lab\nname: {name}\nnetwork: {{backend: bgp}}\nnodes: [{nodes}]\n")
        flatnet("lab", "up", str(f))
        try:
            removal(name)
        finally:
            down(name)
        l2_failover(tmp)


if __name__ == "__main__":
    main()

"""The bgp backend and LoadBalancer announcements, on real labs (REFERENCE §10).

On an l2 lab of ``NODES`` nodes (bgp, BFD on), ``TRIES`` times each:
  * kill: one node's BIRD is SIGKILLed; time until every other node has
    dropped its block (the agent then restarts BIRD; time until it is back);
  * silent: one node's link goes down; time until every other node dropped it;
and LoadBalancer failover, ``TRIES`` times each, the time from a node's death
(agent and BIRD SIGKILLed, its link cut) until the external host's requests
(a new connection every few ms, 0.3 s timeout) stop failing:
  * L2 (the lb-l2 example, ``externalTrafficPolicy: Local``): the node
    answering ARP for the address dies, with its endpoint; the other
    endpoint's node takes over (gratuitous ARP);
  * BGP (the bgp-routed example): with ``externalTrafficPolicy: Cluster`` a
    node without endpoints dies (every node announces; the router's ECMP
    route loses it by BFD); with ``Local`` a node with the endpoint dies (the
    other endpoint's node still announces). Requests that hash to a live node
    keep succeeding meanwhile; the figure is until the last one failed.
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
from _common import bfd_up, flatnet, pct  # noqa: E402

from flatnet.bgp.conf import Speaker, node  # noqa: E402
from flatnet.kernel.bird import Bird  # noqa: E402
from flatnet.kernel.objects import BgpSession  # noqa: E402
from flatnet.kernel.routes import routes_of_proto  # noqa: E402
from flatnet.lab.procs import spawn  # noqa: E402
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
    vip = st.nodes[victim].underlay_ip
    birds = [(st.nodes[o].ns, LABS_DIR / name / "nodes" / o / "bird") for o in others]
    for _ in range(TRIES):
        until(lambda: everywhere(True), 20)
        until(lambda: all(bfd_up(ns, d, vip) for ns, d in birds), 20)  # else: hold timer
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
    for _ in range(TRIES):
        name = lab_from_example(tmp, "lb-l2.yaml", "lb-l2")
        try:
            st = LabState.load(name)
            owner, vip = "", ""
            while not owner:  # Local: one of the nodes with an endpoint answers ARP
                items = json.loads(flatnet("get", "svc", "--lab", name, "-o", "json"))["items"]
                svc = next(s for s in items if s["name"] == "web-local")
                owner = svc["announcedBy"][0].split()[0] if svc["announcedBy"] else ""
                vip = svc["externalIP"]
            pid = next(p.pid for p in st.processes if p.what == f"agent:{owner}")
            t0 = time.monotonic()
            os.killpg(pid, signal.SIGKILL)
            subprocess.run(
                ["ip", "-n", st.nodes[owner].ns, "link", "set", "eth0", "down"], check=True
            )
            times.append(failing_until_ok(st.external, f"http://{vip}/hostname", t0))
        finally:
            down(name)
    show("L2 failover (Local): the owner dies -> served", times)


def lab_from_example(tmp: Path, example: str, example_name: str) -> str:
    name = "b" + uuid.uuid4().hex[:6]
    f = tmp / f"{name}.yaml"
    text = (ROOT / "examples" / example).read_text()
    f.write_text(text.replace(f"name: {example_name}\n", f"name: {name}\n"))
    flatnet("lab", "up", str(f))
    return name


def failing_until_ok(ext_ns: str, url: str, t0: float, timeout: float = 10.0) -> float:
    """Requests from ``ext_ns`` one after another until 20 in a row succeed;
    the time from ``t0`` until the end of the last one that failed (0: none did)."""
    argv = ["ip", "netns", "exec", ext_ns, "curl", "-s", "-o", "/dev/null", "-m", "0.3", url]
    last_fail, streak = t0, 0
    while streak < 20:
        ok = subprocess.run(argv, capture_output=True).returncode == 0
        now = time.monotonic()
        if now - t0 > timeout:
            return float("inf")
        streak = streak + 1 if ok else 0
        if not ok:
            last_fail = now
    return last_fail - t0


def bgp_failover(tmp: Path) -> None:
    name = lab_from_example(tmp, "bgp-routed.yaml", "bgp-routed")
    try:
        st = LabState.load(name)
        items = json.loads(flatnet("get", "svc", "--lab", name, "-o", "json"))["items"]
        vip = {s["name"]: s["status"]["loadBalancer"]["ingress"][0]["ip"] for s in items
               if s["name"] in ("web", "web-local")}  # fmt: skip
        pods = json.loads(flatnet("get", "pods", "--lab", name, "-o", "json"))["items"]
        with_ep = sorted({p["node"] for p in pods if p["name"].startswith("web-")})
        without = sorted(set(st.nodes) - set(with_ep))
        for svc, victim, hops in (
            ("web", without[0], len(st.nodes)),
            ("web-local", with_ep[0], len(with_ep)),
        ):
            times = []
            for _ in range(TRIES):
                info = st.nodes[victim]
                until(lambda ip=vip[svc], n=hops: nexthops(st.router, ip) == n, 30)
                until(lambda ip=info.underlay_ip: bfd_up(st.router, st.dir / "router", ip), 30)
                bird_pid = int(
                    (LABS_DIR / name / "nodes" / victim / "bird" / "bird.pid").read_text()
                )
                t0 = time.monotonic()
                agent = next(p.pid for p in st.processes if p.what == f"agent:{victim}")
                os.killpg(agent, signal.SIGKILL)
                os.kill(bird_pid, signal.SIGKILL)
                subprocess.run(["ip", "-n", info.ns, "link", "set", "eth0", "down"], check=True)
                times.append(failing_until_ok(st.external, f"http://{vip[svc]}/hostname", t0))
                subprocess.run(["ip", "-n", info.ns, "link", "set", "eth0", "up"], check=True)
                st.kill(f"agent:{victim}", exact=True)
                log = st.dir / "nodes" / victim / "agent.log"
                st.add_process(spawn(info.ns, info.agent_argv, log), f"agent:{victim}")
            policy = "Local" if svc == "web-local" else "Cluster"
            show(f"BGP failover ({policy}): {victim} dies -> served", times)
    finally:
        down(name)


def nexthops(router_ns: str, ip: str) -> int:
    """How many next hops the router's route to ``ip`` has (0: no route)."""
    out = subprocess.run(
        ["ip", "-n", router_ns, "route", "show", f"{ip}/32"], capture_output=True, text=True
    ).stdout
    if not out.strip():
        return 0
    return max(1, out.count("nexthop"))


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
        bgp_failover(tmp)


if __name__ == "__main__":
    main()

"""CNI ADD/DEL latency per pod: flatnet's chain vs Debian's reference chain, same run.

flatnet chain:   loopback + flatnet            (agent running in the node namespace)
reference chain: loopback + bridge/host-local  (from /usr/lib/cni)
Both run in the same fresh node namespace, 50 pods each, interleaved, driven
exactly as libcni does (env + stdin, plugins running in the node namespace).
Also prints the agent's RSS and the flatnet plugin's peak RSS.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "src"))

from flatnet.agent.pods import DOOMED  # noqa: E402
from flatnet.cni.install import conflist, install  # noqa: E402
from flatnet.cni.runtime import Chain  # noqa: E402
from flatnet.kernel import netns  # noqa: E402
from flatnet.lab.cluster import spawn  # noqa: E402

PODS = int(os.environ.get("PODS", "50"))


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def plugin_peak_rss(chain: Chain, node: str, pod_ns: str) -> int:
    """Peak RSS (KiB) of the flatnet plugin over one ADD and one DEL, read by a
    small parent (``/usr/bin/time``) so no forked copy of this process counts."""
    plugin = chain.conf["plugins"][-1]
    conf = json.dumps(dict(plugin, name=chain.conf["name"], cniVersion=chain.conf["cniVersion"]))
    peak = 0
    for cmd in ("ADD", "DEL"):
        env = dict(
            os.environ,
            CNI_COMMAND=cmd,
            CNI_CONTAINERID="rss",
            CNI_NETNS=pod_ns,
            CNI_IFNAME="eth0",
            CNI_PATH=":".join(chain.bin_dirs),
        )
        p = subprocess.run(
            ["ip", "netns", "exec", node, "/usr/bin/time", "-f", "%M", chain._find("flatnet")],
            input=conf,
            env=env,
            capture_output=True,
            text=True,
        )
        peak = max(peak, int(p.stderr.strip().splitlines()[-1]))
    return peak


def cycles(chain: Chain, tag: str, n: int, made: list[str]) -> float:
    """Wall time (ms) of ``n`` back-to-back ADD+DEL cycles: includes work a
    plugin defers (flatnet destroys deleted veths in batches, off the DEL path)."""
    nss = []
    for i in range(n):
        nss.append(f"{tag}{i}")
        made.append(nss[-1])
        netns.create(nss[-1])
    t0 = time.perf_counter()
    for i, ns in enumerate(nss):
        chain.add(f"cy{i}", netns.path_of(ns))
        chain.delete(f"cy{i}", netns.path_of(ns))
    return (time.perf_counter() - t0) * 1000


def main() -> None:
    tag = "fl-bench-" + uuid.uuid4().hex[:6]
    tmp = Path(tempfile.mkdtemp(prefix="flatnet-bench-"))
    node = tag + "-n"
    made = [node]
    netns.create(node)
    agent_pid = 0
    try:
        sock = str(tmp / "agent.sock")
        install(str(tmp / "bin"), str(tmp / "net.d"), sock)
        agent_pid = spawn(
            node,
            [
                sys.executable,
                "-m",
                "flatnet",
                "agent",
                "--node",
                "bench",
                "--store",
                f"sqlite://{tmp / 'store.db'}",
                "--socket",
                sock,
                "--underlay-ip",
                "192.168.9.1",
            ],
            tmp / "agent.log",
            {"PYTHONPATH": str(Path(__file__).parents[1] / "src")},
        )
        for _ in range(200):
            if os.path.exists(sock):
                break
            time.sleep(0.05)
        time.sleep(0.2)
        bins = [str(tmp / "bin"), "/usr/lib/cni"]
        ours = Chain(
            {
                "cniVersion": "1.0.0",
                "name": "flatnet",
                "plugins": [{"type": "loopback"}, *conflist(sock, portmap=False)["plugins"]],
            },
            bins,
            ns=node,
        )
        ref = Chain(
            {
                "cniVersion": "1.0.0",
                "name": "ref",
                "plugins": [
                    {"type": "loopback"},
                    {
                        "type": "bridge",
                        "bridge": "cni0",
                        "isGateway": True,
                        "ipam": {
                            "type": "host-local",
                            "ranges": [[{"subnet": "10.88.0.0/16"}]],
                            "dataDir": str(tmp / "host-local"),
                        },
                    },
                ],
            },
            bins,
            ns=node,
        )
        times: dict[str, dict[str, list[float]]] = {
            "flatnet": {"ADD": [], "DEL": []},
            "reference": {"ADD": [], "DEL": []},
        }
        # warm up both (first bridge creation, page cache)
        for name, chain in (("flatnet", ours), ("reference", ref)):
            ns = f"{tag}-w{name[0]}"
            made.append(ns)
            netns.create(ns)
            chain.add("warm", netns.path_of(ns))
            chain.delete("warm", netns.path_of(ns))
        for i in range(PODS):
            for name, chain in (("flatnet", ours), ("reference", ref)):
                ns = f"{tag}-{name[0]}{i}"
                made.append(ns)
                netns.create(ns)
                t0 = time.perf_counter()
                chain.add(f"c{i}", netns.path_of(ns))
                t1 = time.perf_counter()
                chain.delete(f"c{i}", netns.path_of(ns))
                t2 = time.perf_counter()
                times[name]["ADD"].append((t1 - t0) * 1000)
                times[name]["DEL"].append((t2 - t1) * 1000)
        print(f"CNI latency per pod, {PODS} pods each, interleaved, same node namespace")
        print(f"{'chain':<34}{'ADD p50':>9}{'ADD p99':>9}{'DEL p50':>9}{'DEL p99':>9}  (ms)")
        labels = {"flatnet": "flatnet + loopback", "reference": "bridge + host-local + loopback"}
        for name in ("flatnet", "reference"):
            t = times[name]
            print(
                f"{labels[name]:<34}{pct(t['ADD'], 50):9.1f}{pct(t['ADD'], 99):9.1f}"
                f"{pct(t['DEL'], 50):9.1f}{pct(t['DEL'], 99):9.1f}"
            )
        for verb in ("ADD", "DEL"):
            r = statistics.median(times["flatnet"][verb]) / statistics.median(
                times["reference"][verb]
            )
            print(f"ratio flatnet/reference {verb} p50: {r:.2f}x")
        # throughput, deferred work included: the last DEL's veth must be gone too
        total = {}
        for name, chain in (("flatnet", ours), ("reference", ref)):
            total[name] = cycles(chain, f"{tag}-y{name[0]}", PODS, made)
            if name == "flatnet":
                t0 = time.perf_counter()
                while subprocess.run(
                    ["ip", "-n", node, "link", "show", "group", str(DOOMED)],
                    capture_output=True,
                    text=True,
                ).stdout.strip():
                    time.sleep(0.01)
                total[name] += (time.perf_counter() - t0) * 1000
        print(
            f"{PODS} back-to-back ADD+DEL cycles, wall time incl. deferred veth teardown: "
            f"flatnet {total['flatnet']:.0f} ms, reference {total['reference']:.0f} ms, "
            f"ratio {total['flatnet'] / total['reference']:.2f}x"
        )
        ns = f"{tag}-rss"
        made.append(ns)
        netns.create(ns)
        rss = plugin_peak_rss(ours, node, netns.path_of(ns))
        ref_rss = (
            subprocess.run(
                ["/usr/bin/time", "-f", "%M", "/usr/lib/cni/loopback"],
                env={"CNI_COMMAND": "VERSION"},
                input="{}",
                capture_output=True,
                text=True,
            )
            .stderr.strip()
            .splitlines()[-1]
        )
        print(
            f"flatnet plugin peak RSS: {rss / 1024:.1f} MiB "
            f"(Go reference plugin 'loopback' VERSION: {int(ref_rss) / 1024:.1f} MiB)"
        )
        print(f"flatnet agent RSS: {rss_kib(agent_pid) / 1024:.1f} MiB")
    finally:
        if agent_pid:
            os.killpg(agent_pid, 15)
            os.waitpid(agent_pid, 0)
        for ns in reversed(made):
            netns.delete(ns)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

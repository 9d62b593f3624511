"""CNI ADD/DEL latency per pod: flatnet's chain vs Debian's reference chain, same run.

flatnet chains:  loopback + flatnet, once with the compiled thin entry
                 (shim.c) and once with the Python one (plugin.py); the agent
                 runs in the node namespace
reference chain: loopback + bridge/host-local  (from /usr/lib/cni)
All run in the same fresh node namespace, 50 pods each, interleaved, driven
exactly as libcni does (env + stdin, plugins running in the node namespace).
Then back-to-back ADD+DEL cycles per chain, wall time including work flatnet
defers (batched veth teardown). Also prints the agent's RSS and the plugins'
peak RSS.
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

sys.path.insert(0, str(Path(__file__).parent))
from _common import pct  # noqa: E402

from flatnet.agent.pods import DOOMED  # noqa: E402
from flatnet.cni.install import conflist, install  # noqa: E402
from flatnet.cni.runtime import Chain  # noqa: E402
from flatnet.kernel import netns  # noqa: E402
from flatnet.lab.procs import spawn  # noqa: E402

PODS = int(os.environ.get("PODS", "50"))


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
        chain.add(f"{tag}{i}", netns.path_of(ns))
        chain.delete(f"{tag}{i}", netns.path_of(ns))
    return (time.perf_counter() - t0) * 1000


def main() -> None:
    tag = "fl-bench-" + uuid.uuid4().hex[:6]
    tmp = Path(tempfile.mkdtemp(prefix="flatnet-bench-"))
    node = tag + "-n"
    made = [node]
    netns.create(node)
    for cmd in (
        "link add ul0 type bridge",
        "addr add 192.168.9.1/24 dev ul0",
        "link set ul0 up",
    ):  # the node's underlay: a port-less bridge holding the node IP
        subprocess.run(["ip", "-n", node, *cmd.split()], check=True)
    agent_pid = 0
    try:
        sock = str(tmp / "agent.sock")
        install(str(tmp / "bin"), str(tmp / "net.d"), sock, kind="c")
        install(str(tmp / "bin-py"), str(tmp / "net.d-py"), sock, kind="python")
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
        flat = {
            "cniVersion": "1.0.0",
            "name": "flatnet",
            "plugins": [{"type": "loopback"}, *conflist(sock, portmap=False)["plugins"]],
        }
        ours = Chain(flat, bins, ns=node)
        ours_py = Chain(flat, [str(tmp / "bin-py"), "/usr/lib/cni"], ns=node)
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
        chains = {"flatnet": ours, "flatnet-py": ours_py, "reference": ref}
        labels = {
            "flatnet": "flatnet (compiled entry) + loopback",
            "flatnet-py": "flatnet (python entry) + loopback",
            "reference": "bridge + host-local + loopback",
        }
        times = {name: {"ADD": [], "DEL": []} for name in chains}
        # warm up all (first bridge creation, page cache)
        for name, chain in chains.items():
            ns = f"{tag}-w{name[0]}{len(name)}"
            made.append(ns)
            netns.create(ns)
            chain.add(f"{name}-warm", netns.path_of(ns))
            chain.delete(f"{name}-warm", netns.path_of(ns))
        for i in range(PODS):
            for name, chain in chains.items():
                ns = f"{tag}-{name[0]}{len(name)}-{i}"
                made.append(ns)
                netns.create(ns)
                t0 = time.perf_counter()
                chain.add(f"{name}-c{i}", netns.path_of(ns))
                t1 = time.perf_counter()
                chain.delete(f"{name}-c{i}", netns.path_of(ns))
                t2 = time.perf_counter()
                times[name]["ADD"].append((t1 - t0) * 1000)
                times[name]["DEL"].append((t2 - t1) * 1000)
        print(f"CNI latency per pod, {PODS} pods each, interleaved, same node namespace")
        print(f"{'chain':<38}{'ADD p50':>9}{'ADD p99':>9}{'DEL p50':>9}{'DEL p99':>9}  (ms)")
        for name in chains:
            t = times[name]
            print(
                f"{labels[name]:<38}{pct(t['ADD'], 50):9.1f}{pct(t['ADD'], 99):9.1f}"
                f"{pct(t['DEL'], 50):9.1f}{pct(t['DEL'], 99):9.1f}"
            )
        for name in ("flatnet", "flatnet-py"):
            for verb in ("ADD", "DEL"):
                r = statistics.median(times[name][verb]) / statistics.median(
                    times["reference"][verb]
                )
                print(f"ratio {name}/reference {verb} p50: {r:.2f}x")
        # throughput, deferred work included: the last DEL's veth must be gone too
        total = {}
        for name, chain in chains.items():
            total[name] = cycles(chain, f"{tag}-y{name[0]}{len(name)}-", PODS, made)
            if name.startswith("flatnet"):
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
            + ", ".join(f"{n} {t:.0f} ms" for n, t in total.items())
            + f"; ratio flatnet/reference {total['flatnet'] / total['reference']:.2f}x"
        )
        ns = f"{tag}-rss"
        made.append(ns)
        netns.create(ns)
        rss = plugin_peak_rss(ours, node, netns.path_of(ns))
        rss_py = plugin_peak_rss(ours_py, node, netns.path_of(ns))
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
            f"flatnet plugin peak RSS: compiled {rss / 1024:.1f} MiB, "
            f"python {rss_py / 1024:.1f} MiB "
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

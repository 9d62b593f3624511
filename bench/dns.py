"""Cluster DNS throughput: `flatnet dns` against dnsmasq serving the same names.

Both servers run on one core (taskset -c 0) in a scratch namespace of this run;
dnsperf drives them from the other core with the A records of NAMES (default
1,000) cluster services, SECONDS each, twice, interleaved. Prints queries per
second, dnsperf's average latency, and p50/p99 of sequential queries from one
client, with the ratio flatnet / dnsmasq.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from _common import SRC, pct
from dnslib import DNSRecord

from flatnet.kernel import netns
from flatnet.model import Service, ServicePort
from flatnet.store import open_store

NAMES = int(os.environ.get("NAMES", "1000"))
SECONDS = int(os.environ.get("SECONDS_EACH", "5"))


def start(ns: str, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            ["taskset", "-c", "0", *argv],
            stdout=out,
            stderr=out,
            preexec_fn=netns.preexec(ns),
            env=dict(os.environ, PYTHONPATH=SRC),
        )


def wait_answer(ns: str, port: int, name: str) -> None:
    q = bytes(DNSRecord.question(name).pack())

    def ask() -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.2)
            try:
                s.sendto(q, ("127.0.0.1", port))
                return bool(s.recv(512))
            except OSError:
                return False

    deadline = time.monotonic() + 20
    while not netns.run_in(netns.path_of(ns), ask):
        if time.monotonic() > deadline:
            raise SystemExit(f"no DNS answer on port {port}")
        time.sleep(0.1)


def dnsperf(ns: str, port: int, queries: Path) -> tuple[float, float]:
    r = subprocess.run(
        [
            "taskset",
            "-c",
            "1",
            "dnsperf",
            "-s",
            "127.0.0.1",
            "-p",
            str(port),
            "-d",
            str(queries),
            "-l",
            str(SECONDS),
            "-c",
            "4",
            "-q",
            "200",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        preexec_fn=netns.preexec(ns),
        check=True,
    )
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", r.stdout).group(1))  # type: ignore[union-attr]
    lat = float(re.search(r"Average Latency \(s\):\s+([\d.]+)", r.stdout).group(1))  # type: ignore[union-attr]
    return qps, lat * 1000


def sequential(ns: str, port: int, names: list[str], n: int = 3000) -> list[float]:
    def run() -> list[float]:
        out = []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(1)
            for i in range(n):
                q = bytes(DNSRecord.question(names[i % len(names)]).pack())
                t = time.perf_counter()
                s.sendto(q, ("127.0.0.1", port))
                s.recv(512)
                out.append((time.perf_counter() - t) * 1000)
        return out

    return netns.run_in(netns.path_of(ns), run)


def main() -> None:
    uniq = uuid.uuid4().hex[:6]
    ns = f"fl-bdns{uniq}"
    d = Path(f"/tmp/flatnet-bench-dns-{uniq}")
    d.mkdir()
    procs: list[subprocess.Popen[bytes]] = []
    netns.create(ns)
    try:
        with netns.iproute(netns.path_of(ns)) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        store = open_store(f"sqlite://{d / 'store.db'}")
        names, hosts = [], []
        for i in range(NAMES):
            ip = f"10.96.{(i + 100) // 256}.{(i + 100) % 256}"
            svc = Service(f"svc{i}", "bench", cluster_ip=ip, ports=(ServicePort(80),))
            store.put(svc.key, svc.to_json())
            names.append(f"svc{i}.bench.svc.cluster.local")
            hosts.append(f"{ip} {names[-1]}")
        store.close()
        (d / "hosts").write_text("\n".join(hosts) + "\n")
        (d / "queries").write_text("".join(f"{n} A\n" for n in names))
        procs.append(
            start(
                ns,
                [
                    sys.executable,
                    "-m",
                    "flatnet",
                    "dns",
                    "--store",
                    f"sqlite://{d / 'store.db'}",
                    "--listen",
                    "127.0.0.1:5300",
                ],
                d / "flatnet-dns.log",
            )  # fmt: skip
        )
        procs.append(
            start(
                ns,
                [
                    "dnsmasq",
                    "--keep-in-foreground",
                    "--no-resolv",
                    "--no-hosts",
                    f"--addn-hosts={d / 'hosts'}",
                    "--listen-address=127.0.0.1",
                    "--port=5301",
                    "--bind-interfaces",
                    "--pid-file=",
                    "--user=root",
                    "--group=root",
                    "--local=/cluster.local/",
                    "--log-facility=/dev/null",
                ],
                d / "dnsmasq.log",
            )  # fmt: skip
        )
        wait_answer(ns, 5300, names[0])
        wait_answer(ns, 5301, names[0])
        results: dict[str, list[tuple[float, float]]] = {"flatnet": [], "dnsmasq": []}
        for _ in range(2):
            for who, port in (("flatnet", 5300), ("dnsmasq", 5301)):
                results[who].append(dnsperf(ns, port, d / "queries"))
        seq = {
            who: sequential(ns, port, names) for who, port in (("flatnet", 5300), ("dnsmasq", 5301))
        }
        print(f"cluster DNS, {NAMES} service names, server on one core, dnsperf {SECONDS} s x 2:")
        best = {}
        for who, rs in results.items():
            qps = max(r[0] for r in rs)
            best[who] = qps
            lat = min(r[1] for r in rs)
            s = seq[who]
            print(
                f"  {who:<8} {qps:9.0f} queries/s  avg latency under load {lat:.3f} ms  "
                f"sequential p50 {pct(s, 50):.3f} ms  p99 {pct(s, 99):.3f} ms"
            )
        print(
            f"ratio flatnet / dnsmasq: {best['flatnet'] / best['dnsmasq']:.2f} (QPS), "
            f"{pct(seq['flatnet'], 99) / pct(seq['dnsmasq'], 99):.2f} (p99 latency); "
            "CoreDNS: ~33.7k QPS on 2 vCPU"
        )
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        netns.delete(ns)
        for f in d.iterdir():
            f.unlink()
        d.rmdir()


if __name__ == "__main__":
    main()

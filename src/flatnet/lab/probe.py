"""Connectivity checks on a running lab: who reaches whom, and with which source IP.

Each probe runs inside the client's namespace (a fresh thread that enters it):
one ping, and a TCP request to the server's agnhost ``/clientip``, so the
result shows the source address the server saw — the proof that no NAT
happened inside the cluster.
"""

from __future__ import annotations

import subprocess
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from flatnet.kernel import links, netns
from flatnet.lab.state import LabState

__all__ = ["Probe", "endpoints", "http_probe", "matrix", "ping"]


@dataclass(frozen=True)
class Probe:
    client: str
    server: str
    target: str
    ok: bool
    seen_ip: str  # the source IP the server saw ("" when it failed)
    detail: str = ""
    icmp: bool = False  # one ping answered


def http_probe(ns: str, url: str, timeout: float = 2.0) -> str:
    """GET ``url`` from inside ``ns``; returns the body (raises OSError on failure)."""

    def get() -> str:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return str(r.read().decode())

    return netns.run_in(netns.path_of(ns), get)


def ping(ns: str, ip: str, timeout: float = 1.0) -> bool:
    r = subprocess.run(
        ["ip", "netns", "exec", ns, "ping", "-c", "1", "-W", str(timeout), ip], capture_output=True
    )
    return r.returncode == 0


def endpoints(st: LabState) -> dict[str, tuple[str, str]]:
    """name -> (namespace, ip) of everything that runs a test server and has an IP
    (the user's pods: system pods like kube-dns run no test server)."""
    out = {
        n: (p.ns, p.ip)
        for n, p in st.pods.items()
        if p.ip and p.mode == "bridge" and p.namespace != "kube-system"
    }
    if st.external:
        ext_ip = _first_ip(st.external)
        out["external"] = (st.external, ext_ip)
    return out


def skipped(st: LabState) -> dict[str, str]:
    """The pods :func:`matrix` does not probe, and why."""
    eps = endpoints(st)
    out = {}
    for n, p in st.pods.items():
        if n in eps:
            continue
        if p.namespace == "kube-system":
            out[n] = "a system pod: runs no test server"
        elif p.mode == "host":
            out[n] = "hostNetwork: its node's own network"
        elif p.mode == "none":
            out[n] = "network mode none: no network to probe"
        elif p.mode.startswith("container:"):
            out[n] = f"shares {p.mode.split(':', 1)[1]}'s network (probed as that pod)"
        else:
            out[n] = "no IP"
    return out


def _first_ip(ns: str) -> str:
    return links.first_address(ns, "eth0")


def matrix(st: LabState, clients: list[str] | None = None) -> list[Probe]:
    eps = endpoints(st)
    names = clients or [n for n in eps if n != "external"]

    def one(pair: tuple[str, str]) -> Probe:
        c, s = pair
        ns = eps[c][0] if c in eps else st.pods[c].ns
        target = f"{eps[s][1]}:8080"
        icmp = ping(ns.rsplit("/", 1)[-1], eps[s][1])
        try:
            seen = http_probe(ns, f"http://{target}/clientip").rsplit(":", 1)[0]
            return Probe(c, s, target, True, seen, icmp=icmp)
        except OSError as e:
            return Probe(c, s, target, False, "", str(e), icmp)

    pairs = [(c, s) for c in names for s in eps if s != c]
    with ThreadPoolExecutor(max_workers=8) as ex:
        return list(ex.map(one, pairs))

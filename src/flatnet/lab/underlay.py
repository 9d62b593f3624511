"""How it works — the lab's underlay: the wires between its nodes.

Objects, in this order (each recorded in the state file before the next):

1. ``fl-<lab>-sw``, the switch: one bridge ``br<i>`` per segment (``l2``: one;
   ``routed``: two, with ``fl-<lab>-rt`` between them, forwarding);
2. per node ``fl-<lab>-n-<node>`` (and ``fl-<lab>-ext`` for the external host,
   on the first segment): a veth from a bridge port ``p<k>`` in the switch to
   ``eth0``, holding the node's underlay IP, with a default route (``l2``: via
   the external host, if any; ``routed``: via its segment's router);
3. per node, what ``netem`` asks for on ``eth0``'s egress: a tbf for ``rate``,
   an nftables drop rule for ``loss`` (table ``inet flatnet-lab-impair``), and
   for ``delay``/``jitter`` a delay line process on a netfilter queue
   (:mod:`flatnet.lab.delay`) — this kernel has no netem qdisc;
4. with ``backend: bgp`` on ``routed``, the router runs BIRD
   (:func:`flatnet.bgp.conf.router`), peering with every node;
5. the external host runs agnhost netexec on :8080.

Per node: one veth pair, one address, one or two routes; nothing grows with pods.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from flatnet.backends.bgp import asn_of
from flatnet.bgp.conf import router
from flatnet.errors import KernelError
from flatnet.kernel import links, netns
from flatnet.kernel.bird import Bird
from flatnet.kernel.nft import Nft
from flatnet.lab.delay import rule as delay_rule
from flatnet.lab.procs import py, spawn, tool
from flatnet.lab.state import LabState, NodeState
from flatnet.lab.topo import LabTopo

__all__ = [
    "Underlay",
    "delay_line",
    "impair",
    "router_bird",
    "router_ips",
    "segment_members",
    "stop_router_bird",
]

Progress = Callable[[str, int, int], None]


class Underlay:
    """Builds a lab's underlay into ``st`` from ``topo``."""

    def __init__(self, topo: LabTopo, st: LabState, progress: Progress) -> None:
        self.t, self.st, self.progress = topo, st, progress
        self.prefix = f"fl-{topo.name}-"

    def build(self) -> None:
        """Switch namespace with one bridge per segment; nodes (and the external
        host, on segment A) plugged in; for ``routed``, a router between A and B."""
        t = self.t
        segs = t.segments()
        sw = self.st.add_ns(self.prefix + "sw")
        for i in range(len(segs)):
            links.bridge(sw, f"br{i}")
        ports = iter(range(1000))
        if t.underlay == "routed":
            rt = self.prefix + "rt"
            self.st.add_ns(rt)
            self.st.router = rt
            for i, cidr in enumerate(segs):
                self._plug(sw, i, rt, f"p{next(ports)}", f"eth{i}", t.router_ip(i), cidr)
            netns.sysctl(rt, "net.ipv4.ip_forward", "1")
        members: list[tuple[str, str, str, int]] = [
            (n, self.prefix + "n-" + n, t.node_ip(n), t.segment_of(n)) for n in t.nodes
        ]
        if t.external:
            members.append(("external", self.prefix + "ext", t.external_ip, 0))
            self.st.external = self.prefix + "ext"
        how = dict(t.netem)
        for i, (name, ns, ip, seg) in enumerate(members):
            self.st.add_ns(ns)
            self._plug(
                sw, seg, ns, f"p{next(ports)}", "eth0", ip, segs[seg], self._routes(name, seg)
            )
            if name != "external":
                self.st.nodes[name] = NodeState(ns, ip)
                impair(ns, "eth0", how)
                if how.get("delay"):
                    log = self.st.dir / f"delay-{name}.log"
                    record = partial(self.st.add_process, what=f"delay:{name}")
                    delay_line(ns, "eth0", how, log, record)
            self.progress("underlay: node namespaces on the switch", i + 1, len(members))
        self.st.save()
        if t.underlay == "routed":
            self.st.router_as = t.router_as
            self.st.save()
            if t.network.backend == "bgp":
                router_bird(self.st, t.network.backend_options)
        if t.external:
            pid = spawn(
                self.st.external,
                py("flatnet.agnhost", "netexec", "--http-port", "8080"),
                self.st.dir / "external.log",
                {"FLATNET_POD_NAME": "external"},
            )
            self.st.add_process(pid, "external")

    def _routes(self, member: str, seg: int) -> dict[str, str]:
        """Routes of a node or the external host. routed: nodes leave through their
        segment's router, and so does the external host (to segment B, and to the
        LoadBalancer addresses the router learns by BGP); l2: nodes leave through
        the external host, if there is one."""
        t = self.t
        if t.underlay == "routed":
            if member == "external":
                return {"0.0.0.0/0": t.router_ip(0)}
            return {"0.0.0.0/0": t.router_ip(seg)}
        return {"0.0.0.0/0": t.external_ip} if t.external and member != "external" else {}

    def _plug(
        self,
        sw: str,
        seg: int,
        ns: str,
        port: str,
        ifname: str,
        ip: str,
        cidr: str,
        routes: dict[str, str] | None = None,
    ) -> None:
        """A veth from bridge ``br<seg>`` in the switch to ``ifname`` in ``ns``."""
        links.plug(sw, port, f"br{seg}", ns, ifname)
        links.add_address(ns, ifname, ip, int(cidr.split("/")[1]), routes)


def segment_members(st: LabState) -> list[list[str]]:
    """A routed lab's nodes, per segment (by the segment their underlay IP is in)."""
    nets = [ipaddress.IPv4Network(c) for c in st.segments]
    return [
        [n for n, info in st.nodes.items() if ipaddress.IPv4Address(info.underlay_ip) in net]
        for net in nets
    ]


def router_ips(st: LabState) -> list[str]:
    """Each segment's router address: its first."""
    return [str(ipaddress.IPv4Network(c).network_address + 1) for c in st.segments]


def router_bird(st: LabState, options: dict[str, Any]) -> None:
    """The router's BIRD (bgp on ``routed``): it peers with every node of the
    lab, installs what they announce (ECMP where several announce one address,
    flows hashed by ports) and passes it on. Started, or reconfigured if it
    runs."""
    netns.sysctl(st.router, "net.ipv4.fib_multipath_hash_policy", "1")
    local = dict(zip(st.segments, router_ips(st), strict=True))
    nodes = [(n, info.underlay_ip, asn_of(options, n)) for n, info in st.nodes.items()]
    b = Bird(st.router, st.dir / "router")
    text = router(local, st.router_as, nodes, bool(options.get("bfd", True)))
    if b.ensure(text) != "adopted" and (pid := b.pid()) is not None:
        st.add_process(pid, "bird:router")


def stop_router_bird(st: LabState) -> None:
    """Stop the router's BIRD (a backend switch away from bgp)."""
    st.kill("bird:router", exact=True)
    Bird(st.router, st.dir / "router").stop()


def impair(ns: str, dev: str, how: dict[str, str]) -> None:
    """Rate (tbf) and loss (an nftables rule in a table of the lab's own) on
    ``dev``'s egress in ``ns``. Delay and jitter are a process of their own
    (:mod:`flatnet.lab.delay`, started by the builder): this kernel has no
    netem qdisc."""
    if how.get("rate"):
        tool(ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", how["rate"],
              "burst", "256kb", "latency", "50ms")  # fmt: skip
    if how.get("loss"):
        per_10k = int(float(how["loss"].rstrip("%")) * 100)
        rule = f'oifname "{dev}" numgen random mod 10000 < {per_10k} drop'
        Nft(ns).apply(
            "table inet flatnet-lab-impair {\n  chain out {\n"
            f"    type filter hook postrouting priority 0;\n    {rule}\n  }}\n}}\n",
            what="table inet flatnet-lab-impair",
        )


def delay_line(
    ns: str, dev: str, how: dict[str, str], log: Path, record: Callable[[int], None]
) -> None:
    """Start the delay line for ``dev``'s egress in ``ns`` (``record`` gets its
    PID at once, so a failure below leaves nothing unowned), wait until it
    holds the queue, then send the link through it."""
    argv = py("flatnet.lab.delay", "--delay", how["delay"], "--jitter", how.get("jitter") or "0ms")
    record(spawn(ns, argv, log))
    bound = Path("/proc/thread-self/net/netfilter/nfnetlink_queue")
    deadline = time.monotonic() + 10
    while not netns.run_in(netns.path_of(ns), lambda: bound.exists() and bound.read_text() != ""):
        if time.monotonic() > deadline:
            raise KernelError(f"the delay line in '{ns}' did not bind its queue (see {log})")
        time.sleep(0.02)
    tool(ns, "iptables", *delay_rule(dev))

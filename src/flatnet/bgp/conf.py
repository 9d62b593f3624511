"""BIRD 2 configurations (pure: data in, text out), Calico's recipe.

A node's BIRD (:func:`node`):

- ``flatnet_own``: a static ``<node subnet> blackhole`` — the block this node
  announces (as Calico does per block; never installed in the kernel, where
  the bridge's connected route serves the subnet);
- ``flatnet_vips``: a static ``<vip>/32 blackhole`` per LoadBalancer address
  this node announces — exported only to peers outside the cluster;
- ``kernel4``: installs what BGP learned (``source = RTS_BGP``) and nothing
  else; ``scan time 1`` bounds Debian 2.0.12's 3 s main-loop stall (REFERENCE
  §10); ``merge paths on`` makes ECMP routes; ``graceful restart``;
- ``bfd1``: 100 ms × 3 — a silent peer is dropped in ~0.3 s;
- one ``bgp`` protocol per session (:class:`~flatnet.kernel.objects.BgpSession`):
  timers ``hold 3, keepalive 1, connect delay 1, connect retry 5, error wait
  1,5`` (measured join 0.66–1.0 s), graceful restart on, BFD when asked,
  ``direct`` (peers share a segment; ``gateway direct``).

  ===========  ===============================  ==================================
  session      imports                          exports
  ===========  ===============================  ==================================
  mesh         pod blocks, not its own          its own block
  reflector    (on a reflector, to a client     its own block and the pod blocks
  -client      or another reflector) pod        it learned inside the AS
               blocks, not its own
  external     pod blocks (none with            its own block and its VIPs
               cross-subnet), not its own
  ===========  ===============================  ==================================

The lab's router (:func:`router`) peers with every node, learns everything,
installs it (ECMP for a VIP several nodes announce) and passes it on.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from flatnet.kernel.objects import BgpSession

__all__ = ["Speaker", "node", "proto_name", "router"]

TIMERS = (
    "hold time 3; keepalive time 1; connect delay time 1; connect retry time 5; "
    "error wait time 1,5;"
)
BFD = """protocol bfd bfd1 {
  interface "*" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; };
}"""


@dataclass(frozen=True)
class Speaker:
    """What a node's BIRD says: who it is, its block, whom it peers with."""

    router_id: str
    asn: int
    subnet: str  # this node's pod subnet (its block)
    pod_cidr: str
    sessions: frozenset[BgpSession] = frozenset()
    vips: frozenset[str] = frozenset()  # LoadBalancer addresses to announce (/32s)
    bfd: bool = True
    reflector: bool = False
    cluster_id: str = "244.0.0.1"  # the reflectors' cluster ID (one for all)
    import_external: bool = True  # cross-subnet: pod routes across come by VXLAN instead


def proto_name(s: BgpSession) -> str:
    """The BIRD protocol of a session: ``node_<name>`` or ``peer_<a_b_c_d>``."""
    if s.kind == "external":
        return "peer_" + s.ip.replace(".", "_")
    return "node_" + s.name.replace("-", "_")


def _head(router_id: str, comment: str) -> list[str]:
    return [
        f"# {comment}",
        "# Rendered by flatnet; rewritten on every change (edits are lost).",
        f"router id {router_id};",
        "timeformat protocol iso long;",
        "protocol device { scan time 10; }",
    ]


def node(sp: Speaker) -> str:
    pods = f"[ {sp.pod_cidr}+ ]"
    lines = _head(sp.router_id, f"BIRD of the node with block {sp.subnet}, AS {sp.asn}")
    lines += [
        "protocol kernel kernel4 {",
        "  ipv4 { import none; export where source = RTS_BGP; };",
        "  scan time 1; merge paths on; graceful restart on;",
        "}",
        f"protocol static flatnet_own {{ ipv4; route {sp.subnet} blackhole; }}",
        "protocol static flatnet_vips {",
        "  ipv4;",
        *(f"  route {v}/32 blackhole;" for v in sorted(sp.vips)),
        "}",
        f"filter flatnet_in {{ if net ~ {pods} && net != {sp.subnet} then accept; reject; }}",
        "filter flatnet_in_external {",
        f"  if {'true' if sp.import_external else 'false'} && net ~ {pods} "
        f"&& net != {sp.subnet} then accept;",
        "  reject;",
        "}",
        'filter flatnet_out { if proto = "flatnet_own" then accept; reject; }',
        "filter flatnet_out_reflected {",
        '  if proto = "flatnet_own" then accept;',
        f"  if source = RTS_BGP && bgp_path.len = 0 && net ~ {pods} then accept;",
        "  reject;",
        "}",
        "filter flatnet_out_external {",
        '  if proto = "flatnet_own" || proto = "flatnet_vips" then accept;',
        "  reject;",
        "}",
    ]
    if sp.bfd:
        lines.append(BFD)
    for s in sorted(sp.sessions, key=proto_name):
        lines += _session(sp, s)
    return "\n".join(lines) + "\n"


def _session(sp: Speaker, s: BgpSession) -> list[str]:
    if s.kind == "external":
        imp, exp = "flatnet_in_external", "flatnet_out_external"
    elif sp.reflector:
        imp, exp = "flatnet_in", "flatnet_out_reflected"
    else:
        imp, exp = "flatnet_in", "flatnet_out"
    rr = [f"  rr client; rr cluster id {sp.cluster_id};"] if s.kind == "rr-client" else []
    return [
        f"protocol bgp {proto_name(s)} {{",
        f'  description "{s.kind} {s.name}";',
        f"  local {sp.router_id} as {sp.asn};",
        f"  neighbor {s.ip} as {s.asn};",
        "  direct;",
        f"  {TIMERS}",
        "  graceful restart on;",
        *(["  bfd on;"] if sp.bfd else []),
        *rr,
        f"  ipv4 {{ import filter {imp}; export filter {exp}; gateway direct; }};",
        "}",
    ]


def router(
    local: dict[str, str], asn: int, neighbors: Iterable[tuple[str, str, int]], bfd: bool = True
) -> str:
    """The lab router's BIRD: ``local`` maps each segment's CIDR to the router's
    address on it; ``neighbors`` are (name, IP, AS) of the nodes it peers with."""
    first = sorted(local.values())[0]
    lines = _head(first, f"BIRD of the lab's router, AS {asn}")
    lines += [
        "protocol kernel kernel4 {",
        "  ipv4 { import none; export where source = RTS_BGP; };",
        "  scan time 1; merge paths on;",
        "}",
    ]
    if bfd:
        lines.append(BFD)
    for name, ip, peer_as in sorted(neighbors):
        addr = ipaddress.IPv4Address(ip)
        src = next(a for c, a in local.items() if addr in ipaddress.IPv4Network(c))
        lines += [
            f"protocol bgp node_{name.replace('-', '_')} {{",
            f"  local {src} as {asn};",
            f"  neighbor {ip} as {peer_as};",
            "  direct;",
            f"  {TIMERS}",
            *(["  bfd on;"] if bfd else []),
            "  ipv4 { import all; export where source = RTS_BGP; };",
            "}",
        ]
    return "\n".join(lines) + "\n"

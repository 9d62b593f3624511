"""How it works — the node's own plumbing, made once at agent start.

Objects, in this order, all in the node's namespace (the host's own on a real
host, a lab node's namespace in a lab):

1. sysctls: ``net.ipv4.ip_forward=1`` (the node routes for its pods) and
   ``net.bridge.bridge-nf-call-iptables=1`` when br_netfilter is there (so
   bridged replies of NATed flows are un-NATed by conntrack);
2. the bridge ``fl0``: MAC pinned at creation (derived from the gateway IP, so
   it does not change as ports come and go), the gateway ``<subnet>.1/len``;
3. one nftables table ``ip flatnet-nat``, replaced atomically: pod→pod stays
   un-NATed, pod→anywhere outside the pod CIDR is masqueraded (random-fully);
4. for a backend that tunnels over UDP (vxlan, udp), one table ``ip
   flatnet-tunnel`` whose two raw-priority rules exempt the tunnel's own
   packets from conntrack: UDP to the tunnel port, to this node's underlay IP
   (in) or from it (out). Those flows are one-way (the source port is a hash,
   the reply is another flow), are never NATed, and tracking them cost ~10 %
   of vxlan throughput here (bench/throughput.py); Calico, Cilium and
   OpenShift SDN do the same. Matching this node's own address keeps a host
   that forwards or SNATs other hosts' tunnel traffic tracked. A firewall on
   the host that accepts only ``ct state established`` must accept the tunnel
   port explicitly (it sees ``ct state untracked``), as flannel's docs ask.

Per pod the cost is one veth pair and one IP (see :mod:`flatnet.agent.pods`);
nothing here grows with the number of pods or peers.
"""

from __future__ import annotations

import ipaddress

from flatnet.kernel import links, netns
from flatnet.kernel.nft import Nft

__all__ = ["NAT_TABLE", "TUNNEL_TABLE", "masquerade_script", "setup_node", "tunnel_script"]

NAT_TABLE = "flatnet-nat"
TUNNEL_TABLE = "flatnet-tunnel"


def masquerade_script(pod_cidr: str) -> str:
    return f"""table ip {NAT_TABLE}
delete table ip {NAT_TABLE}
table ip {NAT_TABLE} {{
  chain postrouting {{
    type nat hook postrouting priority 100; policy accept;
    ip saddr {pod_cidr} ip daddr {pod_cidr} return comment "pod to pod: never NAT"
    ip saddr {pod_cidr} ip daddr != 224.0.0.0/4 masquerade fully-random comment "leaves cluster"
  }}
}}
"""


def tunnel_script(underlay_ip: str, port: int | None) -> str:
    """The notrack table for a tunnel on UDP ``port`` (None: no tunnel, no table)."""
    script = f"table ip {TUNNEL_TABLE}\ndelete table ip {TUNNEL_TABLE}\n"
    if port is None:
        return script
    return (
        script
        + f"""table ip {TUNNEL_TABLE} {{
  chain prerouting {{
    type filter hook prerouting priority raw; policy accept;
    ip daddr {underlay_ip} udp dport {port} notrack comment "tunnel in: one-way, never NATed"
  }}
  chain output {{
    type filter hook output priority raw; policy accept;
    ip saddr {underlay_ip} udp dport {port} notrack comment "tunnel out"
  }}
}}
"""
    )


def setup_node(
    ns: str | None,
    bridge: str,
    subnet: str,
    pod_cidr: str,
    mtu: int,
    nft: Nft,
    underlay_ip: str,
    tunnel_port: int | None,
) -> int:
    """Make the node ready for pods; idempotent. ``tunnel_port`` is the UDP port
    of the backend's tunnel, None when it has none. Returns the bridge's ifindex."""
    netns.sysctl(ns, "net.ipv4.ip_forward", "1")
    netns.sysctl(ns, "net.bridge.bridge-nf-call-iptables", "1")
    net = ipaddress.IPv4Network(subnet)
    idx = links.ensure_bridge(ns, bridge, f"{net.network_address + 1}/{net.prefixlen}", mtu)
    nft.apply(
        masquerade_script(pod_cidr) + tunnel_script(underlay_ip, tunnel_port),
        what=f"tables ip {NAT_TABLE} and ip {TUNNEL_TABLE}",
    )
    return idx

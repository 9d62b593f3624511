"""How it works — host-gw: the underlay is the pod network's router.

Objects: none of its own. Per peer: one route ``<peer subnet> via <peer
underlay IP> dev <underlay> proto 66``. Pods keep the underlay's full MTU.

It needs L2 adjacency: the next hop must be on this node's segment. A peer
whose underlay IP is not on-link is *refused* with the reason (shown by
``flatnet get nodes -o wide``) instead of getting a route that would send
its traffic to the default gateway and black-hole it.
"""

from __future__ import annotations

from flatnet.backends import Context, Desired, NoDevices, Route, register
from flatnet.model import Lease

__all__ = ["HostGw"]


@register("host-gw")
class HostGw(NoDevices):
    name = "host-gw"

    def desired(self, ctx: Context, peers: list[Lease]) -> Desired:
        routes, refused = set(), {}
        for p in peers:
            if ctx.on_link(p.underlay_ip):
                routes.add(Route(p.subnet, p.underlay_ip, ctx.underlay_dev))
            else:
                refused[p.node] = (
                    f"host-gw: peer '{p.node}' ({p.underlay_ip}) is not on this node's L2 "
                    f"segment ({', '.join(ctx.underlay_nets)}); host-gw needs L2 adjacency, "
                    f"use vxlan or udp"
                )
        return Desired(routes=frozenset(routes), refused=refused)

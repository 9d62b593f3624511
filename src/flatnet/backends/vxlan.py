"""How it works — vxlan: flannel's recipe on the kernel's VXLAN device.

Objects on each node, made once by ``setup``: device ``flatnet.<VNI>`` (VNI 1,
UDP port 8472 like flannel — 4789 is IANA's; both configurable) bound to the
underlay device and IP, learning off, MTU = underlay − 50, MAC pinned to
``0a:58:<subnet .0>`` so it survives restarts, holding ``<subnet>.0/32``.
Its MAC goes into the lease as ``vtepMAC``.

Per peer, three objects (flannel's order: the neighbour and FDB entry exist
before the route can send traffic):

1. a permanent neighbour ``<peer subnet>.0 -> <peer vtepMAC>`` on the device;
2. an FDB entry ``<peer vtepMAC> -> dst <peer underlay IP>`` on the device;
3. an onlink route ``<peer subnet> via <peer subnet>.0 dev flatnet.<VNI>``.

Options (``backendOptions`` in the network config): ``vni``, ``port``,
``directRouting`` (a plain underlay route, no encapsulation, for peers on the
same L2 segment) and ``txChecksumOffload: false`` (the switch for the
checksum-offload bugs flannel users fix by hand with ethtool).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from flatnet.backends import Context, Desired, Fdb, Neigh, Observed, Route, register
from flatnet.kernel import links
from flatnet.kernel.ethtool import set_tx_checksum
from flatnet.kernel.objects import VxlanTunnel
from flatnet.model import Lease

__all__ = ["Vxlan"]

OVERHEAD = 50  # outer Ethernet 14 + IP 20 + UDP 8 + VXLAN 8


def _opt(ctx: Context, key: str, default: Any) -> Any:
    return ctx.options.get(key, default)


@register("vxlan")
class Vxlan:
    name = "vxlan"

    def dev(self, ctx: Context) -> str:
        return f"flatnet.{int(_opt(ctx, 'vni', 1))}"

    def pod_mtu(self, ctx: Context) -> int:
        return ctx.underlay_mtu - OVERHEAD

    def lease_data(self, subnet: str, options: dict[str, object]) -> dict[str, object]:
        vtep = ipaddress.IPv4Network(subnet).network_address
        return {
            "vtepMAC": links.ip_mac(str(vtep)),
            "vni": int(str(options.get("vni", 1))),
            "port": int(str(options.get("port", 8472))),
        }

    def setup(self, ctx: Context) -> dict[str, object]:
        data = self.lease_data(ctx.lease.subnet, ctx.options)
        dev, vni, port = self.dev(ctx), int(str(data["vni"])), int(str(data["port"]))
        vtep = str(ipaddress.IPv4Network(ctx.lease.subnet).network_address)
        links.ensure_vxlan(ctx.ns, dev, vni, ctx.lease.underlay_ip, ctx.underlay_dev, port)
        links.up_with_address(ctx.ns, dev, vtep, 32, self.pod_mtu(ctx), str(data["vtepMAC"]))
        if _opt(ctx, "txChecksumOffload", True) is False:
            set_tx_checksum(ctx.ns, dev, False)
        return data

    def desired(self, ctx: Context, peers: list[Lease]) -> Desired:
        dev, direct = self.dev(ctx), bool(_opt(ctx, "directRouting", False))
        routes, neigh, fdb, refused, pending = set(), set(), set(), {}, set()
        for p in peers:
            if direct and ctx.on_link(p.underlay_ip):
                routes.add(Route(p.subnet, p.underlay_ip, ctx.underlay_dev))
                continue
            mac = p.backend_data.get("vtepMAC")
            if p.backend != self.name:
                refused[p.node] = f"vxlan: peer '{p.node}' runs backend '{p.backend}', no VTEP"
                continue
            if not mac:  # leased, its device not made yet: the next lease update brings it
                pending.add(p.node)
                continue
            vtep = str(ipaddress.IPv4Network(p.subnet).network_address)
            neigh.add(Neigh(vtep, str(mac), dev))
            fdb.add(Fdb(str(mac), p.underlay_ip, dev))
            routes.add(Route(p.subnet, vtep, dev, onlink=True))
        return Desired(
            frozenset(routes), frozenset(neigh), frozenset(fdb), refused, frozenset(pending)
        )

    def devices(self, ctx: Context) -> tuple[str, ...]:
        return (self.dev(ctx),)

    def tunnel(self, ctx: Context) -> VxlanTunnel:
        data = self.lease_data(ctx.lease.subnet, ctx.options)
        vni, port = int(str(data["vni"])), int(str(data["port"]))
        return VxlanTunnel(vni, port, self.dev(ctx), ctx.underlay_dev, ctx.lease.underlay_ip)

    def program(self, want: Desired) -> None:
        return None

    def observe(self, ctx: Context, peers: list[Lease]) -> Observed:
        return Observed()

    def stop(self) -> None:
        return None

    def teardown(self, ctx: Context) -> None:
        links.delete(ctx.ns, self.dev(ctx))

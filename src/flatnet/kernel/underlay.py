"""Finding the node's underlay: the address peers reach it at, and its device."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from flatnet.errors import ConfigError
from flatnet.kernel import netns

__all__ = ["Underlay", "address", "device"]


@dataclass(frozen=True)
class Underlay:
    """The device holding the node's underlay IP: its name, MTU and the
    networks directly connected on it (what host-gw can reach without a router)."""

    dev: str
    mtu: int
    nets: tuple[str, ...]


def device(ns: str | None, ip: str) -> Underlay:
    """The device holding the underlay ``ip`` in ``ns``."""
    with netns.netlink(ns, "read the addresses") as ipr:
        for a in ipr.get_addr(family=2):
            if a.get("IFA_ADDRESS") == ip:
                link = ipr.get_links(a["index"])[0]
                nets = tuple(
                    str(ipaddress.IPv4Network(f"{x.get('IFA_ADDRESS')}/{x['prefixlen']}", False))
                    for x in ipr.get_addr(index=a["index"], family=2)
                )
                return Underlay(str(link.get("IFLA_IFNAME")), int(link.get("IFLA_MTU")), nets)
    raise ConfigError(
        f"underlay IP {ip} is on no device in {'namespace ' + ns if ns else 'this host'}"
    )


def address(ns: str | None) -> str:
    """The node's underlay IP: the source address of its default route, else the
    first global IPv4 address."""
    with netns.netlink(ns, "read the routes") as ipr:
        for r in ipr.get_default_routes(family=2):
            oif = r.get("RTA_OIF")
            for a in ipr.get_addr(index=oif, family=2):
                return str(a.get("IFA_ADDRESS"))
        for a in ipr.get_addr(family=2):
            if a.get("IFA_ADDRESS") and not a.get("IFA_ADDRESS").startswith("127."):
                return str(a.get("IFA_ADDRESS"))
    raise ConfigError("cannot find the node's underlay IP: give --underlay-ip")

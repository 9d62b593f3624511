"""Links, addresses and routes through pyroute2, translated into KernelError.

Every call takes an open IPRoute (bound to one namespace by the caller, see
:func:`flatnet.kernel.netns.iproute`) so a request does one netlink socket per
namespace, not one per object.
"""

from __future__ import annotations

import errno
import hashlib
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from flatnet.errors import KernelError

__all__ = [
    "ip_mac",
    "delete_link",
    "ensure_bridge",
    "get_link",
    "host_veth_name",
    "link_addrs",
    "up_with_address",
]


def host_veth_name(container_id: str, ifname: str) -> str:
    """Deterministic host-side veth name (≤15 chars), found again on DEL without state."""
    return "fl" + hashlib.sha1(f"{container_id}/{ifname}".encode()).hexdigest()[:11]


def ip_mac(ip: str) -> str:
    """A locally administered MAC derived from an IPv4 address (0a:58:<ip>), for
    the bridge (its gateway IP) and pod interfaces: a reused IP keeps its MAC."""
    return "0a:58:" + ":".join(f"{int(o):02x}" for o in ip.split("."))


def get_link(ipr: IPRoute, name: str) -> Any | None:
    try:
        links = ipr.get_links(ifname=name)
    except NetlinkError as e:
        if e.code == errno.ENODEV:
            return None
        raise KernelError(f"failed to look up link '{name}': {e}") from e
    return links[0] if links else None


def delete_link(ipr: IPRoute, name: str) -> bool:
    """Delete link ``name``; False when it was already gone."""
    try:
        ipr.link("del", ifname=name)
        return True
    except NetlinkError as e:
        if e.code in (errno.ENODEV, errno.ENOENT):
            return False
        raise KernelError(f"failed to delete link '{name}': {e}") from e


def ensure_bridge(ipr: IPRoute, name: str, gateway_cidr: str, mtu: int) -> int:
    """Create (or adopt) the node bridge holding the gateway address; returns its index."""
    gw, plen = gateway_cidr.split("/")
    try:
        if get_link(ipr, name) is None:
            ipr.link("add", ifname=name, kind="bridge", address=ip_mac(gw), mtu=mtu)
        return up_with_address(ipr, name, gw, int(plen), mtu, ip_mac(gw))
    except NetlinkError as e:
        raise KernelError(f"failed to set up bridge '{name}' with {gateway_cidr}: {e}") from e


def up_with_address(
    ipr: IPRoute, name: str, ip: str, plen: int, mtu: int, mac: str | None = None
) -> int:
    """Link ``name`` up with ``mtu`` (and ``mac``), holding ``ip/plen`` once;
    idempotent. Returns its index. NetlinkError/IndexError pass to the caller."""
    idx = int(ipr.link_lookup(ifname=name)[0])
    ipr.link("set", index=idx, mtu=mtu, state="up", **({"address": mac} if mac else {}))
    if (ip, plen) not in link_addrs(ipr, idx):
        ipr.addr("add", index=idx, address=ip, prefixlen=plen)
    return idx


def link_addrs(ipr: IPRoute, index: int) -> list[tuple[str, int]]:
    return [(a.get("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=index, family=2)]

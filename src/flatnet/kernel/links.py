"""Links, addresses and routes, by namespace, translated into KernelError.

Every function names the namespace it works in (``ns``: a name under
/run/netns, a path, or None for the calling process's own) and opens one
netlink socket there for the whole call, so a call does one socket per
namespace, not one per object. pyroute2 stays inside this package: callers
get names, indexes, strings and :class:`KernelError`, never a netlink message.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import os
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from flatnet.errors import KernelError
from flatnet.kernel import netns

__all__ = [
    "add_address",
    "addresses",
    "add_route",
    "attachment_problem",
    "bridge",
    "delete",
    "ensure_bridge",
    "ensure_vxlan",
    "first_address",
    "host_veth_name",
    "ip_mac",
    "links_of_kind",
    "mtu",
    "mtus",
    "plug",
    "set_mtu",
    "up_with_address",
]


def host_veth_name(container_id: str, ifname: str) -> str:
    """Deterministic host-side veth name (≤15 chars), found again on DEL without state."""
    return "fl" + hashlib.sha1(f"{container_id}/{ifname}".encode()).hexdigest()[:11]


def ip_mac(ip: str) -> str:
    """A locally administered MAC derived from an IPv4 address (0a:58:<ip>), for
    the bridge (its gateway IP) and pod interfaces: a reused IP keeps its MAC."""
    return "0a:58:" + ":".join(f"{int(o):02x}" for o in ip.split("."))


def _index(ipr: IPRoute, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise KernelError(f"device '{name}' is missing")
    return int(found[0])


def _get(ipr: IPRoute, name: str) -> Any | None:
    try:
        found = ipr.get_links(ifname=name)
    except NetlinkError as e:
        if e.code == errno.ENODEV:
            return None
        raise
    return found[0] if found else None


def _addrs(ipr: IPRoute, index: int) -> list[tuple[str, int]]:
    return [(a.get("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=index, family=2)]


def _up_with_address(
    ipr: IPRoute, name: str, ip: str, plen: int, mtu: int, mac: str | None = None
) -> int:
    idx = _index(ipr, name)
    ipr.link("set", index=idx, mtu=mtu, state="up", **({"address": mac} if mac else {}))
    if (ip, plen) not in _addrs(ipr, idx):
        ipr.addr("add", index=idx, address=ip, prefixlen=plen)
    return idx


def up_with_address(
    ns: str | None, name: str, ip: str, plen: int, mtu: int, mac: str | None = None
) -> int:
    """Link ``name`` up with ``mtu`` (and ``mac``), holding ``ip/plen`` once;
    idempotent. Returns its index."""
    with netns.netlink(ns, f"set up '{name}' with {ip}/{plen}") as ipr:
        return _up_with_address(ipr, name, ip, plen, mtu, mac)


def delete(ns: str | None, name: str) -> bool:
    """Delete link ``name``; False when it was already gone."""
    with netns.netlink(ns, f"delete link '{name}'") as ipr:
        try:
            ipr.link("del", ifname=name)
            return True
        except NetlinkError as e:
            if e.code in (errno.ENODEV, errno.ENOENT):
                return False
            raise


def ensure_bridge(ns: str | None, name: str, gateway_cidr: str, mtu: int) -> int:
    """Create (or adopt) the node bridge holding the gateway address, its MAC
    pinned to the gateway IP's; returns its index."""
    gw, plen = gateway_cidr.split("/")
    with netns.netlink(ns, f"set up bridge '{name}' with {gateway_cidr}") as ipr:
        if _get(ipr, name) is None:
            ipr.link("add", ifname=name, kind="bridge", address=ip_mac(gw), mtu=mtu)
        return _up_with_address(ipr, name, gw, int(plen), mtu, ip_mac(gw))


def mtu(ns: str | None, name: str) -> int | None:
    """Link ``name``'s MTU; None when there is no such link."""
    with netns.netlink(ns, f"read the MTU of '{name}'") as ipr:
        link = _get(ipr, name)
        return None if link is None else int(link.get_attr("IFLA_MTU"))


def mtus(ns: str | None, prefix: str) -> dict[str, int]:
    """name -> MTU of the links whose name starts with ``prefix``, in one dump."""
    with netns.netlink(ns, f"read the MTUs of '{prefix}*'") as ipr:
        return {
            n: int(link.get_attr("IFLA_MTU"))
            for link in ipr.get_links()
            if (n := link.get_attr("IFLA_IFNAME") or "").startswith(prefix)
        }


def set_mtu(ns: str | None, name: str, value: int) -> bool:
    """Set link ``name``'s MTU; False when there is no such link."""
    with netns.netlink(ns, f"set the MTU of '{name}' to {value}") as ipr:
        link = _get(ipr, name)
        if link is None:
            return False
        ipr.link("set", index=link["index"], mtu=value)
        return True


def bridge(ns: str | None, name: str) -> None:
    """A plain bridge, up (a lab switch's segment)."""
    with netns.netlink(ns, f"create bridge '{name}'") as ipr:
        ipr.link("add", ifname=name, kind="bridge")
        ipr.link("set", index=_index(ipr, name), state="up")


def plug(ns: str | None, port: str, master: str, peer_ns: str, peer: str) -> None:
    """A veth pair: ``port`` in ``ns``, up on bridge ``master``; ``peer`` born in
    ``peer_ns`` (down: :func:`add_address` brings it up)."""
    fd = os.open(netns.path_of(peer_ns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        with netns.netlink(ns, f"plug '{port}' on '{master}' to '{peer}' in '{peer_ns}'") as ipr:
            ipr.link("add", ifname=port, kind="veth", peer={"ifname": peer, "net_ns_fd": fd})
            ipr.link("set", index=_index(ipr, port), state="up", master=_index(ipr, master))
    finally:
        os.close(fd)


def add_address(
    ns: str | None, dev: str, ip: str, plen: int, routes: dict[str, str] | None = None
) -> None:
    """``lo`` and ``dev`` up, ``dev`` holding ``ip/plen``, and ``routes``
    (destination CIDR -> gateway) out of ``dev``."""
    with netns.netlink(ns, f"address '{dev}' with {ip}/{plen}") as ipr:
        ipr.link("set", index=_index(ipr, "lo"), state="up")
        idx = _index(ipr, dev)
        if (ip, plen) not in _addrs(ipr, idx):
            ipr.addr("add", index=idx, address=ip, prefixlen=plen)
        ipr.link("set", index=idx, state="up")
        for dst, gw in (routes or {}).items():
            ipr.route("add", dst=dst, gateway=gw, oif=idx)


def add_route(ns: str | None, dst: str, gateway: str, dev: str) -> None:
    with netns.netlink(ns, f"add route {dst} via {gateway} dev {dev}") as ipr:
        ipr.route("add", dst=dst, gateway=gateway, oif=_index(ipr, dev))


def addresses(ns: str | None) -> list[str]:
    """Every IPv4 address in the namespace."""
    with netns.netlink(ns, "list addresses") as ipr:
        return [str(a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr(family=2)]


def first_address(ns: str | None, dev: str) -> str:
    """The first IPv4 address ``dev`` holds ("" when none)."""
    with netns.netlink(ns, f"read the addresses of '{dev}'") as ipr:
        found = _addrs(ipr, _index(ipr, dev))
    return found[0][0] if found else ""


def links_of_kind(ns: str | None, kind: str, prefix: str = "") -> dict[str, int]:
    """Links of ``kind`` (veth, vxlan...) whose name starts with ``prefix``:
    name -> link group."""
    with netns.netlink(ns, f"list {kind} links") as ipr:
        return {
            n: int(link.get("IFLA_GROUP") or 0)
            for link in ipr.get_links()
            if (n := link.get("IFLA_IFNAME", "")).startswith(prefix)
            and link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == kind
        }


def ensure_vxlan(ns: str | None, name: str, vni: int, local: str, underlay: str, port: int) -> None:
    """The VXLAN device ``name`` (learning off), bound to ``underlay`` and
    ``local``; one made with other settings is made again."""
    with netns.netlink(ns, f"set up VXLAN device '{name}' (VNI {vni})") as ipr:
        under = _index(ipr, underlay)
        old = _get(ipr, name)
        if old is not None and not _vxlan_matches(old, vni, port, local, under):
            ipr.link("del", ifname=name)
            old = None
        if old is None:
            ipr.link(
                "add",
                ifname=name,
                kind="vxlan",
                vxlan_id=vni,
                vxlan_local=local,
                vxlan_link=under,
                vxlan_port=port,
                vxlan_learning=0,
            )


def _vxlan_matches(link: Any, vni: int, port: int, local: str, under: int) -> bool:
    data = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
    if link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") != "vxlan" or data is None:
        return False
    return bool(
        data.get("IFLA_VXLAN_ID") == vni
        and data.get("IFLA_VXLAN_PORT") == port
        and data.get("IFLA_VXLAN_LOCAL") == local
        and data.get("IFLA_VXLAN_LINK") == under
    )


def attachment_problem(
    ns: str | None, host: str, bridge_name: str, pod_ns: str, ifname: str, cidr: str, gateway: str
) -> str | None:
    """What is wrong with a pod's attachment (CNI CHECK), or None: the host veth
    ``host`` on ``bridge_name`` in ``ns``; ``ifname`` in ``pod_ns`` holding
    ``cidr`` with a default route via ``gateway``. A missing ``pod_ns`` raises
    :class:`~flatnet.errors.NamespaceNotFound`."""
    iface = ipaddress.IPv4Interface(cidr)
    with netns.netlink(ns, f"check host veth '{host}'") as ipr:
        link = _get(ipr, host)
        br = ipr.link_lookup(ifname=bridge_name)
        if link is None or not br or link.get("IFLA_MASTER") != br[0]:
            return f"host veth '{host}' is missing or not on '{bridge_name}'"
    with netns.netlink(pod_ns, f"check '{ifname}'") as ipr:
        link = _get(ipr, ifname)
        if link is None:
            return f"interface '{ifname}' is missing in '{pod_ns}'"
        if (str(iface.ip), iface.network.prefixlen) not in _addrs(ipr, link["index"]):
            return f"'{ifname}' in '{pod_ns}' lacks {cidr}"
        if gateway not in {r.get("RTA_GATEWAY") for r in ipr.get_default_routes(family=2)}:
            return f"no default route via {gateway} in '{pod_ns}'"
    return None

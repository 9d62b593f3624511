"""Converge a node's routes, neighbours and FDB entries to a backend's desired state.

Ownership: routes carry protocol :data:`~flatnet.kernel.objects.RTPROT_FLATNET`
(66) in the main table — only those are ever replaced or deleted; neighbours
and FDB entries are managed only on the devices the caller names (the
backend's own devices, e.g. ``flatnet.1``), and only permanent ones. So a
restart sweeps what a previous run left, and nothing else is touched (the
stale-route bug flannel has, #2554, cannot happen).

Order: neighbours and FDB entries before routes that use them; stale routes
before the entries they used.
"""

from __future__ import annotations

import socket
from typing import Any

from pyroute2 import IPRoute

from flatnet.errors import KernelError
from flatnet.kernel import netns
from flatnet.kernel.objects import RTPROT_FLATNET, Changes, Desired, Fdb, Neigh, Route

__all__ = [
    "Routes",
    "converge",
    "drop_routes_of_proto",
    "hops_of_proto",
    "owned_routes",
    "routes_of_proto",
]

NUD_PERMANENT = 0x80
RTNH_F_ONLINK = 4


def _index(ipr: IPRoute, name: str, cache: dict[str, int]) -> int:
    if name not in cache:
        found = ipr.link_lookup(ifname=name)
        if not found:
            raise KernelError(f"device '{name}' is missing")
        cache[name] = found[0]
    return cache[name]


def owned_routes(ipr: IPRoute) -> dict[str, Any]:
    """dst CIDR -> route message, for routes flatnet owns."""
    out = {}
    for r in ipr.get_routes(family=socket.AF_INET, table=254):
        if r["proto"] == RTPROT_FLATNET:
            out[f"{r.get('RTA_DST')}/{r['dst_len']}"] = r
    return out


def _route_of(r: Any, names: dict[int, str]) -> Route:
    return Route(
        f"{r.get('RTA_DST')}/{r['dst_len']}",
        r.get("RTA_GATEWAY") or "",
        names.get(r.get("RTA_OIF"), "?"),
        bool(r["flags"] & RTNH_F_ONLINK),
    )


def converge(ns: str | None, want: Desired, devices: tuple[str, ...] = ()) -> Changes:
    """Make the kernel in ``ns`` hold exactly ``want`` (for what flatnet owns)."""
    with netns.netlink(ns, "program peer routes") as ipr:
        idx: dict[str, int] = {}
        added, stale_n, stale_f = _entries(ipr, want, devices, idx)  # 1.
        more, removed = _routes(ipr, want, idx)  # 2.
        removed += _sweep(ipr, stale_n, stale_f, idx)  # 3.
    return Changes(added + more, removed)


def _entries(
    ipr: IPRoute, want: Desired, devices: tuple[str, ...], idx: dict[str, int]
) -> tuple[int, set[Neigh], set[Fdb]]:
    """1. Add the wanted permanent neighbours and FDB entries on our devices;
    returns how many, and the entries there that are no longer wanted."""
    added = 0
    stale_n: set[Neigh] = set()
    stale_f: set[Fdb] = set()
    for dev in devices:
        i = _index(ipr, dev, idx)
        have_n = {
            Neigh(n.get("NDA_DST"), n.get("NDA_LLADDR"), dev)
            for n in ipr.get_neighbours(ifindex=i, family=2)
            if n["state"] & NUD_PERMANENT
        }
        have_f = {
            Fdb(f.get("NDA_LLADDR"), f.get("NDA_DST"), dev)
            for f in ipr.get_neighbours(ifindex=i, family=socket.AF_BRIDGE)
            if f.get("NDA_DST") and f["state"] & NUD_PERMANENT
        }
        want_n = {n for n in want.neigh if n.dev == dev}
        want_f = {f for f in want.fdb if f.dev == dev}
        for n in want_n - have_n:
            ipr.neigh("replace", dst=n.ip, lladdr=n.mac, ifindex=i, state=NUD_PERMANENT)
        for f in want_f - have_f:
            ipr.fdb("append", ifindex=i, lladdr=f.mac, dst=f.dst, state=NUD_PERMANENT)
        added += len(want_n - have_n) + len(want_f - have_f)
        stale_n |= have_n - want_n
        stale_f |= have_f - want_f
    return added, stale_n, stale_f


def _routes(ipr: IPRoute, want: Desired, idx: dict[str, int]) -> tuple[int, int]:
    """2. Replace what differs, delete what is no longer wanted, among the
    routes we own; returns (added or replaced, removed)."""
    added = removed = 0
    names = {link["index"]: link.get("IFLA_IFNAME") for link in ipr.get_links()}
    have_r = owned_routes(ipr)
    want_r = {r.dst: r for r in want.routes}
    for dst, msg in have_r.items():
        if dst not in want_r or _route_of(msg, names) != want_r[dst]:
            ipr.route("del", dst=dst, table=254, proto=RTPROT_FLATNET)
            removed += dst not in want_r
    for dst, r in want_r.items():
        if dst in have_r and _route_of(have_r[dst], names) == r:
            continue
        via = {"gateway": r.gateway} if r.gateway else {}
        ipr.route(
            "replace",
            dst=dst,
            oif=_index(ipr, r.dev, idx),
            flags=RTNH_F_ONLINK if r.onlink else 0,
            proto=RTPROT_FLATNET,
            table=254,
            **via,
        )
        added += 1
    return added, removed


def _sweep(ipr: IPRoute, stale_n: set[Neigh], stale_f: set[Fdb], idx: dict[str, int]) -> int:
    """3. The entries nothing routes through any more."""
    for n in stale_n:
        ipr.neigh("del", dst=n.ip, lladdr=n.mac, ifindex=_index(ipr, n.dev, idx))
    for f in stale_f:
        ipr.fdb("del", ifindex=_index(ipr, f.dev, idx), lladdr=f.mac, dst=f.dst)
    return len(stale_n) + len(stale_f)


class Routes:
    """The :class:`~flatnet.kernel.api.RouteTable` of namespace ``ns``."""

    def __init__(self, ns: str | None) -> None:
        self.ns = ns

    def converge(self, want: Desired, devices: tuple[str, ...] = ()) -> Changes:
        return converge(self.ns, want, devices)


def routes_of_proto(ns: str | None, proto: int) -> set[str]:
    """The destinations (CIDRs) of the main table's routes of protocol ``proto``."""
    with netns.netlink(ns, "list routes") as ipr:
        return {
            f"{r.get('RTA_DST')}/{r['dst_len']}"
            for r in ipr.get_routes(family=socket.AF_INET, table=254)
            if r["proto"] == proto
        }


def hops_of_proto(ns: str | None, proto: int) -> dict[str, int]:
    """The main table's routes of protocol ``proto``: destination -> how many
    next hops (an ECMP route has several)."""
    with netns.netlink(ns, "list routes") as ipr:
        return {
            f"{r.get('RTA_DST')}/{r['dst_len']}": len(r.get_attr("RTA_MULTIPATH") or [0])
            for r in ipr.get_routes(family=socket.AF_INET, table=254)
            if r["proto"] == proto
        }


def drop_routes_of_proto(ns: str | None, proto: int) -> int:
    """Delete the main table's routes of protocol ``proto`` (what a daemon that
    is gone left behind); returns how many."""
    with netns.netlink(ns, "delete routes") as ipr:
        mine = [r for r in ipr.get_routes(family=socket.AF_INET, table=254) if r["proto"] == proto]
        for r in mine:
            ipr.route("del", dst=f"{r.get('RTA_DST')}/{r['dst_len']}", proto=proto, table=254)
        return len(mine)

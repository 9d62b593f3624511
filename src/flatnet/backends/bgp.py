"""How it works — bgp: Calico's way. BIRD distributes the routes; the kernel forwards.

Objects: one BIRD 2 per node (:mod:`flatnet.kernel.bird`), owned by the agent,
in the node's namespace, with its files in ``<state dir>/bird/``. The agent
renders BIRD's config (:mod:`flatnet.bgp.conf`) from the leases and
reconfigures BIRD over its control socket on every change — sessions stay up.
BIRD announces this node's pod subnet and installs what its peers announce as
kernel routes of protocol 12 (``bird``); the agent writes no route of its own
(routes of protocol 66 are swept as usual) and never touches BIRD's.

Per peer: one BGP session (and one BFD session), one route learned — no
device, neighbour or FDB entry. Who peers with whom (``backendOptions``):

- ``asNumber`` (64512, Calico's default) for every node, or per node in
  ``nodeASNumbers`` (Calico's ``Node.spec.bgp.asNumber``);
- full mesh (the default): every node peers with every other node of its AS
  on its segment;
- ``routeReflectors: [nodes]``: the mesh is off; a reflector peers with every
  node of its AS (clients) and the other reflectors, a client only with the
  reflectors;
- ``peers: [{address, asNumber, nodes?}]``: routers outside the cluster
  (Calico's BGPPeer; ``nodes`` limits which nodes peer) — how pods on
  different segments reach each other without encapsulation, and where
  LoadBalancer addresses are announced;
- ``crossSubnet: true``: BGP within a segment, VXLAN (flatnet's vxlan recipe,
  programmed by the agent as routes of protocol 66) to peers across a router;
  pod routes from external peers are then not imported (BIRD's and the
  agent's routes must cover disjoint prefixes);
- ``bfd`` (true): a silent peer's routes go in ~0.3 s; false: hold timer, 3 s.

A peer no session reaches — another segment's node in the same AS with no
external peer, or a node of another backend — is *refused* with the reason; a
peer whose block BIRD has not installed yet is *pending* until it has.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from flatnet.backends import Context, Desired, Observed, register
from flatnet.backends.vxlan import Vxlan
from flatnet.bgp.conf import Speaker, node, proto_name
from flatnet.errors import FlatnetError
from flatnet.kernel import bird
from flatnet.kernel.objects import BgpSession, VxlanTunnel
from flatnet.kernel.routes import drop_routes_of_proto, routes_of_proto
from flatnet.model import Lease

__all__ = ["Bgp", "asn_of"]

log = logging.getLogger("flatnet.backends.bgp")
DEFAULT_AS = 64512
RTPROT_BIRD = 12


def asn_of(options: dict[str, Any], node_name: str) -> int:
    per_node = options.get("nodeASNumbers") or {}
    return int(per_node.get(node_name, options.get("asNumber", DEFAULT_AS)))


def _external(ctx: Context) -> list[BgpSession]:
    me = ctx.lease.node
    out = []
    for p in ctx.options.get("peers") or []:
        nodes = p.get("nodes")
        if (nodes is None or me in nodes) and ctx.on_link(p["address"]):
            name = str(p.get("name", p["address"]))
            out.append(BgpSession(name, p["address"], int(p["asNumber"]), "external"))
    return out


def _cross(options: dict[str, Any]) -> bool:
    """Cross-subnet mode: VXLAN to the peers across a router."""
    return bool(options.get("crossSubnet", False))


@register("bgp")
class Bgp:
    name = "bgp"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bird: bird.Bird | None = None
        self._speaker: Speaker | None = None
        self._text = ""
        self._vxlan = Vxlan()

    # -- identity -----------------------------------------------------------
    def lease_data(self, subnet: str, options: dict[str, object]) -> dict[str, object]:
        return self._vxlan.lease_data(subnet, options) if _cross(options) else {}

    def pod_mtu(self, ctx: Context) -> int:
        return self._vxlan.pod_mtu(ctx) if _cross(ctx.options) else ctx.underlay_mtu

    def devices(self, ctx: Context) -> tuple[str, ...]:
        return self._vxlan.devices(ctx) if _cross(ctx.options) else ()

    def tunnel(self, ctx: Context) -> VxlanTunnel | None:
        return self._vxlan.tunnel(ctx) if _cross(ctx.options) else None

    # -- life ---------------------------------------------------------------
    def setup(self, ctx: Context) -> dict[str, object]:
        data = self._vxlan.setup(ctx) if _cross(ctx.options) else {}
        self._bird = bird.Bird(ctx.ns, Path(ctx.state_dir) / "bird")
        self._speaker = Speaker(
            router_id=ctx.lease.underlay_ip,
            asn=asn_of(ctx.options, ctx.lease.node),
            subnet=ctx.lease.subnet,
            pod_cidr=ctx.pod_cidr,
            bfd=bool(ctx.options.get("bfd", True)),
            reflector=ctx.lease.node in (ctx.options.get("routeReflectors") or []),
            import_external=not _cross(ctx.options),
        )
        with self._lock:  # a running BIRD keeps its sessions until program() brings them
            text = node(self._speaker)
            how = self._bird.ensure(text, reconfigure=False)
            self._text = text if how != "adopted" else ""
        log.info("BIRD %s (%s): AS %d", how, self._bird.conf, self._speaker.asn)
        return data

    def stop(self) -> None:
        """BIRD stays: it outlives the agent, so an agent restart flaps nothing."""
        return None

    def teardown(self, ctx: Context) -> None:
        """BIRD stopped; what a BIRD killed earlier left in the kernel goes too
        (a clean stop removes its routes itself)."""
        if bird.Bird(ctx.ns, Path(ctx.state_dir) / "bird").stop():
            log.info("BIRD stopped (backend switched)")
        if left := drop_routes_of_proto(ctx.ns, RTPROT_BIRD):
            log.info("removed %d route(s) a dead BIRD left", left)

    # -- peers --------------------------------------------------------------
    def desired(self, ctx: Context, peers: list[Lease]) -> Desired:
        me, opts = ctx.lease.node, ctx.options
        my_as = asn_of(opts, me)
        reflectors = set(opts.get("routeReflectors") or [])
        external = _external(ctx)
        sessions: set[BgpSession] = set(external)
        refused: dict[str, str] = {}
        across: list[Lease] = []
        for p in peers:
            if p.backend != self.name:
                refused[p.node] = f"bgp: peer '{p.node}' runs backend '{p.backend}', no BGP"
                continue
            peer_as = asn_of(opts, p.node)
            if not ctx.on_link(p.underlay_ip):
                if _cross(ctx.options):
                    across.append(p)
                elif peer_as == my_as and not external:
                    refused[p.node] = (
                        f"bgp: peer '{p.node}' ({p.underlay_ip}) is across a router, in this "
                        f"node's AS {my_as}, and no external BGP peer carries its routes: peer "
                        "with the router (backendOptions.peers), give its segment an AS of its "
                        "own (nodeASNumbers), or use crossSubnet"
                    )
                continue
            if peer_as != my_as:
                continue  # another AS on this segment: its routes come through the peers
            if not reflectors:
                sessions.add(BgpSession(p.node, p.underlay_ip, peer_as, "mesh"))
            elif me in reflectors:
                kind = "mesh" if p.node in reflectors else "rr-client"
                sessions.add(BgpSession(p.node, p.underlay_ip, peer_as, kind))
            elif p.node in reflectors:
                sessions.add(BgpSession(p.node, p.underlay_ip, peer_as, "mesh"))
        # the vxlan recipe for peers across the router (they run bgp, with a VTEP)
        far = [replace(p, backend=self._vxlan.name) for p in across]
        tunnel = self._vxlan.desired(ctx, far) if far else Desired()
        refused.update(tunnel.refused)
        return replace(tunnel, bgp=frozenset(sessions), refused=refused)

    def program(self, want: Desired) -> None:
        self._reconfigure(sessions=want.bgp)

    def announce(self, vips: frozenset[str]) -> None:
        """Announce these LoadBalancer addresses (/32s) to the external peers."""
        self._reconfigure(vips=vips)

    def _reconfigure(self, **change: Any) -> None:
        with self._lock:
            if self._speaker is None or self._bird is None:
                return
            self._speaker = replace(self._speaker, **change)
            if not self._text and "sessions" not in change:
                # an adopted BIRD keeps its config until the peer watcher brings the
                # sessions: configured now (the announcer's addresses, say) it would
                # drop every session and flap every route (a CI run caught it)
                return
            text = node(self._speaker)
            if text != self._text:
                self._bird.configure(text)
                self._text = text

    # -- what BIRD holds ------------------------------------------------------
    def observe(self, ctx: Context, peers: list[Lease]) -> Observed:
        """Each session's state (from ``show protocols``), the peers whose block
        has no route yet; restarts BIRD (graceful-restart recovery) if it died."""
        if self._bird is None or self._speaker is None:
            return Observed()
        try:
            with self._lock:
                if self._bird.pid() is None:
                    log.warning("BIRD is not running: starting it again (recovery)")
                    self._text = node(self._speaker)
                    self._bird.ensure(self._text)
            protos = self._bird.protocols()
        except FlatnetError as e:
            return Observed(problem=f"BIRD: {e}")
        states = {}
        for s in self._speaker.sessions:
            pr = protos.get(proto_name(s))
            states[s.name] = (pr.info or pr.state) if pr is not None else "not configured"
        have = routes_of_proto(ctx.ns, RTPROT_BIRD)
        cross = _cross(ctx.options)
        unrouted = {
            p.node
            for p in peers
            if p.subnet not in have
            and not (cross and not ctx.on_link(p.underlay_ip))
            and p.subnet != ctx.lease.subnet
        }
        return Observed(sessions=states, unrouted=frozenset(unrouted))

"""Waiting for a lab to reach a state: an agent ready, peers programmed,
service proxies and policy tables caught up, LoadBalancer addresses announced. Each gives up with
:class:`~flatnet.errors.LabTimeout`."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from flatnet import keys
from flatnet.agent.heartbeat import heartbeats
from flatnet.cni.runtime import Chain, load_conflist
from flatnet.errors import LabTimeout
from flatnet.kernel.routes import hops_of_proto
from flatnet.lab.state import NodeState
from flatnet.lb.announce import plan
from flatnet.model import AddressPool, PeerStatus
from flatnet.store import Store
from flatnet.view import ClusterView

__all__ = [
    "revision_of",
    "wait_agent",
    "wait_announced",
    "wait_peers",
    "wait_policies",
    "wait_proxies",
]

Progress = Callable[[str, int, int], None]


def revision_of(store: Store, written: list[str]) -> int:
    """The revision at which the last of ``written`` was written: what the
    proxies must have programmed. Not ``store.revision()``: the proxies' own
    status writes come after it, are no event they see, and so could name a
    revision none of them ever reports (an etcd lab with Services failed to
    come up on it)."""
    return max((kv.mod_revision for k in written if (kv := store.get(k)) is not None), default=0)


def wait_proxies(store: Store, rev: int, timeout: float = 10) -> list[str]:
    """Until the service proxy of every Ready node (its agent's heartbeat is
    alive) has programmed the store up to ``rev``; a NotReady node is not
    waited for (kubectl would not wait either). Returns the nodes waited for."""
    return _wait(store, rev, timeout, keys.PROXY, "service proxies")


def wait_policies(store: Store, rev: int, timeout: float = 10) -> list[str]:
    """The same for every Ready node's policy table (:func:`wait_proxies`)."""
    return _wait(store, rev, timeout, keys.POLICY, "policy tables")


def _wait(store: Store, rev: int, timeout: float, prefix: str, what: str) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        seen = {keys.last(kv.key): json.loads(kv.value)["revision"] for kv in store.range(prefix)}
        alive = sorted(heartbeats(store))
        late = [n for n in alive if seen.get(n, 0) < rev]
        if not late:
            return alive
        if time.monotonic() > deadline:
            raise LabTimeout(
                f"the {what} of {', '.join(late)} did not reach revision {rev} within {timeout}s"
            )
        time.sleep(0.02)


def wait_agent(node: str, info: NodeState, timeout: float = 30) -> None:
    """Until the node's agent answers CNI STATUS."""
    chain = Chain(load_conflist(info.conf_dir), [info.bin_dir], ns=info.ns)
    plugin = {"type": "flatnet", "agentSocket": info.socket}
    chain.conf = dict(chain.conf, cniVersion="1.1.0")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = chain.exec_plugin(plugin, "STATUS", {})
        if r.code == 0:
            return
        time.sleep(0.1)
    log = Path(info.conf_dir).parent / "agent.log"
    tail = log.read_text()[-800:] if log.exists() else ""
    raise LabTimeout(f"agent on node '{node}' not ready after {timeout}s:\n{tail}")


def wait_peers(store: Store, nodes: set[str], progress: Progress, timeout: float = 30) -> None:
    """Until every agent has programmed (or refused) every other node."""
    deadline = time.monotonic() + timeout
    while True:
        done = set()
        for kv in store.range(keys.STATUS):
            s = PeerStatus.from_json(kv.value)
            if s.node in nodes and set(s.programmed) | set(s.refused) | {s.node} == nodes:
                done.add(s.node)
        progress("peers programmed", len(done), len(nodes))
        if done == nodes:
            return
        if time.monotonic() > deadline:
            raise LabTimeout(
                f"nodes {', '.join(sorted(nodes - done))} did not program their peers "
                f"within {timeout}s"
            )
        time.sleep(0.05)


def wait_announced(store: Store, backend: str, router: str = "", timeout: float = 10) -> None:
    """Until every Ready node announces what it should of the LoadBalancer
    addresses (:func:`flatnet.lb.announce.plan`: BGP told to BIRD, ARP held)
    and, with a ``router`` namespace, until its kernel routes every address
    announced by BGP: then the external host reaches them."""
    deadline = time.monotonic() + timeout
    while True:
        view = ClusterView([*store.range(keys.SERVICES), *store.range(keys.PODS)])
        lbs = [
            (svc, [e for es in view.endpoints(svc).values() for e in es])
            for svc in view.services.values()
            if svc.ingress_ip
        ]
        pools = {
            keys.last(kv.key): AddressPool.from_json(kv.value) for kv in store.range(keys.POOLS)
        }
        beats = heartbeats(store)
        alive, nets = set(beats), {n: hb.nets for n, hb in beats.items()}
        said = {keys.last(kv.key): json.loads(kv.value) for kv in store.range(keys.LB)}
        late: list[str] = []
        by_bgp: dict[str, int] = {}  # address -> how many nodes announce it
        for node in sorted(alive):
            want = plan(node, lbs, alive, pools, backend, nets)
            bgp = want.bgp if backend == "bgp" else frozenset()
            have = said.get(node, {})
            if set(have.get("l2", [])) != want.l2 or set(have.get("bgp", [])) != bgp:
                late.append(node)
            for ip in bgp:
                by_bgp[ip] = by_bgp.get(ip, 0) + 1
        if router and not late:
            hops = hops_of_proto(router, 12)
            late = [
                f"the router ({n} next hop(s) to {ip})"
                for ip, n in sorted(by_bgp.items())
                if hops.get(f"{ip}/32", 0) != n
            ]
        if not late:
            return
        if time.monotonic() > deadline:
            raise LabTimeout(
                f"LoadBalancer addresses not announced within {timeout}s by: {', '.join(late)}"
            )
        time.sleep(0.05)
